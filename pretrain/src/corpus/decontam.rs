//! n-gram decontamination against evaluation sets (GPT-3 §C, lighteval, SmolLM).
//!
//! Every word n-gram (n = 13 by default) of every evaluation text is hashed into a set;
//! a training document containing any of them is contaminated. Words are those of the
//! matching form ([`words`]: lowercase, punctuation and accents
//! stripped), so a copy of a benchmark question survives no re-punctuation. Key decision:
//! only 64-bit hashes (and the index of the eval file) are kept, not the n-grams — the
//! n-gram reported for a hit is read back from the training document's own words. An
//! evaluation text shorter than n words contributes nothing (it is counted in
//! [`NgramIndex::short_texts`]): a whole short answer such as "yes" would otherwise flag
//! half the corpus.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use smelt::{Error, Result};
use xxhash_rust::xxh3::xxh3_64;

use super::normalize::words;
use super::readers::{json_kind, read_text_file, InputFormat, JsonlLines, TextSplit};

/// What happens to a contaminated training document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContaminationAction {
    /// Remove it from the output (default).
    #[default]
    Drop,
    /// Keep it, and list it in the report's `flagged`.
    Flag,
}

/// One evaluation set file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSource {
    /// A JSONL file, or a plain-text file whose blank-line-separated paragraphs are the texts.
    pub path: PathBuf,
    /// `jsonl` or `text`; default: from the extension.
    pub format: Option<InputFormat>,
    /// JSONL fields whose text is protected (default `["text"]`); a field may hold a
    /// string or an array of strings (e.g. answer choices); a record may lack some of them.
    pub fields: Vec<String>,
}

impl Default for EvalSource {
    fn default() -> Self {
        EvalSource {
            path: PathBuf::new(),
            format: None,
            fields: vec!["text".into()],
        }
    }
}

/// Decontamination settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecontamConfig {
    /// The evaluation sets to protect (default none: decontamination off).
    pub eval_sets: Vec<EvalSource>,
    /// Words per n-gram (default 13, GPT-3 and lighteval).
    pub n_gram: usize,
    /// Drop or only flag contaminated documents (default drop).
    pub action: ContaminationAction,
}

impl Default for DecontamConfig {
    fn default() -> Self {
        DecontamConfig {
            eval_sets: Vec::new(),
            n_gram: 13,
            action: ContaminationAction::Drop,
        }
    }
}

/// A training document's first n-gram found in an evaluation set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contamination {
    /// The n-gram, as matching-form words joined by spaces.
    pub ngram: String,
    /// The evaluation file it occurs in.
    pub eval_file: PathBuf,
}

/// The hashed n-grams of all evaluation texts.
#[derive(Debug)]
pub struct NgramIndex {
    n: usize,
    grams: HashMap<u64, u32>,
    files: Vec<PathBuf>,
    /// Evaluation texts read.
    pub texts: usize,
    /// Evaluation texts shorter than `n` words, which contribute no n-gram.
    pub short_texts: usize,
}

fn ngram_key(words: &[String]) -> u64 {
    xxh3_64(words.join(" ").as_bytes())
}

impl NgramIndex {
    /// Reads every evaluation set in `config`; errors name the file (and line).
    pub fn build(config: &DecontamConfig) -> Result<Self> {
        if config.n_gram == 0 {
            return Err(Error::Invalid(
                "decontamination.n_gram must be at least 1".into(),
            ));
        }
        let mut index = NgramIndex {
            n: config.n_gram,
            grams: HashMap::new(),
            files: Vec::new(),
            texts: 0,
            short_texts: 0,
        };
        for source in &config.eval_sets {
            let file = index.files.len() as u32;
            index.files.push(source.path.clone());
            let texts_before = index.texts;
            let format = source
                .format
                .or_else(|| InputFormat::from_extension(&source.path));
            match format {
                Some(InputFormat::Jsonl) => {
                    for rec in JsonlLines::open(&source.path)? {
                        let rec = rec?;
                        for field in &source.fields {
                            match rec.object.get(field) {
                                None | Some(Value::Null) => {}
                                Some(Value::String(s)) => index.add(s, file),
                                Some(Value::Array(items)) => {
                                    for item in items {
                                        let Value::String(s) = item else {
                                            return Err(Error::Invalid(format!(
                                                "{}: field `{field}` must hold strings, found {}",
                                                rec.location,
                                                json_kind(item)
                                            )));
                                        };
                                        index.add(s, file);
                                    }
                                }
                                Some(other) => {
                                    return Err(Error::Invalid(format!(
                                        "{}: field `{field}` must be a string or an array of \
                                         strings, found {}",
                                        rec.location,
                                        json_kind(other)
                                    )))
                                }
                            }
                        }
                    }
                }
                Some(InputFormat::Text) => {
                    for doc in read_text_file(&source.path, TextSplit::BlankLines)? {
                        index.add(&doc.text, file);
                    }
                }
                Some(InputFormat::Parquet) | None => {
                    return Err(Error::Invalid(format!(
                        "{}: evaluation sets must be JSONL or plain text (set `format`)",
                        source.path.display()
                    )))
                }
            }
            if index.texts == texts_before {
                return Err(Error::Invalid(format!(
                    "{}: no evaluation text found (fields: {})",
                    source.path.display(),
                    source.fields.join(", ")
                )));
            }
        }
        Ok(index)
    }

    fn add(&mut self, text: &str, file: u32) {
        self.texts += 1;
        let words = words(text);
        if words.len() < self.n {
            self.short_texts += 1;
            return;
        }
        for gram in words.windows(self.n) {
            self.grams.entry(ngram_key(gram)).or_insert(file);
        }
    }

    /// The number of distinct n-grams indexed.
    pub fn len(&self) -> usize {
        self.grams.len()
    }

    /// Whether no n-gram is indexed.
    pub fn is_empty(&self) -> bool {
        self.grams.is_empty()
    }

    /// The first n-gram of `text` found in an evaluation set, if any.
    pub fn find(&self, text: &str) -> Option<Contamination> {
        if self.grams.is_empty() {
            return None;
        }
        let words = words(text);
        words.windows(self.n).find_map(|gram| {
            self.grams.get(&ngram_key(gram)).map(|&f| Contamination {
                ngram: gram.join(" "),
                eval_file: self.files[f as usize].clone(),
            })
        })
    }
}
