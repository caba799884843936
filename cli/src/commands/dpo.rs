//! `smelt dpo`: run a DPO recipe (see `smelt_algorithms::recipes`).
//!
//! The recipe's `[train]` starts from TRL's defaults (lr 1e-6, AdamW β 0.9/0.999, no
//! weight decay, linear decay); the reference is a frozen copy of the policy unless
//! `ref_model` names another checkpoint. A killed run restarted with the same command resumes.

use anyhow::Context;
use smelt_algorithms::recipes::{run_dpo, DpoRecipe};
use std::path::PathBuf;

/// Arguments of `smelt dpo`.
#[derive(clap::Args, Debug)]
pub struct DpoArgs {
    /// The recipe (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a recipe value: `--set dpo.beta=0.05` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// Loads the recipe and runs it; prints a JSON summary as the last line.
pub fn run(args: DpoArgs) -> anyhow::Result<()> {
    let recipe = DpoRecipe::load(&args.config, &args.overrides)
        .with_context(|| format!("reading recipe {}", args.config.display()))?;
    let summary = run_dpo(&recipe).context("DPO training")?;
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
