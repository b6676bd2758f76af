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
    /// The maximum length sentence-transformers 6.2 uses for this folder, before the model's
    /// positions cap it: see [`ModelFolder::max_seq_len`].
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

use super::st_files::{
    parse, read_json, read_modules, read_pooling, read_transformer_settings, unsupported,
};

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

        // A configuration the weights cannot hold (absurd sizes) is refused before anything is
        // allocated for it: a checkpoint stores each parameter in at least one byte.
        let file_bytes = std::fs::metadata(&weights_path).map_or(0, |m| m.len()) as u128;
        let params = config.parameter_count();
        if params > file_bytes.saturating_add(64 << 20) {
            return Err(unsupported(
                &config_path,
                format!(
                    "it declares a model of {params} parameters ({} layers, hidden size {}, \
                     vocabulary {}, {} positions), which {} ({}) cannot hold: the \
                     configuration does not fit the weights",
                    config.num_hidden_layers,
                    config.hidden_size,
                    config.vocab_size,
                    config.max_position_embeddings,
                    weights_path.display(),
                    crate::core::files::format_bytes(file_bytes as u64)
                ),
            ));
        }
        let settings = read_transformer_settings(&transformer_dir)?;
        // transformers' "no limit" (1e30 when absent) never caps: the positions do.
        let tokenizer_config_max = read_json(&transformer_dir.join("tokenizer_config.json"))?
            .and_then(|v| v.get("model_max_length").and_then(Value::as_f64))
            .filter(|&f| f < 1e20)
            .map(|f| f.max(0.0) as u64);
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
        let max_seq_length = Some(usize::try_from(max_len).unwrap_or(usize::MAX));

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
