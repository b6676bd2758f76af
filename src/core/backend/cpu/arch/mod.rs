//! The architecture dimension of the CPU engine: which checkpoint tensors make up an encoder, of
//! which shapes, and where each one sits in the flat parameter list that the engine, the
//! gradients and the optimizer share. The graph itself is common (post-layer-norm transformer
//! blocks); an architecture adds or removes pieces of it: token types (BERT, XLM-R), a position
//! offset (XLM-R, MPNet), a relative position bias (MPNet).

mod bert;
mod mpnet;

use crate::core::model::{Arch, ModelConfig};

/// A dense layer's weight (out, in) and bias (out).
#[derive(Debug, Clone, Copy)]
pub struct Dense {
    /// Index of the weight.
    pub w: usize,
    /// Index of the bias.
    pub b: usize,
}

/// A layer norm's weight and bias.
#[derive(Debug, Clone, Copy)]
pub struct Norm {
    /// Index of the weight (gamma).
    pub w: usize,
    /// Index of the bias (beta).
    pub b: usize,
}

/// The parameters of one transformer block.
#[derive(Debug, Clone, Copy)]
pub struct LayerParams {
    /// Query projection.
    pub q: Dense,
    /// Key projection.
    pub k: Dense,
    /// Value projection.
    pub v: Dense,
    /// Attention output projection.
    pub o: Dense,
    /// Layer norm after attention and its residual.
    pub attn_norm: Norm,
    /// Feed-forward expansion.
    pub inter: Dense,
    /// Feed-forward projection back.
    pub out: Dense,
    /// Layer norm after the feed-forward block and its residual.
    pub out_norm: Norm,
}

/// Every parameter of an encoder: names and shapes in index order, and the index of each role.
#[derive(Debug, Clone)]
pub struct ParamLayout {
    /// Checkpoint names (without the encoder's prefix), in index order.
    pub names: Vec<String>,
    /// Shapes, in index order.
    pub shapes: Vec<Vec<usize>>,
    /// Word embeddings (vocab, h).
    pub word: usize,
    /// Position embeddings (positions, h).
    pub position: usize,
    /// Token-type embeddings (types, h); none for MPNet.
    pub token_type: Option<usize>,
    /// The embeddings' layer norm.
    pub emb_norm: Norm,
    /// MPNet's relative position bias (buckets, heads), shared by the layers.
    pub rel_bias: Option<usize>,
    /// The transformer blocks.
    pub layers: Vec<LayerParams>,
}

/// Builds a layout name by name.
struct Builder<'a> {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    has: &'a dyn Fn(&str) -> bool,
}

impl<'a> Builder<'a> {
    fn new(has: &'a dyn Fn(&str) -> bool) -> Self {
        Self {
            names: Vec::new(),
            shapes: Vec::new(),
            has,
        }
    }

    fn add(&mut self, name: String, shape: &[usize]) -> usize {
        self.names.push(name);
        self.shapes.push(shape.to_vec());
        self.names.len() - 1
    }

    fn dense(&mut self, prefix: &str, out: usize, inp: usize) -> Dense {
        Dense {
            w: self.add(format!("{prefix}.weight"), &[out, inp]),
            b: self.add(format!("{prefix}.bias"), &[out]),
        }
    }

    /// A layer norm; old TensorFlow-converted checkpoints name its tensors gamma and beta.
    fn norm(&mut self, prefix: &str, d: usize) -> Norm {
        let legacy =
            !(self.has)(&format!("{prefix}.weight")) && (self.has)(&format!("{prefix}.gamma"));
        let (w, b) = if legacy {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        Norm {
            w: self.add(format!("{prefix}.{w}"), &[d]),
            b: self.add(format!("{prefix}.{b}"), &[d]),
        }
    }
}

/// The parameters of an encoder of this configuration; `has` tells which names the checkpoint
/// holds (to pick between spellings).
pub fn layout(cfg: &ModelConfig, has: &dyn Fn(&str) -> bool) -> ParamLayout {
    match cfg.arch {
        Arch::Bert | Arch::XlmRoberta => bert::layout(cfg, has),
        Arch::MpNet => mpnet::layout(cfg, has),
    }
}

impl ParamLayout {
    /// Number of elements of each parameter.
    pub fn sizes(&self) -> impl Iterator<Item = usize> + '_ {
        self.shapes.iter().map(|s| s.iter().product())
    }
}
