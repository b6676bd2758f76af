//! What the GUI asks of the embeddings besides the metrics: similarity windows for the heatmap,
//! histograms, the documents that outrank a positive, and flips between two models. Each call
//! touches only what it returns (a window, one query row), never a full N×N matrix.

use std::ops::Range;

use super::{RetrievalIndex, TripletScore};
use crate::core::embeddings::Embeddings;

/// Dot product with eight independent accumulators, so the compiler can vectorise it (a single
/// f32 accumulator forces strict sequential order).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Cosines of rows `rows` of `a` against rows `cols` of `b` (both L2-normalised):
/// (rows.len(), cols.len()) row-major.
pub fn similarity_window(
    a: &Embeddings,
    rows: Range<usize>,
    b: &Embeddings,
    cols: Range<usize>,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * cols.len());
    for i in rows {
        let x = a.row(i);
        for j in cols.clone() {
            out.push(dot_f32(x, b.row(j)));
        }
    }
    out
}

/// Counts of `values` in `bins` equal bins over [lo, hi]; values outside are clamped in.
pub fn histogram(
    values: impl IntoIterator<Item = f64>,
    bins: usize,
    lo: f64,
    hi: f64,
) -> Vec<usize> {
    let mut counts = vec![0; bins.max(1)];
    let width = (hi - lo) / bins.max(1) as f64;
    for v in values {
        if v.is_finite() {
            let b = ((v - lo) / width)
                .floor()
                .clamp(0.0, (bins.max(1) - 1) as f64) as usize;
            counts[b] += 1;
        }
    }
    counts
}

/// The documents ranked above document `doc` for query `query`, best first, with their cosines
/// (exact, f64), at most `limit` of them.
pub fn outranking(
    index: &RetrievalIndex,
    query: usize,
    doc: usize,
    limit: usize,
) -> Vec<(usize, f64)> {
    let target = index.exact_score(query, doc);
    let qv = index.queries.row(query);
    let mut above: Vec<(usize, f64)> = (0..index.docs.rows())
        .filter(|&j| j != doc)
        .filter_map(|j| {
            // A cheap f32 pre-filter, then the exact score for candidates near or above.
            let approx = dot_f32(qv, index.docs.row(j));
            if (approx as f64) < target - 1e-4 {
                return None;
            }
            let s = index.exact_score(query, j);
            (s > target || (s == target && j < doc)).then_some((j, s))
        })
        .collect();
    above.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    above.truncate(limit);
    above
}

/// How a triplet's ranking changed between two models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Flip {
    /// Wrong before, right after.
    Fixed,
    /// Right before, wrong after.
    Broken,
    /// Wrong in both.
    StillWrong,
    /// Right in both.
    StillRight,
}

impl Flip {
    /// Every kind, in display order.
    pub const ALL: [Flip; 4] = [
        Flip::Fixed,
        Flip::Broken,
        Flip::StillWrong,
        Flip::StillRight,
    ];

    /// Classifies one triplet.
    pub fn of(before: &TripletScore, after: &TripletScore) -> Self {
        match (before.is_correct(), after.is_correct()) {
            (false, true) => Flip::Fixed,
            (true, false) => Flip::Broken,
            (false, false) => Flip::StillWrong,
            (true, true) => Flip::StillRight,
        }
    }

    /// A label for people.
    pub fn label(self) -> &'static str {
        match self {
            Flip::Fixed => "fixed",
            Flip::Broken => "broken",
            Flip::StillWrong => "still wrong",
            Flip::StillRight => "still right",
        }
    }
}

/// Counts of each flip kind, in [`Flip::ALL`] order.
pub fn flip_counts(before: &[TripletScore], after: &[TripletScore]) -> [usize; 4] {
    let mut counts = [0; 4];
    for (b, a) in before.iter().zip(after) {
        let k = Flip::ALL
            .iter()
            .position(|f| *f == Flip::of(b, a))
            .expect("listed");
        counts[k] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bins_and_clamps() {
        assert_eq!(
            histogram([-1.0, -0.5, 0.0, 0.49, 0.5, 2.0], 4, -1.0, 1.0),
            vec![1, 1, 2, 2]
        );
    }

    #[test]
    fn window_is_the_dot_products() {
        let a = Embeddings::from_vec(2, vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8]);
        assert_eq!(
            similarity_window(&a, 1..3, &a, 0..2),
            vec![0.0, 1.0, 0.6, 0.8]
        );
    }
}
