//! Eval hooks for the training loop: a task list turned into the
//! [`smelt::train::Evaluator`] that `Trainer::set_evaluator` runs every
//! `train.eval_every` steps, its metrics logged as `eval_<task>/<metric>` in
//! `metrics.jsonl` (e.g. `eval_arithmetic/exact_match`).
//!
//! Key decision: tasks are resolved and their data read **when the hook is built**,
//! before the first training step, so a misspelt task name or a broken data file fails
//! the run at start-up rather than after an hour of training. Each call then runs the
//! same first `limit` docs (file order), so the curve in `metrics.jsonl` compares one
//! fixed subset across steps.

use crate::builtin::resolve_tasks;
use crate::data::load_docs;
use crate::error::{EvalError, Result};
use crate::runner::{run_task, EvalOptions};
use crate::spec::Task;
use smelt::tokenizer::Tokenizer;
use smelt::train::Evaluator;
use smelt::Model;
use std::collections::BTreeMap;

/// The metrics of `tasks` on `model`, keyed `<task>/<metric>` (`arithmetic/exact_match`,
/// `shakespeare_bpb/bits_per_byte`, ...), each over the first `opts.limit` docs.
pub fn evaluate(
    model: &Model,
    tokenizer: &Tokenizer,
    tasks: &[Task],
    opts: &EvalOptions,
) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for task in tasks {
        let output = run_task(model, tokenizer, task, opts, &mut |_, _, _| {})?;
        for m in output.metrics {
            out.insert(format!("{}/{}", output.task, m.name), m.value);
        }
    }
    Ok(out)
}

/// An evaluator for the training loop running `tasks` (built-in names, `x.toml` or
/// `x.toml:name`, as `smelt eval --tasks`) on the first `limit` docs of each (all when
/// `None`). Unknown tasks, a `limit` of 0 and unreadable data are errors here, at build time.
pub fn evaluator(
    tasks: &[String],
    tokenizer: &Tokenizer,
    limit: Option<usize>,
) -> Result<Evaluator> {
    if limit == Some(0) {
        return Err(EvalError::Invalid(
            "eval hook: `limit` must be at least 1 (leave it out to run every doc)".into(),
        ));
    }
    let tasks = resolve_tasks(tasks)?;
    for task in &tasks {
        load_docs(task)?;
    }
    let tokenizer = tokenizer.clone();
    let opts = EvalOptions {
        limit,
        ..EvalOptions::default()
    };
    Ok(Box::new(move |model: &Model, step: u64| {
        evaluate(model, &tokenizer, &tasks, &opts).map_err(|e| into_core(e, step))
    }))
}

/// An eval error as the loop's error type, naming the step it happened at.
fn into_core(e: EvalError, step: u64) -> smelt::Error {
    match e {
        EvalError::Core(e) => e,
        other => smelt::Error::Invalid(format!("eval hook at step {step}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task name that does not exist fails when the hook is built, naming it.
    #[test]
    fn unknown_task_fails_at_build_time() {
        let tok = tiny_tokenizer();
        let e = match evaluator(&["no_such_task".into()], &tok, Some(2)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("an unknown task must be an error"),
        };
        assert!(e.contains("no_such_task"), "{e}");
        let e = match evaluator(&["arithmetic".into()], &tok, Some(0)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("limit 0 must be an error"),
        };
        assert!(e.contains("limit"), "{e}");
    }

    /// A byte-level tokenizer with no merges (enough to build a hook).
    fn tiny_tokenizer() -> Tokenizer {
        let dir = tempfile::tempdir().unwrap();
        let vocab: serde_json::Map<String, serde_json::Value> = (0..256u32)
            .map(|b| (byte_char(b as u8).to_string(), b.into()))
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": []}
        });
        std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
        Tokenizer::from_dir(dir.path()).unwrap()
    }

    /// GPT-2's byte-to-unicode map.
    fn byte_char(b: u8) -> char {
        let printable =
            |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        if printable(b) {
            return char::from(b);
        }
        let n = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).unwrap()
    }
}
