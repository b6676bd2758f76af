//! One transformer block forward and backward (post layer norm, as BERT, XLM-R and MPNet):
//! attention (one sequence per work item), dropout, residual, layer norm, feed-forward.

use rayon::prelude::*;

use super::arch::{Dense, LayerParams};
use super::attention::{attend_sequence, attend_sequence_backward, Bias, Qkv};
use super::bf16::{self, Init};
use super::blas::{sgemm, sgemm_add};
use super::kernels::{
    gelu_grad_into, gelu_into, layer_norm_grad_rows, layer_norm_rows, simd, CHUNK,
};
use super::{row_pieces, sized, split_mut, two, Dims, Offsets, Params};
use crate::core::backend::{Compute, DropoutRng};
use crate::core::model::HiddenAct;

/// `out = x · wᵀ + bias` for x (n, in), w (out, in), in the model's compute mode.
pub(super) fn dense(
    compute: Compute,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let o = bias.len();
    let k = w.len() / o;
    if compute == Compute::Bf16 {
        return bf16::gemm(false, true, n, o, k, x, w, out, Init::Bias(bias));
    }
    let rows = (CHUNK / o).max(1);
    out.par_chunks_mut(rows * o)
        .for_each(|c| c.chunks_mut(o).for_each(|r| r.copy_from_slice(bias)));
    sgemm_add(false, true, n, o, k, x, w, out);
}

/// The dense layer's backward pass: d(weight) and d(bias) are added to `gw`, `gb`; `dx` (when
/// given) is set to d(input), or has it added when `add_dx`.
#[allow(clippy::too_many_arguments)]
fn dense_backward(
    compute: Compute,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    n: usize,
    gw: &mut [f32],
    gb: &mut [f32],
    dx: Option<&mut [f32]>,
    add_dx: bool,
) {
    let o = gb.len();
    let k = w.len() / o;
    if compute == Compute::Bf16 {
        // Mixed precision as autocast does it: both products of the backward pass in bf16,
        // gradients summed in f32.
        bf16::gemm(true, false, o, k, n, dy, x, gw, Init::Add);
        column_sums_add(dy, o, gb);
        if let Some(dx) = dx {
            let init = if add_dx { Init::Add } else { Init::Zero };
            bf16::gemm(false, false, n, k, o, dy, w, dx, init);
        }
        return;
    }
    sgemm_add(true, false, o, k, n, dy, x, gw);
    column_sums_add(dy, o, gb);
    if let Some(dx) = dx {
        if add_dx {
            sgemm_add(false, false, n, k, o, dy, w, dx);
        } else {
            sgemm(false, false, n, k, o, dy, w, dx);
        }
    }
}

/// Adds the column sums of `m` (rows of `width`) to `acc`, summing row blocks in parallel.
fn column_sums_add(m: &[f32], width: usize, acc: &mut [f32]) {
    let rows = (CHUNK / width).max(16);
    let partial: Vec<Vec<f32>> = m
        .par_chunks(rows * width)
        .map(|block| {
            let mut sum = vec![0f32; width];
            simd(|| {
                for row in block.chunks(width) {
                    sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
                }
            });
            sum
        })
        .collect();
    for p in partial {
        acc.iter_mut().zip(p).for_each(|(a, v)| *a += v);
    }
}

/// `out = x ⊙ mask + residual` (no mask in inference).
fn dropout_add(x: &[f32], mask: Option<&[f32]>, residual: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        let r = c * CHUNK..c * CHUNK + o.len();
        let (x, res) = (&x[r.clone()], &residual[r.clone()]);
        simd(|| match mask {
            Some(m) => {
                let m = &m[r];
                for (((o, &x), &m), &res) in o.iter_mut().zip(x).zip(m).zip(res) {
                    *o = x * m + res;
                }
            }
            None => o
                .iter_mut()
                .zip(x)
                .zip(res)
                .for_each(|((o, &x), &res)| *o = x + res),
        });
    });
}

/// `xs ⊙ mask` in place.
pub(super) fn apply_mask(xs: &mut [f32], mask: &[f32]) {
    xs.par_chunks_mut(CHUNK)
        .zip(mask.par_chunks(CHUNK))
        .for_each(|(x, m)| simd(|| x.iter_mut().zip(m).for_each(|(x, &m)| *x *= m)));
}

/// The activation, in place.
fn activate(act: HiddenAct, xs: &mut [f32]) {
    xs.par_chunks_mut(CHUNK).for_each(|x| match act {
        HiddenAct::Gelu => gelu_into(x),
        HiddenAct::GeluNew => simd(|| x.iter_mut().for_each(|v| *v = gelu_tanh(*v).0)),
        HiddenAct::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
    });
}

/// `g ⊙ act'(pre)`, in place in `g`.
fn activation_backward(act: HiddenAct, pre: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(CHUNK)
        .zip(pre.par_chunks(CHUNK))
        .for_each(|(g, x)| match act {
            HiddenAct::Gelu => gelu_grad_into(g, x),
            HiddenAct::GeluNew => {
                simd(|| g.iter_mut().zip(x).for_each(|(g, &x)| *g *= gelu_tanh(x).1));
            }
            HiddenAct::Relu => g
                .iter_mut()
                .zip(x)
                .for_each(|(g, &x)| *g *= if x > 0.0 { 1.0 } else { 0.0 }),
        });
}

/// GELU's tanh approximation and its derivative.
#[inline(always)]
fn gelu_tanh(x: f32) -> (f32, f32) {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    let inner = C * (x + 0.044_715 * x * x * x);
    let t = inner.tanh();
    let y = 0.5 * x * (1.0 + t);
    let dy = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * 0.044_715 * x * x);
    (y, dy)
}

/// What one layer keeps for its backward pass (training), or its scratch (inference).
#[derive(Default)]
pub(super) struct LayerActs {
    /// Query, key and value projections, (n, h) each; in inference `q` holds all three, (n, 3h).
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention probabilities before dropout, (heads, len, len) per row; training only.
    probs: Vec<f32>,
    /// Their dropout keep-mask.
    probs_mask: Option<Vec<f32>>,
    /// Attention output before its dense layer, (n, h).
    ctx: Vec<f32>,
    /// The attention block's sum before its layer norm, (n, h).
    z1: Vec<f32>,
    mask1: Option<Vec<f32>>,
    /// After the attention block's layer norm, (n, h).
    y1: Vec<f32>,
    /// The feed-forward block before (`pre`) and after (`act`) the activation, (n, i).
    pre: Vec<f32>,
    act: Vec<f32>,
    /// The feed-forward block's sum before its layer norm, (n, h).
    z2: Vec<f32>,
    mask2: Option<Vec<f32>>,
    /// A dense layer's output before dropout and the residual (not kept).
    scratch: Vec<f32>,
}

/// Where a layer's activations go: the tape (training, with a dropout source) or scratch with
/// buffers for the stacked query/key/value weights (inference).
pub(super) enum Run<'a> {
    Train(&'a mut dyn DropoutRng),
    Infer {
        qkv_w: &'a mut Vec<f32>,
        qkv_b: &'a mut Vec<f32>,
    },
}

/// The attention bias of the model, if it has one.
fn bias<'a>(p: &'a Params) -> Option<Bias<'a>> {
    match (p.rel, p.lay.rel_bias) {
        (Some(buckets), Some(i)) => Some(Bias {
            buckets,
            table: p.get(i),
        }),
        _ => None,
    }
}

/// One layer forward from `x` into `out`. In training, dropout is applied and `acts` keeps what
/// the backward pass needs; in inference `acts` is scratch.
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_forward(
    p: &Params,
    lp: &LayerParams,
    dm: Dims,
    lens: &[usize],
    x: &[f32],
    acts: &mut LayerActs,
    mut run: Run,
    out: &mut [f32],
) {
    let (n, h) = (dm.n, dm.h);
    let dense_p = |d: Dense| (p.get(d.w), p.get(d.b));
    let hidden_p = p.cfg.hidden_dropout_prob as f32;
    let attn_p = p.cfg.attention_probs_dropout_prob as f32;
    let train = matches!(run, Run::Train(_));
    let (q, k, v, ld) = if train {
        // Three products: the backward pass needs each projection's gradient on its own.
        for (d, buf) in [
            (lp.q, &mut acts.q),
            (lp.k, &mut acts.k),
            (lp.v, &mut acts.v),
        ] {
            let (w, b) = dense_p(d);
            dense(p.compute, x, w, b, n, sized(buf, n * h));
        }
        (&acts.q[..], &acts.k[..], &acts.v[..], h)
    } else {
        // One product with the three weights stacked: the input is packed once, not thrice.
        let Run::Infer { qkv_w, qkv_b } = &mut run else {
            unreachable!("not training")
        };
        qkv_w.clear();
        qkv_b.clear();
        for d in [lp.q, lp.k, lp.v] {
            let (w, b) = dense_p(d);
            qkv_w.extend_from_slice(w);
            qkv_b.extend_from_slice(b);
        }
        let qkv = sized(&mut acts.q, n * 3 * h);
        dense(p.compute, x, qkv_w, qkv_b, n, qkv);
        (&acts.q[..], &acts.q[h..], &acts.q[2 * h..], 3 * h)
    };
    // Keep-masks go into the tape's buffers of the previous step.
    let mut draw = |buf: &mut Option<Vec<f32>>, len: usize, prob: f32| match &mut run {
        Run::Train(r) if prob > 0.0 => r.fill(sized(buf.get_or_insert_with(Vec::new), len), prob),
        _ => *buf = None,
    };
    let at = Offsets::new(lens, dm.heads);
    let probs_len = at.block_total();
    if train {
        draw(&mut acts.probs_mask, probs_len, attn_p);
    }
    let keep = acts.probs_mask.as_deref().filter(|_| train);
    let bias = bias(p);
    // One sequence per work item: its rows of ctx, its blocks of probabilities and mask.
    let ctx_rows = row_pieces(&mut acts.ctx, lens, h);
    let probs = if train {
        split_mut(
            sized(&mut acts.probs, probs_len),
            at.blocks.iter().map(|b| b.len()),
        )
        .into_iter()
        .map(Some)
        .collect()
    } else {
        (0..lens.len()).map(|_| None).collect::<Vec<_>>()
    };
    ctx_rows
        .into_par_iter()
        .zip(probs)
        .enumerate()
        .for_each(|(row, (c, pr))| {
            let keep = keep.map(|m| &m[at.blocks[row].clone()]);
            let x = Qkv::from(q, k, v, ld, at.tokens[row]);
            attend_sequence(p.compute, dm, lens[row], x, bias, c, pr, keep);
        });
    // Attention output: dense, dropout, residual, layer norm.
    let scratch = sized(&mut acts.scratch, n * h);
    let (ow, ob) = dense_p(lp.o);
    dense(p.compute, &acts.ctx, ow, ob, n, scratch);
    draw(&mut acts.mask1, n * h, hidden_p);
    dropout_add(
        scratch,
        acts.mask1.as_deref(),
        x,
        sized(&mut acts.z1, n * h),
    );
    let (nw, nb) = (p.get(lp.attn_norm.w), p.get(lp.attn_norm.b));
    layer_norm_rows(&acts.z1, nw, nb, dm.eps, sized(&mut acts.y1, n * h));
    // Feed-forward block; inference activates in place.
    let (iw, ib) = dense_p(lp.inter);
    dense(
        p.compute,
        &acts.y1,
        iw,
        ib,
        n,
        sized(&mut acts.pre, n * dm.i),
    );
    let act: &[f32] = if train {
        let act = sized(&mut acts.act, n * dm.i);
        act.copy_from_slice(&acts.pre);
        activate(p.cfg.hidden_act, act);
        act
    } else {
        activate(p.cfg.hidden_act, &mut acts.pre);
        &acts.pre
    };
    let scratch = sized(&mut acts.scratch, n * h);
    let (w2, b2) = dense_p(lp.out);
    dense(p.compute, act, w2, b2, n, scratch);
    draw(&mut acts.mask2, n * h, hidden_p);
    let z2 = sized(&mut acts.z2, n * h);
    dropout_add(&acts.scratch, acts.mask2.as_deref(), &acts.y1, z2);
    let (nw, nb) = (p.get(lp.out_norm.w), p.get(lp.out_norm.b));
    layer_norm_rows(z2, nw, nb, dm.eps, out);
}

/// The backward pass's buffers, kept with the tape for the next step.
#[derive(Default)]
pub(super) struct BackwardScratch {
    pub(super) dy: Vec<f32>,
    pub(super) dx: Vec<f32>,
    pub(super) dz: Vec<f32>,
    d_out: Vec<f32>,
    d_act: Vec<f32>,
    dctx: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// The backward pass of one layer: from d(output) `sc.dy` (n, h) to d(input) in `sc.dx`; the
/// layer's weight gradients (and its share of a relative position bias's) are added to `g`.
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_backward(
    p: &Params,
    lp: &LayerParams,
    dm: Dims,
    lens: &[usize],
    x: &[f32],
    acts: &LayerActs,
    g: &mut [Vec<f32>],
    sc: &mut BackwardScratch,
) {
    let (n, h) = (dm.n, dm.h);
    // Feed-forward block: layer norm, dropout, dense, activation, dense.
    let dz2 = sized(&mut sc.dz, n * h);
    let (gw, gb) = two(g, lp.out_norm.w, lp.out_norm.b);
    layer_norm_grad_rows(&acts.z2, p.get(lp.out_norm.w), &sc.dy, dm.eps, dz2, gw, gb);
    let d_out = sized(&mut sc.d_out, n * h);
    d_out.copy_from_slice(dz2);
    if let Some(m) = &acts.mask2 {
        apply_mask(d_out, m);
    }
    let d_act = sized(&mut sc.d_act, n * dm.i);
    let (gw, gb) = two(g, lp.out.w, lp.out.b);
    dense_backward(
        p.compute,
        &acts.act,
        p.get(lp.out.w),
        d_out,
        n,
        gw,
        gb,
        Some(d_act),
        false,
    );
    activation_backward(p.cfg.hidden_act, &acts.pre, d_act);
    // d(y1) = the residual's dz2 + the feed-forward input's gradient (into dz2's buffer).
    let (gw, gb) = two(g, lp.inter.w, lp.inter.b);
    dense_backward(
        p.compute,
        &acts.y1,
        p.get(lp.inter.w),
        d_act,
        n,
        gw,
        gb,
        Some(&mut *dz2),
        true,
    );
    let dy1 = &sc.dz;
    // Attention output: layer norm, dropout, dense.
    let dz1 = sized(&mut sc.dx, n * h);
    let (gw, gb) = two(g, lp.attn_norm.w, lp.attn_norm.b);
    layer_norm_grad_rows(&acts.z1, p.get(lp.attn_norm.w), dy1, dm.eps, dz1, gw, gb);
    let d_attn = sized(&mut sc.d_out, n * h);
    d_attn.copy_from_slice(dz1);
    if let Some(m) = &acts.mask1 {
        apply_mask(d_attn, m);
    }
    let dctx = sized(&mut sc.dctx, n * h);
    let (gw, gb) = two(g, lp.o.w, lp.o.b);
    dense_backward(
        p.compute,
        &acts.ctx,
        p.get(lp.o.w),
        d_attn,
        n,
        gw,
        gb,
        Some(&mut *dctx),
        false,
    );
    // Attention, one sequence per work item.
    let rows = |buf| row_pieces(buf, lens, h).into_iter();
    let pieces: Vec<_> = rows(&mut sc.dq)
        .zip(rows(&mut sc.dk))
        .zip(rows(&mut sc.dv))
        .collect();
    let at = Offsets::new(lens, dm.heads);
    let dctx = &sc.dctx;
    let bias = bias(p);
    let dbias: Vec<Vec<f32>> = pieces
        .into_par_iter()
        .enumerate()
        .map(|(row, ((dq, dk), dv))| {
            let block = at.blocks[row].clone();
            let probs = &acts.probs[block.clone()];
            let keep = acts.probs_mask.as_deref().map(|m| &m[block]);
            let (len, first) = (lens[row], at.tokens[row]);
            let x = Qkv::from(&acts.q, &acts.k, &acts.v, h, first);
            let dctx = &dctx[first * h..];
            attend_sequence_backward(p.compute, dm, len, x, bias, probs, keep, dctx, dq, dk, dv)
        })
        .collect();
    if let Some(i) = p.lay.rel_bias {
        for part in dbias {
            g[i].iter_mut().zip(part).for_each(|(a, v)| *a += v);
        }
    }
    // Projections: d(input) = the residual's dz1 (already in dx) + the three projections'
    // input gradients.
    let dx = &mut sc.dx;
    for (d, grad) in [(lp.q, &sc.dq), (lp.k, &sc.dk), (lp.v, &sc.dv)] {
        let (gw, gb) = two(g, d.w, d.b);
        dense_backward(p.compute, x, p.get(d.w), grad, n, gw, gb, Some(dx), true);
    }
}
