//! # smelt-evals
//!
//! The evaluation suite: TOML task specs with JSONL data ([`spec`], [`data`]) —
//! `multiple_choice` by loglikelihood with `acc`/`acc_norm`, `generate` with a regex
//! extraction chain and exact match / maj@k / avg@k, `code` with unbiased pass@k under
//! a sandboxed verifier ([`sandbox`]), `perplexity` in bits per byte — importers for
//! BIG-bench task JSON and HumanEval JSONL, a runner with packed batched scoring
//! ([`score`], [`runner`]), results in lm-eval's JSON schema ([`results`]), and the
//! regression gate behind `smelt eval --gate` ([`gate`]).
//!
//! Key decision: numbers follow lm-evaluation-harness' definitions (tokenisation of
//! context/continuation pairs, `acc_norm` by characters, `mean_stderr`, results keys
//! `"acc,none"`), so a smelt results file is comparable with lm-eval's and its
//! per-sample loglikelihoods are checked against transformers by a committed script
//! (`scripts/eval_reference.py`). Generation uses a local KV-cache loop with stop
//! strings ([`generation`]); the batched sampler in `smelt-rollouts` can replace it.
#![deny(missing_docs)]

pub mod builtin;
pub mod data;
pub mod error;
pub mod gate;
pub mod generation;
pub mod hook;
pub mod metrics;
pub mod prompt;
pub mod results;
pub mod runner;
pub mod sandbox;
pub mod score;
pub mod spec;

pub use error::{EvalError, Result};
pub use runner::{run_task, EvalOptions, MetricValue, TaskOutput};
pub use smelt;
pub use smelt_rollouts;
pub use spec::{load_specs, parse_specs, Task, TaskKind, TaskSpec};
