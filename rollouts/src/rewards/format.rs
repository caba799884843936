//! Format reward: a fixed reward when the completion matches a regex (e.g. the
//! `<think>...</think><answer>...</answer>` layout of R1-style recipes), 0 otherwise.
//!
//! The pattern is compiled once at construction, so a bad pattern is an error there,
//! not a `None` on every sample. `regex` runs in linear time, so no input can hang it.

use crate::reward::Reward;
use regex::Regex;
use serde_json::Value;
use smelt::{Error, Result};

/// `reward` when `pattern` matches anywhere in the completion (anchor it for a full
/// match), else 0.0.
#[derive(Debug, Clone)]
pub struct FormatRegex {
    name: String,
    pattern: Regex,
    reward: f32,
}

impl FormatRegex {
    /// Named `format`; the error names the bad pattern.
    pub fn new(pattern: &str, reward: f32) -> Result<Self> {
        let pattern = Regex::new(pattern)
            .map_err(|e| Error::Invalid(format!("format reward: bad pattern `{pattern}`: {e}")))?;
        Ok(FormatRegex {
            name: "format".into(),
            pattern,
            reward,
        })
    }

    /// The same reward under another name (to use several format rewards together).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

impl Reward for FormatRegex {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&self, _prompt: &str, completion: &str, _sample: &Value) -> Option<f32> {
        Some(if self.pattern.is_match(completion) {
            self.reward
        } else {
            0.0
        })
    }
}
