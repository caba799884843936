//! Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) as one
//! [`Algorithm`] on smelt's training loop, with TRL 1.16 `GRPOTrainer` semantics.
//!
//! Rollouts come from a [`GrpoSource`] (synchronous, or the asynchronous
//! `RolloutService` with bounded staleness); advantages are group-normalised there. The
//! loss ([`loss`]) is the PPO-clipped surrogate with clip-higher, the token-level
//! truncated importance weight between the trainer's and the sampler's log-probs, and
//! an optional k3 KL to a frozen reference (none is built when β = 0).
//!
//! The key decision is how each `loss_type` maps onto the loop's normalisation (it
//! divides the summed loss by the loss units of the whole accumulated step):
//! `grpo` sums per-sequence means, one unit per sequence; `dapo` sums tokens, one unit
//! per token; `dr_grpo` sums tokens / `max_completion_length`, one unit per sequence;
//! `bnpo` divides by the micro-batch's tokens, one unit per micro-batch. Each gives
//! TRL's number exactly (see [`loss`] for the derivations).
//!
//! ```no_run
//! # use smelt_algorithms::grpo::*;
//! # fn f(model: smelt::Model, generator: Box<dyn smelt_rollouts::service::Generator>,
//! #      prompts: Box<dyn smelt_rollouts::service::PromptSource>, train: smelt::train::TrainConfig) -> smelt::Result<()> {
//! let config = GrpoConfig::default();
//! let mut source = GrpoSource::new(model.clone(), generator, prompts, config.clone(), train.grad_accumulation_steps)?;
//! let mut trainer = smelt::train::Trainer::new(model.clone(), None, Grpo::new(config, &model)?, train)?;
//! trainer.fit(&mut source)?;
//! # Ok(()) }
//! ```

pub mod advantages;
pub mod batch;
pub mod config;
pub mod generator;
pub mod loss;
pub mod run;
pub mod sampler_generator;
pub mod source;

pub use advantages::{generation_metrics, group_advantages, mean_std};
pub use batch::{collate, RolloutBatch};
pub use config::{GrpoConfig, LossType, ScaleRewards};
pub use generator::{RewardFn, SamplingSettings, SequentialGenerator};
pub use loss::{
    aggregate, k3_kl, loss_units, token_loss, truncated_is_weight, TokenLoss, TokenLossInputs,
};
pub use run::{run_grpo, GrpoRecipe};
pub use sampler_generator::SamplerGenerator;
pub use source::GrpoSource;

use crate::dpo::token_logps;
use candle_core::{DType, Tensor, D};
use smelt::train::{Algorithm, LossOutput};
use smelt::{Model, Result};

/// The GRPO objective.
#[derive(Debug, Clone)]
pub struct Grpo {
    config: GrpoConfig,
    reference: Option<Model>,
}

impl Grpo {
    /// GRPO with `config`; when β > 0 a frozen deep copy of `policy` is the reference.
    pub fn new(config: GrpoConfig, policy: &Model) -> Result<Self> {
        config.validate_settings()?; // batch divisibility is the source's check

        let reference = if config.beta > 0.0 {
            Some(smelt_rollouts::service::deep_copy(policy)?)
        } else {
            None
        };
        Ok(Grpo { config, reference })
    }

    /// The settings.
    pub fn config(&self) -> &GrpoConfig {
        &self.config
    }

    /// The frozen reference, when β > 0.
    pub fn reference(&self) -> Option<&Model> {
        self.reference.as_ref()
    }

    /// `log_softmax(model(input_ids) / T)` at the targets, `(B, T)`, and the logits used.
    fn logps(&self, model: &Model, batch: &RolloutBatch) -> Result<(Tensor, Tensor)> {
        let logits = model.forward(&batch.input_ids, None)?; // (B, T, V)
        let logits = if self.config.temperature == 1.0 {
            logits
        } else {
            (logits / self.config.temperature)?
        };
        Ok((token_logps(&logits, &batch.targets)?, logits))
    }
}

/// Masked sum of a `(B, T)` tensor as f64.
fn masked_sum(x: &Tensor, mask: &Tensor) -> Result<f64> {
    Ok((x * mask)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?)
}

/// Per-token entropy `(B, T)` of `softmax(logits)`: `lse − Σ p·logits`, detached.
fn entropy(logits: &Tensor) -> Result<Tensor> {
    let logits = logits.detach().to_dtype(DType::F32)?; // (B, T, V)
    let max = logits.max_keepdim(D::Minus1)?; // (B, T, 1)
    let shifted = logits.broadcast_sub(&max)?;
    let z = shifted.exp()?.sum_keepdim(D::Minus1)?; // (B, T, 1)
    let p = shifted.exp()?.broadcast_div(&z)?; // (B, T, V)
    let lse = z.log()?; // (B, T, 1), of the shifted logits
    Ok((lse - (p * shifted)?.sum_keepdim(D::Minus1)?)?.squeeze(D::Minus1)?)
}

impl Algorithm for Grpo {
    type Batch = RolloutBatch;

    fn name(&self) -> &str {
        "grpo"
    }

    /// Sequences (`grpo`, `dr_grpo`), tokens (`dapo`) or one per micro-batch (`bnpo`).
    fn loss_units(&self, batch: &RolloutBatch) -> f64 {
        loss_units(self.config.loss_type, batch.sequences, batch.tokens)
    }

    fn loss(&mut self, model: &Model, batch: &RolloutBatch) -> Result<LossOutput> {
        let c = &self.config;
        let (logps, logits) = self.logps(model, batch)?; // (B, T), (B, T, V)
        let old = match &batch.old_logps {
            Some(o) => o.clone(),
            None => logps.detach(), // μ = 1: π_old = π_θ, so r = 1 exactly
        };
        let is_weight = c
            .importance_sampling_cap
            .map(|cap| truncated_is_weight(&old, &batch.behaviour_logps, &batch.mask, cap))
            .transpose()?;
        let ref_logps = match &self.reference {
            Some(r) => Some(self.logps(r, batch)?.0.detach()),
            None => None,
        };
        let out = token_loss(&TokenLossInputs {
            logps: &logps,
            old_logps: &old,
            is_weight: is_weight.as_ref(),
            ref_logps: ref_logps.as_ref(),
            advantages: &batch.advantages,
            beta: c.beta,
            epsilon_low: c.epsilon,
            epsilon_high: c.epsilon_high(),
        })?;
        let loss_sum = aggregate(c.loss_type, &out.loss, &batch.mask, c.max_completion_length)?;

        let mut m = batch.step_metrics.clone().unwrap_or_default();
        let (mask, n) = (&batch.mask, batch.tokens as f64);
        let region = (&out.low_clipped + &out.high_clipped)?;
        m.add(
            "clip_ratio/low_mean",
            masked_sum(&out.low_clipped, mask)?,
            n,
        );
        m.add(
            "clip_ratio/high_mean",
            masked_sum(&out.high_clipped, mask)?,
            n,
        );
        m.add("clip_ratio/region_mean", masked_sum(&region, mask)?, n);
        m.add("ratio/mean", masked_sum(&out.ratio, mask)?, n);
        let dev = (&out.ratio - 1.0)?.abs()?;
        // per micro-batch maximum, averaged over the step's micro-batches
        m.add(
            "ratio/max_abs_deviation",
            (dev * mask)?.max_all()?.to_scalar::<f32>()? as f64,
            1.0,
        );
        if let Some(w) = &is_weight {
            m.add(
                "sampling/importance_sampling_ratio/mean",
                masked_sum(w, mask)?,
                n,
            );
        }
        if let Some(kl) = &out.kl {
            m.add("kl", masked_sum(kl, mask)?, n);
        }
        m.add("entropy", masked_sum(&entropy(&logits)?, mask)?, n);
        let input_tokens = batch.input_ids.elem_count() as f64;
        m.add("tokens", input_tokens, 1.0);
        Ok(LossOutput {
            loss_sum,
            metrics: m,
        })
    }
}
