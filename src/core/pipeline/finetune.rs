//! The one fine-tuning use case the CLI and the GUI share: resolve the model, read its checkpoint,
//! split off (or read) the validation triplets, train, then decide what the saved folder declares
//! (prompts, and `max_seq_length` by the encoder's own rule, so the saved model is evaluated at
//! the length its base model was) and write one model card.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::core::data::Triplet;
use crate::core::jobs::JobCtx;
use crate::core::metrics::metric_keys;
use crate::core::model::save::{save_model_folder, SaveError, SaveSettings};
use crate::core::model::{
    resolve_source, Checkpoint, DownloadProgress, ModelError, ModelFolder, ModelSource, Prompts,
};
use crate::core::train::{
    self, split_by_query, StopReason, TrainConfig, TrainError, TrainEvent, TrainOutcome,
    BEST_METRIC,
};

/// Where the validation triplets come from.
#[derive(Debug, Clone)]
pub enum Validation {
    /// This share of the file's distinct queries, held out (seeded by the training seed).
    Split {
        /// Share of distinct queries in (0, 1).
        share: f64,
    },
    /// A separate triplet file.
    File {
        /// Its path.
        path: PathBuf,
        /// Its triplets.
        triplets: Vec<Triplet>,
    },
}

/// A fine-tuning run to do.
#[derive(Debug, Clone)]
pub struct FineTuneRequest<'a> {
    /// The base model.
    pub source: ModelSource,
    /// The training file's path (for the model card).
    pub data_path: &'a Path,
    /// Its triplets.
    pub triplets: &'a [Triplet],
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
    /// What the saved folder declares.
    pub settings: SaveSettings,
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
    let (train_set, val_set, val_what) = match &req.validation {
        Validation::Split { share } => {
            let (t, v) = split_by_query(req.triplets, *share, cfg.seed);
            (
                t,
                v,
                format!("{:.0} % of the queries held out", share * 100.0),
            )
        }
        Validation::File { path, triplets } => (
            req.triplets.to_vec(),
            triplets.clone(),
            format!("the file `{}`", path.display()),
        ),
    };
    let outcome = train::train(&folder, &checkpoint, &train_set, &val_set, cfg, ctx)?;
    let settings = SaveSettings {
        // The rule the encoder uses, at the length validation ran with: the saved model is then
        // evaluated exactly as its base model was.
        max_seq_length: folder.max_seq_len(cfg.eval_max_seq_len),
        prompts: Prompts::choose(&cfg.prompts, &folder),
        model_card: model_card(&CardInput {
            base: &label,
            data: req.data_path,
            validation: &val_what,
            cfg,
            outcome: &outcome,
        }),
    };
    Ok(FineTuned {
        folder,
        checkpoint,
        outcome,
        settings,
    })
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
