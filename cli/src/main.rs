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
    /// Supervised fine-tuning from a recipe (TRL SFTTrainer semantics), resuming if interrupted.
    Sft(commands::sft::SftArgs),
    /// DPO (and its loss family) from a recipe (TRL DPOTrainer semantics), resuming if interrupted.
    Dpo(commands::dpo::DpoArgs),
    /// GRPO with the batched sampler, rewards and (optionally) asynchronous rollouts, from a recipe.
    Grpo(commands::grpo::GrpoArgs),
    /// Generate text from a model (HF folder, hub id or .gguf), streaming tokens to stdout.
    Generate(commands::generate::GenerateArgs),
    /// Convert a checkpoint (GGUF, HF folder or hub id) into an HF folder (f32 safetensors).
    Convert(commands::convert::ConvertArgs),
    /// Evaluate a checkpoint on eval tasks; with `--gate`, exit 1 on a regression against a baseline.
    Eval(commands::eval::EvalArgs),
    /// Benchmark a workload of `shared/bench` (train-step, generate) and print its JSON line.
    Bench(commands::bench::BenchArgs),
    /// Run a multi-stage pipeline recipe (pretrain → SFT → DPO → GRPO with evals and a gate after each).
    Pipeline(commands::pipeline::PipelineArgs),
    /// Start N local ranks of a data-parallel job (torchrun's variables), one GPU each with --gpus-per-node.
    Launch(commands::launch::LaunchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Pretrain(args) if args.plan => {
            commands::print_plan(&args, smelt_recipes::RecipeKind::Pretrain)
        }
        Command::Pretrain(args) => commands::pretrain::run(args),
        Command::Sft(args) if args.plan => {
            commands::print_plan(&args, smelt_recipes::RecipeKind::Sft)
        }
        Command::Sft(args) => commands::sft::run(args),
        Command::Dpo(args) if args.plan => {
            commands::print_plan(&args, smelt_recipes::RecipeKind::Dpo)
        }
        Command::Dpo(args) => commands::dpo::run(args),
        Command::Grpo(args) if args.plan => {
            commands::print_plan(&args, smelt_recipes::RecipeKind::Grpo)
        }
        Command::Grpo(args) => commands::grpo::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Pipeline(args) => commands::pipeline::run(args),
        Command::Launch(args) => commands::launch::run(args),
    }
}
