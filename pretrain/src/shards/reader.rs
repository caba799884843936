//! [`Shard`]: a validated, memory-mapped, read-only view of one datatrove shard.
//!
//! The token file is memory-mapped (a pretraining corpus does not fit in RAM and the
//! OS page cache already does the right thing); the index is read into memory
//! (8 bytes per document) and checked against the data once, at open, so every later
//! `document(i)` is a bounds-checked slice of the map.

use std::fs::{self, File};
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use smelt::{Error, Result};

use super::{index_path, metadata_path, parse_metadata, TokenSize};

/// One shard opened for reading; see the module docs.
#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    token_size: TokenSize,
    tokenizer: Option<String>,
    /// `None` for an empty token file (an empty file cannot be mapped).
    data: Option<Mmap>,
    /// Cumulative document end offsets in tokens (the `.ds.index` contents).
    ends: Vec<u64>,
}

impl Shard {
    /// Opens the shard at `path` (the `.ds` file), taking the token size from
    /// `path.metadata` and validating the index against the data.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta_path = metadata_path(path);
        let text = fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
        let (name, size, count) = parse_metadata(&meta_path, &text)?;
        // The token size comes from the metadata: if the data or index disagrees with
        // it, the metadata may be the file that is wrong, so name both.
        let mut shard = Self::open_with_token_size(path, size).map_err(|e| {
            Error::checkpoint(
                path,
                format!(
                    "{e} (token size {} bytes as declared by {})",
                    size.bytes(),
                    meta_path.display()
                ),
            )
        })?;
        if let Some(count) = count {
            if count != shard.num_tokens() {
                return Err(Error::checkpoint(
                    &meta_path,
                    format!(
                        "line 2 says {count} tokens but {} holds {}",
                        path.display(),
                        shard.num_tokens()
                    ),
                ));
            }
        }
        shard.tokenizer = Some(name);
        Ok(shard)
    }

    /// Opens a shard that has no `.metadata` file (datatrove's
    /// `save_final_metadata=False`), with the token size given by the caller.
    pub fn open_with_token_size(path: impl AsRef<Path>, token_size: TokenSize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let tsz = token_size.bytes() as u64;
        if len % tsz != 0 {
            return Err(Error::checkpoint(
                &path,
                format!("{len} bytes is not a whole number of {tsz}-byte tokens"),
            ));
        }
        let num_tokens = len / tsz;
        let data = if len == 0 {
            None
        } else {
            // SAFETY: shards are immutable once published: `ShardWriter::finish` and
            // datatrove both create a new file and never write into a published
            // one, so the mapped bytes do not change under us.
            Some(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?)
        };
        let ends = read_index(&index_path(&path), num_tokens)?;
        Ok(Self {
            path,
            token_size,
            tokenizer: None,
            data,
            ends,
        })
    }

    /// The `.ds` file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes per token in the file.
    pub fn token_size(&self) -> TokenSize {
        self.token_size
    }

    /// The tokenizer named in the metadata file, if the shard had one.
    pub fn tokenizer_name(&self) -> Option<&str> {
        self.tokenizer.as_deref()
    }

    /// Number of documents (entries in the index).
    pub fn num_documents(&self) -> usize {
        self.ends.len()
    }

    /// Number of tokens in the shard (EOS tokens included).
    pub fn num_tokens(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// The token span of document `i` (its EOS included).
    pub fn document_range(&self, i: usize) -> Result<Range<u64>> {
        let end = *self.ends.get(i).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: document {i} out of range ({} documents)",
                self.path.display(),
                self.ends.len()
            ))
        })?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Ok(start..end)
    }

    /// The tokens of document `i`, ending with its EOS.
    pub fn document(&self, i: usize) -> Result<Vec<u32>> {
        self.tokens(self.document_range(i)?)
    }

    /// Tokens `range` of the shard (positions in tokens, not bytes).
    pub fn tokens(&self, range: Range<u64>) -> Result<Vec<u32>> {
        if range.start > range.end || range.end > self.num_tokens() {
            return Err(Error::Invalid(format!(
                "{}: token range {range:?} out of bounds ({} tokens)",
                self.path.display(),
                self.num_tokens()
            )));
        }
        let Some(data) = &self.data else {
            return Ok(Vec::new());
        };
        let tsz = self.token_size.bytes();
        let bytes = &data[range.start as usize * tsz..range.end as usize * tsz];
        Ok(match self.token_size {
            TokenSize::U16 => bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
                .collect(),
            TokenSize::U32 => bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        })
    }
}

/// Reads `path` as little-endian `u64` document ends and checks them against a data
/// file of `num_tokens` tokens.
fn read_index(path: &Path, num_tokens: u64) -> Result<Vec<u64>> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() % 8 != 0 {
        return Err(Error::checkpoint(
            path,
            format!(
                "{} bytes is not a whole number of u64 entries (truncated index?)",
                bytes.len()
            ),
        ));
    }
    let ends: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("chunks_exact(8)")))
        .collect();
    for (i, w) in ends.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(Error::checkpoint(
                path,
                format!(
                    "entry {} (= {}) is smaller than entry {i} (= {}): document ends must not decrease",
                    i + 1,
                    w[1],
                    w[0]
                ),
            ));
        }
    }
    let last = ends.last().copied().unwrap_or(0);
    if last != num_tokens {
        let entry = ends.len().saturating_sub(1);
        let what = if last > num_tokens {
            "beyond"
        } else {
            "short of"
        };
        return Err(Error::checkpoint(
            path,
            format!(
                "entry {entry} (= {last}) ends {what} the data, which holds {num_tokens} tokens"
            ),
        ));
    }
    Ok(ends)
}
