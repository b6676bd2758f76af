//! XLM-RoBERTa and MPNet against transformers: small random models saved by
//! sentence-transformers 6.2 (`tests/fixtures/tiny-models/`, made by the two scripts there) and
//! the vectors it gave for the first 40 dev triplets; both backends (the CPU engine and the
//! candle reference) must give them. Then fine-tuning works on both architectures.

use std::path::PathBuf;
use std::sync::Arc;

use tripletlab::core::backend::candle::CandleBackend;
use tripletlab::core::backend::EmbedBackend;
use tripletlab::core::data::load_triplets;
use tripletlab::core::encoder::{embed_triplets, Encoder, EncoderOptions, PromptChoice};
use tripletlab::core::model::{Arch, Checkpoint, FolderFormat, LengthSource, ModelFolder};
use tripletlab::core::report::read_npy_f32;
use tripletlab::core::train::{LossKind, StopReason, TrainConfig};

use crate::common::{cosine, fixture, quiet};

fn tiny(name: &str) -> PathBuf {
    fixture("tiny-models").join(name)
}

fn options() -> EncoderOptions {
    EncoderOptions {
        prompts: PromptChoice::None,
        ..Default::default()
    }
}

/// Embeds the fixture's triplets with `backend` and compares every vector with the stored ones.
fn check_against_transformers(name: &str, backend: Option<Arc<dyn EmbedBackend>>) {
    let dir = tiny(name);
    let folder = ModelFolder::open(&dir, name).unwrap();
    let enc = match backend {
        Some(b) => Encoder::from_backend(folder, b, "ref".into(), name.into(), &options()).unwrap(),
        None => crate::common::encoder(&dir, &options()),
    };
    let data = load_triplets(&tiny("tiny-data.json")).unwrap();
    let emb = quiet(|ctx| embed_triplets(&enc, &data.triplets, None, ctx)).unwrap();
    let want = read_npy_f32(&tiny(&format!("{name}.npy"))).unwrap();
    let n = data.len();
    let (mut worst_cos, mut worst_diff) = (1f64, 0f32);
    for (part, ours) in [&emb.queries, &emb.positives, &emb.negatives]
        .iter()
        .enumerate()
    {
        for i in 0..n {
            let (a, b) = (ours.row(i), want.row(part * n + i));
            worst_cos = worst_cos.min(cosine(a, b));
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            worst_diff = worst_diff.max(d);
        }
    }
    eprintln!("{name}: lowest cosine {worst_cos:.9}, largest difference {worst_diff:.2e}");
    assert!(
        worst_cos >= 0.99999 && worst_diff < 1e-4,
        "{name}: {worst_cos} {worst_diff}"
    );
}

#[test]
fn tiny_xlm_roberta_and_mpnet_embed_as_transformers_on_both_backends() {
    for (name, arch) in [("tiny-xlmr", Arch::XlmRoberta), ("tiny-mpnet", Arch::MpNet)] {
        let folder = ModelFolder::open(&tiny(name), name).unwrap();
        assert_eq!(folder.config.arch, arch);
        // sentence-transformers 6 files: the length comes from tokenizer_config.json.
        assert_eq!(folder.sentence.format, FolderFormat::SentenceTransformers6);
        assert_eq!(
            folder.sentence.max_seq_length_source,
            LengthSource::TokenizerConfig
        );
        assert_eq!(folder.max_seq_len(None), 128);
        check_against_transformers(name, None);
        let ck = Checkpoint::read(&folder).unwrap();
        let reference = CandleBackend::from_tensors(
            ck.encoder_tensors()
                .into_iter()
                .map(|(k, t)| (k, t.to_dtype(candle_core::DType::F32).unwrap()))
                .collect(),
            &folder.config,
            folder.sentence.pooling,
        )
        .unwrap();
        check_against_transformers(name, Some(Arc::new(reference)));
    }
}

#[test]
fn fine_tuning_lowers_the_loss_on_xlm_roberta_and_mpnet() {
    let data = load_triplets(&tiny("tiny-data.json")).unwrap().triplets;
    for name in ["tiny-xlmr", "tiny-mpnet"] {
        let folder = ModelFolder::open(&tiny(name), name).unwrap();
        let ck = Checkpoint::read(&folder).unwrap();
        let cfg = TrainConfig {
            loss: LossKind::Mnrl,
            epochs: 4,
            batch_size: 8,
            lr: 1e-3,
            max_seq_len: 48,
            eval_steps: Some(0),
            prompts: PromptChoice::None,
            ..TrainConfig::default()
        };
        let emit = |_: tripletlab::core::jobs::Update<_>| {};
        let ctx = tripletlab::core::jobs::JobCtx::new(Default::default(), &emit);
        let out =
            tripletlab::core::train::train(&folder, &ck, &data, &data[..8], &cfg, &ctx).unwrap();
        assert_eq!(out.stop, StopReason::Completed);
        let losses: Vec<f64> = out.steps.iter().map(|s| s.loss).collect();
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let (first, last) = (mean(&losses[..4]), mean(&losses[losses.len() - 4..]));
        eprintln!(
            "{name}: loss {first:.3} -> {last:.3} over {} steps",
            losses.len()
        );
        assert!(
            last < 0.7 * first,
            "{name}: loss {first} -> {last}: {losses:?}"
        );
    }
}
