//! Batched loglikelihood scoring: `log p(continuation | context)` for many requests
//! in few forward passes (lm-eval's `loglikelihood`).
//!
//! Key decision: requests are *packed* — several (context + continuation) sequences
//! share one row, each with `position_ids` restarting at 0, so the model's
//! document-masked `forward` scores them independently in one pass (no padding waste,
//! no attention across requests). Only the hidden states at continuation positions
//! go through `lm_head`, so the `(N, V)` logits are for predicted tokens only. Requests
//! are sorted longest first for packing and answers returned in input order.
//! Tokenisation follows lm-eval's `_encode_pair`: trailing spaces of the context move
//! to the continuation, the continuation's tokens are `encode(ctx + cont)` minus the
//! context's.

use crate::error::{EvalError, Result};
use candle_core::{DType, Tensor, D};
use smelt::tokenizer::Tokenizer;
use smelt::Model;

/// One scoring request in token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Conditioning tokens (at least one).
    pub context: Vec<u32>,
    /// Tokens whose loglikelihood is summed (at least one).
    pub continuation: Vec<u32>,
}

/// The score of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// `Σ log p(cont_t | ctx, cont_<t)` in nats.
    pub logprob: f64,
    /// Every continuation token is the argmax of its distribution (lm-eval's `is_greedy`).
    pub greedy: bool,
}

/// The token that conditions an empty context: BOS if the tokenizer has one, else EOS
/// (lm-eval's `prefix_token_id`).
pub fn prefix_token(tokenizer: &Tokenizer) -> Result<u32> {
    tokenizer
        .bos_token_id()
        .or(tokenizer.eos_token_id())
        .ok_or_else(|| {
            EvalError::Invalid(
                "tokenizer has neither BOS nor EOS to prefix an empty context".into(),
            )
        })
}

/// Tokenises a (context, continuation) pair as lm-eval's `_encode_pair`.
pub fn encode_pair(tokenizer: &Tokenizer, context: &str, continuation: &str) -> Result<Request> {
    let trimmed = context.trim_end_matches(' ');
    let moved = &context[trimmed.len()..];
    let continuation = format!("{moved}{continuation}");
    let whole = tokenizer.encode(&format!("{trimmed}{continuation}"), false)?;
    let mut ctx = tokenizer.encode(trimmed, false)?;
    let n_ctx = ctx.len().min(whole.len());
    let cont = whole[n_ctx..].to_vec();
    if ctx.is_empty() {
        ctx = vec![prefix_token(tokenizer)?];
    } else {
        ctx = whole[..n_ctx].to_vec();
    }
    if cont.is_empty() {
        return Err(EvalError::Invalid(format!(
            "continuation {continuation:?} has no tokens"
        )));
    }
    Ok(Request {
        context: ctx,
        continuation: cont,
    })
}

/// Scores `requests` with at most `max_length` tokens per sequence (contexts are
/// truncated on the left) and about `token_budget` tokens per forward pass.
pub fn score(
    model: &Model,
    requests: &[Request],
    max_length: usize,
    token_budget: usize,
) -> Result<Vec<Scored>> {
    // The model input of each request: (ctx ++ cont)[..-1], last `max_length` tokens.
    let mut inputs = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        if r.context.is_empty() || r.continuation.is_empty() {
            return Err(EvalError::Invalid(format!(
                "request {i}: empty context or continuation"
            )));
        }
        if r.continuation.len() > max_length {
            return Err(EvalError::Invalid(format!(
                "request {i}: continuation of {} tokens exceeds max_length {max_length}",
                r.continuation.len()
            )));
        }
        let mut full: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
        full.pop();
        let start = full.len().saturating_sub(max_length);
        inputs.push(full[start..].to_vec());
    }
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(inputs[i].len()), i));
    let mut out = vec![
        Scored {
            logprob: 0.0,
            greedy: false
        };
        requests.len()
    ];
    let row_len = order.first().map(|&i| inputs[i].len()).unwrap_or(0);
    // Rows filled first-fit in length order; a batch ends when rows × row_len exceeds the budget.
    let mut rows: Vec<Vec<usize>> = Vec::new();
    let mut fill: Vec<usize> = Vec::new();
    let max_rows = (token_budget / row_len.max(1)).max(1);
    for &i in &order {
        let len = inputs[i].len();
        match fill.iter().position(|&f| f + len <= row_len) {
            Some(r) => {
                rows[r].push(i);
                fill[r] += len;
            }
            None => {
                if rows.len() == max_rows {
                    run_rows(model, requests, &inputs, &rows, row_len, &mut out)?;
                    rows.clear();
                    fill.clear();
                }
                rows.push(vec![i]);
                fill.push(len);
            }
        }
    }
    if !rows.is_empty() {
        run_rows(model, requests, &inputs, &rows, row_len, &mut out)?;
    }
    Ok(out)
}

/// One forward pass over packed `rows` (each a list of request indices).
fn run_rows(
    model: &Model,
    requests: &[Request],
    inputs: &[Vec<u32>],
    rows: &[Vec<usize>],
    row_len: usize,
    out: &mut [Scored],
) -> Result<()> {
    let b = rows.len();
    let mut ids = vec![0u32; b * row_len];
    let mut pos = vec![0u32; b * row_len];
    let mut gather = Vec::new(); // flat (row, position) index of each predicted token
    let mut targets = Vec::new();
    let mut owner = Vec::new(); // request of each predicted token
    for (r, row) in rows.iter().enumerate() {
        let mut at = 0;
        for &i in row {
            let inp = &inputs[i];
            for (t, &tok) in inp.iter().enumerate() {
                ids[r * row_len + at + t] = tok;
                pos[r * row_len + at + t] = t as u32;
            }
            let cont = &requests[i].continuation;
            let first = inp.len() - cont.len(); // position predicting cont[0]
            for (k, &tok) in cont.iter().enumerate() {
                gather.push((r * row_len + at + first + k) as u32);
                targets.push(tok);
                owner.push(i);
            }
            at += inp.len();
        }
        // Padding after the last request is its own document (positions restart at 0).
        for (t, p) in pos[r * row_len + at..(r + 1) * row_len]
            .iter_mut()
            .enumerate()
        {
            *p = t as u32;
        }
    }
    let device = model.device();
    let ids = Tensor::from_vec(ids, (b, row_len), device)?; // (B, T)
    let pos = Tensor::from_vec(pos, (b, row_len), device)?; // (B, T)
    let hidden = model.forward_hidden(&ids, Some(&pos))?; // (B, T, H)
    let h = hidden.dim(2)?;
    let n = gather.len();
    let gather = Tensor::from_vec(gather, n, device)?;
    let picked = hidden.reshape((b * row_len, h))?.index_select(&gather, 0)?; // (N, H)
    let logits = model
        .logits(&picked.unsqueeze(0)?)?
        .squeeze(0)?
        .to_dtype(DType::F32)?; // (N, V)
    let max = logits.max_keepdim(D::Minus1)?; // (N, 1)
    let lse = logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        .add(&max)?; // (N, 1)
    let targets_t = Tensor::from_vec(targets.clone(), (n, 1), device)?;
    let logp: Vec<f32> = logits
        .gather(&targets_t, 1)?
        .sub(&lse)?
        .squeeze(1)?
        .to_vec1()?; // (N,)
    let argmax: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?; // (N,)
    for i in rows.iter().flatten() {
        out[*i] = Scored {
            logprob: 0.0,
            greedy: true,
        };
    }
    for k in 0..n {
        let s = &mut out[owner[k]];
        s.logprob += logp[k] as f64;
        s.greedy &= argmax[k] == targets[k];
    }
    Ok(())
}
