//! Writing a model folder in the sentence-transformers layout that sentence-transformers 2.x–6.x
//! and text-embeddings-inference load. The folder is written under a temporary name next to the
//! target and renamed into place, so a crash never leaves half a model at the target path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde_json::json;

use super::{Checkpoint, ModelFolder};
use crate::core::encoder::Prompts;

/// Why a model could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A tensor could not be converted or serialised.
    #[error("cannot write the weights {path}: {message}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The target path is unusable.
    #[error("{0}")]
    Target(String),
}

/// What the saved folder declares besides the weights.
#[derive(Debug, Clone)]
pub struct SaveSettings {
    /// `max_seq_length` for sentence-transformers.
    pub max_seq_length: usize,
    /// Prompts to declare (empty ones are left out).
    pub prompts: Prompts,
    /// The model card (`README.md`).
    pub model_card: String,
    /// More files written into the folder (name, text), e.g. the run record.
    pub extra_files: Vec<(String, String)>,
}

/// Maps an I/O error on `path` to a [`SaveError`].
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SaveError {
    let path = path.to_path_buf();
    move |source| SaveError::Io { path, source }
}

/// Files of the source folder that are copied unchanged when present.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "added_tokens.json",
];

/// Saves `weights` (encoder tensor names, no prefix) merged into the source checkpoint's tensor
/// map, so names, dtypes and shapes equal the source's. `after_file` is called after each file is
/// written (tests use it to interrupt the save).
pub fn save_model_folder(
    out: &Path,
    source: &ModelFolder,
    checkpoint: &Checkpoint,
    weights: &HashMap<String, Tensor>,
    settings: &SaveSettings,
    after_file: &mut dyn FnMut(&Path),
) -> Result<(), SaveError> {
    let name = out
        .file_name()
        .ok_or_else(|| SaveError::Target(format!("{} is not a folder path", out.display())))?
        .to_string_lossy()
        .to_string();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    if out.exists() && !out.is_dir() {
        return Err(SaveError::Target(format!(
            "{} exists and is not a folder; choose another path",
            out.display()
        )));
    }
    recover_leftovers(&parent, &name);
    let stamp = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let tmp = parent.join(format!(".{name}.partial-{stamp}"));
    let result = write_folder(&tmp, source, checkpoint, weights, settings, after_file)
        .and_then(|()| sync_written_folder(&tmp));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = parent.join(format!(".{name}.old-{stamp}"));
    if let Err(e) = swap_into_place(&tmp, out, &old) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(SaveError::Io {
            path: out.to_path_buf(),
            source: e,
        });
    }
    // After an exchange `tmp` holds the previous folder; after the fallback `old` does.
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&old);
    let _ = sync_dir_entry(&parent);
    Ok(())
}

/// Puts the finished folder `tmp` at `out`. With a previous folder there, Linux swaps the two in
/// one atomic `renameat2(RENAME_EXCHANGE)`, so the target path holds the old or the new folder
/// at every instant, whatever kills the process. Where the file system cannot exchange, the old
/// folder moves aside to `old` first; a process killed between the two renames leaves the target
/// missing and `old` whole, which [`recover_leftovers`] puts back before the next save.
fn swap_into_place(tmp: &Path, out: &Path, old: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    let exchange = |a: &Path, b: &Path| {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE)
    };
    #[cfg(not(target_os = "linux"))]
    let exchange = |_: &Path, _: &Path| Err(Unsupported);
    swap_into_place_with(tmp, out, old, exchange)
}

/// An exchange error that means "this file system cannot exchange" (off Linux: always).
#[cfg(not(target_os = "linux"))]
#[derive(Debug, Clone, Copy)]
struct Unsupported;

#[cfg(target_os = "linux")]
type ExchangeError = rustix::io::Errno;
#[cfg(not(target_os = "linux"))]
type ExchangeError = Unsupported;

/// Whether an exchange failed only because the file system (or kernel) cannot exchange.
#[cfg(target_os = "linux")]
fn cannot_exchange(e: ExchangeError) -> bool {
    use rustix::io::Errno;
    e == Errno::INVAL || e == Errno::NOSYS || e == Errno::NOTSUP
}
#[cfg(not(target_os = "linux"))]
fn cannot_exchange(_: ExchangeError) -> bool {
    true
}

/// [`swap_into_place`] with the exchange given (tests make it fail as file systems do).
fn swap_into_place_with(
    tmp: &Path,
    out: &Path,
    old: &Path,
    exchange: impl Fn(&Path, &Path) -> Result<(), ExchangeError>,
) -> std::io::Result<()> {
    if !out.exists() {
        return std::fs::rename(tmp, out);
    }
    match exchange(tmp, out) {
        Ok(()) => return Ok(()),
        Err(e) if cannot_exchange(e) => {}
        #[cfg(target_os = "linux")]
        Err(e) => return Err(e.into()),
        #[cfg(not(target_os = "linux"))]
        Err(_) => unreachable!("every exchange error off Linux means it cannot exchange"),
    }
    std::fs::rename(out, old)?;
    if let Err(e) = std::fs::rename(tmp, out) {
        let _ = std::fs::rename(old, out);
        return Err(e);
    }
    Ok(())
}

/// Cleans up after saves of `parent/name` that a killed process left behind: a half-written
/// `.name.partial-PID-…` folder is removed, and a whole previous folder `.name.old-PID-…` is put
/// back when the target is missing (removed otherwise). Leftovers of a process still running
/// (another save in progress) are not touched.
fn recover_leftovers(parent: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let partial = format!(".{name}.partial-");
    let old = format!(".{name}.old-");
    let target = parent.join(name);
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().to_string();
        let (is_old, rest) = if let Some(rest) = file_name.strip_prefix(&old) {
            (true, rest)
        } else if let Some(rest) = file_name.strip_prefix(&partial) {
            (false, rest)
        } else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_none_or(process_may_be_running) {
            continue;
        }
        if is_old && !target.exists() && std::fs::rename(entry.path(), &target).is_ok() {
            continue;
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// Whether process `pid` may still be running (always true where this cannot be told).
fn process_may_be_running(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Flushes the files of a folder this save wrote (`tmp`: regular files and sub-folders only, all
/// ours) and the folder itself to disk, so a power cut after the rename does not leave empty files
/// behind the new name. Anything else found there (a link, a FIFO, a device) is not opened: opening
/// a FIFO blocks.
fn sync_written_folder(dir: &Path) -> Result<(), SaveError> {
    fn walk(dir: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(&entry.path())?;
            } else if kind.is_file() {
                std::fs::File::open(entry.path())?.sync_all()?;
            }
        }
        sync_dir_entry(dir)
    }
    walk(dir).map_err(io(dir))
}

/// Flushes one directory's own entries (the names in it), never the files under it: after the
/// rename, the parent folder's entry for the new folder must reach the disk, and nothing else of
/// the parent (it may be a home folder, `/tmp` or a folder of other models) is touched.
fn sync_dir_entry(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn write_folder(
    dir: &Path,
    source: &ModelFolder,
    checkpoint: &Checkpoint,
    weights: &HashMap<String, Tensor>,
    settings: &SaveSettings,
    after_file: &mut dyn FnMut(&Path),
) -> Result<(), SaveError> {
    std::fs::create_dir_all(dir.join("1_Pooling")).map_err(io(dir))?;

    // Weights first: the largest file, and the one a crash is most likely to cut.
    let weights_path = dir.join("model.safetensors");
    let mut merged: Vec<(String, Tensor)> = Vec::with_capacity(checkpoint.tensors.len());
    for (name, original) in &checkpoint.tensors {
        let local = name.strip_prefix(&checkpoint.prefix).unwrap_or(name);
        let t = match weights.get(local) {
            Some(w) => w
                .to_dtype(original.dtype())
                .map_err(|e| SaveError::Weights {
                    path: weights_path.clone(),
                    message: format!("{name}: {e}"),
                })?,
            None => original.clone(),
        };
        merged.push((name.clone(), t));
    }
    merged.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(
        merged.iter().map(|(k, v)| (k.as_str(), v)),
        Some(metadata),
        &weights_path,
    )
    .map_err(|e| SaveError::Weights {
        path: weights_path.clone(),
        message: e.to_string(),
    })?;
    after_file(&weights_path);

    // The source's config.json, with `model_type` and `architectures` added where an old
    // checkpoint lacks them: text-embeddings-inference requires both.
    let config_src = source.transformer_dir.join("config.json");
    let config_dst = dir.join("config.json");
    let bytes = super::read_limited(&config_src, super::CONFIG_FILE_LIMIT_BYTES)
        .map_err(|e| SaveError::Target(format!("cannot read {}: {e}", config_src.display())))?;
    let mut config: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| SaveError::Target(format!("{} is not JSON: {e}", config_src.display())))?;
    let (model_type, class) = match source.config.arch {
        super::Arch::Bert => ("bert", "BertModel"),
        super::Arch::XlmRoberta => ("xlm-roberta", "XLMRobertaModel"),
        super::Arch::MpNet => ("mpnet", "MPNetModel"),
    };
    if let Some(map) = config.as_object_mut() {
        map.entry("model_type").or_insert_with(|| json!(model_type));
        map.entry("architectures").or_insert_with(|| json!([class]));
    }
    let text = serde_json::to_string_pretty(&config).expect("JSON values serialise") + "\n";
    std::fs::write(&config_dst, text).map_err(io(&config_dst))?;
    after_file(&config_dst);
    for f in TOKENIZER_FILES {
        let src = source.transformer_dir.join(f);
        if src.is_file() {
            let dst = dir.join(f);
            std::fs::copy(&src, &dst).map_err(io(&dst))?;
            after_file(&dst);
        }
    }

    let mut write_json = |rel: &str, v: serde_json::Value| -> Result<(), SaveError> {
        let path = dir.join(rel);
        let text = serde_json::to_string_pretty(&v).expect("JSON values serialise");
        std::fs::write(&path, text + "\n").map_err(io(&path))?;
        after_file(&path);
        Ok(())
    };
    let cfg = &source.config;
    let st = &source.sentence;
    write_json(
        "sentence_bert_config.json",
        json!({"max_seq_length": settings.max_seq_length, "do_lower_case": st.do_lower_case}),
    )?;
    // The legacy boolean keys: sentence-transformers 2.x-6.x and text-embeddings-inference all
    // read them (TEI does not read 6.x's `pooling_mode` string).
    let mut pooling_json = serde_json::Map::new();
    pooling_json.insert("word_embedding_dimension".into(), json!(cfg.hidden_size));
    for mode in super::Pooling::ALL {
        pooling_json.insert(mode.legacy_key().into(), json!(mode == st.pooling));
    }
    pooling_json.insert("include_prompt".into(), json!(st.include_prompt));
    write_json(
        "1_Pooling/config.json",
        serde_json::Value::Object(pooling_json),
    )?;
    let mut modules = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if st.normalize {
        let norm_dir = dir.join("2_Normalize");
        std::fs::create_dir_all(&norm_dir).map_err(io(&norm_dir))?;
        modules.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
    }
    write_json("modules.json", json!(modules))?;
    let mut prompts = serde_json::Map::new();
    if !settings.prompts.query.is_empty() {
        prompts.insert("query".into(), json!(settings.prompts.query));
    }
    if !settings.prompts.document.is_empty() {
        prompts.insert("document".into(), json!(settings.prompts.document));
    }
    let mut st_config = json!({
        "__version__": {"sentence_transformers": "3.0.0", "transformers": "4.41.0", "pytorch": "2.3.0"},
        "prompts": prompts,
        "default_prompt_name": null,
        "similarity_fn_name": "cosine",
        "model_type": "SentenceTransformer"
    });
    if let Some(d) = st.truncate_dim {
        st_config["truncate_dim"] = json!(d);
    }
    write_json("config_sentence_transformers.json", st_config)?;
    let card = dir.join("README.md");
    std::fs::write(&card, &settings.model_card).map_err(io(&card))?;
    after_file(&card);
    for (name, text) in &settings.extra_files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io(&path))?;
        after_file(&path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::tiny::{write_tiny_bert, TinySpec};

    /// A process that has exited (this one's finished child).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_process_may_be_running_unless_it_has_exited() {
        assert!(process_may_be_running(std::process::id()));
        assert!(process_may_be_running(1));
        assert!(!process_may_be_running(dead_pid()));
    }

    /// A dead save's whole old folder goes back where the target is missing, its partial folder
    /// goes; a live process's leftovers and other names' are left alone; with the target present
    /// an old folder is removed.
    #[cfg(target_os = "linux")]
    #[test]
    fn leftovers_of_dead_saves_are_recovered_or_removed() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        let (dead, live) = (dead_pid(), std::process::id());
        let make = |name: &str| {
            std::fs::create_dir(p.join(name)).unwrap();
            std::fs::write(p.join(name).join("model.safetensors"), name).unwrap();
        };
        let old = format!(".m.old-{dead}-5");
        make(&old);
        make(&format!(".m.partial-{dead}-6"));
        make(&format!(".m.partial-{live}-7"));
        make(&format!(".other.partial-{dead}-8"));
        recover_leftovers(p, "m");
        let names = |p: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let mut want = vec![
            format!(".m.partial-{live}-7"),
            format!(".other.partial-{dead}-8"),
            "m".to_string(),
        ];
        want.sort();
        assert_eq!(names(p), want);
        assert_eq!(
            std::fs::read_to_string(p.join("m/model.safetensors")).unwrap(),
            old
        );
        // The target is there now: another dead save's old folder is removed, not put back.
        make(&format!(".m.old-{dead}-9"));
        recover_leftovers(p, "m");
        assert_eq!(names(p), want);
        assert_eq!(
            std::fs::read_to_string(p.join("m/model.safetensors")).unwrap(),
            old
        );
    }

    /// Where the file system cannot exchange (EINVAL, ENOSYS, ENOTSUP), the new folder still
    /// takes the target's place (the old one moved aside to `old`); any other exchange error is
    /// returned with both folders where they were.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_system_that_cannot_exchange_gets_two_renames_and_other_errors_stop() {
        use rustix::io::Errno;
        for (errno, falls_back) in [
            (Errno::INVAL, true),
            (Errno::NOSYS, true),
            (Errno::NOTSUP, true),
            (Errno::ACCESS, false),
            (Errno::XDEV, false),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (tmp, out, old) = (
                dir.path().join("tmp"),
                dir.path().join("out"),
                dir.path().join("old"),
            );
            for (d, text) in [(&tmp, "new"), (&out, "previous")] {
                std::fs::create_dir(d).unwrap();
                std::fs::write(d.join("f"), text).unwrap();
            }
            let result = swap_into_place_with(&tmp, &out, &old, |_, _| Err(errno));
            let read = |d: &Path| std::fs::read_to_string(d.join("f")).ok();
            if falls_back {
                result.unwrap();
                assert_eq!(read(&out).as_deref(), Some("new"), "{errno:?}");
                assert_eq!(read(&old).as_deref(), Some("previous"), "{errno:?}");
                assert!(!tmp.exists());
            } else {
                assert_eq!(
                    result.unwrap_err().raw_os_error(),
                    Some(errno.raw_os_error())
                );
                assert_eq!(read(&out).as_deref(), Some("previous"), "{errno:?}");
                assert_eq!(read(&tmp).as_deref(), Some("new"), "{errno:?}");
                assert!(!old.exists());
            }
        }
    }

    /// A save writes the folder at an absolute path (no leftovers beside it), replaces a folder
    /// there, and refuses a path that is a file.
    #[test]
    fn a_save_writes_replaces_and_refuses_a_file_target() {
        let src = tempfile::tempdir().unwrap();
        write_tiny_bert(src.path(), &TinySpec::default()).unwrap();
        let folder = ModelFolder::open(src.path(), "tiny").unwrap();
        let ck = Checkpoint::read(&folder).unwrap();
        let settings = SaveSettings {
            max_seq_length: 48,
            prompts: Prompts::none(),
            model_card: "# test\n".into(),
            extra_files: Vec::new(),
        };
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("saved");
        let mut files = Vec::new();
        for _ in 0..2 {
            files.clear();
            let weights = HashMap::new();
            save_model_folder(&out, &folder, &ck, &weights, &settings, &mut |f| {
                files.push(f.to_path_buf());
            })
            .unwrap();
            assert!(out.join("model.safetensors").is_file());
            assert!(out.join("1_Pooling/config.json").is_file());
            assert!(files.iter().any(|f| f.ends_with("model.safetensors")));
            // Written beside the target (the same file system, so the rename is atomic).
            assert!(
                files.iter().all(|f| f.starts_with(work.path())),
                "{files:?}"
            );
            let beside: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
            assert_eq!(beside.len(), 1, "only the saved folder is left");
        }
        // Only the prompts that are set are declared.
        let prompted = SaveSettings {
            prompts: Prompts {
                query: "query: ".into(),
                ..Prompts::none()
            },
            ..settings.clone()
        };
        save_model_folder(&out, &folder, &ck, &HashMap::new(), &prompted, &mut |_| {}).unwrap();
        let st: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join("config_sentence_transformers.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(st["prompts"], json!({"query": "query: "}));
        let file = work.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let err = save_model_folder(&file, &folder, &ck, &HashMap::new(), &settings, &mut |_| {})
            .unwrap_err();
        assert!(matches!(err, SaveError::Target(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    }
}
