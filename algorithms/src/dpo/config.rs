//! `DpoConfig`: DPO's own settings, with TRL 1.16 `DPOConfig` names and defaults.
//!
//! The learning rate, batch size, accumulation and schedule are the training loop's
//! ([`smelt::train::TrainConfig`]); TRL's DPO default learning rate is
//! [`DPO_LEARNING_RATE`] (1e-6), which a DPO recipe should set there. Unknown keys and
//! unknown `loss_type` values are errors naming the key; `loss_type` accepts one name or
//! a list, as TRL does.

use super::loss::{DpoLoss, DpoLossType};
use serde::de::{self, Deserializer, IntoDeserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use smelt::{Error, Result};
use std::path::Path;

/// TRL's default learning rate for DPO (`DPOConfig.learning_rate`); belongs in `TrainConfig`.
pub const DPO_LEARNING_RATE: f64 = 1e-6;

/// Which end of an over-long `prompt + completion` sequence is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TruncationMode {
    /// Keep the first `max_length` tokens (TRL default); examples whose prompt alone
    /// fills `max_length` are dropped, as TRL drops them.
    #[default]
    KeepStart,
    /// Keep the last `max_length` tokens (deprecated in TRL 1.16, still supported).
    KeepEnd,
}

/// DPO hyper-parameters (TRL `DPOConfig` names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// β: strength of the implicit KL penalty to the reference (default 0.1, DPO paper / TRL).
    pub beta: f64,
    /// Loss kinds, combined with `loss_weights` (default `["sigmoid"]`, TRL). One name or a list.
    #[serde(deserialize_with = "one_or_many")]
    pub loss_type: Vec<DpoLossType>,
    /// Weight of each `loss_type` entry (default: 1.0 each, TRL; e.g. MPO `[0.8, 0.2, 1.0]`).
    pub loss_weights: Option<Vec<f64>>,
    /// ε: label-flip rate of `robust`, in [0, 0.5) (default 0, TRL; the Robust DPO paper suggests 0.1).
    pub label_smoothing: f64,
    /// Weight of an extra `sft` term (NLL on the chosen completion), RPO (Pang et al. 2024;
    /// the TRL < 1.0 key; 1.0 is the paper's value). Default `None`: no extra term.
    pub rpo_alpha: Option<f64>,
    /// Maximum tokens of `prompt + completion` per sequence (default 1024, TRL); `None` = no limit.
    pub max_length: Option<usize>,
    /// Which end of an over-long sequence is kept (default `keep_start`, TRL).
    pub truncation_mode: TruncationMode,
    /// Compute reference log-probs once before training, keeping no reference model in
    /// memory (default false, TRL).
    pub precompute_ref_log_probs: bool,
    /// Pairs per forward in the precompute pass (default `None`: the training batch size, TRL).
    pub precompute_ref_batch_size: Option<usize>,
    /// Shift `bco_pair` rewards by their running mean (BCO paper, TRL < 1.0). Default false:
    /// TRL 1.16 uses no shift. smelt's own key.
    pub bco_running_mean: bool,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig {
            beta: 0.1,
            loss_type: vec![DpoLossType::Sigmoid],
            loss_weights: None,
            label_smoothing: 0.0,
            rpo_alpha: None,
            max_length: Some(1024),
            truncation_mode: TruncationMode::KeepStart,
            precompute_ref_log_probs: false,
            precompute_ref_batch_size: None,
            bco_running_mean: false,
        }
    }
}

impl DpoConfig {
    /// Parses a TOML table of DPO settings; errors name `source` and the key.
    pub fn from_toml_str(text: &str, source: &Path) -> Result<Self> {
        let config: DpoConfig =
            toml::from_str(text).map_err(|e| Error::config(source, e.to_string()))?;
        config.validate().map_err(|e| match e {
            Error::Config { message, .. } => Error::config(source, message),
            other => other,
        })?;
        Ok(config)
    }

    /// Checks ranges and consistency; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |key: &str, msg: String| Err(Error::config("dpo config", format!("`{key}`: {msg}")));
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return bad("beta", format!("must be positive, got {}", self.beta));
        }
        if self.loss_type.is_empty() {
            return bad("loss_type", "needs at least one loss kind".into());
        }
        if let Some(w) = &self.loss_weights {
            if w.len() != self.loss_type.len() {
                return bad(
                    "loss_weights",
                    format!(
                        "has {} weights for {} loss types",
                        w.len(),
                        self.loss_type.len()
                    ),
                );
            }
            if let Some(x) = w.iter().find(|x| !x.is_finite()) {
                return bad("loss_weights", format!("weight {x} is not finite"));
            }
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return bad(
                "label_smoothing",
                format!("must lie in [0, 0.5), got {}", self.label_smoothing),
            );
        }
        if let Some(a) = self.rpo_alpha.filter(|a| !(a.is_finite() && *a >= 0.0)) {
            return bad("rpo_alpha", format!("must be >= 0, got {a}"));
        }
        if self.max_length.is_some_and(|m| m < 2) {
            return bad(
                "max_length",
                "must be at least 2 (a prompt token and a completion token)".into(),
            );
        }
        if self.precompute_ref_batch_size == Some(0) {
            return bad("precompute_ref_batch_size", "must be at least 1".into());
        }
        Ok(())
    }

    /// The resolved (kind, weight) terms: `loss_type` × `loss_weights`, plus `sft` × `rpo_alpha`.
    pub fn loss_terms(&self) -> Vec<(DpoLossType, f64)> {
        let weights = self
            .loss_weights
            .clone()
            .unwrap_or_else(|| vec![1.0; self.loss_type.len()]);
        let mut terms: Vec<_> = self.loss_type.iter().copied().zip(weights).collect();
        if let Some(alpha) = self.rpo_alpha {
            terms.push((DpoLossType::Sft, alpha));
        }
        terms
    }

    /// The combined loss these settings describe.
    pub fn build_loss(&self) -> DpoLoss {
        DpoLoss::new(
            self.loss_terms(),
            self.beta,
            self.label_smoothing,
            self.bco_running_mean,
        )
    }
}

/// `loss_type = "ipo"` or `loss_type = ["sigmoid", "sft"]`; an unknown name keeps serde's
/// "unknown variant `x`, expected one of ..." message.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<DpoLossType>, D::Error> {
    struct OneOrMany;
    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<DpoLossType>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a loss type name or a list of them")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
            Ok(vec![DpoLossType::deserialize(v.into_deserializer())?])
        }
        fn visit_seq<A: SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(kind) = seq.next_element::<DpoLossType>()? {
                out.push(kind);
            }
            Ok(out)
        }
    }
    d.deserialize_any(OneOrMany)
}
