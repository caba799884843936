//! The GRPO recipe and `run_grpo`: model + prompts + rewards → the one training loop.
//!
//! ```toml
//! # cargo run --release -p smelt-cli -- grpo --config examples/recipes/tiny-grpo.toml
//! model = "runs/tiny/dpo/latest"
//! [data]
//! arithmetic = { task = { seed = 7, max_operand = 9 }, num_prompts = 256 }
//! [[rewards]]
//! kind = "math_answer"
//! [grpo]
//! num_generations = 4
//! [train]
//! max_steps = 20
//! ```
//! `[train]` starts from TRL's GRPO defaults (lr 1e-6, AdamW 0.9/0.999 without weight
//! decay, linear decay, clip 1.0) and overrides only the keys given.

use super::{Grpo, GrpoConfig, GrpoSource, SamplerGenerator};
use crate::recipes::trl_train_defaults;
use serde::{Deserialize, Serialize};
use smelt::checkpoint::{self, LoadOptions};
use smelt::tokenizer::{Message, Tokenizer};
use smelt::train::{TrainConfig, TrainSummary, Trainer};
use smelt::{Error, Result};
use smelt_rollouts::rewards::{FormatRegex, MathAnswer};
use smelt_rollouts::service::CyclingPrompts;
use smelt_rollouts::tasks::arithmetic::ArithmeticTask;
use smelt_rollouts::{Reward, SamplingParams, WeightedRewards};
use std::path::{Path, PathBuf};

/// A GRPO run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoRecipe {
    /// The policy to start from: HF folder, hub id or `.gguf`.
    pub model: String,
    /// Prompts.
    pub data: GrpoData,
    /// Reward functions with weights (default: `math_answer`).
    #[serde(default = "default_rewards")]
    pub rewards: Vec<RewardSpec>,
    /// GRPO settings (TRL names and defaults).
    #[serde(default)]
    pub grpo: GrpoConfig,
    /// Most sequences the sampler decodes at once (default 16).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Loop settings over TRL's GRPO defaults (see the module docs), merged key by key
    /// as SFT and DPO recipes do.
    #[serde(
        default = "grpo_train_defaults",
        deserialize_with = "grpo_train_over_defaults"
    )]
    pub train: TrainConfig,
}

/// Where prompts come from: JSONL/Parquet rows with a `prompt` column (a string, or a
/// list of chat messages rendered with the chat template) plus reward columns such as
/// `answer`, or the generated arithmetic task.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoData {
    /// Prompt files.
    pub train_files: Vec<PathBuf>,
    /// Generated arithmetic prompts.
    pub arithmetic: Option<ArithmeticPrompts>,
}

/// The generated arithmetic task as a prompt set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArithmeticPrompts {
    /// Task settings (seed, operand range, operations).
    #[serde(default)]
    pub task: ArithmeticTask,
    /// How many distinct prompts (default 256).
    #[serde(default = "default_num_prompts")]
    pub num_prompts: usize,
}

/// One reward function of the recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RewardSpec {
    /// 1 when the completion's final number equals the row's answer.
    MathAnswer {
        /// Weight in the total reward (default 1).
        #[serde(default = "one")]
        weight: f32,
        /// Column holding the reference answer (default `answer`).
        #[serde(default = "answer_key")]
        answer_key: String,
    },
    /// `reward` when the completion matches `pattern`, else 0.
    FormatRegex {
        /// A regular expression.
        pattern: String,
        /// Reward on a match (default 1).
        #[serde(default = "one")]
        reward: f32,
        /// Weight in the total reward (default 1).
        #[serde(default = "one")]
        weight: f32,
    },
}

fn default_rewards() -> Vec<RewardSpec> {
    vec![RewardSpec::MathAnswer {
        weight: 1.0,
        answer_key: answer_key(),
    }]
}
fn default_max_batch() -> usize {
    16
}
fn default_num_prompts() -> usize {
    256
}
fn one() -> f32 {
    1.0
}
fn answer_key() -> String {
    "answer".into()
}

/// TRL 1.16 / HF Trainer defaults for GRPO (lr 1e-6, output `runs/grpo`).
pub fn grpo_train_defaults() -> TrainConfig {
    let mut t = trl_train_defaults(1e-6, "runs/grpo");
    // Waiting for rollouts is generation time, not a data-loader stall.
    t.throughput.data_stall_fraction = 1.0;
    t
}

/// The user's `[train]` over [`grpo_train_defaults`].
fn grpo_train_over_defaults<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<TrainConfig, D::Error> {
    crate::recipes::over_defaults(d, grpo_train_defaults())
}

impl GrpoRecipe {
    /// Reads a recipe with `--set` overrides and validates it; errors name the file and key.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let recipe: GrpoRecipe = smelt::recipe::load_recipe(path, overrides)?;
        recipe.validate(path)?;
        Ok(recipe)
    }

    /// Cross-field checks.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        self.grpo.validate(self.train.grad_accumulation_steps)?;
        self.train
            .validate()
            .map_err(|e| Error::config(origin, format!("[train] {e}")))
    }
}

/// Runs GRPO as the recipe says; `origin` names the recipe in errors.
pub fn run_grpo(recipe: &GrpoRecipe, origin: &Path) -> Result<TrainSummary> {
    recipe.validate(origin)?;
    let train = recipe.train.clone();
    let opts = LoadOptions {
        require_tokenizer: true,
        ..Default::default()
    };
    let device = smelt::dist::device_for(&train.device, &smelt::dist::DistEnv::from_env()?)?;
    let loaded = checkpoint::load(&recipe.model, &device, &opts)?;
    let (model, tokenizer) = (loaded.model, loaded.tokenizer.expect("required"));
    let rows = prompt_rows(recipe, &tokenizer, origin)?;
    let cfg = recipe.grpo.clone();
    let per_batch =
        cfg.generation_batch_size(train.grad_accumulation_steps) / cfg.num_generations.max(1);
    // Data-parallel ranks sample distinct prompts and completions: seed + rank (rank 0 keeps
    // `seed`, so one process is unchanged).
    let rank_seed = smelt::dist::rank_seed(cfg.seed, smelt::dist::DistEnv::from_env()?.rank);
    let prompts = CyclingPrompts::new(rows, per_batch.max(1), rank_seed)?;
    let mut stop: Vec<u32> = model.config().eos_token_ids.clone();
    stop.extend(tokenizer.eos_token_id());
    stop.extend(tokenizer.token_to_id("<|im_end|>"));
    stop.sort_unstable();
    stop.dedup();
    let params = SamplingParams {
        temperature: cfg.temperature,
        top_k: cfg.top_k,
        top_p: cfg.top_p,
        max_new_tokens: cfg.max_completion_length,
        stop_token_ids: stop,
        ..Default::default()
    };
    let generator = SamplerGenerator::new(
        tokenizer.clone(),
        params,
        cfg.num_generations,
        recipe.max_batch,
        rewards(&recipe.rewards)?,
    );
    let mut source = GrpoSource::new(
        model.clone(),
        Box::new(generator),
        Box::new(prompts),
        cfg.clone(),
        train.grad_accumulation_steps,
    )?;
    let algorithm = Grpo::new(cfg, &model)?;
    Trainer::new(model, Some(tokenizer), algorithm, train)?.fit(&mut source)
}

fn rewards(specs: &[RewardSpec]) -> Result<WeightedRewards> {
    let mut out: Vec<(Box<dyn Reward>, f32)> = Vec::new();
    for s in specs {
        match s {
            RewardSpec::MathAnswer { weight, answer_key } => out.push((
                Box::new(MathAnswer {
                    answer_key: answer_key.clone(),
                    ..Default::default()
                }),
                *weight,
            )),
            RewardSpec::FormatRegex {
                pattern,
                reward,
                weight,
            } => out.push((Box::new(FormatRegex::new(pattern, *reward)?), *weight)),
        }
    }
    WeightedRewards::new(out)
}

/// Tokenized prompts with their rows, from files and/or the arithmetic task.
fn prompt_rows(
    recipe: &GrpoRecipe,
    tokenizer: &Tokenizer,
    origin: &Path,
) -> Result<Vec<(Vec<u32>, serde_json::Value)>> {
    let mut values: Vec<(String, serde_json::Value)> = Vec::new();
    for file in &recipe.data.train_files {
        for row in smelt::data::read_rows(file)? {
            let (location, map) = row?;
            values.push((location.to_string(), serde_json::Value::Object(map)));
        }
    }
    if let Some(a) = &recipe.data.arithmetic {
        for (i, v) in a.task.prompts(a.num_prompts)?.into_iter().enumerate() {
            values.push((format!("arithmetic row {i}"), v));
        }
    }
    if values.is_empty() {
        return Err(Error::config(
            origin,
            "`data`: no prompts (give `train_files` or `arithmetic`)",
        ));
    }
    values
        .into_iter()
        .map(|(location, row)| {
            let ids = match row.get("prompt") {
                Some(serde_json::Value::String(s)) => tokenizer.encode(s, false)?,
                Some(v @ serde_json::Value::Array(_)) => {
                    let messages: Vec<Message> =
                        serde_json::from_value(v.clone()).map_err(|e| {
                            Error::Invalid(format!(
                                "{location}: `prompt` is not a list of messages: {e}"
                            ))
                        })?;
                    tokenizer.encode(&tokenizer.apply_chat_template(&messages, true)?, false)?
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "{location}: missing column `prompt`"
                    )))
                }
            };
            Ok((ids, row))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(train: &str) -> Result<GrpoRecipe> {
        let text = format!(
            "model = \"m\"\n[data]\narithmetic = {{ num_prompts = 4 }}\n[train]\n{train}\n"
        );
        smelt::recipe::parse_recipe(&text, Path::new("grpo.toml"), &[])
    }

    #[test]
    fn train_keys_merge_over_grpo_defaults_and_a_schedule_replaces_whole() {
        let r = parse("max_steps = 3").unwrap();
        assert_eq!(r.train.max_steps, 3);
        assert_eq!(
            r.train.learning_rate, 1e-6,
            "TRL's GRPO learning rate is kept"
        );
        assert_eq!(r.train.optimizer.beta2, 0.999);
        assert_eq!(r.train.throughput.data_stall_fraction, 1.0);
        // the linear default's `min_lr_ratio` must not leak into another schedule kind
        let r = parse("schedule = { kind = \"constant\", warmup_steps = 2 }").unwrap();
        assert_eq!(
            r.train.schedule,
            smelt::optim::Schedule::Constant { warmup_steps: 2 }
        );
        let e = parse("max_stepz = 3").unwrap_err().to_string();
        assert!(e.contains("max_stepz") && e.contains("grpo.toml"), "{e}");
    }
}
