//! Embedding a triplet file: each distinct text is embedded once per role, cached vectors are
//! reused, and the result is laid out per triplet (queries, positives, negatives).

use std::collections::HashMap;

use super::{EncodeError, Encoder, Role, TokenCount};
use crate::core::cache::{text_key, EmbeddingCache};
use crate::core::data::Triplet;
use crate::core::embeddings::Embeddings;
use crate::core::jobs::JobCtx;

/// The vectors of a triplet file, one row per triplet in each matrix.
#[derive(Debug, Clone)]
pub struct TripletEmbeddings {
    /// Query vectors.
    pub queries: Embeddings,
    /// Positive vectors.
    pub positives: Embeddings,
    /// Negative vectors.
    pub negatives: Embeddings,
    /// Token counts per triplet: query, pos, negative.
    pub token_counts: Vec<[TokenCount; 3]>,
    /// Distinct texts served from the cache.
    pub cache_hits: usize,
    /// Distinct texts run through the model.
    pub computed: usize,
    /// Problems with the cache that did not stop the job.
    pub cache_warnings: Vec<String>,
}

/// Distinct texts of one role and, for each slot, the index of its text.
struct Distinct<'a> {
    texts: Vec<&'a str>,
    index_of_slot: Vec<usize>,
}

fn distinct<'a>(slots: impl Iterator<Item = &'a str>) -> Distinct<'a> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut texts = Vec::new();
    let index_of_slot = slots
        .map(|t| {
            *ids.entry(t).or_insert_with(|| {
                texts.push(t);
                texts.len() - 1
            })
        })
        .collect();
    Distinct {
        texts,
        index_of_slot,
    }
}

/// Embeds every query, positive and negative; `cache` may be `None` to always compute.
pub fn embed_triplets(
    encoder: &Encoder,
    triplets: &[Triplet],
    cache: Option<&EmbeddingCache>,
    ctx: &JobCtx,
) -> Result<TripletEmbeddings, EncodeError> {
    let n = triplets.len();
    let queries = distinct(triplets.iter().map(|t| t.query.as_str()));
    let docs = distinct(
        triplets
            .iter()
            .flat_map(|t| [t.pos.as_str(), t.negative.as_str()]),
    );
    let mut warnings = Vec::new();
    let (q_vecs, q_counts, q_hits) = embed_role(
        encoder,
        &queries.texts,
        Role::Query,
        cache,
        &mut warnings,
        ctx,
    )?;
    let (d_vecs, d_counts, d_hits) = embed_role(
        encoder,
        &docs.texts,
        Role::Document,
        cache,
        &mut warnings,
        ctx,
    )?;
    let q_rows = &queries.index_of_slot;
    let pos_rows: Vec<usize> = (0..n).map(|i| docs.index_of_slot[2 * i]).collect();
    let neg_rows: Vec<usize> = (0..n).map(|i| docs.index_of_slot[2 * i + 1]).collect();
    let token_counts = (0..n)
        .map(|i| {
            [
                q_counts[q_rows[i]],
                d_counts[pos_rows[i]],
                d_counts[neg_rows[i]],
            ]
        })
        .collect();
    let hits = q_hits + d_hits;
    Ok(TripletEmbeddings {
        queries: q_vecs.select(q_rows),
        positives: d_vecs.select(&pos_rows),
        negatives: d_vecs.select(&neg_rows),
        token_counts,
        cache_hits: hits,
        computed: queries.texts.len() + docs.texts.len() - hits,
        cache_warnings: warnings,
    })
}

/// Embeds distinct texts of one role through the cache: vectors, token counts, cache hits, and
/// the cache's warnings (they never stop the job).
pub fn embed_texts(
    encoder: &Encoder,
    texts: &[&str],
    role: Role,
    cache: Option<&EmbeddingCache>,
    ctx: &JobCtx,
) -> Result<(Embeddings, Vec<TokenCount>, usize, Vec<String>), EncodeError> {
    let mut warnings = Vec::new();
    let (e, c, h) = embed_role(encoder, texts, role, cache, &mut warnings, ctx)?;
    Ok((e, c, h, warnings))
}

/// Embeds distinct texts of one role, reading and filling the cache. Returns vectors, token
/// counts and the number of cache hits.
fn embed_role(
    encoder: &Encoder,
    texts: &[&str],
    role: Role,
    cache: Option<&EmbeddingCache>,
    warnings: &mut Vec<String>,
    ctx: &JobCtx,
) -> Result<(Embeddings, Vec<TokenCount>, usize), EncodeError> {
    let dim = encoder.dim();
    let settings = encoder.settings_key(role);
    let keys: Vec<[u8; 32]> = texts.iter().map(|t| text_key(t)).collect();
    let shard = cache.map(|c| c.load(&settings, dim)).unwrap_or_default();
    warnings.extend(shard.warnings.iter().cloned());
    if shard.corrupt_records > 0 {
        warnings.push(format!(
            "{} corrupt cache entries were ignored and are recomputed",
            shard.corrupt_records
        ));
    }
    let missing: Vec<usize> = (0..texts.len())
        .filter(|&i| !shard.vectors.contains_key(&keys[i]))
        .collect();
    let missing_texts: Vec<&str> = missing.iter().map(|&i| texts[i]).collect();
    let (fresh, fresh_counts) = if missing.is_empty() {
        (Embeddings::new(dim), Vec::new())
    } else {
        encoder.encode(&missing_texts, role, ctx)?
    };
    if let (Some(cache), false) = (cache, missing.is_empty()) {
        let entries = missing
            .iter()
            .enumerate()
            .map(|(j, &i)| (keys[i], fresh.row(j), fresh_counts[j].tokens as u32));
        if let Err(e) = cache.store(&settings, dim, entries) {
            let msg = format!(
                "could not write the embedding cache in {} ({e}); this run is not cached",
                cache.root().display()
            );
            warnings.push(msg);
        }
    }
    let mut data = vec![0f32; texts.len() * dim];
    let mut counts = vec![
        TokenCount {
            tokens: 0,
            truncated: false
        };
        texts.len()
    ];
    for (j, &i) in missing.iter().enumerate() {
        data[i * dim..(i + 1) * dim].copy_from_slice(fresh.row(j));
        counts[i] = fresh_counts[j];
    }
    for (i, key) in keys.iter().enumerate() {
        if let Some(hit) = shard.vectors.get(key) {
            data[i * dim..(i + 1) * dim].copy_from_slice(&hit.vector);
            let tokens = hit.tokens as usize;
            counts[i] = TokenCount {
                tokens,
                truncated: tokens > encoder.max_seq_len,
            };
        }
    }
    Ok((
        Embeddings::from_vec(dim, data),
        counts,
        texts.len() - missing.len(),
    ))
}
