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
use serde::{Deserialize, Serialize};
use smelt::checkpoint::{self, LoadOptions};
use smelt::optim::{AdamWConfig, Schedule};
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
    /// Loop settings over TRL's GRPO defaults (see the module docs).
    #[serde(default)]
    pub train: toml::Table,
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

/// TRL 1.16 / HF Trainer defaults for GRPO.
pub fn grpo_train_defaults() -> TrainConfig {
    let mut t = TrainConfig {
        learning_rate: 1e-6,
        schedule: Schedule::Linear {
            warmup_steps: 0,
            min_lr_ratio: 0.0,
        },
        optimizer: AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            ..Default::default()
        },
        max_grad_norm: 1.0,
        ..Default::default()
    };
    // Waiting for rollouts is generation time, not a data-loader stall.
    t.throughput.data_stall_fraction = 1.0;
    t
}

impl GrpoRecipe {
    /// Reads a recipe with `--set` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        smelt::recipe::load_recipe(path, overrides)
    }

    /// The loop settings: TRL's GRPO defaults overlaid with `[train]`.
    pub fn train_config(&self, origin: &Path) -> Result<TrainConfig> {
        overlay_train(grpo_train_defaults(), &self.train, origin)
    }
}

/// `defaults` with the keys of `table` replaced; unknown keys are errors naming them.
pub fn overlay_train(
    defaults: TrainConfig,
    table: &toml::Table,
    origin: &Path,
) -> Result<TrainConfig> {
    let mut base = toml::Table::try_from(&defaults).map_err(|e| Error::Invalid(e.to_string()))?;
    merge(&mut base, table);
    let text = toml::to_string(&toml::Table::from_iter([(
        "train".to_string(),
        toml::Value::Table(base),
    )]))
    .map_err(|e| Error::Invalid(e.to_string()))?;
    #[derive(Deserialize)]
    struct Wrap {
        train: TrainConfig,
    }
    let wrap: Wrap = smelt::recipe::parse_recipe(&text, origin, &[])?;
    Ok(wrap.train)
}

fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Runs GRPO as the recipe says; `origin` names the recipe in errors.
pub fn run_grpo(recipe: &GrpoRecipe, origin: &Path) -> Result<TrainSummary> {
    let train = recipe.train_config(origin)?;
    let opts = LoadOptions {
        require_tokenizer: true,
        ..Default::default()
    };
    let loaded = checkpoint::load(&recipe.model, &candle_core::Device::Cpu, &opts)?;
    let (model, tokenizer) = (loaded.model, loaded.tokenizer.expect("required"));
    let rows = prompt_rows(recipe, &tokenizer, origin)?;
    let cfg = recipe.grpo.clone();
    let per_batch =
        cfg.generation_batch_size(train.grad_accumulation_steps) / cfg.num_generations.max(1);
    let prompts = CyclingPrompts::new(rows, per_batch.max(1), cfg.seed)?;
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
