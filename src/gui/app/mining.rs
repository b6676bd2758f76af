//! Mining hard negatives in the app: the job (the configured model over the open file and any
//! extra corpus, through the cache), its result with every negative's false-negative flag, and
//! the export of the accepted rows.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::state::{Level, MiningReview};
use super::App;
use crate::core::cache::EmbeddingCache;
use crate::core::data::Dataset;
use crate::core::encoder::{EncodeError, Encoder};
use crate::core::jobs::{self, JobEvent, JobHandle, Outcome, Progress, Update};
use crate::core::model::ModelSource;
use crate::core::pipeline::mine::{mine_dataset, read_corpus, MineSummary, Mined, RowFormat};

/// A finished mining run.
#[derive(Debug)]
pub struct MiningResult {
    /// What was mined.
    pub mined: Mined,
    /// `flags[q][k]`: why negative k of query q may be a false negative.
    pub flags: Vec<Vec<Option<String>>>,
    /// Its counts.
    pub summary: MineSummary,
    /// The model it was mined with.
    pub model: String,
    /// Wall time.
    pub seconds: f64,
    /// The file it was mined for.
    pub data_path: PathBuf,
}

/// Why a mining job ended without a result.
#[derive(Debug)]
pub(super) enum MiningError {
    /// The user stopped it.
    Cancelled,
    /// It failed, and why.
    Failed(String),
}

/// Mining state: the job, its progress, the last result.
#[derive(Default)]
pub struct Mining {
    /// The last result (for the open file).
    pub result: Option<Arc<MiningResult>>,
    /// Progress of the running job.
    pub progress: Option<Progress>,
    /// Why the last run failed.
    pub error: Option<String>,
    /// The last export, to open it in one click.
    pub exported: Option<PathBuf>,
    pub(super) job: Option<JobHandle<(), MiningResult, MiningError>>,
    pub(super) export_job: Option<JobHandle<(), PathBuf, String>>,
}

impl Mining {
    /// True while mining runs.
    pub fn running(&self) -> bool {
        self.job.is_some()
    }
}

/// The rows to export: the accepted mined negatives (and, if asked, the file's own rows after
/// them), as JSON lines of triplets.
pub(super) fn export_rows(
    result: &MiningResult,
    review: &MiningReview,
    data: Option<&Dataset>,
    with_file_rows: bool,
) -> String {
    let accept = |q: usize, k: usize| {
        review
            .accepted
            .get(q)
            .and_then(|a| a.get(k))
            .copied()
            .unwrap_or(true)
    };
    let mut text = result.mined.to_jsonl(RowFormat::Triplet, &accept);
    if let (true, Some(d)) = (with_file_rows, data) {
        for t in &d.triplets {
            text.push_str(
                &serde_json::json!({"query": t.query, "pos": t.pos, "negative": t.negative})
                    .to_string(),
            );
            text.push('\n');
        }
    }
    text
}

impl App {
    /// Mines hard negatives for the open file with the configured model on a job thread.
    pub(super) fn start_mining(&mut self) {
        if self.mining.running() {
            self.notify(Level::Warning, "Mining is already running; stop it first");
            return;
        }
        let Some(data) = self.dataset.clone() else {
            self.notify(Level::Warning, "Open a triplet file first");
            return;
        };
        let s = &self.settings.mining;
        let cfg = s.config();
        let corpus_files = s.corpus.clone();
        let source = ModelSource::parse(self.settings.model.trim());
        let opts = self.settings.encoder_options();
        let cache = self
            .settings
            .use_cache
            .then(|| EmbeddingCache::new(EmbeddingCache::default_dir()));
        self.mining.error = None;
        let spawned =
            jobs::spawn("mine", self.wake(), move |ctx| {
                let start = Instant::now();
                let mut extra = Vec::new();
                for path in &corpus_files {
                    extra.extend(read_corpus(path).map_err(MiningError::Failed)?);
                }
                let encoder = Encoder::load(&source, &opts, &mut |_| {}).map_err(|e| {
                    MiningError::Failed(format!("cannot load model `{}`: {e:#}", source.label()))
                })?;
                let mined = mine_dataset(&encoder, &data, &extra, &cfg, cache.as_ref(), ctx)
                    .map_err(|e| match e {
                        EncodeError::Cancelled => MiningError::Cancelled,
                        e => MiningError::Failed(format!("{e:#}")),
                    })?;
                for w in &mined.warnings {
                    ctx.warn(w.clone());
                }
                let flags = (0..mined.per_query.len())
                    .map(|q| {
                        (0..mined.per_query[q].negatives.len())
                            .map(|k| mined.suspicion(q, k))
                            .collect()
                    })
                    .collect();
                let summary = mined.summary();
                Ok(MiningResult {
                    mined,
                    flags,
                    summary,
                    model: source.label(),
                    seconds: start.elapsed().as_secs_f64(),
                    data_path: data.path.clone(),
                })
            });
        match spawned {
            Ok(h) => {
                self.mining.job = Some(h);
                self.mining.progress = None;
            }
            Err(e) => self.notify(Level::Error, format!("cannot start a thread: {e}")),
        }
    }

    /// Stops mining.
    pub(super) fn cancel_mining(&mut self) {
        if let Some(j) = &self.mining.job {
            j.cancel();
        }
    }

    /// Writes the accepted rows to `path` on a job thread.
    pub(super) fn export_mined(&mut self, path: PathBuf) {
        let Some(result) = self.mining.result.clone() else {
            self.notify(Level::Warning, "Mine first: there is nothing to export");
            return;
        };
        let text = export_rows(
            &result,
            &self.mining_review,
            self.dataset.as_deref(),
            self.settings.mining.export_with_file_rows,
        );
        let spawned = jobs::spawn("export-mined", self.wake(), move |_ctx| {
            crate::core::files::write_atomic(&path, text.as_bytes())
                .map(|()| path.clone())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))
        });
        match spawned {
            Ok(h) => self.mining.export_job = Some(h),
            Err(e) => self.notify(Level::Error, format!("cannot start a thread: {e}")),
        }
    }

    /// Drains the mining jobs' events into the state.
    pub(super) fn poll_mining(&mut self) {
        if let Some(job) = &mut self.mining.job {
            let mut done = None;
            let mut warnings = Vec::new();
            for ev in job.drain() {
                match ev {
                    JobEvent::Update(Update::Progress(p)) => self.mining.progress = Some(p),
                    JobEvent::Update(Update::Warning(w)) => warnings.push(w),
                    JobEvent::Update(Update::Point(())) => {}
                    JobEvent::Done(o) => done = Some(o),
                }
            }
            for w in warnings {
                self.notify(Level::Warning, w);
            }
            if let Some(o) = done {
                self.mining.job = None;
                self.mining.progress = None;
                match o {
                    Outcome::Finished(Ok(r))
                        if self.dataset.as_ref().map(|d| &d.path) != Some(&r.data_path) =>
                    {
                        self.notify(
                            Level::Info,
                            "Mining finished for a file that is no longer open; result dropped",
                        );
                    }
                    Outcome::Finished(Ok(r)) => {
                        self.mining_review = MiningReview {
                            accepted: r
                                .mined
                                .per_query
                                .iter()
                                .map(|m| vec![true; m.negatives.len()])
                                .collect(),
                            reject_above: 0.8,
                            ..Default::default()
                        };
                        self.notify(
                            Level::Info,
                            format!(
                                "Mined {} negatives for {} queries in {:.1} s",
                                r.summary.negatives, r.summary.queries, r.seconds
                            ),
                        );
                        self.mining.result = Some(Arc::new(r));
                    }
                    Outcome::Finished(Err(MiningError::Cancelled)) => {
                        self.notify(Level::Info, "Mining stopped");
                    }
                    Outcome::Finished(Err(MiningError::Failed(e))) => self.mining.error = Some(e),
                    Outcome::Panicked(m) => {
                        self.notify(Level::Error, format!("mining crashed: {m}"));
                    }
                }
            }
        }
        if let Some(job) = &mut self.mining.export_job {
            let done = job.drain().into_iter().find_map(|e| match e {
                JobEvent::Done(o) => Some(o),
                JobEvent::Update(_) => None,
            });
            if let Some(o) = done {
                self.mining.export_job = None;
                match o {
                    Outcome::Finished(Ok(path)) => {
                        self.notify(Level::Info, format!("Wrote {}", path.display()));
                        self.mining.exported = Some(path);
                    }
                    Outcome::Finished(Err(e)) => self.notify(Level::Error, e),
                    Outcome::Panicked(m) => {
                        self.notify(Level::Error, format!("the export crashed: {m}"));
                    }
                }
            }
        }
    }
}
