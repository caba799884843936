//! cargo run --release -p smelt-recipes --example smollm3_pipeline -- --config examples/recipes/smollm3-tiny.toml
//!
//! The embedded SmolLM3-style pipeline through the library API: pretrain → SFT → DPO →
//! GRPO, each stage starting from the previous stage's checkpoint, held-out evals and
//! the regression gate after every stage, and `runs/<name>/summary.md` at the end.
//! Copy this file to drive your own pipeline; `smelt pipeline` does the same.

use anyhow::Context;
use clap::Parser;
use smelt_recipes::{run_pipeline, PipelineRecipe};
use std::path::PathBuf;

/// Runs a pipeline recipe.
#[derive(Parser)]
struct Args {
    /// The pipeline recipe (TOML).
    #[arg(long, default_value = "examples/recipes/smollm3-tiny.toml")]
    config: PathBuf,
    /// Override a recipe value, e.g. `--set pretrain.train.max_steps=50` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();

    // 1. Read the recipe; every stage is planned and every named file checked here,
    //    so a typo in the last stage fails before the first one trains.
    let recipe = PipelineRecipe::load(&args.config, &args.overrides)
        .with_context(|| format!("reading {}", args.config.display()))?;

    // 2. Run the stages in order. Finished stages (with a `done.json`) are skipped and
    //    an interrupted one resumes from its `latest` checkpoint.
    let summary = run_pipeline(&recipe).context("running the pipeline")?;

    // 3. The stage × metric table (also in `<run_dir>/summary.md` and `summary.json`).
    println!("{}", summary.table());
    println!(
        "wall time {:.0} s; summary: {}",
        summary.wall_s,
        recipe.run_dir.join("summary.md").display()
    );
    Ok(())
}
