//! Exports: NumPy `.npy` matrices, the JSON result of an evaluation, comparison reports (HTML,
//! Markdown, CSV) and the PNG pictures in them.

pub mod comparison;
mod npy;
pub mod raster;

pub use npy::{read_npy_f32, write_npy_f32, NpyError};

use crate::core::encoder::Prompts;
use crate::core::metrics::{EvalResult, TripletScore};
use std::collections::BTreeMap;

/// The settings an evaluation ran with, recorded next to its metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalSettings {
    /// The triplet file.
    pub data: String,
    /// Hub id or folder as given.
    pub model: String,
    /// blake3 of the weights file.
    pub weights_hash: String,
    /// Pooling mode.
    pub pooling: String,
    /// Prompts in use.
    pub prompts: Prompts,
    /// Tokens per text.
    pub max_seq_len: usize,
    /// Matryoshka truncation, if any.
    pub truncate_dim: Option<usize>,
    /// Storage precision the metrics were computed at.
    pub precision: String,
    /// Rescoring multiplier of a quantised search, if any.
    pub rescore: Option<usize>,
    /// Texts per batch.
    pub batch_size: usize,
    /// Arithmetic of the model's products (f32 or bf16).
    pub compute: crate::core::backend::Compute,
    /// tripletlab's version.
    pub tool_version: String,
}

/// The JSON document `tripletlab eval --json` writes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport<'a> {
    /// Metric key -> value.
    pub metrics: &'a BTreeMap<String, f64>,
    /// One row per triplet.
    pub per_triplet: &'a [TripletScore],
    /// How it was computed.
    pub settings: &'a EvalSettings,
    /// Counts of the data.
    pub counts: Counts,
}

/// Sizes of the evaluated data.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Counts {
    /// Triplets evaluated.
    pub triplets: usize,
    /// Distinct queries.
    pub queries: usize,
    /// Distinct documents.
    pub corpus: usize,
    /// Rows of the file that were skipped.
    pub skipped_rows: usize,
}

impl<'a> EvalReport<'a> {
    /// Bundles a result with its settings.
    pub fn new(result: &'a EvalResult, settings: &'a EvalSettings, skipped_rows: usize) -> Self {
        Self {
            metrics: &result.metrics,
            per_triplet: &result.per_triplet,
            settings,
            counts: Counts {
                triplets: result.n_triplets,
                queries: result.n_queries,
                corpus: result.n_corpus,
                skipped_rows,
            },
        }
    }
}
