//! Helpers shared by the pipeline tests: the shipped example recipe and `--set`
//! overrides that point it at a temporary folder and a small corpus.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shipped embedded recipe.
pub fn example() -> PathBuf {
    repo().join("examples/recipes/smollm3-tiny.toml")
}

/// `--set` overrides that point every file at absolute paths and put the run in `dir`.
pub fn base_overrides(dir: &Path, corpus: &Path) -> Vec<String> {
    let valid = repo().join("assets/corpus/shakespeare-valid.jsonl");
    let valid = valid.to_string_lossy();
    vec![
        format!("run_dir=\"{}\"", dir.join("run").display()),
        format!("evals.bpb_file=\"{valid}\""),
        format!(
            "pretrain.corpus.inputs=[{{ path = \"{}\" }}]",
            corpus.display()
        ),
        format!("pretrain.corpus.decontamination={{ eval_sets = [{{ path = \"{valid}\" }}] }}"),
        format!("pretrain.data.validation=[{{ path = \"{valid}\" }}]"),
    ]
}

/// The first `n` Shakespeare documents as a small corpus.
pub fn small_corpus(dir: &Path, n: usize) -> PathBuf {
    let text =
        std::fs::read_to_string(repo().join("assets/corpus/shakespeare-train.jsonl")).unwrap();
    let path = dir.join("corpus.jsonl");
    let lines: Vec<&str> = text.lines().take(n).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Overrides that shrink the embedded pipeline to seconds: a 2-layer 64-wide model,
/// 60 pretraining steps, 40 SFT steps and a few DPO/GRPO steps, with warn-only gates.
pub const SHRUNKEN: [&str; 28] = [
    "arithmetic.pretrain_rows=600",
    "arithmetic.sft_rows=600",
    "arithmetic.dpo_rows=64",
    "arithmetic.grpo_rows=16",
    "arithmetic.eval_rows=40",
    "evals.bpb_docs=1",
    "evals.bpb_max_length=128",
    "evals.gate=\"warn\"",
    "pretrain.tokenizer.train={ vocab_size = 512, eos_token = \"<|endoftext|>\" }",
    "pretrain.model.hidden_size=64",
    "pretrain.model.intermediate_size=192",
    "pretrain.model.num_hidden_layers=2",
    "pretrain.data.seq_len=64",
    "pretrain.data.validation_batches=1",
    "pretrain.train.max_steps=60",
    "pretrain.train.save_every=30",
    "pretrain.train.eval_every=60",
    "pretrain.train.schedule={ kind = \"wsd\", warmup_steps = 5, decay_fraction = 0.2, decay = \"1-sqrt\" }",
    "sft.train.max_steps=40",
    "sft.train.save_every=20",
    "dpo.data.per_device_train_batch_size=8",
    "dpo.train.max_steps=4",
    "dpo.train.save_every=4",
    "grpo.grpo.num_generations=4",
    "grpo.grpo.per_device_train_batch_size=8",
    "grpo.train.max_steps=2",
    "grpo.train.save_every=2",
    "grpo.train.schedule={ kind = \"linear\", warmup_steps = 0 }",
];

/// Overrides on top of [`SHRUNKEN`] with which SFT and DPO measurably improve their
/// metrics in about a minute: a smaller task (operands 0..=3, 48 distinct problems) that
/// the 2-layer model learns in seconds, 100 held-out problems per eval, SFT to about half
/// right, DPO with APO-zero + RPO, and GRPO with 16 prompts × 8 generations at
/// temperature 0.7 (sampled exact match evaluated at the same temperature).
pub const IMPROVING: [&str; 21] = [
    "arithmetic.task={ seed = 0, max_operand = 3, num_operations = 1 }",
    "arithmetic.eval_rows=100",
    "arithmetic.dpo_rows=200",
    "arithmetic.grpo_rows=48",
    "sft.train.max_steps=240",
    "sft.train.save_every=240",
    "dpo.dpo.rpo_alpha=1.0",
    "dpo.data.per_device_train_batch_size=16",
    "dpo.train.learning_rate=5e-4",
    "dpo.train.max_steps=20",
    "dpo.train.save_every=20",
    "grpo.grpo.num_generations=8",
    "grpo.grpo.per_device_train_batch_size=128",
    "grpo.max_batch=128",
    "grpo.grpo.temperature=0.7",
    "evals.sample_temperature=0.7",
    "grpo.grpo.epsilon_high=0.28",
    "grpo.train.learning_rate=1e-4",
    "grpo.train.schedule={ kind = \"linear\", warmup_steps = 4 }",
    "grpo.train.max_steps=30",
    "grpo.train.save_every=30",
];
