//! Optimization: AdamW, learning-rate schedules and gradient clipping.
//!
//! The training loop in `train/` drives these three pieces once per optimizer step:
//! clip the accumulated gradients ([`clip_grad_norm`]), look up the learning rate
//! (`peak_lr * schedule.factor(step, total_steps)`, [`Schedule`]), update the weights
//! ([`AdamW::step`]).
//!
//! Design decision: each piece reproduces its PyTorch / transformers counterpart
//! exactly (`torch.optim.AdamW`, `clip_grad_norm_`, transformers' schedule lambdas) and
//! is held to it by a golden test against values recorded by a committed script
//! (`scripts/make_optim_fixtures.py`, `tests/optim_golden.rs`), so a smelt run and a
//! TRL/nanotron run with the same data and hyper-parameters can be compared step by
//! step. All resumable state is explicit: the optimizer's moments and step count
//! ([`AdamW::state_tensors`], [`AdamW::load_state`]); the schedule is a pure function
//! of the step.

mod adamw;
mod clip;
mod fused_adamw;
mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use clip::clip_grad_norm;
pub use schedule::{Schedule, WsdDecay};
