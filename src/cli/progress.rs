//! Progress bars on stderr for core jobs run in the foreground.

use indicatif::{ProgressBar, ProgressStyle};

use crate::core::jobs::{CancelToken, JobCtx, Update};
use crate::core::model::DownloadProgress;

/// A bar that follows a job's progress updates.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A hidden-until-used bar.
    pub fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg:>11} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Self { bar }
    }

    /// Shows one update.
    pub fn update<M>(&self, u: &Update<M>) {
        match u {
            Update::Progress(p) => {
                if self.bar.message() != p.stage {
                    self.bar.reset();
                    self.bar.set_message(p.stage.clone());
                }
                self.bar.set_length(p.total as u64);
                self.bar.set_position(p.done as u64);
            }
            Update::Warning(w) => self.bar.suspend(|| eprintln!("warning: {w}")),
            Update::Point(_) => {}
        }
    }

    /// Shows hub download progress.
    pub fn download(&self, p: &DownloadProgress) {
        self.bar.set_message(format!("downloading {}", p.file));
        self.bar.set_length(p.total_bytes as u64);
        self.bar.set_position(p.done_bytes as u64);
    }

    /// Runs `f` with a job context whose updates drive this bar; clears the bar afterwards.
    pub fn run<R>(&self, f: impl FnOnce(&JobCtx<'_, ()>) -> R) -> R {
        let emit = |u: Update<()>| self.update(&u);
        let ctx = JobCtx::new(CancelToken::new(), &emit);
        let r = f(&ctx);
        self.bar.finish_and_clear();
        r
    }
}
