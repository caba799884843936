//! # smelt-recipes
//!
//! Multi-stage recipes built on every smelt crate: the embedded SmolLM3-style
//! pipeline (pretrain → SFT → DPO → GRPO, evals and a regression gate after each
//! stage) driven from one TOML file.
