//! Streaming readers of dataset files: JSONL and Parquet, one JSON object per row.
//!
//! Both yield `(Location, row)` pairs lazily, so a large file is never held in memory and
//! a bad row fails with its file and line (JSONL, 1-based) or row index (Parquet, 0-based).
//! Key decision: Parquet rows go through the same JSON-object representation as JSONL
//! rows (strings stay strings, `list<struct{role, content}>` becomes a list of objects, as
//! `datasets` writes conversations), so there is exactly one path from a row to a
//! [`Record`] whatever the file type. The Parquet side uses the `parquet` crate's record
//! API (no Arrow dependency).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use parquet::file::reader::SerializedFileReader;
use parquet::record::{Field, Row};
use serde_json::{Map, Value};

use super::formats::{Location, Record, RecordOptions};
use crate::error::{Error, Result};

/// A raw row with where it came from.
pub type RawRow = (Location, Map<String, Value>);

/// Rows of `path`, chosen by extension: `.jsonl` / `.json` (one object per line) or `.parquet`.
pub fn read_rows(path: &Path) -> Result<Box<dyn Iterator<Item = Result<RawRow>>>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "jsonl" | "json" => Ok(Box::new(JsonlRows::open(path)?)),
        "parquet" => Ok(Box::new(ParquetRows::open(path)?)),
        _ => Err(Error::config(
            path,
            "unknown dataset file type (expected .jsonl, .json or .parquet)",
        )),
    }
}

/// Validated records of `path` (see [`Record::from_row`]), streaming.
pub fn read_records(
    path: &Path,
    opts: &RecordOptions,
) -> Result<impl Iterator<Item = Result<(Location, Record)>>> {
    let opts = opts.clone();
    Ok(read_rows(path)?.map(move |row| {
        let (loc, row) = row?;
        let record = Record::from_row(row, &opts, &loc)?;
        Ok((loc, record))
    }))
}

/// JSONL rows; blank lines are skipped.
pub struct JsonlRows {
    file: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    line: usize,
}

impl JsonlRows {
    /// Opens `path` for streaming.
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(JsonlRows {
            file: path.to_path_buf(),
            lines: BufReader::new(f).lines(),
            line: 0,
        })
    }
}

impl Iterator for JsonlRows {
    type Item = Result<RawRow>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let text = self.lines.next()?;
            self.line += 1;
            let loc = Location::Line {
                file: self.file.clone(),
                line: self.line,
            };
            let text = match text {
                Ok(t) => t,
                Err(e) => return Some(Err(loc.error(format!("cannot read: {e}")))),
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(map)) => Ok((loc, map)),
                Ok(_) => Err(loc.error("expected a JSON object")),
                Err(e) => Err(loc.error(format!("malformed JSON: {e}"))),
            });
        }
    }
}

/// Parquet rows, read row group by row group.
pub struct ParquetRows {
    file: PathBuf,
    rows: parquet::record::reader::RowIter<'static>,
    row: usize,
    /// Set once the reader panicked: its state is unknown, so iteration ends.
    failed: bool,
}

impl ParquetRows {
    /// Opens `path` for streaming (reads the footer and the page headers now, and
    /// refuses a dictionary page that lies about its size: see [`super::parquet_guard`]).
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let reader = SerializedFileReader::new(super::parquet_guard::StrictFile::new(f))
            .map_err(|e| Error::config(path, format!("not a readable Parquet file: {e}")))?;
        super::parquet_guard::check_dictionary_pages(&reader)
            .map_err(|m| Error::config(path, m))?;
        Ok(ParquetRows {
            file: path.to_path_buf(),
            rows: parquet::record::reader::RowIter::from_file_into(Box::new(reader)),
            row: 0,
            failed: false,
        })
    }
}

impl Iterator for ParquetRows {
    type Item = Result<RawRow>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let loc = Location::Row {
            file: self.file.clone(),
            row: self.row,
        };
        // The `parquet` record reader panics on some corrupt pages (e.g.
        // `record/triplet.rs` on inconsistent levels); report the row instead and stop,
        // since the reader's state after a panic is unknown.
        let row = match std::panic::catch_unwind(AssertUnwindSafe(|| self.rows.next())) {
            Ok(row) => row?,
            Err(_) => {
                self.failed = true;
                return Some(Err(loc.error("cannot decode row: corrupt Parquet data")));
            }
        };
        self.row += 1;
        Some(match row {
            Ok(row) => match row_to_json(&row) {
                Value::Object(map) => Ok((loc, map)),
                _ => unreachable!("row_to_json returns an object"),
            },
            Err(e) => Err(loc.error(format!("cannot decode row: {e}"))),
        })
    }
}

/// A Parquet record as a JSON object (column name → value).
fn row_to_json(row: &Row) -> Value {
    Value::Object(
        row.get_column_iter()
            .map(|(name, field)| (name.clone(), field_to_json(field)))
            .collect(),
    )
}

/// One Parquet field as JSON: strings, numbers, booleans, nested lists and structs.
fn field_to_json(field: &Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => (*n).into(),
        Field::Short(n) => (*n).into(),
        Field::Int(n) => (*n).into(),
        Field::Long(n) => (*n).into(),
        Field::UByte(n) => (*n).into(),
        Field::UShort(n) => (*n).into(),
        Field::UInt(n) => (*n).into(),
        Field::ULong(n) => (*n).into(),
        Field::Float(x) => {
            serde_json::Number::from_f64(f64::from(*x)).map_or(Value::Null, Value::Number)
        }
        Field::Double(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        Field::Str(s) => Value::String(s.clone()),
        Field::Group(row) => row_to_json(row),
        Field::ListInternal(list) => {
            Value::Array(list.elements().iter().map(field_to_json).collect())
        }
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| (key_string(k), field_to_json(v)))
                .collect(),
        ),
        // Bytes, decimals, dates and timestamps never carry TRL columns; keep them visible.
        other => Value::String(other.to_string()),
    }
}

fn key_string(field: &Field) -> String {
    match field {
        Field::Str(s) => s.clone(),
        other => other.to_string(),
    }
}
