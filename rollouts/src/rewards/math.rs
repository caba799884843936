//! Math answer exact match: extract the final answer of a completion, compare it
//! numerically with the dataset row's `answer`.
//!
//! Extraction, in order of precedence (the first that is present wins): the content of
//! the *last* `\boxed{...}` (braces balanced), the text after the last `####` (GSM8K),
//! else the last number in the completion. Numbers may be negative, have decimals or
//! thousands separators (`1,234`); `a/b` and `\frac{a}{b}` are read as fractions.
//! Values match when `|x - y| <= 1e-6 · max(1, |y|)`.

use crate::reward::Reward;
use regex::Regex;
use serde_json::Value;
use std::sync::LazyLock;

static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+").expect("valid regex"));
static FRAC: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(-?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$").expect("valid regex")
});

/// 1.0 when the completion's final answer equals the row's answer, else 0.0; `None`
/// when the row has no answer (or an answer that is not a number). The row's answer is
/// read with [`parse_number`], or extracted first when it holds `\boxed{}` or `####`
/// (a full GSM8K / MATH solution).
#[derive(Debug, Clone)]
pub struct MathAnswer {
    /// Name it is logged under. Default `math_answer`.
    pub name: String,
    /// Key of the row's reference answer (string or number). Default `answer`.
    pub answer_key: String,
}

impl Default for MathAnswer {
    fn default() -> Self {
        MathAnswer {
            name: "math_answer".into(),
            answer_key: "answer".into(),
        }
    }
}

impl Reward for MathAnswer {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&self, _prompt: &str, completion: &str, sample: &Value) -> Option<f32> {
        let reference = match sample.get(&self.answer_key)? {
            Value::Number(n) => n.as_f64()?,
            Value::String(s) if s.contains("\\boxed{") || s.contains("####") => {
                parse_number(&extract_answer(s)?)?
            }
            Value::String(s) => parse_number(s)?,
            _ => return None,
        };
        let got = extract_answer(completion).and_then(|a| parse_number(&a));
        Some(match got {
            Some(x) if (x - reference).abs() <= 1e-6 * reference.abs().max(1.0) => 1.0,
            _ => 0.0,
        })
    }
}

/// The final-answer text of `text`: last `\boxed{}` content, else after the last
/// `####`, else the last number; `None` when there is none.
pub fn extract_answer(text: &str) -> Option<String> {
    if let Some(boxed) = last_boxed(text) {
        return Some(boxed);
    }
    if let Some(at) = text.rfind("####") {
        let rest = &text[at + 4..];
        if let Some(m) = NUMBER.find(rest) {
            return Some(m.as_str().to_string());
        }
    }
    NUMBER
        .find_iter(text)
        .last()
        .map(|m| m.as_str().to_string())
}

/// Content of the last `\boxed{...}`, with nested braces balanced.
fn last_boxed(text: &str) -> Option<String> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1usize;
    for (i, ch) in text[start..].char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(text[start..start + i].trim().to_string());
                }
            }
            _ => {}
        }
    }
    None // unbalanced: not a usable box
}

/// A number from an answer string: plain (`-1,234.5`), `a/b`, `\frac{a}{b}`, else the
/// last number inside it. `$`, spaces and a trailing `.` are ignored.
pub fn parse_number(answer: &str) -> Option<f64> {
    let s: String = answer
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '$')
        .collect();
    let s = s.trim_end_matches('.');
    let plain = |t: &str| {
        t.replace(',', "")
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
    };
    if let Some(v) = plain(s) {
        return Some(v);
    }
    if let Some(c) = FRAC.captures(s) {
        let (n, d) = (plain(&c[2])?, plain(&c[3])?);
        let sign = if &c[1] == "-" { -1.0 } else { 1.0 };
        return (d != 0.0).then(|| sign * n / d);
    }
    if let Some((n, d)) = s.split_once('/') {
        if let (Some(n), Some(d)) = (plain(n), plain(d)) {
            return (d != 0.0).then(|| n / d);
        }
    }
    NUMBER.find_iter(s).last().and_then(|m| plain(m.as_str()))
}
