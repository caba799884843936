//! `smelt pipeline`: run a multi-stage pipeline recipe (see `smelt_recipes::pipeline`).
//!
//! Stages run in order, each from the previous stage's checkpoint, with evals and the
//! regression gate after each; a killed run restarted with the same command skips
//! finished stages and resumes the interrupted one. `--plan` prints what would run.

use anyhow::Context;
use smelt_recipes::{run_pipeline, PipelineRecipe, RecipePlan};
use std::path::PathBuf;

/// Arguments of `smelt pipeline`.
#[derive(clap::Args, Debug)]
pub struct PipelineArgs {
    /// The pipeline recipe (TOML), e.g. `examples/recipes/smollm3-tiny.toml`.
    #[arg(long)]
    pub config: PathBuf,
    /// Override a recipe value: `--set sft.train.max_steps=20` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Print the plan (every stage's model, parameter count, data, steps) and exit
    /// without training or writing anything.
    #[arg(long)]
    pub plan: bool,
}

/// Loads the recipe and runs it (or prints its plan); prints the summary table once
/// and, last, the summary as one JSON line.
pub fn run(args: PipelineArgs) -> anyhow::Result<()> {
    let recipe = PipelineRecipe::load(&args.config, &args.overrides)
        .with_context(|| format!("reading recipe {}", args.config.display()))?;
    if args.plan {
        print!("{}", RecipePlan::of_pipeline(&recipe)?.render());
        return Ok(());
    }
    let summary = run_pipeline(&recipe).context("pipeline")?;
    println!("{}", summary.table());
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
