//! The `tripletlab` binary end to end: output, JSON, cache, exit codes and error messages.

use std::path::Path;
use std::process::{Command, Output};

use tripletlab::core::model::tiny::TinySpec;

use crate::common::{dev_triplets, tiny_model};

fn tripletlab(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tripletlab"))
        .args(args)
        .env("TRIPLETLAB_CACHE_DIR", cache)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn eval_prints_metrics_writes_json_and_reuses_the_cache() {
    let model = tiny_model(&TinySpec::default());
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("t.json");
    std::fs::write(&data, serde_json::to_string(&dev_triplets(40)).unwrap()).unwrap();
    let json = work.path().join("out.json");
    let cache = work.path().join("cache");
    let args = [
        "eval",
        "--data",
        data.to_str().unwrap(),
        "--model",
        model.path().to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    let out = tripletlab(&args, &cache);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for key in tripletlab::core::metrics::metric_keys() {
        assert!(stdout.contains(&key), "table lacks {key}:\n{stdout}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["per_triplet"].as_array().unwrap().len(), 40);
    // The same numbers as core's evaluation of the same model and triplets (to the last digits
    // JSON text keeps: serde_json may read a printed f64 back one ulp off).
    let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() <= 1e-12);
    let expected = crate::common::quiet(|ctx| {
        tripletlab::core::pipeline::evaluate_model(
            &tripletlab::core::model::ModelSource::Dir(model.path().to_path_buf()),
            &Default::default(),
            &dev_triplets(40),
            None,
            ctx,
        )
    })
    .unwrap();
    for (key, want) in &expected.result.metrics {
        assert!(close(report["metrics"][key].as_f64(), *want), "{key}");
        assert!(
            stdout.contains(&format!("{want:.4}")),
            "the table does not print {key} = {want:.4}"
        );
    }
    for (row, want) in report["per_triplet"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&expected.result.per_triplet)
    {
        assert!(close(row["cos_pos"].as_f64(), want.cos_pos));
        assert_eq!(row["rank_pos"].as_u64(), Some(want.rank_pos as u64));
    }
    for k in [
        "model",
        "weights_hash",
        "prompts",
        "max_seq_len",
        "truncate_dim",
        "tool_version",
    ] {
        assert!(report["settings"].get(k).is_some(), "settings lack {k}");
    }
    let row = &report["per_triplet"][0];
    for k in ["cos_pos", "cos_neg", "margin", "rank_pos", "rank_neg"] {
        assert!(row.get(k).is_some(), "per_triplet rows lack {k}");
    }

    let again = tripletlab(&args, &cache);
    assert!(again.status.success());
    let stderr = text(&again.stderr);
    assert!(
        stderr.contains("0 computed"),
        "second run was not served from the cache:\n{stderr}"
    );
    assert_eq!(text(&again.stdout), stdout);
}

#[test]
fn embed_writes_npy_rows_queries_then_positives_then_negatives() {
    let model = tiny_model(&TinySpec::default());
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("t.jsonl");
    let lines: Vec<String> = dev_triplets(5)
        .iter()
        .map(|t| serde_json::to_string(t).unwrap())
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let npy = work.path().join("e.npy");
    let out = tripletlab(
        &[
            "embed",
            "--data",
            data.to_str().unwrap(),
            "--model",
            model.path().to_str().unwrap(),
            "--out",
            npy.to_str().unwrap(),
            "--no-cache",
        ],
        &work.path().join("cache"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = tripletlab::core::report::read_npy_f32(&npy).unwrap();
    assert_eq!((m.rows(), m.dim), (15, 32));
    // Row r is the vector of: query r (0-4), positive r-5 (5-9), negative r-10 (10-14).
    let enc = crate::common::encoder(model.path(), &Default::default());
    let emb = crate::common::quiet(|ctx| {
        tripletlab::core::encoder::embed_triplets(&enc, &dev_triplets(5), None, ctx)
    })
    .unwrap();
    for (block, want) in [&emb.queries, &emb.positives, &emb.negatives]
        .iter()
        .enumerate()
    {
        for i in 0..5 {
            let got = m.row(block * 5 + i);
            let d = got
                .iter()
                .zip(want.row(i))
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                d < 1e-6,
                "row {} is not text {i} of block {block}",
                block * 5 + i
            );
        }
    }
    // The three blocks differ (a shape-only check would pass with any order).
    assert!(m.row(0) != m.row(5) && m.row(5) != m.row(10));
    assert!(
        !work.path().join("cache").exists(),
        "--no-cache wrote the cache"
    );
}

#[test]
fn errors_exit_non_zero_with_a_message() {
    let model = tiny_model(&TinySpec::default());
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let bad = work.path().join("bad.json");
    std::fs::write(&bad, "[{\"query\": \"q\",\n \"pos\": ]").unwrap();
    let m = model.path().to_str().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "eval".into(),
                "--data".into(),
                "/no/such/file.json".into(),
                "--model".into(),
                m.into(),
            ],
            "/no/such/file.json",
        ),
        (
            vec![
                "eval".into(),
                "--data".into(),
                bad.display().to_string(),
                "--model".into(),
                m.into(),
            ],
            "bad.json:2:",
        ),
        (
            vec![
                "eval".into(),
                "--data".into(),
                work.path().display().to_string(),
                "--model".into(),
                m.into(),
            ],
            "is a directory",
        ),
        (
            vec![
                "eval".into(),
                "--data".into(),
                crate::common::fixture("patents-dev.json")
                    .display()
                    .to_string(),
                "--model".into(),
                "/no/model".into(),
            ],
            "/no/model",
        ),
        (
            vec![
                "eval".into(),
                "--data".into(),
                crate::common::fixture("patents-dev.json")
                    .display()
                    .to_string(),
                "--model".into(),
                m.into(),
                "--prompts".into(),
                "weird".into(),
            ],
            "prompts must be",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = tripletlab(&args, &cache);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("Error: ") && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
    }
}

/// The memory budget for reading a triplet file (README "Limits"): peak RSS at most 3.5 times the
/// file's size plus 64 MiB, checked on a 100 MB JSON-lines file.
#[test]
fn checking_a_100_mb_file_stays_within_the_memory_budget() {
    use std::io::Write;
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("big.jsonl");
    let rows = dev_triplets(500);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let (mut size, mut n) = (0usize, 0usize);
    while size < 100_000_000 {
        let t = &rows[n % rows.len()];
        let copy = n / rows.len();
        let line = serde_json::json!({
            "query": format!("{} ({copy})", t.query),
            "pos": format!("{} ({copy})", t.pos),
            "negative": format!("{} ({copy})", t.negative),
        })
        .to_string();
        writeln!(f, "{line}").unwrap();
        size += line.len() + 1;
        n += 1;
    }
    drop(f);
    let out = tripletlab(&["check", "--data", path.to_str().unwrap()], work.path());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains(&format!("{n} triplets,")), "{stdout}");
    let peak: f64 = stdout
        .split("peak memory ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory in {stdout}"));
    let budget = 3.5 * size as f64 / (1 << 20) as f64 + 64.0;
    eprintln!("{size} bytes, {n} triplets: peak {peak} MiB (budget {budget:.0} MiB)");
    assert!(
        peak <= budget,
        "peak {peak} MiB over the budget {budget:.0} MiB"
    );

    // The app's path on the same file: read, embed every distinct text (the tiny model, no
    // cache), index, metrics. The budget: reading's, plus the vectors and their normalised
    // copies, plus the model, tokenizer and engine buffers.
    let model = tiny_model(&TinySpec::default());
    let start = std::time::Instant::now();
    let out = tripletlab(
        &[
            "eval",
            "--data",
            path.to_str().unwrap(),
            "--model",
            model.path().to_str().unwrap(),
            "--no-cache",
            "--prompts",
            "none",
        ],
        work.path(),
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let peak: f64 = stderr
        .split("Peak memory ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory in {stderr}"));
    let vectors = (n * 3 * 32 * 4 * 3) as f64 / (1 << 20) as f64;
    let budget = 3.5 * size as f64 / (1 << 20) as f64 + vectors + 320.0;
    eprintln!(
        "eval of {n} triplets: peak {peak} MiB (budget {budget:.0} MiB) in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        peak <= budget,
        "eval peak {peak} MiB over the budget {budget:.0} MiB"
    );
}
