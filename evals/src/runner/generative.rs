//! Generative tasks: `generate` (regex extraction chain, `exact_match`, `maj@k`,
//! `avg@k`) and `code` (programs run against the task's tests in the sandbox, `pass@k`).
//!
//! Key decision: the extraction chain is lm-eval's regex filter generalised to a list —
//! the first regex that matches wins (its group 1 when it has one), and a completion
//! no regex matches extracts to `[invalid]`, which never equals a reference. With an
//! empty chain the whole trimmed completion is the answer.

use super::{proportion_metric, sample_header, MetricValue, ProgressFn};
use crate::data::Doc;
use crate::error::Result;
use crate::generation::{generate_texts, GenJob, GenOptions};
use crate::metrics::{majority, mean, mean_stderr, pass_at_k};
use crate::prompt::context;
use crate::sandbox::{run_python, SandboxLimits};
use crate::spec::Task;
use regex::Regex;
use serde_json::{json, Value};
use smelt::tokenizer::Tokenizer;
use smelt::Model;
use std::time::Duration;

/// The answer extracted from a completion by the chain (see the module docs).
pub fn extract(chain: &[Regex], completion: &str) -> String {
    if chain.is_empty() {
        return completion.trim().to_string();
    }
    for re in chain {
        if let Some(c) = re.captures(completion) {
            let m = c.get(1).or(c.get(0)).map(|m| m.as_str()).unwrap_or("");
            return m.trim().to_string();
        }
    }
    "[invalid]".into()
}

/// Docs whose samples are generated together (up to 16 samples decode at once).
const DOCS_PER_BATCH: usize = 8;

/// The context of doc `i` and its `spec.samples` generation jobs.
fn jobs(
    model: &Model,
    tokenizer: &Tokenizer,
    task: &Task,
    docs: &[Doc],
    i: usize,
) -> Result<(String, Vec<GenJob>)> {
    let s = &task.spec;
    let ctx = context(task, docs, i, tokenizer)?;
    let prompt = tokenizer.encode(&ctx, false)?;
    let mut stop_ids = model.config().eos_token_ids.clone();
    stop_ids.extend(tokenizer.eos_token_id());
    let jobs = (0..s.samples)
        .map(|j| {
            let opts = GenOptions {
                max_new_tokens: s.max_new_tokens,
                temperature: s.temperature,
                top_p: s.top_p,
                seed: s.seed.wrapping_add((i * s.samples + j) as u64),
                stop_ids: stop_ids.clone(),
                stop_strings: s.stop.clone(),
            };
            (prompt.clone(), opts)
        })
        .collect();
    Ok((ctx, jobs))
}

/// Each doc's context and completions in order, generated [`DOCS_PER_BATCH`] docs at
/// a time (`generate_texts`: the same texts as one sample at a time).
struct Completions<'a> {
    model: &'a Model,
    tokenizer: &'a Tokenizer,
    task: &'a Task,
    docs: &'a [Doc],
    n: usize,
    next: usize,
    ready: std::collections::VecDeque<(String, Vec<String>)>,
}

impl<'a> Completions<'a> {
    fn new(
        model: &'a Model,
        tokenizer: &'a Tokenizer,
        task: &'a Task,
        docs: &'a [Doc],
        n: usize,
    ) -> Self {
        Completions {
            model,
            tokenizer,
            task,
            docs,
            n,
            next: 0,
            ready: Default::default(),
        }
    }

    /// The next doc's context and completions.
    fn next_doc(&mut self) -> Result<(String, Vec<String>)> {
        if self.ready.is_empty() {
            let end = (self.next + DOCS_PER_BATCH).min(self.n);
            let (mut ctxs, mut all) = (Vec::new(), Vec::new());
            for i in self.next..end {
                let (ctx, js) = jobs(self.model, self.tokenizer, self.task, self.docs, i)?;
                ctxs.push(ctx);
                all.extend(js);
            }
            let texts = generate_texts(self.model, self.tokenizer, &all)?;
            let k = self.task.spec.samples.max(1);
            self.ready = ctxs
                .into_iter()
                .zip(texts.chunks(k).map(<[String]>::to_vec))
                .collect();
            self.next = end;
        }
        self.ready.pop_front().ok_or_else(|| {
            crate::error::EvalError::Invalid("internal: no doc left to generate".into())
        })
    }
}

/// Runs a `generate` task over docs `0..n`.
pub fn run_generate(
    model: &Model,
    tokenizer: &Tokenizer,
    task: &Task,
    docs: &[Doc],
    n: usize,
    progress: &mut ProgressFn<'_>,
) -> Result<(Vec<MetricValue>, Vec<Value>)> {
    let k = task.spec.samples;
    let (mut em, mut maj, mut avg) = (vec![], vec![], vec![]);
    let mut samples = Vec::with_capacity(n);
    let mut completions = Completions::new(model, tokenizer, task, docs, n);
    for i in 0..n {
        let doc = &docs[i];
        let (ctx, outs) = completions.next_doc()?;
        let answers: Vec<String> = outs.iter().map(|o| extract(&task.extract, o)).collect();
        let refs: Vec<&str> = doc.answers.iter().map(|a| a.trim()).collect();
        let hit = |a: &str| if refs.contains(&a) { 1.0 } else { 0.0 };
        let hits: Vec<f64> = answers.iter().map(|a| hit(a)).collect();
        em.push(hits[0]);
        maj.push(majority(&answers).map(|a| hit(a)).unwrap_or(0.0));
        avg.push(mean(&hits));
        let mut rec = sample_header(doc, i);
        rec.insert("context".into(), ctx.into());
        rec.insert("references".into(), doc.answers.clone().into());
        rec.insert("completions".into(), outs.into());
        rec.insert("extracted".into(), answers.into());
        rec.insert("exact_match".into(), hits[0].into());
        samples.push(Value::Object(rec));
        progress(&task.name, i + 1, n);
    }
    let mut metrics = vec![proportion_metric("exact_match", &em)];
    if k > 1 {
        metrics.push(proportion_metric(&format!("maj@{k}"), &maj));
        let mut a = proportion_metric(&format!("avg@{k}"), &avg);
        a.proportion = false; // a mean of fractions, gated by its stderr
        metrics.push(a);
    }
    Ok((metrics, samples))
}

/// The program run for a completion: prompt + completion, the tests, and `check(entry_point)`.
pub fn program(doc: &Doc, completion: &str) -> String {
    format!(
        "{}{}\n\n{}\n\ncheck({})\n",
        doc.input, completion, doc.test, doc.entry_point
    )
}

/// Runs a `code` task over docs `0..n`.
pub fn run_code(
    model: &Model,
    tokenizer: &Tokenizer,
    task: &Task,
    docs: &[Doc],
    n: usize,
    progress: &mut ProgressFn<'_>,
) -> Result<(Vec<MetricValue>, Vec<Value>)> {
    let s = &task.spec;
    let limits = SandboxLimits {
        timeout: Duration::from_secs_f64(s.timeout_s),
        ..Default::default()
    };
    let mut per_k: Vec<Vec<f64>> = vec![Vec::new(); s.pass_k.len()];
    let mut samples = Vec::with_capacity(n);
    let mut completions = Completions::new(model, tokenizer, task, docs, n);
    for i in 0..n {
        let doc = &docs[i];
        let (ctx, outs) = completions.next_doc()?;
        let mut results = Vec::with_capacity(outs.len());
        for out in &outs {
            let report = run_python(&program(doc, out), &limits)?;
            results.push(json!({
                "outcome": format!("{:?}", report.outcome),
                "seconds": report.seconds,
                "stderr_tail": tail(&report.stderr, 400),
            }));
        }
        let passed = results.iter().filter(|r| r["outcome"] == "Passed").count();
        for (j, &k) in s.pass_k.iter().enumerate() {
            per_k[j].push(pass_at_k(s.samples, passed, k));
        }
        let mut rec = sample_header(doc, i);
        rec.insert("context".into(), ctx.into());
        rec.insert("completions".into(), outs.into());
        rec.insert("results".into(), results.into());
        rec.insert("passed".into(), passed.into());
        samples.push(Value::Object(rec));
        progress(&task.name, i + 1, n);
    }
    let metrics = s
        .pass_k
        .iter()
        .zip(&per_k)
        .map(|(k, xs)| MetricValue {
            name: format!("pass@{k}"),
            value: mean(xs),
            stderr: Some(mean_stderr(xs)),
            higher_is_better: true,
            proportion: s.samples == 1,
        })
        .collect();
    Ok((metrics, samples))
}

/// The last `n` bytes of `s` (on a char boundary).
fn tail(s: &str, n: usize) -> String {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}
