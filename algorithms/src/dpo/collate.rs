//! Collation of preference pairs into one concatenated batch, and sequence log-probs.
//!
//! B pairs become one `(2B, T)` batch, chosen rows first then rejected rows (TRL's
//! `DataCollatorForPreference`): `prompt + chosen` and `prompt + rejected`, each
//! truncated to `max_length`, right-padded, with a completion mask. One forward over
//! the whole batch gives both halves' log-probs, so the policy runs once per
//! micro-batch. Right padding never changes the real tokens' logits: attention is
//! causal and padding only follows them.
//!
//! Two routes to the same sequence log-probs: [`sequence_logps`] from explicit logits,
//! and [`sequence_logps_fused`] from the final hidden states through
//! [`Model::token_nll`] (the chunked `lm_head` + cross-entropy: the `(2B·T, V)`
//! logits are never materialised). The latter is what the trainer runs; the vocabulary
//! mean logit (TRL's `logits/*` metric) is `h · mean_v(W_v)`, exact without logits.

use super::config::TruncationMode;
use candle_core::{DType, Device, Tensor, D};
use smelt::data::PreferenceExample;
use smelt::{Error, Model, Result};

/// How examples are cut and padded.
#[derive(Debug, Clone, PartialEq)]
pub struct CollateOptions {
    /// Maximum tokens per `prompt + completion` sequence (`None` = no limit).
    pub max_length: Option<usize>,
    /// Which end of an over-long sequence is kept.
    pub truncation_mode: TruncationMode,
    /// Token id written into padding (never trained, never attended to by real tokens).
    pub pad_token_id: u32,
}

impl CollateOptions {
    /// Whether TRL keeps this example: with `keep_start`, a prompt that alone fills
    /// `max_length` leaves no completion token, and the example is dropped.
    pub fn keeps(&self, ex: &PreferenceExample) -> bool {
        match (self.max_length, self.truncation_mode) {
            (Some(m), TruncationMode::KeepStart) => ex.prompt_ids.len() < m,
            _ => true,
        }
    }

    /// `prompt + completion` and its completion mask, truncated.
    fn sequence(&self, prompt: &[u32], completion: &[u32]) -> (Vec<u32>, Vec<f32>) {
        let mut ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
        let mut mask: Vec<f32> = std::iter::repeat_n(0.0, prompt.len())
            .chain(std::iter::repeat_n(1.0, completion.len()))
            .collect();
        if let Some(m) = self.max_length.filter(|&m| ids.len() > m) {
            let start = match self.truncation_mode {
                TruncationMode::KeepStart => 0,
                TruncationMode::KeepEnd => ids.len() - m,
            };
            ids = ids[start..start + m].to_vec();
            mask = mask[start..start + m].to_vec();
        }
        (ids, mask)
    }
}

/// B preference pairs as one concatenated, right-padded batch.
#[derive(Debug, Clone)]
pub struct PairBatch {
    /// (2B, T) u32: rows `0..B` are `prompt + chosen`, rows `B..2B` are `prompt + rejected`.
    pub input_ids: Tensor,
    /// (2B, T) f32: 1 on completion tokens (the trained targets), 0 on prompt and padding.
    pub completion_mask: Tensor,
    /// (B,) index of each pair in the dataset (looks up precomputed reference log-probs).
    pub example_ids: Vec<usize>,
    /// Real (non-padding) tokens over all 2B rows.
    pub tokens: usize,
}

impl PairBatch {
    /// Number of preference pairs B.
    pub fn pairs(&self) -> usize {
        self.example_ids.len()
    }
}

/// Collates `examples` (with their dataset indices) into a [`PairBatch`] on `device`.
pub fn collate(
    examples: &[(usize, &PreferenceExample)],
    options: &CollateOptions,
    device: &Device,
) -> Result<PairBatch> {
    if examples.is_empty() {
        return Err(Error::Invalid("DPO collate: no examples".into()));
    }
    let mut rows = Vec::with_capacity(2 * examples.len());
    for (_, ex) in examples {
        rows.push(options.sequence(&ex.prompt_ids, &ex.chosen_ids));
    }
    for (_, ex) in examples {
        rows.push(options.sequence(&ex.prompt_ids, &ex.rejected_ids));
    }
    // at least 2 columns: the shift drops one position
    let t = rows
        .iter()
        .map(|(ids, _)| ids.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let tokens = rows.iter().map(|(ids, _)| ids.len()).sum();
    let mut ids = Vec::with_capacity(rows.len() * t);
    let mut mask = Vec::with_capacity(rows.len() * t);
    for (r_ids, r_mask) in &rows {
        ids.extend(
            r_ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(options.pad_token_id, t - r_ids.len())),
        );
        mask.extend(
            r_mask
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0.0, t - r_mask.len())),
        );
    }
    let n = rows.len();
    Ok(PairBatch {
        input_ids: Tensor::from_vec(ids, (n, t), device)?,
        completion_mask: Tensor::from_vec(mask, (n, t), device)?,
        example_ids: examples.iter().map(|(i, _)| *i).collect(),
        tokens,
    })
}

/// `log softmax(logits)[target]` for every position: `logits` (N, T, V), `targets`
/// (N, T) u32 → (N, T). Composed from ops with a backward (max is a detached constant).
pub fn token_logps(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = match logits.dtype() {
        DType::F16 | DType::BF16 => logits.to_dtype(DType::F32)?,
        _ => logits.clone(),
    };
    let max = logits.max_keepdim(D::Minus1)?.detach(); // (N, T, 1)
    let lse = (logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &max)?; // (N, T, 1)
    let picked = logits.gather(
        &targets.to_dtype(DType::U32)?.unsqueeze(2)?.contiguous()?,
        2,
    )?; // (N, T, 1)
    Ok((picked - lse)?.squeeze(2)?) // (N, T)
}

/// [`token_logps`] of `logits / temperature` without the logits: final hidden states
/// `hidden` `(N, T, H)` through [`Model::token_nll`] (`(h / T)·Wᵀ = (h·Wᵀ) / T`, the
/// `lm_head` has no bias). `targets` (N, T) → log-probs (N, T).
pub fn token_logps_fused(
    model: &Model,
    hidden: &Tensor,
    targets: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let (n, t, h) = hidden.dims3()?;
    let hidden = if temperature == 1.0 {
        hidden.clone()
    } else {
        (hidden / temperature)?
    };
    let labels = targets.to_dtype(DType::I64)?.flatten_all()?; // (N*T,)
    let ce = model.token_nll(&hidden.reshape((n * t, h))?, &labels)?;
    Ok(ce.nll.neg()?.reshape((n, t))?) // (N, T)
}

/// Per-row numbers of a concatenated forward.
#[derive(Debug, Clone)]
pub struct SequenceLogps {
    /// (2B,) summed log-prob of each row's completion tokens (differentiable).
    pub logps: Tensor,
    /// (2B,) completion tokens per row (f32).
    pub tokens: Tensor,
    /// (2B,) sum over completion positions of the vocabulary-mean logit (detached; TRL's `logits/*`).
    pub mean_logits_sum: Tensor,
}

/// Sums the log-probs of each row's completion tokens: position t−1 predicts token t,
/// counted where `completion_mask[t]` is 1. `logits`: (2B, T, V) for `batch`.
pub fn sequence_logps(logits: &Tensor, batch: &PairBatch) -> Result<SequenceLogps> {
    let (n, t, _v) = logits.dims3()?;
    // position t predicts token t+1; the last position predicts nothing (target 0, masked),
    // which keeps `logits` whole (gather needs it contiguous, a narrow would copy it)
    let next = batch.input_ids.narrow(1, 1, t - 1)?; // (2B, T-1)
    let targets = Tensor::cat(&[&next, &next.narrow(1, 0, 1)?.zeros_like()?], 1)?; // (2B, T)
    let mask = batch
        .completion_mask
        .narrow(1, 1, t - 1)?
        .to_dtype(DType::F32)?; // (2B, T-1)
    let mask = Tensor::cat(&[&mask, &mask.narrow(1, 0, 1)?.zeros_like()?], 1)?; // (2B, T)
    let per_token = token_logps(logits, &targets)?; // (2B, T)
    let logps = (&per_token * mask.to_dtype(per_token.dtype())?)?.sum(1)?; // (2B,)
    let mean_logit = logits.detach().to_dtype(DType::F32)?.mean(D::Minus1)?; // (2B, T)
    let mean_logits_sum = (mean_logit * &mask)?.sum(1)?; // (2B,)
    let tokens = mask.sum(1)?; // (2B,)
    debug_assert_eq!(logps.dims(), [n]);
    Ok(SequenceLogps {
        logps,
        tokens,
        mean_logits_sum,
    })
}

/// [`sequence_logps`] without the logits: the policy's final hidden states
/// `hidden` `(2B, T, H)` (from [`Model::forward_hidden`]) go through
/// [`Model::token_nll`] with non-completion targets ignored.
pub fn sequence_logps_fused(
    model: &Model,
    hidden: &Tensor,
    batch: &PairBatch,
) -> Result<SequenceLogps> {
    let (n, t, h) = hidden.dims3()?;
    let next = batch.input_ids.narrow(1, 1, t - 1)?.to_dtype(DType::I64)?; // (2B, T-1)
    let mask = batch
        .completion_mask
        .narrow(1, 1, t - 1)?
        .to_dtype(DType::F32)?; // (2B, T-1)
    let ignored = Tensor::full(smelt::ops::IGNORE_INDEX, (n, t - 1), next.device())?;
    let labels = mask.gt(0f32)?.where_cond(&next, &ignored)?; // (2B, T-1)
                                                              // the last position predicts nothing
    let labels = Tensor::cat(&[&labels, &ignored.narrow(1, 0, 1)?], 1)?.flatten_all()?; // (2B*T,)
    let flat = hidden.reshape((n * t, h))?; // (2B*T, H)
    let ce = model.token_nll(&flat, &labels)?; // nll (2B*T,), 0 where ignored
    let logps = ce.nll.reshape((n, t))?.sum(1)?.neg()?; // (2B,)
    let mask = Tensor::cat(&[&mask, &mask.narrow(1, 0, 1)?.zeros_like()?], 1)?; // (2B, T)
    let w_mean = model.lm_head_weight().detach().mean(0)?; // (H,)
    let mean_logit = hidden
        .detach()
        .broadcast_mul(&w_mean.to_dtype(hidden.dtype())?)?
        .sum(D::Minus1)?
        .to_dtype(DType::F32)?; // (2B, T)
    let mean_logits_sum = (mean_logit * &mask)?.sum(1)?; // (2B,)
    let tokens = mask.sum(1)?; // (2B,)
    Ok(SequenceLogps {
        logps,
        tokens,
        mean_logits_sum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(p: &[u32], c: &[u32], r: &[u32]) -> PreferenceExample {
        PreferenceExample {
            prompt_ids: p.to_vec(),
            chosen_ids: c.to_vec(),
            rejected_ids: r.to_vec(),
        }
    }

    fn opts(max_length: Option<usize>, truncation_mode: TruncationMode) -> CollateOptions {
        CollateOptions {
            max_length,
            truncation_mode,
            pad_token_id: 0,
        }
    }

    /// Chosen rows first, then rejected; right padding with mask 0; prompt masked out.
    #[test]
    fn layout_is_chosen_then_rejected_right_padded() {
        let (a, b) = (ex(&[1, 2], &[3], &[4, 5, 6]), ex(&[7], &[8, 9], &[10]));
        let batch = collate(
            &[(5, &a), (2, &b)],
            &opts(None, TruncationMode::KeepStart),
            &Device::Cpu,
        )
        .unwrap();
        let ids: Vec<Vec<u32>> = batch.input_ids.to_vec2().unwrap();
        let mask: Vec<Vec<f32>> = batch.completion_mask.to_vec2().unwrap();
        assert_eq!(
            ids,
            vec![
                vec![1, 2, 3, 0, 0],
                vec![7, 8, 9, 0, 0],
                vec![1, 2, 4, 5, 6],
                vec![7, 10, 0, 0, 0]
            ]
        );
        assert_eq!(mask[0], vec![0., 0., 1., 0., 0.]);
        assert_eq!(mask[2], vec![0., 0., 1., 1., 1.]);
        assert_eq!(mask[3], vec![0., 1., 0., 0., 0.]);
        assert_eq!(batch.example_ids, vec![5, 2]);
        assert_eq!(batch.tokens, 3 + 3 + 5 + 2);
    }

    /// keep_start keeps the head (completion tail cut); keep_end keeps the tail (prompt head cut);
    /// keep_start drops an example whose prompt fills `max_length`.
    #[test]
    fn truncation_modes_cut_like_trl() {
        let e = ex(&[1, 2, 3], &[4, 5, 6], &[7]);
        let start = collate(
            &[(0, &e)],
            &opts(Some(4), TruncationMode::KeepStart),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(
            start.input_ids.to_vec2::<u32>().unwrap()[0],
            vec![1, 2, 3, 4]
        );
        assert_eq!(
            start.completion_mask.to_vec2::<f32>().unwrap()[0],
            vec![0., 0., 0., 1.]
        );
        let end = collate(
            &[(0, &e)],
            &opts(Some(4), TruncationMode::KeepEnd),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(
            end.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![3, 4, 5, 6], vec![1, 2, 3, 7]]
        );
        assert_eq!(
            end.completion_mask.to_vec2::<f32>().unwrap()[0],
            vec![0., 1., 1., 1.]
        );
        assert!(!opts(Some(3), TruncationMode::KeepStart).keeps(&e));
        assert!(opts(Some(4), TruncationMode::KeepStart).keeps(&e));
        assert!(opts(Some(3), TruncationMode::KeepEnd).keeps(&e));
    }

    /// Hand logits: each position's log-softmax at the next token, summed over the
    /// completion only. Row 0 = [1, 2 | 3] (prompt 1, 2): only position 1 → token 3 counts.
    #[test]
    fn sequence_logps_sum_completion_targets() {
        let e = ex(&[1, 2], &[3], &[0]);
        let batch = collate(
            &[(0, &e)],
            &opts(None, TruncationMode::KeepStart),
            &Device::Cpu,
        )
        .unwrap();
        let v = 4;
        // logits[r][t][k] = 0.1 (r + 1) (t + 1) k, so the log-softmax is known in closed form
        let data: Vec<f64> = (0..2 * 3 * v)
            .map(|i| {
                let (r, t, k) = (i / 12, (i / 4) % 3, i % 4);
                0.1 * ((r + 1) * (t + 1) * k) as f64
            })
            .collect();
        let logits = Tensor::from_vec(data.clone(), (2, 3, v), &Device::Cpu).unwrap();
        let out = sequence_logps(&logits, &batch).unwrap();
        let lsm = |r: usize, t: usize, k: usize| {
            let row = &data[(r * 3 + t) * v..(r * 3 + t + 1) * v];
            row[k] - row.iter().map(|x| x.exp()).sum::<f64>().ln()
        };
        let got: Vec<f64> = out.logps.to_vec1().unwrap();
        assert!((got[0] - lsm(0, 1, 3)).abs() < 1e-12);
        assert!((got[1] - lsm(1, 1, 0)).abs() < 1e-12);
        assert_eq!(out.tokens.to_vec1::<f32>().unwrap(), vec![1.0, 1.0]);
        let mean0: f64 = data[4..8].iter().sum::<f64>() / 4.0; // row 0, position 1
        assert!((out.mean_logits_sum.to_vec1::<f32>().unwrap()[0] as f64 - mean0).abs() < 1e-6);
    }

    /// The fused route equals the explicit-logits route on a tiny model.
    #[test]
    fn fused_sequence_logps_equal_the_logits_route() {
        let config = smelt::ModelConfig::tiny(smelt::ModelType::Llama, 11);
        let model = Model::new_random(config, &Device::Cpu, 3).unwrap();
        let (e1, e2) = (ex(&[1, 2], &[3, 4, 5], &[6]), ex(&[7], &[8], &[9, 10, 2]));
        let batch = collate(
            &[(0, &e1), (1, &e2)],
            &opts(None, TruncationMode::KeepStart),
            &Device::Cpu,
        )
        .unwrap();
        let hidden = model.forward_hidden(&batch.input_ids, None).unwrap();
        let fused = sequence_logps_fused(&model, &hidden, &batch).unwrap();
        let explicit = sequence_logps(&model.logits(&hidden).unwrap(), &batch).unwrap();
        for (a, b) in [
            (&fused.logps, &explicit.logps),
            (&fused.tokens, &explicit.tokens),
            (&fused.mean_logits_sum, &explicit.mean_logits_sum),
        ] {
            let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{a:?} vs {b:?}");
            }
        }
    }
}
