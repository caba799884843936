//! `smelt pipeline`: run a multi-stage pipeline recipe (see `smelt_recipes::pipeline`).
//!
//! Stages run in order, each from the previous stage's checkpoint, with evals and the
//! regression gate after each; a killed run restarted with the same command skips
//! finished stages and resumes the interrupted one.

use anyhow::Context;
use smelt_recipes::{run_pipeline, PipelineRecipe};
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
}

/// Loads the recipe and runs it; prints the summary table and, last, its JSON.
pub fn run(args: PipelineArgs) -> anyhow::Result<()> {
    let recipe = PipelineRecipe::load(&args.config, &args.overrides)
        .with_context(|| format!("reading recipe {}", args.config.display()))?;
    let summary = run_pipeline(&recipe).context("pipeline")?;
    println!("{}", summary.table());
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
