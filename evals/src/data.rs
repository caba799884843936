//! Task data: JSONL with a column mapping, BIG-bench task JSON, HumanEval JSONL and
//! preference pairs, all read into one [`Doc`] shape.
//!
//! Key decision: importers read the formats users already have on disk as they are
//! (no conversion step), and every row is checked when loaded — a missing gold
//! field or a gold index out of range is an error naming the task, file and line,
//! raised before any model work starts.

use crate::error::{EvalError, Result};
use crate::spec::{DataFormat, Task, TaskKind};
use serde_json::Value;

/// One evaluation example.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Doc {
    /// Stable id: the row's `id`/`task_id` field when present, else `line-<n>`.
    pub id: String,
    /// 1-based line in the data file (JSONL) or example number (BIG-bench).
    pub line: usize,
    /// The question / prompt text (substituted for `{input}`).
    pub input: String,
    /// `multiple_choice`: the choices.
    pub choices: Vec<String>,
    /// `multiple_choice`: index of the gold choice.
    pub gold: usize,
    /// `generate`: reference answers (any matches); for few-shot, the first is shown.
    pub answers: Vec<String>,
    /// `code`: test code defining `check(candidate)`.
    pub test: String,
    /// `code`: the function under test.
    pub entry_point: String,
    /// `perplexity`: the document text.
    pub text: String,
}

/// Loads and validates the data of `task`.
pub fn load_docs(task: &Task) -> Result<Vec<Doc>> {
    let path = &task.data_path;
    let text = match task.inline_data {
        Some(text) => text.to_string(),
        None => std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?,
    };
    let docs = match task.spec.format {
        DataFormat::Bigbench => bigbench(task, &text)?,
        _ => {
            let mut docs = Vec::new();
            for (i, raw) in text.lines().enumerate() {
                if raw.trim().is_empty() {
                    continue;
                }
                let line = i + 1;
                let row: Value = serde_json::from_str(raw)
                    .map_err(|e| data_err(task, line, format!("invalid JSON: {e}")))?;
                if !row.is_object() {
                    return Err(data_err(task, line, "row is not a JSON object"));
                }
                docs.push(match task.spec.format {
                    DataFormat::Humaneval => humaneval(task, &row, line)?,
                    DataFormat::Preference => preference(task, &row, line)?,
                    _ => jsonl(task, &row, line)?,
                });
            }
            docs
        }
    };
    if docs.is_empty() {
        return Err(data_err(task, 0, "no examples"));
    }
    Ok(docs)
}

fn data_err(task: &Task, line: usize, message: impl Into<String>) -> EvalError {
    EvalError::Data {
        task: task.name.clone(),
        file: task.data_path.clone(),
        line,
        message: message.into(),
    }
}

fn string_field(task: &Task, row: &Value, key: &str, line: usize) -> Result<String> {
    match row.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ Value::Number(_)) => Ok(v.to_string()),
        Some(_) => Err(data_err(
            task,
            line,
            format!("field `{key}` is not a string"),
        )),
        None => Err(data_err(task, line, format!("missing field `{key}`"))),
    }
}

fn row_id(row: &Value, line: usize) -> String {
    ["id", "task_id", "doc_id"]
        .iter()
        .find_map(|k| match row.get(*k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(v @ Value::Number(_)) => Some(v.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| format!("line-{line}"))
}

/// Checks the gold index against the choices.
fn checked_gold(task: &Task, gold: usize, n: usize, line: usize) -> Result<usize> {
    if gold >= n {
        return Err(data_err(
            task,
            line,
            format!("gold index {gold} out of range for {n} choices"),
        ));
    }
    Ok(gold)
}

/// lm-eval-style JSONL through the spec's column mapping.
fn jsonl(task: &Task, row: &Value, line: usize) -> Result<Doc> {
    let c = &task.spec.columns;
    let mut doc = Doc {
        id: row_id(row, line),
        line,
        ..Default::default()
    };
    match task.spec.kind {
        TaskKind::MultipleChoice => {
            doc.input = string_field(task, row, &c.input, line)?;
            doc.choices = match row.get(&c.choices) {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s.clone()),
                        other => Ok(other.to_string()),
                    })
                    .collect::<Result<_>>()?,
                Some(_) => {
                    return Err(data_err(
                        task,
                        line,
                        format!("field `{}` is not a list", c.choices),
                    ))
                }
                None => {
                    return Err(data_err(
                        task,
                        line,
                        format!("missing field `{}`", c.choices),
                    ))
                }
            };
            if doc.choices.len() < 2 {
                return Err(data_err(task, line, "fewer than 2 choices"));
            }
            let gold = match row.get(&c.gold) {
                Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
                    data_err(
                        task,
                        line,
                        format!("gold `{}` = {n} is not an index", c.gold),
                    )
                })? as usize,
                Some(Value::String(s)) => {
                    doc.choices.iter().position(|x| x == s).ok_or_else(|| {
                        data_err(task, line, format!("gold {s:?} is not one of the choices"))
                    })?
                }
                Some(_) => {
                    return Err(data_err(
                        task,
                        line,
                        format!("field `{}` is not an index", c.gold),
                    ))
                }
                None => {
                    return Err(data_err(
                        task,
                        line,
                        format!("missing gold field `{}`", c.gold),
                    ))
                }
            };
            doc.gold = checked_gold(task, gold, doc.choices.len(), line)?;
        }
        TaskKind::Generate => {
            doc.input = string_field(task, row, &c.input, line)?;
            doc.answers = match row.get(&c.answer) {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .collect(),
                Some(Value::String(s)) => vec![s.clone()],
                Some(v @ Value::Number(_)) => vec![v.to_string()],
                Some(_) => {
                    return Err(data_err(
                        task,
                        line,
                        format!("field `{}` is not an answer", c.answer),
                    ))
                }
                None => {
                    return Err(data_err(
                        task,
                        line,
                        format!("missing gold field `{}`", c.answer),
                    ))
                }
            };
            if doc.answers.is_empty() {
                return Err(data_err(
                    task,
                    line,
                    format!("field `{}` has no answers", c.answer),
                ));
            }
        }
        TaskKind::Code => return humaneval(task, row, line),
        TaskKind::Perplexity => doc.text = string_field(task, row, &c.text, line)?,
    }
    Ok(doc)
}

/// HumanEval JSONL: `prompt`, `test`, `entry_point` (and `task_id`).
fn humaneval(task: &Task, row: &Value, line: usize) -> Result<Doc> {
    Ok(Doc {
        id: row_id(row, line),
        line,
        input: string_field(task, row, "prompt", line)?,
        test: string_field(task, row, "test", line)?,
        entry_point: string_field(task, row, "entry_point", line)?,
        ..Default::default()
    })
}

/// Preference pairs: choices `[rejected, chosen]`, gold 1, so a tie counts as wrong
/// (accuracy is "chosen logprob > rejected logprob", strictly).
fn preference(task: &Task, row: &Value, line: usize) -> Result<Doc> {
    Ok(Doc {
        id: row_id(row, line),
        line,
        input: string_field(task, row, "prompt", line)?,
        choices: vec![
            string_field(task, row, "rejected", line)?,
            string_field(task, row, "chosen", line)?,
        ],
        gold: 1,
        ..Default::default()
    })
}

/// BIG-bench `task.json`: `examples[]` with `input` and `target_scores` (the gold is
/// the highest-scoring target, choices sorted by text) or `target` (generative).
fn bigbench(task: &Task, text: &str) -> Result<Vec<Doc>> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| data_err(task, e.line(), format!("invalid JSON: {e}")))?;
    let Some(examples) = root.get("examples").and_then(Value::as_array) else {
        return Err(data_err(task, 1, "missing `examples` list"));
    };
    let mut docs = Vec::new();
    for (i, ex) in examples.iter().enumerate() {
        let line = i + 1; // example number: BIG-bench JSON is not line-oriented
        let mut doc = Doc {
            id: format!("example-{line}"),
            line,
            input: string_field(task, ex, "input", line)
                .map_err(|_| data_err(task, line, "example is missing `input`"))?,
            ..Default::default()
        };
        match task.spec.kind {
            TaskKind::MultipleChoice => {
                let Some(scores) = ex.get("target_scores").and_then(Value::as_object) else {
                    return Err(data_err(
                        task,
                        line,
                        "example is missing gold field `target_scores`",
                    ));
                };
                // Sorted by choice text: independent of serde_json's map order feature.
                let mut sorted: Vec<_> = scores.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(b.0));
                let mut best = (f64::NEG_INFINITY, 0usize);
                for (j, (choice, score)) in sorted.into_iter().enumerate() {
                    let s = score.as_f64().ok_or_else(|| {
                        data_err(
                            task,
                            line,
                            format!("target_scores[{choice:?}] is not a number"),
                        )
                    })?;
                    if s > best.0 {
                        best = (s, j);
                    }
                    doc.choices.push(choice.clone());
                }
                if doc.choices.len() < 2 {
                    return Err(data_err(
                        task,
                        line,
                        "fewer than 2 choices in `target_scores`",
                    ));
                }
                doc.gold = best.1;
            }
            TaskKind::Generate => {
                doc.answers = match ex.get("target") {
                    Some(Value::String(s)) => vec![s.clone()],
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                    _ => {
                        return Err(data_err(
                            task,
                            line,
                            "example is missing gold field `target`",
                        ))
                    }
                };
                if doc.answers.is_empty() {
                    return Err(data_err(
                        task,
                        line,
                        "gold field `target` has no string answers",
                    ));
                }
            }
            _ => {
                return Err(data_err(
                    task,
                    line,
                    "BIG-bench data supports multiple_choice and generate tasks",
                ))
            }
        }
        docs.push(doc);
    }
    Ok(docs)
}
