//! Retrieval under Matryoshka truncation and embedding quantisation, with
//! sentence-transformers' definitions (`quantize_embeddings`, 6.x): the first D components of the
//! model's output vectors (after its Normalize module, not normalised again); int8 / uint8 codes
//! from per-dimension ranges calibrated on the corpus (the file's distinct documents), scored by
//! the integer dot product; binary codes (bit = x > 0) scored by minus the Hamming distance.
//! Optional rescoring as sentence-transformers' `semantic_search_*`: the top candidates by the
//! quantised score are scored again with the float query against the dequantised documents.
//!
//! Every score is an integer (or, rescored, an f64): the codes are products of small integers
//! held exactly in f32, so the blocked f32 products rank exactly, ties to the lower index.

use std::ops::Range;

use super::{evaluate_with, similarity_block, EvalResult, RetrievalIndex, Scorer};
use crate::core::embeddings::Embeddings;

/// How vectors are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 32-bit floats, cosine.
    Float32,
    /// One signed byte per dimension.
    Int8,
    /// One unsigned byte per dimension.
    Uint8,
    /// One bit per dimension, packed (sentence-transformers' signed bytes).
    Binary,
    /// One bit per dimension, packed (unsigned bytes): the same bits and ranking as `binary`.
    Ubinary,
}

impl Precision {
    /// Every precision.
    pub const ALL: [Precision; 5] = [
        Precision::Float32,
        Precision::Int8,
        Precision::Uint8,
        Precision::Binary,
        Precision::Ubinary,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Float32 => "float32",
            Precision::Int8 => "int8",
            Precision::Uint8 => "uint8",
            Precision::Binary => "binary",
            Precision::Ubinary => "ubinary",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("precision must be float32, int8, uint8, binary or ubinary, got `{s}`")
            })
    }

    /// Bytes one vector of `dim` dimensions takes.
    pub fn bytes_per_vector(self, dim: usize) -> usize {
        match self {
            Precision::Float32 => 4 * dim,
            Precision::Int8 | Precision::Uint8 => dim,
            Precision::Binary | Precision::Ubinary => dim.div_ceil(8),
        }
    }
}

/// The first `dim` components of every row.
pub fn truncate(m: &Embeddings, dim: usize) -> Embeddings {
    if dim >= m.dim {
        return m.clone();
    }
    let data = (0..m.rows())
        .flat_map(|i| m.row(i)[..dim].iter().copied())
        .collect();
    Embeddings::from_vec(dim, data)
}

/// Per-dimension calibration of int8/uint8: the corpus's minimum and the step (max − min) / 255
/// (1 where max = min), in f32 as numpy computes them.
struct Ranges {
    lo: Vec<f32>,
    step: Vec<f32>,
}

impl Ranges {
    fn of(corpus: &Embeddings) -> Self {
        let d = corpus.dim;
        let (mut lo, mut hi) = (vec![f32::INFINITY; d], vec![f32::NEG_INFINITY; d]);
        for i in 0..corpus.rows() {
            for (j, &x) in corpus.row(i).iter().enumerate() {
                lo[j] = lo[j].min(x);
                hi[j] = hi[j].max(x);
            }
        }
        let step = lo
            .iter()
            .zip(&hi)
            .map(|(&l, &h)| {
                let s = (h - l) / 255f32;
                if s == 0.0 {
                    1.0
                } else {
                    s
                }
            })
            .collect();
        Self { lo, step }
    }

    /// The uint8 code of each component, minus 128 (the int8 code), as exact f32 integers.
    fn codes(&self, m: &Embeddings) -> Embeddings {
        let data = (0..m.rows())
            .flat_map(|i| {
                m.row(i).iter().enumerate().map(|(j, &x)| {
                    let u = ((x - self.lo[j]) / self.step[j]).floor().clamp(0.0, 255.0);
                    u - 128.0
                })
            })
            .collect();
        Embeddings::from_vec(m.dim, data)
    }

    /// A document's int8 codes back in the coordinates of the float vectors (for rescoring).
    fn dequantize(&self, codes: &[f32]) -> Vec<f64> {
        codes
            .iter()
            .enumerate()
            .map(|(j, &c)| (c as f64 + 128.0) * self.step[j] as f64 + self.lo[j] as f64)
            .collect()
    }
}

/// ±1 per component (bit = x > 0): the dot product of two such vectors is D − 2 · Hamming.
fn signs(m: &Embeddings) -> Embeddings {
    let data = m
        .data
        .iter()
        .map(|&x| if x > 0.0 { 1.0 } else { -1.0 })
        .collect();
    Embeddings::from_vec(m.dim, data)
}

/// The float queries and the dequantised documents a rescore uses, and how many candidates.
struct Rescore {
    queries: Embeddings,
    docs: Vec<Vec<f64>>,
    candidates: usize,
}

/// Quantised scores of an index's (truncated) vectors.
pub struct Quantized<'a> {
    index: &'a RetrievalIndex,
    precision: Precision,
    dim: usize,
    q: Embeddings,
    d: Embeddings,
    /// Added to every score of a document (uint8: 128 · its code sum), exact.
    doc_offset: Vec<f64>,
    /// Added to every score of a query (uint8: 128 · its code sum + 128² · D), exact.
    query_offset: Vec<f64>,
    rescore: Option<Rescore>,
    /// Whether every f32 block score is exact (below 2^24 in magnitude whatever the codes):
    /// int8 up to 1024 dimensions, uint8 up to 512, binary always; else rows are recomputed in f64.
    f32_exact: bool,
}

/// The candidates a rescored search keeps per query: `multiplier` times the deepest cut-off of
/// the metrics (MAP@100).
pub const RESCORE_DEPTH: usize = 100;

impl<'a> Quantized<'a> {
    /// The scores of `index` (built from truncated, unnormalised vectors) at `precision`;
    /// `rescore` is the multiplier M of a rescored search.
    pub fn new(index: &'a RetrievalIndex, precision: Precision, rescore: Option<usize>) -> Self {
        let dim = index.docs_raw.dim;
        let (q, d, doc_offset, query_offset, ranges) = match precision {
            Precision::Float32 => (
                index.queries.clone(),
                index.docs.clone(),
                Vec::new(),
                Vec::new(),
                None,
            ),
            Precision::Int8 | Precision::Uint8 => {
                let r = Ranges::of(&index.docs_raw);
                let (q, d) = (r.codes(&index.queries_raw), r.codes(&index.docs_raw));
                let sums = |m: &Embeddings| -> Vec<f64> {
                    (0..m.rows())
                        .map(|i| m.row(i).iter().map(|&c| c as f64).sum())
                        .collect()
                };
                let (qo, dof) = if precision == Precision::Uint8 {
                    // (a + 128)·(b + 128) = a·b + 128 Σa + 128 Σb + 128² D
                    let k = 128.0 * 128.0 * dim as f64;
                    (
                        sums(&q).iter().map(|s| 128.0 * s + k).collect(),
                        sums(&d).iter().map(|s| 128.0 * s).collect(),
                    )
                } else {
                    (Vec::new(), Vec::new())
                };
                (q, d, dof, qo, Some(r))
            }
            Precision::Binary | Precision::Ubinary => (
                signs(&index.queries_raw),
                signs(&index.docs_raw),
                Vec::new(),
                Vec::new(),
                None,
            ),
        };
        let rescore = rescore
            .filter(|_| precision != Precision::Float32)
            .map(|m| {
                let docs = (0..d.rows())
                    .map(|i| match &ranges {
                        Some(r) => r.dequantize(d.row(i)),
                        // Unpacked bits, 0 or 1, as sentence-transformers rescores them.
                        None => d
                            .row(i)
                            .iter()
                            .map(|&s| if s > 0.0 { 1.0 } else { 0.0 })
                            .collect(),
                    })
                    .collect();
                Rescore {
                    queries: index.queries_raw.clone(),
                    docs,
                    candidates: (RESCORE_DEPTH * m.max(1)).min(d.rows()),
                }
            });
        let bound = match precision {
            Precision::Int8 => 128.0 * 128.0 * dim as f64,
            Precision::Uint8 => 2.0 * 128.0 * 128.0 * dim as f64,
            Precision::Float32 | Precision::Binary | Precision::Ubinary => dim as f64,
        };
        Self {
            index,
            precision,
            dim,
            q,
            d,
            doc_offset,
            query_offset,
            rescore,
            f32_exact: bound <= (1u64 << 24) as f64,
        }
    }

    /// The quantised score of query `q` and document `d`, exact: the integer dot product of the
    /// codes (uint8 with its offsets), or minus the Hamming distance.
    fn quantized(&self, q: usize, d: usize) -> f64 {
        let dot: f64 = self
            .q
            .row(q)
            .iter()
            .zip(self.d.row(d))
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum();
        match self.precision {
            Precision::Float32 => self.index.exact_score(q, d),
            Precision::Int8 => dot,
            Precision::Uint8 => dot + self.doc_offset[d] + self.query_offset[q],
            Precision::Binary | Precision::Ubinary => (dot - self.dim as f64) / 2.0,
        }
    }

    /// The rescored score: the float query against the dequantised document.
    fn rescored(&self, r: &Rescore, q: usize, d: usize) -> f64 {
        r.queries
            .row(q)
            .iter()
            .zip(&r.docs[d])
            .map(|(&a, &b)| a as f64 * b)
            .sum()
    }
}

impl Scorer for Quantized<'_> {
    fn block(&self, rows: Range<usize>) -> Vec<f32> {
        let mut s = similarity_block(&self.q, rows, &self.d);
        // uint8's per-document offset changes the order within a row (the query's does not);
        // both terms are integers below 2^24, so the sum is exact in f32.
        if !self.doc_offset.is_empty() {
            let n = self.d.rows();
            for row in s.chunks_mut(n) {
                row.iter_mut()
                    .zip(&self.doc_offset)
                    .for_each(|(v, o)| *v += *o as f32);
            }
        }
        s
    }

    fn exact(&self, q: usize, d: usize) -> f64 {
        match &self.rescore {
            Some(r) => self.rescored(r, q, d),
            None => self.quantized(q, d),
        }
    }

    fn ranks(&self, q: usize, row: &[f32], targets: &[usize]) -> Vec<(usize, usize)> {
        // Scores too large for f32 to hold exactly are ranked in f64 (as exact integers); the
        // f32 order of the rest is exact.
        let exact_row: Vec<f32>;
        let row = if self.f32_exact {
            row
        } else {
            let base: Vec<f64> = (0..row.len()).map(|j| self.quantized(q, j)).collect();
            return match &self.rescore {
                None => targets
                    .iter()
                    .map(|&d| {
                        let s = base[d];
                        let before = base
                            .iter()
                            .enumerate()
                            .filter(|&(j, &sj)| sj > s || (sj == s && j < d))
                            .count();
                        (d, before + 1)
                    })
                    .collect(),
                Some(_) => {
                    // Rank positions stand in for the scores: exact and in f32's range.
                    let mut order: Vec<usize> = (0..base.len()).collect();
                    order.sort_by(|&a, &b| base[b].total_cmp(&base[a]).then(a.cmp(&b)));
                    let mut pos = vec![0f32; base.len()];
                    for (k, &j) in order.iter().enumerate() {
                        pos[j] = -(k as f32);
                    }
                    exact_row = pos;
                    self.ranks_rescored(q, &exact_row, targets)
                }
            };
        };
        self.ranks_rescored_or_plain(q, row, targets)
    }
}

impl Quantized<'_> {
    fn ranks_rescored_or_plain(
        &self,
        q: usize,
        row: &[f32],
        targets: &[usize],
    ) -> Vec<(usize, usize)> {
        if self.rescore.is_some() {
            return self.ranks_rescored(q, row, targets);
        }
        // The row is exact: compare it directly (integer scores tie often, binary ones most).
        targets
            .iter()
            .map(|&d| {
                let s = row[d];
                let before = row
                    .iter()
                    .enumerate()
                    .filter(|&(j, &sj)| sj > s || (sj == s && j < d))
                    .count();
                (d, before + 1)
            })
            .collect()
    }

    /// Ranks under rescoring, from a row whose f32 order is the quantised order.
    fn ranks_rescored(&self, q: usize, row: &[f32], targets: &[usize]) -> Vec<(usize, usize)> {
        let Some(r) = &self.rescore else {
            let exact = |j: usize| self.quantized(q, j);
            return targets
                .iter()
                .map(|&d| (d, super::rank_in_row(row, d, &exact)))
                .collect();
        };
        // The candidates: the top `candidates` by the quantised score (ties to the lower index),
        // ranked by the rescored score; every other document after them, in quantised order.
        let mut order: Vec<usize> = (0..row.len()).collect();
        let by_quantized = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
        let c = r.candidates.min(order.len());
        if c < order.len() {
            order.select_nth_unstable_by(c, by_quantized);
        }
        let candidates = &mut order[..c];
        let rescored: Vec<(usize, f64)> = candidates
            .iter()
            .map(|&d| (d, self.rescored(r, q, d)))
            .collect();
        let in_candidates: std::collections::HashMap<usize, f64> =
            rescored.iter().copied().collect();
        targets
            .iter()
            .map(|&d| {
                let rank = match in_candidates.get(&d) {
                    Some(&s) => {
                        1 + rescored
                            .iter()
                            .filter(|&&(j, sj)| sj > s || (sj == s && j < d))
                            .count()
                    }
                    None => {
                        let s = row[d];
                        c + 1
                            + (0..row.len())
                                .filter(|j| !in_candidates.contains_key(j))
                                .filter(|&j| row[j] > s || (row[j] == s && j < d))
                                .count()
                    }
                };
                (d, rank)
            })
            .collect()
    }
}

/// The metrics of one cell: vectors truncated to `dim`, stored at `precision`, optionally
/// rescored. `queries`, `positives`, `negatives` hold one full-width row per triplet.
pub fn evaluate_cell(
    triplets: &[crate::core::data::Triplet],
    queries: &Embeddings,
    positives: &Embeddings,
    negatives: &Embeddings,
    dim: usize,
    precision: Precision,
    rescore: Option<usize>,
) -> EvalResult {
    let t = |m: &Embeddings| truncate(m, dim);
    let index = RetrievalIndex::build(triplets, &t(queries), &t(positives), &t(negatives));
    if precision == Precision::Float32 {
        return super::evaluate(&index);
    }
    evaluate_with(&index, &Quantized::new(&index, precision, rescore))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::data::Triplet;
    use rand::{Rng, SeedableRng};

    /// Triplets over a small corpus (shared documents, repeated queries) and random vectors.
    fn case(n: usize, dim: usize, seed: u64) -> (Vec<Triplet>, [Embeddings; 3]) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let triplets: Vec<Triplet> = (0..n)
            .map(|i| Triplet {
                query: format!("q{}", i % (n / 2)),
                pos: format!("d{}", rng.random_range(0..n)),
                negative: format!("d{}", rng.random_range(0..n)),
            })
            .collect();
        // One vector per distinct text, so repeated texts get the same vector.
        let mut vec_of = std::collections::HashMap::new();
        let mut m = |texts: Vec<&str>| {
            let mut data = Vec::new();
            for t in texts {
                let v = vec_of.entry(t.to_string()).or_insert_with(|| {
                    (0..dim)
                        .map(|_| rng.random_range(-1.0f32..1.0))
                        .collect::<Vec<f32>>()
                });
                data.extend_from_slice(v);
            }
            Embeddings::from_vec(dim, data)
        };
        let q = m(triplets.iter().map(|t| t.query.as_str()).collect());
        let p = m(triplets.iter().map(|t| t.pos.as_str()).collect());
        let ng = m(triplets.iter().map(|t| t.negative.as_str()).collect());
        (triplets, [q, p, ng])
    }

    /// The definitions written out plainly in f64: codes, scores, and the full ranking of every
    /// query's documents (score descending, ties to the lower index).
    fn naive_ranks(
        index: &RetrievalIndex,
        precision: Precision,
        rescore: Option<usize>,
    ) -> Vec<Vec<usize>> {
        let (qs, ds) = (&index.queries_raw, &index.docs_raw);
        let dim = ds.dim;
        let (mut lo, mut hi) = (vec![f32::MAX; dim], vec![f32::MIN; dim]);
        for i in 0..ds.rows() {
            for j in 0..dim {
                lo[j] = lo[j].min(ds.row(i)[j]);
                hi[j] = hi[j].max(ds.row(i)[j]);
            }
        }
        let step: Vec<f32> = (0..dim)
            .map(|j| {
                let s = (hi[j] - lo[j]) / 255f32;
                if s == 0.0 {
                    1.0
                } else {
                    s
                }
            })
            .collect();
        let code = |x: &[f32]| -> Vec<f64> {
            x.iter()
                .enumerate()
                .map(|(j, &v)| ((v - lo[j]) / step[j]).floor().clamp(0.0, 255.0) as f64)
                .collect()
        };
        let score = |q: &[f32], d: &[f32]| -> f64 {
            match precision {
                Precision::Int8 => code(q)
                    .iter()
                    .zip(code(d))
                    .map(|(a, b)| (a - 128.0) * (b - 128.0))
                    .sum(),
                Precision::Uint8 => code(q).iter().zip(code(d)).map(|(a, b)| a * b).sum(),
                _ => {
                    -(q.iter()
                        .zip(d)
                        .filter(|(a, b)| (**a > 0.0) != (**b > 0.0))
                        .count() as f64)
                }
            }
        };
        (0..qs.rows())
            .map(|q| {
                let mut order: Vec<usize> = (0..ds.rows()).collect();
                let s: Vec<f64> = order.iter().map(|&d| score(qs.row(q), ds.row(d))).collect();
                order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
                if let Some(m) = rescore {
                    let c = (RESCORE_DEPTH * m).min(order.len());
                    let deq = |d: usize| -> Vec<f64> {
                        match precision {
                            Precision::Int8 | Precision::Uint8 => code(ds.row(d))
                                .iter()
                                .enumerate()
                                .map(|(j, &u)| u * step[j] as f64 + lo[j] as f64)
                                .collect(),
                            _ => ds
                                .row(d)
                                .iter()
                                .map(|&v| if v > 0.0 { 1.0 } else { 0.0 })
                                .collect(),
                        }
                    };
                    let r: Vec<f64> = order[..c]
                        .iter()
                        .map(|&d| {
                            qs.row(q)
                                .iter()
                                .zip(deq(d))
                                .map(|(&a, b)| a as f64 * b)
                                .sum()
                        })
                        .collect();
                    let mut top: Vec<(usize, f64)> = order[..c].iter().copied().zip(r).collect();
                    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                    let rest = order[c..].to_vec();
                    order = top.into_iter().map(|(d, _)| d).chain(rest).collect();
                }
                let mut rank = vec![0; order.len()];
                for (k, &d) in order.iter().enumerate() {
                    rank[d] = k + 1;
                }
                rank
            })
            .collect()
    }

    #[test]
    fn ranks_equal_the_plain_definitions_for_every_precision_and_width() {
        // 1,200 dimensions: past the width where f32 holds every int8 score exactly.
        for (dim, rescore) in [(24, None), (24, Some(1)), (1200, None), (1200, Some(1))] {
            let (triplets, [q, p, ng]) = case(300, dim, 5);
            for precision in [Precision::Int8, Precision::Uint8, Precision::Binary] {
                let index = RetrievalIndex::build(&triplets, &q, &p, &ng);
                let want = naive_ranks(&index, precision, rescore);
                let got = evaluate_with(&index, &Quantized::new(&index, precision, rescore));
                for (t, s) in got.per_triplet.iter().enumerate() {
                    let qi = index.query_of_triplet[t];
                    let what = format!("{precision:?} dim {dim} rescore {rescore:?} triplet {t}");
                    assert_eq!(s.rank_pos, want[qi][index.pos_doc[t]], "{what}: positive");
                    assert_eq!(s.rank_neg, want[qi][index.neg_doc[t]], "{what}: negative");
                }
            }
        }
    }
}
