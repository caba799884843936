//! Byte-level BPE tokenizer training (GPT-2 / SmolLM style).
//!
//! [`train_bpe`] runs the `tokenizers` crate's `BpeTrainer` behind a byte-level
//! pre-tokenizer and decoder: text is split with the GPT-2 regex (digits first split one
//! by one, as SmolLM2's tokenizer does), mapped to the 256-symbol byte alphabet, and
//! merges are learned on top. Key decision: the initial alphabet is *all 256 bytes*,
//! whatever the corpus holds, so every string — any script, emoji, control bytes —
//! encodes without an unknown token and decodes back to itself; the special tokens
//! (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>` by default) take the first ids and are
//! never split.
//!
//! The trained tokenizer is written as `tokenizer.json` + `tokenizer_config.json` (special
//! token roles and, when set, a chat template) and loaded back through
//! `smelt::tokenizer::Tokenizer::from_dir`, so what the caller gets is exactly what a
//! later stage (or transformers) loads from that folder. A ChatML template for SFT is
//! attached by setting [`BpeTrainingConfig::chat_template`] to [`CHATML_TEMPLATE`] (and
//! `eos_token` to `<|im_end|>`, as SmolLM2-Instruct does).

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use smelt::tokenizer::Tokenizer;
use smelt::{Error, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::corpus::{read_inputs, write_file_atomically, InputSpec};

/// SmolLM2's ChatML chat template without its default system prompt: each message is
/// `<|im_start|>{role}\n{content}<|im_end|>\n`; the generation prompt is
/// `<|im_start|>assistant\n`.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// How to train the tokenizer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BpeTrainingConfig {
    /// Final vocabulary size, special tokens and the 256 byte symbols included
    /// (default 8192; SmolLM2 uses 49,152).
    pub vocab_size: usize,
    /// A pair is merged only if it occurs at least this often (default 2).
    pub min_frequency: u64,
    /// Special tokens, given the first ids in this order
    /// (default `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, as SmolLM2).
    pub special_tokens: Vec<String>,
    /// Byte-level BPE (default true; the only kind supported — it is what makes every
    /// string encodable).
    pub byte_level: bool,
    /// Split digits into single-digit pieces before BPE (default true, as SmolLM2).
    pub split_digits: bool,
    /// The beginning-of-sequence token (default `<|endoftext|>`, as SmolLM2 base).
    pub bos_token: Option<String>,
    /// The end-of-sequence token (default `<|endoftext|>`; `<|im_end|>` for a chat model).
    pub eos_token: Option<String>,
    /// The padding token (default none).
    pub pad_token: Option<String>,
    /// A Jinja chat template saved in `tokenizer_config.json` (default none; see [`CHATML_TEMPLATE`]).
    pub chat_template: Option<String>,
}

impl Default for BpeTrainingConfig {
    fn default() -> Self {
        BpeTrainingConfig {
            vocab_size: 8192,
            min_frequency: 2,
            special_tokens: ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
                .map(String::from)
                .to_vec(),
            byte_level: true,
            split_digits: true,
            bos_token: Some("<|endoftext|>".into()),
            eos_token: Some("<|endoftext|>".into()),
            pad_token: None,
            chat_template: None,
        }
    }
}

impl BpeTrainingConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("bpe config: {m}")));
        if !self.byte_level {
            return bad(
                "`byte_level = false` is not supported: only byte-level BPE encodes every string"
                    .into(),
            );
        }
        let floor = 256 + self.special_tokens.len();
        if self.vocab_size <= floor {
            return bad(format!(
                "`vocab_size` {} leaves no room for merges: it must exceed 256 bytes + {} special tokens",
                self.vocab_size,
                self.special_tokens.len()
            ));
        }
        for (key, token) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("pad_token", &self.pad_token),
        ] {
            if let Some(t) = token {
                if !self.special_tokens.contains(t) {
                    return bad(format!("`{key}` {t:?} is not in `special_tokens`"));
                }
            }
        }
        Ok(())
    }
}

/// Trains a byte-level BPE `tokenizers::Tokenizer` on `texts` (the step before saving).
pub fn train_bpe_tokenizer<I, S>(
    texts: I,
    config: &BpeTrainingConfig,
) -> Result<tokenizers::Tokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    config.validate()?;
    let err = |m: String| Error::tokenizer("bpe training", m);
    let byte_level = ByteLevel::default()
        .add_prefix_space(false)
        .trim_offsets(false);
    let mut pieces = Vec::new();
    if config.split_digits {
        pieces.push(PreTokenizerWrapper::Digits(Digits::new(true)));
    }
    pieces.push(PreTokenizerWrapper::ByteLevel(byte_level));

    let mut tokenizer = tokenizers::Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(Sequence::new(pieces)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer.with_post_processor(Some(byte_level));

    let specials = config
        .special_tokens
        .iter()
        .map(|t| AddedToken::from(t.clone(), true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(config.vocab_size)
        .min_frequency(config.min_frequency)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build()
        .into();
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| err(e.to_string()))?;
    Ok(tokenizer)
}

/// Trains on `texts`, writes `tokenizer.json` and `tokenizer_config.json` into `out_dir`
/// (created if needed; each file replaced atomically; other files left alone) and loads
/// the result back with `Tokenizer::from_dir`.
pub fn train_bpe<I, S>(texts: I, config: &BpeTrainingConfig, out_dir: &Path) -> Result<Tokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let inner = train_bpe_tokenizer(texts, config)?;
    save_trained(&inner, config, out_dir)?;
    Tokenizer::from_dir(out_dir)
}

/// [`train_bpe`] on the documents of corpus inputs (JSONL, Parquet, text), streamed from
/// a reader thread; a malformed input is an error naming its file and line.
pub fn train_bpe_from_inputs(
    inputs: &[InputSpec],
    config: &BpeTrainingConfig,
    out_dir: &Path,
) -> Result<Tokenizer> {
    let (tx, rx) = mpsc::sync_channel::<String>(1024);
    let inputs = inputs.to_vec();
    let reader = std::thread::spawn(move || -> Result<usize> {
        let mut n = 0;
        for doc in read_inputs(&inputs)? {
            if tx.send(doc?.text).is_err() {
                break;
            }
            n += 1;
        }
        Ok(n)
    });
    let trained = train_bpe_tokenizer(rx.into_iter(), config);
    let read = reader
        .join()
        .map_err(|_| Error::Invalid("the corpus reader thread panicked".into()))?;
    if read? == 0 {
        return Err(Error::Invalid("bpe training: the corpus is empty".into()));
    }
    let inner = trained?;
    save_trained(&inner, config, out_dir)?;
    Tokenizer::from_dir(out_dir)
}

/// Writes `tokenizer.json` and a `tokenizer_config.json` in the form `Tokenizer::save`
/// writes (special token roles, chat template, `PreTrainedTokenizerFast`).
fn save_trained(
    inner: &tokenizers::Tokenizer,
    config: &BpeTrainingConfig,
    dir: &Path,
) -> Result<()> {
    let json_path = dir.join("tokenizer.json");
    let json = inner.to_string(true).map_err(|e| {
        Error::tokenizer(
            json_path.display().to_string(),
            format!("cannot serialize: {e}"),
        )
    })?;
    write_file_atomically(&json_path, |w| {
        w.write_all(json.as_bytes())
            .map_err(|e| Error::io(&json_path, e))
    })?;

    let mut cfg = serde_json::Map::new();
    for (key, value) in [
        ("bos_token", &config.bos_token),
        ("eos_token", &config.eos_token),
        ("pad_token", &config.pad_token),
    ] {
        if let Some(v) = value {
            cfg.insert(key.into(), v.clone().into());
        }
    }
    if let Some(t) = &config.chat_template {
        cfg.insert("chat_template".into(), t.clone().into());
    }
    cfg.insert("clean_up_tokenization_spaces".into(), false.into());
    cfg.insert("model_max_length".into(), 8192.into());
    cfg.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
    let cfg_path = dir.join("tokenizer_config.json");
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(cfg))
        .map_err(|e| Error::tokenizer(cfg_path.display().to_string(), e.to_string()))?;
    write_file_atomically(&cfg_path, |w| {
        writeln!(w, "{text}").map_err(|e| Error::io(&cfg_path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_what_cannot_work() {
        let small = BpeTrainingConfig {
            vocab_size: 259,
            ..Default::default()
        };
        assert!(small
            .validate()
            .unwrap_err()
            .to_string()
            .contains("vocab_size"));
        let char_level = BpeTrainingConfig {
            byte_level: false,
            ..Default::default()
        };
        assert!(char_level
            .validate()
            .unwrap_err()
            .to_string()
            .contains("byte_level"));
        let eos = BpeTrainingConfig {
            eos_token: Some("</s>".into()),
            ..Default::default()
        };
        assert!(eos
            .validate()
            .unwrap_err()
            .to_string()
            .contains("eos_token"));
        let unknown = toml::from_str::<BpeTrainingConfig>("vocab_sise = 10");
        assert!(unknown.unwrap_err().to_string().contains("vocab_sise"));
    }
}
