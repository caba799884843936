//! `SequentialGenerator`: a slow, obvious [`Generator`] — one sample at a time.
//!
//! Each sample runs `smelt::generate::generate` (KV cache) with its own seed derived from
//! the prompt row's seed and the sample index, so output depends only on (weights, row,
//! sample), never on batch composition or thread timing. Behaviour log-probs are then
//! recomputed by one `forward` over prompt + completion as `log_softmax(logits / T)` at
//! the sampled tokens (the unprocessed distribution). It is the reference beside the
//! batched `Sampler`, and what the tests use. A reward that panics scores that sample
//! `None` (logged), it does not end the run.

use super::batch::{collate, per_rollout};
use crate::dpo::token_logps_fused;
use smelt::generate::{generate, FinishReason as GenFinish, GenerationConfig};
use smelt::{Model, Result};
use smelt_rollouts::service::{mix_seed, panic_message, Generator, PromptRow};
use smelt_rollouts::{FinishReason, Rollout};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// Scores one completion: reward name → value (`None` = not applicable).
pub type RewardFn = Box<dyn Fn(&PromptRow, &[u32]) -> BTreeMap<String, Option<f32>> + Send>;

/// Turns completion ids into text.
pub type DecodeFn = Box<dyn Fn(&[u32]) -> String + Send>;

/// Sampling settings of [`SequentialGenerator`].
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingSettings {
    /// Completions per prompt.
    pub num_generations: usize,
    /// Maximum completion tokens.
    pub max_new_tokens: usize,
    /// Temperature (> 0).
    pub temperature: f64,
    /// Top-k (0 = off).
    pub top_k: usize,
    /// Top-p (1 = off).
    pub top_p: f64,
    /// Stop token ids.
    pub stop_ids: Vec<u32>,
}

/// See the module docs.
pub struct SequentialGenerator {
    settings: SamplingSettings,
    reward: RewardFn,
    weights: BTreeMap<String, f32>,
    decode: Option<DecodeFn>,
}

impl SequentialGenerator {
    /// A generator scoring with `reward`, weighting each named reward by `weights` (default 1).
    pub fn new(
        settings: SamplingSettings,
        reward: RewardFn,
        weights: BTreeMap<String, f32>,
    ) -> Self {
        SequentialGenerator {
            settings,
            reward,
            weights,
            decode: None,
        }
    }

    /// Fills `completion_text` with `decode(completion_ids)`.
    pub fn with_decoder(mut self, decode: DecodeFn) -> Self {
        self.decode = Some(decode);
        self
    }

    fn score(&self, row: &PromptRow, completion: &[u32]) -> (f32, BTreeMap<String, Option<f32>>) {
        let scores = match catch_unwind(AssertUnwindSafe(|| (self.reward)(row, completion))) {
            Ok(s) => s,
            Err(p) => {
                eprintln!(
                    "reward panicked on prompt {}: {}",
                    row.index,
                    panic_message(p)
                );
                BTreeMap::from([("error".to_string(), None)])
            }
        };
        let total = scores
            .iter()
            .filter_map(|(k, v)| v.map(|v| v * self.weights.get(k).copied().unwrap_or(1.0)))
            .sum();
        (total, scores)
    }
}

impl Generator for SequentialGenerator {
    fn generate(
        &mut self,
        model: &Model,
        prompts: &[PromptRow],
        version: u64,
    ) -> Result<Vec<Rollout>> {
        let started = Instant::now();
        let s = &self.settings;
        let mut out = Vec::with_capacity(prompts.len() * s.num_generations);
        for row in prompts {
            for j in 0..s.num_generations {
                let config = GenerationConfig {
                    max_new_tokens: s.max_new_tokens,
                    temperature: s.temperature,
                    top_p: s.top_p,
                    top_k: s.top_k,
                    seed: mix_seed(row.seed ^ mix_seed(j as u64)),
                    stop_ids: s.stop_ids.clone(),
                };
                let g = generate(model, &row.prompt_ids, &config, |_| Ok(()))?;
                let (reward, rewards) = self.score(row, &g.tokens);
                out.push(Rollout {
                    prompt_index: row.index,
                    sample_index: j as u32,
                    prompt_ids: row.prompt_ids.clone(),
                    completion_text: self.decode.as_ref().map_or(String::new(), |d| d(&g.tokens)),
                    behaviour_logprobs: vec![0.0; g.tokens.len()], // filled below
                    processed_logprobs: vec![0.0; g.tokens.len()],
                    completion_ids: g.tokens,
                    finish: match g.finish {
                        GenFinish::Stop => FinishReason::Stop,
                        GenFinish::Length => FinishReason::Length,
                    },
                    reward,
                    rewards,
                    weight_version: version,
                    generation_s: 0.0,
                });
            }
        }
        for r in out.iter_mut() {
            let lp = behaviour_logprobs(model, std::slice::from_ref(r), s.temperature)?;
            r.behaviour_logprobs = lp[0].clone();
            r.processed_logprobs = lp[0].clone(); // filters off in the reference path's accounting
        }
        let secs = started.elapsed().as_secs_f64();
        out.iter_mut().for_each(|r| r.generation_s = secs);
        Ok(out)
    }
}

/// `log_softmax(forward / temperature)` at each rollout's completion tokens.
pub fn behaviour_logprobs(
    model: &Model,
    rollouts: &[Rollout],
    temperature: f64,
) -> Result<Vec<Vec<f32>>> {
    let zeros = vec![0f32; rollouts.len()];
    let b = collate(rollouts, &zeros, None, false, model.device())?;
    let hidden = model.forward_hidden(&b.input_ids, None)?.detach(); // (B, T, H)
    per_rollout(
        &token_logps_fused(model, &hidden, &b.targets, temperature)?,
        rollouts,
    )
}
