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
//! Texts are packed back to back without padding: the dense layers compute only real tokens and
//! attention runs over each text's own length.
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
    gelu_grad_into, gelu_into, layer_norm_grad_rows, layer_norm_rows, simd, softmax_grad_rows,
    softmax_rows, CHUNK,
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

/// A batch of tokenized texts packed back to back, without padding: the dense layers only
/// compute real tokens, and attention runs over each text's own length.
pub struct Batch {
    /// Token ids of all rows, one row after the other.
    pub ids: Vec<u32>,
    /// Token type ids, as `ids`.
    pub type_ids: Vec<u32>,
    /// Tokens of each row.
    pub lens: Vec<usize>,
}

impl Batch {
    fn rows(&self) -> usize {
        self.lens.len()
    }

    /// The batch right-padded to its longest row: ids, type ids, attention mask (each (b, s)
    /// row-major) and s, for the candle model.
    pub fn padded(&self, pad_id: u32) -> (Vec<u32>, Vec<u32>, Vec<u32>, usize) {
        let seq = self.lens.iter().copied().max().unwrap_or(0);
        let b = self.rows();
        let (mut ids, mut types, mut mask) = (
            vec![pad_id; b * seq],
            vec![0u32; b * seq],
            vec![0u32; b * seq],
        );
        for (row, (start, len)) in starts(&self.lens).zip(&self.lens).enumerate() {
            let at = row * seq;
            ids[at..at + len].copy_from_slice(&self.ids[start..start + len]);
            types[at..at + len].copy_from_slice(&self.type_ids[start..start + len]);
            mask[at..at + len].fill(1);
        }
        (ids, types, mask, seq)
    }
}

/// The first token of each row.
fn starts(lens: &[usize]) -> impl Iterator<Item = usize> + '_ {
    lens.iter().scan(0, |at, &len| {
        let start = *at;
        *at += len;
        Some(start)
    })
}

/// Each row's tokens' pieces of a (n, width) buffer, resized to fit.
fn row_pieces<'a>(buf: &'a mut Vec<f32>, lens: &[usize], width: usize) -> Vec<&'a mut [f32]> {
    let n: usize = lens.iter().sum();
    split_mut(sized(buf, n * width), lens.iter().map(|l| l * width))
}

/// Where each text's tokens start, and where its attention block (heads, len, len) lies in a
/// layer's probabilities and their dropout mask.
struct Offsets {
    tokens: Vec<usize>,
    blocks: Vec<std::ops::Range<usize>>,
}

impl Offsets {
    fn new(lens: &[usize], heads: usize) -> Self {
        let sizes: Vec<usize> = lens.iter().map(|l| heads * l * l).collect();
        Self {
            tokens: starts(lens).collect(),
            blocks: starts(&sizes).zip(&sizes).map(|(a, n)| a..a + n).collect(),
        }
    }

    /// The length of all blocks together.
    fn block_total(&self) -> usize {
        self.blocks.last().map_or(0, |b| b.end)
    }
}

/// Consecutive mutable pieces of `buf` with the given lengths.
fn split_mut(mut buf: &mut [f32], sizes: impl Iterator<Item = usize>) -> Vec<&mut [f32]> {
    let mut out = Vec::new();
    for n in sizes {
        let (piece, rest) = std::mem::take(&mut buf).split_at_mut(n);
        out.push(piece);
        buf = rest;
    }
    out
}

#[derive(Clone, Copy, Default)]
struct Dims {
    /// Tokens of the whole batch.
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
            n: batch.lens.iter().sum(),
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
                simd(|| g.iter_mut().zip(x).for_each(|(g, &x)| *g *= gelu_tanh(x).1))
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
struct LayerActs {
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

/// Buffers reused across the batches of an inference run.
#[derive(Default)]
pub struct Workspace {
    x: Vec<f32>,
    y: Vec<f32>,
    acts: LayerActs,
    /// One layer's query, key and value weights and biases stacked, for one product.
    qkv_w: Vec<f32>,
    qkv_b: Vec<f32>,
}

/// The query, key and value rows of one sequence: row `t` of head `j`'s query is at
/// `q[t * ld + j * d..]`.
#[derive(Clone, Copy)]
struct Qkv<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    ld: usize,
}

impl<'a> Qkv<'a> {
    /// The rows from token `start` on of three views with row length `ld` (three buffers, or
    /// three column offsets into one fused buffer).
    fn from(q: &'a [f32], k: &'a [f32], v: &'a [f32], ld: usize, start: usize) -> Self {
        Self {
            q: &q[start * ld..],
            k: &k[start * ld..],
            v: &v[start * ld..],
            ld,
        }
    }
}

/// One sequence's attention: for every head, softmax(scale · Q Kᵀ) (dropped out in training)
/// times V, written into the sequence's rows of `ctx` (len, h). `probs` (training) keeps each
/// head's probabilities (heads, len, len). Inference keeps one head's scores in a buffer that
/// stays in cache, and divides by the softmax's sums after the product (len · d divisions
/// instead of len²).
fn attend_sequence(
    dm: Dims,
    len: usize,
    x: Qkv,
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
    let (mut local, mut dropped) = (Vec::new(), Vec::new());
    let mut inv_sums = vec![0f32; len];
    for head in 0..dm.heads {
        let off = head * d;
        let p = match probs.as_deref_mut() {
            Some(all) => &mut all[head * len * len..(head + 1) * len * len],
            None => sized(&mut local, len * len),
        };
        sgemm_strided(
            false,
            true,
            len,
            len,
            d,
            &x.q[off..],
            ld,
            &x.k[off..],
            ld,
            p,
            len,
            false,
        );
        softmax_rows(p, len, &mut inv_sums, scale, train);
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
        sgemm_strided(
            false,
            false,
            len,
            d,
            len,
            p,
            len,
            &x.v[off..],
            ld,
            &mut ctx[off..],
            h,
            false,
        );
        if !train {
            for (row, &inv) in ctx.chunks_mut(h).zip(&inv_sums) {
                row[off..off + d].iter_mut().for_each(|v| *v *= inv);
            }
        }
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
    /// Each token's position in its row.
    positions: Vec<u32>,
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
        pool(self.states(), &self.lens, self.dims.h, pooling)
    }
}

/// Each token's position in its row.
fn positions(lens: &[usize]) -> Vec<u32> {
    lens.iter().flat_map(|&len| 0..len as u32).collect()
}

/// Word + position + token-type embeddings of every token, (n, h).
fn embed_sum(p: &Params, batch: &Batch, positions: &[u32], h: usize, out: &mut [f32]) {
    let (word, pos, types) = (p.t[0], p.t[1], p.t[2]);
    out.par_chunks_mut(h).enumerate().for_each(|(at, o)| {
        let (id, ty, t) = (
            batch.ids[at] as usize,
            batch.type_ids[at] as usize,
            positions[at] as usize,
        );
        let (w, ps, ty) = (
            &word[id * h..(id + 1) * h],
            &pos[t * h..(t + 1) * h],
            &types[ty * h..(ty + 1) * h],
        );
        for j in 0..h {
            o[j] = w[j] + ty[j] + ps[j];
        }
    });
}

/// Checks ids against the embedding tables before any indexing.
fn check_batch(p: &Params, batch: &Batch) -> Result<(), String> {
    let cfg = p.cfg;
    if let Some(&len) = batch
        .lens
        .iter()
        .find(|&&l| l > cfg.max_position_embeddings)
    {
        return Err(format!(
            "{len} tokens exceed the model's {} positions",
            cfg.max_position_embeddings
        ));
    }
    let n: usize = batch.lens.iter().sum();
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

/// Where a layer's activations go: the tape (training, with a dropout source) or scratch with
/// buffers for the stacked query/key/value weights (inference).
enum Run<'a> {
    Train(&'a mut dyn DropoutRng),
    Infer {
        qkv_w: &'a mut Vec<f32>,
        qkv_b: &'a mut Vec<f32>,
    },
}

/// One layer forward from `x` into `out`. In training, dropout is applied and `acts` keeps what
/// the backward pass needs; in inference `acts` is scratch.
#[allow(clippy::too_many_arguments)]
fn layer_forward(
    p: &Params,
    l: usize,
    dm: Dims,
    lens: &[usize],
    x: &[f32],
    acts: &mut LayerActs,
    mut run: Run,
    out: &mut [f32],
) {
    let (n, h) = (dm.n, dm.h);
    let w = |j| p.layer(l, j);
    let hidden_p = p.cfg.hidden_dropout_prob as f32;
    let attn_p = p.cfg.attention_probs_dropout_prob as f32;
    let train = matches!(run, Run::Train(_));
    let (q, k, v, ld) = if train {
        // Three products: the backward pass needs each projection's gradient on its own.
        dense(x, w(ix::Q_W), w(ix::Q_B), n, sized(&mut acts.q, n * h));
        dense(x, w(ix::K_W), w(ix::K_B), n, sized(&mut acts.k, n * h));
        dense(x, w(ix::V_W), w(ix::V_B), n, sized(&mut acts.v, n * h));
        (&acts.q[..], &acts.k[..], &acts.v[..], h)
    } else {
        // One product with the three weights stacked: the input is packed once, not thrice.
        let Run::Infer { qkv_w, qkv_b } = &mut run else {
            unreachable!("not training")
        };
        qkv_w.clear();
        qkv_b.clear();
        for (wi, bi) in [(ix::Q_W, ix::Q_B), (ix::K_W, ix::K_B), (ix::V_W, ix::V_B)] {
            qkv_w.extend_from_slice(w(wi));
            qkv_b.extend_from_slice(w(bi));
        }
        let qkv = sized(&mut acts.q, n * 3 * h);
        dense(x, qkv_w, qkv_b, n, qkv);
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
            attend_sequence(dm, lens[row], x, c, pr, keep)
        });
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

/// Token states (n, h) of a batch, inference (no dropout); `ws` keeps the buffers for the next
/// batch.
pub fn infer<'w>(p: &Params, batch: &Batch, ws: &'w mut Workspace) -> Result<&'w [f32], String> {
    check_batch(p, batch)?;
    let dm = Dims::new(p.cfg, batch);
    let positions = positions(&batch.lens);
    let Workspace {
        x,
        y,
        acts,
        qkv_w,
        qkv_b,
    } = ws;
    embed_sum(p, batch, &positions, dm.h, sized(y, dm.n * dm.h));
    layer_norm_rows(y, p.t[3], p.t[4], dm.eps, sized(x, dm.n * dm.h));
    for l in 0..p.cfg.num_hidden_layers {
        let run = Run::Infer {
            qkv_w: &mut *qkv_w,
            qkv_b: &mut *qkv_b,
        };
        layer_forward(p, l, dm, &batch.lens, x, acts, run, sized(y, dm.n * dm.h));
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
    tape.positions = positions(&batch.lens);
    embed_sum(
        p,
        batch,
        &tape.positions,
        dm.h,
        sized(&mut tape.z0, dm.n * dm.h),
    );
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
        let run = Run::Train(&mut *rng);
        layer_forward(p, l, dm, &tape.lens, &done[l], acts, run, out);
    }
    Ok(())
}

/// Pools token states (n, h) into (rows, h) over each row's tokens, as sentence-transformers'
/// Pooling module.
pub fn pool(states: &[f32], lens: &[usize], h: usize, pooling: Pooling) -> Vec<f32> {
    let mut out = vec![0f32; lens.len() * h];
    for ((o, &len), start) in out.chunks_mut(h).zip(lens).zip(starts(lens)) {
        if len == 0 {
            continue; // an empty text pools to zeros
        }
        let rows = &states[start * h..(start + len) * h];
        match pooling {
            Pooling::Cls => o.copy_from_slice(&rows[..h]),
            Pooling::Mean | Pooling::MeanSqrtLen => {
                for t in rows.chunks(h) {
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
                for t in rows.chunks(h) {
                    o.iter_mut().zip(t).for_each(|(o, &v)| *o = o.max(v));
                }
            }
        }
    }
    out
}

/// d(token states) from d(pooled) (b, h): the pooling's backward pass.
fn pool_backward(tape: &Tape, d_pooled: &[f32], pooling: Pooling, d: &mut [f32]) {
    let h = tape.dims.h;
    d.fill(0.0);
    let states = tape.states();
    for ((g, &len), start) in d_pooled.chunks(h).zip(&tape.lens).zip(starts(&tape.lens)) {
        if len == 0 {
            continue;
        }
        let dst = &mut d[start * h..(start + len) * h];
        match pooling {
            Pooling::Cls => dst[..h].copy_from_slice(g),
            Pooling::Mean | Pooling::MeanSqrtLen => {
                let count = (len as f32).max(1e-9);
                let div = if pooling == Pooling::Mean {
                    count
                } else {
                    count.sqrt()
                };
                for t in dst.chunks_mut(h) {
                    t.iter_mut().zip(g).for_each(|(t, &g)| *t = g / div);
                }
            }
            Pooling::Max => {
                // The gradient goes to the first token holding each maximum.
                let rows = &states[start * h..(start + len) * h];
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

/// One sequence's attention backward pass (all heads): from its d(ctx) rows to its d(q), d(k),
/// d(v) rows (len, h each). `probs` and `keep` are its blocks (heads, len, len); `at` is its
/// first token.
#[allow(clippy::too_many_arguments)]
fn attend_sequence_backward(
    dm: Dims,
    len: usize,
    at: usize,
    acts: &LayerActs,
    probs: &[f32],
    keep: Option<&[f32]>,
    dctx: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (h, d) = (dm.h, dm.d);
    if len == 0 {
        return;
    }
    let scale = 1.0 / (d as f32).sqrt();
    let x = Qkv::from(&acts.q, &acts.k, &acts.v, h, at);
    let dctx = &dctx[at * h..];
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
        sgemm_strided(
            false,
            true,
            len,
            len,
            d,
            dctx_h,
            h,
            &x.v[off..],
            h,
            &mut dp,
            len,
            false,
        );
        sgemm_strided(
            true,
            false,
            len,
            d,
            len,
            pd,
            len,
            dctx_h,
            h,
            &mut dv[off..],
            h,
            false,
        );
        if let Some(keep) = keep {
            dp.iter_mut().zip(keep).for_each(|(g, &m)| *g *= m);
        }
        softmax_grad_rows(&mut dp, probs, len, scale);
        // dQ = dS · K; dK = dSᵀ · Q.
        sgemm_strided(
            false,
            false,
            len,
            d,
            len,
            &dp,
            len,
            &x.k[off..],
            h,
            &mut dq[off..],
            h,
            false,
        );
        sgemm_strided(
            true,
            false,
            len,
            d,
            len,
            &dp,
            len,
            &x.q[off..],
            h,
            &mut dk[off..],
            h,
            false,
        );
    }
}

/// The backward pass of one layer: from d(output) `sc.dy` (n, h) to d(input) in `sc.dx`; the
/// layer's weight gradients are added to `g`.
#[allow(clippy::too_many_arguments)]
fn layer_backward(
    p: &Params,
    l: usize,
    dm: Dims,
    lens: &[usize],
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
    let rows = |buf| row_pieces(buf, lens, h).into_iter();
    let pieces: Vec<_> = rows(&mut sc.dq)
        .zip(rows(&mut sc.dk))
        .zip(rows(&mut sc.dv))
        .collect();
    let at = Offsets::new(lens, dm.heads);
    let dctx = &sc.dctx;
    pieces
        .into_par_iter()
        .enumerate()
        .for_each(|(row, ((dq, dk), dv))| {
            let block = at.blocks[row].clone();
            let probs = &acts.probs[block.clone()];
            let keep = acts.probs_mask.as_deref().map(|m| &m[block]);
            let (len, first) = (lens[row], at.tokens[row]);
            attend_sequence_backward(dm, len, first, acts, probs, keep, dctx, dq, dk, dv)
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
        let (x, acts) = (&tape.xs[l], &tape.layers[l]);
        layer_backward(p, l, dm, &tape.lens, x, acts, grads.layer(l), &mut sc);
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
        let t = tape.positions[at] as usize;
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

    /// Rows of the given lengths with random ids and both token types.
    fn batch(lens: &[usize]) -> Batch {
        let n: usize = lens.iter().sum();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        Batch {
            ids: (0..n).map(|_| rng.random_range(0..50)).collect(),
            type_ids: (0..n).map(|i| (i % 3 == 0) as u32).collect(),
            lens: lens.to_vec(),
        }
    }

    /// The batch padded, as the candle model takes it.
    fn tensors(batch: &Batch) -> (Tensor, Tensor, Tensor) {
        let (ids, types, mask, s) = batch.padded(0);
        let t = |v: Vec<u32>| Tensor::from_vec(v, (batch.rows(), s), &Device::Cpu).unwrap();
        (t(ids), t(types), t(mask))
    }

    /// The real tokens' rows of padded (b, s, h) states, packed.
    fn packed(states: &Tensor, lens: &[usize]) -> Vec<f32> {
        let (_, s, h) = states.dims3().unwrap();
        let all = states.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let rows = lens.iter().enumerate();
        rows.flat_map(|(r, &len)| all[r * s * h..(r * s + len) * h].to_vec())
            .collect()
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
        let batch = batch(&[7, 4, 1]);
        let (ids, types, mask) = tensors(&batch);
        let theirs = model.forward(&ids, &types, &mask, &mut Mode::Eval).unwrap();
        let theirs = packed(&theirs, &batch.lens);
        let mut ws = Workspace::default();
        let ours = with_params(&model, |p| infer(p, &batch, &mut ws).map(<[f32]>::to_vec))
            .unwrap()
            .unwrap();
        let diff = max_diff(&ours, &theirs);
        assert!(diff < 1e-5, "{diff}");
        // The buffers are reused by a second, smaller batch.
        let small = Batch {
            ids: batch.ids[..7].to_vec(),
            type_ids: batch.type_ids[..7].to_vec(),
            lens: vec![7],
        };
        let again = with_params(&model, |p| infer(p, &small, &mut ws).map(<[f32]>::to_vec))
            .unwrap()
            .unwrap();
        assert!(max_diff(&again, &ours[..7 * 16]) < 1e-5);
    }

    #[test]
    fn an_empty_row_pools_to_zeros_and_leaves_the_others_alone() {
        let (_vars, model) = model(&config(HiddenAct::Gelu));
        let with_empty = Batch {
            lens: vec![3, 0, 2],
            ..batch(&[3, 2])
        };
        let without = batch(&[3, 2]);
        let pooled = |b: &Batch| {
            with_params(&model, |p| {
                let mut ws = Workspace::default();
                let states = infer(p, b, &mut ws).unwrap().to_vec();
                pool(&states, &b.lens, 16, Pooling::Cls)
            })
            .unwrap()
        };
        let (a, b) = (pooled(&with_empty), pooled(&without));
        assert_eq!(a[16..32], [0.0; 16]);
        assert!(max_diff(&a[..16], &b[..16]) < 1e-6 && max_diff(&a[32..], &b[16..]) < 1e-6);
        // Training through an empty row, too.
        with_params(&model, |p| {
            let mut tape = Tape::default();
            forward_train(p, &with_empty, &mut Keep, &mut tape).unwrap();
            let mut grads = Grads::new(&model);
            backward(p, &mut tape, &[1.0; 48], Pooling::Mean, &mut grads);
            assert!(grads.t.iter().flatten().all(|g| g.is_finite()));
        })
        .unwrap();
    }

    /// Drops nothing (so rows of different lengths can be compared: the packed engine and the
    /// padded candle model draw masks of different sizes).
    struct Keep;
    impl DropoutRng for Keep {
        fn fill(&mut self, out: &mut [f32], _p: f32) {
            out.fill(1.0);
        }
    }

    #[test]
    fn training_pass_and_every_gradient_match_candles_autograd() {
        let cases = [
            (HiddenAct::Gelu, Pooling::Mean),
            (HiddenAct::GeluNew, Pooling::Max),
            (HiddenAct::Relu, Pooling::Cls),
            (HiddenAct::Gelu, Pooling::MeanSqrtLen),
        ];
        // Rows of one length with dropout (the same masks on both sides), and rows of different
        // lengths without.
        for (lens, dropout) in [(&[5usize, 5, 5][..], true), (&[7, 4, 1][..], false)] {
            for (act, pooling) in cases {
                let what = format!("{act:?} {pooling:?} {lens:?}");
                let cfg = config(act);
                let (_vars, model) = model(&cfg);
                let batch = batch(lens);
                let h = cfg.hidden_size;
                let up = Tensor::randn(0f32, 1.0, (batch.rows(), h), &Device::Cpu).unwrap();
                let rng = || -> Box<dyn DropoutRng> {
                    if dropout {
                        Box::new(TestDrop(rand::rngs::StdRng::seed_from_u64(7)))
                    } else {
                        Box::new(Keep)
                    }
                };
                // candle: forward, pool, weight by `up`, backward.
                let (ids, types, mask) = tensors(&batch);
                let states = model
                    .forward(&ids, &types, &mask, &mut Mode::Train(&mut *rng()))
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
                let mut ours = Grads::new(&model);
                let up = up.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let pooled = with_params(&model, |p| {
                    let mut tape = Tape::default();
                    // Twice into one tape: the second pass reuses the first one's buffers.
                    let mut other = TestDrop(rand::rngs::StdRng::seed_from_u64(1));
                    forward_train(p, &batch, &mut other, &mut tape).unwrap();
                    forward_train(p, &batch, &mut *rng(), &mut tape).unwrap();
                    backward(p, &mut tape, &up, pooling, &mut ours);
                    tape.pooled(pooling)
                })
                .unwrap();
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
}
