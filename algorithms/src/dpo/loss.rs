//! The DPO loss family: one small function per `loss_type`, combined with weights.
//!
//! Every loss reads the same inputs, per-sequence *summed* completion log-probs of the
//! policy and of the reference for the chosen and the rejected completion of each pair
//! ([`PairLogps`], all `(B,)`), and returns a per-pair loss `(B,)`. Kinds are a serde
//! enum ([`DpoLossType`]) dispatched by one `match`, so a misspelt kind fails when the
//! config is read, and each arm can be tested alone (hand-derived values and finite
//! differences below). Formulas follow TRL 1.16 `DPOTrainer._compute_loss` with the
//! default `f_divergence_type = "reverse_kl"`.
//!
//! Two deliberate departures, both so that a per-pair loss exists (the training loop
//! sums per-pair losses and divides by the pairs of the whole step, which is what makes
//! accumulation invariant):
//! - `sft` is the mean NLL over *each pair's* chosen tokens; TRL takes the mean over all
//!   chosen tokens of the micro-batch (equal when the micro-batch holds one pair or the
//!   chosen completions have equal lengths).
//! - `bco_pair` can shift rewards by a running reward mean δ ([`RunningMean`]) as in the
//!   BCO paper and TRL before 1.x; TRL 1.16 uses δ = 0, which is the default here too.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// One DPO loss kind (TRL's `loss_type` strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLossType {
    /// `−ln σ(β h)`, h = (πc − rc) − (πr − rr): the DPO paper's loss (Rafailov et al. 2023).
    Sigmoid,
    /// IPO (Azar et al. 2023, Eq. 17) on per-token averaged log-ratios: `(h̄ − 1/(2β))²`.
    Ipo,
    /// SLiC hinge: `relu(1 − β h)`.
    Hinge,
    /// Robust DPO (Chowdhury et al. 2024): unbiased under label-flip rate ε = `label_smoothing`.
    Robust,
    /// BCO on pairs: `−ln σ(β Δc − δ) − ln σ(−(β Δr − δ))`, δ a running reward mean (or 0).
    BcoPair,
    /// SPPO with hard labels: `(Δc − 1/(2β))² + (Δr + 1/(2β))²`.
    SppoHard,
    /// NCA on pairs: `−ln σ(β Δc) − ½ ln σ(−β Δc) − ½ ln σ(−β Δr)`.
    NcaPair,
    /// APO-zero (D'Oosterlinck et al. 2024, Eq. 7; SmolLM3's choice): `1 − σ(β Δc) + σ(β Δr)`.
    ApoZero,
    /// APO-down (Eq. 8): `σ(β Δc) + 1 − σ(β (Δc − Δr))`.
    ApoDown,
    /// NLL on the chosen completion, averaged over its tokens (RPO's term, `rpo_alpha`).
    Sft,
}

impl DpoLossType {
    /// Per-pair loss `(B,)` of this kind alone.
    pub fn per_pair(self, p: &PairLogps, h: &LossParams) -> Result<Tensor> {
        match self {
            DpoLossType::Sigmoid => sigmoid(p, h.beta),
            DpoLossType::Ipo => ipo(p, h.beta),
            DpoLossType::Hinge => hinge(p, h.beta),
            DpoLossType::Robust => robust(p, h.beta, h.label_smoothing),
            DpoLossType::BcoPair => bco_pair(p, h.beta, h.bco_delta),
            DpoLossType::SppoHard => sppo_hard(p, h.beta),
            DpoLossType::NcaPair => nca_pair(p, h.beta),
            DpoLossType::ApoZero => apo_zero(p, h.beta),
            DpoLossType::ApoDown => apo_down(p, h.beta),
            DpoLossType::Sft => sft(p),
        }
    }

    /// The TRL name of this kind (`"apo_zero"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DpoLossType::Sigmoid => "sigmoid",
            DpoLossType::Ipo => "ipo",
            DpoLossType::Hinge => "hinge",
            DpoLossType::Robust => "robust",
            DpoLossType::BcoPair => "bco_pair",
            DpoLossType::SppoHard => "sppo_hard",
            DpoLossType::NcaPair => "nca_pair",
            DpoLossType::ApoZero => "apo_zero",
            DpoLossType::ApoDown => "apo_down",
            DpoLossType::Sft => "sft",
        }
    }
}

/// The inputs every loss reads; all `(B,)`, same float dtype.
#[derive(Debug, Clone)]
pub struct PairLogps {
    /// Policy log-prob of each chosen completion, summed over its tokens (differentiable).
    pub chosen: Tensor,
    /// Policy log-prob of each rejected completion (differentiable).
    pub rejected: Tensor,
    /// Reference log-prob of each chosen completion (a constant).
    pub ref_chosen: Tensor,
    /// Reference log-prob of each rejected completion (a constant).
    pub ref_rejected: Tensor,
    /// Completion tokens of each chosen completion (IPO and SFT average by it; ≥ 1 is enforced).
    pub chosen_tokens: Tensor,
    /// Completion tokens of each rejected completion.
    pub rejected_tokens: Tensor,
}

impl PairLogps {
    /// Chosen log-ratio Δc = πc − rc, `(B,)`.
    pub fn chosen_logratios(&self) -> Result<Tensor> {
        &self.chosen - &self.ref_chosen
    }

    /// Rejected log-ratio Δr = πr − rr, `(B,)`.
    pub fn rejected_logratios(&self) -> Result<Tensor> {
        &self.rejected - &self.ref_rejected
    }
}

/// Scalar hyper-parameters of the losses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossParams {
    /// β, the strength of the implicit KL penalty (TRL `beta`).
    pub beta: f64,
    /// ε of `robust` (TRL `label_smoothing`).
    pub label_smoothing: f64,
    /// δ of `bco_pair`: the reward shift (0 in TRL 1.16).
    pub bco_delta: f64,
}

/// `ln σ(x) = min(x, 0) − ln(1 + e^{−|x|})`, stable for large `|x|`, any shape.
///
/// `min(x, 0)` is written `(x − |x|) / 2` so that both terms use the same one-sided
/// derivative of `|x|` at 0 and the gradient there is the true 1/2 (a `relu` would
/// add a second kink and give 3/2).
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let abs = x.abs()?;
    let soft = (abs.neg()?.exp()? + 1.0)?.log()?; // ln(1 + e^{−|x|})
    ((x - &abs)? * 0.5)? - soft
}

/// `σ(x) = exp(ln σ(x))`.
pub fn sigmoid_fn(x: &Tensor) -> Result<Tensor> {
    log_sigmoid(x)?.exp()
}

/// h = Δc − Δr, `(B,)`.
fn margin(p: &PairLogps) -> Result<Tensor> {
    p.chosen_logratios()? - p.rejected_logratios()?
}

fn sigmoid(p: &PairLogps, beta: f64) -> Result<Tensor> {
    let h = margin(p)?; // (B,)
    log_sigmoid(&(h * beta)?)?.neg() // (B,)
}

fn hinge(p: &PairLogps, beta: f64) -> Result<Tensor> {
    let h = margin(p)?; // (B,)
    h.affine(-beta, 1.0)?.relu() // (B,)  relu(1 − βh)
}

fn ipo(p: &PairLogps, beta: f64) -> Result<Tensor> {
    let nc = p.chosen_tokens.clamp(1.0, f64::INFINITY)?; // (B,)
    let nr = p.rejected_tokens.clamp(1.0, f64::INFINITY)?; // (B,)
    let h_avg = ((p.chosen_logratios()? / nc)? - (p.rejected_logratios()? / nr)?)?; // (B,)
    (h_avg - 1.0 / (2.0 * beta))?.sqr() // (B,)
}

fn robust(p: &PairLogps, beta: f64, eps: f64) -> Result<Tensor> {
    let bh = (margin(p)? * beta)?; // (B,)
    let clean = (log_sigmoid(&bh)? * -(1.0 - eps))?; // (B,)  −(1−ε) ln σ(βh)
    let flipped = (log_sigmoid(&bh.neg()?)? * -eps)?; // (B,)  −ε ln σ(−βh)
    (clean - flipped)? / (1.0 - 2.0 * eps) // (B,)
}

fn bco_pair(p: &PairLogps, beta: f64, delta: f64) -> Result<Tensor> {
    let rc = p.chosen_logratios()?.affine(beta, -delta)?; // (B,)  βΔc − δ
    let rr = p.rejected_logratios()?.affine(beta, -delta)?; // (B,)  βΔr − δ
    log_sigmoid(&rc)?.neg()? - log_sigmoid(&rr.neg()?)? // (B,)
}

fn sppo_hard(p: &PairLogps, beta: f64) -> Result<Tensor> {
    let half = 0.5 / beta;
    let win = (p.chosen_logratios()? - half)?.sqr()?; // (B,)
    let lose = (p.rejected_logratios()? + half)?.sqr()?; // (B,)
    win + lose
}

fn nca_pair(p: &PairLogps, beta: f64) -> Result<Tensor> {
    let rc = (p.chosen_logratios()? * beta)?; // (B,)
    let rr = (p.rejected_logratios()? * beta)?; // (B,)
    let a = log_sigmoid(&rc)?.neg()?; // (B,)
    let b = (log_sigmoid(&rc.neg()?)? * -0.5)?; // (B,)
    let c = (log_sigmoid(&rr.neg()?)? * -0.5)?; // (B,)
    (a + b)? + c
}

fn apo_zero(p: &PairLogps, beta: f64) -> Result<Tensor> {
    let up = sigmoid_fn(&(p.chosen_logratios()? * beta)?)?.affine(-1.0, 1.0)?; // (B,)  1 − σ(βΔc)
    let down = sigmoid_fn(&(p.rejected_logratios()? * beta)?)?; // (B,)  σ(βΔr)
    up + down
}

fn apo_down(p: &PairLogps, beta: f64) -> Result<Tensor> {
    let chosen = sigmoid_fn(&(p.chosen_logratios()? * beta)?)?; // (B,)  σ(βΔc)
    let gap = sigmoid_fn(&(margin(p)? * beta)?)?.affine(-1.0, 1.0)?; // (B,)  1 − σ(βh)
    chosen + gap
}

fn sft(p: &PairLogps) -> Result<Tensor> {
    let n = p.chosen_tokens.clamp(1.0, f64::INFINITY)?; // (B,)
    p.chosen.neg()? / n // (B,)  mean NLL per chosen token
}

/// A running mean of scalar batch means (TRL's `RunningMoments.mean` before 1.x): after
/// n updates it is the plain average of the n values. Used as `bco_pair`'s δ; it is
/// updated once per micro-batch with the mean of that micro-batch's chosen and
/// rejected rewards, *before* the loss uses it. It lives in the algorithm and is saved
/// in every checkpoint (`Algorithm::checkpoint_state`), so a resumed run continues it.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunningMean {
    mean: f64,
    count: f64,
}

impl RunningMean {
    /// Folds one value in and returns the new mean.
    pub fn update(&mut self, value: f64) -> f64 {
        self.count += 1.0;
        self.mean += (value - self.mean) / self.count;
        self.mean
    }

    /// The current mean (0 before any update).
    pub fn mean(&self) -> f64 {
        self.mean
    }
}

/// Per-pair results of a (combined) DPO loss.
#[derive(Debug, Clone)]
pub struct PairLosses {
    /// `(B,)` weighted sum of the configured losses per pair (differentiable).
    pub losses: Tensor,
    /// `(B,)` β·Δc, detached: TRL's `rewards/chosen`.
    pub chosen_rewards: Tensor,
    /// `(B,)` β·Δr, detached: TRL's `rewards/rejected`.
    pub rejected_rewards: Tensor,
}

/// A weighted combination of loss kinds (TRL's `loss_type` list with `loss_weights`).
#[derive(Debug, Clone)]
pub struct DpoLoss {
    terms: Vec<(DpoLossType, f64)>,
    beta: f64,
    label_smoothing: f64,
    bco_running_mean: bool,
    running: RunningMean,
}

impl DpoLoss {
    /// Sum of `weight × kind` over `terms`.
    pub fn new(
        terms: Vec<(DpoLossType, f64)>,
        beta: f64,
        label_smoothing: f64,
        bco_running_mean: bool,
    ) -> Self {
        DpoLoss {
            terms,
            beta,
            label_smoothing,
            bco_running_mean,
            running: RunningMean::default(),
        }
    }

    /// The (kind, weight) terms.
    pub fn terms(&self) -> &[(DpoLossType, f64)] {
        &self.terms
    }

    /// `bco_pair`'s running reward mean so far.
    pub fn running_mean(&self) -> RunningMean {
        self.running
    }

    /// Replaces the running reward mean (restoring a checkpoint).
    pub fn set_running_mean(&mut self, running: RunningMean) {
        self.running = running;
    }

    /// Per-pair combined losses and rewards; updates the `bco_pair` running mean when used.
    pub fn compute(&mut self, p: &PairLogps) -> Result<PairLosses> {
        let chosen_rewards = (p.chosen_logratios()?.detach() * self.beta)?; // (B,)
        let rejected_rewards = (p.rejected_logratios()?.detach() * self.beta)?; // (B,)
        let mut bco_delta = 0.0;
        if self.bco_running_mean && self.terms.iter().any(|(k, _)| *k == DpoLossType::BcoPair) {
            let all = Tensor::cat(&[&chosen_rewards, &rejected_rewards], 0)?; // (2B,)
            let batch_mean = all
                .to_dtype(candle_core::DType::F64)?
                .mean_all()?
                .to_scalar::<f64>()?;
            bco_delta = self.running.update(batch_mean);
        }
        let params = LossParams {
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            bco_delta,
        };
        let mut total: Option<Tensor> = None;
        for (kind, weight) in &self.terms {
            let term = (kind.per_pair(p, &params)? * *weight)?; // (B,)
            total = Some(match total {
                Some(t) => (t + term)?,
                None => term,
            });
        }
        let losses = match total {
            Some(t) => t,
            None => p.chosen.zeros_like()?,
        };
        Ok(PairLosses {
            losses,
            chosen_rewards,
            rejected_rewards,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    const KINDS: [DpoLossType; 10] = [
        DpoLossType::Sigmoid,
        DpoLossType::Ipo,
        DpoLossType::Hinge,
        DpoLossType::Robust,
        DpoLossType::BcoPair,
        DpoLossType::SppoHard,
        DpoLossType::NcaPair,
        DpoLossType::ApoZero,
        DpoLossType::ApoDown,
        DpoLossType::Sft,
    ];

    fn t(v: &[f64]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    /// The worked pair: log πc = −1, log πr = −2, ref c = ref r = −1.5, 2 chosen and
    /// 4 rejected tokens. So Δc = 0.5, Δr = −0.5, h = Δc − Δr = 1.
    fn worked() -> PairLogps {
        PairLogps {
            chosen: t(&[-1.0]),
            rejected: t(&[-2.0]),
            ref_chosen: t(&[-1.5]),
            ref_rejected: t(&[-1.5]),
            chosen_tokens: t(&[2.0]),
            rejected_tokens: t(&[4.0]),
        }
    }

    fn value(kind: DpoLossType, beta: f64, eps: f64, delta: f64) -> f64 {
        let p = LossParams {
            beta,
            label_smoothing: eps,
            bco_delta: delta,
        };
        kind.per_pair(&worked(), &p)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[0]
    }

    fn close(got: f64, want: f64) {
        assert!((got - want).abs() < 1e-12, "got {got}, want {want}");
    }

    /// β = 0.1, βh = 0.1: −ln σ(0.1) = ln(1 + e^{−0.1}) = 0.6443966600735709.
    #[test]
    fn sigmoid_hand_value() {
        close(
            value(DpoLossType::Sigmoid, 0.1, 0.0, 0.0),
            0.6443966600735709,
        );
    }

    /// β = 0.1: relu(1 − βh) = relu(1 − 0.1) = 0.9.
    #[test]
    fn hinge_hand_value() {
        close(value(DpoLossType::Hinge, 0.1, 0.0, 0.0), 0.9);
    }

    /// β = 0.1: h̄ = Δc/2 − Δr/4 = 0.25 + 0.125 = 0.375; 1/(2β) = 5;
    /// (0.375 − 5)² = (−4.625)² = 21.390625.
    #[test]
    fn ipo_hand_value() {
        close(value(DpoLossType::Ipo, 0.1, 0.0, 0.0), 21.390625);
    }

    /// β = 0.1, ε = 0.1: [−0.9 ln σ(0.1) + 0.1 ln σ(−0.1)] / 0.8
    /// = [0.9 · 0.6443966600735709 − 0.1 · 0.7443966600735709] / 0.8
    /// = (0.5799569940662138 − 0.0744396660073571) / 0.8 = 0.6318966600735709.
    /// With ε = 0 it is the sigmoid loss.
    #[test]
    fn robust_hand_value() {
        close(
            value(DpoLossType::Robust, 0.1, 0.1, 0.0),
            0.6318966600735709,
        );
        close(
            value(DpoLossType::Robust, 0.1, 0.0, 0.0),
            0.6443966600735709,
        );
    }

    /// β = 0.1, δ = 0: βΔc = 0.05, βΔr = −0.05:
    /// −ln σ(0.05) − ln σ(0.05) = 2 ln(1 + e^{−0.05}) = 2 · 0.6684596480132863 = 1.3369192960265726.
    /// δ = 0.05: −ln σ(0) − ln σ(0.1) = ln 2 + 0.6443966600735709 = 1.3375438406335163.
    #[test]
    fn bco_pair_hand_value() {
        close(
            value(DpoLossType::BcoPair, 0.1, 0.0, 0.0),
            1.3369192960265726,
        );
        close(
            value(DpoLossType::BcoPair, 0.1, 0.0, 0.05),
            1.3375438406335163,
        );
    }

    /// β = 0.1: 1/(2β) = 5: (0.5 − 5)² + (−0.5 + 5)² = 20.25 + 20.25 = 40.5.
    #[test]
    fn sppo_hard_hand_value() {
        close(value(DpoLossType::SppoHard, 0.1, 0.0, 0.0), 40.5);
    }

    /// β = 0.1: βΔc = 0.05, βΔr = −0.05:
    /// −ln σ(0.05) − ½ ln σ(−0.05) − ½ ln σ(0.05) = 1.5 · 0.6684596480132863 + 0.5 · 0.7184596480132863
    /// = 1.0026894720199295 + 0.3592298240066432 = 1.3619192960265727.
    #[test]
    fn nca_pair_hand_value() {
        close(
            value(DpoLossType::NcaPair, 0.1, 0.0, 0.0),
            1.3619192960265727,
        );
    }

    /// β = 0.1: 1 − σ(0.05) + σ(−0.05) = 2 σ(−0.05) = 2 · 0.4875026035157896 = 0.9750052070315793.
    #[test]
    fn apo_zero_hand_value() {
        close(
            value(DpoLossType::ApoZero, 0.1, 0.0, 0.0),
            0.9750052070315793,
        );
    }

    /// β = 0.1: σ(0.05) + 1 − σ(0.1) = 0.5124973964842103 + 1 − 0.52497918747894 = 0.9875182090052703.
    #[test]
    fn apo_down_hand_value() {
        close(
            value(DpoLossType::ApoDown, 0.1, 0.0, 0.0),
            0.9875182090052703,
        );
    }

    /// −log πc / nc = 1 / 2 = 0.5 (β plays no part).
    #[test]
    fn sft_hand_value() {
        close(value(DpoLossType::Sft, 0.1, 0.0, 0.0), 0.5);
        close(value(DpoLossType::Sft, 7.0, 0.0, 0.0), 0.5);
    }

    /// ln σ is finite and accurate far out in both tails (no overflow to inf or NaN);
    /// its gradient at 0 is σ(0) = 1/2.
    #[test]
    fn log_sigmoid_is_stable() {
        let v = log_sigmoid(&t(&[-800.0, 0.0, 800.0, 40.0]))
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        close(v[0], -800.0);
        close(v[1], -(2f64.ln()));
        close(v[2], 0.0);
        assert!(v[3].abs() < 1e-15); // true value −e^{−40} ≈ −4.2e−18
        let x = Var::new(&[0.0f64], &Device::Cpu).unwrap();
        let g = log_sigmoid(x.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(
            g.get(x.as_tensor()).unwrap().to_vec1::<f64>().unwrap()[0],
            0.5,
        );
    }

    /// A weighted list is the weighted sum of its terms: RPO = sigmoid + α·sft with α = 0.5:
    /// 0.6443966600735709 + 0.5 · 0.5 = 0.8943966600735709; rewards are β·Δ = ±0.05.
    #[test]
    fn combination_is_weighted_sum() {
        let mut loss = DpoLoss::new(
            vec![(DpoLossType::Sigmoid, 1.0), (DpoLossType::Sft, 0.5)],
            0.1,
            0.0,
            false,
        );
        let out = loss.compute(&worked()).unwrap();
        close(out.losses.to_vec1::<f64>().unwrap()[0], 0.8943966600735709);
        close(out.chosen_rewards.to_vec1::<f64>().unwrap()[0], 0.05);
        close(out.rejected_rewards.to_vec1::<f64>().unwrap()[0], -0.05);
    }

    /// The running mean is the plain average of the batch reward means, and the loss uses
    /// the mean *including* the current batch: batch 1 rewards (0.05, −0.05) → δ = 0;
    /// batch 2 (chosen +0.1 higher: rewards 0.15, −0.05) → batch mean 0.05, δ = 0.025.
    #[test]
    fn bco_running_mean_updates_before_use() {
        let mut loss = DpoLoss::new(vec![(DpoLossType::BcoPair, 1.0)], 0.1, 0.0, true);
        let first = loss
            .compute(&worked())
            .unwrap()
            .losses
            .to_vec1::<f64>()
            .unwrap()[0];
        close(first, 1.3369192960265726);
        let mut second = worked();
        second.chosen = t(&[0.0]);
        loss.compute(&second).unwrap();
        close(loss.running_mean().mean(), 0.025);
        // without the flag δ stays 0 (TRL 1.16)
        let mut plain = DpoLoss::new(vec![(DpoLossType::BcoPair, 1.0)], 0.1, 0.0, false);
        plain.compute(&second).unwrap();
        close(plain.running_mean().mean(), 0.0);
    }

    /// d(Σ_b w_b loss_b)/d(policy logps) by autograd vs central finite differences, for
    /// every kind, on three pairs with different margins (incl. a hinge-active one).
    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let pc = [-3.0, -1.2, -7.5];
        let pr = [-2.5, -4.0, -6.0];
        let rc = t(&[-2.7, -1.9, -8.0]);
        let rr = t(&[-2.2, -3.1, -5.5]);
        let nc = t(&[3.0, 2.0, 5.0]);
        let nr = t(&[4.0, 1.0, 2.0]);
        let w = t(&[0.7, -1.3, 0.4]);
        let params = LossParams {
            beta: 0.3,
            label_smoothing: 0.15,
            bco_delta: 0.02,
        };
        for kind in KINDS {
            let eval = |c: &Tensor, r: &Tensor| -> Tensor {
                let p = PairLogps {
                    chosen: c.clone(),
                    rejected: r.clone(),
                    ref_chosen: rc.clone(),
                    ref_rejected: rr.clone(),
                    chosen_tokens: nc.clone(),
                    rejected_tokens: nr.clone(),
                };
                (kind.per_pair(&p, &params).unwrap() * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let vc = Var::new(&pc, &dev).unwrap();
            let vr = Var::new(&pr, &dev).unwrap();
            let grads = eval(vc.as_tensor(), vr.as_tensor()).backward().unwrap();
            let gc = grads.get(vc.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
            // the rejected logps do not enter `sft`: no gradient is a zero gradient
            let gr = grads
                .get(vr.as_tensor())
                .map_or(vec![0.0; 3], |g| g.to_vec1::<f64>().unwrap());
            let h = 1e-6;
            for i in 0..3 {
                for (which, g) in [(0, &gc), (1, &gr)] {
                    let shifted = |d: f64| {
                        let (mut c, mut r) = (pc, pr);
                        if which == 0 {
                            c[i] += d
                        } else {
                            r[i] += d
                        }
                        eval(&t(&c), &t(&r)).to_scalar::<f64>().unwrap()
                    };
                    let fd = (shifted(h) - shifted(-h)) / (2.0 * h);
                    assert!(
                        (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                        "{}: d/d{}[{i}] fd {fd} vs autograd {}",
                        kind.as_str(),
                        ["chosen", "rejected"][which],
                        g[i]
                    );
                }
            }
        }
    }
}
