//! # smelt-algorithms
//!
//! Post-training algorithms, one file each, every one an implementation of
//! `smelt::train::Algorithm` driven by the single training loop in the core:
//! `sft.rs` (assistant-only / completion-only loss, packing with doc masking),
//! `dpo.rs` (the DPO loss family as a serde enum, reference-model handling) and
//! `grpo.rs` (group-relative advantages, truncated importance sampling against the
//! rollout generator's behaviour logprobs).
//!
//! Today it re-exports its dependencies so downstream code can already depend on it.
pub use smelt;
pub use smelt_rollouts;
pub mod dpo;
pub mod grpo;
pub mod recipes;
pub mod sft;
