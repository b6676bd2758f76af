//! Parity with sentence-transformers on the real all-MiniLM-L6-v2 (from the PyPI test wheel).

use tripletlab::core::data::load_triplets;
use tripletlab::core::encoder::{embed_triplets, EncoderOptions, PromptChoice, Role};
use tripletlab::core::metrics::{evaluate, metric_keys, RetrievalIndex};

use crate::common::{cosine, encoder, fixture, quiet, real_model_dir};

fn options() -> EncoderOptions {
    EncoderOptions {
        max_seq_len: Some(256),
        prompts: PromptChoice::None,
        ..Default::default()
    }
}

#[test]
fn five_sentences_match_sentence_transformers() {
    let enc = encoder(&real_model_dir(), &options());
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("st-minilm-5-sentences.json")).unwrap())
            .unwrap();
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
        eprintln!("sentence {i}: cosine {c:.9}, largest component difference {diff:.2e}");
        assert!(c >= 0.99999, "sentence {i}: cosine {c}");
    }
}

#[test]
fn dev_metrics_match_sentence_transformers() {
    let enc = encoder(&real_model_dir(), &options());
    let data = load_triplets(&fixture("patents-dev.json")).unwrap();
    let emb = quiet(|ctx| embed_triplets(&enc, &data.triplets, None, ctx)).unwrap();
    // Every one of the 1,500 vectors against sentence-transformers' (queries, positives,
    // negatives in file order).
    let st =
        tripletlab::core::report::read_npy_f32(&fixture("patents-dev-minilm-seq256.npy")).unwrap();
    let n = data.len();
    let mut worst = 1f64;
    for (part, ours) in [&emb.queries, &emb.positives, &emb.negatives]
        .iter()
        .enumerate()
    {
        for i in 0..n {
            worst = worst.min(cosine(ours.row(i), st.row(part * n + i)));
        }
    }
    eprintln!(
        "lowest cosine with sentence-transformers over {} texts: {worst:.9}",
        3 * n
    );
    assert!(worst >= 0.99999, "lowest cosine {worst}");
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
        eprintln!("{key}: {got} (sentence-transformers {want})");
        assert!(
            (got - want).abs() <= 0.002,
            "{key}: {got} vs sentence-transformers {want}"
        );
    }
}
