//! Token shards in datatrove's on-disk format.
//!
//! A shard is three files side by side, exactly as datatrove's `DocumentTokenizer`
//! writes them, so shards flow both ways between smelt and the datatrove/nanotron
//! stack:
//!
//! - `name.ds`: every document's token ids back to back, little-endian `u16` (vocab
//!   ≤ 65,536) or `u32`, each document followed by its EOS token;
//! - `name.ds.index`: little-endian `u64`, one per document: the cumulative token
//!   offset where that document *ends* (exclusive), so document `i` is
//!   `tokens[index[i-1] .. index[i]]` with `index[-1] = 0`;
//! - `name.ds.metadata`: datatrove's three text lines, byte for byte:
//!   `{tokenizer}|{token_size}`, the token count, and the count humanised
//!   (`1.23 kT`). We keep datatrove's text rather than JSON because the token size is
//!   the one fact a reader cannot infer from the other two files, and datatrove's
//!   readers look for it there.
//!
//! Key decisions: a [`ShardWriter`] writes temp files and renames them into place in
//! [`ShardWriter::finish`], the index last, so an interrupted write never leaves a
//! shard that opens; [`Shard::open`] memory-maps the tokens and validates the index
//! against them (monotonic, last end = token count, whole elements) before a single
//! document is served, because a shard whose index disagrees with its data would
//! silently train on garbage. Malformed shard files are reported as
//! [`smelt::Error::Checkpoint`] (the core's "malformed file on disk" variant) naming
//! the file and the offending entry.

mod reader;
mod writer;

pub use reader::Shard;
pub use writer::ShardWriter;

use std::path::{Path, PathBuf};

use smelt::{Error, Result};

/// Bytes per token in a `.ds` file: datatrove's `token_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TokenSize {
    /// Little-endian `u16` tokens (datatrove's default; vocabularies up to 65,536).
    U16,
    /// Little-endian `u32` tokens (larger vocabularies).
    U32,
}

impl TokenSize {
    /// The size datatrove picks for a vocabulary: `U32` when it exceeds 65,536 ids.
    pub fn for_vocab_size(vocab_size: usize) -> Self {
        if vocab_size > u16::MAX as usize + 1 {
            TokenSize::U32
        } else {
            TokenSize::U16
        }
    }

    /// `2` or `4`.
    pub fn bytes(self) -> usize {
        match self {
            TokenSize::U16 => 2,
            TokenSize::U32 => 4,
        }
    }

    /// The size with `bytes` bytes per token, if it is 2 or 4.
    pub fn from_bytes(bytes: usize) -> Option<Self> {
        match bytes {
            2 => Some(TokenSize::U16),
            4 => Some(TokenSize::U32),
            _ => None,
        }
    }

    /// The largest token id this size can store.
    pub fn max_token(self) -> u32 {
        match self {
            TokenSize::U16 => u16::MAX as u32,
            TokenSize::U32 => u32::MAX,
        }
    }
}

/// `path` with `suffix` appended to its file name (`a.ds` → `a.ds.index`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Path of the index file beside a `.ds` file.
pub fn index_path(shard: &Path) -> PathBuf {
    with_suffix(shard, ".index")
}

/// Path of the metadata file beside a `.ds` file.
pub fn metadata_path(shard: &Path) -> PathBuf {
    with_suffix(shard, ".metadata")
}

/// The `.ds.metadata` text datatrove writes (`TokenizedFile.write_final_metadata`).
///
/// datatrove names an anonymous tokenizer `"Unknown Tokenizer|{size}"` and then
/// appends `|{size}` again; we reproduce that quirk so the files are identical.
pub(crate) fn metadata_text(tokenizer: Option<&str>, size: TokenSize, tokens: u64) -> String {
    let name = match tokenizer {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("Unknown Tokenizer|{}", size.bytes()),
    };
    format!(
        "{name}|{}\n{tokens}\n{}",
        size.bytes(),
        humanize_metric(tokens as f64, "T")
    )
}

/// Parsed first two lines of a `.ds.metadata` file: (tokenizer, token size, token count).
pub(crate) fn parse_metadata(path: &Path, text: &str) -> Result<(String, TokenSize, Option<u64>)> {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let (name, size) = first.rsplit_once('|').ok_or_else(|| {
        Error::checkpoint(
            path,
            format!("line 1 `{first}` is not `tokenizer|token_size`"),
        )
    })?;
    let size = size
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(TokenSize::from_bytes)
        .ok_or_else(|| {
            Error::checkpoint(path, format!("line 1 `{first}`: token size must be 2 or 4"))
        })?;
    let count =
        match lines.next() {
            None => None,
            Some(l) => Some(l.trim().parse::<u64>().map_err(|_| {
                Error::checkpoint(path, format!("line 2 `{l}` is not a token count"))
            })?),
        };
    Ok((name.to_string(), size, count))
}

/// Python `humanize.metric(value, unit)` with its default precision of 3 significant
/// digits (`1234` → `1.23 kT`), for the metadata file's third line.
fn humanize_metric(value: f64, unit: &str) -> String {
    let exponent = if value == 0.0 {
        0
    } else {
        value.abs().log10().floor() as i32
    };
    let scaled = value / 10f64.powi(exponent.div_euclid(3) * 3);
    let ordinal = if exponent >= 3 {
        "kMGTPEZYRQ"
            .chars()
            .nth((exponent / 3 - 1) as usize)
            .map(String::from)
            .unwrap_or_default()
    } else {
        String::new()
    };
    let decimals = (3 - exponent.rem_euclid(3) - 1).max(0) as usize;
    let space = if unit.is_empty() && ordinal.is_empty() {
        ""
    } else {
        " "
    };
    format!("{scaled:.decimals$}{space}{ordinal}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize_matches_python_humanize_metric() {
        // Values printed by Python `humanize.metric(x, "T")` (humanize 4.17).
        assert_eq!(humanize_metric(0.0, "T"), "0.00 T");
        assert_eq!(humanize_metric(5.0, "T"), "5.00 T");
        assert_eq!(humanize_metric(1234.0, "T"), "1.23 kT");
        assert_eq!(humanize_metric(56_789.0, "T"), "56.8 kT");
        assert_eq!(humanize_metric(2_000_000_000.0, "T"), "2.00 GT");
    }

    #[test]
    fn metadata_round_trips_and_keeps_datatrove_quirk() {
        let text = metadata_text(None, TokenSize::U16, 12);
        assert_eq!(text, "Unknown Tokenizer|2|2\n12\n12.0 T");
        let (name, size, count) = parse_metadata(Path::new("x"), &text).unwrap();
        assert_eq!(
            (name.as_str(), size, count),
            ("Unknown Tokenizer|2", TokenSize::U16, Some(12))
        );
        let err = parse_metadata(Path::new("x.ds.metadata"), "gpt2|3\n1").unwrap_err();
        assert!(err.to_string().contains("x.ds.metadata"), "{err}");
    }

    #[test]
    fn token_size_for_vocab_follows_datatrove() {
        assert_eq!(TokenSize::for_vocab_size(49_152), TokenSize::U16);
        assert_eq!(TokenSize::for_vocab_size(65_536), TokenSize::U16);
        assert_eq!(TokenSize::for_vocab_size(65_537), TokenSize::U32);
    }
}
