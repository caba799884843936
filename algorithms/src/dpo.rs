//! Direct Preference Optimization (Rafailov et al. 2023) and its loss family, as one
//! [`Algorithm`] on smelt's training loop.
//!
//! A micro-batch is B preference pairs collated into one `(2B, T)` batch (chosen rows,
//! then rejected rows); the policy runs **one** forward over it, the per-sequence summed
//! completion log-probs of both halves go with the reference's into the configured loss
//! ([`loss`]), and `loss` returns the loss *summed* over pairs: the loop divides by the
//! pairs of the whole accumulated step, so batch × accumulation never changes the
//! update. The reference is a frozen deep copy or precomputed log-probs
//! ([`reference`]). Semantics and metric names follow TRL 1.16 `DPOTrainer`.
//!
//! ```no_run
//! # use smelt_algorithms::dpo::*;
//! # fn f(policy: smelt::Model, examples: Vec<smelt::data::PreferenceExample>, train: smelt::train::TrainConfig) -> smelt::Result<()> {
//! let config = DpoConfig::default();
//! let mut data = PreferenceSource::new(examples, 8, 42, config.collate_options(0), policy.device())?;
//! let reference = if config.precompute_ref_log_probs {
//!     Reference::precompute(&policy, &data, config.precompute_ref_batch_size.unwrap_or(8))?
//! } else {
//!     Reference::frozen_copy(&policy)?
//! };
//! let mut trainer = smelt::train::Trainer::new(policy, None, Dpo::new(config, reference)?, train)?;
//! trainer.fit(&mut data)?;
//! # Ok(()) }
//! ```

pub mod collate;
pub mod config;
pub mod loss;
pub mod reference;
pub mod source;

pub use collate::{
    collate, sequence_logps, sequence_logps_fused, token_logps, token_logps_fused, CollateOptions,
    PairBatch, SequenceLogps,
};
pub use config::{DpoConfig, TruncationMode, DPO_LEARNING_RATE};
pub use loss::{DpoLoss, DpoLossType, LossParams, PairLogps, PairLosses, RunningMean};
pub use reference::Reference;
pub use source::PreferenceSource;

use candle_core::{DType, Tensor};
use smelt::train::{Algorithm, LossOutput, Metrics};
use smelt::{Model, Result};

impl DpoConfig {
    /// Collation settings from `max_length` / `truncation_mode` and the tokenizer's pad id.
    pub fn collate_options(&self, pad_token_id: u32) -> CollateOptions {
        CollateOptions {
            max_length: self.max_length,
            truncation_mode: self.truncation_mode,
            pad_token_id,
        }
    }
}

/// The DPO objective: a loss family, a reference, and TRL's metrics.
#[derive(Debug, Clone)]
pub struct Dpo {
    config: DpoConfig,
    loss: DpoLoss,
    reference: Reference,
}

impl Dpo {
    /// DPO with `config` (validated) against `reference`.
    pub fn new(config: DpoConfig, reference: Reference) -> Result<Self> {
        config.validate()?;
        Ok(Dpo {
            loss: config.build_loss(),
            config,
            reference,
        })
    }

    /// The settings.
    pub fn config(&self) -> &DpoConfig {
        &self.config
    }

    /// The reference (e.g. to check it stayed frozen).
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// The combined loss (with `bco_pair`'s running state).
    pub fn dpo_loss(&self) -> &DpoLoss {
        &self.loss
    }
}

/// Sum of a `(B,)` tensor as f64.
fn total(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
}

impl Algorithm for Dpo {
    type Batch = PairBatch;

    fn name(&self) -> &str {
        "dpo"
    }

    /// One unit per preference pair.
    fn loss_units(&self, batch: &PairBatch) -> f64 {
        batch.pairs() as f64
    }

    /// `bco_pair`'s running reward mean, when it is used.
    fn checkpoint_state(&self) -> serde_json::Value {
        if !self.config.bco_running_mean {
            return serde_json::Value::Null;
        }
        serde_json::json!({ "bco_running_mean": self.loss.running_mean() })
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<()> {
        if let Some(running) = state.get("bco_running_mean") {
            let running = serde_json::from_value(running.clone()).map_err(|e| {
                smelt::Error::Invalid(format!(
                    "checkpoint algorithm_state.bco_running_mean is malformed: {e}"
                ))
            })?;
            self.loss.set_running_mean(running);
        }
        Ok(())
    }

    fn loss(&mut self, model: &Model, batch: &PairBatch) -> Result<LossOutput> {
        let b = batch.pairs();
        let hidden = model.forward_hidden(&batch.input_ids, None)?; // (2B, T, H)
        let seq = sequence_logps_fused(model, &hidden, batch)?; // (2B,) each, no (2B, T, V) logits
        let (ref_chosen, ref_rejected) = self.reference.logps(batch)?; // (B,), (B,)
        let dtype = seq.logps.dtype();
        let half = |t: &Tensor, i: usize| t.narrow(0, i * b, b); // (B,)
        let pairs = PairLogps {
            chosen: half(&seq.logps, 0)?,
            rejected: half(&seq.logps, 1)?,
            ref_chosen: ref_chosen.to_dtype(dtype)?,
            ref_rejected: ref_rejected.to_dtype(dtype)?,
            chosen_tokens: half(&seq.tokens, 0)?.to_dtype(dtype)?,
            rejected_tokens: half(&seq.tokens, 1)?.to_dtype(dtype)?,
        };
        let out = self.loss.compute(&pairs)?;
        let loss_sum = out.losses.sum_all()?; // scalar, summed over pairs

        let (n, mut m) = (b as f64, Metrics::new());
        let (rc, rr) = (
            out.chosen_rewards.to_dtype(DType::F64)?,
            out.rejected_rewards.to_dtype(DType::F64)?,
        );
        let margins = (&rc - &rr)?; // (B,)
        m.add("rewards/chosen", total(&rc)?, n);
        m.add("rewards/rejected", total(&rr)?, n);
        m.add("rewards/margins", total(&margins)?, n);
        m.add(
            "rewards/accuracies",
            total(&rc.gt(&rr)?.to_dtype(DType::F64)?)?,
            n,
        );
        m.add("logps/chosen", total(&pairs.chosen.detach())?, n);
        m.add("logps/rejected", total(&pairs.rejected.detach())?, n);
        let (chosen_tokens, rejected_tokens) =
            (total(&pairs.chosen_tokens)?, total(&pairs.rejected_tokens)?);
        m.add(
            "logits/chosen",
            total(&half(&seq.mean_logits_sum, 0)?)?,
            chosen_tokens,
        );
        m.add(
            "logits/rejected",
            total(&half(&seq.mean_logits_sum, 1)?)?,
            rejected_tokens,
        );
        m.add("tokens", batch.tokens as f64, 1.0);
        Ok(LossOutput {
            loss_sum,
            metrics: m,
        })
    }
}
