//! The command line: each subcommand parses its flags and calls into `core`.

mod bench;
mod compare;
mod eval;
mod finetune;
mod grid;
mod mine;
mod progress;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::core::backend::Compute;
use crate::core::data::{load_triplets, Dataset};
use crate::core::encoder::{EncoderOptions, PromptChoice};
use crate::core::model::{ModelSource, DEFAULT_MODEL};
use crate::core::train::LossKind;

/// Evaluate and fine-tune text-embedding models on (query, positive, negative) triplets.
#[derive(Debug, Parser)]
#[command(name = "tripletlab", version, about)]
pub struct Cli {
    /// What to do (no subcommand: open the desktop app).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the desktop app (the default).
    Gui(GuiArgs),
    /// Embed every query, positive and negative of a triplet file into a float32 .npy
    /// (rows: all queries, then all positives, then all negatives, in file order).
    Embed(EmbedArgs),
    /// Embed a triplet file and print its retrieval metrics (sentence-transformers' definitions).
    Eval(EvalArgs),
    /// Fine-tune a model on triplets, validate as it trains, and save the best checkpoint as a
    /// sentence-transformers folder.
    Finetune(FinetuneArgs),
    /// The storage trade-off from one embedding pass: metrics of every dimension × precision,
    /// bytes per vector, index sizes, search time.
    Grid(GridArgs),
    /// Compare two models on the same triplets (by default the rows the fine-tuned one never
    /// trained on): every metric with its 95 % interval, every difference with a paired interval
    /// and p-value.
    Compare(CompareArgs),
    /// Mine hard negatives for a triplet file's queries from its documents and any extra corpus
    /// (sentence-transformers' mine_hard_negatives), written as triplet rows to train on.
    Mine(MineArgs),
    /// Measure embedding throughput, fine-tuning step time, metric time, cached open to first
    /// heatmap, and peak memory.
    Bench(BenchArgs),
    /// Read and validate a triplet file without a model: skipped rows, warnings, counts,
    /// lengths, time and peak memory.
    Check(CheckArgs),
}

/// Says on stderr when the model's products run on the built-in GEMM, and how to get the fast path.
fn note_builtin_gemm() {
    if crate::core::backend::cpu::blas::is_builtin() {
        eprintln!(
            "Note: no system BLAS in use, matrix products run on the built-in GEMM (install \
             OpenBLAS, e.g. `apt-get install libopenblas0-pthread`, for about twice the speed)"
        );
    }
}

/// `tripletlab check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Triplet file (JSON array or JSON lines).
    #[arg(long)]
    pub data: PathBuf,
}

/// `tripletlab bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Triplet file.
    #[arg(long)]
    pub data: PathBuf,
    /// Model folder or hub id.
    #[arg(long)]
    pub model: String,
    /// Texts per batch for embedding.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Tokens per text for embedding.
    #[arg(long, default_value_t = 256)]
    pub max_seq_len: usize,
    /// Timed embedding repetitions.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Embed only the first N texts (queries, positives, negatives interleaved).
    #[arg(long)]
    pub embed_limit: Option<usize>,
    /// Fine-tuning steps to time (0 skips).
    #[arg(long, default_value_t = 5)]
    pub train_steps: usize,
    /// Skip the embedding measurement.
    #[arg(long)]
    pub skip_embed: bool,
    /// Skip the cached-open, metrics and heatmap measurement.
    #[arg(long)]
    pub skip_cached: bool,
    /// Write the figures as JSON here (else to stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Arithmetic of the matrix products: `f32` (exact, default), `bf16` (AVX512-BF16: rounded
    /// inputs, f32 sums, faster) or `auto` (the fastest this CPU runs).
    #[arg(long, default_value = "f32", value_parser = Compute::parse)]
    pub compute: Compute,
}

/// Model and encoding options shared by every command that embeds.
#[derive(Debug, Args, Clone)]
pub struct EncoderArgs {
    /// Hub id (e.g. intfloat/e5-small-v2) or a local model folder.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Tokens per text, special tokens included [default: the folder's max_seq_length].
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Prompts: `auto` (the folder's, or e5's "query: "/"passage: "), `none`, or `QUERY,DOCUMENT`.
    #[arg(long, default_value = "auto")]
    pub prompts: String,
    /// Keep only the first N dimensions (Matryoshka), after the Normalize module, as
    /// sentence-transformers' truncate_dim.
    #[arg(long)]
    pub truncate_dim: Option<usize>,
    /// Arithmetic of the matrix products: `f32` (exact, default), `bf16` (AVX512-BF16: rounded
    /// inputs, f32 sums, faster) or `auto` (the fastest this CPU runs).
    #[arg(long, default_value = "f32", value_parser = Compute::parse)]
    pub compute: Compute,
    /// Neither read nor write the embedding cache.
    #[arg(long)]
    pub no_cache: bool,
}

impl EncoderArgs {
    fn options(&self) -> anyhow::Result<EncoderOptions> {
        Ok(EncoderOptions {
            max_seq_len: self.max_seq_len,
            batch_size: self.batch_size,
            prompts: PromptChoice::parse(&self.prompts).map_err(anyhow::Error::msg)?,
            truncate_dim: self.truncate_dim,
            compute: self.compute,
        })
    }

    fn source(&self) -> ModelSource {
        ModelSource::parse(&self.model)
    }
}

/// `tripletlab embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Triplet file (JSON array or JSON lines).
    #[arg(long)]
    pub data: PathBuf,
    /// Output .npy file.
    #[arg(long)]
    pub out: PathBuf,
    /// Model and encoding options.
    #[command(flatten)]
    pub encoder: EncoderArgs,
}

/// `tripletlab eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Triplet file (JSON array or JSON lines).
    #[arg(long)]
    pub data: PathBuf,
    /// Storage precision of the vectors: float32, int8, uint8, binary or ubinary
    /// (sentence-transformers' quantize_embeddings; int8/uint8 calibrated on the documents).
    #[arg(long, default_value = "float32")]
    pub precision: String,
    /// Rescore the top 100·M candidates of a quantised search with the float query against the
    /// dequantised documents (sentence-transformers' rescore_multiplier).
    #[arg(long)]
    pub rescore: Option<usize>,
    /// Also write the full result (metrics, per-triplet rows, settings) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Model and encoding options.
    #[command(flatten)]
    pub encoder: EncoderArgs,
}

/// `tripletlab grid`.
#[derive(Debug, Args)]
pub struct GridArgs {
    /// Triplet file (JSON array or JSON lines).
    #[arg(long)]
    pub data: PathBuf,
    /// A model (hub id or folder); give it twice (e.g. base, then fine-tuned) for two grids.
    #[arg(long = "model", required = true)]
    pub models: Vec<String>,
    /// Dimensions (comma-separated; wider than the model's are left out).
    #[arg(long, default_value = "384,256,128,64,32")]
    pub dims: String,
    /// Precisions (comma-separated): float32, int8, uint8, binary, ubinary.
    #[arg(long, default_value = "float32,int8,binary")]
    pub precisions: String,
    /// Rescore quantised cells (see `eval --rescore`).
    #[arg(long)]
    pub rescore: Option<usize>,
    /// Write every cell as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Tokens per text [default: each folder's max_seq_length].
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Prompts: `auto`, `none`, or `QUERY,DOCUMENT`.
    #[arg(long, default_value = "auto")]
    pub prompts: String,
    /// Arithmetic of the matrix products: `f32` (exact, default), `bf16` (AVX512-BF16: rounded
    /// inputs, f32 sums, faster) or `auto` (the fastest this CPU runs).
    #[arg(long, default_value = "f32", value_parser = Compute::parse)]
    pub compute: Compute,
    /// Neither read nor write the embedding cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// `tripletlab mine`.
#[derive(Debug, Args)]
pub struct MineArgs {
    /// Triplet file: its queries are the anchors, its positives theirs, its distinct documents
    /// the corpus.
    #[arg(long)]
    pub data: PathBuf,
    /// More corpus documents: a triplet file (its distinct positives and negatives) or a .txt
    /// file (one document per line); may be given several times.
    #[arg(long)]
    pub corpus: Vec<PathBuf>,
    /// Output: JSON lines of {query, pos, negative}, one per mined negative (or n-tuples).
    #[arg(long)]
    pub out: PathBuf,
    /// Row layout: `triplet` (one row per negative) or `n-tuple` ({query, pos, negative_1, …}).
    #[arg(long, default_value = "triplet")]
    pub format: String,
    /// Skip this many of the best candidates (after filtering).
    #[arg(long, default_value_t = 0)]
    pub range_min: usize,
    /// Consider only this many candidates (after filtering) [default: sentence-transformers'].
    #[arg(long)]
    pub range_max: Option<usize>,
    /// Drop candidates whose score + this exceeds the positive's score.
    #[arg(long)]
    pub absolute_margin: Option<f64>,
    /// Drop candidates scoring above positive × (1 − this) (NV-Retriever's relative margin;
    /// 0.05 is a good start).
    #[arg(long)]
    pub relative_margin: Option<f64>,
    /// Drop candidates scoring below this.
    #[arg(long)]
    pub min_score: Option<f64>,
    /// Drop candidates scoring above this.
    #[arg(long)]
    pub max_score: Option<f64>,
    /// Negatives per query.
    #[arg(long, default_value_t = 3)]
    pub num_negatives: usize,
    /// `top` (the best candidates) or `random` (a seeded choice among them).
    #[arg(long, default_value = "top")]
    pub sampling: String,
    /// Seed of random sampling.
    #[arg(long, default_value_t = 12)]
    pub seed: u64,
    /// Also write the settings, counts and every query's negatives (scores, ranks, margins) as
    /// JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Model and encoding options.
    #[command(flatten)]
    pub encoder: EncoderArgs,
}

/// `tripletlab compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Triplet file (JSON array or JSON lines).
    #[arg(long)]
    pub data: PathBuf,
    /// A model (hub id or folder), given twice: A (e.g. the base model), then B (e.g. the
    /// fine-tuned folder).
    #[arg(long = "model", required = true)]
    pub models: Vec<String>,
    /// Triplets to measure: held-out, training or all [default: held-out when a model's run
    /// record matches the file, else all].
    #[arg(long)]
    pub subset: Option<String>,
    /// Write metrics, intervals, deltas and p-values as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a report here: self-contained HTML, or Markdown when the name ends in `.md`.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write one row per measured triplet (texts, both models' scores, flip class) as CSV here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Bootstrap resamples (and permutations) behind the intervals and p-values.
    #[arg(long, default_value_t = crate::core::metrics::uncertainty::DEFAULT_RESAMPLES)]
    pub resamples: usize,
    /// Seed of the resamples.
    #[arg(long, default_value_t = crate::core::metrics::uncertainty::DEFAULT_SEED)]
    pub seed: u64,
    /// Tokens per text [default: each folder's max_seq_length].
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Prompts: `auto`, `none`, or `QUERY,DOCUMENT`.
    #[arg(long, default_value = "auto")]
    pub prompts: String,
    /// Arithmetic of the matrix products: `f32` (exact, default), `bf16` (AVX512-BF16: rounded
    /// inputs, f32 sums, faster) or `auto` (the fastest this CPU runs).
    #[arg(long, default_value = "f32", value_parser = Compute::parse)]
    pub compute: Compute,
    /// Neither read nor write the embedding cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// `tripletlab finetune`.
#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// Training triplets (JSON array or JSON lines).
    #[arg(long)]
    pub data: PathBuf,
    /// Hub id or local folder of the model to start from.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Folder to save the fine-tuned model to (sentence-transformers layout); an existing
    /// non-empty folder is refused unless --overwrite.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists (atomically, once the new model is saved).
    #[arg(long)]
    pub overwrite: bool,
    /// Loss: mnrl (MultipleNegativesRankingLoss), contrastive (the notebook's), triplet.
    #[arg(long, value_parser = parse_loss, default_value = "mnrl")]
    pub loss: LossKind,
    /// Passes over the training data.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Examples per step: triplets (mnrl, triplet) or pairs (contrastive).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    /// Share of steps spent warming the learning rate up.
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Tokens per text in training.
    #[arg(long, default_value_t = 128)]
    pub max_seq_len: usize,
    /// Tokens per text in validation [default: the folder's max_seq_length].
    #[arg(long)]
    pub eval_max_seq_len: Option<usize>,
    /// Share of distinct queries held out for validation (ignored with --val).
    #[arg(long, default_value_t = 0.2, conflicts_with = "val")]
    pub val_split: f64,
    /// A separate validation file.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Validate every N steps [default: about five times per run; 0: only before and after].
    #[arg(long)]
    pub eval_steps: Option<usize>,
    /// Seed of shuffling, the validation split and dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Prompts: `auto`, `none`, or `QUERY,DOCUMENT`.
    #[arg(long, default_value = "auto")]
    pub prompts: String,
    /// Arithmetic of the matrix products: `f32` (default), `bf16` (mixed precision on AVX512-BF16:
    /// f32 master weights and optimizer state, bf16 inputs to every matrix product) or `auto`.
    #[arg(long, default_value = "f32", value_parser = Compute::parse)]
    pub compute: Compute,
    /// Write the whole training log (steps, validations, settings) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Train with sentence-transformers' MatryoshkaLoss over these dimensions (comma-separated,
    /// e.g. 384,256,128,64,32), so truncated vectors keep their quality.
    #[arg(long)]
    pub matryoshka_dims: Option<String>,
    /// Negatives per mnrl example: rows sharing a query and positive (as `tripletlab mine`
    /// writes them, or n-tuple rows) are joined into one example with up to N negatives, each a
    /// candidate for every anchor of the batch.
    #[arg(long, default_value_t = 1)]
    pub max_negatives: usize,
    /// GradCache (sentence-transformers' CachedMultipleNegativesRankingLoss): run the batch in
    /// mini-batches of N texts, so --batch-size 64–256 fits in memory; same gradients, about a
    /// third more compute.
    #[arg(long)]
    pub mini_batch: Option<usize>,
}

fn parse_loss(s: &str) -> Result<LossKind, String> {
    match s {
        "mnrl" => Ok(LossKind::Mnrl),
        "contrastive" => Ok(LossKind::Contrastive),
        "triplet" => Ok(LossKind::Triplet),
        _ => Err(format!(
            "unknown loss `{s}`: use mnrl, contrastive or triplet"
        )),
    }
}

/// `tripletlab gui`.
#[derive(Debug, Args, Default)]
pub struct GuiArgs {
    /// Triplet file to open [default: the bundled sample].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Model (hub id or folder) [default: the last one used, else intfloat/e5-small-v2].
    #[arg(long)]
    pub model: Option<String>,
    /// Embed as soon as the file is loaded.
    #[arg(long)]
    pub embed: bool,
    /// Start fine-tuning once the first embedding is done (implies --embed).
    #[arg(long)]
    pub fine_tune: bool,
    /// Mine hard negatives once the file is loaded (the Mining panel's settings).
    #[arg(long)]
    pub mine: bool,
    /// Compare with this fine-tuned model folder once the first embedding is done (implies --embed).
    #[arg(long)]
    pub compare_with: Option<PathBuf>,
    /// Panel to show: data, metrics, heatmap, fine-tune, compare, storage, inspect.
    #[arg(long, value_parser = parse_tab)]
    pub tab: Option<crate::gui::Tab>,
    /// Triplet to select in the inspector.
    #[arg(long)]
    pub inspect: Option<usize>,
    /// Folder to save fine-tuned models to.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Window size in points, WIDTHxHEIGHT [default: 1400x900].
    #[arg(long, value_parser = parse_size)]
    pub size: Option<[f32; 2]>,
}

fn parse_size(s: &str) -> Result<[f32; 2], String> {
    let bad = || format!("`{s}` is not a size like 1600x1000");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (f32, f32) = (
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    );
    if !(320.0..=8192.0).contains(&w) || !(240.0..=8192.0).contains(&h) {
        return Err(format!("`{s}`: a window from 320x240 to 8192x8192"));
    }
    Ok([w, h])
}

fn parse_tab(s: &str) -> Result<crate::gui::Tab, String> {
    crate::gui::Tab::ALL
        .into_iter()
        .find(|t| t.label().eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("unknown panel `{s}`"))
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Gui(GuiArgs::default())) {
        Command::Gui(args) => crate::gui::run(crate::gui::AppOptions {
            data: args.data,
            model: args.model,
            embed_on_start: args.embed || args.fine_tune || args.compare_with.is_some(),
            fine_tune_on_start: args.fine_tune,
            compare_with: args.compare_with,
            mine_on_start: args.mine,
            tab: args.tab,
            inspect: args.inspect,
            fine_tune_out: args.out,
            recovery_dir: None,
            window_size: args.size,
        }),
        Command::Embed(args) => eval::embed(&args),
        Command::Eval(args) => eval::eval(&args),
        Command::Finetune(args) => finetune::finetune(&args),
        Command::Compare(args) => compare::compare(&args),
        Command::Grid(args) => grid::grid(&args),
        Command::Mine(args) => mine::mine(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Check(args) => check(&args),
    }
}

/// Loads a triplet file and prints its validation report to stderr.
/// `tripletlab check`.
fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let data = load_data(&args.data)?;
    let secs = start.elapsed().as_secs_f64();
    let st = crate::core::data::DataStats::of(&data);
    println!(
        "{} triplets, {} distinct queries, {} distinct documents",
        st.triplets, st.distinct_queries, st.distinct_documents
    );
    for (name, l) in [
        ("query", &st.query_words),
        ("pos", &st.pos_words),
        ("negative", &st.negative_words),
    ] {
        println!(
            "{name:>8} words: min {}, median {}, p95 {}, max {}",
            l.min, l.median, l.p95, l.max
        );
    }
    let size = std::fs::metadata(&args.data).map(|m| m.len()).unwrap_or(0);
    println!(
        "read {:.1} MB in {secs:.2} s; peak memory {}",
        size as f64 / 1e6,
        bench::peak_rss_mib()
            .map(|m| format!("{m:.0} MiB"))
            .unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}

fn load_data(path: &std::path::Path) -> anyhow::Result<Dataset> {
    let data = load_triplets(path).with_context(|| "cannot load the triplet file")?;
    let r = &data.report;
    eprintln!(
        "Loaded {} triplets from {} ({:?}, keys {}){}",
        data.len(),
        path.display(),
        data.format,
        data.key_set,
        if r.skipped.is_empty() {
            String::new()
        } else {
            format!("; skipped {} rows", r.skipped.len())
        }
    );
    const SHOWN: usize = 10;
    for s in r.skipped.iter().take(SHOWN) {
        eprintln!("  skipped {s}");
    }
    for w in r.warnings.iter().take(SHOWN) {
        eprintln!("  warning: {w}");
    }
    let hidden = r.skipped.len().saturating_sub(SHOWN) + r.warnings.len().saturating_sub(SHOWN);
    if hidden > 0 {
        eprintln!("  ... and {hidden} more (see --json)");
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn window_sizes_are_parsed_and_bounded() {
        assert_eq!(parse_size("1600x1000"), Ok([1600.0, 1000.0]));
        assert_eq!(parse_size("800X500"), Ok([800.0, 500.0]));
        for bad in ["big", "800", "800x", "100x100", "9000x500", "-800x500"] {
            assert!(parse_size(bad).is_err(), "{bad} was accepted");
        }
    }
}
