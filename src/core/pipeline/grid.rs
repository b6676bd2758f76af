//! The storage trade-off of a model on a triplet file, from one embedding pass: every cell of
//! dimensions × precisions with its metrics (nDCG@10 and accuracy@1 with 95 % intervals), bytes
//! per vector, index size for the file and for a million documents, brute-force search time per
//! query, and nDCG@10 retained as a share of float32 at full dimension.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::core::data::Triplet;
use crate::core::jobs::{Cancelled, JobCtx, StageClock};
use crate::core::metrics::quantize::{evaluate_cell, Precision};
use crate::core::metrics::uncertainty::{intervals, Interval, DEFAULT_SEED};

use super::Evaluation;

/// Dimensions of the grid unless asked otherwise (those at or below the model's width).
pub const DEFAULT_DIMS: [usize; 5] = [384, 256, 128, 64, 32];
/// Precisions of the grid unless asked otherwise.
pub const DEFAULT_PRECISIONS: [Precision; 3] =
    [Precision::Float32, Precision::Int8, Precision::Binary];
/// Resamples behind a cell's intervals (fewer than a comparison's: 15 cells).
const CELL_RESAMPLES: usize = 1000;

/// One cell of the grid.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GridCell {
    /// Dimensions kept.
    pub dim: usize,
    /// Storage precision.
    pub precision: Precision,
    /// Every metric.
    pub metrics: BTreeMap<String, f64>,
    /// nDCG@10 and accuracy@1 with 95 % intervals.
    pub intervals: BTreeMap<String, Interval>,
    /// Bytes of one vector.
    pub bytes_per_vector: usize,
    /// Bytes of the file's distinct documents.
    pub index_bytes_file: u64,
    /// Bytes of a million documents.
    pub index_bytes_million: u64,
    /// Brute-force search of every query against every document, per query (ms).
    pub search_ms_per_query: f64,
    /// nDCG@10 as a share of float32 at full dimension.
    pub ndcg_retained: f64,
}

/// The whole grid of one model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Grid {
    /// The model.
    pub model: String,
    /// The model's full dimension.
    pub full_dim: usize,
    /// Triplets, distinct queries and documents measured.
    pub n_triplets: usize,
    /// Distinct queries.
    pub n_queries: usize,
    /// Distinct documents.
    pub n_corpus: usize,
    /// Rescoring multiplier, if any.
    pub rescore: Option<usize>,
    /// nDCG@10 of float32 at full dimension (the 100 % of `ndcg_retained`).
    pub reference_ndcg: f64,
    /// Every cell, dimensions outer, precisions inner.
    pub cells: Vec<GridCell>,
}

impl Grid {
    /// The cell of a dimension and precision.
    pub fn cell(&self, dim: usize, precision: Precision) -> Option<&GridCell> {
        self.cells
            .iter()
            .find(|c| c.dim == dim && c.precision == precision)
    }
}

/// Computes the grid from an evaluation's full-width vectors; dimensions wider than the model are
/// left out. Progress per cell; cancel between cells.
pub fn grid(
    eval: &Evaluation,
    triplets: &[Triplet],
    dims: &[usize],
    precisions: &[Precision],
    rescore: Option<usize>,
    ctx: &JobCtx,
) -> Result<Grid, Cancelled> {
    let e = &eval.embeddings;
    let full = e.queries.dim;
    let mut dims: Vec<usize> = dims
        .iter()
        .copied()
        .filter(|&d| d >= 1 && d <= full)
        .collect();
    dims.dedup();
    let reference = eval.result.metrics["cosine_ndcg@10"];
    let total = dims.len() * precisions.len();
    let clock = StageClock::start("quantisation grid", "cells", total);
    let mut cells = Vec::with_capacity(total);
    for &dim in &dims {
        for &precision in precisions {
            ctx.check_cancel()?;
            let start = Instant::now();
            let r = evaluate_cell(
                triplets,
                &e.queries,
                &e.positives,
                &e.negatives,
                dim,
                precision,
                rescore,
            );
            let secs = start.elapsed().as_secs_f64();
            let all = intervals(&r, CELL_RESAMPLES, DEFAULT_SEED);
            let keep = ["cosine_ndcg@10", "cosine_accuracy@1"];
            let bytes = precision.bytes_per_vector(dim);
            cells.push(GridCell {
                dim,
                precision,
                ndcg_retained: r.metrics["cosine_ndcg@10"] / reference.max(1e-12),
                intervals: all
                    .into_iter()
                    .filter(|(k, _)| keep.contains(&k.as_str()))
                    .collect(),
                bytes_per_vector: bytes,
                index_bytes_file: (bytes * r.n_corpus) as u64,
                index_bytes_million: bytes as u64 * 1_000_000,
                search_ms_per_query: secs * 1e3 / r.n_queries.max(1) as f64,
                metrics: r.metrics,
            });
            ctx.progress(clock.at(cells.len()));
        }
    }
    Ok(Grid {
        model: eval.model_label.clone(),
        full_dim: full,
        n_triplets: eval.result.n_triplets,
        n_queries: eval.result.n_queries,
        n_corpus: eval.result.n_corpus,
        rescore,
        reference_ndcg: reference,
        cells,
    })
}
