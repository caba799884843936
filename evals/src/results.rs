//! Results in lm-evaluation-harness' schema, per-sample JSONL, and the markdown table.
//!
//! Key decision: the results JSON is lm-eval's (`results` with `"acc,none"` /
//! `"acc_stderr,none"`, `configs`, `versions`, `n-shot`, `higher_is_better`,
//! `n-samples`), so existing tooling reads smelt's numbers and a baseline is just a
//! results file. smelt adds one key, `smelt_proportion`, naming the metrics that are
//! proportions of 0/1 outcomes (the gate uses the two-proportion z-test for those).
//! Files are written to a temporary sibling and renamed, so a crash never leaves a
//! truncated baseline.

use crate::error::{EvalError, Result};
use crate::runner::TaskOutput;
use crate::spec::Task;
use serde_json::{json, Map, Value};
use std::path::Path;

/// The version recorded for every task (bump when prompts or scoring change).
pub const TASK_VERSION: f64 = 1.0;

/// Builds the results JSON for `outputs` (in order) of `tasks`.
pub fn results_json(
    tasks: &[Task],
    outputs: &[TaskOutput],
    model: &str,
    limit: Option<usize>,
) -> Value {
    let (mut results, mut configs, mut versions, mut nshot, mut hib, mut nsamples, mut prop) = (
        Map::new(),
        Map::new(),
        Map::new(),
        Map::new(),
        Map::new(),
        Map::new(),
        Map::new(),
    );
    for (task, out) in tasks.iter().zip(outputs) {
        let mut r = Map::new();
        r.insert("alias".into(), out.task.clone().into());
        let mut h = Map::new();
        let mut p = Vec::new();
        for m in &out.metrics {
            r.insert(format!("{},none", m.name), json_f64(m.value));
            r.insert(
                format!("{}_stderr,none", m.name),
                m.stderr.map(json_f64).unwrap_or_else(|| "N/A".into()),
            );
            h.insert(m.name.clone(), m.higher_is_better.into());
            if m.proportion {
                p.push(Value::from(m.name.clone()));
            }
        }
        let s = &task.spec;
        configs.insert(
            out.task.clone(),
            json!({
                "task": out.task, "kind": format!("{:?}", s.kind), "data": s.data, "format": format!("{:?}", s.format),
                "prompt": s.prompt, "description": s.description, "target_delimiter": s.target_delimiter,
                "fewshot_delimiter": s.fewshot_delimiter, "num_fewshot": s.num_fewshot, "fewshot_seed": s.fewshot_seed,
                "chat_template": s.chat_template, "max_new_tokens": s.max_new_tokens, "stop": s.stop,
                "extract": s.extract, "samples": s.samples, "temperature": s.temperature, "seed": s.seed,
            }),
        );
        results.insert(out.task.clone(), r.into());
        versions.insert(out.task.clone(), TASK_VERSION.into());
        nshot.insert(out.task.clone(), s.num_fewshot.into());
        hib.insert(out.task.clone(), h.into());
        nsamples.insert(
            out.task.clone(),
            json!({"original": out.n_original, "effective": out.n_effective}),
        );
        prop.insert(out.task.clone(), p.into());
    }
    json!({
        "results": results, "configs": configs, "versions": versions, "n-shot": nshot,
        "higher_is_better": hib, "n-samples": nsamples, "smelt_proportion": prop,
        "config": {"model": model, "limit": limit},
    })
}

/// Finite numbers as JSON numbers, NaN/∞ as strings (JSON has no non-finite numbers).
fn json_f64(x: f64) -> Value {
    if x.is_finite() {
        x.into()
    } else {
        x.to_string().into()
    }
}

/// Writes `bytes` to `path` atomically (the core's temporary sibling, fsync, rename).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(smelt::checkpoint::write_bytes_atomically(path, bytes)?)
}

/// Writes the results JSON (pretty) atomically.
pub fn write_results(path: &Path, results: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(results).expect("JSON values serialise");
    write_atomically(path, text.as_bytes())
}

/// Writes one task's per-sample records as JSONL atomically.
pub fn write_samples(path: &Path, out: &TaskOutput) -> Result<()> {
    let mut text = String::new();
    for s in &out.samples {
        text.push_str(&serde_json::to_string(s).expect("JSON values serialise"));
        text.push('\n');
    }
    write_atomically(path, text.as_bytes())
}

/// Reads a results JSON (a baseline).
pub fn read_results(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| EvalError::Invalid(format!("{}: line {}: {e}", path.display(), e.line())))
}

/// lm-eval's markdown table: one row per (task, metric).
pub fn markdown_table(tasks: &[Task], outputs: &[TaskOutput]) -> String {
    let mut s = String::from("|Tasks|Version|Filter|n-shot|Metric| |Value| |Stderr|\n");
    s.push_str("|-----|------:|------|-----:|------|---|----:|---|-----:|\n");
    for (task, out) in tasks.iter().zip(outputs) {
        for (j, m) in out.metrics.iter().enumerate() {
            let name = if j == 0 { out.task.as_str() } else { "" };
            let arrow = if m.higher_is_better { "↑" } else { "↓" };
            let se = m
                .stderr
                .map(|x| format!("{x:.4}"))
                .unwrap_or_else(|| "N/A".into());
            s.push_str(&format!(
                "|{name}|{TASK_VERSION:.1}|none|{}|{}|{arrow}|{:.4}|±|{se}|\n",
                task.spec.num_fewshot, m.name, m.value
            ));
        }
    }
    s
}
