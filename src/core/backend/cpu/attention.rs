//! Self-attention of one sequence, forward and backward, all heads: softmax(scale · Q Kᵀ + bias)
//! (dropped out in training) times V, with the products reading and writing the heads in place
//! through strides. The bias is MPNet's relative position bias (none for BERT and XLM-R).

use super::bf16::{self, gemm_strided as bf16_gemm, Init};
use super::blas::sgemm_strided;
use super::kernels::{softmax_grad_rows, softmax_rows};
use super::{sized, Dims};
use crate::core::backend::Compute;

/// `c = op(a) · op(b)` on strided views, in the model's compute mode: f32, or bf16 inputs with
/// f32 sums (the operands rounded to bf16 as they are packed). Inference in bf16 sends the
/// probabilities through [`bf16::softmax_pairs`] and [`bf16::gemm_pairs`] instead.
#[allow(clippy::too_many_arguments)]
fn product(
    compute: Compute,
    trans_a: bool,
    trans_b: bool,
    (m, n, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc): (&mut [f32], usize),
) {
    match compute {
        Compute::Bf16 => bf16_gemm(
            trans_a,
            trans_b,
            m,
            n,
            k,
            a,
            lda,
            b,
            ldb,
            c,
            ldc,
            Init::Zero,
        ),
        Compute::F32 => sgemm_strided(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, false),
    }
}

/// MPNet's relative position buckets (transformers' `MPNetEncoder.relative_position_bucket`,
/// max distance 128) of every relative position `j - i` a text of the model can have.
pub(super) struct RelBuckets {
    /// Bucket of relative position `rel` at `rel + max_len - 1`.
    buckets: Vec<u16>,
    max_len: usize,
}

/// transformers' `relative_position_bucket(relative_position, num_buckets, max_distance=128)`,
/// with its f32 logarithm (the bucket boundaries at distances 16, 32 and 64 fall where torch's
/// float32 arithmetic puts them).
pub(super) fn relative_position_bucket(rel: i64, num_buckets: i64) -> usize {
    const MAX_DISTANCE: i64 = 128;
    let half = num_buckets / 2;
    let mut n = -rel;
    let mut ret = 0;
    if n < 0 {
        ret += half;
    }
    n = n.abs();
    let max_exact = half / 2;
    if n < max_exact {
        return (ret + n) as usize;
    }
    let ratio = (n as f32 / max_exact as f32).ln()
        / ((MAX_DISTANCE as f64 / max_exact as f64).ln() as f32)
        * (half - max_exact) as f32;
    let large = (max_exact + ratio as i64).min(half - 1);
    (ret + large) as usize
}

impl RelBuckets {
    /// The buckets of every relative position of texts up to `max_len` tokens.
    pub(super) fn new(num_buckets: usize, max_len: usize) -> Self {
        let max_len = max_len.max(1);
        let buckets = (0..2 * max_len - 1)
            .map(|k| {
                relative_position_bucket(k as i64 - (max_len as i64 - 1), num_buckets as i64) as u16
            })
            .collect();
        Self { buckets, max_len }
    }

    /// The bucket of the relative position `j - i`.
    #[inline(always)]
    fn bucket(&self, i: usize, j: usize) -> usize {
        self.buckets[j + self.max_len - 1 - i] as usize
    }
}

/// The relative position bias of a layer's attention: the buckets and the table (buckets, heads).
#[derive(Clone, Copy)]
pub(super) struct Bias<'a> {
    pub(super) buckets: &'a RelBuckets,
    pub(super) table: &'a [f32],
}

impl Bias<'_> {
    /// `p = scale · p + bias(head)` for one head's (len, len) scores.
    fn add_scaled(&self, p: &mut [f32], len: usize, head: usize, heads: usize, scale: f32) {
        for (i, row) in p.chunks_mut(len).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = *v * scale + self.table[self.buckets.bucket(i, j) * heads + head];
            }
        }
    }

    /// Adds one head's d(scores) to the table's gradient (buckets, heads).
    fn grad(&self, ds: &[f32], len: usize, head: usize, heads: usize, out: &mut [f32]) {
        for (i, row) in ds.chunks(len).enumerate() {
            for (j, &g) in row.iter().enumerate() {
                out[self.buckets.bucket(i, j) * heads + head] += g;
            }
        }
    }
}

/// The query, key and value rows of one sequence: row `t` of head `j`'s query is at
/// `q[t * ld + j * d..]`.
#[derive(Clone, Copy)]
pub(super) struct Qkv<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    ld: usize,
}

impl<'a> Qkv<'a> {
    /// The rows from token `start` on of three views with row length `ld` (three buffers, or
    /// three column offsets into one fused buffer).
    pub(super) fn from(q: &'a [f32], k: &'a [f32], v: &'a [f32], ld: usize, start: usize) -> Self {
        Self {
            q: &q[start * ld..],
            k: &k[start * ld..],
            v: &v[start * ld..],
            ld,
        }
    }
}

/// One sequence's attention: for every head, softmax(scale · Q Kᵀ + bias) (dropped out in
/// training) times V, written into the sequence's rows of `ctx` (len, h). `probs` (training)
/// keeps each head's probabilities (heads, len, len). Inference keeps one head's scores in a
/// buffer that stays in cache, and divides by the softmax's sums after the product (len · d
/// divisions instead of len²).
#[allow(clippy::too_many_arguments)]
pub(super) fn attend_sequence(
    compute: Compute,
    dm: Dims,
    len: usize,
    x: Qkv,
    bias: Option<Bias>,
    ctx: &mut [f32],
    probs: Option<&mut [f32]>,
    keep: Option<&[f32]>,
) {
    let (h, d, ld) = (dm.h, dm.d, x.ld);
    if len == 0 {
        return;
    }
    let scale = 1.0 / (d as f32).sqrt();
    let train = probs.is_some();
    let mut probs = probs;
    let (mut local, mut dropped, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    let mut inv_sums = vec![0f32; len];
    for head in 0..dm.heads {
        let off = head * d;
        let p = match probs.as_deref_mut() {
            Some(all) => &mut all[head * len * len..(head + 1) * len * len],
            None => sized(&mut local, len * len),
        };
        product(
            compute,
            false,
            true,
            (len, len, d),
            (&x.q[off..], ld),
            (&x.k[off..], ld),
            (p, len),
        );
        let softmax_scale = match bias {
            Some(b) => {
                b.add_scaled(p, len, head, dm.heads, scale);
                1.0
            }
            None => scale,
        };
        if compute == Compute::Bf16 && !train {
            // Inference in bf16: the probabilities go straight into the product's bf16 pairs.
            let pa = sized(&mut pairs, len * len.div_ceil(2));
            bf16::softmax_pairs(p, len, softmax_scale, pa, &mut inv_sums);
            bf16::gemm_pairs(
                len,
                d,
                len,
                pa,
                (&x.v[off..], ld),
                (&mut ctx[off..], h),
                Init::Zero,
            );
        } else {
            softmax_rows(p, len, &mut inv_sums, softmax_scale, train);
            let p: &[f32] = match keep {
                Some(keep) => {
                    let keep = &keep[head * len * len..(head + 1) * len * len];
                    let pd = sized(&mut dropped, len * len);
                    pd.iter_mut()
                        .zip(p.iter().zip(keep))
                        .for_each(|(o, (&p, &m))| *o = p * m);
                    pd
                }
                None => p,
            };
            product(
                compute,
                false,
                false,
                (len, d, len),
                (p, len),
                (&x.v[off..], ld),
                (&mut ctx[off..], h),
            );
        }
        if !train {
            for (row, &inv) in ctx.chunks_mut(h).zip(&inv_sums) {
                row[off..off + d].iter_mut().for_each(|v| *v *= inv);
            }
        }
    }
}

/// One sequence's attention backward pass (all heads): from its d(ctx) rows to its d(q), d(k),
/// d(v) rows (len, h each). `x` holds its projections, `probs` and `keep` its blocks (heads, len,
/// len). Returns the sequence's share of the bias table's gradient (empty without a bias).
#[allow(clippy::too_many_arguments)]
pub(super) fn attend_sequence_backward(
    compute: Compute,
    dm: Dims,
    len: usize,
    x: Qkv,
    bias: Option<Bias>,
    probs: &[f32],
    keep: Option<&[f32]>,
    dctx: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) -> Vec<f32> {
    let (h, d) = (dm.h, dm.d);
    let mut dbias = bias.map_or_else(Vec::new, |b| vec![0f32; b.table.len()]);
    if len == 0 {
        return dbias;
    }
    let scale = 1.0 / (d as f32).sqrt();
    let mut dp = vec![0f32; len * len];
    let mut dropped = Vec::new();
    for head in 0..dm.heads {
        let off = head * d;
        let block = head * len * len..(head + 1) * len * len;
        let probs = &probs[block.clone()];
        let keep = keep.map(|m| &m[block]);
        let pd: &[f32] = match keep {
            Some(keep) => {
                let pd = sized(&mut dropped, len * len);
                pd.iter_mut()
                    .zip(probs.iter().zip(keep))
                    .for_each(|(o, (&p, &m))| *o = p * m);
                pd
            }
            None => probs,
        };
        let dctx_h = &dctx[off..];
        // d(dropped probs) = dctx · Vᵀ; dV = dropped probsᵀ · dctx.
        product(
            compute,
            false,
            true,
            (len, len, d),
            (dctx_h, h),
            (&x.v[off..], h),
            (&mut dp, len),
        );
        product(
            compute,
            true,
            false,
            (len, d, len),
            (pd, len),
            (dctx_h, h),
            (&mut dv[off..], h),
        );
        if let Some(keep) = keep {
            dp.iter_mut().zip(keep).for_each(|(g, &m)| *g *= m);
        }
        match bias {
            // d(logits) first: it is the bias's gradient; the scores' is scale times it.
            Some(b) => {
                softmax_grad_rows(&mut dp, probs, len, 1.0);
                b.grad(&dp, len, head, dm.heads, &mut dbias);
                dp.iter_mut().for_each(|g| *g *= scale);
            }
            None => softmax_grad_rows(&mut dp, probs, len, scale),
        }
        // dQ = dS · K; dK = dSᵀ · Q.
        product(
            compute,
            false,
            false,
            (len, d, len),
            (&dp, len),
            (&x.k[off..], h),
            (&mut dq[off..], h),
        );
        product(
            compute,
            true,
            false,
            (len, d, len),
            (&dp, len),
            (&x.q[off..], h),
            (&mut dk[off..], h),
        );
    }
    dbias
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every bucket of relative positions -600..=600 as transformers' MPNet computes them with
    /// torch float32 (`tests/fixtures/mpnet_buckets.json`, made by `tests/fixtures/buckets.py`):
    /// the boundaries at distances 16, 32 and 64 are where float rounding could decide.
    #[test]
    fn buckets_match_transformers() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mpnet_buckets.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let table = v["buckets"].as_object().unwrap();
        assert_eq!(table.len(), 1201);
        for (rel, want) in table {
            let rel: i64 = rel.parse().unwrap();
            let got = relative_position_bucket(rel, 32);
            assert_eq!(
                got as u64,
                want.as_u64().unwrap(),
                "relative position {rel}"
            );
        }
        let rb = RelBuckets::new(32, 300);
        assert_eq!((rb.bucket(40, 24), rb.bucket(24, 40)), (10, 26));
    }
}
