//! `TrainConfig`: everything the loop needs, as a serde struct read from a recipe.
//!
//! Unknown keys are errors naming the key (`deny_unknown_fields`); every field has a
//! default with its unit and source, so a recipe states only what differs.

use crate::dist::DistConfig;
use crate::error::{Error, Result};
use crate::ops::Precision;
use crate::optim::{AdamWConfig, Schedule};
use crate::telemetry::ThroughputConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Settings of the one training loop.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Run directory: checkpoints, `metrics.jsonl`, plots. Default `runs/smelt`.
    pub output_dir: PathBuf,
    /// Optimizer steps to train for (each = `grad_accumulation_steps` micro-batches).
    pub max_steps: u64,
    /// Micro-batches accumulated per optimizer step (HF `gradient_accumulation_steps`, default 1).
    pub grad_accumulation_steps: u64,
    /// Peak learning rate (default 3e-4; the schedule scales it).
    pub learning_rate: f64,
    /// Learning-rate schedule (default: constant after no warmup).
    pub schedule: Schedule,
    /// AdamW hyper-parameters (defaults: SmolLM3 — β 0.9/0.95, eps 1e-8, wd 0.1).
    pub optimizer: AdamWConfig,
    /// Global gradient-norm clip; 0 disables (default 1.0, as nanotron / HF Trainer).
    pub max_grad_norm: f64,
    /// Save a checkpoint every N steps (0 = only at the end). Default 100.
    pub save_every: u64,
    /// Checkpoints kept on disk (oldest removed first; the one `latest` names is never removed). Default 3.
    pub keep_last: usize,
    /// Log a metrics record every N steps. Default 1.
    pub log_every: u64,
    /// Run the evaluation hook every N steps (0 = never). Default 0.
    pub eval_every: u64,
    /// Seed of the loop's own randomness (data sources seed themselves). Default 1234.
    pub seed: u64,
    /// Show a progress bar on a terminal (a plain line every `log_every` otherwise). Default true.
    pub progress: bool,
    /// Loss-spike guard (on by default).
    pub spike_guard: SpikeGuardConfig,
    /// Throughput watch (warns when tokens/s drops or data loading stalls).
    pub throughput: ThroughputConfig,
    /// Peak FLOP/s of the hardware for the MFU estimate (0 = do not report MFU).
    pub peak_flops: f64,
    /// Write PNG plots of the metrics at the end. Default true.
    pub plots: bool,
    /// Stop after this many optimizer steps in *this* process (testing resume; 0 = no limit).
    pub stop_after_steps: u64,
    /// Precision of the model's linear layers: `"f32"` (default) or `"bf16-autocast"`
    /// (bf16 GEMM inputs, f32 accumulation; weights, optimizer state and gradients stay
    /// f32, as `torch.autocast`). The trainer sets it on the model it is given.
    #[serde(deserialize_with = "deserialize_precision")]
    pub precision: Precision,
    /// Where the model lives: `cpu` (default), `cuda` (this rank's GPU) or `cuda:N`
    /// (CUDA needs a binary built with `--features cuda`).
    pub device: String,
    /// Data parallelism, used when the environment names more than one rank
    /// (`smelt launch`, torchrun, `srun`): backend, gradient bucket size, timeout.
    pub distributed: DistConfig,
}

/// Reads `precision` from its name; an unknown name is an error naming the key.
fn deserialize_precision<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Precision, D::Error> {
    let name = String::deserialize(d)?;
    name.parse()
        .map_err(|e| serde::de::Error::custom(format!("`precision`: {e}")))
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            output_dir: PathBuf::from("runs/smelt"),
            max_steps: 1000,
            grad_accumulation_steps: 1,
            learning_rate: 3e-4,
            schedule: Schedule::Constant { warmup_steps: 0 },
            optimizer: AdamWConfig::default(),
            max_grad_norm: 1.0,
            save_every: 100,
            keep_last: 3,
            log_every: 1,
            eval_every: 0,
            seed: 1234,
            progress: true,
            spike_guard: SpikeGuardConfig::default(),
            throughput: ThroughputConfig::default(),
            peak_flops: 0.0,
            plots: true,
            stop_after_steps: 0,
            precision: Precision::F32,
            device: "cpu".into(),
            distributed: DistConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Checks ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |key: &str, msg: String| Err(Error::config("train config", format!("`{key}`: {msg}")));
        if self.max_steps == 0 {
            return bad("max_steps", "must be at least 1".into());
        }
        if self.grad_accumulation_steps == 0 {
            return bad("grad_accumulation_steps", "must be at least 1".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad(
                "learning_rate",
                format!("must be positive, got {}", self.learning_rate),
            );
        }
        if self.max_grad_norm < 0.0 {
            return bad("max_grad_norm", "must be >= 0".into());
        }
        if self.keep_last == 0 {
            return bad("keep_last", "must be at least 1".into());
        }
        if self.log_every == 0 {
            return bad("log_every", "must be at least 1".into());
        }
        self.spike_guard.validate()?;
        self.distributed.validate()?;
        self.schedule.validate(self.max_steps)
    }
}

/// Loss-spike guard: on a spike or a non-finite loss/gradient, roll back to the last
/// good checkpoint and skip the batches since then (PaLM §5.1, OLMo, SmolLM3 practice).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SpikeGuardConfig {
    /// Turn the guard on (default true).
    pub enabled: bool,
    /// Running window of recent losses the z-score is computed over (default 50 steps).
    pub window: usize,
    /// Steps of history needed before z-scores are trusted (default 10).
    pub min_history: usize,
    /// A loss more than this many standard deviations above the window mean is a spike (default 6).
    pub z_threshold: f64,
    /// Give up (error) after this many rollbacks in one run (default 10).
    pub max_rollbacks: u32,
    /// After this many rollbacks, multiply the learning rate by `lr_backoff_factor` (default 2).
    pub lr_backoff_after: u32,
    /// Learning-rate multiplier applied on repeated spikes (default 0.5).
    pub lr_backoff_factor: f64,
}

impl Default for SpikeGuardConfig {
    fn default() -> Self {
        SpikeGuardConfig {
            enabled: true,
            window: 50,
            min_history: 10,
            z_threshold: 6.0,
            max_rollbacks: 10,
            lr_backoff_after: 2,
            lr_backoff_factor: 0.5,
        }
    }
}

impl SpikeGuardConfig {
    fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: &str| {
            Err(Error::config(
                "train config",
                format!("`spike_guard.{key}`: {msg}"),
            ))
        };
        if self.window < 2 {
            return bad("window", "must be at least 2");
        }
        if !(self.z_threshold > 0.0) {
            return bad("z_threshold", "must be positive");
        }
        if !(self.lr_backoff_factor > 0.0 && self.lr_backoff_factor <= 1.0) {
            return bad("lr_backoff_factor", "must be in (0, 1]");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A recipe with a `[train]` table, as the algorithm recipes nest it.
    #[derive(Debug, Deserialize)]
    struct Recipe {
        train: TrainConfig,
    }

    #[test]
    fn precision_key_reads_both_names_and_defaults_to_f32() {
        let parse =
            |text: &str| crate::recipe::parse_recipe::<Recipe>(text, Path::new("r.toml"), &[]);
        assert_eq!(parse("[train]\n").unwrap().train.precision, Precision::F32);
        let r = parse("[train]\nprecision = \"bf16-autocast\"\n").unwrap();
        assert_eq!(r.train.precision, Precision::Bf16Autocast);
        let r = parse("[train]\nprecision = \"f32\"\n").unwrap();
        assert_eq!(r.train.precision, Precision::F32);
    }

    #[test]
    fn unknown_precision_is_an_error_naming_the_key() {
        let err = crate::recipe::parse_recipe::<Recipe>(
            "[train]\nprecision = \"bf16\"\n",
            Path::new("r.toml"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`precision`") && err.contains("bf16-autocast"),
            "{err}"
        );
        assert!(err.contains("r.toml"), "{err}");
    }
}
