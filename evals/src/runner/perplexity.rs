//! Perplexity tasks: rolling loglikelihood of whole documents, reported as
//! `bits_per_byte`, `byte_perplexity` and `word_perplexity` (lm-eval's
//! `loglikelihood_rolling` with disjoint windows).
//!
//! Key decision: a document longer than `max_length` is split into disjoint
//! prediction windows, each conditioned on as much preceding text as fits, the first
//! on the prefix token (BOS, else EOS), so every token is predicted exactly once and
//! the sums are comparable across window lengths.

use super::{sample_header, MetricValue, ProgressFn};
use crate::data::Doc;
use crate::error::Result;
use crate::metrics::{bits_per_byte, perplexity, ratio_stderr};
use crate::score::{prefix_token, score, Request};
use crate::spec::Task;
use serde_json::Value;
use smelt::tokenizer::Tokenizer;
use smelt::Model;

/// Rolling windows of `tokens`: requests that together predict every token once.
pub fn rolling_requests(tokens: &[u32], prefix: u32, max_length: usize) -> Vec<Request> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < tokens.len() {
        let end = (start + max_length).min(tokens.len());
        let context = if start == 0 {
            vec![prefix]
        } else {
            // input = context ++ cont[..-1] has at most max_length tokens
            tokens[(end - 1).saturating_sub(max_length)..start].to_vec()
        };
        out.push(Request {
            context,
            continuation: tokens[start..end].to_vec(),
        });
        start = end;
    }
    out
}

/// Scores `docs`; returns the metrics and per-sample records.
pub fn run(
    model: &Model,
    tokenizer: &Tokenizer,
    task: &Task,
    docs: &[Doc],
    max_length: usize,
    token_budget: usize,
    progress: &mut ProgressFn<'_>,
) -> Result<(Vec<MetricValue>, Vec<Value>)> {
    let prefix = prefix_token(tokenizer)?;
    let mut requests = Vec::new();
    let mut owner = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let tokens = tokenizer.encode(&doc.text, false)?;
        for r in rolling_requests(&tokens, prefix, max_length) {
            requests.push(r);
            owner.push(i);
        }
    }
    let scored = score(model, &requests, max_length, token_budget)?;
    progress(&task.name, docs.len(), docs.len());
    let mut lls = vec![0.0; docs.len()];
    for (s, &i) in scored.iter().zip(&owner) {
        lls[i] += s.logprob;
    }
    let bytes: Vec<usize> = docs.iter().map(|d| d.text.len()).collect();
    let words: Vec<usize> = docs
        .iter()
        .map(|d| d.text.split_whitespace().count())
        .collect();
    let total_ll: f64 = lls.iter().sum();
    let ln2 = std::f64::consts::LN_2;
    let bits: Vec<f64> = lls.iter().map(|ll| -ll / ln2).collect();
    let bytes_f: Vec<f64> = bytes.iter().map(|&b| b as f64).collect();
    let samples = docs
        .iter()
        .enumerate()
        .map(|(i, doc)| {
            let mut rec = sample_header(doc, i);
            rec.insert("loglikelihood".into(), lls[i].into());
            rec.insert("bytes".into(), bytes[i].into());
            rec.insert("words".into(), words[i].into());
            rec.insert(
                "bits_per_byte".into(),
                bits_per_byte(lls[i], bytes[i]).into(),
            );
            Value::Object(rec)
        })
        .collect();
    let lower = |name: &str, value: f64, stderr: Option<f64>| MetricValue {
        name: name.into(),
        value,
        stderr,
        higher_is_better: false,
        proportion: false,
    };
    let metrics = vec![
        lower(
            "bits_per_byte",
            bits_per_byte(total_ll, bytes.iter().sum()),
            Some(ratio_stderr(&bits, &bytes_f)),
        ),
        lower(
            "byte_perplexity",
            perplexity(total_ll, bytes.iter().sum()),
            None,
        ),
        lower(
            "word_perplexity",
            perplexity(total_ll, words.iter().sum()),
            None,
        ),
    ];
    Ok((metrics, samples))
}
