//! Pooling token states into one vector per text, as sentence-transformers' Pooling module, and
//! its backward pass. A row's pooled tokens are its tokens after `skip` (the prompt, when the
//! folder says `include_prompt: false`).

use super::starts;
use crate::core::backend::Batch;
use crate::core::model::Pooling;

/// What one row pools: the range of its tokens, and for `WeightedMean` their weights' offset.
struct Row {
    /// First token of the row in the packed states.
    start: usize,
    /// Tokens of the row.
    len: usize,
    /// Leading tokens left out.
    skip: usize,
}

fn rows(batch: &Batch) -> impl Iterator<Item = Row> + '_ {
    starts(&batch.lens)
        .zip(&batch.lens)
        .enumerate()
        .map(|(r, (start, &len))| Row {
            start,
            len,
            skip: batch.skip(r),
        })
}

/// The weight of each pooled token (weighted mean: position + 1; the others 1) and the divisor.
fn mean_weights(row: &Row, pooling: Pooling) -> (Vec<f32>, f32) {
    let weights: Vec<f32> = (row.skip..row.len)
        .map(|t| match pooling {
            Pooling::WeightedMean => (t + 1) as f32,
            _ => 1.0,
        })
        .collect();
    let total: f32 = weights.iter().sum::<f32>().max(1e-9);
    let div = if pooling == Pooling::MeanSqrtLen {
        total.sqrt()
    } else {
        total
    };
    (weights, div)
}

/// Pools token states (n, h) into (rows, h).
pub(super) fn pool(states: &[f32], batch: &Batch, h: usize, pooling: Pooling) -> Vec<f32> {
    let mut out = vec![0f32; batch.rows() * h];
    for (o, row) in out.chunks_mut(h).zip(rows(batch)) {
        if row.len == 0 {
            continue; // an empty text pools to zeros
        }
        let tok = |t: usize| &states[(row.start + t) * h..(row.start + t + 1) * h];
        match pooling {
            // sentence-transformers takes the first pooled token, or the very first when the
            // prompt covers the whole text.
            Pooling::Cls => o.copy_from_slice(tok(if row.skip < row.len { row.skip } else { 0 })),
            Pooling::LastToken => {
                if row.skip < row.len {
                    o.copy_from_slice(tok(row.len - 1));
                }
            }
            Pooling::Mean | Pooling::MeanSqrtLen | Pooling::WeightedMean => {
                let (weights, div) = mean_weights(&row, pooling);
                for (t, &w) in (row.skip..row.len).zip(&weights) {
                    o.iter_mut().zip(tok(t)).for_each(|(o, &v)| *o += w * v);
                }
                o.iter_mut().for_each(|v| *v /= div);
            }
            Pooling::Max => {
                if row.skip < row.len {
                    o.fill(f32::NEG_INFINITY);
                    for t in row.skip..row.len {
                        o.iter_mut().zip(tok(t)).for_each(|(o, &v)| *o = o.max(v));
                    }
                }
            }
        }
    }
    out
}

/// d(token states) (n, h) from d(pooled) (rows, h): the pooling's backward pass.
pub(super) fn pool_backward(
    states: &[f32],
    batch: &Batch,
    h: usize,
    d_pooled: &[f32],
    pooling: Pooling,
    d: &mut [f32],
) {
    d.fill(0.0);
    for (g, row) in d_pooled.chunks(h).zip(rows(batch)) {
        if row.len == 0 {
            continue;
        }
        let at = |t: usize| (row.start + t) * h..(row.start + t + 1) * h;
        match pooling {
            Pooling::Cls => {
                let t = if row.skip < row.len { row.skip } else { 0 };
                d[at(t)].copy_from_slice(g);
            }
            Pooling::LastToken => {
                if row.skip < row.len {
                    d[at(row.len - 1)].copy_from_slice(g);
                }
            }
            Pooling::Mean | Pooling::MeanSqrtLen | Pooling::WeightedMean => {
                let (weights, div) = mean_weights(&row, pooling);
                for (t, &w) in (row.skip..row.len).zip(&weights) {
                    d[at(t)]
                        .iter_mut()
                        .zip(g)
                        .for_each(|(d, &g)| *d = g * w / div);
                }
            }
            Pooling::Max => {
                // The gradient goes to the first token holding each maximum.
                for j in 0..h {
                    let best = (row.skip..row.len).max_by(|&a, &b| {
                        let (va, vb) = (states[at(a).start + j], states[at(b).start + j]);
                        va.total_cmp(&vb).then(b.cmp(&a))
                    });
                    if let Some(t) = best {
                        d[at(t).start + j] = g[j];
                    }
                }
            }
        }
    }
}
