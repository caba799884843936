//! Task specs: what the user writes in TOML, parsed and validated into a [`Task`].
//!
//! A spec file holds one or more `[[task]]` tables; each names its kind
//! (`multiple_choice`, `generate`, `code`, `perplexity`), its data file (relative to
//! the spec), the data format (`jsonl` with a column mapping, `bigbench` task JSON,
//! `humaneval` JSONL, `preference` pairs) and the prompt recipe (lm-eval's
//! `description`, `doc_to_text`-style template, delimiters, `num_fewshot` with a
//! fixed-seed sampler, optional chat template).
//!
//! Key decision (ripgrep's lowargs/hiargs split): serde reads the raw spec with
//! `deny_unknown_fields`, then [`TaskSpec::resolve`] validates it into a [`Task`]
//! (regexes compiled, paths resolved, kind-specific options checked). Every error
//! names the task, the spec file and the line of the offending `[[task]]`.

use crate::error::{EvalError, Result};
use regex::Regex;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// What a task measures and how it is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Loglikelihood of each choice after the context: `acc`, `acc_norm`, `acc_norm_tokens`.
    MultipleChoice,
    /// Generate, extract the answer with a regex chain, compare: `exact_match`, `maj@k`, `avg@k`.
    Generate,
    /// Generate a program, run it against the task's tests in the sandbox: `pass@k`.
    Code,
    /// Rolling loglikelihood of whole documents: `bits_per_byte`, `word_perplexity`, `byte_perplexity`.
    Perplexity,
}

/// How the data file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// One JSON object per line; fields named by [`Columns`].
    #[default]
    Jsonl,
    /// A BIG-bench `task.json`: `examples` with `input` and `target_scores` (or `target`).
    Bigbench,
    /// HumanEval JSONL: `task_id`, `prompt`, `test`, `entry_point`.
    Humaneval,
    /// Preference pairs JSONL: `prompt`, `chosen`, `rejected` (scored as a 2-way choice).
    Preference,
}

/// Which JSONL fields hold what (lm-eval's `doc_to_text` / `doc_to_choice` / `doc_to_target`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Columns {
    /// The question / prompt text, substituted for `{input}` in the template (default `input`).
    pub input: String,
    /// List of choice strings for `multiple_choice` (default `choices`).
    pub choices: String,
    /// Gold choice: an index into the choices or the choice string itself (default `gold`).
    pub gold: String,
    /// Reference answer(s) for `generate`: a string, number, or list of them (default `answer`).
    pub answer: String,
    /// Document text for `perplexity` (default `text`).
    pub text: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            input: "input".into(),
            choices: "choices".into(),
            gold: "gold".into(),
            answer: "answer".into(),
            text: "text".into(),
        }
    }
}

/// A task as written in TOML (one `[[task]]` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Unique task name (the key in the results JSON).
    pub name: toml::Spanned<String>,
    /// What the task measures.
    pub kind: TaskKind,
    /// Data file, relative to the spec file.
    pub data: PathBuf,
    /// Layout of the data file (default `jsonl`).
    #[serde(default)]
    pub format: DataFormat,
    /// Column mapping for `jsonl` data.
    #[serde(default)]
    pub columns: Columns,
    /// Prompt template; `{input}` is replaced by the question (default `"{input}"`).
    #[serde(default = "default_prompt")]
    pub prompt: String,
    /// Text put once before the few-shot examples (lm-eval `description`; default empty).
    #[serde(default)]
    pub description: String,
    /// Between the prompt and its answer/choice (lm-eval `target_delimiter`; default `" "`).
    #[serde(default = "default_target_delimiter")]
    pub target_delimiter: String,
    /// Between few-shot examples (lm-eval `fewshot_delimiter`; default `"\n\n"`).
    #[serde(default = "default_fewshot_delimiter")]
    pub fewshot_delimiter: String,
    /// Number of solved examples before each prompt (default 0).
    #[serde(default)]
    pub num_fewshot: usize,
    /// Seed of the few-shot sampler (lm-eval's default 1234).
    #[serde(default = "default_fewshot_seed")]
    pub fewshot_seed: u64,
    /// Render the prompt as a user turn with the model's chat template (default false).
    #[serde(default)]
    pub chat_template: bool,
    /// `generate`/`code`: maximum new tokens (default 128).
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// `generate`/`code`: stop strings; the completion is cut before the first one.
    #[serde(default)]
    pub stop: Vec<String>,
    /// `generate`: regex extraction chain; the first regex that matches wins (group 1 if any).
    #[serde(default)]
    pub extract: Vec<String>,
    /// `generate`/`code`: samples per prompt, the k of maj@k / avg@k and the n of pass@k (default 1).
    #[serde(default = "one")]
    pub samples: usize,
    /// `generate`/`code`: sampling temperature; 0 = greedy (needs `samples = 1`).
    #[serde(default)]
    pub temperature: f64,
    /// `generate`/`code`: nucleus mass (default 1 = off).
    #[serde(default = "one_f")]
    pub top_p: f64,
    /// `generate`/`code`: base RNG seed; sample j of doc i uses `seed + i * samples + j`.
    #[serde(default)]
    pub seed: u64,
    /// `code`: the k values of pass@k reported (default `[1]`, each ≤ `samples`).
    #[serde(default = "default_pass_k")]
    pub pass_k: Vec<usize>,
    /// `code`: wall-clock seconds per program (default 10, HumanEval's harness uses 3–10).
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// `perplexity`: window length in tokens (default: the model's context, capped at 2048).
    #[serde(default)]
    pub max_length: Option<usize>,
}

fn default_prompt() -> String {
    "{input}".into()
}
fn default_target_delimiter() -> String {
    " ".into()
}
fn default_fewshot_delimiter() -> String {
    "\n\n".into()
}
fn default_fewshot_seed() -> u64 {
    1234
}
fn default_max_new_tokens() -> usize {
    128
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn default_pass_k() -> Vec<usize> {
    vec![1]
}
fn default_timeout() -> f64 {
    10.0
}

/// A validated task, ready to load data and run.
#[derive(Debug, Clone)]
pub struct Task {
    /// The raw spec it came from (all options).
    pub spec: TaskSpec,
    /// Task name.
    pub name: String,
    /// Resolved data path.
    pub data_path: PathBuf,
    /// Compiled extraction chain.
    pub extract: Vec<Regex>,
    /// The spec file and the 1-based line of its `[[task]]` (for error messages).
    pub origin: (PathBuf, usize),
    /// Data compiled into the binary (built-in tasks); read instead of `data_path`.
    pub inline_data: Option<&'static str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    task: Vec<TaskSpec>,
}

/// 1-based line of byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parses a spec file's text (`file` is used for error messages and to resolve data paths).
pub fn parse_specs(text: &str, file: &Path) -> Result<Vec<Task>> {
    let parsed: SpecFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        EvalError::Spec {
            task: task_name_before(text, line),
            file: file.to_path_buf(),
            line,
            message: e.message().to_string(),
        }
    })?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut seen = std::collections::HashSet::new();
    let mut tasks = Vec::new();
    for spec in parsed.task {
        let line = line_of(text, spec.name.span().start);
        let task = spec.resolve(base, file, line)?;
        if !seen.insert(task.name.clone()) {
            return Err(spec_err(&task.name, file, line, "duplicate task name"));
        }
        tasks.push(task);
    }
    Ok(tasks)
}

/// Reads and parses a spec file.
pub fn load_specs(file: &Path) -> Result<Vec<Task>> {
    let text = std::fs::read_to_string(file).map_err(|e| EvalError::io(file, e))?;
    parse_specs(&text, file)
}

/// The `name = "..."` of the last `[[task]]` started at or before `line` (best effort).
fn task_name_before(text: &str, line: usize) -> String {
    let re = Regex::new(r#"^\s*name\s*=\s*"([^"]*)""#).expect("static regex");
    text.lines()
        .take(line)
        .filter_map(|l| re.captures(l).map(|c| c[1].to_string()))
        .last()
        .unwrap_or_else(|| "?".into())
}

fn spec_err(task: &str, file: &Path, line: usize, message: impl Into<String>) -> EvalError {
    EvalError::Spec {
        task: task.into(),
        file: file.to_path_buf(),
        line,
        message: message.into(),
    }
}

impl TaskSpec {
    /// Validates the spec into a [`Task`]; `base` resolves the data path, `file`/`line` name the spec.
    pub fn resolve(self, base: &Path, file: &Path, line: usize) -> Result<Task> {
        let name = self.name.get_ref().clone();
        let err = |m: String| spec_err(&name, file, line, m);
        if name.is_empty() {
            return Err(err("`name` is empty".into()));
        }
        let generative = matches!(self.kind, TaskKind::Generate | TaskKind::Code);
        if self.samples == 0 {
            return Err(err("`samples` must be >= 1".into()));
        }
        if generative && self.samples > 1 && self.temperature <= 0.0 {
            return Err(err(format!(
                "`samples` = {} needs `temperature` > 0 (greedy samples are identical)",
                self.samples
            )));
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(err(format!(
                "`temperature` must be >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(err(format!(
                "`top_p` must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if self.kind == TaskKind::Code {
            if let Some(&k) = self.pass_k.iter().find(|&&k| k == 0 || k > self.samples) {
                return Err(err(format!(
                    "`pass_k` value {k} must be in 1..={} (`samples`)",
                    self.samples
                )));
            }
            if !(self.timeout_s > 0.0) {
                return Err(err("`timeout_s` must be > 0".into()));
            }
        }
        if !generative && (!self.extract.is_empty() || !self.stop.is_empty()) {
            return Err(err(
                "`extract`/`stop` only apply to `generate` and `code` tasks".into(),
            ));
        }
        if !self.prompt.contains("{input}") {
            return Err(err("`prompt` must contain `{input}`".into()));
        }
        let extract = self
            .extract
            .iter()
            .map(|r| Regex::new(r).map_err(|e| err(format!("`extract` regex {r:?}: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        let data_path = if self.data.is_absolute() {
            self.data.clone()
        } else {
            base.join(&self.data)
        };
        Ok(Task {
            name,
            data_path,
            extract,
            origin: (file.to_path_buf(), line),
            inline_data: None,
            spec: self,
        })
    }
}
