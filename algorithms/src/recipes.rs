//! The SFT and DPO recipes (one TOML file each) and the runs that carry them out.
//!
//! ```toml
//! model = "HuggingFaceTB/SmolLM2-135M-Instruct"   # HF folder, hub id or .gguf
//! [data]
//! train_files = ["data/chats.jsonl"]
//! [data.options]                                  # smelt::data::RecordOptions
//! columns = { conversation = "messages" }
//! [sft]                                           # SftConfig (TRL SFTConfig names)
//! max_length = 1024
//! [train]                                         # smelt::train::TrainConfig
//! max_steps = 1000
//! eval_every = 100                                # period of the [eval] tasks
//! [eval]                                          # optional: tasks run during training
//! tasks = ["arithmetic"]                          # as `smelt eval --tasks`
//! limit = 50                                      # first N docs of each task
//! ```
//!
//! Key decision: the `[train]` table of a post-training recipe starts from **TRL's**
//! defaults, not the loop's pretraining ones — AdamW β (0.9, 0.999), ε 1e-8, no weight
//! decay, a linear decay to 0 without warmup, clipping at 1.0, and learning rate 2e-5
//! (SFT) or 1e-6 (DPO). The user's keys are merged over those defaults key by key (a
//! `[train]` that only sets `max_steps` keeps TRL's learning rate), and a `schedule` table
//! replaces the default schedule whole. Every table is `deny_unknown_fields`, so a typo is
//! an error naming the key with the nearest valid one.

use crate::dpo::{Dpo, DpoConfig, PreferenceSource, Reference, DPO_LEARNING_RATE};
use crate::sft::{Sft, SftBatches, SftConfig};
use candle_core::Device;
use serde::{Deserialize, Deserializer, Serialize};
use smelt::checkpoint::{self, LoadOptions};
use smelt::data::{
    encode_preference, load_sft_examples, read_records, PreferenceExample, RecordOptions,
    SftExample,
};
use smelt::optim::{AdamWConfig, Schedule};
use smelt::tokenizer::Tokenizer;
use smelt::train::{TrainConfig, TrainSummary, Trainer};
use smelt::{Error, Model, Result};
use std::path::{Path, PathBuf};

/// TRL's default SFT learning rate (`SFTConfig.learning_rate`, TRL 1.16).
pub const SFT_LEARNING_RATE: f64 = 2e-5;

/// The loop settings HF Trainer / TRL use when a recipe does not say otherwise:
/// AdamW β (0.9, 0.999), ε 1e-8, weight decay 0, linear decay to 0 with no warmup,
/// gradient clipping at 1.0; `learning_rate` and `output_dir` as given.
pub fn trl_train_defaults(learning_rate: f64, output_dir: &str) -> TrainConfig {
    TrainConfig {
        output_dir: PathBuf::from(output_dir),
        learning_rate,
        schedule: Schedule::Linear {
            warmup_steps: 0,
            min_lr_ratio: 0.0,
        },
        optimizer: AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
        max_grad_norm: 1.0,
        ..TrainConfig::default()
    }
}

/// Training files and how their rows become records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftData {
    /// JSONL or Parquet files, read in order (required).
    pub train_files: Vec<PathBuf>,
    /// Format and column renames (default: format detected per row, TRL column names).
    pub options: RecordOptions,
}

/// A supervised fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftRecipe {
    /// The model to fine-tune: an HF folder, a hub id or a `.gguf` file (its tokenizer comes with it).
    pub model: String,
    /// The training data.
    pub data: SftData,
    /// SFT settings (TRL `SFTConfig` names and defaults).
    #[serde(default)]
    pub sft: SftConfig,
    /// The loop's settings, over TRL's defaults (learning rate 2e-5; output `runs/sft`).
    #[serde(default = "sft_train", deserialize_with = "sft_train_over_defaults")]
    pub train: TrainConfig,
    /// Eval tasks run every `train.eval_every` steps and at the end (none by default).
    #[serde(default)]
    pub eval: Option<EvalSection>,
}

/// The `[eval]` table: tasks the loop runs every `train.eval_every` steps (and at the
/// last step), logged as `eval_<task>/<metric>` in `metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Built-in task names, spec files `x.toml` or `x.toml:name` (as `smelt eval --tasks`).
    pub tasks: Vec<String>,
    /// Evaluate only the first N docs of each task (default: all).
    #[serde(default)]
    pub limit: Option<usize>,
}

impl EvalSection {
    /// Checks the table; errors name the file and key.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        if self.tasks.is_empty() {
            return Err(Error::config(
                origin,
                "`eval.tasks` is empty: list at least one task",
            ));
        }
        if self.limit == Some(0) {
            return Err(Error::config(origin, "`eval.limit` must be at least 1"));
        }
        Ok(())
    }
}

/// Sets `trainer`'s eval hook from an optional `[eval]` table (`tokenizer` is cloned into it).
fn attach_evaluator<A: smelt::train::Algorithm>(
    trainer: &mut Trainer<A>,
    eval: Option<&EvalSection>,
    tokenizer: &Tokenizer,
) -> Result<()> {
    if let Some(eval) = eval {
        let hook = smelt_evals::hook::evaluator(&eval.tasks, tokenizer, eval.limit)
            .map_err(|e| Error::Invalid(format!("[eval]: {e}")))?;
        trainer.set_evaluator(hook);
    }
    Ok(())
}

/// Preference files, how rows become records, and how pairs are batched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoData {
    /// JSONL or Parquet files of preference rows, read in order (required).
    pub train_files: Vec<PathBuf>,
    /// Format and column renames (default: detected per row, TRL column names).
    pub options: RecordOptions,
    /// Preference pairs per micro-batch (HF `per_device_train_batch_size`, default 8).
    pub per_device_train_batch_size: usize,
    /// Seed of the per-epoch shuffle (HF `seed`, default 42).
    pub seed: u64,
}

impl Default for DpoData {
    fn default() -> Self {
        DpoData {
            train_files: vec![],
            options: RecordOptions::default(),
            per_device_train_batch_size: 8,
            seed: 42,
        }
    }
}

/// A DPO run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoRecipe {
    /// The policy to train: an HF folder, a hub id or a `.gguf` file.
    pub model: String,
    /// The reference model (default: a frozen copy of `model` as loaded, as TRL).
    #[serde(default)]
    pub ref_model: Option<String>,
    /// The preference data.
    pub data: DpoData,
    /// DPO settings (TRL `DPOConfig` names and defaults).
    #[serde(default)]
    pub dpo: DpoConfig,
    /// The loop's settings, over TRL's defaults (learning rate 1e-6; output `runs/dpo`).
    #[serde(default = "dpo_train", deserialize_with = "dpo_train_over_defaults")]
    pub train: TrainConfig,
    /// Eval tasks run every `train.eval_every` steps and at the end (none by default).
    #[serde(default)]
    pub eval: Option<EvalSection>,
}

/// `[train]` of an SFT recipe that has none.
fn sft_train() -> TrainConfig {
    trl_train_defaults(SFT_LEARNING_RATE, "runs/sft")
}

/// `[train]` of a DPO recipe that has none.
fn dpo_train() -> TrainConfig {
    trl_train_defaults(DPO_LEARNING_RATE, "runs/dpo")
}

/// The user's `[train]` over [`sft_train`].
fn sft_train_over_defaults<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<TrainConfig, D::Error> {
    over_defaults(d, sft_train())
}

/// The user's `[train]` over [`dpo_train`].
fn dpo_train_over_defaults<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<TrainConfig, D::Error> {
    over_defaults(d, dpo_train())
}

/// The user's `[train]` table merged key by key over `defaults` (a `schedule` replaces whole).
pub(crate) fn over_defaults<'de, D: Deserializer<'de>>(
    d: D,
    defaults: TrainConfig,
) -> std::result::Result<TrainConfig, D::Error> {
    use serde::de::Error as _;
    let user = toml::Value::deserialize(d)?;
    let mut merged = toml::Value::try_from(&defaults).map_err(D::Error::custom)?;
    merge(&mut merged, user, 0);
    TrainConfig::deserialize(merged).map_err(|e| D::Error::custom(e.to_string().trim()))
}

/// Overlays `over` on `base`: tables key by key, anything else replaced (`schedule` at the top whole).
fn merge(base: &mut toml::Value, over: toml::Value, depth: usize) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if !(depth == 0 && k == "schedule") => merge(slot, v, depth + 1),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

impl SftRecipe {
    /// Reads a recipe with `--set` overrides and validates it; errors name the file and key.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let recipe: SftRecipe = smelt::recipe::load_recipe(path, overrides)?;
        recipe.validate(path)?;
        Ok(recipe)
    }

    /// Cross-field checks.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        if self.data.train_files.is_empty() {
            return Err(Error::config(
                origin,
                "`data.train_files` is empty: nothing to train on",
            ));
        }
        self.sft.validate()?;
        if let Some(eval) = &self.eval {
            eval.validate(origin)?;
        }
        self.train.validate()
    }

    /// Every training record encoded as TRL's `SFTTrainer` would, in file order.
    pub fn examples(&self, tokenizer: &Tokenizer) -> Result<Vec<SftExample>> {
        load_sft_examples(
            &self.data.train_files,
            &self.data.options,
            tokenizer,
            &self.sft.encode_options(),
        )
    }
}

impl DpoRecipe {
    /// Reads a recipe with `--set` overrides and validates it; errors name the file and key.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let recipe: DpoRecipe = smelt::recipe::load_recipe(path, overrides)?;
        recipe.validate(path)?;
        Ok(recipe)
    }

    /// Cross-field checks.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        if self.data.train_files.is_empty() {
            return Err(Error::config(
                origin,
                "`data.train_files` is empty: nothing to train on",
            ));
        }
        if self.data.per_device_train_batch_size == 0 {
            return Err(Error::config(
                origin,
                "`data.per_device_train_batch_size` must be at least 1",
            ));
        }
        self.dpo.validate()?;
        if let Some(eval) = &self.eval {
            eval.validate(origin)?;
        }
        self.train.validate()
    }

    /// Every preference record encoded as TRL's `DPOTrainer` would, in file order;
    /// an error names the file and line of the row.
    pub fn examples(&self, tokenizer: &Tokenizer) -> Result<Vec<PreferenceExample>> {
        let mut out = Vec::new();
        for file in &self.data.train_files {
            for item in read_records(file, &self.data.options)? {
                let (loc, record) = item?;
                out.push(
                    encode_preference(tokenizer, &record).map_err(|e| loc.error(e.to_string()))?,
                );
            }
        }
        Ok(out)
    }
}

/// Loads a model and its tokenizer from an HF folder, a hub id or a `.gguf` file.
pub fn load_model(source: &str, device: &Device) -> Result<(Model, Tokenizer)> {
    let opts = LoadOptions {
        require_tokenizer: true,
        ..Default::default()
    };
    let loaded = checkpoint::load(source, device, &opts)?;
    let tokenizer = loaded
        .tokenizer
        .ok_or_else(|| Error::Invalid(format!("{source}: no tokenizer found")))?;
    Ok((loaded.model, tokenizer))
}

/// The padding id TRL uses: the tokenizer's pad token, else its EOS token.
pub fn pad_token_id(tokenizer: &Tokenizer) -> Result<u32> {
    tokenizer
        .pad_token_id()
        .or(tokenizer.eos_token_id())
        .ok_or_else(|| Error::Invalid("the tokenizer has neither a pad nor an EOS token".into()))
}

/// Runs an SFT recipe: load, encode, train with the loop; the last checkpoint (with the
/// tokenizer) is an HF-loadable folder. A run directory with checkpoints resumes.
pub fn run_sft(recipe: &SftRecipe) -> Result<TrainSummary> {
    let device = smelt::dist::device_for(&recipe.train.device, &smelt::dist::DistEnv::from_env()?)?;
    let (model, tokenizer) = load_model(&recipe.model, &device)?;
    let examples = recipe.examples(&tokenizer)?;
    eprintln!(
        "sft: {} examples from {} file(s)",
        examples.len(),
        recipe.data.train_files.len()
    );
    let mut source = SftBatches::new(examples, &recipe.sft, pad_token_id(&tokenizer)?, &device)?;
    let mut trainer = Trainer::new(
        model,
        Some(tokenizer.clone()),
        Sft::new(),
        recipe.train.clone(),
    )?;
    attach_evaluator(&mut trainer, recipe.eval.as_ref(), &tokenizer)?;
    trainer.fit(&mut source)
}

/// Runs a DPO recipe: load policy (and reference), encode, train with the loop.
pub fn run_dpo(recipe: &DpoRecipe) -> Result<TrainSummary> {
    let device = smelt::dist::device_for(&recipe.train.device, &smelt::dist::DistEnv::from_env()?)?;
    let (policy, tokenizer) = load_model(&recipe.model, &device)?;
    let examples = recipe.examples(&tokenizer)?;
    let n = examples.len();
    let source = PreferenceSource::new(
        examples,
        recipe.data.per_device_train_batch_size,
        recipe.data.seed,
        recipe.dpo.collate_options(pad_token_id(&tokenizer)?),
        &device,
    )?;
    eprintln!(
        "dpo: {} pairs ({} dropped: prompt alone fills max_length)",
        n,
        source.dropped()
    );
    let ref_model = match &recipe.ref_model {
        Some(src) => Some(load_model(src, &device)?.0),
        None => None,
    };
    let reference = match (recipe.dpo.precompute_ref_log_probs, ref_model) {
        (true, m) => {
            let batch = recipe
                .dpo
                .precompute_ref_batch_size
                .unwrap_or(recipe.data.per_device_train_batch_size);
            Reference::precompute(m.as_ref().unwrap_or(&policy), &source, batch)?
        }
        (false, Some(m)) => Reference::Frozen(Box::new(m)),
        (false, None) => Reference::frozen_copy(&policy)?,
    };
    let algorithm = Dpo::new(recipe.dpo.clone(), reference)?;
    let mut trainer = Trainer::new(
        policy,
        Some(tokenizer.clone()),
        algorithm,
        recipe.train.clone(),
    )?;
    attach_evaluator(&mut trainer, recipe.eval.as_ref(), &tokenizer)?;
    let mut source = source;
    trainer.fit(&mut source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smelt::recipe::parse_recipe;

    const SFT: &str = "model = \"m\"\n[data]\ntrain_files = [\"a.jsonl\"]\n";

    /// No `[train]`: TRL's SFT defaults, not the loop's pretraining ones.
    #[test]
    fn sft_train_defaults_are_trl() {
        let r: SftRecipe = parse_recipe(SFT, Path::new("r.toml"), &[]).unwrap();
        assert_eq!(r.train, trl_train_defaults(2e-5, "runs/sft"));
        assert_eq!(r.train.optimizer.beta2, 0.999);
        assert_eq!(r.train.optimizer.weight_decay, 0.0);
    }

    /// A partial `[train]` keeps TRL's other defaults; a schedule replaces the default whole.
    #[test]
    fn partial_train_table_merges_over_trl_defaults() {
        let text = format!("{SFT}[train]\nmax_steps = 7\n[train.optimizer]\nbeta1 = 0.8\n");
        let r: SftRecipe = parse_recipe(&text, Path::new("r.toml"), &[]).unwrap();
        assert_eq!((r.train.max_steps, r.train.learning_rate), (7, 2e-5));
        assert_eq!(
            (r.train.optimizer.beta1, r.train.optimizer.beta2),
            (0.8, 0.999)
        );
        let r: SftRecipe = parse_recipe(
            SFT,
            Path::new("r.toml"),
            &["train.schedule={ kind = \"constant\" }".into()],
        )
        .unwrap();
        assert_eq!(r.train.schedule, Schedule::Constant { warmup_steps: 0 });
        let d: DpoRecipe =
            parse_recipe(SFT, Path::new("r.toml"), &["train.max_steps=3".into()]).unwrap();
        assert_eq!((d.train.learning_rate, d.train.max_steps), (1e-6, 3));
        assert_eq!(d.dpo.beta, 0.1);
    }

    /// Typos anywhere, `[train]` included, name the key and suggest the right one.
    #[test]
    fn unknown_keys_are_named() {
        for (text, key, hint) in [
            (
                format!("{SFT}[train]\nmax_stepz = 3\n"),
                "max_stepz",
                "max_steps",
            ),
            (
                format!("{SFT}[sft]\nmax_lenght = 3\n"),
                "max_lenght",
                "max_length",
            ),
            (
                format!("{SFT}[data.options]\nformatt = 3\n"),
                "formatt",
                "format",
            ),
        ] {
            let e = parse_recipe::<SftRecipe>(&text, Path::new("r.toml"), &[])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(key) && e.contains(&format!("did you mean `{hint}`")),
                "{e}"
            );
        }
    }

    /// The shipped example recipes parse and validate (a renamed key would break them).
    #[test]
    fn example_recipes_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/recipes");
        let sft = SftRecipe::load(&dir.join("smollm2-135m-sft.toml"), &[]).unwrap();
        assert!(sft.sft.packing && sft.sft.assistant_only_loss);
        assert_eq!(sft.train.learning_rate, SFT_LEARNING_RATE);
        let dpo = DpoRecipe::load(&dir.join("smollm2-135m-dpo-apo-zero.toml"), &[]).unwrap();
        assert_eq!(dpo.dpo.loss_type, vec![crate::dpo::DpoLossType::ApoZero]);
        assert_eq!(dpo.train.learning_rate, DPO_LEARNING_RATE);
    }

    /// `[eval]` parses into both recipes; an empty task list, `limit = 0` and a typo are
    /// errors naming the key.
    #[test]
    fn eval_section_is_checked() {
        let text = format!("{SFT}[eval]\ntasks = [\"arithmetic\"]\nlimit = 4\n");
        let r: SftRecipe = parse_recipe(&text, Path::new("r.toml"), &[]).unwrap();
        let eval = r.eval.clone().unwrap();
        assert_eq!(
            (eval.tasks, eval.limit),
            (vec!["arithmetic".into()], Some(4))
        );
        let d: DpoRecipe = parse_recipe(&text, Path::new("r.toml"), &[]).unwrap();
        assert_eq!(d.eval, r.eval);
        for (over, key) in [
            ("eval.tasks=[]", "eval.tasks"),
            ("eval.limit=0", "eval.limit"),
        ] {
            let r: SftRecipe = parse_recipe(&text, Path::new("r.toml"), &[over.into()]).unwrap();
            let e = r.validate(Path::new("r.toml")).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("r.toml"), "{e}");
        }
        let e = parse_recipe::<SftRecipe>(&format!("{text}limt = 3\n"), Path::new("r.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("limt"), "{e}");
    }

    /// No training files is an error naming the key.
    #[test]
    fn empty_train_files_is_an_error() {
        let r: SftRecipe =
            parse_recipe("model = \"m\"\n[data]\n", Path::new("r.toml"), &[]).unwrap();
        let e = r.validate(Path::new("r.toml")).unwrap_err().to_string();
        assert!(
            e.contains("data.train_files") && e.contains("r.toml"),
            "{e}"
        );
    }
}
