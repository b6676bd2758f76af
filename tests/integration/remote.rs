//! Remote encoders against a loopback server with text-embeddings-inference's and OpenAI's
//! shapes, whose vectors come from the local tiny model: the same metrics as local evaluation
//! through injected 413s (batches over 8), 429s (every fifth request), a dropped connection and
//! shuffled OpenAI rows; a wrong key exits 1 naming the 401; the app embeds remotely with progress
//! and cancel.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tripletlab::core::encoder::{Encoder, EncoderOptions, PromptChoice, Role};
use tripletlab::core::model::tiny::TinySpec;

use crate::common::{dev_triplets, quiet, tiny_model};

/// What the mock server does.
#[derive(Clone)]
struct Mock {
    encoder: Arc<Encoder>,
    key: Option<String>,
    /// Sleep before each answer (to test cancel).
    delay_ms: u64,
    posts: Arc<AtomicUsize>,
}

fn respond(stream: &mut std::net::TcpStream, status: u16, extra: &str, body: &Value) {
    let text = body.to_string();
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        _ => "Error",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{text}",
        text.len()
    );
}

fn handle(mock: &Mock, mut stream: std::net::TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let (mut len, mut auth) = (0usize, None::<String>);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("authorization:") {
            auth = Some(h["authorization:".len()..].trim().to_string());
        }
    }
    let mut body = vec![0u8; len];
    let _ = reader.read_exact(&mut body);
    if let Some(k) = &mock.key {
        if auth.as_deref() != Some(&format!("Bearer {k}")) {
            return respond(
                &mut stream,
                401,
                "",
                &json!({"error": "Unauthorized", "error_type": "Unauthorized"}),
            );
        }
    }
    if method == "GET" && path == "/info" {
        return respond(
            &mut stream,
            200,
            "",
            &json!({
            "model_id": "tiny/mock", "model_sha": "abc123", "max_client_batch_size": 8,
            "max_input_length": 64, "version": "mock"}),
        );
    }
    if method != "POST" || !(path == "/embed" || path == "/v1/embeddings") {
        return respond(&mut stream, 404, "", &json!({"error": "not found"}));
    }
    std::thread::sleep(Duration::from_millis(mock.delay_ms));
    let n = mock.posts.fetch_add(1, Ordering::SeqCst) + 1;
    if n == 3 {
        return; // drop the connection without an answer
    }
    if n.is_multiple_of(5) {
        return respond(
            &mut stream,
            429,
            "Retry-After: 0\r\n",
            &json!({"error": "Model is overloaded"}),
        );
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let inputs: Vec<String> = req
        .get("inputs")
        .or_else(|| req.get("input"))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    if inputs.len() > 8 {
        return respond(
            &mut stream,
            413,
            "",
            &json!({"error": format!("batch size {} > maximum allowed batch size 8", inputs.len())}),
        );
    }
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let (emb, _) = quiet(|ctx| mock.encoder.encode(&refs, Role::Query, ctx)).unwrap();
    if path == "/embed" {
        let rows: Vec<Vec<f32>> = (0..emb.rows()).map(|i| emb.row(i).to_vec()).collect();
        return respond(&mut stream, 200, "", &json!(rows));
    }
    let b64 = req["encoding_format"] == "base64";
    // Rows in reverse: the client must put them back by `index`.
    let data: Vec<Value> = (0..emb.rows())
        .rev()
        .map(|i| {
            let e = if b64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = emb.row(i).iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(emb.row(i))
            };
            json!({"object": "embedding", "index": i, "embedding": e})
        })
        .collect();
    respond(
        &mut stream,
        200,
        "",
        &json!({"object": "list", "data": data, "model": req["model"]}),
    );
}

/// Starts the server on a free port; returns its base URL.
fn serve(mock: Mock) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mock = mock.clone();
            std::thread::spawn(move || handle(&mock, stream));
        }
    });
    url
}

fn mock(model: &Path, key: Option<&str>, delay_ms: u64) -> Mock {
    let opts = EncoderOptions {
        prompts: PromptChoice::None,
        ..Default::default()
    };
    Mock {
        encoder: Arc::new(crate::common::encoder(model, &opts)),
        key: key.map(str::to_string),
        delay_ms,
        posts: Arc::new(AtomicUsize::new(0)),
    }
}

fn run(args: &[&str], cache: &Path, key: Option<&str>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tripletlab"));
    c.args(args)
        .env("TRIPLETLAB_CACHE_DIR", cache)
        .env_remove("TRIPLETLAB_API_KEY");
    if let Some(k) = key {
        c.env("TRIPLETLAB_API_KEY", k);
    }
    c.output().unwrap()
}

#[test]
fn remote_models_give_the_local_metrics_through_413s_429s_and_dropped_connections() {
    let model = tiny_model(&TinySpec::default());
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data.json");
    std::fs::write(&data, serde_json::to_string(&dev_triplets(60)).unwrap()).unwrap();
    let d = data.to_str().unwrap();
    let cache = work.path().join("cache");
    let eval_json = |model: &str, out: &str, key: Option<&str>| -> Value {
        let path = work.path().join(out);
        let o = run(
            &[
                "eval",
                "--data",
                d,
                "--model",
                model,
                "--prompts",
                "none",
                "--json",
                path.to_str().unwrap(),
            ],
            &cache,
            key,
        );
        assert!(
            o.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    };
    let local = eval_json(model.path().to_str().unwrap(), "local.json", None);
    let m = mock(model.path(), Some("secret"), 0);
    let posts = m.posts.clone();
    let url = serve(m);
    for spec in [format!("tei:{url}"), format!("openai:{url}/v1#tiny-mock")] {
        let remote = eval_json(&spec, "remote.json", Some("secret"));
        for key in tripletlab::core::metrics::metric_keys() {
            let (a, b) = (
                local["metrics"][&key].as_f64().unwrap(),
                remote["metrics"][&key].as_f64().unwrap(),
            );
            assert!(
                (a - b).abs() <= 0.002,
                "{spec} {key}: remote {b} vs local {a}"
            );
        }
        assert_eq!(remote["settings"]["model"], spec.as_str());
        assert!(
            !remote.to_string().contains("secret"),
            "the key leaked into the report"
        );
    }
    assert!(
        posts.load(Ordering::SeqCst) > 20,
        "batches of at most 8, after 413s"
    );
    // A second run is served from the cache: no batch is sent.
    let before = posts.load(Ordering::SeqCst);
    eval_json(&format!("tei:{url}"), "again.json", Some("secret"));
    assert!(
        posts.load(Ordering::SeqCst) <= before + 1,
        "only the connection's probe"
    );
    // The cache never holds the key.
    for entry in walk(&cache) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(6).any(|w| w == b"secret"),
            "{}",
            entry.display()
        );
    }
    // A wrong key: exit 1, naming the 401.
    let o = run(
        &["eval", "--data", d, "--model", &format!("tei:{url}")],
        &cache,
        Some("wrong"),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("401") && err.contains("TRIPLETLAB_API_KEY") && !err.contains("wrong"),
        "{err}"
    );
    // Nothing listening, and a wrong route.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let o = run(
        &[
            "eval",
            "--data",
            d,
            "--model",
            &format!("tei:http://{dead}"),
        ],
        &cache,
        None,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("cannot connect"),
        "{err}"
    );
    let o = run(
        &[
            "eval",
            "--data",
            d,
            "--model",
            &format!("openai:{url}/nope"),
        ],
        &cache,
        Some("secret"),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("404"), "{err}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_app_embeds_from_a_remote_model_with_progress_and_cancel() {
    use egui_kittest::kittest::Queryable;
    let model = tiny_model(&TinySpec::default());
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data.json");
    std::fs::write(&data, serde_json::to_string(&dev_triplets(40)).unwrap()).unwrap();
    let fast = serve(mock(model.path(), None, 0));
    let slow = serve(mock(model.path(), None, 300));
    let options = tripletlab::gui::AppOptions {
        data: Some(data.clone()),
        model: Some(format!("tei:{fast}")),
        recovery_dir: Some(work.path().join("recovered")),
        ..Default::default()
    };
    let mut h = egui_kittest::Harness::builder()
        .with_size(eframe::egui::vec2(1400.0, 900.0))
        .build_eframe(move |cc| tripletlab::gui::App::new(cc, options));
    h.state_mut().settings.use_cache = false;
    let wait = |h: &mut egui_kittest::Harness<'static, tripletlab::gui::App>,
                what: &str,
                f: &dyn Fn(&tripletlab::gui::App) -> bool| {
        let start = std::time::Instant::now();
        while !f(h.state()) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}"
            );
            h.step();
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait(&mut h, "the file", &|a| a.dataset.is_some());
    h.get_by_label("Embed").click();
    wait(&mut h, "the remote embedding", &|a| a.zero_shot.is_some());
    let remote = h.state().zero_shot.clone().unwrap();
    assert_eq!(remote.result.n_triplets, 40);
    // Cancel a slow remote run: progress shows, Cancel ends it within seconds.
    h.state_mut().settings.model = format!("tei:{slow}");
    h.state_mut()
        .commands
        .push(tripletlab::gui::Command::StartEmbed);
    wait(&mut h, "progress", &|a| {
        a.embed_progress.as_ref().is_some_and(|p| p.done > 0)
    });
    let start = std::time::Instant::now();
    h.get_by_label("Cancel embedding").click();
    wait(&mut h, "the cancel", &|a| {
        !a.is_running(tripletlab::gui::JobKind::Embed)
    });
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        start.elapsed()
    );
    assert!(h
        .state()
        .notifications
        .iter()
        .any(|n| n.text.contains("cancelled")));
}
