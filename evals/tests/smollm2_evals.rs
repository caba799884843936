//! Real-model evals on SmolLM2-135M-Instruct (skipped unless its GGUF is present;
//! `SMELT_REQUIRE_ASSETS=1` makes absence a failure). Run in release:
//! `cargo test --release -p smelt-evals --test smollm2_evals`.
//!
//! - BIG-bench slices (assets/evals/bigbench, 2 tasks × 30 examples): every choice's
//!   loglikelihood matches transformers (`scripts/eval_reference.py`, committed output
//!   in fixtures/smollm2_bigbench_reference.json) within 1e-3; acc and acc_norm are
//!   identical per sample and in aggregate.
//! - HumanEval slice (20 problems): every canonical solution passes in the sandbox, a
//!   stub fails, and greedy generation runs end to end on a few problems.
//! - Gate: noise added to the weights makes the gate fail; a rerun of the same
//!   checkpoint passes.

#[path = "../../tests/common/mod.rs"]
mod common;

use candle_core::{Device, Tensor};
use serde_json::Value;
use smelt::checkpoint::{self, LoadOptions};
use smelt::tokenizer::Tokenizer;
use smelt::Model;
use smelt_evals::data::load_docs;
use smelt_evals::gate::{compare, GateConfig};
use smelt_evals::results::results_json;
use smelt_evals::runner::generative::program;
use smelt_evals::sandbox::{run_python, Outcome, SandboxLimits};
use smelt_evals::{load_specs, run_task, EvalOptions, Task, TaskOutput};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn smollm2() -> Option<(Model, Tokenizer)> {
    let path = common::smollm2_gguf()?;
    let opts = LoadOptions {
        require_tokenizer: true,
        ..Default::default()
    };
    let loaded = checkpoint::load(path.to_str().unwrap(), &Device::Cpu, &opts).unwrap();
    Some((loaded.model, loaded.tokenizer.unwrap()))
}

fn tasks() -> Vec<Task> {
    load_specs(&repo().join("assets/evals/tasks.toml")).unwrap()
}

fn task(name: &str) -> Task {
    tasks().into_iter().find(|t| t.name == name).unwrap()
}

fn run(model: &Model, tok: &Tokenizer, task: &Task, limit: Option<usize>) -> TaskOutput {
    let opts = EvalOptions {
        limit,
        ..Default::default()
    };
    run_task(model, tok, task, &opts, &mut |_, _, _| {}).unwrap()
}

fn metric(out: &TaskOutput, name: &str) -> f64 {
    out.metrics.iter().find(|m| m.name == name).unwrap().value
}

#[test]
fn bigbench_choice_loglikelihoods_match_transformers() {
    let Some((model, tok)) = smollm2() else {
        return;
    };
    let text = std::fs::read_to_string(
        repo().join("evals/tests/fixtures/smollm2_bigbench_reference.json"),
    )
    .unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    for name in ["bigbench_general_knowledge", "bigbench_odd_one_out"] {
        let out = run(&model, &tok, &task(name), None);
        let refs = reference["tasks"][name]["rows"].as_array().unwrap();
        assert_eq!(out.samples.len(), refs.len(), "{name}");
        let mut worst = 0f64;
        for (i, (s, r)) in out.samples.iter().zip(refs).enumerate() {
            assert_eq!(s["choices"], r["choices"], "{name} doc {i}: choices");
            assert_eq!(s["gold"], r["gold"], "{name} doc {i}: gold");
            let (a, b) = (
                s["loglikelihoods"].as_array().unwrap(),
                r["loglikelihoods"].as_array().unwrap(),
            );
            for (x, y) in a.iter().zip(b) {
                let d = (x.as_f64().unwrap() - y.as_f64().unwrap()).abs();
                worst = worst.max(d);
                assert!(d < 1e-3, "{name} doc {i}: ll {x} vs transformers {y}");
            }
            assert_eq!(s["acc"].as_f64(), r["acc"].as_f64(), "{name} doc {i}: acc");
            assert_eq!(
                s["acc_norm"].as_f64(),
                r["acc_norm"].as_f64(),
                "{name} doc {i}: acc_norm"
            );
        }
        let (acc, acc_norm) = (metric(&out, "acc"), metric(&out, "acc_norm"));
        assert_eq!(
            acc,
            reference["tasks"][name]["acc"].as_f64().unwrap(),
            "{name}: acc"
        );
        assert_eq!(
            acc_norm,
            reference["tasks"][name]["acc_norm"].as_f64().unwrap(),
            "{name}: acc_norm"
        );
        eprintln!("{name}: acc {acc:.4} acc_norm {acc_norm:.4} (max |Δll| {worst:.2e})");
    }
}

#[test]
fn humaneval_canonical_solutions_pass_and_generation_runs() {
    let he = task("humaneval");
    let docs = load_docs(&he).unwrap();
    assert_eq!(docs.len(), 20);
    let rows: Vec<Value> = std::fs::read_to_string(&he.data_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let limits = SandboxLimits::default();
    for (doc, row) in docs.iter().zip(&rows) {
        let good = run_python(
            &program(doc, row["canonical_solution"].as_str().unwrap()),
            &limits,
        )
        .unwrap();
        assert_eq!(good.outcome, Outcome::Passed, "{}: {}", doc.id, good.stderr);
    }
    let stub = run_python(&program(&docs[0], "    return None\n"), &limits).unwrap();
    assert_eq!(stub.outcome, Outcome::Failed);
    // Generation end to end on a few problems with short completions (CI cost).
    let Some((model, tok)) = smollm2() else {
        return;
    };
    let mut short = he.clone();
    short.spec.max_new_tokens = 48;
    let out = run(&model, &tok, &short, Some(2));
    assert_eq!(out.samples.len(), 2);
    let p = metric(&out, "pass@1");
    assert!((0.0..=1.0).contains(&p));
    eprintln!("humaneval (2 problems, 48 tokens): pass@1 {p}");
}

/// Twelve short paragraphs of the held-out corpus, as a perplexity task.
fn paragraphs_task(dir: &Path) -> Task {
    let text =
        std::fs::read_to_string(repo().join("assets/corpus/shakespeare-valid.jsonl")).unwrap();
    let doc: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let mut jsonl = String::new();
    for p in doc["text"]
        .as_str()
        .unwrap()
        .split("\n\n")
        .filter(|p| p.len() > 60 && p.len() < 300)
        .take(12)
    {
        jsonl.push_str(&serde_json::json!({ "text": p }).to_string());
        jsonl.push('\n');
    }
    std::fs::write(dir.join("paras.jsonl"), jsonl).unwrap();
    let spec = dir.join("ppl.toml");
    std::fs::write(
        &spec,
        "[[task]]\nname = \"paras_bpb\"\nkind = \"perplexity\"\ndata = \"paras.jsonl\"\n",
    )
    .unwrap();
    load_specs(&spec).unwrap().remove(0)
}

fn evaluate(model: &Model, tok: &Tokenizer, tasks: &[Task]) -> Value {
    let outs: Vec<TaskOutput> = tasks.iter().map(|t| run(model, tok, t, Some(20))).collect();
    results_json(tasks, &outs, "smollm2", Some(20))
}

#[test]
fn gate_fails_on_noised_weights_and_not_on_rerun() {
    let Some((model, tok)) = smollm2() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tasks = vec![
        task("bigbench_general_knowledge"),
        paragraphs_task(dir.path()),
    ];
    let baseline = evaluate(&model, &tok, &tasks);
    let cfg = GateConfig {
        alpha: 0.05,
        max_drop: vec![("acc".into(), 0.1)],
    };
    let rerun = compare(&baseline, &evaluate(&model, &tok, &tasks), &cfg).unwrap();
    assert!(
        !rerun.regressed(),
        "false alarm on a rerun:\n{}",
        rerun.table()
    );
    // Degrade: add N(0, 0.05²) noise to every weight matrix (norm gains untouched).
    for (name, var) in model.vars() {
        if name.ends_with("norm.weight") {
            continue;
        }
        let t = var.as_tensor();
        let noise = Tensor::randn(0f32, 0.05, t.shape(), t.device()).unwrap();
        var.set(&t.add(&noise.to_dtype(t.dtype()).unwrap()).unwrap())
            .unwrap();
    }
    let noised = compare(&baseline, &evaluate(&model, &tok, &tasks), &cfg).unwrap();
    eprintln!("{}", noised.table());
    assert!(
        noised.regressed(),
        "noised weights passed the gate:\n{}",
        noised.table()
    );
    let bpb = noised
        .comparisons
        .iter()
        .find(|c| c.metric == "bits_per_byte")
        .unwrap();
    assert!(
        bpb.regression.is_some() && bpb.new > bpb.base + 0.5,
        "{bpb:?}"
    );
}
