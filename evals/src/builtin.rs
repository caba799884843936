//! Built-in tasks of the embedded pipeline: held-out bits per byte of the bundled
//! corpus (`shakespeare_bpb`), the arithmetic task (`arithmetic`, generative exact
//! match), and preference accuracy on held-out pairs (`preference_heldout`).
//!
//! Key decision: the spec (`assets/evals/builtin.toml`) and its data are compiled into
//! the crate, so `smelt eval --tasks arithmetic` works from any directory with no
//! files on disk; the data paths in the spec resolve against the embedded copies.

use crate::error::{EvalError, Result};
use crate::spec::{parse_specs, Task};
use std::path::{Path, PathBuf};

const SPEC: &str = include_str!("../../assets/evals/builtin.toml");
const DATA: &[(&str, &str)] = &[
    (
        "../corpus/shakespeare-valid.jsonl",
        include_str!("../../assets/corpus/shakespeare-valid.jsonl"),
    ),
    (
        "arithmetic.jsonl",
        include_str!("../../assets/evals/arithmetic.jsonl"),
    ),
    (
        "preference-heldout.jsonl",
        include_str!("../../assets/evals/preference-heldout.jsonl"),
    ),
];

/// Where the built-in spec says it lives (for error messages and data resolution).
fn spec_path() -> PathBuf {
    PathBuf::from("<builtin>/assets/evals/builtin.toml")
}

/// All built-in tasks, with their data attached.
pub fn tasks() -> Result<Vec<Task>> {
    let mut tasks = parse_specs(SPEC, &spec_path())?;
    for t in &mut tasks {
        let data = DATA
            .iter()
            .find(|(p, _)| Path::new(p) == t.spec.data)
            .ok_or_else(|| {
                EvalError::Invalid(format!("built-in task `{}` has no embedded data", t.name))
            })?;
        t.inline_data = Some(data.1);
    }
    Ok(tasks)
}

/// Names of the built-in tasks.
pub fn names() -> Vec<String> {
    tasks()
        .map(|t| t.into_iter().map(|t| t.name).collect())
        .unwrap_or_default()
}

/// Resolves a `--tasks` list: each item is a built-in name, a spec file (`x.toml`,
/// all its tasks) or one task of a spec file (`x.toml:name`).
pub fn resolve_tasks(items: &[String]) -> Result<Vec<Task>> {
    let mut out: Vec<Task> = Vec::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let (file, name) = match item.split_once(".toml:") {
            Some((f, n)) => (Some(format!("{f}.toml")), Some(n)),
            None if item.ends_with(".toml") => (Some(item.to_string()), None),
            None => (None, Some(item)),
        };
        let pool = match &file {
            Some(f) => crate::spec::load_specs(Path::new(f))?,
            None => tasks()?,
        };
        let picked: Vec<Task> = match name {
            Some(n) => vec![pool.into_iter().find(|t| t.name == n).ok_or_else(|| {
                EvalError::Invalid(format!(
                    "unknown task `{n}` in {} (built-ins: {})",
                    file.as_deref().unwrap_or("the built-in tasks"),
                    names().join(", ")
                ))
            })?],
            None => pool,
        };
        for t in picked {
            if out.iter().any(|o| o.name == t.name) {
                return Err(EvalError::Invalid(format!(
                    "task `{}` listed twice",
                    t.name
                )));
            }
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err(EvalError::Invalid("no tasks given".into()));
    }
    Ok(out)
}
