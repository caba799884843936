//! `smelt pretrain`: run a pretraining recipe.

use anyhow::Context;
use smelt_pretrain::recipe::PretrainRecipe;
use smelt_pretrain::run::run_pretrain;

/// Arguments of `smelt pretrain`: the recipe and its overrides.
pub type PretrainArgs = super::RecipeArgs;

/// Loads the recipe and runs it; prints a JSON summary as the last line.
pub fn run(args: PretrainArgs) -> anyhow::Result<()> {
    let recipe = PretrainRecipe::load(&args.config, &args.overrides)
        .with_context(|| format!("reading recipe {}", args.config.display()))?;
    let summary = run_pretrain(&recipe).context("pretraining")?;
    super::print_summary(&summary);
    Ok(())
}
