//! What runs the model: a packed batch of token ids in, pooled vectors out. Two traits, so that a
//! backend that cannot train (a remote server) never has to pretend: [`EmbedBackend`] embeds,
//! [`TrainBackend`] runs a training forward pass with a tape and its backward pass into gradients.
//!
//! Implementations: [`cpu`], tripletlab's own engine (plain f32 buffers, BLAS, a hand-written
//! backward pass; the architecture is its own dimension, `cpu/arch/`), [`candle`], the same
//! models as candle operations with autograd, the reference the engine is tested against, and
//! [`remote`], models served by text-embeddings-inference or an OpenAI-compatible endpoint
//! (texts in, vectors out; they never train).

pub mod candle;
pub mod cpu;
pub mod remote;

#[cfg(test)]
mod tests;

/// A batch of tokenized texts packed back to back, without padding: the dense layers only
/// compute real tokens, and attention runs over each text's own length.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Token ids of all rows, one row after the other.
    pub ids: Vec<u32>,
    /// Token type ids, as `ids`.
    pub type_ids: Vec<u32>,
    /// Tokens of each row.
    pub lens: Vec<usize>,
    /// Leading tokens of each row that pooling leaves out (sentence-transformers'
    /// `include_prompt: false`: the prompt and the special token before it); empty when none.
    pub pool_skip: Vec<usize>,
}

impl Batch {
    /// Number of texts.
    pub fn rows(&self) -> usize {
        self.lens.len()
    }

    /// Tokens of the whole batch.
    pub fn tokens(&self) -> usize {
        self.lens.iter().sum()
    }

    /// Leading tokens of row `r` that pooling leaves out.
    pub fn skip(&self, r: usize) -> usize {
        self.pool_skip
            .get(r)
            .copied()
            .unwrap_or(0)
            .min(self.lens[r])
    }

    /// The batch right-padded to its longest row: ids, type ids, attention mask (each (b, s)
    /// row-major) and s, for the reference model.
    pub fn padded(&self, pad_id: u32) -> (Vec<u32>, Vec<u32>, Vec<u32>, usize) {
        let seq = self.lens.iter().copied().max().unwrap_or(0);
        let b = self.rows();
        let (mut ids, mut types, mut mask) = (
            vec![pad_id; b * seq],
            vec![0u32; b * seq],
            vec![0u32; b * seq],
        );
        let mut start = 0;
        for (row, &len) in self.lens.iter().enumerate() {
            let at = row * seq;
            ids[at..at + len].copy_from_slice(&self.ids[start..start + len]);
            types[at..at + len].copy_from_slice(&self.type_ids[start..start + len]);
            mask[at..at + len].fill(1);
            start += len;
        }
        (ids, types, mask, seq)
    }
}

/// The arithmetic of the CPU engine's matrix products. f32 is exact to sentence-transformers and
/// the default; bf16 rounds both inputs of every matrix product (the dense layers and attention's
/// products) to bf16 and sums in f32, on the CPU's AVX512-BF16 unit (about 1.8x the embedding
/// speed; agreement with f32 is measured and shown, README "Speed"). Softmax, layer norms,
/// activations and pooling stay f32.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Compute {
    /// Exact single precision.
    #[default]
    F32,
    /// bf16 products, f32 sums.
    Bf16,
}

impl Compute {
    /// Every mode, in the order the GUI offers them.
    pub const ALL: [Compute; 2] = [Compute::F32, Compute::Bf16];

    /// The name the CLI, the run record and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Compute::F32 => "f32",
            Compute::Bf16 => "bf16",
        }
    }

    /// `f32`, `bf16`, or `auto` (the fastest this CPU runs: bf16 with AVX512-BF16, else f32). A
    /// mode this CPU cannot run is an error naming the missing feature.
    pub fn parse(s: &str) -> Result<Compute, String> {
        let mode = match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Compute::F32,
            "bf16" | "bfloat16" => Compute::Bf16,
            "auto" => return Ok(Compute::fastest()),
            "int8" => {
                return Err("compute mode int8 is not implemented (f32, bf16 or auto)".into());
            }
            other => {
                return Err(format!(
                    "unknown compute mode `{other}` (f32, bf16 or auto)"
                ))
            }
        };
        mode.check()?;
        Ok(mode)
    }

    /// The fastest mode this CPU runs.
    pub fn fastest() -> Compute {
        if Compute::Bf16.check().is_ok() {
            Compute::Bf16
        } else {
            Compute::F32
        }
    }

    /// Whether this CPU runs the mode; the error names the missing feature.
    pub fn check(self) -> Result<(), String> {
        match self {
            Compute::F32 => Ok(()),
            Compute::Bf16 if cpu::bf16::available() => Ok(()),
            Compute::Bf16 => Err(
                "compute mode bf16 needs a CPU with AVX512-BF16 (avx512_bf16: Intel Cooper Lake \
                 or Sapphire Rapids and later, AMD Zen 4 and later); this CPU lacks it, use f32"
                    .into(),
            ),
        }
    }
}

/// Source of dropout masks; training passes a seeded one.
pub trait DropoutRng {
    /// Fills `out` with a keep-mask scaled by 1/(1-p).
    fn fill(&mut self, out: &mut [f32], p: f32);

    /// A seed for a sub-stream of masks that can be drawn twice (GradCache replays a
    /// mini-batch's forward pass with the same masks); generators that draw no random masks
    /// need not override it.
    fn next_seed(&mut self) -> u64 {
        0
    }

    /// A keep-mask scaled by 1/(1-p), of `n` elements.
    fn mask(&mut self, n: usize, p: f32) -> Vec<f32> {
        let mut out = vec![0f32; n];
        self.fill(&mut out, p);
        out
    }
}

/// Why a backend could not embed or train a batch.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The batch does not fit the model (too long, unknown token ids, ...).
    #[error("{0}")]
    Input(String),
    /// The weights do not fit the configuration, or are not where the engine can read them.
    #[error("{0}")]
    Weights(String),
    /// A computation failed.
    #[error("{0}")]
    Compute(String),
}

impl From<candle_core::Error> for BackendError {
    fn from(e: candle_core::Error) -> Self {
        BackendError::Compute(e.to_string())
    }
}

/// Embeds packed batches into pooled vectors.
pub trait EmbedBackend: Send + Sync {
    /// Width of the pooled vectors.
    fn dim(&self) -> usize;
    /// The arithmetic of the model's products (part of the embedding cache's key).
    fn compute(&self) -> Compute {
        Compute::F32
    }
    /// Pooled vectors of the batch's rows (rows × dim, row-major), before any Normalize module.
    fn embed(&self, batch: &Batch) -> Result<Vec<f32>, BackendError>;
    /// What runs, for messages and benchmarks ("CPU engine, OpenBLAS ...").
    fn describe(&self) -> String;
}

/// Gradients of every parameter of a [`TrainBackend`], in the order of
/// [`TrainBackend::parameter_names`]; summed over backward passes until [`Gradients::zero`].
pub struct Gradients {
    /// One buffer per parameter.
    pub t: Vec<Vec<f32>>,
}

impl Gradients {
    /// Zero gradients of the given sizes.
    pub fn zeros(sizes: impl IntoIterator<Item = usize>) -> Self {
        Self {
            t: sizes.into_iter().map(|n| vec![0f32; n]).collect(),
        }
    }

    /// Sets every gradient to zero.
    pub fn zero(&mut self) {
        use rayon::prelude::*;
        self.t
            .par_iter_mut()
            .for_each(|g| g.par_chunks_mut(1 << 14).for_each(|c| c.fill(0.0)));
    }
}

/// A backend whose weights can be trained: a forward pass that keeps what the backward pass
/// needs (its tape), and the backward pass from d(pooled) into [`Gradients`].
pub trait TrainBackend {
    /// What a training forward pass keeps; reused from step to step.
    type Tape: Default + Send;

    /// Width of the pooled vectors.
    fn dim(&self) -> usize;
    /// The trained parameters' names (the checkpoint's, without prefix), in gradient order.
    fn parameter_names(&self) -> &[String];
    /// Zero gradients for every parameter.
    fn new_gradients(&self) -> Gradients;
    /// Training forward pass (dropout from `rng`) into `tape`; returns the pooled vectors
    /// (rows × dim).
    fn forward_train(
        &self,
        batch: &Batch,
        rng: &mut dyn DropoutRng,
        tape: &mut Self::Tape,
    ) -> Result<Vec<f32>, BackendError>;
    /// Adds the gradients of `Σ d_pooled ⊙ pooled` of the tape's pass to `grads`.
    fn backward(
        &self,
        tape: &mut Self::Tape,
        d_pooled: &[f32],
        grads: &mut Gradients,
    ) -> Result<(), BackendError>;
}
