//! Parity of smelt with transformers on the real SmolLM2-135M-Instruct.
//!
//! Fixtures (`tests/fixtures/smollm2/`, commands in its README) hold transformers'
//! top-20 logits, logsumexp and next-token log-probabilities for six texts, and its
//! greedy chat generations. smelt must agree to 1e-4 (f32) through the GGUF path and
//! through an HF folder that smelt itself exported from the GGUF.

mod common;

use candle_core::{Device, Tensor, D};
use serde_json::Value;
use smelt::checkpoint::{self, LoadOptions};
use smelt::generate::{generate, GenerationConfig};
use smelt::tokenizer::{Message, Tokenizer};
use smelt::{KvCache, Model};

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/smollm2/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn load(source: &str) -> (Model, Tokenizer) {
    let opts = LoadOptions {
        require_tokenizer: true,
        ..Default::default()
    };
    let loaded = checkpoint::load(source, &Device::Cpu, &opts).unwrap();
    (loaded.model, loaded.tokenizer.unwrap())
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Compares smelt's logits with every fixture row; returns the max abs difference seen.
fn assert_logits_match(model: &Model, tok: &Tokenizer) -> f32 {
    let fx = fixture("logits.json");
    let rows = fx["rows"].as_array().unwrap();
    assert!(rows.len() >= 5);
    let mut worst = 0f32;
    for row in rows {
        let text = row["text"].as_str().unwrap();
        let ids: Vec<u32> = row["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids,
            "token ids differ for {text:?}"
        );
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward(&input, None).unwrap().squeeze(0).unwrap(); // (T, V)
        let lse: Vec<f32> = {
            let max = logits.max_keepdim(D::Minus1).unwrap();
            let s = logits
                .broadcast_sub(&max)
                .unwrap()
                .exp()
                .unwrap()
                .sum_keepdim(D::Minus1)
                .unwrap()
                .log()
                .unwrap();
            (s + max).unwrap().squeeze(1).unwrap().to_vec1().unwrap()
        };
        let logits: Vec<Vec<f32>> = logits.to_vec2().unwrap();
        let mut check = |ours: f32, theirs: f32, what: &str| {
            let diff = (ours - theirs).abs();
            worst = worst.max(diff);
            assert!(
                diff <= TOL,
                "{text:?}: {what}: smelt {ours} vs transformers {theirs}"
            );
        };
        for (t, want) in f32s(&row["logsumexp"]).into_iter().enumerate() {
            check(lse[t], want, &format!("logsumexp at {t}"));
        }
        for (t, (top_ids, top_vals)) in row["top_ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(row["top_logits"].as_array().unwrap())
            .enumerate()
        {
            for (id, want) in top_ids.as_array().unwrap().iter().zip(f32s(top_vals)) {
                check(
                    logits[t][id.as_u64().unwrap() as usize],
                    want,
                    &format!("logit {id} at {t}"),
                );
            }
        }
        for (t, want) in f32s(&row["next_token_logprob"]).into_iter().enumerate() {
            check(
                logits[t][ids[t + 1] as usize] - lse[t],
                want,
                &format!("logprob of next token at {t}"),
            );
        }
    }
    worst
}

#[test]
fn gguf_logits_match_transformers() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let (model, tok) = load(gguf.to_str().unwrap());
    let worst = assert_logits_match(&model, &tok);
    eprintln!("GGUF path: max |smelt - transformers| = {worst:e}");
}

#[test]
fn exported_hf_folder_logits_match_transformers() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let (model, tok) = load(gguf.to_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2-hf");
    checkpoint::save_pretrained(&model, Some(&tok), &out).unwrap();
    drop(model);
    let (model, tok) = load(out.to_str().unwrap());
    let worst = assert_logits_match(&model, &tok);
    eprintln!("HF-folder path: max |smelt - transformers| = {worst:e}");
    // the exported chat template renders as transformers does
    let render = tok
        .apply_chat_template(
            &[Message {
                role: "user".into(),
                content: "What is 2+2?".into(),
            }],
            true,
        )
        .unwrap();
    assert_eq!(
        render,
        fixture("logits.json")["chat_template_render"]
            .as_str()
            .unwrap()
    );
}

#[test]
fn greedy_chat_generation_matches_transformers() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let (model, tok) = load(gguf.to_str().unwrap());
    let fx = fixture("generate.json");
    for row in fx["rows"].as_array().unwrap() {
        let msgs = [Message {
            role: "user".into(),
            content: row["prompt"].as_str().unwrap().into(),
        }];
        let text = tok.apply_chat_template(&msgs, true).unwrap();
        assert_eq!(text, row["chat_text"].as_str().unwrap());
        let ids = tok.encode(&text, false).unwrap();
        let want_prompt: Vec<u32> = row["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want_prompt);
        let want: Vec<u32> = row["new_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let cfg = GenerationConfig {
            max_new_tokens: 16,
            stop_ids: vec![tok.eos_token_id().unwrap()],
            ..Default::default()
        };
        let got = generate(&model, &ids, &cfg, |_| Ok(())).unwrap();
        assert_eq!(got.tokens, want, "prompt {:?}", row["prompt"]);
    }
}

#[test]
fn kv_cache_decode_equals_forward_on_smollm2() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let (model, tok) = load(gguf.to_str().unwrap());
    let ids = tok
        .encode(
            "The quick brown fox jumps over the lazy dog, and then it rests.",
            false,
        )
        .unwrap();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let full = model.forward(&input, None).unwrap().squeeze(0).unwrap(); // (T, V)
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let split = ids.len() / 2;
    let mut parts = vec![model
        .decode(&input.narrow(1, 0, split).unwrap(), &mut cache)
        .unwrap()
        .squeeze(0)
        .unwrap()];
    for t in split..ids.len() {
        parts.push(
            model
                .decode(&input.narrow(1, t, 1).unwrap(), &mut cache)
                .unwrap()
                .squeeze(0)
                .unwrap(),
        );
    }
    let stepped = Tensor::cat(&parts, 0).unwrap();
    let diff: f32 = (full - stepped)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    eprintln!("SmolLM2 decode vs forward: max abs diff {diff:e}");
    assert!(diff <= 1e-4, "decode differs from forward by {diff}");
}
