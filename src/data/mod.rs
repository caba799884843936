//! Training data for post-training: TRL's dataset formats, readers, encoding, packing.
//!
//! The pipeline, one module per stage:
//! - [`reader`]: JSONL and Parquet files streamed as JSON rows, each with its [`Location`]
//!   (Parquet dictionary pages checked first by [`parquet_guard`]);
//! - [`formats`]: a row validated into a [`Record`] (TRL's language-modeling,
//!   prompt–completion and preference formats; column renames; implicit prompts);
//! - [`encode`]: a record tokenized as TRL 1.16 does into an [`SftExample`] (with its loss
//!   mask) or a [`PreferenceExample`];
//! - [`packing`]: best-fit-decreasing packing of examples into rows;
//! - [`collate`]: examples into a padded or packed [`crate::train::TokenBatch`].
//!
//! Key decision: TRL is the reference for every token. Formats, EOS handling, masks and
//! packing follow TRL's `SFTTrainer` / `DPOTrainer` preparation, so a dataset trains on the
//! same tokens here and there, and every malformed row is an error naming its file and line.

pub mod collate;
pub mod encode;
mod examples;
pub mod formats;
pub mod packing;
pub mod parquet_guard;
pub mod reader;
#[cfg(test)]
mod tests;

pub use collate::{packed_batch, padded_batch, shifted_labels};
pub use encode::{encode_preference, encode_sft, SftEncodeOptions};
pub use examples::{PreferenceExample, SftExample};
pub use formats::{DatasetFormat, Location, Record, RecordOptions, Turns};
pub use packing::pack_bfd;
pub use reader::{read_records, read_rows};

use std::path::Path;

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Reads and encodes every record of `files` for SFT, in file order; errors name the row.
/// Records that truncation leaves without a target are dropped (as TRL does).
pub fn load_sft_examples(
    files: &[impl AsRef<Path>],
    record_opts: &RecordOptions,
    tok: &Tokenizer,
    encode_opts: &SftEncodeOptions,
) -> Result<Vec<SftExample>> {
    let mut out = Vec::new();
    for file in files {
        for item in read_records(file.as_ref(), record_opts)? {
            let (loc, record) = item?;
            if let Some(ex) =
                encode_sft(tok, &record, encode_opts).map_err(|e| loc.error(e.to_string()))?
            {
                out.push(ex);
            }
        }
    }
    Ok(out)
}
