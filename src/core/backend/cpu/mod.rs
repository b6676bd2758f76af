//! tripletlab's own CPU engine, for speed: inference, and training with a hand-written backward
//! pass, on plain f32 buffers read in place from the model's tensors (so a model whose variables
//! are being trained is always current).
//!
//! Why not candle's autograd: every gradient edge there allocates a zero tensor and adds into it,
//! much of that on one thread, and every intermediate is a fresh buffer. Here a training step
//! keeps exactly the activations the backward pass needs, attention runs one sequence per thread
//! with its scores in cache (never a batch-wide score tensor in inference), and the products
//! read and write heads in place through strides instead of copying them apart. Texts are packed
//! back to back without padding.
//!
//! The architecture is its own dimension ([`arch`]): a [`ParamLayout`] says which checkpoint
//! tensors the common graph reads, and the configuration adds a position offset (XLM-R, MPNet)
//! or a relative position bias (MPNet).

pub mod arch;
mod attention;
pub mod bf16;
pub mod blas;
mod forward;
pub(crate) mod kernels;
mod layer;
mod pool;

pub use arch::ParamLayout;
pub use forward::{Tape, Workspace};

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, Storage, Tensor};

use super::{BackendError, Batch, Compute, DropoutRng, EmbedBackend, Gradients, TrainBackend};
use crate::core::model::{ModelConfig, Pooling};
use attention::RelBuckets;

/// An encoder on the CPU engine: its configuration, the tensors of its [`ParamLayout`] (f32,
/// contiguous; shared with the trainer's variables when training) and the pooling.
pub struct CpuModel {
    cfg: ModelConfig,
    layout: ParamLayout,
    tensors: Vec<Tensor>,
    pooling: Pooling,
    rel: Option<RelBuckets>,
    /// The dense products' arithmetic.
    compute: Compute,
    /// Buffers of inference, kept between batches.
    workspace: Mutex<Workspace>,
}

impl CpuModel {
    /// Builds the model from tensors looked up by name (without prefix): every tensor of the
    /// layout must exist with its shape; it is converted to contiguous f32 when it is not.
    pub fn new(
        cfg: &ModelConfig,
        pooling: Pooling,
        lookup: &dyn Fn(&str) -> Option<Tensor>,
    ) -> Result<Self, BackendError> {
        let layout = arch::layout(cfg, &|n| lookup(n).is_some());
        let mut tensors = Vec::with_capacity(layout.names.len());
        for (name, shape) in layout.names.iter().zip(&layout.shapes) {
            let t = lookup(name).ok_or_else(|| {
                BackendError::Weights(format!(
                    "tensor `{name}` is missing ({} checkpoints have it)",
                    cfg.arch.name()
                ))
            })?;
            if t.dims() != shape.as_slice() {
                return Err(BackendError::Weights(format!(
                    "tensor `{name}` has shape {:?}, config.json implies {shape:?}",
                    t.dims()
                )));
            }
            let t = if t.dtype() == DType::F32 {
                t
            } else {
                t.to_dtype(DType::F32)?
            };
            tensors.push(if t.is_contiguous() {
                t
            } else {
                t.contiguous()?
            });
        }
        Ok(Self {
            rel: layout.rel_bias.map(|_| {
                RelBuckets::new(crate::core::model::config::MPNET_BUCKETS, cfg.max_tokens())
            }),
            cfg: cfg.clone(),
            layout,
            tensors,
            pooling,
            compute: Compute::F32,
            workspace: Mutex::default(),
        })
    }

    /// The model with its dense products in `compute`; a mode this CPU cannot run is an error
    /// naming the missing feature.
    pub fn with_compute(mut self, compute: Compute) -> Result<Self, BackendError> {
        compute.check().map_err(BackendError::Compute)?;
        self.compute = compute;
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The parameter layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The model's tensors in layout order.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// Runs `f` on the weights, read in place (the tensors' storage is read-locked meanwhile, so
    /// nothing can change them).
    fn with_params<R>(&self, f: impl FnOnce(&Params) -> R) -> Result<R, BackendError> {
        let guards: Vec<_> = self
            .tensors
            .iter()
            .map(|t| t.storage_and_layout())
            .collect();
        let mut t = Vec::with_capacity(guards.len());
        for (guard, layout) in &guards {
            let Storage::Cpu(CpuStorage::F32(v)) = &**guard else {
                return Err(BackendError::Weights(
                    "the CPU engine needs f32 weights on the CPU".into(),
                ));
            };
            let Some((start, end)) = layout.contiguous_offsets() else {
                return Err(BackendError::Weights(
                    "the CPU engine needs contiguous weights".into(),
                ));
            };
            t.push(&v[start..end]);
        }
        Ok(f(&Params {
            t,
            lay: &self.layout,
            cfg: &self.cfg,
            rel: self.rel.as_ref(),
            compute: self.compute,
        }))
    }
}

/// The model's weights as slices, in layout order, with what the graph needs to know.
pub(crate) struct Params<'a> {
    t: Vec<&'a [f32]>,
    lay: &'a ParamLayout,
    cfg: &'a ModelConfig,
    rel: Option<&'a RelBuckets>,
    compute: Compute,
}

impl Params<'_> {
    fn get(&self, i: usize) -> &[f32] {
        self.t[i]
    }
}

impl EmbedBackend for CpuModel {
    fn dim(&self) -> usize {
        self.cfg.hidden_size
    }

    fn embed(&self, batch: &Batch) -> Result<Vec<f32>, BackendError> {
        self.with_params(|p| {
            // One encoder embeds on one thread at a time; a poisoned lock only means an earlier
            // batch panicked, and the buffers are overwritten anyway.
            let mut ws = self
                .workspace
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let states = forward::infer(p, batch, &mut ws)?;
            Ok(pool::pool(states, batch, p.cfg.hidden_size, self.pooling))
        })?
    }

    fn compute(&self) -> Compute {
        self.compute
    }

    fn describe(&self) -> String {
        match self.compute {
            Compute::F32 => format!(
                "tripletlab CPU engine ({}, {})",
                self.cfg.arch.name(),
                blas::backend()
            ),
            Compute::Bf16 => format!(
                "tripletlab CPU engine ({}, bf16 products on AVX512-BF16, the rest f32 on {})",
                self.cfg.arch.name(),
                blas::backend()
            ),
        }
    }
}

impl TrainBackend for CpuModel {
    type Tape = Tape;

    fn dim(&self) -> usize {
        self.cfg.hidden_size
    }

    fn parameter_names(&self) -> &[String] {
        &self.layout.names
    }

    fn new_gradients(&self) -> Gradients {
        Gradients::zeros(self.layout.sizes())
    }

    fn forward_train(
        &self,
        batch: &Batch,
        rng: &mut dyn DropoutRng,
        tape: &mut Tape,
    ) -> Result<Vec<f32>, BackendError> {
        self.with_params(|p| {
            forward::forward_train(p, batch, rng, tape)?;
            Ok(pool::pool(
                tape.states(),
                &tape.batch,
                p.cfg.hidden_size,
                self.pooling,
            ))
        })?
    }

    fn backward(
        &self,
        tape: &mut Tape,
        d_pooled: &[f32],
        grads: &mut Gradients,
    ) -> Result<(), BackendError> {
        if grads.t.len() != self.tensors.len() {
            return Err(BackendError::Compute(format!(
                "{} gradient buffers for {} parameters",
                grads.t.len(),
                self.tensors.len()
            )));
        }
        self.with_params(|p| forward::backward(p, tape, d_pooled, self.pooling, grads))?
    }
}

/// Resizes a buffer without caring about its contents (they are overwritten).
fn sized<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() != len {
        if len > buf.capacity() {
            // Growing: the old contents are not needed (no copy), and a quarter of headroom
            // lets the next batches' slightly longer texts reuse the pages already touched.
            buf.clear();
            buf.reserve_exact(len + len / 4);
        }
        buf.resize(len, T::default());
    }
    buf
}

/// The first token of each row.
fn starts(lens: &[usize]) -> impl Iterator<Item = usize> + '_ {
    lens.iter().scan(0, |at, &len| {
        let start = *at;
        *at += len;
        Some(start)
    })
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

/// Each row's tokens' pieces of a (n, width) buffer, resized to fit.
fn row_pieces<'a>(buf: &'a mut Vec<f32>, lens: &[usize], width: usize) -> Vec<&'a mut [f32]> {
    let n: usize = lens.iter().sum();
    split_mut(sized(buf, n * width), lens.iter().map(|l| l * width))
}

/// Two distinct gradient buffers, mutably (`a < b`).
fn two(g: &mut [Vec<f32>], a: usize, b: usize) -> (&mut [f32], &mut [f32]) {
    debug_assert!(a < b);
    let (lo, hi) = g.split_at_mut(b);
    (&mut lo[a], &mut hi[0])
}

/// Sizes of one batch as the layers see them.
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
    fn new(cfg: &ModelConfig, batch: &Batch) -> Self {
        Self {
            n: batch.tokens(),
            h: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            d: cfg.head_dim(),
            i: cfg.intermediate_size,
            eps: cfg.layer_norm_eps as f32,
        }
    }
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
