//! The command line: each subcommand parses its flags and calls into `core`.

mod eval;
mod progress;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::core::data::{load_triplets, Dataset};
use crate::core::encoder::{EncoderOptions, PromptChoice};
use crate::core::model::{ModelSource, DEFAULT_MODEL};

/// Evaluate and fine-tune text-embedding models on (query, positive, negative) triplets.
#[derive(Debug, Parser)]
#[command(name = "tripletlab", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Embed every query, positive and negative of a triplet file into a float32 .npy
    /// (rows: all queries, then all positives, then all negatives, in file order).
    Embed(EmbedArgs),
    /// Embed a triplet file and print its retrieval metrics (sentence-transformers' definitions).
    Eval(EvalArgs),
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
    /// Keep only the first N dimensions (Matryoshka), then re-normalise.
    #[arg(long)]
    pub truncate_dim: Option<usize>,
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
    /// Also write the full result (metrics, per-triplet rows, settings) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Model and encoding options.
    #[command(flatten)]
    pub encoder: EncoderArgs,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Embed(args) => eval::embed(&args),
        Command::Eval(args) => eval::eval(&args),
    }
}

/// Loads a triplet file and prints its validation report to stderr.
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
