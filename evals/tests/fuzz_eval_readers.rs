//! Deterministic mutation fuzzing of the eval suite's readers of outside input: task
//! spec TOML (`load_specs`), task data in every JSONL layout (`jsonl` columns for each
//! task kind, `humaneval`, `preference`) and BIG-bench task JSON (`load_docs`), each
//! loaded document then rendered into its few-shot prompt.
//!
//! Run: `cargo test --release -p smelt-evals --test fuzz_eval_readers`
//! (`SMELT_FUZZ_ITERS=200000` or `SMELT_FUZZ_SECS=600` for a long local run;
//! `SMELT_FUZZ_SEED` picks another mutation stream). Seeds live in
//! `fuzz/corpus/eval_spec/`, `fuzz/corpus/eval_data_jsonl/` and
//! `fuzz/corpus/eval_data_bigbench/`.
//!
//! Key decision: a data file is only meaningful under a task, and which task is not in
//! the file, so each data target reads the mutated file under every task that accepts
//! its layout. A case fails when any of them panics or hangs, or returns an error that
//! does not name the data file; it passes when each task either loads the file or
//! rejects it with such an error (see `fuzz/harness.rs`).

#[path = "../../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

use harness::{fuzz, Structure, Target};
use smelt::tokenizer::Tokenizer;
use smelt_evals::data::{load_docs, Doc};
use smelt_evals::prompt::context;
use smelt_evals::{load_specs, parse_specs, Task};

/// The committed seeds of `reader`.
fn corpus(reader: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(reader)
}

/// A tiny tokenizer for prompt rendering (only a chat template would use it).
fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&corpus("tokenizer").join("bpe.json")).expect("tokenizer seed")
}

/// `[[task]]` tables reading `data` in each `(kind, format)` pair, with few-shot
/// examples so every loaded doc's gold target is rendered too.
fn tasks_for(data: &Path, layouts: &[(&str, &str)]) -> Vec<Task> {
    let name = data.file_name().unwrap().to_string_lossy();
    let text: String = layouts
        .iter()
        .enumerate()
        .map(|(i, (kind, format))| {
            format!(
                "[[task]]\nname = \"t{i}\"\nkind = \"{kind}\"\nformat = \"{format}\"\n\
                 data = \"{name}\"\nnum_fewshot = 3\n\n"
            )
        })
        .collect();
    parse_specs(&text, &data.with_file_name("tasks.toml")).expect("fixed specs parse")
}

/// Loads `data` under every task of `layouts` and renders each doc's prompt: `Ok` when
/// at least one task accepts it, an error without the file's name as soon as one
/// appears, else the first error.
fn read_under(data: &Path, layouts: &[(&str, &str)]) -> Result<(), String> {
    let file_name = data.file_name().unwrap().to_string_lossy().to_string();
    let tok = tokenizer();
    let mut first_err = None;
    let mut accepted = false;
    for task in tasks_for(data, layouts) {
        match load_docs(&task) {
            Ok(docs) => {
                render(&task, &docs, &tok)?;
                accepted = true;
            }
            Err(e) => {
                let msg = e.to_string();
                if !msg.contains(&file_name) {
                    return Err(msg);
                }
                first_err.get_or_insert(msg);
            }
        }
    }
    match first_err {
        Some(e) if !accepted => Err(e),
        _ => Ok(()),
    }
}

/// Builds the few-shot context of every doc (indexes each few-shot doc's gold target).
fn render(task: &Task, docs: &[Doc], tok: &Tokenizer) -> Result<(), String> {
    for i in 0..docs.len() {
        context(task, docs, i, tok).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn eval_task_specs() {
    fuzz(Target {
        name: "eval_spec",
        file_name: "tasks.toml",
        seeds: corpus("eval_spec"),
        structure: Structure::Toml,
        run: &|path: &Path| load_specs(path).map(drop).map_err(|e| e.to_string()),
    });
}

#[test]
fn eval_data_jsonl() {
    fuzz(Target {
        name: "eval_data_jsonl",
        file_name: "data.jsonl",
        seeds: corpus("eval_data_jsonl"),
        structure: Structure::Jsonl,
        run: &|path: &Path| {
            read_under(
                path,
                &[
                    ("multiple_choice", "jsonl"),
                    ("generate", "jsonl"),
                    ("perplexity", "jsonl"),
                    ("code", "jsonl"),
                    ("code", "humaneval"),
                    ("multiple_choice", "preference"),
                ],
            )
        },
    });
}

#[test]
fn eval_data_bigbench() {
    fuzz(Target {
        name: "eval_data_bigbench",
        file_name: "task.json",
        seeds: corpus("eval_data_bigbench"),
        structure: Structure::Json,
        run: &|path: &Path| {
            read_under(
                path,
                &[("multiple_choice", "bigbench"), ("generate", "bigbench")],
            )
        },
    });
}

/// Found by `eval_data_bigbench`: a BIG-bench `generate` example whose `target` list
/// holds no strings (`"target": []` or `[[1]]`) loaded as a doc with no answers, and
/// rendering it as a few-shot example panicked indexing its first answer. The loader
/// now rejects it, naming the file and the example.
#[test]
fn bigbench_target_without_string_answers_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("task.json");
    for target in ["[]", "[[1]]", "[1, 2]"] {
        let json = format!(
            r#"{{"examples": [{{"input": "a", "target": "x"}}, {{"input": "b", "target": {target}}}]}}"#
        );
        std::fs::write(&data, json).unwrap();
        let task = tasks_for(&data, &[("generate", "bigbench")]).remove(0);
        let msg = load_docs(&task).unwrap_err().to_string();
        assert!(
            msg.contains("task.json:2") && msg.contains("target"),
            "{target}: {msg}"
        );
    }
}
