//! The retrieval view of a triplet set: distinct documents (pos then negative, in order of first
//! appearance), distinct queries, each query's relevant documents, and normalised vectors.

use std::collections::HashMap;

use crate::core::data::Triplet;
use crate::core::embeddings::Embeddings;

/// Queries, corpus and relevance built from triplets and their embeddings.
#[derive(Debug, Clone)]
pub struct RetrievalIndex {
    /// Distinct query vectors, L2-normalised in f32 (for fast blocked products), in order of first
    /// appearance.
    pub queries: Embeddings,
    /// Distinct document vectors, L2-normalised in f32, numbered by first appearance (pos, then
    /// negative).
    pub docs: Embeddings,
    /// The query vectors as given (not normalised), for exact f64 scores.
    pub queries_raw: Embeddings,
    /// The document vectors as given.
    pub docs_raw: Embeddings,
    /// f64 L2 norm of each raw query vector.
    pub query_norms: Vec<f64>,
    /// f64 L2 norm of each raw document vector.
    pub doc_norms: Vec<f64>,
    /// For each distinct query, its relevant documents (the documents of all its positives), sorted.
    pub relevant: Vec<Vec<usize>>,
    /// For each triplet, its query's index.
    pub query_of_triplet: Vec<usize>,
    /// For each triplet, its positive's document index.
    pub pos_doc: Vec<usize>,
    /// For each triplet, its negative's document index.
    pub neg_doc: Vec<usize>,
    /// For each document, the first (triplet, is_negative) that holds it.
    pub doc_origin: Vec<(usize, bool)>,
    /// For each query, the first triplet that holds it.
    pub query_origin: Vec<usize>,
}

impl RetrievalIndex {
    /// Builds the index; the three matrices have one row per triplet.
    pub fn build<'a>(
        triplets: &'a [Triplet],
        queries: &Embeddings,
        positives: &Embeddings,
        negatives: &Embeddings,
    ) -> Self {
        assert!(
            queries.rows() == triplets.len()
                && positives.rows() == triplets.len()
                && negatives.rows() == triplets.len(),
            "one embedding row per triplet is required"
        );
        let dim = queries.dim;
        let mut doc_id: HashMap<&str, usize> = HashMap::new();
        let mut docs = Embeddings::new(dim);
        let mut doc_origin = Vec::new();
        let mut q_id: HashMap<&str, usize> = HashMap::new();
        let mut q_vecs = Embeddings::new(dim);
        let mut query_origin = Vec::new();
        let mut relevant: Vec<Vec<usize>> = Vec::new();
        let n = triplets.len();
        let (mut query_of_triplet, mut pos_doc, mut neg_doc) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (i, t) in triplets.iter().enumerate() {
            let mut doc = |text: &'a str, src: &Embeddings, is_negative: bool| -> usize {
                *doc_id.entry(text).or_insert_with(|| {
                    docs.push(src.row(i));
                    doc_origin.push((i, is_negative));
                    docs.rows() - 1
                })
            };
            let p = doc(&t.pos, positives, false);
            let ng = doc(&t.negative, negatives, true);
            let q = *q_id.entry(&t.query).or_insert_with(|| {
                q_vecs.push(queries.row(i));
                query_origin.push(i);
                relevant.push(Vec::new());
                q_vecs.rows() - 1
            });
            if !relevant[q].contains(&p) {
                relevant[q].push(p);
            }
            query_of_triplet.push(q);
            pos_doc.push(p);
            neg_doc.push(ng);
        }
        for r in &mut relevant {
            r.sort_unstable();
        }
        let norms = |m: &Embeddings| -> Vec<f64> {
            (0..m.rows())
                .map(|i| {
                    m.row(i)
                        .iter()
                        .map(|&x| x as f64 * x as f64)
                        .sum::<f64>()
                        .sqrt()
                        .max(1e-12)
                })
                .collect()
        };
        let (query_norms, doc_norms) = (norms(&q_vecs), norms(&docs));
        let (mut queries_unit, mut docs_unit) = (q_vecs.clone(), docs.clone());
        queries_unit.normalize_rows();
        docs_unit.normalize_rows();
        Self {
            queries: queries_unit,
            docs: docs_unit,
            queries_raw: q_vecs,
            docs_raw: docs,
            query_norms,
            doc_norms,
            relevant,
            query_of_triplet,
            pos_doc,
            neg_doc,
            doc_origin,
            query_origin,
        }
    }

    /// Cosine of query `q` and document `d` in f64, normalising in f64 (as numpy does).
    pub fn exact_score(&self, q: usize, d: usize) -> f64 {
        let dot: f64 = self
            .queries_raw
            .row(q)
            .iter()
            .zip(self.docs_raw.row(d))
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum();
        dot / (self.query_norms[q] * self.doc_norms[d])
    }
}
