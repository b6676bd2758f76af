//! Fine-tuning on a [`TrainBackend`] (the CPU engine over the model's parameters as variables):
//! sentence-transformers' losses, AdamW with linear warm-up and decay, gradient clipping, seeded
//! dropout, validation before/during/after training, the best checkpoint by validation nDCG@10,
//! and events for the GUI and CLI. Cancel and non-finite losses stop cleanly.

pub mod loss;
mod optim;
mod sampler;
mod step;
mod weights;

pub use sampler::{
    linear_lr, no_duplicate_batches, no_duplicate_batches_of, shuffled_batches, split_by_query,
    split_rows_by_query,
};
pub use weights::Trainable;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use rand::SeedableRng;

use crate::core::backend::{BackendError, Compute, TrainBackend};
use crate::core::data::Triplet;
use crate::core::encoder::{embed_triplets, EncodeError, Encoder, EncoderOptions, PromptChoice};
use crate::core::jobs::{JobCtx, StageClock};
use crate::core::metrics::{evaluate, RetrievalIndex};
use crate::core::model::{Checkpoint, ModelFolder};
use step::{clip_gradients, forward_backward, plan_batches};
use weights::SeededDropout;

/// Which loss to train with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// MultipleNegativesRankingLoss (in-batch negatives plus the hard negative), scale 20.
    Mnrl,
    /// ContrastiveLoss on pairs (q, pos, 1) and (q, negative, 0), cosine distance, margin 0.5.
    Contrastive,
    /// TripletLoss, Euclidean distance, margin 5.
    Triplet,
}

impl LossKind {
    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            LossKind::Mnrl => "mnrl",
            LossKind::Contrastive => "contrastive",
            LossKind::Triplet => "triplet",
        }
    }
}

/// Every training setting; the defaults are sentence-transformers'.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainConfig {
    /// The loss.
    pub loss: LossKind,
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per step: triplets (mnrl, triplet) or pairs (contrastive).
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Share of the steps spent warming up (rounded up).
    pub warmup_ratio: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Gradients are scaled down to at most this global L2 norm.
    pub max_grad_norm: f64,
    /// Tokens per text in training.
    pub max_seq_len: usize,
    /// Tokens per text in validation (`None`: the folder's own max length).
    pub eval_max_seq_len: Option<usize>,
    /// Texts per batch in validation.
    pub eval_batch_size: usize,
    /// Evaluate every N steps (`None`: about five times per run; `Some(0)`: only before and after).
    pub eval_steps: Option<usize>,
    /// Seed of shuffling, the validation split and dropout.
    pub seed: u64,
    /// Share of distinct queries held out when no validation file is given.
    pub val_split: f64,
    /// Prompts used in training and validation.
    #[serde(skip)]
    pub prompts: PromptChoice,
    /// MNRL similarity scale.
    pub mnrl_scale: f64,
    /// ContrastiveLoss margin.
    pub contrastive_margin: f64,
    /// TripletLoss margin.
    pub triplet_margin: f64,
    /// Matryoshka dimensions (sentence-transformers' MatryoshkaLoss around the loss: the loss of
    /// the vectors truncated to each dimension, summed with equal weights); empty: off.
    pub matryoshka_dims: Vec<usize>,
    /// Negatives per mnrl example: 1 trains on each row as it is; more joins the rows that share
    /// a query and positive (as `tripletlab mine` writes them) into one example with up to this
    /// many negatives, all of them candidates for every anchor of the batch.
    pub max_negatives: usize,
    /// GradCache: embed the batch in mini-batches of this many texts and replay each for its
    /// backward pass (sentence-transformers' CachedMultipleNegativesRankingLoss), so memory
    /// follows the mini-batch, not the batch; `None`: one pass per column.
    pub mini_batch: Option<usize>,
    /// The dense products' arithmetic: f32, or bf16 mixed precision (f32 master weights,
    /// gradients and optimizer state; bf16 inputs to every dense product, forward and backward).
    pub compute: Compute,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            loss: LossKind::Mnrl,
            epochs: 1,
            batch_size: 16,
            lr: 2e-5,
            warmup_ratio: 0.1,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            max_seq_len: 128,
            eval_max_seq_len: None,
            eval_batch_size: 32,
            eval_steps: None,
            seed: 42,
            val_split: 0.2,
            prompts: PromptChoice::Auto,
            mnrl_scale: 20.0,
            contrastive_margin: 0.5,
            triplet_margin: 5.0,
            matryoshka_dims: Vec::new(),
            max_negatives: 1,
            mini_batch: None,
            compute: Compute::F32,
        }
    }
}

/// One optimisation step.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepPoint {
    /// 1-based step.
    pub step: usize,
    /// Fractional epoch at the end of the step.
    pub epoch: f64,
    /// Training loss of the batch.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Texts through the model per second in this step.
    pub texts_per_sec: f64,
    /// Seconds this step took.
    pub step_secs: f64,
    /// Of which: forward pass and loss, backward pass, clipping and the optimizer update.
    pub phase_secs: [f64; 3],
}

/// One validation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalPoint {
    /// Steps done when it was measured (0 = zero-shot).
    pub step: usize,
    /// Metric key -> value on the validation set.
    pub metrics: BTreeMap<String, f64>,
}

/// What a training job reports as it goes.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// The run is planned.
    Started {
        /// Steps in all.
        total_steps: usize,
        /// Warm-up steps.
        warmup_steps: usize,
        /// Training triplets.
        train_triplets: usize,
        /// Validation triplets.
        val_triplets: usize,
    },
    /// A step finished.
    Step(StepPoint),
    /// A validation finished.
    Eval(EvalPoint),
}

/// Warm-up steps of a run of `total` steps.
pub fn warmup_steps(total: usize, ratio: f64) -> usize {
    (ratio * total as f64).ceil() as usize
}

/// Steps between validations: five in a run by default, none with `Some(0)`.
pub fn eval_every(total_steps: usize, eval_steps: Option<usize>) -> usize {
    match eval_steps {
        None => total_steps.div_ceil(5).max(1),
        Some(0) => usize::MAX,
        Some(n) => n,
    }
}

/// Whether a run of `total_steps` validates after step `step` (1-based): every `every` steps
/// ([`eval_every`]) and after the last.
pub fn validates_after(step: usize, total_steps: usize, every: usize) -> bool {
    step == total_steps || step.is_multiple_of(every)
}

/// Validations a run makes: the base model's, then every `eval_every` steps and at the end.
pub fn planned_validations(total_steps: usize, eval_steps: Option<usize>) -> usize {
    let every = eval_every(total_steps, eval_steps);
    1 + (1..=total_steps)
        .filter(|&i| validates_after(i, total_steps, every))
        .count()
}

/// Steps a run on these training triplets would take (the batches the trainer plans).
pub fn planned_steps(train: &[Triplet], cfg: &TrainConfig) -> usize {
    plan_batches(train, cfg).len()
}

/// Why training stopped.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopReason {
    /// All steps ran.
    Completed,
    /// The user cancelled; the best checkpoint so far is kept.
    Cancelled {
        /// Steps done.
        after_step: usize,
    },
    /// The loss (or the gradient) became NaN or infinite; the last good weights are kept.
    NonFiniteLoss {
        /// The step whose loss was not finite (its update was not applied).
        step: usize,
    },
}

/// The result of a run.
#[derive(Debug)]
pub struct TrainOutcome {
    /// Why it stopped.
    pub stop: StopReason,
    /// Steps planned.
    pub total_steps: usize,
    /// Every step.
    pub steps: Vec<StepPoint>,
    /// Every validation, the zero-shot one first.
    pub evals: Vec<EvalPoint>,
    /// The step of the best validation nDCG@10 (0 = the zero-shot model).
    pub best_step: usize,
    /// The best weights, by the encoder's tensor names (no `bert.` prefix).
    pub best_weights: HashMap<String, Tensor>,
    /// Training triplets used.
    pub train_triplets: usize,
    /// Validation triplets used.
    pub val_triplets: usize,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
}

impl TrainOutcome {
    /// The zero-shot validation.
    pub fn zero_shot(&self) -> &EvalPoint {
        &self.evals[0]
    }
    /// The validation of the best checkpoint.
    pub fn best(&self) -> &EvalPoint {
        self.evals
            .iter()
            .find(|e| e.step == self.best_step)
            .unwrap_or(&self.evals[0])
    }
}

/// Why training could not run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Loading, tokenizing or embedding failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A tensor operation failed.
    #[error("training computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    /// The backend failed on a batch.
    #[error("training computation failed: {0}")]
    Backend(#[from] BackendError),
    /// A setting is out of range.
    #[error("{0}")]
    InvalidConfig(String),
}

/// Metric that picks the best checkpoint.
pub const BEST_METRIC: &str = "cosine_ndcg@10";

/// Validation metrics of the current weights.
fn validate(
    enc: &Encoder,
    val: &[Triplet],
    ctx: &JobCtx<TrainEvent>,
) -> Result<BTreeMap<String, f64>, EncodeError> {
    let emb = ctx.run_without_points(|c| embed_triplets(enc, val, None, c))?;
    Ok(evaluate(&RetrievalIndex::build(
        val,
        &emb.queries,
        &emb.positives,
        &emb.negatives,
    ))
    .metrics)
}

/// Trains on `train`, validating on `val`. Never returns an error for a cancel or a non-finite
/// loss: the outcome says why it stopped and holds the best weights.
pub fn train(
    folder: &ModelFolder,
    checkpoint: &Checkpoint,
    train: &[Triplet],
    val: &[Triplet],
    cfg: &TrainConfig,
    ctx: &JobCtx<TrainEvent>,
) -> Result<TrainOutcome, TrainError> {
    let started = Instant::now();
    if train.is_empty() || val.is_empty() {
        return Err(TrainError::InvalidConfig(format!(
            "training needs triplets to train on and to validate on (got {} and {})",
            train.len(),
            val.len()
        )));
    }
    if let Some(&d) = cfg
        .matryoshka_dims
        .iter()
        .find(|&&d| d == 0 || d > folder.config.hidden_size)
    {
        return Err(TrainError::InvalidConfig(format!(
            "Matryoshka dimension {d} must be between 1 and the model's {}",
            folder.config.hidden_size
        )));
    }
    if cfg.max_negatives > 1 && cfg.loss != LossKind::Mnrl {
        return Err(TrainError::InvalidConfig(format!(
            "several negatives per example ({}) need the mnrl loss, not {}",
            cfg.max_negatives,
            cfg.loss.name()
        )));
    }
    if cfg.mini_batch == Some(0) {
        return Err(TrainError::InvalidConfig(
            "the GradCache mini-batch must hold at least one text".into(),
        ));
    }
    if cfg.batch_size < 2 && cfg.loss == LossKind::Mnrl {
        return Err(TrainError::InvalidConfig(
            "mnrl needs a batch size of at least 2".into(),
        ));
    }
    if cfg.epochs == 0
        || cfg.lr.is_nan()
        || cfg.lr <= 0.0
        || !(0.0..1.0).contains(&cfg.warmup_ratio)
    {
        return Err(TrainError::InvalidConfig(
            "epochs must be at least 1, lr positive and warmup_ratio in [0, 1)".into(),
        ));
    }
    let weights = Trainable::new(folder, checkpoint, cfg.compute)?;
    let model = weights.model();
    let label = folder.root.display().to_string();
    let train_opts = EncoderOptions {
        max_seq_len: Some(cfg.max_seq_len),
        batch_size: cfg.batch_size,
        prompts: cfg.prompts.clone(),
        truncate_dim: None,
        compute: cfg.compute,
    };
    let eval_opts = EncoderOptions {
        max_seq_len: cfg.eval_max_seq_len,
        batch_size: cfg.eval_batch_size,
        prompts: cfg.prompts.clone(),
        truncate_dim: None,
        compute: cfg.compute,
    };
    let hash = checkpoint.weights_hash.clone();
    let encoder = |opts: &EncoderOptions| {
        let backend: Arc<dyn crate::core::backend::EmbedBackend> = model.clone();
        Encoder::from_backend(folder.clone(), backend, hash.clone(), label.clone(), opts)
    };
    let (train_enc, eval_enc) = (encoder(&train_opts)?, encoder(&eval_opts)?);

    let batches = plan_batches(train, cfg);
    let total_steps = batches.len();
    let warmup_steps = warmup_steps(total_steps, cfg.warmup_ratio);
    let eval_every = eval_every(total_steps, cfg.eval_steps);
    ctx.point(TrainEvent::Started {
        total_steps,
        warmup_steps,
        train_triplets: train.len(),
        val_triplets: val.len(),
    });

    let mut evals = Vec::new();
    let mut steps = Vec::new();
    let zero_shot = match validate(&eval_enc, val, ctx) {
        Ok(m) => m,
        Err(EncodeError::Cancelled) => {
            return Ok(TrainOutcome {
                stop: StopReason::Cancelled { after_step: 0 },
                total_steps,
                steps,
                evals: vec![EvalPoint {
                    step: 0,
                    metrics: BTreeMap::new(),
                }],
                best_step: 0,
                best_weights: weights.snapshot()?,
                train_triplets: train.len(),
                val_triplets: val.len(),
                seconds: started.elapsed().as_secs_f64(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let point = EvalPoint {
        step: 0,
        metrics: zero_shot,
    };
    ctx.point(TrainEvent::Eval(point.clone()));
    let mut best_score = point.metrics[BEST_METRIC];
    let mut best_step = 0;
    let mut best_weights = weights.snapshot()?;
    evals.push(point);

    // The engine reads the variables' current values in place at every pass.
    let vars: Vec<candle_core::Var> = weights.vars().iter().map(|(_, v)| v.clone()).collect();
    let mut grads = model.new_gradients();
    let mut tapes: [<crate::core::backend::cpu::CpuModel as TrainBackend>::Tape; 2] =
        Default::default();
    let params = optim::AdamWParams {
        lr: cfg.lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: cfg.weight_decay,
    };
    let mut opt = optim::AdamW::new(vars, params);
    let mut dropout = SeededDropout(rand::rngs::SmallRng::seed_from_u64(cfg.seed ^ 0x5eed));
    let clock = StageClock::start("training", "steps", total_steps);
    let mut stop = StopReason::Completed;
    let per_epoch = total_steps as f64 / cfg.epochs as f64;

    for (i, batch) in batches.iter().enumerate() {
        if ctx.is_cancelled() {
            stop = StopReason::Cancelled { after_step: i };
            break;
        }
        let step_start = Instant::now();
        let lr = linear_lr(i, total_steps, warmup_steps, cfg.lr);
        opt.set_learning_rate(lr);
        grads.zero();
        let result = forward_backward(
            model.as_ref(),
            &train_enc,
            batch,
            cfg,
            &mut dropout,
            &mut tapes,
            &mut grads,
        )?;
        if !result.loss.is_finite() {
            stop = StopReason::NonFiniteLoss { step: i + 1 };
            break;
        }
        let t_fwd = result.forward_secs;
        let t_bwd = step_start.elapsed().as_secs_f64();
        let (grad_norm, grad_scale) = clip_gradients(&grads.t, cfg.max_grad_norm);
        if !grad_norm.is_finite() {
            stop = StopReason::NonFiniteLoss { step: i + 1 };
            break;
        }
        opt.step(&grads.t, grad_scale)?;
        let loss_value = result.loss;
        let secs = step_start.elapsed().as_secs_f64();
        let texts = batch.texts();
        let point = StepPoint {
            step: i + 1,
            epoch: (i + 1) as f64 / per_epoch,
            loss: loss_value,
            lr,
            grad_norm,
            texts_per_sec: texts as f64 / secs,
            step_secs: secs,
            phase_secs: [t_fwd, t_bwd - t_fwd, secs - t_bwd],
        };
        ctx.point(TrainEvent::Step(point.clone()));
        steps.push(point);
        ctx.progress(clock.at(i + 1));

        if validates_after(i + 1, total_steps, eval_every) {
            match validate(&eval_enc, val, ctx) {
                Ok(metrics) => {
                    let point = EvalPoint {
                        step: i + 1,
                        metrics,
                    };
                    ctx.point(TrainEvent::Eval(point.clone()));
                    if point.metrics[BEST_METRIC] > best_score {
                        best_score = point.metrics[BEST_METRIC];
                        best_step = i + 1;
                        best_weights = weights.snapshot()?;
                    }
                    evals.push(point);
                }
                Err(EncodeError::Cancelled) => {
                    stop = StopReason::Cancelled { after_step: i + 1 };
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(TrainOutcome {
        stop,
        total_steps,
        steps,
        evals,
        best_step,
        best_weights,
        train_triplets: train.len(),
        val_triplets: val.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sentence-transformers' (transformers') rule: ceil(ratio × total).
    #[test]
    fn warm_up_is_the_ratio_of_the_steps_rounded_up() {
        assert_eq!(warmup_steps(32, 0.1), 4);
        assert_eq!(warmup_steps(100, 0.1), 10);
        assert_eq!(warmup_steps(7, 0.5), 4);
        assert_eq!(warmup_steps(10, 0.0), 0);
        assert_eq!(warmup_steps(0, 0.1), 0);
    }

    /// About five validations a run by default (plus the base model's), none between with
    /// `Some(0)`, the end always.
    #[test]
    fn validations_are_planned_as_the_trainer_runs_them() {
        assert_eq!(eval_every(32, None), 7);
        assert_eq!(eval_every(3, None), 1);
        assert_eq!(eval_every(32, Some(0)), usize::MAX);
        assert_eq!(eval_every(32, Some(4)), 4);
        // Base model, steps 7, 14, 21, 28 and the last, 32.
        assert_eq!(planned_validations(32, None), 6);
        assert_eq!(planned_validations(10, Some(0)), 2);
        assert_eq!(planned_validations(8, Some(4)), 3);
        let after = |total, every| {
            (1..=total)
                .filter(|&s| validates_after(s, total, every))
                .collect::<Vec<_>>()
        };
        assert_eq!(after(5, 2), [2, 4, 5]);
        assert_eq!(after(6, 3), [3, 6]);
        assert_eq!(after(3, usize::MAX), [3]);
    }

    /// The plan the Fine-tune panel shows is the trainer's batches: ten distinct triplets in
    /// batches of four are three batches an epoch (the last one of two), for each loss's sampler.
    #[test]
    fn planned_steps_are_the_batches_of_every_epoch() {
        let rows: Vec<Triplet> = (0..10)
            .map(|i| Triplet {
                query: format!("query {i}"),
                pos: format!("positive {i}"),
                negative: format!("negative {i}"),
            })
            .collect();
        for loss in [LossKind::Mnrl, LossKind::Triplet] {
            let cfg = |epochs| TrainConfig {
                loss,
                epochs,
                batch_size: 4,
                ..TrainConfig::default()
            };
            assert_eq!(planned_steps(&rows, &cfg(1)), 3, "{loss:?}");
            assert_eq!(planned_steps(&rows, &cfg(2)), 6, "{loss:?}");
            assert_eq!(planned_steps(&rows[..4], &cfg(1)), 1, "{loss:?}");
        }
    }

    /// The name the model card and messages show is the one the CLI takes and the run record
    /// stores.
    #[test]
    fn loss_names_are_the_cli_and_record_names() {
        for (kind, name) in [
            (LossKind::Mnrl, "mnrl"),
            (LossKind::Contrastive, "contrastive"),
            (LossKind::Triplet, "triplet"),
        ] {
            assert_eq!(kind.name(), name);
            assert_eq!(serde_json::to_value(kind).unwrap(), name);
        }
    }
}
