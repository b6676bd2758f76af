//! Where a model comes from: a local folder, or a Hugging Face hub id resolved through the standard
//! HF cache first (so a model Python already downloaded is reused offline), then the network.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use super::{ModelError, ModelFolder};

/// The model used when none is given.
pub const DEFAULT_MODEL: &str = "intfloat/e5-small-v2";

/// A model given by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A folder on disk.
    Dir(PathBuf),
    /// A hub id such as `intfloat/e5-small-v2`.
    Hub(String),
    /// A model served elsewhere: `tei:URL` or `openai:URL[#MODEL]` (embedding only).
    Remote(crate::core::backend::remote::RemoteSpec),
}

impl ModelSource {
    /// `tei:URL` / `openai:URL[#MODEL]` is a remote model; a path that exists, or that looks
    /// like a path, is a folder; anything else is a hub id.
    pub fn parse(spec: &str) -> Self {
        if let Some(remote) = crate::core::backend::remote::RemoteSpec::parse(spec) {
            return ModelSource::Remote(remote);
        }
        let p = Path::new(spec);
        let looks_like_path = spec.starts_with(['.', '/', '~'])
            || spec.contains('\\')
            || spec.matches('/').count() > 1;
        if p.exists() || looks_like_path {
            ModelSource::Dir(p.to_path_buf())
        } else {
            ModelSource::Hub(spec.to_string())
        }
    }

    /// How it is shown to the user and recorded in reports.
    pub fn label(&self) -> String {
        match self {
            ModelSource::Dir(p) => p.display().to_string(),
            ModelSource::Hub(id) => id.clone(),
            ModelSource::Remote(r) => r.label(),
        }
    }
}

/// Bytes of one file downloaded so far.
#[derive(Debug, Clone)]
pub struct DownloadProgress {
    /// The file being downloaded.
    pub file: String,
    /// Bytes received.
    pub done_bytes: usize,
    /// Size of the file.
    pub total_bytes: usize,
}

/// Files a BERT sentence model needs from the hub; the others are optional.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
const OPTIONAL: &[&str] = &[
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];
const WEIGHTS: &[&str] = &["model.safetensors", "pytorch_model.bin"];

struct ProgressAdapter<'a> {
    file: String,
    done: usize,
    total: usize,
    on_progress: &'a mut dyn FnMut(DownloadProgress),
}

impl hf_hub::api::Progress for ProgressAdapter<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.file = filename.to_string();
        self.total = size;
        self.done = 0;
    }
    fn update(&mut self, size: usize) {
        self.done += size;
        (self.on_progress)(DownloadProgress {
            file: self.file.clone(),
            done_bytes: self.done,
            total_bytes: self.total,
        });
    }
    fn finish(&mut self) {}
}

/// Opens the model folder of a source, downloading a hub model into the HF cache when it is not
/// cached yet. `on_progress` sees download progress.
pub fn resolve_source(
    source: &ModelSource,
    on_progress: &mut dyn FnMut(DownloadProgress),
) -> Result<ModelFolder, ModelError> {
    match source {
        ModelSource::Dir(dir) => ModelFolder::open(dir, &dir.display().to_string()),
        ModelSource::Hub(id) => {
            let cache = hf_cache();
            if let Some(dir) = cached_snapshot(&cache, id) {
                return ModelFolder::open(&dir, id);
            }
            if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true") {
                return Err(ModelError::Hub(format!(
                    "model `{id}` is not in the local Hugging Face cache ({}) and HF_HUB_OFFLINE \
                     is set. Pass the path of a local model folder (sentence-transformers or \
                     Hugging Face layout) instead of a hub id",
                    cache.path().display()
                )));
            }
            let dir = download(&cache, id, on_progress)?;
            ModelFolder::open(&dir, id)
        }
        ModelSource::Remote(r) => Err(ModelError::Hub(format!(
            "{} is a served model: it embeds through its server and has no folder to read, \
             fine-tune or save (use a local folder or hub id for that)",
            r.label()
        ))),
    }
}

/// The Hugging Face cache as Python's huggingface_hub finds it: `HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
fn hf_cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => Cache::new(PathBuf::from(dir)),
        None => Cache::from_env(),
    }
}

/// The snapshot folder of a fully cached model, if any.
fn cached_snapshot(cache: &Cache, id: &str) -> Option<PathBuf> {
    let repo = cache.repo(Repo::new(id.to_string(), RepoType::Model));
    let config = repo.get("config.json")?;
    REQUIRED
        .iter()
        .all(|f| repo.get(f).is_some())
        .then_some(())?;
    WEIGHTS
        .iter()
        .any(|f| repo.get(f).is_some())
        .then_some(())?;
    config.parent().map(Path::to_path_buf)
}

fn download(
    cache: &Cache,
    id: &str,
    on_progress: &mut dyn FnMut(DownloadProgress),
) -> Result<PathBuf, ModelError> {
    let offline = |cause: String| {
        ModelError::Hub(format!(
            "model `{id}` is not in the local Hugging Face cache ({}) and could not be downloaded \
             ({cause}). Connect once to download it, or pass the path of a local model folder \
             (sentence-transformers or Hugging Face layout) instead of a hub id",
            cache.path().display()
        ))
    };
    let mut builder = ApiBuilder::from_cache(cache.clone());
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder
        .with_progress(false)
        .with_retries(1)
        .build()
        .map_err(|e| offline(e.to_string()))?;
    let repo = api.repo(Repo::new(id.to_string(), RepoType::Model));
    let mut fetch = |file: &str| -> Result<PathBuf, ApiError> {
        let adapter = ProgressAdapter {
            file: file.into(),
            done: 0,
            total: 0,
            on_progress: &mut *on_progress,
        };
        repo.download_with_progress(file, adapter)
    };
    // The hub answers 401 for a repository that does not exist (or is private) and 404 for a
    // file that a repository lacks.
    let not_found = |e: &ApiError| {
        let msg = e.to_string();
        msg.contains("status code 404") || msg.contains("status code 401")
    };
    let config = match fetch("config.json") {
        Ok(p) => p,
        Err(e) if not_found(&e) => {
            return Err(ModelError::Hub(format!(
                "model `{id}` was not found on the Hugging Face hub (no config.json, or a private \
                 repository): check the id"
            )))
        }
        Err(e) => return Err(offline(e.to_string())),
    };
    for file in REQUIRED.iter().skip(1) {
        fetch(file).map_err(|e| {
            ModelError::Hub(format!("could not download {file} of model `{id}`: {e}"))
        })?;
    }
    let mut have_weights = false;
    for file in WEIGHTS {
        match fetch(file) {
            Ok(_) => {
                have_weights = true;
                break;
            }
            Err(e) if not_found(&e) => continue,
            Err(e) => {
                return Err(ModelError::Hub(format!(
                    "could not download {file} of model `{id}`: {e}"
                )))
            }
        }
    }
    if !have_weights {
        return Err(ModelError::Hub(format!(
            "model `{id}` has neither model.safetensors nor pytorch_model.bin on the hub"
        )));
    }
    for file in OPTIONAL {
        match fetch(file) {
            Ok(_) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => {
                return Err(ModelError::Hub(format!(
                    "could not download {file} of model `{id}`: {e}"
                )))
            }
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| offline("bad cache path".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sources() {
        assert_eq!(
            ModelSource::parse("intfloat/e5-small-v2"),
            ModelSource::Hub("intfloat/e5-small-v2".into())
        );
        assert_eq!(ModelSource::parse("./m"), ModelSource::Dir("./m".into()));
        assert_eq!(
            ModelSource::parse("/no/such/dir"),
            ModelSource::Dir("/no/such/dir".into())
        );
    }
}
