//! The reference encoder as plain candle operations with autograd: BERT, the RoBERTa family and
//! MPNet, written from transformers' modelling code with the checkpoints' own tensor names (its
//! own spelling of them, independent of the CPU engine's `arch/`). Dropout acts in training and
//! is off in inference; every operation has candle's backward pass (its generic softmax, the
//! slow layer norm, `gelu_erf`, matmul, index_select), so the engine's hand-written gradients
//! can be checked against it.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::core::backend::DropoutRng;
use crate::core::model::{Arch, HiddenAct, ModelConfig};

/// How a forward pass runs: inference (no dropout) or training (dropout from the given source).
pub enum Mode<'a> {
    /// Inference.
    Eval,
    /// Training with dropout drawn from the given source.
    Train(&'a mut dyn DropoutRng),
}

impl Mode<'_> {
    fn dropout(&mut self, xs: &Tensor, p: f64) -> Result<Tensor> {
        match self {
            Mode::Train(rng) if p > 0.0 => {
                let mask = rng.mask(xs.elem_count(), p as f32);
                xs * Tensor::from_vec(mask, xs.shape(), xs.device())?
            }
            _ => Ok(xs.clone()),
        }
    }
}

/// `x · wᵀ + b` for x (n, in).
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get((out_dim, in_dim), "weight")?,
            bias: vb.get(out_dim, "bias")?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        // Old TensorFlow-converted checkpoints name these gamma/beta.
        let (w, b) = if vb.contains_tensor("weight") || !vb.contains_tensor("gamma") {
            ("weight", "bias")
        } else {
            ("gamma", "beta")
        };
        Ok(Self {
            weight: vb.get(dim, w)?,
            bias: vb.get(dim, b)?,
            eps,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm_slow(xs, &self.weight, &self.bias, self.eps as f32)
    }
}

struct Embeddings {
    word: candle_nn::Embedding,
    position: candle_nn::Embedding,
    token_type: Option<candle_nn::Embedding>,
    layer_norm: LayerNorm,
    offset: usize,
    dropout: f64,
}

impl Embeddings {
    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let token_type = match cfg.arch {
            Arch::MpNet => None,
            Arch::Bert | Arch::XlmRoberta => Some(candle_nn::embedding(
                cfg.type_vocab_size,
                h,
                vb.pp("token_type_embeddings"),
            )?),
        };
        Ok(Self {
            word: candle_nn::embedding(cfg.vocab_size, h, vb.pp("word_embeddings"))?,
            position: candle_nn::embedding(
                cfg.max_position_embeddings,
                h,
                vb.pp("position_embeddings"),
            )?,
            token_type,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            // transformers' create_position_ids_from_input_ids: pad + 1 + index for real tokens
            // (padding rows are masked out of attention and pooling either way).
            offset: match cfg.arch {
                Arch::Bert => 0,
                Arch::XlmRoberta | Arch::MpNet => cfg.pad_token_id + 1,
            },
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// ids, type ids: (b, s) u32 -> (b*s, h).
    fn forward(&self, ids: &Tensor, type_ids: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let (b_sz, seq_len) = ids.dims2()?;
        let positions = Tensor::arange(
            self.offset as u32,
            (self.offset + seq_len) as u32,
            ids.device(),
        )?;
        let pos = self.position.forward(&positions)?; // (s, h)
        let words = self.word.forward(&ids.flatten_all()?)?; // (b*s, h)
        let h = words.dim(1)?;
        let pos = pos
            .unsqueeze(0)?
            .broadcast_as((b_sz, seq_len, h))?
            .reshape((b_sz * seq_len, h))?;
        let mut xs = (words + pos)?;
        if let Some(types) = &self.token_type {
            xs = (xs + types.forward(&type_ids.flatten_all()?)?)?;
        }
        let xs = self.layer_norm.forward(&xs)?;
        mode.dropout(&xs, self.dropout)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
    act: HiddenAct,
    num_heads: usize,
    hidden_dropout: f64,
    attn_dropout: f64,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let att = vb.pp("attention");
        // BERT and RoBERTa: attention.self.{query,key,value}, attention.output.{dense,LayerNorm};
        // MPNet: attention.attn.{q,k,v,o}, attention.LayerNorm.
        let (query, key, value, attn_out, attn_norm) = match cfg.arch {
            Arch::Bert | Arch::XlmRoberta => (
                Linear::load(att.pp("self").pp("query"), h, h)?,
                Linear::load(att.pp("self").pp("key"), h, h)?,
                Linear::load(att.pp("self").pp("value"), h, h)?,
                Linear::load(att.pp("output").pp("dense"), h, h)?,
                LayerNorm::load(att.pp("output").pp("LayerNorm"), h, eps)?,
            ),
            Arch::MpNet => (
                Linear::load(att.pp("attn").pp("q"), h, h)?,
                Linear::load(att.pp("attn").pp("k"), h, h)?,
                Linear::load(att.pp("attn").pp("v"), h, h)?,
                Linear::load(att.pp("attn").pp("o"), h, h)?,
                LayerNorm::load(att.pp("LayerNorm"), h, eps)?,
            ),
        };
        Ok(Self {
            query,
            key,
            value,
            attn_out,
            attn_norm,
            intermediate: Linear::load(vb.pp("intermediate").pp("dense"), h, i)?,
            output: Linear::load(vb.pp("output").pp("dense"), i, h)?,
            out_norm: LayerNorm::load(vb.pp("output").pp("LayerNorm"), h, eps)?,
            act: cfg.hidden_act,
            num_heads: cfg.num_attention_heads,
            hidden_dropout: cfg.hidden_dropout_prob,
            attn_dropout: cfg.attention_probs_dropout_prob,
        })
    }

    /// xs: (b*s, h); `bias`: (b, heads, s, s) additive (mask, and MPNet's position bias).
    fn forward(
        &self,
        xs: &Tensor,
        bias: &Tensor,
        seq_len: usize,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let (n, h) = xs.dims2()?;
        let b_sz = n / seq_len;
        let d = h / self.num_heads;
        let heads = |lin: &Linear| -> Result<Tensor> {
            lin.forward(xs)?
                .reshape((b_sz, seq_len, self.num_heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (heads(&self.query)?, heads(&self.key)?, heads(&self.value)?);
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?;
        let probs = candle_nn::ops::softmax(&(scores + bias)?, D::Minus1)?;
        let probs = mode.dropout(&probs, self.attn_dropout)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n, h))?;
        let attn = mode.dropout(&self.attn_out.forward(&ctx)?, self.hidden_dropout)?;
        let xs = self.attn_norm.forward(&(attn + xs)?)?;
        let inter = self.intermediate.forward(&xs)?;
        let inter = match self.act {
            HiddenAct::Gelu => inter.gelu_erf()?,
            HiddenAct::GeluNew => inter.gelu()?,
            HiddenAct::Relu => inter.relu()?,
        };
        let out = mode.dropout(&self.output.forward(&inter)?, self.hidden_dropout)?;
        self.out_norm.forward(&(out + xs)?)
    }
}

/// MPNet's relative position bucket, written from transformers' `relative_position_bucket`
/// (32 buckets, max distance 128) in f64.
fn mpnet_bucket(rel: i64) -> u32 {
    let (num_buckets, max_distance) = (16i64, 128f64); // half of 32: one half per direction
    let ret = if rel > 0 { num_buckets } else { 0 };
    let n = rel.abs();
    let max_exact = num_buckets / 2;
    let bucket = if n < max_exact {
        n
    } else {
        let large = max_exact
            + ((n as f64 / max_exact as f64).ln() / (max_distance / max_exact as f64).ln()
                * (num_buckets - max_exact) as f64) as i64;
        large.min(num_buckets - 1)
    };
    (ret + bucket) as u32
}

/// A transformer encoder (no pooler: sentence embeddings pool the token states themselves).
pub struct ReferenceModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    /// MPNet's relative position bias table (buckets, heads).
    rel_bias: Option<Tensor>,
    /// The configuration it was built from.
    pub config: ModelConfig,
}

impl ReferenceModel {
    /// Builds the model from tensors named as in the checkpoint (without the encoder's prefix).
    pub fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let embeddings = Embeddings::load(vb.pp("embeddings"), cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let rel_bias = match cfg.arch {
            Arch::MpNet => Some(vb.pp("encoder").pp("relative_attention_bias").get(
                (cfg.relative_attention_num_buckets, cfg.num_attention_heads),
                "weight",
            )?),
            Arch::Bert | Arch::XlmRoberta => None,
        };
        Ok(Self {
            embeddings,
            layers,
            rel_bias,
            config: cfg.clone(),
        })
    }

    /// ids, type ids, attention mask: (b, s) u32 -> token states (b, s, h), f32.
    pub fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        attention_mask: &Tensor,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let (b_sz, seq_len) = ids.dims2()?;
        let heads = self.config.num_attention_heads;
        // 0 where attended, a large negative number on padding: softmax gives padding zero weight.
        let mask = ((attention_mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?
            .reshape((b_sz, 1, 1, seq_len))?
            .broadcast_as((b_sz, heads, seq_len, seq_len))?;
        let bias = match &self.rel_bias {
            Some(table) => {
                // bias[h, i, j] = table[bucket(j - i), h], the same for every row of the batch.
                let buckets: Vec<u32> = (0..seq_len * seq_len)
                    .map(|k| mpnet_bucket((k % seq_len) as i64 - (k / seq_len) as i64))
                    .collect();
                let idx = Tensor::from_vec(buckets, seq_len * seq_len, ids.device())?;
                let b = table
                    .index_select(&idx, 0)? // (s*s, heads)
                    .t()?
                    .reshape((1, heads, seq_len, seq_len))?
                    .broadcast_as((b_sz, heads, seq_len, seq_len))?;
                (mask + b)?
            }
            None => mask,
        }
        .contiguous()?;
        let mut xs = self.embeddings.forward(ids, type_ids, mode)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &bias, seq_len, mode)?;
        }
        xs.reshape((b_sz, seq_len, self.config.hidden_size))
    }
}

#[cfg(test)]
mod tests {
    /// The reference's own bucket function against the table transformers computes
    /// (`tests/fixtures/mpnet_buckets.json`, made by `tests/fixtures/buckets.py` with torch).
    #[test]
    fn reference_buckets_match_transformers() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mpnet_buckets.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        for (rel, want) in v["buckets"].as_object().unwrap() {
            let rel: i64 = rel.parse().unwrap();
            assert_eq!(
                super::mpnet_bucket(rel) as u64,
                want.as_u64().unwrap(),
                "{rel}"
            );
        }
    }
}
