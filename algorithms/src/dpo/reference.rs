//! The reference policy of DPO: a frozen copy, or log-probs computed once up front.
//!
//! `Model` clones share candle `Var`s (an optimizer step on the policy would move a
//! cloned "reference" too), so [`Reference::frozen_copy`] builds a *separate* model from
//! deep copies of the weights. [`Reference::precompute`] instead runs the reference once
//! over the dataset before training (TRL's `precompute_ref_log_probs`) and keeps only
//! two numbers per example, so no reference model is in memory while training. Both
//! feed the loss the same values (to float rounding of different padding).

use super::collate::{collate, sequence_logps_fused, PairBatch};
use super::source::PreferenceSource;
use candle_core::Tensor;
use smelt::data::PreferenceExample;
use smelt::{Error, Model, Result};
use std::collections::HashMap;
use std::path::Path;

/// Where the reference log-probs come from.
#[derive(Debug, Clone)]
pub enum Reference {
    /// A frozen model with its own weights, run on every micro-batch (no gradient).
    Frozen(Box<Model>),
    /// `[chosen, rejected]` summed completion log-probs per dataset index (`None` for
    /// examples the source dropped).
    Precomputed(Vec<Option<[f32; 2]>>),
}

impl Reference {
    /// A frozen deep copy of `policy`'s current weights (no `Var` is shared).
    pub fn frozen_copy(policy: &Model) -> Result<Self> {
        let tensors = policy
            .named_tensors()
            .into_iter()
            .map(|(name, t)| Ok((name, t.detach().copy()?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let copy = Model::from_tensors(
            policy.config().clone(),
            tensors,
            policy.device(),
            Path::new("<reference copy>"),
        )?;
        Ok(Reference::Frozen(Box::new(copy)))
    }

    /// Runs `model` once over every example `source` keeps, `batch_size` pairs per
    /// forward in dataset order, and stores the summed completion log-probs.
    pub fn precompute(model: &Model, source: &PreferenceSource, batch_size: usize) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::Invalid(
                "precompute_ref_batch_size must be at least 1".into(),
            ));
        }
        let mut table = vec![None; source.examples().len()];
        for chunk in source.kept().chunks(batch_size) {
            let picked: Vec<(usize, &PreferenceExample)> =
                chunk.iter().map(|&i| (i, &source.examples()[i])).collect();
            let batch = collate(&picked, source.options(), source.device())?;
            let (chosen, rejected) = forward_logps(model, &batch)?; // (B,), (B,)
            let (c, r) = (chosen.to_vec1::<f32>()?, rejected.to_vec1::<f32>()?);
            for (k, &i) in chunk.iter().enumerate() {
                table[i] = Some([c[k], r[k]]);
            }
        }
        Ok(Reference::Precomputed(table))
    }

    /// The frozen model, when this reference keeps one.
    pub fn model(&self) -> Option<&Model> {
        match self {
            Reference::Frozen(m) => Some(m),
            Reference::Precomputed(_) => None,
        }
    }

    /// Reference log-probs `(B,)` for the chosen and the rejected half of `batch`
    /// (constants: no gradient flows into the reference).
    pub fn logps(&self, batch: &PairBatch) -> Result<(Tensor, Tensor)> {
        match self {
            Reference::Frozen(model) => {
                let (c, r) = forward_logps(model, batch)?;
                Ok((c.detach(), r.detach()))
            }
            Reference::Precomputed(table) => {
                let mut chosen = Vec::with_capacity(batch.pairs());
                let mut rejected = Vec::with_capacity(batch.pairs());
                for &i in &batch.example_ids {
                    let [c, r] = table.get(i).copied().flatten().ok_or_else(|| {
                        Error::Invalid(format!(
                            "no precomputed reference log-probs for example {i}"
                        ))
                    })?;
                    chosen.push(c);
                    rejected.push(r);
                }
                let device = batch.input_ids.device();
                Ok((Tensor::new(chosen, device)?, Tensor::new(rejected, device)?))
            }
        }
    }
}

/// One concatenated forward → summed completion log-probs of the chosen and rejected halves.
fn forward_logps(model: &Model, batch: &PairBatch) -> Result<(Tensor, Tensor)> {
    let hidden = model.forward_hidden(&batch.input_ids, None)?; // (2B, T, H)
    let seq = sequence_logps_fused(model, &hidden, batch)?;
    let b = batch.pairs();
    let logps = seq.logps.detach().to_dtype(candle_core::DType::F32)?; // (2B,)
    debug_assert_eq!(logps.dims1()?, 2 * b);
    Ok((logps.narrow(0, 0, b)?, logps.narrow(0, b, b)?))
}
