//! The run record: `tripletlab_run.json`, written into every fine-tuned model folder. It says what
//! the model was trained on (the data file by path and SHA-256, and which of its rows were
//! trained on and which held out), every setting, the whole training log, and why it stopped, so
//! that the model can later be measured on the triplets it never saw.

use std::path::{Path, PathBuf};

use crate::core::data::Dataset;
use crate::core::files::{read_bounded, ReadError};
use crate::core::train::{EvalPoint, StepPoint, StopReason};

/// The file name inside a saved model folder.
pub const RUN_RECORD_FILE: &str = "tripletlab_run.json";

/// Largest run record read (the per-step log of a long run is a few MB).
const RECORD_LIMIT_BYTES: u64 = 256 << 20;

/// The base model a run started from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BaseModel {
    /// The hub id or folder as given.
    pub source: String,
    /// blake3 of its weights file.
    pub weights_blake3: String,
    /// Its architecture.
    pub architecture: String,
}

/// A triplet file a run read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataFile {
    /// Its path when the run read it.
    pub path: PathBuf,
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// Valid triplets in it.
    pub triplets: usize,
}

impl DataFile {
    /// The record of a loaded file.
    pub fn of(d: &Dataset) -> Self {
        Self {
            path: d.path.clone(),
            sha256: d.sha256.clone(),
            triplets: d.len(),
        }
    }
}

/// Which rows of the data file were trained on, and what was validated on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Split {
    /// A share of the file's distinct queries was held out with all their triplets.
    HeldOut {
        /// The share of distinct queries.
        share: f64,
        /// The seed of the split.
        seed: u64,
        /// 0-based row indices of the file that were trained on.
        train_rows: Vec<usize>,
        /// 0-based row indices of the file that were held out (validated on, never trained on).
        held_out_rows: Vec<usize>,
    },
    /// Every row of the file was trained on; validation used another file.
    ValidationFile {
        /// The validation file.
        file: DataFile,
        /// 0-based row indices of the training file that were trained on (all its valid rows).
        train_rows: Vec<usize>,
    },
}

impl Split {
    /// The file rows trained on.
    pub fn train_rows(&self) -> &[usize] {
        match self {
            Split::HeldOut { train_rows, .. } | Split::ValidationFile { train_rows, .. } => {
                train_rows
            }
        }
    }
}

/// What the saved folder declares.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    /// `max_seq_length` of the saved folder.
    pub max_seq_length: usize,
    /// The query prompt.
    pub query_prompt: String,
    /// The document prompt.
    pub document_prompt: String,
}

/// Everything about one fine-tuning run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// Format of this file.
    pub format: u32,
    /// `tripletlab <version>`.
    pub tool: String,
    /// Seconds since the Unix epoch when training ended.
    pub finished_unix_secs: u64,
    /// The base model.
    pub base_model: BaseModel,
    /// The training file.
    pub data: DataFile,
    /// Train and held-out rows.
    pub split: Split,
    /// Every training setting.
    pub settings: serde_json::Value,
    /// Training triplets used.
    pub train_triplets: usize,
    /// Validation triplets used.
    pub val_triplets: usize,
    /// Every step: loss, learning rate, gradient norm, time.
    pub steps: Vec<StepPoint>,
    /// Every validation, the zero-shot one first.
    pub evals: Vec<EvalPoint>,
    /// The metric that chose the saved checkpoint.
    pub best_metric: String,
    /// The saved checkpoint's step (0: no step improved on the base model).
    pub best_step: usize,
    /// Steps planned.
    pub total_steps: usize,
    /// Why training stopped.
    pub stop: StopReason,
    /// Wall-clock seconds of the run.
    pub wall_secs: f64,
    /// What the saved folder declares.
    pub saved: Saved,
}

/// Why a run record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ReadError,
    },
    /// The file is not a run record.
    #[error("{path} is not a tripletlab run record: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

impl RunRecord {
    /// The record of a model folder: `Ok(None)` when it has none (not fine-tuned by tripletlab).
    pub fn read(model_dir: &Path) -> Result<Option<Self>, RecordError> {
        let path = model_dir.join(RUN_RECORD_FILE);
        let bytes = match read_bounded(&path, RECORD_LIMIT_BYTES) {
            Ok(b) => b,
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RecordError::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| RecordError::Json { path, source })
    }

    /// The JSON text written into the folder.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a run record serialises") + "\n"
    }

    /// True when this run's training file is the loaded one (same bytes).
    pub fn matches(&self, data: &Dataset) -> bool {
        !data.sha256.is_empty() && self.data.sha256 == data.sha256
    }
}
