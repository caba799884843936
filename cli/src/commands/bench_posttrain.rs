//! `smelt bench sft|dpo|grpo`: the TRL workloads of `shared/bench/reference.py`
//! (`trl-sft`, `trl-dpo`, `trl-grpo`) run through smelt's own recipes and loop.
//!
//! The rows are generated exactly as `reference.py`'s `_sft_rows(64)` /
//! `_pref_rows(64)` / `cmd_trl_grpo`'s 64 prompts; the settings are TRL's (lr 2e-5 /
//! 1e-6, beta 0.1, no packing, f32; GRPO: beta 0, temperature 1, exact match of the
//! final number, `per_device_train_batch_size = batch × generations`). The step time is
//! the loop's `step_s` per step (for GRPO it includes waiting for rollouts), first step
//! excluded. GRPO has its own defaults (`--batch 2 --new-tokens 32 --steps 3`, as
//! `reference.py trl-grpo`) wherever the flag is not given.

use super::bench::BenchArgs;
use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::CommandFactory;
use serde_json::{json, Value};
use smelt::telemetry::{peak_rss_mb, MetricsLog};
use smelt::train::TrainConfig;
use smelt_algorithms::grpo::run::{grpo_train_defaults, GrpoData, RewardSpec};
use smelt_algorithms::grpo::{run_grpo, GrpoConfig, GrpoRecipe};
use smelt_algorithms::recipes::{run_dpo, run_sft, DpoRecipe, SftRecipe};
use std::io::Write;
use std::path::Path;

/// Flags only `smelt bench grpo` reads.
#[derive(clap::Args, Debug, Clone)]
pub struct GrpoFlags {
    /// Completions per prompt (`grpo`).
    #[arg(long, default_value_t = 4)]
    pub generations: usize,
    /// Generate in the asynchronous rollout service (`grpo`; default staleness 1).
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// Versions a rollout may lag the trainer (`grpo`; implies `--async`).
    #[arg(long)]
    pub max_staleness: Option<u64>,
    /// Threads of the asynchronous generator's own pool (`grpo`; 0 = share the trainer's).
    #[arg(long, default_value_t = 0)]
    pub generator_threads: usize,
}

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

/// `cmd_trl_grpo`'s 64 prompts with their answers.
fn grpo_rows(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "prompt": [{"role": "user", "content": format!("What is {i} plus {}? Answer with a number.", i + 3)}],
                "answer": format!("{}", 2 * i + 3),
            })
        })
        .collect()
}

/// `given` when `flag` was on the command line, else the workload's own default
/// (`reference.py`'s, which differs between workloads).
pub(crate) fn or_workload_default(flag: &str, given: usize, workload_default: usize) -> usize {
    if defaulted(flag) {
        workload_default
    } else {
        given
    }
}

/// Whether `flag` of `smelt bench` was left at its default on this command line.
fn defaulted(flag: &str) -> bool {
    let matches = crate::Cli::command().ignore_errors(true).get_matches();
    matches
        .subcommand_matches("bench")
        .and_then(|m| m.value_source(flag))
        .is_none_or(|s| s == ValueSource::DefaultValue)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Runs `grpo` and returns the JSON line.
pub fn run_grpo_bench(args: &BenchArgs) -> anyhow::Result<Value> {
    let flags = &args.grpo;
    let batch = or_workload_default("batch", args.batch, 2);
    let new_tokens = or_workload_default("new_tokens", args.new_tokens, 32);
    let steps = or_workload_default("steps", args.steps, 3);
    if batch == 0 || flags.generations < 2 || new_tokens == 0 || steps < 2 {
        bail!(
            "grpo benchmark needs --batch ≥ 1, --generations ≥ 2, --new-tokens ≥ 1 and --steps ≥ 2"
        );
    }
    let asynchronous = flags.asynchronous || flags.max_staleness.is_some();
    let max_staleness = flags
        .max_staleness
        .unwrap_or(if asynchronous { 1 } else { 0 });
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("prompts.jsonl");
    write_jsonl(&data, &grpo_rows(64))?;
    let completions = batch * flags.generations;
    let recipe = GrpoRecipe {
        model: args.gguf.display().to_string(),
        data: GrpoData {
            train_files: vec![data],
            arithmetic: None,
        },
        rewards: vec![RewardSpec::MathAnswer {
            weight: 1.0,
            answer_key: "answer".into(),
        }],
        grpo: GrpoConfig {
            num_generations: flags.generations,
            per_device_train_batch_size: completions,
            max_completion_length: new_tokens,
            temperature: 1.0,
            beta: 0.0,
            async_generation: asynchronous,
            max_staleness,
            generator_threads: flags.generator_threads,
            seed: args.seed,
            ..GrpoConfig::default()
        },
        max_batch: completions,
        train: TrainConfig {
            output_dir: dir.path().join("run"),
            max_steps: steps as u64,
            save_every: 0,
            progress: false,
            plots: false,
            seed: args.seed,
            ..grpo_train_defaults()
        },
    };
    let summary = run_grpo(&recipe, Path::new("<smelt bench grpo>")).context("grpo")?;
    let records: Vec<Value> = MetricsLog::read_all(&summary.metrics_path)?
        .into_iter()
        .filter(|r| r.get("event").is_none())
        .collect();
    let series = |key: &str, skip: usize| -> Vec<f64> {
        records
            .iter()
            .skip(skip)
            .filter_map(|r| r[key].as_f64())
            .collect()
    };
    Ok(json!({
        "workload": "grpo", "impl": "smelt", "prompts_per_step": batch,
        "generations": flags.generations, "new_tokens": new_tokens, "steps": steps,
        "async": asynchronous, "max_staleness": max_staleness,
        "generator_threads": flags.generator_threads,
        "step_s_median": median(series("step_s", 1)),
        "step_s": series("step_s", 0),
        "generation_tokens_per_s": median(series("generation/tokens_per_s", 1)),
        "trainer_tokens_per_s": median(series("tokens_per_s", 1)),
        "data_wait_s_median": median(series("data_wait_s", 1)),
        "staleness": series("staleness", 0),
        "rewards": series("reward", 0), "losses": series("loss", 0),
        "peak_rss_mb": peak_rss_mb(),
    }))
}
