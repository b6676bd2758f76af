//! `tripletlab embed` and `tripletlab eval`.

use anyhow::Context;

use super::progress::Bar;
use super::{load_data, EmbedArgs, EncoderArgs, EvalArgs};
use crate::core::backend::Compute;
use crate::core::cache::EmbeddingCache;
use crate::core::data::{Dataset, Field};
use crate::core::embeddings::Embeddings;
use crate::core::encoder::{embed_triplets, Encoder, TripletEmbeddings};
use crate::core::metrics::quantize::{evaluate_cell, Precision, RESCORE_DEPTH};
use crate::core::metrics::{evaluate, metric_keys, metric_label, RetrievalIndex};
use crate::core::report::{write_npy_f32, EvalReport, EvalSettings};

/// Loads the model and embeds a dataset, with progress on stderr.
fn load_and_embed(
    data: &Dataset,
    args: &EncoderArgs,
    bar: &Bar,
) -> anyhow::Result<(Encoder, TripletEmbeddings)> {
    let opts = args.options()?;
    let source = args.source();
    let encoder = Encoder::load(&source, &opts, &mut |p| bar.download(&p))
        .with_context(|| format!("cannot load model `{}`", source.label()))?;
    let p = &encoder.prompts;
    eprintln!(
        "Model {} ({} pooling, max {} tokens, dim {}, prompts {:?}: query {:?}, document {:?})",
        encoder.source_label,
        encoder.pooling_name(),
        encoder.max_seq_len,
        encoder.dim(),
        p.source,
        p.query,
        p.document
    );
    super::note_builtin_gemm();
    if encoder.compute() != Compute::F32 {
        eprintln!(
            "Compute {}: {} (vectors differ slightly from f32; README \"Speed\" gives the agreement)",
            encoder.compute().name(),
            encoder.backend_description()
        );
    }
    let cache = (!args.no_cache).then(|| EmbeddingCache::new(EmbeddingCache::default_dir()));
    let start = std::time::Instant::now();
    let emb = bar.run(|ctx| embed_triplets(&encoder, &data.triplets, cache.as_ref(), ctx))?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "Embedded {} distinct texts in {secs:.1} s ({} from the cache, {} computed{})",
        emb.cache_hits + emb.computed,
        emb.cache_hits,
        emb.computed,
        if emb.computed > 0 {
            format!(", {:.1} texts/s", emb.computed as f64 / secs)
        } else {
            String::new()
        }
    );
    for w in &emb.cache_warnings {
        eprintln!("warning: {w}");
    }
    let cut: Vec<(usize, Field)> = emb
        .token_counts
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            Field::ALL
                .iter()
                .zip(c)
                .filter(|(_, c)| c.truncated)
                .map(move |(f, _)| (i, *f))
        })
        .collect();
    if !cut.is_empty() {
        eprintln!(
            "warning: {} texts are longer than {} tokens and were cut (first: triplet {} {:?})",
            cut.len(),
            encoder.max_seq_len,
            data.source_rows[cut[0].0],
            cut[0].1
        );
    }
    Ok((encoder, emb))
}

/// `tripletlab embed`.
pub fn embed(args: &EmbedArgs) -> anyhow::Result<()> {
    let data = load_data(&args.data)?;
    let bar = Bar::new();
    let (_, emb) = load_and_embed(&data, &args.encoder, &bar)?;
    let mut all = Embeddings::new(emb.queries.dim);
    for m in [&emb.queries, &emb.positives, &emb.negatives] {
        all.data.extend_from_slice(&m.data);
    }
    write_npy_f32(&args.out, &all)?;
    eprintln!(
        "Wrote {} x {} float32 to {}",
        all.rows(),
        all.dim,
        args.out.display()
    );
    Ok(())
}

/// `tripletlab eval`.
pub fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let data = load_data(&args.data)?;
    let bar = Bar::new();
    let (encoder, emb) = load_and_embed(&data, &args.encoder, &bar)?;
    let start = std::time::Instant::now();
    let precision = Precision::parse(&args.precision).map_err(anyhow::Error::msg)?;
    let result = if precision == Precision::Float32 {
        if args.rescore.is_some() {
            eprintln!("note: --rescore applies to quantised vectors; float32 is not rescored");
        }
        let index =
            RetrievalIndex::build(&data.triplets, &emb.queries, &emb.positives, &emb.negatives);
        evaluate(&index)
    } else {
        eprintln!(
            "Scoring {} vectors of {} dimensions{}",
            precision.name(),
            emb.queries.dim,
            args.rescore
                .map(|m| format!(", the top {} candidates rescored", m * RESCORE_DEPTH))
                .unwrap_or_default()
        );
        evaluate_cell(
            &data.triplets,
            &emb.queries,
            &emb.positives,
            &emb.negatives,
            emb.queries.dim,
            precision,
            args.rescore,
        )
    };
    eprintln!(
        "Metrics over {} triplets, {} queries, {} documents in {:.3} s",
        result.n_triplets,
        result.n_queries,
        result.n_corpus,
        start.elapsed().as_secs_f64()
    );
    eprintln!(
        "Peak memory {}",
        super::bench::peak_rss_mib()
            .map(|m| format!("{m:.0} MiB"))
            .unwrap_or_else(|| "unknown".into())
    );
    println!("{:<22} {:>9}  meaning", "metric", "value");
    for key in metric_keys() {
        let v = result.metrics[&key];
        println!("{key:<22} {v:>9.4}  {}", metric_label(&key));
    }
    if let Some(path) = &args.json {
        let settings = EvalSettings {
            data: args.data.display().to_string(),
            model: encoder.source_label.clone(),
            weights_hash: encoder.weights_hash.clone(),
            pooling: encoder.pooling_name().to_string(),
            prompts: encoder.prompts.clone(),
            max_seq_len: encoder.max_seq_len,
            truncate_dim: encoder.truncate_dim,
            precision: precision.name().to_string(),
            rescore: args.rescore,
            batch_size: encoder.batch_size,
            compute: encoder.compute(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let report = EvalReport::new(&result, &settings, data.report.skipped.len());
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("Wrote {}", path.display());
    }
    Ok(())
}
