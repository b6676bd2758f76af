//! The commands panels push and their handling after drawing: opening files and dialogs,
//! starting embedding and fine-tuning jobs (refusing a second one of a kind), cancelling, and
//! saving a trained model that is still in memory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::exit::CloseChoice;
use super::experiments::ExportKind;
use super::state::{DialogTarget, JobKind, Level, Tab, TrainLog};
use super::App;
use crate::core::cache::EmbeddingCache;
use crate::core::data::{load_triplets, DataError, DataStats, Dataset, TextSearch};
use crate::core::encoder::EncoderOptions;
use crate::core::jobs;
use crate::core::metrics::Flip;
use crate::core::model::ModelSource;
use crate::core::pipeline::{
    evaluate_model, fine_tune, would_replace, Evaluation, FineTuneRequest, FineTuned, RunRecord,
    Validation,
};
use crate::core::train::{StopReason, TrainEvent};

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
    /// Save a rendered heatmap window (PNG bytes): asks where.
    SavePng(Vec<u8>),
    /// A path typed in the path field (instead of a file dialog).
    ChosePath(DialogTarget, PathBuf),
    /// The path field was closed without a path.
    CancelPathPrompt,
    /// The answer to "close during fine-tuning?".
    CloseAnswer(CloseChoice),
    /// Fine-tune into the configured folder although it exists (the user confirmed).
    StartFineTuneReplacing,
    /// Do not replace the folder; choose another.
    CancelReplace,
    /// Measure the comparison on another subset.
    SetSubset(crate::core::pipeline::Subset),
    /// Choose a file to export the comparison to.
    Export(ExportKind),
    /// Export the comparison to this file.
    ExportTo(ExportKind, PathBuf),
    /// Look for past runs next to the data.
    ScanRuns,
    /// Embed a past run's model (or any folder) as the baseline.
    UseAsBaseline(PathBuf),
    /// Compute the storage grid of the evaluated models.
    ComputeGrid,
    /// Mine hard negatives for the open file.
    StartMining,
    /// Forget an extra corpus file.
    RemoveCorpus(PathBuf),
    /// Write the accepted mined rows to this file.
    ExportMinedTo(PathBuf),
}

/// The result of a fine-tuning job.
#[derive(Debug)]
pub struct FineTuneResult {
    /// Why training stopped.
    pub stop: StopReason,
    /// Step of the best checkpoint.
    pub best_step: usize,
    /// Where the model was saved, its evaluation on the whole dataset and its run record, or why
    /// saving failed and the trained model, kept in memory so the user can save it elsewhere.
    pub saved: Result<(PathBuf, Evaluation, RunRecord), (String, Arc<TrainedModel>)>,
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
        saved: Ok((out.to_path_buf(), evaluation, model.record.clone())),
    })
}

/// The bundled sample, used when nothing else is given.
pub fn bundled_sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/patents-sample.json")
}

/// The sample's bytes, built into the binary: a binary moved away from the source tree still
/// opens it.
const BUNDLED_SAMPLE: &[u8] = include_bytes!("../../../assets/patents-sample.json");

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
                // Without a session bus no portal can answer: ask for the path straight away.
                if !self.file_dialogs {
                    self.ask_for_path(
                        target,
                        "No file dialog is available here (no desktop portal): type the path",
                    );
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
                        DialogTarget::ExportFile(kind) => dialog
                            .add_filter(kind.extension(), &[kind.extension()])
                            .set_file_name(format!("comparison.{}", kind.extension()))
                            .save_file(),
                        DialogTarget::CorpusFile => dialog
                            .add_filter("documents", &["json", "jsonl", "txt"])
                            .pick_file(),
                        DialogTarget::MinedExport => dialog
                            .add_filter("JSON lines", &["jsonl"])
                            .set_file_name("mined-negatives.jsonl")
                            .save_file(),
                        DialogTarget::HeatmapPng => dialog
                            .add_filter("PNG", &["png"])
                            .set_file_name("heatmap.png")
                            .save_file(),
                    })
                });
                match spawned {
                    Ok(h) => {
                        self.dialog_job = Some(h);
                        self.dialog_target = Some((target, std::time::Instant::now()));
                    }
                    Err(e) => self.notify(Level::Error, format!("cannot start a thread: {e}")),
                }
            }
            Command::StartEmbed => self.start_embed(None),
            Command::EmbedComparison(dir) => self.start_embed(Some(dir)),
            Command::StartFineTune => self.start_fine_tune(false),
            Command::StartFineTuneReplacing => {
                self.confirm_replace = None;
                self.start_fine_tune(true);
            }
            Command::CancelReplace => self.confirm_replace = None,
            Command::SetSubset(subset) => {
                self.experiments.subset = subset;
                self.experiments.comparison = None;
                self.request_comparison();
            }
            Command::Export(kind) => {
                if self.experiments.comparison.is_none() {
                    self.notify(
                        Level::Warning,
                        "Compare two models first: there is nothing to export",
                    );
                } else {
                    self.commands
                        .push(Command::Browse(DialogTarget::ExportFile(kind)));
                }
            }
            Command::ExportTo(kind, path) => self.export(kind, path),
            Command::ScanRuns => self.scan_runs(),
            Command::ComputeGrid => self.start_grid(),
            Command::UseAsBaseline(dir) => {
                self.settings.model = dir.display().to_string();
                self.start_embed(None);
            }
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
                        self.train_log.stopping = true;
                    }
                }
                JobKind::Mine => self.cancel_mining(),
            },
            Command::StartMining => self.start_mining(),
            Command::ExportMinedTo(path) => self.export_mined(path),
            Command::RemoveCorpus(path) => self.settings.mining.corpus.retain(|p| p != &path),
            Command::ShowTab(tab) => self.tab = tab,
            Command::Inspect(i) => {
                // Chosen from elsewhere (the heatmap, a link): no filter may hide it.
                let s = &mut self.inspector;
                s.selected = Some(i);
                s.wrong_only = false;
                s.flip = None;
                s.split = None;
                s.search.clear();
                s.rows = None;
                s.scroll_to_selected = true;
                self.tab = Tab::Inspect;
            }
            Command::InspectFlips(f) => {
                self.inspector.flip = Some(f);
                // The same triplets the comparison counted.
                self.inspector.split = match self.experiments.subset {
                    crate::core::pipeline::Subset::HeldOut => Some(super::SplitMark::HeldOut),
                    crate::core::pipeline::Subset::Training => Some(super::SplitMark::Train),
                    crate::core::pipeline::Subset::All => None,
                }
                .filter(|_| self.experiments.split_of.is_some());
                self.inspector.rows = None;
                self.inspector.wrong_only = false;
                self.inspector.selected = None;
                self.tab = Tab::Inspect;
            }
            Command::SavePng(png) => {
                self.pending_png = Some(png);
                self.commands
                    .push(Command::Browse(DialogTarget::HeatmapPng));
            }
            Command::ChosePath(target, path) => {
                self.layout.path_prompt = None;
                self.chose_path(target, path);
            }
            Command::CancelPathPrompt => self.layout.path_prompt = None,
            Command::CloseAnswer(choice) => self.answer_close(choice),
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
        if comparison.is_none() {
            self.pending_signature = Some(self.settings.embed_signature());
        }
        self.embed_target = comparison;
        let opts = self.settings.encoder_options();
        let cache = self
            .settings
            .use_cache
            .then(|| EmbeddingCache::new(EmbeddingCache::default_dir()));
        let spawned = jobs::spawn("embed", self.wake(), move |ctx| {
            let eval = evaluate_model(&source, &opts, &data.triplets, cache.as_ref(), ctx)?;
            // A fine-tuned folder says which rows it trained on.
            let record = match &source {
                ModelSource::Dir(dir) => RunRecord::read(dir).unwrap_or_else(|e| {
                    ctx.warn(format!("{e}; its training rows are unknown"));
                    None
                }),
                ModelSource::Hub(_) | ModelSource::Remote(_) => None,
            };
            Ok((eval, record))
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
        self.next_output_dir.clone()
    }

    /// Finds the next free numbered folder for a fine-tuned model next to the data file
    /// (`all-MiniLM-L6-v2-patents-dev-fine-tuned-003`): every run gets its own, nothing is
    /// overwritten. Called when a file is opened and after each fine-tune (not every frame).
    pub(super) fn refresh_output_dir(&mut self) {
        self.next_output_dir = self.dataset.as_ref().and_then(|data| {
            let stem = data.path.file_stem()?.to_string_lossy().to_string();
            let model = self
                .settings
                .model
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("model")
                .to_string();
            let dir = data.path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (1..10_000)
                .map(|n| dir.join(format!("{model}-{stem}-fine-tuned-{n:03}")))
                .find(|p| !p.exists())
        });
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

    fn start_fine_tune(&mut self, replace_confirmed: bool) {
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
        // Never replace a folder without asking.
        if let Some(why) = would_replace(&out).filter(|_| !replace_confirmed) {
            self.confirm_replace = Some((out, why));
            return;
        }
        let opts = self.settings.encoder_options();
        let cfg = self
            .settings
            .train_config(self.zero_shot.as_ref().map(|e| e.embeddings.queries.dim));
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
                    data: &data,
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
}

/// True when a D-Bus session bus can be reached (where desktop portals answer): its address in
/// the environment, or systemd's socket in the runtime folder.
pub(super) fn has_session_bus() -> bool {
    std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some()
        || std::env::var_os("XDG_RUNTIME_DIR")
            .is_some_and(|d| std::path::Path::new(&d).join("bus").exists())
}
