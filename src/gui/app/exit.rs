//! Closing the window without losing work: jobs are stopped (fine-tuning saves its best weights
//! first), a trained model still unsaved goes to the recovery folder, and the next start says
//! where it is.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::commands::FineTuneResult;
use super::state::Level;
use super::App;
use crate::core::jobs::Outcome;

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

/// The answers to "the window is closing while fine-tuning runs".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseChoice {
    /// Stop at the end of the current step, save the best checkpoint, close.
    StopAndSave,
    /// Let the run finish and save, then close.
    FinishThenClose,
    /// Do not close.
    Cancel,
}

impl App {
    /// Asks before the window closes while fine-tuning runs (the close request is held back).
    pub(super) fn intercept_close(&mut self, ctx: &eframe::egui::Context) {
        let asked = ctx.input(|i| i.viewport().close_requested());
        if asked && self.train_job.is_some() && !self.layout.allow_close {
            ctx.send_viewport_cmd(eframe::egui::ViewportCommand::CancelClose);
            self.layout.close_prompt = true;
        }
    }

    /// Acts on the answer to the close question.
    pub(super) fn answer_close(&mut self, choice: CloseChoice) {
        self.layout.close_prompt = false;
        match choice {
            CloseChoice::StopAndSave => {
                // Closing stops the run at its next step and saves its best weights (on_exit).
                self.layout.allow_close = true;
                self.ctx
                    .send_viewport_cmd(eframe::egui::ViewportCommand::Close);
            }
            CloseChoice::FinishThenClose => {
                self.layout.close_when_done = true;
                self.notify(
                    Level::Info,
                    "The window closes once fine-tuning has finished and saved its model",
                );
            }
            CloseChoice::Cancel => self.layout.close_when_done = false,
        }
    }

    /// Closes the window if the user asked to once the run was saved.
    pub(super) fn close_if_done(&mut self) {
        if self.layout.close_when_done && self.train_job.is_none() {
            self.layout.close_when_done = false;
            self.layout.allow_close = true;
            self.ctx
                .send_viewport_cmd(eframe::egui::ViewportCommand::Close);
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
        // A comparison or a scan is recomputed next time; an export being written finishes.
        self.experiments.job = None;
        self.experiments.runs_job = None;
        if let Some(job) = self.experiments.export_job.take() {
            let _ = job.wait(|_| {});
        }
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
    pub(super) fn announce_recovered_models(&mut self) {
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
}
