//! Sequence packing: the mixture's document stream cut into fixed-length training
//! rows, and [`PretrainLoader`], the resumable loader a pretraining run drives.
//!
//! Packing follows datatrove/nanotron (`DatatroveFileDataset`): documents (each
//! already ending in EOS) are concatenated and cut into consecutive,
//! non-overlapping windows of `seq_len + 1` tokens; a document may run on into the
//! next row. A window gives `input_ids = w[..seq_len]`, `targets = w[1..]`.
//!
//! Position ids follow datatrove's `_get_pos_from_index_file` exactly: they count
//! from 0 at the start of every row and restart at 0 after each document end. So a
//! row that starts mid-document restarts at 0 too (like nanotron) rather than
//! continuing from the document's offset: positions never exceed `seq_len`, the
//! range the model is trained for, and the model's rule "a new document starts
//! wherever `position_ids[t] != position_ids[t-1] + 1`" sees every boundary.
//! Document ends come from the shard index, not from EOS ids, so a document
//! containing the EOS id mid-text is not split.
//!
//! The packer's state is the mixture cursor taken *before* drawing the document the
//! next row starts in, plus how many of its tokens are already consumed
//! ([`LoaderCursor`]); restoring redraws that document and skips the offset, so the
//! loader resumes mid-epoch and mid-document to the very same sample.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use smelt::{Error, Result};

use crate::mixture::{Mixture, MixtureCursor, SourceConfig};

/// One training row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedRow {
    /// Model inputs, `seq_len` tokens.
    pub input_ids: Vec<u32>,
    /// Next-token targets, `seq_len` tokens: `targets[t]` is the token after
    /// `input_ids[t]` in the packed stream.
    pub targets: Vec<u32>,
    /// Position of each input token within its document (restarting at 0 at the
    /// row start and after every document end), `seq_len` entries.
    pub position_ids: Vec<u32>,
}

/// `batch_size` rows, each field `(B, T)` as nested vectors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackedBatch {
    /// `(B, seq_len)` model inputs.
    pub input_ids: Vec<Vec<u32>>,
    /// `(B, seq_len)` next-token targets.
    pub targets: Vec<Vec<u32>>,
    /// `(B, seq_len)` per-document positions.
    pub position_ids: Vec<Vec<u32>>,
}

impl PackedBatch {
    /// `(input_ids, targets, position_ids)` as `(B, T)` u32 tensors on `device`,
    /// ready for `Model::forward(input_ids, Some(position_ids))`.
    pub fn tensors(&self, device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
        let b = self.input_ids.len();
        let t = self.input_ids.first().map_or(0, Vec::len);
        let make = |rows: &[Vec<u32>]| -> Result<Tensor> {
            let flat: Vec<u32> = rows.iter().flatten().copied().collect();
            Ok(Tensor::from_vec(flat, (b, t), device)?) // (B, T)
        };
        Ok((
            make(&self.input_ids)?,
            make(&self.targets)?,
            make(&self.position_ids)?,
        ))
    }
}

/// The packer's complete state; serde, stored as `data_cursor.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderCursor {
    /// Mixture state whose next draw is the document the next row starts in.
    pub mixture: MixtureCursor,
    /// Tokens of that document already packed into earlier rows (0 = none).
    pub doc_offset: u64,
    /// Rows produced so far (informational: logs and sanity checks).
    pub rows: u64,
}

/// A partially consumed document.
#[derive(Debug)]
struct Pending {
    tokens: Vec<u32>,
    offset: usize,
    /// Mixture cursor from before this document was drawn.
    before: MixtureCursor,
}

/// Packs a [`Mixture`]'s documents into rows of `seq_len`; see the module docs.
#[derive(Debug)]
pub struct Packer {
    mixture: Mixture,
    seq_len: usize,
    pending: Option<Pending>,
    rows: u64,
}

impl Packer {
    /// A packer over `mixture` producing rows of `seq_len` (> 0) input tokens.
    pub fn new(mixture: Mixture, seq_len: usize) -> Result<Self> {
        if seq_len == 0 {
            return Err(Error::Invalid("seq_len must be at least 1".into()));
        }
        Ok(Self {
            mixture,
            seq_len,
            pending: None,
            rows: 0,
        })
    }

    /// The underlying mixture.
    pub fn mixture(&self) -> &Mixture {
        &self.mixture
    }

    /// Input tokens per row.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The next row: `seq_len + 1` tokens from the stream.
    pub fn next_row(&mut self) -> Result<PackedRow> {
        let window = self.seq_len + 1;
        let mut tokens = Vec::with_capacity(window);
        let mut positions = Vec::with_capacity(window);
        let mut pos = 0u32;
        while tokens.len() < window {
            let doc = match &mut self.pending {
                Some(p) if p.offset < p.tokens.len() => p,
                _ => {
                    let before = self.mixture.cursor();
                    let (_, doc) = self.mixture.next_document()?;
                    self.pending.insert(Pending {
                        tokens: doc,
                        offset: 0,
                        before,
                    })
                }
            };
            let take = (window - tokens.len()).min(doc.tokens.len() - doc.offset);
            tokens.extend_from_slice(&doc.tokens[doc.offset..doc.offset + take]);
            doc.offset += take;
            for _ in 0..take {
                positions.push(pos);
                pos += 1;
            }
            if doc.offset == doc.tokens.len() {
                pos = 0; // the next token starts a new document
            }
        }
        self.rows += 1;
        positions.truncate(self.seq_len);
        Ok(PackedRow {
            targets: tokens[1..].to_vec(),
            input_ids: {
                tokens.truncate(self.seq_len);
                tokens
            },
            position_ids: positions,
        })
    }

    /// The next `batch_size` rows.
    pub fn next_batch(&mut self, batch_size: usize) -> Result<PackedBatch> {
        let mut batch = PackedBatch::default();
        for _ in 0..batch_size {
            let row = self.next_row()?;
            batch.input_ids.push(row.input_ids);
            batch.targets.push(row.targets);
            batch.position_ids.push(row.position_ids);
        }
        Ok(batch)
    }

    /// The current state.
    pub fn cursor(&self) -> LoaderCursor {
        match &self.pending {
            Some(p) if p.offset < p.tokens.len() => LoaderCursor {
                mixture: p.before.clone(),
                doc_offset: p.offset as u64,
                rows: self.rows,
            },
            _ => LoaderCursor {
                mixture: self.mixture.cursor(),
                doc_offset: 0,
                rows: self.rows,
            },
        }
    }

    /// Moves to `cursor`; the next row is the one that followed when it was taken.
    pub fn restore(&mut self, cursor: &LoaderCursor) -> Result<()> {
        self.mixture.restore(&cursor.mixture)?;
        self.pending = None;
        self.rows = cursor.rows;
        if cursor.doc_offset > 0 {
            let before = self.mixture.cursor();
            let (r, tokens) = self.mixture.next_document()?;
            if cursor.doc_offset >= tokens.len() as u64 {
                return Err(Error::Invalid(format!(
                    "data cursor offset {} is past the end of document {r:?} ({} tokens)",
                    cursor.doc_offset,
                    tokens.len()
                )));
            }
            self.pending = Some(Pending {
                tokens,
                offset: cursor.doc_offset as usize,
                before,
            });
        }
        Ok(())
    }
}

fn default_seq_len() -> usize {
    2048
}

/// The data section of a pretraining recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    /// The mixture's sources (`[[sources]]` tables).
    pub sources: Vec<SourceConfig>,
    /// Input tokens per row; default 2048, SmolLM2's pretraining context.
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Seed of the per-epoch document permutations; default 0.
    #[serde(default)]
    pub seed: u64,
}

impl LoaderConfig {
    /// Parses a TOML recipe fragment; unknown keys are errors naming the key.
    pub fn from_toml(text: &str, origin: impl Into<PathBuf>) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::config(origin, e.to_string()))
    }
}

/// Shards → mixture → packed batches, resumable; the pretraining data loader.
#[derive(Debug)]
pub struct PretrainLoader {
    packer: Packer,
}

impl PretrainLoader {
    /// Opens every source's shards and positions the loader at the stream start.
    pub fn new(config: LoaderConfig) -> Result<Self> {
        let mixture = Mixture::open(&config.sources, config.seed)?;
        Ok(Self {
            packer: Packer::new(mixture, config.seq_len)?,
        })
    }

    /// The next row.
    pub fn next_row(&mut self) -> Result<PackedRow> {
        self.packer.next_row()
    }

    /// The next `batch_size` rows.
    pub fn next_batch(&mut self, batch_size: usize) -> Result<PackedBatch> {
        self.packer.next_batch(batch_size)
    }

    /// The current state (save it with a checkpoint).
    pub fn cursor(&self) -> LoaderCursor {
        self.packer.cursor()
    }

    /// Resumes from `cursor`.
    pub fn restore(&mut self, cursor: &LoaderCursor) -> Result<()> {
        self.packer.restore(cursor)
    }

    /// The packer (and through it the mixture and its sources).
    pub fn packer(&self) -> &Packer {
        &self.packer
    }
}
