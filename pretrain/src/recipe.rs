//! The pretraining recipe: one TOML file describing corpus → tokenizer → shards →
//! model → training.
//!
//! ```toml
//! run_dir = "runs/tiny"            # everything the run writes lives here
//! [corpus]                          # optional: raw documents → dedup/decontaminate
//! inputs = [{ path = "assets/corpus/shakespeare-train.jsonl" }]
//! [tokenizer]                       # an existing tokenizer folder, or train one
//! train = { vocab_size = 2048 }
//! [model]                           # a fresh architecture (vocab from the tokenizer)
//! model_type = "llama"
//! hidden_size = 128
//! [data]
//! seq_len = 128
//! micro_batch_size = 8
//! validation = [{ path = "assets/corpus/shakespeare-valid.jsonl" }]
//! [train]                           # smelt::train::TrainConfig
//! max_steps = 300
//! ```
//! Every table is `deny_unknown_fields`; defaults are documented per field.

use crate::bpe::BpeTrainingConfig;
use crate::corpus::{CorpusConfig, InputSpec};
use crate::mixture::SourceConfig;
use serde::{Deserialize, Serialize};
use smelt::train::TrainConfig;
use smelt::{Error, ModelConfig, Result};
use std::path::{Path, PathBuf};

/// A whole pretraining run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PretrainRecipe {
    /// Directory for everything the run writes: prepared corpus, tokenizer, shards,
    /// checkpoints, metrics, plots. `train.output_dir` defaults to it.
    pub run_dir: PathBuf,
    /// Raw-document preparation (dedup, decontamination); its `output` defaults to
    /// `<run_dir>/corpus/train.jsonl`. Omit when `data.sources` names ready shards.
    #[serde(default)]
    pub corpus: Option<CorpusConfig>,
    /// Where the tokenizer comes from.
    #[serde(default)]
    pub tokenizer: TokenizerSection,
    /// The model to train.
    pub model: ModelSection,
    /// Batches.
    #[serde(default)]
    pub data: DataSection,
    /// The training loop's settings.
    #[serde(default)]
    pub train: TrainConfig,
}

/// Tokenizer source: a folder with `tokenizer.json`, or BPE trained on the corpus.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerSection {
    /// An existing tokenizer folder (used when it exists).
    pub path: Option<PathBuf>,
    /// Train a byte-level BPE on the prepared corpus (saved in `<run_dir>/tokenizer`).
    pub train: Option<BpeTrainingConfig>,
}

/// A fresh model's architecture, or a checkpoint to continue from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Continue pretraining a checkpoint (HF folder, hub id or `.gguf`) instead of a fresh model.
    pub init_from: Option<String>,
    /// `llama`, `smollm3`, `qwen2` or `qwen3` (default `llama`).
    pub model_type: String,
    /// Residual width (default 128).
    pub hidden_size: usize,
    /// MLP width (default 384 = 3 × hidden, as SmolLM2-135M's ratio ≈ 2.67 rounded up).
    pub intermediate_size: usize,
    /// Decoder layers (default 4).
    pub num_hidden_layers: usize,
    /// Query heads (default 4).
    pub num_attention_heads: usize,
    /// Key/value heads (default 2).
    pub num_key_value_heads: usize,
    /// Longest context (default 512).
    pub max_position_embeddings: usize,
    /// Rope base (default 10 000).
    pub rope_theta: f64,
    /// RMSNorm epsilon (default 1e-5, SmolLM2).
    pub rms_norm_eps: f64,
    /// Tie `lm_head` to the embedding (default true, SmolLM2/3 small models).
    pub tie_word_embeddings: bool,
    /// SmolLM3: every N-th layer without rope (default 4, SmolLM3).
    pub no_rope_layer_interval: Option<usize>,
    /// Seed of the random initialisation (normal std 0.02; default 0).
    pub init_seed: u64,
    /// Rows of the embedding (default: the tokenizer's vocabulary). When given it must be
    /// at least the tokenizer's size (larger pads the embedding); it also lets a plan count
    /// parameters before the tokenizer is on disk.
    pub vocab_size: Option<usize>,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            init_from: None,
            model_type: "llama".into(),
            hidden_size: 128,
            intermediate_size: 384,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 512,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: true,
            no_rope_layer_interval: None,
            init_seed: 0,
            vocab_size: None,
        }
    }
}

impl ModelSection {
    /// The resolved config for a vocabulary of `vocab_size` with the given special ids.
    pub fn config(
        &self,
        vocab_size: usize,
        bos: Option<u32>,
        eos: Option<u32>,
        origin: &Path,
    ) -> Result<ModelConfig> {
        let vocab_size = match self.vocab_size {
            Some(n) if n < vocab_size => {
                return Err(Error::config(
                    origin.join("[model]"),
                    format!("`vocab_size` {n} is smaller than the tokenizer's {vocab_size} tokens"),
                ))
            }
            Some(n) => n,
            None => vocab_size,
        };
        let mut v = serde_json::json!({
            "model_type": self.model_type, "vocab_size": vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": self.max_position_embeddings, "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps, "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": bos, "eos_token_id": eos,
        });
        if let Some(n) = self.no_rope_layer_interval {
            v["no_rope_layer_interval"] = n.into();
        }
        ModelConfig::from_json(&v, &origin.join("[model]"))
    }
}

/// How documents become batches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Tokens per row (default 256).
    pub seq_len: usize,
    /// Rows per micro-batch (default 8; the loop accumulates `train.grad_accumulation_steps` of them).
    pub micro_batch_size: usize,
    /// Seed of the mixture's per-epoch permutations (default 0).
    pub seed: u64,
    /// Ready token shards (a weighted mixture). Default: shards built from `[corpus]`.
    pub sources: Vec<SourceConfig>,
    /// Held-out documents for validation loss (tokenized into their own shard).
    pub validation: Vec<InputSpec>,
    /// Micro-batches of validation per evaluation (default 8).
    pub validation_batches: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            seq_len: 256,
            micro_batch_size: 8,
            seed: 0,
            sources: vec![],
            validation: vec![],
            validation_batches: 8,
        }
    }
}

impl PretrainRecipe {
    /// Reads a recipe with `--set` overrides and fills run-dir-relative defaults.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let mut recipe: PretrainRecipe = smelt::recipe::load_recipe(path, overrides)?;
        recipe.resolve(path)?;
        Ok(recipe)
    }

    /// Fills defaults that depend on `run_dir` and checks cross-field rules.
    pub fn resolve(&mut self, origin: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::config(origin, m));
        if self.train.output_dir == TrainConfig::default().output_dir {
            self.train.output_dir = self.run_dir.clone();
        }
        if let Some(c) = &mut self.corpus {
            if c.output.as_os_str().is_empty() {
                c.output = self.run_dir.join("corpus").join("train.jsonl");
            }
        }
        if self.corpus.is_none() && self.data.sources.is_empty() {
            return bad(
                "neither `[corpus]` nor `data.sources` is given: there is nothing to train on"
                    .into(),
            );
        }
        if self.data.seq_len == 0 || self.data.micro_batch_size == 0 {
            return bad("`data.seq_len` and `data.micro_batch_size` must be at least 1".into());
        }
        if self.model.init_from.is_none()
            && self.tokenizer.path.is_none()
            && self.tokenizer.train.is_none()
        {
            return bad(
                "`[tokenizer]` needs `path` (an existing tokenizer) or `train` (BPE settings)"
                    .into(),
            );
        }
        if self.tokenizer.train.is_some()
            && self.corpus.is_none()
            && self.tokenizer.path.as_ref().is_none_or(|p| !p.exists())
        {
            return bad("`tokenizer.train` needs a `[corpus]` to train on".into());
        }
        self.train
            .validate()
            .map_err(|e| Error::config(origin, format!("[train] {e}")))
    }
}
