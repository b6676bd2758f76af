//! `tripletlab finetune`: train, validate, save the best checkpoint as a sentence-transformers folder.

use std::collections::BTreeMap;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::{load_data, FinetuneArgs};
use crate::core::encoder::{PromptChoice, Prompts};
use crate::core::jobs::{CancelToken, JobCtx, Update};
use crate::core::metrics::{lower_is_better, metric_keys};
use crate::core::model::save::{save_model_folder, SaveSettings};
use crate::core::model::{resolve_source, Checkpoint, ModelSource};
use crate::core::train::{
    split_by_query, train, StopReason, TrainConfig, TrainEvent, TrainOutcome, BEST_METRIC,
};

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
        ..TrainConfig::default()
    };
    let (train_set, val_set) = match &args.val {
        Some(path) => (data.triplets.clone(), load_data(path)?.triplets),
        None => split_by_query(&data.triplets, cfg.val_split, cfg.seed),
    };
    let source = ModelSource::parse(&args.model);
    let folder = resolve_source(&source, &mut |_| {})
        .with_context(|| format!("cannot load model `{}`", source.label()))?;
    let checkpoint = Checkpoint::read(&folder)
        .with_context(|| format!("cannot load model `{}`", source.label()))?;
    eprintln!(
        "Fine-tuning {} with {} on {} triplets, validating on {} ({})",
        source.label(),
        cfg.loss.name(),
        train_set.len(),
        val_set.len(),
        if args.val.is_some() {
            "validation file".to_string()
        } else {
            format!("{:.0} % of the queries held out", cfg.val_split * 100.0)
        }
    );

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
            ..
        }) => {
            bar.suspend(|| eprintln!("{total_steps} steps, {warmup_steps} warm-up"));
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
    let outcome = train(&folder, &checkpoint, &train_set, &val_set, &cfg, &ctx)?;
    bar.finish_and_clear();
    match &outcome.stop {
        StopReason::Completed => eprintln!("Training completed: {} steps in {:.1} s", outcome.steps.len(), outcome.seconds),
        StopReason::Cancelled { after_step } => eprintln!("Training cancelled after step {after_step}"),
        StopReason::NonFiniteLoss { step } => eprintln!(
            "warning: the loss at step {step} was not finite (NaN or infinite); training stopped and its update was not applied"
        ),
    }
    print_comparison(&outcome);

    let prompts = Prompts::choose(&cfg.prompts, &folder);
    let max_seq_length = cfg
        .eval_max_seq_len
        .or(folder.sentence.max_seq_length)
        .unwrap_or(cfg.max_seq_len);
    let settings = SaveSettings {
        max_seq_length,
        prompts,
        model_card: model_card(&source.label(), args, &cfg, &outcome),
    };
    save_model_folder(
        &args.out,
        &folder,
        &checkpoint,
        &outcome.best_weights,
        &settings,
        &mut |_| {},
    )
    .with_context(|| format!("cannot save the model to {}", args.out.display()))?;
    eprintln!(
        "Saved the best checkpoint (step {}) to {}",
        outcome.best_step,
        args.out.display()
    );

    if let Some(path) = &args.json {
        let log = serde_json::json!({
            "model": source.label(),
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

fn model_card(
    base: &str,
    args: &super::FinetuneArgs,
    cfg: &TrainConfig,
    outcome: &TrainOutcome,
) -> String {
    let mut s = String::new();
    s.push_str(&format!("---\nbase_model: {base}\nlibrary_name: sentence-transformers\ntags:\n- sentence-transformers\n- sentence-similarity\n- tripletlab\n---\n\n"));
    s.push_str(&format!(
        "# Fine-tuned {base}\n\nTrained with tripletlab {} on `{}`.\n\n",
        env!("CARGO_PKG_VERSION"),
        args.data.display()
    ));
    s.push_str("## Training\n\n");
    s.push_str(&format!(
        "- loss: `{}`\n- epochs: {}, batch size: {}, learning rate: {}, warm-up ratio: {}, weight decay: {}\n- max grad norm: {}, max sequence length: {}, seed: {}\n- training triplets: {}, validation triplets: {} ({})\n- steps: {} of {} ({:?}), {:.1} s\n- saved checkpoint: step {} (best validation {BEST_METRIC})\n\n",
        cfg.loss.name(), cfg.epochs, cfg.batch_size, cfg.lr, cfg.warmup_ratio, cfg.weight_decay,
        cfg.max_grad_norm, cfg.max_seq_len, cfg.seed, outcome.train_triplets, outcome.val_triplets,
        args.val.as_ref().map(|p| format!("file `{}`", p.display())).unwrap_or_else(|| format!("{:.0} % of the queries held out", cfg.val_split * 100.0)),
        outcome.steps.len(), outcome.total_steps, outcome.stop, outcome.seconds, outcome.best_step,
    ));
    s.push_str("## Validation\n\n| metric | zero-shot | saved |\n| --- | ---: | ---: |\n");
    let (before, best) = (&outcome.zero_shot().metrics, &outcome.best().metrics);
    for key in metric_keys() {
        if let (Some(a), Some(b)) = (before.get(&key), best.get(&key)) {
            s.push_str(&format!("| `{key}` | {a:.4} | {b:.4} |\n"));
        }
    }
    s.push_str(
        "\n## Training log\n\n| step | loss | lr | grad norm |\n| ---: | ---: | ---: | ---: |\n",
    );
    for p in &outcome.steps {
        s.push_str(&format!(
            "| {} | {:.4} | {:.3e} | {:.3} |\n",
            p.step, p.loss, p.lr, p.grad_norm
        ));
    }
    s.push_str("\n## Usage\n\n```python\nfrom sentence_transformers import SentenceTransformer\nmodel = SentenceTransformer(\"path/to/this/folder\")\n```\n");
    s
}
