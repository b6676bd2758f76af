//! The app's state types: settings that persist (eframe storage), the panels' own UI state
//! (tab, heatmap window, inspector filters), the training log and notifications. Domain data
//! (datasets, evaluations) is computed by core jobs and held by [`super::App`].

use std::path::PathBuf;

use eframe::egui;

use crate::core::backend::Compute;
use crate::core::encoder::{EncoderOptions, PromptChoice};
use crate::core::jobs::Progress;
use crate::core::metrics::Flip;
use crate::core::model::DEFAULT_MODEL;
use crate::core::train::{EvalPoint, LossKind, StepPoint, TrainConfig};

/// How the app is started.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// A triplet file to open at start (else the bundled sample).
    pub data: Option<PathBuf>,
    /// A model to use (else the persisted or default one).
    pub model: Option<String>,
    /// Embed as soon as the data is loaded.
    pub embed_on_start: bool,
    /// Start fine-tuning once the first embedding is done.
    pub fine_tune_on_start: bool,
    /// Mine hard negatives once the file is loaded.
    pub mine_on_start: bool,
    /// A fine-tuned model folder to compare with once the first embedding is done.
    pub compare_with: Option<PathBuf>,
    /// The panel to show first.
    pub tab: Option<Tab>,
    /// A triplet to select in the inspector.
    pub inspect: Option<usize>,
    /// Where fine-tuned models are saved.
    pub fine_tune_out: Option<PathBuf>,
    /// Where a trained model that is not saved yet goes when the window closes (else
    /// [`default_recovery_dir`]).
    pub recovery_dir: Option<PathBuf>,
    /// The window's size in points (else 1400 x 900).
    pub window_size: Option<[f32; 2]>,
}

/// Prompt choice as the settings store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PromptMode {
    /// The folder's prompts or the family's defaults.
    Auto,
    /// No prompts.
    None,
    /// The two strings in the settings.
    Custom,
}

/// Fine-tuning settings shown in the Fine-tune panel.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TrainSettings {
    /// Loss.
    pub loss: LossKind,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Learning rate.
    pub lr: f64,
    /// Share of queries held out.
    pub val_split: f64,
    /// Where to save (empty: next to the data file).
    pub out_dir: String,
    /// Train with MatryoshkaLoss over the model's width and 256, 128, 64, 32.
    pub matryoshka: bool,
    /// Negatives per example (rows sharing a query and positive joined; mnrl).
    pub max_negatives: usize,
    /// GradCache mini-batch (texts), 0: off.
    pub mini_batch: usize,
    /// Share of the steps spent warming the learning rate up.
    pub warmup_ratio: f64,
    /// Seed of the split, the batches and dropout.
    pub seed: u64,
    /// Tokens per text while training.
    pub max_seq_len: usize,
}

impl Default for TrainSettings {
    fn default() -> Self {
        let d = TrainConfig::default();
        Self {
            loss: d.loss,
            epochs: d.epochs,
            batch_size: d.batch_size,
            lr: d.lr,
            val_split: d.val_split,
            out_dir: String::new(),
            matryoshka: false,
            max_negatives: d.max_negatives,
            mini_batch: 0,
            warmup_ratio: d.warmup_ratio,
            seed: d.seed,
            max_seq_len: d.max_seq_len,
        }
    }
}

impl Settings {
    /// The fine-tuning configuration the form describes (`dim`: the model's width, for the
    /// Matryoshka dimensions).
    pub fn train_config(&self, dim: Option<usize>) -> TrainConfig {
        let t = &self.train;
        let opts = self.encoder_options();
        TrainConfig {
            loss: t.loss,
            epochs: t.epochs.max(1),
            batch_size: t.batch_size.max(2),
            lr: t.lr,
            val_split: t.val_split,
            warmup_ratio: t.warmup_ratio.clamp(0.0, 0.5),
            seed: t.seed,
            max_seq_len: t.max_seq_len.clamp(8, 512),
            eval_max_seq_len: opts.max_seq_len,
            eval_batch_size: opts.batch_size,
            prompts: opts.prompts.clone(),
            matryoshka_dims: if t.matryoshka {
                matryoshka_dims(dim)
            } else {
                Vec::new()
            },
            max_negatives: t.max_negatives.max(1),
            mini_batch: (t.mini_batch > 0).then_some(t.mini_batch),
            compute: self.compute,
            ..TrainConfig::default()
        }
    }
}

/// MatryoshkaLoss dimensions for a model of width `full` (unknown: 384): the width, then 256,
/// 128, 64 and 32 below it.
fn matryoshka_dims(full: Option<usize>) -> Vec<usize> {
    let full = full.unwrap_or(384);
    std::iter::once(full)
        .chain([256, 128, 64, 32].into_iter().filter(|&d| d < full))
        .collect()
}

/// Settings that persist between runs (eframe storage).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Hub id or folder.
    pub model: String,
    /// Tokens per text (`None`: the folder's).
    pub max_seq_len: Option<usize>,
    /// Texts per batch.
    pub batch_size: usize,
    /// Prompt mode.
    pub prompt_mode: PromptMode,
    /// Custom query prompt.
    pub query_prompt: String,
    /// Custom document prompt.
    pub document_prompt: String,
    /// Matryoshka truncation.
    pub truncate_dim: Option<usize>,
    /// Arithmetic of the model's products, for embedding and fine-tuning.
    pub compute: Compute,
    /// Use the embedding cache.
    pub use_cache: bool,
    /// Recently opened triplet files, newest first.
    pub recent_files: Vec<PathBuf>,
    /// Fine-tuning.
    pub train: TrainSettings,
    /// Loss-curve smoothing weight in [0, 1).
    pub smoothing: f64,
    /// K of the metrics panel.
    pub top_k: usize,
    /// The storage grid's dimensions and precisions.
    pub storage: StorageSettings,
    /// Hard-negative mining.
    pub mining: MiningSettings,
}

/// Hard-negative mining settings (sentence-transformers' names).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MiningSettings {
    /// Negatives per query.
    pub num_negatives: usize,
    /// Candidates skipped at the top.
    pub range_min: usize,
    /// Candidates considered.
    pub range_max: usize,
    /// Use the relative margin.
    pub use_relative_margin: bool,
    /// Relative margin.
    pub relative_margin: f64,
    /// Use the absolute margin.
    pub use_absolute_margin: bool,
    /// Absolute margin.
    pub absolute_margin: f64,
    /// Random sampling instead of the top candidates.
    pub random: bool,
    /// Extra corpus files.
    pub corpus: Vec<PathBuf>,
    /// Export the file's own rows along with the accepted mined ones.
    pub export_with_file_rows: bool,
}

impl Default for MiningSettings {
    fn default() -> Self {
        Self {
            num_negatives: 3,
            range_min: 0,
            range_max: 50,
            use_relative_margin: true,
            relative_margin: 0.05,
            use_absolute_margin: false,
            absolute_margin: 0.05,
            random: false,
            corpus: Vec::new(),
            export_with_file_rows: true,
        }
    }
}

impl MiningSettings {
    /// The core settings.
    pub fn config(&self) -> crate::core::mining::MineConfig {
        crate::core::mining::MineConfig {
            range_min: self.range_min,
            range_max: Some(self.range_max),
            absolute_margin: self.use_absolute_margin.then_some(self.absolute_margin),
            relative_margin: self.use_relative_margin.then_some(self.relative_margin),
            num_negatives: self.num_negatives,
            sampling: if self.random {
                crate::core::mining::Sampling::Random
            } else {
                crate::core::mining::Sampling::Top
            },
            ..Default::default()
        }
    }
}

/// Which mined negatives the review table lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReviewFilter {
    /// Every mined negative.
    #[default]
    All,
    /// Those flagged as likely false negatives.
    Flagged,
    /// Those rejected.
    Rejected,
}

/// The Mining panel's review: a decision per mined negative, the selection and the filter.
#[derive(Debug, Clone, Default)]
pub struct MiningReview {
    /// `accepted[q][k]`: negative k of query q goes into the export.
    pub accepted: Vec<Vec<bool>>,
    /// The selected row of the table (an index into `rows`).
    pub selected: usize,
    /// Which negatives are listed.
    pub filter: ReviewFilter,
    /// The score above which "Reject above" rejects.
    pub reject_above: f64,
    /// The listed (query, negative) pairs and the filter they were listed for.
    pub rows: Option<(ReviewFilter, Vec<(usize, usize)>)>,
}

/// What the storage grid measures.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StorageSettings {
    /// Dimensions, comma-separated.
    pub dims: String,
    /// Precisions.
    pub precisions: Vec<crate::core::metrics::quantize::Precision>,
    /// Rescore quantised cells.
    pub rescore: bool,
    /// Candidates rescored, as a multiple of 100.
    pub rescore_multiplier: usize,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            dims: "384,256,128,64,32".into(),
            precisions: crate::core::pipeline::grid::DEFAULT_PRECISIONS.to_vec(),
            rescore: false,
            rescore_multiplier: 4,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: DEFAULT_MODEL.into(),
            max_seq_len: None,
            batch_size: 32,
            prompt_mode: PromptMode::Auto,
            query_prompt: "query: ".into(),
            document_prompt: "passage: ".into(),
            truncate_dim: None,
            compute: Compute::F32,
            use_cache: true,
            recent_files: Vec::new(),
            train: TrainSettings::default(),
            smoothing: 0.6,
            top_k: 5,
            storage: StorageSettings::default(),
            mining: MiningSettings::default(),
        }
    }
}

impl Settings {
    /// What an evaluation depends on, as the user set it: the model and the options that change
    /// vectors (not the batch size).
    pub fn embed_signature(&self) -> EmbedSignature {
        let o = self.encoder_options();
        EmbedSignature {
            model: self.model.trim().to_string(),
            options: format!(
                "max length {}, prompts {:?}, dimensions {}, compute {}",
                o.max_seq_len
                    .map_or_else(|| "model default".into(), |n| n.to_string()),
                o.prompts,
                o.truncate_dim
                    .map_or_else(|| "all".into(), |n| n.to_string()),
                o.compute.name()
            ),
        }
    }

    /// The encoder options these settings describe.
    pub fn encoder_options(&self) -> EncoderOptions {
        EncoderOptions {
            max_seq_len: self.max_seq_len,
            batch_size: self.batch_size.max(1),
            prompts: match self.prompt_mode {
                PromptMode::Auto => PromptChoice::Auto,
                PromptMode::None => PromptChoice::None,
                PromptMode::Custom => PromptChoice::Custom {
                    query: self.query_prompt.clone(),
                    document: self.document_prompt.clone(),
                },
            },
            truncate_dim: self.truncate_dim,
            compute: self.compute,
        }
    }
}

/// The model and options an evaluation was computed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedSignature {
    /// The model as typed.
    pub model: String,
    /// The options that change vectors.
    pub options: String,
}

impl EmbedSignature {
    /// Why results computed with `self` no longer match the settings `now`, if they do not.
    pub fn stale_against(&self, now: &EmbedSignature) -> Option<String> {
        if self.model != now.model {
            Some(format!(
                "These results are from {}; the model on the left is now {}. Embed again to update them.",
                self.model, now.model
            ))
        } else if self.options != now.options {
            Some(format!(
                "These results were computed with {}; the settings on the left are now {}. Embed again to update them.",
                self.options, now.options
            ))
        } else {
            None
        }
    }
}

/// The panels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// Counts, lengths, validation report.
    Data,
    /// Metrics table and margin histogram.
    Metrics,
    /// Similarity heatmap.
    Heatmap,
    /// Hard-negative mining and its review.
    Mining,
    /// Fine-tuning and its curves.
    FineTune,
    /// Zero-shot vs fine-tuned.
    Compare,
    /// Dimensions × precisions: what truncation and quantisation cost.
    Storage,
    /// Triplet table and details.
    Inspect,
}

impl Tab {
    /// True for the panels that show the baseline's evaluation.
    pub fn shows_results(self) -> bool {
        matches!(
            self,
            Tab::Metrics | Tab::Heatmap | Tab::Compare | Tab::Inspect | Tab::Storage
        )
    }

    /// Every tab in order.
    pub const ALL: [Tab; 8] = [
        Tab::Data,
        Tab::Metrics,
        Tab::Heatmap,
        Tab::Mining,
        Tab::FineTune,
        Tab::Compare,
        Tab::Storage,
        Tab::Inspect,
    ];
    /// Its label.
    pub fn label(self) -> &'static str {
        match self {
            Tab::Data => "Data",
            Tab::Metrics => "Metrics",
            Tab::Heatmap => "Heatmap",
            Tab::Mining => "Mining",
            Tab::FineTune => "Fine-tune",
            Tab::Compare => "Compare",
            Tab::Storage => "Storage",
            Tab::Inspect => "Inspect",
        }
    }
}

/// Which background job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Reading a triplet file.
    Load,
    /// Embedding and evaluating.
    Embed,
    /// Fine-tuning, saving and re-embedding.
    FineTune,
    /// Mining hard negatives.
    Mine,
}

/// What a file dialog is choosing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogTarget {
    /// A triplet file to open.
    DataFile,
    /// A model folder.
    ModelFolder,
    /// Where to save the fine-tuned model.
    OutputFolder,
    /// Where to export the comparison.
    ExportFile(super::experiments::ExportKind),
    /// An extra corpus file for mining.
    CorpusFile,
    /// Where to export the accepted mined rows.
    MinedExport,
    /// Where to save a heatmap window as PNG.
    HeatmapPng,
}

/// Severity of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something finished.
    Info,
    /// Something to know.
    Warning,
    /// Something failed.
    Error,
}

/// A message in the notification area.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Severity.
    pub level: Level,
    /// Text, with the full cause chain for errors.
    pub text: String,
}

/// Live view of a training run.
#[derive(Debug, Default, Clone)]
pub struct TrainLog {
    /// Steps so far.
    pub steps: Vec<StepPoint>,
    /// Validations so far.
    pub evals: Vec<EvalPoint>,
    /// Steps planned.
    pub total_steps: usize,
    /// The latest progress of any stage.
    pub progress: Option<Progress>,
    /// The outcome of the last finished run, for the panel.
    pub finished: Option<String>,
    /// Warm-up steps planned.
    pub warmup_steps: usize,
    /// Training and validation triplets of the run.
    pub triplets: (usize, usize),
    /// Stop was pressed: the run ends after its current step.
    pub stopping: bool,
    /// When the run was planned, and when its first step ended (the time between is the base
    /// model's validation, for the overall ETA).
    pub started_at: Option<std::time::Instant>,
    /// Seconds the first validation took.
    pub validation_secs: Option<f64>,
}

impl TrainLog {
    /// The validation the run keeps: the first with the highest validation nDCG@10 (a later
    /// step must do strictly better to replace it, as the trainer decides).
    pub fn best_eval(&self) -> Option<&crate::core::train::EvalPoint> {
        let key = crate::core::train::BEST_METRIC;
        let mut best: Option<&crate::core::train::EvalPoint> = None;
        for e in &self.evals {
            let Some(v) = e.metrics.get(key) else {
                continue;
            };
            if best.is_none_or(|b| *v > b.metrics[key]) {
                best = Some(e);
            }
        }
        best
    }

    /// The phase of the run and the time left for all of it: remaining steps at the measured
    /// step time plus remaining validations at the measured validation time.
    pub fn overall(&self) -> (String, Option<f64>) {
        let validations = crate::core::train::planned_validations(self.total_steps, None);
        let done_steps = self.steps.last().map_or(0, |s| s.step);
        let phase = match &self.progress {
            Some(p) if p.stage == "training" => {
                format!("training, step {done_steps}/{}", self.total_steps)
            }
            Some(p) => format!(
                "validation {}/{validations} ({})",
                (self.evals.len() + 1).min(validations),
                p.stage
            ),
            None => "preparing".into(),
        };
        let eta = match (self.secs_per_step(), self.validation_secs) {
            (Some(step), Some(val)) => Some(
                self.total_steps.saturating_sub(done_steps) as f64 * step
                    + validations.saturating_sub(self.evals.len()) as f64 * val,
            ),
            _ => None,
        };
        (phase, eta)
    }

    /// Mean seconds per step over the last steps (the latest ones reflect the steady state).
    pub fn secs_per_step(&self) -> Option<f64> {
        let recent: Vec<f64> = self
            .steps
            .iter()
            .rev()
            .take(20)
            .map(|s| s.step_secs)
            .collect();
        (!recent.is_empty()).then(|| recent.iter().sum::<f64>() / recent.len() as f64)
    }
}

/// Heatmap view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeatmapView {
    /// Documents × documents (pos₀, neg₀, pos₁, neg₁, ...).
    DocDoc,
    /// Queries × queries.
    QueryQuery,
    /// Queries × documents.
    QueryDoc,
}

/// One computed heatmap window and its texture.
pub struct CachedWindow {
    /// (fine-tuned model?, view, first row, first column).
    pub key: (bool, HeatmapView, usize, usize),
    /// Cosines, rows × cols row-major.
    pub values: Vec<f32>,
    /// Rows in the window.
    pub rows: usize,
    /// Columns in the window.
    pub cols: usize,
    /// The colour scale the texture was drawn with.
    pub scale: (f32, f32),
    /// The texture, if drawn.
    pub texture: Option<egui::TextureHandle>,
}

/// Window layout choices that are not persisted.
#[derive(Debug, Default)]
pub struct LayoutState {
    /// Whether the model sidebar shows; `None` until the first frame decides from the width
    /// (collapsed in narrow windows).
    pub model_panel: Option<bool>,
    /// The fine-tune form's plan: (settings it was computed for, training rows, steps).
    pub fine_tune_plan: Option<(String, usize, usize)>,
    /// A path typed by hand, when no file dialog can open.
    pub path_prompt: Option<PathPrompt>,
    /// The window was asked to close during fine-tuning: the question is shown.
    pub close_prompt: bool,
    /// The user chose to close: the next close request goes through.
    pub allow_close: bool,
    /// Close once the running fine-tune has saved its model.
    pub close_when_done: bool,
}

/// A path field shown instead of a file dialog (no desktop portal, or none answered).
#[derive(Debug, Clone)]
pub struct PathPrompt {
    /// What the path is for.
    pub target: DialogTarget,
    /// The text typed so far.
    pub text: String,
    /// Why the field is shown.
    pub reason: String,
}

/// Heatmap window position and cache.
pub struct HeatmapState {
    /// Which matrix.
    pub view: HeatmapView,
    /// First row of the window.
    pub row0: usize,
    /// First column of the window.
    pub col0: usize,
    /// Recently computed windows (a few, newest last).
    pub cache: Vec<CachedWindow>,
    /// Windows computed so far (tests check that only visible windows are computed).
    pub windows_computed: usize,
    /// Leave self-similarity cells (1.0) out of the colour scale.
    pub skip_diagonal: bool,
    /// Compare's difference map: (window key, scale) it was drawn for, and its texture.
    pub diff_texture: Option<(DiffKey, egui::TextureHandle)>,
}

/// What a difference map was drawn for: the window (view, first row, first column) and its
/// symmetric scale.
pub type DiffKey = (HeatmapView, usize, usize, u32);

/// Documents ranked above a positive, with their cosines, best first.
pub type Outranking = Vec<(usize, f64)>;

/// Inspector filters and selection.
#[derive(Debug, Clone, Default)]
pub struct InspectorState {
    /// The triplet shown in detail.
    pub selected: Option<usize>,
    /// Only triplets ranked wrong (by the model the list shows).
    pub wrong_only: bool,
    /// Only triplets of this flip kind.
    pub flip: Option<Flip>,
    /// Only triplets on this side of the compared model's training split.
    pub split: Option<super::experiments::SplitMark>,
    /// Case-insensitive text filter.
    pub search: String,
    /// Sort by rank of the positive (descending) instead of margin (ascending).
    pub sort_by_rank: bool,
    /// Outranking documents of the selection: (selection, fine-tuned?) -> (doc, score).
    pub outranking: Vec<((usize, bool), Outranking)>,
    /// The filtered, sorted triplet list and the filter it was computed for.
    pub rows: Option<(String, Vec<usize>)>,
    /// The list shows, filters ("wrong only") and sorts by the fine-tuned model's values.
    pub by_fine_tuned: bool,
    /// Scroll the list to the selection on the next frame (it was chosen elsewhere).
    pub scroll_to_selected: bool,
}
