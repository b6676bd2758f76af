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
        v["intermediate_size"] = 48.into();
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("shape"),
        "{msg}"
    );

    let dir = tiny_model(&TinySpec::default());
    edit_json(&dir.path().join("config.json"), |v| {
        v["model_type"] = "gpt2".into();
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("gpt2") && msg.contains("config.json") && msg.contains("camembert, mpnet"),
        "{msg}"
    );

    let dir = tiny_model(&TinySpec::default());
    edit_json(&dir.path().join("1_Pooling/config.json"), |v| {
        v["word_embedding_dimension"] = 64.into();
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

/// A local stand-in for the Hugging Face hub, speaking the part of its protocol hf-hub uses:
/// `GET /{repo}/resolve/main/{file}` with a `Range` header, answered with `etag`,
/// `x-repo-commit` and `content-range`. It serves the files of `repo_dir` as repository `repo`;
/// other repositories get 401 (as the hub answers for a missing or private one), missing files
/// 404. Returns the endpoint URL.
fn mock_hub(repo: &'static str, repo_dir: std::path::PathBuf) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let repo_dir = repo_dir.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut request, mut range) = (String::new(), (0usize, None::<usize>));
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    if request.is_empty() {
                        request = line.clone();
                    }
                    if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        let (a, b) = r.trim().split_once('-').unwrap_or(("0", ""));
                        range = (a.parse().unwrap_or(0), b.parse().ok());
                    }
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut out = stream;
                let mut reply = |status: &str, headers: &str, body: &[u8]| {
                    let head = format!(
                        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = out.write_all(head.as_bytes());
                    let _ = out.write_all(body);
                };
                let Some(file) = path.strip_prefix(&format!("/{repo}/resolve/main/")) else {
                    return reply("401 Unauthorized", "", b"");
                };
                let Ok(bytes) = std::fs::read(repo_dir.join(file)) else {
                    return reply("404 Not Found", "", b"");
                };
                let start = range.0.min(bytes.len());
                let end = range.1.map_or(bytes.len(), |e| (e + 1).min(bytes.len()));
                let headers = format!(
                    "etag: \"{}\"\r\nx-repo-commit: 0123456789abcdef0123456789abcdef01234567\r\n\
                     content-range: bytes {start}-{}/{}\r\n",
                    blake3::hash(&bytes).to_hex(),
                    end.saturating_sub(1),
                    bytes.len()
                );
                reply("206 Partial Content", &headers, &bytes[start..end]);
            });
        }
    });
    url
}

#[test]
fn a_hub_model_downloads_into_the_cache_and_a_missing_id_is_named() {
    let model = tiny_model(&TinySpec::default());
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("t.json");
    std::fs::write(
        &data,
        serde_json::to_string(&crate::common::dev_triplets(12)).unwrap(),
    )
    .unwrap();
    let endpoint = mock_hub("acme/tiny-bert", model.path().to_path_buf());
    let hf_home = work.path().join("hf");
    let run = |id: &str, endpoint: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tripletlab"))
            .args(["eval", "--data", data.to_str().unwrap(), "--model", id])
            .env("HF_HOME", &hf_home)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_HUB_OFFLINE")
            .env("HF_ENDPOINT", endpoint)
            .env("TRIPLETLAB_CACHE_DIR", work.path().join("cache"))
            .output()
            .unwrap()
    };
    let out = run("acme/tiny-bert", &endpoint);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Model acme/tiny-bert"), "{stderr}");
    let snapshot = hf_home.join("hub/models--acme--tiny-bert/snapshots");
    assert!(snapshot.is_dir(), "nothing in the HF cache");

    // Cached: no endpoint needed any more.
    let out = run("acme/tiny-bert", "http://127.0.0.1:9");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run("acme/does-not-exist", &endpoint);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`acme/does-not-exist` was not found on the Hugging Face hub"),
        "{stderr}"
    );
}
