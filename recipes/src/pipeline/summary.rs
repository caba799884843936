//! The pipeline's summary: one row per evaluated model (the starting point, then each
//! stage), written as `summary.md` (a stage × metric table with deltas against the
//! previous row, and each stage's gate verdicts) and `summary.json`.
//!
//! Key decision: a row is exactly what the stage's `done.json` holds, so the summary
//! of a resumed pipeline is rebuilt from the markers of the stages it skipped.

use super::data::write_atomically;
use super::evals::{gated_metric, HEADLINE};
use super::recipe::Stage;
use serde::{Deserialize, Serialize};
use smelt::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One gate comparison of a stage against the previous row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateLine {
    /// `task/metric`.
    pub metric: String,
    /// Previous row's value.
    pub base: f64,
    /// This row's value.
    pub new: f64,
    /// One-sided p-value of a worsening.
    pub p_worse: f64,
    /// Whether the stage is gated on this metric (else a regression is a logged trade-off).
    pub gated: bool,
    /// Why it regressed, or `None`.
    pub regression: Option<String>,
}

/// One evaluated model: the starting point (`init`: the random initialisation; or
/// `base`: the first stage's input model) or a finished stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRow {
    /// `init`, `base`, or the stage name.
    pub stage: String,
    /// The evaluated checkpoint (none for the random initialisation).
    pub checkpoint: Option<PathBuf>,
    /// Headline metrics, keyed `task/metric`.
    pub metrics: BTreeMap<String, f64>,
    /// Gate comparisons against the previous row (empty for the first row).
    pub gate: Vec<GateLine>,
    /// Optimizer steps of the stage (0 for the starting point).
    pub steps: u64,
    /// Seconds this process spent training and evaluating the stage.
    pub wall_s: f64,
}

/// The whole pipeline's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The pipeline's run folder.
    pub run_dir: PathBuf,
    /// Rows in order: the starting point, then each stage.
    pub rows: Vec<StageRow>,
    /// Seconds this invocation took (skipped stages cost nothing).
    pub wall_s: f64,
}

impl Summary {
    /// The metric `task/metric` of the row named `stage`.
    pub fn value(&self, stage: &str, key: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.stage == stage)?
            .metrics
            .get(key)
            .copied()
    }

    /// The markdown table: stage × headline metric, with deltas against the previous row.
    pub fn table(&self) -> String {
        let keys: Vec<String> = HEADLINE.iter().map(|(t, m)| format!("{t}/{m}")).collect();
        let mut s = format!("|stage|steps|{}|gated on|\n|---|---:|", keys.join("|"));
        s.push_str(&"---:|".repeat(keys.len()));
        s.push_str("---|\n");
        for (i, row) in self.rows.iter().enumerate() {
            s.push_str(&format!("|{}|{}|", row.stage, row.steps));
            for k in &keys {
                let v = row.metrics.get(k);
                let prev = i.checked_sub(1).and_then(|j| self.rows[j].metrics.get(k));
                match (v, prev) {
                    (Some(v), Some(p)) => s.push_str(&format!("{v:.4} ({:+.4})|", v - p)),
                    (Some(v), None) => s.push_str(&format!("{v:.4}|")),
                    _ => s.push_str("–|"),
                }
            }
            let gated = stage_of(&row.stage).map(|st| {
                let (t, m) = gated_metric(st);
                format!("{t}/{m}")
            });
            s.push_str(&format!("{}|\n", gated.unwrap_or_default()));
        }
        s
    }

    /// The full markdown report: the table, then each stage's gate verdicts.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Pipeline summary: {}\n\n{}\nDeltas are against the previous row. `bits_per_byte`: lower is better; the others: higher.\n",
            self.run_dir.display(),
            self.table()
        );
        for row in self.rows.iter().filter(|r| !r.gate.is_empty()) {
            s.push_str(&format!("\n## Gate: {}\n\n|metric|before|after|p(worse)|verdict|\n|---|---:|---:|---:|---|\n", row.stage));
            for g in &row.gate {
                let verdict = match (&g.regression, g.gated) {
                    (None, _) => "ok".to_string(),
                    (Some(r), true) => format!("REGRESSION: {r}"),
                    (Some(r), false) => format!("trade-off (not gated): {r}"),
                };
                s.push_str(&format!(
                    "|{}{}|{:.4}|{:.4}|{:.4}|{}|\n",
                    g.metric,
                    if g.gated { " (gated)" } else { "" },
                    g.base,
                    g.new,
                    g.p_worse,
                    verdict
                ));
            }
        }
        s.push_str("\nTraining curves: `<stage>/plots/*.png`; eval results: `<stage>/evals/results.json`.\n");
        s
    }

    /// Writes `summary.md` and `summary.json` into the run folder, atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_atomically(&dir.join("summary.md"), self.markdown().as_bytes())?;
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
        write_atomically(&dir.join("summary.json"), json.as_bytes())
    }
}

/// The stage a row name stands for.
fn stage_of(name: &str) -> Option<Stage> {
    serde_json::from_value(serde_json::Value::String(name.into())).ok()
}
