//! One training step: the batches' texts, the two forward passes on a [`TrainBackend`], the
//! loss on a small candle graph over the pooled vectors (whose autograd gives d(pooled)), the
//! backward passes into the gradients, and gradient clipping.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;

use std::collections::HashMap;

use super::weights::SeededDropout;
use super::{loss, no_duplicate_batches_of, shuffled_batches, LossKind, TrainConfig, TrainError};
use crate::core::backend::{DropoutRng, Gradients, TrainBackend};
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

/// A query, its positive and its negatives: one example of mnrl or triplet.
struct Example<'a> {
    query: &'a str,
    pos: &'a str,
    negatives: Vec<&'a str>,
}

/// The examples of a training set: one per triplet, or, with `max_negatives` > 1, rows sharing a
/// query and positive joined into examples of up to `max_negatives` distinct negatives (in file
/// order; a group with more starts another example, so no row is left out).
fn examples(train: &[Triplet], max_negatives: usize) -> Vec<Example<'_>> {
    if max_negatives <= 1 {
        return train
            .iter()
            .map(|t| Example {
                query: &t.query,
                pos: &t.pos,
                negatives: vec![&t.negative],
            })
            .collect();
    }
    let mut groups: Vec<Example> = Vec::new();
    let mut open: HashMap<(&str, &str), usize> = HashMap::new();
    for t in train {
        let key = (t.query.as_str(), t.pos.as_str());
        let at = open.get(&key).copied().filter(|&g| {
            groups[g].negatives.len() < max_negatives
                && !groups[g].negatives.contains(&t.negative.as_str())
        });
        match at {
            Some(g) => groups[g].negatives.push(&t.negative),
            None => {
                open.insert(key, groups.len());
                groups.push(Example {
                    query: &t.query,
                    pos: &t.pos,
                    negatives: vec![&t.negative],
                });
            }
        }
    }
    groups
}

/// Every batch of the run, epoch after epoch, shuffled with the configuration's seed.
pub(super) fn plan_batches<'a>(train: &'a [Triplet], cfg: &TrainConfig) -> Vec<TextBatch<'a>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut out = Vec::new();
    let examples = examples(train, cfg.max_negatives);
    for _ in 0..cfg.epochs {
        match cfg.loss {
            LossKind::Mnrl | LossKind::Triplet => {
                let batches = if cfg.loss == LossKind::Mnrl {
                    let texts: Vec<Vec<&str>> = examples
                        .iter()
                        .map(|e| {
                            [e.query, e.pos]
                                .into_iter()
                                .chain(e.negatives.iter().copied())
                                .collect()
                        })
                        .collect();
                    no_duplicate_batches_of(&texts, cfg.batch_size, &mut rng)
                } else {
                    shuffled_batches(examples.len(), cfg.batch_size, &mut rng)
                };
                out.extend(batches.into_iter().map(|b| {
                    TextBatch {
                        anchors: b.iter().map(|&i| examples[i].query).collect(),
                        others: b.iter().map(|&i| examples[i].pos).collect(),
                        negatives: b
                            .iter()
                            .flat_map(|&i| examples[i].negatives.iter().copied())
                            .collect(),
                        labels: Vec::new(),
                    }
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
            // Positives, then every negative of the batch (one per anchor for triplet; any
            // number for mnrl, all of them candidates for every anchor).
            let n = batch.others.len();
            let (p, neg) = (d.narrow(0, 0, n)?, d.narrow(0, n, d.dim(0)? - n)?);
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
fn batch_columns<'a>(batch: &TextBatch<'a>) -> [(Vec<&'a str>, Role); 2] {
    let docs: Vec<&str> = batch
        .others
        .iter()
        .chain(&batch.negatives)
        .copied()
        .collect();
    [(batch.anchors.clone(), Role::Query), (docs, Role::Document)]
}

/// What one step's forward and backward passes produced.
pub(super) struct StepResult {
    pub(super) loss: f64,
    /// Seconds spent in the forward passes and the loss.
    pub(super) forward_secs: f64,
}

/// Forward passes, loss and backward passes of one batch; the gradients are added to `grads`.
/// A non-finite loss returns before the backward pass. With `cfg.mini_batch`, the batch goes
/// through GradCache instead ([`cached_forward_backward`]).
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
    if let Some(mini) = cfg.mini_batch {
        return cached_forward_backward(model, enc, batch, cfg, rng, &mut tapes[0], grads, mini);
    }
    let start = Instant::now();
    let columns = batch_columns(batch);
    let h = model.dim();
    let mut pooled = Vec::with_capacity(2);
    for ((texts, role), tape) in columns.iter().zip(tapes.iter_mut()) {
        let b = enc.prepare(texts, *role)?;
        let v = model.forward_train(&b, rng, tape)?;
        pooled.push(Var::from_vec(v, (b.rows(), h), &Device::Cpu)?);
    }
    let loss = loss_of_pooled(&pooled, enc, batch, cfg)?;
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

/// The loss of the pooled vectors of a batch's two columns (anchors, then the other texts),
/// normalised as the model outputs them, with MatryoshkaLoss around it when configured.
fn loss_of_pooled(
    pooled: &[Var],
    enc: &Encoder,
    batch: &TextBatch,
    cfg: &TrainConfig,
) -> Result<Tensor, TrainError> {
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
    if cfg.matryoshka_dims.is_empty() {
        return loss_of(&outs, batch, cfg);
    }
    // MatryoshkaLoss: the same loss on the vectors truncated to each dimension (not normalised
    // again: the losses that need unit vectors normalise them), summed.
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
    total.ok_or_else(|| TrainError::InvalidConfig("no Matryoshka dimension".into()))
}

/// GradCache (sentence-transformers' CachedMultipleNegativesRankingLoss, Gao et al. 2021): every
/// text of the batch is embedded in mini-batches of `mini` texts, keeping only the pooled
/// vectors; the loss over the whole batch gives d(pooled); then each mini-batch's forward pass
/// is replayed with the same dropout masks and its backward pass run from its rows of
/// d(pooled). The gradients equal the plain step's while the activations held at once are
/// those of one mini-batch, so the batch (and its in-batch negatives) can be as large as
/// wanted. A replay that differs from the first pass is an error, not a silent wrong gradient.
#[allow(clippy::too_many_arguments)]
fn cached_forward_backward<B: TrainBackend>(
    model: &B,
    enc: &Encoder,
    batch: &TextBatch,
    cfg: &TrainConfig,
    rng: &mut dyn DropoutRng,
    tape: &mut B::Tape,
    grads: &mut Gradients,
    mini: usize,
) -> Result<StepResult, TrainError> {
    let start = Instant::now();
    let mini = mini.max(1);
    let columns = batch_columns(batch);
    let h = model.dim();
    let mut seeds: Vec<u64> = Vec::new();
    let mut pooled = Vec::with_capacity(2);
    for (texts, role) in &columns {
        let mut all = Vec::with_capacity(texts.len() * h);
        for chunk in texts.chunks(mini) {
            let seed = rng.next_seed();
            seeds.push(seed);
            let b = enc.prepare(chunk, *role)?;
            all.extend(model.forward_train(&b, &mut SeededDropout::from_seed(seed), tape)?);
        }
        pooled.push(Var::from_vec(all, (texts.len(), h), &Device::Cpu)?);
    }
    let loss = loss_of_pooled(&pooled, enc, batch, cfg)?;
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let forward_secs = start.elapsed().as_secs_f64();
    if !value.is_finite() {
        return Ok(StepResult {
            loss: value,
            forward_secs,
        });
    }
    let g = loss.backward()?;
    let mut seeds = seeds.into_iter();
    for ((texts, role), var) in columns.iter().zip(&pooled) {
        let Some(d) = g.get(var.as_tensor()) else {
            seeds
                .by_ref()
                .take(texts.len().div_ceil(mini))
                .for_each(drop);
            continue;
        };
        let d = d.flatten_all()?.to_vec1::<f32>()?;
        let first = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        for (c, chunk) in texts.chunks(mini).enumerate() {
            let seed = seeds.next().ok_or_else(|| {
                TrainError::InvalidConfig("GradCache lost track of a mini-batch".into())
            })?;
            let b = enc.prepare(chunk, *role)?;
            let again = model.forward_train(&b, &mut SeededDropout::from_seed(seed), tape)?;
            let rows = c * mini * h..(c * mini + chunk.len()) * h;
            let drift = again
                .iter()
                .zip(&first[rows.clone()])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            if drift > 1e-4 {
                return Err(TrainError::InvalidConfig(format!(
                    "GradCache: replaying a mini-batch gave vectors {drift:.2e} away from its first \
                     pass (the forward pass is not deterministic); train without --mini-batch"
                )));
            }
            model.backward(tape, &d[rows], grads)?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::backend::{Compute, EmbedBackend};
    use crate::core::encoder::{EncoderOptions, PromptChoice};
    use crate::core::model::tiny::{write_tiny_bert, TinySpec};
    use crate::core::model::{Checkpoint, ModelFolder};
    use crate::core::train::Trainable;

    fn t(q: &str, p: &str, n: &str) -> Triplet {
        Triplet {
            query: q.into(),
            pos: p.into(),
            negative: n.into(),
        }
    }

    #[test]
    fn clipping_scales_the_global_norm_down_to_the_maximum() {
        let grads = vec![vec![3.0f32, 0.0], vec![4.0]];
        let (norm, scale) = clip_gradients(&grads, 1.0);
        assert!((norm - 5.0).abs() < 1e-12);
        assert!(
            (scale - 1.0 / (5.0 + 1e-6)).abs() < 1e-12,
            "torch's max_norm / (norm + 1e-6)"
        );
        assert_eq!(
            clip_gradients(&grads, 10.0).1,
            1.0,
            "under the maximum: unchanged"
        );
        let (nan_norm, nan_scale) = clip_gradients(&[vec![f32::NAN]], 1.0);
        assert!(nan_norm.is_nan() && nan_scale == 1.0);
    }

    #[test]
    fn rows_of_one_query_and_positive_become_one_example() {
        let rows = [
            t("q", "p", "a"),
            t("r", "p", "x"),
            t("q", "p", "b"),
            t("q", "p", "a"),
            t("q", "p", "c"),
            t("q", "other", "d"),
        ];
        let got: Vec<(&str, &str, Vec<&str>)> = examples(&rows, 2)
            .into_iter()
            .map(|e| (e.query, e.pos, e.negatives))
            .collect();
        assert_eq!(
            got,
            [
                ("q", "p", vec!["a", "b"]),
                ("r", "p", vec!["x"]),
                ("q", "p", vec!["a", "c"]),
                ("q", "other", vec!["d"]),
            ],
            "up to 2 distinct negatives per example, the rest in another, nothing lost"
        );
        assert_eq!(examples(&rows, 1).len(), rows.len());
        let cfg = TrainConfig {
            max_negatives: 3,
            batch_size: 4,
            ..TrainConfig::default()
        };
        let batches = plan_batches(&rows, &cfg);
        let negatives: usize = batches.iter().map(|b| b.negatives.len()).sum();
        assert_eq!(
            negatives,
            rows.len(),
            "every row's negative trained on once"
        );
        for b in &batches {
            let mut seen = std::collections::HashSet::new();
            for text in b.anchors.iter().chain(&b.others).chain(&b.negatives) {
                assert!(seen.insert(text), "{text} twice in one batch");
            }
        }
    }

    /// A tiny model (dropout `dropout`), an encoder over its trainable weights, and a batch of
    /// four anchors with seven negatives among them.
    fn setup(dropout: f64) -> (Trainable, Encoder, TextBatch<'static>) {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), &TinySpec::default()).unwrap();
        let mut folder = ModelFolder::open(dir.path(), "tiny").unwrap();
        folder.config.hidden_dropout_prob = dropout;
        folder.config.attention_probs_dropout_prob = dropout;
        let ck = Checkpoint::read(&folder).unwrap();
        let weights = Trainable::new(&folder, &ck, Compute::F32).unwrap();
        let backend: Arc<dyn EmbedBackend> = weights.model();
        let opts = EncoderOptions {
            max_seq_len: Some(32),
            prompts: PromptChoice::None,
            ..Default::default()
        };
        let enc = Encoder::from_backend(folder, backend, "t".into(), "t".into(), &opts).unwrap();
        let batch = TextBatch {
            anchors: vec![
                "rotor blade",
                "battery cathode",
                "wireless packet",
                "solar cell",
            ],
            others: vec![
                "a rotor blade of a turbine",
                "a lithium battery cathode",
                "packets sent without wires",
                "a panel of solar cells",
            ],
            negatives: vec![
                "a bicycle frame",
                "an engine valve",
                "a printer cartridge",
                "an antibody dose",
                "a carbon frame",
                "a piston ring",
                "a wind vane",
            ],
            labels: Vec::new(),
        };
        (weights, enc, batch)
    }

    /// The loss and gradients of one real training step (forward_backward).
    fn real_step(
        weights: &Trainable,
        enc: &Encoder,
        batch: &TextBatch,
        cfg: &TrainConfig,
    ) -> Result<(f64, Vec<Vec<f32>>), TrainError> {
        let model = weights.model();
        let mut grads = model.new_gradients();
        let mut tapes = Default::default();
        let r = forward_backward(
            model.as_ref(),
            enc,
            batch,
            cfg,
            &mut SeededDropout::from_seed(3),
            &mut tapes,
            &mut grads,
        )?;
        Ok((r.loss, grads.t))
    }

    /// The gradients of one mnrl step with several negatives per anchor, plain and through
    /// GradCache with mini-batches of `mini` texts.
    fn step_gradients(
        dropout: f64,
        mini: Option<usize>,
    ) -> Result<(f64, Vec<Vec<f32>>), TrainError> {
        let (weights, enc, batch) = setup(dropout);
        let cfg = TrainConfig {
            mini_batch: mini,
            ..TrainConfig::default()
        };
        real_step(&weights, &enc, &batch, &cfg)
    }

    #[test]
    fn the_real_step_gradients_match_finite_differences() {
        use candle_core::{Device, Tensor};
        let (weights, enc, batch) = setup(0.0);
        for cfg in [
            TrainConfig::default(),
            TrainConfig {
                matryoshka_dims: vec![32, 16, 8],
                ..TrainConfig::default()
            },
        ] {
            let (_, grads) = real_step(&weights, &enc, &batch, &cfg).unwrap();
            let vars = weights.vars();
            for (name, idx) in [
                ("encoder.layer.0.attention.self.key.weight", 9usize),
                ("encoder.layer.1.intermediate.dense.bias", 4),
                ("embeddings.word_embeddings.weight", 32 * 20 + 3),
                ("encoder.layer.1.output.LayerNorm.weight", 2),
            ] {
                let at = vars.iter().position(|(n, _)| n == name).unwrap();
                let v = &vars[at].1;
                let analytic = f64::from(grads[at][idx]);
                let original = v
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let shape = v.as_tensor().shape().clone();
                let loss_at = |delta: f32| -> f64 {
                    let mut w = original.clone();
                    w[idx] += delta;
                    v.set(&Tensor::from_vec(w, shape.clone(), &Device::Cpu).unwrap())
                        .unwrap();
                    real_step(&weights, &enc, &batch, &cfg).unwrap().0
                };
                let h = 1e-2f32;
                let numeric = (loss_at(h) - loss_at(-h)) / (2.0 * f64::from(h));
                v.set(&Tensor::from_vec(original, shape, &Device::Cpu).unwrap())
                    .unwrap();
                assert!(
                    (numeric - analytic).abs() <= 2e-2 * numeric.abs().max(0.05),
                    "{name}[{idx}] (Matryoshka {:?}): analytic {analytic} vs numeric {numeric}",
                    cfg.matryoshka_dims
                );
            }
        }
    }

    #[test]
    fn gradcache_gives_the_gradients_of_the_plain_step() {
        let (loss, plain) = step_gradients(0.0, None).unwrap();
        for mini in [1, 3, 64] {
            let (cached_loss, cached) = step_gradients(0.0, Some(mini)).unwrap();
            assert!(
                (loss - cached_loss).abs() < 1e-6,
                "loss {loss} vs {cached_loss}"
            );
            let scale = plain.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
            let worst = plain
                .iter()
                .flatten()
                .zip(cached.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                scale > 0.0 && worst <= 1e-4 * scale,
                "mini {mini}: {worst} vs {scale}"
            );
        }
        // With dropout, each replay must draw the masks of its first pass (else the step errs).
        let (dropped, _) = step_gradients(0.1, Some(3)).unwrap();
        assert!(
            dropped.is_finite() && (dropped - loss).abs() > 1e-6,
            "dropout was applied"
        );
    }
}
