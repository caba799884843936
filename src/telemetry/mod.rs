//! Telemetry: what a training run tells the person watching it, now and afterwards.
//!
//! - [`metrics`]: the run's record, one JSON object per line (`metrics.jsonl`),
//!   appended and flushed per step, cut back atomically on resume.
//! - [`progress`]: the live view, an indicatif bar on a terminal and plain lines
//!   everywhere else (CI logs, `nohup`, SLURM output files).
//! - [`throughput`]: a watchdog over tokens/s and data-loader wait that says when a
//!   step was unusually slow, and why.
//! - [`flops`]: training FLOPs per token and model FLOPs utilisation (MFU).
//! - [`memory`]: peak resident memory of the process.
//! - [`plots`]: PNG line plots of a finished (or running) metrics log.
//!
//! Key decision: the JSONL file is the single source of truth. Progress bars,
//! warnings and plots are views of it or of the numbers that go into it, and none of
//! them holds state a resumed run would need; so a crash loses at most the bar, and
//! `plot_metrics` works the same on a live run, a finished one and one copied off a
//! cluster. Telemetry never decides anything about training (the spike guard and
//! schedules live in `train/`); it only reports.

pub mod flops;
pub mod memory;
pub mod metrics;
pub mod plots;
pub mod progress;
pub mod throughput;

pub use flops::{matmul_params, mfu, training_flops_per_token};
pub use memory::peak_rss_mb;
pub use metrics::MetricsLog;
pub use plots::{plot_metrics, plot_metrics_with, PlotOptions};
pub use progress::Progress;
pub use throughput::{ThroughputConfig, ThroughputMonitor, ThroughputWarning, WarningKind};
