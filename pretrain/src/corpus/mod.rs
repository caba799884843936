//! Corpus preparation: read, normalise, deduplicate, decontaminate, write.
//!
//! [`prepare_corpus`] is the whole pipeline, driven by one serde [`CorpusConfig`]:
//!
//! 1. stream documents from JSONL / Parquet / text inputs ([`readers`]);
//! 2. normalise each one ([`normalize()`]); whitespace-only documents are `empty`;
//! 3. drop exact copies of an earlier document ([`dedup`]);
//! 4. drop (or flag) documents sharing a word 13-gram with an evaluation set ([`decontam`]);
//! 5. drop near-duplicates found by MinHash LSH, keeping the first of each cluster ([`minhash`]);
//! 6. write the kept documents as JSONL and the [`CorpusReport`] as JSON ([`report`]).
//!
//! Key decision: two passes over the inputs. The first decides every document's fate
//! while holding only hashes and ids in memory; the second re-reads the inputs and
//! writes the survivors. That keeps memory independent of the corpus's text size and
//! lets near-duplicate clusters be settled with union-find over the *whole* corpus
//! before anything is written (a streaming one-pass filter cannot, since a later
//! document may join two earlier clusters). Outputs are written to a temporary file and
//! renamed into place, so an interrupted run never leaves a half-written corpus.

pub mod decontam;
pub mod dedup;
pub mod minhash;
pub mod normalize;
pub mod readers;
pub mod report;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use smelt::{Error, Result};

pub use decontam::{ContaminationAction, DecontamConfig, EvalSource, NgramIndex};
pub use dedup::ExactDedup;
pub use minhash::{MinhashConfig, MinhashLsh};
pub use normalize::{normalize, NormalizeConfig};
pub use readers::{read_inputs, Document, InputFormat, InputSpec, TextSplit};
pub use report::{CorpusReport, Outcome, Reason, ReasonCounts};

/// Everything [`prepare_corpus`] does, as read from a recipe's `[corpus]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorpusConfig {
    /// The inputs, read in order (document order decides which copy is kept).
    pub inputs: Vec<InputSpec>,
    /// The kept documents, one `{"id", "text"}` JSON object per line (required).
    pub output: PathBuf,
    /// The JSON report (default: `output` with extension `.report.json`).
    pub report: Option<PathBuf>,
    /// Text normalisation (defaults: NFC, `\n`, no control characters, ≤ 2 blank lines, trimmed).
    pub normalize: NormalizeConfig,
    /// Remove exact duplicates of the normalised text (default true).
    pub exact_dedup: bool,
    /// MinHash LSH near-duplicate removal (defaults: datatrove's 5-grams, 14 × 8).
    pub minhash: MinhashConfig,
    /// n-gram decontamination (default: no evaluation sets, off).
    pub decontamination: DecontamConfig,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        CorpusConfig {
            inputs: Vec::new(),
            output: PathBuf::new(),
            report: None,
            normalize: NormalizeConfig::default(),
            exact_dedup: true,
            minhash: MinhashConfig::default(),
            decontamination: DecontamConfig::default(),
        }
    }
}

impl CorpusConfig {
    /// Parses a TOML file; an unknown key is an error naming it.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::config(path, e.to_string()))
    }

    /// Where the report goes.
    pub fn report_path(&self) -> PathBuf {
        self.report
            .clone()
            .unwrap_or_else(|| self.output.with_extension("report.json"))
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Invalid(format!("corpus config: {m}")));
        if self.inputs.is_empty() {
            return bad("`inputs` is empty: name at least one file or folder");
        }
        if self.output.as_os_str().is_empty() {
            return bad("`output` is required");
        }
        let m = &self.minhash;
        if m.enabled && (m.n_grams == 0 || m.num_buckets == 0 || m.hashes_per_bucket == 0) {
            return bad(
                "`minhash.n_grams`, `num_buckets` and `hashes_per_bucket` must be at least 1",
            );
        }
        Ok(())
    }
}

/// Runs the pipeline described in the module docs: writes the kept documents to
/// `config.output` and the report beside it, and returns the report.
///
/// Errors: a malformed input names its file and line (or row); a corpus with no
/// documents at all is an error; nothing is written unless every step succeeded.
pub fn prepare_corpus(config: CorpusConfig) -> Result<CorpusReport> {
    config.validate()?;
    let index = if config.decontamination.eval_sets.is_empty() {
        None
    } else {
        Some(NgramIndex::build(&config.decontamination)?)
    };

    // Pass 1: decide every document's fate.
    let mut ids: Vec<String> = Vec::new();
    let mut locations: Vec<String> = Vec::new();
    let mut fate: Vec<Option<Reason>> = Vec::new();
    let mut flagged = Vec::new();
    let mut exact = ExactDedup::new();
    let mut lsh = config
        .minhash
        .enabled
        .then(|| MinhashLsh::new(config.minhash.clone()));
    let mut chars_read = 0;
    for doc in read_inputs(&config.inputs)? {
        let doc = doc?;
        let i = ids.len();
        chars_read += doc.text.chars().count();
        let text = normalize(&doc.text, &config.normalize);
        let reason = if text.trim().is_empty() {
            Some(Reason::Empty)
        } else if let Some(first) = config.exact_dedup.then(|| exact.check(&text, i)).flatten() {
            Some(Reason::ExactDuplicate {
                of: ids[first].clone(),
            })
        } else {
            match index.as_ref().and_then(|ix| ix.find(&text)) {
                Some(hit) => {
                    let reason = Reason::Contaminated {
                        ngram: hit.ngram,
                        eval_file: hit.eval_file,
                    };
                    match config.decontamination.action {
                        ContaminationAction::Drop => Some(reason),
                        ContaminationAction::Flag => {
                            flagged.push(Outcome {
                                id: doc.id.clone(),
                                location: doc.location.clone(),
                                reason,
                            });
                            None
                        }
                    }
                }
                None => None,
            }
        };
        if reason.is_none() {
            if let Some(lsh) = lsh.as_mut() {
                lsh.insert(i, &text);
            }
        }
        ids.push(doc.id);
        locations.push(doc.location);
        fate.push(reason);
    }
    if ids.is_empty() {
        let paths: Vec<_> = config
            .inputs
            .iter()
            .map(|s| s.path.display().to_string())
            .collect();
        return Err(Error::Invalid(format!(
            "the corpus is empty: no documents in {}",
            paths.join(", ")
        )));
    }
    if let Some(lsh) = lsh {
        for (dup, kept) in lsh.near_duplicates() {
            fate[dup] = Some(Reason::NearDuplicate {
                kept: ids[kept].clone(),
            });
        }
    }

    // Pass 2: write the survivors.
    let mut chars_kept = 0;
    let mut documents_kept = 0;
    write_file_atomically(&config.output, |w| {
        let mut seen = 0;
        for doc in read_inputs(&config.inputs)? {
            let doc = doc?;
            let i = seen;
            seen += 1;
            if ids.get(i) != Some(&doc.id) {
                return Err(Error::Invalid(format!(
                    "{}: the inputs changed while the corpus was being prepared",
                    doc.location
                )));
            }
            if fate[i].is_some() {
                continue;
            }
            let text = normalize(&doc.text, &config.normalize);
            chars_kept += text.chars().count();
            documents_kept += 1;
            let line = serde_json::json!({ "id": doc.id, "text": text });
            writeln!(w, "{line}").map_err(|e| Error::io(&config.output, e))?;
        }
        if seen != ids.len() {
            return Err(Error::Invalid(
                "the inputs changed while the corpus was being prepared".into(),
            ));
        }
        Ok(())
    })?;

    let mut removed_counts = ReasonCounts::default();
    let removed = fate
        .into_iter()
        .enumerate()
        .filter_map(|(i, reason)| {
            let reason = reason?;
            removed_counts.add(&reason);
            Some(Outcome {
                id: ids[i].clone(),
                location: locations[i].clone(),
                reason,
            })
        })
        .collect();
    let report = CorpusReport {
        output: config.output.clone(),
        documents_read: ids.len(),
        documents_kept,
        removed_counts,
        chars_read,
        chars_kept,
        minhash_threshold: config.minhash.enabled.then(|| config.minhash.threshold()),
        eval_ngrams: index.as_ref().map_or(0, NgramIndex::len),
        removed,
        flagged,
    };
    report.write_json(&config.report_path())?;
    Ok(report)
}

/// Atomic file writes come from the core (temporary sibling, fsync, rename).
pub use smelt::checkpoint::write_file_atomically;
