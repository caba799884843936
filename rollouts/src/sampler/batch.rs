//! Continuous batching: the running rows, their KV cache, and the prefill / step /
//! retire loop, on one of two engines:
//!
//! - **a `DecodeSession`** (CPU, f32 weights: the fast path). Every row is a slot with
//!   its own length: a request is prefilled into a free slot alone (a prompt repeated
//!   back to back is prefilled once and its slot copied), each step extends every live
//!   slot, a finished row frees its slot for the next queued request. No padding.
//! - **the model's candle-op decode path** (other devices): one left-padded shared
//!   `KvCache`. Invariant: the cache holds `cache.len()` slots per row; row `r` has
//!   `row.len` real slots at the end, so its left padding is `cache.len() - row.len`.
//!
//! On both, each row carries its last drawn token (the end of `history`), not yet in
//! the cache.

use super::processors::{choose, Choice};
use super::{request_seed, Completion, Engine, Request, Sampler};
use crate::rollout::FinishReason;
use candle_core::Tensor;
use rand::{rngs::StdRng, SeedableRng};
use smelt::{DecodeSession, KvCache, Result};

/// One live sequence.
struct Row {
    /// Index of its request in the caller's list.
    index: usize,
    request: Request,
    rng: StdRng,
    /// Prompt then generated ids (the repetition penalty's history).
    history: Vec<u32>,
    generated: Vec<u32>,
    behaviour: Vec<f32>,
    processed: Vec<f32>,
    /// Real slots of this row in the cache.
    len: usize,
}

impl Row {
    /// Records a drawn token; returns the completion when the row is finished.
    fn push(&mut self, sampler: &Sampler, c: Choice) -> Result<Option<Completion>> {
        self.generated.push(c.token);
        self.history.push(c.token);
        self.behaviour.push(c.behaviour_logprob);
        self.processed.push(c.processed_logprob);
        let p = &self.request.params;
        let stop_id = p.stop_token_ids.contains(&c.token);
        let mut text = None;
        let mut finish = None;
        if stop_id {
            finish = Some(FinishReason::Stop);
        } else if !p.stop_strings.is_empty() {
            let full = sampler.tokenizer.decode(&self.generated, true)?;
            let cut = p
                .stop_strings
                .iter()
                .filter_map(|s| full.find(s.as_str()))
                .min();
            if let Some(at) = cut {
                text = Some(full[..at].to_string());
                finish = Some(FinishReason::Stop);
            }
        }
        if finish.is_none() && self.generated.len() >= p.max_new_tokens {
            finish = Some(FinishReason::Length);
        }
        let Some(finish) = finish else {
            return Ok(None);
        };
        let text = match text {
            Some(t) => t,
            None => sampler.tokenizer.decode(&self.generated, true)?,
        };
        Ok(Some(Completion {
            id: self.request.id,
            token_ids: std::mem::take(&mut self.generated),
            text,
            finish,
            behaviour_logprobs: std::mem::take(&mut self.behaviour),
            processed_logprobs: std::mem::take(&mut self.processed),
        }))
    }
}

impl Row {
    fn new(index: usize, request: Request) -> Row {
        Row {
            index,
            rng: StdRng::seed_from_u64(request_seed(request.params.seed, request.id)),
            history: request.prompt_ids.clone(),
            generated: Vec::new(),
            behaviour: Vec::new(),
            processed: Vec::new(),
            len: request.prompt_ids.len(),
            request,
        }
    }
}

/// Runs every request to completion with at most `sampler.max_batch` rows live: on a
/// [`DecodeSession`] where the model allows one, else on the model's decode path.
pub(super) fn run(sampler: &Sampler, requests: Vec<Request>) -> Result<Vec<Completion>> {
    let slots = sampler.max_batch.min(requests.len()).max(1);
    let capacity = requests
        .iter()
        .map(|r| r.prompt_ids.len() + r.params.max_new_tokens)
        .max()
        .unwrap_or(1);
    if sampler.engine == Engine::CandleOps {
        return run_on_model(sampler, requests);
    }
    match DecodeSession::new(&sampler.model, slots, capacity) {
        Ok(session) => run_in_session(sampler, requests, session),
        Err(_) => run_on_model(sampler, requests),
    }
}

/// The session engine (see the module doc).
fn run_in_session(
    sampler: &Sampler,
    requests: Vec<Request>,
    mut session: DecodeSession<'_>,
) -> Result<Vec<Completion>> {
    let vocab = sampler.model.config().vocab_size;
    let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
    let mut queue = requests.into_iter().enumerate();
    let mut slots: Vec<Option<Row>> = (0..session.batch()).map(|_| None).collect();
    loop {
        // Admit queued requests into free slots (a prompt equal to the previous one, a
        // GRPO group, reuses its prefill: `DecodeSession::prefill_row`).
        let mut slot = 0;
        while slot < slots.len() {
            if slots[slot].is_some() {
                slot += 1;
                continue;
            }
            let Some((index, request)) = queue.next() else {
                break;
            };
            let logits = session.prefill_row(slot, &request.prompt_ids)?;
            let mut row = Row::new(index, request);
            let c = choose(logits, &row.history, &row.request.params, &mut row.rng);
            match row.push(sampler, c)? {
                // finished at once: the slot stays free for the next request
                Some(completion) => done[index] = Some(completion),
                None => {
                    slots[slot] = Some(row);
                    slot += 1;
                }
            }
        }
        let live: Vec<usize> = (0..slots.len()).filter(|&s| slots[s].is_some()).collect();
        if live.is_empty() {
            break; // nothing live, so nothing was left to admit
        }

        // One decode step for every live row.
        let inputs: Vec<u32> = live
            .iter()
            .map(|&s| {
                slots[s]
                    .as_ref()
                    .and_then(|r| r.history.last().copied())
                    .unwrap_or(0)
            })
            .collect();
        let logits = session.extend_rows(&live, &inputs, 1)?; // (live, V)
        for (i, &s) in live.iter().enumerate() {
            let Some(row) = slots[s].as_mut() else {
                continue;
            };
            row.len += 1;
            let row_logits = &logits[i * vocab..(i + 1) * vocab];
            let choice = choose(row_logits, &row.history, &row.request.params, &mut row.rng);
            if let Some(completion) = row.push(sampler, choice)? {
                done[row.index] = Some(completion);
                slots[s] = None;
            }
        }
    }
    Ok(done.into_iter().flatten().collect())
}

/// The candle-op engine with a left-padded shared cache (see the module doc).
fn run_on_model(sampler: &Sampler, requests: Vec<Request>) -> Result<Vec<Completion>> {
    let model = &sampler.model;
    let device = model.device();
    let num_layers = model.config().num_hidden_layers;
    let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
    let mut queue = requests.into_iter().enumerate();
    let mut rows: Vec<Row> = Vec::new();
    let mut cache: Option<KvCache> = None;
    loop {
        // Admit queued requests: prefill each distinct prompt once (a GRPO group's
        // requests repeat one prompt back to back and share its prefill), draw each
        // row's first token with its own RNG, join left-padded.
        let mut prefilled: Vec<KvCache> = Vec::new();
        let mut joined: Vec<usize> = Vec::new(); // per joined row: its prefill in `prefilled`
        let mut memo: Option<(Vec<u32>, Vec<f32>, usize)> = None; // last prompt, logits, prefill
        while rows.len() < sampler.max_batch {
            let Some((index, request)) = queue.next() else {
                break;
            };
            let (last, own) = match &memo {
                Some((prompt, last, own)) if *prompt == request.prompt_ids => (last.clone(), *own),
                _ => {
                    let mut own = KvCache::with_capacity(
                        num_layers,
                        request.prompt_ids.len() + request.params.max_new_tokens,
                    );
                    let input = Tensor::new(request.prompt_ids.as_slice(), device)?.unsqueeze(0)?; // (1, T)
                                                                                                   // logits of the last prompt position only, (V,)
                    let last: Vec<f32> =
                        model.decode_last(&input, &mut own)?.squeeze(0)?.to_vec1()?;
                    prefilled.push(own);
                    let at = prefilled.len() - 1;
                    memo = Some((request.prompt_ids.clone(), last.clone(), at));
                    (last, at)
                }
            };
            let mut row = Row::new(index, request);
            let c = choose(&last, &row.history, &row.request.params, &mut row.rng);
            match row.push(sampler, c)? {
                Some(completion) => done[index] = Some(completion),
                None => {
                    rows.push(row);
                    joined.push(own);
                }
            }
        }
        if !joined.is_empty() {
            // `cat_left_padded` copies into a fresh buffer, so rows sharing a prefill
            // never write into each other's slots
            let mut parts: Vec<&KvCache> = cache.iter().collect();
            parts.extend(joined.iter().map(|&i| &prefilled[i]));
            cache = Some(KvCache::cat_left_padded(&parts)?);
        }
        let Some(c) = cache.as_mut() else {
            break; // nothing live and nothing queued
        };

        // One decode step for every live row.
        let inputs: Vec<u32> = rows
            .iter()
            .map(|r| *r.history.last().unwrap_or(&0))
            .collect();
        let pads: Vec<usize> = rows.iter().map(|r| c.len() - r.len).collect();
        let input = Tensor::new(inputs.as_slice(), device)?.unsqueeze(1)?; // (B, 1)
        let logits = model.decode_left_padded_last(&input, &pads, c)?; // (B, V)
        let logits: Vec<Vec<f32>> = logits.to_vec2()?; // (B, V)
        let mut keep = Vec::with_capacity(rows.len());
        for (i, (row, row_logits)) in rows.iter_mut().zip(&logits).enumerate() {
            row.len += 1;
            let choice = choose(row_logits, &row.history, &row.request.params, &mut row.rng);
            match row.push(sampler, choice)? {
                Some(completion) => done[row.index] = Some(completion),
                None => keep.push(i),
            }
        }

        // Retire finished rows and trim the padding every remaining row shares.
        if keep.len() < rows.len() {
            if keep.is_empty() {
                cache = None;
                rows.clear();
                continue;
            }
            let mut kept = c.select_rows(&keep)?;
            let mut i = 0;
            rows.retain(|_| {
                i += 1;
                keep.contains(&(i - 1))
            });
            let shared_pad = rows.iter().map(|r| kept.len() - r.len).min().unwrap_or(0);
            kept.drop_front(shared_pad)?;
            cache = Some(kept);
        }
    }
    Ok(done.into_iter().flatten().collect())
}
