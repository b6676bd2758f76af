//! Model folders in the files sentence-transformers 6 writes, read as sentence-transformers 6.2
//! reads them: all-MiniLM-L6-v2's weights under three settings a reader can get silently wrong
//! (CLS pooling at 256 tokens; weighted mean without the prompt's tokens; last token with
//! lowercasing at 64 tokens), against the vectors sentence-transformers 6.2 gave
//! (`tests/fixtures/st6/`, made by `make_st6_variants.py` there). Then the settings it would read
//! differently are refused, naming the file.

use std::path::Path;

use serde_json::{json, Value};
use tripletlab::core::encoder::{EncoderOptions, Role};
use tripletlab::core::model::tiny::TinySpec;
use tripletlab::core::model::{FolderFormat, LengthSource, ModelFolder, Pooling};

use crate::common::{cosine, encoder, fixture, quiet, real_model_dir, tiny_model};

fn write_json(path: &Path, v: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// The real model's weights and tokenizer with one variant's sentence-transformers 6 files.
fn st6_folder(fx: &Value, variant: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = real_model_dir();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
        "special_tokens_map.json",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut tc: Value =
        serde_json::from_slice(&std::fs::read(src.join("tokenizer_config.json")).unwrap()).unwrap();
    tc["model_max_length"] = variant["model_max_length"].clone();
    write_json(&dir.path().join("tokenizer_config.json"), &tc);
    write_json(&dir.path().join("modules.json"), &fx["modules.json"]);
    for f in ["sentence_bert_config.json", "1_Pooling/config.json"] {
        write_json(&dir.path().join(f), &variant[f]);
    }
    std::fs::create_dir_all(dir.path().join("2_Normalize")).unwrap();
    write_json(
        &dir.path().join("config_sentence_transformers.json"),
        &json!({"model_type": "SentenceTransformer", "prompts": variant["prompts"],
                "default_prompt_name": null, "similarity_fn_name": "cosine"}),
    );
    dir
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn sentence_transformers_6_folders_embed_as_sentence_transformers_6_2() {
    let fx: Value =
        serde_json::from_slice(&std::fs::read(fixture("st6/minilm-st6-variants.json")).unwrap())
            .unwrap();
    let texts = |k: &str| -> Vec<String> { serde_json::from_value(fx[k].clone()).unwrap() };
    let (queries, docs) = (texts("queries"), texts("documents"));
    for (name, variant) in fx["variants"].as_object().unwrap() {
        let dir = st6_folder(&fx, variant);
        let folder = ModelFolder::open(dir.path(), name).unwrap();
        assert_eq!(
            folder.sentence.format,
            FolderFormat::SentenceTransformers6,
            "{name}"
        );
        let enc = encoder(dir.path(), &EncoderOptions::default());
        assert_eq!(
            enc.max_seq_len as u64,
            variant["max_seq_length"].as_u64().unwrap(),
            "{name}: max length"
        );
        let mut worst = 1f64;
        for (role, list, want) in [
            (Role::Query, &queries, rows(&variant["query_vectors"])),
            (Role::Document, &docs, rows(&variant["document_vectors"])),
        ] {
            let refs: Vec<&str> = list.iter().map(String::as_str).collect();
            let (emb, _) = quiet(|ctx| enc.encode(&refs, role, ctx)).unwrap();
            for (i, w) in want.iter().enumerate() {
                worst = worst.min(cosine(emb.row(i), w));
            }
        }
        eprintln!(
            "{name}: pooling {:?}, lowest cosine {worst:.9}",
            enc.pooling
        );
        assert!(worst >= 0.99999, "{name}: lowest cosine {worst}");
    }
}

fn load_err(dir: &Path) -> String {
    match tripletlab::core::encoder::Encoder::load(
        &tripletlab::core::model::ModelSource::Dir(dir.to_path_buf()),
        &EncoderOptions::default(),
        &mut |_| {},
    ) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn settings_sentence_transformers_would_read_differently_are_refused() {
    type Edit = fn(&Path);
    let cases: [(&str, Edit, &[&str]); 8] = [
        (
            "a Dense module",
            |d| {
                let mut m: Value =
                    serde_json::from_slice(&std::fs::read(d.join("modules.json")).unwrap())
                        .unwrap();
                m.as_array_mut()
                    .unwrap()
                    .push(json!({"idx": 3, "name": "3", "path": "3_Dense",
                    "type": "sentence_transformers.models.Dense"}));
                write_json(&d.join("modules.json"), &m);
            },
            &["modules.json", "Dense"],
        ),
        (
            "two pooling modes",
            |d| {
                write_json(
                    &d.join("1_Pooling/config.json"),
                    &json!({"embedding_dimension": 32, "pooling_mode": ["cls", "mean"]}),
                );
            },
            &["1_Pooling", "cls, mean"],
        ),
        (
            "an unknown pooling mode",
            |d| {
                write_json(
                    &d.join("1_Pooling/config.json"),
                    &json!({"embedding_dimension": 32, "pooling_mode": "mean_tokens"}),
                );
            },
            &["1_Pooling", "mean_tokens"],
        ),
        (
            "an unknown transformer setting",
            |d| {
                write_json(
                    &d.join("sentence_bert_config.json"),
                    &json!({"max_seq_length": 64, "pad_left": true}),
                );
            },
            &["sentence_bert_config.json", "pad_left"],
        ),
        (
            "per-role lengths",
            |d| {
                write_json(
                    &d.join("sentence_bert_config.json"),
                    &json!({"query_length": 32}),
                );
            },
            &["sentence_bert_config.json", "query_length"],
        ),
        (
            "another model type",
            |d| {
                write_json(
                    &d.join("config_sentence_transformers.json"),
                    &json!({"model_type": "CrossEncoder"}),
                );
            },
            &["config_sentence_transformers.json", "CrossEncoder"],
        ),
        (
            "a PEFT adapter",
            |d| {
                write_json(
                    &d.join("adapter_config.json"),
                    &json!({"base_model_name_or_path": "x"}),
                );
            },
            &["adapter_config.json", "adapter"],
        ),
        (
            "a module path outside the folder",
            |d| {
                let mut m: Value =
                    serde_json::from_slice(&std::fs::read(d.join("modules.json")).unwrap())
                        .unwrap();
                m[1]["path"] = "../elsewhere".into();
                write_json(&d.join("modules.json"), &m);
            },
            &["modules.json", "../elsewhere"],
        ),
    ];
    for (what, edit, words) in cases {
        let dir = tiny_model(&TinySpec::default());
        edit(dir.path());
        let msg = load_err(dir.path());
        for w in words {
            assert!(msg.contains(w), "{what}: {msg}");
        }
    }
}

#[test]
fn legacy_boolean_pooling_keys_and_defaults() {
    let dir = tiny_model(&TinySpec::default());
    let folder = ModelFolder::open(dir.path(), "tiny").unwrap();
    assert_eq!(
        folder.sentence.format,
        FolderFormat::SentenceTransformersLegacy
    );
    // Every legacy key maps to its mode; none at all means mean (sentence-transformers 6.2).
    for (key, mode) in Pooling::ALL.map(|p| (p.legacy_key(), p)) {
        write_json(
            &dir.path().join("1_Pooling/config.json"),
            &json!({"word_embedding_dimension": 32, key: true}),
        );
        assert_eq!(
            ModelFolder::open(dir.path(), "tiny")
                .unwrap()
                .sentence
                .pooling,
            mode,
            "{key}"
        );
    }
    write_json(
        &dir.path().join("1_Pooling/config.json"),
        &json!({"word_embedding_dimension": 32}),
    );
    assert_eq!(
        ModelFolder::open(dir.path(), "tiny")
            .unwrap()
            .sentence
            .pooling,
        Pooling::Mean
    );
}

#[test]
fn the_max_length_follows_sentence_transformers_precedence() {
    let dir = tiny_model(&TinySpec::default());
    let open = || ModelFolder::open(dir.path(), "tiny").unwrap();
    // sentence_bert_config.json's max_seq_length (the tiny model declares 64).
    assert_eq!(
        (
            open().max_seq_len(None),
            open().sentence.max_seq_length_source
        ),
        (64, LengthSource::SentenceBertConfig)
    );
    // Without it: tokenizer_config.json's model_max_length, capped at the positions (128).
    write_json(
        &dir.path().join("sentence_bert_config.json"),
        &json!({"do_lower_case": false}),
    );
    for (declared, want, source) in [
        (json!(40), 40, LengthSource::TokenizerConfig),
        (json!(1e30), 128, LengthSource::Positions),
        (json!(4096), 128, LengthSource::Positions),
    ] {
        write_json(
            &dir.path().join("tokenizer_config.json"),
            &json!({"model_max_length": declared}),
        );
        let f = open();
        assert_eq!(
            (f.max_seq_len(None), f.sentence.max_seq_length_source),
            (want, source),
            "{declared}"
        );
    }
    // tokenizer_args win over max_seq_length; the user's choice over both; positions cap all.
    write_json(
        &dir.path().join("sentence_bert_config.json"),
        &json!({"max_seq_length": 50, "tokenizer_args": {"model_max_length": 30}}),
    );
    assert_eq!(open().max_seq_len(None), 30);
    assert_eq!(open().max_seq_len(Some(100)), 100);
    assert_eq!(open().max_seq_len(Some(1000)), 128);
}
