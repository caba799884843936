//! `GrpoConfig`: GRPO's settings with TRL 1.16 `GRPOConfig` names and defaults.
//!
//! Variants are types: `loss_type` and `scale_rewards` are serde enums dispatched by
//! `match`. Unknown keys are errors naming the key; [`GrpoConfig::validate`] checks
//! ranges and the divisibility rules TRL enforces, naming the offending key.

use serde::{Deserialize, Serialize};
use smelt::{Error, Result};

/// How token losses are aggregated into the batch loss (TRL `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Mean over each sequence's tokens, then mean over sequences (DeepSeekMath GRPO).
    Grpo,
    /// Sum over the micro-batch's tokens / its token count (local-batch normalisation).
    Bnpo,
    /// Sum over tokens / (sequences · `max_completion_length`) (Dr. GRPO, Liu et al. 2025).
    DrGrpo,
    /// Sum over tokens / tokens of the whole accumulated step (DAPO; TRL's default).
    Dapo,
}

/// How group advantages are scaled (TRL `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by the group's standard deviation (+1e-4) (TRL default).
    Group,
    /// Divide by the generation batch's standard deviation (PPO-Lite).
    Batch,
    /// Do not scale (Dr. GRPO).
    None,
}

/// GRPO settings (TRL 1.16 names and defaults unless noted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoConfig {
    /// Completions sampled per prompt, G (TRL default 8).
    pub num_generations: usize,
    /// Completions per micro-batch (TRL default 8). A step's generation batch is this ×
    /// `grad_accumulation_steps` completions and must be a multiple of `num_generations`.
    pub per_device_train_batch_size: usize,
    /// Maximum completion tokens (TRL default 512); also Dr. GRPO's normaliser.
    pub max_completion_length: usize,
    /// Sampling temperature; the trainer's log-probs use the same `logits / temperature` (default 1.0).
    pub temperature: f64,
    /// Top-k filter for sampling (0 = off; default 0). Never enters importance ratios.
    pub top_k: usize,
    /// Top-p filter for sampling (default 1.0 = off). Never enters importance ratios.
    pub top_p: f64,
    /// Advantage scaling (default `group`).
    pub scale_rewards: ScaleRewards,
    /// Loss aggregation (default `dapo`, as TRL 1.16).
    pub loss_type: LossType,
    /// Lower clip ε of the PPO ratio (default 0.2).
    pub epsilon: f64,
    /// Upper clip ε (clip-higher; DAPO recommends 0.28). Default: `epsilon`.
    pub epsilon_high: Option<f64>,
    /// Optimizer steps per generation batch, μ (default 1).
    pub num_iterations: u64,
    /// KL coefficient against the reference (k3 estimator); 0 loads no reference (default 0).
    pub beta: f64,
    /// Cap C of the token-level truncated importance weight
    /// `min(π_old / π_behaviour, C)` between trainer and sampler (TRL
    /// `vllm_importance_sampling_clip_max`, default 3.0); `None` disables the correction.
    pub importance_sampling_cap: Option<f64>,
    /// Exclude completions that hit `max_completion_length` from the loss (default false).
    pub mask_truncated_completions: bool,
    /// Versions a rollout may lag the trainer (0 = synchronous on-policy; default 0).
    pub max_staleness: u64,
    /// Run generation in the asynchronous `RolloutService` (default true).
    pub async_generation: bool,
    /// Finished generation batches the service may buffer (default 1).
    pub rollout_buffer: usize,
    /// Threads of the asynchronous generator's own pool (0 = share the trainer's; default 0).
    pub generator_threads: usize,
    /// Seed of prompt order and per-sample sampling seeds (default 42).
    pub seed: u64,
    /// Reward function weights by name (missing names weigh 1.0, TRL `reward_weights`).
    pub reward_weights: std::collections::BTreeMap<String, f32>,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            num_generations: 8,
            per_device_train_batch_size: 8,
            max_completion_length: 512,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            scale_rewards: ScaleRewards::Group,
            loss_type: LossType::Dapo,
            epsilon: 0.2,
            epsilon_high: None,
            num_iterations: 1,
            beta: 0.0,
            importance_sampling_cap: Some(3.0),
            mask_truncated_completions: false,
            max_staleness: 0,
            async_generation: true,
            rollout_buffer: 1,
            generator_threads: 0,
            seed: 42,
            reward_weights: Default::default(),
        }
    }
}

impl GrpoConfig {
    /// The upper clip ε (`epsilon_high`, else `epsilon`).
    pub fn epsilon_high(&self) -> f64 {
        self.epsilon_high.unwrap_or(self.epsilon)
    }

    /// Completions per optimizer step for `grad_accumulation_steps` micro-batches.
    pub fn generation_batch_size(&self, grad_accumulation_steps: u64) -> usize {
        self.per_device_train_batch_size * grad_accumulation_steps as usize
    }

    /// Checks ranges and that a step's generation batch holds whole groups; errors name the key.
    pub fn validate(&self, grad_accumulation_steps: u64) -> Result<()> {
        self.validate_settings()?;
        let gen = self.generation_batch_size(grad_accumulation_steps);
        if !gen.is_multiple_of(self.num_generations) {
            return Err(Error::config("grpo config", format!(
                "`num_generations`: the generation batch (per_device_train_batch_size {} × grad_accumulation_steps {grad_accumulation_steps} = {gen}) must be divisible by it ({})",
                self.per_device_train_batch_size, self.num_generations
            )));
        }
        Ok(())
    }

    /// Checks every range that does not depend on the accumulation; errors name the key.
    pub fn validate_settings(&self) -> Result<()> {
        let bad =
            |key: &str, msg: String| Err(Error::config("grpo config", format!("`{key}`: {msg}")));
        if self.num_generations < 2 {
            return bad(
                "num_generations",
                format!(
                    "must be at least 2 (a group needs a baseline), got {}",
                    self.num_generations
                ),
            );
        }
        if self.per_device_train_batch_size == 0 {
            return bad("per_device_train_batch_size", "must be at least 1".into());
        }
        if self.max_completion_length == 0 {
            return bad("max_completion_length", "must be at least 1".into());
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad(
                "temperature",
                format!("must be positive, got {}", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("must be in (0, 1], got {}", self.top_p));
        }
        if !(self.epsilon >= 0.0 && self.epsilon < 1.0) {
            return bad(
                "epsilon",
                format!("must be in [0, 1), got {}", self.epsilon),
            );
        }
        if self.epsilon_high().is_nan() || self.epsilon_high() < 0.0 {
            return bad(
                "epsilon_high",
                format!("must be >= 0, got {}", self.epsilon_high()),
            );
        }
        if self.num_iterations == 0 {
            return bad("num_iterations", "must be at least 1".into());
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return bad("beta", format!("must be >= 0, got {}", self.beta));
        }
        if let Some(c) = self.importance_sampling_cap {
            if c.is_nan() || c < 1.0 {
                return bad("importance_sampling_cap", format!("must be >= 1, got {c}"));
            }
        }
        if self.rollout_buffer == 0 {
            return bad("rollout_buffer", "must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_trl_and_unknown_keys_name_the_key() {
        let c: GrpoConfig = toml::from_str("").unwrap();
        assert_eq!(c, GrpoConfig::default());
        assert_eq!(
            (c.num_generations, c.loss_type, c.scale_rewards),
            (8, LossType::Dapo, ScaleRewards::Group)
        );
        assert_eq!(c.epsilon_high(), 0.2);
        let c: GrpoConfig = toml::from_str(
            "loss_type = \"dr_grpo\"\nscale_rewards = \"none\"\nepsilon_high = 0.28",
        )
        .unwrap();
        assert_eq!(
            (c.loss_type, c.scale_rewards, c.epsilon_high()),
            (LossType::DrGrpo, ScaleRewards::None, 0.28)
        );
        let err = toml::from_str::<GrpoConfig>("num_generation = 4")
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_generation"), "{err}");
        let err = GrpoConfig {
            num_generations: 3,
            ..Default::default()
        }
        .validate(1)
        .unwrap_err()
        .to_string();
        assert!(err.contains("num_generations"), "{err}");
    }
}
