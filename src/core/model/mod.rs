//! The BERT-family model: configuration, our own train-aware encoder, the model folder
//! (sentence-transformers or plain Hugging Face layout), hub resolution and weight loading.

pub mod bert;
pub mod blas;
pub mod config;
pub mod engine;
mod folder;
mod hub;
mod kernels;
mod matmul;
pub mod save;
pub mod tiny;

pub use bert::{BertModel, DropoutRng, Mode};
pub use config::{BertConfig, HiddenAct};
pub use folder::{ModelFolder, Pooling, SentenceConfig};
pub use hub::{resolve_source, DownloadProgress, ModelSource, DEFAULT_MODEL};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

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
    #[error("cannot load the weights in {path}: {source}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// candle's error.
        #[source]
        source: candle_core::Error,
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

/// The model's tensors as stored in the checkpoint, and where the encoder's names start.
pub struct Checkpoint {
    /// Every tensor of the file, under its stored name.
    pub tensors: HashMap<String, Tensor>,
    /// The prefix of the encoder's tensor names (`""` or `"bert."`).
    pub prefix: String,
    /// blake3 of the weights file, hex.
    pub weights_hash: String,
}

impl Checkpoint {
    /// Reads the weights file of a folder (safetensors, or a PyTorch pickle as a fallback).
    pub fn read(folder: &ModelFolder) -> Result<Self, ModelError> {
        let path = &folder.weights_path;
        let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
            path: path.clone(),
            source,
        })?;
        let weights_hash = blake3::hash(&bytes).to_hex().to_string();
        let weights_err = |source| ModelError::Weights {
            path: path.clone(),
            source,
        };
        let tensors = if is_safetensors(path) {
            candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(weights_err)?
        } else {
            drop(bytes);
            candle_core::pickle::read_all(path)
                .map_err(weights_err)?
                .into_iter()
                .collect()
        };
        let prefix = if tensors.contains_key("embeddings.word_embeddings.weight") {
            String::new()
        } else if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert.".to_string()
        } else {
            return Err(ModelError::Unsupported {
                path: path.clone(),
                reason: "no tensor `embeddings.word_embeddings.weight` (or `bert.`-prefixed): \
                         not a BERT checkpoint"
                    .into(),
            });
        };
        Ok(Self {
            tensors,
            prefix,
            weights_hash,
        })
    }

    /// Builds the encoder from these tensors (f32 on the CPU).
    pub fn build(&self, folder: &ModelFolder) -> Result<BertModel, ModelError> {
        let vb = VarBuilder::from_tensors(self.tensors.clone(), DType::F32, &Device::Cpu);
        let vb = if self.prefix.is_empty() {
            vb
        } else {
            vb.pp(self.prefix.trim_end_matches('.'))
        };
        BertModel::load(vb, &folder.config).map_err(|source| ModelError::Weights {
            path: folder.weights_path.clone(),
            source,
        })
    }
}

fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// The largest absolute difference between two tensors of one shape (tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("tensors of one shape")
}

/// The largest difference between the gradients `ours` and `theirs` give `vars` when both are
/// weighted by the same upstream gradient `up` (tests of ops against candle's).
#[cfg(test)]
pub(crate) fn max_grad_diff(
    ours: Tensor,
    theirs: Tensor,
    up: &Tensor,
    vars: &[&candle_core::Var],
) -> f32 {
    let grads = |t: Tensor| {
        (t * up)
            .and_then(|t| t.sum_all()?.backward())
            .expect("backward")
    };
    let (g1, g2) = (grads(ours), grads(theirs));
    vars.iter()
        .map(|v| max_abs_diff(g1.get(v).expect("gradient"), g2.get(v).expect("gradient")))
        .fold(0.0, f32::max)
}
