//! The tokenizer-compatibility rule between stages (`smelt_recipes::pipeline::compat`):
//! a stage whose model cannot use the previous stage's tokenizer is an error at load,
//! before anything is written or trained. The checkpoint folders here hold only
//! `config.json` and `tokenizer.json`, which is all planning reads.

mod common;

use common::{base_overrides, example, small_corpus};
use serde_json::json;
use smelt::{ModelConfig, ModelType};
use smelt_recipes::PipelineRecipe;
use std::path::{Path, PathBuf};

/// A folder with a word-level `tokenizer.json` over `tokens` (ids in order) and, when
/// `vocab_size` is given, a tiny Llama `config.json` with that vocabulary.
fn checkpoint(root: &Path, name: &str, tokens: &[&str], vocab_size: Option<usize>) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": tokens[0]},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    if let Some(n) = vocab_size {
        let config = ModelConfig::tiny(ModelType::Llama, n).to_hf_json();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    }
    dir
}

const WORDS: [&str; 8] = ["<unk>", "the", "a", "of", "to", "and", "in", "<eos>"];
const OTHER: [&str; 8] = ["<unk>", "the", "a", "of", "to", "and", "in", "</s>"];

/// Loads the example with `set` on top of the base overrides; the error text, if any.
fn load(dir: &Path, set: &[String]) -> Result<PipelineRecipe, String> {
    let corpus = small_corpus(dir, 1);
    let mut all = base_overrides(dir, &corpus);
    all.extend_from_slice(set);
    PipelineRecipe::load(&example(), &all).map_err(|e| e.to_string())
}

/// SFT given a model whose tokenizer differs from pretraining's `tokenizer.path`
/// fails at load naming the key and the first differing token; the same tokenizer
/// under another folder is accepted.
#[test]
fn sft_model_with_another_tokenizer_is_an_error_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let words = checkpoint(root, "words", &WORDS, None);
    let other = checkpoint(root, "other", &OTHER, Some(8));
    let same = checkpoint(root, "same", &WORDS, Some(8));
    let set = |model: &Path| {
        vec![
            "stages=[\"pretrain\", \"sft\"]".to_string(),
            format!("pretrain.tokenizer.path=\"{}\"", words.display()),
            format!("sft.model=\"{}\"", model.display()),
        ]
    };
    let e = load(root, &set(&other)).unwrap_err();
    assert!(
        e.contains("`sft.model`") && e.contains("`pretrain`, the previous stage"),
        "{e}"
    );
    assert!(e.contains("\"<eos>\" (id 7) is missing"), "{e}");
    assert!(!root.join("run").exists(), "nothing is written");
    load(root, &set(&same)).unwrap();
}

/// After a stage that trains a new BPE tokenizer (the example's default), an existing
/// model cannot be a later stage's input: it was not trained with that tokenizer.
#[test]
fn existing_model_after_a_freshly_trained_tokenizer_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = checkpoint(dir.path(), "model", &WORDS, Some(8));
    let e = load(dir.path(), &[format!("dpo.model=\"{}\"", model.display())]).unwrap_err();
    assert!(
        e.contains("`dpo.model`") && e.contains("trains a new BPE tokenizer"),
        "{e}"
    );
}

/// Continued pretraining: a `tokenizer.path` with more ids than the `init_from`
/// config's `vocab_size` fails, as does one that differs from `init_from`'s own
/// tokenizer; an equal one is accepted.
#[test]
fn pretrain_tokenizer_must_fit_and_match_init_from() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut twelve = WORDS.to_vec();
    twelve.extend(["on", "at", "by", "for"]);
    let big = checkpoint(root, "big", &twelve, None);
    let bare = root.join("bare"); // a model folder without a tokenizer
    std::fs::create_dir_all(&bare).unwrap();
    let config = ModelConfig::tiny(ModelType::Llama, 8).to_hf_json();
    std::fs::write(bare.join("config.json"), config.to_string()).unwrap();
    let set = |init: &Path, tok: &Path| {
        vec![
            format!("pretrain.model.init_from=\"{}\"", init.display()),
            format!("pretrain.tokenizer.path=\"{}\"", tok.display()),
        ]
    };
    let e = load(root, &set(&bare, &big)).unwrap_err();
    assert!(
        e.contains("pretrain.model.init_from") && e.contains("vocab_size 8") && e.contains("id 11"),
        "{e}"
    );
    let model = checkpoint(root, "model", &WORDS, Some(8));
    let other = checkpoint(root, "other", &OTHER, None);
    let e = load(root, &set(&model, &other)).unwrap_err();
    assert!(
        e.contains("`pretrain.tokenizer.path`") && e.contains("\"<eos>\" (id 7) is missing"),
        "{e}"
    );
    let same = checkpoint(root, "same", &WORDS, None);
    load(root, &set(&model, &same)).unwrap();
}

/// DPO's reference model scores the policy's token ids, so it needs the same tokenizer.
#[test]
fn dpo_ref_model_with_another_tokenizer_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let policy = checkpoint(root, "policy", &WORDS, Some(8));
    let reference = checkpoint(root, "reference", &OTHER, Some(8));
    let set = |r: &Path| {
        vec![
            "stages=[\"dpo\"]".to_string(),
            format!("dpo.model=\"{}\"", policy.display()),
            format!("dpo.ref_model=\"{}\"", r.display()),
        ]
    };
    let e = load(root, &set(&reference)).unwrap_err();
    assert!(
        e.contains("`dpo.ref_model`") && e.contains("the policy `dpo.model`"),
        "{e}"
    );
    load(root, &set(&policy)).unwrap();
}

/// A model whose own tokenizer has ids beyond its `vocab_size` is rejected, even as
/// the first stage; so is a model folder with no `tokenizer.json`.
#[test]
fn model_that_cannot_read_its_own_tokenizer_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let small = checkpoint(root, "small", &WORDS, Some(6));
    let set = |m: &Path| {
        vec![
            "stages=[\"sft\"]".to_string(),
            format!("sft.model=\"{}\"", m.display()),
        ]
    };
    let e = load(root, &set(&small)).unwrap_err();
    assert!(
        e.contains("`sft.model`") && e.contains("vocab_size 6"),
        "{e}"
    );
    std::fs::remove_file(small.join("tokenizer.json")).unwrap();
    let e = load(root, &set(&small)).unwrap_err();
    assert!(e.contains("no tokenizer.json"), "{e}");
}
