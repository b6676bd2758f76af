//! Which prompts are prepended to queries and documents: the folder's declared ones, the e5
//! family's `"query: "` / `"passage: "` (declared nowhere on the hub), the user's, or none.

use crate::core::model::ModelFolder;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PromptChoice {
    /// The folder's prompts, or the family's known defaults.
    #[default]
    Auto,
    /// No prompts.
    None,
    /// These prompts.
    Custom {
        /// Prepended to queries.
        query: String,
        /// Prepended to documents.
        document: String,
    },
}

impl PromptChoice {
    /// Parses `auto`, `none` or `QUERY_PROMPT,DOCUMENT_PROMPT` (split at the first comma).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            _ => match s.split_once(',') {
                Some((q, d)) => Ok(Self::Custom {
                    query: q.into(),
                    document: d.into(),
                }),
                None => Err(format!(
                    "prompts must be `auto`, `none` or `QUERY_PROMPT,DOCUMENT_PROMPT`, got `{s}`"
                )),
            },
        }
    }
}

/// Where the prompts in use come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptSource {
    /// `config_sentence_transformers.json` of the model folder.
    Folder,
    /// The e5 family's documented defaults.
    E5Default,
    /// Given by the user.
    User,
    /// None in use.
    None,
}

/// The prompts in use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Prompts {
    /// Prepended to queries.
    pub query: String,
    /// Prepended to documents.
    pub document: String,
    /// Where they come from.
    pub source: PromptSource,
}

/// Names sentence-transformers models use for the document prompt.
const DOCUMENT_PROMPT_NAMES: &[&str] = &["document", "passage", "corpus", "doc", "documents"];

impl Prompts {
    /// No prompts.
    pub fn none() -> Self {
        Self {
            query: String::new(),
            document: String::new(),
            source: PromptSource::None,
        }
    }

    /// Resolves a choice against a folder.
    pub fn choose(choice: &PromptChoice, folder: &ModelFolder) -> Self {
        match choice {
            PromptChoice::None => Self::none(),
            PromptChoice::Custom { query, document } => Self {
                query: query.clone(),
                document: document.clone(),
                source: PromptSource::User,
            },
            PromptChoice::Auto => {
                let declared = &folder.sentence.prompts;
                let default = folder
                    .sentence
                    .default_prompt_name
                    .as_ref()
                    .and_then(|n| declared.get(n))
                    .cloned();
                let query = declared.get("query").cloned().or_else(|| default.clone());
                let document = DOCUMENT_PROMPT_NAMES
                    .iter()
                    .find_map(|n| declared.get(*n))
                    .cloned()
                    .or(default);
                if query.is_some() || document.is_some() {
                    Self {
                        query: query.unwrap_or_default(),
                        document: document.unwrap_or_default(),
                        source: PromptSource::Folder,
                    }
                } else if is_e5_family(&folder.name_hint) {
                    Self {
                        query: "query: ".into(),
                        document: "passage: ".into(),
                        source: PromptSource::E5Default,
                    }
                } else {
                    Self::none()
                }
            }
        }
    }
}

impl Prompts {
    /// Resolves a choice for a model known only by name (a remote one): its family's defaults
    /// (e5's `query: ` / `passage: `) or none.
    pub fn choose_named(choice: &PromptChoice, name: &str) -> Self {
        match choice {
            PromptChoice::Auto if is_e5_family(name) => Self {
                query: "query: ".into(),
                document: "passage: ".into(),
                source: PromptSource::E5Default,
            },
            PromptChoice::Auto | PromptChoice::None => Self::none(),
            PromptChoice::Custom { query, document } => Self {
                query: query.clone(),
                document: document.clone(),
                source: PromptSource::User,
            },
        }
    }
}

/// True for names such as `intfloat/e5-small-v2` or `multilingual-e5-large`.
fn is_e5_family(name: &str) -> bool {
    name.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|t| t == "e5")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e5_names() {
        assert!(is_e5_family("intfloat/e5-small-v2"));
        assert!(is_e5_family("/models/multilingual-e5-large "));
        assert!(!is_e5_family(
            "sentence-transformers/all-MiniLM-L6-v2 nreimers/MiniLM"
        ));
        assert!(!is_e5_family("bge5-small"));
    }

    #[test]
    fn parse_choice() {
        assert_eq!(PromptChoice::parse("auto"), Ok(PromptChoice::Auto));
        assert_eq!(
            PromptChoice::parse("q: ,d: "),
            Ok(PromptChoice::Custom {
                query: "q: ".into(),
                document: "d: ".into()
            })
        );
        assert!(PromptChoice::parse("x").is_err());
    }
}
