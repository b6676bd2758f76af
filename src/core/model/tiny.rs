//! A tiny random BERT in sentence-transformers layout, written to disk for tests and demos of the
//! pipeline: a letter-level WordPiece vocabulary, a few small layers, seeded weights.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde_json::json;

/// What the generated model looks like.
#[derive(Debug, Clone)]
pub struct TinySpec {
    /// Hidden width.
    pub hidden_size: usize,
    /// Layers.
    pub layers: usize,
    /// Heads (must divide `hidden_size`).
    pub heads: usize,
    /// `max_seq_length` written to `sentence_bert_config.json`.
    pub max_seq_length: usize,
    /// Pooling mode (`mean`, `cls`, `max`).
    pub pooling: String,
    /// Whether `modules.json` lists a Normalize module.
    pub normalize: bool,
    /// `prompts` of `config_sentence_transformers.json`.
    pub prompts: BTreeMap<String, String>,
    /// Seed of the weights.
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            hidden_size: 32,
            layers: 2,
            heads: 4,
            max_seq_length: 64,
            pooling: "mean".into(),
            normalize: true,
            prompts: BTreeMap::new(),
            seed: 7,
        }
    }
}

/// The vocabulary: special tokens, then letters, digits and punctuation, alone and as `##` pieces.
fn vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .map(String::from)
        .to_vec();
    let chars: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    v.extend(chars.iter().map(|c| c.to_string()));
    v.extend(chars.iter().map(|c| format!("##{c}")));
    v.extend(
        [
            ".", ",", ":", ";", "(", ")", "-", "/", "'", "\"", "%", "<", ">", "=",
        ]
        .map(String::from),
    );
    v
}

fn tokenizer_json(vocab: &[String]) -> serde_json::Value {
    let vocab_map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"),
                         special(3, "[SEP]"), special(4, "[MASK]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab_map}
    })
}

/// Writes the model folder; returns an error only for I/O or tensor failures.
pub fn write_tiny_bert(dir: &Path, spec: &TinySpec) -> Result<(), TinyError> {
    std::fs::create_dir_all(dir.join("1_Pooling"))?;
    let vocab = vocab();
    let h = spec.hidden_size;
    let inter = 2 * h;
    let max_pos = 128;
    let write = |name: &str, v: serde_json::Value| -> std::io::Result<()> {
        std::fs::write(dir.join(name), serde_json::to_string_pretty(&v)?)
    };
    write(
        "config.json",
        json!({
            "architectures": ["BertModel"], "model_type": "bert",
            "vocab_size": vocab.len(), "hidden_size": h, "num_hidden_layers": spec.layers,
            "num_attention_heads": spec.heads, "intermediate_size": inter, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": max_pos, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
            "pad_token_id": 0, "position_embedding_type": "absolute", "_name_or_path": "tiny-bert"
        }),
    )?;
    write("tokenizer.json", tokenizer_json(&vocab))?;
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n") + "\n")?;
    let mut modules = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if spec.normalize {
        modules.push(json!({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"}));
        std::fs::create_dir_all(dir.join("2_Normalize"))?;
    }
    write("modules.json", json!(modules))?;
    write(
        "sentence_bert_config.json",
        json!({"max_seq_length": spec.max_seq_length, "do_lower_case": false}),
    )?;
    write(
        "1_Pooling/config.json",
        json!({
            "word_embedding_dimension": h,
            "pooling_mode_cls_token": spec.pooling == "cls",
            "pooling_mode_mean_tokens": spec.pooling == "mean",
            "pooling_mode_max_tokens": spec.pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": false
        }),
    )?;
    write(
        "config_sentence_transformers.json",
        json!({"prompts": spec.prompts, "similarity_fn_name": "cosine"}),
    )?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let dev = Device::Cpu;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut rand_t =
        |name: String, shape: &[usize], scale: f32, offset: f32| -> candle_core::Result<()> {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0))
                .collect();
            tensors.push((name, Tensor::from_vec(data, shape, &dev)?));
            Ok(())
        };
    rand_t(
        "embeddings.word_embeddings.weight".into(),
        &[vocab.len(), h],
        0.5,
        0.0,
    )?;
    rand_t(
        "embeddings.position_embeddings.weight".into(),
        &[max_pos, h],
        0.1,
        0.0,
    )?;
    rand_t(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, h],
        0.1,
        0.0,
    )?;
    rand_t("embeddings.LayerNorm.weight".into(), &[h], 0.1, 1.0)?;
    rand_t("embeddings.LayerNorm.bias".into(), &[h], 0.1, 0.0)?;
    for l in 0..spec.layers {
        let p = format!("encoder.layer.{l}");
        for m in ["query", "key", "value"] {
            rand_t(format!("{p}.attention.self.{m}.weight"), &[h, h], 0.3, 0.0)?;
            rand_t(format!("{p}.attention.self.{m}.bias"), &[h], 0.05, 0.0)?;
        }
        rand_t(
            format!("{p}.attention.output.dense.weight"),
            &[h, h],
            0.3,
            0.0,
        )?;
        rand_t(format!("{p}.attention.output.dense.bias"), &[h], 0.05, 0.0)?;
        rand_t(
            format!("{p}.attention.output.LayerNorm.weight"),
            &[h],
            0.1,
            1.0,
        )?;
        rand_t(
            format!("{p}.attention.output.LayerNorm.bias"),
            &[h],
            0.1,
            0.0,
        )?;
        rand_t(
            format!("{p}.intermediate.dense.weight"),
            &[inter, h],
            0.3,
            0.0,
        )?;
        rand_t(format!("{p}.intermediate.dense.bias"), &[inter], 0.05, 0.0)?;
        rand_t(format!("{p}.output.dense.weight"), &[h, inter], 0.3, 0.0)?;
        rand_t(format!("{p}.output.dense.bias"), &[h], 0.05, 0.0)?;
        rand_t(format!("{p}.output.LayerNorm.weight"), &[h], 0.1, 1.0)?;
        rand_t(format!("{p}.output.LayerNorm.bias"), &[h], 0.1, 0.0)?;
    }
    rand_t("pooler.dense.weight".into(), &[h, h], 0.3, 0.0)?;
    rand_t("pooler.dense.bias".into(), &[h], 0.05, 0.0)?;
    let position_ids = Tensor::arange(0i64, max_pos as i64, &dev)?.reshape((1, max_pos))?;
    tensors.push(("embeddings.position_ids".into(), position_ids));
    let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
    Ok(())
}

/// I/O or tensor failure while writing the tiny model.
#[derive(Debug, thiserror::Error)]
pub enum TinyError {
    /// File system.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
