//! The tokenizer as sentence-transformers sets it up (its own padding and truncation off,
//! `do_lower_case` as a leading Lowercase normalizer), truncation that keeps the special tokens,
//! and the token length of a prompt (for pooling that leaves the prompt out).

use tokenizers::normalizers::{Lowercase, Sequence};
use tokenizers::{NormalizerWrapper, Tokenizer};

use crate::core::model::{ModelError, ModelFolder, CONFIG_FILE_LIMIT_BYTES};

/// Token count of one text as the model saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TokenCount {
    /// Tokens of the full text with special tokens (and prompt), before truncation.
    pub tokens: usize,
    /// True when the text was cut at the max length.
    pub truncated: bool,
}

/// Token ids of one text, truncated.
pub(super) struct Tokenized {
    pub(super) ids: Vec<u32>,
    pub(super) type_ids: Vec<u32>,
    pub(super) count: TokenCount,
}

/// Loads `tokenizer.json` of a folder as sentence-transformers 6.2 uses it.
pub(super) fn load_tokenizer(folder: &ModelFolder) -> Result<Tokenizer, ModelError> {
    let path = &folder.tokenizer_path;
    let err = |message: String| ModelError::Tokenizer {
        path: path.clone(),
        message,
    };
    let bytes = crate::core::model::read_limited(path, CONFIG_FILE_LIMIT_BYTES)?;
    if bytes.is_empty() {
        return Err(err("the file is empty".into()));
    }
    let mut tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| err(e.to_string()))?;
    // tokenizer.json may carry its own fixed padding and truncation (all-MiniLM-L6-v2 has 128):
    // sentence-transformers ignores them, so do we. We truncate ourselves, after counting the
    // full length (the tokenizer's overflow does not give it reliably).
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| err(e.to_string()))?;
    if folder.sentence.do_lower_case {
        // sentence-transformers' Transformer: a Lowercase normalizer first, unless there is one.
        let current = tokenizer.get_normalizer().cloned();
        let has_lowercase = match &current {
            Some(NormalizerWrapper::Lowercase(_)) => true,
            Some(NormalizerWrapper::Sequence(s)) => s
                .as_ref()
                .iter()
                .any(|n| matches!(n, NormalizerWrapper::Lowercase(_))),
            _ => false,
        };
        if !has_lowercase {
            let mut all = vec![NormalizerWrapper::Lowercase(Lowercase)];
            match current {
                Some(NormalizerWrapper::Sequence(s)) => all.extend(s),
                Some(other) => all.push(other),
                None => {}
            }
            tokenizer
                .with_normalizer(Some(Sequence::new(all)))
                .map_err(|e| err(e.to_string()))?;
        }
    }
    Ok(tokenizer)
}

/// Tokens of a prompt that sentence-transformers leaves out of pooling with
/// `include_prompt: false`: the prompt tokenized alone with its special tokens, less a closing
/// special token.
pub(super) fn prompt_length(tokenizer: &Tokenizer, prompt: &str) -> Result<usize, String> {
    if prompt.is_empty() {
        return Ok(0);
    }
    let enc = tokenizer.encode(prompt, true).map_err(|e| e.to_string())?;
    let n = enc.get_ids().len();
    let closing_special = enc.get_special_tokens_mask().last() == Some(&1);
    Ok(n - usize::from(closing_special && n > 0))
}

/// Cuts a post-processed single-sequence encoding to `max_len` tokens, keeping every special token
/// (e.g. `[CLS]` and `[SEP]`) and the first content tokens, as the tokenizer's own truncation does.
pub(super) fn truncate(
    ids: &[u32],
    type_ids: &[u32],
    special: &[u32],
    max_len: usize,
) -> Tokenized {
    let count = TokenCount {
        tokens: ids.len(),
        truncated: ids.len() > max_len,
    };
    if !count.truncated {
        return Tokenized {
            ids: ids.to_vec(),
            type_ids: type_ids.to_vec(),
            count,
        };
    }
    let n_special = special.iter().filter(|&&m| m != 0).count();
    let mut keep_content = max_len.saturating_sub(n_special);
    let (mut kept_ids, mut kept_types) = (Vec::with_capacity(max_len), Vec::with_capacity(max_len));
    for (i, &id) in ids.iter().enumerate() {
        let is_special = special.get(i).is_some_and(|&m| m != 0);
        if is_special || keep_content > 0 {
            if !is_special {
                keep_content -= 1;
            }
            kept_ids.push(id);
            kept_types.push(type_ids.get(i).copied().unwrap_or(0));
        }
    }
    kept_ids.truncate(max_len);
    kept_types.truncate(max_len);
    Tokenized {
        ids: kept_ids,
        type_ids: kept_types,
        count,
    }
}
