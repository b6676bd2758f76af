//! The checkpoint's tensors as stored (names, dtypes, shapes), the prefix of the encoder's names
//! inside it (`bert.`, `roberta.`, `mpnet.` or none) and the weights hash used in cache keys.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::{ModelError, ModelFolder};

/// Largest weights file read (a 3 GB XLM-R large checkpoint fits; beyond, the memory estimate of
/// the configuration decides).
pub const WEIGHTS_FILE_LIMIT_BYTES: u64 = 16 << 30;

/// The model's tensors as stored in the checkpoint, and where the encoder's names start.
pub struct Checkpoint {
    /// Every tensor of the file, under its stored name.
    pub tensors: HashMap<String, Tensor>,
    /// The prefix of the encoder's tensor names (`""`, `"bert."`, `"roberta."`, `"mpnet."`).
    pub prefix: String,
    /// blake3 of the weights file, hex.
    pub weights_hash: String,
}

/// The name whose presence marks an encoder (after its prefix).
const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

impl Checkpoint {
    /// Reads the weights file of a folder (safetensors, or a PyTorch pickle as a fallback).
    pub fn read(folder: &ModelFolder) -> Result<Self, ModelError> {
        let path = &folder.weights_path;
        let weights_err = |e: candle_core::Error| ModelError::Weights {
            path: path.clone(),
            message: e.to_string(),
        };
        check_memory(path)?;
        let (tensors, weights_hash) = if is_safetensors(path) {
            let bytes = super::read_limited(path, WEIGHTS_FILE_LIMIT_BYTES)?;
            let hash = blake3::hash(&bytes).to_hex().to_string();
            let tensors =
                candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(weights_err)?;
            (tensors, hash)
        } else {
            let bytes = super::read_limited(path, WEIGHTS_FILE_LIMIT_BYTES)?;
            let hash = blake3::hash(&bytes).to_hex().to_string();
            drop(bytes);
            let tensors = candle_core::pickle::read_all(path)
                .map_err(weights_err)?
                .into_iter()
                .collect();
            (tensors, hash)
        };
        let prefix = tensors
            .keys()
            .filter_map(|k| k.strip_suffix(WORD_EMBEDDINGS))
            .filter(|p| p.is_empty() || p.ends_with('.'))
            .min_by_key(|p| p.len())
            .map(str::to_string)
            .ok_or_else(|| ModelError::Unsupported {
                path: path.clone(),
                reason: format!(
                    "no tensor `{WORD_EMBEDDINGS}` (or a prefixed one such as `bert.`, \
                     `roberta.`, `mpnet.`): not a {} checkpoint",
                    folder.config.arch.name()
                ),
            })?;
        Ok(Self {
            tensors,
            prefix,
            weights_hash,
        })
    }

    /// The tensor an encoder name (without prefix) refers to.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(&format!("{}{name}", self.prefix))
    }

    /// The encoder's tensors by their names without the prefix.
    pub fn encoder_tensors(&self) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix(&self.prefix)
                    .map(|local| (local.to_string(), t.clone()))
            })
            .collect()
    }
}

/// Refuses a weights file whose loading would not fit in the memory available (the file's bytes,
/// the tensors, and their f32 copies for the engine: about three times the file).
fn check_memory(path: &Path) -> Result<(), ModelError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(()); // the read reports it
    };
    let need = meta.len().saturating_mul(3);
    if let Some(available) = crate::core::files::memory_available_bytes() {
        if need > available {
            return Err(ModelError::Unreadable {
                path: path.to_path_buf(),
                reason: format!(
                    "loading these {} of weights needs about {} of memory, and {} is available",
                    crate::core::files::format_bytes(meta.len()),
                    crate::core::files::format_bytes(need),
                    crate::core::files::format_bytes(available)
                ),
            });
        }
    }
    Ok(())
}

fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}
