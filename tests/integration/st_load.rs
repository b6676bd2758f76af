//! Folders fine-tuned and saved by tripletlab load in Python sentence-transformers and embed as
//! tripletlab does (`scripts/check_st_load.py`), for each architecture. Runs where the test
//! command found a Python with sentence-transformers (`TRIPLETLAB_ST_PYTHON`); elsewhere it is
//! skipped only with the reason the test command gives (`TRIPLETLAB_SKIP_ST`).

use std::path::Path;

use tripletlab::core::model::tiny::TinySpec;

use crate::common::{dev_triplets, fixture, ok, tiny_model, tripletlab};

fn python() -> Option<String> {
    if let Ok(why) = std::env::var("TRIPLETLAB_SKIP_ST") {
        eprintln!("SKIPPED: loading saved folders in sentence-transformers ({why})");
        return None;
    }
    Some(std::env::var("TRIPLETLAB_ST_PYTHON").expect(
        "TRIPLETLAB_ST_PYTHON is not set: run scripts/test.sh (it looks for a Python with \
         sentence-transformers), or set TRIPLETLAB_SKIP_ST to a reason to skip this test",
    ))
}

#[test]
fn fine_tuned_folders_of_every_architecture_load_in_sentence_transformers() {
    let Some(python) = python() else { return };
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("t.json");
    std::fs::write(&data, serde_json::to_string(&dev_triplets(24)).unwrap()).unwrap();
    let bert = tiny_model(&TinySpec::default());
    let models = [
        ("bert", bert.path().to_path_buf()),
        ("xlm-roberta", fixture("tiny-models/tiny-xlmr")),
        ("mpnet", fixture("tiny-models/tiny-mpnet")),
    ];
    let cache = work.path().join("cache");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_st_load.py");
    for (arch, model) in models {
        let out = work.path().join(arch);
        ok(tripletlab(
            &[
                "finetune",
                "--data",
                data.to_str().unwrap(),
                "--model",
                model.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--batch-size",
                "8",
                "--lr",
                "1e-3",
                "--eval-steps",
                "0",
                "--prompts",
                "none",
            ],
            &cache,
        ));
        let check = std::process::Command::new(&python)
            .arg(&script)
            .arg(&out)
            .arg(env!("CARGO_BIN_EXE_tripletlab"))
            .env("TRIPLETLAB_CACHE_DIR", &cache)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&check.stdout).to_string()
            + &String::from_utf8_lossy(&check.stderr);
        assert!(check.status.success(), "{arch}: {said}");
        assert!(!said.contains("SKIPPED"), "{arch}: {said}");
        assert!(
            said.contains("OK: the saved folder loads"),
            "{arch}: {said}"
        );
        eprintln!(
            "{arch}: {}",
            said.lines().find(|l| l.starts_with("OK")).unwrap_or("")
        );
    }
}
