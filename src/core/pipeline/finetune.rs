//! The one fine-tuning use case the CLI and the GUI share: resolve the model, read its checkpoint,
//! split off (or read) the validation triplets, train, then decide what the saved folder declares
//! (prompts, and `max_seq_length` by the encoder's own rule, so the saved model is evaluated at
//! the length its base model was), write one model card and the run record
//! (`tripletlab_run.json`: the data by hash, the rows trained on and held out, the whole log).

use std::collections::BTreeMap;
use std::path::Path;

use crate::core::data::Dataset;
use crate::core::jobs::JobCtx;
use crate::core::metrics::metric_keys;
use crate::core::model::save::{save_model_folder, SaveError, SaveSettings};
use crate::core::model::{
    resolve_source, Checkpoint, DownloadProgress, ModelError, ModelFolder, ModelSource, Prompts,
};
use crate::core::train::{
    self, split_rows_by_query, StopReason, TrainConfig, TrainError, TrainEvent, TrainOutcome,
    BEST_METRIC,
};

use super::record::{BaseModel, DataFile, RunRecord, Saved, Split, RUN_RECORD_FILE};

/// Where the validation triplets come from.
#[derive(Debug, Clone)]
pub enum Validation {
    /// This share of the file's distinct queries, held out (seeded by the training seed).
    Split {
        /// Share of distinct queries in (0, 1).
        share: f64,
    },
    /// A separate triplet file.
    File(Dataset),
}

/// A fine-tuning run to do.
#[derive(Debug, Clone)]
pub struct FineTuneRequest<'a> {
    /// The base model.
    pub source: ModelSource,
    /// The training file.
    pub data: &'a Dataset,
    /// The validation triplets.
    pub validation: Validation,
    /// Every training setting.
    pub cfg: TrainConfig,
}

/// Why fine-tuning could not run.
#[derive(Debug, thiserror::Error)]
pub enum FineTuneError {
    /// The base model could not be resolved or read.
    #[error("cannot load model `{label}`: {source}")]
    Model {
        /// The model as the user named it.
        label: String,
        /// Why.
        #[source]
        source: ModelError,
    },
    /// Training failed.
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// A trained model with everything its saved folder needs; kept in memory until saved (a failed
/// save leaves it here, so it can be saved elsewhere).
pub struct FineTuned {
    /// The base model's folder.
    pub folder: ModelFolder,
    /// The base model's checkpoint (names, dtypes and untrained tensors of the saved file).
    pub checkpoint: Checkpoint,
    /// How training went, with the best weights.
    pub outcome: TrainOutcome,
    /// What the saved folder declares (the run record among its files).
    pub settings: SaveSettings,
    /// The run record written with it.
    pub record: RunRecord,
}

impl std::fmt::Debug for FineTuned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FineTuned(best step {})", self.outcome.best_step)
    }
}

impl FineTuned {
    /// Writes the best weights as a sentence-transformers folder at `out` (atomically).
    pub fn save(&self, out: &Path) -> Result<(), SaveError> {
        save_model_folder(
            out,
            &self.folder,
            &self.checkpoint,
            &self.outcome.best_weights,
            &self.settings,
            &mut |_| {},
        )
    }
}

/// Resolves the model, splits the data, trains and prepares the save. `on_download` sees hub
/// download progress.
pub fn fine_tune(
    req: &FineTuneRequest,
    on_download: &mut dyn FnMut(DownloadProgress),
    ctx: &JobCtx<TrainEvent>,
) -> Result<FineTuned, FineTuneError> {
    let label = req.source.label();
    let model_err = |source| FineTuneError::Model {
        label: label.clone(),
        source,
    };
    let folder = resolve_source(&req.source, on_download).map_err(model_err)?;
    let checkpoint = Checkpoint::read(&folder).map_err(model_err)?;
    let cfg = &req.cfg;
    let data = req.data;
    // Triplets in file order; an n-tuple row gives several, all on the same side of the split.
    let file_rows = |rows: &[usize]| {
        let mut r: Vec<usize> = rows.iter().map(|&i| data.source_rows[i]).collect();
        r.dedup();
        r
    };
    let (train_idx, val_set, split, val_what) = match &req.validation {
        Validation::Split { share } => {
            let (train, held_out) = split_rows_by_query(&data.triplets, *share, cfg.seed);
            let val = held_out.iter().map(|&i| data.triplets[i].clone()).collect();
            let split = Split::HeldOut {
                share: *share,
                seed: cfg.seed,
                train_rows: file_rows(&train),
                held_out_rows: file_rows(&held_out),
            };
            (
                train,
                val,
                split,
                format!("{:.0} % of the queries held out", share * 100.0),
            )
        }
        Validation::File(val) => {
            let all: Vec<usize> = (0..data.len()).collect();
            let split = Split::ValidationFile {
                file: DataFile::of(val),
                train_rows: file_rows(&all),
            };
            (
                all,
                val.triplets.clone(),
                split,
                format!("the file `{}`", val.path.display()),
            )
        }
    };
    let train_set: Vec<_> = train_idx
        .iter()
        .map(|&i| data.triplets[i].clone())
        .collect();
    let outcome = train::train(&folder, &checkpoint, &train_set, &val_set, cfg, ctx)?;
    let prompts = Prompts::choose(&cfg.prompts, &folder);
    // The rule the encoder uses, at the length validation ran with: the saved model is then
    // evaluated exactly as its base model was.
    let max_seq_length = folder.max_seq_len(cfg.eval_max_seq_len);
    let record = RunRecord {
        format: 1,
        tool: format!("tripletlab {}", env!("CARGO_PKG_VERSION")),
        finished_unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        base_model: BaseModel {
            source: label.clone(),
            weights_blake3: checkpoint.weights_hash.clone(),
            architecture: folder.config.arch.name().to_string(),
        },
        data: DataFile::of(data),
        split,
        settings: serde_json::to_value(cfg).unwrap_or_default(),
        train_triplets: outcome.train_triplets,
        val_triplets: outcome.val_triplets,
        steps: outcome.steps.clone(),
        evals: outcome.evals.clone(),
        best_metric: BEST_METRIC.to_string(),
        best_step: outcome.best_step,
        total_steps: outcome.total_steps,
        stop: outcome.stop.clone(),
        wall_secs: outcome.seconds,
        saved: Saved {
            max_seq_length,
            query_prompt: prompts.query.clone(),
            document_prompt: prompts.document.clone(),
        },
    };
    let settings = SaveSettings {
        max_seq_length,
        prompts,
        model_card: model_card(&CardInput {
            base: &label,
            data: &data.path,
            validation: &val_what,
            cfg,
            outcome: &outcome,
        }),
        extra_files: vec![(RUN_RECORD_FILE.to_string(), record.to_json())],
    };
    Ok(FineTuned {
        folder,
        checkpoint,
        outcome,
        settings,
        record,
    })
}

/// Whether a save to `out` would replace something: `Some(reason)` when `out` exists and is not
/// an empty folder.
pub fn would_replace(out: &Path) -> Option<String> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => entries
            .next()
            .map(|_| format!("{} already exists and is not empty", out.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(_) if out.exists() => Some(format!("{} exists and is not a folder", out.display())),
        Err(_) => None,
    }
}

/// How a run ended, in words.
pub fn stop_summary(outcome: &TrainOutcome) -> String {
    let how = match &outcome.stop {
        StopReason::Completed => format!("completed {} steps", outcome.steps.len()),
        StopReason::Cancelled { after_step } => format!("stopped after step {after_step}"),
        StopReason::NonFiniteLoss { step } => {
            format!("stopped: the loss at step {step} was NaN or infinite")
        }
    };
    if outcome.best_step == 0 {
        format!(
            "{how}; no step improved validation {BEST_METRIC}, so the saved model is the \
             unchanged base model (step 0)"
        )
    } else {
        format!(
            "{how}; the saved model is the best checkpoint (step {})",
            outcome.best_step
        )
    }
}

/// What the model card says.
struct CardInput<'a> {
    base: &'a str,
    data: &'a Path,
    validation: &'a str,
    cfg: &'a TrainConfig,
    outcome: &'a TrainOutcome,
}

/// The model card (`README.md`): YAML front matter as the hub reads it, then the data, the
/// settings, validation before and after, and the training log.
fn model_card(c: &CardInput) -> String {
    let (cfg, o) = (c.cfg, c.outcome);
    let yaml_str = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut s = format!(
        "---\nbase_model: {}\nlibrary_name: sentence-transformers\npipeline_tag: sentence-similarity\ntags:\n- sentence-transformers\n- sentence-similarity\n- feature-extraction\n- tripletlab\n- loss:{}\n---\n\n",
        yaml_str(c.base),
        cfg.loss.name()
    );
    s.push_str(&format!(
        "# Fine-tuned {}\n\nTrained with tripletlab {} on `{}`.\n\n{}.\n\n",
        c.base,
        env!("CARGO_PKG_VERSION"),
        c.data.display(),
        capitalise(&stop_summary(o)),
    ));
    s.push_str("## Training\n\n");
    s.push_str(&format!(
        "- loss: `{}`\n- epochs: {}, batch size: {}, learning rate: {}, warm-up ratio: {}, weight decay: {}\n- max grad norm: {}, max sequence length in training: {}, seed: {}\n- training triplets: {}, validation triplets: {} ({})\n- steps: {} of {} ({:?}), {:.1} s\n- saved checkpoint: step {} (best validation {BEST_METRIC})\n\n",
        cfg.loss.name(), cfg.epochs, cfg.batch_size, cfg.lr, cfg.warmup_ratio, cfg.weight_decay,
        cfg.max_grad_norm, cfg.max_seq_len, cfg.seed, o.train_triplets, o.val_triplets,
        c.validation, o.steps.len(), o.total_steps, o.stop, o.seconds, o.best_step,
    ));
    s.push_str("## Validation\n\n| metric | zero-shot | saved |\n| --- | ---: | ---: |\n");
    let (before, best): (&BTreeMap<String, f64>, _) = (&o.zero_shot().metrics, &o.best().metrics);
    for key in metric_keys() {
        if let (Some(a), Some(b)) = (before.get(&key), best.get(&key)) {
            s.push_str(&format!("| `{key}` | {a:.4} | {b:.4} |\n"));
        }
    }
    s.push_str(
        "\n## Training log\n\n| step | loss | lr | grad norm |\n| ---: | ---: | ---: | ---: |\n",
    );
    for p in &o.steps {
        s.push_str(&format!(
            "| {} | {:.4} | {:.3e} | {:.3} |\n",
            p.step, p.loss, p.lr, p.grad_norm
        ));
    }
    s.push_str("\n## Usage\n\n```python\nfrom sentence_transformers import SentenceTransformer\nmodel = SentenceTransformer(\"path/to/this/folder\")\n```\n");
    s
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}
