//! Generation for `generate` and `code` tasks: KV-cache decoding with stop strings.
//!
//! Key decision: lm-eval's `generate_until` stops on *strings* (e.g. `"\ndef "`), which
//! the core's `smelt::generate` (stop ids only) cannot express, so this is a small
//! loop over the core's [`Decoder`] (the fast CPU decode session, or the model's decode
//! path on other devices) that re-decodes the new tokens after each step and cuts
//! at the earliest stop string. Sampling reuses the core's `filtered_probs`
//! (temperature, top-p) with a per-sample seed, so every sample is reproducible.
//! [`generate_texts`] runs many samples together in a `DecodeSession`'s slots (what
//! the runner does, a chunk of docs at a time) with the same per-token rule, and gives
//! each sample exactly the text [`generate_text`] gives it alone.

use crate::error::Result;
use rand::{rngs::StdRng, Rng, SeedableRng};
use smelt::generate::{argmax, filtered_probs, Decoder, GenerationConfig};
use smelt::tokenizer::Tokenizer;
use smelt::DecodeSession;
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

/// One sample to generate: the prompt's token ids and how to generate.
pub type GenJob = (Vec<u32>, GenOptions);

/// Completions decoded together at most (the session's slots). At ≤ 16 rows every
/// decode step runs the skinny GEMM, whose result for a row does not depend on the
/// other rows, so a batched completion equals the one generated alone bit for bit.
const MAX_SLOTS: usize = 16;

/// Generates a completion of `prompt` (token ids) and returns its text.
pub fn generate_text(
    model: &Model,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenOptions,
) -> Result<String> {
    let mut c = Completion::new(opts);
    if opts.max_new_tokens == 0 {
        return Ok(String::new());
    }
    let mut decoder = Decoder::new(model, 1, prompt.len() + opts.max_new_tokens)?;
    let mut logits = decoder.extend(prompt, prompt.len())?; // (V,): the last position
    loop {
        if let Some(text) = c.step(logits, tokenizer)? {
            return Ok(text);
        }
        logits = decoder.extend(&[c.last()], 1)?;
    }
}

/// [`generate_text`] for many `(prompt, options)` jobs, decoded together in the slots of
/// one `DecodeSession` (continuous batching; a prompt equal to the previous job's is
/// prefilled once). Each result equals `generate_text`'s for that job. Falls back to
/// one job at a time where the model has no session (not on the CPU).
pub fn generate_texts(
    model: &Model,
    tokenizer: &Tokenizer,
    jobs: &[GenJob],
) -> Result<Vec<String>> {
    let capacity = jobs
        .iter()
        .map(|(p, o)| p.len() + o.max_new_tokens)
        .max()
        .unwrap_or(0);
    let slots = jobs.len().clamp(1, MAX_SLOTS);
    let Ok(mut session) = DecodeSession::new(model, slots, capacity.max(1)) else {
        return jobs
            .iter()
            .map(|(prompt, opts)| generate_text(model, tokenizer, prompt, opts))
            .collect();
    };
    let vocab = model.config().vocab_size;
    let mut out: Vec<Option<String>> = vec![None; jobs.len()];
    let mut queue = 0..jobs.len();
    let mut live: Vec<Option<(usize, Completion<'_>)>> = (0..slots).map(|_| None).collect();
    loop {
        // admit: a free slot takes the next job (a repeated prompt reuses its prefill:
        // `DecodeSession::prefill_row`)
        let mut slot = 0;
        while slot < slots {
            if live[slot].is_some() {
                slot += 1;
                continue;
            }
            let Some(j) = queue.next() else { break };
            let (prompt, opts) = &jobs[j];
            if opts.max_new_tokens == 0 {
                out[j] = Some(String::new());
                continue;
            }
            let logits = session.prefill_row(slot, prompt)?;
            let mut c = Completion::new(opts);
            match c.step(logits, tokenizer)? {
                Some(text) => out[j] = Some(text), // the slot stays free
                None => {
                    live[slot] = Some((j, c));
                    slot += 1;
                }
            }
        }
        let rows: Vec<usize> = (0..slots).filter(|&s| live[s].is_some()).collect();
        if rows.is_empty() {
            break;
        }
        let inputs: Vec<u32> = rows
            .iter()
            .filter_map(|&s| live[s].as_ref().map(|(_, c)| c.last()))
            .collect();
        let logits = session.extend_rows(&rows, &inputs, 1)?; // (rows, V)
        for (i, &s) in rows.iter().enumerate() {
            let Some((j, c)) = live[s].as_mut() else {
                continue;
            };
            if let Some(text) = c.step(&logits[i * vocab..(i + 1) * vocab], tokenizer)? {
                out[*j] = Some(text);
                live[s] = None;
            }
        }
    }
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}

/// One completion in progress: the per-token rule every generation here follows.
struct Completion<'a> {
    opts: &'a GenOptions,
    rng: StdRng,
    sampling: GenerationConfig,
    /// Tokens chosen so far (stop ids excluded).
    new: Vec<u32>,
}

impl<'a> Completion<'a> {
    fn new(opts: &'a GenOptions) -> Self {
        Completion {
            opts,
            rng: StdRng::seed_from_u64(opts.seed),
            sampling: GenerationConfig {
                temperature: opts.temperature,
                top_p: opts.top_p,
                ..Default::default()
            },
            new: Vec::new(),
        }
    }

    /// The token to feed next (the last one chosen).
    fn last(&self) -> u32 {
        self.new.last().copied().unwrap_or(0)
    }

    /// Chooses the next token from `logits` `(V,)`; returns the finished text, or
    /// `None` when generation goes on (feed [`Completion::last`]).
    fn step(&mut self, logits: &[f32], tokenizer: &Tokenizer) -> Result<Option<String>> {
        let next = if self.opts.temperature == 0.0 {
            argmax(logits)
        } else {
            let probs = filtered_probs(logits, &self.sampling);
            let u: f64 = self.rng.random();
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
        if self.opts.stop_ids.contains(&next) {
            return self.finish(tokenizer).map(Some);
        }
        self.new.push(next);
        if !self.opts.stop_strings.is_empty() {
            let text = tokenizer.decode(&self.new, true)?;
            if let Some(cut) = earliest_stop(&text, &self.opts.stop_strings) {
                return Ok(Some(text[..cut].to_string()));
            }
        }
        if self.new.len() >= self.opts.max_new_tokens {
            return self.finish(tokenizer).map(Some);
        }
        Ok(None)
    }

    /// The text of the tokens so far, cut before the earliest stop string.
    fn finish(&self, tokenizer: &Tokenizer) -> Result<String> {
        let text = tokenizer.decode(&self.new, true)?;
        let cut = earliest_stop(&text, &self.opts.stop_strings).unwrap_or(text.len());
        Ok(text[..cut].to_string())
    }
}

/// Byte offset of the earliest occurrence of any stop string.
pub fn earliest_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use smelt::{ModelConfig, ModelType};

    /// A 64-token character vocabulary (`<eos>` = 0).
    fn char_tokenizer() -> Tokenizer {
        Tokenizer::char_level("abcdefghijklmnopqrstuvwxyz0123456789 .,!?+-*/=ABCDEFGHIJKLMNOPQ")
            .unwrap()
    }

    #[test]
    fn batched_texts_equal_one_at_a_time() {
        let model =
            Model::new_random(ModelConfig::tiny(ModelType::Llama, 64), &Device::Cpu, 3).unwrap();
        let tok = char_tokenizer();
        let mut jobs = Vec::new();
        for i in 0..21u32 {
            // groups of three samples share a prompt, as a task with `samples = 3`
            let prompt: Vec<u32> = (0..(3 + i / 3 * 2))
                .map(|j| (i / 3 * 7 + j * 5) % 63 + 1)
                .collect();
            jobs.push((
                prompt,
                GenOptions {
                    max_new_tokens: [5, 9, 0, 12][i as usize % 4],
                    temperature: if i % 2 == 0 { 0.0 } else { 1.0 },
                    top_p: 0.9,
                    seed: 100 + i as u64,
                    stop_ids: vec![0],
                    stop_strings: if i % 5 == 0 { vec!["e".into()] } else { vec![] },
                },
            ));
        }
        let batched = generate_texts(&model, &tok, &jobs).unwrap();
        let alone: Vec<String> = jobs
            .iter()
            .map(|(p, o)| generate_text(&model, &tok, p, o).unwrap())
            .collect();
        assert_eq!(batched, alone);
        assert!(
            batched.iter().any(|t| t.len() >= 5),
            "some completions have text"
        );
        assert!(generate_texts(&model, &tok, &[(vec![], jobs[0].1.clone())]).is_err());
    }
}
