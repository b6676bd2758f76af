//! Text in, vectors out: tokenizer + our BERT + pooling + prompts + length-sorted batching,
//! with progress and cancel at every batch. [`embed_triplets`] adds deduplication and the cache.

mod prompts;
mod triplets;

pub use prompts::{PromptChoice, PromptSource, Prompts};
pub use triplets::{embed_triplets, TripletEmbeddings};

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, IndexOp, Tensor};
use tokenizers::Tokenizer;

use crate::core::embeddings::{normalize, Embeddings};
use crate::core::jobs::{Cancelled, JobCtx, StageClock};
use crate::core::model::{
    engine, resolve_source, BertModel, Checkpoint, DownloadProgress, Mode, ModelError, ModelFolder,
    ModelSource, Pooling,
};

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
    /// Keep only the first N dimensions (Matryoshka), then re-normalise.
    pub truncate_dim: Option<usize>,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        Self {
            max_seq_len: None,
            batch_size: 32,
            prompts: PromptChoice::Auto,
            truncate_dim: None,
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
    /// A tensor operation failed.
    #[error("model computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl From<Cancelled> for EncodeError {
    fn from(_: Cancelled) -> Self {
        EncodeError::Cancelled
    }
}

/// Token count of one text as the model saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TokenCount {
    /// Tokens of the full text with special tokens (and prompt), before truncation.
    pub tokens: usize,
    /// True when the text was cut at the max length.
    pub truncated: bool,
}

/// Cuts a post-processed single-sequence encoding to `max_len` tokens, keeping every special token
/// (e.g. `[CLS]` and `[SEP]`) and the first content tokens, as the tokenizer's own truncation does.
fn truncate(ids: &[u32], type_ids: &[u32], special: &[u32], max_len: usize) -> Tokenized {
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

/// Token ids of one text, truncated.
struct Tokenized {
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    count: TokenCount,
}

/// A loaded sentence encoder.
pub struct Encoder {
    model: BertModel,
    tokenizer: Tokenizer,
    pad_id: u32,
    /// The folder it was loaded from.
    pub folder: ModelFolder,
    /// What the user asked for (hub id or path).
    pub source_label: String,
    /// blake3 of the weights file.
    pub weights_hash: String,
    /// Pooling in use.
    pub pooling: Pooling,
    /// Whether outputs are L2-normalised.
    pub normalize: bool,
    /// Tokens per text, special tokens included.
    pub max_seq_len: usize,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Prompts in use.
    pub prompts: Prompts,
    /// Dimensions kept, if truncated.
    pub truncate_dim: Option<usize>,
    forward_batches: AtomicUsize,
    /// Buffers of the fast engine, kept between batches.
    workspace: std::sync::Mutex<engine::Workspace>,
}

impl Encoder {
    /// Resolves a source (folder or hub id) and loads it.
    pub fn load(
        source: &ModelSource,
        opts: &EncoderOptions,
        on_download: &mut dyn FnMut(DownloadProgress),
    ) -> Result<Self, EncodeError> {
        let folder = resolve_source(source, on_download)?;
        let checkpoint = Checkpoint::read(&folder)?;
        Self::from_checkpoint(folder, &checkpoint, source.label(), opts)
    }

    /// Builds an encoder from a folder whose checkpoint is already read.
    pub fn from_checkpoint(
        folder: ModelFolder,
        checkpoint: &Checkpoint,
        source_label: String,
        opts: &EncoderOptions,
    ) -> Result<Self, EncodeError> {
        let model = checkpoint.build(&folder)?;
        Self::from_model(
            folder,
            model,
            checkpoint.weights_hash.clone(),
            source_label,
            opts,
        )
    }

    /// Wraps an already built model (e.g. one being trained) with the folder's tokenizer.
    pub fn from_model(
        folder: ModelFolder,
        model: BertModel,
        weights_hash: String,
        source_label: String,
        opts: &EncoderOptions,
    ) -> Result<Self, EncodeError> {
        let cfg = &folder.config;
        let max_positions = cfg.max_position_embeddings;
        let max_seq_len = opts
            .max_seq_len
            .or(folder.sentence.max_seq_length)
            .unwrap_or(max_positions.min(512))
            .min(max_positions);
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
        if let Some(d) = opts.truncate_dim {
            if d == 0 || d > cfg.hidden_size {
                return Err(EncodeError::InvalidOption(format!(
                    "truncate_dim {d} must be between 1 and the model's dimension {}",
                    cfg.hidden_size
                )));
            }
        }
        let tok_err = |message: String| ModelError::Tokenizer {
            path: folder.tokenizer_path.clone(),
            message,
        };
        let mut tokenizer =
            Tokenizer::from_file(&folder.tokenizer_path).map_err(|e| tok_err(e.to_string()))?;
        // tokenizer.json may carry its own fixed padding and truncation (all-MiniLM-L6-v2 has
        // 128): sentence-transformers ignores them, so do we. We truncate ourselves, after
        // counting the full length (the tokenizer's overflow does not give it reliably).
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| tok_err(e.to_string()))?;
        let pad_id = tokenizer
            .token_to_id("[PAD]")
            .unwrap_or(cfg.pad_token_id as u32);
        let prompts = Prompts::choose(&opts.prompts, &folder);
        Ok(Self {
            model,
            tokenizer,
            pad_id,
            pooling: folder.sentence.pooling,
            normalize: folder.sentence.normalize,
            folder,
            source_label,
            weights_hash,
            max_seq_len,
            batch_size: opts.batch_size,
            prompts,
            truncate_dim: opts.truncate_dim,
            forward_batches: AtomicUsize::new(0),
            workspace: Default::default(),
        })
    }

    /// Length of the output vectors.
    pub fn dim(&self) -> usize {
        self.truncate_dim.unwrap_or(self.model.config.hidden_size)
    }

    /// The model (for training and saving).
    pub fn model(&self) -> &BertModel {
        &self.model
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
        h.update(b"tripletlab-embedding-v2\0");
        h.update(self.weights_hash.as_bytes());
        h.update(&[0]);
        h.update(self.pooling.name().as_bytes());
        h.update(&[self.normalize as u8, 0]);
        h.update(self.prompt(role).as_bytes());
        h.update(&[0]);
        h.update(&(self.max_seq_len as u64).to_le_bytes());
        h.update(&(self.truncate_dim.unwrap_or(0) as u64).to_le_bytes());
        *h.finalize().as_bytes()
    }

    fn tokenize(
        &self,
        texts: &[&str],
        role: Role,
        ctx: &JobCtx,
    ) -> Result<Vec<Tokenized>, EncodeError> {
        const CHUNK: usize = 512;
        let prompt = self.prompt(role);
        let clock = StageClock::start("tokenizing", "texts", texts.len());
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(CHUNK) {
            ctx.check_cancel()?;
            let inputs: Vec<String> = chunk.iter().map(|t| format!("{prompt}{t}")).collect();
            let encodings = self
                .tokenizer
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
            let pooled = self.forward_pooled(&rows)?;
            for (&i, v) in batch.iter().zip(pooled.chunks(dim)) {
                data[i * dim..(i + 1) * dim].copy_from_slice(v);
            }
            done += batch.len();
            ctx.progress(clock.at(done));
        }
        let counts = tokenized.into_iter().map(|t| t.count).collect();
        Ok((Embeddings::from_vec(dim, data), counts))
    }

    /// One padded batch through the model and pooling; returns `rows * dim` floats.
    fn forward_pooled(&self, rows: &[&Tokenized]) -> Result<Vec<f32>, EncodeError> {
        let batch = self.batch(rows);
        let h = self.model.config.hidden_size;
        let pooled = engine::with_params(&self.model, |p| {
            // One encoder embeds on one thread at a time; a poisoned lock only means an earlier
            // batch panicked, and the buffers are overwritten anyway.
            let mut ws = self
                .workspace
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let states = engine::infer(p, &batch, &mut ws)?;
            Ok::<_, String>(engine::pool(states, &batch.lens, h, self.pooling))
        })?
        .map_err(candle_core::Error::Msg)?;
        self.forward_batches.fetch_add(1, Ordering::Relaxed);
        let dim = self.dim();
        let mut out: Vec<f32> = if dim == h {
            pooled
        } else {
            pooled
                .chunks(h)
                .flat_map(|v| v[..dim].iter().copied())
                .collect()
        };
        // Matryoshka truncation re-normalises even when the folder has no Normalize module.
        if self.normalize || self.truncate_dim.is_some() {
            out.chunks_mut(dim).for_each(normalize);
        }
        Ok(out)
    }

    /// Pooled vectors of texts as a tensor (b, dim) with the autograd graph kept, for training.
    /// Normalised when the folder has a Normalize module, as sentence-transformers' model output.
    pub fn forward_train(
        &self,
        texts: &[&str],
        role: Role,
        mode: &mut Mode,
    ) -> Result<Tensor, EncodeError> {
        let emit = |_: crate::core::jobs::Update<()>| {};
        let ctx = JobCtx::new(crate::core::jobs::CancelToken::new(), &emit);
        let tokenized = self.tokenize(texts, role, &ctx)?;
        let rows: Vec<&Tokenized> = tokenized.iter().collect();
        let (ids, type_ids, mask) = self.pad(&rows)?;
        let states = self.model.forward(&ids, &type_ids, &mask, mode)?;
        let pooled = pool(&states, &mask, self.pooling)?;
        Ok(if self.normalize {
            l2_normalize(&pooled)?
        } else {
            pooled
        })
    }

    /// A batch of tokenized texts for the engine (packed, no padding).
    fn batch(&self, rows: &[&Tokenized]) -> engine::Batch {
        engine::Batch {
            ids: rows.iter().flat_map(|r| r.ids.iter().copied()).collect(),
            type_ids: rows
                .iter()
                .flat_map(|r| r.type_ids.iter().copied())
                .collect(),
            lens: rows.iter().map(|r| r.ids.len()).collect(),
        }
    }

    /// Tokenized texts with the role's prompt, for the training engine.
    pub fn prepare(&self, texts: &[&str], role: Role) -> Result<engine::Batch, EncodeError> {
        let emit = |_: crate::core::jobs::Update<()>| {};
        let ctx = JobCtx::new(crate::core::jobs::CancelToken::new(), &emit);
        let tokenized = self.tokenize(texts, role, &ctx)?;
        Ok(self.batch(&tokenized.iter().collect::<Vec<_>>()))
    }

    /// A batch right-padded as tensors: ids, type ids, attention mask, each (b, s) u32.
    fn pad(&self, rows: &[&Tokenized]) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (ids, types, mask, seq) = self.batch(rows).padded(self.pad_id);
        let dev = Device::Cpu;
        let shape = (rows.len(), seq);
        Ok((
            Tensor::from_vec(ids, shape, &dev)?,
            Tensor::from_vec(types, shape, &dev)?,
            Tensor::from_vec(mask, shape, &dev)?,
        ))
    }
}

/// Differentiable row-wise L2 normalisation of (b, h), with torch's epsilon of 1e-12.
pub fn l2_normalize(xs: &Tensor) -> candle_core::Result<Tensor> {
    let norm = xs.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    xs.broadcast_div(&norm)
}

/// Pools token states (b, s, h) under an attention mask (b, s) into (b, h); padding never counts.
pub fn pool(states: &Tensor, mask: &Tensor, pooling: Pooling) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (b, s, 1)
    match pooling {
        Pooling::Cls => states.i((.., 0))?.contiguous(),
        Pooling::Mean | Pooling::MeanSqrtLen => {
            let sum = states.broadcast_mul(&mask)?.sum(1)?; // (b, h)
            let count = mask.sum(1)?.clamp(1e-9, f64::MAX)?; // (b, 1)
            let count = if pooling == Pooling::MeanSqrtLen {
                count.sqrt()?
            } else {
                count
            };
            sum.broadcast_div(&count)
        }
        Pooling::Max => {
            // Padding gets -1e9 so it never wins, as sentence-transformers does.
            let penalty = ((mask.clone() - 1.0)? * 1e9)?;
            states.broadcast_add(&penalty)?.max(1)
        }
    }
}
