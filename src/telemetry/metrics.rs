//! `metrics.jsonl`: the run's record, one JSON object per line.
//!
//! Key decisions:
//! - **Append, one `write` per record, flushed.** Each record is serialised to one
//!   line and handed to the OS with a single `write_all` on an unbuffered file opened
//!   in append mode, so a crash loses at most the record being written, and a reader
//!   (`tail -f`, [`plot_metrics`](super::plot_metrics)) sees whole lines.
//! - **Resume rewrites, atomically.** A run resumed from step `s` first calls
//!   [`MetricsLog::truncate_after_step`]: records with `"step" > s` came from the
//!   part of the crashed run that the resumed one will redo, and would otherwise
//!   appear twice. The kept records are written to a temporary sibling file, fsynced
//!   and renamed over the log, so at every instant the path holds the complete old
//!   log or the complete new one.
//! - **A torn last line is repaired on open.** A line without its final newline that
//!   is not valid JSON can only be a record whose write was cut short by a crash; it
//!   was never a record, so [`MetricsLog::open`] cuts it off before appending (a
//!   valid but unterminated last line is kept and terminated). Any other malformed
//!   line is an error naming `file:line`, and nothing is rewritten.

use crate::checkpoint::write_bytes_atomically;
use crate::error::{Error, Result};
use serde_json::Value;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An append-only JSONL metrics log (see the module docs for the crash guarantees).
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens (creating it and its parent directories if needed) the log at `path` for
    /// appending. A torn final line left by a crash is removed first.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        repair_torn_tail(path)?;
        let file = open_append(path)?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drops every record whose `"step"` is greater than `step`, so that the log of a
    /// run resumed at `step` does not repeat the steps it is about to redo. Records
    /// without a `"step"` key (run headers, notes) are kept. The file is rewritten
    /// atomically (temp file + fsync + rename); when nothing needs dropping it is left
    /// untouched. Returns an error naming `file:line` if a line is not a JSON object
    /// or its `"step"` is not a non-negative integer; the log is then not modified.
    pub fn truncate_after_step(&mut self, step: u64) -> Result<()> {
        let text = read_text(&self.path)?;
        let mut kept = String::with_capacity(text.len());
        let mut dropped = 0usize;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record = parse_line(&self.path, i + 1, line)?;
            match record_step(&self.path, i + 1, &record)? {
                Some(s) if s > step => dropped += 1,
                _ => {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
        }
        if dropped == 0 {
            return Ok(());
        }
        write_bytes_atomically(&self.path, kept.as_bytes())?;
        // The old handle points at the replaced inode: reopen the new file.
        self.file = open_append(&self.path)?;
        Ok(())
    }

    /// Appends `record` (which must be a JSON object) as one line and flushes it.
    pub fn write(&mut self, record: &Value) -> Result<()> {
        if !record.is_object() {
            return Err(Error::Invalid(format!(
                "{}: a metrics record must be a JSON object, got {record}",
                self.path.display()
            )));
        }
        let mut line = serde_json::to_string(record)
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.path.display())))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Reads every record of the log at `path`, in order. Blank lines are skipped;
    /// a line that is not a JSON object is an error naming `file:line`.
    pub fn read_all(path: &Path) -> Result<Vec<Value>> {
        let text = read_text(path)?;
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| parse_line(path, i + 1, line))
            .collect()
    }
}

/// The `"step"` of a record, if it has one; `line` is 1-based, for the error.
fn record_step(path: &Path, line: usize, record: &Value) -> Result<Option<u64>> {
    match record.get("step") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            Error::Invalid(format!(
                "{}:{line}: `step` must be a non-negative integer, found {v}",
                path.display()
            ))
        }),
    }
}

/// Parses one line as a JSON object; `line_no` is 1-based, for the error.
fn parse_line(path: &Path, line_no: usize, line: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(line).map_err(|e| {
        Error::Invalid(format!(
            "{}:{line_no}: not valid JSON ({e}): {}",
            path.display(),
            preview(line)
        ))
    })?;
    if !value.is_object() {
        return Err(Error::Invalid(format!(
            "{}:{line_no}: expected a JSON object, found {}",
            path.display(),
            preview(line)
        )));
    }
    Ok(value)
}

/// The first 80 characters of a line, for error messages.
fn preview(line: &str) -> String {
    let mut s: String = line.chars().take(80).collect();
    if s.len() < line.len() {
        s.push('…');
    }
    format!("`{s}`")
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// If the file ends without a newline, its last line is either a torn write (not
/// valid JSON: cut it off) or a complete record someone wrote without a newline
/// (terminate it), so the next append starts on a line of its own.
fn repair_torn_tail(path: &Path) -> Result<()> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let tail = &bytes[start..];
    let complete = serde_json::from_slice::<Value>(tail).is_ok_and(|v| v.is_object());
    let mut fixed = bytes[..start].to_vec();
    if complete {
        fixed.extend_from_slice(tail);
        fixed.push(b'\n');
    }
    write_bytes_atomically(path, &fixed)
}
