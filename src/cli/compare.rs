//! `tripletlab compare`: two models on the same triplets (by default the rows the fine-tuned one
//! never trained on), every metric with its 95 % interval, every difference with a paired
//! interval and p-value; JSON, Markdown or HTML report, per-triplet CSV.

use anyhow::Context;

use super::progress::Bar;
use super::{load_data, CompareArgs};
use crate::core::cache::EmbeddingCache;
use crate::core::encoder::{EncoderOptions, PromptChoice};
use crate::core::metrics::{lower_is_better, metric_keys};
use crate::core::model::ModelSource;
use crate::core::pipeline::{
    compare as compare_models, evaluate_model, subset_rows, Comparison, RunRecord, Subset,
};
use crate::core::report::comparison::{markdown, per_triplet_csv, write_html};

/// `tripletlab compare`.
pub fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    let [a, b] = args.models.as_slice() else {
        anyhow::bail!(
            "compare takes exactly two models (--model A --model B), got {}",
            args.models.len()
        );
    };
    let data = load_data(&args.data)?;
    let sources = [ModelSource::parse(a), ModelSource::parse(b)];
    // The run record that says which rows were trained on: B's (usually the fine-tuned one),
    // else A's, when it is for this file.
    let mut records = Vec::new();
    for s in sources.iter().rev() {
        if let ModelSource::Dir(dir) = s {
            if let Some(r) =
                RunRecord::read(dir).with_context(|| format!("model `{}`", s.label()))?
            {
                records.push(r);
            }
        }
    }
    let record = records
        .iter()
        .find(|r| r.matches(&data))
        .or(records.first());
    let subset = match &args.subset {
        Some(s) => Subset::parse(s).map_err(anyhow::Error::msg)?,
        None if record.is_some_and(|r| r.matches(&data)) => Subset::HeldOut,
        None => Subset::All,
    };
    let rows = subset_rows(&data, record, subset)
        .or_else(|e| match (&args.subset, subset) {
            // The default falls back to every row when nothing is held out here.
            (None, Subset::HeldOut) => {
                eprintln!("note: {e}; measuring on all triplets");
                subset_rows(&data, record, Subset::All)
            }
            _ => Err(e),
        })
        .map_err(anyhow::Error::msg)?;
    eprintln!("Comparing on {} ({})", rows.subset.name(), rows.note);
    let opts = EncoderOptions {
        max_seq_len: args.max_seq_len,
        batch_size: args.batch_size,
        prompts: PromptChoice::parse(&args.prompts).map_err(anyhow::Error::msg)?,
        truncate_dim: None,
        compute: args.compute,
    };
    let cache = (!args.no_cache).then(|| EmbeddingCache::new(EmbeddingCache::default_dir()));
    let bar = Bar::new();
    let mut evals = Vec::new();
    for s in &sources {
        let e = bar
            .run(|ctx| evaluate_model(s, &opts, &data.triplets, cache.as_ref(), ctx))
            .with_context(|| format!("cannot evaluate model `{}`", s.label()))?;
        eprintln!("Embedded with {} in {:.1} s", e.model_label, e.embed_secs);
        evals.push(e);
    }
    let start = std::time::Instant::now();
    let cmp = compare_models(&data, &evals[0], &evals[1], rows, args.resamples, args.seed)
        .map_err(anyhow::Error::msg)?;
    eprintln!(
        "{} triplets, {} queries, {} documents; intervals from {} resamples in {:.2} s",
        cmp.a.n_triplets,
        cmp.a.n_queries,
        cmp.a.n_corpus,
        cmp.resamples,
        start.elapsed().as_secs_f64()
    );
    print_table(&cmp);
    let write = |path: &std::path::Path, text: String| -> anyhow::Result<()> {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("Wrote {}", path.display());
        Ok(())
    };
    if let Some(path) = &args.json {
        write(path, serde_json::to_string_pretty(&cmp.to_json())? + "\n")?;
    }
    if let Some(path) = &args.csv {
        write(path, per_triplet_csv(&data, &cmp))?;
    }
    if let Some(path) = &args.report {
        if path.extension().is_some_and(|e| e == "md") {
            write(path, markdown(&data, &cmp, record))?;
        } else {
            write_html(path, &data, &cmp, [&evals[0], &evals[1]], record)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("Wrote {}", path.display());
        }
    }
    Ok(())
}

fn print_table(c: &Comparison) {
    println!(
        "{:<22} {:>24} {:>24} {:>26} {:>8}",
        "metric",
        format!("A [95 % CI]"),
        format!("B [95 % CI]"),
        "B - A [95 % CI]",
        "p"
    );
    for key in metric_keys() {
        let (ia, ib, d) = (&c.a_intervals[&key], &c.b_intervals[&key], &c.deltas[&key]);
        let better = if lower_is_better(&key) {
            d.delta < 0.0
        } else {
            d.delta > 0.0
        };
        let mark = if d.is_uncertain() {
            " "
        } else if better {
            "+"
        } else {
            "-"
        };
        println!(
            "{key:<22} {:>7.4} [{:.4}, {:.4}] {:>7.4} [{:.4}, {:.4}] {:>+8.4} [{:+.4}, {:+.4}] {:>8.4} {mark}",
            ia.value, ia.ci95[0], ia.ci95[1], ib.value, ib.ci95[0], ib.ci95[1], d.delta,
            d.ci95[0], d.ci95[1], d.p_value
        );
    }
    println!(
        "A = {}\nB = {}\n+/-: B better/worse with the 95 % interval of the difference excluding 0",
        c.models[0], c.models[1]
    );
}
