//! Length shaping: a penalty in [-1, 0] for long completions.
//!
//! Two shapes: DAPO's soft overlong punishment (Yu et al. 2025, eq. 13) — 0 up to
//! `max_len - cache_len`, then a linear ramp to -1 at `max_len`, -1 beyond — and a
//! plain linear one, `-len / max_len` clipped at -1. The reward trait sees text, so
//! length is counted in characters, whitespace-separated words, or tokens read from
//! the row's [`COMPLETION_TOKENS_KEY`] field (which the rollout producer fills; `None`
//! when absent).

use crate::reward::Reward;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Row field holding the completion's token count, for [`LengthUnit::Tokens`].
pub const COMPLETION_TOKENS_KEY: &str = "completion_tokens";

/// What length is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthUnit {
    /// Unicode characters of the completion text.
    Chars,
    /// Whitespace-separated words.
    Words,
    /// `sample[COMPLETION_TOKENS_KEY]`.
    Tokens,
}

/// How the penalty grows with length.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum LengthShape {
    /// DAPO soft overlong punishment: 0 for `len <= max_len - cache_len`, then
    /// `((max_len - cache_len) - len) / cache_len`, and -1 for `len > max_len`.
    Soft {
        /// Hard limit (DAPO: 20480 tokens).
        max_len: usize,
        /// Width of the ramp before it (DAPO: 4096 tokens).
        cache_len: usize,
    },
    /// `-min(len, max_len) / max_len`.
    Linear {
        /// Length at which the penalty reaches -1.
        max_len: usize,
    },
}

/// A length penalty in [-1, 0].
#[derive(Debug, Clone, PartialEq)]
pub struct LengthPenalty {
    /// Name it is logged under. Default `length`.
    pub name: String,
    /// The shape.
    pub shape: LengthShape,
    /// The unit of `len`.
    pub unit: LengthUnit,
}

impl LengthPenalty {
    /// A penalty named `length`.
    pub fn new(shape: LengthShape, unit: LengthUnit) -> Self {
        LengthPenalty {
            name: "length".into(),
            shape,
            unit,
        }
    }

    /// The penalty for a completion of `len` units.
    pub fn penalty(&self, len: usize) -> f32 {
        match self.shape {
            LengthShape::Soft { max_len, cache_len } => {
                let free = max_len.saturating_sub(cache_len);
                if len <= free {
                    0.0
                } else if len > max_len || cache_len == 0 {
                    -1.0
                } else {
                    (free as f32 - len as f32) / cache_len as f32
                }
            }
            LengthShape::Linear { max_len } => -(len.min(max_len) as f32) / max_len.max(1) as f32,
        }
    }
}

impl Reward for LengthPenalty {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&self, _prompt: &str, completion: &str, sample: &Value) -> Option<f32> {
        let len = match self.unit {
            LengthUnit::Chars => completion.chars().count(),
            LengthUnit::Words => completion.split_whitespace().count(),
            LengthUnit::Tokens => sample.get(COMPLETION_TOKENS_KEY)?.as_u64()? as usize,
        };
        Some(self.penalty(len))
    }
}
