//! Streaming document readers: JSONL, Parquet and plain text.
//!
//! Every reader is an iterator of `Result<Document>` that holds one file open at a time,
//! so a corpus larger than memory streams through. Key decision: a bad record is an error
//! that names where it is — `file.jsonl:17: not valid JSON: ...`, `file.parquet: row
//! group 2, row 40: ...`, `notes.txt:3: not valid UTF-8 ...` — never a skipped line or a
//! panic: silently dropping input is how a corpus loses a shard without anyone noticing.
//! (Plain-text files are the one exception to line streaming: each is read whole, as
//! one document or split on blank lines.)

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::{Field, Row};
use parquet::schema::types::Type as SchemaType;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use smelt::{Error, Result};

/// One document read from a corpus file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The record's own id (`id_field`) when it has one, else its [`location`](Self::location).
    pub id: String,
    /// Where it was read: `file:line`, `file: row group g, row r`, or `file` (whole-file text).
    pub location: String,
    /// The raw text, before normalisation.
    pub text: String,
}

/// A file format a reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// One JSON object per line; the text is a string field.
    Jsonl,
    /// A Parquet file; the text is a string (`BYTE_ARRAY` UTF8) column.
    Parquet,
    /// Plain UTF-8 text; see [`TextSplit`].
    Text,
}

impl InputFormat {
    /// The format a file's extension implies: `.jsonl`/`.json` → JSONL, `.parquet` →
    /// Parquet, `.txt`/`.md` → text; anything else → `None`.
    pub fn from_extension(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "jsonl" | "json" | "ndjson" => Some(InputFormat::Jsonl),
            "parquet" => Some(InputFormat::Parquet),
            "txt" | "md" | "text" => Some(InputFormat::Text),
            _ => None,
        }
    }
}

/// How a plain-text file becomes documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextSplit {
    /// The whole file is one document (default).
    #[default]
    File,
    /// Paragraphs separated by one or more blank lines are separate documents.
    BlankLines,
}

/// One corpus input: a file, or a folder whose files (recursively, sorted by path) are read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputSpec {
    /// A file, or a folder read recursively in sorted path order (hidden entries skipped).
    pub path: PathBuf,
    /// The format; default: from each file's extension (folder files with no known extension are skipped).
    pub format: Option<InputFormat>,
    /// The JSONL key or Parquet column holding the text (default `text`).
    pub text_field: String,
    /// The JSONL key or Parquet column holding a document id, used when present (default `id`).
    pub id_field: String,
    /// How plain-text files split into documents (default: one document per file).
    pub text_split: TextSplit,
}

impl Default for InputSpec {
    fn default() -> Self {
        InputSpec {
            path: PathBuf::new(),
            format: None,
            text_field: "text".into(),
            id_field: "id".into(),
            text_split: TextSplit::File,
        }
    }
}

impl InputSpec {
    /// An input at `path` with every other setting at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        InputSpec {
            path: path.into(),
            ..Default::default()
        }
    }

    /// The files this input names with their formats, in reading order.
    pub fn files(&self) -> Result<Vec<(PathBuf, InputFormat)>> {
        let meta = std::fs::metadata(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let mut paths = Vec::new();
        if meta.is_dir() {
            collect_files(&self.path, &mut paths)?;
            paths.sort();
        } else {
            paths.push(self.path.clone());
        }
        let mut files = Vec::new();
        for path in paths {
            match self.format.or_else(|| InputFormat::from_extension(&path)) {
                Some(format) => files.push((path, format)),
                None if meta.is_dir() => {}
                None => {
                    return Err(Error::Invalid(format!(
                        "{}: cannot tell the format from the extension; set `format` \
                         (jsonl, parquet or text)",
                        path.display()
                    )))
                }
            }
        }
        if files.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: no corpus files (.jsonl, .parquet, .txt, .md) in this folder",
                self.path.display()
            )));
        }
        Ok(files)
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Streams the documents of every input in order, one file open at a time.
pub fn read_inputs(inputs: &[InputSpec]) -> Result<impl Iterator<Item = Result<Document>>> {
    let mut plan = Vec::new();
    for spec in inputs {
        for (path, format) in spec.files()? {
            plan.push((spec.clone(), path, format));
        }
    }
    Ok(plan.into_iter().flat_map(
        |(spec, path, format)| match open_file(&spec, &path, format) {
            Ok(docs) => docs,
            Err(e) => Box::new(std::iter::once(Err(e))),
        },
    ))
}

type DocIter = Box<dyn Iterator<Item = Result<Document>>>;

fn open_file(spec: &InputSpec, path: &Path, format: InputFormat) -> Result<DocIter> {
    Ok(match format {
        InputFormat::Jsonl => {
            let (text_field, id_field) = (spec.text_field.clone(), spec.id_field.clone());
            let lines = JsonlLines::open(path)?;
            Box::new(lines.map(move |rec| {
                let rec = rec?;
                let text = rec.string_field(&text_field)?;
                let id = rec.id_field(&id_field);
                Ok(Document {
                    id: id.unwrap_or_else(|| rec.location.clone()),
                    location: rec.location,
                    text,
                })
            }))
        }
        InputFormat::Text => Box::new(read_text_file(path, spec.text_split)?.into_iter().map(Ok)),
        InputFormat::Parquet => {
            Box::new(ParquetDocs::open(path, &spec.text_field, &spec.id_field)?)
        }
    })
}

/// One JSON object read from a JSONL line, with its `file:line` location.
#[derive(Debug)]
pub struct JsonlRecord {
    /// `file:line` (1-based line).
    pub location: String,
    /// The parsed object.
    pub object: Map<String, Value>,
}

impl JsonlRecord {
    /// The string at `key`; an error naming `file:line` and the key when it is missing or not a string.
    pub fn string_field(&self, key: &str) -> Result<String> {
        match self.object.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            None => Err(Error::Invalid(format!(
                "{}: missing field `{key}`",
                self.location
            ))),
            Some(other) => Err(Error::Invalid(format!(
                "{}: field `{key}` must be a string, found {}",
                self.location,
                json_kind(other)
            ))),
        }
    }

    /// The id at `key` when it is a string or a number.
    fn id_field(&self, key: &str) -> Option<String> {
        match self.object.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// The JSON type name of `v`, for error messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Streams the JSON objects of a JSONL file; blank lines are skipped.
pub struct JsonlLines {
    path: PathBuf,
    reader: BufReader<File>,
    line: usize,
    offset: usize,
    buf: Vec<u8>,
    failed: bool,
}

impl JsonlLines {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(JsonlLines {
            path: path.to_path_buf(),
            reader: BufReader::new(file),
            line: 0,
            offset: 0,
            buf: Vec::new(),
            failed: false,
        })
    }

    fn parse_line(&self) -> Result<Option<JsonlRecord>> {
        let location = format!("{}:{}", self.path.display(), self.line);
        let text = std::str::from_utf8(&self.buf).map_err(|e| {
            Error::Invalid(format!(
                "{location}: not valid UTF-8 (byte offset {} in the file)",
                self.offset + e.valid_up_to()
            ))
        })?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("{location}: not valid JSON: {e}")))?;
        match value {
            Value::Object(object) => Ok(Some(JsonlRecord { location, object })),
            other => Err(Error::Invalid(format!(
                "{location}: expected a JSON object, found {}",
                json_kind(&other)
            ))),
        }
    }
}

impl Iterator for JsonlLines {
    type Item = Result<JsonlRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed {
            self.buf.clear();
            let n = match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(n) => n,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(Error::io(&self.path, e)));
                }
            };
            self.line += 1;
            let parsed = self.parse_line();
            self.offset += n;
            match parsed {
                Ok(Some(rec)) => return Some(Ok(rec)),
                Ok(None) => continue,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// Reads a UTF-8 text file whole: one document, or one per blank-line-separated paragraph
/// (located at the paragraph's first line).
pub fn read_text_file(path: &Path, split: TextSplit) -> Result<Vec<Document>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..valid]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        Error::Invalid(format!(
            "{}:{line}: not valid UTF-8 (byte offset {valid})",
            path.display()
        ))
    })?;
    let name = path.display().to_string();
    Ok(match split {
        TextSplit::File => vec![Document {
            id: name.clone(),
            location: name,
            text,
        }],
        TextSplit::BlankLines => {
            let mut docs = Vec::new();
            let mut para: Vec<&str> = Vec::new();
            let mut start = 0;
            let mut flush = |para: &mut Vec<&str>, start: usize| {
                if !para.is_empty() {
                    let location = format!("{name}:{start}");
                    docs.push(Document {
                        id: location.clone(),
                        location,
                        text: para.join("\n"),
                    });
                    para.clear();
                }
            };
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    flush(&mut para, start);
                } else {
                    if para.is_empty() {
                        start = i + 1;
                    }
                    para.push(line);
                }
            }
            flush(&mut para, start);
            docs
        }
    })
}

/// Streams the rows of a Parquet file through the `record` row API, projected onto the
/// text (and id, when present) columns.
struct ParquetDocs {
    path: PathBuf,
    rows: RowIter<'static>,
    text_column: String,
    id_column: Option<String>,
    /// Rows per row group, to turn a running row index into (row group, row).
    group_rows: Vec<usize>,
    next_row: usize,
    failed: bool,
}

impl ParquetDocs {
    fn open(path: &Path, text_column: &str, id_column: &str) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let bad = |m: String| Error::Invalid(format!("{}: {m}", path.display()));
        let reader = SerializedFileReader::new(smelt::data::parquet_guard::StrictFile::new(file))
            .map_err(|e| bad(format!("not a Parquet file: {e}")))?;
        smelt::data::parquet_guard::check_dictionary_pages(&reader).map_err(bad)?;
        let meta = reader.metadata();
        let group_rows = meta
            .row_groups()
            .iter()
            .map(|g| g.num_rows() as usize)
            .collect();
        let schema = meta.file_metadata().schema();
        let fields = schema.get_fields();
        let find = |name: &str| fields.iter().find(|f| f.name() == name).cloned();
        let text = find(text_column).ok_or_else(|| {
            let names: Vec<_> = fields.iter().map(|f| f.name().to_string()).collect();
            bad(format!(
                "no column `{text_column}` (columns: {})",
                names.join(", ")
            ))
        })?;
        let mut projected = vec![text];
        let id = find(id_column);
        if let Some(id) = &id {
            projected.push(id.clone());
        }
        let projection = SchemaType::group_type_builder(schema.name())
            .with_fields(projected)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let rows = RowIter::from_file_into(Box::new(reader))
            .project(Some(projection))
            .map_err(|e| bad(format!("cannot read column `{text_column}`: {e}")))?;
        Ok(ParquetDocs {
            path: path.to_path_buf(),
            rows,
            text_column: text_column.to_string(),
            id_column: id.map(|_| id_column.to_string()),
            group_rows,
            next_row: 0,
            failed: false,
        })
    }

    fn location(&self, row: usize) -> String {
        let mut rest = row;
        for (g, &n) in self.group_rows.iter().enumerate() {
            if rest < n {
                return format!("{}: row group {g}, row {rest}", self.path.display());
            }
            rest -= n;
        }
        format!("{}: row {row}", self.path.display())
    }

    fn document(&self, row: &Row, location: String) -> Result<Document> {
        let mut text = None;
        let mut id = None;
        for (name, field) in row.get_column_iter() {
            if *name == self.text_column {
                text = Some(match field {
                    Field::Str(s) => s.clone(),
                    Field::Null => {
                        return Err(Error::Invalid(format!(
                            "{location}: column `{name}` is null"
                        )))
                    }
                    other => {
                        return Err(Error::Invalid(format!(
                            "{location}: column `{name}` must be a string, found {other}"
                        )))
                    }
                });
            } else if Some(name) == self.id_column.as_ref() {
                id = match field {
                    Field::Null => None,
                    Field::Str(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                };
            }
        }
        let text = text.ok_or_else(|| {
            Error::Invalid(format!("{location}: missing column `{}`", self.text_column))
        })?;
        Ok(Document {
            id: id.unwrap_or_else(|| location.clone()),
            location,
            text,
        })
    }
}

impl Iterator for ParquetDocs {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let location = self.location(self.next_row);
        // The `parquet` record reader panics on some corrupt pages; report the row
        // instead and stop, since the reader's state after a panic is unknown.
        let row = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.rows.next()))
        {
            Ok(row) => row?,
            Err(_) => {
                self.failed = true;
                return Some(Err(Error::Invalid(format!(
                    "{location}: cannot decode row: corrupt Parquet data"
                ))));
            }
        };
        self.next_row += 1;
        let doc = row
            .map_err(|e| Error::Invalid(format!("{location}: {e}")))
            .and_then(|row| self.document(&row, location));
        self.failed = doc.is_err();
        Some(doc)
    }
}
