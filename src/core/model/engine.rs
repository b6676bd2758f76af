//! The BERT encoder on plain f32 buffers, for speed: inference, and training with a hand-written
//! backward pass. Both run on the weights of a [`BertModel`] (read in place from its tensors,
//! so a model whose variables are being trained is always current).
//!
//! Why not candle's autograd: every gradient edge there allocates a zero tensor and adds into it,
//! much of that on one thread, and every intermediate is a fresh buffer. Here a training step
//! keeps exactly the activations the backward pass needs, attention runs one sequence per thread
//! with its scores in cache (never a batch-wide score tensor in inference), and the products
//! read and write heads in place through strides instead of copying them apart.
//!
//! [`BertModel::forward`] is the reference: the tests compare this engine's outputs and every
//! gradient with candle's autograd through it, with the same dropout masks.

use candle_core::{CpuStorage, Storage};
use rayon::prelude::*;

use super::bert::{BertModel, DropoutRng};
use super::blas::{sgemm, sgemm_add, sgemm_strided};
use super::config::{BertConfig, HiddenAct};
use super::folder::Pooling;
use super::kernels::{
    gelu, gelu_derivative, layer_norm_grad_rows, layer_norm_rows, simd, softmax_grad_row,
    softmax_row, CHUNK,
};

/// Index of a layer's tensors in [`Params`], in the order of [`BertModel::tensors`].
mod ix {
    pub const Q_W: usize = 0;
    pub const Q_B: usize = 1;
    pub const K_W: usize = 2;
    pub const K_B: usize = 3;
    pub const V_W: usize = 4;
    pub const V_B: usize = 5;
    pub const O_W: usize = 6;
    pub const O_B: usize = 7;
    pub const LN1_W: usize = 8;
    pub const LN1_B: usize = 9;
    pub const I_W: usize = 10;
    pub const I_B: usize = 11;
    pub const OUT_W: usize = 12;
    pub const OUT_B: usize = 13;
    pub const LN2_W: usize = 14;
    pub const LN2_B: usize = 15;
    /// Tensors per layer.
    pub const PER_LAYER: usize = 16;
    /// Word, position and token-type embeddings, the embedding layer norm's weight and bias.
    pub const EMBEDDINGS: usize = 5;
}

/// The model's weights as slices, in the order of [`BertModel::tensors`].
pub struct Params<'a> {
    t: Vec<&'a [f32]>,
    cfg: &'a BertConfig,
}

impl Params<'_> {
    fn layer(&self, l: usize, j: usize) -> &[f32] {
        self.t[ix::EMBEDDINGS + l * ix::PER_LAYER + j]
    }
}

/// Runs `f` on the weights of `model`, read in place (the tensors' storage is read-locked
/// meanwhile, so nothing can change them).
pub fn with_params<R>(model: &BertModel, f: impl FnOnce(&Params) -> R) -> candle_core::Result<R> {
    let tensors = model.tensors();
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut t = Vec::with_capacity(guards.len());
    for (guard, layout) in &guards {
        let Storage::Cpu(CpuStorage::F32(v)) = &**guard else {
            candle_core::bail!("the fast encoder needs f32 weights on the CPU");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("the fast encoder needs contiguous weights");
        };
        t.push(&v[start..end]);
    }
    Ok(f(&Params {
        t,
        cfg: &model.config,
    }))
}

/// A right-padded batch of token ids.
pub struct Batch {
    /// Token ids, (b, s) row-major.
    pub ids: Vec<u32>,
    /// Token type ids, (b, s).
    pub type_ids: Vec<u32>,
    /// Tokens of each row before padding.
    pub lens: Vec<usize>,
    /// Padded length.
    pub seq: usize,
}

impl Batch {
    fn rows(&self) -> usize {
        self.lens.len()
    }
}

#[derive(Clone, Copy, Default)]
struct Dims {
    b: usize,
    s: usize,
    /// Tokens: b * s.
    n: usize,
    h: usize,
    heads: usize,
    /// Head width.
    d: usize,
    /// Feed-forward width.
    i: usize,
    eps: f32,
}

impl Dims {
    fn new(cfg: &BertConfig, batch: &Batch) -> Self {
        let h = cfg.hidden_size;
        Self {
            b: batch.rows(),
            s: batch.seq,
            n: batch.rows() * batch.seq,
            h,
            heads: cfg.num_attention_heads,
            d: h / cfg.num_attention_heads,
            i: cfg.intermediate_size,
            eps: cfg.layer_norm_eps as f32,
        }
    }
}

/// Resizes a buffer without caring about its contents (they are overwritten).
fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() != len {
        buf.resize(len, 0.0);
    }
    buf
}

/// `out = x · wᵀ + bias` for x (n, in), w (out, in).
fn dense(x: &[f32], w: &[f32], bias: &[f32], n: usize, out: &mut [f32]) {
    let o = bias.len();
    let k = w.len() / o;
    let rows = (CHUNK / o).max(1);
    out.par_chunks_mut(rows * o)
        .for_each(|c| c.chunks_mut(o).for_each(|r| r.copy_from_slice(bias)));
    sgemm_add(false, true, n, o, k, x, w, out);
}

/// The dense layer's backward pass: d(weight) and d(bias) are added to `gw`, `gb`; `dx` (when
/// given) is set to d(input), or has it added when `add_dx`.
#[allow(clippy::too_many_arguments)]
fn dense_backward(
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
        })
    });
}

/// `xs ⊙ mask` in place.
fn apply_mask(xs: &mut [f32], mask: &[f32]) {
    xs.par_chunks_mut(CHUNK)
        .zip(mask.par_chunks(CHUNK))
        .for_each(|(x, m)| simd(|| x.iter_mut().zip(m).for_each(|(x, &m)| *x *= m)));
}

/// The activation, in place.
fn activate(act: HiddenAct, xs: &mut [f32]) {
    xs.par_chunks_mut(CHUNK).for_each(|x| {
        simd(|| match act {
            HiddenAct::Gelu => x.iter_mut().for_each(|v| *v = gelu(*v)),
            HiddenAct::GeluNew => x.iter_mut().for_each(|v| *v = gelu_tanh(*v).0),
            HiddenAct::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        })
    });
}

/// `g ⊙ act'(pre)`, in place in `g`.
fn activation_backward(act: HiddenAct, pre: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(CHUNK)
        .zip(pre.par_chunks(CHUNK))
        .for_each(|(g, x)| {
            simd(|| {
                let it = g.iter_mut().zip(x);
                match act {
                    HiddenAct::Gelu => it.for_each(|(g, &x)| *g *= gelu_derivative(x)),
                    HiddenAct::GeluNew => it.for_each(|(g, &x)| *g *= gelu_tanh(x).1),
                    HiddenAct::Relu => it.for_each(|(g, &x)| *g *= if x > 0.0 { 1.0 } else { 0.0 }),
                }
            })
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

/// 0 on real tokens, a large negative number on padding, per (row, position).
fn mask_bias(batch: &Batch) -> Vec<f32> {
    let s = batch.seq;
    let mut m = vec![0f32; batch.rows() * s];
    for (row, &len) in m.chunks_mut(s.max(1)).zip(&batch.lens) {
        row[len.min(s)..].fill(-1e9);
    }
    m
}

/// What one layer keeps for its backward pass (training), or its scratch (inference).
#[derive(Default)]
struct LayerActs {
    /// Query, key and value projections, (n, h) each.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention probabilities before dropout, (b, heads, s, s); training only.
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

/// Buffers reused across the batches of an inference run.
#[derive(Default)]
pub struct Workspace {
    x: Vec<f32>,
    y: Vec<f32>,
    acts: LayerActs,
}

/// One sequence's attention: for every head, softmax(scale · Q Kᵀ + mask) (dropped out in
/// training) times V, written into the sequence's rows of `ctx`. `probs` (training) keeps each
/// head's probabilities; in inference the scores live in a per-call buffer that stays in cache.
#[allow(clippy::too_many_arguments)]
fn attend_sequence(
    dm: Dims,
    seq: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    ctx: &mut [f32],
    probs: Option<&mut [f32]>,
    keep: Option<&[f32]>,
) {
    let (s, h, d) = (dm.s, dm.h, dm.d);
    let scale = 1.0 / (d as f32).sqrt();
    let base = seq * s * h;
    let bias = &bias[seq * s..(seq + 1) * s];
    // In inference one head's scores at a time, in a buffer that stays in cache.
    let mut local = Vec::new();
    let mut dropped = Vec::new();
    let mut probs = probs;
    for head in 0..dm.heads {
        let off = base + head * d;
        let p = match probs.as_deref_mut() {
            Some(all) => &mut all[head * s * s..(head + 1) * s * s],
            None => sized(&mut local, s * s),
        };
        sgemm_strided(
            false,
            true,
            s,
            s,
            d,
            &q[off..],
            h,
            &k[off..],
            h,
            p,
            s,
            false,
        );
        simd(|| {
            p.chunks_mut(s)
                .for_each(|row| softmax_row(row, bias, scale))
        });
        let p: &[f32] = match keep {
            Some(keep) => {
                let keep = &keep[(seq * dm.heads + head) * s * s..][..s * s];
                let pd = sized(&mut dropped, s * s);
                pd.iter_mut()
                    .zip(p.iter().zip(keep))
                    .for_each(|(o, (&p, &m))| *o = p * m);
                pd
            }
            None => p,
        };
        sgemm_strided(
            false,
            false,
            s,
            d,
            s,
            p,
            s,
            &v[off..],
            h,
            &mut ctx[head * d..],
            h,
            false,
        );
    }
}

/// Everything a training forward pass keeps for [`backward`]. A tape is filled again by the
/// next step's [`forward_train`]: its buffers are reused, not re-allocated (fresh buffers of this
/// size come from the OS as zeroed pages, a tenth of a step).
#[derive(Default)]
pub struct Tape {
    dims: Dims,
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    lens: Vec<usize>,
    /// The embeddings' sum before their layer norm, and the dropout mask after it.
    z0: Vec<f32>,
    mask0: Option<Vec<f32>>,
    /// Input of each layer, then the last layer's output: layers + 1 entries of (n, h).
    xs: Vec<Vec<f32>>,
    layers: Vec<LayerActs>,
    /// Buffers of the backward pass.
    scratch: BackwardScratch,
}

/// The backward pass's buffers, kept with the tape for the next step.
#[derive(Default)]
struct BackwardScratch {
    dy: Vec<f32>,
    dx: Vec<f32>,
    dz: Vec<f32>,
    d_out: Vec<f32>,
    d_act: Vec<f32>,
    dctx: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

impl Tape {
    /// Token states of the last layer, (b, s, h) row-major.
    pub fn states(&self) -> &[f32] {
        self.xs.last().map(Vec::as_slice).unwrap_or(&[])
    }

    /// The pooled vectors (b, h).
    pub fn pooled(&self, pooling: Pooling) -> Vec<f32> {
        pool(self.states(), &self.lens, self.dims.s, self.dims.h, pooling)
    }
}

/// Word + position + token-type embeddings of every token, (n, h).
fn embed_sum(p: &Params, batch: &Batch, dm: Dims, out: &mut [f32]) {
    let (word, pos, types) = (p.t[0], p.t[1], p.t[2]);
    let h = dm.h;
    out.par_chunks_mut(dm.s * h)
        .enumerate()
        .for_each(|(row, o)| {
            for (t, o) in o.chunks_mut(h).enumerate() {
                let at = row * dm.s + t;
                let (id, ty) = (batch.ids[at] as usize, batch.type_ids[at] as usize);
                let (w, ps, ty) = (
                    &word[id * h..(id + 1) * h],
                    &pos[t * h..(t + 1) * h],
                    &types[ty * h..(ty + 1) * h],
                );
                for j in 0..h {
                    o[j] = w[j] + ty[j] + ps[j];
                }
            }
        });
}

/// Checks ids against the embedding tables before any indexing.
fn check_batch(p: &Params, batch: &Batch) -> Result<(), String> {
    let cfg = p.cfg;
    if batch.seq > cfg.max_position_embeddings {
        return Err(format!(
            "{} tokens exceed the model's {} positions",
            batch.seq, cfg.max_position_embeddings
        ));
    }
    let n = batch.rows() * batch.seq;
    if batch.ids.len() != n || batch.type_ids.len() != n {
        return Err("token ids do not match the batch shape".into());
    }
    if let Some(&id) = batch.ids.iter().find(|&&i| i as usize >= cfg.vocab_size) {
        return Err(format!(
            "token id {id} is outside the vocabulary of {}",
            cfg.vocab_size
        ));
    }
    if batch
        .type_ids
        .iter()
        .any(|&t| t as usize >= cfg.type_vocab_size)
    {
        return Err("a token type id is outside the model's token types".into());
    }
    Ok(())
}

/// One layer forward from `x` into `out`. With `rng`, dropout is applied and `acts` keeps what
/// the backward pass needs; without, `acts` is scratch.
#[allow(clippy::too_many_arguments)]
fn layer_forward(
    p: &Params,
    l: usize,
    dm: Dims,
    bias: &[f32],
    x: &[f32],
    acts: &mut LayerActs,
    mut rng: Option<&mut dyn DropoutRng>,
    out: &mut [f32],
) {
    let (n, h) = (dm.n, dm.h);
    let w = |j| p.layer(l, j);
    let hidden_p = p.cfg.hidden_dropout_prob as f32;
    let attn_p = p.cfg.attention_probs_dropout_prob as f32;
    let train = rng.is_some();
    // Keep-masks go into the tape's buffers of the previous step.
    let mut draw = |buf: &mut Option<Vec<f32>>, len: usize, prob: f32| match rng.as_deref_mut() {
        Some(r) if prob > 0.0 => r.fill(sized(buf.get_or_insert_with(Vec::new), len), prob),
        _ => *buf = None,
    };
    dense(x, w(ix::Q_W), w(ix::Q_B), n, sized(&mut acts.q, n * h));
    dense(x, w(ix::K_W), w(ix::K_B), n, sized(&mut acts.k, n * h));
    dense(x, w(ix::V_W), w(ix::V_B), n, sized(&mut acts.v, n * h));
    draw(&mut acts.probs_mask, dm.b * dm.heads * dm.s * dm.s, attn_p);
    let (q, k, v) = (&acts.q, &acts.k, &acts.v);
    let keep = acts.probs_mask.as_deref();
    let ctx = sized(&mut acts.ctx, n * h);
    let seq_len = dm.s * h;
    if train {
        let probs = sized(&mut acts.probs, dm.b * dm.heads * dm.s * dm.s);
        ctx.par_chunks_mut(seq_len)
            .zip(probs.par_chunks_mut(dm.heads * dm.s * dm.s))
            .enumerate()
            .for_each(|(seq, (c, pr))| attend_sequence(dm, seq, q, k, v, bias, c, Some(pr), keep));
    } else {
        ctx.par_chunks_mut(seq_len)
            .enumerate()
            .for_each(|(seq, c)| attend_sequence(dm, seq, q, k, v, bias, c, None, None));
    }
    // Attention output: dense, dropout, residual, layer norm.
    let scratch = sized(&mut acts.scratch, n * h);
    dense(&acts.ctx, w(ix::O_W), w(ix::O_B), n, scratch);
    draw(&mut acts.mask1, n * h, hidden_p);
    dropout_add(
        scratch,
        acts.mask1.as_deref(),
        x,
        sized(&mut acts.z1, n * h),
    );
    layer_norm_rows(
        &acts.z1,
        w(ix::LN1_W),
        w(ix::LN1_B),
        dm.eps,
        sized(&mut acts.y1, n * h),
    );
    // Feed-forward block; inference activates in place.
    dense(
        &acts.y1,
        w(ix::I_W),
        w(ix::I_B),
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
    dense(act, w(ix::OUT_W), w(ix::OUT_B), n, scratch);
    draw(&mut acts.mask2, n * h, hidden_p);
    let z2 = sized(&mut acts.z2, n * h);
    dropout_add(&acts.scratch, acts.mask2.as_deref(), &acts.y1, z2);
    layer_norm_rows(z2, w(ix::LN2_W), w(ix::LN2_B), dm.eps, out);
}

/// Token states (b, s, h) of a batch, inference (no dropout); `ws` keeps the buffers for the
/// next batch.
pub fn infer<'w>(p: &Params, batch: &Batch, ws: &'w mut Workspace) -> Result<&'w [f32], String> {
    check_batch(p, batch)?;
    let dm = Dims::new(p.cfg, batch);
    let bias = mask_bias(batch);
    let (x, y) = (&mut ws.x, &mut ws.y);
    embed_sum(p, batch, dm, sized(y, dm.n * dm.h));
    layer_norm_rows(y, p.t[3], p.t[4], dm.eps, sized(x, dm.n * dm.h));
    for l in 0..p.cfg.num_hidden_layers {
        layer_forward(
            p,
            l,
            dm,
            &bias,
            x,
            &mut ws.acts,
            None,
            sized(y, dm.n * dm.h),
        );
        std::mem::swap(x, y);
    }
    Ok(&ws.x[..dm.n * dm.h])
}

/// Training forward pass into `tape` (its buffers reused), with dropout masks from `rng` (drawn
/// in the order of [`BertModel::forward`]: embeddings, then per layer attention probabilities,
/// attention output, feed-forward output); the tape holds the token states and what
/// [`backward`] needs.
pub fn forward_train(
    p: &Params,
    batch: &Batch,
    rng: &mut dyn DropoutRng,
    tape: &mut Tape,
) -> Result<(), String> {
    check_batch(p, batch)?;
    let dm = Dims::new(p.cfg, batch);
    let layers = p.cfg.num_hidden_layers;
    tape.dims = dm;
    tape.ids.clone_from(&batch.ids);
    tape.type_ids.clone_from(&batch.type_ids);
    tape.lens.clone_from(&batch.lens);
    let bias = mask_bias(batch);
    embed_sum(p, batch, dm, sized(&mut tape.z0, dm.n * dm.h));
    tape.xs.resize_with(layers + 1, Vec::new);
    tape.layers.resize_with(layers, LayerActs::default);
    let x = sized(&mut tape.xs[0], dm.n * dm.h);
    layer_norm_rows(&tape.z0, p.t[3], p.t[4], dm.eps, x);
    let p_hidden = p.cfg.hidden_dropout_prob as f32;
    if p_hidden > 0.0 {
        let m = sized(tape.mask0.get_or_insert_with(Vec::new), dm.n * dm.h);
        rng.fill(m, p_hidden);
        apply_mask(x, m);
    } else {
        tape.mask0 = None;
    }
    for l in 0..layers {
        let (done, rest) = tape.xs.split_at_mut(l + 1);
        let out = sized(&mut rest[0], dm.n * dm.h);
        let acts = &mut tape.layers[l];
        layer_forward(p, l, dm, &bias, &done[l], acts, Some(&mut *rng), out);
    }
    Ok(())
}

/// Pools token states (b, s, h) into (b, h) over each row's real tokens, as
/// sentence-transformers' Pooling module.
pub fn pool(states: &[f32], lens: &[usize], seq: usize, h: usize, pooling: Pooling) -> Vec<f32> {
    let mut out = vec![0f32; lens.len() * h];
    for ((o, &len), rows) in out.chunks_mut(h).zip(lens).zip(states.chunks(seq * h)) {
        let len = len.min(seq);
        match pooling {
            Pooling::Cls => o.copy_from_slice(&rows[..h]),
            Pooling::Mean | Pooling::MeanSqrtLen => {
                for t in rows.chunks(h).take(len) {
                    o.iter_mut().zip(t).for_each(|(o, &v)| *o += v);
                }
                let count = (len as f32).max(1e-9);
                let div = if pooling == Pooling::Mean {
                    count
                } else {
                    count.sqrt()
                };
                o.iter_mut().for_each(|v| *v /= div);
            }
            Pooling::Max => {
                o.fill(f32::NEG_INFINITY);
                for t in rows.chunks(h).take(len) {
                    o.iter_mut().zip(t).for_each(|(o, &v)| *o = o.max(v));
                }
            }
        }
    }
    out
}

/// d(token states) from d(pooled) (b, h): the pooling's backward pass.
fn pool_backward(tape: &Tape, d_pooled: &[f32], pooling: Pooling, d: &mut [f32]) {
    let Dims { s, h, .. } = tape.dims;
    d.fill(0.0);
    let states = tape.states();
    for (row, ((g, &len), dst)) in d_pooled
        .chunks(h)
        .zip(&tape.lens)
        .zip(d.chunks_mut(s * h))
        .enumerate()
    {
        let len = len.min(s);
        match pooling {
            Pooling::Cls => dst[..h].copy_from_slice(g),
            Pooling::Mean | Pooling::MeanSqrtLen => {
                let count = (len as f32).max(1e-9);
                let div = if pooling == Pooling::Mean {
                    count
                } else {
                    count.sqrt()
                };
                for t in dst.chunks_mut(h).take(len) {
                    t.iter_mut().zip(g).for_each(|(t, &g)| *t = g / div);
                }
            }
            Pooling::Max => {
                // The gradient goes to the first token holding each maximum.
                let rows = &states[row * s * h..][..len * h];
                for j in 0..h {
                    let best = (0..len).max_by(|&a, &b| {
                        rows[a * h + j].total_cmp(&rows[b * h + j]).then(b.cmp(&a))
                    });
                    if let Some(t) = best {
                        dst[t * h + j] = g[j];
                    }
                }
            }
        }
    }
}

/// Gradients of every weight, in the order of [`BertModel::tensors`]; summed over backward passes
/// until [`Grads::zero`].
pub struct Grads {
    /// One buffer per tensor.
    pub t: Vec<Vec<f32>>,
}

impl Grads {
    /// Zero gradients shaped as the model's weights.
    pub fn new(model: &BertModel) -> Self {
        Self {
            t: model
                .tensors()
                .iter()
                .map(|t| vec![0f32; t.elem_count()])
                .collect(),
        }
    }

    /// Sets every gradient to zero.
    pub fn zero(&mut self) {
        self.t
            .par_iter_mut()
            .for_each(|g| g.par_chunks_mut(CHUNK).for_each(|c| c.fill(0.0)));
    }

    fn layer(&mut self, l: usize) -> &mut [Vec<f32>] {
        let start = ix::EMBEDDINGS + l * ix::PER_LAYER;
        &mut self.t[start..start + ix::PER_LAYER]
    }
}

/// One sequence's attention backward pass: from d(ctx) rows, d(q), d(k), d(v) rows of the
/// sequence (all heads).
#[allow(clippy::too_many_arguments)]
fn attend_sequence_backward(
    dm: Dims,
    seq: usize,
    acts: &LayerActs,
    dctx: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (s, h, d) = (dm.s, dm.h, dm.d);
    let scale = 1.0 / (d as f32).sqrt();
    let base = seq * s * h;
    let mut dp = vec![0f32; s * s];
    let mut dropped = Vec::new();
    for head in 0..dm.heads {
        let off = base + head * d;
        let at = (seq * dm.heads + head) * s * s;
        let probs = &acts.probs[at..at + s * s];
        let keep = acts.probs_mask.as_deref().map(|m| &m[at..at + s * s]);
        let pd: &[f32] = match keep {
            Some(keep) => {
                let pd = sized(&mut dropped, s * s);
                pd.iter_mut()
                    .zip(probs.iter().zip(keep))
                    .for_each(|(o, (&p, &m))| *o = p * m);
                pd
            }
            None => probs,
        };
        let dctx_h = &dctx[off..];
        // d(dropped probs) = dctx · Vᵀ; dV = dropped probsᵀ · dctx.
        sgemm_strided(
            false,
            true,
            s,
            s,
            d,
            dctx_h,
            h,
            &acts.v[off..],
            h,
            &mut dp,
            s,
            false,
        );
        sgemm_strided(
            true,
            false,
            s,
            d,
            s,
            pd,
            s,
            dctx_h,
            h,
            &mut dv[head * d..],
            h,
            false,
        );
        if let Some(keep) = keep {
            dp.iter_mut().zip(keep).for_each(|(g, &m)| *g *= m);
        }
        simd(|| {
            dp.chunks_mut(s)
                .zip(probs.chunks(s))
                .for_each(|(g, p)| softmax_grad_row(g, p, scale))
        });
        // dQ = dS · K; dK = dSᵀ · Q.
        sgemm_strided(
            false,
            false,
            s,
            d,
            s,
            &dp,
            s,
            &acts.k[off..],
            h,
            &mut dq[head * d..],
            h,
            false,
        );
        sgemm_strided(
            true,
            false,
            s,
            d,
            s,
            &dp,
            s,
            &acts.q[off..],
            h,
            &mut dk[head * d..],
            h,
            false,
        );
    }
}

/// The backward pass of one layer: from d(output) `sc.dy` (n, h) to d(input) in `sc.dx`; the
/// layer's weight gradients are added to `g`.
fn layer_backward(
    p: &Params,
    l: usize,
    dm: Dims,
    x: &[f32],
    acts: &LayerActs,
    g: &mut [Vec<f32>],
    sc: &mut BackwardScratch,
) {
    let (n, h) = (dm.n, dm.h);
    let w = |j| p.layer(l, j);
    // Feed-forward block: layer norm, dropout, dense, activation, dense.
    let dz2 = sized(&mut sc.dz, n * h);
    let (gw, gb) = two(g, ix::LN2_W, ix::LN2_B);
    layer_norm_grad_rows(&acts.z2, w(ix::LN2_W), &sc.dy, dm.eps, dz2, gw, gb);
    let d_out = sized(&mut sc.d_out, n * h);
    d_out.copy_from_slice(dz2);
    if let Some(m) = &acts.mask2 {
        apply_mask(d_out, m);
    }
    let d_act = sized(&mut sc.d_act, n * dm.i);
    let (gw, gb) = two(g, ix::OUT_W, ix::OUT_B);
    dense_backward(
        &acts.act,
        w(ix::OUT_W),
        d_out,
        n,
        gw,
        gb,
        Some(d_act),
        false,
    );
    activation_backward(p.cfg.hidden_act, &acts.pre, d_act);
    // d(y1) = the residual's dz2 + the feed-forward input's gradient (into dz2's buffer).
    let (gw, gb) = two(g, ix::I_W, ix::I_B);
    dense_backward(
        &acts.y1,
        w(ix::I_W),
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
    let (gw, gb) = two(g, ix::LN1_W, ix::LN1_B);
    layer_norm_grad_rows(&acts.z1, w(ix::LN1_W), dy1, dm.eps, dz1, gw, gb);
    let d_attn = sized(&mut sc.d_out, n * h);
    d_attn.copy_from_slice(dz1);
    if let Some(m) = &acts.mask1 {
        apply_mask(d_attn, m);
    }
    let dctx = sized(&mut sc.dctx, n * h);
    let (gw, gb) = two(g, ix::O_W, ix::O_B);
    dense_backward(
        &acts.ctx,
        w(ix::O_W),
        d_attn,
        n,
        gw,
        gb,
        Some(&mut *dctx),
        false,
    );
    // Attention, one sequence per work item.
    let (dq, dk, dv) = (
        sized(&mut sc.dq, n * h),
        sized(&mut sc.dk, n * h),
        sized(&mut sc.dv, n * h),
    );
    let seq_len = dm.s * h;
    let dctx = &sc.dctx;
    dq.par_chunks_mut(seq_len)
        .zip(dk.par_chunks_mut(seq_len).zip(dv.par_chunks_mut(seq_len)))
        .enumerate()
        .for_each(|(seq, (dq, (dk, dv)))| {
            attend_sequence_backward(dm, seq, acts, dctx, dq, dk, dv)
        });
    // Projections: d(input) = the residual's dz1 (already in dx) + the three projections'
    // input gradients.
    let dx = &mut sc.dx;
    for (wi, bi, d) in [
        (ix::Q_W, ix::Q_B, &sc.dq),
        (ix::K_W, ix::K_B, &sc.dk),
        (ix::V_W, ix::V_B, &sc.dv),
    ] {
        let (gw, gb) = two(g, wi, bi);
        dense_backward(x, w(wi), d, n, gw, gb, Some(dx), true);
    }
}

/// Two distinct gradient buffers of a layer, mutably.
fn two(g: &mut [Vec<f32>], a: usize, b: usize) -> (&mut [f32], &mut [f32]) {
    debug_assert!(a < b);
    let (lo, hi) = g.split_at_mut(b);
    (&mut lo[a], &mut hi[0])
}

/// The backward pass of a training forward pass, from d(pooled) (b, h): every weight's gradient
/// is added to `grads`.
pub fn backward(
    p: &Params,
    tape: &mut Tape,
    d_pooled: &[f32],
    pooling: Pooling,
    grads: &mut Grads,
) {
    let dm = tape.dims;
    let mut sc = std::mem::take(&mut tape.scratch);
    pool_backward(tape, d_pooled, pooling, sized(&mut sc.dy, dm.n * dm.h));
    for l in (0..tape.layers.len()).rev() {
        layer_backward(
            p,
            l,
            dm,
            &tape.xs[l],
            &tape.layers[l],
            grads.layer(l),
            &mut sc,
        );
        std::mem::swap(&mut sc.dy, &mut sc.dx);
    }
    // Embeddings: dropout, layer norm, then the three tables.
    let dy = &mut sc.dy;
    if let Some(m) = &tape.mask0 {
        apply_mask(dy, m);
    }
    let dz0 = sized(&mut sc.dz, dm.n * dm.h);
    {
        let (lo, hi) = grads.t.split_at_mut(4);
        layer_norm_grad_rows(&tape.z0, p.t[3], dy, dm.eps, dz0, &mut lo[3], &mut hi[0]);
    }
    let h = dm.h;
    let (word, rest) = grads.t.split_at_mut(1);
    let (pos, rest) = rest.split_at_mut(1);
    let types = &mut rest[0];
    for (at, row) in dz0.chunks(h).enumerate() {
        let t = at % dm.s;
        let (id, ty) = (tape.ids[at] as usize, tape.type_ids[at] as usize);
        for (dst, off) in [(&mut word[0], id), (&mut pos[0], t), (&mut *types, ty)] {
            dst[off * h..(off + 1) * h]
                .iter_mut()
                .zip(row)
                .for_each(|(d, &v)| *d += v);
        }
    }
    tape.scratch = sc;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::encoder::pool as candle_pool;
    use crate::core::model::bert::Mode;
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use rand::{Rng, SeedableRng};

    /// Seeded dropout masks: two with one seed give the same masks in the same order.
    struct TestDrop(rand::rngs::StdRng);
    impl DropoutRng for TestDrop {
        fn fill(&mut self, out: &mut [f32], p: f32) {
            for o in out {
                *o = if self.0.random::<f32>() < p {
                    0.0
                } else {
                    1.0 / (1.0 - p)
                };
            }
        }
    }

    fn config(act: HiddenAct) -> BertConfig {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 24, "max_position_embeddings": 20,
            "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": act,
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        }))
        .unwrap()
    }

    /// A model with random weights (layer-norm weights near 1).
    fn model(cfg: &BertConfig) -> (VarMap, BertModel) {
        let varmap = VarMap::new();
        let model = BertModel::load(
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            cfg,
        )
        .unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let r = Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu).unwrap();
            let value = if name.contains("LayerNorm.weight") {
                r.affine(0.3, 1.0).unwrap()
            } else {
                r
            };
            var.set(&value).unwrap();
        }
        (varmap, model)
    }

    /// Three rows of different lengths (padding in two of them), both token types.
    fn batch() -> Batch {
        let lens = vec![7, 4, 1];
        let seq = 7;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let ids = (0..lens.len() * seq)
            .map(|_| rng.random_range(0..50))
            .collect();
        let type_ids = (0..lens.len() * seq).map(|i| (i % 3 == 0) as u32).collect();
        Batch {
            ids,
            type_ids,
            lens,
            seq,
        }
    }

    fn tensors(batch: &Batch) -> (Tensor, Tensor, Tensor) {
        let (b, s) = (batch.rows(), batch.seq);
        let mask: Vec<u32> = (0..b * s)
            .map(|i| (i % s < batch.lens[i / s]) as u32)
            .collect();
        let t = |v: Vec<u32>| Tensor::from_vec(v, (b, s), &Device::Cpu).unwrap();
        (t(batch.ids.clone()), t(batch.type_ids.clone()), t(mask))
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn inference_matches_the_candle_model() {
        let cfg = config(HiddenAct::Gelu);
        let (_vars, model) = model(&cfg);
        let batch = batch();
        let (ids, types, mask) = tensors(&batch);
        let theirs = model.forward(&ids, &types, &mask, &mut Mode::Eval).unwrap();
        let theirs = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut ws = Workspace::default();
        let ours = with_params(&model, |p| infer(p, &batch, &mut ws).map(<[f32]>::to_vec))
            .unwrap()
            .unwrap();
        assert!(
            max_diff(&ours, &theirs) < 1e-5,
            "{}",
            max_diff(&ours, &theirs)
        );
        // The buffers are reused by a second, smaller batch.
        let small = Batch {
            ids: batch.ids[..7].to_vec(),
            type_ids: batch.type_ids[..7].to_vec(),
            lens: vec![7],
            seq: 7,
        };
        let again = with_params(&model, |p| infer(p, &small, &mut ws).map(<[f32]>::to_vec))
            .unwrap()
            .unwrap();
        assert!(max_diff(&again, &ours[..7 * 16]) < 1e-5);
    }

    #[test]
    fn training_pass_and_every_gradient_match_candles_autograd() {
        for (act, pooling) in [
            (HiddenAct::Gelu, Pooling::Mean),
            (HiddenAct::GeluNew, Pooling::Max),
            (HiddenAct::Relu, Pooling::Cls),
            (HiddenAct::Gelu, Pooling::MeanSqrtLen),
        ] {
            let cfg = config(act);
            let (_vars, model) = model(&cfg);
            let batch = batch();
            let h = cfg.hidden_size;
            let up = Tensor::randn(0f32, 1.0, (batch.rows(), h), &Device::Cpu).unwrap();
            // candle: forward with dropout, pool, weight by `up`, backward.
            let (ids, types, mask) = tensors(&batch);
            let mut drop = TestDrop(rand::rngs::StdRng::seed_from_u64(7));
            let states = model
                .forward(&ids, &types, &mask, &mut Mode::Train(&mut drop))
                .unwrap();
            let theirs = candle_pool(&states, &mask, pooling).unwrap();
            let grads = (&theirs * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let theirs = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Ours, with the same masks.
            let mut drop = TestDrop(rand::rngs::StdRng::seed_from_u64(7));
            let mut ours = Grads::new(&model);
            let up = up.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let pooled = with_params(&model, |p| {
                let mut tape = Tape::default();
                // Twice into one tape: the second pass reuses the first one's buffers.
                forward_train(
                    p,
                    &batch,
                    &mut TestDrop(rand::rngs::StdRng::seed_from_u64(1)),
                    &mut tape,
                )
                .unwrap();
                forward_train(p, &batch, &mut drop, &mut tape).unwrap();
                backward(p, &mut tape, &up, pooling, &mut ours);
                tape.pooled(pooling)
            })
            .unwrap();
            let what = format!("{act:?} {pooling:?}");
            assert!(max_diff(&pooled, &theirs) < 1e-5, "{what}: pooled");
            for (i, t) in model.tensors().iter().enumerate() {
                let g = grads.get(t).expect("candle gradient");
                let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let scale = g.iter().fold(1f32, |m, v| m.max(v.abs()));
                let diff = max_diff(&ours.t[i], &g);
                assert!(
                    diff <= 1e-4 * scale,
                    "{what}: tensor {i} differs by {diff} (scale {scale})"
                );
            }
        }
    }
}
