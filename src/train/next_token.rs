//! The next-token objective: pretraining's [`Algorithm`], and the loss SFT builds on.
//!
//! A [`TokenBatch`] holds packed rows, their `position_ids` (restarting per document,
//! so attention stays inside each document) and labels already shifted by the data
//! pipeline (`labels[t]` is the token that should follow `input_ids[t]`; positions not
//! trained carry [`IGNORE_INDEX`]). The loss is the cross-entropy summed over labelled
//! tokens; the loop divides by the token count of the whole accumulated batch.
//! The loss goes through [`Model::token_nll`] (the fused chunked `lm_head` +
//! cross-entropy on the fused kernels), so the `(tokens, V)` logits never exist.

use super::algorithm::{Algorithm, LossOutput, Metrics};
use crate::error::{Error, Result};
use crate::model::Model;
pub use crate::ops::IGNORE_INDEX;
use candle_core::{Device, Tensor};

/// A micro-batch of token rows.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// (B, T) u32 token ids.
    pub input_ids: Tensor,
    /// (B, T) u32 positions restarting at each packed document; `None` = `0..T` per row.
    pub position_ids: Option<Tensor>,
    /// (B, T) i64 targets; [`IGNORE_INDEX`] where no loss is taken.
    pub labels: Tensor,
}

impl TokenBatch {
    /// Builds a batch from host rows (all rows the same length).
    pub fn from_rows(
        input_ids: &[Vec<u32>],
        position_ids: Option<&[Vec<u32>]>,
        labels: &[Vec<i64>],
        device: &Device,
    ) -> Result<Self> {
        let t = input_ids.first().map_or(0, |r| r.len());
        let same = |n: usize| n == t;
        if t == 0
            || !input_ids.iter().all(|r| same(r.len()))
            || !labels.iter().all(|r| same(r.len()))
            || labels.len() != input_ids.len()
            || position_ids
                .is_some_and(|p| p.len() != input_ids.len() || !p.iter().all(|r| same(r.len())))
        {
            return Err(Error::Invalid(
                "TokenBatch: rows must be non-empty and of equal length".into(),
            ));
        }
        Ok(TokenBatch {
            input_ids: Tensor::new(input_ids.to_vec(), device)?,
            position_ids: position_ids
                .map(|p| Tensor::new(p.to_vec(), device))
                .transpose()?,
            labels: Tensor::new(labels.to_vec(), device)?,
        })
    }

    /// Number of labelled (trained) tokens.
    pub fn trained_tokens(&self) -> Result<f64> {
        Ok(self
            .labels
            .ge(0i64)?
            .to_dtype(candle_core::DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?)
    }
}

/// Cross-entropy on the next token, averaged over every trained token of the step.
#[derive(Debug, Clone, Default)]
pub struct NextTokenLoss;

impl Algorithm for NextTokenLoss {
    type Batch = TokenBatch;

    fn name(&self) -> &str {
        "pretrain"
    }

    fn loss_units(&self, batch: &TokenBatch) -> f64 {
        batch.trained_tokens().unwrap_or(0.0)
    }

    fn loss(&mut self, model: &Model, batch: &TokenBatch) -> Result<LossOutput> {
        let hidden = model.forward_hidden(&batch.input_ids, batch.position_ids.as_ref())?; // (B, T, H)
        let (b, t, h) = hidden.dims3()?;
        let labels = batch.labels.reshape(b * t)?; // (B*T,)
                                                   // lm_head + cross-entropy fused: the (B*T, V) logits are never materialised
        let ce = model.token_nll(&hidden.reshape((b * t, h))?, &labels)?;
        let (loss_sum, count, correct) = (ce.nll.sum_all()?, ce.count, ce.correct);
        let mut metrics = Metrics::new();
        metrics.add("token_accuracy", correct, count);
        metrics.add("trained_tokens", count, 1.0);
        metrics.add("tokens", (b * t) as f64, 1.0);
        Ok(LossOutput { loss_sum, metrics })
    }
}
