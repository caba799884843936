//! `smelt bench sft|dpo`: the TRL workloads of `shared/bench/reference.py`
//! (`trl-sft`, `trl-dpo`) run through smelt's own recipes and loop.
//!
//! The rows are generated exactly as `reference.py`'s `_sft_rows(64)` /
//! `_pref_rows(64)`; the settings are TRL's (lr 2e-5 / 1e-6, beta 0.1, no packing,
//! f32). The step time is the loop's `step_s` per step, first step excluded.

use super::bench::BenchArgs;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use smelt::telemetry::{peak_rss_mb, MetricsLog};
use smelt_algorithms::recipes::{run_dpo, run_sft, DpoRecipe, SftRecipe};
use std::io::Write;
use std::path::Path;

/// `reference.py`'s `_sft_rows(n)`.
fn sft_rows(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"messages": [
                {"role": "user", "content": format!("What is {i} plus {}?", i + 3)},
                {"role": "assistant", "content": format!("{i} plus {} is {}.", i + 3, 2 * i + 3)},
            ]})
        })
        .collect()
}

/// `reference.py`'s `_pref_rows(n)`.
fn pref_rows(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "prompt": [{"role": "user", "content": format!("What is {i} plus {}?", i + 3)}],
                "chosen": [{"role": "assistant", "content": format!("{}", 2 * i + 3)}],
                "rejected": [{"role": "assistant", "content": format!("{}", 2 * i + 4)}],
            })
        })
        .collect()
}

fn write_jsonl(path: &Path, rows: &[Value]) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)?;
    for r in rows {
        writeln!(f, "{r}")?;
    }
    Ok(())
}

/// Runs `sft` (`dpo == false`) or `dpo` and returns the JSON line.
pub fn run(args: &BenchArgs, dpo: bool) -> anyhow::Result<Value> {
    if args.batch == 0 || args.steps < 2 {
        bail!("sft/dpo benchmarks need --batch ≥ 1 and --steps ≥ 2");
    }
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data.jsonl");
    write_jsonl(&data, &if dpo { pref_rows(64) } else { sft_rows(64) })?;
    let recipe_path = dir.path().join("recipe.toml");
    let run_dir = dir.path().join("run");
    let (section, batch_key) = if dpo { ("dpo", "data") } else { ("sft", "sft") };
    let text = format!(
        "model = {model:?}\n[data]\ntrain_files = [{data:?}]\n[{section}]\nmax_length = {seq}\n{batch_line}\n[train]\noutput_dir = {run:?}\nmax_steps = {steps}\nsave_every = 0\nprogress = false\nplots = false\n",
        model = args.gguf.display().to_string(),
        data = data.display().to_string(),
        seq = args.seq,
        batch_line = if batch_key == "sft" { format!("per_device_train_batch_size = {}\npacking = false", args.batch) } else { String::new() },
        run = run_dir.display().to_string(),
        steps = args.steps,
    );
    let text = if dpo {
        text.replace(
            "[data]\n",
            &format!("[data]\nper_device_train_batch_size = {}\n", args.batch),
        )
    } else {
        text
    };
    std::fs::write(&recipe_path, text)?;
    let summary = if dpo {
        run_dpo(&DpoRecipe::load(&recipe_path, &[])?).context("dpo")?
    } else {
        run_sft(&SftRecipe::load(&recipe_path, &[])?).context("sft")?
    };
    let records: Vec<Value> = MetricsLog::read_all(&summary.metrics_path)?
        .into_iter()
        .filter(|r| r.get("event").is_none())
        .collect();
    let losses: Vec<f64> = records.iter().filter_map(|r| r["loss"].as_f64()).collect();
    let mut steps: Vec<f64> = records
        .iter()
        .skip(1)
        .filter_map(|r| r["step_s"].as_f64())
        .collect();
    steps.sort_by(f64::total_cmp);
    let median = steps.get(steps.len() / 2).copied().unwrap_or(f64::NAN);
    Ok(json!({
        "workload": if dpo { "dpo" } else { "sft" }, "impl": "smelt", "batch": args.batch, "steps": args.steps,
        "step_s_median": median, "peak_rss_mb": peak_rss_mb(), "losses": losses,
    }))
}
