//! Bad task input is an error naming the task, the file and the line — never a panic.

use smelt_evals::data::load_docs;
use smelt_evals::{parse_specs, EvalError};
use std::path::Path;

fn spec(dir: &Path, body: &str) -> Vec<smelt_evals::Task> {
    let file = dir.join("tasks.toml");
    std::fs::write(&file, body).unwrap();
    smelt_evals::load_specs(&file).unwrap()
}

const MC: &str = "[[task]]\nname = \"mc\"\nkind = \"multiple_choice\"\ndata = \"d.jsonl\"\n";

#[test]
fn malformed_toml_names_task_file_and_line() {
    let text = "[[task]]\nname = \"ok\"\nkind = \"perplexity\"\ndata = \"a.jsonl\"\n\n[[task]]\nname = \"broken\"\nkind = \"multiple_choice\"\ndata = \"b.jsonl\"\nnum_fewshot = \"three\"\n";
    let err = parse_specs(text, Path::new("specs/tasks.toml")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EvalError::Spec { line: 10, .. }), "{msg}");
    assert!(
        msg.contains("task `broken`") && msg.contains("specs/tasks.toml:10"),
        "{msg}"
    );
    // Unknown keys and unknown kinds are errors too.
    let msg = parse_specs(
        "[[task]]\nname = \"x\"\nkind = \"multiple_choice\"\ndata = \"d\"\nshots = 2\n",
        Path::new("t.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("shots") && msg.contains("t.toml:"), "{msg}");
    let msg = parse_specs(
        "[[task]]\nname = \"y\"\nkind = \"essay\"\ndata = \"d\"\n",
        Path::new("t.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("task `y`") && msg.contains("essay"), "{msg}");
    // Validation after parsing names the task's line.
    let msg = parse_specs(
        "\n[[task]]\nname = \"z\"\nkind = \"code\"\ndata = \"d\"\npass_k = [5]\n",
        Path::new("t.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("task `z`") && msg.contains("t.toml:3") && msg.contains("pass_k"),
        "{msg}"
    );
}

#[test]
fn row_missing_gold_names_task_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = spec(dir.path(), MC);
    std::fs::write(
        dir.path().join("d.jsonl"),
        "{\"input\": \"q1\", \"choices\": [\"a\", \"b\"], \"gold\": 0}\n\n{\"input\": \"q2\", \"choices\": [\"a\", \"b\"]}\n",
    )
    .unwrap();
    let err = load_docs(&tasks[0]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EvalError::Data { line: 3, .. }), "{msg}");
    assert!(
        msg.contains("task `mc`") && msg.contains("d.jsonl:3") && msg.contains("gold"),
        "{msg}"
    );
}

#[test]
fn gold_index_out_of_range_names_task_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = spec(dir.path(), MC);
    std::fs::write(
        dir.path().join("d.jsonl"),
        "{\"input\": \"q1\", \"choices\": [\"a\", \"b\"], \"gold\": 2}\n",
    )
    .unwrap();
    let msg = load_docs(&tasks[0]).unwrap_err().to_string();
    assert!(
        msg.contains("task `mc`") && msg.contains("d.jsonl:1") && msg.contains("out of range"),
        "{msg}"
    );
    // Invalid JSON and a gold string that is not a choice.
    std::fs::write(
        dir.path().join("d.jsonl"),
        "{\"input\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": \"c\"}\n{oops\n",
    )
    .unwrap();
    let msg = load_docs(&tasks[0]).unwrap_err().to_string();
    assert!(
        msg.contains("d.jsonl:1") && msg.contains("not one of the choices"),
        "{msg}"
    );
}

#[test]
fn bigbench_example_without_targets_names_example() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = spec(dir.path(), "[[task]]\nname = \"bb\"\nkind = \"multiple_choice\"\nformat = \"bigbench\"\ndata = \"task.json\"\n");
    std::fs::write(
        dir.path().join("task.json"),
        r#"{"examples": [{"input": "a?", "target_scores": {"x": 1, "y": 0}}, {"input": "b?"}]}"#,
    )
    .unwrap();
    let msg = load_docs(&tasks[0]).unwrap_err().to_string();
    assert!(
        msg.contains("task `bb`") && msg.contains("task.json:2") && msg.contains("target_scores"),
        "{msg}"
    );
}
