//! Broken model folders give errors that name the file and the problem.

use tripletlab::core::encoder::{Encoder, EncoderOptions};
use tripletlab::core::model::tiny::TinySpec;
use tripletlab::core::model::ModelSource;

use crate::common::tiny_model;

fn load_err(dir: &std::path::Path) -> String {
    match Encoder::load(
        &ModelSource::Dir(dir.to_path_buf()),
        &EncoderOptions::default(),
        &mut |_| {},
    ) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_json(path: &std::path::Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn missing_folder_and_files() {
    let dir = tiny_model(&TinySpec::default());
    let msg = load_err(&dir.path().join("nope"));
    assert!(msg.contains("does not exist"), "{msg}");

    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("tokenizer.json") && msg.contains("missing"),
        "{msg}"
    );

    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("config.json") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn corrupt_and_truncated_weights() {
    let dir = tiny_model(&TinySpec::default());
    let w = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model.safetensors"), "{msg}");
    std::fs::write(&w, b"not a safetensors file at all").unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn wrong_shapes_architecture_and_pooling() {
    let dir = tiny_model(&TinySpec::default());
    edit_json(&dir.path().join("config.json"), |v| {
        v["intermediate_size"] = 48.into()
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("shape"),
        "{msg}"
    );

    let dir = tiny_model(&TinySpec::default());
    edit_json(&dir.path().join("config.json"), |v| {
        v["model_type"] = "roberta".into()
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("roberta") && msg.contains("config.json"),
        "{msg}"
    );

    let dir = tiny_model(&TinySpec::default());
    edit_json(&dir.path().join("1_Pooling/config.json"), |v| {
        v["word_embedding_dimension"] = 64.into()
    });
    let msg = load_err(dir.path());
    assert!(msg.contains("1_Pooling") && msg.contains("64"), "{msg}");
}

#[test]
fn hub_id_without_network_or_cache_says_how_to_use_a_folder() {
    let cache = tempfile::tempdir().unwrap();
    // An empty HF cache and an endpoint nobody listens on: the hub cannot be reached.
    std::env::set_var("HF_HOME", cache.path());
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    let r = Encoder::load(
        &ModelSource::Hub("intfloat/e5-small-v2".into()),
        &EncoderOptions::default(),
        &mut |_| {},
    );
    let msg = r.err().unwrap().to_string();
    assert!(
        msg.contains("intfloat/e5-small-v2") && msg.contains("local model folder"),
        "{msg}"
    );
}
