//! `smelt sft` and `smelt dpo` end to end on a tiny random model: a recipe runs a few
//! steps, prints its JSON summary last, and leaves an HF-loadable checkpoint (with the
//! tokenizer); a typo in a recipe exits non-zero naming the key and the nearest valid one.
//!
//! The model folder is made here: a 2-layer random Llama saved with `save_pretrained`
//! beside a byte-level BPE trained on a few sentences, with a ChatML template and
//! `<|im_end|>` as EOS (what a chat SFT dataset needs).

use serde_json::Value;
use smelt::checkpoint::{self, save_pretrained, LoadOptions};
use smelt::{Model, ModelConfig, ModelType};
use smelt_pretrain::bpe::{train_bpe, BpeTrainingConfig, CHATML_TEMPLATE};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh directory under cargo's per-target test scratch space.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sft_dpo_cli-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tiny chat model folder (random weights, real tokenizer files) at `dir/model`.
fn tiny_model(dir: &Path) -> PathBuf {
    let sentences = [
        "What is two plus three? Two plus three is five.",
        "Name a colour. Blue is a colour, and so is red.",
        "The quick brown fox jumps over the lazy dog.",
        "Say hello. Hello! How can I help you today?",
    ];
    let config = BpeTrainingConfig {
        vocab_size: 300,
        min_frequency: 1,
        eos_token: Some("<|im_end|>".into()),
        pad_token: Some("<|endoftext|>".into()),
        chat_template: Some(CHATML_TEMPLATE.into()),
        ..BpeTrainingConfig::default()
    };
    let tokenizer = train_bpe(sentences.iter(), &config, &dir.join("tokenizer")).unwrap();
    let model_config = ModelConfig::tiny(ModelType::Llama, tokenizer.vocab_size());
    let model = Model::new_random(model_config, &candle_core::Device::Cpu, 7).unwrap();
    let out = dir.join("model");
    save_pretrained(&model, Some(&tokenizer), &out).unwrap();
    out
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn smelt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(args)
        .output()
        .unwrap()
}

/// The last stdout line as JSON; panics with stderr when the command failed.
fn summary(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "failed:\n{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap()
}

/// The run finished, and its checkpoint loads with the tokenizer as an HF folder.
fn assert_finished_with_loadable_checkpoint(s: &Value, steps: u64) {
    assert_eq!(s["step"], steps, "{s}");
    assert_eq!(s["finished"], true, "{s}");
    assert!(s["last_loss"].as_f64().unwrap().is_finite(), "{s}");
    let ckpt = s["checkpoint"].as_str().expect("a checkpoint");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(Path::new(ckpt).join(f).is_file(), "{ckpt} lacks {f}");
    }
    let opts = LoadOptions {
        require_tokenizer: true,
        ..Default::default()
    };
    let loaded = checkpoint::load(ckpt, &candle_core::Device::Cpu, &opts).unwrap();
    assert_eq!(loaded.model.config().num_hidden_layers, 2);
}

/// `smelt sft` on conversations with assistant-only loss: 3 steps, TRL learning rate by default.
#[test]
fn sft_runs_a_recipe_and_writes_a_loadable_checkpoint() {
    let dir = scratch("sft");
    let model = tiny_model(&dir);
    let data = dir.join("chats.jsonl");
    let rows: Vec<String> = (0..6)
        .map(|i| {
            format!(
                r#"{{"messages": [{{"role": "user", "content": "What is {i} plus 3?"}}, {{"role": "assistant", "content": "It is {}."}}]}}"#,
                i + 3
            )
        })
        .collect();
    write(&data, &rows.join("\n"));
    let recipe = dir.join("sft.toml");
    write(
        &recipe,
        &format!(
            "model = {model:?}\n[data]\ntrain_files = [{data:?}]\n[sft]\nmax_length = 64\n\
             per_device_train_batch_size = 2\nassistant_only_loss = true\n\
             [train]\noutput_dir = {out:?}\nmax_steps = 5\nprogress = false\nplots = false\n",
            out = dir.join("run"),
        ),
    );
    let out = smelt(&[
        "sft",
        "--config",
        recipe.to_str().unwrap(),
        "--set",
        "train.max_steps=3",
    ]);
    let s = summary(&out);
    assert_finished_with_loadable_checkpoint(&s, 3);
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(dir.join("run/metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        first["lr"], 2e-5,
        "TRL's SFT learning rate is the recipe default: {first}"
    );
}

/// `smelt dpo` on explicit-prompt preference pairs: 2 steps, step 1 is ln 2 (policy = reference).
#[test]
fn dpo_runs_a_recipe_and_writes_a_loadable_checkpoint() {
    let dir = scratch("dpo");
    let model = tiny_model(&dir);
    let data = dir.join("pairs.jsonl");
    let rows: Vec<String> = (0..4)
        .map(|i| {
            format!(
                r#"{{"prompt": [{{"role": "user", "content": "What is {i} plus 3?"}}], "chosen": [{{"role": "assistant", "content": "{}"}}], "rejected": [{{"role": "assistant", "content": "{}"}}]}}"#,
                i + 3,
                i + 4
            )
        })
        .collect();
    write(&data, &rows.join("\n"));
    let recipe = dir.join("dpo.toml");
    write(
        &recipe,
        &format!(
            "model = {model:?}\n[data]\ntrain_files = [{data:?}]\nper_device_train_batch_size = 2\n\
             [dpo]\nloss_type = \"apo_zero\"\n\
             [train]\noutput_dir = {out:?}\nmax_steps = 2\nprogress = false\nplots = false\n",
            out = dir.join("run"),
        ),
    );
    let out = smelt(&[
        "dpo",
        "--config",
        recipe.to_str().unwrap(),
        "--set",
        "dpo.loss_type=sigmoid",
    ]);
    let s = summary(&out);
    assert_finished_with_loadable_checkpoint(&s, 2);
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(dir.join("run/metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(
        (first["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-5,
        "{first}"
    );
    assert_eq!(
        first["lr"], 1e-6,
        "TRL's DPO learning rate is the recipe default: {first}"
    );
}

/// A typo in the recipe or in `--set` is a non-zero exit naming the key and a suggestion.
#[test]
fn unknown_recipe_key_fails_naming_it() {
    let dir = scratch("typo");
    let recipe = dir.join("sft.toml");
    write(
        &recipe,
        "model = \"m\"\n[data]\ntrain_files = [\"a.jsonl\"]\n[sft]\nmax_lenght = 64\n",
    );
    let out = smelt(&["sft", "--config", recipe.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("max_lenght") && err.contains("did you mean `max_length`"),
        "{err}"
    );

    let recipe = dir.join("dpo.toml");
    write(
        &recipe,
        "model = \"m\"\n[data]\ntrain_files = [\"a.jsonl\"]\n",
    );
    let out = smelt(&[
        "dpo",
        "--config",
        recipe.to_str().unwrap(),
        "--set",
        "train.learning_rat=1e-6",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("learning_rat") && err.contains("did you mean `learning_rate`"),
        "{err}"
    );
}
