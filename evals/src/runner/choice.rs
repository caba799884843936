//! Multiple-choice tasks (and preference pairs): summed loglikelihood of each choice
//! after the shared context, then `acc`, `acc_norm` (by characters) and
//! `acc_norm_tokens` (by tokens).
//!
//! Key decision: all (context, choice) requests of all docs go to the batched scorer
//! at once, so packing fills forward passes across docs, not just within one.

use super::{proportion_metric, sample_header, MetricValue, ProgressFn};
use crate::data::Doc;
use crate::error::Result;
use crate::metrics::choice_scores;
use crate::prompt::context;
use crate::score::{encode_pair, score, Request};
use crate::spec::Task;
use serde_json::Value;
use smelt::tokenizer::Tokenizer;
use smelt::Model;

/// Scores docs `0..n`; returns the metrics and per-sample records.
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &Model,
    tokenizer: &Tokenizer,
    task: &Task,
    docs: &[Doc],
    n: usize,
    max_length: usize,
    token_budget: usize,
    progress: &mut ProgressFn<'_>,
) -> Result<(Vec<MetricValue>, Vec<Value>)> {
    let mut requests: Vec<Request> = Vec::new();
    let mut contexts = Vec::with_capacity(n);
    for i in 0..n {
        let ctx = context(task, docs, i, tokenizer)?;
        for choice in &docs[i].choices {
            requests.push(encode_pair(
                tokenizer,
                &ctx,
                &format!("{}{choice}", task.spec.target_delimiter),
            )?);
        }
        contexts.push(ctx);
    }
    let scored = score(model, &requests, max_length, token_budget)?;
    progress(&task.name, n, n);
    let (mut acc, mut acc_norm, mut acc_tok) = (vec![], vec![], vec![]);
    let mut samples = Vec::with_capacity(n);
    let mut at = 0;
    for (i, ctx) in contexts.into_iter().enumerate() {
        let doc = &docs[i];
        let k = doc.choices.len();
        let lls: Vec<f64> = scored[at..at + k].iter().map(|s| s.logprob).collect();
        let greedy: Vec<bool> = scored[at..at + k].iter().map(|s| s.greedy).collect();
        let tokens: Vec<usize> = requests[at..at + k]
            .iter()
            .map(|r| r.continuation.len())
            .collect();
        at += k;
        let chars: Vec<usize> = doc.choices.iter().map(|c| c.chars().count()).collect();
        let s = choice_scores(&lls, &chars, &tokens, doc.gold);
        acc.push(s.acc);
        acc_norm.push(s.acc_norm);
        acc_tok.push(s.acc_norm_tokens);
        let mut rec = sample_header(doc, i);
        rec.insert("context".into(), ctx.into());
        rec.insert("choices".into(), doc.choices.clone().into());
        rec.insert("gold".into(), doc.gold.into());
        rec.insert("loglikelihoods".into(), lls.into());
        rec.insert("is_greedy".into(), greedy.into());
        rec.insert("acc".into(), s.acc.into());
        rec.insert("acc_norm".into(), s.acc_norm.into());
        rec.insert("acc_norm_tokens".into(), s.acc_norm_tokens.into());
        samples.push(Value::Object(rec));
    }
    let metrics = vec![
        proportion_metric("acc", &acc),
        proportion_metric("acc_norm", &acc_norm),
        proportion_metric("acc_norm_tokens", &acc_tok),
    ];
    Ok((metrics, samples))
}
