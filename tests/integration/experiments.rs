//! Honest experiments end to end through the binary: a fine-tune writes its run record and
//! refuses to overwrite a folder; `compare` measures on the held-out rows by default, and its
//! metrics on a subset are exactly `eval`'s on a file holding only those rows; intervals and
//! p-values are in the JSON; reports are written.

use std::path::Path;

use tripletlab::core::model::tiny::TinySpec;
use tripletlab::core::pipeline::RunRecord;

use crate::common::{dev_triplets, ok, tiny_model, tripletlab};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn compare_measures_the_held_out_rows_as_eval_would_on_a_file_of_them() {
    let model = tiny_model(&TinySpec::default());
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n).to_str().unwrap().to_string();
    let triplets = dev_triplets(60);
    std::fs::write(p("data.json"), serde_json::to_string(&triplets).unwrap()).unwrap();
    let cache = work.path().join("cache");
    let base = model.path().to_str().unwrap();
    let (data_path, ft_path) = (p("data.json"), p("ft"));
    let finetune = |extra: &[&str]| {
        let mut args = vec![
            "finetune",
            "--data",
            &data_path,
            "--model",
            base,
            "--out",
            &ft_path,
            "--batch-size",
            "8",
            "--lr",
            "1e-3",
            "--eval-steps",
            "0",
            "--prompts",
            "none",
        ];
        args.extend_from_slice(extra);
        tripletlab(&args, &cache)
    };
    ok(finetune(&[]));

    // The run record names the data by hash and splits its rows.
    let record = RunRecord::read(&work.path().join("ft"))
        .unwrap()
        .expect("a run record");
    let data = tripletlab::core::data::load_triplets(Path::new(&p("data.json"))).unwrap();
    assert!(record.matches(&data));
    let tripletlab::core::pipeline::record::Split::HeldOut {
        held_out_rows,
        train_rows,
        ..
    } = &record.split
    else {
        panic!("{:?}", record.split)
    };
    assert_eq!(held_out_rows.len() + train_rows.len(), 60);
    assert!(!held_out_rows.is_empty() && held_out_rows.iter().all(|r| !train_rows.contains(r)));
    assert_eq!(record.steps.len(), record.total_steps);
    assert_eq!(record.evals.first().map(|e| e.step), Some(0));

    // A second run into the same folder is refused, unless asked.
    let refused = finetune(&[]);
    assert!(!refused.status.success());
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(
        msg.contains("not empty") && msg.contains("--overwrite"),
        "{msg}"
    );
    ok(finetune(&["--overwrite"]));
    let record = RunRecord::read(&work.path().join("ft")).unwrap().unwrap();
    let held_out: Vec<usize> = match &record.split {
        tripletlab::core::pipeline::record::Split::HeldOut { held_out_rows, .. } => {
            held_out_rows.clone()
        }
        other => panic!("{other:?}"),
    };

    // compare: held-out by default.
    let err = ok(tripletlab(
        &[
            "compare",
            "--data",
            &p("data.json"),
            "--model",
            base,
            "--model",
            &p("ft"),
            "--prompts",
            "none",
            "--json",
            &p("cmp.json"),
            "--report",
            &p("cmp.html"),
            "--csv",
            &p("cmp.csv"),
        ],
        &cache,
    ));
    assert!(
        err.contains("held-out") && err.contains(&format!("measured on {}", held_out.len())),
        "{err}"
    );
    let cmp = json(Path::new(&p("cmp.json")));
    assert_eq!(cmp["subset"], "held-out");
    assert_eq!(cmp["rows"], serde_json::json!(held_out));
    assert_eq!(cmp["n_triplets"].as_u64().unwrap() as usize, held_out.len());

    // The same metrics as eval on a file holding only those rows.
    let only: Vec<_> = held_out.iter().map(|&r| triplets[r].clone()).collect();
    std::fs::write(p("held-out.json"), serde_json::to_string(&only).unwrap()).unwrap();
    for (model_path, side) in [(base.to_string(), "a"), (p("ft"), "b")] {
        ok(tripletlab(
            &[
                "eval",
                "--data",
                &p("held-out.json"),
                "--model",
                &model_path,
                "--prompts",
                "none",
                "--json",
                &p("eval.json"),
            ],
            &cache,
        ));
        let eval = json(Path::new(&p("eval.json")));
        for key in tripletlab::core::metrics::metric_keys() {
            let (want, got) = (
                eval["metrics"][&key].as_f64().unwrap(),
                cmp["metrics"][&key][side].as_f64().unwrap(),
            );
            assert!(
                (want - got).abs() < 1e-12,
                "{side} {key}: compare {got}, eval {want}"
            );
        }
    }
    // Every metric has its delta, interval and p-value; the interval holds the delta.
    for key in tripletlab::core::metrics::metric_keys() {
        let m = &cmp["metrics"][&key];
        let (d, lo, hi, pv) = (
            m["delta"].as_f64().unwrap(),
            m["ci95"][0].as_f64().unwrap(),
            m["ci95"][1].as_f64().unwrap(),
            m["p_value"].as_f64().unwrap(),
        );
        assert!(
            lo <= d + 1e-12 && d <= hi + 1e-12 && (0.0..=1.0).contains(&pv),
            "{key}: {m}"
        );
    }
    let html = std::fs::read_to_string(p("cmp.html")).unwrap();
    assert!(html.contains("data:image/png;base64,") && html.contains("held-out"));
    let csv = std::fs::read_to_string(p("cmp.csv")).unwrap();
    assert_eq!(csv.lines().count(), held_out.len() + 1);

    // Training rows, all rows; and held-out rows of a file the run did not train on are refused.
    ok(tripletlab(
        &[
            "compare",
            "--data",
            &p("data.json"),
            "--model",
            base,
            "--model",
            &p("ft"),
            "--prompts",
            "none",
            "--subset",
            "training",
            "--json",
            &p("train.json"),
        ],
        &cache,
    ));
    assert_eq!(
        json(Path::new(&p("train.json")))["n_triplets"]
            .as_u64()
            .unwrap() as usize,
        60 - held_out.len()
    );
    let other = tripletlab(
        &[
            "compare",
            "--data",
            &p("held-out.json"),
            "--model",
            base,
            "--model",
            &p("ft"),
            "--prompts",
            "none",
            "--subset",
            "held-out",
        ],
        &cache,
    );
    assert!(!other.status.success());
    let msg = String::from_utf8_lossy(&other.stderr);
    assert!(msg.contains("another file"), "{msg}");
}

#[test]
fn grid_cells_and_quantised_eval_agree() {
    let model = tiny_model(&TinySpec::default());
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n).to_str().unwrap().to_string();
    std::fs::write(
        p("data.json"),
        serde_json::to_string(&dev_triplets(50)).unwrap(),
    )
    .unwrap();
    let cache = work.path().join("cache");
    let m = model.path().to_str().unwrap();
    ok(tripletlab(
        &[
            "grid",
            "--data",
            &p("data.json"),
            "--model",
            m,
            "--dims",
            "32,16",
            "--precisions",
            "float32,int8,uint8,binary",
            "--prompts",
            "none",
            "--json",
            &p("grid.json"),
        ],
        &cache,
    ));
    let grid = json(Path::new(&p("grid.json")));
    let cells = grid[0]["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 8);
    assert_eq!(cells[0]["ndcg_retained"].as_f64(), Some(1.0));
    assert_eq!(cells[1]["bytes_per_vector"].as_u64(), Some(32));
    assert_eq!(cells[3]["bytes_per_vector"].as_u64(), Some(4));
    // eval at one precision gives that cell's metrics.
    ok(tripletlab(
        &[
            "eval",
            "--data",
            &p("data.json"),
            "--model",
            m,
            "--prompts",
            "none",
            "--precision",
            "int8",
            "--json",
            &p("eval.json"),
        ],
        &cache,
    ));
    let eval = json(Path::new(&p("eval.json")));
    assert_eq!(eval["settings"]["precision"], "int8");
    for key in tripletlab::core::metrics::metric_keys() {
        assert_eq!(eval["metrics"][&key], cells[1]["metrics"][&key], "{key}");
    }
}
