//! The pipeline recipe (one TOML file) and its plan: the four stage recipes, resolved.
//!
//! ```toml
//! run_dir = "runs/smollm3-tiny"
//! stages = ["pretrain", "sft", "dpo", "grpo"]
//! [arithmetic]                 # the generated task every post-training stage uses
//! task = { max_operand = 9 }
//! [evals]                      # held-out evals after every stage
//! bpb_file = "assets/corpus/shakespeare-valid.jsonl"
//! [pretrain]                   # a PretrainRecipe without `run_dir`
//! [sft]                        # an SftRecipe without `model` (and `data`, unless given)
//! [dpo]                        # a DpoRecipe, likewise
//! [grpo]                       # a GrpoRecipe, likewise
//! ```
//!
//! Key decision (ripgrep's lowargs/hiargs split): the stage sections are kept as raw
//! TOML tables, then [`PipelineRecipe::plan`] fills in the wiring — each stage writes
//! to `<run_dir>/<stage>`, starts from the previous stage's `latest` checkpoint and
//! trains on the generated files — and deserializes them into the stages' own recipe
//! types. Every stage is planned, and every file the recipe names is checked, before
//! any stage trains: a typo in `[grpo]` fails in a second, not after pretraining, and
//! so does a stage whose model cannot use the previous stage's tokenizer
//! ([`super::compat`] states the rule).

use super::compat::{check_same, pretrain_tokenizer, ModelFact, TokenizerFact};
use serde::{Deserialize, Serialize};
use smelt::{Error, Result};
use smelt_algorithms::grpo::GrpoRecipe;
use smelt_algorithms::recipes::{DpoRecipe, SftRecipe};
use smelt_pretrain::recipe::PretrainRecipe;
use smelt_rollouts::tasks::arithmetic::ArithmeticTask;
use std::path::{Path, PathBuf};

/// One stage of the pipeline, in the order they may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Next-token pretraining (`smelt_pretrain::run::run_pretrain`).
    Pretrain,
    /// Supervised fine-tuning on prompt–completion pairs (`run_sft`).
    Sft,
    /// DPO on correct-vs-wrong answer pairs (`run_dpo`).
    Dpo,
    /// GRPO on arithmetic prompts with the exact-answer reward (`run_grpo`).
    Grpo,
}

impl Stage {
    /// The stage's name, which is also its folder under `run_dir`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Pretrain => "pretrain",
            Stage::Sft => "sft",
            Stage::Dpo => "dpo",
            Stage::Grpo => "grpo",
        }
    }
}

/// A whole pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineRecipe {
    /// Everything the pipeline writes: `data/`, one folder per stage, `summary.{md,json}`.
    pub run_dir: PathBuf,
    /// The stages to run, in order (default all four).
    #[serde(default = "all_stages")]
    pub stages: Vec<Stage>,
    /// The generated arithmetic data.
    #[serde(default)]
    pub arithmetic: ArithmeticData,
    /// The evals run after every stage and how they gate.
    #[serde(default)]
    pub evals: EvalSettings,
    /// A `PretrainRecipe` without `run_dir`.
    #[serde(default)]
    pub pretrain: toml::Table,
    /// An `SftRecipe`; `model` defaults to the previous stage's checkpoint, `data.train_files` to the generated SFT file.
    #[serde(default)]
    pub sft: toml::Table,
    /// A `DpoRecipe`; `model` and `data.train_files` default as for `[sft]`.
    #[serde(default)]
    pub dpo: toml::Table,
    /// A `GrpoRecipe`; `model` and `data.train_files` default as for `[sft]`.
    #[serde(default)]
    pub grpo: toml::Table,
    /// The file the recipe was read from (names it in errors; set by [`PipelineRecipe::load`]).
    #[serde(skip)]
    pub origin: PathBuf,
}

fn all_stages() -> Vec<Stage> {
    vec![Stage::Pretrain, Stage::Sft, Stage::Dpo, Stage::Grpo]
}

/// The generated arithmetic problems, in the plain format every stage and eval shares:
/// prompt `Question: What is 3 plus 4?\nAnswer:`, completion ` 7`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArithmeticData {
    /// The training problems (`seed` is the training seed; default operands 0..=9, one operation).
    pub task: ArithmeticTask,
    /// Seed of the held-out eval problems (default 1_000_003, distinct from `task.seed`).
    pub eval_seed: u64,
    /// Problems written as plain text into the pretraining corpus (default 2000; 0 = none).
    pub pretrain_rows: usize,
    /// SFT prompt–completion rows (default 2000).
    pub sft_rows: usize,
    /// DPO correct-vs-wrong pairs (default 1000).
    pub dpo_rows: usize,
    /// GRPO prompts with answers (default 256).
    pub grpo_rows: usize,
    /// Held-out problems for the exact-match and preference evals (default 200 each).
    pub eval_rows: usize,
}

impl Default for ArithmeticData {
    fn default() -> Self {
        ArithmeticData {
            task: ArithmeticTask {
                seed: 0,
                max_operand: 9,
                num_operations: 1,
            },
            eval_seed: 1_000_003,
            pretrain_rows: 2000,
            sft_rows: 2000,
            dpo_rows: 1000,
            grpo_rows: 256,
            eval_rows: 200,
        }
    }
}

/// What happens when a gated metric significantly worsens after a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMode {
    /// The pipeline stops with an error; the stage is not marked done (default).
    #[default]
    Fail,
    /// The regression is logged and written to the summary; the pipeline goes on.
    Warn,
}

/// Evals after every stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSettings {
    /// Held-out English documents for bits per byte (default the bundled Shakespeare split).
    pub bpb_file: PathBuf,
    /// Documents of `bpb_file` scored (default all).
    pub bpb_docs: Option<usize>,
    /// Window of the bits-per-byte eval in tokens (default 256).
    pub bpb_max_length: usize,
    /// Sampling temperature of `arithmetic_sampled` (default 0.5: set it to
    /// `[grpo.grpo] temperature`, the distribution GRPO improves).
    pub sample_temperature: f64,
    /// One-sided significance level of the gate (default 0.05, `smelt eval --gate`).
    pub alpha: f64,
    /// Fail or warn on a gated regression (default `fail`).
    pub gate: GateMode,
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            bpb_file: PathBuf::from("assets/corpus/shakespeare-valid.jsonl"),
            bpb_docs: None,
            bpb_max_length: 256,
            sample_temperature: 0.5,
            alpha: 0.05,
            gate: GateMode::Fail,
        }
    }
}

/// A stage with its resolved recipe.
#[derive(Debug, Clone)]
pub enum StagePlan {
    /// Pretraining.
    Pretrain(Box<PretrainRecipe>),
    /// SFT.
    Sft(Box<SftRecipe>),
    /// DPO.
    Dpo(Box<DpoRecipe>),
    /// GRPO.
    Grpo(Box<GrpoRecipe>),
}

impl StagePlan {
    /// The checkpoint a post-training stage starts from (`None` for pretraining).
    pub fn input_model(&self) -> Option<&str> {
        match self {
            StagePlan::Pretrain(_) => None,
            StagePlan::Sft(r) => Some(&r.model),
            StagePlan::Dpo(r) => Some(&r.model),
            StagePlan::Grpo(r) => Some(&r.model),
        }
    }
}

impl PipelineRecipe {
    /// Reads a recipe with `--set` overrides (`pretrain.train.max_steps=20`) and checks
    /// it by building its plan; errors name the file and the key.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let mut recipe: PipelineRecipe = smelt::recipe::load_recipe(path, overrides)?;
        recipe.origin = path.to_path_buf();
        recipe.plan()?;
        Ok(recipe)
    }

    /// Where stage `s` writes its checkpoints, metrics, plots, evals and `done.json`.
    pub fn stage_dir(&self, s: Stage) -> PathBuf {
        self.run_dir.join(s.name())
    }

    /// The folder of generated data files.
    pub fn data_dir(&self) -> PathBuf {
        self.run_dir.join("data")
    }

    /// Every stage's recipe, wired together; checks the stage list and every file named.
    pub fn plan(&self) -> Result<Vec<(Stage, StagePlan)>> {
        let origin = self.origin.as_path();
        let bad = |m: String| Error::config(origin, m);
        if self.stages.is_empty() {
            return Err(bad("`stages` is empty: nothing to run".into()));
        }
        for (i, s) in self.stages.iter().enumerate() {
            if self.stages[..i].contains(s) {
                return Err(bad(format!("`stages`: `{}` is listed twice", s.name())));
            }
            if i > 0 && self.stages[i - 1] > *s {
                return Err(bad(format!(
                    "`stages`: `{}` comes after `{}`; the order is pretrain, sft, dpo, grpo",
                    s.name(),
                    self.stages[i - 1].name()
                )));
            }
        }
        self.arithmetic
            .task
            .validate()
            .map_err(|e| bad(format!("[arithmetic.task] {e}")))?;
        if self.arithmetic.eval_seed == self.arithmetic.task.seed {
            return Err(bad(
                "`arithmetic.eval_seed` equals `arithmetic.task.seed`: the evals would not be held out".into(),
            ));
        }
        check_file(origin, "evals.bpb_file", &self.evals.bpb_file)?;
        let t = self.evals.sample_temperature;
        if !(t.is_finite() && t > 0.0) {
            return Err(bad(format!(
                "`evals.sample_temperature` must be > 0, got {t}"
            )));
        }
        let mut plans = Vec::new();
        let mut previous: Option<Stage> = None;
        // The tokenizer the previous stage writes (see `compat` for the rule).
        let mut produced = TokenizerFact::Unknown;
        for &s in &self.stages {
            let dir = self.stage_dir(s);
            let plan = match s {
                Stage::Pretrain => {
                    let mut t = self.pretrain.clone();
                    t.insert("run_dir".into(), path_value(&dir));
                    if self.arithmetic.pretrain_rows > 0 {
                        let corpus = table_at(&mut t, "corpus", origin)?;
                        let inputs = corpus
                            .entry("inputs")
                            .or_insert_with(|| toml::Value::Array(vec![]));
                        let toml::Value::Array(inputs) = inputs else {
                            return Err(bad("`pretrain.corpus.inputs` is not a list".into()));
                        };
                        let mut spec = toml::Table::new();
                        spec.insert(
                            "path".into(),
                            path_value(&self.data_dir().join("arithmetic-text.jsonl")),
                        );
                        inputs.push(toml::Value::Table(spec));
                    }
                    check_paths(
                        origin,
                        "pretrain",
                        &toml::Value::Table(self.pretrain.clone()),
                    )?;
                    let mut r: PretrainRecipe = from_table(t, origin, "pretrain")?;
                    r.resolve(origin)?;
                    produced = pretrain_tokenizer(&r, origin)?;
                    StagePlan::Pretrain(Box::new(r))
                }
                Stage::Sft | Stage::Dpo | Stage::Grpo => {
                    let (user, file) = match s {
                        Stage::Sft => (&self.sft, "sft.jsonl"),
                        Stage::Dpo => (&self.dpo, "dpo.jsonl"),
                        _ => (&self.grpo, "grpo.jsonl"),
                    };
                    let mut t = user.clone();
                    if !t.contains_key("model") {
                        let Some(p) = previous else {
                            return Err(bad(format!(
                                "[{}] `model` is required: `{}` is the first stage, so no previous checkpoint exists",
                                s.name(),
                                s.name()
                            )));
                        };
                        t.insert(
                            "model".into(),
                            path_value(&self.stage_dir(p).join("latest")),
                        );
                    }
                    check_paths(origin, s.name(), &toml::Value::Table(user.clone()))?;
                    let data = table_at(&mut t, "data", origin)?;
                    data.entry("train_files").or_insert_with(|| {
                        toml::Value::Array(vec![path_value(&self.data_dir().join(file))])
                    });
                    let train = table_at(&mut t, "train", origin)?;
                    train.insert("output_dir".into(), path_value(&dir));
                    if let Some(toml::Value::String(model)) = user.get("model") {
                        let key = format!("{}.model", s.name());
                        let m = ModelFact::read(model, origin, &key, true)?;
                        if let Some(p) = previous {
                            let from = format!("`{}`, the previous stage", p.name());
                            check_same(&produced, &m.tokenizer, &from, origin, &key, model)?;
                        }
                        produced = m.tokenizer;
                    }
                    if let Some(toml::Value::String(reference)) = user.get("ref_model") {
                        let key = format!("{}.ref_model", s.name());
                        let m = ModelFact::read(reference, origin, &key, false)?;
                        let from = format!("the policy `{}.model`", s.name());
                        check_same(&produced, &m.tokenizer, &from, origin, &key, reference)?;
                        m.check_fits(&produced, origin, &key, reference)?;
                    }
                    match s {
                        Stage::Sft => {
                            let r: SftRecipe = from_table(t, origin, "sft")?;
                            r.validate(origin)?;
                            StagePlan::Sft(Box::new(r))
                        }
                        Stage::Dpo => {
                            let r: DpoRecipe = from_table(t, origin, "dpo")?;
                            r.validate(origin)?;
                            StagePlan::Dpo(Box::new(r))
                        }
                        _ => {
                            let r: GrpoRecipe = from_table(t, origin, "grpo")?;
                            r.validate(origin)?;
                            StagePlan::Grpo(Box::new(r))
                        }
                    }
                }
            };
            plans.push((s, plan));
            previous = Some(s);
        }
        Ok(plans)
    }
}

/// `path` as a TOML string.
fn path_value(path: &Path) -> toml::Value {
    toml::Value::String(path.to_string_lossy().into_owned())
}

/// The sub-table `key` of `t`, created when absent.
fn table_at<'a>(t: &'a mut toml::Table, key: &str, origin: &Path) -> Result<&'a mut toml::Table> {
    t.entry(key)
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .ok_or_else(|| Error::config(origin, format!("`{key}` is not a table")))
}

/// Deserializes a stage table; errors are prefixed with the stage's section.
fn from_table<T: serde::de::DeserializeOwned>(
    t: toml::Table,
    origin: &Path,
    section: &str,
) -> Result<T> {
    let text =
        toml::to_string(&t).map_err(|e| Error::config(origin, format!("[{section}] {e}")))?;
    smelt::recipe::parse_recipe(&text, origin, &[]).map_err(|e| match e {
        Error::Config { path, message } => Error::Config {
            path,
            message: format!("[{section}] {message}"),
        },
        other => other,
    })
}

/// Checks that a file the recipe names exists; the error names the key.
fn check_file(origin: &Path, key: &str, path: &Path) -> Result<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(Error::config(
            origin,
            format!("`{key}`: {} does not exist", path.display()),
        ))
    }
}

/// Checks every file named under the data-carrying keys of a stage table
/// (`path`, `paths`, `train_files`, `ref_model`), naming the dotted key on a miss.
fn check_paths(origin: &Path, key: &str, v: &toml::Value) -> Result<()> {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = format!("{key}.{k}");
                match (k.as_str(), v) {
                    ("path", toml::Value::String(p)) => check_file(origin, &key, Path::new(p))?,
                    ("paths" | "train_files", toml::Value::Array(a)) => {
                        for (i, p) in a.iter().enumerate() {
                            if let toml::Value::String(p) = p {
                                check_file(origin, &format!("{key}[{i}]"), Path::new(p))?;
                            }
                        }
                    }
                    // `tokenizer.path` is "used when it exists"; models may be hub ids.
                    ("tokenizer" | "model" | "ref_model", _) => {}
                    _ => check_paths(origin, &key, v)?,
                }
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                check_paths(origin, &format!("{key}[{i}]"), v)?;
            }
        }
        _ => {}
    }
    Ok(())
}
