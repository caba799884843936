//! TRL's dataset formats as one serde enum, built from a raw row with the error naming the row.
//!
//! TRL names the formats by their columns: language modeling (`text`, or `messages` for a
//! conversation), prompt–completion (`prompt` + `completion`, both plain strings or both
//! message lists) and preference (`prompt` + `chosen` + `rejected`, or only `chosen` +
//! `rejected` with an implicit prompt). Key decision: a row is validated once, here, into a
//! [`Record`] — known roles, non-empty completions, prompt and completion of the same kind,
//! implicit prompts split off — so the encoders downstream never see a malformed row, and
//! every error names the file and line (or Parquet row) it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::tokenizer::Message;

/// Roles a message may have (what the Llama-family chat templates accept).
pub const KNOWN_ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Where a row came from, for error messages: `file.jsonl:12` or `file.parquet:row 12`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A JSONL line (1-based, as editors count).
    Line {
        /// The file.
        file: PathBuf,
        /// The line number, from 1.
        line: usize,
    },
    /// A Parquet row (0-based, as `datasets` indexes).
    Row {
        /// The file.
        file: PathBuf,
        /// The row index, from 0.
        row: usize,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line { file, line } => write!(f, "{}:{line}", file.display()),
            Location::Row { file, row } => write!(f, "{}:row {row}", file.display()),
        }
    }
}

impl Location {
    /// An error about this row: `"<location>: <message>"`.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::config(self.to_string(), message)
    }
}

/// A plain string or a conversation (a list of `{role, content}` messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Turns {
    /// Standard (non-conversational) text.
    Text(String),
    /// Conversational messages.
    Conversation(Vec<Message>),
}

impl Turns {
    /// Whether this is a conversation.
    pub fn is_conversational(&self) -> bool {
        matches!(self, Turns::Conversation(_))
    }

    fn is_empty(&self) -> bool {
        match self {
            Turns::Text(s) => s.is_empty(),
            Turns::Conversation(m) => m.is_empty(),
        }
    }
}

/// One validated dataset row in a TRL format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum Record {
    /// Language modeling, standard: `{"text": ...}`.
    Text {
        /// The document.
        text: String,
    },
    /// Language modeling, conversational: `{"messages": [...]}`.
    Messages {
        /// The conversation.
        messages: Vec<Message>,
    },
    /// Prompt–completion: both strings or both conversations.
    PromptCompletion {
        /// The prompt (context, never trained on under `completion_only_loss`).
        prompt: Turns,
        /// The completion (non-empty).
        completion: Turns,
    },
    /// Preference, with the prompt explicit or split off the shared prefix of `chosen` / `rejected`.
    Preference {
        /// The shared prompt.
        prompt: Turns,
        /// The preferred completion (non-empty).
        chosen: Turns,
        /// The dispreferred completion (non-empty).
        rejected: Turns,
    },
}

/// The formats a recipe may state (instead of letting the columns decide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    /// `text` or `messages`.
    LanguageModeling,
    /// `prompt` + `completion`.
    PromptCompletion,
    /// `chosen` + `rejected` (+ optional `prompt`).
    Preference,
}

/// How raw rows become records: format, column renames, text field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordOptions {
    /// The format; `None` detects it per row from the columns present (preference if
    /// `chosen`/`rejected`, else prompt–completion if `prompt`/`completion`, else language modeling).
    pub format: Option<DatasetFormat>,
    /// Column renames, from the dataset's names to TRL's (e.g. `{"question" = "prompt"}`).
    pub columns: BTreeMap<String, String>,
    /// Column of standard language-modeling text (TRL `dataset_text_field`, default `text`).
    pub dataset_text_field: String,
}

impl Default for RecordOptions {
    fn default() -> Self {
        RecordOptions {
            format: None,
            columns: BTreeMap::new(),
            dataset_text_field: "text".into(),
        }
    }
}

impl Record {
    /// Validates a raw row (after renames) into a record; errors name `loc`.
    pub fn from_row(
        mut row: Map<String, Value>,
        opts: &RecordOptions,
        loc: &Location,
    ) -> Result<Record> {
        for (from, to) in &opts.columns {
            if let Some(v) = row.remove(from) {
                row.insert(to.clone(), v);
            }
        }
        let renamed_from = |col: &str| {
            opts.columns
                .iter()
                .find(|(_, to)| to.as_str() == col)
                .map(|(from, _)| from.clone())
        };
        let take = |row: &mut Map<String, Value>, col: &str| -> Result<Value> {
            match row.remove(col) {
                Some(Value::Null) | None => Err(loc.error(match renamed_from(col) {
                    Some(from) => format!("missing column `{col}` (renamed from `{from}`)"),
                    None => format!("missing column `{col}`"),
                })),
                Some(v) => Ok(v),
            }
        };
        let has = |row: &Map<String, Value>, col: &str| row.get(col).is_some_and(|v| !v.is_null());
        let format = opts
            .format
            .unwrap_or(if has(&row, "chosen") || has(&row, "rejected") {
                DatasetFormat::Preference
            } else if has(&row, "prompt") || has(&row, "completion") {
                DatasetFormat::PromptCompletion
            } else {
                DatasetFormat::LanguageModeling
            });
        match format {
            DatasetFormat::LanguageModeling => {
                if has(&row, "messages") {
                    let messages = conversation(take(&mut row, "messages")?, "messages", loc)?;
                    if messages.is_empty() {
                        return Err(loc.error("empty `messages`"));
                    }
                    Ok(Record::Messages { messages })
                } else {
                    let field = &opts.dataset_text_field;
                    match take(&mut row, field) {
                        Ok(Value::String(text)) if text.is_empty() => {
                            Err(loc.error(format!("empty `{field}`")))
                        }
                        Ok(Value::String(text)) => Ok(Record::Text { text }),
                        Ok(other) => Err(loc.error(format!(
                            "column `{field}`: expected a string, found {}",
                            kind(&other)
                        ))),
                        Err(_) => {
                            Err(loc.error(format!("missing column `{field}` (or `messages`)")))
                        }
                    }
                }
            }
            DatasetFormat::PromptCompletion => {
                let prompt = turns(take(&mut row, "prompt")?, "prompt", loc)?;
                let completion = turns(take(&mut row, "completion")?, "completion", loc)?;
                same_kind(&[(&prompt, "prompt"), (&completion, "completion")], loc)?;
                if completion.is_empty() {
                    return Err(loc.error("empty completion"));
                }
                Ok(Record::PromptCompletion { prompt, completion })
            }
            DatasetFormat::Preference => {
                let chosen = turns(take(&mut row, "chosen")?, "chosen", loc)?;
                let rejected = turns(take(&mut row, "rejected")?, "rejected", loc)?;
                let (prompt, chosen, rejected) = if has(&row, "prompt") {
                    (
                        turns(take(&mut row, "prompt")?, "prompt", loc)?,
                        chosen,
                        rejected,
                    )
                } else {
                    extract_prompt(chosen, rejected, loc)?
                };
                same_kind(
                    &[
                        (&prompt, "prompt"),
                        (&chosen, "chosen"),
                        (&rejected, "rejected"),
                    ],
                    loc,
                )?;
                for (t, name) in [(&chosen, "chosen"), (&rejected, "rejected")] {
                    if t.is_empty() {
                        return Err(loc.error(format!("empty completion in `{name}`")));
                    }
                }
                Ok(Record::Preference {
                    prompt,
                    chosen,
                    rejected,
                })
            }
        }
    }
}

/// Splits an implicit prompt off two completions as TRL's `extract_prompt` does: the
/// longest common prefix (of messages, or of characters for strings, where a space just
/// before the split goes with the completions). As in TRL, when one side is a prefix of
/// the other the split falls one item before the end of the shorter.
fn extract_prompt(chosen: Turns, rejected: Turns, loc: &Location) -> Result<(Turns, Turns, Turns)> {
    fn split_at<T: PartialEq>(a: &[T], b: &[T], is_space: impl Fn(&T) -> bool) -> usize {
        let n = a.len().min(b.len());
        match (0..n).find(|&i| a[i] != b[i]) {
            Some(i) if i > 0 && is_space(&a[i - 1]) => i - 1,
            Some(i) => i,
            None => n.saturating_sub(1),
        }
    }
    match (chosen, rejected) {
        (Turns::Conversation(c), Turns::Conversation(r)) => {
            let i = split_at(&c, &r, |_| false);
            Ok((
                Turns::Conversation(c[..i].to_vec()),
                Turns::Conversation(c[i..].to_vec()),
                Turns::Conversation(r[i..].to_vec()),
            ))
        }
        (Turns::Text(c), Turns::Text(r)) => {
            let (cc, rc): (Vec<char>, Vec<char>) = (c.chars().collect(), r.chars().collect());
            let i = split_at(&cc, &rc, |ch| *ch == ' ');
            let byte = c.char_indices().nth(i).map_or(c.len(), |(b, _)| b);
            Ok((
                Turns::Text(c[..byte].into()),
                Turns::Text(c[byte..].into()),
                Turns::Text(r[byte..].into()),
            ))
        }
        _ => {
            Err(loc.error("`chosen` and `rejected` must both be strings or both be conversations"))
        }
    }
}

fn same_kind(fields: &[(&Turns, &str)], loc: &Location) -> Result<()> {
    let conv = fields[0].0.is_conversational();
    match fields.iter().find(|(t, _)| t.is_conversational() != conv) {
        None => Ok(()),
        Some((_, name)) => Err(loc.error(format!(
            "`{}` is {} but `{name}` is not: all columns must be strings, or all conversations",
            fields[0].1,
            if conv { "a conversation" } else { "a string" }
        ))),
    }
}

fn turns(v: Value, col: &str, loc: &Location) -> Result<Turns> {
    match v {
        Value::String(s) => Ok(Turns::Text(s)),
        v @ Value::Array(_) => Ok(Turns::Conversation(conversation(v, col, loc)?)),
        other => Err(loc.error(format!(
            "column `{col}`: expected a string or a list of {{role, content}} messages, found {}",
            kind(&other)
        ))),
    }
}

fn conversation(v: Value, col: &str, loc: &Location) -> Result<Vec<Message>> {
    let Value::Array(items) = v else {
        return Err(loc.error(format!(
            "column `{col}`: expected a list of messages, found {}",
            kind(&v)
        )));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let at = |msg: String| loc.error(format!("column `{col}`, message {i}: {msg}"));
            let Value::Object(mut m) = m else {
                return Err(at(format!(
                    "expected a {{role, content}} object, found {}",
                    kind(&m)
                )));
            };
            let role = match m.remove("role") {
                Some(Value::String(r)) => r,
                other => {
                    return Err(at(format!(
                        "`role` must be a string, found {}",
                        kind_opt(&other)
                    )))
                }
            };
            if !KNOWN_ROLES.contains(&role.as_str()) {
                return Err(at(format!(
                    "unknown role `{role}` (expected one of {})",
                    KNOWN_ROLES.join(", ")
                )));
            }
            let content = match m.remove("content") {
                Some(Value::String(c)) => c,
                other => {
                    return Err(at(format!(
                        "`content` must be a string, found {}",
                        kind_opt(&other)
                    )))
                }
            };
            Ok(Message { role, content })
        })
        .collect()
}

fn kind_opt(v: &Option<Value>) -> &'static str {
    v.as_ref().map_or("nothing", kind)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
