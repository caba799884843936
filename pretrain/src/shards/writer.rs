//! [`ShardWriter`]: appends documents to a new shard and publishes it atomically.
//!
//! Tokens stream to a hidden temp file beside the target while document ends
//! accumulate in memory (8 bytes per document, as in datatrove's `TokenizedFile`).
//! [`ShardWriter::finish`] syncs the temp files and renames them into place in the
//! order data → metadata → index: the index is the commit marker, and
//! [`super::Shard::open`] rejects any index that disagrees with its data, so a crash
//! between renames can never produce a shard that opens with the wrong documents.
//! Dropping a writer without `finish` removes its temp files and leaves nothing.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use smelt::{Error, Result};

use super::{index_path, metadata_path, metadata_text, with_suffix, TokenSize};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes one shard (`.ds`, `.ds.index`, `.ds.metadata`); see the module docs.
pub struct ShardWriter {
    path: PathBuf,
    token_size: TokenSize,
    eos: u32,
    tokenizer: Option<String>,
    /// Temp paths for (data, index, metadata); removed on drop unless finished.
    tmp: [PathBuf; 3],
    data: Option<BufWriter<File>>,
    ends: Vec<u64>,
    written: u64,
    buf: Vec<u8>,
}

impl ShardWriter {
    /// Starts a shard at `path` (conventionally `….ds`) storing tokens as
    /// `token_size`; every document gets `eos` appended. Nothing appears at `path`
    /// until [`finish`](Self::finish).
    pub fn create(path: impl AsRef<Path>, token_size: TokenSize, eos: u32) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if eos > token_size.max_token() {
            return Err(Error::Invalid(format!(
                "{}: EOS id {eos} does not fit in {token_size:?} tokens",
                path.display()
            )));
        }
        let name = path.file_name().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: a shard path needs a file name",
                path.display()
            ))
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let tag = format!(
            ".{}.tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let base = dir.join(tag);
        let tmp = [
            base.clone(),
            with_suffix(&base, ".index"),
            with_suffix(&base, ".metadata"),
        ];
        let file = File::create(&tmp[0]).map_err(|e| Error::io(&tmp[0], e))?;
        Ok(Self {
            path,
            token_size,
            eos,
            tokenizer: None,
            tmp,
            data: Some(BufWriter::new(file)),
            ends: Vec::new(),
            written: 0,
            buf: Vec::new(),
        })
    }

    /// Records the tokenizer's name or path in the metadata file (datatrove's
    /// `tokenizer_name_or_path`); without it the metadata says `Unknown Tokenizer`.
    pub fn with_tokenizer_name(mut self, name: impl Into<String>) -> Self {
        self.tokenizer = Some(name.into());
        self
    }

    /// Appends one document followed by the EOS token. A token id that does not fit
    /// the token size is an error naming the shard, document and position.
    pub fn add_document(&mut self, tokens: &[u32]) -> Result<()> {
        let max = self.token_size.max_token();
        if let Some(pos) = tokens.iter().position(|&t| t > max) {
            return Err(Error::Invalid(format!(
                "{}: document {} token {pos} has id {} which does not fit in {:?}",
                self.path.display(),
                self.ends.len(),
                tokens[pos],
                self.token_size
            )));
        }
        self.buf.clear();
        for &t in tokens.iter().chain(std::iter::once(&self.eos)) {
            match self.token_size {
                TokenSize::U16 => self.buf.extend_from_slice(&(t as u16).to_le_bytes()),
                TokenSize::U32 => self.buf.extend_from_slice(&t.to_le_bytes()),
            }
        }
        let data = self.data.as_mut().expect("data file is open until finish");
        data.write_all(&self.buf)
            .map_err(|e| Error::io(&self.tmp[0], e))?;
        self.written += tokens.len() as u64 + 1;
        self.ends.push(self.written);
        Ok(())
    }

    /// Documents added so far.
    pub fn num_documents(&self) -> usize {
        self.ends.len()
    }

    /// Tokens written so far (EOS included).
    pub fn num_tokens(&self) -> u64 {
        self.written
    }

    /// Syncs and renames the three files into place (index last) and returns the
    /// shard's path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let data = self.data.take().expect("data file is open until finish");
        let file = data
            .into_inner()
            .map_err(|e| Error::io(&self.tmp[0], e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp[0], e))?;
        drop(file);

        let index: Vec<u8> = self.ends.iter().flat_map(|e| e.to_le_bytes()).collect();
        write_synced(&self.tmp[1], &index)?;
        let meta = metadata_text(self.tokenizer.as_deref(), self.token_size, self.written);
        write_synced(&self.tmp[2], meta.as_bytes())?;

        let targets = [
            self.path.clone(),
            metadata_path(&self.path),
            index_path(&self.path),
        ];
        // Data, then metadata, then the index that commits the shard.
        for (from, to) in [(0, 0), (2, 1), (1, 2)] {
            fs::rename(&self.tmp[from], &targets[to]).map_err(|e| Error::io(&targets[to], e))?;
        }
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Best effort: persist the renames themselves.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.tmp = Default::default();
        Ok(self.path.clone())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        drop(self.data.take());
        for p in &self.tmp {
            if !p.as_os_str().is_empty() {
                let _ = fs::remove_file(p);
            }
        }
    }
}
