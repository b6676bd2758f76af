//! A model folder on disk, in sentence-transformers layout (`modules.json`, `1_Pooling/`, ...) or
//! plain Hugging Face layout (`config.json`, `tokenizer.json`, weights), and the settings it declares.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{BertConfig, ModelError};

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over non-padding tokens.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise max over non-padding tokens.
    Max,
    /// Sum over non-padding tokens divided by the square root of their count.
    MeanSqrtLen,
}

impl Pooling {
    /// Name as sentence-transformers' `pooling_mode` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len_tokens",
        }
    }
}

/// What the sentence-transformers files of a folder declare (defaults where absent).
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceConfig {
    /// Pooling mode.
    pub pooling: Pooling,
    /// Whether a Normalize module follows pooling.
    pub normalize: bool,
    /// `max_seq_length` of `sentence_bert_config.json`, if declared.
    pub max_seq_length: Option<usize>,
    /// `do_lower_case` of `sentence_bert_config.json`.
    pub do_lower_case: bool,
    /// `prompts` of `config_sentence_transformers.json`.
    pub prompts: BTreeMap<String, String>,
    /// `default_prompt_name` of `config_sentence_transformers.json`.
    pub default_prompt_name: Option<String>,
    /// `similarity_fn_name` of `config_sentence_transformers.json`.
    pub similarity_fn_name: Option<String>,
    /// True when the folder has a `modules.json`.
    pub is_sentence_transformers: bool,
}

/// A resolved model folder with every file the encoder needs.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    /// The folder given (sentence-transformers root).
    pub root: PathBuf,
    /// The folder of the transformer module (the root, or e.g. `0_Transformer/`).
    pub transformer_dir: PathBuf,
    /// `config.json`.
    pub config: BertConfig,
    /// The sentence-transformers settings.
    pub sentence: SentenceConfig,
    /// `model.safetensors` or `pytorch_model.bin`.
    pub weights_path: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer_path: PathBuf,
    /// A name for messages and for family detection: the hub id or the folder path, plus the
    /// `_name_or_path` of `config.json`.
    pub name_hint: String,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

fn read_json(path: &Path) -> Result<Option<Value>, ModelError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| ModelError::Json {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ModelError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, v: Value) -> Result<T, ModelError> {
    serde_json::from_value(v).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

impl ModelFolder {
    /// Reads a folder's configuration; `label` names it in messages (hub id or path).
    pub fn open(root: &Path, label: &str) -> Result<Self, ModelError> {
        if !root.is_dir() {
            return Err(ModelError::FolderNotFound {
                path: root.to_path_buf(),
            });
        }
        let modules_path = root.join("modules.json");
        let modules: Option<Vec<ModuleEntry>> = match read_json(&modules_path)? {
            Some(v) => Some(parse(&modules_path, v)?),
            None => None,
        };
        let module_dir = |suffix: &str| {
            modules.as_ref().and_then(|m| {
                m.iter()
                    .find(|e| e.kind.ends_with(suffix))
                    .map(|e| root.join(&e.path))
            })
        };
        let transformer_dir =
            module_dir("models.Transformer").unwrap_or_else(|| root.to_path_buf());
        let normalize = module_dir("models.Normalize").is_some();

        let config_path = transformer_dir.join("config.json");
        let raw_config = read_json(&config_path)?.ok_or_else(|| ModelError::MissingFile {
            path: config_path.clone(),
            what: "the model configuration (a BERT model folder in sentence-transformers or \
                   Hugging Face layout has one)"
                .into(),
        })?;
        let name_or_path = raw_config
            .get("_name_or_path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let config: BertConfig = parse(&config_path, raw_config)?;
        if let Some(reason) = config.unsupported_reason() {
            return Err(ModelError::Unsupported {
                path: config_path,
                reason,
            });
        }

        let tokenizer_path = transformer_dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(ModelError::MissingFile {
                path: tokenizer_path,
                what: "the fast tokenizer file (tokenizer.json) the encoder reads".into(),
            });
        }
        let weights_path = ["model.safetensors", "pytorch_model.bin"]
            .iter()
            .map(|f| transformer_dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| ModelError::MissingFile {
                path: transformer_dir.join("model.safetensors"),
                what: "the weights (model.safetensors or pytorch_model.bin)".into(),
            })?;

        let sbert_path = transformer_dir.join("sentence_bert_config.json");
        let sbert = read_json(&sbert_path)?.unwrap_or(Value::Null);
        let max_seq_length = match sbert.get("max_seq_length") {
            None | Some(Value::Null) => None,
            Some(v) => {
                Some(
                    v.as_u64()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| ModelError::Unsupported {
                            path: sbert_path.clone(),
                            reason: format!("max_seq_length must be a positive integer, found {v}"),
                        })? as usize,
                )
            }
        };
        let do_lower_case = sbert
            .get("do_lower_case")
            .and_then(Value::as_bool)
            .unwrap_or(false);

        let pooling = match module_dir("models.Pooling") {
            Some(dir) => read_pooling(&dir.join("config.json"), config.hidden_size)?,
            None => Pooling::Mean,
        };

        let st_path = root.join("config_sentence_transformers.json");
        let st = read_json(&st_path)?.unwrap_or(Value::Null);
        let prompts = match st.get("prompts") {
            Some(v @ Value::Object(_)) => parse::<BTreeMap<String, String>>(&st_path, v.clone())?,
            _ => BTreeMap::new(),
        };
        let default_prompt_name = st
            .get("default_prompt_name")
            .and_then(Value::as_str)
            .map(str::to_string);
        let similarity_fn_name = st
            .get("similarity_fn_name")
            .and_then(Value::as_str)
            .map(str::to_string);

        Ok(Self {
            root: root.to_path_buf(),
            transformer_dir,
            config,
            sentence: SentenceConfig {
                pooling,
                normalize,
                max_seq_length,
                do_lower_case,
                prompts,
                default_prompt_name,
                similarity_fn_name,
                is_sentence_transformers: modules.is_some(),
            },
            weights_path,
            tokenizer_path,
            name_hint: format!("{label} {name_or_path}"),
        })
    }
}

/// Reads `1_Pooling/config.json`: the boolean `pooling_mode_*` keys, or a `pooling_mode` string.
fn read_pooling(path: &Path, hidden_size: usize) -> Result<Pooling, ModelError> {
    let Some(v) = read_json(path)? else {
        return Err(ModelError::MissingFile {
            path: path.to_path_buf(),
            what: "the pooling configuration that modules.json refers to".into(),
        });
    };
    let unsupported = |reason: String| ModelError::Unsupported {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dim) = v.get("word_embedding_dimension").and_then(Value::as_u64) {
        if dim as usize != hidden_size {
            return Err(unsupported(format!(
                "word_embedding_dimension {dim} contradicts hidden_size {hidden_size} of config.json"
            )));
        }
    }
    if let Some(mode) = v.get("pooling_mode").and_then(Value::as_str) {
        return match mode {
            "mean" | "mean_tokens" => Ok(Pooling::Mean),
            "cls" | "cls_token" => Ok(Pooling::Cls),
            "max" | "max_tokens" => Ok(Pooling::Max),
            "mean_sqrt_len_tokens" => Ok(Pooling::MeanSqrtLen),
            other => Err(unsupported(format!(
                "pooling_mode `{other}` is not supported"
            ))),
        };
    }
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let modes: Vec<Pooling> = [
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_max_tokens", Pooling::Max),
        ("pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
    ]
    .into_iter()
    .filter(|(k, _)| flag(k))
    .map(|(_, p)| p)
    .collect();
    for other in ["pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"] {
        if flag(other) {
            return Err(unsupported(format!("`{other}` is not supported")));
        }
    }
    match modes.as_slice() {
        [one] => Ok(*one),
        [] => Err(unsupported("no pooling mode is enabled".into())),
        _ => Err(unsupported(
            "several pooling modes are enabled at once (concatenated pooling is not supported)"
                .into(),
        )),
    }
}
