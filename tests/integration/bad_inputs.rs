//! The bad-input corpus in tests/fixtures/bad (made by make.py, outcomes in expected.json) through
//! the loader, the CLI and the GUI, plus a bounded property test: mutated files never panic.

use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use tripletlab::core::data::{load_triplets, parse_triplets, Dataset};

use crate::common::fixture;

fn corpus() -> Vec<(PathBuf, serde_json::Value)> {
    let expected: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixture("bad/expected.json")).unwrap()).unwrap();
    assert!(
        expected.len() >= 30,
        "the corpus has {} files",
        expected.len()
    );
    expected
        .into_iter()
        .map(|(name, e)| (fixture(&format!("bad/{name}")), e))
        .collect()
}

fn check(path: &std::path::Path, expect: &serde_json::Value, result: Result<Dataset, String>) {
    let name = path.file_name().unwrap().to_string_lossy();
    match (expect.get("error"), result) {
        (Some(needles), Err(msg)) => {
            for n in needles.as_array().unwrap() {
                assert!(
                    msg.contains(n.as_str().unwrap()),
                    "{name}: message {msg:?} lacks {n}"
                );
            }
        }
        (None, Ok(d)) => {
            assert_eq!(
                d.len() as u64,
                expect["loaded"].as_u64().unwrap(),
                "{name}: triplets"
            );
            let skipped: Vec<u64> = d.report.skipped.iter().map(|s| s.index as u64).collect();
            let want: Vec<u64> = expect["skipped"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(skipped, want, "{name}: skipped rows");
            if let Some(w) = expect.get("warnings") {
                assert_eq!(
                    d.report.warnings.len() as u64,
                    w.as_u64().unwrap(),
                    "{name}: warnings"
                );
            }
        }
        (Some(_), Ok(d)) => panic!("{name}: expected an error, loaded {} triplets", d.len()),
        (None, Err(msg)) => panic!("{name}: expected a dataset, got {msg}"),
    }
}

#[test]
fn every_corpus_file_gives_its_expected_outcome_in_the_loader() {
    for (path, expect) in corpus() {
        check(
            &path,
            &expect,
            load_triplets(&path).map_err(|e| e.to_string()),
        );
    }
}

#[test]
fn every_corpus_file_gives_its_expected_outcome_in_the_cli() {
    let model = crate::common::tiny_model(&tripletlab::core::model::tiny::TinySpec::default());
    let cache = tempfile::tempdir().unwrap();
    for (path, expect) in corpus() {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tripletlab"))
            .args([
                "eval",
                "--data",
                path.to_str().unwrap(),
                "--model",
                model.path().to_str().unwrap(),
                "--max-seq-len",
                "32",
            ])
            .env("TRIPLETLAB_CACHE_DIR", cache.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = path.file_name().unwrap().to_string_lossy();
        if let Some(needles) = expect.get("error") {
            assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
            assert!(
                stderr.starts_with("Error: ") || stderr.contains("\nError: "),
                "{name}: {stderr}"
            );
            for n in needles.as_array().unwrap() {
                assert!(
                    stderr.contains(n.as_str().unwrap()),
                    "{name}: {stderr:?} lacks {n}"
                );
            }
        } else {
            assert!(out.status.success(), "{name}: {stderr}");
            let n_skipped = expect["skipped"].as_array().unwrap().len();
            if n_skipped > 0 {
                assert!(
                    stderr.contains(&format!("skipped {n_skipped} rows")),
                    "{name}: {stderr}"
                );
            }
        }
    }
}

#[test]
fn missing_files_and_directories_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(load_triplets(&dir.path().join("missing.json"))
        .unwrap_err()
        .to_string()
        .contains("missing.json"));
    assert!(load_triplets(dir.path())
        .unwrap_err()
        .to_string()
        .contains("is a directory"));
}

#[test]
fn mutated_files_never_panic() {
    // Bounded property test: random byte edits, truncations and splices of valid files.
    let seeds: Vec<Vec<u8>> = [
        "bad/one-triplet.json",
        "bad/jsonl-blank-lines.jsonl",
        "bad/mixed-key-sets.json",
        "bad/unicode.json",
    ]
    .iter()
    .map(|f| std::fs::read(fixture(f)).unwrap())
    .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261129);
    let cases = 3000;
    let start = std::time::Instant::now();
    for case in 0..cases {
        let mut bytes = seeds[case % seeds.len()].clone();
        for _ in 0..rng.random_range(1..6) {
            match rng.random_range(0..4) {
                0 if !bytes.is_empty() => {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] = rng.random();
                }
                1 if !bytes.is_empty() => {
                    let cut = rng.random_range(0..bytes.len());
                    bytes.truncate(cut);
                }
                2 => {
                    let i = rng.random_range(0..=bytes.len());
                    let piece: &[u8] = [
                        &b"{"[..],
                        b"}",
                        b"[",
                        b"]",
                        b"\"",
                        b",",
                        b":",
                        b"null",
                        b"\n",
                        b"\xff",
                        b"\"query\"",
                    ][rng.random_range(0..11)];
                    bytes.splice(i..i, piece.iter().copied());
                }
                _ if bytes.len() > 2 => {
                    let i = rng.random_range(0..bytes.len() - 1);
                    bytes.swap(i, i + 1);
                }
                _ => {}
            }
        }
        let r = std::panic::catch_unwind(|| {
            parse_triplets(std::path::Path::new("mutated.json"), &bytes)
        });
        assert!(
            r.is_ok(),
            "case {case} panicked on {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
    eprintln!(
        "{cases} mutated files in {:.2} s",
        start.elapsed().as_secs_f64()
    );
}

/// Sets the flag when dropped: a writer thread stops even when an assertion of the reading loop
/// fails and unwinds (else the scope would wait for it forever while it fills the disk).
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_file_rewritten_while_it_is_loaded_gives_one_version_or_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moving.jsonl");
    let line = |i: usize| {
        format!(
            "{{\"query\": \"q{i} {pad}\", \"pos\": \"p{i}\", \"negative\": \"n{i}\"}}\n",
            pad = "word ".repeat(200)
        )
    };
    let version = |n: usize| (0..n).map(line).collect::<String>();
    let (small, large) = (300, 900);
    std::fs::write(&path, version(small)).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut whole, mut changed) = (0, 0);
    std::thread::scope(|s| {
        // A pipeline that replaces the file (write elsewhere, rename) and one that appends to it.
        s.spawn(|| {
            let tmp = dir.path().join("moving.tmp");
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::write(&tmp, version(if i % 2 == 0 { large } else { small })).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
                i += 1;
            }
        });
        let _stop = StopOnDrop(&stop);
        for _ in 0..150 {
            match load_triplets(&path) {
                Ok(d) => {
                    assert!(d.len() == small || d.len() == large, "{} rows", d.len());
                    assert!(d.report.skipped.is_empty());
                    whole += 1;
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains("changed while it was being read"), "{msg}");
                    assert!(msg.contains("moving.jsonl"), "{msg}");
                    changed += 1;
                }
            }
        }
    });
    eprintln!("replaced while loading: {whole} whole versions, {changed} refused as changed");

    // Appending: a prefix of whole lines (a cut last line is a skipped row) or a clear error.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::fs::write(&path, version(10)).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            let text = line(7);
            // At most 256 MiB, whatever happens to the reader.
            let mut written = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && written < 256 << 20 {
                let (a, b) = text.split_at(text.len() / 2);
                f.write_all(a.as_bytes()).unwrap();
                f.write_all(b.as_bytes()).unwrap();
                written += text.len();
            }
        });
        let _stop = StopOnDrop(&stop);
        for _ in 0..50 {
            match load_triplets(&path) {
                Ok(d) => assert!(d.report.skipped.len() <= 1),
                Err(e) => assert!(e.to_string().contains("moving.jsonl"), "{e}"),
            }
        }
    });
}
