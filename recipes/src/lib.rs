//! # smelt-recipes
//!
//! Multi-stage recipes built on every smelt crate: the embedded SmolLM3-style
//! pipeline (pretrain → SFT → DPO → GRPO, evals and a regression gate after each
//! stage) driven from one TOML file.
//!
//! Key decision: the pipeline owns no training code. Each stage's section of the
//! recipe is a fragment of that stage's own recipe (`PretrainRecipe`, `SftRecipe`,
//! `DpoRecipe`, `GrpoRecipe`); the pipeline only fills in the wiring (output folder,
//! the previous stage's checkpoint, the generated data files) and hands the result to
//! the stage's `run_*` function, so a stage behaves exactly as its own command would.
#![deny(missing_docs)]

pub mod pipeline;
pub mod plan;

pub use pipeline::{run_pipeline, PipelineRecipe, Stage, StageRow, Summary};
pub use plan::{RecipeKind, RecipePlan};
