//! The multi-stage pipeline: recipe → generated data → stages in order → evals and
//! gate after each → `summary.md` / `summary.json`.
//!
//! Key decision: a stage is *done* when its folder holds `done.json` (written
//! atomically after its evals passed the gate); a done stage is skipped on a rerun,
//! and an unfinished one is simply run again with the same output folder, where the
//! training loop resumes from `latest` by itself. So "kill it and run the same
//! command" is the whole resume story, with no pipeline-level state besides markers.

pub mod compat;
pub mod data;
pub mod evals;
pub mod recipe;
pub mod run;
pub mod summary;

pub use recipe::{ArithmeticData, EvalSettings, GateMode, PipelineRecipe, Stage};
pub use run::run_pipeline;
pub use summary::{StageRow, Summary};
