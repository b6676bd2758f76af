//! `tripletlab grid`: one embedding pass per model, then every dimension × precision cell.

use anyhow::Context;

use super::progress::Bar;
use super::{load_data, GridArgs};
use crate::core::cache::EmbeddingCache;
use crate::core::encoder::{EncoderOptions, PromptChoice};
use crate::core::files::format_bytes;
use crate::core::metrics::quantize::Precision;
use crate::core::model::ModelSource;
use crate::core::pipeline::evaluate_model;
use crate::core::pipeline::grid::{grid as compute_grid, Grid};

fn list<T>(s: &str, parse: impl Fn(&str) -> Result<T, String>) -> anyhow::Result<Vec<T>> {
    s.split(',')
        .map(|x| parse(x.trim()).map_err(anyhow::Error::msg))
        .collect()
}

/// `tripletlab grid`.
pub fn grid(args: &GridArgs) -> anyhow::Result<()> {
    let data = load_data(&args.data)?;
    let dims = list(&args.dims, |x| {
        x.parse::<usize>()
            .ok()
            .filter(|&d| d > 0)
            .ok_or_else(|| format!("dimensions must be positive integers, got `{x}`"))
    })?;
    let precisions = list(&args.precisions, Precision::parse)?;
    let opts = EncoderOptions {
        max_seq_len: args.max_seq_len,
        batch_size: args.batch_size,
        prompts: PromptChoice::parse(&args.prompts).map_err(anyhow::Error::msg)?,
        truncate_dim: None,
        compute: args.compute,
    };
    let cache = (!args.no_cache).then(|| EmbeddingCache::new(EmbeddingCache::default_dir()));
    let bar = Bar::new();
    let mut grids = Vec::new();
    for m in &args.models {
        let source = ModelSource::parse(m);
        let eval = bar
            .run(|ctx| evaluate_model(&source, &opts, &data.triplets, cache.as_ref(), ctx))
            .with_context(|| format!("cannot evaluate model `{}`", source.label()))?;
        let start = std::time::Instant::now();
        let g = bar.run(|ctx| {
            compute_grid(&eval, &data.triplets, &dims, &precisions, args.rescore, ctx)
        })?;
        eprintln!(
            "{}: {} cells in {:.2} s ({} triplets, {} queries, {} documents)",
            g.model,
            g.cells.len(),
            start.elapsed().as_secs_f64(),
            g.n_triplets,
            g.n_queries,
            g.n_corpus
        );
        print_grid(&g);
        grids.push(g);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&grids)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("Wrote {}", path.display());
    }
    Ok(())
}

fn print_grid(g: &Grid) {
    println!(
        "\n{}{}: nDCG@10 of float32 at {} dimensions = {:.4} (100 %)",
        g.model,
        g.rescore
            .map(|m| format!(" (rescored x{m})"))
            .unwrap_or_default(),
        g.full_dim,
        g.reference_ndcg
    );
    println!(
        "{:>5} {:>8} {:>8} {:>18} {:>9} {:>8} {:>10} {:>10} {:>9}",
        "dim",
        "precision",
        "nDCG@10",
        "95 % CI",
        "retained",
        "acc@1",
        "bytes/vec",
        "1M docs",
        "ms/query"
    );
    for c in &g.cells {
        let ci = c.intervals["cosine_ndcg@10"].ci95;
        println!(
            "{:>5} {:>8} {:>8.4} {:>18} {:>8.1}% {:>8.4} {:>10} {:>10} {:>9.3}",
            c.dim,
            c.precision.name(),
            c.metrics["cosine_ndcg@10"],
            format!("[{:.4}, {:.4}]", ci[0], ci[1]),
            100.0 * c.ndcg_retained,
            c.metrics["cosine_accuracy@1"],
            c.bytes_per_vector,
            format_bytes(c.index_bytes_million),
            c.search_ms_per_query
        );
    }
}
