//! Which tokens of a rendered conversation the assistant wrote: the mask for assistant-only loss.
//!
//! transformers can only report assistant tokens for templates that wrap them in
//! `{% generation %}` tags, which almost no shipped template has. Here the spans come from the
//! template itself, by rendering prefixes of the conversation. For each assistant message `i`:
//!
//! * `start` = length of `render(messages[..i], add_generation_prompt=true)` — everything the
//!   prompt contains up to and including the assistant header (`<|im_start|>assistant\n`);
//! * `end` = length of `render(messages[..=i], add_generation_prompt=false)`, minus the
//!   whitespace at its very end — the message's content plus the end-of-turn token the
//!   template closes it with (`<|im_end|>`), but not the separator the template puts between
//!   turns (`\n`), which the model never generates before stopping.
//!
//! A token is an assistant token when its first byte lies in some `[start, end)`. This is what
//! TRL trains on (content and `<|im_end|>`, not the newline), and it equals transformers'
//! `return_assistant_tokens_mask` on a `{% generation %}`-tagged copy of SmolLM2's template
//! (checked in `tests/tokenizer_parity.rs`). Key decision: the rule needs each render to be a
//! prefix of the next; a template that rewrites earlier turns (e.g. drops past reasoning) is
//! reported as an error rather than given a silently wrong mask.

use super::{Message, Tokenizer};
use crate::error::{Error, Result};

impl Tokenizer {
    /// Tokens of the rendered conversation (no generation prompt, no added BOS/EOS beyond what
    /// the template writes) and a 0/1 mask marking the assistant's content and end-of-turn
    /// tokens (see the module docs for the exact rule).
    pub fn apply_chat_template_with_assistant_mask(
        &self,
        messages: &[Message],
    ) -> Result<(Vec<u32>, Vec<u8>)> {
        let full = self.apply_chat_template(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prompt = self.apply_chat_template(&messages[..i], true)?;
            let upto = self.apply_chat_template(&messages[..=i], false)?;
            if !upto.starts_with(&prompt) || !full.starts_with(&upto) {
                return Err(Error::tokenizer(
                    &self.source,
                    format!(
                        "cannot mask assistant message {i}: the chat template does not render the conversation \
                         prefix by prefix (the render up to message {i} is not a prefix of the next render)"
                    ),
                ));
            }
            let end = upto.trim_end().len().max(prompt.len());
            spans.push((prompt.len(), end));
        }
        let encoding = self.encoding(&full, false)?;
        let mask = encoding
            .get_offsets()
            .iter()
            .map(|&(start, _)| u8::from(spans.iter().any(|&(s, e)| start >= s && start < e)))
            .collect();
        Ok((encoding.get_ids().to_vec(), mask))
    }
}
