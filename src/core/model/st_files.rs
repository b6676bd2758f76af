//! The sentence-transformers files of a model folder, read as sentence-transformers 6.2 reads
//! them: `modules.json` (module types of ≤ 5.3 and of 6.x), the transformer module's
//! `sentence_bert_config.json`, the pooling module's `config.json` (legacy boolean keys or 6.x's
//! `pooling_mode`). A setting 6.2 would act on and tripletlab does not implement is an error.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::folder::{FolderFormat, Pooling};
use super::ModelError;

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

pub(super) fn parse<T: serde::de::DeserializeOwned>(
    path: &Path,
    v: Value,
) -> Result<T, ModelError> {
    serde_json::from_value(v).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn unsupported(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Unsupported {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The `modules.json` entries, checked: a Transformer first, at most one Pooling and one
/// Normalize after it, nothing else.
pub(super) struct Modules {
    pub(super) transformer: PathBuf,
    pub(super) pooling: Option<PathBuf>,
    pub(super) normalize: bool,
    pub(super) format: FolderFormat,
}

pub(super) fn read_modules(root: &Path) -> Result<Option<Modules>, ModelError> {
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
pub(super) struct TransformerSettings {
    pub(super) max_seq_length: Option<usize>,
    pub(super) tokenizer_max_length: Option<usize>,
    pub(super) do_lower_case: bool,
}

/// Reads the transformer module's settings, refusing any that would change the vectors and that
/// tripletlab does not implement.
pub(super) fn read_transformer_settings(dir: &Path) -> Result<TransformerSettings, ModelError> {
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
pub(super) fn read_pooling(path: &Path, hidden_size: usize) -> Result<(Pooling, bool), ModelError> {
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
