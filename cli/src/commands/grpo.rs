//! `smelt grpo`: run a GRPO recipe.

use anyhow::Context;
use smelt_algorithms::grpo::{run_grpo, GrpoRecipe};

/// Arguments of `smelt grpo`: the recipe and its overrides.
pub type GrpoArgs = super::RecipeArgs;

/// Loads the recipe and runs it; prints a JSON summary as the last line.
pub fn run(args: GrpoArgs) -> anyhow::Result<()> {
    let recipe = GrpoRecipe::load(&args.config, &args.overrides)
        .with_context(|| format!("reading recipe {}", args.config.display()))?;
    let summary = run_grpo(&recipe, &args.config).context("GRPO")?;
    super::print_summary(&summary);
    Ok(())
}
