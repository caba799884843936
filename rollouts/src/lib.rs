//! # smelt-rollouts
//!
//! Generation for reinforcement learning and evaluation. It will hold the batched
//! `Sampler` (KV cache from `smelt::model`, temperature / top-k / top-p / min-p, stop
//! ids and strings, per-sequence seeds, behaviour logprobs under the *unprocessed*
//! distribution), the asynchronous `RolloutService` (tokio task owning a versioned
//! weight snapshot, bounded channel, `max_staleness`), and the `Reward` trait with its
//! built-ins.
//!
//! Today the core's greedy/temperature generation lives in `smelt::generate`; this
//! crate re-exports the core so downstream code can already depend on it.
pub use smelt;
