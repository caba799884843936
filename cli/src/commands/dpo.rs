//! `smelt dpo`: run a DPO recipe (see `smelt_algorithms::recipes`).
//!
//! The recipe's `[train]` starts from TRL's defaults (lr 1e-6, AdamW β 0.9/0.999, no
//! weight decay, linear decay); the reference is a frozen copy of the policy unless
//! `ref_model` names another checkpoint. A killed run restarted with the same command resumes.

use anyhow::Context;
use smelt_algorithms::recipes::{run_dpo, DpoRecipe};

/// Arguments of `smelt dpo`: the recipe and its overrides.
pub type DpoArgs = super::RecipeArgs;

/// Loads the recipe and runs it; prints a JSON summary as the last line.
pub fn run(args: DpoArgs) -> anyhow::Result<()> {
    let recipe = DpoRecipe::load(&args.config, &args.overrides)
        .with_context(|| format!("reading recipe {}", args.config.display()))?;
    let summary = run_dpo(&recipe).context("DPO training")?;
    super::print_summary(&summary);
    Ok(())
}
