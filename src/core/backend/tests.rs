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
use super::{Batch, DropoutRng, EmbedBackend, TrainBackend};
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
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let cpu = CpuModel::new(cfg, pooling, &|n| tensors.get(n).cloned()).unwrap();
    (varmap, reference, cpu)
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
            let tensors = vars
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect();
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
