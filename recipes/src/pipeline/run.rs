//! `run_pipeline`: plan every stage, generate the data, then for each stage in order
//! train (or skip it when its `done.json` exists), evaluate its `latest` checkpoint,
//! gate it against the previous row and rewrite the summary.
//!
//! The first row of the summary is the model the pipeline starts from: `init` (the
//! pretraining stage's random initialisation, same config and seed, evaluated with the
//! trained tokenizer — so "bpb after pretraining < bpb at init" is a real comparison),
//! or `base` (the first stage's input model when the pipeline starts after pretraining).

use super::data::write_data;
use super::evals::{evaluate, gate, gated_metric, load_checkpoint, metric, write_spec, HEADLINE};
use super::recipe::{GateMode, PipelineRecipe, Stage, StagePlan};
use super::summary::{GateLine, StageRow, Summary};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use smelt::{Error, Model, Result};
use smelt_algorithms::grpo::run_grpo;
use smelt_algorithms::recipes::{run_dpo, run_sft};
use smelt_pretrain::run::run_pretrain;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `<stage>/done.json` holds: the summary row and the full eval results.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Done {
    row: StageRow,
    results: Value,
}

/// Runs the pipeline; a rerun skips finished stages and resumes an interrupted one.
pub fn run_pipeline(recipe: &PipelineRecipe) -> Result<Summary> {
    let started = Instant::now();
    let plans = recipe.plan()?; // every stage checked before anything trains
    let run = &recipe.run_dir;
    std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
    write_data(recipe)?;
    let spec = write_spec(run, &recipe.evals)?;
    let mut summary = Summary {
        run_dir: run.clone(),
        rows: vec![],
        wall_s: 0.0,
    };
    let base_dir = run.join(if plans[0].0 == Stage::Pretrain {
        "init"
    } else {
        "base"
    });
    let mut previous = read_done(&base_dir)?;
    if previous.is_none() {
        if let Some(model) = plans[0].1.input_model() {
            previous = Some(evaluate_start(recipe, &spec, model, &base_dir)?);
        }
    }
    if let Some(p) = &previous {
        summary.rows.push(p.row.clone());
    }
    for (stage, plan) in &plans {
        let dir = recipe.stage_dir(*stage);
        if let Some(done) = read_done(&dir)? {
            eprintln!(
                "pipeline: {} already done ({}), skipped",
                stage.name(),
                dir.join("done.json").display()
            );
            summary.rows.push(done.row.clone());
            previous = Some(done);
            continue;
        }
        eprintln!("pipeline: stage {} -> {}", stage.name(), dir.display());
        let t0 = Instant::now();
        let trained = match plan {
            StagePlan::Pretrain(r) => run_pretrain(r)?,
            StagePlan::Sft(r) => run_sft(r)?,
            StagePlan::Dpo(r) => run_dpo(r)?,
            StagePlan::Grpo(r) => run_grpo(r, &recipe.origin)?,
        };
        let latest = dir.join("latest");
        let (model, tokenizer) = load_checkpoint(&latest)?;
        if previous.is_none() {
            // The random initialisation the pretraining stage started from.
            let StagePlan::Pretrain(r) = plan else {
                unreachable!("checked above")
            };
            let init =
                Model::new_random(model.config().clone(), model.device(), r.model.init_seed)?;
            let results = evaluate(&init, &tokenizer, &spec, &recipe.evals, "random init")?;
            let done = finish(&base_dir, "init", None, results, vec![], 0, 0.0)?;
            summary.rows.push(done.row.clone());
            previous = Some(done);
        }
        let results = evaluate(
            &model,
            &tokenizer,
            &spec,
            &recipe.evals,
            &latest.to_string_lossy(),
        )?;
        let prev = previous.as_ref().expect("set above");
        let (report, failed) = gate(*stage, &prev.results, &results, recipe.evals.alpha)?;
        let (gt, gm) = gated_metric(*stage);
        let lines: Vec<GateLine> = report
            .comparisons
            .iter()
            .map(|c| GateLine {
                metric: format!("{}/{}", c.task, c.metric),
                base: c.base,
                new: c.new,
                p_worse: c.p_worse,
                gated: c.task == gt && c.metric == gm,
                regression: c.regression.clone(),
            })
            .collect();
        for l in lines.iter().filter(|l| l.regression.is_some()) {
            let kind = if l.gated { "REGRESSION" } else { "trade-off" };
            eprintln!(
                "pipeline: {} {kind}: {} {:.4} -> {:.4}",
                stage.name(),
                l.metric,
                l.base,
                l.new
            );
        }
        if failed && recipe.evals.gate == GateMode::Fail {
            let report_path = dir.join("evals").join("gate.md");
            super::data::write_atomically(&report_path, report.table().as_bytes())?;
            return Err(Error::Invalid(format!(
                "stage `{}` worsened its gated metric {gt}/{gm} (see {}); it is not marked done — \
                 change the recipe, or set `evals.gate = \"warn\"` to continue",
                stage.name(),
                report_path.display()
            )));
        }
        let done = finish(
            &dir,
            stage.name(),
            Some(latest),
            results,
            lines,
            trained.step,
            t0.elapsed().as_secs_f64(),
        )?;
        summary.rows.push(done.row.clone());
        previous = Some(done);
        summary.wall_s = started.elapsed().as_secs_f64();
        summary.write(run)?;
    }
    summary.wall_s = started.elapsed().as_secs_f64();
    summary.write(run)?;
    // The caller prints the table (the CLI and the example each print it once).
    Ok(summary)
}

/// Evaluates the model the pipeline starts from when it does not start with pretraining.
fn evaluate_start(recipe: &PipelineRecipe, spec: &Path, model: &str, dir: &Path) -> Result<Done> {
    let (m, tokenizer) = load_checkpoint(Path::new(model))?;
    let results = evaluate(&m, &tokenizer, spec, &recipe.evals, model)?;
    finish(
        dir,
        "base",
        Some(PathBuf::from(model)),
        results,
        vec![],
        0,
        0.0,
    )
}

/// Writes the eval results and the `done.json` marker of a row (marker last).
fn finish(
    dir: &Path,
    stage: &str,
    checkpoint: Option<PathBuf>,
    results: Value,
    gate: Vec<GateLine>,
    steps: u64,
    wall_s: f64,
) -> Result<Done> {
    let metrics = HEADLINE
        .iter()
        .filter_map(|(t, m)| metric(&results, t, m).map(|v| (format!("{t}/{m}"), v)))
        .collect();
    let done = Done {
        row: StageRow {
            stage: stage.into(),
            checkpoint,
            metrics,
            gate,
            steps,
            wall_s,
        },
        results,
    };
    let text =
        |v: &Value| serde_json::to_string_pretty(v).map_err(|e| Error::Invalid(e.to_string()));
    super::data::write_atomically(
        &dir.join("evals").join("results.json"),
        text(&done.results)?.as_bytes(),
    )?;
    let json = serde_json::to_value(&done).map_err(|e| Error::Invalid(e.to_string()))?;
    super::data::write_atomically(&dir.join("done.json"), text(&json)?.as_bytes())?;
    Ok(done)
}

/// The `done.json` of a finished stage, if any.
fn read_done(dir: &Path) -> Result<Option<Done>> {
    let path = dir.join("done.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::config(&path, format!("line {}: {e}", e.line())))
}
