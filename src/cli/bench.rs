//! `tripletlab bench`: the speed figures of the speed issue, printed as a table and optionally as
//! JSON, for one model folder and one triplet file. A benchmark, not a test: it asserts nothing.

use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use super::{load_data, BenchArgs};
use crate::core::cache::EmbeddingCache;
use crate::core::data::load_triplets;
use crate::core::encoder::{embed_triplets, Encoder, EncoderOptions, PromptChoice, Role};
use crate::core::jobs::{CancelToken, JobCtx, Update};
use crate::core::metrics::{evaluate, similarity_window, RetrievalIndex};
use crate::core::model::{resolve_source, Checkpoint, ModelSource};
use crate::core::pipeline::Evaluation;
use crate::core::train::{self, LossKind, TrainConfig, TrainEvent};

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU seconds used by the whole process so far (all threads), from /proc (Linux; 10 ms ticks).
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): state is the first, utime the
    // 12th and stime the 13th; both in USER_HZ ticks, 100 per second on Linux.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Cores kept busy between two (wall, CPU) readings.
fn cores_busy(from: (Instant, Option<f64>), to: (Instant, Option<f64>)) -> Option<f64> {
    let wall = to.0.duration_since(from.0).as_secs_f64();
    Some((to.1? - from.1?) / wall).filter(|_| wall > 0.0)
}

fn quiet<R>(f: impl FnOnce(&JobCtx<'_, ()>) -> R) -> R {
    let emit = |_: Update<()>| {};
    f(&JobCtx::new(CancelToken::new(), &emit))
}

/// `tripletlab bench`.
pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let data = load_data(&args.data)?;
    let source = ModelSource::parse(&args.model);
    let mut report = serde_json::Map::new();
    report.insert("data".into(), json!(args.data.display().to_string()));
    report.insert("model".into(), json!(source.label()));
    report.insert(
        "threads".into(),
        json!(std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)),
    );
    report.insert(
        "matmul".into(),
        json!(crate::core::backend::cpu::blas::backend()),
    );
    report.insert("compute".into(), json!(args.compute.name()));

    if !args.skip_embed {
        let opts = EncoderOptions {
            max_seq_len: Some(args.max_seq_len),
            batch_size: args.batch_size,
            prompts: PromptChoice::None,
            truncate_dim: None,
            compute: args.compute,
        };
        let enc = Encoder::load(&source, &opts, &mut |_| {}).context("cannot load the model")?;
        eprintln!("kernels: {}", enc.backend_description());
        report.insert("kernels".into(), json!(enc.backend_description()));
        let texts: Vec<&str> = data
            .triplets
            .iter()
            .flat_map(|t| [t.query.as_str(), t.pos.as_str(), t.negative.as_str()])
            .take(args.embed_limit.unwrap_or(usize::MAX))
            .collect();
        // Warm-up, as the sentence-transformers anchor does: a few batches, not timed.
        let warm: Vec<&str> = texts
            .iter()
            .take((2 * args.batch_size).max(64))
            .copied()
            .collect();
        quiet(|ctx| enc.encode(&warm, Role::Document, ctx))?;
        let mut runs = Vec::new();
        let mut tokens = 0usize;
        let busy_from = (Instant::now(), process_cpu_secs());
        for _ in 0..args.repeats {
            let start = Instant::now();
            let (_, counts) = quiet(|ctx| enc.encode(&texts, Role::Document, ctx))?;
            runs.push(start.elapsed().as_secs_f64());
            tokens = counts.iter().map(|c| c.tokens.min(enc.max_seq_len)).sum();
        }
        let busy = cores_busy(busy_from, (Instant::now(), process_cpu_secs()));
        let best = runs.iter().copied().fold(f64::INFINITY, f64::min);
        let median = median(&runs);
        eprintln!(
            "embedding: {} texts, {} tokens, median {:.2} s: {:.1} texts/s, {:.0} tokens/s; {:.2} cores busy",
            texts.len(),
            tokens,
            median,
            texts.len() as f64 / median,
            tokens as f64 / median,
            busy.unwrap_or(f64::NAN)
        );
        report.insert(
            "embedding".into(),
            json!({"texts": texts.len(), "tokens": tokens, "batch_size": args.batch_size,
                   "max_seq_len": args.max_seq_len, "seconds": runs, "texts_per_sec_median": texts.len() as f64 / median,
                   "texts_per_sec_best": texts.len() as f64 / best, "tokens_per_sec_median": tokens as f64 / median,
                   "cores_busy": busy}),
        );
    }

    if args.train_steps > 0 {
        let folder = resolve_source(&source, &mut |_| {})?;
        let checkpoint = Checkpoint::read(&folder)?;
        let n = (args.train_steps * 16).min(data.len());
        let train_set = &data.triplets[..n];
        let cfg = TrainConfig {
            loss: LossKind::Mnrl,
            batch_size: 16,
            max_seq_len: 128,
            eval_steps: Some(0),
            prompts: PromptChoice::None,
            compute: args.compute,
            ..TrainConfig::default()
        };
        // A tiny validation set: the bench times steps, not validation.
        let val = &data.triplets[..4.min(data.len())];
        let steps = std::sync::Mutex::new(Vec::new());
        // (wall, CPU) at the end of each step: the cores kept busy from the first step's end on.
        let marks = std::sync::Mutex::new(Vec::new());
        let emit = |u: Update<TrainEvent>| {
            if let Update::Point(TrainEvent::Step(s)) = u {
                marks
                    .lock()
                    .expect("lock")
                    .push((Instant::now(), process_cpu_secs()));
                steps
                    .lock()
                    .expect("lock")
                    .push((s.step_secs, s.phase_secs));
            }
        };
        let ctx = JobCtx::new(CancelToken::new(), &emit);
        train::train(&folder, &checkpoint, train_set, val, &cfg, &ctx)?;
        let (secs, phases): (Vec<f64>, Vec<[f64; 3]>) =
            steps.into_inner().expect("lock").into_iter().unzip();
        // The first step pays for allocations and warm caches, as the anchor's first step does.
        let timed = if secs.len() > 1 {
            &secs[1..]
        } else {
            &secs[..]
        };
        let marks = marks.into_inner().expect("lock");
        let busy = match (marks.first(), marks.last()) {
            (Some(&a), Some(&b)) if marks.len() > 1 => cores_busy(a, b),
            _ => None,
        };
        eprintln!(
            "fine-tuning: mnrl, batch 16, seq 128: median {:.2} s/step over {} steps; {:.2} cores busy",
            median(timed),
            timed.len(),
            busy.unwrap_or(f64::NAN)
        );
        let phase = |i: usize| median(&phases.iter().skip(1).map(|p| p[i]).collect::<Vec<_>>());
        let (fwd, bwd, upd) = (phase(0), phase(1), phase(2));
        eprintln!("  of which forward {fwd:.2} s, backward {bwd:.2} s, clip and update {upd:.2} s");
        report.insert(
            "train_step".into(),
            json!({"seconds": secs, "median_secs_after_first": median(timed),
                   "median_forward_secs": fwd, "median_backward_secs": bwd,
                   "median_update_secs": upd, "cores_busy": busy}),
        );
    }

    // Metrics and the first heatmap window from a warm cache.
    // The user's cache (or $TRIPLETLAB_CACHE_DIR): a second bench of the same file reuses it.
    let cache = EmbeddingCache::new(EmbeddingCache::default_dir());
    let opts = EncoderOptions {
        max_seq_len: Some(args.max_seq_len),
        prompts: PromptChoice::None,
        compute: args.compute,
        ..Default::default()
    };
    let enc = Encoder::load(&source, &opts, &mut |_| {})?;
    if !args.skip_cached {
        quiet(|ctx| embed_triplets(&enc, &data.triplets, Some(&cache), ctx))?;
        // The app's path: open the file, read every vector from the cache, build the index and
        // metrics (one Evaluation), draw the first 50x50 window.
        let start = Instant::now();
        let reopened = load_triplets(&args.data)?;
        let emb = quiet(|ctx| embed_triplets(&enc, &reopened.triplets, Some(&cache), ctx))?;
        let loaded = start.elapsed().as_secs_f64();
        let eval = Evaluation::from_embeddings(
            source.label(),
            enc.max_seq_len,
            enc.prompts.clone(),
            &reopened.triplets,
            emb,
            loaded,
        );
        let t_window = Instant::now();
        let w = similarity_window(
            &eval.doc_rows,
            0..50.min(eval.doc_rows.rows()),
            &eval.doc_rows,
            0..50.min(eval.doc_rows.rows()),
        );
        let window_secs = t_window.elapsed().as_secs_f64();
        let first_heatmap = start.elapsed().as_secs_f64();
        // The metrics alone, on the index already built.
        let t_metrics = Instant::now();
        let result = evaluate(&eval.index);
        let metrics_secs = t_metrics.elapsed().as_secs_f64();
        // Uncertainty: every metric's bootstrap interval, then a paired comparison (the model
        // against itself: the same work as against another).
        use crate::core::metrics::uncertainty::{
            intervals, paired, DEFAULT_RESAMPLES, DEFAULT_SEED,
        };
        let t_boot = Instant::now();
        let _ = intervals(&result, DEFAULT_RESAMPLES, DEFAULT_SEED);
        let intervals_secs = t_boot.elapsed().as_secs_f64();
        let t_boot = Instant::now();
        let _ = paired(&result, &result, DEFAULT_RESAMPLES, DEFAULT_SEED);
        let paired_secs = t_boot.elapsed().as_secs_f64();
        eprintln!(
            "uncertainty over {} queries, {DEFAULT_RESAMPLES} resamples: intervals {intervals_secs:.3} s, paired intervals and p-values {paired_secs:.3} s",
            result.n_queries
        );
        let t_index = Instant::now();
        let index = RetrievalIndex::build(
            &reopened.triplets,
            &eval.embeddings.queries,
            &eval.embeddings.positives,
            &eval.embeddings.negatives,
        );
        let index_secs = t_index.elapsed().as_secs_f64();
        drop(index);
        let t_out = Instant::now();
        let q = eval.index.query_of_triplet[0];
        let outranking =
            crate::core::metrics::outranking(&eval.index, q, eval.index.pos_doc[0], 20);
        let inspector_secs = t_out.elapsed().as_secs_f64();
        // The inspector's text search: indexed once with the file (off the UI thread), then one
        // search per keystroke on the UI thread.
        let t_search = Instant::now();
        let search = crate::core::data::TextSearch::new(&reopened);
        let search_index_secs = t_search.elapsed().as_secs_f64();
        let t_search = Instant::now();
        let hits = search
            .matches("semiconductor")
            .iter()
            .filter(|&&m| m)
            .count();
        let search_secs = t_search.elapsed().as_secs_f64();
        eprintln!(
            "inspector text search: {:.2} ms per search over {} distinct texts ({hits} triplets match \"semiconductor\"; indexing {:.0} ms with the file)",
            search_secs * 1e3,
            search.distinct_texts(),
            search_index_secs * 1e3
        );
        eprintln!(
            "cached open -> first heatmap: {first_heatmap:.3} s (load+cache {loaded:.3} s); index {index_secs:.3} s, metrics {metrics_secs:.3} s over {} triplets; 50x50 window {:.2} ms; inspector query {:.2} ms",
            result.n_triplets,
            window_secs * 1e3,
            inspector_secs * 1e3
        );
        report.insert(
            "cached".into(),
            json!({"open_to_first_heatmap_secs": first_heatmap, "load_and_cache_secs": loaded,
                   "metrics_secs": metrics_secs, "index_secs": index_secs, "window_50x50_ms": window_secs * 1e3,
                   "inspector_query_ms": inspector_secs * 1e3, "triplets": result.n_triplets,
                   "window_cells": w.len(), "outranking_listed": outranking.len(),
                   "text_search_ms": search_secs * 1e3, "text_search_index_ms": search_index_secs * 1e3,
                   "bootstrap_intervals_secs": intervals_secs, "paired_bootstrap_and_permutation_secs": paired_secs}),
        );
    }
    let peak = peak_rss_mib();
    eprintln!("peak RSS: {:.0} MiB", peak.unwrap_or(f64::NAN));
    report.insert("peak_rss_mib".into(), json!(peak));
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(report))?;
    match &args.json {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
        }
        None => println!("{text}"),
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}
