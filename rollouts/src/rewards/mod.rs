//! Built-in rewards: math answer exact match ([`MathAnswer`]), format by regex
//! ([`FormatRegex`]), and length shaping ([`LengthPenalty`]).
//!
//! Each is a small [`crate::Reward`] with its parsing in a free function that is
//! unit-tested alone (`extract_answer`, `parse_number`).

mod format;
mod length;
mod math;

pub use format::FormatRegex;
pub use length::{LengthPenalty, LengthShape, LengthUnit, COMPLETION_TOKENS_KEY};
pub use math::{extract_answer, parse_number, MathAnswer};
