//! The generated data files of a pipeline, all from `ArithmeticTask` in one plain
//! prompt format.
//!
//! Key decision: no chat template. Every stage and every eval sees the same
//! `Question: What is 3 plus 4?\nAnswer:` prompt and ` 7` completion (TRL's
//! prompt–completion format; SFT appends EOS), so the tokenizer trained in
//! pretraining needs no special tokens besides EOS, the pretraining corpus can carry
//! the same problems as plain text (in worksheets of ten), and the exact-match eval measures exactly what SFT
//! and GRPO train. Training rows come from `task.seed`, eval rows from `eval_seed`:
//! different draws of the same distribution (with operands 0..=9 and one operation
//! there are only 300 distinct problems, so a held-out row can repeat a training
//! problem; the evals measure the skill on the task's distribution, not recall of
//! unseen facts). Files are rewritten atomically on every run; their content is a
//! function of the recipe, so a resumed stage reads the same rows.

use super::recipe::PipelineRecipe;
use serde_json::{json, Value};
use smelt::{Error, Result};
use smelt_rollouts::tasks::arithmetic::{ArithmeticTask, TaskRow};
use std::path::Path;

/// The prompt every stage and eval uses for a problem.
pub fn prompt(row: &TaskRow) -> String {
    format!("Question: {}\nAnswer:", row.prompt)
}

/// Problems per pretraining document (a "worksheet").
pub const PER_SHEET: usize = 10;

/// The prompt template of the exact-match eval (`{input}` is the question).
pub const EVAL_PROMPT: &str = "Question: {input}\nAnswer:";

/// Writes every generated file under `recipe.data_dir()`.
pub fn write_data(recipe: &PipelineRecipe) -> Result<()> {
    let a = &recipe.arithmetic;
    let dir = recipe.data_dir();
    let train = &a.task;
    let eval = ArithmeticTask {
        seed: a.eval_seed,
        ..train.clone()
    };
    // Worksheets of PER_SHEET problems: one problem per document would be removed by the
    // corpus' exact and MinHash dedup (there are only a few hundred distinct problems).
    let text = train
        .rows(a.pretrain_rows)?
        .chunks(PER_SHEET)
        .map(|sheet| {
            let lines: Vec<String> = sheet
                .iter()
                .map(|r| format!("{} {}", prompt(r), r.answer))
                .collect();
            json!({"text": lines.join("\n\n")})
        })
        .collect::<Vec<_>>();
    write_jsonl(&dir.join("arithmetic-text.jsonl"), &text)?;
    let sft = train
        .rows(a.sft_rows)?
        .iter()
        .map(|r| json!({"prompt": prompt(r), "completion": format!(" {}", r.answer)}))
        .collect::<Vec<_>>();
    write_jsonl(&dir.join("sft.jsonl"), &sft)?;
    write_jsonl(&dir.join("dpo.jsonl"), &pairs(train, a.dpo_rows)?)?;
    let grpo = train
        .rows(a.grpo_rows)?
        .iter()
        .map(|r| json!({"prompt": prompt(r), "answer": r.answer}))
        .collect::<Vec<_>>();
    write_jsonl(&dir.join("grpo.jsonl"), &grpo)?;
    let held_out = eval
        .rows(a.eval_rows)?
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"id": format!("arith-{i}"), "input": r.prompt, "answer": r.answer}))
        .collect::<Vec<_>>();
    write_jsonl(&dir.join("eval-arithmetic.jsonl"), &held_out)?;
    write_jsonl(
        &dir.join("eval-preference.jsonl"),
        &pairs(&eval, a.eval_rows)?,
    )
}

/// Correct-vs-wrong pairs (`ArithmeticTask::preference_rows`' wrong answers, off by 1–3)
/// as plain `{"prompt", "chosen", "rejected"}` strings.
fn pairs(task: &ArithmeticTask, n: usize) -> Result<Vec<Value>> {
    let rows = task.rows(n)?;
    let prefs = task.preference_rows(n)?;
    rows.iter()
        .zip(prefs)
        .map(|(r, p)| {
            let rejected = p["rejected"][0]["content"].as_str().ok_or_else(|| {
                Error::Invalid("arithmetic task: preference row without `rejected`".into())
            })?;
            Ok(json!({
                "prompt": prompt(r),
                "chosen": format!(" {}", r.answer),
                "rejected": format!(" {rejected}"),
            }))
        })
        .collect()
}

/// Writes `rows` as JSONL through a temporary sibling and a rename.
pub fn write_jsonl(path: &Path, rows: &[Value]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    write_atomically(path, text.as_bytes())
}

pub use smelt::checkpoint::write_bytes_atomically as write_atomically;
