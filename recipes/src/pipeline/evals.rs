//! The pipeline's evals: a spec file written into the run folder, run after every
//! stage with the `smelt-evals` runner, and compared with the previous stage's
//! results through the `smelt eval --gate` logic.
//!
//! Four tasks, all held out: `bpb` (bits per byte on held-out English),
//! `arithmetic` (greedy exact match on held-out problems, same prompt as SFT/GRPO),
//! `arithmetic_sampled` (the same problems, [`SAMPLES`] completions each at the
//! sampling temperature GRPO trains with; `avg@4` is the mean exact match, the pass@1
//! estimate reasoning-RL work reports) and `preference` (2-way loglikelihood accuracy
//! on held-out correct-vs-wrong pairs).
//! Key decision: each stage is gated only on the metric it trains — pretraining on
//! `bpb`, SFT on `arithmetic`, DPO on `preference`, GRPO on `arithmetic_sampled`
//! (GRPO maximises the expected reward of *sampled* completions; greedy exact match is
//! reported beside it) — because post-training a 1 M-parameter model on arithmetic is
//! *expected* to cost English bits per byte; the other metrics' changes are logged as
//! trade-offs, never failures.

use super::data::{write_atomically, EVAL_PROMPT};
use super::recipe::{EvalSettings, Stage};
use serde_json::Value;
use smelt::checkpoint::{self, LoadOptions};
use smelt::tokenizer::Tokenizer;
use smelt::{Error, Model, Result};
use smelt_evals::gate::{compare, GateConfig, GateReport};
use smelt_evals::results::results_json;
use smelt_evals::{load_specs, run_task, EvalOptions};
use std::path::{Path, PathBuf};

/// Completions per problem of `arithmetic_sampled` (its metric is `avg@4`).
pub const SAMPLES: usize = 4;

/// The headline metrics, as `(task, metric)`, in summary-table order.
pub const HEADLINE: [(&str, &str); 4] = [
    ("bpb", "bits_per_byte"),
    ("arithmetic", "exact_match"),
    ("arithmetic_sampled", "avg@4"),
    ("preference", "acc"),
];

/// The one `(task, metric)` a stage must not worsen (see the module docs).
pub fn gated_metric(stage: Stage) -> (&'static str, &'static str) {
    match stage {
        Stage::Pretrain => HEADLINE[0],
        Stage::Sft => HEADLINE[1],
        Stage::Grpo => HEADLINE[2],
        Stage::Dpo => HEADLINE[3],
    }
}

/// Writes `<run_dir>/evals.toml` (data paths relative to it) and returns its path.
pub fn write_spec(run_dir: &Path, settings: &EvalSettings) -> Result<PathBuf> {
    let bpb =
        std::fs::canonicalize(&settings.bpb_file).map_err(|e| Error::io(&settings.bpb_file, e))?;
    let task = |pairs: &[(&str, toml::Value)]| {
        toml::Value::Table(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    };
    let s = |x: &str| toml::Value::String(x.into());
    // the last number, as the GRPO reward (`MathAnswer`) reads it
    let arithmetic = |name: &str, sampling: &[(&str, toml::Value)]| {
        let mut pairs = vec![
            ("name", s(name)),
            ("kind", s("generate")),
            ("data", s("data/eval-arithmetic.jsonl")),
            ("prompt", s(EVAL_PROMPT)),
            ("max_new_tokens", toml::Value::Integer(6)),
            ("stop", toml::Value::Array(vec![s("\n")])),
            ("extract", toml::Value::Array(vec![s(r"(-?\d+)\D*$")])),
        ];
        pairs.extend_from_slice(sampling);
        task(&pairs)
    };
    let tasks = vec![
        task(&[
            ("name", s("bpb")),
            ("kind", s("perplexity")),
            ("data", s(&bpb.to_string_lossy())),
            (
                "max_length",
                toml::Value::Integer(settings.bpb_max_length as i64),
            ),
        ]),
        arithmetic("arithmetic", &[]),
        arithmetic(
            "arithmetic_sampled",
            &[
                ("samples", toml::Value::Integer(SAMPLES as i64)),
                (
                    "temperature",
                    toml::Value::Float(settings.sample_temperature),
                ),
                ("seed", toml::Value::Integer(0)),
            ],
        ),
        task(&[
            ("name", s("preference")),
            ("kind", s("multiple_choice")),
            ("format", s("preference")),
            ("data", s("data/eval-preference.jsonl")),
            ("target_delimiter", s("")),
        ]),
    ];
    let mut root = toml::Table::new();
    root.insert("task".into(), toml::Value::Array(tasks));
    let text = format!(
        "# The pipeline's held-out evals (written by smelt-recipes; rerun with `smelt eval`).\n{}",
        toml::to_string(&root).map_err(|e| Error::Invalid(e.to_string()))?
    );
    let path = run_dir.join("evals.toml");
    write_atomically(&path, text.as_bytes())?;
    Ok(path)
}

/// Loads a checkpoint folder (with its tokenizer) on the CPU.
pub fn load_checkpoint(dir: &Path) -> Result<(Model, Tokenizer)> {
    let opts = LoadOptions {
        require_tokenizer: true,
        ..Default::default()
    };
    let loaded = checkpoint::load(&dir.to_string_lossy(), &candle_core::Device::Cpu, &opts)?;
    let tokenizer = loaded
        .tokenizer
        .ok_or_else(|| Error::checkpoint(dir, "no tokenizer.json"))?;
    Ok((loaded.model, tokenizer))
}

/// Runs every task of `spec` on `model`; returns lm-eval-style results JSON.
pub fn evaluate(
    model: &Model,
    tokenizer: &Tokenizer,
    spec: &Path,
    settings: &EvalSettings,
    model_name: &str,
) -> Result<Value> {
    let tasks = load_specs(spec).map_err(eval_err)?;
    let mut outputs = Vec::new();
    for task in &tasks {
        let opts = EvalOptions {
            limit: if task.name == "bpb" {
                settings.bpb_docs
            } else {
                None
            },
            ..Default::default()
        };
        outputs.push(run_task(model, tokenizer, task, &opts, &mut |_, _, _| {}).map_err(eval_err)?);
    }
    Ok(results_json(&tasks, &outputs, model_name, None))
}

/// The headline value of `(task, metric)` in a results JSON.
pub fn metric(results: &Value, task: &str, metric: &str) -> Option<f64> {
    results["results"][task][format!("{metric},none")].as_f64()
}

/// Compares `new` with `baseline` through the eval gate; returns the report restricted
/// to the headline metrics and whether `stage`'s gated metric regressed.
pub fn gate(stage: Stage, baseline: &Value, new: &Value, alpha: f64) -> Result<(GateReport, bool)> {
    let config = GateConfig {
        alpha,
        ..Default::default()
    };
    let mut report = compare(baseline, new, &config).map_err(eval_err)?;
    report
        .comparisons
        .retain(|c| HEADLINE.contains(&(c.task.as_str(), c.metric.as_str())));
    let (task, m) = gated_metric(stage);
    let failed = report
        .comparisons
        .iter()
        .any(|c| c.task == task && c.metric == m && c.regression.is_some());
    Ok((report, failed))
}

fn eval_err(e: smelt_evals::EvalError) -> Error {
    Error::Invalid(format!("evals: {e}"))
}
