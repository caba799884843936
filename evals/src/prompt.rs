//! Prompt construction: description, few-shot examples, the template, delimiters and
//! the optional chat template (lm-eval's `ContextSampler` + `fewshot_context`).
//!
//! Key decision: the few-shot examples of doc `i` are drawn from the other docs of the
//! same file by an RNG seeded with `fewshot_seed + line(i)`, so a doc's prompt does not
//! depend on `--limit`, on the order docs are run in, or on other docs' draws.

use crate::data::Doc;
use crate::error::Result;
use crate::spec::{Task, TaskKind};
use rand::{rngs::StdRng, SeedableRng};
use smelt::tokenizer::{Message, Tokenizer};

/// The template applied to one doc: `prompt` with `{input}` replaced.
pub fn doc_text(task: &Task, doc: &Doc) -> String {
    task.spec.prompt.replace("{input}", &doc.input)
}

/// The gold target shown after a few-shot example (empty for code/perplexity).
pub fn doc_target(task: &Task, doc: &Doc) -> String {
    match task.spec.kind {
        TaskKind::MultipleChoice => doc.choices[doc.gold].clone(),
        TaskKind::Generate => doc.answers[0].clone(),
        TaskKind::Code | TaskKind::Perplexity => String::new(),
    }
}

/// Indices (into `docs`) of the few-shot examples for `docs[i]`.
pub fn fewshot_indices(task: &Task, docs: &[Doc], i: usize) -> Vec<usize> {
    let k = task.spec.num_fewshot.min(docs.len().saturating_sub(1));
    if k == 0 {
        return vec![];
    }
    let mut rng = StdRng::seed_from_u64(task.spec.fewshot_seed.wrapping_add(docs[i].line as u64));
    let pool: Vec<usize> = (0..docs.len()).filter(|&j| j != i).collect();
    rand::seq::index::sample(&mut rng, pool.len(), k)
        .into_iter()
        .map(|j| pool[j])
        .collect()
}

/// The full context for `docs[i]` (before the continuation / generation), rendered
/// with the chat template when the task asks for it.
pub fn context(task: &Task, docs: &[Doc], i: usize, tokenizer: &Tokenizer) -> Result<String> {
    let s = &task.spec;
    let mut text = s.description.clone();
    for j in fewshot_indices(task, docs, i) {
        text.push_str(&doc_text(task, &docs[j]));
        text.push_str(&s.target_delimiter);
        text.push_str(&doc_target(task, &docs[j]));
        text.push_str(&s.fewshot_delimiter);
    }
    text.push_str(&doc_text(task, &docs[i]));
    if !s.chat_template {
        return Ok(text);
    }
    let messages = [Message {
        role: "user".into(),
        content: text,
    }];
    Ok(tokenizer.apply_chat_template(&messages, true)?)
}
