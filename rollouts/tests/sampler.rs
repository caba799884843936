//! Acceptance tests of the batched sampler against `Model::forward`.
//!
//! Most run on a tiny random model with a 64-token character tokenizer written to a
//! temporary directory; the SmolLM2 tests use the real GGUF when present (located as
//! in the core's `tests/common`) and skip with a note otherwise.

#[path = "../../tests/common/mod.rs"]
mod common;

use candle_core::{Device, Tensor, D};
use smelt::checkpoint::{self, LoadOptions};
use smelt::tokenizer::{Message, Tokenizer};
use smelt::{Model, ModelConfig, ModelType};
use smelt_rollouts::{Completion, Engine, FinishReason, Request, Sampler, SamplingParams};

/// 63 printable characters after `<eos>` (id 0): a 64-token vocabulary.
const CHARS: &str = "abcdefghijklmnopqrstuvwxyz0123456789 .,!?+-*/=ABCDEFGHIJKLMNOPQ";

fn char_tokenizer() -> Tokenizer {
    let tokenizer = Tokenizer::char_level(CHARS).unwrap();
    assert_eq!(tokenizer.vocab_size(), 64);
    tokenizer
}

fn tiny() -> (Model, Tokenizer) {
    let model =
        Model::new_random(ModelConfig::tiny(ModelType::Llama, 64), &Device::Cpu, 7).unwrap();
    (model, char_tokenizer())
}

/// Prompts of lengths 3, 11, 6, 17, 1.
fn prompts() -> Vec<Vec<u32>> {
    [3usize, 11, 6, 17, 1]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| ((i * 7 + j * 5) % 63 + 1) as u32).collect())
        .collect()
}

fn requests(prompts: &[Vec<u32>], params: &SamplingParams) -> Vec<Request> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Request {
            id: i as u64,
            prompt_ids: p.clone(),
            params: params.clone(),
        })
        .collect()
}

/// Logits `(T, V)` of `Model::forward` on one sequence.
fn forward_logits(model: &Model, ids: &[u32]) -> Tensor {
    let input = Tensor::new(ids, model.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model.forward(&input, None).unwrap().squeeze(0).unwrap()
}

/// Each generated token is the argmax of `forward` on prompt + the tokens before it.
fn assert_greedy_is_forward_argmax(model: &Model, prompt: &[u32], c: &Completion) {
    let mut seq = prompt.to_vec();
    for (i, &tok) in c.token_ids.iter().enumerate() {
        let logits = forward_logits(model, &seq);
        let last = logits.get(seq.len() - 1).unwrap();
        let argmax = last.argmax(D::Minus1).unwrap().to_scalar::<u32>().unwrap();
        assert_eq!(tok, argmax, "request {} token {i}", c.id);
        seq.push(tok);
    }
}

#[test]
fn greedy_equals_forward_argmax_on_the_growing_sequence() {
    let (model, tok) = tiny();
    let params = SamplingParams {
        max_new_tokens: 12,
        ..SamplingParams::greedy()
    };
    let prompts = prompts();
    let out = Sampler::new(&model, &tok, 3)
        .unwrap()
        .generate(requests(&prompts, &params))
        .unwrap();
    assert_eq!(out.len(), 5);
    for (p, c) in prompts.iter().zip(&out) {
        assert_eq!(c.token_ids.len(), 12);
        assert_eq!(c.finish, FinishReason::Length);
        assert!(c.processed_logprobs.iter().all(|&l| l == 0.0));
        assert_greedy_is_forward_argmax(&model, p, c);
    }
}

#[test]
fn seeded_samples_repeat_across_runs_and_batch_compositions() {
    let (model, tok) = tiny();
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 20,
        max_new_tokens: 16,
        seed: 1234,
        ..Default::default()
    };
    let prompts = prompts();
    let batch = Sampler::new(&model, &tok, 5).unwrap();
    let all = batch.generate(requests(&prompts, &params)).unwrap();
    let again = batch.generate(requests(&prompts, &params)).unwrap();
    assert_eq!(all, again);
    // Request 3 (17 tokens) alone, same id and seed.
    let alone = Sampler::new(&model, &tok, 1)
        .unwrap()
        .generate(vec![requests(&prompts, &params).remove(3)])
        .unwrap();
    assert_eq!(alone[0].token_ids, all[3].token_ids);
    for (a, b) in alone[0]
        .behaviour_logprobs
        .iter()
        .zip(&all[3].behaviour_logprobs)
    {
        assert!((a - b).abs() < 1e-5);
    }
    // Different ids draw different samples.
    assert_ne!(all[0].token_ids, all[1].token_ids);
    // A different seed gives a different sample.
    let other = batch
        .generate(requests(
            &prompts,
            &SamplingParams {
                seed: 99,
                ..params.clone()
            },
        ))
        .unwrap();
    assert_ne!(other[3].token_ids, all[3].token_ids);
}

#[test]
fn a_group_sharing_one_prompt_samples_as_if_each_request_ran_alone() {
    // GRPO's requests repeat each prompt `num_generations` times back to back; the
    // sampler prefills a repeated prompt once and gives every row its own cache slots.
    let (model, tok) = tiny();
    let params = SamplingParams {
        temperature: 1.0,
        max_new_tokens: 12,
        seed: 7,
        ..Default::default()
    };
    let p = prompts();
    let grouped: Vec<Vec<u32>> = [0, 0, 0, 3, 3, 1, 3]
        .iter()
        .map(|&i| p[i].clone())
        .collect();
    let together = Sampler::new(&model, &tok, 8)
        .unwrap()
        .generate(requests(&grouped, &params))
        .unwrap();
    let single = Sampler::new(&model, &tok, 1).unwrap();
    for (i, r) in requests(&grouped, &params).into_iter().enumerate() {
        let alone = single.generate(vec![r]).unwrap().remove(0);
        assert_eq!(alone.token_ids, together[i].token_ids, "request {i}");
        for (a, b) in alone
            .behaviour_logprobs
            .iter()
            .zip(&together[i].behaviour_logprobs)
        {
            assert!((a - b).abs() < 1e-5, "request {i}: {a} vs {b}");
        }
    }
    // the rows of a group drew different samples (they do not share their RNG or slots)
    assert_ne!(together[0].token_ids, together[1].token_ids);
    assert_ne!(together[1].token_ids, together[2].token_ids);
}

#[test]
fn behaviour_logprobs_are_log_softmax_of_forward_over_temperature() {
    let (model, tok) = tiny();
    let t = 0.7;
    let params = SamplingParams {
        temperature: t,
        top_k: 10,
        top_p: 0.9,
        max_new_tokens: 10,
        seed: 5,
        ..Default::default()
    };
    let prompts = prompts();
    let out = Sampler::new(&model, &tok, 4)
        .unwrap()
        .generate(requests(&prompts, &params))
        .unwrap();
    for (p, c) in prompts.iter().zip(&out) {
        let seq: Vec<u32> = p.iter().chain(&c.token_ids).copied().collect();
        let logits = forward_logits(&model, &seq); // (T, V)
        let logp = candle_nn::ops::log_softmax(&(logits / t).unwrap(), D::Minus1).unwrap();
        let logp: Vec<Vec<f32>> = logp.to_vec2().unwrap();
        for (i, &tok_id) in c.token_ids.iter().enumerate() {
            let want = logp[p.len() - 1 + i][tok_id as usize];
            let got = c.behaviour_logprobs[i];
            assert!(
                (got - want).abs() <= 1e-5,
                "request {} token {i}: {got} vs {want}",
                c.id
            );
            // Renormalising over a subset can only raise a kept token's probability.
            assert!(c.processed_logprobs[i] >= got - 1e-6);
        }
        // With 64 near-uniform tokens, top-k 10 makes the two differ.
        assert!(c
            .processed_logprobs
            .iter()
            .zip(&c.behaviour_logprobs)
            .any(|(a, b)| a - b > 0.1));
    }
}

#[test]
fn continuous_batching_matches_one_full_batch() {
    let (model, tok) = tiny();
    let prompts = prompts();
    // Different lengths so rows leave at different steps and queued ones join mid-way.
    let reqs: Vec<Request> = requests(
        &prompts,
        &SamplingParams {
            temperature: 1.0,
            top_p: 0.95,
            seed: 3,
            ..Default::default()
        },
    )
    .into_iter()
    .enumerate()
    .map(|(i, mut r)| {
        r.params.max_new_tokens = [9, 2, 14, 5, 7][i];
        r
    })
    .collect();
    let full = Sampler::new(&model, &tok, 5)
        .unwrap()
        .generate(reqs.clone())
        .unwrap();
    for max_batch in [1, 2] {
        let cont = Sampler::new(&model, &tok, max_batch)
            .unwrap()
            .generate(reqs.clone())
            .unwrap();
        assert_eq!(cont.len(), 5);
        for (a, b) in cont.iter().zip(&full) {
            assert_eq!(a.id, b.id);
            assert_eq!(
                a.token_ids, b.token_ids,
                "max_batch {max_batch}, request {}",
                a.id
            );
            assert_eq!(a.token_ids.len(), reqs[a.id as usize].params.max_new_tokens);
        }
    }
}

#[test]
fn stop_ids_and_stop_strings_end_a_completion() {
    let (model, tok) = tiny();
    let prompt = prompts()[1].clone();
    let base = SamplingParams {
        max_new_tokens: 20,
        ..SamplingParams::greedy()
    };
    let run = |params: SamplingParams| {
        Sampler::new(&model, &tok, 2)
            .unwrap()
            .generate(vec![Request {
                id: 0,
                prompt_ids: prompt.clone(),
                params,
            }])
            .unwrap()
            .remove(0)
    };
    let free = run(base.clone());
    assert_eq!(free.finish, FinishReason::Length);
    assert_eq!(free.text, tok.decode(&free.token_ids, true).unwrap());

    // Stop id: the 5th generated token; output ends at its first occurrence, kept.
    let stop = free.token_ids[4];
    let first = free.token_ids.iter().position(|&t| t == stop).unwrap();
    let c = run(SamplingParams {
        stop_token_ids: vec![stop],
        ..base.clone()
    });
    assert_eq!(c.finish, FinishReason::Stop);
    assert_eq!(c.token_ids, free.token_ids[..=first]);
    assert_eq!(c.behaviour_logprobs.len(), c.token_ids.len());

    // Stop string: two characters from the middle of the text; text cut before it,
    // tokens kept through the one that completed it.
    let chars: Vec<char> = free.text.chars().collect();
    let s: String = chars[6..8].iter().collect();
    let at = free.text.find(&s).unwrap();
    let c = run(SamplingParams {
        stop_strings: vec!["zz-never".into(), s.clone()],
        ..base.clone()
    });
    assert_eq!(c.finish, FinishReason::Stop);
    assert_eq!(c.text, free.text[..at]);
    let spelled = free.text[..at + s.len()].chars().count(); // one char per token
    assert_eq!(c.token_ids, free.token_ids[..spelled]);
}

#[test]
fn bad_params_are_errors_naming_the_field() {
    let err = serde_json::from_str::<SamplingParams>(r#"{"temprature": 0.5}"#).unwrap_err();
    assert!(err.to_string().contains("temprature"), "{err}");
    let p: SamplingParams = serde_json::from_str(r#"{"top_k": 5}"#).unwrap();
    assert_eq!(p.temperature, 1.0);
    let (model, tok) = tiny();
    let sampler = Sampler::new(&model, &tok, 2).unwrap();
    let req = |params: SamplingParams, prompt_ids: Vec<u32>| Request {
        id: 9,
        prompt_ids,
        params,
    };
    let e = sampler.generate(vec![req(
        SamplingParams {
            top_p: 0.0,
            ..Default::default()
        },
        vec![1],
    )]);
    assert!(e.unwrap_err().to_string().contains("top_p"));
    let e = sampler.generate(vec![req(SamplingParams::default(), vec![])]);
    assert!(e.unwrap_err().to_string().contains("empty prompt"));
    let e = sampler.generate(vec![req(SamplingParams::default(), vec![64])]);
    assert!(e.unwrap_err().to_string().contains("out of range"));
    assert!(Sampler::new(&model, &tok, 0).is_err());
}

fn smollm2() -> Option<(Model, Tokenizer)> {
    let path = common::smollm2_gguf()?;
    let opts = LoadOptions {
        require_tokenizer: true,
        ..Default::default()
    };
    let loaded = checkpoint::load(path.to_str().unwrap(), &Device::Cpu, &opts).unwrap();
    Some((loaded.model, loaded.tokenizer.unwrap()))
}

fn chat_prompt(tok: &Tokenizer, question: &str) -> Vec<u32> {
    let text = tok
        .apply_chat_template(&[Message::new("user", question)], true)
        .unwrap();
    tok.encode(&text, false).unwrap()
}

#[test]
fn smollm2_greedy_equals_forward_argmax() {
    let Some((model, tok)) = smollm2() else {
        return;
    };
    let prompts = vec![
        chat_prompt(&tok, "What is 2 plus 3?"),
        chat_prompt(
            &tok,
            "Name a color of the sky on a clear day, in one word please.",
        ),
    ];
    let params = SamplingParams {
        max_new_tokens: 6,
        ..SamplingParams::greedy()
    };
    let out = Sampler::new(&model, &tok, 2)
        .unwrap()
        .generate(requests(&prompts, &params))
        .unwrap();
    for (p, c) in prompts.iter().zip(&out) {
        assert_greedy_is_forward_argmax(&model, p, c);
    }
}

/// Throughput on SmolLM2: batch 8 × 64 new tokens vs eight `smelt::generate` calls.
/// `cargo test --release -p smelt-rollouts --test sampler -- --ignored --nocapture throughput`
#[test]
#[ignore]
fn throughput_vs_single_sequence_generate() {
    let Some((model, tok)) = smollm2() else {
        return;
    };
    let questions = [
        "What is 2 plus 3?",
        "Write a haiku about rust.",
        "Why is the sky blue?",
        "List three fruits.",
        "What is the capital of France?",
        "Tell me a joke.",
        "Explain gravity briefly.",
        "Count from one to ten.",
    ];
    let prompts: Vec<Vec<u32>> = questions.iter().map(|q| chat_prompt(&tok, q)).collect();
    let params = SamplingParams {
        max_new_tokens: 64,
        ..SamplingParams::greedy()
    };
    let t0 = std::time::Instant::now();
    let out = Sampler::new(&model, &tok, 8)
        .unwrap()
        .generate(requests(&prompts, &params))
        .unwrap();
    let sampler_s = t0.elapsed().as_secs_f64();
    let n: usize = out.iter().map(|c| c.token_ids.len()).sum();
    let cfg = smelt::generate::GenerationConfig {
        max_new_tokens: 64,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let mut m = 0;
    for (p, c) in prompts.iter().zip(&out) {
        let g = smelt::generate::generate(&model, p, &cfg, |_| Ok(())).unwrap();
        assert_eq!(g.tokens, c.token_ids);
        m += g.tokens.len();
    }
    let single_s = t0.elapsed().as_secs_f64();
    println!(
        "sampler batch 8: {n} tokens in {sampler_s:.2}s = {:.1} tok/s; smelt::generate one at a time: {m} tokens in {single_s:.2}s = {:.1} tok/s",
        n as f64 / sampler_s,
        m as f64 / single_s
    );
}

/// The two decode engines — the CPU `DecodeSession` (slots, no padding) and the
/// candle-op path (left-padded shared cache) — give the same completions: greedy and
/// seeded sampling, continuous batching, a group sharing one prompt.
#[test]
fn session_and_candle_op_engines_agree() {
    let (model, tok) = tiny();
    let mut prompts = prompts();
    prompts.push(prompts[0].clone()); // a repeated prompt: its prefill is shared
    for temperature in [0.0, 1.0] {
        let reqs: Vec<Request> = requests(
            &prompts,
            &SamplingParams {
                temperature,
                seed: 11,
                ..Default::default()
            },
        )
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r.params.max_new_tokens = [6, 3, 9, 4, 7, 5][i];
            r
        })
        .collect();
        for max_batch in [2, 6] {
            let run = |engine| {
                Sampler::new(&model, &tok, max_batch)
                    .unwrap()
                    .with_engine(engine)
                    .generate(reqs.clone())
                    .unwrap()
            };
            let (fast, ops) = (run(Engine::Auto), run(Engine::CandleOps));
            assert_eq!(fast.len(), reqs.len());
            for (a, b) in fast.iter().zip(&ops) {
                assert_eq!(
                    a.token_ids, b.token_ids,
                    "T {temperature} max_batch {max_batch} request {}",
                    a.id
                );
                for (x, y) in a.behaviour_logprobs.iter().zip(&b.behaviour_logprobs) {
                    assert!((x - y).abs() < 1e-4, "behaviour logprob {x} vs {y}");
                }
            }
        }
    }
}
