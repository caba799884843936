//! Generation for `generate` and `code` tasks: KV-cache decoding with stop strings.
//!
//! Key decision: lm-eval's `generate_until` stops on *strings* (e.g. `"\ndef "`), which
//! the core's `smelt::generate` (stop ids only) cannot express, so this is a small
//! loop over the core's [`Decoder`] (the fast CPU decode session, or the model's decode
//! path on other devices) that re-decodes the new tokens after each step and cuts
//! at the earliest stop string. Sampling reuses the core's `filtered_probs`
//! (temperature, top-p) with a per-sample seed, so every sample is reproducible.

use crate::error::Result;
use rand::{rngs::StdRng, Rng, SeedableRng};
use smelt::generate::{argmax, filtered_probs, Decoder, GenerationConfig};
use smelt::tokenizer::Tokenizer;
use smelt::Model;

/// How to generate one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOptions {
    /// Maximum new tokens.
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// Nucleus mass (1 = off).
    pub top_p: f64,
    /// RNG seed of this sample.
    pub seed: u64,
    /// Stop after any of these token ids (EOS, end of turn); the id is not part of the text.
    pub stop_ids: Vec<u32>,
    /// Cut the text before the first of these strings.
    pub stop_strings: Vec<String>,
}

/// Generates a completion of `prompt` (token ids) and returns its text.
pub fn generate_text(
    model: &Model,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenOptions,
) -> Result<String> {
    if opts.max_new_tokens == 0 {
        return Ok(String::new());
    }
    let mut decoder = Decoder::new(model, 1, prompt.len() + opts.max_new_tokens)?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let sampling = GenerationConfig {
        temperature: opts.temperature,
        top_p: opts.top_p,
        ..Default::default()
    };
    let mut new = Vec::new();
    let mut last = decoder.extend(prompt, prompt.len())?; // (V,): the last position
    for step in 0..opts.max_new_tokens {
        let next = if opts.temperature == 0.0 {
            argmax(last)
        } else {
            let probs = filtered_probs(last, &sampling);
            let u: f64 = rng.random();
            let mut acc = 0.0;
            probs
                .iter()
                .find(|&&(_, p)| {
                    acc += p;
                    u < acc
                })
                .or(probs.last())
                .map(|&(id, _)| id)
                .unwrap_or(0)
        };
        if opts.stop_ids.contains(&next) {
            break;
        }
        new.push(next);
        if !opts.stop_strings.is_empty() {
            let text = tokenizer.decode(&new, true)?;
            if let Some(cut) = earliest_stop(&text, &opts.stop_strings) {
                return Ok(text[..cut].to_string());
            }
        }
        if step + 1 < opts.max_new_tokens {
            last = decoder.extend(&[next], 1)?;
        }
    }
    let text = tokenizer.decode(&new, true)?;
    let cut = earliest_stop(&text, &opts.stop_strings).unwrap_or(text.len());
    Ok(text[..cut].to_string())
}

/// Byte offset of the earliest occurrence of any stop string.
pub fn earliest_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}
