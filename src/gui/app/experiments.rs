//! The app's honest-experiment state: the compared model's run record (which rows it trained on),
//! the comparison on the chosen subset (held-out by default) computed on a job thread, exports
//! of it (HTML, Markdown, CSV), and the list of past runs found next to the data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::state::Level;
use super::App;
use crate::core::data::Dataset;
use crate::core::jobs::{self, JobEvent, JobHandle, Outcome};
use crate::core::metrics::uncertainty::{DEFAULT_RESAMPLES, DEFAULT_SEED};
use crate::core::pipeline::grid::{grid, Grid};
use crate::core::pipeline::record::Split;
use crate::core::pipeline::{compare, subset_rows, Comparison, RunRecord, Subset};
use crate::core::report::comparison::{markdown, per_triplet_csv, write_html};

/// Which side of the compared model's split a triplet is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitMark {
    /// It was trained on.
    Train,
    /// It was held out (never trained on).
    HeldOut,
}

impl SplitMark {
    /// Its label.
    pub fn label(self) -> &'static str {
        match self {
            SplitMark::Train => "training",
            SplitMark::HeldOut => "held-out",
        }
    }
}

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// The self-contained HTML report.
    Html,
    /// Markdown for a pull request.
    Markdown,
    /// One CSV row per measured triplet.
    Csv,
}

impl ExportKind {
    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            ExportKind::Html => "html",
            ExportKind::Markdown => "md",
            ExportKind::Csv => "csv",
        }
    }
}

/// A past run found on disk.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The saved model folder.
    pub dir: PathBuf,
    /// Its record.
    pub record: RunRecord,
}

/// Comparison and run-record state.
#[derive(Default)]
pub struct Experiments {
    /// The compared (fine-tuned) model's run record, if it has one.
    pub record: Option<RunRecord>,
    /// Each triplet's side of the record's split, when the record is for the open file.
    pub split_of: Option<Vec<SplitMark>>,
    /// The subset the comparison measures.
    pub subset: Subset,
    /// The last comparison, for `subset`.
    pub comparison: Option<Arc<Comparison>>,
    /// Why the chosen subset cannot be measured.
    pub error: Option<String>,
    /// Past runs found next to the data and the output folder.
    pub runs: Vec<RunSummary>,
    /// The storage grids of the zero-shot and the fine-tuned model.
    pub grids: [Option<Arc<Grid>>; 2],
    /// Why the grid could not be computed.
    pub grid_error: Option<String>,
    pub(super) grid_job: Option<JobHandle<(), [Option<Grid>; 2], String>>,
    pub(super) job: Option<JobHandle<(), Comparison, String>>,
    pub(super) export_job: Option<JobHandle<(), PathBuf, String>>,
    pub(super) runs_job: Option<JobHandle<(), Vec<RunSummary>, String>>,
}

impl Experiments {
    /// True while the comparison is computed.
    pub fn computing(&self) -> bool {
        self.job.is_some()
    }

    /// True while the grid is computed.
    pub fn computing_grid(&self) -> bool {
        self.grid_job.is_some()
    }
}

/// Each triplet's side of a record's split, when the record is for this file.
fn split_marks(data: &Dataset, record: &RunRecord) -> Option<Vec<SplitMark>> {
    if !record.matches(data) {
        return None;
    }
    let held: std::collections::HashSet<usize> = match &record.split {
        Split::HeldOut { held_out_rows, .. } => held_out_rows.iter().copied().collect(),
        Split::ValidationFile { .. } => Default::default(),
    };
    Some(
        data.source_rows
            .iter()
            .map(|r| {
                if held.contains(r) {
                    SplitMark::HeldOut
                } else {
                    SplitMark::Train
                }
            })
            .collect(),
    )
}

/// Folders with a run record directly under `dir`.
fn runs_in(dir: &Path) -> Vec<RunSummary> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter_map(|p| match RunRecord::read(&p) {
            Ok(Some(record)) => Some(RunSummary { dir: p, record }),
            _ => None,
        })
        .collect()
}

impl App {
    /// Sets the compared model's run record (or none) and measures on its held-out rows when it
    /// is for the open file.
    pub(super) fn set_record(&mut self, record: Option<RunRecord>) {
        let x = &mut self.experiments;
        x.split_of = match (&self.dataset, &record) {
            (Some(d), Some(r)) => split_marks(d, r),
            _ => None,
        };
        x.subset = if x.split_of.is_some()
            && matches!(
                record.as_ref().map(|r| &r.split),
                Some(Split::HeldOut { .. })
            ) {
            Subset::HeldOut
        } else {
            Subset::All
        };
        x.record = record;
        x.comparison = None;
        self.request_comparison();
    }

    /// Starts computing the comparison of the two evaluations on the chosen subset.
    pub(super) fn request_comparison(&mut self) {
        let (Some(data), Some(a), Some(b)) = (
            self.dataset.clone(),
            self.zero_shot.clone(),
            self.fine_tuned.clone(),
        ) else {
            return;
        };
        let x = &mut self.experiments;
        x.job = None; // dropping a running one cancels it
        let rows = match subset_rows(&data, x.record.as_ref(), x.subset) {
            Ok(r) => r,
            Err(e) => {
                x.error = Some(e);
                x.comparison = None;
                return;
            }
        };
        x.error = None;
        let spawned = jobs::spawn("compare", self.wake(), move |_ctx| {
            compare(&data, &a, &b, rows, DEFAULT_RESAMPLES, DEFAULT_SEED)
        });
        match spawned {
            Ok(h) => self.experiments.job = Some(h),
            Err(e) => self.notify(Level::Error, format!("cannot start a thread: {e}")),
        }
    }

    /// Writes an export of the current comparison to `path` on a job thread.
    pub(super) fn export(&mut self, kind: ExportKind, path: PathBuf) {
        let (Some(data), Some(c), Some(a), Some(b)) = (
            self.dataset.clone(),
            self.experiments.comparison.clone(),
            self.zero_shot.clone(),
            self.fine_tuned.clone(),
        ) else {
            self.notify(
                Level::Warning,
                "Compare two models first: there is nothing to export",
            );
            return;
        };
        let record = self.experiments.record.clone();
        let spawned = jobs::spawn("export", self.wake(), move |_ctx| {
            let r = record.as_ref().filter(|r| r.matches(&data));
            let written = match kind {
                ExportKind::Html => write_html(&path, &data, &c, [&a, &b], r),
                ExportKind::Markdown => std::fs::write(&path, markdown(&data, &c, r)),
                ExportKind::Csv => std::fs::write(&path, per_triplet_csv(&data, &c)),
            };
            written
                .map(|()| path.clone())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))
        });
        match spawned {
            Ok(h) => self.experiments.export_job = Some(h),
            Err(e) => self.notify(Level::Error, format!("cannot start a thread: {e}")),
        }
    }

    /// Looks for past runs next to the data file and in the output folder's parent.
    pub(super) fn scan_runs(&mut self) {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(d) = &self.dataset {
            dirs.extend(d.path.parent().map(Path::to_path_buf));
        }
        let out = self.settings.train.out_dir.trim();
        if !out.is_empty() {
            dirs.extend(Path::new(out).parent().map(Path::to_path_buf));
        }
        dirs.sort();
        dirs.dedup();
        let spawned = jobs::spawn("scan-runs", self.wake(), move |_ctx| {
            let mut runs: Vec<RunSummary> = dirs.iter().flat_map(|d| runs_in(d)).collect();
            runs.sort_by(|a, b| {
                b.record
                    .finished_unix_secs
                    .cmp(&a.record.finished_unix_secs)
            });
            Ok::<_, String>(runs)
        });
        if let Ok(h) = spawned {
            self.experiments.runs_job = Some(h);
        }
    }

    /// Computes the storage grid of the zero-shot model (and the fine-tuned one, if any) on a job
    /// thread, with the dimensions and precisions of the settings.
    pub(super) fn start_grid(&mut self) {
        let (Some(data), Some(a)) = (self.dataset.clone(), self.zero_shot.clone()) else {
            self.notify(Level::Warning, "Embed the triplets first");
            return;
        };
        let b = self.fine_tuned.clone();
        let s = &self.settings.storage;
        let dims: Result<Vec<usize>, String> = s
            .dims
            .split(',')
            .map(|x| {
                x.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&d| d > 0)
                    .ok_or_else(|| {
                        format!(
                            "dimensions must be positive integers separated by commas, got `{x}`"
                        )
                    })
            })
            .collect();
        let dims = match dims {
            Ok(d) if !d.is_empty() => d,
            Ok(_) => {
                self.experiments.grid_error = Some("give at least one dimension".into());
                return;
            }
            Err(e) => {
                self.experiments.grid_error = Some(e);
                return;
            }
        };
        let precisions = s.precisions.clone();
        if precisions.is_empty() {
            self.experiments.grid_error = Some("choose at least one precision".into());
            return;
        }
        let rescore = s.rescore.then_some(s.rescore_multiplier.max(1));
        self.experiments.grid_error = None;
        let spawned = jobs::spawn("storage-grid", self.wake(), move |ctx| {
            let one = |e: &crate::core::pipeline::Evaluation| {
                grid(e, &data.triplets, &dims, &precisions, rescore, ctx)
                    .map_err(|_| "cancelled".to_string())
            };
            let ga = one(&a)?;
            let gb = match &b {
                Some(b) => Some(one(b)?),
                None => None,
            };
            Ok([Some(ga), gb])
        });
        match spawned {
            Ok(h) => self.experiments.grid_job = Some(h),
            Err(e) => self.notify(Level::Error, format!("cannot start a thread: {e}")),
        }
    }

    /// Drains the experiment jobs' events into the state.
    pub(super) fn poll_experiments(&mut self) {
        if let Some(job) = &mut self.experiments.grid_job {
            if let Some(done) = job.drain().into_iter().find_map(|e| match e {
                JobEvent::Done(o) => Some(o),
                JobEvent::Update(_) => None,
            }) {
                self.experiments.grid_job = None;
                match done {
                    Outcome::Finished(Ok([a, b])) => {
                        self.experiments.grids = [a.map(Arc::new), b.map(Arc::new)];
                    }
                    Outcome::Finished(Err(e)) => self.experiments.grid_error = Some(e),
                    Outcome::Panicked(m) => {
                        self.notify(Level::Error, format!("The grid crashed: {m}"));
                    }
                }
            }
        }
        if let Some(job) = &mut self.experiments.job {
            if let Some(done) = job.drain().into_iter().find_map(|e| match e {
                JobEvent::Done(o) => Some(o),
                JobEvent::Update(_) => None,
            }) {
                self.experiments.job = None;
                match done {
                    Outcome::Finished(Ok(c)) => self.experiments.comparison = Some(Arc::new(c)),
                    Outcome::Finished(Err(e)) => self.experiments.error = Some(e),
                    Outcome::Panicked(m) => {
                        self.notify(Level::Error, format!("The comparison crashed: {m}"));
                    }
                }
            }
        }
        if let Some(job) = &mut self.experiments.export_job {
            if let Some(done) = job.drain().into_iter().find_map(|e| match e {
                JobEvent::Done(o) => Some(o),
                JobEvent::Update(_) => None,
            }) {
                self.experiments.export_job = None;
                match done {
                    Outcome::Finished(Ok(p)) => {
                        self.notify(Level::Info, format!("Wrote {}", p.display()));
                    }
                    Outcome::Finished(Err(e)) => self.notify(Level::Error, e),
                    Outcome::Panicked(m) => {
                        self.notify(Level::Error, format!("The export crashed: {m}"));
                    }
                }
            }
        }
        if let Some(job) = &mut self.experiments.runs_job {
            if let Some(done) = job.drain().into_iter().find_map(|e| match e {
                JobEvent::Done(o) => Some(o),
                JobEvent::Update(_) => None,
            }) {
                self.experiments.runs_job = None;
                if let Outcome::Finished(Ok(runs)) = done {
                    self.experiments.runs = runs;
                }
            }
        }
    }
}
