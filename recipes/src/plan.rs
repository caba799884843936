//! Plans: what a recipe of any kind (`pretrain`, `sft`, `dpo`, `grpo`, `pipeline`)
//! will do, built without running it — `smelt <command> --plan` prints one, and a test
//! builds the plan of every shipped recipe.
//!
//! A plan lists the stages in order; for each, the model (its resolved config and
//! parameter count when knowable before loading), the data sources (named, not read),
//! the optimizer steps and batch, and the output folder.
//!
//! Key decision: planning reads only small metadata that is already on disk — a
//! folder's `config.json`, a tokenizer's size, a hub repo's config when it sits fully in
//! the local cache — never weights, data files or the network. A model it cannot
//! resolve (an uncached hub id, a `.gguf`, a checkpoint an earlier stage has not written
//! yet) is reported as such, not an error: the run resolves it when it loads it. Data
//! files of a stand-alone stage recipe are not required to exist (a plan is what you
//! look at before downloading them); a pipeline's plan keeps [`PipelineRecipe::plan`]'s
//! checks, which do require them.

use crate::pipeline::recipe::{PipelineRecipe, Stage, StagePlan};
use smelt::checkpoint::hub::{default_cache_dir, resolve, HubRepo};
use smelt::tokenizer::Tokenizer;
use smelt::train::TrainConfig;
use smelt::{Error, ModelConfig, Result};
use smelt_algorithms::grpo::GrpoRecipe;
use smelt_algorithms::recipes::{DpoRecipe, SftRecipe};
use smelt_pretrain::recipe::PretrainRecipe;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The kind of a recipe file: the `smelt` command that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipeKind {
    /// `smelt pretrain` (a `PretrainRecipe`).
    Pretrain,
    /// `smelt sft` (an `SftRecipe`).
    Sft,
    /// `smelt dpo` (a `DpoRecipe`).
    Dpo,
    /// `smelt grpo` (a `GrpoRecipe`).
    Grpo,
    /// `smelt pipeline` (a [`PipelineRecipe`]).
    Pipeline,
}

impl RecipeKind {
    /// Every kind, in command order.
    pub const ALL: [RecipeKind; 5] = [
        RecipeKind::Pretrain,
        RecipeKind::Sft,
        RecipeKind::Dpo,
        RecipeKind::Grpo,
        RecipeKind::Pipeline,
    ];

    /// The `smelt` subcommand that runs this kind.
    pub fn command(self) -> &'static str {
        match self {
            RecipeKind::Pretrain => "pretrain",
            RecipeKind::Sft => "sft",
            RecipeKind::Dpo => "dpo",
            RecipeKind::Grpo => "grpo",
            RecipeKind::Pipeline => "pipeline",
        }
    }

    /// The kind named by the command on a recipe's first line, e.g.
    /// `# cargo run --release -p smelt-cli -- dpo --config x.toml` or
    /// `# cargo run ... --example smollm3_pipeline -- --config x.toml`.
    pub fn from_command_line(line: &str) -> Option<RecipeKind> {
        let line = line.trim_start_matches('#').trim();
        if !line.starts_with("cargo run") && !line.starts_with("smelt ") {
            return None;
        }
        if line.contains("--example smollm3_pipeline") {
            return Some(RecipeKind::Pipeline);
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = match words.iter().position(|w| *w == "--") {
            Some(i) => &words[i + 1..],
            None => &words[1..], // `smelt <command> ...`
        };
        let first = after.first()?;
        RecipeKind::ALL.into_iter().find(|k| k.command() == *first)
    }

    /// The kind of the recipe at `path`, read from the command on its first line.
    pub fn of_file(path: &Path) -> Result<RecipeKind> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let first = text.lines().next().unwrap_or_default();
        RecipeKind::from_command_line(first).ok_or_else(|| {
            Error::config(
                path,
                format!(
                    "the first line should be the command that runs the recipe \
                     (`# cargo run --release -p smelt-cli -- <command> --config ...`), found {first:?}"
                ),
            )
        })
    }
}

/// What a plan knows about a stage's model before anything is loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPlan {
    /// The source as the recipe names it (a fresh architecture: `new <model_type>`).
    pub source: String,
    /// Its config, when knowable before loading.
    pub config: Option<ModelConfig>,
    /// Why the config is unknown, or how it was found, in words.
    pub note: String,
}

impl ModelPlan {
    /// Parameters (embedding counted once when tied), when the config is known.
    pub fn parameters(&self) -> Option<usize> {
        self.config.as_ref().map(ModelConfig::num_parameters)
    }

    /// A model loaded from `source` (HF folder, hub id or `.gguf`): its config read from
    /// the folder or the local hub cache when there, else unknown with the reason.
    pub fn from_source(source: &str) -> Result<ModelPlan> {
        let unknown = |note: &str| ModelPlan {
            source: source.into(),
            config: None,
            note: note.into(),
        };
        let dir = Path::new(source);
        if dir.join("config.json").is_file() {
            return Ok(ModelPlan {
                source: source.into(),
                config: Some(ModelConfig::from_file(dir.join("config.json"))?),
                note: "config.json of the folder".into(),
            });
        }
        if source.ends_with(".gguf") {
            return Ok(unknown("GGUF file: config read from its metadata at load"));
        }
        if dir.exists() {
            return Ok(unknown("folder without config.json (yet)"));
        }
        if let (Some(repo), Some(cache)) = (HubRepo::parse(source), default_cache_dir()) {
            // Offline: only a fully cached snapshot resolves; nothing is downloaded.
            return Ok(match resolve(&repo, &cache, true, false) {
                Ok(snap) => ModelPlan {
                    source: source.into(),
                    config: Some(ModelConfig::from_file(snap.join("config.json"))?),
                    note: "hub cache".into(),
                },
                Err(_) => unknown("hub id, not cached: config fetched at load"),
            });
        }
        Ok(unknown("not on disk yet: read at load"))
    }
}

/// One stage of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct StageOutline {
    /// `pretrain`, `sft`, `dpo` or `grpo`.
    pub stage: Stage,
    /// The model it starts from.
    pub model: ModelPlan,
    /// Its data sources, named (not read).
    pub data: Vec<String>,
    /// Optimizer steps.
    pub max_steps: u64,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// The batch of one optimizer step, in words (`8 rows × 128 tokens × 1 accumulation`).
    pub batch: String,
    /// The stage's settings that matter most, in words (loss type, β, schedule).
    pub settings: String,
    /// Where it writes checkpoints, metrics and plots.
    pub output_dir: PathBuf,
}

/// The plan of one recipe file.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipePlan {
    /// Its kind.
    pub kind: RecipeKind,
    /// The recipe file.
    pub origin: PathBuf,
    /// The stages, in order (one for a stage recipe).
    pub stages: Vec<StageOutline>,
}

impl RecipePlan {
    /// Reads the recipe at `path` as `kind` with `--set` overrides and plans it.
    pub fn load(path: &Path, kind: RecipeKind, overrides: &[String]) -> Result<RecipePlan> {
        let stage = match kind {
            RecipeKind::Pipeline => {
                return RecipePlan::of_pipeline(&PipelineRecipe::load(path, overrides)?)
            }
            RecipeKind::Pretrain => {
                pretrain_outline(&PretrainRecipe::load(path, overrides)?, path)?
            }
            RecipeKind::Sft => sft_outline(&SftRecipe::load(path, overrides)?)?,
            RecipeKind::Dpo => dpo_outline(&DpoRecipe::load(path, overrides)?)?,
            RecipeKind::Grpo => grpo_outline(&GrpoRecipe::load(path, overrides)?)?,
        };
        Ok(RecipePlan {
            kind,
            origin: path.to_path_buf(),
            stages: vec![stage],
        })
    }

    /// The plan of a loaded pipeline: its stages wired as [`PipelineRecipe::plan`] wires
    /// them; a stage starting from the previous stage's checkpoint has that stage's config.
    pub fn of_pipeline(recipe: &PipelineRecipe) -> Result<RecipePlan> {
        let mut stages: Vec<StageOutline> = Vec::new();
        for (stage, plan) in recipe.plan()? {
            let mut outline = match &plan {
                StagePlan::Pretrain(r) => pretrain_outline(r, &recipe.origin)?,
                StagePlan::Sft(r) => sft_outline(r)?,
                StagePlan::Dpo(r) => dpo_outline(r)?,
                StagePlan::Grpo(r) => grpo_outline(r)?,
            };
            if let (Some(prev), None) = (stages.last(), &outline.model.config) {
                let latest = recipe.stage_dir(prev.stage).join("latest");
                if Path::new(&outline.model.source) == latest {
                    outline.model.config = prev.model.config.clone();
                    outline.model.note = format!("written by `{}`", prev.stage.name());
                }
            }
            debug_assert_eq!(outline.stage, stage);
            stages.push(outline);
        }
        Ok(RecipePlan {
            kind: RecipeKind::Pipeline,
            origin: recipe.origin.clone(),
            stages,
        })
    }

    /// The plan in words, one block per stage.
    pub fn render(&self) -> String {
        let mut s = format!(
            "plan of {} (smelt {}): {} stage(s), nothing run\n",
            self.origin.display(),
            self.kind.command(),
            self.stages.len()
        );
        for (i, st) in self.stages.iter().enumerate() {
            let _ = writeln!(
                s,
                "\n{}. {} -> {}",
                i + 1,
                st.stage.name(),
                st.output_dir.display()
            );
            let _ = writeln!(s, "   model:    {}", describe_model(&st.model));
            for d in &st.data {
                let _ = writeln!(s, "   data:     {d}");
            }
            let _ = writeln!(
                s,
                "   train:    {} steps, lr {:e}, {}",
                st.max_steps, st.learning_rate, st.batch
            );
            let _ = writeln!(s, "   settings: {}", st.settings);
        }
        s
    }
}

/// The model line of a rendered plan.
fn describe_model(m: &ModelPlan) -> String {
    match &m.config {
        Some(c) => format!(
            "{} ({}) — {}, {:.1} M parameters: {} layers, hidden {}, heads {}/{} (GQA), MLP {}, vocab {}, rope θ {}{}, tied {}",
            m.source,
            m.note,
            c.model_type.as_str(),
            c.num_parameters() as f64 / 1e6,
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.intermediate_size,
            c.vocab_size,
            c.rope_theta,
            match c.use_rope.iter().filter(|r| !**r).count() {
                0 => String::new(),
                n => format!(", {n} NoPE layers"),
            },
            c.tie_word_embeddings
        ),
        None => format!("{} ({})", m.source, m.note),
    }
}

/// The batch and schedule of a `[train]` section, in words.
fn schedule(t: &TrainConfig) -> String {
    let o = &t.optimizer;
    format!(
        "schedule {:?}; AdamW β {}/{}, weight decay {}{}; clip {}",
        t.schedule,
        o.beta1,
        o.beta2,
        o.weight_decay,
        if o.decay_embeddings || o.weight_decay == 0.0 {
            ""
        } else {
            " (not on embeddings)"
        },
        t.max_grad_norm
    )
}

/// A file list in words.
fn files(label: &str, paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| format!("{label} {}", p.display()))
        .collect()
}

/// The outline of a pretraining recipe: the fresh architecture's config with the
/// vocabulary of `model.vocab_size`, an existing tokenizer, or the BPE it trains.
fn pretrain_outline(r: &PretrainRecipe, origin: &Path) -> Result<StageOutline> {
    let model = match &r.model.init_from {
        Some(init) => ModelPlan::from_source(init)?,
        None => {
            let on_disk = r
                .tokenizer
                .path
                .as_ref()
                .map(|p| p.join("tokenizer.json"))
                .filter(|f| f.is_file());
            let (vocab, note) = match (&on_disk, &r.tokenizer.train, r.model.vocab_size) {
                (Some(f), _, _) => {
                    let t = Tokenizer::from_file(f)?;
                    (Some(t.vocab_size()), format!("vocab of {}", f.display()))
                }
                (None, _, Some(n)) => (Some(n), "vocab from `model.vocab_size`".into()),
                (None, Some(bpe), None) => {
                    (Some(bpe.vocab_size), "vocab of the BPE it trains".into())
                }
                (None, None, None) => (None, String::new()),
            };
            let source = "new model".to_string();
            match vocab {
                Some(n) => ModelPlan {
                    source,
                    config: Some(r.model.config(n, None, None, origin)?),
                    note,
                },
                None => ModelPlan {
                    source,
                    config: None,
                    note:
                        "vocabulary unknown until the tokenizer is on disk (set `model.vocab_size`)"
                            .into(),
                },
            }
        }
    };
    let mut data: Vec<String> = r
        .corpus
        .iter()
        .flat_map(|c| {
            c.inputs
                .iter()
                .map(|i| format!("corpus {}", i.path.display()))
        })
        .collect();
    data.extend(r.data.sources.iter().map(|s| {
        let paths: Vec<String> = s.paths.iter().map(|p| p.display().to_string()).collect();
        format!(
            "shards `{}` (weight {}): {}",
            s.name,
            s.weight,
            paths.join(", ")
        )
    }));
    data.extend(files(
        "validation",
        &r.data
            .validation
            .iter()
            .map(|v| v.path.clone())
            .collect::<Vec<_>>(),
    ));
    let t = &r.train;
    let tokens = r.data.micro_batch_size * r.data.seq_len * t.grad_accumulation_steps as usize;
    let tokenizer = match (&r.tokenizer.path, &r.tokenizer.train) {
        (Some(p), _) => format!("tokenizer {}", p.display()),
        (None, Some(b)) => format!("BPE tokenizer trained to {} tokens", b.vocab_size),
        (None, None) => "the tokenizer of `init_from`".into(),
    };
    Ok(StageOutline {
        stage: Stage::Pretrain,
        model,
        data,
        max_steps: t.max_steps,
        learning_rate: t.learning_rate,
        batch: format!(
            "{} rows × {} tokens × {} accumulation = {tokens} tokens per step (documents packed, attention masked per document)",
            r.data.micro_batch_size, r.data.seq_len, t.grad_accumulation_steps
        ),
        settings: format!("{tokenizer}; {}", schedule(t)),
        output_dir: t.output_dir.clone(),
    })
}

/// The outline of an SFT recipe.
fn sft_outline(r: &SftRecipe) -> Result<StageOutline> {
    let t = &r.train;
    Ok(StageOutline {
        stage: Stage::Sft,
        model: ModelPlan::from_source(&r.model)?,
        data: files("train", &r.data.train_files),
        max_steps: t.max_steps,
        learning_rate: t.learning_rate,
        batch: format!(
            "{} rows of ≤ {} tokens × {} accumulation",
            r.sft.per_device_train_batch_size, r.sft.max_length, t.grad_accumulation_steps
        ),
        settings: format!(
            "packing {}, assistant-only loss {}; {}",
            r.sft.packing,
            r.sft.assistant_only_loss,
            schedule(t)
        ),
        output_dir: t.output_dir.clone(),
    })
}

/// The outline of a DPO recipe.
fn dpo_outline(r: &DpoRecipe) -> Result<StageOutline> {
    let t = &r.train;
    let reference = match &r.ref_model {
        Some(m) => format!("reference {m}"),
        None => "reference: a frozen copy of the policy".into(),
    };
    Ok(StageOutline {
        stage: Stage::Dpo,
        model: ModelPlan::from_source(&r.model)?,
        data: files("train", &r.data.train_files),
        max_steps: t.max_steps,
        learning_rate: t.learning_rate,
        batch: format!(
            "{} pairs × {} accumulation",
            r.data.per_device_train_batch_size, t.grad_accumulation_steps
        ),
        settings: format!(
            "loss {:?}{}, β {}; {reference}; {}",
            r.dpo.loss_type,
            r.dpo
                .rpo_alpha
                .map(|a| format!(" + RPO NLL × {a}"))
                .unwrap_or_default(),
            r.dpo.beta,
            schedule(t)
        ),
        output_dir: t.output_dir.clone(),
    })
}

/// The outline of a GRPO recipe.
fn grpo_outline(r: &GrpoRecipe) -> Result<StageOutline> {
    let t = &r.train;
    let g = &r.grpo;
    let mut data = files("prompts", &r.data.train_files);
    if let Some(a) = &r.data.arithmetic {
        data.push(format!(
            "{} generated arithmetic prompts (seed {}, operands ≤ {}, {} operation(s))",
            a.num_prompts, a.task.seed, a.task.max_operand, a.task.num_operations
        ));
    }
    let completions = g.generation_batch_size(t.grad_accumulation_steps);
    Ok(StageOutline {
        stage: Stage::Grpo,
        model: ModelPlan::from_source(&r.model)?,
        data,
        max_steps: t.max_steps,
        learning_rate: t.learning_rate,
        batch: format!(
            "{} prompts × {} generations = {completions} completions of ≤ {} tokens per step",
            completions / g.num_generations.max(1),
            g.num_generations,
            g.max_completion_length
        ),
        settings: format!(
            "loss {:?}, scale_rewards {:?}, ε {}/{}, β {}, μ {}, temperature {}; {}",
            g.loss_type,
            g.scale_rewards,
            g.epsilon,
            g.epsilon_high(),
            g.beta,
            g.num_iterations,
            g.temperature,
            schedule(t)
        ),
        output_dir: t.output_dir.clone(),
    })
}
