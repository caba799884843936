//! Text normalisation: what a document is stored as, and what it is compared as.
//!
//! Two different jobs live here. [`normalize`] produces the text that is kept and
//! trained on: Unicode NFC, `\n` line endings, no control characters, at most a few
//! blank lines in a row — it changes no words. [`simplify`] produces the *matching*
//! form used by near-duplicate and contamination checks, after datatrove's
//! `simplify_text`: lowercase, numbers → `0`, punctuation → space, diacritics removed,
//! whitespace collapsed. Key decision: comparisons never see the stored text, so two
//! copies that differ only in case, punctuation or accents still match, while the kept
//! text stays exactly what the source said.

use serde::{Deserialize, Serialize};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// What [`normalize`] does; every step can be turned off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NormalizeConfig {
    /// Unicode NFC composition (default true: the form the web and most tokenizers assume).
    pub nfc: bool,
    /// `\r\n` and lone `\r` become `\n` (default true).
    pub line_endings: bool,
    /// Remove control characters other than `\n` and `\t` (default true).
    pub strip_control: bool,
    /// At most this many blank lines in a row; longer runs are cut (default 2; `None` keeps all).
    pub max_blank_lines: Option<usize>,
    /// Strip leading and trailing whitespace of the document (default true).
    pub trim: bool,
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        NormalizeConfig {
            nfc: true,
            line_endings: true,
            strip_control: true,
            max_blank_lines: Some(2),
            trim: true,
        }
    }
}

/// The stored form of `text` under `config`.
pub fn normalize(text: &str, config: &NormalizeConfig) -> String {
    let mut s = if config.line_endings {
        text.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        text.to_string()
    };
    if config.strip_control {
        s.retain(|c| !c.is_control() || c == '\n' || c == '\t' || c == '\r');
    }
    if config.nfc {
        s = s.nfc().collect();
    }
    if let Some(max) = config.max_blank_lines {
        s = collapse_blank_lines(&s, max);
    }
    if config.trim {
        s = s.trim().to_string();
    }
    s
}

/// Cuts every run of blank (empty or whitespace-only) lines to at most `max` empty lines.
fn collapse_blank_lines(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    for (i, line) in text.split('\n').enumerate() {
        if line.trim().is_empty() {
            blank_run += 1;
            if blank_run > max {
                continue;
            }
        } else {
            blank_run = 0;
        }
        if i > 0 {
            out.push('\n');
        }
        out.push_str(if line.trim().is_empty() { "" } else { line });
    }
    out
}

/// The matching form of `text`, after datatrove's `simplify_text` with its default
/// `TextNormConfig`: lowercase; each number (digits with at most one `.`/`,` decimal part)
/// becomes `0`; every character that is neither alphanumeric nor whitespace becomes a
/// space; diacritics are removed (NFD, combining marks dropped); whitespace runs become
/// one space.
///
/// datatrove replaces a fixed punctuation list; this treats every non-alphanumeric,
/// non-space character (symbols included) as punctuation.
pub fn simplify(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut out = String::with_capacity(lower.len());
    let mut chars = lower.chars().peekable();
    let mut pending_space = false;
    let push = |out: &mut String, c: char, pending_space: &mut bool| {
        if *pending_space && !out.is_empty() {
            out.push(' ');
        }
        *pending_space = false;
        out.push(c);
    };
    while let Some(c) = chars.next() {
        if c.is_numeric() {
            // A number: digits, optionally one separator followed by more digits.
            while chars.peek().is_some_and(|d| d.is_numeric()) {
                chars.next();
            }
            let mut ahead = chars.clone();
            if ahead.next().is_some_and(|s| s == '.' || s == ',')
                && ahead.peek().is_some_and(|d| d.is_numeric())
            {
                chars.next();
                while chars.peek().is_some_and(|d| d.is_numeric()) {
                    chars.next();
                }
            }
            push(&mut out, '0', &mut pending_space);
        } else if c.is_alphanumeric() {
            for d in std::iter::once(c).nfd() {
                if !is_combining_mark(d) {
                    push(&mut out, d, &mut pending_space);
                }
            }
        } else if is_combining_mark(c) {
            // A diacritic already decomposed in the input: dropped.
        } else {
            pending_space = true;
        }
    }
    out
}

/// The words of the matching form of `text` (see [`simplify`]).
pub fn words(text: &str) -> Vec<String> {
    simplify(text)
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_line_endings_control_and_blank_runs() {
        let cfg = NormalizeConfig::default();
        let text = "  a\r\nb\rc\u{0007}d\n\n\n\n\n \ne\u{0301}\t! ";
        // NFC composes e + U+0301 into é; five blank lines (one with a space) become two.
        assert_eq!(normalize(text, &cfg), "a\nb\ncd\n\n\né\t!");
    }

    #[test]
    fn normalize_off_keeps_text() {
        let cfg = NormalizeConfig {
            nfc: false,
            line_endings: false,
            strip_control: false,
            max_blank_lines: None,
            trim: false,
        };
        let text = " a\r\n\n\n\n\u{0007}e\u{0301} ";
        assert_eq!(normalize(text, &cfg), text);
    }

    #[test]
    fn simplify_matches_datatrove_rules() {
        // lowercase, punctuation → space, numbers → 0 (decimal part included), accents dropped.
        assert_eq!(
            simplify("Hello, World!  It costs 3.50 dollars (in 2024); café—naïve"),
            "hello world it costs 0 dollars in 0 cafe naive"
        );
        assert_eq!(words("  --O'Brien's  "), vec!["o", "brien", "s"]);
    }
}
