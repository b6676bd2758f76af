//! `tripletlab finetune`: train, validate, save the best checkpoint as a sentence-transformers folder.

use std::collections::BTreeMap;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::{load_data, FinetuneArgs};
use crate::core::encoder::PromptChoice;
use crate::core::jobs::{CancelToken, JobCtx, Update};
use crate::core::metrics::{lower_is_better, metric_keys};
use crate::core::model::ModelSource;
use crate::core::pipeline::{
    fine_tune, stop_summary, would_replace, FineTuneRequest, Validation, RUN_RECORD_FILE,
};
use crate::core::train::{TrainConfig, TrainEvent, TrainOutcome};

/// The metrics shown in the live log and the summary line of the model card.
const HEADLINE: &[&str] = &[
    "cosine_accuracy",
    "cosine_accuracy@1",
    "cosine_mrr@10",
    "cosine_ndcg@10",
    "neg_in_top_5",
];

fn headline(m: &BTreeMap<String, f64>) -> String {
    HEADLINE
        .iter()
        .map(|k| format!("{k} {:.4}", m.get(*k).copied().unwrap_or(f64::NAN)))
        .collect::<Vec<_>>()
        .join("  ")
}

/// `tripletlab finetune`.
pub fn finetune(args: &FinetuneArgs) -> anyhow::Result<()> {
    let data = load_data(&args.data)?;
    super::note_builtin_gemm();
    let cfg = TrainConfig {
        loss: args.loss,
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        warmup_ratio: args.warmup_ratio,
        weight_decay: args.weight_decay,
        max_seq_len: args.max_seq_len,
        eval_max_seq_len: args.eval_max_seq_len,
        eval_steps: args.eval_steps,
        seed: args.seed,
        val_split: args.val_split,
        prompts: PromptChoice::parse(&args.prompts).map_err(anyhow::Error::msg)?,
        matryoshka_dims: match &args.matryoshka_dims {
            Some(s) => s
                .split(',')
                .map(|x| {
                    x.trim().parse::<usize>().map_err(|_| {
                        anyhow::anyhow!("--matryoshka-dims takes positive integers, got `{x}`")
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            None => Vec::new(),
        },
        max_negatives: args.max_negatives,
        mini_batch: args.mini_batch,
        compute: args.compute,
        ..TrainConfig::default()
    };
    if let Some(why) = would_replace(&args.out) {
        if !args.overwrite {
            anyhow::bail!(
                "{why}: choose another --out, or pass --overwrite to replace it (the old folder \
                 is replaced only once the new model is saved)"
            );
        }
    }
    let validation = match &args.val {
        Some(path) => Validation::File(load_data(path)?),
        None => Validation::Split {
            share: cfg.val_split,
        },
    };
    let source = ModelSource::parse(&args.model);
    eprintln!(
        "Fine-tuning {} with {} on {} ({})",
        source.label(),
        cfg.loss.name(),
        args.data.display(),
        match &validation {
            Validation::File(v) => format!("validating on {}", v.path.display()),
            Validation::Split { share } => format!(
                "{:.0} % of the queries held out for validation",
                share * 100.0
            ),
        }
    );
    let request = FineTuneRequest {
        source,
        data: &data,
        validation,
        cfg: cfg.clone(),
    };

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:>11} [{bar:30}] {pos}/{len} ETA {eta} {prefix}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let stderr_is_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let emit = |u: Update<TrainEvent>| match u {
        Update::Progress(p) => {
            if bar.message() != p.stage {
                bar.set_message(p.stage.clone());
                bar.set_length(p.total as u64);
            }
            bar.set_position(p.done as u64);
        }
        Update::Point(TrainEvent::Started {
            total_steps,
            warmup_steps,
            train_triplets,
            val_triplets,
        }) => {
            bar.suspend(|| {
                eprintln!(
                    "{train_triplets} training triplets, {val_triplets} validation triplets; \
                     {total_steps} steps, {warmup_steps} warm-up"
                );
            });
        }
        Update::Point(TrainEvent::Step(s)) => {
            let line = format!(
                "loss {:.4} lr {:.2e} |g| {:.3} {:.1} s/step",
                s.loss, s.lr, s.grad_norm, s.step_secs
            );
            // Without a terminal the bar is hidden: log every tenth step instead.
            if !stderr_is_terminal && s.step % 10 == 0 {
                eprintln!("step {:>5}: {line}", s.step);
            }
            bar.set_prefix(line);
        }
        Update::Point(TrainEvent::Eval(e)) => {
            bar.suspend(|| eprintln!("validation at step {:>4}: {}", e.step, headline(&e.metrics)));
        }
        Update::Warning(w) => bar.suspend(|| eprintln!("warning: {w}")),
    };
    let ctx = JobCtx::new(CancelToken::new(), &emit);
    let mut on_download = |p: crate::core::model::DownloadProgress| {
        bar.set_message(format!("downloading {}", p.file));
        bar.set_length(p.total_bytes as u64);
        bar.set_position(p.done_bytes as u64);
    };
    let trained = fine_tune(&request, &mut on_download, &ctx)?;
    bar.finish_and_clear();
    let outcome = &trained.outcome;
    eprintln!(
        "Training {} ({:.1} s)",
        stop_summary(outcome),
        outcome.seconds
    );
    print_comparison(outcome);
    trained
        .save(&args.out)
        .with_context(|| format!("cannot save the model to {}", args.out.display()))?;
    eprintln!(
        "Saved to {} (its run record: {RUN_RECORD_FILE})",
        args.out.display()
    );

    if let Some(path) = &args.json {
        let log = serde_json::json!({
            "model": request.source.label(),
            "data": args.data.display().to_string(),
            "val": args.val.as_ref().map(|p| p.display().to_string()),
            "config": cfg,
            "train_triplets": outcome.train_triplets,
            "val_triplets": outcome.val_triplets,
            "total_steps": outcome.total_steps,
            "stop": outcome.stop,
            "best_step": outcome.best_step,
            "seconds": outcome.seconds,
            "steps": outcome.steps,
            "evals": outcome.evals,
            "saved_to": args.out.display().to_string(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&log)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("Wrote {}", path.display());
    }
    Ok(())
}

fn print_comparison(outcome: &TrainOutcome) {
    let before = &outcome.zero_shot().metrics;
    let best = &outcome.best().metrics;
    if before.is_empty() {
        return;
    }
    println!(
        "{:<22} {:>10} {:>10} {:>9}",
        "metric (validation)",
        "zero-shot",
        format!("step {}", outcome.best_step),
        "delta"
    );
    for key in metric_keys() {
        let (a, b) = (before[&key], best[&key]);
        let better = if lower_is_better(&key) { b < a } else { b > a };
        let mark = if (b - a).abs() < 1e-12 {
            " "
        } else if better {
            "+"
        } else {
            "-"
        };
        println!("{key:<22} {a:>10.4} {b:>10.4} {:>+9.4} {mark}", b - a);
    }
}
