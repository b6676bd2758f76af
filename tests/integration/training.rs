//! Fine-tuning on the tiny model: losses against sentence-transformers, gradients, loss falls,
//! cancel, non-finite losses, saving (round trip and atomicity).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor, Var};
use tripletlab::core::backend::{Compute, DropoutRng, EmbedBackend, TrainBackend};
use tripletlab::core::data::Triplet;
use tripletlab::core::encoder::{Encoder, EncoderOptions, PromptChoice, Prompts, Role};
use tripletlab::core::jobs::{spawn, CancelToken, JobCtx, Outcome, Update};
use tripletlab::core::model::save::{save_model_folder, SaveSettings};
use tripletlab::core::model::tiny::TinySpec;
use tripletlab::core::model::{Checkpoint, ModelFolder};
use tripletlab::core::train::{
    self, loss, LossKind, StopReason, TrainConfig, TrainError, TrainEvent, TrainOutcome, Trainable,
};

use crate::common::{cosine, fixture, quiet, tiny_model};

fn open(dir: &std::path::Path) -> (ModelFolder, Checkpoint) {
    let folder = ModelFolder::open(dir, "tiny").unwrap();
    let checkpoint = Checkpoint::read(&folder).unwrap();
    (folder, checkpoint)
}

/// Small triplets whose positives share words with their query.
fn toy_triplets(n: usize) -> Vec<Triplet> {
    let topics = [
        "rotor blade wind turbine",
        "battery cathode lithium",
        "antibody protein dose",
        "bicycle frame carbon",
        "wireless packet encryption",
        "solar cell panel",
        "engine piston valve",
        "printer ink cartridge",
    ];
    (0..n)
        .map(|i| {
            let t = topics[i % topics.len()];
            let other = topics[(i + 3) % topics.len()];
            Triplet {
                query: format!("{t} {i}"),
                pos: format!("a device with {t} parts number {i}"),
                negative: format!("a device with {other} parts number {i}"),
            }
        })
        .collect()
}

fn config(loss: LossKind) -> TrainConfig {
    TrainConfig {
        loss,
        batch_size: 8,
        lr: 1e-3,
        max_seq_len: 32,
        eval_steps: Some(0),
        prompts: PromptChoice::None,
        ..TrainConfig::default()
    }
}

fn run(
    folder: &ModelFolder,
    ck: &Checkpoint,
    data: &[Triplet],
    val: &[Triplet],
    cfg: &TrainConfig,
) -> TrainOutcome {
    let emit = |_: Update<TrainEvent>| {};
    train::train(
        folder,
        ck,
        data,
        val,
        cfg,
        &JobCtx::new(CancelToken::new(), &emit),
    )
    .unwrap()
}

#[test]
fn losses_match_sentence_transformers() {
    let f: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("losses.json")).unwrap()).unwrap();
    let m = |k: &str| -> Tensor {
        let rows: Vec<Vec<f32>> = serde_json::from_value(f[k].clone()).unwrap();
        Tensor::new(rows, &Device::Cpu).unwrap()
    };
    let (a, p, n) = (m("anchors"), m("positives"), m("negatives"));
    let labels: Vec<f32> = serde_json::from_value::<Vec<i64>>(f["labels"].clone())
        .unwrap()
        .iter()
        .map(|&x| x as f32)
        .collect();
    let labels = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
    let s = |t: Tensor| t.to_scalar::<f32>().unwrap() as f64;
    let cases = [
        (
            "mnrl_with_negatives",
            s(loss::mnrl(&a, &p, Some(&n), 20.0).unwrap()),
        ),
        ("mnrl_pairs", s(loss::mnrl(&a, &p, None, 20.0).unwrap())),
        (
            "contrastive",
            s(loss::contrastive(&a, &p, &labels, 0.5).unwrap()),
        ),
        ("triplet", s(loss::triplet(&a, &p, &n, 5.0).unwrap())),
        (
            "triplet_margin_1",
            s(loss::triplet(&a, &p, &n, 1.0).unwrap()),
        ),
    ];
    for (name, got) in cases {
        let want = f[name].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{name}: {got} vs sentence-transformers {want}"
        );
    }
}

/// Dropout that drops nothing, so forward passes are deterministic in training mode.
struct NoDrop;
impl DropoutRng for NoDrop {
    fn fill(&mut self, out: &mut [f32], _p: f32) {
        out.fill(1.0);
    }
}

/// The mnrl loss of a batch through the CPU engine's training pass (no dropout), and the
/// gradient of every parameter from its hand-written backward pass: the real training step.
fn mnrl_loss_and_grads(
    weights: &Trainable,
    enc: &Encoder,
    data: &[Triplet],
) -> (f64, tripletlab::core::backend::Gradients) {
    let model = weights.model();
    let q: Vec<&str> = data.iter().map(|t| t.query.as_str()).collect();
    let d: Vec<&str> = data
        .iter()
        .map(|t| t.pos.as_str())
        .chain(data.iter().map(|t| t.negative.as_str()))
        .collect();
    let batches = [
        enc.prepare(&q, Role::Query).unwrap(),
        enc.prepare(&d, Role::Document).unwrap(),
    ];
    let mut tapes: [tripletlab::core::backend::cpu::Tape; 2] = Default::default();
    let h = TrainBackend::dim(model.as_ref());
    let pooled: Vec<Var> = batches
        .iter()
        .zip(tapes.iter_mut())
        .map(|(b, tape)| {
            let v = model.forward_train(b, &mut NoDrop, tape).unwrap();
            Var::from_vec(v, (b.rows(), h), &Device::Cpu).unwrap()
        })
        .collect();
    let unit = |v: &Var| loss::l2_normalize(v.as_tensor()).unwrap();
    let (a, docs) = (unit(&pooled[0]), unit(&pooled[1]));
    let n = data.len();
    let value = loss::mnrl(
        &a,
        &docs.narrow(0, 0, n).unwrap(),
        Some(&docs.narrow(0, n, n).unwrap()),
        20.0,
    )
    .unwrap();
    let g = value.backward().unwrap();
    let mut grads = model.new_gradients();
    for (tape, var) in tapes.iter_mut().zip(&pooled) {
        let d = g.get(var.as_tensor()).unwrap().flatten_all().unwrap();
        model
            .backward(tape, &d.to_vec1::<f32>().unwrap(), &mut grads)
            .unwrap();
    }
    (value.to_scalar::<f32>().unwrap() as f64, grads)
}

/// An encoder (no prompts) over a model built from trainable weights.
fn encoder_over(folder: &ModelFolder, weights: &Trainable, max_seq_len: usize) -> Encoder {
    let opts = EncoderOptions {
        max_seq_len: Some(max_seq_len),
        prompts: PromptChoice::None,
        ..Default::default()
    };
    let backend: Arc<dyn EmbedBackend> = weights.model();
    Encoder::from_backend(
        folder.clone(),
        backend,
        "in-memory".into(),
        "in-memory".into(),
        &opts,
    )
    .unwrap()
}

#[test]
fn every_weight_gets_a_gradient_and_it_matches_finite_differences() {
    let dir = tiny_model(&TinySpec::default());
    let (folder, ck) = open(dir.path());
    let weights = Trainable::new(&folder, &ck, Compute::F32).unwrap();
    let enc = encoder_over(&folder, &weights, 32);
    let data = toy_triplets(4);
    let (_, grads) = mnrl_loss_and_grads(&weights, &enc, &data);
    let vars = weights.vars();
    assert!(vars.len() > 30);
    for ((name, _), g) in vars.iter().zip(&grads.t) {
        let norm: f64 = g.iter().map(|&v| (v as f64).powi(2)).sum();
        // The word embeddings of tokens that never occur get none; every other tensor must.
        assert!(norm > 0.0, "{name} has a zero gradient");
    }
    // Central differences on a few weights of different kinds.
    let h = 1e-2f32;
    for (name, idx) in [
        ("encoder.layer.0.attention.self.query.weight", 5usize),
        ("encoder.layer.1.output.dense.bias", 3),
        ("embeddings.LayerNorm.weight", 7),
        ("embeddings.position_embeddings.weight", 40),
    ] {
        let at = vars.iter().position(|(n, _)| n == name).unwrap();
        let v = &vars[at].1;
        let analytic = grads.t[at][idx];
        let original = v
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let shape = v.as_tensor().shape().clone();
        let eval_at = |delta: f32| -> f64 {
            let mut w = original.clone();
            w[idx] += delta;
            v.set(&Tensor::from_vec(w, shape.clone(), &Device::Cpu).unwrap())
                .unwrap();
            mnrl_loss_and_grads(&weights, &enc, &data).0
        };
        let numeric = (eval_at(h) - eval_at(-h)) / (2.0 * h as f64);
        v.set(&Tensor::from_vec(original, shape, &Device::Cpu).unwrap())
            .unwrap();
        let err = (numeric - analytic as f64).abs();
        assert!(
            err <= 2e-2 * numeric.abs().max(0.05),
            "{name}[{idx}]: analytic {analytic} vs numeric {numeric}"
        );
    }
}

#[test]
fn loss_falls_for_every_loss_kind() {
    let dir = tiny_model(&TinySpec::default());
    let (folder, ck) = open(dir.path());
    let data = toy_triplets(48);
    let val = toy_triplets(8);
    for kind in [LossKind::Mnrl, LossKind::Contrastive, LossKind::Triplet] {
        let cfg = TrainConfig {
            epochs: 6,
            ..config(kind)
        };
        let out = run(&folder, &ck, &data, &val, &cfg);
        assert_eq!(out.stop, StopReason::Completed);
        let losses: Vec<f64> = out.steps.iter().map(|s| s.loss).collect();
        assert!(losses.len() >= 30, "{kind:?}: only {} steps", losses.len());
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let (first, last) = (mean(&losses[..6]), mean(&losses[losses.len() - 6..]));
        // On unit vectors the triplet loss cannot go below margin − 2 = 3 (distances are ≤ 2).
        let floor = if kind == LossKind::Triplet { 3.0 } else { 0.0 };
        assert!(
            last - floor < 0.7 * (first - floor),
            "{kind:?}: loss did not fall: first {first:.4}, last {last:.4}: {losses:?}"
        );
        assert_eq!(out.evals.len(), 2, "zero-shot and final validation");
        assert!(out
            .steps
            .iter()
            .all(|s| s.grad_norm.is_finite() && s.lr >= 0.0));
    }
}

/// Validation after every `eval_steps` steps and after the last one, which `eval_steps` does
/// not divide here. Each validation query's positive is the query itself, so every checkpoint
/// scores the same (nDCG@10 1) and the best is the first of them, the base model: training
/// that does not beat it keeps it.
#[test]
fn validation_runs_every_eval_steps_and_after_the_last_step() {
    let dir = tiny_model(&TinySpec::default());
    let (folder, ck) = open(dir.path());
    let data = toy_triplets(20);
    let val: Vec<Triplet> = toy_triplets(8)
        .into_iter()
        .map(|t| Triplet {
            pos: t.query.clone(),
            ..t
        })
        .collect();
    let cfg = TrainConfig {
        batch_size: 4,
        eval_steps: Some(2),
        ..config(LossKind::Mnrl)
    };
    let progress = std::sync::Mutex::new(Vec::new());
    let emit = |u: Update<TrainEvent>| {
        if let Update::Progress(p) = u {
            if p.stage == "training" {
                progress.lock().unwrap().push((p.done, p.total));
            }
        }
    };
    let out = train::train(
        &folder,
        &ck,
        &data,
        &val,
        &cfg,
        &JobCtx::new(CancelToken::new(), &emit),
    )
    .unwrap();
    assert_eq!(out.total_steps, 5);
    // Progress counts the steps done, up to all of them.
    let progress = progress.into_inner().unwrap();
    assert_eq!(progress, [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]);
    let at: Vec<usize> = out.evals.iter().map(|e| e.step).collect();
    assert_eq!(at, [0, 2, 4, 5]);
    assert_eq!(at.len(), train::planned_validations(5, Some(2)));
    for e in &out.evals {
        assert_eq!(e.metrics[train::BEST_METRIC], 1.0, "step {}", e.step);
    }
    assert_eq!(out.best_step, 0, "a tie is not an improvement");
    assert_eq!(out.best().step, 0);
}

#[test]
fn cancel_takes_effect_at_the_next_step_and_keeps_the_best_weights() {
    let dir = tiny_model(&TinySpec::default());
    let (folder, ck) = open(dir.path());
    let data = toy_triplets(400);
    let val = toy_triplets(8);
    let cfg = TrainConfig {
        batch_size: 4,
        ..config(LossKind::Mnrl)
    };
    let handle = spawn::<TrainEvent, TrainOutcome, TrainError, _>(
        "train",
        || {},
        move |ctx| train::train(&folder, &ck, &data, &val, &cfg, ctx),
    )
    .unwrap();
    let mut steps_at_cancel = None;
    let cancel =
        |h: &tripletlab::core::jobs::JobHandle<TrainEvent, TrainOutcome, TrainError>| h.cancel();
    let mut handle = handle;
    let outcome = loop {
        let mut done = None;
        for ev in handle.drain() {
            match ev {
                tripletlab::core::jobs::JobEvent::Update(Update::Point(TrainEvent::Step(s)))
                    if steps_at_cancel.is_none() && s.step >= 2 =>
                {
                    cancel(&handle);
                    steps_at_cancel = Some(s.step);
                }
                tripletlab::core::jobs::JobEvent::Done(o) => done = Some(o),
                _ => {}
            }
        }
        if let Some(o) = done {
            break o;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let outcome = match outcome {
        Outcome::Finished(Ok(o)) => o,
        other => panic!("{other:?}"),
    };
    let at = steps_at_cancel.unwrap();
    match outcome.stop {
        StopReason::Cancelled { after_step } => assert!(
            after_step <= at + 1,
            "ran {after_step} steps after a cancel at {at}"
        ),
        other => panic!("expected a cancel, got {other:?}"),
    }
    assert!(outcome.total_steps > 90);
    assert!(!outcome.best_weights.is_empty());
}

#[test]
fn a_non_finite_loss_stops_cleanly() {
    let dir = tiny_model(&TinySpec::default());
    let (folder, ck) = open(dir.path());
    let data = toy_triplets(64);
    // An absurd learning rate blows the weights up after the first update.
    let cfg = TrainConfig {
        lr: 1e30,
        warmup_ratio: 0.0,
        max_grad_norm: 1e30,
        ..config(LossKind::Triplet)
    };
    let out = run(&folder, &ck, &data, &toy_triplets(8), &cfg);
    match out.stop {
        StopReason::NonFiniteLoss { step } => assert!(step >= 2 && step <= out.total_steps),
        other => panic!("expected a non-finite loss, got {other:?}"),
    }
    assert_eq!(out.best_step, 0, "the zero-shot weights stay the best");
    for t in out.best_weights.values() {
        let s = t
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(s.is_finite());
    }
}

/// A run that cannot start says why before any step: no triplets on either side, a Matryoshka
/// dimension of 0 or wider than the model, several negatives with a loss that takes one.
#[test]
fn impossible_configurations_are_refused_before_training() {
    let dir = tiny_model(&TinySpec::default());
    let (folder, ck) = open(dir.path());
    let hidden = folder.config.hidden_size;
    let data = toy_triplets(8);
    let refused = |train: &[Triplet], val: &[Triplet], cfg: &TrainConfig| {
        let emit = |_: Update<TrainEvent>| {};
        let ctx = JobCtx::new(CancelToken::new(), &emit);
        match train::train(&folder, &ck, train, val, cfg, &ctx) {
            Err(TrainError::InvalidConfig(why)) => why,
            Err(other) => panic!("expected a refused configuration, got {other:?}"),
            Ok(out) => panic!(
                "expected a refused configuration, it ran {} steps",
                out.total_steps
            ),
        }
    };
    let mnrl = config(LossKind::Mnrl);
    for (train, val) in [(&data[..0], &data[..]), (&data[..], &data[..0])] {
        let why = refused(train, val, &mnrl);
        assert!(why.contains("to train on and to validate on"), "{why}");
    }
    for dim in [0, hidden + 1] {
        let cfg = TrainConfig {
            matryoshka_dims: vec![hidden, dim],
            ..mnrl.clone()
        };
        let why = refused(&data, &data, &cfg);
        assert!(
            why.contains(&format!("Matryoshka dimension {dim} ")),
            "{why}"
        );
    }
    // The model's own width and one below are accepted.
    let cfg = TrainConfig {
        matryoshka_dims: vec![hidden, hidden - 1],
        ..mnrl.clone()
    };
    assert!(run(&folder, &ck, &data, &data, &cfg).total_steps > 0);
    for loss in [LossKind::Triplet, LossKind::Contrastive] {
        let cfg = TrainConfig {
            max_negatives: 2,
            ..config(loss)
        };
        let why = refused(&data, &data, &cfg);
        assert!(why.contains("several negatives per example (2)"), "{why}");
    }
}

fn settings() -> SaveSettings {
    SaveSettings {
        max_seq_length: 48,
        prompts: Prompts::none(),
        model_card: "# test\n".into(),
        extra_files: Vec::new(),
    }
}

#[test]
fn saved_folder_reloads_with_the_same_embeddings_and_tensor_names() {
    let dir = tiny_model(&TinySpec::default());
    let (folder, ck) = open(dir.path());
    // Weights that differ from the checkpoint's: every tensor scaled a little, differently.
    let weights: HashMap<String, Tensor> = Trainable::new(&folder, &ck, Compute::F32)
        .unwrap()
        .snapshot()
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, (k, t))| (k, (t * (1.0 + 0.05 * ((i % 5) as f64 - 2.0))).unwrap()))
        .collect();
    let target = tempfile::tempdir().unwrap();
    let saved = target.path().join("model");
    save_model_folder(&saved, &folder, &ck, &weights, &settings(), &mut |_| {}).unwrap();

    let reloaded = ModelFolder::open(&saved, "saved").unwrap();
    let ck2 = Checkpoint::read(&reloaded).unwrap();
    let mut names: Vec<_> = ck
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec(), t.dtype()))
        .collect();
    let mut names2: Vec<_> = ck2
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec(), t.dtype()))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    names2.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(names, names2);
    assert_eq!(reloaded.sentence.max_seq_length, Some(48));
    meets_the_rules_text_embeddings_inference_loads_by(&saved);
    assert_eq!(reloaded.sentence.pooling, folder.sentence.pooling);
    assert!(reloaded.sentence.normalize);

    // In memory: the trained weights in a model built from them.
    let weights_var = Trainable::new(&folder, &ck, Compute::F32).unwrap();
    weights_var.restore(&weights).unwrap();
    let mem = encoder_over(&folder, &weights_var, 48);
    let opts = EncoderOptions {
        max_seq_len: Some(48),
        prompts: PromptChoice::None,
        ..Default::default()
    };
    let disk = crate::common::encoder(&saved, &opts);
    let texts = [
        "rotor blade wind turbine",
        "a device with battery cathode lithium parts",
    ];
    let (a, _) = quiet(|ctx| mem.encode(&texts, Role::Document, ctx)).unwrap();
    let (b, _) = quiet(|ctx| disk.encode(&texts, Role::Document, ctx)).unwrap();
    let (orig, _) =
        quiet(|ctx| crate::common::encoder(dir.path(), &opts).encode(&texts, Role::Document, ctx))
            .unwrap();
    for i in 0..texts.len() {
        assert!(cosine(a.row(i), b.row(i)) >= 0.99999);
        assert!(
            cosine(a.row(i), orig.row(i)) < 0.99999,
            "training changed nothing"
        );
    }
}

#[test]
fn an_interrupted_save_leaves_no_half_folder() {
    let dir = tiny_model(&TinySpec::default());
    let (folder, ck) = open(dir.path());
    let target = tempfile::tempdir().unwrap();
    let saved = target.path().join("model");
    let weights: HashMap<String, Tensor> = HashMap::new();
    for crash_after in [1usize, 3, 6] {
        let mut written = 0;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            save_model_folder(&saved, &folder, &ck, &weights, &settings(), &mut |_| {
                written += 1;
                if written == crash_after {
                    panic!("simulated crash");
                }
            })
        }));
        assert!(r.is_err());
        assert!(
            !saved.exists(),
            "a crash after {crash_after} files left {}",
            saved.display()
        );
    }
    // With a previous model at the target, a crash leaves the previous one whole.
    save_model_folder(&saved, &folder, &ck, &weights, &settings(), &mut |_| {}).unwrap();
    let before = std::fs::read(saved.join("model.safetensors")).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        save_model_folder(&saved, &folder, &ck, &weights, &settings(), &mut |p| {
            if p.ends_with("config.json") {
                panic!("simulated crash");
            }
        })
    }));
    assert!(r.is_err());
    assert_eq!(
        std::fs::read(saved.join("model.safetensors")).unwrap(),
        before
    );
    ModelFolder::open(&saved, "old").unwrap();
}

/// What text-embeddings-inference requires of a model folder to start (its router's
/// `ModelConfig`, `PoolConfig` and `STConfig`, read in TEI's source): `config.json` with
/// `architectures` and `model_type`, a fast `tokenizer.json`, safetensors weights,
/// `1_Pooling/config.json` with the boolean `pooling_mode_cls_token` and
/// `pooling_mode_mean_tokens`, a `sentence_bert_config.json` with an integer `max_seq_length`, and
/// `modules.json` types it parses (the `sentence_transformers.models.*` names).
fn meets_the_rules_text_embeddings_inference_loads_by(dir: &std::path::Path) {
    let json = |f: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")))
            .unwrap()
    };
    let config = json("config.json");
    assert!(
        config["architectures"]
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.is_string())),
        "{config}"
    );
    assert!(config["model_type"].is_string(), "{config}");
    assert!(dir.join("tokenizer.json").is_file() && dir.join("model.safetensors").is_file());
    let pooling = json("1_Pooling/config.json");
    for k in ["pooling_mode_cls_token", "pooling_mode_mean_tokens"] {
        assert!(pooling[k].is_boolean(), "{k} in {pooling}");
    }
    assert!(json("sentence_bert_config.json")["max_seq_length"].is_u64());
    for m in json("modules.json").as_array().unwrap() {
        let t = m["type"].as_str().unwrap();
        assert!(t.starts_with("sentence_transformers.models."), "{t}");
    }
}

#[test]
fn a_saved_folder_gains_the_config_keys_text_embeddings_inference_requires() {
    let dir = tiny_model(&TinySpec::default());
    let path = dir.path().join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("architectures");
    v.as_object_mut().unwrap().remove("model_type");
    std::fs::write(&path, v.to_string()).unwrap();
    let (folder, ck) = open(dir.path());
    let target = tempfile::tempdir().unwrap();
    let saved = target.path().join("model");
    save_model_folder(
        &saved,
        &folder,
        &ck,
        &HashMap::new(),
        &settings(),
        &mut |_| {},
    )
    .unwrap();
    meets_the_rules_text_embeddings_inference_loads_by(&saved);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(saved.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (config["model_type"].as_str(), config["vocab_size"].clone()),
        (Some("bert"), v["vocab_size"].clone())
    );
}

#[test]
fn the_best_checkpoint_is_the_best_validation_and_its_weights_reproduce_it() {
    let dir = tiny_model(&TinySpec::default());
    let (folder, ck) = open(dir.path());
    let all = crate::common::dev_triplets(80);
    let (val, data) = all.split_at(20);
    let cfg = TrainConfig {
        epochs: 3,
        lr: 3e-3,
        eval_steps: Some(1),
        ..config(LossKind::Mnrl)
    };
    let out = run(&folder, &ck, data, val, &cfg);
    assert_eq!(out.stop, StopReason::Completed);
    let ndcg: Vec<f64> = out
        .evals
        .iter()
        .map(|e| e.metrics[train::BEST_METRIC])
        .collect();
    assert_eq!(
        out.evals.len(),
        out.total_steps + 1,
        "validated before and after every step"
    );
    // The first of the highest validation scores, neither the zero-shot one nor the last here.
    let best = (0..ndcg.len()).fold(0, |b, i| if ndcg[i] > ndcg[b] { i } else { b });
    assert_eq!(out.best_step, out.evals[best].step, "{ndcg:?}");
    assert_eq!(out.best().step, out.best_step);
    assert_eq!(out.best().metrics, out.evals[best].metrics);
    assert_eq!(out.zero_shot().step, 0);
    assert!(
        best != 0 && best != ndcg.len() - 1,
        "this run's best is at an end ({best} of {}): the test would not tell a last-step or \
         never-updated choice apart: {ndcg:?}",
        ndcg.len()
    );
    // Gradient clipping at 1.0 was active on some steps (their norms are recorded unclipped).
    assert!(
        out.steps.iter().any(|s| s.grad_norm > cfg.max_grad_norm),
        "clipping never acted: {:?}",
        out.steps.iter().map(|s| s.grad_norm).collect::<Vec<_>>()
    );
    // The kept weights, saved and evaluated as validation evaluates, give the best step's metrics.
    let work = tempfile::tempdir().unwrap();
    let saved = work.path().join("best");
    save_model_folder(
        &saved,
        &folder,
        &ck,
        &out.best_weights,
        &settings(),
        &mut |_| {},
    )
    .unwrap();
    let opts = EncoderOptions {
        max_seq_len: Some(folder.max_seq_len(None)),
        batch_size: cfg.eval_batch_size,
        prompts: PromptChoice::None,
        truncate_dim: None,
        compute: Compute::F32,
    };
    let again = crate::common::quiet(|ctx| {
        tripletlab::core::pipeline::evaluate_model(
            &tripletlab::core::model::ModelSource::Dir(saved.clone()),
            &opts,
            val,
            None,
            ctx,
        )
    })
    .unwrap();
    assert_eq!(again.result.metrics, out.evals[best].metrics);
}
