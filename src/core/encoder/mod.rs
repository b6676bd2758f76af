//! Text in, vectors out: tokenizer + prompts + truncation + length-sorted batching over an
//! [`EmbedBackend`], then the folder's Normalize module and truncation, with progress and cancel
//! at every batch. [`embed_triplets`] adds deduplication and the cache. No network code here:
//! the backend owns whatever runs the model.

mod tokenize;
mod triplets;

pub use crate::core::model::prompts::{PromptChoice, PromptSource, Prompts};
pub use tokenize::TokenCount;
pub use triplets::{embed_texts, embed_triplets, TripletEmbeddings};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokenizers::Tokenizer;

use crate::core::backend::cpu::CpuModel;
use crate::core::backend::remote::{RemoteClient, RemoteSpec};
use crate::core::backend::{BackendError, Batch, Compute, EmbedBackend};
use crate::core::embeddings::{normalize, Embeddings};
use crate::core::jobs::{Cancelled, JobCtx, StageClock};
use crate::core::model::{
    resolve_source, Checkpoint, DownloadProgress, ModelError, ModelFolder, ModelSource, Pooling,
};
use tokenize::{load_tokenizer, prompt_length, truncate, Tokenized};

/// Which side of retrieval a text is on; selects the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A search query.
    Query,
    /// A document of the corpus.
    Document,
}

/// What the user may override; `None` means "the folder's own value".
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderOptions {
    /// Tokens per text, special tokens included.
    pub max_seq_len: Option<usize>,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Which prompts to prepend.
    pub prompts: PromptChoice,
    /// Keep only the first N dimensions (Matryoshka), after the Normalize module, as
    /// sentence-transformers' `truncate_dim`.
    pub truncate_dim: Option<usize>,
    /// The CPU engine's arithmetic (ignored by a remote model).
    pub compute: Compute,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        Self {
            max_seq_len: None,
            batch_size: 32,
            prompts: PromptChoice::Auto,
            truncate_dim: None,
            compute: Compute::F32,
        }
    }
}

/// Why encoding failed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The model could not be found or loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An option does not fit the model.
    #[error("{0}")]
    InvalidOption(String),
    /// The tokenizer failed on a text.
    #[error("tokenizing failed: {0}")]
    Tokenize(String),
    /// The backend failed on a batch.
    #[error("model computation failed: {0}")]
    Compute(#[from] BackendError),
    /// A remote model's server failed.
    #[error("remote model: {0}")]
    Remote(crate::core::backend::remote::RemoteError),
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl From<crate::core::backend::remote::RemoteError> for EncodeError {
    fn from(e: crate::core::backend::remote::RemoteError) -> Self {
        match e {
            crate::core::backend::remote::RemoteError::Cancelled => EncodeError::Cancelled,
            other => EncodeError::Remote(other),
        }
    }
}

impl From<Cancelled> for EncodeError {
    fn from(_: Cancelled) -> Self {
        EncodeError::Cancelled
    }
}

/// Builds the CPU engine over a checkpoint's tensors; a missing or misshapen tensor is an error
/// naming the weights file.
pub fn cpu_model(folder: &ModelFolder, checkpoint: &Checkpoint) -> Result<CpuModel, ModelError> {
    CpuModel::new(&folder.config, folder.sentence.pooling, &|n| {
        checkpoint.get(n).cloned()
    })
    .map_err(|e| ModelError::Weights {
        path: folder.weights_path.clone(),
        message: e.to_string(),
    })
}

/// What computes the vectors.
enum Runner {
    /// A model in this process: its tokenizer and a backend over packed token batches.
    Local {
        backend: Arc<dyn EmbedBackend>,
        tokenizer: Box<Tokenizer>,
        /// Tokens of the query and document prompts that pooling leaves out (0 unless the
        /// folder says `include_prompt: false`).
        prompt_skip: [usize; 2],
    },
    /// A model behind a server: texts in, vectors out.
    Remote(Arc<RemoteClient>),
}

/// A loaded sentence encoder.
pub struct Encoder {
    runner: Runner,
    /// The folder it was loaded from (none for a remote model).
    pub folder: Option<ModelFolder>,
    /// What the user asked for (hub id, path or remote address).
    pub source_label: String,
    /// blake3 of the weights file (of the served model's identity, for a remote one).
    pub weights_hash: String,
    /// Pooling in use (a remote model pools on its server).
    pub pooling: Pooling,
    /// Whether outputs are L2-normalised here.
    pub normalize: bool,
    /// Tokens per text, special tokens included (for a remote model, the server's limit, 0
    /// when it does not say).
    pub max_seq_len: usize,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Prompts in use.
    pub prompts: Prompts,
    /// Dimensions kept, if truncated.
    pub truncate_dim: Option<usize>,
    forward_batches: AtomicUsize,
}

impl Encoder {
    /// Resolves a source (folder, hub id or remote address) and loads it: a local model on the
    /// CPU engine, a remote one through its server.
    pub fn load(
        source: &ModelSource,
        opts: &EncoderOptions,
        on_download: &mut dyn FnMut(DownloadProgress),
    ) -> Result<Self, EncodeError> {
        if let ModelSource::Remote(spec) = source {
            return Self::remote(spec, opts);
        }
        let folder = resolve_source(source, on_download)?;
        let checkpoint = Checkpoint::read(&folder)?;
        Self::from_checkpoint(folder, &checkpoint, source.label(), opts)
    }

    /// Connects to a remote model (TEI's `/info` says its id, revision and batch limit).
    pub fn remote(spec: &RemoteSpec, opts: &EncoderOptions) -> Result<Self, EncodeError> {
        let client = RemoteClient::connect(spec)?;
        let prompts = Prompts::choose_named(
            &opts.prompts,
            &format!("{} {}", spec.label(), client.model_id),
        );
        if let Some(d) = opts.truncate_dim.filter(|&d| d == 0 || d > client.dim) {
            return Err(EncodeError::InvalidOption(format!(
                "truncate_dim {d} must be between 1 and the served model's dimension {}",
                client.dim
            )));
        }
        Ok(Self {
            folder: None,
            source_label: spec.label(),
            weights_hash: blake3::hash(client.identity().as_bytes())
                .to_hex()
                .to_string(),
            pooling: Pooling::Mean,
            normalize: false,
            max_seq_len: client.max_input_length.unwrap_or(0),
            batch_size: client.max_batch,
            prompts,
            truncate_dim: opts.truncate_dim,
            forward_batches: AtomicUsize::new(0),
            runner: Runner::Remote(Arc::new(client)),
        })
    }

    /// Builds an encoder on the CPU engine from a folder whose checkpoint is already read.
    pub fn from_checkpoint(
        folder: ModelFolder,
        checkpoint: &Checkpoint,
        source_label: String,
        opts: &EncoderOptions,
    ) -> Result<Self, EncodeError> {
        opts.compute.check().map_err(EncodeError::InvalidOption)?;
        let model = cpu_model(&folder, checkpoint)?
            .with_compute(opts.compute)
            .map_err(EncodeError::Compute)?;
        let hash = checkpoint.weights_hash.clone();
        Self::from_backend(folder, Arc::new(model), hash, source_label, opts)
    }

    /// Wraps a backend (e.g. the CPU engine over weights being trained) with the folder's
    /// tokenizer and settings.
    pub fn from_backend(
        folder: ModelFolder,
        backend: Arc<dyn EmbedBackend>,
        weights_hash: String,
        source_label: String,
        opts: &EncoderOptions,
    ) -> Result<Self, EncodeError> {
        let max_seq_len = folder.max_seq_len(opts.max_seq_len);
        if max_seq_len < 3 {
            return Err(EncodeError::InvalidOption(format!(
                "max sequence length {max_seq_len} is too short (at least 3 tokens)"
            )));
        }
        if opts.batch_size == 0 {
            return Err(EncodeError::InvalidOption(
                "batch size must be at least 1".into(),
            ));
        }
        let hidden = backend.dim();
        let truncate_dim = opts.truncate_dim.or(folder.sentence.truncate_dim);
        if let Some(d) = truncate_dim {
            if d == 0 || d > hidden {
                return Err(EncodeError::InvalidOption(format!(
                    "truncate_dim {d} must be between 1 and the model's dimension {hidden}"
                )));
            }
        }
        let tokenizer = load_tokenizer(&folder)?;
        let prompts = Prompts::choose(&opts.prompts, &folder);
        let prompt_skip = if folder.sentence.include_prompt {
            [0, 0]
        } else {
            let len = |p: &str| {
                prompt_length(&tokenizer, p).map_err(|message| ModelError::Tokenizer {
                    path: folder.tokenizer_path.clone(),
                    message,
                })
            };
            [len(&prompts.query)?, len(&prompts.document)?]
        };
        Ok(Self {
            pooling: folder.sentence.pooling,
            normalize: folder.sentence.normalize,
            folder: Some(folder),
            source_label,
            weights_hash,
            max_seq_len,
            batch_size: opts.batch_size,
            prompts,
            truncate_dim,
            forward_batches: AtomicUsize::new(0),
            runner: Runner::Local {
                backend,
                tokenizer: Box::new(tokenizer),
                prompt_skip,
            },
        })
    }

    /// True for a model behind a server.
    pub fn is_remote(&self) -> bool {
        matches!(self.runner, Runner::Remote(_))
    }

    /// The pooling as shown to the user.
    pub fn pooling_name(&self) -> &'static str {
        match self.runner {
            Runner::Local { .. } => self.pooling.name(),
            Runner::Remote(_) => "the server's",
        }
    }

    /// Width of the vectors the model computes.
    fn model_dim(&self) -> Option<usize> {
        match &self.runner {
            Runner::Local { backend, .. } => Some(backend.dim()),
            Runner::Remote(c) => Some(c.dim),
        }
    }

    /// Length of the output vectors.
    pub fn dim(&self) -> usize {
        self.truncate_dim.or(self.model_dim()).unwrap_or(0)
    }

    /// The arithmetic of the model's products (f32 for a remote model: its server decides).
    pub fn compute(&self) -> Compute {
        match &self.runner {
            Runner::Local { backend, .. } => backend.compute(),
            Runner::Remote(_) => Compute::F32,
        }
    }

    /// What runs the model.
    pub fn backend_description(&self) -> String {
        match &self.runner {
            Runner::Local { backend, .. } => backend.describe(),
            Runner::Remote(c) => format!("remote: {} serving {}", c.spec().label(), c.model_id),
        }
    }

    /// Number of forward passes run so far (tests use it to prove cache hits).
    pub fn forward_batches(&self) -> usize {
        self.forward_batches.load(Ordering::Relaxed)
    }

    /// The prompt prepended to texts of a role.
    pub fn prompt(&self, role: Role) -> &str {
        match role {
            Role::Query => &self.prompts.query,
            Role::Document => &self.prompts.document,
        }
    }

    /// A hash of every setting that changes a vector besides the text itself.
    pub fn settings_key(&self, role: Role) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"tripletlab-embedding-v3\0");
        h.update(self.weights_hash.as_bytes());
        h.update(&[0]);
        h.update(self.pooling.name().as_bytes());
        let (include_prompt, lower) = self.folder.as_ref().map_or((true, false), |f| {
            (f.sentence.include_prompt, f.sentence.do_lower_case)
        });
        h.update(&[
            self.normalize as u8,
            include_prompt as u8,
            lower as u8,
            self.is_remote() as u8,
        ]);
        h.update(self.prompt(role).as_bytes());
        h.update(&[0]);
        h.update(&(self.max_seq_len as u64).to_le_bytes());
        h.update(&(self.truncate_dim.unwrap_or(0) as u64).to_le_bytes());
        // f32 vectors keep the keys they had before there were other modes. A reduced-precision
        // mode's key names its kernels' revision, so vectors from earlier kernels (bf16 1: dense
        // products only; 2: attention's products too; 3: the softmax rounded as it is computed,
        // with a 16-lane exp) are computed again, not served.
        if self.compute() != Compute::F32 {
            h.update(b"\0compute=");
            h.update(self.compute().name().as_bytes());
            h.update(b"/3");
        }
        *h.finalize().as_bytes()
    }

    fn tokenize(
        &self,
        texts: &[&str],
        role: Role,
        ctx: &JobCtx,
    ) -> Result<Vec<Tokenized>, EncodeError> {
        const CHUNK: usize = 512;
        let Runner::Local { tokenizer, .. } = &self.runner else {
            return Err(EncodeError::InvalidOption(
                "a remote model tokenizes on its server".into(),
            ));
        };
        let prompt = self.prompt(role);
        let clock = StageClock::start("tokenizing", "texts", texts.len());
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(CHUNK) {
            ctx.check_cancel()?;
            let inputs: Vec<String> = chunk.iter().map(|t| format!("{prompt}{t}")).collect();
            let encodings = tokenizer
                .encode_batch(inputs, true)
                .map_err(|e| EncodeError::Tokenize(e.to_string()))?;
            for enc in encodings {
                out.push(truncate(
                    enc.get_ids(),
                    enc.get_type_ids(),
                    enc.get_special_tokens_mask(),
                    self.max_seq_len,
                ));
            }
            ctx.progress(clock.at(out.len()));
        }
        Ok(out)
    }

    /// Token counts of texts (with the role's prompt), without running the model.
    pub fn token_counts(
        &self,
        texts: &[&str],
        role: Role,
        ctx: &JobCtx,
    ) -> Result<Vec<TokenCount>, EncodeError> {
        Ok(self
            .tokenize(texts, role, ctx)?
            .into_iter()
            .map(|t| t.count)
            .collect())
    }

    /// Embeds texts: rows in input order.
    pub fn encode(
        &self,
        texts: &[&str],
        role: Role,
        ctx: &JobCtx,
    ) -> Result<(Embeddings, Vec<TokenCount>), EncodeError> {
        if let Runner::Remote(client) = &self.runner {
            return self.encode_remote(client, texts, role, ctx);
        }
        let tokenized = self.tokenize(texts, role, ctx)?;
        let dim = self.dim();
        let mut data = vec![0f32; texts.len() * dim];
        // Longest first: a batch holds texts of similar lengths, so its attention work splits
        // evenly over the threads (the engine computes no padding either way).
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokenized[i].ids.len()));
        let clock = StageClock::start("embedding", "texts", texts.len());
        let mut done = 0;
        for batch in order.chunks(self.batch_size) {
            ctx.check_cancel()?;
            let rows: Vec<&Tokenized> = batch.iter().map(|&i| &tokenized[i]).collect();
            let pooled = self.forward_pooled(&rows, role)?;
            for (&i, v) in batch.iter().zip(pooled.chunks(dim)) {
                data[i * dim..(i + 1) * dim].copy_from_slice(v);
            }
            done += batch.len();
            ctx.progress(clock.at(done));
        }
        let counts = tokenized.into_iter().map(|t| t.count).collect();
        Ok((Embeddings::from_vec(dim, data), counts))
    }

    /// Texts (with the role's prompt, which the client adds: a server takes no free prefix)
    /// through a remote model, then truncation. Token counts are the server's business: 0.
    fn encode_remote(
        &self,
        client: &RemoteClient,
        texts: &[&str],
        role: Role,
        ctx: &JobCtx,
    ) -> Result<(Embeddings, Vec<TokenCount>), EncodeError> {
        let prompt = self.prompt(role);
        let inputs: Vec<String> = texts.iter().map(|t| format!("{prompt}{t}")).collect();
        let mut emb = client.embed(&inputs, ctx)?;
        if emb.dim != client.dim && !inputs.is_empty() {
            return Err(EncodeError::InvalidOption(format!(
                "the server's vectors changed from {} to {} dimensions since it was connected",
                client.dim, emb.dim
            )));
        }
        self.forward_batches
            .fetch_add(inputs.len().div_ceil(client.max_batch), Ordering::Relaxed);
        if let Some(d) = self.truncate_dim {
            if d > emb.dim {
                return Err(EncodeError::InvalidOption(format!(
                    "truncate_dim {d} is wider than the served model's {} dimensions",
                    emb.dim
                )));
            }
            emb = crate::core::metrics::quantize::truncate(&emb, d);
        }
        let counts = vec![
            TokenCount {
                tokens: 0,
                truncated: false
            };
            texts.len()
        ];
        Ok((emb, counts))
    }

    /// One batch through the backend, the Normalize module and truncation; returns
    /// `rows * dim` floats.
    fn forward_pooled(&self, rows: &[&Tokenized], role: Role) -> Result<Vec<f32>, EncodeError> {
        let Runner::Local { backend, .. } = &self.runner else {
            return Err(EncodeError::InvalidOption(
                "a remote model has no local batches".into(),
            ));
        };
        let batch = self.batch(rows, role);
        let h = backend.dim();
        let mut pooled = backend.embed(&batch)?;
        self.forward_batches.fetch_add(1, Ordering::Relaxed);
        if self.normalize {
            pooled.chunks_mut(h).for_each(normalize);
        }
        let dim = self.dim();
        // sentence-transformers' truncate_dim: the first components after every module, not
        // normalised again (cosine scores do not change either way).
        Ok(if dim == h {
            pooled
        } else {
            pooled
                .chunks(h)
                .flat_map(|v| v[..dim].iter().copied())
                .collect()
        })
    }

    /// A batch of tokenized texts for a backend (packed, no padding).
    fn batch(&self, rows: &[&Tokenized], role: Role) -> Batch {
        let skip = match &self.runner {
            Runner::Local { prompt_skip, .. } => prompt_skip[role as usize],
            Runner::Remote(_) => 0,
        };
        Batch {
            ids: rows.iter().flat_map(|r| r.ids.iter().copied()).collect(),
            type_ids: rows
                .iter()
                .flat_map(|r| r.type_ids.iter().copied())
                .collect(),
            lens: rows.iter().map(|r| r.ids.len()).collect(),
            pool_skip: if skip == 0 {
                Vec::new()
            } else {
                vec![skip; rows.len()]
            },
        }
    }

    /// Tokenized texts with the role's prompt, as a packed batch (for training).
    pub fn prepare(&self, texts: &[&str], role: Role) -> Result<Batch, EncodeError> {
        let emit = |_: crate::core::jobs::Update<()>| {};
        let ctx = JobCtx::new(crate::core::jobs::CancelToken::new(), &emit);
        let tokenized = self.tokenize(texts, role, &ctx)?;
        Ok(self.batch(&tokenized.iter().collect::<Vec<_>>(), role))
    }
}
