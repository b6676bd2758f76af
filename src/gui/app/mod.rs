//! The app: persisted settings, domain data (datasets, evaluations, the training log), job
//! handles. Each frame first drains job events into the state (`logic`), then draws the panels,
//! which read a [`View`] of the state and push [`Command`]s, handled after drawing (`commands`).
//! Closing the window is `exit`.

mod commands;
mod exit;
mod experiments;
mod logic;
mod mining;
mod state;

pub use commands::{bundled_sample, Command, FineTuneResult, TrainedModel};
pub use exit::{default_recovery_dir, CloseChoice};
pub use experiments::{Experiments, ExportKind, SplitMark};
pub use mining::{Mining, MiningResult};
pub use state::*;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use eframe::egui;

use crate::core::data::{DataError, DataStats, Dataset, TextSearch};
use crate::core::encoder::EncodeError;
use crate::core::jobs::{JobHandle, Progress};
use crate::core::pipeline::{Evaluation, RunRecord};
use crate::core::train::TrainEvent;

use super::panels;

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
    /// The compared model's run record, the comparison on a subset, exports, past runs.
    pub experiments: Experiments,
    /// A fine-tune waits for the user to confirm replacing this folder (and why).
    pub confirm_replace: Option<(PathBuf, String)>,
    /// Hard-negative mining: the job and its result.
    pub mining: Mining,
    /// The review of the mined negatives.
    pub mining_review: MiningReview,
    /// Window layout choices (the model sidebar).
    pub layout: LayoutState,
    /// Whether Open.../Browse... try the desktop's file dialog (a session bus is there) before
    /// the path field.
    pub file_dialogs: bool,
    /// The next free numbered output folder next to the data file.
    next_output_dir: Option<PathBuf>,
    load_job: Option<JobHandle<(), (Dataset, DataStats, TextSearch), DataError>>,
    embed_job: Option<JobHandle<(), (Evaluation, Option<RunRecord>), EncodeError>>,
    train_job: Option<JobHandle<TrainEvent, FineTuneResult, String>>,
    /// Set when the window closes: a fine-tuning job then saves its best weights and stops.
    exiting: Arc<AtomicBool>,
    recovery_dir: PathBuf,
    dialog_job: Option<JobHandle<(), Option<PathBuf>, String>>,
    /// What the open dialog chooses, and when it opened.
    dialog_target: Option<(DialogTarget, Instant)>,
    /// What the baseline evaluation was computed with.
    zero_shot_signature: Option<EmbedSignature>,
    /// What the running baseline embedding uses.
    pending_signature: Option<EmbedSignature>,
    /// A rendered heatmap PNG waiting for its path.
    pending_png: Option<Vec<u8>>,
    /// Where the running embedding job's result goes: `None` the baseline, else the folder of
    /// the fine-tuned model it embeds.
    embed_target: Option<PathBuf>,
    embed_on_load: bool,
    mine_on_load: bool,
    after_first_embed: Vec<Command>,
    start_tab: Option<Tab>,
    pending_inspect: Option<usize>,
    ctx: egui::Context,
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
        // Scroll bars take their own room: content never slides under them.
        cc.egui_ctx
            .all_styles_mut(|s| s.spacing.scroll = egui::style::ScrollStyle::solid());
        let mut app = Self::with_settings(cc.egui_ctx.clone(), settings);
        app.embed_on_load = options.embed_on_start;
        app.mine_on_load = options.mine_on_start;
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
                skip_diagonal: true,
                diff_texture: None,
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
            experiments: Experiments::default(),
            confirm_replace: None,
            mining: Mining::default(),
            mining_review: MiningReview::default(),
            layout: LayoutState::default(),
            file_dialogs: commands::has_session_bus(),
            next_output_dir: None,
            load_job: None,
            embed_job: None,
            train_job: None,
            exiting: Arc::new(AtomicBool::new(false)),
            recovery_dir: default_recovery_dir(),
            dialog_job: None,
            dialog_target: None,
            pending_png: None,
            zero_shot_signature: None,
            pending_signature: None,
            embed_target: None,
            embed_on_load: false,
            mine_on_load: false,
            after_first_embed: Vec::new(),
            start_tab: None,
            pending_inspect: None,
            ctx,
        }
    }

    /// True while a job of this kind runs.
    pub fn is_running(&self, kind: JobKind) -> bool {
        match kind {
            JobKind::Load => self.load_job.is_some(),
            JobKind::Embed => self.embed_job.is_some(),
            JobKind::FineTune => self.train_job.is_some(),
            JobKind::Mine => self.mining.running(),
        }
    }

    /// True while any job runs.
    pub fn is_busy(&self) -> bool {
        self.load_job.is_some()
            || self.embed_job.is_some()
            || self.train_job.is_some()
            || self.mining.running()
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

/// Which jobs run, as the panels see them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Running {
    /// A triplet file is being read.
    pub load: bool,
    /// A model is embedding the triplets.
    pub embed: bool,
    /// Fine-tuning (or saving a trained model) runs.
    pub fine_tune: bool,
    /// Mining runs.
    pub mine: bool,
}

/// What the panels read in one frame: the domain data and the jobs' state.
pub struct View<'a> {
    /// The loaded triplets.
    pub dataset: Option<&'a Arc<Dataset>>,
    /// Their statistics.
    pub data_stats: Option<&'a DataStats>,
    /// Their texts indexed for search.
    pub text_search: Option<&'a Arc<TextSearch>>,
    /// The baseline model's evaluation.
    pub zero_shot: Option<&'a Arc<Evaluation>>,
    /// The fine-tuned model's evaluation.
    pub fine_tuned: Option<&'a Arc<Evaluation>>,
    /// Where the fine-tuned model was saved.
    pub fine_tuned_path: Option<&'a std::path::Path>,
    /// A trained model whose save failed is kept in memory.
    pub has_unsaved_model: bool,
    /// The training curves.
    pub train_log: &'a TrainLog,
    /// Progress of the embedding job.
    pub embed_progress: Option<&'a Progress>,
    /// Whether the last evaluation came entirely from the cache.
    pub last_embed_cached: Option<bool>,
    /// Messages to the user.
    pub notifications: &'a [Notification],
    /// Recent frame times (ms).
    pub frame_ms: &'a VecDeque<f32>,
    /// Which jobs run.
    pub running: Running,
    /// Where a fine-tuned model goes when no folder is given.
    pub default_output_dir: Option<PathBuf>,
    /// The panel shown.
    pub tab: Tab,
    /// The compared model's run record, the comparison on a subset, past runs.
    pub experiments: &'a Experiments,
    /// A fine-tune waits for the user to confirm replacing this folder (and why).
    pub confirm_replace: Option<&'a (PathBuf, String)>,
    /// Hard-negative mining: the job and its result.
    pub mining: &'a Mining,
    /// Why the shown results no longer match the model settings, if they do not.
    pub stale: Option<String>,
}

impl View<'_> {
    /// True while a job of this kind runs.
    pub fn is_running(&self, kind: JobKind) -> bool {
        match kind {
            JobKind::Load => self.running.load,
            JobKind::Embed => self.running.embed,
            JobKind::FineTune => self.running.fine_tune,
            JobKind::Mine => self.running.mine,
        }
    }
}

/// The panels' own state, changed while they draw.
pub struct PanelState<'a> {
    /// Persisted settings (model options, fine-tuning form, K, smoothing).
    pub settings: &'a mut Settings,
    /// Heatmap window and its cache.
    pub heatmap: &'a mut HeatmapState,
    /// Inspector filters and selection.
    pub inspector: &'a mut InspectorState,
    /// The review of the mined negatives.
    pub mining_review: &'a mut MiningReview,
    /// Window layout choices.
    pub layout: &'a mut LayoutState,
}

/// Where panels push what the user asked for; handled after drawing.
pub struct Commands<'a>(&'a mut Vec<Command>);

impl Commands<'_> {
    /// Asks the app to do something after this frame is drawn.
    pub fn push(&mut self, c: Command) {
        self.0.push(c);
    }
}

impl App {
    /// Splits the state for drawing: what panels read, what they change, where they push.
    pub fn for_panels(&mut self) -> (View<'_>, PanelState<'_>, Commands<'_>) {
        let default_output_dir = self.default_output_dir();
        let stale = self
            .zero_shot_signature
            .as_ref()
            .filter(|_| self.zero_shot.is_some())
            .and_then(|was| was.stale_against(&self.settings.embed_signature()));
        let running = Running {
            load: self.load_job.is_some(),
            embed: self.embed_job.is_some(),
            fine_tune: self.train_job.is_some(),
            mine: self.mining.running(),
        };
        let App {
            settings,
            dataset,
            zero_shot,
            fine_tuned,
            fine_tuned_path,
            unsaved,
            train_log,
            notifications,
            tab,
            heatmap,
            inspector,
            commands,
            embed_progress,
            last_embed_cached,
            frame_ms,
            data_stats,
            text_search,
            experiments,
            confirm_replace,
            mining,
            mining_review,
            layout,
            ..
        } = self;
        (
            View {
                dataset: dataset.as_ref(),
                data_stats: data_stats.as_ref(),
                text_search: text_search.as_ref(),
                zero_shot: zero_shot.as_ref(),
                fine_tuned: fine_tuned.as_ref(),
                fine_tuned_path: fine_tuned_path.as_deref(),
                has_unsaved_model: unsaved.is_some(),
                train_log,
                embed_progress: embed_progress.as_ref(),
                last_embed_cached: *last_embed_cached,
                notifications,
                frame_ms,
                running,
                default_output_dir,
                tab: *tab,
                experiments,
                confirm_replace: confirm_replace.as_ref(),
                mining,
                stale,
            },
            PanelState {
                settings,
                heatmap,
                inspector,
                mining_review,
                layout,
            },
            Commands(commands),
        )
    }
}

impl eframe::App for App {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.poll_jobs();
        self.close_if_done();
        self.intercept_close(ctx);
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
