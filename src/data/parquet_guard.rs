//! Guards for reading outside Parquet files with the `parquet` crate: a file source
//! whose readers fail at end of file, and a pre-read check of every dictionary page.
//!
//! Key decisions:
//! - The crate sizes a column's dictionary from the `num_values` its dictionary page
//!   header declares (`DictDecoder::set_dict` resizes a vector of that many values), so
//!   a file whose header lies (`num_values` ≈ 2^29 in a 500-byte file) makes it allocate
//!   and zero tens of GB before any error. Every reader of outside Parquet therefore
//!   walks each column chunk's page headers first (data pages are skipped unread) and
//!   refuses a dictionary page that declares more values than its bytes can hold under
//!   plain encoding, naming the row group and the column.
//! - The crate skips unknown Thrift fields of a page header with `io::copy`, which stops
//!   quietly at end of file; a header declaring a list of 2^31 elements then costs 2^31
//!   empty reads (minutes to hours for a 500-byte file). [`StrictFile`] makes a read at
//!   end of file an error instead, so such a header fails at once.

use std::fs::File;
use std::io::{BufReader, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;
use parquet::basic::Type as PhysicalType;
use parquet::column::page::{Page, PageReader};
use parquet::file::reader::{ChunkReader, FileReader, Length, SerializedFileReader};

/// A Parquet file whose readers return an error, not 0 bytes, when asked to read past
/// its end (see the module docs).
pub struct StrictFile(File);

impl StrictFile {
    /// Wraps an open file.
    pub fn new(file: File) -> Self {
        StrictFile(file)
    }
}

impl Length for StrictFile {
    fn len(&self) -> u64 {
        Length::len(&self.0)
    }
}

impl ChunkReader for StrictFile {
    type T = EofIsError<BufReader<File>>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(EofIsError(self.0.get_read(start)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.0.get_bytes(start, length)
    }
}

/// A reader for which end of input is an `UnexpectedEof` error.
pub struct EofIsError<R>(R);

impl<R: Read> Read for EofIsError<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "Parquet data ends before the length it declares",
            ));
        }
        Ok(n)
    }
}

/// Fewest bits one plain-encoded value of `ty` takes (`type_length` bytes for
/// `FIXED_LEN_BYTE_ARRAY`, a 4-byte length prefix for `BYTE_ARRAY`).
fn min_bits(ty: PhysicalType, type_length: i32) -> u64 {
    match ty {
        PhysicalType::BOOLEAN => 1,
        PhysicalType::INT32 | PhysicalType::FLOAT | PhysicalType::BYTE_ARRAY => 32,
        PhysicalType::INT64 | PhysicalType::DOUBLE => 64,
        PhysicalType::INT96 => 96,
        PhysicalType::FIXED_LEN_BYTE_ARRAY => 8 * type_length.max(1) as u64,
    }
}

/// Checks every dictionary page of `reader`'s file: its declared value count must fit
/// in its bytes. `Err` is a message naming the row group and column (the caller adds
/// the file). A column chunk the `parquet` crate panics on while walking it (e.g. a
/// negative offset in the footer: `column start and length should not be negative`) is
/// refused the same way; a page it merely cannot read is left for the row reader.
pub fn check_dictionary_pages(reader: &SerializedFileReader<StrictFile>) -> Result<(), String> {
    let meta = reader.metadata();
    for g in 0..meta.num_row_groups() {
        for c in 0..meta.row_group(g).num_columns() {
            let column = meta.row_group(g).column(c);
            let bits = min_bits(column.column_type(), column.column_descr().type_length());
            let checked = catch_unwind(AssertUnwindSafe(|| {
                let Ok(group) = reader.get_row_group(g) else {
                    return Ok(());
                };
                match group.get_column_page_reader(c) {
                    Ok(mut pages) => dictionaries(&mut *pages, bits),
                    Err(_) => Ok(()),
                }
            }));
            let what = match checked {
                Ok(Ok(())) => continue,
                Ok(Err((values, bytes))) => {
                    format!("dictionary page declares {values} values in {bytes} bytes")
                }
                Err(_) => "corrupt column chunk metadata".to_string(),
            };
            return Err(format!(
                "row group {g}, column `{}`: {what}",
                column.column_path()
            ));
        }
    }
    Ok(())
}

/// Walks `pages`, reading only dictionary pages; `Err((values, bytes))` for the first
/// one whose `values` cannot fit in its `bytes` at `bits` per value. Stops quietly at a
/// page it cannot read.
fn dictionaries(pages: &mut dyn PageReader, bits: u64) -> Result<(), (u32, usize)> {
    while let Ok(Some(meta)) = pages.peek_next_page() {
        if !meta.is_dict {
            if pages.skip_next_page().is_err() {
                break;
            }
            continue;
        }
        match pages.get_next_page() {
            Ok(Some(Page::DictionaryPage {
                buf, num_values, ..
            })) => {
                if num_values as u64 * bits > 8 * buf.len() as u64 {
                    return Err((num_values, buf.len()));
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    Ok(())
}
