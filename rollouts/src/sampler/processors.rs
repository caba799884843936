//! Logits processors: repetition penalty, temperature, top-k, top-p, min-p, and the
//! draw of one token with its two log-probabilities.
//!
//! Key decision: the *behaviour* log-prob is computed from the raw logits with only the
//! temperature applied (`log_softmax(logits / T)`, T = 1 when greedy), before any
//! penalty or filter, so top-k/top-p renormalisation never leaks into an importance
//! ratio. The *processed* log-prob is that of the token under the distribution it was
//! actually drawn from. Filters run in transformers' order (repetition penalty,
//! temperature, top-k, top-p, min-p), all in f64 on the host, one row at a time, so a
//! row's draw depends only on its own logits and RNG.

use super::SamplingParams;
use rand::{rngs::StdRng, Rng};

/// One drawn token and its log-probabilities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// The token id.
    pub token: u32,
    /// `log_softmax(logits / T)[token]` (T = 1 when greedy): the unprocessed distribution.
    pub behaviour_logprob: f32,
    /// Log-prob under the distribution sampled from (0 when greedy: a point mass).
    pub processed_logprob: f32,
}

/// `log_softmax(logits / temperature)[token]` in f64.
pub fn temperature_logprob(logits: &[f32], temperature: f64, token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature).exp())
        .sum();
    (logits[token as usize] as f64 - max) / temperature - sum.ln()
}

/// CTRL repetition penalty (as transformers): every distinct token of `history` has its
/// logit divided by `penalty` when positive, multiplied when negative.
pub fn apply_repetition_penalty(logits: &mut [f64], history: &[u32], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &t in history {
        let t = t as usize;
        if t < logits.len() && !seen[t] {
            seen[t] = true;
            logits[t] = if logits[t] > 0.0 {
                logits[t] / penalty
            } else {
                logits[t] * penalty
            };
        }
    }
}

/// The filtered distribution: `(id, prob)` summing to 1, after temperature, top-k,
/// top-p and min-p on (already penalised) `logits`. Sorted by descending probability
/// (ties by id) whenever a filter needed the order; otherwise in id order.
pub fn filtered_distribution(logits: &[f64], params: &SamplingParams) -> Vec<(u32, f64)> {
    let t = params.temperature;
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l - max) / t).exp()))
        .collect();
    let desc = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if params.top_k > 0 && params.top_k < probs.len() {
        probs.select_nth_unstable_by(params.top_k - 1, desc);
        probs.truncate(params.top_k);
        probs.sort_unstable_by(desc);
    } else if params.top_p < 1.0 {
        probs.sort_unstable_by(desc);
    }
    normalise(&mut probs);
    if params.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                acc += p.1;
                acc >= params.top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        normalise(&mut probs);
    }
    if params.min_p > 0.0 {
        let p_max = probs.iter().map(|p| p.1).fold(0.0, f64::max);
        probs.retain(|p| p.1 >= params.min_p * p_max);
        normalise(&mut probs);
    }
    probs
}

fn normalise(probs: &mut [(u32, f64)]) {
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
}

/// Draws the next token from one row's logits `(V,)`; `history` is the prompt and
/// the tokens generated so far (for the repetition penalty).
pub fn choose(
    logits: &[f32],
    history: &[u32],
    params: &SamplingParams,
    rng: &mut StdRng,
) -> Choice {
    let mut processed: Vec<f64> = logits.iter().map(|&l| l as f64).collect();
    apply_repetition_penalty(&mut processed, history, params.repetition_penalty);
    if params.temperature == 0.0 {
        // Greedy: the first maximum, as `argmax`.
        let token = processed
            .iter()
            .enumerate()
            .fold((0usize, f64::NEG_INFINITY), |best, (i, &l)| {
                if l > best.1 {
                    (i, l)
                } else {
                    best
                }
            })
            .0 as u32;
        return Choice {
            token,
            behaviour_logprob: temperature_logprob(logits, 1.0, token) as f32,
            processed_logprob: 0.0,
        };
    }
    let probs = filtered_distribution(&processed, params);
    let u: f64 = rng.random();
    let mut acc = 0.0;
    let mut chosen = probs[probs.len() - 1];
    for &p in &probs {
        acc += p.1;
        if u < acc {
            chosen = p;
            break;
        }
    }
    Choice {
        token: chosen.0,
        behaviour_logprob: temperature_logprob(logits, params.temperature, chosen.0) as f32,
        processed_logprob: chosen.1.ln() as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams::default()
    }

    #[test]
    fn filters_keep_the_right_tokens() {
        // probs = 0.5, 0.3, 0.15, 0.05 at T = 1
        let logits: Vec<f64> = [0.5f64, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let k2 = filtered_distribution(
            &logits,
            &SamplingParams {
                top_k: 2,
                ..params()
            },
        );
        assert_eq!(k2.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!((k2[0].1 - 0.625).abs() < 1e-12); // 0.5 / 0.8
        let p = filtered_distribution(
            &logits,
            &SamplingParams {
                top_p: 0.75,
                ..params()
            },
        );
        assert_eq!(p.len(), 2); // 0.5 + 0.3 reaches 0.75, 0.5 does not
                                // min_p 0.3: keep p >= 0.15 (0.3 * 0.5)
        let m = filtered_distribution(
            &logits,
            &SamplingParams {
                min_p: 0.3,
                ..params()
            },
        );
        assert_eq!(m.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!((m[2].1 - 0.15 / 0.95).abs() < 1e-12);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn behaviour_logprob_ignores_filters() {
        use rand::SeedableRng;
        let logits = [0.0f32, 1.0, 2.0, 3.0];
        let p = SamplingParams {
            top_k: 1,
            temperature: 0.5,
            ..params()
        };
        let c = choose(&logits, &[], &p, &mut StdRng::seed_from_u64(0));
        assert_eq!(c.token, 3);
        assert_eq!(c.processed_logprob, 0.0); // the only token kept
        let z: f64 = logits.iter().map(|&l| (l as f64 / 0.5).exp()).sum();
        assert!((c.behaviour_logprob as f64 - (6.0 - z.ln())).abs() < 1e-6);
    }
}
