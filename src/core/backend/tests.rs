//! Every backend against the reference, for every architecture (as candle's per-device test
//! macro): the CPU engine's pooled vectors, and every parameter's gradient, against candle's
//! autograd through the reference model, on small random models, with and without dropout (the
//! same masks on both sides), for every pooling mode and activation.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};

use super::candle::{CandleBackend, Mode, ReferenceModel};
use super::cpu::CpuModel;
use super::{Batch, Compute, DropoutRng, EmbedBackend, TrainBackend};
use crate::core::model::{Arch, HiddenAct, ModelConfig, Pooling};

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

/// Drops nothing (so rows of different lengths can be compared: the packed engine and the
/// padded reference draw masks of different sizes).
struct Keep;
impl DropoutRng for Keep {
    fn fill(&mut self, out: &mut [f32], _p: f32) {
        out.fill(1.0);
    }
}

fn config(arch: Arch, act: HiddenAct) -> ModelConfig {
    let model_type = match arch {
        Arch::Bert => "bert",
        Arch::XlmRoberta => "xlm-roberta",
        Arch::MpNet => "mpnet",
    };
    ModelConfig::from_json(serde_json::json!({
        "model_type": model_type,
        "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 24, "max_position_embeddings": 64,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": act, "pad_token_id": 1,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    }))
    .unwrap()
}

/// A random model of the architecture: the reference's variables (layer-norm weights near 1,
/// a relative position bias of unit scale) and the CPU engine over the same storage.
fn models(cfg: &ModelConfig, pooling: Pooling) -> (VarMap, ReferenceModel, CpuModel) {
    let varmap = VarMap::new();
    let reference = ReferenceModel::load(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        cfg,
    )
    .unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let std = if name.contains("relative_attention_bias") {
            1.0
        } else {
            0.3
        };
        let r = Tensor::randn(0f32, std, var.shape(), &Device::Cpu).unwrap();
        let value = if name.contains("LayerNorm.weight") {
            r.affine(1.0, 1.0).unwrap()
        } else {
            r
        };
        var.set(&value).unwrap();
    }
    let tensors = tensors_of(&varmap);
    let cpu = CpuModel::new(cfg, pooling, &|n| tensors.get(n).cloned()).unwrap();
    (varmap, reference, cpu)
}

/// The variables' current values by name.
fn tensors_of(vars: &VarMap) -> HashMap<String, Tensor> {
    vars.data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// Rows of the given lengths with random ids and both token types.
fn batch(lens: &[usize], skip: &[usize]) -> Batch {
    let n: usize = lens.iter().sum();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    Batch {
        ids: (0..n).map(|_| rng.random_range(0..50)).collect(),
        type_ids: (0..n).map(|i| (i % 3 == 0) as u32).collect(),
        lens: lens.to_vec(),
        pool_skip: skip.to_vec(),
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

const ARCHS: [Arch; 3] = [Arch::Bert, Arch::XlmRoberta, Arch::MpNet];

#[test]
fn inference_matches_the_reference_for_every_architecture_and_pooling() {
    for arch in ARCHS {
        for pooling in Pooling::ALL {
            let cfg = config(arch, HiddenAct::Gelu);
            let (vars, _, cpu) = models(&cfg, pooling);
            let tensors = tensors_of(&vars);
            let reference = CandleBackend::from_tensors(tensors, &cfg, pooling).unwrap();
            // Texts of several lengths (one longer than MPNet's exact buckets), some with their
            // first tokens left out of pooling.
            let b = batch(&[40, 7, 4, 1], &[3, 0, 2, 0]);
            let (ours, theirs) = (cpu.embed(&b).unwrap(), reference.embed(&b).unwrap());
            let diff = max_diff(&ours, &theirs);
            assert!(diff < 2e-5, "{arch:?} {pooling:?}: {diff}");
            // The buffers are reused by a second, smaller batch.
            let small = batch(&[7], &[]);
            let again = cpu.embed(&small).unwrap();
            let want = reference.embed(&small).unwrap();
            assert!(
                max_diff(&again, &want) < 2e-5,
                "{arch:?} {pooling:?} reused"
            );
        }
    }
}

#[test]
fn an_empty_row_pools_to_zeros_and_leaves_the_others_alone() {
    for arch in ARCHS {
        let cfg = config(arch, HiddenAct::Gelu);
        let (_vars, _, cpu) = models(&cfg, Pooling::Cls);
        let with_empty = Batch {
            lens: vec![3, 0, 2],
            ..batch(&[3, 2], &[])
        };
        let (a, b) = (
            cpu.embed(&with_empty).unwrap(),
            cpu.embed(&batch(&[3, 2], &[])).unwrap(),
        );
        assert_eq!(a[16..32], [0.0; 16]);
        assert!(max_diff(&a[..16], &b[..16]) < 1e-6 && max_diff(&a[32..], &b[16..]) < 1e-6);
        // Training through an empty row, too.
        let mut tape = Default::default();
        cpu.forward_train(&with_empty, &mut Keep, &mut tape)
            .unwrap();
        let mut grads = cpu.new_gradients();
        cpu.backward(&mut tape, &[1.0; 48], &mut grads).unwrap();
        assert!(grads.t.iter().flatten().all(|g| g.is_finite()), "{arch:?}");
    }
}

#[test]
fn training_pass_and_every_gradient_match_candles_autograd() {
    let cases = [
        (HiddenAct::Gelu, Pooling::Mean),
        (HiddenAct::GeluNew, Pooling::Max),
        (HiddenAct::Relu, Pooling::Cls),
        (HiddenAct::Gelu, Pooling::MeanSqrtLen),
        (HiddenAct::Gelu, Pooling::WeightedMean),
        (HiddenAct::Gelu, Pooling::LastToken),
    ];
    // Rows of one length with dropout (the same masks on both sides), and rows of different
    // lengths (one beyond MPNet's exact buckets, some with pooling skips) without.
    let shapes: [(&[usize], &[usize], bool); 2] =
        [(&[5, 5, 5], &[], true), (&[30, 4, 1], &[2, 1, 0], false)];
    for arch in ARCHS {
        for (lens, skip, dropout) in shapes {
            for (act, pooling) in cases {
                let what = format!("{arch:?} {act:?} {pooling:?} {lens:?}");
                let cfg = config(arch, act);
                let (vars, reference, cpu) = models(&cfg, pooling);
                let b = batch(lens, skip);
                let h = cfg.hidden_size;
                let up = Tensor::randn(0f32, 1.0, (b.rows(), h), &Device::Cpu).unwrap();
                let rng = || -> Box<dyn DropoutRng> {
                    if dropout {
                        Box::new(TestDrop(rand::rngs::StdRng::seed_from_u64(7)))
                    } else {
                        Box::new(Keep)
                    }
                };
                // The reference: forward, pool, weight by `up`, backward.
                let (ids, types, mask, s) = b.padded(cfg.pad_token_id as u32);
                let t = |v: Vec<u32>| Tensor::from_vec(v, (b.rows(), s), &Device::Cpu).unwrap();
                let states = reference
                    .forward(&t(ids), &t(types), &t(mask), &mut Mode::Train(&mut *rng()))
                    .unwrap();
                let skips: Vec<usize> = (0..b.rows()).map(|r| b.skip(r)).collect();
                let theirs = super::candle::pool(&states, &b.lens, &skips, pooling).unwrap();
                let grads = (&theirs * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let theirs = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                // Ours, with the same masks; twice into one tape: the second pass reuses the
                // first one's buffers.
                let mut tape = Default::default();
                let mut other = TestDrop(rand::rngs::StdRng::seed_from_u64(1));
                cpu.forward_train(&b, &mut other, &mut tape).unwrap();
                let pooled = cpu.forward_train(&b, &mut *rng(), &mut tape).unwrap();
                let mut ours = cpu.new_gradients();
                let up = up.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                cpu.backward(&mut tape, &up, &mut ours).unwrap();
                assert!(max_diff(&pooled, &theirs) < 2e-5, "{what}: pooled");
                let data = vars.data().lock().unwrap();
                for (i, name) in cpu.parameter_names().iter().enumerate() {
                    let var = &data[name];
                    let g = grads.get(var.as_tensor()).expect("candle gradient");
                    let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let scale = g.iter().fold(1f32, |m, v| m.max(v.abs()));
                    let diff = max_diff(&ours.t[i], &g);
                    assert!(
                        diff <= 1e-4 * scale,
                        "{what}: {name} differs by {diff} (scale {scale})"
                    );
                }
                // Every parameter of the reference is one the engine trains.
                assert_eq!(data.len(), cpu.parameter_names().len(), "{what}");
            }
        }
    }
}

/// The bf16 mode (bf16 inputs to every dense product, f32 sums) against f32 on the same weights:
/// pooled vectors at cosine >= 0.999 and every gradient within 10 % of its f32 value (relative
/// norm; measured up to about 4 % on these random models, where a wrong product gives 100 %), for
/// every architecture; and visibly not f32 (so the mode is really in use).
#[test]
fn bf16_mode_stays_close_to_f32_in_inference_and_every_gradient() {
    if Compute::Bf16.check().is_err() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let cos = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (n(a) * n(b))
    };
    let norm = |v: &[f32]| v.iter().map(|y| y * y).sum::<f32>().sqrt();
    let dist = |a: &[f32], b: &[f32]| {
        let d: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        d.sqrt()
    };
    for arch in ARCHS {
        let cfg = config(arch, HiddenAct::Gelu);
        let (vars, _, f32_model) = models(&cfg, Pooling::Mean);
        let tensors = tensors_of(&vars);
        let bf16_model = CpuModel::new(&cfg, Pooling::Mean, &|n| tensors.get(n).cloned())
            .unwrap()
            .with_compute(Compute::Bf16)
            .unwrap();
        assert_eq!(bf16_model.compute(), Compute::Bf16);
        let b = batch(&[40, 7, 4, 1], &[]);
        let (x, y) = (f32_model.embed(&b).unwrap(), bf16_model.embed(&b).unwrap());
        let h = cfg.hidden_size;
        for (r, (a, c)) in x.chunks(h).zip(y.chunks(h)).enumerate() {
            assert!(cos(a, c) >= 0.999, "{arch:?} row {r}: cosine {}", cos(a, c));
        }
        assert!(max_diff(&x, &y) > 1e-5, "{arch:?}: bf16 gave f32's vectors");
        // A text's vector does not depend on its batch.
        let alone = bf16_model.embed(&batch(&[40], &[])).unwrap();
        assert_eq!(&alone[..], &y[..h], "{arch:?}: depends on the batch");
        // Training: forward with a tape, backward, every gradient.
        let up: Vec<f32> = (0..b.rows() * h)
            .map(|i| ((i * 7) % 5) as f32 - 2.0)
            .collect();
        // Two passes into one set of gradients: they must add up (as GradCache's do).
        let grads = |m: &CpuModel| {
            let mut tape = Default::default();
            let mut g = m.new_gradients();
            for _ in 0..2 {
                m.forward_train(&b, &mut Keep, &mut tape).unwrap();
                m.backward(&mut tape, &up, &mut g).unwrap();
            }
            g
        };
        let (gx, gy) = (grads(&f32_model), grads(&bf16_model));
        let (mut differs, mut worst) = (false, 0f32);
        // Relative to the gradient, or to a hundredth of the largest one for gradients that are
        // (nearly) zero in exact arithmetic (a key bias's: softmax ignores a constant shift).
        let largest = gx.t.iter().map(|g| norm(g)).fold(0f32, f32::max);
        for (i, name) in f32_model.parameter_names().iter().enumerate() {
            let e = dist(&gy.t[i], &gx.t[i]) / norm(&gx.t[i]).max(1e-2 * largest);
            assert!(
                e < 0.1,
                "{arch:?} {name}: bf16 gradient off by {e:.4} (relative)"
            );
            differs |= e > 1e-6;
            worst = worst.max(e);
        }
        assert!(differs, "{arch:?}: bf16 gave f32's gradients");
        eprintln!("{arch:?}: largest relative gradient difference {worst:.4}");
    }
}

#[test]
fn compute_modes_parse_and_name_what_this_cpu_lacks() {
    assert_eq!(Compute::parse("f32"), Ok(Compute::F32));
    assert_eq!(Compute::parse(" FP32 "), Ok(Compute::F32));
    assert_eq!(Compute::parse("auto"), Ok(Compute::fastest()));
    assert!(Compute::parse("int8")
        .unwrap_err()
        .contains("not implemented"));
    assert!(Compute::parse("fp8")
        .unwrap_err()
        .contains("f32, bf16 or auto"));
    match Compute::Bf16.check() {
        Ok(()) => {
            assert_eq!(Compute::parse("bf16"), Ok(Compute::Bf16));
            assert_eq!(Compute::fastest(), Compute::Bf16);
        }
        Err(why) => {
            assert!(why.contains("AVX512-BF16"), "{why}");
            assert_eq!(Compute::parse("bf16"), Err(why));
            assert_eq!(Compute::fastest(), Compute::F32);
        }
    }
    assert_eq!(
        Compute::ALL.map(Compute::name),
        ["f32", "bf16"],
        "the names the CLI and the run record use"
    );
}
