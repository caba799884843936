//! `smelt sft`: run a supervised fine-tuning recipe (see `smelt_algorithms::recipes`).
//!
//! The recipe's `[train]` starts from TRL's defaults (lr 2e-5, AdamW β 0.9/0.999, no
//! weight decay, linear decay); a killed run restarted with the same command resumes.

use anyhow::Context;
use smelt_algorithms::recipes::{run_sft, SftRecipe};
use std::path::PathBuf;

/// Arguments of `smelt sft`.
#[derive(clap::Args, Debug)]
pub struct SftArgs {
    /// The recipe (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a recipe value: `--set train.max_steps=100` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// Loads the recipe and runs it; prints a JSON summary as the last line.
pub fn run(args: SftArgs) -> anyhow::Result<()> {
    let recipe = SftRecipe::load(&args.config, &args.overrides)
        .with_context(|| format!("reading recipe {}", args.config.display()))?;
    let summary = run_sft(&recipe).context("supervised fine-tuning")?;
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
