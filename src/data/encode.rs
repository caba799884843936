//! Records → token examples, as TRL 1.16 tokenizes them.
//!
//! SFT (`SFTTrainer._prepare_dataset`): plain `text` gets the EOS string appended (unless it
//! already ends with it) and is tokenized with the tokenizer's special tokens; `messages`
//! are rendered with the chat template (no extra special tokens); prompt–completion
//! tokenizes the prompt alone and prompt+completion, and the completion starts where the
//! two token sequences diverge (`common_prefix_length`). A token carries loss when every
//! applicable mask allows it: the completion mask under `completion_only_loss`, the
//! assistant mask under `assistant_only_loss`. Sequences are cut to `max_length`
//! (`keep_start`), and an example left with no target is dropped.
//!
//! Preference (`DPOTrainer._prepare_dataset`): the prompt with the generation prompt, each
//! completion as the rest of the full render (for conversations that is the assistant turn
//! through the template's end-of-turn and trailing separator; standard text gets EOS
//! appended). Key decision: the encoders take validated [`Record`]s only, and an
//! impossible request (assistant-only loss on plain text, or a template that marks no
//! assistant token) is an error, never an all-ones mask that would silently train on the
//! prompt.

use super::examples::{PreferenceExample, SftExample};
use super::formats::{Record, Turns};
use crate::error::{Error, Result};
use crate::tokenizer::{Message, Tokenizer};

/// How SFT examples are built (TRL `SFTConfig` names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftEncodeOptions {
    /// Keep the first `max_length` tokens (`None`: no truncation). TRL default 1024.
    pub max_length: Option<usize>,
    /// Train only on assistant tokens of conversations (TRL default false).
    pub assistant_only_loss: bool,
    /// Train only on completions of prompt–completion records; `None` = TRL's auto (true
    /// for prompt–completion). Language-modeling records have no completion mask.
    pub completion_only_loss: Option<bool>,
}

impl Default for SftEncodeOptions {
    fn default() -> Self {
        SftEncodeOptions {
            max_length: Some(1024),
            assistant_only_loss: false,
            completion_only_loss: None,
        }
    }
}

/// Tokenizes one record for SFT; `Ok(None)` when truncation left no target token.
pub fn encode_sft(
    tok: &Tokenizer,
    record: &Record,
    opts: &SftEncodeOptions,
) -> Result<Option<SftExample>> {
    let (input_ids, loss_mask) = match record {
        Record::Text { text } => {
            if opts.assistant_only_loss {
                return Err(Error::Invalid(
                    "assistant_only_loss needs conversational data, but a record is plain `text`"
                        .into(),
                ));
            }
            let ids = tok.encode(&with_eos(tok, text)?, true)?;
            let n = ids.len();
            (ids, vec![1u8; n])
        }
        Record::Messages { messages } => chat(tok, messages, opts.assistant_only_loss)?,
        Record::PromptCompletion { prompt, completion } => {
            let completion_only = opts.completion_only_loss.unwrap_or(true);
            let (prompt_ids, (ids, assistant)) = match (prompt, completion) {
                (Turns::Conversation(p), Turns::Conversation(c)) => {
                    let full: Vec<Message> = p.iter().chain(c).cloned().collect();
                    (
                        tok.encode(&tok.apply_chat_template(p, true)?, false)?,
                        chat(tok, &full, opts.assistant_only_loss)?,
                    )
                }
                (Turns::Text(p), Turns::Text(c)) => {
                    if opts.assistant_only_loss {
                        return Err(Error::Invalid(
                            "assistant_only_loss needs conversational data, but a record has a plain-text prompt".into(),
                        ));
                    }
                    let ids = tok.encode(&format!("{p}{}", with_eos(tok, c)?), true)?;
                    let n = ids.len();
                    (tok.encode(p, true)?, (ids, vec![1u8; n]))
                }
                _ => {
                    return Err(Error::Invalid(
                        "prompt and completion must be of the same kind".into(),
                    ))
                }
            };
            let start = common_prefix_length(&prompt_ids, &ids);
            let mask = assistant
                .iter()
                .enumerate()
                .map(|(i, &a)| u8::from(a == 1 && (!completion_only || i >= start)))
                .collect();
            (ids, mask)
        }
        Record::Preference { .. } => {
            return Err(Error::Invalid(
                "a preference record cannot be encoded for SFT (use encode_preference)".into(),
            ))
        }
    };
    Ok(truncate(
        SftExample {
            input_ids,
            loss_mask,
        },
        opts.max_length,
    ))
}

/// Tokenizes one preference record as TRL's DPO does (no truncation: that is the DPO collator's job).
pub fn encode_preference(tok: &Tokenizer, record: &Record) -> Result<PreferenceExample> {
    let Record::Preference {
        prompt,
        chosen,
        rejected,
    } = record
    else {
        return Err(Error::Invalid(
            "encode_preference needs a preference record (`chosen` / `rejected`)".into(),
        ));
    };
    let (prompt_ids, chosen_full, rejected_full) = match (prompt, chosen, rejected) {
        (Turns::Conversation(p), Turns::Conversation(c), Turns::Conversation(r)) => {
            let render = |rest: &[Message]| -> Result<Vec<u32>> {
                let full: Vec<Message> = p.iter().chain(rest).cloned().collect();
                tok.encode(&tok.apply_chat_template(&full, false)?, false)
            };
            (
                tok.encode(&tok.apply_chat_template(p, true)?, false)?,
                render(c)?,
                render(r)?,
            )
        }
        (Turns::Text(p), Turns::Text(c), Turns::Text(r)) => (
            tok.encode(p, true)?,
            tok.encode(&format!("{p}{}", with_eos(tok, c)?), true)?,
            tok.encode(&format!("{p}{}", with_eos(tok, r)?), true)?,
        ),
        _ => {
            return Err(Error::Invalid(
                "prompt, chosen and rejected must be of the same kind".into(),
            ))
        }
    };
    let n = common_prefix_length(&prompt_ids, &chosen_full)
        .min(common_prefix_length(&prompt_ids, &rejected_full));
    Ok(PreferenceExample {
        prompt_ids: prompt_ids[..n].to_vec(),
        chosen_ids: chosen_full[n..].to_vec(),
        rejected_ids: rejected_full[n..].to_vec(),
    })
}

/// Number of leading tokens `a` and `b` share (TRL `common_prefix_length`).
pub fn common_prefix_length(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Keeps the first `max_length` tokens; `None` when no target token is left. The first
/// token is never a target (nothing precedes it), so it does not count.
pub fn truncate(mut ex: SftExample, max_length: Option<usize>) -> Option<SftExample> {
    if let Some(max) = max_length {
        ex.input_ids.truncate(max);
        ex.loss_mask.truncate(max);
    }
    ex.loss_mask.iter().skip(1).any(|&m| m == 1).then_some(ex)
}

/// A rendered conversation and its mask: the assistant mask, or all ones.
fn chat(
    tok: &Tokenizer,
    messages: &[Message],
    assistant_only: bool,
) -> Result<(Vec<u32>, Vec<u8>)> {
    if assistant_only {
        let (ids, mask) = tok.apply_chat_template_with_assistant_mask(messages)?;
        if !mask.contains(&1) {
            return Err(Error::Invalid(
                "assistant_only_loss: the chat template marks no assistant token in a conversation \
                 (does it have an assistant turn?)"
                    .into(),
            ));
        }
        return Ok((ids, mask));
    }
    let ids = tok.encode(&tok.apply_chat_template(messages, false)?, false)?;
    let n = ids.len();
    Ok((ids, vec![1u8; n]))
}

/// `text` with the EOS string appended unless it already ends with it (TRL `add_eos`).
fn with_eos(tok: &Tokenizer, text: &str) -> Result<String> {
    let eos = tok.eos_token().ok_or_else(|| {
        Error::Invalid("the tokenizer has no EOS token to end plain-text examples with".into())
    })?;
    Ok(if text.ends_with(eos) {
        text.to_string()
    } else {
        format!("{text}{eos}")
    })
}
