//! The metric functions alone, on sentence-transformers' stored embeddings of patents-dev.json:
//! every metric and every per-triplet row equals `reference_metrics.py`'s output (and
//! sentence-transformers' own evaluators). Unit tests, so that `cargo mutants -- --lib` runs
//! them against every mutant of the metrics.

use std::path::{Path, PathBuf};

use crate::core::data::load_triplets;
use crate::core::embeddings::Embeddings;
use crate::core::metrics::{evaluate, metric_keys, RetrievalIndex};
use crate::core::report::read_npy_f32;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn metrics_equal_the_reference() {
    let data = load_triplets(&fixture("patents-dev.json")).unwrap();
    let emb = read_npy_f32(&fixture("patents-dev-minilm-seq256.npy")).unwrap();
    let n = data.len();
    assert_eq!(emb.rows(), 3 * n);
    let part = |k: usize| {
        Embeddings::from_vec(
            emb.dim,
            emb.data[k * n * emb.dim..(k + 1) * n * emb.dim].to_vec(),
        )
    };
    let index = RetrievalIndex::build(&data.triplets, &part(0), &part(1), &part(2));
    let result = evaluate(&index);

    let reference: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("patents-dev-minilm-seq256-metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        result.n_corpus as u64,
        reference["n_corpus"].as_u64().unwrap()
    );
    assert_eq!(
        result.n_queries as u64,
        reference["n_queries"].as_u64().unwrap()
    );
    for key in metric_keys() {
        let want = reference["metrics"][&key]
            .as_f64()
            .unwrap_or_else(|| panic!("reference lacks {key}"));
        let got = result.metrics[&key];
        assert!(
            (got - want).abs() <= 1e-9,
            "{key}: {got} vs reference {want}"
        );
    }
    // And what sentence-transformers' own evaluators computed with the same model
    // (tests/fixtures/st_evaluators/st_evaluators.py): every metric they have, equal.
    let st: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("st_evaluators/patents-dev-minilm-seq256.json")).unwrap(),
    )
    .unwrap();
    for key in metric_keys()
        .into_iter()
        .filter(|k| !k.starts_with("neg_in_top_"))
    {
        let want = st["metrics"][&key].as_f64().unwrap();
        // TripletEvaluator returns its accuracy as a float32.
        let tol = if key == "cosine_accuracy" { 1e-6 } else { 1e-9 };
        let got = result.metrics[&key];
        assert!(
            (got - want).abs() <= tol,
            "{key}: {got} vs the evaluators' {want}"
        );
    }
    let rows = reference["per_triplet"].as_array().unwrap();
    assert_eq!(rows.len(), n);
    for (i, (got, want)) in result.per_triplet.iter().zip(rows).enumerate() {
        for (name, g) in [
            ("cos_pos", got.cos_pos),
            ("cos_neg", got.cos_neg),
            ("margin", got.margin),
        ] {
            let w = want[name].as_f64().unwrap();
            assert!((g - w).abs() <= 1e-6, "triplet {i} {name}: {g} vs {w}");
        }
        assert_eq!(
            got.rank_pos as u64,
            want["rank_pos"].as_u64().unwrap(),
            "triplet {i} rank_pos"
        );
        assert_eq!(
            got.rank_neg as u64,
            want["rank_neg"].as_u64().unwrap(),
            "triplet {i} rank_neg"
        );
    }
}

/// Truncation and quantisation on the same stored embeddings: each cell equals what
/// `tests/fixtures/quant/quant_reference.py` computes with numpy (sentence-transformers'
/// `quantize_embeddings` definitions) for int8 and binary at 384, int8 at 128, float32 at 256.
#[test]
fn quantised_cells_equal_the_reference() {
    use crate::core::metrics::quantize::{evaluate_cell, Precision};
    let data = load_triplets(&fixture("patents-dev.json")).unwrap();
    let emb = read_npy_f32(&fixture("patents-dev-minilm-seq256.npy")).unwrap();
    let n = data.len();
    let part = |k: usize| {
        Embeddings::from_vec(
            emb.dim,
            emb.data[k * n * emb.dim..(k + 1) * n * emb.dim].to_vec(),
        )
    };
    let (q, p, ng) = (part(0), part(1), part(2));
    for (file, dim, precision) in [
        ("patents-dev-int8-384.json", 384, Precision::Int8),
        ("patents-dev-binary-384.json", 384, Precision::Binary),
        ("patents-dev-int8-128.json", 128, Precision::Int8),
        ("patents-dev-float32-256.json", 256, Precision::Float32),
    ] {
        let reference: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(&format!("quant/{file}"))).unwrap())
                .unwrap();
        let result = evaluate_cell(&data.triplets, &q, &p, &ng, dim, precision, None);
        for (key, want) in reference["metrics"].as_object().unwrap() {
            let (got, want) = (result.metrics[key], want.as_f64().unwrap());
            assert!((got - want).abs() < 1e-9, "{file} {key}: {got} vs {want}");
        }
    }
    // ubinary ranks as binary.
    let b = evaluate_cell(&data.triplets, &q, &p, &ng, 384, Precision::Binary, None);
    let ub = evaluate_cell(&data.triplets, &q, &p, &ng, 384, Precision::Ubinary, None);
    assert_eq!(b.metrics, ub.metrics);
}
