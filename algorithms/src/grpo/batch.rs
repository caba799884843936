//! `RolloutBatch`: one micro-batch of rollouts collated into right-padded tensors.
//!
//! Row i is `prompt_i ++ completion_i`, right-padded to the longest row (causal
//! attention makes trailing padding invisible to earlier positions, so no attention mask
//! or position ids are needed). Position t predicts token t+1; completion token k of a
//! row with prompt length p is predicted at position `p − 1 + k`, which is where the
//! mask, behaviour log-probs and old log-probs are written.

use candle_core::{Device, Tensor};
use smelt::train::Metrics;
use smelt::Result;
use smelt_rollouts::{FinishReason, Rollout};

/// A micro-batch for [`super::Grpo`].
#[derive(Debug, Clone)]
pub struct RolloutBatch {
    /// (B, T) u32: prompt then completion, right-padded with 0.
    pub input_ids: Tensor,
    /// (B, T) u32: the token each position predicts (0 where none).
    pub targets: Tensor,
    /// (B, T) f32: 1 where the target is a trained completion token.
    pub mask: Tensor,
    /// (B, 1) f32: group-relative advantage of each row.
    pub advantages: Tensor,
    /// (B, T) f32: the sampler's behaviour log-probs at the mask positions (0 elsewhere).
    pub behaviour_logps: Tensor,
    /// (B, T) f32: the trainer's log-probs when the batch was generated (μ > 1), else `None`
    /// (then π_old = π_θ detached, TRL's shortcut).
    pub old_logps: Option<Tensor>,
    /// Rows B.
    pub sequences: usize,
    /// Trained completion tokens (Σ mask).
    pub tokens: usize,
    /// Metrics observed once per optimizer step (generation stats, staleness).
    pub step_metrics: Option<Metrics>,
}

/// Per row: prompt length and the mask positions' start.
fn layout(r: &Rollout) -> (usize, usize) {
    let p = r.prompt_ids.len();
    (p, p.saturating_sub(1))
}

/// Collates `rollouts` with their `advantages` (and per-token old log-probs, one vector
/// per rollout, if any). Truncated completions are masked out when `mask_truncated`.
pub fn collate(
    rollouts: &[Rollout],
    advantages: &[f32],
    old_logps: Option<&[Vec<f32>]>,
    mask_truncated: bool,
    device: &Device,
) -> Result<RolloutBatch> {
    let b = rollouts.len();
    let t = rollouts
        .iter()
        .map(|r| r.prompt_ids.len() + r.completion_ids.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let (mut ids, mut targets) = (vec![0u32; b * t], vec![0u32; b * t]);
    let (mut mask, mut behaviour) = (vec![0f32; b * t], vec![0f32; b * t]);
    let mut old = old_logps.map(|_| vec![0f32; b * t]);
    let mut tokens = 0;
    for (i, r) in rollouts.iter().enumerate() {
        let n = r.completion_ids.len();
        let old_len = old_logps.map(|o| o.get(i).map_or(0, |v| v.len()));
        if r.behaviour_logprobs.len() != n
            || old_len.is_some_and(|l| l != n)
            || r.prompt_ids.is_empty()
        {
            return Err(smelt::Error::Invalid(format!(
                "rollout (prompt {}, sample {}): {} prompt tokens, {n} completion tokens but {} behaviour log-probs{}",
                r.prompt_index,
                r.sample_index,
                r.prompt_ids.len(),
                r.behaviour_logprobs.len(),
                old_len.map_or(String::new(), |l| format!(" and {l} old log-probs")),
            )));
        }
        let row = &mut ids[i * t..(i + 1) * t];
        let seq: Vec<u32> = r
            .prompt_ids
            .iter()
            .chain(&r.completion_ids)
            .copied()
            .collect();
        row[..seq.len()].copy_from_slice(&seq);
        targets[i * t..i * t + seq.len() - 1].copy_from_slice(&seq[1..]);
        let trained = !(mask_truncated && r.finish == FinishReason::Length);
        let (_, start) = layout(r);
        for k in 0..r.completion_ids.len() {
            let at = i * t + start + k;
            mask[at] = if trained { 1.0 } else { 0.0 };
            behaviour[at] = r.behaviour_logprobs[k];
            if let (Some(o), Some(src)) = (old.as_mut(), old_logps) {
                o[at] = src[i][k];
            }
        }
        if trained {
            tokens += r.completion_ids.len();
        }
    }
    let shape = (b, t);
    Ok(RolloutBatch {
        input_ids: Tensor::from_vec(ids, shape, device)?,
        targets: Tensor::from_vec(targets, shape, device)?,
        mask: Tensor::from_vec(mask, shape, device)?,
        advantages: Tensor::from_vec(advantages.to_vec(), (b, 1), device)?,
        behaviour_logps: Tensor::from_vec(behaviour, shape, device)?,
        old_logps: old
            .map(|o| Tensor::from_vec(o, shape, device))
            .transpose()?,
        sequences: b,
        tokens,
        step_metrics: None,
    })
}

/// Reads each rollout's completion positions out of a `(B, T)` per-token tensor.
pub fn per_rollout(values: &Tensor, rollouts: &[Rollout]) -> Result<Vec<Vec<f32>>> {
    let rows = values.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    Ok(rollouts
        .iter()
        .zip(rows)
        .map(|(r, row)| {
            let (_, start) = layout(r);
            row[start..start + r.completion_ids.len()].to_vec()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(prompt: Vec<u32>, completion: Vec<u32>, finish: FinishReason) -> Rollout {
        let n = completion.len();
        Rollout {
            prompt_index: 0,
            sample_index: 0,
            prompt_ids: prompt,
            completion_ids: completion,
            completion_text: String::new(),
            behaviour_logprobs: (0..n).map(|k| -(k as f32) - 1.0).collect(),
            processed_logprobs: vec![0.0; n],
            finish,
            reward: 0.0,
            rewards: Default::default(),
            weight_version: 0,
            generation_s: 0.0,
        }
    }

    #[test]
    fn positions_line_up() {
        let rs = vec![
            rollout(vec![5, 6], vec![7, 8, 9], FinishReason::Stop),
            rollout(vec![4], vec![3], FinishReason::Length),
        ];
        let b = collate(&rs, &[1.0, -1.0], None, true, &Device::Cpu).unwrap();
        assert_eq!(
            b.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 7, 8, 9], vec![4, 3, 0, 0, 0]]
        );
        assert_eq!(
            b.targets.to_vec2::<u32>().unwrap(),
            vec![vec![6, 7, 8, 9, 0], vec![3, 0, 0, 0, 0]]
        );
        // row 0 predicts its completion at positions 1..4; row 1 is truncated and masked
        assert_eq!(
            b.mask.to_vec2::<f32>().unwrap(),
            vec![vec![0., 1., 1., 1., 0.], vec![0.; 5]]
        );
        assert_eq!(b.tokens, 3);
        let back = per_rollout(&b.behaviour_logps, &rs).unwrap();
        assert_eq!(back, vec![vec![-1., -2., -3.], vec![-1.]]);
    }
}
