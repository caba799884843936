//! `smelt sft`: run a supervised fine-tuning recipe (see `smelt_algorithms::recipes`).
//!
//! The recipe's `[train]` starts from TRL's defaults (lr 2e-5, AdamW β 0.9/0.999, no
//! weight decay, linear decay); a killed run restarted with the same command resumes.

use anyhow::Context;
use smelt_algorithms::recipes::{run_sft, SftRecipe};

/// Arguments of `smelt sft`: the recipe and its overrides.
pub type SftArgs = super::RecipeArgs;

/// Loads the recipe and runs it; prints a JSON summary as the last line.
pub fn run(args: SftArgs) -> anyhow::Result<()> {
    let recipe = SftRecipe::load(&args.config, &args.overrides)
        .with_context(|| format!("reading recipe {}", args.config.display()))?;
    let summary = run_sft(&recipe).context("supervised fine-tuning")?;
    super::print_summary(&summary);
    Ok(())
}
