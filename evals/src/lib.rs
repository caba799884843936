//! # smelt-evals
//!
//! The evaluation suite: TOML task specs with JSONL data (`multiple_choice` by
//! loglikelihood with `acc`/`acc_norm`, `generate` with regex extraction and exact
//! match, `code` with pass@k under a sandboxed verifier, `perplexity` in bits per
//! byte), importers for BIG-bench and HumanEval, a results JSON with value and stderr
//! per metric, and `smelt eval --gate`, which fails a build when a checkpoint
//! regresses significantly against a baseline.
//!
//! Today it re-exports its dependencies so downstream code can already depend on it.
pub use smelt;
pub use smelt_rollouts;
