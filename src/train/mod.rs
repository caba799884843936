//! The one training loop and the trait objectives implement.
//!
//! [`Trainer`] owns micro-batching and gradient accumulation, global-norm clipping,
//! AdamW and the learning-rate schedule, logging (metrics JSONL, progress bar,
//! throughput watch, plots), evaluation hooks, atomic checkpoints with exact resume,
//! and the loss-spike guard. An objective implements only [`Algorithm`]: pretraining's
//! [`NextTokenLoss`] here, SFT / DPO / GRPO in `smelt-algorithms`.

mod algorithm;
mod config;
mod next_token;
mod parallel;
mod spike;
pub mod state;
mod trainer;

pub use algorithm::{Algorithm, BatchSource, LossOutput, Metrics};
pub use config::{SpikeGuardConfig, TrainConfig};
pub use next_token::{NextTokenLoss, TokenBatch, IGNORE_INDEX};
pub use spike::{SpikeDetector, Verdict};
pub use state::{checkpoint_dir, latest_checkpoint, TrainerState};
pub use trainer::{Evaluator, TrainSummary, Trainer};
