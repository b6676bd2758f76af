//! Summary statistics of a loaded dataset for the data panel.

use std::collections::HashSet;

use super::Dataset;

/// Word-count statistics of one field.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LengthStats {
    /// Shortest text, in words.
    pub min: usize,
    /// Median.
    pub median: usize,
    /// 95th percentile.
    pub p95: usize,
    /// Longest.
    pub max: usize,
}

/// Counts and lengths of a dataset.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DataStats {
    /// Triplets.
    pub triplets: usize,
    /// Distinct queries.
    pub distinct_queries: usize,
    /// Distinct documents (pos and negative texts).
    pub distinct_documents: usize,
    /// Query lengths.
    pub query_words: LengthStats,
    /// Positive lengths.
    pub pos_words: LengthStats,
    /// Negative lengths.
    pub negative_words: LengthStats,
}

fn lengths(texts: impl Iterator<Item = usize>) -> LengthStats {
    let mut v: Vec<usize> = texts.collect();
    if v.is_empty() {
        return LengthStats::default();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    LengthStats {
        min: v[0],
        median: at(0.5),
        p95: at(0.95),
        max: v[v.len() - 1],
    }
}

impl DataStats {
    /// Computes the statistics (O(N log N); run it off the UI thread).
    pub fn of(d: &Dataset) -> Self {
        let words = |s: &str| s.split_whitespace().count();
        let queries: HashSet<&str> = d.triplets.iter().map(|t| t.query.as_str()).collect();
        let docs: HashSet<&str> = d
            .triplets
            .iter()
            .flat_map(|t| [t.pos.as_str(), t.negative.as_str()])
            .collect();
        Self {
            triplets: d.len(),
            distinct_queries: queries.len(),
            distinct_documents: docs.len(),
            query_words: lengths(d.triplets.iter().map(|t| words(&t.query))),
            pos_words: lengths(d.triplets.iter().map(|t| words(&t.pos))),
            negative_words: lengths(d.triplets.iter().map(|t| words(&t.negative))),
        }
    }
}
