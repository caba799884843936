//! Corpus preparation and BPE training end to end: planted duplicates, near-duplicates
//! and contamination are removed with the right reasons; bad input fails with its
//! location; Parquet round-trips; a BPE tokenizer trained on the bundled corpus is
//! lossless on arbitrary Unicode.
//!
//! Run: `cargo test -p smelt-pretrain --test corpus_prep`

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use smelt_pretrain::bpe::{train_bpe, train_bpe_from_inputs, BpeTrainingConfig, CHATML_TEMPLATE};
use smelt_pretrain::corpus::minhash::{MinHasher, MinhashConfig};
use smelt_pretrain::corpus::{
    prepare_corpus, read_inputs, ContaminationAction, CorpusConfig, DecontamConfig, EvalSource,
    InputSpec, Reason, TextSplit,
};

fn bundled(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/corpus")
        .join(name)
}

/// The first `n` scenes of the bundled corpus as (id, text).
fn scenes(n: usize) -> Vec<(String, String)> {
    fs::read_to_string(bundled("shakespeare-train.jsonl"))
        .unwrap()
        .lines()
        .take(n)
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().into(),
                v["text"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn write_jsonl(path: &Path, docs: &[(String, String)]) {
    let lines: Vec<String> = docs
        .iter()
        .map(|(id, text)| json!({"id": id, "text": text}).to_string())
        .collect();
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn config(dir: &Path, input: &Path) -> CorpusConfig {
    CorpusConfig {
        inputs: vec![InputSpec::new(input)],
        output: dir.join("out/kept.jsonl"),
        ..Default::default()
    }
}

fn kept_ids(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    let (a, b): (HashSet<_>, HashSet<_>) = (a.iter().collect(), b.iter().collect());
    a.intersection(&b).count() as f64 / a.union(&b).count() as f64
}

/// Exact copies (up to line endings and surrounding whitespace) and a copy with a few
/// words changed are removed, naming the kept document; the other scenes of the same
/// play — same topic, same speakers — are all kept.
#[test]
fn planted_duplicates_are_removed_and_distinct_scenes_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut docs = scenes(12);
    let (base_id, base) = docs[2].clone();
    let exact = format!("\n  {}  \n", base.replace('\n', "\r\n"));
    // Change 4 words of a ~1,300-word scene: shingle Jaccard stays above 0.9.
    let mut words: Vec<&str> = base.split(' ').collect();
    for i in [40, 300, 700, 1000] {
        words[i] = "CHANGED";
    }
    let near = words.join(" ");
    let h = MinHasher::new(MinhashConfig::default());
    let j = jaccard(&h.shingles(&base), &h.shingles(&near));
    assert!(
        (0.9..1.0).contains(&j),
        "planted near-duplicate has Jaccard {j}"
    );
    docs.push(("exact-copy".into(), exact));
    docs.push(("near-copy".into(), near));
    docs.push(("blank".into(), " \n\t\n".into()));
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &docs);

    let cfg = config(dir.path(), &input);
    let report = prepare_corpus(cfg.clone()).unwrap();

    assert_eq!(report.documents_read, 15);
    assert_eq!(report.documents_kept, 12);
    assert_eq!(
        kept_ids(&cfg.output),
        docs[..12].iter().map(|d| d.0.clone()).collect::<Vec<_>>()
    );
    let reasons: Vec<(&str, &Reason)> = report
        .removed
        .iter()
        .map(|o| (o.id.as_str(), &o.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                "exact-copy",
                &Reason::ExactDuplicate {
                    of: base_id.clone()
                }
            ),
            (
                "near-copy",
                &Reason::NearDuplicate {
                    kept: base_id.clone()
                }
            ),
            ("blank", &Reason::Empty),
        ]
    );
    assert_eq!(report.removed_counts.total(), 3);
    assert!((report.minhash_threshold.unwrap() - 0.719).abs() < 1e-3);

    // The report on disk carries the same reasons, tagged by name.
    let on_disk: Value =
        serde_json::from_str(&fs::read_to_string(cfg.report_path()).unwrap()).unwrap();
    let names: Vec<&str> = on_disk["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["reason"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["exact_duplicate", "near_duplicate", "empty"]);
    assert_eq!(on_disk["removed"][1]["kept"], base_id.as_str());
    assert_eq!(on_disk["removed_counts"]["near_duplicate"], 1);

    // With near-duplicate removal off, the edited copy survives.
    let mut off = config(dir.path(), &input);
    off.minhash.enabled = false;
    assert_eq!(prepare_corpus(off).unwrap().documents_kept, 13);
}

/// A 13-word overlap with an evaluation question (re-cased and re-punctuated) removes a
/// document; a 12-word overlap does not. With `action = "flag"` it is kept and listed.
#[test]
fn thirteen_gram_overlap_is_contamination_twelve_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let question = "Which river flows through the ancient city where the famous bridge of sighs \
                    connects the palace to the prison across the water";
    let eval = dir.path().join("eval.jsonl");
    fs::write(
        &eval,
        format!(
            "{}\n{}\n",
            json!({"question": question, "choices": ["Thames", "Arno"]}),
            json!({"question": "Too short."})
        ),
    )
    .unwrap();
    let q: Vec<&str> = question.split_whitespace().collect();
    // Different surroundings, so that no two documents are near-duplicates of each other.
    let docs = vec![
        (
            "clean".to_string(),
            "Sailors mend their nets at dawn while gulls wheel above the harbour.".to_string(),
        ),
        // Words 3..16 of the question: 13 words, upper-cased with added punctuation.
        (
            "has-13".to_string(),
            format!("A traveller asked: {}!", q[3..16].join(", ").to_uppercase()),
        ),
        (
            "has-12".to_string(),
            format!(
                "Guidebooks say {} — and the gondolas wait below.",
                q[3..15].join(" ")
            ),
        ),
    ];
    let input = dir.path().join("train.jsonl");
    write_jsonl(&input, &docs);

    let mut cfg = config(dir.path(), &input);
    cfg.decontamination = DecontamConfig {
        eval_sets: vec![EvalSource {
            path: eval.clone(),
            fields: vec!["question".into(), "choices".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let report = prepare_corpus(cfg.clone()).unwrap();
    assert_eq!(kept_ids(&cfg.output), ["clean", "has-12"]);
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.removed[0].id, "has-13");
    assert_eq!(
        report.removed[0].reason,
        Reason::Contaminated {
            ngram: q[3..16].join(" ").to_lowercase(),
            eval_file: eval.clone()
        }
    );
    assert_eq!(report.eval_ngrams, q.len() - 13 + 1);

    cfg.decontamination.action = ContaminationAction::Flag;
    let flagged = prepare_corpus(cfg.clone()).unwrap();
    assert_eq!(kept_ids(&cfg.output), ["clean", "has-13", "has-12"]);
    assert_eq!(flagged.flagged.len(), 1);
    assert_eq!(flagged.flagged[0].id, "has-13");
    assert!(flagged.removed.is_empty());
}

/// A malformed JSONL line fails with `file:line`; a record without the text field names
/// the field; nothing is written.
#[test]
fn malformed_jsonl_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    fs::write(&input, "{\"text\": \"one\"}\n\n{\"text\": \"two\"\n").unwrap();
    let cfg = config(dir.path(), &input);
    let err = prepare_corpus(cfg.clone()).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:3: not valid JSON"), "{err}");
    assert!(!cfg.output.exists());

    fs::write(&input, "{\"text\": \"one\"}\n{\"body\": \"two\"}\n").unwrap();
    let err = prepare_corpus(cfg.clone()).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:2: missing field `text`"), "{err}");

    // A configurable field name reads it.
    let mut by_body = cfg.clone();
    by_body.inputs[0].text_field = "body".into();
    fs::write(&input, "{\"body\": \"one\"}\n{\"body\": \"two\"}\n").unwrap();
    assert_eq!(prepare_corpus(by_body).unwrap().documents_kept, 2);
}

/// Invalid UTF-8 names the file (and line) in JSONL and in plain text.
#[test]
fn non_utf8_input_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("latin1.jsonl");
    fs::write(&jsonl, b"{\"text\": \"ok\"}\n{\"text\": \"caf\xe9\"}\n").unwrap();
    let err = prepare_corpus(config(dir.path(), &jsonl))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("latin1.jsonl:2: not valid UTF-8 (byte offset 28"),
        "{err}"
    );

    let txt = dir.path().join("latin1.txt");
    fs::write(&txt, b"line one\nline two caf\xe9\n").unwrap();
    let err = prepare_corpus(config(dir.path(), &txt))
        .unwrap_err()
        .to_string();
    assert!(err.contains("latin1.txt:2: not valid UTF-8"), "{err}");
}

/// A corpus with no documents is an error, not an empty output.
#[test]
fn empty_corpus_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("empty.jsonl");
    fs::write(&input, "\n\n").unwrap();
    let cfg = config(dir.path(), &input);
    let err = prepare_corpus(cfg.clone()).unwrap_err().to_string();
    assert!(
        err.contains("the corpus is empty") && err.contains("empty.jsonl"),
        "{err}"
    );
    assert!(!cfg.output.exists());

    let folder = dir.path().join("nothing");
    fs::create_dir(&folder).unwrap();
    fs::write(folder.join("notes.bin"), "x").unwrap();
    let err = prepare_corpus(config(dir.path(), &folder))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no corpus files"), "{err}");
}

/// Plain text: one document per file, or one per blank-line-separated paragraph.
#[test]
fn plain_text_splits_on_blank_lines() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("notes.txt");
    fs::write(&txt, "first para\nstill first\n\n\n  \nsecond\n").unwrap();
    let whole: Vec<_> = read_inputs(&[InputSpec::new(&txt)])
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(whole.len(), 1);
    let spec = InputSpec {
        text_split: TextSplit::BlankLines,
        ..InputSpec::new(&txt)
    };
    let paras: Vec<_> = read_inputs(&[spec])
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let got: Vec<(&str, &str)> = paras
        .iter()
        .map(|d| (d.location.as_str(), d.text.as_str()))
        .collect();
    let name = txt.display().to_string();
    assert_eq!(
        got,
        [
            (format!("{name}:1").as_str(), "first para\nstill first"),
            (format!("{name}:6").as_str(), "second")
        ]
    );
}

/// Writes `rows` of (id, text) as a Parquet file with one row group per chunk.
fn write_parquet(path: &Path, chunks: &[&[(&str, &str)]]) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let schema = parse_message_type(
        "message doc { REQUIRED BYTE_ARRAY id (UTF8); REQUIRED BYTE_ARRAY content (UTF8); }",
    )
    .unwrap();
    let file = fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(
        file,
        Arc::new(schema),
        Arc::new(WriterProperties::builder().build()),
    )
    .unwrap();
    for rows in chunks {
        let mut group = writer.next_row_group().unwrap();
        let mut column = 0;
        while let Some(mut col) = group.next_column().unwrap() {
            let values: Vec<ByteArray> = rows
                .iter()
                .map(|(id, text)| ByteArray::from(if column == 0 { *id } else { *text }))
                .collect();
            col.typed::<ByteArrayType>()
                .write_batch(&values, None, None)
                .unwrap();
            col.close().unwrap();
            column += 1;
        }
        group.close().unwrap();
    }
    writer.close().unwrap();
}

/// Documents written with the parquet writer read back in order with their ids, through
/// a configurable column; an unknown column lists the columns there are.
#[test]
fn parquet_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.parquet");
    let rows: [&[(&str, &str)]; 2] = [
        &[
            ("a", "Première ligne — naïve café"),
            ("b", "second document"),
        ],
        &[("c", "third, in row group 1"), ("d", "second document")],
    ];
    write_parquet(&path, &rows);

    let spec = InputSpec {
        text_field: "content".into(),
        ..InputSpec::new(&path)
    };
    let docs: Vec<_> = read_inputs(std::slice::from_ref(&spec))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let got: Vec<(&str, &str)> = docs
        .iter()
        .map(|d| (d.id.as_str(), d.text.as_str()))
        .collect();
    let want: Vec<(&str, &str)> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    assert_eq!(got, want);
    assert!(
        docs[2]
            .location
            .ends_with("docs.parquet: row group 1, row 0"),
        "{}",
        docs[2].location
    );

    let cfg = CorpusConfig {
        inputs: vec![spec],
        output: dir.path().join("kept.jsonl"),
        ..Default::default()
    };
    let report = prepare_corpus(cfg.clone()).unwrap();
    assert_eq!(kept_ids(&cfg.output), ["a", "b", "c"]);
    assert_eq!(
        report.removed[0].reason,
        Reason::ExactDuplicate { of: "b".into() }
    );

    let err = read_inputs(&[InputSpec::new(&path)])
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("docs.parquet: no column `text` (columns: id, content)"),
        "{err}"
    );
}

/// The recipe form: TOML with documented defaults; a misspelt key is an error naming it.
#[test]
fn config_from_toml_rejects_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.toml");
    fs::write(
        &path,
        "output = \"kept.jsonl\"\n[[inputs]]\npath = \"a.jsonl\"\n[minhash]\nnum_buckets = 20\n",
    )
    .unwrap();
    let cfg = CorpusConfig::from_toml_file(&path).unwrap();
    assert_eq!(cfg.minhash.num_buckets, 20);
    assert_eq!(cfg.minhash.hashes_per_bucket, 8);
    assert_eq!(cfg.decontamination.n_gram, 13);
    assert_eq!(cfg.inputs[0].text_field, "text");

    fs::write(
        &path,
        "output = \"kept.jsonl\"\n[minhash]\nnum_bucket = 20\n",
    )
    .unwrap();
    let err = CorpusConfig::from_toml_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("corpus.toml") && err.contains("num_bucket"),
        "{err}"
    );
}

/// BPE on the bundled corpus reaches the requested vocabulary, keeps each special token
/// one id, round-trips arbitrary Unicode, and saves a folder that loads back the same.
#[test]
fn bpe_trains_on_bundled_corpus_and_is_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tok");
    let config = BpeTrainingConfig {
        vocab_size: 1000,
        ..Default::default()
    };
    let tok = train_bpe_from_inputs(
        &[InputSpec::new(bundled("shakespeare-train.jsonl"))],
        &config,
        &out,
    )
    .unwrap();

    assert_eq!(tok.vocab_size(), 1000);
    for (i, special) in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .enumerate()
    {
        assert_eq!(tok.token_to_id(special), Some(i as u32));
        assert_eq!(
            tok.encode(&format!("a{special}b"), false).unwrap().len(),
            3,
            "{special}"
        );
    }
    assert_eq!(tok.eos_token_id(), Some(0));
    // Merges were learned from the corpus: common words are single tokens.
    assert_eq!(tok.encode(" the", false).unwrap().len(), 1);

    let samples = [
        "To be, or not to be: that is the question.",
        "Ünïcödé — 日本語のテキスト, 한국어, العربية, emoji 🤖🎭 and ZWJ 👩‍👩‍👧",
        "tabs\tand\r\nCRLF  double  spaces\u{0000}\u{0007} control, 12345 digits",
        "",
    ];
    for text in samples {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    // Digits are split one by one (SmolLM2's pre-tokenizer).
    assert_eq!(tok.encode("2024", false).unwrap().len(), 4);

    let reloaded = smelt::tokenizer::Tokenizer::from_dir(&out).unwrap();
    assert_eq!(
        reloaded.encode(samples[1], false).unwrap(),
        tok.encode(samples[1], false).unwrap()
    );
}

/// A ChatML template set at training time is saved and renders SmolLM2's format.
#[test]
fn bpe_with_chatml_template() {
    let dir = tempfile::tempdir().unwrap();
    let config = BpeTrainingConfig {
        vocab_size: 300,
        eos_token: Some("<|im_end|>".into()),
        chat_template: Some(CHATML_TEMPLATE.into()),
        ..Default::default()
    };
    let texts = scenes(5).into_iter().map(|(_, t)| t);
    let tok = train_bpe(texts, &config, dir.path()).unwrap();
    assert_eq!(tok.vocab_size(), 300);
    let msgs = [smelt::tokenizer::Message::new("user", "Hi")];
    let rendered = tok.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(
        rendered,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(tok.eos_token_id(), tok.token_to_id("<|im_end|>"));
    let ids = tok.encode(&rendered, false).unwrap();
    assert_eq!(
        ids.iter().filter(|&&i| i == 1).count(),
        2,
        "two <|im_start|> ids"
    );
}

/// The bundled corpus itself: 155 distinct scenes, none a duplicate of another, and the
/// train split shares no 13-gram with the held-out validation slice.
#[test]
fn bundled_corpus_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &bundled("shakespeare-train.jsonl"));
    cfg.decontamination.eval_sets = vec![EvalSource {
        path: bundled("shakespeare-valid.jsonl"),
        ..Default::default()
    }];
    let report = prepare_corpus(cfg).unwrap();
    assert_eq!(report.documents_read, 155);
    assert_eq!(report.removed, vec![], "{:#?}", report.removed);
    assert!(report.eval_ngrams > 5000, "{}", report.eval_ngrams);
}
