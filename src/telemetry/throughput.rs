//! A watchdog over training throughput: warns when a step is unusually slow, or when
//! the model sat waiting for data.
//!
//! Key decisions:
//! - **Compare to a running median, not a mean.** The reference is the median
//!   tokens/s over the last `window` steps: one checkpoint save or eval pause does
//!   not drag it down, so the next slow step is still caught. Every post-warmup step
//!   joins the window, including slow ones; a lasting change (a longer sequence
//!   length, a shared node) therefore becomes the new normal after about
//!   `window / 2` steps and the warnings stop instead of repeating forever.
//! - **Skip warmup.** The first `warmup` steps (allocator growth, kernel autotuning,
//!   the first batches' I/O) are neither checked nor put in the window.
//! - **Name the cause.** A step whose data wait exceeds `data_stall_fraction` of its
//!   wall time is reported as a data stall (the input pipeline is the bottleneck),
//!   whether or not tokens/s also dropped; a plain drop points at compute or the host.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Settings of the [`ThroughputMonitor`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThroughputConfig {
    /// Steps in the running median of tokens/s (default 50: long enough to ride over
    /// one eval or checkpoint pause, short enough to follow a schedule change).
    pub window: usize,
    /// Warn when tokens/s < (1 − `drop_fraction`) × median (default 0.3: step-time
    /// jitter on a busy host stays well inside ±30%).
    pub drop_fraction: f64,
    /// Steps ignored at the start of the run (default 5: allocation and warm caches).
    pub warmup: u64,
    /// Warn when data wait > `data_stall_fraction` × step time (default 0.5: the step
    /// spent more time waiting for its batch than computing).
    pub data_stall_fraction: f64,
}

impl Default for ThroughputConfig {
    fn default() -> Self {
        ThroughputConfig {
            window: 50,
            drop_fraction: 0.3,
            warmup: 5,
            data_stall_fraction: 0.5,
        }
    }
}

impl ThroughputConfig {
    /// Checks the ranges: `window >= 1`, `0 < drop_fraction < 1`,
    /// `0 < data_stall_fraction <= 1`; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.window == 0 {
            return Err(Error::Invalid(
                "throughput.window: must be at least 1".into(),
            ));
        }
        if !(self.drop_fraction > 0.0 && self.drop_fraction < 1.0) {
            return Err(Error::Invalid(format!(
                "throughput.drop_fraction: must be in (0, 1), got {}",
                self.drop_fraction
            )));
        }
        if !(self.data_stall_fraction > 0.0 && self.data_stall_fraction <= 1.0) {
            return Err(Error::Invalid(format!(
                "throughput.data_stall_fraction: must be in (0, 1], got {}",
                self.data_stall_fraction
            )));
        }
        Ok(())
    }
}

/// What kind of slowdown a [`ThroughputWarning`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarningKind {
    /// Tokens/s fell below the band around the running median.
    ThroughputDrop,
    /// The step waited on the data loader for more than the configured fraction of
    /// its time (reported whether or not tokens/s also dropped).
    DataStall,
}

/// A slow step, with a human-readable explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct ThroughputWarning {
    /// The step that was slow.
    pub step: u64,
    /// The cause.
    pub kind: WarningKind,
    /// One line for the log, e.g. `step 120: 812 tok/s is 41% below the median 1,377 tok/s`.
    pub message: String,
    /// Tokens/s of the step.
    pub tokens_per_s: f64,
    /// The running median it was compared with (None before the window has a sample).
    pub median_tokens_per_s: Option<f64>,
    /// Data-loader wait as a fraction of the step's wall time (0 when unknown).
    pub data_wait_fraction: f64,
}

/// Watches per-step throughput (see the module docs).
#[derive(Debug, Clone)]
pub struct ThroughputMonitor {
    config: ThroughputConfig,
    /// Tokens/s of the last `window` post-warmup steps, oldest first.
    window: VecDeque<f64>,
    /// Steps observed so far, warmup included.
    seen: u64,
}

impl ThroughputMonitor {
    /// A monitor with `config`; fails if the config is out of range.
    pub fn new(config: ThroughputConfig) -> Result<Self> {
        config.validate()?;
        Ok(ThroughputMonitor {
            window: VecDeque::with_capacity(config.window),
            config,
            seen: 0,
        })
    }

    /// The running median of tokens/s, once a post-warmup step has been seen.
    pub fn median(&self) -> Option<f64> {
        median(&self.window)
    }

    /// Records one step: its throughput, the seconds it waited for its batch and its
    /// total wall time. Returns a warning if the step was slow (never during warmup).
    /// Non-finite or negative throughputs are ignored.
    pub fn observe(
        &mut self,
        step: u64,
        tokens_per_s: f64,
        data_wait_s: f64,
        step_s: f64,
    ) -> Option<ThroughputWarning> {
        if !(tokens_per_s.is_finite() && tokens_per_s >= 0.0) {
            return None;
        }
        self.seen += 1;
        if self.seen <= self.config.warmup {
            return None;
        }
        let median = self.median();
        let floor = median.map(|m| (1.0 - self.config.drop_fraction) * m);
        let dropped = floor.is_some_and(|f| tokens_per_s < f);
        let wait_fraction = if step_s > 0.0 && data_wait_s.is_finite() && data_wait_s > 0.0 {
            data_wait_s / step_s
        } else {
            0.0
        };
        let stalled = wait_fraction > self.config.data_stall_fraction;

        if self.window.len() == self.config.window {
            self.window.pop_front();
        }
        self.window.push_back(tokens_per_s);

        if !dropped && !stalled {
            return None;
        }
        let drop_text = median.filter(|_| dropped).map(|m| {
            format!(
                "{:.0} tok/s is {:.0}% below the median {:.0} tok/s of the last {} steps",
                tokens_per_s,
                100.0 * (1.0 - tokens_per_s / m),
                m,
                self.window.len() - 1,
            )
        });
        let (kind, message) = if stalled {
            let mut msg = format!(
                "step {step}: data stall: waited {data_wait_s:.3}s for the batch, {:.0}% of the {step_s:.3}s step",
                100.0 * wait_fraction
            );
            if let Some(d) = drop_text {
                msg.push_str(&format!(" ({d})"));
            }
            msg.push_str("; the input pipeline is the bottleneck");
            (WarningKind::DataStall, msg)
        } else {
            let d = drop_text.unwrap_or_default();
            (
                WarningKind::ThroughputDrop,
                format!("step {step}: throughput drop: {d}"),
            )
        };
        Some(ThroughputWarning {
            step,
            kind,
            message,
            tokens_per_s,
            median_tokens_per_s: median,
            data_wait_fraction: wait_fraction,
        })
    }
}

/// Median of the values (mean of the middle two for an even count).
fn median(values: &VecDeque<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    })
}
