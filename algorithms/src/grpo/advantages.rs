//! Group-relative advantages and the generation batch's reward metrics.
//!
//! TRL 1.16 `_generate_and_score_completions` (`sum_then_normalize`): for a group of G
//! completions of one prompt with rewards r, `A_i = (r_i − mean(r)) / (std(r) + 1e-4)`,
//! std unbiased (Bessel), taken over the group (`group`), the whole generation batch
//! (`batch`), or not applied (`none`). Computed in f64 on the host: these are a few
//! hundred numbers, and host arithmetic keeps them bit-identical across runs.

use super::config::ScaleRewards;
use smelt::train::Metrics;
use smelt_rollouts::Rollout;
use std::collections::BTreeMap;

/// Mean and unbiased standard deviation (0 for fewer than two values).
pub fn mean_std(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let mean = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return (mean, 0.0);
    }
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Advantages of `rewards` (contiguous groups of `group` completions).
///
/// Also returns, per completion, whether its scaling std is (close to) zero (TRL's
/// `is_std_zero`, the source of `frac_reward_zero_std`).
pub fn group_advantages(
    rewards: &[f64],
    group: usize,
    scale: ScaleRewards,
) -> (Vec<f64>, Vec<bool>) {
    let (_, batch_std) = mean_std(rewards);
    let mut adv = Vec::with_capacity(rewards.len());
    let mut zero_std = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group) {
        let (mean, group_std) = mean_std(g);
        let std = match scale {
            ScaleRewards::Batch => batch_std,
            ScaleRewards::Group | ScaleRewards::None => group_std,
        };
        for r in g {
            let centred = r - mean;
            adv.push(match scale {
                ScaleRewards::None => centred,
                _ => centred / (std + 1e-4),
            });
            zero_std.push(std.abs() <= 1e-8);
        }
    }
    (adv, zero_std)
}

/// TRL's generation metrics of one generation batch, each a single observation:
/// `reward`, `reward_std`, `rewards/<name>/mean|std`, `frac_reward_zero_std`,
/// `completions/mean_length|min_length|max_length|clipped_ratio`.
pub fn generation_metrics(rollouts: &[Rollout], zero_std: &[bool]) -> Metrics {
    let mut m = Metrics::new();
    let rewards: Vec<f64> = rollouts.iter().map(|r| r.reward as f64).collect();
    let (mean, std) = mean_std(&rewards);
    m.add("reward", mean, 1.0);
    m.add("reward_std", std, 1.0);
    let mut per_name: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in rollouts {
        for (name, v) in &r.rewards {
            let e = per_name.entry(name.as_str()).or_default();
            if let Some(v) = v {
                e.push(*v as f64);
            }
        }
    }
    for (name, values) in per_name {
        let (mean, std) = mean_std(&values);
        m.add(&format!("rewards/{name}/mean"), mean, 1.0);
        m.add(&format!("rewards/{name}/std"), std, 1.0);
    }
    let n = zero_std.len().max(1) as f64;
    m.add(
        "frac_reward_zero_std",
        zero_std.iter().filter(|z| **z).count() as f64 / n,
        1.0,
    );
    let lens: Vec<f64> = rollouts
        .iter()
        .map(|r| r.completion_ids.len() as f64)
        .collect();
    m.add("completions/mean_length", mean_std(&lens).0, 1.0);
    m.add(
        "completions/min_length",
        lens.iter().cloned().fold(f64::INFINITY, f64::min),
        1.0,
    );
    m.add(
        "completions/max_length",
        lens.iter().cloned().fold(0.0, f64::max),
        1.0,
    );
    let truncated = rollouts
        .iter()
        .filter(|r| r.finish == smelt_rollouts::FinishReason::Length)
        .count();
    m.add(
        "completions/clipped_ratio",
        truncated as f64 / rollouts.len().max(1) as f64,
        1.0,
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Group [1, 0, 0, 1]: mean 0.5, unbiased std = sqrt(4·0.25 / 3) = 0.57735;
    /// A = ±0.5 / (0.57735 + 1e-4). Group [2, 2, 2, 2]: A = 0, std zero.
    #[test]
    fn group_scaling_by_hand() {
        let r = [1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0];
        let (a, z) = group_advantages(&r, 4, ScaleRewards::Group);
        let s = (1.0f64 / 3.0).sqrt();
        let expect = 0.5 / (s + 1e-4);
        for (got, want) in a
            .iter()
            .zip([expect, -expect, -expect, expect, 0.0, 0.0, 0.0, 0.0])
        {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        assert_eq!(z, vec![false, false, false, false, true, true, true, true]);
        let (a, _) = group_advantages(&r, 4, ScaleRewards::None);
        assert_eq!(a, vec![0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]);
        // batch std of r: mean 1.25, Σ(r−m)² = 2·0.0625 + 2·1.5625 + 4·0.5625 = 5.5, /7
        let (a, _) = group_advantages(&r, 4, ScaleRewards::Batch);
        let bs = (5.5f64 / 7.0).sqrt();
        assert!((a[0] - 0.5 / (bs + 1e-4)).abs() < 1e-12);
        assert_eq!(a[4], 0.0);
    }
}
