//! Metric, extraction and gate unit tests against hand-computed values (derivations
//! in each test's doc comment).

use serde_json::json;
use smelt_evals::gate::{compare, parse_max_drop, GateConfig};
use smelt_evals::metrics::*;
use smelt_evals::runner::generative::extract;

fn close(a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol, "{a} vs {b} (tol {tol})");
}

/// Choices "a" (1 char, 1 token, ll −2) and "bbbbbbbbbb" (10 chars, 4 tokens, ll −5),
/// gold = 1. acc: argmax(−2, −5) = 0 → wrong. acc_norm: (−2/1, −5/10) = (−2, −0.5) →
/// 1 → right. token norm: (−2/1, −5/4) = (−2, −1.25) → 1 → right.
#[test]
fn acc_and_acc_norm_disagree_on_crafted_example() {
    let s = choice_scores(&[-2.0, -5.0], &[1, 10], &[1, 4], 1);
    assert_eq!((s.acc, s.acc_norm, s.acc_norm_tokens), (0.0, 1.0, 1.0));
    // Ties go to the first choice, as numpy's argmax.
    assert_eq!(argmax(&[-1.0, -1.0]), 0);
}

/// pass@k = 1 − C(n−c, k)/C(n, k): n=10, c=3, k=1 → 3/10; k=5 → 1 − C(7,5)/C(10,5)
/// = 1 − 21/252 = 0.916̅; c=0 → 0; n−c < k → 1; n=k=c=1 → 1.
#[test]
fn pass_at_k_unbiased_estimator_values() {
    close(pass_at_k(10, 3, 1), 0.3, 1e-12);
    close(pass_at_k(10, 3, 5), 1.0 - 21.0 / 252.0, 1e-12);
    close(pass_at_k(5, 0, 3), 0.0, 1e-12);
    close(pass_at_k(5, 4, 2), 1.0, 1e-12);
    close(pass_at_k(1, 1, 1), 1.0, 1e-12);
    close(pass_at_k(1, 0, 1), 0.0, 1e-12);
}

/// [1, 0, 1, 1]: mean 0.75, sample variance ((0.25²)·3 + 0.75²)/3 = 0.25,
/// stderr √(0.25/4) = 0.25. A single value has stderr 0.
#[test]
fn mean_stderr_is_sample_std_over_sqrt_n() {
    close(mean(&[1.0, 0.0, 1.0, 1.0]), 0.75, 1e-12);
    close(mean_stderr(&[1.0, 0.0, 1.0, 1.0]), 0.25, 1e-12);
    assert_eq!(mean_stderr(&[1.0]), 0.0);
}

/// Ratio stderr for ys = [2, 4], xs = [1, 1]: R = 3, Σ(y − Rx)² = 2, n(n−1)x̄² = 2 → 1,
/// equal to the plain mean stderr of [2, 4] (√2/√2) as it must be when all x are 1.
/// bits per byte: Σll = −100 ln 2 over 50 bytes → 2 bits/byte; perplexity e^{−(−2)/2} = e.
#[test]
fn bits_per_byte_and_ratio_stderr() {
    close(ratio_stderr(&[2.0, 4.0], &[1.0, 1.0]), 1.0, 1e-12);
    close(
        bits_per_byte(-100.0 * std::f64::consts::LN_2, 50),
        2.0,
        1e-12,
    );
    close(perplexity(-2.0, 2), std::f64::consts::E, 1e-12);
}

/// p₁ = 0.5, p₂ = 0.4, n = 100 each: pooled 0.45, se = √(0.45·0.55·0.02) = 0.0703562,
/// z = −0.1/0.0703562 = −1.421338, Φ(z) = 0.077610 (scipy.stats.norm.cdf).
/// Φ(1.959964) = 0.975.
#[test]
fn two_proportion_z_test() {
    let z = two_proportion_z(0.5, 100, 0.4, 100);
    close(z, -1.421338, 1e-5);
    close(normal_cdf(z), 0.077610, 1e-5);
    close(normal_cdf(1.959964), 0.975, 1e-6);
    close(normal_cdf(0.0), 0.5, 1e-7);
    assert_eq!(two_proportion_z(1.0, 10, 1.0, 10), 0.0);
    close(two_mean_z(1.0, 0.3, 1.5, 0.4), 1.0, 1e-12); // 0.5 / √(0.09 + 0.16)
}

/// maj@k votes the most frequent answer, the earliest on ties.
#[test]
fn majority_vote_earliest_on_ties() {
    let v: Vec<String> = ["3", "4", "4", "3"].iter().map(|s| s.to_string()).collect();
    assert_eq!(majority(&v).unwrap(), "3");
    let v: Vec<String> = ["1", "4", "4"].iter().map(|s| s.to_string()).collect();
    assert_eq!(majority(&v).unwrap(), "4");
}

/// The first regex of the chain that matches wins (group 1), no match → `[invalid]`.
#[test]
fn extraction_chain_first_match_wins() {
    let chain = vec![
        regex::Regex::new(r"#### (-?\d+)").unwrap(),
        regex::Regex::new(r"(-?\d+)").unwrap(),
    ];
    assert_eq!(extract(&chain, "so 12 then #### 42"), "42");
    assert_eq!(extract(&chain, " 17 apples"), "17");
    assert_eq!(extract(&chain, "no numbers"), "[invalid]");
    assert_eq!(extract(&[], "  free text \n"), "free text");
}

fn results(acc: f64, n: usize, bpb: f64, bpb_se: f64) -> serde_json::Value {
    json!({
        "results": {"mc": {"acc,none": acc, "acc_stderr,none": 0.05}, "ppl": {"bits_per_byte,none": bpb, "bits_per_byte_stderr,none": bpb_se}},
        "higher_is_better": {"mc": {"acc": true}, "ppl": {"bits_per_byte": false}},
        "n-samples": {"mc": {"original": n, "effective": n}, "ppl": {"original": 3, "effective": 3}},
        "smelt_proportion": {"mc": ["acc"], "ppl": []},
    })
}

/// Same numbers → z = 0, p = 0.5 → pass. acc 0.8 → 0.5 over 100 docs: z ≈ −4.5 → fail.
/// acc 0.8 → 0.77 is not significant (z ≈ −0.52) but exceeds `--max-drop acc=0.02` → fail.
/// bpb (lower is better) 2.0 → 3.0 with stderrs 0.1 → z = 7.07 worse → fail; 3.0 → 2.0 passes.
#[test]
fn gate_flags_significant_drops_and_floors_only() {
    let cfg = GateConfig::default();
    let base = results(0.8, 100, 2.0, 0.1);
    assert!(!compare(&base, &base, &cfg).unwrap().regressed());
    assert!(compare(&base, &results(0.5, 100, 2.0, 0.1), &cfg)
        .unwrap()
        .regressed());
    assert!(!compare(&base, &results(0.77, 100, 2.0, 0.1), &cfg)
        .unwrap()
        .regressed());
    let floors = GateConfig {
        max_drop: vec![parse_max_drop("acc=0.02").unwrap()],
        ..cfg.clone()
    };
    assert!(compare(&base, &results(0.77, 100, 2.0, 0.1), &floors)
        .unwrap()
        .regressed());
    let worse_bpb = compare(&base, &results(0.8, 100, 3.0, 0.1), &cfg).unwrap();
    assert!(worse_bpb.regressed());
    assert!(worse_bpb.table().contains("bits_per_byte"));
    assert!(!compare(&results(0.8, 100, 3.0, 0.1), &base, &cfg)
        .unwrap()
        .regressed());
    // A metric missing from the new run is a regression.
    let mut missing = base.clone();
    missing["results"]["mc"]
        .as_object_mut()
        .unwrap()
        .remove("acc,none");
    assert!(compare(&base, &missing, &cfg).unwrap().regressed());
    assert!(parse_max_drop("acc").is_err());
}
