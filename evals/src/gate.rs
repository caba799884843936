//! The regression gate: compare a run's results JSON to a baseline results JSON.
//!
//! For every (task, metric) of the baseline: proportions of 0/1 outcomes (`acc`,
//! `exact_match`, greedy `pass@1`, ...) get lm-eval's two-proportion z-test (pooled
//! variance, sample sizes from `n-samples`); other metrics (`bits_per_byte`, `avg@k`)
//! a z-test on the difference of means from the two stderrs (metrics with no stderr,
//! such as `word_perplexity`, are held by `max_drop` floors only). A metric regresses when
//! the one-sided p-value of a *worsening* is below `alpha`, or when it worsened by
//! more than an absolute `max_drop` configured for it. A metric missing from the new
//! run is a regression too. Key decision: only worsening counts (one-sided test), in
//! the metric's own direction (`higher_is_better`), so a rerun of the same checkpoint
//! (z = 0, p = 0.5) never fails.

use crate::error::{EvalError, Result};
use crate::metrics::{normal_cdf, two_mean_z, two_proportion_z};
use serde_json::Value;

/// Gate settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// One-sided significance level (default 0.05).
    pub alpha: f64,
    /// Absolute floors: `(metric, largest allowed worsening)`; the metric name matches in every task.
    pub max_drop: Vec<(String, f64)>,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            alpha: 0.05,
            max_drop: vec![],
        }
    }
}

/// Parses `metric=value` (as `--max-drop acc=0.02`).
pub fn parse_max_drop(s: &str) -> Result<(String, f64)> {
    let (m, v) = s
        .split_once('=')
        .ok_or_else(|| EvalError::Invalid(format!("--max-drop {s:?}: expected metric=value")))?;
    let v: f64 = v
        .parse()
        .map_err(|_| EvalError::Invalid(format!("--max-drop {s:?}: {v:?} is not a number")))?;
    if !(v >= 0.0) {
        return Err(EvalError::Invalid(format!(
            "--max-drop {s:?}: must be >= 0"
        )));
    }
    Ok((m.trim().to_string(), v))
}

/// One compared metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Task name.
    pub task: String,
    /// Metric name.
    pub metric: String,
    /// Baseline value.
    pub base: f64,
    /// New value (NaN when missing).
    pub new: f64,
    /// z statistic of `new − base` (positive = larger).
    pub z: f64,
    /// One-sided p-value of a worsening.
    pub p_worse: f64,
    /// Why it regressed, or `None`.
    pub regression: Option<String>,
}

/// All comparisons of a gate run.
#[derive(Debug, Clone, PartialEq)]
pub struct GateReport {
    /// One per baseline (task, metric).
    pub comparisons: Vec<Comparison>,
}

impl GateReport {
    /// Whether any metric regressed (the CLI exits 1).
    pub fn regressed(&self) -> bool {
        self.comparisons.iter().any(|c| c.regression.is_some())
    }

    /// A markdown table of deltas with significance.
    pub fn table(&self) -> String {
        let mut s = String::from("|Task|Metric|Baseline|New|Δ|z|p(worse)|Verdict|\n|---|---|---:|---:|---:|---:|---:|---|\n");
        for c in &self.comparisons {
            s.push_str(&format!(
                "|{}|{}|{:.4}|{:.4}|{:+.4}|{:.2}|{:.4}|{}|\n",
                c.task,
                c.metric,
                c.base,
                c.new,
                c.new - c.base,
                c.z,
                c.p_worse,
                c.regression.as_deref().unwrap_or("ok")
            ));
        }
        s
    }
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Compares `new` to `baseline` (both results JSONs).
pub fn compare(baseline: &Value, new: &Value, config: &GateConfig) -> Result<GateReport> {
    let base_results = baseline
        .get("results")
        .and_then(Value::as_object)
        .ok_or_else(|| EvalError::Invalid("baseline has no `results` object".into()))?;
    let mut comparisons = Vec::new();
    for (task, metrics) in base_results {
        let Some(metrics) = metrics.as_object() else {
            continue;
        };
        for (key, base_v) in metrics {
            let Some(metric) = key.strip_suffix(",none") else {
                continue;
            };
            if metric.ends_with("_stderr") {
                continue;
            }
            let Some(base) = number(base_v) else { continue };
            let higher = baseline["higher_is_better"][task][metric]
                .as_bool()
                .unwrap_or(true);
            let new_v = new["results"][task].get(key).and_then(number);
            let Some(newv) = new_v else {
                comparisons.push(Comparison {
                    task: task.clone(),
                    metric: metric.into(),
                    base,
                    new: f64::NAN,
                    z: f64::NAN,
                    p_worse: 0.0,
                    regression: Some("missing from the new results".into()),
                });
                continue;
            };
            let is_prop = baseline["smelt_proportion"][task]
                .as_array()
                .is_some_and(|a| a.iter().any(|m| m == metric));
            let z = if is_prop {
                let n =
                    |r: &Value| r["n-samples"][task]["effective"].as_u64().unwrap_or(0) as usize;
                let (nb, nn) = (n(baseline), n(new));
                if nb == 0 || nn == 0 {
                    return Err(EvalError::Invalid(format!(
                        "task `{task}`: `n-samples` missing for the z-test"
                    )));
                }
                two_proportion_z(base, nb, newv, nn)
            } else {
                let se = |r: &Value| {
                    r["results"][task]
                        .get(format!("{metric}_stderr,none"))
                        .and_then(number)
                };
                match (se(baseline), se(new)) {
                    (Some(sb), Some(sn)) => two_mean_z(base, sb, newv, sn),
                    // No stderr (e.g. word_perplexity): no significance test, floors only.
                    _ => f64::NAN,
                }
            };
            // Worsening is a negative z for higher-is-better metrics, positive otherwise.
            let z_worse = if higher { z } else { -z };
            let p_worse = if z_worse.is_nan() {
                1.0
            } else {
                normal_cdf(z_worse)
            };
            let drop = if higher { base - newv } else { newv - base };
            let mut regression = None;
            if p_worse < config.alpha {
                regression = Some(format!(
                    "significant (p={p_worse:.4} < alpha={})",
                    config.alpha
                ));
            }
            if let Some((_, limit)) = config.max_drop.iter().find(|(m, _)| m == metric) {
                if drop > *limit {
                    regression = Some(format!("worse by {drop:.4} > max-drop {limit}"));
                }
            }
            comparisons.push(Comparison {
                task: task.clone(),
                metric: metric.into(),
                base,
                new: newv,
                z,
                p_worse,
                regression,
            });
        }
    }
    Ok(GateReport { comparisons })
}
