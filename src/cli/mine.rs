//! `tripletlab mine`: hard negatives for a triplet file's queries from its own documents and
//! any extra corpus, with sentence-transformers' `mine_hard_negatives` semantics.

use anyhow::Context;

use super::progress::Bar;
use super::{load_data, MineArgs};
use crate::core::cache::EmbeddingCache;
use crate::core::encoder::Encoder;
use crate::core::mining::{MineConfig, Sampling};
use crate::core::pipeline::mine::{mine_dataset, read_corpus, RowFormat};

/// `tripletlab mine`.
pub fn mine(args: &MineArgs) -> anyhow::Result<()> {
    let data = load_data(&args.data)?;
    let mut extra = Vec::new();
    for path in &args.corpus {
        let docs = read_corpus(path).map_err(anyhow::Error::msg)?;
        eprintln!("Corpus {}: {} documents", path.display(), docs.len());
        extra.extend(docs);
    }
    let cfg = MineConfig {
        range_min: args.range_min,
        range_max: args.range_max,
        absolute_margin: args.absolute_margin,
        relative_margin: args.relative_margin,
        min_score: args.min_score,
        max_score: args.max_score,
        num_negatives: args.num_negatives,
        sampling: match args.sampling.as_str() {
            "top" => Sampling::Top,
            "random" => Sampling::Random,
            s => anyhow::bail!("--sampling must be top or random, got `{s}`"),
        },
        seed: args.seed,
    };
    let format = match args.format.as_str() {
        "triplet" => RowFormat::Triplet,
        "n-tuple" => RowFormat::NTuple,
        s => anyhow::bail!("--format must be triplet or n-tuple, got `{s}`"),
    };
    let opts = args.encoder.options()?;
    let source = args.encoder.source();
    let bar = Bar::new();
    let encoder = Encoder::load(&source, &opts, &mut |p| bar.download(&p))
        .with_context(|| format!("cannot load model `{}`", source.label()))?;
    super::note_builtin_gemm();
    let cache =
        (!args.encoder.no_cache).then(|| EmbeddingCache::new(EmbeddingCache::default_dir()));
    let start = std::time::Instant::now();
    let mined = bar.run(|ctx| mine_dataset(&encoder, &data, &extra, &cfg, cache.as_ref(), ctx))?;
    for w in &mined.warnings {
        eprintln!("warning: {w}");
    }
    let s = mined.summary();
    eprintln!(
        "Mined {} negatives for {} queries from {} documents ({} of the file, {} extra) in {:.1} s",
        s.negatives,
        s.queries,
        s.corpus,
        s.file_docs,
        s.corpus - s.file_docs,
        start.elapsed().as_secs_f64()
    );
    eprintln!(
        "  mean cosine of mined negatives {:.4}, of the file's own negatives {:.4}",
        s.mean_mined_score, s.mean_original_score
    );
    if s.short_queries > 0 {
        eprintln!(
            "  {} queries got fewer than {} negatives (the filters left too few candidates \
             within range_max {})",
            s.short_queries,
            cfg.num_negatives,
            cfg.effective_range_max(1)
        );
    }
    if s.suspects > 0 {
        eprintln!(
            "  {} negatives look like false negatives (near-duplicates of the positive, or within \
             {} of its score); review them in the app's Mining tab, or raise --relative-margin",
            s.suspects,
            crate::core::mining::SUSPECT_MARGIN
        );
    }
    let text = mined.to_jsonl(format, &|_, _| true);
    crate::core::files::write_atomic(&args.out, text.as_bytes())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "Wrote {} rows to {}",
        text.lines().count(),
        args.out.display()
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({"settings": cfg, "summary": s, "queries": mined.per_query});
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
