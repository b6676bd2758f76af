//! The app's state and its logic: persisted settings, domain data (datasets, evaluations, the
//! training log), job handles, and the commands panels push. Each frame first drains job events,
//! then draws, then handles the commands the panels pushed.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use eframe::egui;

use crate::core::cache::EmbeddingCache;
use crate::core::data::{load_triplets, DataError, DataStats, Dataset, TextSearch};
use crate::core::encoder::{EncodeError, EncoderOptions, PromptChoice};
use crate::core::jobs::{self, JobEvent, JobHandle, Outcome, Progress, Update};
use crate::core::metrics::Flip;
use crate::core::model::{ModelSource, DEFAULT_MODEL};
use crate::core::pipeline::{
    evaluate_model, fine_tune, Evaluation, FineTuneRequest, FineTuned, Validation,
};
use crate::core::train::{EvalPoint, LossKind, StepPoint, StopReason, TrainConfig, TrainEvent};

use super::panels;

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
}

/// `$XDG_DATA_HOME/tripletlab/recovered` (or `~/.local/share/...`): trained models that were not
/// saved when the app closed.
pub fn default_recovery_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir)
        .join("tripletlab")
        .join("recovered")
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
        }
    }
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
            use_cache: true,
            recent_files: Vec::new(),
            train: TrainSettings::default(),
            smoothing: 0.6,
            top_k: 5,
        }
    }
}

impl Settings {
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
    /// Fine-tuning and its curves.
    FineTune,
    /// Zero-shot vs fine-tuned.
    Compare,
    /// Triplet table and details.
    Inspect,
}

impl Tab {
    /// Every tab in order.
    pub const ALL: [Tab; 6] = [
        Tab::Data,
        Tab::Metrics,
        Tab::Heatmap,
        Tab::FineTune,
        Tab::Compare,
        Tab::Inspect,
    ];
    /// Its label.
    pub fn label(self) -> &'static str {
        match self {
            Tab::Data => "Data",
            Tab::Metrics => "Metrics",
            Tab::Heatmap => "Heatmap",
            Tab::FineTune => "Fine-tune",
            Tab::Compare => "Compare",
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
}

/// What panels ask the app to do; handled after drawing.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Load a triplet file.
    OpenFile(PathBuf),
    /// Open a file dialog.
    Browse(DialogTarget),
    /// Embed the dataset with the configured model.
    StartEmbed,
    /// Embed the dataset with a fine-tuned model folder, as the comparison.
    EmbedComparison(PathBuf),
    /// Fine-tune with the configured settings.
    StartFineTune,
    /// Save a trained model whose save failed, to the folder now configured.
    SaveTrained,
    /// Stop a job.
    Cancel(JobKind),
    /// Switch panel.
    ShowTab(Tab),
    /// Open a triplet in the inspector.
    Inspect(usize),
    /// Show only triplets of one flip kind in the inspector.
    InspectFlips(Flip),
    /// Remove a notification.
    Dismiss(usize),
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

/// The result of a fine-tuning job.
#[derive(Debug)]
pub struct FineTuneResult {
    /// Why training stopped.
    pub stop: StopReason,
    /// Step of the best checkpoint.
    pub best_step: usize,
    /// Where the model was saved and its evaluation on the whole dataset, or why saving failed
    /// and the trained model, kept in memory so the user can save it elsewhere.
    pub saved: Result<(PathBuf, Evaluation), (String, Arc<TrainedModel>)>,
}

/// A trained model that is not saved yet.
pub type TrainedModel = FineTuned;

/// Saves a trained model to `out` and embeds the dataset with it; a failed save hands the model
/// back so nothing is lost.
fn save_and_embed(
    model: Arc<TrainedModel>,
    out: &Path,
    opts: &EncoderOptions,
    data: &Dataset,
    cache: Option<&EmbeddingCache>,
    exiting: &AtomicBool,
    ctx: &jobs::JobCtx<'_, TrainEvent>,
) -> Result<FineTuneResult, String> {
    let (stop, best_step) = (model.outcome.stop.clone(), model.outcome.best_step);
    if let Err(e) = model.save(out) {
        return Ok(FineTuneResult {
            stop,
            best_step,
            saved: Err((format!("{e:#}"), model)),
        });
    }
    if exiting.load(Ordering::SeqCst) {
        return Err(format!(
            "saved to {} as the app closed; not embedded",
            out.display()
        ));
    }
    let evaluation = ctx
        .run_without_points(|c| {
            evaluate_model(
                &ModelSource::Dir(out.to_path_buf()),
                opts,
                &data.triplets,
                cache,
                c,
            )
        })
        .map_err(|e| {
            format!(
                "the model was saved to {} but embedding it failed: {e:#}",
                out.display()
            )
        })?;
    Ok(FineTuneResult {
        stop,
        best_step,
        saved: Ok((out.to_path_buf(), evaluation)),
    })
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
}

/// Documents ranked above a positive, with their cosines, best first.
pub type Outranking = Vec<(usize, f64)>;

/// Inspector filters and selection.
#[derive(Debug, Clone, Default)]
pub struct InspectorState {
    /// The triplet shown in detail.
    pub selected: Option<usize>,
    /// Only triplets ranked wrong (by the zero-shot model).
    pub wrong_only: bool,
    /// Only triplets of this flip kind.
    pub flip: Option<Flip>,
    /// Case-insensitive text filter.
    pub search: String,
    /// Sort by rank of the positive (descending) instead of margin (ascending).
    pub sort_by_rank: bool,
    /// Outranking documents of the selection: (selection, fine-tuned?) -> (doc, score).
    pub outranking: Vec<((usize, bool), Outranking)>,
    /// The filtered, sorted triplet list and the filter it was computed for.
    pub rows: Option<(String, Vec<usize>)>,
}

/// The app.
pub struct App {
    /// Persisted settings.
    pub settings: Settings,
    /// The loaded triplets.
    pub dataset: Option<Arc<Dataset>>,
    /// The baseline model's evaluation.
    pub zero_shot: Option<Arc<Evaluation>>,
    /// The fine-tuned model's evaluation.
    pub fine_tuned: Option<Arc<Evaluation>>,
    /// Where the fine-tuned model was saved.
    pub fine_tuned_path: Option<PathBuf>,
    /// A trained model whose save failed, kept so it can be saved elsewhere.
    pub unsaved: Option<Arc<TrainedModel>>,
    /// The training curves.
    pub train_log: TrainLog,
    /// Messages to the user.
    pub notifications: Vec<Notification>,
    /// The panel shown.
    pub tab: Tab,
    /// Heatmap state.
    pub heatmap: HeatmapState,
    /// Inspector state.
    pub inspector: InspectorState,
    /// Commands pushed by panels this frame.
    pub commands: Vec<Command>,
    /// Progress of the embedding job.
    pub embed_progress: Option<Progress>,
    /// Whether the last evaluation came entirely from the cache.
    pub last_embed_cached: Option<bool>,
    /// Recent frame times (ms) of our own UI code.
    pub frame_ms: VecDeque<f32>,
    /// Every frame's CPU time (ms) as eframe reports it (UI code plus tessellation), for the
    /// statistics printed on exit when `TRIPLETLAB_FRAME_STATS` is set.
    pub frame_cpu_ms: Vec<f32>,
    frame_stats_state: (&'static str, usize),
    /// Statistics of the loaded dataset.
    pub data_stats: Option<DataStats>,
    /// The loaded dataset's texts indexed for the inspector's search.
    pub text_search: Option<Arc<TextSearch>>,
    load_job: Option<JobHandle<(), (Dataset, DataStats, TextSearch), DataError>>,
    embed_job: Option<JobHandle<(), Evaluation, EncodeError>>,
    train_job: Option<JobHandle<TrainEvent, FineTuneResult, String>>,
    /// Set when the window closes: a fine-tuning job then saves its best weights and stops.
    exiting: Arc<AtomicBool>,
    recovery_dir: PathBuf,
    dialog_job: Option<JobHandle<(), Option<PathBuf>, String>>,
    dialog_target: Option<DialogTarget>,
    /// Where the running embedding job's result goes: `None` the baseline, else the folder of
    /// the fine-tuned model it embeds.
    embed_target: Option<PathBuf>,
    embed_on_load: bool,
    after_first_embed: Vec<Command>,
    start_tab: Option<Tab>,
    pending_inspect: Option<usize>,
    ctx: egui::Context,
}

/// The bundled sample, used when nothing else is given.
pub fn bundled_sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/patents-sample.json")
}

/// The sample's bytes, built into the binary: a binary moved away from the source tree still
/// opens it.
const BUNDLED_SAMPLE: &[u8] = include_bytes!("../../assets/patents-sample.json");

/// Loads a triplet file; the bundled sample comes from the binary when its file is not there.
fn load_or_bundled(path: &Path) -> Result<Dataset, DataError> {
    match load_triplets(path) {
        Err(DataError::Io { .. }) if path == bundled_sample() && !path.exists() => {
            crate::core::data::parse_triplets(path, BUNDLED_SAMPLE)
        }
        r => r,
    }
}

impl App {
    /// Builds the app, restoring persisted settings and opening the start-up file.
    pub fn new(cc: &eframe::CreationContext<'_>, options: AppOptions) -> Self {
        let mut settings: Settings = cc
            .storage
            .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
            .unwrap_or_default();
        if let Some(m) = options.model {
            settings.model = m;
        }
        if let Some(out) = &options.fine_tune_out {
            settings.train.out_dir = out.display().to_string();
        }
        let mut app = Self::with_settings(cc.egui_ctx.clone(), settings);
        app.embed_on_load = options.embed_on_start;
        app.start_tab = options.tab;
        if let Some(dir) = options.compare_with {
            app.after_first_embed.push(Command::EmbedComparison(dir));
        }
        if options.fine_tune_on_start {
            app.after_first_embed.push(Command::StartFineTune);
        }
        app.pending_inspect = options.inspect;
        if let Some(dir) = options.recovery_dir {
            app.recovery_dir = dir;
        }
        app.announce_recovered_models();
        let data = options.data.unwrap_or_else(bundled_sample);
        app.commands.push(Command::OpenFile(data));
        app
    }

    /// An app with given settings and nothing loaded.
    pub fn with_settings(ctx: egui::Context, settings: Settings) -> Self {
        Self {
            settings,
            dataset: None,
            zero_shot: None,
            fine_tuned: None,
            fine_tuned_path: None,
            unsaved: None,
            train_log: TrainLog::default(),
            notifications: Vec::new(),
            tab: Tab::Data,
            heatmap: HeatmapState {
                view: HeatmapView::DocDoc,
                row0: 0,
                col0: 0,
                cache: Vec::new(),
                windows_computed: 0,
            },
            inspector: InspectorState::default(),
            commands: Vec::new(),
            embed_progress: None,
            last_embed_cached: None,
            frame_ms: VecDeque::new(),
            frame_cpu_ms: Vec::new(),
            frame_stats_state: ("idle", 0),
            data_stats: None,
            text_search: None,
            load_job: None,
            embed_job: None,
            train_job: None,
            exiting: Arc::new(AtomicBool::new(false)),
            recovery_dir: default_recovery_dir(),
            dialog_job: None,
            dialog_target: None,
            embed_target: None,
            embed_on_load: false,
            after_first_embed: Vec::new(),
            start_tab: None,
            pending_inspect: None,
            ctx,
        }
    }

    /// What closing the window does: loading and embedding stop (nothing is lost: cached vectors
    /// are written atomically); a fine-tuning job stops at its next step, saves its best weights
    /// and is waited for; a trained model that is still unsaved goes to the recovery folder.
    pub fn finish_before_exit(&mut self) {
        self.exiting.store(true, Ordering::SeqCst);
        self.load_job = None;
        self.embed_job = None;
        self.dialog_job = None;
        if let Some(job) = self.train_job.take() {
            eprintln!(
                "tripletlab: closing; fine-tuning stops and its best weights are saved first"
            );
            job.cancel();
            match job.wait(|_| {}) {
                Outcome::Finished(Ok(FineTuneResult {
                    saved: Err((msg, model)),
                    ..
                })) => {
                    eprintln!("tripletlab: saving the trained model failed: {msg}");
                    self.unsaved = Some(model);
                }
                Outcome::Finished(Ok(_)) => {}
                Outcome::Finished(Err(msg)) => eprintln!("tripletlab: fine-tuning: {msg}"),
                Outcome::Panicked(msg) => eprintln!("tripletlab: fine-tuning crashed: {msg}"),
            }
        }
        if let Some(model) = self.unsaved.take() {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let dir = self.recovery_dir.join(format!("fine-tuned-{stamp}"));
            match model.save(&dir) {
                Ok(()) => eprintln!(
                    "tripletlab: the unsaved trained model was saved to {}",
                    dir.display()
                ),
                Err(e) => eprintln!(
                    "tripletlab: the unsaved trained model is lost: cannot save it to {}: {e}",
                    dir.display()
                ),
            }
        }
    }

    /// Tells the user about trained models saved to the recovery folder when the app closed.
    fn announce_recovered_models(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.recovery_dir) else {
            return;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("model.safetensors").is_file())
            .collect();
        found.sort();
        for dir in found {
            self.notify(
                Level::Warning,
                format!(
                    "A fine-tuned model that was not saved when the app last closed is in {}; \
                     move it where you want to keep it",
                    dir.display()
                ),
            );
        }
    }

    /// True while a job of this kind runs.
    pub fn is_running(&self, kind: JobKind) -> bool {
        match kind {
            JobKind::Load => self.load_job.is_some(),
            JobKind::Embed => self.embed_job.is_some(),
            JobKind::FineTune => self.train_job.is_some(),
        }
    }

    /// True while any job runs.
    pub fn is_busy(&self) -> bool {
        self.load_job.is_some() || self.embed_job.is_some() || self.train_job.is_some()
    }

    fn notify(&mut self, level: Level, text: impl Into<String>) {
        self.notifications.push(Notification {
            level,
            text: text.into(),
        });
        if self.notifications.len() > 20 {
            self.notifications.remove(0);
        }
    }

    fn wake(&self) -> impl Fn() + Send + Sync + 'static {
        let ctx = self.ctx.clone();
        move || ctx.request_repaint()
    }

    /// Drains every job's events into the state.
    pub fn poll_jobs(&mut self) {
        if let Some(job) = &mut self.load_job {
            for ev in job.drain() {
                if let JobEvent::Done(outcome) = ev {
                    self.load_job = None;
                    match outcome {
                        Outcome::Finished(Ok((d, stats, search))) => {
                            self.data_stats = Some(stats);
                            self.text_search = Some(Arc::new(search));
                            self.set_dataset(d);
                        }
                        Outcome::Finished(Err(e)) => self.notify(Level::Error, format!("{e:#}")),
                        Outcome::Panicked(m) => {
                            self.notify(Level::Error, format!("loading crashed: {m}"))
                        }
                    }
                    break;
                }
            }
        }
        if let Some(job) = &mut self.embed_job {
            let mut done = None;
            let mut warnings = Vec::new();
            for ev in job.drain() {
                match ev {
                    JobEvent::Update(Update::Progress(p)) => self.embed_progress = Some(p),
                    JobEvent::Update(Update::Warning(w)) => warnings.push(w),
                    JobEvent::Update(Update::Point(())) => {}
                    JobEvent::Done(o) => done = Some(o),
                }
            }
            for w in warnings {
                self.notify(Level::Warning, w);
            }
            if let Some(o) = done {
                self.embed_job = None;
                self.embed_progress = None;
                if !matches!(o, Outcome::Finished(Ok(_))) {
                    self.embed_target = None;
                }
                match o {
                    Outcome::Finished(Ok(eval)) if self.embed_target.is_some() => {
                        self.notify(
                            Level::Info,
                            format!("Embedded the comparison model in {:.1} s", eval.embed_secs),
                        );
                        self.fine_tuned = Some(Arc::new(eval));
                        self.fine_tuned_path = self.embed_target.take();
                        self.heatmap.cache.clear();
                        self.inspector.outranking.clear();
                        self.inspector.rows = None;
                    }
                    Outcome::Finished(Ok(eval)) => {
                        let e = &eval.embeddings;
                        let cached = e.computed == 0;
                        self.last_embed_cached = Some(cached);
                        self.notify(
                            Level::Info,
                            format!(
                                "Embedded {} distinct texts in {:.1} s ({} from the cache{})",
                                e.cache_hits + e.computed,
                                eval.embed_secs,
                                e.cache_hits,
                                if cached { ": loaded instantly" } else { "" }
                            ),
                        );
                        self.zero_shot = Some(Arc::new(eval));
                        self.fine_tuned = None;
                        self.heatmap.cache.clear();
                        self.inspector.outranking.clear();
                        self.inspector.rows = None;
                        if let Some(tab) = self.start_tab.take() {
                            self.tab = tab;
                        } else if self.tab == Tab::Data {
                            self.tab = Tab::Metrics;
                        }
                        self.commands.append(&mut self.after_first_embed);
                    }
                    Outcome::Finished(Err(EncodeError::Cancelled)) => {
                        self.notify(Level::Info, "Embedding cancelled")
                    }
                    Outcome::Finished(Err(e)) => {
                        self.notify(Level::Error, format!("Embedding failed: {e:#}"))
                    }
                    Outcome::Panicked(m) => {
                        self.notify(Level::Error, format!("The embedding job crashed: {m}"))
                    }
                }
            }
        }
        if let Some(job) = &mut self.train_job {
            let mut done = None;
            let mut warnings = Vec::new();
            for ev in job.drain() {
                match ev {
                    JobEvent::Update(Update::Progress(p)) => self.train_log.progress = Some(p),
                    JobEvent::Update(Update::Point(TrainEvent::Started {
                        total_steps, ..
                    })) => {
                        self.train_log.total_steps = total_steps;
                    }
                    JobEvent::Update(Update::Point(TrainEvent::Step(s))) => {
                        self.train_log.steps.push(s)
                    }
                    JobEvent::Update(Update::Point(TrainEvent::Eval(e))) => {
                        self.train_log.evals.push(e)
                    }
                    JobEvent::Update(Update::Warning(w)) => warnings.push(w),
                    JobEvent::Done(o) => done = Some(o),
                }
            }
            for w in warnings {
                self.notify(Level::Warning, w);
            }
            if let Some(o) = done {
                self.train_job = None;
                self.train_log.progress = None;
                match o {
                    Outcome::Finished(Ok(FineTuneResult {
                        saved: Err((err, model)),
                        ..
                    })) => {
                        let msg = format!(
                            "Saving the fine-tuned model failed: {err}. The trained weights are kept: \
                             choose another folder under Fine-tune and press \"Save the trained model\""
                        );
                        self.train_log.finished = Some(msg.clone());
                        self.notify(Level::Error, msg);
                        self.unsaved = Some(model);
                    }
                    Outcome::Finished(Ok(FineTuneResult {
                        stop,
                        best_step,
                        saved: Ok((saved_to, evaluation)),
                    })) => {
                        self.unsaved = None;
                        let how = match &stop {
                            StopReason::Completed => "completed".to_string(),
                            StopReason::Cancelled { after_step } => {
                                format!("stopped after step {after_step}")
                            }
                            StopReason::NonFiniteLoss { step } => {
                                format!("stopped: the loss at step {step} was NaN or infinite")
                            }
                        };
                        let msg = format!(
                            "Fine-tuning {how}; saved the best checkpoint (step {best_step}) to {}",
                            saved_to.display()
                        );
                        let level = if matches!(stop, StopReason::NonFiniteLoss { .. }) {
                            Level::Warning
                        } else {
                            Level::Info
                        };
                        self.notify(level, msg.clone());
                        self.train_log.finished = Some(msg);
                        self.fine_tuned = Some(Arc::new(evaluation));
                        self.fine_tuned_path = Some(saved_to);
                        self.heatmap.cache.clear();
                        self.inspector.outranking.clear();
                        self.inspector.rows = None;
                    }
                    Outcome::Finished(Err(e)) => {
                        self.train_log.finished = Some(format!("Failed: {e}"));
                        self.notify(Level::Error, format!("Fine-tuning failed: {e}"));
                    }
                    Outcome::Panicked(m) => {
                        self.notify(Level::Error, format!("The fine-tuning job crashed: {m}"))
                    }
                }
            }
        }
        if let Some(job) = &mut self.dialog_job {
            for ev in job.drain() {
                if let JobEvent::Done(o) = ev {
                    self.dialog_job = None;
                    let target = self.dialog_target.take();
                    match (o, target) {
                        (Outcome::Finished(Ok(Some(path))), Some(DialogTarget::DataFile)) => {
                            self.commands.push(Command::OpenFile(path));
                        }
                        (Outcome::Finished(Ok(Some(path))), Some(DialogTarget::ModelFolder)) => {
                            self.settings.model = path.display().to_string();
                        }
                        (Outcome::Finished(Ok(Some(path))), Some(DialogTarget::OutputFolder)) => {
                            self.settings.train.out_dir = path.display().to_string();
                        }
                        (Outcome::Finished(Ok(None)), _) | (_, None) => {}
                        (Outcome::Finished(Err(e)), _) => {
                            self.notify(Level::Error, format!("File dialog failed: {e}"))
                        }
                        (Outcome::Panicked(m), _) => {
                            self.notify(Level::Error, format!("File dialog failed: {m}"))
                        }
                    }
                    break;
                }
            }
        }
    }

    fn set_dataset(&mut self, d: Dataset) {
        let path = d.path.clone();
        let r = &d.report;
        if !r.skipped.is_empty() {
            self.notify(
                Level::Warning,
                format!(
                    "{}: skipped {} of {} rows (see the Data panel)",
                    path.display(),
                    r.skipped.len(),
                    r.total_rows
                ),
            );
        }
        self.settings.recent_files.retain(|p| p != &path);
        self.settings.recent_files.insert(0, path);
        self.settings.recent_files.truncate(10);
        self.dataset = Some(Arc::new(d));
        self.zero_shot = None;
        self.fine_tuned = None;
        self.fine_tuned_path = None;
        self.train_log = TrainLog::default();
        self.heatmap.cache.clear();
        self.heatmap.row0 = 0;
        self.heatmap.col0 = 0;
        self.inspector = InspectorState {
            selected: self.pending_inspect.take(),
            ..Default::default()
        };
        self.tab = Tab::Data;
        if std::mem::take(&mut self.embed_on_load) {
            self.commands.push(Command::StartEmbed);
        }
    }

    /// Handles the commands pushed this frame.
    pub fn handle_commands(&mut self) {
        for cmd in std::mem::take(&mut self.commands) {
            self.handle(cmd);
        }
    }

    fn refuse(&mut self, what: &str, kind: JobKind) -> bool {
        if self.is_running(kind) {
            self.notify(
                Level::Warning,
                format!("{what} is already running; stop it first"),
            );
            return true;
        }
        false
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::OpenFile(path) => {
                if self.refuse("Loading a file", JobKind::Load) {
                    return;
                }
                if self.is_running(JobKind::Embed) || self.is_running(JobKind::FineTune) {
                    self.notify(
                        Level::Warning,
                        "Stop the running job before opening another file",
                    );
                    return;
                }
                let spawned = jobs::spawn("load-triplets", self.wake(), move |_ctx| {
                    let d = load_or_bundled(&path)?;
                    let stats = DataStats::of(&d);
                    let search = TextSearch::new(&d);
                    Ok((d, stats, search))
                });
                match spawned {
                    Ok(h) => self.load_job = Some(h),
                    Err(e) => self.notify(Level::Error, format!("cannot start a thread: {e}")),
                }
            }
            Command::Browse(target) => {
                if self.dialog_job.is_some() {
                    return;
                }
                let spawned = jobs::spawn("file-dialog", self.wake(), move |_ctx| {
                    let dialog = rfd::FileDialog::new();
                    Ok::<_, String>(match target {
                        DialogTarget::DataFile => dialog
                            .add_filter("triplets", &["json", "jsonl"])
                            .pick_file(),
                        DialogTarget::ModelFolder | DialogTarget::OutputFolder => {
                            dialog.pick_folder()
                        }
                    })
                });
                match spawned {
                    Ok(h) => {
                        self.dialog_job = Some(h);
                        self.dialog_target = Some(target);
                    }
                    Err(e) => self.notify(Level::Error, format!("cannot start a thread: {e}")),
                }
            }
            Command::StartEmbed => self.start_embed(None),
            Command::EmbedComparison(dir) => self.start_embed(Some(dir)),
            Command::StartFineTune => self.start_fine_tune(),
            Command::SaveTrained => self.save_trained(),
            Command::Cancel(kind) => match kind {
                JobKind::Load => {}
                JobKind::Embed => {
                    if let Some(j) = &self.embed_job {
                        j.cancel();
                    }
                }
                JobKind::FineTune => {
                    if let Some(j) = &self.train_job {
                        j.cancel();
                    }
                }
            },
            Command::ShowTab(tab) => self.tab = tab,
            Command::Inspect(i) => {
                self.inspector.selected = Some(i);
                self.tab = Tab::Inspect;
            }
            Command::InspectFlips(f) => {
                self.inspector.flip = Some(f);
                self.inspector.rows = None;
                self.inspector.wrong_only = false;
                self.inspector.selected = None;
                self.tab = Tab::Inspect;
            }
            Command::Dismiss(i) => {
                if i < self.notifications.len() {
                    self.notifications.remove(i);
                }
            }
        }
    }

    fn start_embed(&mut self, comparison: Option<PathBuf>) {
        if self.refuse("Embedding", JobKind::Embed) {
            return;
        }
        let Some(data) = self.dataset.clone() else {
            self.notify(Level::Warning, "Open a triplet file first");
            return;
        };
        let source = match &comparison {
            Some(dir) => ModelSource::Dir(dir.clone()),
            None => ModelSource::parse(self.settings.model.trim()),
        };
        self.embed_target = comparison;
        let opts = self.settings.encoder_options();
        let cache = self
            .settings
            .use_cache
            .then(|| EmbeddingCache::new(EmbeddingCache::default_dir()));
        let spawned = jobs::spawn("embed", self.wake(), move |ctx| {
            evaluate_model(&source, &opts, &data.triplets, cache.as_ref(), ctx)
        });
        match spawned {
            Ok(h) => {
                self.embed_job = Some(h);
                self.embed_progress = None;
            }
            Err(e) => self.notify(Level::Error, format!("cannot start a thread: {e}")),
        }
    }

    /// Where the fine-tuned model goes when the user gave no folder.
    pub fn default_output_dir(&self) -> Option<PathBuf> {
        let data = self.dataset.as_ref()?;
        let stem = data.path.file_stem()?.to_string_lossy().to_string();
        let model = self
            .settings
            .model
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("model")
            .to_string();
        Some(
            data.path
                .parent()
                .unwrap_or(Path::new("."))
                .join(format!("{model}-{stem}-finetuned")),
        )
    }

    /// The folder the fine-tuned model is saved to: the user's, else next to the data file.
    fn output_dir(&mut self) -> Option<PathBuf> {
        match self.settings.train.out_dir.trim() {
            "" => {
                let dir = self.default_output_dir();
                if dir.is_none() {
                    self.notify(
                        Level::Error,
                        "Choose a folder to save the fine-tuned model to",
                    );
                }
                dir
            }
            s => Some(PathBuf::from(s)),
        }
    }

    fn save_trained(&mut self) {
        if self.refuse("Fine-tuning", JobKind::FineTune) {
            return;
        }
        let (Some(model), Some(data)) = (self.unsaved.clone(), self.dataset.clone()) else {
            return;
        };
        let Some(out) = self.output_dir() else {
            return;
        };
        let opts = self.settings.encoder_options();
        let cache = self
            .settings
            .use_cache
            .then(|| EmbeddingCache::new(EmbeddingCache::default_dir()));
        let exiting = Arc::clone(&self.exiting);
        let spawned = jobs::spawn("save-model", self.wake(), move |ctx| {
            save_and_embed(model, &out, &opts, &data, cache.as_ref(), &exiting, ctx)
        });
        match spawned {
            Ok(h) => self.train_job = Some(h),
            Err(e) => self.notify(Level::Error, format!("cannot start a thread: {e}")),
        }
    }

    fn start_fine_tune(&mut self) {
        if self.refuse("Fine-tuning", JobKind::FineTune) {
            return;
        }
        let Some(data) = self.dataset.clone() else {
            self.notify(Level::Warning, "Open a triplet file first");
            return;
        };
        let Some(out) = self.output_dir() else {
            return;
        };
        let t = &self.settings.train;
        let opts = self.settings.encoder_options();
        let cfg = TrainConfig {
            loss: t.loss,
            epochs: t.epochs.max(1),
            batch_size: t.batch_size.max(2),
            lr: t.lr,
            val_split: t.val_split,
            eval_max_seq_len: opts.max_seq_len,
            eval_batch_size: opts.batch_size,
            prompts: opts.prompts.clone(),
            ..TrainConfig::default()
        };
        let source = ModelSource::parse(self.settings.model.trim());
        let cache = self
            .settings
            .use_cache
            .then(|| EmbeddingCache::new(EmbeddingCache::default_dir()));
        self.train_log = TrainLog::default();
        let exiting = Arc::clone(&self.exiting);
        let spawned = jobs::spawn(
            "fine-tune",
            self.wake(),
            move |ctx| -> Result<FineTuneResult, String> {
                let request = FineTuneRequest {
                    source,
                    data_path: &data.path,
                    triplets: &data.triplets,
                    validation: Validation::Split {
                        share: cfg.val_split,
                    },
                    cfg,
                };
                let trained = fine_tune(&request, &mut |_| {}, ctx)
                    .map_err(|e| crate::core::error_message(&e))?;
                if exiting.load(Ordering::SeqCst) && trained.outcome.steps.is_empty() {
                    return Err("the app closed before the first training step".into());
                }
                if matches!(trained.outcome.stop, StopReason::Cancelled { .. }) {
                    // Stop ended training; the best checkpoint is still saved and embedded, and a
                    // second Stop cancels that.
                    ctx.cancel_token().reset();
                }
                let model = Arc::new(trained);
                save_and_embed(model, &out, &opts, &data, cache.as_ref(), &exiting, ctx)
            },
        );
        match spawned {
            Ok(h) => self.train_job = Some(h),
            Err(e) => self.notify(Level::Error, format!("cannot start a thread: {e}")),
        }
    }

    /// Prints the CPU time per frame since the app last changed between idle, embedding and
    /// fine-tuning (for measuring responsiveness while jobs run).
    fn print_frame_stats(&mut self) {
        let busy = if self.is_running(JobKind::Embed) {
            "embedding"
        } else if self.is_running(JobKind::FineTune) {
            "fine-tuning"
        } else {
            "idle"
        };
        if self.frame_stats_state.0 != busy {
            self.frame_stats_state = (busy, self.frame_cpu_ms.len().saturating_sub(60));
        }
        let mut v = self.frame_cpu_ms[self.frame_stats_state.1..].to_vec();
        v.sort_by(f32::total_cmp);
        let pct = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
        eprintln!(
            "frames {} ({busy}): CPU time per frame median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
            v.len(),
            pct(0.5),
            pct(0.95),
            v[v.len() - 1]
        );
    }

    fn take_dropped_files(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        });
        if let Some(path) = dropped.into_iter().next() {
            self.commands.push(Command::OpenFile(path));
        }
    }
}

impl eframe::App for App {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.poll_jobs();
        self.take_dropped_files(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        if let Some(cpu) = frame.info().cpu_usage {
            self.frame_cpu_ms.push(cpu * 1000.0);
            if self.frame_cpu_ms.len().is_multiple_of(60)
                && std::env::var_os("TRIPLETLAB_FRAME_STATS").is_some()
            {
                self.print_frame_stats();
            }
        }
        let start = Instant::now();
        panels::draw(self, ui);
        self.handle_commands();
        self.frame_ms
            .push_back(start.elapsed().as_secs_f32() * 1000.0);
        if self.frame_ms.len() > 120 {
            self.frame_ms.pop_front();
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.settings);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.finish_before_exit();
    }
}
