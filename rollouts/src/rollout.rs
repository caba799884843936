//! `Rollout`: one sampled completion with everything a policy-gradient trainer needs.
//!
//! This is the contract between the generator (sampler, rollout service, rewards) and
//! the trainer (GRPO). Behaviour log-probabilities are those of the sampled tokens
//! under the *unprocessed* distribution (`log_softmax(logits / temperature)`), never
//! the top-k/top-p renormalised one, so importance ratios are not biased by the
//! sampling filters.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token id or stop string was produced.
    Stop,
    /// `max_new_tokens` was reached (a truncated completion).
    Length,
}

/// One sampled completion of one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Index of the prompt in its dataset; the GRPO group key.
    pub prompt_index: u64,
    /// Which of the prompt's `num_generations` samples this is.
    pub sample_index: u32,
    /// Prompt token ids (chat template applied).
    pub prompt_ids: Vec<u32>,
    /// Completion token ids (including the stop token when `finish == Stop`).
    pub completion_ids: Vec<u32>,
    /// Completion text (decoded, special tokens skipped).
    pub completion_text: String,
    /// Per completion token: log-prob under `log_softmax(logits / temperature)`.
    pub behaviour_logprobs: Vec<f32>,
    /// Per completion token: log-prob under the processed (top-k/top-p/min-p) distribution.
    pub processed_logprobs: Vec<f32>,
    /// Why the completion ended.
    pub finish: FinishReason,
    /// Weighted total reward (rewards returning `None` are left out of the sum).
    pub reward: f32,
    /// Each reward function's value, `None` where it did not apply or failed.
    pub rewards: BTreeMap<String, Option<f32>>,
    /// Version of the weights that generated it (the trainer's optimizer step).
    pub weight_version: u64,
    /// Seconds spent generating the batch this rollout came from.
    pub generation_s: f64,
}
