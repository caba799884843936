//! Every shipped recipe (`examples/recipes/*.toml`) parses and plans without running:
//! its first line is the command that runs it, and its plan (model config, parameter
//! count, stages, data sources named but not read) builds. A recipe that does not parse
//! fails the test naming the file.

mod common;

use common::repo;
use smelt_recipes::{RecipeKind, RecipePlan, Stage};
use std::path::{Path, PathBuf};

/// The shipped recipes, sorted; the recipes' relative paths are from the repository
/// root, so every test here runs there.
fn recipes() -> Vec<PathBuf> {
    std::env::set_current_dir(repo()).unwrap();
    let mut found: Vec<PathBuf> = std::fs::read_dir("examples/recipes")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    found.sort();
    found
}

/// The plan of one recipe file; a failure names the file.
fn plan_of(path: &Path) -> RecipePlan {
    let kind = RecipeKind::of_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    RecipePlan::load(path, kind, &[])
        .unwrap_or_else(|e| panic!("{} (smelt {}): {e}", path.display(), kind.command()))
}

/// Every recipe names itself in its command, plans, and has a sane plan.
#[test]
fn every_shipped_recipe_parses_and_plans_without_running() {
    let all = recipes();
    assert!(
        all.len() >= 8,
        "expected the shipped recipes, found {all:?}"
    );
    let mut kinds = std::collections::BTreeSet::new();
    for path in &all {
        let text = std::fs::read_to_string(path).unwrap();
        let first = text.lines().next().unwrap();
        assert!(
            first.contains(&format!("--config {}", path.display())),
            "{}: the first line should run this file, found {first:?}",
            path.display()
        );
        let plan = plan_of(path);
        kinds.insert(plan.kind.command());
        assert!(!plan.stages.is_empty(), "{}: no stages", path.display());
        for st in &plan.stages {
            assert!(
                st.max_steps > 0,
                "{}: {} has no steps",
                path.display(),
                st.stage.name()
            );
            assert!(
                st.learning_rate > 0.0,
                "{}: no learning rate",
                path.display()
            );
            assert!(
                !st.data.is_empty(),
                "{}: {} names no data",
                path.display(),
                st.stage.name()
            );
        }
        let text = plan.render();
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
    for k in RecipeKind::ALL {
        assert!(
            kinds.contains(k.command()),
            "no shipped recipe for smelt {}",
            k.command()
        );
    }
}

/// The SmolLM3-3B-shaped pretraining recipe resolves to SmolLM3-3B's architecture
/// (≈ 3.08 B parameters) and SmolLM3's optimisation, without its tokenizer or shards.
#[test]
fn smollm3_3b_recipe_has_smollm3_shape() {
    recipes();
    let plan = plan_of(Path::new("examples/recipes/smollm3-3b-pretrain.toml"));
    assert_eq!(plan.kind, RecipeKind::Pretrain);
    let st = &plan.stages[0];
    let c = st
        .model
        .config
        .as_ref()
        .expect("config known from the recipe alone");
    assert_eq!(c.model_type.as_str(), "smollm3");
    assert_eq!(
        (c.num_hidden_layers, c.hidden_size, c.intermediate_size),
        (36, 2048, 11008)
    );
    assert_eq!((c.num_attention_heads, c.num_key_value_heads), (16, 4));
    assert_eq!(c.vocab_size, 128256);
    let nope: Vec<usize> = (0..c.num_hidden_layers)
        .filter(|&i| !c.use_rope[i])
        .collect();
    assert_eq!(
        nope,
        (3..36).step_by(4).collect::<Vec<_>>(),
        "NoPE on every 4th layer"
    );
    let params = st.model.parameters().unwrap() as f64;
    assert!((3.0e9..3.15e9).contains(&params), "{params} parameters");
    assert!(st.batch.contains("2359296 tokens per step"), "{}", st.batch);
    assert!(
        st.settings.contains("Wsd") && st.settings.contains("β 0.9/0.95"),
        "{}",
        st.settings
    );
    assert!(
        st.settings.contains("weight decay 0.1 (not on embeddings)"),
        "{}",
        st.settings
    );
}

/// The embedded pipeline plans four stages on one ~1 M-parameter model, each starting
/// from the previous stage's checkpoint.
#[test]
fn embedded_pipeline_plans_four_stages_on_one_tiny_model() {
    recipes();
    let plan = plan_of(Path::new("examples/recipes/smollm3-tiny.toml"));
    assert_eq!(plan.kind, RecipeKind::Pipeline);
    let stages: Vec<Stage> = plan.stages.iter().map(|s| s.stage).collect();
    assert_eq!(
        stages,
        [Stage::Pretrain, Stage::Sft, Stage::Dpo, Stage::Grpo]
    );
    let params: Vec<usize> = plan
        .stages
        .iter()
        .map(|s| s.model.parameters().expect("known through the pipeline"))
        .collect();
    assert!((1_000_000..5_000_000).contains(&params[0]), "{params:?}");
    assert!(params.iter().all(|&p| p == params[0]), "{params:?}");
    for pair in plan.stages.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        assert_eq!(
            Path::new(&next.model.source),
            prev.output_dir.join("latest"),
            "{} starts from {}",
            next.stage.name(),
            prev.stage.name()
        );
    }
}

/// A recipe whose first line is not its command, or that does not parse, is an error
/// naming the file.
#[test]
fn a_broken_recipe_is_an_error_naming_the_file() {
    recipes();
    let dir = tempfile::tempdir().unwrap();
    let no_command = dir.path().join("no-command.toml");
    std::fs::write(&no_command, "model = \"x\"\n").unwrap();
    let e = RecipeKind::of_file(&no_command).unwrap_err().to_string();
    assert!(
        e.contains("no-command.toml") && e.contains("first line"),
        "{e}"
    );

    let typo = dir.path().join("typo.toml");
    let text = std::fs::read_to_string("examples/recipes/smollm2-135m-sft.toml").unwrap();
    std::fs::write(&typo, text.replace("max_steps", "max_stepz")).unwrap();
    let kind = RecipeKind::of_file(&typo).unwrap();
    assert_eq!(kind, RecipeKind::Sft);
    let e = RecipePlan::load(&typo, kind, &[]).unwrap_err().to_string();
    assert!(e.contains("typo.toml") && e.contains("max_stepz"), "{e}");
}

/// The command on a recipe's first line names its kind.
#[test]
fn recipe_kind_is_read_from_the_command_line() {
    let k = |l: &str| RecipeKind::from_command_line(l);
    assert_eq!(
        k("# cargo run --release -p smelt-cli -- dpo --config x.toml"),
        Some(RecipeKind::Dpo)
    );
    assert_eq!(
        k("# cargo run --release -p smelt-recipes --example smollm3_pipeline -- --config x.toml"),
        Some(RecipeKind::Pipeline)
    );
    assert_eq!(k("# smelt grpo --config x.toml"), Some(RecipeKind::Grpo));
    assert_eq!(
        k("# cargo run --release -p smelt-cli -- distill --config x.toml"),
        None
    );
    assert_eq!(k("run_dir = \"x\""), None);
}
