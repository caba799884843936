//! # smelt-rollouts
//!
//! Generation for reinforcement learning and evaluation: the batched `Sampler`
//! (KV cache from `smelt::model`, temperature / top-k / top-p / min-p, stop ids and
//! strings, per-sequence seeds, continuous batching, behaviour log-probs under the
//! *unprocessed* distribution), the asynchronous `RolloutService` (a weight snapshot
//! tagged with a version, a bounded channel, `max_staleness`), the `Reward` trait
//! with its built-ins, and the generated arithmetic task.

pub mod reward;
pub mod rewards;
pub mod rollout;
pub mod sampler;
pub mod service;
pub mod tasks;

pub use reward::{Reward, WeightedRewards};
pub use rollout::{FinishReason, Rollout};
pub use sampler::{Completion, Engine, Request, Sampler, SamplingParams};
pub use smelt;
