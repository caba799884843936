//! `smelt grpo`: run a GRPO recipe.

use anyhow::Context;
use smelt_algorithms::grpo::{run_grpo, GrpoRecipe};
use std::path::PathBuf;

/// Arguments of `smelt grpo`.
#[derive(clap::Args, Debug)]
pub struct GrpoArgs {
    /// The recipe (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a recipe value: `--set grpo.num_generations=8` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// Loads the recipe and runs it; prints a JSON summary as the last line.
pub fn run(args: GrpoArgs) -> anyhow::Result<()> {
    let recipe = GrpoRecipe::load(&args.config, &args.overrides)
        .with_context(|| format!("reading recipe {}", args.config.display()))?;
    let summary = run_grpo(&recipe, &args.config).context("GRPO")?;
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
