//! The batched, continuously-batched sampler: prompts in, completions with behaviour
//! log-probabilities out.
//!
//! Key decisions:
//! - **Two engines, one behaviour** ([`Engine`]). On the CPU (f32 weights) rows
//!   decode in a `smelt::DecodeSession`: each row is a KV slot with its own length; a
//!   request is prefilled into a free slot alone, a prompt equal to the previous one
//!   (a GRPO group's) copies that slot instead of recomputing it, every step extends
//!   all live slots at their own positions (no padding), and a finished row frees its
//!   slot for the next queued request (continuous batching). Elsewhere the model's
//!   candle-op path runs it with a **left-padded shared KV cache**: each request is
//!   prefilled alone (`Model::decode` on its own cache), then joins the running batch
//!   by left-padding (`KvCache::cat_left_padded`); every step decodes one token for
//!   every row with `Model::decode_left_padded`, which masks each row's padding and
//!   numbers positions from the row's first real token; finished rows leave
//!   (`KvCache::select_rows`) and padding every row shares is trimmed. Both
//!   preallocate prompt + `max_new_tokens`, compute only the last position's logits
//!   and read each row's `(V,)` logits once.
//! - **Per-request RNG** seeded from `(params.seed, request id)`, one draw per token,
//!   and host-side filtering one row at a time ([`processors`]): a request's output does
//!   not depend on which other requests share its batch (up to float rounding of the
//!   batched matmuls, far below what changes a draw in practice).
//! - **Stop strings as vLLM**: checked on the decoded completion after every token; the
//!   returned `text` is cut *before* the stop string, `token_ids` keep every generated
//!   token (including those that spelled the stop string). A stop *id* is kept in
//!   `token_ids` and dropped from `text` when it is a special token.

mod batch;
pub mod processors;

use crate::rollout::FinishReason;
use serde::{Deserialize, Serialize};
use smelt::tokenizer::Tokenizer;
use smelt::{Error, Model, Result};

/// How to sample one request. Defaults follow vLLM's `SamplingParams` and TRL's
/// `GRPOConfig` (pure sampling at T = 1, no filters, no penalty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature; 0 = greedy (argmax). Default 1.0 (vLLM, TRL).
    pub temperature: f64,
    /// Keep the `top_k` most likely tokens; 0 = off. Default 0 (vLLM; TRL's `None`).
    pub top_k: usize,
    /// Nucleus: keep the smallest set whose mass reaches `top_p`, in (0, 1]; 1 = off. Default 1.0.
    pub top_p: f64,
    /// Keep tokens with prob ≥ `min_p` × the top prob, in [0, 1]; 0 = off. Default 0.0.
    pub min_p: f64,
    /// CTRL repetition penalty over prompt and completion tokens, > 0; 1 = off. Default 1.0.
    pub repetition_penalty: f64,
    /// Most tokens to generate, ≥ 1. Default 256 (TRL's `max_completion_length`).
    pub max_new_tokens: usize,
    /// Stop after emitting any of these ids (kept in `token_ids`). Default none: pass the
    /// EOS / end-of-turn id explicitly.
    pub stop_token_ids: Vec<u32>,
    /// Stop when the decoded completion contains any of these (text cut before it). Default none.
    pub stop_strings: Vec<String>,
    /// Base seed; each request's RNG is seeded from `(seed, request id)`. Default 0.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            max_new_tokens: 256,
            stop_token_ids: vec![],
            stop_strings: vec![],
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with otherwise default settings.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Checks every field's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, want: &str, got: String| {
            Err(Error::Invalid(format!(
                "sampling params: `{field}` must be {want}, got {got}"
            )))
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", ">= 0", self.temperature.to_string());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "in (0, 1]", self.top_p.to_string());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "in [0, 1]", self.min_p.to_string());
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(
                "repetition_penalty",
                "> 0",
                self.repetition_penalty.to_string(),
            );
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens", ">= 1", "0".into());
        }
        if self.stop_strings.iter().any(|s| s.is_empty()) {
            return bad("stop_strings", "non-empty strings", "\"\"".into());
        }
        Ok(())
    }
}

/// One prompt to complete.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Caller's id; also seeds the request's RNG (give each sample its own id).
    pub id: u64,
    /// Prompt token ids (chat template already applied), non-empty.
    pub prompt_ids: Vec<u32>,
    /// How to sample it.
    pub params: SamplingParams,
}

/// One finished completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The request's id.
    pub id: u64,
    /// Generated ids (a stop id and the tokens of a stop string included).
    pub token_ids: Vec<u32>,
    /// Decoded completion, special tokens skipped, cut before a stop string.
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// Per token: `log_softmax(logits / T)` at the token (T = 1 when greedy).
    pub behaviour_logprobs: Vec<f32>,
    /// Per token: log-prob under the penalised and filtered distribution it was drawn
    /// from (0 when greedy).
    pub processed_logprobs: Vec<f32>,
}

/// Batched generation over one model. Cheap to build; holds handles to the model's
/// weights (so it sees in-place updates of them: snapshot the model to pin a version).
#[derive(Debug, Clone)]
pub struct Sampler {
    model: Model,
    tokenizer: Tokenizer,
    max_batch: usize,
    engine: Engine,
}

/// Which decode path a [`Sampler`] runs (the same completions to float rounding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// A `DecodeSession` where the model allows one (CPU, f32), else the candle ops.
    #[default]
    Auto,
    /// Always the model's candle-op decode path with a left-padded `KvCache`.
    CandleOps,
}

impl Sampler {
    /// A sampler decoding at most `max_batch` sequences at once (≥ 1).
    pub fn new(model: &Model, tokenizer: &Tokenizer, max_batch: usize) -> Result<Self> {
        if max_batch == 0 {
            return Err(Error::Invalid("Sampler: max_batch must be >= 1".into()));
        }
        Ok(Sampler {
            model: model.clone(),
            tokenizer: tokenizer.clone(),
            max_batch,
            engine: Engine::Auto,
        })
    }

    /// The same sampler on decode path `engine` (default [`Engine::Auto`]).
    pub fn with_engine(mut self, engine: Engine) -> Self {
        self.engine = engine;
        self
    }

    /// The model it samples from.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer that decodes completions.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Completes every request; the result is in request order. Requests join the
    /// batch in order as earlier ones finish.
    pub fn generate(&self, requests: Vec<Request>) -> Result<Vec<Completion>> {
        let vocab = self.model.config().vocab_size as u32;
        for r in &requests {
            r.params
                .validate()
                .map_err(|e| Error::Invalid(format!("request {}: {e}", r.id)))?;
            if r.prompt_ids.is_empty() {
                return Err(Error::Invalid(format!("request {}: empty prompt", r.id)));
            }
            if let Some(t) = r.prompt_ids.iter().find(|&&t| t >= vocab) {
                return Err(Error::Invalid(format!(
                    "request {}: prompt token {t} out of range for vocab_size {vocab}",
                    r.id
                )));
            }
        }
        batch::run(self, requests)
    }
}

/// Seed of a request's RNG: `(seed, id)` mixed by splitmix64 so nearby ids give
/// unrelated streams.
pub fn request_seed(seed: u64, id: u64) -> u64 {
    use smelt::rng::mix64;
    mix64(seed ^ mix64(id))
}
