//! One training step: the batches' texts, the two forward passes on a [`TrainBackend`], the
//! loss on a small candle graph over the pooled vectors (whose autograd gives d(pooled)), the
//! backward passes into the gradients, and gradient clipping.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;

use super::{loss, no_duplicate_batches, shuffled_batches, LossKind, TrainConfig, TrainError};
use crate::core::backend::{self, DropoutRng, Gradients, TrainBackend};
use crate::core::data::Triplet;
use crate::core::encoder::{Encoder, Role};

/// One batch: the texts of each column and, for contrastive pairs, the labels.
pub(super) struct TextBatch<'a> {
    pub(super) anchors: Vec<&'a str>,
    /// Positives (mnrl, triplet) or the pair's other text (contrastive).
    pub(super) others: Vec<&'a str>,
    pub(super) negatives: Vec<&'a str>,
    labels: Vec<f32>,
}

impl TextBatch<'_> {
    /// Texts through the model in this batch.
    pub(super) fn texts(&self) -> usize {
        self.anchors.len() + self.others.len() + self.negatives.len()
    }
}

/// Every batch of the run, epoch after epoch, shuffled with the configuration's seed.
pub(super) fn plan_batches<'a>(train: &'a [Triplet], cfg: &TrainConfig) -> Vec<TextBatch<'a>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut out = Vec::new();
    for _ in 0..cfg.epochs {
        match cfg.loss {
            LossKind::Mnrl | LossKind::Triplet => {
                let batches = if cfg.loss == LossKind::Mnrl {
                    no_duplicate_batches(train, cfg.batch_size, &mut rng)
                } else {
                    shuffled_batches(train.len(), cfg.batch_size, &mut rng)
                };
                out.extend(batches.into_iter().map(|b| TextBatch {
                    anchors: b.iter().map(|&i| train[i].query.as_str()).collect(),
                    others: b.iter().map(|&i| train[i].pos.as_str()).collect(),
                    negatives: b.iter().map(|&i| train[i].negative.as_str()).collect(),
                    labels: Vec::new(),
                }));
            }
            LossKind::Contrastive => {
                // Pairs (q, pos, 1) and (q, negative, 0), as the notebook builds them.
                let pairs: Vec<(&str, &str, f32)> = train
                    .iter()
                    .flat_map(|t| {
                        [
                            (t.query.as_str(), t.pos.as_str(), 1.0),
                            (t.query.as_str(), t.negative.as_str(), 0.0),
                        ]
                    })
                    .collect();
                for b in shuffled_batches(pairs.len(), cfg.batch_size, &mut rng) {
                    out.push(TextBatch {
                        anchors: b.iter().map(|&i| pairs[i].0).collect(),
                        others: b.iter().map(|&i| pairs[i].1).collect(),
                        negatives: Vec::new(),
                        labels: b.iter().map(|&i| pairs[i].2).collect(),
                    });
                }
            }
        }
    }
    out
}

/// The loss of a batch's pooled (and, as the model outputs them, normalised) vectors: one tensor
/// per forward pass (anchors, then the other texts).
fn loss_of(outs: &[Tensor], batch: &TextBatch, cfg: &TrainConfig) -> Result<Tensor, TrainError> {
    let [a, d] = outs else {
        return Err(TrainError::InvalidConfig(
            "a batch has two forward passes".into(),
        ));
    };
    Ok(match cfg.loss {
        LossKind::Contrastive => {
            let labels = Tensor::new(batch.labels.as_slice(), &Device::Cpu)?;
            loss::contrastive(a, d, &labels, cfg.contrastive_margin)?
        }
        LossKind::Mnrl | LossKind::Triplet => {
            let n = batch.others.len();
            let (p, neg) = (d.narrow(0, 0, n)?, d.narrow(0, n, n)?);
            if cfg.loss == LossKind::Mnrl {
                loss::mnrl(a, &p, Some(&neg), cfg.mnrl_scale)?
            } else {
                loss::triplet(a, &p, &neg, cfg.triplet_margin)?
            }
        }
    })
}

/// The two forward passes of a batch: anchors (as queries), and the other texts as documents
/// (positives and negatives in one pass: they have similar lengths).
fn batch_inputs(enc: &Encoder, batch: &TextBatch) -> Result<[backend::Batch; 2], TrainError> {
    let docs: Vec<&str> = batch
        .others
        .iter()
        .chain(&batch.negatives)
        .copied()
        .collect();
    Ok([
        enc.prepare(&batch.anchors, Role::Query)?,
        enc.prepare(&docs, Role::Document)?,
    ])
}

/// What one step's forward and backward passes produced.
pub(super) struct StepResult {
    pub(super) loss: f64,
    /// Seconds spent in the forward passes and the loss.
    pub(super) forward_secs: f64,
}

/// Forward passes, loss and backward passes of one batch; the gradients are added to `grads`.
/// A non-finite loss returns before the backward pass.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_backward<B: TrainBackend>(
    model: &B,
    enc: &Encoder,
    batch: &TextBatch,
    cfg: &TrainConfig,
    rng: &mut dyn DropoutRng,
    tapes: &mut [B::Tape; 2],
    grads: &mut Gradients,
) -> Result<StepResult, TrainError> {
    let start = Instant::now();
    let inputs = batch_inputs(enc, batch)?;
    let h = model.dim();
    let mut pooled = Vec::with_capacity(2);
    for (b, tape) in inputs.iter().zip(tapes.iter_mut()) {
        let v = model.forward_train(b, rng, tape)?;
        pooled.push(Var::from_vec(v, (b.rows(), h), &Device::Cpu)?);
    }
    let outs = pooled
        .iter()
        .map(|v| {
            if enc.normalize {
                loss::l2_normalize(v.as_tensor())
            } else {
                Ok(v.as_tensor().clone())
            }
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let loss = if cfg.matryoshka_dims.is_empty() {
        loss_of(&outs, batch, cfg)?
    } else {
        // MatryoshkaLoss: the same loss on the vectors truncated to each dimension (not
        // normalised again: the losses that need unit vectors normalise them), summed.
        let mut total: Option<Tensor> = None;
        for &d in &cfg.matryoshka_dims {
            let cut = outs
                .iter()
                .map(|t| t.narrow(1, 0, d))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let l = loss_of(&cut, batch, cfg)?;
            total = Some(match total {
                Some(t) => (t + l)?,
                None => l,
            });
        }
        total.expect("at least one dimension")
    };
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let forward_secs = start.elapsed().as_secs_f64();
    if value.is_finite() {
        let g = loss.backward()?;
        for (tape, var) in tapes.iter_mut().zip(&pooled).rev() {
            let d = match g.get(var.as_tensor()) {
                Some(d) => d.flatten_all()?.to_vec1::<f32>()?,
                None => continue,
            };
            model.backward(tape, &d, grads)?;
        }
    }
    Ok(StepResult {
        loss: value,
        forward_secs,
    })
}

/// The global gradient norm, and the factor that scales the gradients to a norm of at most
/// `max_norm` (torch's clip_grad_norm_; 1 when no clipping is needed). The optimizer applies the
/// factor as it reads the gradients.
pub(super) fn clip_gradients(grads: &[Vec<f32>], max_norm: f64) -> (f64, f64) {
    use rayon::prelude::*;
    let total: f64 = grads
        .par_iter()
        .flat_map(|g| g.par_chunks(1 << 14))
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .sum();
    let norm = total.sqrt();
    let scale = max_norm / (norm + 1e-6);
    (
        norm,
        if norm.is_finite() && scale < 1.0 {
            scale
        } else {
            1.0
        },
    )
}
