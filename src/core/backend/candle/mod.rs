//! The candle reference backend: [`ReferenceModel`] (plain candle operations with autograd) and
//! sentence-transformers' pooling as candle operations. It embeds padded batches and gives
//! differentiable pooled vectors; the CPU engine's outputs and gradients are tested against it.

mod model;

pub use model::{Mode, ReferenceModel};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::{BackendError, Batch, EmbedBackend};
use crate::core::model::{ModelConfig, Pooling};

/// The reference model with its pooling.
pub struct CandleBackend {
    model: ReferenceModel,
    pooling: Pooling,
    pad_id: u32,
}

impl CandleBackend {
    /// Builds the reference over tensors (names without the encoder's prefix).
    pub fn new(vb: VarBuilder, cfg: &ModelConfig, pooling: Pooling) -> Result<Self, BackendError> {
        Ok(Self {
            model: ReferenceModel::load(vb, cfg)
                .map_err(|e| BackendError::Weights(e.to_string()))?,
            pooling,
            pad_id: cfg.pad_token_id as u32,
        })
    }

    /// Builds the reference over a name -> tensor map (f32 on the CPU).
    pub fn from_tensors(
        tensors: std::collections::HashMap<String, Tensor>,
        cfg: &ModelConfig,
        pooling: Pooling,
    ) -> Result<Self, BackendError> {
        Self::new(
            VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
            cfg,
            pooling,
        )
    }

    /// Pooled vectors (rows, h) of a batch, padded, with the autograd graph kept.
    pub fn forward_pooled(&self, batch: &Batch, mode: &mut Mode) -> Result<Tensor, BackendError> {
        let (ids, types, mask, seq) = batch.padded(self.pad_id);
        let shape = (batch.rows(), seq);
        let t = |v: Vec<u32>| Tensor::from_vec(v, shape, &Device::Cpu);
        let (ids, types, mask) = (t(ids)?, t(types)?, t(mask)?);
        let states = self.model.forward(&ids, &types, &mask, mode)?;
        let skips: Vec<usize> = (0..batch.rows()).map(|r| batch.skip(r)).collect();
        Ok(pool(&states, &batch.lens, &skips, self.pooling)?)
    }
}

impl EmbedBackend for CandleBackend {
    fn dim(&self) -> usize {
        self.model.config.hidden_size
    }

    fn embed(&self, batch: &Batch) -> Result<Vec<f32>, BackendError> {
        let pooled = self.forward_pooled(batch, &mut Mode::Eval)?;
        Ok(pooled.flatten_all()?.to_vec1::<f32>()?)
    }

    fn describe(&self) -> String {
        format!("candle reference ({})", self.model.config.arch.name())
    }
}

/// sentence-transformers' pooling of token states (b, s, h) over each row's first `lens[r]`
/// tokens after its first `skips[r]`, as candle operations -> (b, h).
pub fn pool(
    states: &Tensor,
    lens: &[usize],
    skips: &[usize],
    pooling: Pooling,
) -> candle_core::Result<Tensor> {
    let (b, s, h) = states.dims3()?;
    let dev = states.device();
    let row = |r: usize, t: usize| states.narrow(0, r, 1)?.narrow(1, t, 1)?.reshape(h);
    match pooling {
        Pooling::Cls | Pooling::LastToken => {
            let rows = (0..b)
                .map(|r| {
                    let (len, skip) = (lens[r], skips[r]);
                    match (pooling, len) {
                        (_, 0) => Tensor::zeros(h, DType::F32, dev),
                        (Pooling::Cls, _) => row(r, if skip < len { skip } else { 0 }),
                        (_, _) if skip >= len => Tensor::zeros(h, DType::F32, dev),
                        _ => row(r, len - 1),
                    }
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::stack(&rows, 0)
        }
        Pooling::Mean | Pooling::MeanSqrtLen | Pooling::WeightedMean | Pooling::Max => {
            let mut weights = vec![0f32; b * s];
            for r in 0..b {
                for t in skips[r].min(lens[r])..lens[r] {
                    weights[r * s + t] = if pooling == Pooling::WeightedMean {
                        (t + 1) as f32
                    } else {
                        1.0
                    };
                }
            }
            let w = Tensor::from_vec(weights, (b, s, 1), dev)?;
            if pooling == Pooling::Max {
                // Left-out tokens get -1e9 so they never win, as sentence-transformers' -inf.
                let on = w.ne(0f32)?.to_dtype(DType::F32)?;
                let penalty = ((on - 1.0)? * 1e9)?;
                return states.broadcast_add(&penalty)?.max(1);
            }
            let sum = states.broadcast_mul(&w)?.sum(1)?; // (b, h)
            let total = w.sum(1)?.clamp(1e-9, f64::MAX)?; // (b, 1)
            let total = if pooling == Pooling::MeanSqrtLen {
                total.sqrt()?
            } else {
                total
            };
            sum.broadcast_div(&total)
        }
    }
}
