//! `smelt eval`: run eval tasks on a checkpoint, write lm-eval-style results, and
//! optionally gate against a baseline (exit status 1 on a regression).
//!
//! `smelt eval --model CKPT --tasks a,b [--limit N] [--output results.json]
//! [--gate baseline.json --alpha 0.05 --max-drop acc=0.02] [--write-baseline path]`
//!
//! Tasks are built-in names (`shakespeare_bpb`, `arithmetic`, `preference_heldout`),
//! spec files (`x.toml`) or one task of a spec file (`x.toml:name`).

use anyhow::{bail, Context};
use candle_core::Device;
use smelt::checkpoint::{self, LoadOptions};
use smelt_evals::builtin::resolve_tasks;
use smelt_evals::gate::{compare, parse_max_drop, GateConfig};
use smelt_evals::results::{
    markdown_table, read_results, results_json, write_results, write_samples,
};
use smelt_evals::{run_task, EvalOptions};
use std::path::PathBuf;

/// Arguments of `smelt eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Model: HF folder, hub id `org/name[@rev]`, or `.gguf` file.
    #[arg(long)]
    pub model: String,
    /// Comma-separated tasks: built-in names, spec files `x.toml`, or `x.toml:name`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub tasks: Vec<String>,
    /// Evaluate only the first N docs of each task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the results JSON here (lm-eval schema).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write per-sample JSONL (`<task>.jsonl`) into this folder (default: beside `--output`).
    #[arg(long)]
    pub samples_dir: Option<PathBuf>,
    /// Baseline results JSON to gate against; exit status 1 on a regression.
    #[arg(long)]
    pub gate: Option<PathBuf>,
    /// One-sided significance level of the gate's z-tests.
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Absolute floor `metric=value`: fail if the metric worsens by more (repeatable).
    #[arg(long)]
    pub max_drop: Vec<String>,
    /// Record these results as a baseline at this path.
    #[arg(long)]
    pub write_baseline: Option<PathBuf>,
    /// Tokens per scoring forward pass.
    #[arg(long, default_value_t = 2048)]
    pub token_budget: usize,
}

/// Runs the tasks, prints the table, writes files, and applies the gate.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let max_drop = args
        .max_drop
        .iter()
        .map(|s| parse_max_drop(s))
        .collect::<Result<Vec<_>, _>>()?;
    if !(args.alpha > 0.0 && args.alpha < 1.0) {
        bail!("--alpha must be in (0, 1), got {}", args.alpha);
    }
    // Read the baseline first: a bad path fails before minutes of evaluation.
    let baseline = args.gate.as_deref().map(read_results).transpose()?;
    let tasks = resolve_tasks(&args.tasks)?;
    let opts = LoadOptions {
        require_tokenizer: true,
        ..Default::default()
    };
    let loaded = checkpoint::load(&args.model, &Device::Cpu, &opts)
        .with_context(|| format!("loading {}", args.model))?;
    let Some(tokenizer) = loaded.tokenizer else {
        bail!("{}: no tokenizer found", args.model)
    };
    let eval_opts = EvalOptions {
        limit: args.limit,
        token_budget: args.token_budget,
        max_length: None,
    };
    let mut outputs = Vec::new();
    for task in &tasks {
        let t0 = std::time::Instant::now();
        let mut progress = |name: &str, done: usize, total: usize| {
            if done == total || done % 10 == 0 {
                eprintln!(
                    "[eval] {name}: {done}/{total} ({:.1}s)",
                    t0.elapsed().as_secs_f64()
                );
            }
        };
        outputs.push(run_task(
            &loaded.model,
            &tokenizer,
            task,
            &eval_opts,
            &mut progress,
        )?);
    }
    let results = results_json(&tasks, &outputs, &args.model, args.limit);
    println!("{}", markdown_table(&tasks, &outputs));
    if let Some(path) = &args.output {
        write_results(path, &results)?;
        eprintln!("[eval] results: {}", path.display());
    }
    let samples_dir = args
        .samples_dir
        .clone()
        .or_else(|| args.output.as_ref().map(|p| p.with_extension("samples")));
    if let Some(dir) = samples_dir {
        for out in &outputs {
            write_samples(&dir.join(format!("{}.jsonl", out.task)), out)?;
        }
    }
    if let Some(path) = &args.write_baseline {
        write_results(path, &results)?;
        eprintln!("[eval] baseline written: {}", path.display());
    }
    if let Some(baseline) = baseline {
        let report = compare(
            &baseline,
            &results,
            &GateConfig {
                alpha: args.alpha,
                max_drop,
            },
        )?;
        println!("{}", report.table());
        if report.regressed() {
            eprintln!(
                "[eval] gate: REGRESSION against {}",
                args.gate.as_ref().unwrap().display()
            );
            std::process::exit(1);
        }
        eprintln!("[eval] gate: ok");
    }
    Ok(())
}
