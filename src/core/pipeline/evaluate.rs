//! Evaluating one model on one triplet set, as the GUI and the CLI run it: load the
//! encoder, embed (through the cache), build the retrieval index, compute the metrics, and lay out
//! the normalised vectors the heatmap windows read.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::core::backend::Compute;
use crate::core::cache::EmbeddingCache;
use crate::core::data::Triplet;
use crate::core::embeddings::Embeddings;
use crate::core::encoder::{
    embed_triplets, EncodeError, Encoder, EncoderOptions, Prompts, TripletEmbeddings,
};
use crate::core::jobs::JobCtx;
use crate::core::metrics::uncertainty::{intervals, Interval, DEFAULT_RESAMPLES, DEFAULT_SEED};
use crate::core::metrics::{evaluate, EvalResult, RetrievalIndex};
use crate::core::model::ModelSource;

/// A model's embeddings and metrics on a triplet set.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The model as the user named it.
    pub model_label: String,
    /// Tokens per text used.
    pub max_seq_len: usize,
    /// Prompts used.
    pub prompts: Prompts,
    /// Per-triplet vectors and token counts.
    pub embeddings: TripletEmbeddings,
    /// Distinct queries and documents.
    pub index: RetrievalIndex,
    /// The metrics.
    pub result: EvalResult,
    /// Every metric with its 95 % bootstrap interval over queries.
    pub intervals: BTreeMap<String, Interval>,
    /// Normalised query vector of each triplet (N rows).
    pub query_rows: Embeddings,
    /// Normalised documents in triplet order: pos₀, neg₀, pos₁, neg₁, ... (2N rows).
    pub doc_rows: Embeddings,
    /// Seconds spent embedding.
    pub embed_secs: f64,
    /// Arithmetic of the model's products.
    pub compute: Compute,
}

impl Evaluation {
    /// Builds the index, metrics and heatmap rows from embeddings.
    pub fn from_embeddings(
        model_label: String,
        max_seq_len: usize,
        prompts: Prompts,
        triplets: &[Triplet],
        embeddings: TripletEmbeddings,
        embed_secs: f64,
    ) -> Self {
        let index = RetrievalIndex::build(
            triplets,
            &embeddings.queries,
            &embeddings.positives,
            &embeddings.negatives,
        );
        let result = evaluate(&index);
        let intervals = intervals(&result, DEFAULT_RESAMPLES, DEFAULT_SEED);
        let mut query_rows = embeddings.queries.clone();
        query_rows.normalize_rows();
        let mut doc_rows = Embeddings::new(embeddings.positives.dim);
        for i in 0..triplets.len() {
            doc_rows.push(embeddings.positives.row(i));
            doc_rows.push(embeddings.negatives.row(i));
        }
        doc_rows.normalize_rows();
        Self {
            model_label,
            max_seq_len,
            prompts,
            embeddings,
            index,
            result,
            intervals,
            query_rows,
            doc_rows,
            embed_secs,
            compute: Compute::F32,
        }
    }
}

/// Loads a model and evaluates it on triplets.
pub fn evaluate_model(
    source: &ModelSource,
    opts: &EncoderOptions,
    triplets: &[Triplet],
    cache: Option<&EmbeddingCache>,
    ctx: &JobCtx,
) -> Result<Evaluation, EncodeError> {
    let encoder = Encoder::load(source, opts, &mut |p| {
        ctx.progress(crate::core::jobs::Progress {
            stage: format!("downloading {}", p.file),
            done: p.done_bytes,
            total: p.total_bytes,
            unit: "bytes",
            elapsed_secs: 0.0,
        });
    })?;
    let start = Instant::now();
    let emb = embed_triplets(&encoder, triplets, cache, ctx)?;
    for w in &emb.cache_warnings {
        ctx.warn(w.clone());
    }
    let mut eval = Evaluation::from_embeddings(
        source.label(),
        encoder.max_seq_len,
        encoder.prompts.clone(),
        triplets,
        emb,
        start.elapsed().as_secs_f64(),
    );
    eval.compute = encoder.compute();
    Ok(eval)
}
