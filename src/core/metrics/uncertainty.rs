//! How uncertain a metric is: 95 % confidence intervals by bootstrap over queries, and for the
//! difference of two models on the same triplets a paired interval (the same resamples for both)
//! and a paired p-value by sign-flip permutation.
//!
//! Queries are the unit: a query's triplets share its relevant documents, so resampling triplets
//! one by one would understate the spread. A query-level metric (accuracy@k, MRR, nDCG, ...) is
//! the mean of its queries' values; a triplet-level one (accuracy, negatives in top K) is the sum
//! over the resampled queries' triplets divided by their number. Resamples are seeded: the same
//! inputs give the same intervals.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::{is_triplet_level, metric_keys, query_metric_keys, EvalResult, NEG_KS};

/// Resamples (and sign-flip permutations) used unless asked otherwise.
pub const DEFAULT_RESAMPLES: usize = 2000;
/// Seed of the resamples unless asked otherwise.
pub const DEFAULT_SEED: u64 = 20_240_901;

/// A metric's value and its 95 % bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Interval {
    /// The metric on all the queries.
    pub value: f64,
    /// 2.5th and 97.5th percentiles of the bootstrap distribution.
    pub ci95: [f64; 2],
}

/// Two models' values of a metric on the same triplets, their difference and its uncertainty.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Delta {
    /// Model A's value.
    pub a: f64,
    /// Model B's value.
    pub b: f64,
    /// `b - a`.
    pub delta: f64,
    /// 95 % paired bootstrap interval of the difference.
    pub ci95: [f64; 2],
    /// Two-sided p-value of "no difference" (paired sign-flip permutation test).
    pub p_value: f64,
}

impl Delta {
    /// True when the interval of the difference contains 0: the data cannot tell the models
    /// apart on this metric.
    pub fn is_uncertain(&self) -> bool {
        self.ci95[0] <= 0.0 && self.ci95[1] >= 0.0
    }
}

/// Each query's contribution to every metric: `num[q][k]` summed over queries and divided by the
/// summed `den[q]` (1 per query for query-level metrics, its triplet count for triplet-level ones)
/// gives metric k.
struct Contributions {
    keys: Vec<String>,
    num: Vec<Vec<f64>>,
    triplets: Vec<f64>,
    triplet_level: Vec<bool>,
}

impl Contributions {
    fn of(r: &EvalResult) -> Self {
        let keys = metric_keys();
        let n_q = r.per_query.len();
        let query_keys = query_metric_keys();
        let mut num = vec![vec![0.0; keys.len()]; n_q];
        let mut triplets = vec![0.0; n_q];
        for (t, s) in r.per_triplet.iter().enumerate() {
            let q = r.query_of_triplet[t];
            triplets[q] += 1.0;
            num[q][0] += s.is_correct() as u8 as f64;
            for (i, k) in NEG_KS.iter().enumerate() {
                num[q][1 + i] += (s.rank_neg <= *k) as u8 as f64;
            }
        }
        for (q, values) in r.per_query.iter().enumerate() {
            for (v, key) in values.iter().zip(&query_keys) {
                let k = keys.iter().position(|x| x == key).expect("a metric key");
                num[q][k] = *v;
            }
        }
        let triplet_level = keys.iter().map(|k| is_triplet_level(k)).collect();
        Self {
            keys,
            num,
            triplets,
            triplet_level,
        }
    }

    /// Every metric with query q counted `counts[q]` times.
    fn metrics(&self, counts: &[u32]) -> Vec<f64> {
        let mut num = vec![0.0; self.keys.len()];
        let (mut queries, mut triplets) = (0.0, 0.0);
        for (q, &c) in counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let c = c as f64;
            queries += c;
            triplets += c * self.triplets[q];
            for (n, v) in num.iter_mut().zip(&self.num[q]) {
                *n += c * v;
            }
        }
        num.iter()
            .zip(&self.triplet_level)
            .map(|(n, &t)| n / if t { triplets } else { queries }.max(1.0))
            .collect()
    }
}

/// The counts of a bootstrap resample of `n` queries.
fn resample(n: usize, seed: u64, r: usize) -> Vec<u32> {
    let mut rng =
        rand::rngs::SmallRng::seed_from_u64(seed ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut counts = vec![0u32; n];
    for _ in 0..n {
        counts[rng.random_range(0..n)] += 1;
    }
    counts
}

/// The linearly interpolated percentile `p` (0-100) of sorted values, as numpy's default.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let x = p / 100.0 * (sorted.len() - 1) as f64;
    let (i, f) = (x.floor() as usize, x - x.floor());
    let hi = sorted[(i + 1).min(sorted.len() - 1)];
    sorted[i] + (hi - sorted[i]) * f
}

/// The 95 % interval of each column of `samples` (resamples × metrics).
fn intervals_of(samples: &[Vec<f64>], n_keys: usize) -> Vec<[f64; 2]> {
    (0..n_keys)
        .map(|k| {
            let mut col: Vec<f64> = samples.iter().map(|s| s[k]).collect();
            col.sort_by(f64::total_cmp);
            [percentile(&col, 2.5), percentile(&col, 97.5)]
        })
        .collect()
}

/// Every metric of one evaluation with its 95 % interval.
pub fn intervals(r: &EvalResult, resamples: usize, seed: u64) -> BTreeMap<String, Interval> {
    let c = Contributions::of(r);
    let n = c.num.len();
    let all = c.metrics(&vec![1; n]);
    let samples: Vec<Vec<f64>> = (0..resamples)
        .into_par_iter()
        .map(|i| c.metrics(&resample(n, seed, i)))
        .collect();
    let cis = intervals_of(&samples, c.keys.len());
    c.keys
        .into_iter()
        .zip(all.into_iter().zip(cis))
        .map(|(k, (value, ci95))| (k, Interval { value, ci95 }))
        .collect()
}

/// Why two evaluations cannot be compared query by query.
#[derive(Debug, thiserror::Error)]
#[error("the two evaluations are not on the same triplets ({0})")]
pub struct NotPaired(String);

/// The difference of two models on the same triplets, metric by metric: a paired bootstrap
/// interval and a paired sign-flip permutation p-value (both with `resamples` draws).
pub fn paired(
    a: &EvalResult,
    b: &EvalResult,
    resamples: usize,
    seed: u64,
) -> Result<BTreeMap<String, Delta>, NotPaired> {
    if a.query_of_triplet != b.query_of_triplet || a.per_query.len() != b.per_query.len() {
        return Err(NotPaired(format!(
            "{} and {} triplets, {} and {} queries",
            a.n_triplets,
            b.n_triplets,
            a.per_query.len(),
            b.per_query.len()
        )));
    }
    let (ca, cb) = (Contributions::of(a), Contributions::of(b));
    let n = ca.num.len();
    let ones = vec![1; n];
    let (va, vb) = (ca.metrics(&ones), cb.metrics(&ones));
    let deltas: Vec<Vec<f64>> = (0..resamples)
        .into_par_iter()
        .map(|i| {
            let counts = resample(n, seed, i);
            let (x, y) = (ca.metrics(&counts), cb.metrics(&counts));
            y.iter().zip(&x).map(|(y, x)| y - x).collect()
        })
        .collect();
    let cis = intervals_of(&deltas, ca.keys.len());
    // Under "no difference" the two models' values of a query are exchangeable: flipping the
    // sign of each query's difference at random gives the null distribution of the total.
    let diff: Vec<Vec<f64>> = (0..n)
        .map(|q| {
            cb.num[q]
                .iter()
                .zip(&ca.num[q])
                .map(|(y, x)| y - x)
                .collect()
        })
        .collect();
    let observed: Vec<f64> = (0..ca.keys.len())
        .map(|k| diff.iter().map(|d| d[k]).sum::<f64>())
        .collect();
    let extreme: Vec<usize> = (0..resamples)
        .into_par_iter()
        .map(|i| {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(
                (seed ^ 0x5157_4e5f_464c_4950).wrapping_add(i as u64),
            );
            let mut total = vec![0.0; ca.keys.len()];
            for d in &diff {
                let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                total.iter_mut().zip(d).for_each(|(t, v)| *t += sign * v);
            }
            total
                .iter()
                .zip(&observed)
                .map(|(t, o)| t.abs() >= o.abs() - 1e-12)
                .collect::<Vec<bool>>()
        })
        .fold(
            || vec![0usize; ca.keys.len()],
            |mut acc, hits| {
                acc.iter_mut().zip(hits).for_each(|(a, h)| *a += h as usize);
                acc
            },
        )
        .reduce(
            || vec![0usize; ca.keys.len()],
            |mut x, y| {
                x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
                x
            },
        );
    Ok(ca
        .keys
        .into_iter()
        .enumerate()
        .map(|(k, key)| {
            let d = Delta {
                a: va[k],
                b: vb[k],
                delta: vb[k] - va[k],
                ci95: cis[k],
                p_value: (1 + extreme[k]) as f64 / (1 + resamples) as f64,
            };
            (key, d)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::metrics::TripletScore;

    /// An evaluation of `n` queries with one triplet each, `right` of them ranked first.
    fn result(n: usize, right: &dyn Fn(usize) -> bool) -> EvalResult {
        let keys = query_metric_keys();
        let per_query: Vec<Vec<f64>> = (0..n)
            .map(|q| {
                let rank = if right(q) { 1 } else { 20 };
                super::super::query_values(&[rank])
            })
            .collect();
        let per_triplet = (0..n)
            .map(|q| TripletScore {
                cos_pos: if right(q) { 0.9 } else { 0.1 },
                cos_neg: 0.5,
                margin: 0.0,
                rank_pos: 1,
                rank_neg: 2,
            })
            .collect();
        assert_eq!(per_query[0].len(), keys.len());
        EvalResult {
            metrics: BTreeMap::new(),
            per_triplet,
            per_query,
            query_of_triplet: (0..n).collect(),
            n_triplets: n,
            n_queries: n,
            n_corpus: n,
        }
    }

    #[test]
    fn intervals_cover_the_binomial_spread() {
        // 100 queries, 80 right: accuracy@1 0.8 with a standard error of 0.04, so the 95 %
        // interval is about ±0.08.
        let r = result(100, &|q| q % 5 != 0);
        let m = intervals(&r, 2000, 1);
        let a = m["cosine_accuracy@1"];
        assert!((a.value - 0.8).abs() < 1e-12);
        let half = (a.ci95[1] - a.ci95[0]) / 2.0;
        assert!((0.06..0.10).contains(&half), "{a:?}");
        assert_eq!(intervals(&r, 2000, 1), m, "seeded");
        assert_eq!(m["cosine_accuracy"].value, 0.8);
    }

    #[test]
    fn paired_differences_and_p_values() {
        let a = result(200, &|q| q % 2 == 0);
        // The same model: no difference, p = 1.
        let same = paired(&a, &a, 500, 3).unwrap();
        let d = same["cosine_ndcg@10"];
        assert_eq!((d.delta, d.ci95, d.p_value), (0.0, [0.0, 0.0], 1.0));
        assert!(d.is_uncertain());
        // Fixing 60 more queries of 200: a clear gain (p well below 0.01).
        let b = result(200, &|q| q % 2 == 0 || q % 10 < 6);
        let d = paired(&a, &b, 1000, 3).unwrap()["cosine_accuracy@1"];
        assert!((d.delta - 0.3).abs() < 1e-12, "{d:?}");
        assert!(
            d.ci95[0] > 0.2 && d.p_value < 0.01 && !d.is_uncertain(),
            "{d:?}"
        );
        // Two queries changed, one each way: no evidence.
        let c = result(200, &|q| (q % 2 == 0 && q != 0) || q == 1);
        let d = paired(&a, &c, 1000, 3).unwrap()["cosine_accuracy@1"];
        assert!(
            d.delta == 0.0 && d.p_value > 0.5 && d.is_uncertain(),
            "{d:?}"
        );
        assert!(paired(&a, &result(10, &|_| true), 10, 1).is_err());
    }
}
