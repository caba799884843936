//! Plain single-sequence generation with the KV cache: greedy or sampled.
//!
//! This is the generation the CLI and tests use. It prefills the prompt in one call,
//! then feeds one token at a time. Sampling applies temperature, then top-k, then
//! top-p (nucleus) to the distribution, with a seeded RNG so a generation is
//! reproducible. The KV cache is allocated once for prompt + `max_new_tokens`, and
//! only the last position's logits are computed. Steps run through [`Decoder`]: the
//! fast [`DecodeSession`] on the CPU, the model's candle-op decode path elsewhere.
//! The batched, continuously-batched sampler that also returns behaviour
//! log-probabilities for RL lives in `smelt-rollouts`.

use crate::error::{Error, Result};
use crate::model::{DecodeSession, KvCache, Model};
use candle_core::{DType, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f64,
    /// Keep the smallest set of tokens whose probability mass reaches `top_p` (1 = off).
    pub top_p: f64,
    /// Keep only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// RNG seed for sampling.
    pub seed: u64,
    /// Generation stops after emitting any of these ids (e.g. EOS / end-of-turn).
    pub stop_ids: Vec<u32>,
}

impl Default for GenerationConfig {
    /// Greedy, 64 new tokens, no stop ids (transformers' `generate` defaults are per model).
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            stop_ids: vec![],
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop id was produced (it is included in the tokens).
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

/// The generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// New token ids (including the stop id when `finish == Stop`).
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub finish: FinishReason,
}

/// Next-token logits for a fixed batch of rows: a [`DecodeSession`] where the model
/// allows one (CPU, f32 parameters), else the model's candle-op decode path with a
/// [`KvCache`] (any device). Both give the same logits to float rounding.
#[derive(Debug)]
pub enum Decoder<'m> {
    /// The fast CPU path.
    Session(Box<DecodeSession<'m>>),
    /// The candle-op path: the model, its cache, the rows and the last logits `(B, V)`.
    Model {
        /// The model decoded.
        model: &'m Model,
        /// Its cache.
        cache: KvCache,
        /// Rows per call.
        batch: usize,
        /// The last call's logits, `(B, V)` row-major.
        logits: Vec<f32>,
    },
}

impl<'m> Decoder<'m> {
    /// A decoder for `batch` rows of up to `capacity` tokens (prompt + new tokens).
    pub fn new(model: &'m Model, batch: usize, capacity: usize) -> Result<Self> {
        match DecodeSession::new(model, batch, capacity) {
            Ok(session) => Ok(Decoder::Session(Box::new(session))),
            Err(_) if batch > 0 => Ok(Decoder::Model {
                model,
                cache: KvCache::with_capacity(model.config().num_hidden_layers, capacity),
                batch,
                logits: Vec::new(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Appends `ids` `(B, t_new)` row-major; returns each row's logits at its last new
    /// position, `(B, V)` row-major.
    pub fn extend(&mut self, ids: &[u32], t_new: usize) -> Result<&[f32]> {
        match self {
            Decoder::Session(session) => session.extend(ids, t_new),
            Decoder::Model {
                model,
                cache,
                batch,
                logits,
            } => {
                if t_new == 0 || ids.len() != *batch * t_new {
                    return Err(Error::Invalid(format!(
                        "Decoder::extend: {} ids for {batch} rows × {t_new} tokens",
                        ids.len()
                    )));
                }
                let input = Tensor::from_vec(ids.to_vec(), (*batch, t_new), model.device())?;
                let last = model.decode_last(&input, cache)?; // (B, V)
                *logits = last.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                Ok(logits)
            }
        }
    }
}

/// Index of the largest value (the first of equals, as `torch.argmax`).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates a continuation of `prompt` (token ids), calling `on_token` for each new
/// token as soon as it is chosen (for streaming).
pub fn generate(
    model: &Model,
    prompt: &[u32],
    config: &GenerationConfig,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::Invalid("generate: the prompt has no tokens".into()));
    }
    validate(config)?;
    if config.max_new_tokens == 0 {
        return Ok(Generation {
            tokens: vec![],
            finish: FinishReason::Length,
        });
    }
    // sized for the whole generation: the cache never re-allocates
    let mut decoder = Decoder::new(model, 1, prompt.len() + config.max_new_tokens)?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut tokens = Vec::new();
    let mut last = decoder.extend(prompt, prompt.len())?; // (V,): the last position only
    loop {
        let next = pick(last, config, &mut rng);
        tokens.push(next);
        on_token(next)?;
        if config.stop_ids.contains(&next) {
            return Ok(Generation {
                tokens,
                finish: FinishReason::Stop,
            });
        }
        if tokens.len() >= config.max_new_tokens {
            return Ok(Generation {
                tokens,
                finish: FinishReason::Length,
            });
        }
        last = decoder.extend(&[next], 1)?;
    }
}

fn validate(config: &GenerationConfig) -> Result<()> {
    if !(config.temperature >= 0.0 && config.temperature.is_finite()) {
        return Err(Error::Invalid(format!(
            "temperature must be >= 0, got {}",
            config.temperature
        )));
    }
    if !(config.top_p > 0.0 && config.top_p <= 1.0) {
        return Err(Error::Invalid(format!(
            "top_p must be in (0, 1], got {}",
            config.top_p
        )));
    }
    Ok(())
}

/// Chooses the next token from logits `(V,)`.
fn pick(logits: &[f32], config: &GenerationConfig, rng: &mut StdRng) -> u32 {
    if config.temperature == 0.0 {
        return argmax(logits);
    }
    let probs = filtered_probs(logits, config);
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for &(id, p) in &probs {
        acc += p;
        if u < acc {
            return id;
        }
    }
    probs.last().map(|&(id, _)| id).unwrap_or(0)
}

/// Temperature, top-k and top-p applied: `(id, prob)` sorted by descending prob, summing to 1.
pub fn filtered_probs(logits: &[f32], config: &GenerationConfig) -> Vec<(u32, f64)> {
    let t = config.temperature.max(1e-6);
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) / t).exp()))
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    if config.top_k > 0 {
        probs.truncate(config.top_k);
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    if config.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                acc += p.1;
                acc >= config.top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
    }
    probs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_and_top_p_keep_the_right_tokens() {
        // probs ∝ e^l: with l = ln(0.5), ln(0.3), ln(0.15), ln(0.05)
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let cfg = GenerationConfig {
            temperature: 1.0,
            ..Default::default()
        };
        let all = filtered_probs(&logits, &cfg);
        assert_eq!(all.len(), 4);
        assert!((all[0].1 - 0.5).abs() < 1e-6);
        let k2 = filtered_probs(
            &logits,
            &GenerationConfig {
                top_k: 2,
                ..cfg.clone()
            },
        );
        assert_eq!(k2.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!((k2[0].1 - 0.625).abs() < 1e-6); // 0.5 / 0.8
        let p = filtered_probs(
            &logits,
            &GenerationConfig {
                top_p: 0.8,
                ..cfg.clone()
            },
        );
        assert_eq!(p.len(), 2); // 0.5 + 0.3 reaches 0.8
        let p = filtered_probs(&logits, &GenerationConfig { top_p: 0.81, ..cfg });
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(validate(&GenerationConfig {
            top_p: 0.0,
            ..Default::default()
        })
        .is_err());
        assert!(validate(&GenerationConfig {
            temperature: -1.0,
            ..Default::default()
        })
        .is_err());
    }
}
