//! Model folders on disk: `config.json` (BERT, XLM-RoBERTa, MPNet), the sentence-transformers
//! settings in their old and new formats, hub resolution, the checkpoint's tensors, prompts,
//! atomic saving and tiny random test models. Nothing here computes an embedding: the backends
//! (`core::backend`) do.

mod checkpoint;
pub mod config;
mod folder;
mod hub;
pub mod prompts;
pub mod save;
mod st_files;
pub mod tiny;

pub use checkpoint::Checkpoint;
pub use config::{Arch, HiddenAct, ModelConfig, SUPPORTED_MODEL_TYPES};
pub use folder::{FolderFormat, LengthSource, ModelFolder, Pooling, SentenceConfig};
pub use hub::{resolve_source, DownloadProgress, ModelSource, DEFAULT_MODEL};
pub use prompts::{PromptChoice, PromptSource, Prompts};

use std::path::{Path, PathBuf};

use crate::core::files::{read_bounded, ReadError};

/// Largest JSON configuration or tokenizer file read (tokenizer.json of large multilingual
/// vocabularies is ~20 MB).
pub const CONFIG_FILE_LIMIT_BYTES: u64 = 256 << 20;

/// Why a model could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The folder does not exist.
    #[error("model folder {path} does not exist")]
    FolderNotFound {
        /// The folder.
        path: PathBuf,
    },
    /// A required file is missing.
    #[error("{path} is missing: {what}")]
    MissingFile {
        /// The file expected.
        path: PathBuf,
        /// What it is for.
        what: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a regular file or is too large.
    #[error("cannot read {path}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A JSON configuration file is malformed.
    #[error("{path} is not a valid configuration file: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The architecture or a setting is not supported.
    #[error("{path}: {reason}")]
    Unsupported {
        /// The file that says so.
        path: PathBuf,
        /// What is not supported.
        reason: String,
    },
    /// The weights file is corrupt or does not fit the configuration.
    #[error("cannot load the weights in {path}: {message}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer file could not be loaded.
    #[error("cannot load the tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The tokenizers library's message.
        message: String,
    },
    /// The hub id could not be resolved, from the cache or the network.
    #[error("{0}")]
    Hub(String),
}

/// Reads a file of a model folder, bounded (see [`crate::core::files::read_bounded`]).
pub fn read_limited(path: &Path, limit_bytes: u64) -> Result<Vec<u8>, ModelError> {
    read_bounded(path, limit_bytes).map_err(|e| match e {
        ReadError::Io(source) => ModelError::Read {
            path: path.to_path_buf(),
            source,
        },
        other => ModelError::Unreadable {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}
