//! Retrieval metrics over normalised embeddings, with sentence-transformers' definitions
//! (TripletEvaluator, InformationRetrievalEvaluator) and the notebook's negatives-in-top-K.
//! Similarities are computed in blocks of queries by a matrix product; each query's ranks of its
//! relevant documents and negatives are counted in one scan of its row, so memory grows with
//! (block × documents), never documents².

mod index;
pub mod quantize;
pub mod uncertainty;
mod views;

pub use index::RetrievalIndex;
pub use views::{dot_f32, flip_counts, histogram, outranking, similarity_window, Flip};

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::core::embeddings::Embeddings;

/// The cut-offs of the query-level metrics.
pub const IR_KS: [usize; 4] = [1, 3, 5, 10];
/// The cut-offs of negatives-in-top-K.
pub const NEG_KS: [usize; 3] = [1, 5, 10];
/// Queries per block of the similarity product.
const QUERY_BLOCK: usize = 256;
/// Scores closer than this are compared again in f64, so f32 rounding never decides a rank.
const TIE_EPS: f32 = 1e-5;

/// Every metric key in display order.
pub fn metric_keys() -> Vec<String> {
    let mut keys = vec!["cosine_accuracy".to_string()];
    keys.extend(NEG_KS.iter().map(|k| format!("neg_in_top_{k}")));
    for k in IR_KS {
        keys.push(format!("cosine_accuracy@{k}"));
    }
    for k in IR_KS {
        keys.push(format!("cosine_precision@{k}"));
    }
    for k in IR_KS {
        keys.push(format!("cosine_recall@{k}"));
    }
    keys.extend(["cosine_mrr@10", "cosine_ndcg@10", "cosine_map@100"].map(String::from));
    keys
}

/// The query-level metric keys, in the order of [`EvalResult::per_query`]'s values.
pub fn query_metric_keys() -> Vec<String> {
    metric_keys()
        .into_iter()
        .filter(|k| !is_triplet_level(k))
        .collect()
}

/// True for the metrics averaged over triplets (accuracy, negatives in top K); the others are
/// averaged over distinct queries.
pub fn is_triplet_level(key: &str) -> bool {
    key == "cosine_accuracy" || key.starts_with("neg_in_top_")
}

/// A plain-language label of a metric key, for tables in the CLI and the GUI.
pub fn metric_label(key: &str) -> String {
    let k = key.rsplit(['@', '_']).next().unwrap_or("");
    match key.split('@').next().unwrap_or(key) {
        "cosine_accuracy" if key.contains('@') => format!("positives in top {k}"),
        "cosine_accuracy" => "share of triplets ranked right".into(),
        "cosine_precision" => format!("precision at {k}"),
        "cosine_recall" => format!("recall at {k}"),
        "cosine_mrr" => "mean reciprocal rank (top 10)".into(),
        "cosine_ndcg" => "nDCG (top 10)".into(),
        "cosine_map" => "mean average precision (top 100)".into(),
        _ => format!("negatives in top {k} (lower is better)"),
    }
}

/// What a metric counts, with the traps readers fall into (shown on hover beside its label).
pub fn metric_note(key: &str) -> String {
    let k = key.rsplit(['@', '_']).next().unwrap_or("");
    match key.split('@').next().unwrap_or(key) {
        "cosine_accuracy" if key.contains('@') => format!(
            "Share of queries with a relevant document in their top {k}. With one relevant \
             document per query this equals recall@{k}."
        ),
        "cosine_accuracy" => "Share of triplets with cos(query, pos) > cos(query, negative): the \
             notebook's count, blind to every other document."
            .into(),
        "cosine_precision" => format!(
            "Relevant documents among the top {k}, divided by {k}. With one relevant document per \
             query it is at most 1/{k}: a low value here is not a bad model."
        ),
        "cosine_recall" => format!(
            "Share of a query's relevant documents found in its top {k}. With one relevant \
             document per query this equals accuracy@{k}."
        ),
        "cosine_mrr" => "Mean of 1/rank of the first relevant document, 0 beyond rank 10.".into(),
        "cosine_ndcg" => {
            "Normalised discounted cumulative gain of the top 10: rewards relevant documents \
             ranked high, 1.0 when they all come first."
                .into()
        }
        "cosine_map" => "Mean over queries of the average precision at each relevant document \
             found in the top 100."
            .into(),
        _ => format!(
            "Share of triplets whose negative is in its query's top {k} among all documents: \
             lower is better."
        ),
    }
}

/// True for metrics where a lower value is better (negatives in top K).
pub fn lower_is_better(key: &str) -> bool {
    key.starts_with("neg_in_top_")
}

/// The scores of one triplet.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TripletScore {
    /// cos(query, positive).
    pub cos_pos: f64,
    /// cos(query, negative).
    pub cos_neg: f64,
    /// cos_pos − cos_neg.
    pub margin: f64,
    /// 1-based rank of the positive among all documents for this query.
    pub rank_pos: usize,
    /// 1-based rank of the negative.
    pub rank_neg: usize,
}

impl TripletScore {
    /// Ranked right: the positive scores strictly above the negative.
    pub fn is_correct(&self) -> bool {
        self.cos_pos > self.cos_neg
    }
}

/// All metrics of one evaluation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalResult {
    /// Metric key -> value.
    pub metrics: BTreeMap<String, f64>,
    /// One row per triplet, in triplet order.
    pub per_triplet: Vec<TripletScore>,
    /// For each distinct query, its value of every query-level metric, in the order of
    /// [`query_metric_keys`] (the metrics are their means).
    #[serde(skip)]
    pub per_query: Vec<Vec<f64>>,
    /// For each triplet, its query's index in `per_query`.
    #[serde(skip)]
    pub query_of_triplet: Vec<usize>,
    /// Triplets.
    pub n_triplets: usize,
    /// Distinct queries.
    pub n_queries: usize,
    /// Distinct documents.
    pub n_corpus: usize,
}

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Scores of a block of rows of `a` against every row of `b`: (rows, b.rows()) row-major.
pub fn similarity_block(a: &Embeddings, rows: std::ops::Range<usize>, b: &Embeddings) -> Vec<f32> {
    if rows.is_empty() || b.rows() == 0 {
        return Vec::new();
    }
    // A CPU matmul of valid shapes cannot fail; fall back to plain loops rather than panic.
    similarity_product(a, rows.clone(), b).unwrap_or_else(|_| similarity_loops(a, rows, b))
}

/// [`similarity_block`] as one candle matmul.
fn similarity_product(
    a: &Embeddings,
    rows: std::ops::Range<usize>,
    b: &Embeddings,
) -> candle_core::Result<Vec<f32>> {
    let (dim, dev) = (a.dim, Device::Cpu);
    let lhs = Tensor::from_slice(
        &a.data[rows.start * dim..rows.end * dim],
        (rows.len(), dim),
        &dev,
    )?;
    let rhs = Tensor::from_slice(&b.data, (b.rows(), dim), &dev)?;
    lhs.matmul(&rhs.t()?)?.flatten_all()?.to_vec1::<f32>()
}

/// [`similarity_block`] as plain loops of f64 dot products (the fallback).
fn similarity_loops(a: &Embeddings, rows: std::ops::Range<usize>, b: &Embeddings) -> Vec<f32> {
    rows.flat_map(|i| (0..b.rows()).map(move |j| (i, j)))
        .map(|(i, j)| dot64(a.row(i), b.row(j)) as f32)
        .collect()
}

/// 1-based rank of document `d` in a row of scores: documents scoring higher, or equal with a
/// lower index, come first. Near-ties are settled with `exact` (f64 dot products).
fn rank_in_row(row: &[f32], d: usize, exact: &dyn Fn(usize) -> f64) -> usize {
    let s = row[d];
    let mut exact_d = None;
    let mut before = 0;
    for (j, &sj) in row.iter().enumerate() {
        if j == d {
            continue;
        }
        let ahead = if (sj - s).abs() > TIE_EPS {
            sj > s
        } else {
            let ed = *exact_d.get_or_insert_with(|| exact(d));
            let ej = exact(j);
            ej > ed || (ej == ed && j < d)
        };
        before += ahead as usize;
    }
    before + 1
}

/// How the queries of an index score its documents: cosine of the float vectors, or a quantised
/// score (see [`quantize`]).
pub trait Scorer: Sync {
    /// Scores of queries `rows` against every document, (rows, documents) row-major, in f32;
    /// near ties are settled with [`Scorer::exact`].
    fn block(&self, rows: std::ops::Range<usize>) -> Vec<f32>;
    /// The exact score of query `q` and document `d`.
    fn exact(&self, q: usize, d: usize) -> f64;
    /// 1-based ranks of `targets` for query `q`, given its row of [`Scorer::block`]: documents
    /// scoring higher, or equal with a lower index, come first.
    fn ranks(&self, q: usize, row: &[f32], targets: &[usize]) -> Vec<(usize, usize)> {
        let exact = |j: usize| self.exact(q, j);
        targets
            .iter()
            .map(|&d| (d, rank_in_row(row, d, &exact)))
            .collect()
    }
}

/// Cosine of the float vectors (the default).
pub struct Cosine<'a>(pub &'a RetrievalIndex);

impl Scorer for Cosine<'_> {
    fn block(&self, rows: std::ops::Range<usize>) -> Vec<f32> {
        similarity_block(&self.0.queries, rows, &self.0.docs)
    }
    fn exact(&self, q: usize, d: usize) -> f64 {
        self.0.exact_score(q, d)
    }
}

/// Computes every metric of a retrieval index (cosine scores).
pub fn evaluate(index: &RetrievalIndex) -> EvalResult {
    evaluate_with(index, &Cosine(index))
}

/// Computes every metric of a retrieval index with the given scores.
pub fn evaluate_with(index: &RetrievalIndex, scorer: &dyn Scorer) -> EvalResult {
    let n_q = index.queries.rows();
    // Ranks per query of the documents we need: its relevant ones and its triplets' negatives.
    let mut targets: Vec<Vec<usize>> = index.relevant.clone();
    for (t, &q) in index.query_of_triplet.iter().enumerate() {
        targets[q].push(index.neg_doc[t]);
    }
    for t in &mut targets {
        t.sort_unstable();
        t.dedup();
    }
    let mut ranks: Vec<Vec<(usize, usize)>> = Vec::with_capacity(n_q);
    for start in (0..n_q).step_by(QUERY_BLOCK) {
        let end = (start + QUERY_BLOCK).min(n_q);
        let scores = scorer.block(start..end);
        let n_docs = index.docs.rows();
        let block: Vec<Vec<(usize, usize)>> = (start..end)
            .into_par_iter()
            .map(|q| {
                let row = &scores[(q - start) * n_docs..(q - start + 1) * n_docs];
                scorer.ranks(q, row, &targets[q])
            })
            .collect();
        ranks.extend(block);
    }
    let rank_of = |q: usize, d: usize| -> usize {
        let r = &ranks[q];
        r[r.binary_search_by_key(&d, |&(doc, _)| doc)
            .expect("target ranked")]
        .1
    };

    let per_triplet: Vec<TripletScore> = (0..index.query_of_triplet.len())
        .map(|t| {
            let q = index.query_of_triplet[t];
            let cos_pos = scorer.exact(q, index.pos_doc[t]);
            let cos_neg = scorer.exact(q, index.neg_doc[t]);
            TripletScore {
                cos_pos,
                cos_neg,
                margin: cos_pos - cos_neg,
                rank_pos: rank_of(q, index.pos_doc[t]),
                rank_neg: rank_of(q, index.neg_doc[t]),
            }
        })
        .collect();

    let mut m = BTreeMap::new();
    let n_t = per_triplet.len().max(1) as f64;
    let share = |f: &dyn Fn(&TripletScore) -> bool| {
        per_triplet.iter().filter(|s| f(s)).count() as f64 / n_t
    };
    m.insert("cosine_accuracy".to_string(), share(&|s| s.is_correct()));
    for k in NEG_KS {
        m.insert(format!("neg_in_top_{k}"), share(&|s| s.rank_neg <= k));
    }

    // Each query's values in the order of query_metric_keys(): accuracy@k, precision@k,
    // recall@k (k in IR_KS), MRR@10, nDCG@10, MAP@100.
    let per_query: Vec<Vec<f64>> = (0..n_q)
        .map(|q| {
            let mut r: Vec<usize> = index.relevant[q].iter().map(|&d| rank_of(q, d)).collect();
            r.sort_unstable();
            query_values(&r)
        })
        .collect();
    let nq = n_q.max(1) as f64;
    for (i, key) in query_metric_keys().into_iter().enumerate() {
        m.insert(key, per_query.iter().map(|v| v[i]).sum::<f64>() / nq);
    }

    EvalResult {
        metrics: m,
        n_triplets: per_triplet.len(),
        per_triplet,
        per_query,
        query_of_triplet: index.query_of_triplet.clone(),
        n_queries: n_q,
        n_corpus: index.docs.rows(),
    }
}

/// One query's value of every query-level metric from the sorted 1-based ranks of its relevant
/// documents (sentence-transformers' InformationRetrievalEvaluator formulas).
fn query_values(r: &[usize]) -> Vec<f64> {
    let n_rel = r.len() as f64;
    let hits = |k: usize| r.iter().filter(|&&x| x <= k).count() as f64;
    let mut v = Vec::with_capacity(3 * IR_KS.len() + 3);
    v.extend(IR_KS.iter().map(|&k| (hits(k) > 0.0) as u8 as f64));
    v.extend(IR_KS.iter().map(|&k| hits(k) / k as f64));
    v.extend(IR_KS.iter().map(|&k| hits(k) / n_rel));
    v.push(if r[0] <= 10 { 1.0 / r[0] as f64 } else { 0.0 });
    let dcg: f64 = r
        .iter()
        .filter(|&&x| x <= 10)
        .map(|&x| 1.0 / ((x + 1) as f64).log2())
        .sum();
    let idcg: f64 = (0..r.len().min(10))
        .map(|i| 1.0 / ((i + 2) as f64).log2())
        .sum();
    v.push(dcg / idcg);
    let ap: f64 = r
        .iter()
        .filter(|&&x| x <= 100)
        .enumerate()
        .map(|(hits, &x)| (hits + 1) as f64 / x as f64)
        .sum();
    v.push(ap / r.len().min(100) as f64);
    v
}

#[cfg(test)]
mod reference_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_its_plain_label_and_its_trap_noted() {
        for (key, label) in [
            ("cosine_accuracy", "share of triplets ranked right"),
            ("cosine_accuracy@5", "positives in top 5"),
            ("cosine_precision@10", "precision at 10"),
            ("cosine_recall@3", "recall at 3"),
            ("cosine_mrr@10", "mean reciprocal rank (top 10)"),
            ("cosine_ndcg@10", "nDCG (top 10)"),
            ("cosine_map@100", "mean average precision (top 100)"),
            ("neg_in_top_5", "negatives in top 5 (lower is better)"),
        ] {
            assert_eq!(metric_label(key), label, "{key}");
        }
        for (key, says) in [
            ("cosine_accuracy", "notebook's count"),
            ("cosine_accuracy@5", "equals recall@5"),
            ("cosine_precision@10", "at most 1/10"),
            ("cosine_recall@3", "equals accuracy@3"),
            ("cosine_mrr@10", "1/rank"),
            ("cosine_ndcg@10", "discounted cumulative gain"),
            ("cosine_map@100", "average precision"),
            ("neg_in_top_5", "top 5 among all documents: lower is better"),
        ] {
            assert!(
                metric_note(key).contains(says),
                "{key}: {}",
                metric_note(key)
            );
        }
        // Every key the tables show has a label of its own.
        let labels: std::collections::HashSet<String> =
            metric_keys().iter().map(|k| metric_label(k)).collect();
        assert_eq!(labels.len(), metric_keys().len());
    }

    /// Which direction is better decides the colour and arrow of every difference in Compare,
    /// the reports and the CLI: only the negatives' top-K shares are better lower.
    #[test]
    fn only_the_negatives_top_k_shares_are_better_lower() {
        let lower: Vec<String> = metric_keys()
            .into_iter()
            .filter(|k| lower_is_better(k))
            .collect();
        assert_eq!(lower, ["neg_in_top_1", "neg_in_top_5", "neg_in_top_10"]);
        assert!(!lower_is_better("cosine_accuracy"));
        assert!(!lower_is_better("cosine_ndcg@10"));
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let row = [0.5f32, 0.9, 0.5, 0.1];
        let exact = |j: usize| row[j] as f64;
        assert_eq!(rank_in_row(&row, 1, &exact), 1);
        assert_eq!(rank_in_row(&row, 0, &exact), 2);
        assert_eq!(rank_in_row(&row, 2, &exact), 3);
        assert_eq!(rank_in_row(&row, 3, &exact), 4);
    }

    #[test]
    fn near_ties_use_exact_scores() {
        // In f32 both look equal; the exact scores say document 0 is lower.
        let row = [0.7f32, 0.7];
        let exact = |j: usize| if j == 0 { 0.6999999 } else { 0.7 };
        assert_eq!(rank_in_row(&row, 0, &exact), 2);
        assert_eq!(rank_in_row(&row, 1, &exact), 1);
    }

    #[test]
    fn a_query_with_two_relevant_documents_counts_each_one() {
        // Relevant documents at ranks 1 and 3 (as sentence-transformers' InformationRetrievalEvaluator
        // sees a query with two positives).
        let v = query_values(&[1, 3]);
        let keys = query_metric_keys();
        assert_eq!(v.len(), keys.len());
        let idcg = 1.0 + 1.0 / 3f64.log2();
        let expected = [
            ("cosine_accuracy@1", 1.0),
            ("cosine_accuracy@3", 1.0),
            ("cosine_accuracy@5", 1.0),
            ("cosine_accuracy@10", 1.0),
            ("cosine_precision@1", 1.0),
            ("cosine_precision@3", 2.0 / 3.0),
            ("cosine_precision@5", 2.0 / 5.0),
            ("cosine_precision@10", 2.0 / 10.0),
            ("cosine_recall@1", 0.5),
            ("cosine_recall@3", 1.0),
            ("cosine_recall@5", 1.0),
            ("cosine_recall@10", 1.0),
            ("cosine_mrr@10", 1.0),
            ("cosine_ndcg@10", (1.0 + 0.5) / idcg),
            ("cosine_map@100", (1.0 + 2.0 / 3.0) / 2.0),
        ];
        assert_eq!(keys.len(), expected.len());
        for ((key, got), (want_key, want)) in keys.iter().zip(&v).zip(expected) {
            assert_eq!(key, want_key);
            assert!((got - want).abs() < 1e-12, "{key}: {got} vs {want}");
        }
    }

    /// The matmul and its fallback loops give the same scores for a block of rows in the middle
    /// and one at the end, and the matmul does not fail on them.
    #[test]
    fn the_similarity_product_and_its_fallback_agree() {
        let (dim, na, nb) = (5, 10, 7);
        let vals = |n: usize, f: f32| (0..n * dim).map(|i| ((i as f32) * f).sin()).collect();
        let a = Embeddings::from_vec(dim, vals(na, 0.77));
        let b = Embeddings::from_vec(dim, vals(nb, 1.31));
        for rows in [3..6, 8..10] {
            let product = similarity_product(&a, rows.clone(), &b).unwrap();
            let loops = similarity_loops(&a, rows.clone(), &b);
            assert_eq!(product.len(), rows.len() * nb);
            assert_eq!(loops.len(), product.len());
            for (k, (x, y)) in product.iter().zip(&loops).enumerate() {
                let (i, j) = (rows.start + k / nb, k % nb);
                let want: f64 = a
                    .row(i)
                    .iter()
                    .zip(b.row(j))
                    .map(|(&x, &y)| (x * y) as f64)
                    .sum();
                assert!((*x as f64 - want).abs() < 1e-5, "{i},{j}: {x} vs {want}");
                assert!((*y as f64 - want).abs() < 1e-5, "{i},{j}: {y} vs {want}");
            }
            assert_eq!(similarity_block(&a, rows, &b), product);
        }
        assert!(similarity_block(&a, 4..4, &b).is_empty());
    }
}
