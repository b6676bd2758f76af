//! Parity with sentence-transformers on real models: all-MiniLM-L6-v2 (BERT, from the PyPI test
//! wheel) and all-mpnet-base-v2 (MPNet, from the five PyPI packages): the five fixed sentences,
//! every one of the 1,500 dev texts, and every metric.

use tripletlab::core::data::load_triplets;
use tripletlab::core::encoder::{embed_triplets, Encoder, EncoderOptions, PromptChoice, Role};
use tripletlab::core::metrics::{evaluate, metric_keys, RetrievalIndex};

use crate::common::{cosine, encoder, fixture, quiet, real_model_dir};

/// The five sentences against the stored sentence-transformers vectors: every cosine at least
/// `min_cos`.
fn compare_sentences(enc: &Encoder, fixture_name: &str, min_cos: f64) {
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(fixture_name)).unwrap()).unwrap();
    let sentences: Vec<&str> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let (emb, _) = quiet(|ctx| enc.encode(&sentences, Role::Query, ctx)).unwrap();
    for (i, want) in reference["vectors"].as_array().unwrap().iter().enumerate() {
        let want: Vec<f32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let c = cosine(emb.row(i), &want);
        let diff = emb
            .row(i)
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{fixture_name} sentence {i}: cosine {c:.9}, largest component difference {diff:.2e}"
        );
        assert!(c >= min_cos, "sentence {i}: cosine {c:.10} < {min_cos}");
    }
}

/// The lowest cosine of our queries, positives and negatives with the stored vectors (in that
/// order, `n` each).
fn lowest_cosine(
    emb: &tripletlab::core::encoder::TripletEmbeddings,
    st: &tripletlab::core::embeddings::Embeddings,
    n: usize,
) -> f64 {
    let mut worst = 1f64;
    for (part, ours) in [&emb.queries, &emb.positives, &emb.negatives]
        .iter()
        .enumerate()
    {
        for i in 0..n {
            worst = worst.min(cosine(ours.row(i), st.row(part * n + i)));
        }
    }
    worst
}

/// Every dev vector (queries, positives, negatives in file order; every cosine at least
/// `min_cos`) and every metric against the stored sentence-transformers ones: equal to 1e-9 to
/// those of `metrics` (the reference definitions on sentence-transformers' vectors), and to those
/// sentence-transformers' own TripletEvaluator and InformationRetrievalEvaluator computed
/// (`evaluators`: the model run by sentence-transformers end to end; its triplet accuracy is a
/// float32, so to 1e-6).
fn compare_dev(enc: &Encoder, npy: &str, metrics: &str, evaluators: &str, min_cos: f64) {
    let data = load_triplets(&fixture("patents-dev.json")).unwrap();
    let emb = quiet(|ctx| embed_triplets(enc, &data.triplets, None, ctx)).unwrap();
    let st = tripletlab::core::report::read_npy_f32(&fixture(npy)).unwrap();
    let n = data.len();
    let worst = lowest_cosine(&emb, &st, n);
    eprintln!(
        "{npy}: lowest cosine with sentence-transformers over {} texts: {worst:.9}",
        3 * n
    );
    assert!(worst >= min_cos, "lowest cosine {worst:.10} < {min_cos}");
    let result = evaluate(&RetrievalIndex::build(
        &data.triplets,
        &emb.queries,
        &emb.positives,
        &emb.negatives,
    ));
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(metrics)).unwrap()).unwrap();
    for key in metric_keys() {
        let want = reference["metrics"][&key].as_f64().unwrap();
        let got = result.metrics[&key];
        eprintln!("{key}: {got} (sentence-transformers {want})");
        assert!(
            (got - want).abs() <= 1e-9,
            "{key}: {got} vs sentence-transformers {want}"
        );
    }
    let st: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture(&format!("st_evaluators/{evaluators}"))).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for key in metric_keys() {
        let Some(want) = st["metrics"][&key].as_f64() else {
            // sentence-transformers has no evaluator for the negative's top-k share.
            assert!(key.starts_with("neg_in_top_"), "the evaluators lack {key}");
            continue;
        };
        let tol = if key == "cosine_accuracy" { 1e-6 } else { 1e-9 };
        let got = result.metrics[&key];
        assert!(
            (got - want).abs() <= tol,
            "{key}: {got} vs sentence-transformers' evaluators {want}"
        );
        checked += 1;
    }
    assert_eq!(checked, 16, "every metric an evaluator computes");
}

fn minilm() -> Encoder {
    let opts = EncoderOptions {
        max_seq_len: Some(256),
        prompts: PromptChoice::None,
        ..Default::default()
    };
    encoder(&real_model_dir(), &opts)
}

#[test]
fn five_sentences_match_sentence_transformers() {
    compare_sentences(&minilm(), "st-minilm-5-sentences.json", 1.0 - 1e-8);
}

#[test]
fn dev_metrics_match_sentence_transformers() {
    compare_dev(
        &minilm(),
        "patents-dev-minilm-seq256.npy",
        "patents-dev-minilm-seq256-metrics.json",
        "patents-dev-minilm-seq256.json",
        1.0 - 1e-8,
    );
}

/// The bf16 compute mode on the real model: every dev text at cosine >= 0.9999 to
/// sentence-transformers' f32 vector, and every metric within 0.01 of its f32 value (the
/// figures, printed here, are in the README's "Speed" section). Skipped, saying so, on a CPU
/// without AVX512-BF16.
#[test]
fn bf16_dev_vectors_stay_at_cosine_0_9999() {
    use tripletlab::core::backend::Compute;
    if let Err(why) = Compute::Bf16.check() {
        eprintln!("skipped: {why}");
        return;
    }
    let opts = EncoderOptions {
        max_seq_len: Some(256),
        prompts: PromptChoice::None,
        compute: Compute::Bf16,
        ..Default::default()
    };
    let enc = encoder(&real_model_dir(), &opts);
    assert_eq!(enc.compute(), Compute::Bf16);
    let data = load_triplets(&fixture("patents-dev.json")).unwrap();
    let emb = quiet(|ctx| embed_triplets(&enc, &data.triplets, None, ctx)).unwrap();
    let st =
        tripletlab::core::report::read_npy_f32(&fixture("patents-dev-minilm-seq256.npy")).unwrap();
    let n = data.len();
    let worst = lowest_cosine(&emb, &st, n);
    eprintln!(
        "bf16: lowest cosine with sentence-transformers' f32 over {} texts: {worst:.7}",
        3 * n
    );
    assert!(worst >= 0.9999, "lowest cosine {worst:.7} < 0.9999");
    assert!(worst < 1.0 - 1e-8, "bf16 gave f32's vectors ({worst:.10})");
    let result = evaluate(&RetrievalIndex::build(
        &data.triplets,
        &emb.queries,
        &emb.positives,
        &emb.negatives,
    ));
    let reference: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("patents-dev-minilm-seq256-metrics.json")).unwrap(),
    )
    .unwrap();
    for key in metric_keys() {
        let want = reference["metrics"][&key].as_f64().unwrap();
        let got = result.metrics[&key];
        eprintln!(
            "bf16 {key}: {got:.6} (f32 {want:.6}, difference {:+.6})",
            got - want
        );
        assert!(
            (got - want).abs() <= 0.01,
            "{key}: bf16 {got} vs f32 {want}"
        );
    }
}

/// The real all-mpnet-base-v2 folder unpacked by `scripts/fetch-test-mpnet.sh`, or `None` when
/// the test command could not fetch it and said so (`TRIPLETLAB_SKIP_MPNET` holds the reason).
fn real_mpnet_dir() -> Option<std::path::PathBuf> {
    if let Ok(why) = std::env::var("TRIPLETLAB_SKIP_MPNET") {
        eprintln!("SKIPPED: the MPNet parity test ({why})");
        return None;
    }
    let dir = std::env::var_os("TRIPLETLAB_TEST_MPNET")
        .map(std::path::PathBuf::from)
        .expect(
            "TRIPLETLAB_TEST_MPNET is not set: run scripts/test.sh (it fetches all-mpnet-base-v2), \
             or set TRIPLETLAB_SKIP_MPNET to a reason to skip this test",
        );
    assert!(
        dir.join("model.safetensors").is_file(),
        "no model in {}",
        dir.display()
    );
    Some(dir)
}

#[test]
fn mpnet_embeds_and_scores_as_sentence_transformers() {
    let Some(dir) = real_mpnet_dir() else { return };
    // all-mpnet-base-v2's own max length (384, from sentence_bert_config.json), no prompts.
    let opts = EncoderOptions {
        prompts: PromptChoice::None,
        ..Default::default()
    };
    let enc = encoder(&dir, &opts);
    assert_eq!(enc.max_seq_len, 384);
    compare_sentences(&enc, "st-mpnet-5-sentences.json", 1.0 - 2e-7);
    compare_dev(
        &enc,
        "patents-dev-mpnet.npy",
        "patents-dev-mpnet-metrics.json",
        "patents-dev-mpnet-seq384.json",
        1.0 - 2e-7,
    );
}
