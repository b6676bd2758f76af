//! Helpers shared by the integration tests: fixtures, the tiny model, the real model folder.

use std::path::{Path, PathBuf};

use tripletlab::core::data::Triplet;
use tripletlab::core::encoder::{Encoder, EncoderOptions};
use tripletlab::core::jobs::{CancelToken, JobCtx, Update};
use tripletlab::core::model::tiny::{write_tiny_bert, TinySpec};
use tripletlab::core::model::ModelSource;

/// A file under `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Runs `f` with a context that ignores updates.
pub fn quiet<R>(f: impl FnOnce(&JobCtx<'_, ()>) -> R) -> R {
    let emit = |_: Update<()>| {};
    f(&JobCtx::new(CancelToken::new(), &emit))
}

/// Writes a tiny model into a new temporary folder (kept alive by the returned guard).
pub fn tiny_model(spec: &TinySpec) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), spec).unwrap();
    dir
}

/// Loads an encoder from a folder.
pub fn encoder(dir: &Path, opts: &EncoderOptions) -> Encoder {
    Encoder::load(&ModelSource::Dir(dir.to_path_buf()), opts, &mut |_| {}).unwrap()
}

/// The real all-MiniLM-L6-v2 folder unpacked by `scripts/fetch-test-model.sh`.
pub fn real_model_dir() -> PathBuf {
    let dir = std::env::var_os("TRIPLETLAB_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/tripletlab/test-models/all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("model.safetensors").is_file(),
        "the real test model is not at {}: run scripts/fetch-test-model.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// The first `n` triplets of the dev fixture.
pub fn dev_triplets(n: usize) -> Vec<Triplet> {
    let d = tripletlab::core::data::load_triplets(&fixture("patents-dev.json")).unwrap();
    d.triplets.into_iter().take(n).collect()
}

/// Cosine of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Runs the binary with its cache in `cache`.
pub fn tripletlab(args: &[&str], cache: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tripletlab"))
        .args(args)
        .env("TRIPLETLAB_CACHE_DIR", cache)
        .output()
        .unwrap()
}

/// The stderr of a run that must have succeeded.
pub fn ok(out: std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}
