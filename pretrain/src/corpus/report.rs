//! The preparation report: what was kept, what was removed and why.
//!
//! Key decision: every removed (or flagged) document is listed with its id, its location
//! and a typed reason carrying the evidence — the id of the copy that was kept, or the
//! matching n-gram and the evaluation file — so a surprising removal can be checked by
//! hand. The report is JSON, written atomically beside the output.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use smelt::{Error, Result};

use super::write_file_atomically;

/// Why a document was removed (or flagged).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// Nothing but whitespace after normalisation.
    Empty,
    /// The same normalised text as an earlier document.
    ExactDuplicate {
        /// The id of the first copy, which is kept.
        of: String,
    },
    /// In a MinHash LSH cluster whose first document is kept.
    NearDuplicate {
        /// The id of the cluster's kept document.
        kept: String,
    },
    /// Contains a word n-gram of an evaluation set.
    Contaminated {
        /// The matching n-gram (matching-form words).
        ngram: String,
        /// The evaluation file that holds it.
        eval_file: PathBuf,
    },
}

/// One removed or flagged document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The document's id.
    pub id: String,
    /// Where it was read.
    pub location: String,
    /// Why.
    #[serde(flatten)]
    pub reason: Reason,
}

/// Removed documents per reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReasonCounts {
    /// Empty after normalisation.
    pub empty: usize,
    /// Exact duplicates.
    pub exact_duplicate: usize,
    /// MinHash near-duplicates.
    pub near_duplicate: usize,
    /// Contaminated (dropped; flagged ones are counted in `CorpusReport::flagged`).
    pub contaminated: usize,
}

impl ReasonCounts {
    /// Counts `reason`.
    pub fn add(&mut self, reason: &Reason) {
        match reason {
            Reason::Empty => self.empty += 1,
            Reason::ExactDuplicate { .. } => self.exact_duplicate += 1,
            Reason::NearDuplicate { .. } => self.near_duplicate += 1,
            Reason::Contaminated { .. } => self.contaminated += 1,
        }
    }

    /// All removed documents.
    pub fn total(&self) -> usize {
        self.empty + self.exact_duplicate + self.near_duplicate + self.contaminated
    }
}

/// The summary [`prepare_corpus`](super::prepare_corpus) returns and writes as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorpusReport {
    /// The kept documents' JSONL file.
    pub output: PathBuf,
    /// Documents read.
    pub documents_read: usize,
    /// Documents written to `output`.
    pub documents_kept: usize,
    /// Removed documents per reason.
    pub removed_counts: ReasonCounts,
    /// Characters (Unicode scalar values) read, before normalisation.
    pub chars_read: usize,
    /// Characters written, after normalisation.
    pub chars_kept: usize,
    /// The MinHash LSH threshold `(1/b)^(1/r)`, ≈ 0.72 by default (`None` when off); pairs at it are caught ~65% of the time.
    pub minhash_threshold: Option<f64>,
    /// Distinct evaluation n-grams indexed (0 when decontamination is off).
    pub eval_ngrams: usize,
    /// Every removed document, in reading order.
    pub removed: Vec<Outcome>,
    /// Contaminated documents kept because `decontamination.action = "flag"`.
    pub flagged: Vec<Outcome>,
}

impl CorpusReport {
    /// The removed documents with reason `name` (`"exact_duplicate"`, ...).
    pub fn removed_for(&self, name: &str) -> Vec<&Outcome> {
        self.removed
            .iter()
            .filter(|o| reason_name(&o.reason) == name)
            .collect()
    }

    /// Writes the report as pretty JSON to `path`, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|e| {
            Error::Invalid(format!("{}: cannot serialize report: {e}", path.display()))
        })?;
        write_file_atomically(path, |w| {
            writeln!(w, "{json}").map_err(|e| Error::io(path, e))
        })
    }
}

/// The serialized name of a reason (`"near_duplicate"`, ...).
pub fn reason_name(reason: &Reason) -> &'static str {
    match reason {
        Reason::Empty => "empty",
        Reason::ExactDuplicate { .. } => "exact_duplicate",
        Reason::NearDuplicate { .. } => "near_duplicate",
        Reason::Contaminated { .. } => "contaminated",
    }
}
