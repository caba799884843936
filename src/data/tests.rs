//! Tests of the formats and readers: every TRL format from JSONL (committed fixtures in
//! `tests/fixtures/data/`) and from Parquet (written here in the layout `datasets` writes:
//! string columns and `list<struct{role, content}>` columns), column renames, and per-row
//! errors that name the file and line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::formats::{DatasetFormat, Record, RecordOptions, Turns};
use super::reader::read_records;
use crate::tokenizer::Message;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

fn records(path: &Path, opts: &RecordOptions) -> Vec<Record> {
    read_records(path, opts)
        .unwrap()
        .map(|r| r.unwrap().1)
        .collect()
}

/// All rows' results, errors as strings with the fixture directory stripped.
fn results(path: &Path, opts: &RecordOptions) -> Vec<Result<Record, String>> {
    let dir = format!("{}/", path.parent().unwrap().display());
    read_records(path, opts)
        .unwrap()
        .map(|r| r.map(|x| x.1).map_err(|e| e.to_string().replace(&dir, "")))
        .collect()
}

fn msg(role: &str, content: &str) -> Message {
    Message::new(role, content)
}

fn conv(items: &[(&str, &str)]) -> Turns {
    Turns::Conversation(items.iter().map(|(r, c)| msg(r, c)).collect())
}

fn text(s: &str) -> Turns {
    Turns::Text(s.into())
}

fn expected_lm_text() -> Vec<Record> {
    vec![
        Record::Text {
            text: "The sky is blue.".into(),
        },
        Record::Text {
            text: "Grass is green.".into(),
        },
    ]
}

fn expected_messages() -> Vec<Record> {
    vec![Record::Messages {
        messages: vec![
            msg("system", "Be brief."),
            msg("user", "What color is the sky?"),
            msg("assistant", "Blue."),
            msg("user", "And grass?"),
            msg("assistant", "Green."),
        ],
    }]
}

fn expected_prompt_completion() -> Vec<Record> {
    vec![
        Record::PromptCompletion {
            prompt: text("The sky is"),
            completion: text(" blue."),
        },
        Record::PromptCompletion {
            prompt: conv(&[("user", "What color is the sky?")]),
            completion: conv(&[("assistant", "It is blue.")]),
        },
    ]
}

/// Explicit and implicit preference rows describe the same pairs.
fn expected_preference() -> Vec<Record> {
    vec![
        Record::Preference {
            prompt: text("The sky is"),
            chosen: text(" blue."),
            rejected: text(" green."),
        },
        Record::Preference {
            prompt: conv(&[("user", "What color is the sky?")]),
            chosen: conv(&[("assistant", "It is blue.")]),
            rejected: conv(&[("assistant", "It is green.")]),
        },
    ]
}

#[test]
fn every_format_parses_from_jsonl() {
    let opts = RecordOptions::default();
    assert_eq!(
        records(&fixture("lm_text.jsonl"), &opts),
        expected_lm_text()
    );
    assert_eq!(
        records(&fixture("lm_messages.jsonl"), &opts),
        expected_messages()
    );
    assert_eq!(
        records(&fixture("prompt_completion.jsonl"), &opts),
        expected_prompt_completion()
    );
    assert_eq!(
        records(&fixture("preference_explicit.jsonl"), &opts),
        expected_preference()
    );
    // implicit prompt: split at the longest common prefix (the space goes with the completions)
    assert_eq!(
        records(&fixture("preference_implicit.jsonl"), &opts),
        expected_preference()
    );
}

/// A Parquet column: strings, or conversations (`list<struct{role, content}>`).
enum Col<'a> {
    Str(&'a str, Vec<&'a str>),
    Conv(&'a str, Vec<Vec<(&'a str, &'a str)>>),
}

/// Writes `cols` as one row group in the schema pyarrow gives `datasets` columns
/// (3-level LIST of optional structs of optional strings).
fn write_parquet(path: &Path, cols: &[Col]) {
    let fields: Vec<String> = cols
        .iter()
        .map(|c| match c {
            Col::Str(name, _) => format!("optional binary {name} (STRING);"),
            Col::Conv(name, _) => format!(
                "optional group {name} (LIST) {{ repeated group list {{ optional group element {{ \
                 optional binary role (STRING); optional binary content (STRING); }} }} }}"
            ),
        })
        .collect();
    let schema = Arc::new(
        parse_message_type(&format!("message schema {{ {} }}", fields.join(" "))).unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
            .unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut write = |values: Vec<ByteArray>, def: Vec<i16>, rep: Option<Vec<i16>>| {
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&def), rep.as_deref())
            .unwrap();
        col.close().unwrap();
    };
    for c in cols {
        match c {
            Col::Str(_, vals) => write(
                vals.iter().map(|s| ByteArray::from(*s)).collect(),
                vec![1; vals.len()],
                None,
            ),
            Col::Conv(_, rows) => {
                for leaf in 0..2 {
                    let (mut vals, mut def, mut rep) = (vec![], vec![], vec![]);
                    for row in rows {
                        for (i, m) in row.iter().enumerate() {
                            vals.push(ByteArray::from(if leaf == 0 { m.0 } else { m.1 }));
                            def.push(4);
                            rep.push(i16::from(i > 0));
                        }
                    }
                    write(vals, def, Some(rep));
                }
            }
        }
    }
    group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn every_format_parses_from_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let opts = RecordOptions::default();
    let q = "What color is the sky?";
    let cases: Vec<(&str, Vec<Col>, Vec<Record>)> = vec![
        (
            "text",
            vec![Col::Str(
                "text",
                vec!["The sky is blue.", "Grass is green."],
            )],
            expected_lm_text(),
        ),
        (
            "messages",
            vec![Col::Conv(
                "messages",
                vec![vec![
                    ("system", "Be brief."),
                    ("user", q),
                    ("assistant", "Blue."),
                    ("user", "And grass?"),
                    ("assistant", "Green."),
                ]],
            )],
            expected_messages(),
        ),
        (
            "pc_standard",
            vec![
                Col::Str("prompt", vec!["The sky is"]),
                Col::Str("completion", vec![" blue."]),
            ],
            expected_prompt_completion()[..1].to_vec(),
        ),
        (
            "pc_conversational",
            vec![
                Col::Conv("prompt", vec![vec![("user", q)]]),
                Col::Conv("completion", vec![vec![("assistant", "It is blue.")]]),
            ],
            expected_prompt_completion()[1..].to_vec(),
        ),
        (
            "pref_explicit",
            vec![
                Col::Str("prompt", vec!["The sky is"]),
                Col::Str("chosen", vec![" blue."]),
                Col::Str("rejected", vec![" green."]),
            ],
            expected_preference()[..1].to_vec(),
        ),
        (
            "pref_implicit",
            vec![
                Col::Conv(
                    "chosen",
                    vec![vec![("user", q), ("assistant", "It is blue.")]],
                ),
                Col::Conv(
                    "rejected",
                    vec![vec![("user", q), ("assistant", "It is green.")]],
                ),
            ],
            expected_preference()[1..].to_vec(),
        ),
    ];
    for (name, cols, expected) in cases {
        let path = dir.path().join(format!("{name}.parquet"));
        write_parquet(&path, &cols);
        assert_eq!(records(&path, &opts), expected, "{name}");
    }
    // a bad Parquet row names its 0-based row index
    let path = dir.path().join("bad.parquet");
    write_parquet(
        &path,
        &[Col::Conv(
            "messages",
            vec![vec![("user", "hi")], vec![("robot", "beep")]],
        )],
    );
    let errs = results(&path, &opts);
    assert!(errs[0].is_ok());
    assert_eq!(
        errs[1].as_ref().unwrap_err(),
        "bad.parquet:row 1: column `messages`, message 0: unknown role `robot` (expected one of system, user, assistant, tool)"
    );
}

#[test]
fn column_renames_map_recipe_names_to_trl_names() {
    let opts = RecordOptions {
        columns: [("question", "prompt"), ("answer", "completion")]
            .map(|(a, b)| (a.into(), b.into()))
            .into(),
        ..Default::default()
    };
    let got = results(&fixture("renamed.jsonl"), &opts);
    assert_eq!(
        got[0],
        Ok(Record::PromptCompletion {
            prompt: text("2 + 2 ="),
            completion: text(" 4")
        })
    );
    // the second row has `reply`, not `answer`: the error names both spellings
    assert_eq!(
        got[1],
        Err("renamed.jsonl:2: missing column `completion` (renamed from `answer`)".into())
    );
}

#[test]
fn bad_rows_are_errors_naming_file_and_line() {
    let got = results(&fixture("bad_rows.jsonl"), &RecordOptions::default());
    let errs: Vec<&str> = got
        .iter()
        .skip(1)
        .map(|r| r.as_ref().unwrap_err().as_str())
        .collect();
    assert!(got[0].is_ok());
    assert_eq!(errs[0], "bad_rows.jsonl:2: missing column `completion`");
    assert_eq!(
        errs[1],
        "bad_rows.jsonl:3: column `messages`, message 1: unknown role `robot` (expected one of system, user, assistant, tool)"
    );
    assert_eq!(errs[2], "bad_rows.jsonl:4: empty completion");
    assert!(
        errs[3].starts_with("bad_rows.jsonl:5: `prompt` is a string but `completion` is not"),
        "{}",
        errs[3]
    );
    assert!(
        errs[4].starts_with("bad_rows.jsonl:6: malformed JSON: EOF while parsing a string"),
        "{}",
        errs[4]
    );
    assert_eq!(
        errs[5],
        "bad_rows.jsonl:7: column `messages`, message 0: `content` must be a string, found nothing"
    );
    assert_eq!(errs[6], "bad_rows.jsonl:8: expected a JSON object");
    assert_eq!(got.len(), 8);

    let pref = results(&fixture("preference_bad.jsonl"), &RecordOptions::default());
    assert_eq!(
        pref[11],
        Err("preference_bad.jsonl:12: missing column `chosen`".into())
    );
}

#[test]
fn stated_format_overrides_detection() {
    // a prompt-completion row read as preference data: the missing columns are named
    let opts = RecordOptions {
        format: Some(DatasetFormat::Preference),
        ..Default::default()
    };
    let got = results(&fixture("prompt_completion.jsonl"), &opts);
    assert_eq!(
        got[0],
        Err("prompt_completion.jsonl:1: missing column `chosen`".into())
    );
    // and `format` is a snake_case serde enum in recipes, unknown keys rejected
    let parsed: RecordOptions =
        toml::from_str("format = \"prompt_completion\"\n[columns]\nq = \"prompt\"").unwrap();
    assert_eq!(parsed.format, Some(DatasetFormat::PromptCompletion));
    assert!(toml::from_str::<RecordOptions>("formats = \"x\"")
        .unwrap_err()
        .to_string()
        .contains("unknown field `formats`"));
}
