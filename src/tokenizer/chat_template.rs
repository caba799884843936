//! Chat templates: turning a conversation into the exact text a model was trained on.
//!
//! A chat template is a jinja2 program shipped with the model (`tokenizer.chat_template` in a
//! GGUF, `chat_template` in `tokenizer_config.json`, or `chat_template.jinja`). The reference
//! is transformers' `apply_chat_template(messages, tokenize=False)`, and a render here must be
//! byte-identical to it: a stray newline changes the tokens and so the training signal.
//!
//! Key decision: render with minijinja configured the way transformers configures jinja2 —
//! `trim_blocks` and `lstrip_blocks` on, the trailing newline of the source dropped, Python
//! string methods (`.strip()`, `.split()`, ...) through `minijinja_contrib::pycompat`, and
//! transformers' own globals (`raise_exception`, `strftime_now`) and `tojson` filter (Python's
//! `json.dumps`). The context holds what transformers passes: `messages`,
//! `add_generation_prompt`, the special tokens (`bos_token`, `eos_token`, ...), and
//! `tools` / `documents` as `None`. Template errors (including `raise_exception`) come back as
//! [`Error::Tokenizer`](crate::Error::Tokenizer); nothing panics.

use std::collections::BTreeMap;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

use super::jinja_compat::{self, OrderedMap};
use crate::error::{Error, Result};

const TEMPLATE_NAME: &str = "chat_template";
const CONTEXT: &str = "chat template";

/// One turn of a conversation, as transformers' `{"role": ..., "content": ...}` dicts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks: `system`, `user`, `assistant` (templates may accept others, e.g. `tool`).
    pub role: String,
    /// What they say, as plain text.
    pub content: String,
}

impl Message {
    /// A message from `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template plus the special-token strings it may refer to.
#[derive(Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Further special tokens passed to the template (`unk_token`, `pad_token`), by name.
    extra_tokens: BTreeMap<String, String>,
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("extra_tokens", &self.extra_tokens)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is an error naming the line.
    pub fn new(
        source: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| {
                Error::tokenizer(CONTEXT, format!("configuring the template syntax: {e}"))
            })?;
        env.set_syntax(syntax);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(jinja_compat::python_formatter);
        env.add_function("raise_exception", jinja_compat::raise_exception);
        env.add_function("strftime_now", jinja_compat::strftime_now);
        env.add_filter("tojson", jinja_compat::tojson);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| Error::tokenizer(CONTEXT, format!("cannot compile: {}", describe(&e))))?;
        Ok(ChatTemplate {
            source,
            bos_token,
            eos_token,
            extra_tokens: BTreeMap::new(),
            env,
        })
    }

    /// Also passes the special token `name` (e.g. `"pad_token"`, `"unk_token"`) to the template,
    /// as transformers passes every entry of `special_tokens_map`.
    pub fn with_special_token(mut self, name: impl Into<String>, token: impl Into<String>) -> Self {
        self.extra_tokens.insert(name.into(), token.into());
        self
    }

    /// The jinja source, as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `bos_token` string passed to the template.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The `eos_token` string passed to the template.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Identical bytes to transformers'
    /// `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_object(OrderedMap(vec![
                    ("role".into(), Value::from(m.role.as_str())),
                    ("content".into(), Value::from(m.content.as_str())),
                ]))
            })
            .collect();
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        for (name, token) in &self.extra_tokens {
            ctx.insert(name.clone(), Value::from(token.as_str()));
        }
        if let Some(bos) = &self.bos_token {
            ctx.insert("bos_token".into(), Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            ctx.insert("eos_token".into(), Value::from(eos.as_str()));
        }
        ctx.insert("messages".into(), Value::from(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::tokenizer(CONTEXT, describe(&e)))?;
        template
            .render(Value::from(ctx))
            .map_err(|e| Error::tokenizer(CONTEXT, format!("render failed: {}", describe(&e))))
    }
}

/// A minijinja error with its location, without the multi-line debug dump.
fn describe(e: &minijinja::Error) -> String {
    let mut msg = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (line {line})"));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}\n\
        {{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\n\
        {% endfor %}\n\
        {% if add_generation_prompt %}\n\
        {{ '<|im_start|>assistant\\n' }}\n\
        {% endif %}\n";

    fn conv() -> Vec<Message> {
        vec![
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello"),
        ]
    }

    #[test]
    fn chatml_renders_with_trim_blocks() {
        let t = ChatTemplate::new(CHATML.into(), None, None).unwrap();
        // The newline after each `{% %}` tag is trimmed; the one after `{{ }}` is kept.
        assert_eq!(
            t.render(&conv(), false).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n\n<|im_start|>assistant\nHello<|im_end|>\n\n"
        );
        assert_eq!(
            t.render(&conv(), true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n\n<|im_start|>assistant\nHello<|im_end|>\n\n<|im_start|>assistant\n\n"
        );
    }

    #[test]
    fn lstrip_blocks_and_special_tokens() {
        let src = "{{ bos_token }}\n    {% for m in messages %}[{{ m.role }}]{% endfor %}\n{{ eos_token }}{{ pad_token }}";
        let t = ChatTemplate::new(src.into(), Some("<s>".into()), Some("</s>".into()))
            .unwrap()
            .with_special_token("pad_token", "<pad>");
        assert_eq!(
            t.render(&conv(), false).unwrap(),
            "<s>\n[user][assistant]</s><pad>"
        );
    }

    #[test]
    fn python_string_methods_and_message_key_order() {
        let src = "{{ messages[0].content.upper().strip() }}|{{ messages[0] | tojson }}|{{ tools is none }}";
        let t = ChatTemplate::new(src.into(), None, None).unwrap();
        let out = t.render(&[Message::new("user", "  hi  ")], false).unwrap();
        assert_eq!(out, r#"HI|{"role": "user", "content": "  hi  "}|True"#);
    }

    #[test]
    fn raise_exception_is_an_error_not_a_panic() {
        let src = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('System message required') }}{% endif %}ok";
        let t = ChatTemplate::new(src.into(), None, None).unwrap();
        let err = t.render(&conv(), false).unwrap_err().to_string();
        assert!(err.contains("System message required"), "{err}");
        assert_eq!(
            t.render(&[Message::new("system", "s")], false).unwrap(),
            "ok"
        );
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = ChatTemplate::new("{% for m in messages %}".into(), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("chat template") && err.contains("line 1"),
            "{err}"
        );
    }

    #[test]
    fn message_serde_round_trip() {
        let m: Message = serde_json::from_str(r#"{"role":"user","content":"x"}"#).unwrap();
        assert_eq!(m, Message::new("user", "x"));
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"role":"user","content":"x"}"#
        );
    }
}
