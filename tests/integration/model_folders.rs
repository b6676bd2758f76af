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
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("t.json");
    std::fs::write(
        &data,
        serde_json::to_string(&crate::common::dev_triplets(3)).unwrap(),
    )
    .unwrap();
    // An empty HF cache and an endpoint nobody listens on: the hub cannot be reached. In a child
    // process, so the variables never leak into the other tests' threads.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tripletlab"))
        .args(["eval", "--model", "intfloat/e5-small-v2", "--data"])
        .arg(&data)
        .env("HF_HOME", work.path().join("hf"))
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("TRIPLETLAB_CACHE_DIR", work.path().join("cache"))
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
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

/// Rewrites a safetensors file's JSON header with `f` (the data stays as it was).
fn edit_safetensors_header(path: &std::path::Path, f: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    f(&mut header);
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn hostile_model_folders_get_clear_errors_and_nothing_is_allocated_for_them() {
    // Absurd sizes in config.json: refused at once, naming the file, before any allocation.
    for (key, value) in [
        ("num_hidden_layers", serde_json::json!(1_000_000_000u64)),
        ("vocab_size", serde_json::json!(1_000_000_000_000u64)),
        (
            "max_position_embeddings",
            serde_json::json!(1_000_000_000_000_000u64),
        ),
        ("intermediate_size", serde_json::json!(1_000_000_000_000u64)),
        ("hidden_size", serde_json::json!(4_000_000_000u64)),
    ] {
        let dir = tiny_model(&TinySpec::default());
        edit_json(&dir.path().join("config.json"), |v| v[key] = value.clone());
        let start = std::time::Instant::now();
        let msg = load_err(dir.path());
        assert!(
            msg.contains("config.json") && msg.contains("cannot hold"),
            "{key}: {msg}"
        );
        assert!(
            start.elapsed().as_secs() < 5,
            "{key}: took {:?}",
            start.elapsed()
        );
    }
    // safetensors headers that lie: a header longer than the file, a tensor past the end,
    // two tensors on the same bytes.
    type Edit = fn(&std::path::Path);
    let cases: [(&str, Edit); 3] = [
        ("header length", |w| {
            let mut b = std::fs::read(w).unwrap();
            b[..8].copy_from_slice(&(u64::MAX / 4).to_le_bytes());
            std::fs::write(w, b).unwrap();
        }),
        ("past the end", |w| {
            edit_safetensors_header(w, |h| {
                let t = &mut h["embeddings.word_embeddings.weight"]["data_offsets"];
                t[1] = serde_json::json!(t[1].as_u64().unwrap() + 1_000_000_000);
            });
        }),
        ("overlapping", |w| {
            edit_safetensors_header(w, |h| {
                let other = h["embeddings.LayerNorm.bias"]["data_offsets"].clone();
                h["embeddings.LayerNorm.weight"]["data_offsets"] = other;
            });
        }),
    ];
    for (what, edit) in cases {
        let dir = tiny_model(&TinySpec::default());
        edit(&dir.path().join("model.safetensors"));
        let msg = load_err(dir.path());
        assert!(msg.contains("model.safetensors"), "{what}: {msg}");
    }
    // An empty tokenizer.json, and one far past any real tokenizer's size (sparse: no disk used).
    let dir = tiny_model(&TinySpec::default());
    std::fs::write(dir.path().join("tokenizer.json"), b"").unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("tokenizer.json") && msg.contains("empty"),
        "{msg}"
    );
    let f = std::fs::File::create(dir.path().join("tokenizer.json")).unwrap();
    f.set_len(300 << 20).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("tokenizer.json") && msg.contains("limit"),
        "{msg}"
    );
    // A FIFO in place of config.json would block a plain open: refused at once instead.
    let dir = tiny_model(&TinySpec::default());
    let config = dir.path().join("config.json");
    std::fs::remove_file(&config).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(&config)
        .status()
        .unwrap()
        .success());
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dir.path().to_path_buf();
    std::thread::spawn(move || tx.send(load_err(&path)));
    let msg = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("opening a FIFO blocked");
    assert!(msg.contains("config.json") && msg.contains("FIFO"), "{msg}");
}

/// A model folder swapped for another (a different width) while jobs load and embed from it:
/// each load gives a whole model of one width or the other, or a clear error naming a file;
/// never a panic or a mix.
#[test]
fn a_model_folder_replaced_while_jobs_read_it_gives_one_model_or_a_clear_error() {
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("model");
    let other = work.path().join("other");
    tripletlab::core::model::tiny::write_tiny_bert(&target, &TinySpec::default()).unwrap();
    let wide = TinySpec {
        hidden_size: 48,
        seed: 9,
        ..TinySpec::default()
    };
    tripletlab::core::model::tiny::write_tiny_bert(&other, &wide).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (target, other, stop) = (target.clone(), other.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut swaps = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &target,
                    rustix::fs::CWD,
                    &other,
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
                swaps += 1;
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
            swaps
        })
    };
    let (mut ok, mut refused) = (0, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
    while std::time::Instant::now() < deadline {
        match Encoder::load(
            &ModelSource::Dir(target.clone()),
            &EncoderOptions::default(),
            &mut |_| {},
        ) {
            Ok(enc) => {
                let (emb, _) = crate::common::quiet(|ctx| {
                    enc.encode(
                        &["a wind turbine blade"],
                        tripletlab::core::encoder::Role::Query,
                        ctx,
                    )
                })
                .unwrap();
                assert!(emb.dim == 32 || emb.dim == 48, "dim {}", emb.dim);
                assert!(emb.row(0).iter().all(|v| v.is_finite()));
                ok += 1;
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&target.display().to_string()),
                    "unclear: {msg}"
                );
                refused += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    eprintln!("{swaps} swaps: {ok} loads whole, {refused} refused with a message");
    assert!(swaps > 100 && ok > 0);
}
