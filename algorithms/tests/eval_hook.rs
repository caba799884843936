//! Eval hooks in the post-training recipes:
//! - an SFT recipe with `[eval] tasks = ["arithmetic"], limit = 4` and `eval_every = 2`
//!   logs `eval_arithmetic/exact_match` (a value in [0, 1]) at steps 2 and 4 and at no
//!   other step;
//! - a DPO recipe with the same table logs it at its eval steps too;
//! - an unknown task name fails the run before any step, naming the task.
//!
//! The model folder is made here: a 2-layer random Llama saved with `save_pretrained`
//! beside a byte-level tokenizer with no merges (256 byte tokens plus `<|im_end|>` as EOS
//! and pad), written as `tokenizer.json` by this file.

use serde_json::Value;
use smelt::checkpoint::save_pretrained;
use smelt::tokenizer::Tokenizer;
use smelt::{Model, ModelConfig, ModelType};
use smelt_algorithms::recipes::{run_dpo, run_sft, DpoRecipe, SftRecipe};
use std::path::{Path, PathBuf};

/// GPT-2's byte-to-unicode map (the alphabet of a byte-level BPE vocabulary).
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

/// A tiny model folder (random weights, byte-level tokenizer) at `dir/model`.
fn tiny_model(dir: &Path) -> PathBuf {
    let tok_dir = dir.join("tokenizer");
    std::fs::create_dir_all(&tok_dir).unwrap();
    let vocab: serde_json::Map<String, Value> = (0..256u32)
        .map(|b| (byte_char(b as u8).to_string(), b.into()))
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 256, "content": "<|im_end|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(tok_dir.join("tokenizer.json"), json.to_string()).unwrap();
    std::fs::write(
        tok_dir.join("tokenizer_config.json"),
        r#"{"eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}"#,
    )
    .unwrap();
    let tokenizer = Tokenizer::from_dir(&tok_dir).unwrap();
    let config = ModelConfig::tiny(ModelType::Llama, tokenizer.vocab_size());
    let model = Model::new_random(config, &candle_core::Device::Cpu, 7).unwrap();
    let out = dir.join("model");
    save_pretrained(&model, Some(&tokenizer), &out).unwrap();
    out
}

/// A scratch directory holding a tiny model and one data file with `rows`.
fn setup(rows: &[Value]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = dir.path().join("train.jsonl");
    let text: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    std::fs::write(&data, text.join("\n") + "\n").unwrap();
    (dir, model, data)
}

/// The `[train]` and `[eval]` tables shared by the runs below.
fn tail(out: &Path, tasks: &str) -> String {
    format!(
        "[train]\noutput_dir = {out:?}\nmax_steps = 4\neval_every = 2\nsave_every = 0\n\
         progress = false\nplots = false\nlearning_rate = 1e-3\n\
         [eval]\ntasks = [{tasks}]\nlimit = 4\n"
    )
}

/// `(step, value of key)` of every metrics.jsonl record that has `key`.
fn logged(metrics: &Path, key: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|r| Some((r["step"].as_u64()?, r.get(key)?.as_f64()?)))
        .collect()
}

fn assert_eval_at_2_and_4(metrics: &Path) {
    let got = logged(metrics, "eval_arithmetic/exact_match");
    let steps: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, vec![2, 4], "{got:?}");
    assert!(got.iter().all(|(_, v)| (0.0..=1.0).contains(v)), "{got:?}");
}

#[test]
fn sft_recipe_logs_eval_metrics_every_eval_every_steps() {
    let rows: Vec<Value> = (0..8)
        .map(|i| serde_json::json!({"text": format!("{i} plus {i} is {}.", 2 * i)}))
        .collect();
    let (dir, model, data) = setup(&rows);
    let out = dir.path().join("run");
    let text = format!(
        "model = {model:?}\n[data]\ntrain_files = [{data:?}]\n[sft]\nmax_length = 32\n\
         per_device_train_batch_size = 2\n{}",
        tail(&out, "\"arithmetic\"")
    );
    let path = dir.path().join("sft.toml");
    std::fs::write(&path, text).unwrap();
    let recipe = SftRecipe::load(&path, &[]).unwrap();
    let summary = run_sft(&recipe).unwrap();
    assert_eq!(summary.step, 4);
    assert_eval_at_2_and_4(&summary.metrics_path);
}

#[test]
fn dpo_recipe_logs_eval_metrics_every_eval_every_steps() {
    let rows: Vec<Value> = (0..8)
        .map(|i| {
            serde_json::json!({"prompt": format!("{i} plus {i} is"),
                "chosen": format!(" {}.", 2 * i), "rejected": format!(" {}.", 2 * i + 1)})
        })
        .collect();
    let (dir, model, data) = setup(&rows);
    let out = dir.path().join("run");
    let text = format!(
        "model = {model:?}\n[data]\ntrain_files = [{data:?}]\nper_device_train_batch_size = 2\n{}",
        tail(&out, "\"arithmetic\"")
    );
    let path = dir.path().join("dpo.toml");
    std::fs::write(&path, text).unwrap();
    let recipe = DpoRecipe::load(&path, &[]).unwrap();
    let summary = run_dpo(&recipe).unwrap();
    assert_eq!(summary.step, 4);
    assert_eval_at_2_and_4(&summary.metrics_path);
}

#[test]
fn unknown_eval_task_fails_before_training() {
    let rows = vec![serde_json::json!({"text": "one two three"})];
    let (dir, model, data) = setup(&rows);
    let out = dir.path().join("run");
    let text = format!(
        "model = {model:?}\n[data]\ntrain_files = [{data:?}]\n{}",
        tail(&out, "\"arithmetik\"")
    );
    let path = dir.path().join("sft.toml");
    std::fs::write(&path, text).unwrap();
    let recipe = SftRecipe::load(&path, &[]).unwrap();
    let e = run_sft(&recipe).unwrap_err().to_string();
    assert!(e.contains("[eval]") && e.contains("arithmetik"), "{e}");
    assert!(!out.join("metrics.jsonl").exists(), "no step may run");
}
