//! The whole encoder on the CPU engine: embeddings, the layers, inference into reused buffers,
//! and training's forward pass into a [`Tape`] with its backward pass.

use rayon::prelude::*;

use super::kernels::{layer_norm_grad_rows, layer_norm_rows};
use super::layer::{apply_mask, layer_backward, layer_forward, BackwardScratch, LayerActs, Run};
use super::pool::pool_backward;
use super::{sized, two, Dims, Params};
use crate::core::backend::{BackendError, Batch, DropoutRng, Gradients};
use crate::core::model::Pooling;

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

/// Everything a training forward pass keeps for its backward pass. A tape is filled again by the
/// next step's forward pass: its buffers are reused, not re-allocated (fresh buffers of this
/// size come from the OS as zeroed pages, a tenth of a step).
#[derive(Default)]
pub struct Tape {
    dims: Dims,
    /// The batch (ids, lengths, pooling skips).
    pub(super) batch: Batch,
    /// Each token's position id.
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

impl Tape {
    /// Token states of the last layer, (n, h) row-major.
    pub fn states(&self) -> &[f32] {
        self.xs.last().map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Each token's position id: its place in its row, after the architecture's offset.
fn positions(lens: &[usize], offset: usize) -> Vec<u32> {
    lens.iter()
        .flat_map(|&len| (offset..offset + len).map(|t| t as u32))
        .collect()
}

/// Word + position (+ token-type) embeddings of every token, (n, h).
fn embed_sum(p: &Params, batch: &Batch, positions: &[u32], h: usize, out: &mut [f32]) {
    let (word, pos) = (p.get(p.lay.word), p.get(p.lay.position));
    let types = p.lay.token_type.map(|i| p.get(i));
    out.par_chunks_mut(h).enumerate().for_each(|(at, o)| {
        let (id, t) = (batch.ids[at] as usize, positions[at] as usize);
        let (w, ps) = (&word[id * h..(id + 1) * h], &pos[t * h..(t + 1) * h]);
        match types {
            Some(types) => {
                let ty = batch.type_ids[at] as usize;
                let ty = &types[ty * h..(ty + 1) * h];
                for j in 0..h {
                    o[j] = w[j] + ty[j] + ps[j];
                }
            }
            None => {
                for j in 0..h {
                    o[j] = w[j] + ps[j];
                }
            }
        }
    });
}

/// Checks ids against the embedding tables before any indexing.
fn check_batch(p: &Params, batch: &Batch) -> Result<(), BackendError> {
    let cfg = p.cfg;
    if let Some(&len) = batch.lens.iter().find(|&&l| l > cfg.max_tokens()) {
        return Err(BackendError::Input(format!(
            "{len} tokens exceed the model's {} positions",
            cfg.max_tokens()
        )));
    }
    let n = batch.tokens();
    if batch.ids.len() != n || batch.type_ids.len() != n {
        return Err(BackendError::Input(
            "token ids do not match the batch shape".into(),
        ));
    }
    if let Some(&id) = batch.ids.iter().find(|&&i| i as usize >= cfg.vocab_size) {
        return Err(BackendError::Input(format!(
            "token id {id} is outside the vocabulary of {}",
            cfg.vocab_size
        )));
    }
    // Models without token types (MPNet) ignore the tokenizer's type ids, as transformers does.
    if p.lay.token_type.is_some()
        && batch
            .type_ids
            .iter()
            .any(|&t| t as usize >= cfg.type_vocab_size)
    {
        return Err(BackendError::Input(
            "a token type id is outside the model's token types".into(),
        ));
    }
    Ok(())
}

/// Token states (n, h) of a batch, inference (no dropout); `ws` keeps the buffers for the next
/// batch.
pub(super) fn infer<'w>(
    p: &Params,
    batch: &Batch,
    ws: &'w mut Workspace,
) -> Result<&'w [f32], BackendError> {
    check_batch(p, batch)?;
    let dm = Dims::new(p.cfg, batch);
    let positions = positions(&batch.lens, p.cfg.position_offset());
    let Workspace {
        x,
        y,
        acts,
        qkv_w,
        qkv_b,
    } = ws;
    let norm = p.lay.emb_norm;
    embed_sum(p, batch, &positions, dm.h, sized(y, dm.n * dm.h));
    layer_norm_rows(
        y,
        p.get(norm.w),
        p.get(norm.b),
        dm.eps,
        sized(x, dm.n * dm.h),
    );
    for lp in &p.lay.layers {
        let run = Run::Infer {
            qkv_w: &mut *qkv_w,
            qkv_b: &mut *qkv_b,
        };
        layer_forward(p, lp, dm, &batch.lens, x, acts, run, sized(y, dm.n * dm.h));
        std::mem::swap(x, y);
    }
    Ok(&ws.x[..dm.n * dm.h])
}

/// Training forward pass into `tape` (its buffers reused), with dropout masks from `rng` (drawn
/// in the order of the reference model: embeddings, then per layer attention probabilities,
/// attention output, feed-forward output); the tape holds the token states and what
/// [`backward`] needs.
pub(super) fn forward_train(
    p: &Params,
    batch: &Batch,
    rng: &mut dyn DropoutRng,
    tape: &mut Tape,
) -> Result<(), BackendError> {
    check_batch(p, batch)?;
    let dm = Dims::new(p.cfg, batch);
    let layers = p.lay.layers.len();
    tape.dims = dm;
    tape.batch.clone_from(batch);
    tape.positions = positions(&batch.lens, p.cfg.position_offset());
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
    let norm = p.lay.emb_norm;
    layer_norm_rows(&tape.z0, p.get(norm.w), p.get(norm.b), dm.eps, x);
    let p_hidden = p.cfg.hidden_dropout_prob as f32;
    if p_hidden > 0.0 {
        let m = sized(tape.mask0.get_or_insert_with(Vec::new), dm.n * dm.h);
        rng.fill(m, p_hidden);
        apply_mask(x, m);
    } else {
        tape.mask0 = None;
    }
    for (l, lp) in p.lay.layers.iter().enumerate() {
        let (done, rest) = tape.xs.split_at_mut(l + 1);
        let out = sized(&mut rest[0], dm.n * dm.h);
        let acts = &mut tape.layers[l];
        let run = Run::Train(&mut *rng);
        layer_forward(p, lp, dm, &tape.batch.lens, &done[l], acts, run, out);
    }
    Ok(())
}

/// Adds `rows` (n, h) to the rows `index[t]` of a table (rows of h).
fn scatter_add(table: &mut [f32], index: impl Iterator<Item = usize>, rows: &[f32], h: usize) {
    for (at, row) in index.zip(rows.chunks(h)) {
        table[at * h..(at + 1) * h]
            .iter_mut()
            .zip(row)
            .for_each(|(d, &v)| *d += v);
    }
}

/// The backward pass of a training forward pass, from d(pooled) (b, h): every weight's gradient
/// is added to `grads`.
pub(super) fn backward(
    p: &Params,
    tape: &mut Tape,
    d_pooled: &[f32],
    pooling: Pooling,
    grads: &mut Gradients,
) -> Result<(), BackendError> {
    let dm = tape.dims;
    if d_pooled.len() != tape.batch.rows() * dm.h {
        return Err(BackendError::Compute(format!(
            "d(pooled) has {} values for {} rows of {}",
            d_pooled.len(),
            tape.batch.rows(),
            dm.h
        )));
    }
    let mut sc = std::mem::take(&mut tape.scratch);
    pool_backward(
        tape.states(),
        &tape.batch,
        dm.h,
        d_pooled,
        pooling,
        sized(&mut sc.dy, dm.n * dm.h),
    );
    let lens = &tape.batch.lens;
    for (l, lp) in p.lay.layers.iter().enumerate().rev() {
        let (x, acts) = (&tape.xs[l], &tape.layers[l]);
        layer_backward(p, lp, dm, lens, x, acts, &mut grads.t, &mut sc);
        std::mem::swap(&mut sc.dy, &mut sc.dx);
    }
    // Embeddings: dropout, layer norm, then the tables.
    let dy = &mut sc.dy;
    if let Some(m) = &tape.mask0 {
        apply_mask(dy, m);
    }
    let dz0 = sized(&mut sc.dz, dm.n * dm.h);
    let norm = p.lay.emb_norm;
    let (gw, gb) = two(&mut grads.t, norm.w, norm.b);
    layer_norm_grad_rows(&tape.z0, p.get(norm.w), dy, dm.eps, dz0, gw, gb);
    let h = dm.h;
    let ids = tape.batch.ids.iter().map(|&i| i as usize);
    scatter_add(&mut grads.t[p.lay.word], ids, dz0, h);
    let pos = tape.positions.iter().map(|&t| t as usize);
    scatter_add(&mut grads.t[p.lay.position], pos, dz0, h);
    if let Some(types) = p.lay.token_type {
        let ty = tape.batch.type_ids.iter().map(|&t| t as usize);
        scatter_add(&mut grads.t[types], ty, dz0, h);
    }
    tape.scratch = sc;
    Ok(())
}
