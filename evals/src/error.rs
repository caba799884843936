//! The eval crate's error type.
//!
//! Key decision: every error about user input names where it is — the task, the
//! file and the 1-based line (a TOML spec line, a JSONL row, or a BIG-bench example
//! index) — so a broken task file is fixed without reading smelt's source.

use std::path::PathBuf;

/// Errors raised by the eval suite.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A task spec (TOML) is malformed or invalid.
    #[error("task `{task}`: {file}:{line}: {message}")]
    Spec {
        /// The task the problem belongs to (`?` when the TOML is too broken to tell).
        task: String,
        /// The spec file.
        file: PathBuf,
        /// 1-based line in the spec file.
        line: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A data row is malformed (missing field, gold index out of range, bad JSON).
    #[error("task `{task}`: {file}:{line}: {message}")]
    Data {
        /// The task whose data this is.
        task: String,
        /// The data file.
        file: PathBuf,
        /// 1-based line (JSONL) or example number (BIG-bench JSON).
        line: usize,
        /// What is wrong, naming the field.
        message: String,
    },
    /// An error from the smelt core (model, tokenizer, checkpoint).
    #[error(transparent)]
    Core(#[from] smelt::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An I/O operation on a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A caller passed arguments that cannot work (unknown task, bad metric name, ...).
    #[error("{0}")]
    Invalid(String),
}

impl EvalError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }
}

/// The eval crate's result type.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
