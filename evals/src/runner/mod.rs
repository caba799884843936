//! The runner: loads a task's data, builds prompts, scores or generates, and reduces
//! per-sample scores to metrics with standard errors.
//!
//! Key decision: every task kind produces the same [`TaskOutput`] — metric values with
//! their stderr and direction plus one JSON object per sample — so the results JSON,
//! the markdown table and the gate never look at task kinds. Docs run in file order
//! (`--limit N` takes the first N), so two runs of one checkpoint are identical.
//! Submodules hold one task kind each: [`choice`] (multiple choice and preference
//! pairs), [`generative`] (generate and code), [`perplexity`].

pub mod choice;
pub mod generative;
pub mod perplexity;

use crate::data::{load_docs, Doc};
use crate::error::Result;
use crate::spec::{Task, TaskKind};
use serde_json::Value;
use smelt::tokenizer::Tokenizer;
use smelt::Model;

/// Options shared by all tasks of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Evaluate only the first N docs of each task.
    pub limit: Option<usize>,
    /// About this many tokens per scoring forward pass (default 2048).
    pub token_budget: usize,
    /// Longest sequence scored (default: the model's `max_position_embeddings`, capped at 2048).
    pub max_length: Option<usize>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            limit: None,
            token_budget: 2048,
            max_length: None,
        }
    }
}

/// One metric of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    /// lm-eval metric name (`acc`, `acc_norm`, `exact_match`, `pass@1`, `bits_per_byte`, ...).
    pub name: String,
    /// The value.
    pub value: f64,
    /// Standard error, when defined.
    pub stderr: Option<f64>,
    /// Whether larger is better.
    pub higher_is_better: bool,
    /// Whether the value is a proportion of per-sample 0/1 outcomes (gated by the two-proportion z-test).
    pub proportion: bool,
}

/// Everything one task produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutput {
    /// Task name.
    pub task: String,
    /// Task kind.
    pub kind: TaskKind,
    /// Docs in the data file.
    pub n_original: usize,
    /// Docs evaluated (after `--limit`).
    pub n_effective: usize,
    /// Metrics in a fixed order.
    pub metrics: Vec<MetricValue>,
    /// One JSON object per evaluated doc (lm-eval's per-sample details).
    pub samples: Vec<Value>,
}

/// Called after each chunk of work: (task, docs done, docs total).
pub type ProgressFn<'a> = dyn FnMut(&str, usize, usize) + 'a;

/// Runs one task.
pub fn run_task(
    model: &Model,
    tokenizer: &Tokenizer,
    task: &Task,
    opts: &EvalOptions,
    progress: &mut ProgressFn<'_>,
) -> Result<TaskOutput> {
    let docs = load_docs(task)?;
    let n = opts.limit.unwrap_or(docs.len()).min(docs.len());
    let max_length = opts
        .max_length
        .or(task.spec.max_length)
        .unwrap_or(model.config().max_position_embeddings.min(2048));
    let (metrics, samples) = match task.spec.kind {
        TaskKind::MultipleChoice => choice::run(
            model,
            tokenizer,
            task,
            &docs,
            n,
            max_length,
            opts.token_budget,
            progress,
        )?,
        TaskKind::Generate => generative::run_generate(model, tokenizer, task, &docs, n, progress)?,
        TaskKind::Code => generative::run_code(model, tokenizer, task, &docs, n, progress)?,
        TaskKind::Perplexity => perplexity::run(
            model,
            tokenizer,
            task,
            &docs[..n],
            max_length,
            opts.token_budget,
            progress,
        )?,
    };
    Ok(TaskOutput {
        task: task.name.clone(),
        kind: task.spec.kind,
        n_original: docs.len(),
        n_effective: n,
        metrics,
        samples,
    })
}

/// A 0/1 metric's value and stderr (lm-eval's `mean` and `mean_stderr`).
pub(crate) fn proportion_metric(name: &str, xs: &[f64]) -> MetricValue {
    MetricValue {
        name: name.into(),
        value: crate::metrics::mean(xs),
        stderr: Some(crate::metrics::mean_stderr(xs)),
        higher_is_better: true,
        proportion: true,
    }
}

/// The doc fields every per-sample record carries.
pub(crate) fn sample_header(doc: &Doc, index: usize) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("doc_id".into(), index.into());
    m.insert("id".into(), doc.id.clone().into());
    m.insert("line".into(), doc.line.into());
    m
}
