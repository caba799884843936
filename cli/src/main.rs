//! The `smelt` command-line tool.
//!
//! It sits on top of every workspace member (core, pretrain, rollouts, algorithms,
//! evals), in its own crate so no library depends on it and no dependency cycle can
//! form. Each subcommand lives in its own module under `commands/`.

mod commands;

use clap::{Parser, Subcommand};

/// smelt: pretrain, post-train and evaluate language models.
#[derive(Parser, Debug)]
#[command(name = "smelt", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pretrain a model from a recipe (corpus → tokenizer → shards → training), resuming if interrupted.
    Pretrain(commands::pretrain::PretrainArgs),
    /// Generate text from a model (HF folder, hub id or .gguf), streaming tokens to stdout.
    Generate(commands::generate::GenerateArgs),
    /// Convert a checkpoint (GGUF, HF folder or hub id) into an HF folder (f32 safetensors).
    Convert(commands::convert::ConvertArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Pretrain(args) => commands::pretrain::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Convert(args) => commands::convert::run(args),
    }
}
