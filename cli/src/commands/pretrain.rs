//! `smelt pretrain`: run a pretraining recipe.

use anyhow::Context;
use smelt_pretrain::recipe::PretrainRecipe;
use smelt_pretrain::run::run_pretrain;
use std::path::PathBuf;

/// Arguments of `smelt pretrain`.
#[derive(clap::Args, Debug)]
pub struct PretrainArgs {
    /// The recipe (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a recipe value: `--set train.max_steps=100` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// Loads the recipe and runs it; prints a JSON summary as the last line.
pub fn run(args: PretrainArgs) -> anyhow::Result<()> {
    let recipe = PretrainRecipe::load(&args.config, &args.overrides)
        .with_context(|| format!("reading recipe {}", args.config.display()))?;
    let summary = run_pretrain(&recipe).context("pretraining")?;
    println!(
        "{}",
        serde_json::json!({
            "step": summary.step, "finished": summary.finished, "last_loss": summary.last_loss,
            "rollbacks": summary.rollbacks, "checkpoint": summary.checkpoint,
            "metrics": summary.metrics_path, "plots": summary.plots,
        })
    );
    Ok(())
}
