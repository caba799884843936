//! The core's error type.
//!
//! Every error that comes from outside input names the file (or key) and what is
//! wrong with it, so a user can fix the input without reading smelt's source. Library
//! code returns [`Result`]; binaries wrap it in `anyhow` for context chains.

use std::path::PathBuf;

/// Errors raised by the smelt core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// An I/O operation on a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A configuration (e.g. `config.json`) is malformed: the message names the key.
    #[error("{path}: {message}")]
    Config {
        /// Where the configuration came from (a file, or a description such as `<gguf metadata>`).
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },

    /// A checkpoint file (safetensors, GGUF, index) is malformed or does not match the config.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong, naming the tensor or field.
        message: String,
    },

    /// A tokenizer or chat template could not be built, loaded or applied.
    #[error("{context}: {message}")]
    Tokenizer {
        /// The file or source of the tokenizer.
        context: String,
        /// What is wrong.
        message: String,
    },

    /// A caller passed arguments that cannot work (wrong shapes, empty input, ...).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// A configuration error in `path`.
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            message: message.into(),
        }
    }
    /// A checkpoint error in `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
    /// A tokenizer error from `context`.
    pub fn tokenizer(context: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Tokenizer {
            context: context.into(),
            message: message.into(),
        }
    }
}

/// The core's result type.
pub type Result<T> = std::result::Result<T, Error>;
