//! One module per `smelt` subcommand, and what the recipe-driven ones share.

use smelt::train::TrainSummary;
use std::path::PathBuf;

pub mod bench;
mod bench_posttrain;
pub mod convert;
pub mod dpo;
pub mod eval;
pub mod generate;
pub mod grpo;
pub mod launch;
pub mod pipeline;
pub mod pretrain;
pub mod sft;

/// `--config` and `--set` of every recipe-driven command (`pretrain`, `sft`, `dpo`, `grpo`).
#[derive(clap::Args, Debug)]
pub struct RecipeArgs {
    /// The recipe (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a recipe value: `--set train.max_steps=100` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Print the plan (model config, parameter count, data sources, steps) and exit
    /// without training or reading data.
    #[arg(long)]
    pub plan: bool,
}

/// `--plan`: prints the plan of the recipe in `args` read as `kind`.
pub fn print_plan(args: &RecipeArgs, kind: smelt_recipes::RecipeKind) -> anyhow::Result<()> {
    use anyhow::Context;
    let plan = smelt_recipes::RecipePlan::load(&args.config, kind, &args.overrides)
        .with_context(|| format!("planning recipe {}", args.config.display()))?;
    print!("{}", plan.render());
    Ok(())
}

/// Prints a training run's summary as one JSON line (the last line of the output).
pub fn print_summary(summary: &TrainSummary) {
    println!(
        "{}",
        serde_json::json!({
            "step": summary.step, "finished": summary.finished, "last_loss": summary.last_loss,
            "rollbacks": summary.rollbacks, "checkpoint": summary.checkpoint,
            "metrics": summary.metrics_path, "plots": summary.plots,
        })
    );
}
