//! Each frame's first step: drain every job's events into the state (progress, loss points,
//! warnings, results), and the notifications that go with them.

use std::path::PathBuf;
use std::sync::Arc;

use super::commands::{Command, FineTuneResult};
use super::state::{DialogTarget, InspectorState, Level, Tab, TrainLog};
use super::App;
use crate::core::data::Dataset;
use crate::core::encoder::EncodeError;
use crate::core::jobs::{JobEvent, Outcome, Update};
use crate::core::train::{StopReason, TrainEvent};

impl App {
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
                            self.notify(Level::Error, format!("loading crashed: {m}"));
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
                    Outcome::Finished(Ok((eval, record))) if self.embed_target.is_some() => {
                        self.notify(
                            Level::Info,
                            format!("Embedded the comparison model in {:.1} s", eval.embed_secs),
                        );
                        self.fine_tuned = Some(Arc::new(eval));
                        self.fine_tuned_path = self.embed_target.take();
                        self.heatmap.cache.clear();
                        self.inspector.outranking.clear();
                        self.inspector.rows = None;
                        self.set_record(record);
                    }
                    Outcome::Finished(Ok((eval, _))) => {
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
                        self.zero_shot_signature = self.pending_signature.take();
                        self.fine_tuned = None;
                        self.experiments.comparison = None;
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
                        self.notify(Level::Info, "Embedding cancelled");
                    }
                    Outcome::Finished(Err(e)) => {
                        self.notify(Level::Error, format!("Embedding failed: {e:#}"));
                    }
                    Outcome::Panicked(m) => {
                        self.notify(Level::Error, format!("The embedding job crashed: {m}"));
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
                        total_steps,
                        warmup_steps,
                        train_triplets,
                        val_triplets,
                    })) => {
                        self.train_log.total_steps = total_steps;
                        self.train_log.warmup_steps = warmup_steps;
                        self.train_log.triplets = (train_triplets, val_triplets);
                        self.train_log.started_at = Some(std::time::Instant::now());
                    }
                    JobEvent::Update(Update::Point(TrainEvent::Step(s))) => {
                        self.train_log.steps.push(s);
                    }
                    JobEvent::Update(Update::Point(TrainEvent::Eval(e))) => {
                        if e.step == 0 {
                            self.train_log.validation_secs =
                                self.train_log.started_at.map(|t| t.elapsed().as_secs_f64());
                        }
                        self.train_log.evals.push(e);
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
                self.train_log.stopping = false;
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
                        saved: Ok((saved_to, evaluation, record)),
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
                        let saved_what = if best_step == 0 {
                            "no step improved on the base model, so the saved model is the \
                             unchanged base model (step 0)"
                                .to_string()
                        } else {
                            format!("saved the best checkpoint (step {best_step})")
                        };
                        let msg =
                            format!("Fine-tuning {how}; {saved_what} to {}", saved_to.display());
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
                        self.set_record(Some(record));
                        self.refresh_output_dir();
                        self.commands.push(Command::ScanRuns);
                    }
                    Outcome::Finished(Err(e)) => {
                        self.train_log.finished = Some(format!("Failed: {e}"));
                        self.notify(Level::Error, format!("Fine-tuning failed: {e}"));
                    }
                    Outcome::Panicked(m) => {
                        self.notify(Level::Error, format!("The fine-tuning job crashed: {m}"));
                    }
                }
            }
        }
        self.poll_experiments();
        self.poll_mining();
        if let Some(job) = &mut self.dialog_job {
            for ev in job.drain() {
                if let JobEvent::Done(o) = ev {
                    self.dialog_job = None;
                    let Some((target, opened)) = self.dialog_target.take() else {
                        break;
                    };
                    match o {
                        Outcome::Finished(Ok(Some(path))) => self.chose_path(target, path),
                        // A portal that answers at all takes longer than this to show a dialog
                        // and have it closed: an instant "nothing" means there is none.
                        Outcome::Finished(Ok(None)) if opened.elapsed().as_millis() < 400 => {
                            self.ask_for_path(
                                target,
                                "No file dialog opened (no desktop portal answered): type the path",
                            );
                        }
                        Outcome::Finished(Ok(None)) => {}
                        Outcome::Finished(Err(e)) => {
                            self.ask_for_path(
                                target,
                                &format!("The file dialog failed ({e}): type the path"),
                            );
                        }
                        Outcome::Panicked(m) => {
                            self.ask_for_path(
                                target,
                                &format!("The file dialog failed ({m}): type the path"),
                            );
                        }
                    }
                    break;
                }
            }
        }
    }

    /// Shows the path field instead of a file dialog.
    pub(super) fn ask_for_path(&mut self, target: DialogTarget, reason: &str) {
        let text = match target {
            DialogTarget::ModelFolder => self.settings.model.clone(),
            DialogTarget::OutputFolder => self.settings.train.out_dir.clone(),
            _ => self
                .dataset
                .as_ref()
                .and_then(|d| d.path.parent())
                .map(|p| format!("{}/", p.display()))
                .unwrap_or_default(),
        };
        self.layout.path_prompt = Some(super::PathPrompt {
            target,
            text,
            reason: reason.to_string(),
        });
    }

    /// What a chosen path does, from a dialog or the path field.
    pub(super) fn chose_path(&mut self, target: DialogTarget, path: PathBuf) {
        match target {
            DialogTarget::DataFile => self.commands.push(Command::OpenFile(path)),
            DialogTarget::ModelFolder => self.settings.model = path.display().to_string(),
            DialogTarget::OutputFolder => self.settings.train.out_dir = path.display().to_string(),
            DialogTarget::ExportFile(k) => self.commands.push(Command::ExportTo(k, path)),
            DialogTarget::CorpusFile => {
                if !self.settings.mining.corpus.contains(&path) {
                    self.settings.mining.corpus.push(path);
                }
            }
            DialogTarget::MinedExport => self.commands.push(Command::ExportMinedTo(path)),
            DialogTarget::HeatmapPng => {
                let Some(png) = self.pending_png.take() else {
                    return;
                };
                match crate::core::files::write_atomic(&path, &png) {
                    Ok(()) => self.notify(Level::Info, format!("Saved {}", path.display())),
                    Err(e) => {
                        self.notify(
                            Level::Error,
                            format!("Cannot write {}: {e}", path.display()),
                        );
                        self.pending_png = Some(png);
                    }
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
        let selected = self.pending_inspect.take();
        self.inspector = InspectorState {
            selected,
            scroll_to_selected: selected.is_some(),
            ..Default::default()
        };
        self.experiments = Default::default();
        self.mining.result = None;
        self.mining_review = Default::default();
        self.refresh_output_dir();
        self.commands.push(Command::ScanRuns);
        self.tab = Tab::Data;
        if std::mem::take(&mut self.embed_on_load) {
            self.commands.push(Command::StartEmbed);
        } else if let Some(tab) = self.start_tab.take() {
            // Nothing to embed first: the start panel shows at once.
            self.tab = tab;
        }
        if std::mem::take(&mut self.mine_on_load) {
            self.commands.push(Command::StartMining);
        }
    }
}
