//! Our BERT encoder in candle, with a train-aware forward: dropout and a differentiable layer norm
//! when `train` is true, fused kernels when it is false. Tensor names follow the Hugging Face
//! checkpoint (`embeddings.word_embeddings.weight`, `encoder.layer.N.attention.self.query.weight`,
//! ...) so the same tensor map can be written back.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{BertConfig, HiddenAct};

/// Source of dropout masks; training passes a seeded one, inference none.
pub trait DropoutRng {
    /// Fills `out` with a keep-mask scaled by 1/(1-p).
    fn fill(&mut self, out: &mut [f32], p: f32);

    /// A keep-mask scaled by 1/(1-p), of `n` elements.
    fn mask(&mut self, n: usize, p: f32) -> Vec<f32> {
        let mut out = vec![0f32; n];
        self.fill(&mut out, p);
        out
    }
}

/// How a forward pass runs: eval (no dropout, fused kernels) or train (dropout, autograd-safe ops).
pub enum Mode<'a> {
    /// Inference.
    Eval,
    /// Training with dropout drawn from the given source.
    Train(&'a mut dyn DropoutRng),
}

impl Mode<'_> {
    fn is_train(&self) -> bool {
        matches!(self, Mode::Train(_))
    }

    /// A dropout keep-mask of `n` elements (scaled by 1/(1-p)) in training; none in inference.
    fn mask(&mut self, n: usize, p: f64) -> Option<Vec<f32>> {
        match self {
            Mode::Train(rng) if p > 0.0 => Some(rng.mask(n, p as f32)),
            _ => None,
        }
    }

    fn dropout(&mut self, xs: &Tensor, p: f64) -> Result<Tensor> {
        match self {
            Mode::Train(rng) if p > 0.0 => {
                let mask = rng.mask(xs.elem_count(), p as f32);
                let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?;
                xs * mask
            }
            _ => Ok(xs.clone()),
        }
    }
}

/// A dense layer that always multiplies 2-D inputs, so the backward pass never materialises a
/// per-batch weight gradient.
#[derive(Debug, Clone)]
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

    /// xs: (n, in_dim) -> (n, out_dim).
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        super::matmul::linear(xs, &self.weight, &self.bias)
    }
}

#[derive(Debug, Clone)]
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
        super::kernels::layer_norm(xs, &self.weight, &self.bias, self.eps)
    }

    /// `LN(dropout(xs) + residual)`, with the dropout keep-mask given (none in inference).
    fn forward_add(
        &self,
        xs: &Tensor,
        residual: &Tensor,
        mask: Option<Vec<f32>>,
    ) -> Result<Tensor> {
        super::kernels::dropout_add_layer_norm(
            xs,
            residual,
            &self.weight,
            &self.bias,
            self.eps,
            mask,
        )
    }
}

struct Embeddings {
    word: candle_nn::Embedding,
    position: candle_nn::Embedding,
    token_type: candle_nn::Embedding,
    layer_norm: LayerNorm,
    dropout: f64,
}

impl Embeddings {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            word: candle_nn::embedding(cfg.vocab_size, h, vb.pp("word_embeddings"))?,
            position: candle_nn::embedding(
                cfg.max_position_embeddings,
                h,
                vb.pp("position_embeddings"),
            )?,
            token_type: candle_nn::embedding(
                cfg.type_vocab_size,
                h,
                vb.pp("token_type_embeddings"),
            )?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// input_ids, token_type_ids: (b, s) u32 -> (b*s, h).
    fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let (b_sz, seq_len) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, seq_len as u32, input_ids.device())?;
        let pos = self.position.forward(&positions)?; // (s, h)
        let words = self.word.forward(&input_ids.flatten_all()?)?; // (b*s, h)
        let types = self.token_type.forward(&token_type_ids.flatten_all()?)?;
        let h = words.dim(1)?;
        let pos = pos
            .unsqueeze(0)?
            .broadcast_as((b_sz, seq_len, h))?
            .reshape((b_sz * seq_len, h))?;
        let xs = ((words + types)? + pos)?;
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
    fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let i = cfg.intermediate_size;
        let att = vb.pp("attention");
        let eps = cfg.layer_norm_eps;
        Ok(Self {
            query: Linear::load(att.pp("self").pp("query"), h, h)?,
            key: Linear::load(att.pp("self").pp("key"), h, h)?,
            value: Linear::load(att.pp("self").pp("value"), h, h)?,
            attn_out: Linear::load(att.pp("output").pp("dense"), h, h)?,
            attn_norm: LayerNorm::load(att.pp("output").pp("LayerNorm"), h, eps)?,
            intermediate: Linear::load(vb.pp("intermediate").pp("dense"), h, i)?,
            output: Linear::load(vb.pp("output").pp("dense"), i, h)?,
            out_norm: LayerNorm::load(vb.pp("output").pp("LayerNorm"), h, eps)?,
            act: cfg.hidden_act,
            num_heads: cfg.num_attention_heads,
            hidden_dropout: cfg.hidden_dropout_prob,
            attn_dropout: cfg.attention_probs_dropout_prob,
        })
    }

    /// xs: (b*s, h); mask_bias: (b, 1, 1, s) additive -> (b*s, h).
    fn forward(
        &self,
        xs: &Tensor,
        mask_bias: &Tensor,
        seq_len: usize,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let (n, h) = xs.dims2()?;
        let b_sz = n / seq_len;
        let head_dim = h / self.num_heads;
        let bh = b_sz * self.num_heads;
        let (q, k, v) = if mode.is_train() {
            // Three products: the backward pass of slicing one fused output would build three
            // zero-padded copies of it.
            let heads = |lin: &Linear| -> Result<Tensor> {
                super::kernels::split_heads(&lin.forward(xs)?, b_sz, seq_len, self.num_heads)
            };
            (heads(&self.query)?, heads(&self.key)?, heads(&self.value)?)
        } else {
            // One product for query, key and value: (n, 3h), then each one's heads.
            let qkv = Linear {
                weight: Tensor::cat(
                    &[&self.query.weight, &self.key.weight, &self.value.weight],
                    0,
                )?,
                bias: Tensor::cat(&[&self.query.bias, &self.key.bias, &self.value.bias], 0)?,
            }
            .forward(xs)?;
            let part = |i| super::kernels::qkv_part(&qkv, b_sz, seq_len, self.num_heads, i);
            (part(0)?, part(1)?, part(2)?)
        };
        let scores = super::matmul::product(&q, &k, false, true)?.reshape((
            b_sz,
            self.num_heads,
            seq_len,
            seq_len,
        ))?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let probs = super::kernels::masked_softmax(&scores, mask_bias, scale)?;
        let probs = mode.dropout(&probs, self.attn_dropout)?;
        let ctx = super::kernels::merge_heads(
            &super::matmul::product(&probs.reshape((bh, seq_len, seq_len))?, &v, false, false)?,
            b_sz,
            seq_len,
            self.num_heads,
        )?;
        let attn = self.attn_out.forward(&ctx)?;
        let mask = mode.mask(attn.elem_count(), self.hidden_dropout);
        let xs = self.attn_norm.forward_add(&attn, xs, mask)?;
        let inter = self.intermediate.forward(&xs)?;
        let inter = match self.act {
            HiddenAct::Gelu => super::kernels::gelu_erf(&inter)?,
            HiddenAct::GeluNew => inter.gelu()?,
            HiddenAct::Relu => inter.relu()?,
        };
        let out = self.output.forward(&inter)?;
        let mask = mode.mask(out.elem_count(), self.hidden_dropout);
        self.out_norm.forward_add(&out, &xs, mask)
    }
}

/// A BERT encoder (no pooler: sentence embeddings pool the token states themselves).
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    /// The configuration it was built from.
    pub config: BertConfig,
}

impl BertModel {
    /// Builds the model from tensors named as in the checkpoint (without any `bert.` prefix).
    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let embeddings = Embeddings::load(vb.pp("embeddings"), cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings,
            layers,
            config: cfg.clone(),
        })
    }

    /// Every weight, in the order the fast engine (`engine.rs`) indexes them: word, position and
    /// token-type embeddings, the embedding layer norm's weight and bias, then per layer query,
    /// key, value, attention output, its layer norm, intermediate, output and its layer norm
    /// (weight before bias each).
    pub fn tensors(&self) -> Vec<&Tensor> {
        let e = &self.embeddings;
        let mut t = vec![
            e.word.embeddings(),
            e.position.embeddings(),
            e.token_type.embeddings(),
            &e.layer_norm.weight,
            &e.layer_norm.bias,
        ];
        for l in &self.layers {
            for lin in [&l.query, &l.key, &l.value, &l.attn_out] {
                t.extend([&lin.weight, &lin.bias]);
            }
            t.extend([&l.attn_norm.weight, &l.attn_norm.bias]);
            for lin in [&l.intermediate, &l.output] {
                t.extend([&lin.weight, &lin.bias]);
            }
            t.extend([&l.out_norm.weight, &l.out_norm.bias]);
        }
        t
    }

    /// input_ids, token_type_ids, attention_mask: (b, s) u32 -> token states (b, s, h), f32.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let (b_sz, seq_len) = input_ids.dims2()?;
        // 0 where attended, a large negative number on padding: softmax gives padding zero weight.
        let mask_bias = ((attention_mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?
            .reshape((b_sz, 1, 1, seq_len))?;
        let mut xs = self.embeddings.forward(input_ids, token_type_ids, mode)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask_bias, seq_len, mode)?;
        }
        xs.reshape((b_sz, seq_len, self.config.hidden_size))
    }
}
