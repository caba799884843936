//! The GRPO token loss and its aggregations, each a small function.
//!
//! Per completion token (TRL 1.16 `GRPOTrainer._compute_loss`, `importance_sampling_level
//! = "token"`): ratio `r = exp(log π_θ − log π_old)`, clipped surrogate
//! `ℓ = −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A)`, times the truncated importance
//! weight `w = min(exp(log π_old − log π_behaviour), C)` (trainer vs sampler mismatch,
//! detached), plus `β · k3` with `k3 = exp(ref − logp) − (ref − logp) − 1`.
//!
//! The key decision: the clip is written as "the region where `min` picks the constant
//! clipped term" — `(r < 1−ε_low ∧ A < 0) ∨ (r > 1+ε_high ∧ A > 0)`, TRL's
//! `is_region_clipped` — so value and gradient equal PyTorch's `-min(...)` without
//! relying on candle's tie-splitting `minimum` backward.
//!
//! Aggregations return the loss *summed* over the algorithm's loss units; the training
//! loop divides by the units of the whole accumulated step ([`loss_units`]). Each
//! function's doc comment shows why that reproduces TRL's normalisation exactly.

use super::config::LossType;
use candle_core::{DType, Tensor, D};
use smelt::Result;

/// Inputs of [`token_loss`]; every tensor `(B, T)` except `advantages` `(B, 1)`.
#[derive(Debug)]
pub struct TokenLossInputs<'a> {
    /// log π_θ of each target token (differentiable).
    pub logps: &'a Tensor,
    /// log π_old (detached): the trainer's log-probs when the batch was generated.
    pub old_logps: &'a Tensor,
    /// Truncated importance weight trainer/sampler (detached), if corrected.
    pub is_weight: Option<&'a Tensor>,
    /// Reference log-probs for the KL term, if β > 0.
    pub ref_logps: Option<&'a Tensor>,
    /// Group-relative advantage per sequence `(B, 1)`.
    pub advantages: &'a Tensor,
    /// KL coefficient β.
    pub beta: f64,
    /// Lower clip ε.
    pub epsilon_low: f64,
    /// Upper clip ε.
    pub epsilon_high: f64,
}

/// Per-token outputs of [`token_loss`], all `(B, T)`.
#[derive(Debug)]
pub struct TokenLoss {
    /// ℓ per token (differentiable), not yet masked.
    pub loss: Tensor,
    /// The ratio r (detached).
    pub ratio: Tensor,
    /// 1 where r < 1−ε_low and A < 0 (f32).
    pub low_clipped: Tensor,
    /// 1 where r > 1+ε_high and A > 0 (f32).
    pub high_clipped: Tensor,
    /// k3 KL estimate (detached), when β > 0.
    pub kl: Option<Tensor>,
}

/// The per-token GRPO loss; see the module docs for the formula.
pub fn token_loss(i: &TokenLossInputs) -> Result<TokenLoss> {
    let ratio = (i.logps - i.old_logps)?.exp()?; // (B, T), exactly 1 where logps == old
    let r = ratio.detach();
    let adv = i.advantages.broadcast_as(r.shape())?; // (B, T)
    let zeros = adv.zeros_like()?;
    let low = r
        .lt(1.0 - i.epsilon_low)?
        .to_dtype(DType::F32)?
        .mul(&adv.lt(&zeros)?.to_dtype(DType::F32)?)?; // (B, T)
    let high = r
        .gt(1.0 + i.epsilon_high)?
        .to_dtype(DType::F32)?
        .mul(&adv.gt(&zeros)?.to_dtype(DType::F32)?)?; // (B, T)
    let clipped = (&low + &high)?; // disjoint regions: 0/1
    let bound = ((&low * (1.0 - i.epsilon_low))? + (&high * (1.0 + i.epsilon_high))?)?; // (B, T)
    let kept = ((ratio * (1.0 - &clipped)?)? + bound)?; // r outside the clipped region, the bound inside
    let mut loss = kept.mul(&adv)?.neg()?; // (B, T)
    if let Some(w) = i.is_weight {
        loss = loss.mul(w)?;
    }
    let mut kl = None;
    if let (Some(reference), true) = (i.ref_logps, i.beta != 0.0) {
        let k3 = k3_kl(reference, i.logps)?; // (B, T)
        loss = (loss + (&k3 * i.beta)?)?;
        kl = Some(k3.detach());
    }
    Ok(TokenLoss {
        loss,
        ratio: r,
        low_clipped: low,
        high_clipped: high,
        kl,
    })
}

/// k3 estimator of KL(π_θ ‖ π_ref) per token: `exp(ref − logp) − (ref − logp) − 1` ≥ 0.
///
/// By hand: ref − logp = ln 2 → 2 − ln 2 − 1 = 0.306853; = 0 → 0.
pub fn k3_kl(ref_logps: &Tensor, logps: &Tensor) -> Result<Tensor> {
    let d = (ref_logps - logps)?; // (B, T)
    Ok(((d.exp()? - &d)? - 1.0)?)
}

/// Truncated importance weight `min(exp((old − behaviour)·mask), cap)` per token, `(B, T)`
/// (TRL `token_truncate`); masked positions get weight 1.
pub fn truncated_is_weight(
    old: &Tensor,
    behaviour: &Tensor,
    mask: &Tensor,
    cap: f64,
) -> Result<Tensor> {
    let w = ((old - behaviour)? * mask)?.exp()?; // (B, T)
    Ok(w.clamp(0.0f32, cap as f32)?.detach())
}

/// `grpo`: Σ_i (Σ_t ℓ_it m_it / max(Σ_t m_it, 1)) — the sum of per-sequence means; one
/// loss unit per sequence.
///
/// TRL divides the micro-batch's mean over sequences by the accumulation steps; with
/// equal micro-batches of b sequences over k steps that is Σ_all seq-means / (k·b), and
/// the loop divides this sum by the step's sequences k·b.
pub fn sequence_mean_sum(loss: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let per_seq = (loss * mask)?.sum(D::Minus1)?; // (B,)
    let lens = mask.sum(D::Minus1)?.clamp(1.0f32, f32::MAX)?; // (B,)
    Ok((per_seq / lens)?.sum_all()?)
}

/// `dapo`: Σ ℓ·m over every token — one loss unit per completion token, so the loop
/// divides by the tokens of the whole accumulated step (TRL's `num_items_in_batch`).
pub fn token_sum(loss: &Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok((loss * mask)?.sum_all()?)
}

/// `dr_grpo`: Σ ℓ·m / L_max — one unit per sequence, so the loop's division gives
/// Σ ℓ·m / (B_step · L_max), TRL's `(per_token_loss*mask).sum() / (B · max_completion_length)`
/// over accumulated micro-batches of equal size.
pub fn constant_normalised_sum(
    loss: &Tensor,
    mask: &Tensor,
    max_completion_length: usize,
) -> Result<Tensor> {
    Ok((token_sum(loss, mask)? / max_completion_length as f64)?)
}

/// `bnpo`: Σ ℓ·m / max(Σ m, 1) over *this micro-batch* — one unit per micro-batch, so the
/// loop divides by the accumulation steps, exactly TRL's local-batch normalisation.
pub fn local_token_mean(loss: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let n = mask.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((token_sum(loss, mask)? / n.max(1.0))?)
}

/// The summed loss of `loss_type` over a micro-batch.
pub fn aggregate(
    kind: LossType,
    loss: &Tensor,
    mask: &Tensor,
    max_completion_length: usize,
) -> Result<Tensor> {
    match kind {
        LossType::Grpo => sequence_mean_sum(loss, mask),
        LossType::Bnpo => local_token_mean(loss, mask),
        LossType::DrGrpo => constant_normalised_sum(loss, mask, max_completion_length),
        LossType::Dapo => token_sum(loss, mask),
    }
}

/// Loss units of a micro-batch with `sequences` rows and `tokens` trained completion tokens.
pub fn loss_units(kind: LossType, sequences: usize, tokens: usize) -> f64 {
    match kind {
        LossType::Grpo | LossType::DrGrpo => sequences as f64,
        LossType::Bnpo => 1.0,
        LossType::Dapo => tokens as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t2(v: &[[f32; 3]; 2]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn v(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2::<f32>().unwrap()
    }

    fn s(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    /// ℓ = [[1, 2, 3], [4, 5, 6]], m = [[1, 1, 0], [1, 0, 0]]:
    /// grpo: (1+2)/2 + 4/1 = 5.5 (units 2); dapo: 1+2+4 = 7 (units 3);
    /// dr_grpo with L=4: 7/4 = 1.75 (units 2); bnpo: 7/3 (units 1).
    /// After the loop's division: 2.75, 7/3, 0.875, 7/3 — TRL's four formulas on this batch.
    #[test]
    fn aggregations_by_hand() {
        let l = t2(&[[1., 2., 3.], [4., 5., 6.]]);
        let m = t2(&[[1., 1., 0.], [1., 0., 0.]]);
        let cases = [
            (LossType::Grpo, 5.5, 2.0),
            (LossType::Dapo, 7.0, 3.0),
            (LossType::DrGrpo, 1.75, 2.0),
            (LossType::Bnpo, 7.0 / 3.0, 1.0),
        ];
        for (kind, sum, units) in cases {
            let got = s(&aggregate(kind, &l, &m, 4).unwrap());
            assert!((got - sum as f32).abs() < 1e-6, "{kind:?}: {got} vs {sum}");
            assert_eq!(loss_units(kind, 2, 3), units, "{kind:?}");
        }
        // an all-masked row counts as a sequence with mean 0 (TRL clamps the length to 1)
        let m0 = t2(&[[0., 0., 0.], [1., 0., 0.]]);
        assert_eq!(s(&sequence_mean_sum(&l, &m0).unwrap()), 4.0);
    }

    /// r = exp(Δ) with Δ = ln 1.5 / ln 0.5 / 0, ε = 0.2:
    /// A = +1: r = 1.5 > 1.2 → clipped, ℓ = −1.2 (no gradient); r = 0.5 → ℓ = −0.5, dℓ/dlogp = −0.5;
    /// A = −1: r = 1.5 → ℓ = +1.5 (not clipped, dℓ/dlogp = 1.5); r = 0.5 < 0.8 → ℓ = +0.8 clipped.
    /// r = 1 → ℓ = −A, never clipped.
    #[test]
    fn clipped_surrogate_by_hand() {
        let old = t2(&[[0., 0., 0.], [0., 0., 0.]]);
        let d = [1.5f32.ln(), 0.5f32.ln(), 0.0];
        let logps = Var::from_tensor(&t2(&[d, d])).unwrap();
        let adv = Tensor::new(&[[1f32], [-1.]], &Device::Cpu).unwrap();
        let out = token_loss(&TokenLossInputs {
            logps: logps.as_tensor(),
            old_logps: &old,
            is_weight: None,
            ref_logps: None,
            advantages: &adv,
            beta: 0.0,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
        })
        .unwrap();
        let want = [[-1.2f32, -0.5, -1.0], [1.5, 0.8, 1.0]];
        for (row, w) in v(&out.loss).iter().zip(want) {
            for (a, b) in row.iter().zip(w) {
                assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            }
        }
        assert_eq!(
            v(&out.high_clipped),
            vec![vec![1., 0., 0.], vec![0., 0., 0.]]
        );
        assert_eq!(
            v(&out.low_clipped),
            vec![vec![0., 0., 0.], vec![0., 1., 0.]]
        );
        let g = out.loss.sum_all().unwrap().backward().unwrap();
        let g = v(g.get(logps.as_tensor()).unwrap());
        let want_g = [[0.0f32, -0.5, -1.0], [1.5, 0.0, 1.0]];
        for (row, w) in g.iter().zip(want_g) {
            for (a, b) in row.iter().zip(w) {
                assert!((a - b).abs() < 1e-6, "grad {a} vs {b}");
            }
        }
    }

    /// old = logps.detach() gives r = exp(0) = 1 exactly and nothing clipped, even with ε = 0.
    #[test]
    fn ratio_is_exactly_one_on_policy() {
        let logps = Var::from_tensor(&t2(&[[-0.3, -2.7, -0.01], [-5.0, -1.1, -0.7]])).unwrap();
        let adv = Tensor::new(&[[3f32], [-2.]], &Device::Cpu).unwrap();
        let old = logps.as_tensor().detach();
        let out = token_loss(&TokenLossInputs {
            logps: logps.as_tensor(),
            old_logps: &old,
            is_weight: None,
            ref_logps: None,
            advantages: &adv,
            beta: 0.0,
            epsilon_low: 0.0,
            epsilon_high: 0.0,
        })
        .unwrap();
        assert!(v(&out.ratio).iter().flatten().all(|r| *r == 1.0));
        let clipped = (&out.low_clipped + &out.high_clipped).unwrap();
        assert!(v(&clipped).iter().flatten().all(|c| *c == 0.0));
    }

    /// k3 at ref − logp = ln 2: 2 − ln 2 − 1 = 0.30685; IS weight exp(ln 5) = 5 capped at 3,
    /// exp(ln 0.5) = 0.5 kept, masked position → 1. With β = 0.1, A = 1, r = 1, w = 3:
    /// ℓ = −1·3 + 0.1·0.30685 = −2.969315.
    #[test]
    fn kl_and_truncated_is_by_hand() {
        let logps = t2(&[[0., 0., 0.], [0., 0., 0.]]);
        let reference = t2(&[[2f32.ln(), 0., 0.], [0., 0., 0.]]);
        let kl = v(&k3_kl(&reference, &logps).unwrap());
        assert!((kl[0][0] - (1.0 - 2f32.ln())).abs() < 1e-6 && kl[0][1] == 0.0);
        let behaviour = t2(&[[-(5f32.ln()), 2f32.ln(), 7.], [0., 0., 0.]]);
        let mask = t2(&[[1., 1., 0.], [1., 1., 1.]]);
        let w = v(&truncated_is_weight(&logps, &behaviour, &mask, 3.0).unwrap());
        assert_eq!(w[0][0], 3.0);
        assert!((w[0][1] - 0.5).abs() < 1e-6 && w[0][2] == 1.0 && w[1][0] == 1.0);
        let wt = t2(&[[w[0][0], w[0][1], w[0][2]], [1., 1., 1.]]);
        let adv = Tensor::new(&[[1f32], [1.]], &Device::Cpu).unwrap();
        let out = token_loss(&TokenLossInputs {
            logps: &logps,
            old_logps: &logps,
            is_weight: Some(&wt),
            ref_logps: Some(&reference),
            advantages: &adv,
            beta: 0.1,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
        })
        .unwrap();
        let l = v(&out.loss);
        assert!(
            (l[0][0] - (-3.0 + 0.1 * (1.0 - 2f32.ln()))).abs() < 1e-6,
            "{}",
            l[0][0]
        );
        assert!((l[0][1] + 0.5).abs() < 1e-6);
    }
}
