//! Hard-negative mining with sentence-transformers' `mine_hard_negatives` semantics (6.x):
//! anchors are the distinct queries, positives every positive of a query, the corpus the file's
//! distinct documents (plus any extra corpus); each query's candidates are its top
//! `range_max + max_positives` documents by cosine, its own positives removed; candidates too
//! close to the (hardest) positive are dropped by an absolute or relative margin, or outside
//! [min_score, max_score]; of the first `range_max` left, the first `range_min` are skipped and
//! `num_negatives` taken (the top ones, or a seeded random choice). Similarities are computed in
//! blocks of queries against the corpus ([`BLOCK_BYTES`] at most), never the whole matrix;
//! progress per block, cancel between blocks.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use crate::core::embeddings::Embeddings;
use crate::core::jobs::{Cancelled, JobCtx, StageClock};
use crate::core::metrics::{dot_f32, similarity_block};

/// How negatives are picked among the candidates left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// The highest-scoring ones.
    Top,
    /// A seeded random choice (shown sorted by score).
    Random,
}

/// The mining settings (sentence-transformers' names and defaults).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MineConfig {
    /// Candidates skipped at the top (after filtering).
    pub range_min: usize,
    /// Candidates considered (after filtering); `None`: sentence-transformers' default.
    pub range_max: Option<usize>,
    /// Drop a candidate when its score + this > the positive's score.
    pub absolute_margin: Option<f64>,
    /// Drop a candidate when its score > positive − |positive| · this.
    pub relative_margin: Option<f64>,
    /// Drop candidates scoring below this.
    pub min_score: Option<f64>,
    /// Drop candidates scoring above this.
    pub max_score: Option<f64>,
    /// Negatives per query.
    pub num_negatives: usize,
    /// Top or random.
    pub sampling: Sampling,
    /// Seed of random sampling.
    pub seed: u64,
}

impl Default for MineConfig {
    fn default() -> Self {
        Self {
            range_min: 0,
            range_max: None,
            absolute_margin: None,
            relative_margin: None,
            min_score: None,
            max_score: None,
            num_negatives: 3,
            sampling: Sampling::Top,
            seed: 12,
        }
    }
}

impl MineConfig {
    /// The candidates considered: `range_max`, or sentence-transformers' default (10 per
    /// negative when filters may drop some, else one per negative, plus the positives and
    /// `range_min`).
    pub fn effective_range_max(&self, max_positives: usize) -> usize {
        self.range_max.unwrap_or_else(|| {
            let filtering = self.absolute_margin.is_some()
                || self.relative_margin.is_some()
                || self.max_score.is_some();
            let per = if filtering { 10 } else { 1 };
            self.range_min + self.num_negatives * per + max_positives
        })
    }

    /// Checks the settings as sentence-transformers does.
    pub fn check(&self, max_positives: usize) -> Result<(), String> {
        if self.num_negatives < 1 {
            return Err("num_negatives must be at least 1".into());
        }
        let range_max = self.effective_range_max(max_positives);
        if self.range_min >= range_max {
            return Err(format!(
                "range_min must be smaller than range_max, got {} and {range_max}",
                self.range_min
            ));
        }
        if self.num_negatives > range_max - self.range_min {
            return Err(format!(
                "cannot mine {} negatives per query: only {} candidates remain after skipping the \
                 first range_min={} of range_max={range_max}",
                self.num_negatives,
                range_max - self.range_min,
                self.range_min
            ));
        }
        Ok(())
    }
}

/// One mined negative.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MinedNegative {
    /// Its index in the corpus.
    pub doc: usize,
    /// cos(query, negative).
    pub score: f64,
    /// Its 1-based rank among all the corpus's documents for the query (positives included).
    pub rank: usize,
    /// The hardest positive's score minus this one (small: a likely false negative).
    pub margin: f64,
}

/// What mining found for one distinct query.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MinedQuery {
    /// Its index among the distinct queries.
    pub query: usize,
    /// Its positives (corpus indices) and their scores.
    pub positives: Vec<(usize, f64)>,
    /// The mined negatives, best first.
    pub negatives: Vec<MinedNegative>,
}

/// The top `k` documents of a row by score (ties to the lower index), best first.
fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let cmp = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

/// Bytes of similarities held at once.
pub const BLOCK_BYTES: usize = 64 << 20;

/// Queries per block: as many as fit [`BLOCK_BYTES`] of scores against `n_docs` documents, at
/// most 256 and at least one.
pub fn block_rows(n_docs: usize) -> usize {
    (BLOCK_BYTES / (4 * n_docs.max(1))).clamp(1, 256)
}

/// Mines negatives for every distinct query. `queries` and `corpus` hold L2-normalised vectors;
/// `positives[q]` are query q's positives (corpus indices).
pub fn mine(
    queries: &Embeddings,
    corpus: &Embeddings,
    positives: &[Vec<usize>],
    cfg: &MineConfig,
    ctx: &JobCtx,
) -> Result<Vec<MinedQuery>, Cancelled> {
    let n_q = queries.rows();
    let block = block_rows(corpus.rows());
    let max_positives = positives.iter().map(Vec::len).max().unwrap_or(1);
    let range_max = cfg.effective_range_max(max_positives);
    let pool = (range_max + max_positives).min(corpus.rows());
    let clock = StageClock::start("mining", "queries", n_q);
    let mut out = Vec::with_capacity(n_q);
    for start in (0..n_q).step_by(block) {
        ctx.check_cancel()?;
        let end = (start + block).min(n_q);
        let scores = similarity_block(queries, start..end, corpus);
        let n_docs = corpus.rows();
        let block: Vec<MinedQuery> = (start..end)
            .into_par_iter()
            .map(|q| {
                let row = &scores[(q - start) * n_docs..(q - start + 1) * n_docs];
                mine_one(q, row, queries, corpus, &positives[q], cfg, pool, range_max)
            })
            .collect();
        out.extend(block);
        ctx.progress(clock.at(end));
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn mine_one(
    q: usize,
    row: &[f32],
    queries: &Embeddings,
    corpus: &Embeddings,
    positives: &[usize],
    cfg: &MineConfig,
    pool: usize,
    range_max: usize,
) -> MinedQuery {
    let pos: Vec<(usize, f64)> = positives
        .iter()
        .map(|&d| (d, dot_f32(queries.row(q), corpus.row(d)) as f64))
        .collect();
    // The hardest (lowest-scoring) positive sets the margins, as sentence-transformers does.
    let hardest = pos.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let keep = |s: f64| -> bool {
        cfg.absolute_margin.is_none_or(|m| s + m <= hardest)
            && cfg
                .relative_margin
                .is_none_or(|m| s <= hardest - hardest.abs() * m)
            && cfg.max_score.is_none_or(|m| s <= m)
            && cfg.min_score.is_none_or(|m| s >= m)
    };
    let candidates: Vec<usize> = top_k(row, pool)
        .into_iter()
        .filter(|d| !positives.contains(d))
        .filter(|&d| keep(row[d] as f64))
        .take(range_max)
        .skip(cfg.range_min)
        .collect();
    let chosen: Vec<usize> = match cfg.sampling {
        Sampling::Top => candidates.into_iter().take(cfg.num_negatives).collect(),
        Sampling::Random => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                cfg.seed ^ (q as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let mut c = candidates;
            c.shuffle(&mut rng);
            c.truncate(cfg.num_negatives);
            c.sort_by(|a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
            c
        }
    };
    let negatives = chosen
        .into_iter()
        .map(|d| {
            let s = row[d];
            let rank = 1 + row
                .iter()
                .enumerate()
                .filter(|&(j, &sj)| sj > s || (sj == s && j < d))
                .count();
            MinedNegative {
                doc: d,
                score: s as f64,
                rank,
                margin: hardest - s as f64,
            }
        })
        .collect();
    MinedQuery {
        query: q,
        positives: pos,
        negatives,
    }
}

/// Words shared by two texts as a share of the smaller one's distinct words: near 1 for near
/// duplicates (a likely false negative: the same patent text twice).
pub fn word_overlap(a: &str, b: &str) -> f64 {
    let words = |s: &str| -> std::collections::HashSet<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() > 2)
            .map(str::to_lowercase)
            .collect()
    };
    let (x, y) = (words(a), words(b));
    let small = x.len().min(y.len());
    if small == 0 {
        return 0.0;
    }
    x.intersection(&y).count() as f64 / small as f64
}

/// A negative within this much of the positive's score is flagged as a likely false negative.
pub const SUSPECT_MARGIN: f64 = 0.02;
/// A negative sharing at least this share of words with the positive is flagged as a near
/// duplicate.
pub const SUSPECT_OVERLAP: f64 = 0.8;

/// Why a mined negative may be a false negative (a relevant document mined as irrelevant), if it
/// looks like one: its score within [`SUSPECT_MARGIN`] of the positive's, or its text a near
/// duplicate of the positive ([`SUSPECT_OVERLAP`] of the words).
pub fn suspicion(margin: f64, negative: &str, positive: &str) -> Option<String> {
    let overlap = word_overlap(negative, positive);
    if overlap >= SUSPECT_OVERLAP {
        Some(format!(
            "near-duplicate of the positive ({:.0} % of words shared)",
            100.0 * overlap
        ))
    } else if margin < SUSPECT_MARGIN {
        Some(format!(
            "scores within {margin:.3} of the positive (< {SUSPECT_MARGIN})"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn margins_positives_ranges_and_sampling() {
        // One query; the corpus's documents score 0.9 (its positive), 0.88, 0.7, 0.6, 0.5, 0.1.
        let q = Embeddings::from_vec(2, unit(&[1.0, 0.0]));
        let docs: Vec<f32> = [0.9f32, 0.88, 0.7, 0.6, 0.5, 0.1]
            .iter()
            .flat_map(|&c| [c, (1.0 - c * c).sqrt()])
            .collect();
        let corpus = Embeddings::from_vec(2, docs);
        let emit = |_: crate::core::jobs::Update<()>| {};
        let ctx = JobCtx::new(Default::default(), &emit);
        let run = |cfg: MineConfig| -> Vec<usize> {
            mine(&q, &corpus, &[vec![0]], &cfg, &ctx).unwrap()[0]
                .negatives
                .iter()
                .map(|n| n.doc)
                .collect()
        };
        let base = MineConfig {
            num_negatives: 2,
            ..Default::default()
        };
        assert_eq!(
            run(base.clone()),
            vec![1, 2],
            "the positive is never a negative"
        );
        // 0.88 > 0.9 − 0.9·0.05 = 0.855: dropped by the relative margin.
        assert_eq!(
            run(MineConfig {
                relative_margin: Some(0.05),
                ..base.clone()
            }),
            vec![2, 3]
        );
        // 0.7 + 0.25 > 0.9: dropped by the absolute margin, and 0.88 too.
        assert_eq!(
            run(MineConfig {
                absolute_margin: Some(0.25),
                ..base.clone()
            }),
            vec![3, 4]
        );
        assert_eq!(
            run(MineConfig {
                range_min: 1,
                range_max: Some(4),
                ..base.clone()
            }),
            vec![2, 3]
        );
        assert_eq!(
            run(MineConfig {
                max_score: Some(0.65),
                min_score: Some(0.55),
                ..base.clone()
            }),
            vec![3]
        );
        let r = run(MineConfig {
            sampling: Sampling::Random,
            range_max: Some(6),
            ..base.clone()
        });
        assert_eq!(r.len(), 2);
        assert!(r.windows(2).all(|w| w[0] < w[1]), "shown best first: {r:?}");
        let m = mine(&q, &corpus, &[vec![0]], &base, &ctx).unwrap();
        assert_eq!((m[0].negatives[0].rank, m[0].negatives[1].rank), (2, 3));
        assert!((m[0].negatives[0].margin - 0.02).abs() < 1e-5);
        assert!(
            base.check(1).is_ok()
                && MineConfig {
                    num_negatives: 9,
                    range_max: Some(5),
                    ..base
                }
                .check(1)
                .is_err()
        );
    }

    #[test]
    fn word_overlap_finds_near_duplicates() {
        assert!(
            word_overlap(
                "A rotor blade for a wind turbine",
                "the rotor blade for the wind turbine"
            ) > 0.9
        );
        assert!(word_overlap("A rotor blade", "a battery cathode") < 0.1);
    }
}
