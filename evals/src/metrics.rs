//! Metrics and their standard errors, as small pure functions.
//!
//! Each follows lm-evaluation-harness' definition so numbers are comparable:
//! `acc` is the argmax of summed continuation loglikelihoods, `acc_norm` divides each
//! by the choice's length in characters (lm-eval's `acc_norm`), `acc_norm_tokens` by
//! its length in tokens; `pass@k` is the unbiased estimator of Chen et al. (2021);
//! `bits_per_byte` and `word_perplexity` aggregate over the whole corpus (sums, not a
//! mean of ratios); `mean_stderr` is the sample standard deviation over √n.
//!
//! Key decision: aggregate metrics that lm-eval reports without a stderr
//! (`bits_per_byte`) get one here from the delta method for a ratio estimator, so the
//! gate can test every metric for significance.

/// Index of the largest value (the first one on ties), as lm-eval's `np.argmax`.
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// Per-doc multiple-choice scores from the choices' summed loglikelihoods.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChoiceScores {
    /// `argmax(ll) == gold`.
    pub acc: f64,
    /// `argmax(ll / len_chars(choice)) == gold`.
    pub acc_norm: f64,
    /// `argmax(ll / len_tokens(choice)) == gold`.
    pub acc_norm_tokens: f64,
}

/// Scores one doc: `lls[i]` is the summed loglikelihood of choice `i`, `chars[i]` and
/// `tokens[i]` its length in characters and tokens.
pub fn choice_scores(lls: &[f64], chars: &[usize], tokens: &[usize], gold: usize) -> ChoiceScores {
    let norm = |lens: &[usize]| -> Vec<f64> {
        lls.iter()
            .zip(lens)
            .map(|(&ll, &n)| ll / (n.max(1) as f64))
            .collect()
    };
    let hit = |i: usize| if i == gold { 1.0 } else { 0.0 };
    ChoiceScores {
        acc: hit(argmax(lls)),
        acc_norm: hit(argmax(&norm(chars))),
        acc_norm_tokens: hit(argmax(&norm(tokens))),
    }
}

/// Arithmetic mean (0 for an empty slice).
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Standard error of the mean: sample std (n−1) / √n, lm-eval's `mean_stderr` (0 if n < 2).
pub fn mean_stderr(xs: &[f64]) -> f64 {
    let n = xs.len();
    if n < 2 {
        return 0.0;
    }
    let m = mean(xs);
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64;
    (var / n as f64).sqrt()
}

/// Unbiased pass@k from `n` samples of which `c` pass: `1 − C(n−c, k) / C(n, k)`,
/// computed as the stable product `1 − Π_{i=n−c+1..n} (1 − k/i)` (Chen et al. 2021).
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(
        c <= n && k >= 1 && k <= n,
        "pass_at_k needs c <= n and 1 <= k <= n"
    );
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

/// The most frequent string (the earliest on ties): the maj@k vote.
pub fn majority(answers: &[String]) -> Option<&String> {
    let mut best: Option<(&String, usize)> = None;
    for a in answers {
        let count = answers.iter().filter(|b| *b == a).count();
        if best.is_none_or(|(_, c)| count > c) {
            best = Some((a, count));
        }
    }
    best.map(|(a, _)| a)
}

/// Corpus bits per byte: `−Σ ll / (Σ bytes · ln 2)`.
pub fn bits_per_byte(sum_ll: f64, bytes: usize) -> f64 {
    -sum_ll / (bytes.max(1) as f64 * std::f64::consts::LN_2)
}

/// Corpus perplexity over `units` (words or bytes): `exp(−Σ ll / units)`.
pub fn perplexity(sum_ll: f64, units: usize) -> f64 {
    (-sum_ll / units.max(1) as f64).exp()
}

/// Standard error of the ratio estimator `R = Σ y / Σ x` (delta method):
/// `se² = Σ (y_i − R x_i)² / (n (n−1) x̄²)`. 0 if n < 2.
pub fn ratio_stderr(ys: &[f64], xs: &[f64]) -> f64 {
    let n = ys.len();
    if n < 2 {
        return 0.0;
    }
    let r = ys.iter().sum::<f64>() / xs.iter().sum::<f64>();
    let xbar = mean(xs);
    let ss: f64 = ys.iter().zip(xs).map(|(y, x)| (y - r * x).powi(2)).sum();
    (ss / (n as f64 * (n - 1) as f64 * xbar * xbar)).sqrt()
}

/// Standard normal CDF Φ(z), via a Chebyshev-fitted `erfc` (|rel. error| < 1.2e-7).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// Complementary error function (Numerical Recipes `erfcc`).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Two-proportion z statistic for `p_new` (over `n_new` samples) against `p_base`
/// (over `n_base`), with the pooled proportion: `z = (p_new − p_base) / √(p̂(1−p̂)(1/n_base + 1/n_new))`.
/// Returns 0 when both proportions are 0 or 1 (no variance, no evidence of change).
pub fn two_proportion_z(p_base: f64, n_base: usize, p_new: f64, n_new: usize) -> f64 {
    let (nb, nn) = (n_base as f64, n_new as f64);
    let pooled = (p_base * nb + p_new * nn) / (nb + nn);
    let se = (pooled * (1.0 - pooled) * (1.0 / nb + 1.0 / nn)).sqrt();
    if se == 0.0 || !se.is_finite() {
        return 0.0;
    }
    (p_new - p_base) / se
}

/// z statistic for a difference of two means with standard errors: `(new − base) / √(se_b² + se_n²)`.
/// Returns 0 when both stderrs are 0 and the means are equal, ±∞ when they differ.
pub fn two_mean_z(base: f64, se_base: f64, new: f64, se_new: f64) -> f64 {
    let se = (se_base * se_base + se_new * se_new).sqrt();
    if se == 0.0 {
        return if new == base {
            0.0
        } else {
            (new - base).signum() * f64::INFINITY
        };
    }
    (new - base) / se
}
