//! BERT's parameters, and those of the RoBERTa family (XLM-RoBERTa, RoBERTa, CamemBERT), whose
//! checkpoints use the same names and shapes: their only difference, positions starting at
//! `pad_token_id + 1`, is [`ModelConfig::position_offset`].

use super::{Builder, LayerParams, ParamLayout};
use crate::core::model::ModelConfig;

/// `embeddings.*`, then `encoder.layer.N.attention.self.{query,key,value}`,
/// `attention.output.{dense,LayerNorm}`, `intermediate.dense`, `output.{dense,LayerNorm}`.
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
    let token_type = b.add(
        "embeddings.token_type_embeddings.weight".into(),
        &[cfg.type_vocab_size, h],
    );
    let emb_norm = b.norm("embeddings.LayerNorm", h);
    let layers = (0..cfg.num_hidden_layers)
        .map(|l| {
            let p = format!("encoder.layer.{l}");
            LayerParams {
                q: b.dense(&format!("{p}.attention.self.query"), h, h),
                k: b.dense(&format!("{p}.attention.self.key"), h, h),
                v: b.dense(&format!("{p}.attention.self.value"), h, h),
                o: b.dense(&format!("{p}.attention.output.dense"), h, h),
                attn_norm: b.norm(&format!("{p}.attention.output.LayerNorm"), h),
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
        token_type: Some(token_type),
        emb_norm,
        rel_bias: None,
        layers,
    }
}
