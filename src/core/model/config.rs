//! `config.json` of a transformer encoder checkpoint, mirrored as a serde struct (as
//! candle-transformers does), for the architectures tripletlab runs: BERT, the RoBERTa family
//! (XLM-RoBERTa, RoBERTa, CamemBERT) and MPNet.

use serde::{Deserialize, Serialize};

/// The activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// Exact GELU (erf), transformers' `gelu`.
    Gelu,
    /// Tanh approximation of GELU.
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    /// ReLU.
    Relu,
}

/// The architectures the encoder implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// BERT (`model_type` `bert`): positions from 0, token types.
    Bert,
    /// The RoBERTa family (`xlm-roberta`, `roberta`, `camembert`): BERT's graph with positions
    /// starting at `pad_token_id + 1`.
    XlmRoberta,
    /// MPNet (`mpnet`): positions from `pad_token_id + 1`, no token types, and a relative
    /// position bias (shared by the layers) added to the attention scores.
    MpNet,
}

/// The relative position buckets MPNet's attention computes (transformers' default, used
/// whatever `relative_attention_num_buckets` says).
pub const MPNET_BUCKETS: usize = 32;

/// `model_type` values tripletlab runs, for messages.
pub const SUPPORTED_MODEL_TYPES: &str = "bert, xlm-roberta, roberta, camembert, mpnet";

impl Arch {
    /// The architecture of a `model_type` value.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "bert" => Some(Arch::Bert),
            "xlm-roberta" | "roberta" | "camembert" => Some(Arch::XlmRoberta),
            "mpnet" => Some(Arch::MpNet),
            _ => None,
        }
    }

    /// The architecture a class name in `architectures` belongs to (`XLMRobertaModel`, ...).
    fn from_class_name(class: &str) -> Option<Self> {
        let c = class.to_ascii_lowercase();
        if c.starts_with("xlmroberta") || c.starts_with("roberta") || c.starts_with("camembert") {
            Some(Arch::XlmRoberta)
        } else if c.starts_with("mpnet") {
            Some(Arch::MpNet)
        } else if c.starts_with("bert") {
            Some(Arch::Bert)
        } else {
            None
        }
    }

    /// A short name for messages and reports.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Bert => "BERT",
            Arch::XlmRoberta => "XLM-RoBERTa",
            Arch::MpNet => "MPNet",
        }
    }
}

/// `config.json` as stored: every field any supported architecture uses, optional where one of
/// them lacks it.
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: HiddenAct,
    #[serde(default = "default_dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    attention_probs_dropout_prob: f64,
    max_position_embeddings: usize,
    type_vocab_size: Option<usize>,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    pad_token_id: Option<usize>,
    #[serde(default = "default_position_type")]
    position_embedding_type: String,
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    relative_attention_num_buckets: Option<usize>,
}

/// Hyper-parameters of an encoder, as found in `config.json`, with the architecture resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    /// The architecture.
    pub arch: Arch,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Activation of the feed-forward block.
    pub hidden_act: HiddenAct,
    /// Dropout on hidden states (training only).
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    pub attention_probs_dropout_prob: f64,
    /// Number of learned positions (including the offset of the RoBERTa family and MPNet).
    pub max_position_embeddings: usize,
    /// Number of token types (segments); 0 for MPNet, which has no token-type embeddings.
    pub type_vocab_size: usize,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Id of the padding token.
    pub pad_token_id: usize,
    /// Buckets of MPNet's relative position bias (0 for the other architectures).
    pub relative_attention_num_buckets: usize,
}

fn default_act() -> HiddenAct {
    HiddenAct::Gelu
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".into()
}

impl ModelConfig {
    /// Reads a `config.json` value; the error says what is wrong (the caller names the file).
    pub fn from_json(v: serde_json::Value) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_json::from_value(v).map_err(ConfigError::Json)?;
        let arch = match raw.model_type.as_deref() {
            Some(t) => Arch::from_model_type(t).ok_or_else(|| {
                ConfigError::Unsupported(format!(
                    "model_type `{t}` is not supported (supported: {SUPPORTED_MODEL_TYPES})"
                ))
            })?,
            // Old BERT checkpoints have no model_type; their class names still say what they are.
            None => match raw
                .architectures
                .iter()
                .find_map(|c| Arch::from_class_name(c))
            {
                Some(a) => a,
                None if raw.architectures.is_empty() => Arch::Bert,
                None => {
                    return Err(ConfigError::Unsupported(format!(
                        "architectures {:?} with no model_type are not supported (supported \
                         model_type values: {SUPPORTED_MODEL_TYPES})",
                        raw.architectures
                    )))
                }
            },
        };
        if raw.position_embedding_type != "absolute" {
            return Err(ConfigError::Unsupported(format!(
                "position_embedding_type `{}` is not supported (only `absolute`)",
                raw.position_embedding_type
            )));
        }
        if raw.num_attention_heads == 0 || !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
        {
            return Err(ConfigError::Unsupported(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                raw.hidden_size, raw.num_attention_heads
            )));
        }
        let (type_vocab_size, pad_token_id, buckets) = match arch {
            Arch::Bert => (
                raw.type_vocab_size.unwrap_or(2),
                raw.pad_token_id.unwrap_or(0),
                0,
            ),
            Arch::XlmRoberta => (
                raw.type_vocab_size.unwrap_or(1),
                raw.pad_token_id.unwrap_or(1),
                0,
            ),
            Arch::MpNet => (
                0,
                raw.pad_token_id.unwrap_or(1),
                raw.relative_attention_num_buckets.unwrap_or(32),
            ),
        };
        // transformers computes MPNet's buckets with its default of 32 whatever the config
        // says; the table must have a row for each.
        if arch == Arch::MpNet && buckets < MPNET_BUCKETS {
            return Err(ConfigError::Unsupported(format!(
                "relative_attention_num_buckets {buckets} is fewer than the {MPNET_BUCKETS} buckets \
                 MPNet's attention uses"
            )));
        }
        let cfg = Self {
            arch,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            hidden_act: raw.hidden_act,
            hidden_dropout_prob: raw.hidden_dropout_prob,
            attention_probs_dropout_prob: raw.attention_probs_dropout_prob,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size,
            layer_norm_eps: raw.layer_norm_eps,
            pad_token_id,
            relative_attention_num_buckets: buckets,
        };
        if cfg.max_tokens() < 3 {
            return Err(ConfigError::Unsupported(format!(
                "max_position_embeddings {} leaves room for fewer than 3 tokens",
                cfg.max_position_embeddings
            )));
        }
        Ok(cfg)
    }

    /// The position id of a text's first token: 0 for BERT; `pad_token_id + 1` for the RoBERTa
    /// family and MPNet (transformers' `create_position_ids_from_input_ids`, whose padding never
    /// reaches the engine: texts are packed without it).
    pub fn position_offset(&self) -> usize {
        match self.arch {
            Arch::Bert => 0,
            Arch::XlmRoberta | Arch::MpNet => self.pad_token_id + 1,
        }
    }

    /// The most tokens one text can have: the learned positions after the offset.
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.position_offset())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The parameters the configuration declares (saturating: an absurd configuration gives a
    /// huge count, never an overflow).
    pub fn parameter_count(&self) -> u128 {
        let (h, i) = (self.hidden_size as u128, self.intermediate_size as u128);
        let tables = (self.vocab_size as u128)
            .saturating_add(self.max_position_embeddings as u128)
            .saturating_add(self.type_vocab_size as u128)
            .saturating_mul(h);
        let layer = (4 * h * h + 4 * h)
            .saturating_add(2 * h * i)
            .saturating_add(i + 5 * h);
        tables
            .saturating_add(layer.saturating_mul(self.num_hidden_layers as u128))
            .saturating_add(
                (self.relative_attention_num_buckets * self.num_attention_heads) as u128,
            )
    }
}

/// Why a `config.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not the expected JSON shape.
    #[error(transparent)]
    Json(serde_json::Error),
    /// An architecture or setting the encoder does not implement.
    #[error("{0}")]
    Unsupported(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
               "num_attention_heads": 2, "intermediate_size": 16,
               "max_position_embeddings": 20})
    }

    #[test]
    fn architectures_and_their_defaults() {
        let cfg = ModelConfig::from_json(base()).unwrap();
        assert_eq!(
            (cfg.arch, cfg.position_offset(), cfg.type_vocab_size),
            (Arch::Bert, 0, 2)
        );
        for t in ["xlm-roberta", "roberta", "camembert"] {
            let mut v = base();
            v["model_type"] = t.into();
            let cfg = ModelConfig::from_json(v).unwrap();
            assert_eq!(cfg.arch, Arch::XlmRoberta);
            assert_eq!((cfg.position_offset(), cfg.max_tokens()), (2, 18), "{t}");
        }
        let mut v = base();
        v["model_type"] = "mpnet".into();
        v["pad_token_id"] = 1.into();
        let cfg = ModelConfig::from_json(v).unwrap();
        assert_eq!(cfg.arch, Arch::MpNet);
        assert_eq!(
            (
                cfg.type_vocab_size,
                cfg.relative_attention_num_buckets,
                cfg.position_offset()
            ),
            (0, 32, 2)
        );
        let mut v = base();
        v["architectures"] = json!(["XLMRobertaModel"]);
        assert_eq!(ModelConfig::from_json(v).unwrap().arch, Arch::XlmRoberta);
    }

    #[test]
    fn unsupported_types_name_themselves_and_the_supported_ones() {
        let mut v = base();
        v["model_type"] = "gpt2".into();
        let msg = ModelConfig::from_json(v).unwrap_err().to_string();
        assert!(
            msg.contains("gpt2") && msg.contains("mpnet") && msg.contains("bert"),
            "{msg}"
        );
        let mut v = base();
        v["architectures"] = json!(["LlamaForCausalLM"]);
        let msg = ModelConfig::from_json(v).unwrap_err().to_string();
        assert!(msg.contains("LlamaForCausalLM"), "{msg}");
    }
}
