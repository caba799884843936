//! Tokenizers and chat templates.
//!
//! [`Tokenizer`] wraps a HuggingFace `tokenizers::Tokenizer` together with what transformers
//! keeps beside it in `tokenizer_config.json`: the special tokens (BOS / EOS / PAD / UNK) and
//! the [`ChatTemplate`]. It loads from an HF folder ([`Tokenizer::from_dir`]) or from GGUF
//! metadata ([`Tokenizer::from_gguf_metadata`], see `gguf.rs`), saves to an HF folder that
//! transformers loads back ([`Tokenizer::save`]), and renders conversations — with a mask of
//! the assistant's tokens for assistant-only loss
//! ([`Tokenizer::apply_chat_template_with_assistant_mask`], see `chat_mask.rs`).
//!
//! Key decision: transformers is the reference for every byte. Ids, decodes and chat renders
//! are checked against it (`tests/tokenizer_parity.rs`, fixtures from
//! `scripts/make_tokenizer_fixtures.py`), and the GGUF path rebuilds the tokenizer the way
//! transformers' GGUF converter does rather than the way llama.cpp tokenizes, so that a model
//! trained here and the Python tools that evaluate it see the same tokens.

mod chat_mask;
mod chat_template;
mod gguf;
mod jinja_compat;

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

pub use chat_template::{ChatTemplate, Message};

/// The named special tokens, as strings (ids come from the vocabulary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SpecialTokens {
    pub(crate) bos: Option<String>,
    pub(crate) eos: Option<String>,
    pub(crate) unk: Option<String>,
    pub(crate) pad: Option<String>,
}

/// A tokenizer, its special tokens and its chat template.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<ChatTemplate>,
    special: SpecialTokens,
    /// Where it came from, for error messages.
    source: String,
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`, plus `tokenizer_config.json` (special tokens, `chat_template`)
    /// and `chat_template.jinja` (which wins over the config's template, as in transformers 5)
    /// beside it when present.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    /// Loads a `tokenizer.json`, and the `tokenizer_config.json` / `chat_template.jinja` beside it.
    pub fn from_file(tokenizer_json: &Path) -> Result<Self> {
        let name = tokenizer_json.display().to_string();
        let bytes = std::fs::read(tokenizer_json).map_err(|e| Error::io(tokenizer_json, e))?;
        // tokenizers 0.23 panics (rather than erring) on some malformed files, e.g. a
        // truncated `decoder` section (`decoders/mod.rs`); turn that into an error too.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes));
        let inner = match parsed {
            Ok(r) => {
                r.map_err(|e| Error::tokenizer(&name, format!("malformed tokenizer.json: {e}")))?
            }
            Err(_) => {
                return Err(Error::tokenizer(
                    &name,
                    "malformed tokenizer.json (the tokenizers parser rejected it)",
                ))
            }
        };
        // A post-processor template naming a special token it does not define loads
        // fine and panics on every encode (tokenizers 0.23 `processors/template.rs`):
        // probe once here so the file is rejected at load, by name.
        if std::panic::catch_unwind(|| inner.encode("a", true)).is_err() {
            return Err(Error::tokenizer(
                &name,
                "malformed tokenizer.json: encoding panics (does `post_processor` name a special token it does not define?)",
            ));
        }
        let dir = tokenizer_json.parent().unwrap_or_else(|| Path::new("."));

        let mut special = SpecialTokens::default();
        let mut template = None;
        let config_path = dir.join("tokenizer_config.json");
        if config_path.exists() {
            let text =
                std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                Error::tokenizer(
                    config_path.display().to_string(),
                    format!("malformed JSON: {e}"),
                )
            })?;
            let field = |key: &str| token_field(&config, key, &config_path);
            special = SpecialTokens {
                bos: field("bos_token")?,
                eos: field("eos_token")?,
                unk: field("unk_token")?,
                pad: field("pad_token")?,
            };
            template = template_field(&config, &config_path)?;
        }
        let jinja_path = dir.join("chat_template.jinja");
        if jinja_path.exists() {
            template =
                Some(std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?);
        }
        Self::assemble(inner, special, template, name)
    }

    /// A character-level tokenizer: `<eos>` (id 0: the EOS and unknown token) then one
    /// token per character of `chars`, in order; decoding concatenates. A real
    /// `tokenizers` pipeline with a vocabulary small enough for tiny random models
    /// (tests, toy runs). Errors when `chars` repeats a character.
    pub fn char_level(chars: &str) -> Result<Self> {
        let mut vocab = serde_json::Map::new();
        vocab.insert("<eos>".into(), 0.into());
        for c in chars.chars() {
            let id = vocab.len();
            if vocab.insert(c.to_string(), id.into()).is_some() {
                return Err(Error::tokenizer(
                    "char-level",
                    format!("character {c:?} appears twice"),
                ));
            }
        }
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 0, "content": "<eos>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null,
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
            "post_processor": null,
            "decoder": {"type": "Fuse"},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<eos>"},
        });
        let inner = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes())
            .map_err(|e| Error::tokenizer("char-level", e.to_string()))?;
        let special = SpecialTokens {
            eos: Some("<eos>".into()),
            unk: Some("<eos>".into()),
            ..SpecialTokens::default()
        };
        Self::assemble(inner, special, None, "char-level".into())
    }

    /// Builds the tokenizer transformers builds when it loads a GGUF file
    /// (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`) from that file's metadata
    /// (`candle_core::quantized::gguf_file::Content::metadata`); `source` names the file in errors.
    pub fn from_gguf_metadata(
        md: &HashMap<String, candle_core::quantized::gguf_file::Value>,
        source: &Path,
    ) -> Result<Self> {
        gguf::from_metadata(md, source)
    }

    /// Puts the parts together, compiling the chat template (errors name `source`).
    pub(crate) fn assemble(
        inner: tokenizers::Tokenizer,
        special: SpecialTokens,
        template: Option<String>,
        source: String,
    ) -> Result<Self> {
        let chat_template = match template {
            None => None,
            Some(src) => {
                let mut t = ChatTemplate::new(src, special.bos.clone(), special.eos.clone())
                    .map_err(|e| Error::tokenizer(&source, e.to_string()))?;
                if let Some(unk) = &special.unk {
                    t = t.with_special_token("unk_token", unk);
                }
                if let Some(pad) = &special.pad {
                    t = t.with_special_token("pad_token", pad);
                }
                Some(t)
            }
        };
        Ok(Tokenizer {
            inner,
            chat_template,
            special,
            source,
        })
    }

    /// Token ids of `text`; `add_special_tokens` applies the post-processor (e.g. a BOS) as
    /// transformers' `tok(text, add_special_tokens=...)` does. Special tokens written in the
    /// text (`<|im_start|>`) become their ids either way.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self.encoding(text, add_special_tokens)?.get_ids().to_vec())
    }

    /// The full encoding (ids and byte offsets into `text`).
    pub(crate) fn encoding(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<tokenizers::Encoding> {
        self.inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::tokenizer(&self.source, format!("cannot encode: {e}")))
    }

    /// The text of `ids`, as transformers' `tok.decode(ids, skip_special_tokens=...)`
    /// (no clean-up of tokenization spaces).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::tokenizer(&self.source, format!("cannot decode: {e}")))
    }

    /// The number of ids, added tokens included (transformers' `len(tok)`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of token `tok` (spelled as in the vocabulary), if any.
    pub fn token_to_id(&self, tok: &str) -> Option<u32> {
        self.inner.token_to_id(tok)
    }

    /// The id of the beginning-of-sequence token.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.special
            .bos
            .as_deref()
            .and_then(|t| self.token_to_id(t))
    }

    /// The id of the end-of-sequence token.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.special
            .eos
            .as_deref()
            .and_then(|t| self.token_to_id(t))
    }

    /// The id of the padding token.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.special
            .pad
            .as_deref()
            .and_then(|t| self.token_to_id(t))
    }

    /// The beginning-of-sequence token string.
    pub fn bos_token(&self) -> Option<&str> {
        self.special.bos.as_deref()
    }

    /// The end-of-sequence token string.
    pub fn eos_token(&self) -> Option<&str> {
        self.special.eos.as_deref()
    }

    /// The padding token string.
    pub fn pad_token(&self) -> Option<&str> {
        self.special.pad.as_deref()
    }

    /// The chat template, if the tokenizer came with one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// `tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`;
    /// an error when the tokenizer has no chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| Error::tokenizer(&self.source, "the tokenizer has no chat template"))?;
        template.render(messages, add_generation_prompt)
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into the existing `dir`.
    ///
    /// The config carries the special tokens, the chat template (inline, which transformers 4
    /// and 5, vLLM and TRL all read) and `tokenizer_class: "PreTrainedTokenizerFast"`: the
    /// generic fast class, which takes `tokenizer.json` as it is. (`GPT2Tokenizer` would
    /// rebuild the pre-tokenizer and lose a GGUF split regex.)
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json_path = dir.join("tokenizer.json");
        let json = self.inner.to_string(true).map_err(|e| {
            Error::tokenizer(
                json_path.display().to_string(),
                format!("cannot serialize: {e}"),
            )
        })?;
        std::fs::write(&json_path, json).map_err(|e| Error::io(&json_path, e))?;

        let mut config = serde_json::Map::new();
        let tokens = [
            ("bos_token", &self.special.bos),
            ("eos_token", &self.special.eos),
            ("unk_token", &self.special.unk),
            ("pad_token", &self.special.pad),
        ];
        for (key, value) in tokens {
            if let Some(v) = value {
                config.insert(key.into(), v.clone().into());
            }
        }
        if let Some(t) = &self.chat_template {
            config.insert("chat_template".into(), t.source().into());
        }
        config.insert("clean_up_tokenization_spaces".into(), false.into());
        config.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        let config_path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(config))
            .map_err(|e| Error::tokenizer(config_path.display().to_string(), e.to_string()))?;
        std::fs::write(&config_path, text + "\n").map_err(|e| Error::io(&config_path, e))
    }
}

/// A special token in `tokenizer_config.json`: a string, an `AddedToken` dict
/// (`{"content": ...}`), or absent / null.
fn token_field(config: &serde_json::Value, key: &str, path: &Path) -> Result<Option<String>> {
    match config.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Object(o)) => match o.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::tokenizer(
                path.display().to_string(),
                format!("`{key}` has no string `content`"),
            )),
        },
        Some(other) => Err(Error::tokenizer(
            path.display().to_string(),
            format!("`{key}` must be a string or an AddedToken object, found {other}"),
        )),
    }
}

/// `chat_template` in `tokenizer_config.json`: a string, or a list of `{name, template}` of
/// which the one named `default` is used.
fn template_field(config: &serde_json::Value, path: &Path) -> Result<Option<String>> {
    let err = |m: &str| Error::tokenizer(path.display().to_string(), m.to_string());
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(items)) => {
            for item in items {
                let name = item.get("name").and_then(|v| v.as_str());
                let template = item.get("template").and_then(|v| v.as_str());
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_string())),
                    (Some(_), Some(_)) => {}
                    _ => {
                        return Err(err(
                            "`chat_template` entries must be {\"name\": ..., \"template\": ...}",
                        ))
                    }
                }
            }
            Ok(None)
        }
        Some(_) => Err(err(
            "`chat_template` must be a string or a list of named templates",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_level_round_trips_and_rejects_repeats() {
        let tok = Tokenizer::char_level("ab c").unwrap();
        assert_eq!(tok.vocab_size(), 5);
        let ids = tok.encode("a cab", false).unwrap();
        assert_eq!(ids, vec![1, 3, 4, 1, 2]);
        assert_eq!(tok.decode(&ids, false).unwrap(), "a cab");
        assert_eq!(tok.eos_token_id(), Some(0));
        // an unknown character becomes <eos>, the unknown token
        assert_eq!(tok.encode("z", false).unwrap(), vec![0]);
        let err = Tokenizer::char_level("aba").unwrap_err().to_string();
        assert!(err.contains("'a'"), "{err}");
    }
}
