//! Building a tokenizer from GGUF metadata, the way transformers does.
//!
//! A GGUF carries no `tokenizer.json`: it stores the vocabulary, merges, token types and
//! special-token ids under llama.cpp's keys (`tokenizer.ggml.*`). The reference is what
//! transformers 5 builds from them (`integrations/gguf/gguf_tokenizer_mapping.py`), because
//! that is the tokenizer every Python tool sees for the same file. For `tokenizer.ggml.model
//! = "gpt2"` that is a `GPT2Tokenizer`:
//!
//! * model: byte-level BPE over the file's tokens (a token not spelled in the byte alphabet is
//!   respelled from its UTF-8 bytes) and merges (`"a b"` strings), no unk token, no dropout;
//! * normalizer: none;
//! * pre-tokenizer: `ByteLevel(add_prefix_space=false)` with GPT-2's regex, unless
//!   `tokenizer.ggml.pre` names a split regex transformers knows (llama3, qwen2, gpt-4o, ...):
//!   then `Sequence[Split(regex, isolated), ByteLevel(use_regex=false)]`. SmolLM2's `"smollm"`
//!   is not in that table, so it gets GPT-2's regex (its vocabulary has no multi-digit tokens,
//!   so digits still come out one per token as with the hub tokenizer's `Digits` splitter);
//! * decoder: `ByteLevel`;
//! * post-processor: `TemplateProcessing` adding BOS / EOS only when
//!   `tokenizer.ggml.add_bos_token` / `add_eos_token` say so;
//! * added tokens: every CONTROL token (type 3) spelled in the byte alphabet as a special
//!   token, every USER_DEFINED token (type 4) as a plain added token.
//!
//! Key decision: mirror transformers' converter exactly (even where llama.cpp's own
//! pre-tokenizer differs), so ids agree with the Python reference the trainers are compared to.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::{SpecialTokens, Tokenizer};
use crate::error::{Error, Result};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// transformers' `GGUF_PRE_TOKENIZER_SPLITS`: `tokenizer.ggml.pre` → split regex.
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's `bytes_to_unicode`: the printable character each byte is spelled as.
pub(crate) fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    map
}

struct Md<'a> {
    md: &'a HashMap<String, Value>,
    source: &'a Path,
}

impl Md<'_> {
    fn err(&self, message: impl Into<String>) -> Error {
        Error::tokenizer(self.source.display().to_string(), message)
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.md.get(key)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| self.err(format!("GGUF metadata has no `{key}`")))
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(format!(
                "`{key}` must be a string, found {:?}",
                v.value_type()
            ))),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        let Value::Array(items) = self.require(key)? else {
            return Err(self.err(format!("`{key}` must be an array of strings")));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(self.err(format!(
                    "`{key}`[{i}] must be a string, found {:?}",
                    other.value_type()
                ))),
            })
            .collect()
    }

    fn int(&self, key: &str) -> Result<Option<i64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        as_i64(v).map(Some).ok_or_else(|| {
            self.err(format!(
                "`{key}` must be an integer, found {:?}",
                v.value_type()
            ))
        })
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(self.err(format!("`{key}` must be an array of integers")));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                as_i64(v).ok_or_else(|| self.err(format!("`{key}`[{i}] must be an integer")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn flag(&self, key: &str) -> Result<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(format!(
                "`{key}` must be a bool, found {:?}",
                v.value_type()
            ))),
        }
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => i64::try_from(x).ok()?,
        Value::I64(x) => x,
        _ => return None,
    })
}

const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Builds the tokenizer transformers builds from this GGUF metadata.
pub(crate) fn from_metadata(md: &HashMap<String, Value>, source: &Path) -> Result<Tokenizer> {
    let md = Md { md, source };
    let model = md
        .string("tokenizer.ggml.model")?
        .ok_or_else(|| md.err("GGUF metadata has no `tokenizer.ggml.model`"))?;
    if model != "gpt2" {
        return Err(md.err(format!(
            "`tokenizer.ggml.model` is {model:?}; only byte-level BPE (\"gpt2\") tokenizers can be built from GGUF \
             metadata (export the model with a tokenizer.json instead)"
        )));
    }
    let tokens = md.strings("tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(md.err("`tokenizer.ggml.tokens` is empty"));
    }
    let token_types = md.ints("tokenizer.ggml.token_type")?.unwrap_or_default();
    if !token_types.is_empty() && token_types.len() != tokens.len() {
        return Err(md.err(format!(
            "`tokenizer.ggml.token_type` has {} entries but `tokenizer.ggml.tokens` has {}",
            token_types.len(),
            tokens.len()
        )));
    }
    if md.get("tokenizer.ggml.merges").is_none() {
        return Err(md.err(
            "GGUF metadata has no `tokenizer.ggml.merges` (needed for a byte-level BPE tokenizer)",
        ));
    }
    let merges = md
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !b.contains(' ') => Ok((a.to_string(), b.to_string())),
            _ => Err(md.err(format!(
                "`tokenizer.ggml.merges`[{i}] = {m:?} is not two tokens separated by one space"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;

    // The vocabulary as transformers' `byte_level_tokenizer` spells it (later duplicates win, as in a dict).
    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let spell = |t: &str| -> String {
        if t.chars().all(|c| alphabet.contains(&c)) {
            t.to_string()
        } else {
            t.bytes().map(|b| spelling[b as usize]).collect()
        }
    };
    let mut vocab = tokenizers::models::bpe::Vocab::default();
    for (id, t) in tokens.iter().enumerate() {
        vocab.insert(spell(t), id as u32);
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| {
            md.err(format!(
                "cannot build the BPE model from `tokenizer.ggml.tokens`/`merges`: {e}"
            ))
        })?;

    let mut tk = tokenizers::Tokenizer::new(bpe);
    let pre = md.string("tokenizer.ggml.pre")?;
    match pre.as_deref().and_then(split_regex) {
        Some(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| {
                md.err(format!(
                    "split regex for `tokenizer.ggml.pre` = {pre:?}: {e}"
                ))
            })?;
            let byte_level = ByteLevel::new(false, true, false);
            tk.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])));
        }
        None => {
            tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
    }
    tk.with_decoder(Some(ByteLevelDecoder::default()));

    // Special tokens, by id, as transformers' `get_gguf_tokenizer` names them.
    let name_of = |key: &str| -> Result<Option<String>> {
        match md.int(key)? {
            None => Ok(None),
            Some(id) => usize::try_from(id)
                .ok()
                .and_then(|i| tokens.get(i))
                .cloned()
                .map(Some)
                .ok_or_else(|| {
                    md.err(format!(
                        "`{key}` = {id} is not an id in `tokenizer.ggml.tokens`"
                    ))
                }),
        }
    };
    let special = SpecialTokens {
        bos: name_of("tokenizer.ggml.bos_token_id")?,
        eos: name_of("tokenizer.ggml.eos_token_id")?,
        unk: name_of("tokenizer.ggml.unknown_token_id")?,
        pad: name_of("tokenizer.ggml.padding_token_id")?,
    };

    let add_bos = md.flag("tokenizer.ggml.add_bos_token")? && special.bos.is_some();
    let add_eos = md.flag("tokenizer.ggml.add_eos_token")? && special.eos.is_some();
    let processor = post_processor(&tk, &special, add_bos, add_eos).map_err(|e| md.err(e))?;
    tk.with_post_processor(Some(processor));

    // The named special tokens are special added tokens (GPT2Tokenizer's constructor), then
    // every CONTROL token spelled in the byte alphabet, then USER_DEFINED ones as plain added tokens.
    let mut specials: Vec<AddedToken> = Vec::new();
    for t in [&special.bos, &special.eos, &special.unk, &special.pad]
        .into_iter()
        .flatten()
    {
        specials.push(AddedToken::from(t.clone(), true).normalized(false));
    }
    for (t, ty) in tokens.iter().zip(&token_types) {
        if *ty == CONTROL && t.chars().all(|c| alphabet.contains(&c)) {
            specials.push(AddedToken::from(t.clone(), true).normalized(false));
        }
    }
    tk.add_special_tokens(specials)
        .map_err(|e| md.err(format!("adding special tokens: {e}")))?;
    let known = tk.get_vocab(true);
    let user_defined: Vec<AddedToken> = tokens
        .iter()
        .zip(&token_types)
        .filter(|(t, ty)| **ty == USER_DEFINED && known.contains_key(t.as_str()))
        .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    if !user_defined.is_empty() {
        tk.add_tokens(user_defined)
            .map_err(|e| md.err(format!("adding user-defined tokens: {e}")))?;
    }

    let chat_template = md.string("tokenizer.chat_template")?;
    Tokenizer::assemble(tk, special, chat_template, source.display().to_string())
}

/// transformers' `update_post_processor`: `[bos:0] $A:0 [eos:0]` and `... [bos:1] $B:1 [eos:1]`.
fn post_processor(
    tk: &tokenizers::Tokenizer,
    special: &SpecialTokens,
    add_bos: bool,
    add_eos: bool,
) -> std::result::Result<TemplateProcessing, String> {
    let mut single = Vec::new();
    let mut pair_tail = Vec::new();
    let mut ids: Vec<(String, u32)> = Vec::new();
    let add = |tok: &Option<String>,
               ids: &mut Vec<(String, u32)>|
     -> std::result::Result<String, String> {
        let t = tok.clone().unwrap_or_default();
        let id = tk
            .token_to_id(&t)
            .ok_or_else(|| format!("special token {t:?} is not in the vocabulary"))?;
        if !ids.iter().any(|(s, _)| *s == t) {
            ids.push((t.clone(), id));
        }
        Ok(t)
    };
    if add_bos {
        let b = add(&special.bos, &mut ids)?;
        single.push(format!("{b}:0"));
        pair_tail.push(format!("{b}:1"));
    }
    single.push("$A:0".to_string());
    pair_tail.push("$B:1".to_string());
    if add_eos {
        let e = add(&special.eos, &mut ids)?;
        single.push(format!("{e}:0"));
        pair_tail.push(format!("{e}:1"));
    }
    let single = single.join(" ");
    let pair = format!("{single} {}", pair_tail.join(" "));
    TemplateProcessing::builder()
        .try_single(single.as_str())
        .and_then(|b| b.try_pair(pair.as_str()))
        .map_err(|e| format!("post-processor template: {e}"))?
        .special_tokens(ids)
        .build()
        .map_err(|e| format!("post-processor: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level vocabulary (256 byte tokens), merges "a b" and "ab c", a control token and a
    /// user-defined token: enough to check each part of the conversion without a model file.
    fn metadata(pre: Option<&str>, add_bos: bool) -> HashMap<String, Value> {
        let spelling = bytes_to_unicode();
        let mut tokens: Vec<String> = vec!["<|end|>".into()];
        tokens.extend(spelling.iter().map(|c| c.to_string()));
        tokens.extend(["ab".into(), "abc".into(), "<think>".into()]);
        let mut types = vec![CONTROL];
        types.extend(std::iter::repeat_n(1, 258));
        types.push(USER_DEFINED);
        let s = |v: &str| Value::String(v.into());
        let mut md = HashMap::new();
        md.insert("tokenizer.ggml.model".into(), s("gpt2"));
        if let Some(p) = pre {
            md.insert("tokenizer.ggml.pre".into(), s(p));
        }
        md.insert(
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| s(t)).collect()),
        );
        md.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(|t| Value::I32(t as i32)).collect()),
        );
        md.insert(
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![s("a b"), s("ab c")]),
        );
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(0));
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(0));
        md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos));
        md
    }

    #[test]
    fn builds_byte_level_bpe_with_special_and_user_tokens() {
        let tok = from_metadata(&metadata(None, false), Path::new("tiny.gguf")).unwrap();
        let id = |t: &str| tok.token_to_id(t).unwrap();
        // "abc" merges fully; "<|end|>" and "<think>" stay whole; " " is byte-spelled as "Ġ".
        assert_eq!(
            tok.encode("abc<|end|> a<think>", false).unwrap(),
            vec![id("abc"), 0, id("Ġ"), id("a"), id("<think>")]
        );
        assert_eq!(
            tok.decode(&[id("abc"), 0, id("Ġ"), id("a")], false)
                .unwrap(),
            "abc<|end|> a"
        );
        assert_eq!(tok.decode(&[id("abc"), 0], true).unwrap(), "abc");
        assert_eq!(tok.vocab_size(), 260);
        assert_eq!(tok.eos_token_id(), Some(0));
    }

    #[test]
    fn add_bos_token_flag_adds_bos() {
        let tok = from_metadata(&metadata(None, true), Path::new("tiny.gguf")).unwrap();
        let ab = tok.token_to_id("ab").unwrap();
        assert_eq!(tok.encode("ab", true).unwrap(), vec![0, ab]);
        assert_eq!(tok.encode("ab", false).unwrap(), vec![ab]);
    }

    #[test]
    fn known_pre_uses_its_split_regex() {
        // llama3's regex cuts digit runs into groups of three, GPT-2's keeps the run whole (and
        // BPE here has no digit merges either way), so compare the pre-tokenizer's pieces.
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
        let pieces = |pre: Option<&str>| {
            let tok = from_metadata(&metadata(pre, false), Path::new("tiny.gguf")).unwrap();
            let mut s = PreTokenizedString::from("12345 ab");
            tok.inner()
                .get_pre_tokenizer()
                .unwrap()
                .pre_tokenize(&mut s)
                .unwrap();
            s.get_splits(OffsetReferential::Original, OffsetType::Byte)
                .into_iter()
                .map(|(t, _, _)| t.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(pieces(None), vec!["12345", "Ġab"]);
        assert_eq!(pieces(Some("llama-bpe")), vec!["123", "45", "Ġab"]);
    }

    #[test]
    fn bad_metadata_is_an_error_naming_the_key() {
        let mut md = metadata(None, false);
        md.insert(
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![Value::String("abc".into())]),
        );
        let err = from_metadata(&md, Path::new("tiny.gguf"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tiny.gguf") && err.contains("tokenizer.ggml.merges`[0]"),
            "{err}"
        );

        let mut md = metadata(None, false);
        md.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        let err = from_metadata(&md, Path::new("tiny.gguf"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokenizer.ggml.model"), "{err}");

        let mut md = metadata(None, false);
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(99_999));
        let err = from_metadata(&md, Path::new("tiny.gguf"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokenizer.ggml.eos_token_id"), "{err}");
    }
}
