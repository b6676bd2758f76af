//! MPNet's parameters (transformers' `MPNetModel`): no token-type embeddings, the attention
//! projections under `attention.attn.{q,k,v,o}`, and one relative position bias table
//! `encoder.relative_attention_bias` (buckets, heads) shared by every layer.

use super::{Builder, LayerParams, ParamLayout};
use crate::core::model::ModelConfig;

pub(super) fn layout(cfg: &ModelConfig, has: &dyn Fn(&str) -> bool) -> ParamLayout {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let mut b = Builder::new(has);
    let word = b.add(
        "embeddings.word_embeddings.weight".into(),
        &[cfg.vocab_size, h],
    );
    let position = b.add(
        "embeddings.position_embeddings.weight".into(),
        &[cfg.max_position_embeddings, h],
    );
    let emb_norm = b.norm("embeddings.LayerNorm", h);
    let rel_bias = b.add(
        "encoder.relative_attention_bias.weight".into(),
        &[cfg.relative_attention_num_buckets, cfg.num_attention_heads],
    );
    let layers = (0..cfg.num_hidden_layers)
        .map(|l| {
            let p = format!("encoder.layer.{l}");
            LayerParams {
                q: b.dense(&format!("{p}.attention.attn.q"), h, h),
                k: b.dense(&format!("{p}.attention.attn.k"), h, h),
                v: b.dense(&format!("{p}.attention.attn.v"), h, h),
                o: b.dense(&format!("{p}.attention.attn.o"), h, h),
                attn_norm: b.norm(&format!("{p}.attention.LayerNorm"), h),
                inter: b.dense(&format!("{p}.intermediate.dense"), i, h),
                out: b.dense(&format!("{p}.output.dense"), h, i),
                out_norm: b.norm(&format!("{p}.output.LayerNorm"), h),
            }
        })
        .collect();
    ParamLayout {
        names: b.names,
        shapes: b.shapes,
        word,
        position,
        token_type: None,
        emb_norm,
        rel_bias: Some(rel_bias),
        layers,
    }
}
