//! A model folder on disk, in sentence-transformers layout (`modules.json`, `1_Pooling/`, ...),
//! in the files of sentence-transformers ≤ 5.3 or of 6.x, or in plain Hugging Face layout
//! (`config.json`, `tokenizer.json`, weights), read as sentence-transformers 6.2 reads it. What
//! it would read differently (a module, pooling mode or setting this encoder does not implement)
//! is refused with a message naming the file, never replaced by a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::ModelConfig;
use super::ModelError;

/// How token states become one sentence vector (sentence-transformers' pooling modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over the pooled tokens.
    Mean,
    /// The first pooled token (`[CLS]`, unless the prompt is excluded).
    Cls,
    /// Element-wise max over the pooled tokens.
    Max,
    /// Sum over the pooled tokens divided by the square root of their count.
    MeanSqrtLen,
    /// Mean weighted by position: the token at 0-based position i weighs i + 1.
    WeightedMean,
    /// The last token (the closing special token of a text).
    LastToken,
}

impl Pooling {
    /// Name as sentence-transformers' `pooling_mode` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len_tokens",
            Pooling::WeightedMean => "weightedmean",
            Pooling::LastToken => "lasttoken",
        }
    }

    /// Every mode, in the order of sentence-transformers' legacy boolean keys.
    pub const ALL: [Pooling; 6] = [
        Pooling::Cls,
        Pooling::Max,
        Pooling::Mean,
        Pooling::MeanSqrtLen,
        Pooling::WeightedMean,
        Pooling::LastToken,
    ];

    /// The mode of a `pooling_mode` string (exact names only, as sentence-transformers 6.2).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The legacy boolean key of the mode in `1_Pooling/config.json`.
    pub fn legacy_key(self) -> &'static str {
        match self {
            Pooling::Cls => "pooling_mode_cls_token",
            Pooling::Max => "pooling_mode_max_tokens",
            Pooling::Mean => "pooling_mode_mean_tokens",
            Pooling::MeanSqrtLen => "pooling_mode_mean_sqrt_len_tokens",
            Pooling::WeightedMean => "pooling_mode_weightedmean_tokens",
            Pooling::LastToken => "pooling_mode_lasttoken",
        }
    }
}

/// Which files a folder was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FolderFormat {
    /// No `modules.json`: a Hugging Face checkpoint, read as Transformer + mean pooling.
    HuggingFace,
    /// sentence-transformers ≤ 5.3 module names (`sentence_transformers.models.*`).
    SentenceTransformersLegacy,
    /// sentence-transformers 5.4+ / 6.x module names.
    SentenceTransformers6,
}

/// Where the declared maximum length comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthSource {
    /// `tokenizer_args.model_max_length` of `sentence_bert_config.json`.
    TokenizerArgs,
    /// `max_seq_length` of `sentence_bert_config.json`.
    SentenceBertConfig,
    /// `model_max_length` of `tokenizer_config.json`, capped at `max_position_embeddings`.
    TokenizerConfig,
    /// `max_position_embeddings` of `config.json` (nothing else declares one).
    Positions,
}

/// What the sentence-transformers files of a folder declare (defaults where absent).
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceConfig {
    /// Pooling mode.
    pub pooling: Pooling,
    /// False when the prompt's tokens (and the leading special token) are left out of pooling.
    pub include_prompt: bool,
    /// Whether a Normalize module follows pooling.
    pub normalize: bool,
    /// The maximum length sentence-transformers 6.2 uses for this folder (`None`: no limit, the
    /// tokenizer declares none), before the model's positions cap it: see
    /// [`ModelFolder::max_seq_len`].
    pub max_seq_length: Option<usize>,
    /// Where `max_seq_length` comes from.
    pub max_seq_length_source: LengthSource,
    /// `do_lower_case` of `sentence_bert_config.json` (the texts are lowercased first).
    pub do_lower_case: bool,
    /// `prompts` of `config_sentence_transformers.json`.
    pub prompts: BTreeMap<String, String>,
    /// `default_prompt_name` of `config_sentence_transformers.json`.
    pub default_prompt_name: Option<String>,
    /// `similarity_fn_name` of `config_sentence_transformers.json`.
    pub similarity_fn_name: Option<String>,
    /// `truncate_dim` of `config_sentence_transformers.json` (sentence-transformers 6).
    pub truncate_dim: Option<usize>,
    /// True when the folder has a `modules.json`.
    pub is_sentence_transformers: bool,
    /// Which files the folder was written in.
    pub format: FolderFormat,
}

/// A resolved model folder with every file the encoder needs.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    /// The folder given (sentence-transformers root).
    pub root: PathBuf,
    /// The folder of the transformer module (the root, or e.g. `0_Transformer/`).
    pub transformer_dir: PathBuf,
    /// `config.json`.
    pub config: ModelConfig,
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

/// The modules tripletlab runs, by every type name sentence-transformers 6.2 resolves to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModuleKind {
    Transformer,
    Pooling,
    Normalize,
}

/// Recognises a `modules.json` type; the bool says whether it is a ≤ 5.3 name.
fn module_kind(kind: &str) -> Option<(ModuleKind, bool)> {
    const NAMES: &[(&str, ModuleKind, bool)] = &[
        (
            "sentence_transformers.models.Transformer",
            ModuleKind::Transformer,
            true,
        ),
        (
            "sentence_transformers.models.Pooling",
            ModuleKind::Pooling,
            true,
        ),
        (
            "sentence_transformers.models.Normalize",
            ModuleKind::Normalize,
            true,
        ),
        (
            "sentence_transformers.base.modules.transformer.Transformer",
            ModuleKind::Transformer,
            false,
        ),
        (
            "sentence_transformers.base.modules.Transformer",
            ModuleKind::Transformer,
            false,
        ),
        (
            "sentence_transformers.sentence_transformer.modules.Transformer",
            ModuleKind::Transformer,
            false,
        ),
        (
            "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
            ModuleKind::Pooling,
            false,
        ),
        (
            "sentence_transformers.sentence_transformer.modules.Pooling",
            ModuleKind::Pooling,
            false,
        ),
        (
            "sentence_transformers.models.Pooling.Pooling",
            ModuleKind::Pooling,
            true,
        ),
        (
            "sentence_transformers.base.modules.normalize.Normalize",
            ModuleKind::Normalize,
            false,
        ),
        (
            "sentence_transformers.base.modules.Normalize",
            ModuleKind::Normalize,
            false,
        ),
        (
            "sentence_transformers.sentence_transformer.modules.normalize.Normalize",
            ModuleKind::Normalize,
            false,
        ),
        (
            "sentence_transformers.sentence_transformer.modules.Normalize",
            ModuleKind::Normalize,
            false,
        ),
    ];
    NAMES
        .iter()
        .find(|(n, _, _)| *n == kind)
        .map(|&(_, k, legacy)| (k, legacy))
}

/// Reads a JSON file; `None` when it does not exist.
pub(super) fn read_json(path: &Path) -> Result<Option<Value>, ModelError> {
    let bytes = match super::read_limited(path, super::CONFIG_FILE_LIMIT_BYTES) {
        Ok(b) => b,
        Err(ModelError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, v: Value) -> Result<T, ModelError> {
    serde_json::from_value(v).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn unsupported(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Unsupported {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The `modules.json` entries, checked: a Transformer first, at most one Pooling and one
/// Normalize after it, nothing else.
struct Modules {
    transformer: PathBuf,
    pooling: Option<PathBuf>,
    normalize: bool,
    format: FolderFormat,
}

fn read_modules(root: &Path) -> Result<Option<Modules>, ModelError> {
    let path = root.join("modules.json");
    let Some(v) = read_json(&path)? else {
        return Ok(None);
    };
    let entries: Vec<ModuleEntry> = parse(&path, v)?;
    let mut found: Vec<(ModuleKind, PathBuf)> = Vec::new();
    let mut any_legacy = false;
    for e in &entries {
        let rel = Path::new(&e.path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(unsupported(
                &path,
                format!("module path `{}` leaves the folder", e.path),
            ));
        }
        let Some((kind, legacy)) = module_kind(&e.kind) else {
            let short = e.kind.rsplit('.').next().unwrap_or(&e.kind);
            return Err(unsupported(
                &path,
                format!(
                    "module `{}` is not supported: tripletlab runs a Transformer followed by \
                     Pooling and an optional Normalize ({short} would change the vectors)",
                    e.kind
                ),
            ));
        };
        any_legacy |= legacy;
        if found.iter().any(|(k, _)| *k == kind) {
            return Err(unsupported(&path, format!("two {kind:?} modules")));
        }
        found.push((kind, root.join(&e.path)));
    }
    let order: Vec<ModuleKind> = found.iter().map(|(k, _)| *k).collect();
    let valid = matches!(
        order.as_slice(),
        [ModuleKind::Transformer]
            | [ModuleKind::Transformer, ModuleKind::Pooling]
            | [
                ModuleKind::Transformer,
                ModuleKind::Pooling,
                ModuleKind::Normalize
            ]
    );
    if !valid {
        return Err(unsupported(
            &path,
            format!(
                "modules {order:?} are not supported: a Transformer, then Pooling, then an \
                 optional Normalize"
            ),
        ));
    }
    let dir = |k: ModuleKind| found.iter().find(|(x, _)| *x == k).map(|(_, p)| p.clone());
    Ok(Some(Modules {
        transformer: dir(ModuleKind::Transformer).unwrap_or_else(|| root.to_path_buf()),
        pooling: dir(ModuleKind::Pooling),
        normalize: dir(ModuleKind::Normalize).is_some(),
        format: if any_legacy {
            FolderFormat::SentenceTransformersLegacy
        } else {
            FolderFormat::SentenceTransformers6
        },
    }))
}

/// The transformer module's settings file: the first of sentence-transformers' seven names.
const SBERT_CONFIG_NAMES: &[&str] = &[
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
];

/// What `sentence_bert_config.json` says that matters here.
struct TransformerSettings {
    max_seq_length: Option<usize>,
    tokenizer_max_length: Option<usize>,
    do_lower_case: bool,
}

/// Reads the transformer module's settings, refusing any that would change the vectors and that
/// tripletlab does not implement.
fn read_transformer_settings(dir: &Path) -> Result<TransformerSettings, ModelError> {
    let mut settings = TransformerSettings {
        max_seq_length: None,
        tokenizer_max_length: None,
        do_lower_case: false,
    };
    let mut found = None;
    for name in SBERT_CONFIG_NAMES {
        let path = dir.join(name);
        if let Some(v) = read_json(&path)? {
            found = Some((path, v));
            break;
        }
    }
    let Some((path, v)) = found else {
        return Ok(settings);
    };
    let Value::Object(map) = v else {
        return Err(unsupported(&path, "not a JSON object"));
    };
    let positive = |key: &str, v: &Value| -> Result<Option<usize>, ModelError> {
        match v {
            Value::Null => Ok(None),
            v => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| Some(n as usize))
                .ok_or_else(|| {
                    unsupported(
                        &path,
                        format!("{key} must be a positive integer, found {v}"),
                    )
                }),
        }
    };
    for (key, value) in &map {
        match key.as_str() {
            "max_seq_length" => settings.max_seq_length = positive(key, value)?,
            "do_lower_case" => settings.do_lower_case = value.as_bool().unwrap_or(false),
            "transformer_task" => {
                if value != "feature-extraction" {
                    return Err(unsupported(
                        &path,
                        format!(
                            "transformer_task {value} is not supported (only feature-extraction)"
                        ),
                    ));
                }
            }
            "module_output_name" => {
                if value != "token_embeddings" {
                    return Err(unsupported(
                        &path,
                        format!(
                            "module_output_name {value} is not supported (only token_embeddings)"
                        ),
                    ));
                }
            }
            "modality_config" => {
                let text_only = value.as_object().is_some_and(|m| {
                    m.len() == 1
                        && m.get("text").is_some_and(|t| {
                            t.get("method").is_none_or(|x| x == "forward")
                                && t.get("method_output_name")
                                    .is_none_or(|x| x == "last_hidden_state")
                        })
                });
                if !text_only {
                    return Err(unsupported(&path, format!("modality_config {value} is not supported (only text through the model's forward pass)")));
                }
            }
            "tokenizer_args" | "processor_kwargs" => {
                if let Some(m) = value.as_object() {
                    if let Some(v) = m.get("model_max_length") {
                        settings.tokenizer_max_length = positive("model_max_length", v)?;
                    }
                }
            }
            // Loading options that do not change the vectors (dtype, attention kernel, remote code).
            "model_args"
            | "model_kwargs"
            | "config_args"
            | "config_kwargs"
            | "unpad_inputs"
            | "tokenizer_name_or_path"
            | "backend" => {}
            "processing_kwargs" => {
                if value.as_object().is_some_and(|m| !m.is_empty()) {
                    return Err(unsupported(
                        &path,
                        format!("processing_kwargs {value} are not supported"),
                    ));
                }
            }
            "query_length" | "document_length" | "query_expansion" => {
                if !value.is_null() {
                    return Err(unsupported(&path, format!("{key} {value} is not supported (one maximum length for queries and documents)")));
                }
            }
            other => {
                return Err(unsupported(
                    &path,
                    format!(
                        "unknown setting `{other}` (sentence-transformers would refuse it too)"
                    ),
                ));
            }
        }
    }
    Ok(settings)
}

/// Reads the pooling module's `config.json`: sentence-transformers 6's
/// `{"embedding_dimension", "pooling_mode", "include_prompt"}` or the legacy boolean keys.
fn read_pooling(path: &Path, hidden_size: usize) -> Result<(Pooling, bool), ModelError> {
    let Some(v) = read_json(path)? else {
        return Err(ModelError::MissingFile {
            path: path.to_path_buf(),
            what: "the pooling configuration that modules.json refers to".into(),
        });
    };
    let Value::Object(map) = v else {
        return Err(unsupported(path, "not a JSON object"));
    };
    let dim = map
        .get("embedding_dimension")
        .or_else(|| map.get("word_embedding_dimension"))
        .and_then(Value::as_u64);
    if let Some(dim) = dim {
        if dim as usize != hidden_size {
            return Err(unsupported(path, format!("embedding dimension {dim} contradicts hidden_size {hidden_size} of config.json")));
        }
    }
    let include_prompt = match map.get("include_prompt") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(unsupported(
                path,
                format!("include_prompt must be true or false, found {v}"),
            ))
        }
    };
    let modes: Vec<Pooling> = match map.get("pooling_mode") {
        Some(Value::String(s)) => vec![Pooling::from_name(s).ok_or_else(|| {
            unsupported(
                path,
                format!(
                    "pooling_mode `{s}` is not one of sentence-transformers' modes ({})",
                    Pooling::ALL.map(Pooling::name).join(", ")
                ),
            )
        })?],
        Some(Value::Array(list)) => list
            .iter()
            .map(|m| {
                m.as_str()
                    .and_then(Pooling::from_name)
                    .ok_or_else(|| unsupported(path, format!("pooling_mode {m} is not supported")))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(unsupported(
                path,
                format!("pooling_mode {other} is not supported"),
            ))
        }
        None => {
            let on: Vec<Pooling> = Pooling::ALL
                .into_iter()
                .filter(|p| {
                    map.get(p.legacy_key())
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                })
                .collect();
            if on.is_empty() {
                vec![Pooling::Mean]
            } else {
                on
            }
        }
    };
    for key in map.keys() {
        let known = matches!(
            key.as_str(),
            "embedding_dimension" | "word_embedding_dimension" | "pooling_mode" | "include_prompt"
        ) || Pooling::ALL.iter().any(|p| p.legacy_key() == key);
        if !known {
            return Err(unsupported(
                path,
                format!("unknown pooling setting `{key}`"),
            ));
        }
    }
    match modes.as_slice() {
        [one] => Ok((*one, include_prompt)),
        _ => Err(unsupported(
            path,
            format!(
                "several pooling modes at once ({}) are not supported (sentence-transformers \
                 concatenates them)",
                modes
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// sentence-transformers' "no limit" threshold (transformers' `LARGE_INTEGER`).
const NO_LIMIT: u64 = 100_000_000_000_000_000_000u128 as u64;

impl ModelFolder {
    /// Reads a folder's configuration; `label` names it in messages (hub id or path).
    pub fn open(root: &Path, label: &str) -> Result<Self, ModelError> {
        if !root.is_dir() {
            return Err(ModelError::FolderNotFound {
                path: root.to_path_buf(),
            });
        }
        let st_path = root.join("config_sentence_transformers.json");
        let st = read_json(&st_path)?.unwrap_or(Value::Null);
        if let Some(kind) = st.get("model_type").and_then(Value::as_str) {
            if kind != "SentenceTransformer" {
                return Err(unsupported(&st_path, format!("model_type `{kind}` is not a sentence embedding model (only SentenceTransformer)")));
            }
        }
        if root.join("adapter_config.json").exists() {
            return Err(unsupported(
                &root.join("adapter_config.json"),
                "PEFT adapters are not supported: merge the adapter into the model first",
            ));
        }
        let modules = read_modules(root)?;
        let transformer_dir = modules
            .as_ref()
            .map_or_else(|| root.to_path_buf(), |m| m.transformer.clone());

        let config_path = transformer_dir.join("config.json");
        let raw_config = read_json(&config_path)?.ok_or_else(|| ModelError::MissingFile {
            path: config_path.clone(),
            what: "the model configuration (a model folder in sentence-transformers or Hugging \
                   Face layout has one)"
                .into(),
        })?;
        let name_or_path = raw_config
            .get("_name_or_path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let config = ModelConfig::from_json(raw_config).map_err(|e| match e {
            super::config::ConfigError::Json(source) => ModelError::Json {
                path: config_path.clone(),
                source,
            },
            super::config::ConfigError::Unsupported(reason) => ModelError::Unsupported {
                path: config_path.clone(),
                reason,
            },
        })?;

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

        let settings = read_transformer_settings(&transformer_dir)?;
        let tokenizer_config_max = read_json(&transformer_dir.join("tokenizer_config.json"))?
            .and_then(|v| v.get("model_max_length").and_then(Value::as_f64))
            .map(|f| {
                if f >= NO_LIMIT as f64 {
                    u64::MAX
                } else {
                    f.max(0.0) as u64
                }
            });
        // sentence-transformers 6.2's precedence (Transformer.__init__): the tokenizer arguments,
        // then max_seq_length, then the tokenizer's own limit capped at the model's positions.
        let (max_len, source) = if let Some(n) = settings.tokenizer_max_length {
            (n as u64, LengthSource::TokenizerArgs)
        } else if let Some(n) = settings.max_seq_length {
            (n as u64, LengthSource::SentenceBertConfig)
        } else {
            let positions = config.max_position_embeddings as u64;
            match tokenizer_config_max {
                Some(t) if t < positions => (t, LengthSource::TokenizerConfig),
                _ => (positions, LengthSource::Positions),
            }
        };
        let max_seq_length = (max_len < NO_LIMIT).then_some(max_len as usize);

        let (pooling, include_prompt) = match modules.as_ref().and_then(|m| m.pooling.as_ref()) {
            Some(dir) => read_pooling(&dir.join("config.json"), config.hidden_size)?,
            None => (Pooling::Mean, true),
        };

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
        let truncate_dim = match st.get("truncate_dim") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|&d| d > 0 && d as usize <= config.hidden_size)
                    .ok_or_else(|| {
                        unsupported(
                            &st_path,
                            format!(
                                "truncate_dim {v} must be between 1 and the model's dimension {}",
                                config.hidden_size
                            ),
                        )
                    })? as usize,
            ),
        };

        Ok(Self {
            root: root.to_path_buf(),
            transformer_dir,
            sentence: SentenceConfig {
                pooling,
                include_prompt,
                normalize: modules.as_ref().is_some_and(|m| m.normalize),
                max_seq_length,
                max_seq_length_source: source,
                do_lower_case: settings.do_lower_case,
                prompts,
                default_prompt_name,
                similarity_fn_name,
                truncate_dim,
                is_sentence_transformers: modules.is_some(),
                format: modules
                    .as_ref()
                    .map_or(FolderFormat::HuggingFace, |m| m.format),
            },
            config,
            weights_path,
            tokenizer_path,
            name_hint: format!("{label} {name_or_path}"),
        })
    }

    /// The one rule for the tokens per text, shared by the encoder and by every saved model:
    /// the user's choice, else what sentence-transformers uses for this folder, in both cases at
    /// most what the model's learned positions allow.
    pub fn max_seq_len(&self, user: Option<usize>) -> usize {
        let cap = self.config.max_tokens();
        user.or(self.sentence.max_seq_length)
            .unwrap_or(cap)
            .min(cap)
    }
}
