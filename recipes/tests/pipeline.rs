//! The embedded pipeline end to end on a shrunken recipe (the shipped
//! `examples/recipes/smollm3-tiny.toml` with `--set` overrides), and the errors a bad
//! recipe must raise before anything trains.

mod common;

use common::{base_overrides, example, small_corpus, IMPROVING, SHRUNKEN};
use smelt_recipes::{run_pipeline, PipelineRecipe};

/// Pretrain → SFT → DPO → GRPO, shrunken to about a minute, on held-out data: bits per
/// byte falls below the random initialisation's, arithmetic exact match rises through
/// SFT, preference accuracy rises through DPO, and GRPO raises its sampled training
/// reward without a significant exact-match regression (the gate's verdict); every stage
/// leaves `done.json`, a plot folder and a summary row; a rerun trains nothing.
#[test]
fn shrunken_pipeline_improves_every_stage_and_rerun_skips_finished_stages() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let corpus = small_corpus(dir.path(), 12);
    let mut set = base_overrides(dir.path(), &corpus);
    set.extend(SHRUNKEN.map(String::from));
    set.extend(IMPROVING.map(String::from));
    let recipe = PipelineRecipe::load(&example(), &set).unwrap();
    let summary = run_pipeline(&recipe).unwrap();
    eprintln!(
        "{}\npipeline: {:.0} s",
        summary.table(),
        started.elapsed().as_secs_f64()
    );
    let stages: Vec<&str> = summary.rows.iter().map(|r| r.stage.as_str()).collect();
    assert_eq!(stages, ["init", "pretrain", "sft", "dpo", "grpo"]);

    let bpb = |s| summary.value(s, "bpb/bits_per_byte").unwrap();
    let em = |s| summary.value(s, "arithmetic/exact_match").unwrap();
    let pref = |s| summary.value(s, "preference/acc").unwrap();
    assert!(
        bpb("pretrain") < bpb("init") - 0.5,
        "bpb {} -> {}",
        bpb("init"),
        bpb("pretrain")
    );
    assert!(
        em("sft") > em("pretrain"),
        "SFT exact match {} -> {}",
        em("pretrain"),
        em("sft")
    );
    assert!(
        pref("dpo") > pref("sft"),
        "DPO preference accuracy {} -> {}",
        pref("sft"),
        pref("dpo")
    );
    let rewards = grpo_rewards(&recipe.run_dir.join("grpo/metrics.jsonl"));
    let third = rewards.len() / 3;
    let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
    let (first, last) = (
        mean(&rewards[..third]),
        mean(&rewards[rewards.len() - third..]),
    );
    assert!(
        last > first,
        "GRPO reward {first:.3} -> {last:.3}: {rewards:?}"
    );
    let sampled = |s| summary.value(s, "arithmetic_sampled/avg@4").unwrap();
    assert!(
        sampled("grpo") > sampled("dpo"),
        "GRPO sampled exact match {} -> {}",
        sampled("dpo"),
        sampled("grpo")
    );
    let grpo_gate = &summary.rows.last().unwrap().gate;
    let gated = grpo_gate.iter().find(|g| g.gated).unwrap();
    assert!(
        gated.metric == "arithmetic_sampled/avg@4" && gated.regression.is_none(),
        "GRPO gated on {}: {:?}",
        gated.metric,
        gated.regression
    );
    for s in ["pretrain", "sft", "dpo", "grpo"] {
        let stage = recipe.run_dir.join(s);
        assert!(stage.join("done.json").is_file(), "{s}: no done.json");
        assert!(
            stage.join("latest/model.safetensors").is_file(),
            "{s}: no checkpoint"
        );
        assert!(stage.join("plots").is_dir(), "{s}: no plots");
        let row = summary.rows.iter().find(|r| r.stage == s).unwrap();
        assert_eq!(row.gate.len(), 4, "{s}: every headline metric is compared");
        assert_eq!(
            row.gate.iter().filter(|g| g.gated).count(),
            1,
            "{s}: one gated metric"
        );
    }
    let md = std::fs::read_to_string(recipe.run_dir.join("summary.md")).unwrap();
    assert!(
        md.contains("|pretrain|60|") && md.contains("bpb/bits_per_byte"),
        "{md}"
    );

    // A rerun of the same command skips every finished stage: same rows, no new checkpoints.
    let checkpoints = |s: &str| std::fs::read_dir(recipe.run_dir.join(s)).unwrap().count();
    let before: Vec<usize> = ["pretrain", "sft", "dpo", "grpo"].map(checkpoints).to_vec();
    let again = run_pipeline(&PipelineRecipe::load(&example(), &set).unwrap()).unwrap();
    assert_eq!(again.rows.len(), summary.rows.len());
    for (a, b) in again.rows.iter().zip(&summary.rows) {
        assert_eq!(
            (&a.stage, a.steps, a.metrics.len()),
            (&b.stage, b.steps, b.metrics.len())
        );
        for (k, v) in &b.metrics {
            assert!(
                (a.metrics[k] - v).abs() < 1e-9,
                "{}: {k} {} vs {v}",
                a.stage,
                a.metrics[k]
            );
        }
    }
    assert_eq!(
        ["pretrain", "sft", "dpo", "grpo"].map(checkpoints).to_vec(),
        before
    );
    assert!(
        again.wall_s < 30.0,
        "a rerun should skip every stage: {} s",
        again.wall_s
    );

    // A pipeline that starts after pretraining evaluates its input model as `base`.
    let sft = recipe.run_dir.join("sft/latest");
    set.push(format!(
        "run_dir=\"{}\"",
        dir.path().join("dpo-only").display()
    ));
    set.push("stages=[\"dpo\"]".into());
    set.push(format!("dpo.model=\"{}\"", sft.display()));
    let dpo_only = run_pipeline(&PipelineRecipe::load(&example(), &set).unwrap()).unwrap();
    let stages: Vec<&str> = dpo_only.rows.iter().map(|r| r.stage.as_str()).collect();
    assert_eq!(stages, ["base", "dpo"]);
    for (k, v) in &summary.rows[2].metrics {
        assert!(
            (dpo_only.rows[0].metrics[k] - v).abs() < 1e-6,
            "base = the sft checkpoint: {k}"
        );
    }
}

/// A first stage other than pretraining needs an explicit `model`.
#[test]
fn first_post_training_stage_needs_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = small_corpus(dir.path(), 1);
    let mut set = base_overrides(dir.path(), &corpus);
    set.push("stages=[\"sft\", \"dpo\"]".into());
    let e = PipelineRecipe::load(&example(), &set)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[sft] `model` is required"), "{e}");
}

/// An unknown stage name is an error that names it, before anything is written.
#[test]
fn unknown_stage_is_an_error_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = small_corpus(dir.path(), 1);
    let mut set = base_overrides(dir.path(), &corpus);
    set.push("stages=[\"pretrain\", \"distill\"]".into());
    let e = PipelineRecipe::load(&example(), &set)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("distill") && e.contains("smollm3-tiny.toml"),
        "{e}"
    );
    assert!(!dir.path().join("run").exists());
}

/// A recipe naming a missing file fails at load, naming the key and the file.
#[test]
fn missing_file_is_an_error_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("no-such-corpus.jsonl");
    let e = PipelineRecipe::load(&example(), &base_overrides(dir.path(), &corpus))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pretrain.corpus.inputs[0].path") && e.contains("no-such-corpus.jsonl"),
        "{e}"
    );
    assert!(!dir.path().join("run").exists());
}

/// A typo inside a later stage's section fails at load (not after pretraining), naming the key.
#[test]
fn typo_in_a_stage_section_is_an_error_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = small_corpus(dir.path(), 1);
    let mut set = base_overrides(dir.path(), &corpus);
    set.push("grpo.grpo.num_generationz=4".into());
    let e = PipelineRecipe::load(&example(), &set)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[grpo]") && e.contains("num_generationz"), "{e}");
    let mut set = base_overrides(dir.path(), &corpus);
    set.push("stages=[\"sft\", \"pretrain\"]".into());
    let e = PipelineRecipe::load(&example(), &set)
        .unwrap_err()
        .to_string();
    assert!(e.contains("order"), "{e}");
}

/// The sampled reward of every GRPO step in a stage's `metrics.jsonl`.
fn grpo_rewards(path: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["reward"].as_f64())
        .collect()
}
