//! Recipes: TOML files read into serde structs, with `--set dotted.key=value` overrides.
//!
//! Raw text → TOML table → overrides applied → typed struct (whose `deny_unknown_fields`
//! rejects typos). Errors name the file and the key, and an unknown key comes with the
//! nearest valid one ("did you mean `max_steps`?").

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Reads the recipe at `path`, applies `overrides` (`a.b.c=value`, value parsed as a
/// TOML value, else taken as a string), and deserializes it into `T`.
pub fn load_recipe<T: DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_recipe(&text, path, overrides)
}

/// Like [`load_recipe`] on recipe text; `origin` names it in errors.
pub fn parse_recipe<T: DeserializeOwned>(
    text: &str,
    origin: &Path,
    overrides: &[String],
) -> Result<T> {
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| Error::config(origin, format!("not valid TOML: {e}")))?;
    for o in overrides {
        apply_override(&mut table, o)
            .map_err(|m| Error::config(origin, format!("--set {o}: {m}")))?;
    }
    T::deserialize(toml::Value::Table(table))
        .map_err(|e| Error::config(origin, explain(&e.to_string())))
}

/// Sets `key.path=value` in `table`, creating intermediate tables.
fn apply_override(table: &mut toml::Table, spec: &str) -> std::result::Result<(), String> {
    let (key, raw) = spec.split_once('=').ok_or("expected key=value")?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("bad key `{key}`"));
    }
    let value = parse_value(raw.trim());
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// A TOML value when `raw` parses as one (`3`, `1e-4`, `true`, `[1, 2]`, `"x"`), else a string.
fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Adds "did you mean" to serde's unknown-field / unknown-variant messages.
fn explain(message: &str) -> String {
    let message = message.trim().to_string();
    let Some(unknown) = between(&message, "unknown field `", "`")
        .or_else(|| between(&message, "unknown variant `", "`"))
    else {
        return message;
    };
    let Some(rest) = message
        .split("expected one of ")
        .nth(1)
        .or_else(|| message.split("expected ").nth(1))
    else {
        return message;
    };
    let candidates: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    match candidates.iter().min_by_key(|c| edit_distance(unknown, c)) {
        Some(best) if edit_distance(unknown, best) <= unknown.len().max(3) / 2 + 1 => {
            format!("{message} (did you mean `{best}`?)")
        }
        _ => message,
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)? + i;
    Some(&s[i..j])
}

/// Levenshtein distance.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + (ca != *cb) as usize)
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        max_steps: u64,
        learning_rate: f64,
        name: String,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Outer {
        train: Inner,
    }

    #[test]
    fn overrides_apply_with_types() {
        let r: Outer = parse_recipe(
            "[train]\nmax_steps = 3\n",
            Path::new("r.toml"),
            &[
                "train.learning_rate=1e-4".into(),
                "train.name=tiny run".into(),
                "train.max_steps=7".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            r.train,
            Inner {
                max_steps: 7,
                learning_rate: 1e-4,
                name: "tiny run".into()
            }
        );
    }

    #[test]
    fn unknown_key_is_named_with_a_suggestion() {
        let e = parse_recipe::<Outer>("[train]\nmax_stepz = 3\n", Path::new("r.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("r.toml")
                && e.contains("max_stepz")
                && e.contains("did you mean `max_steps`"),
            "{e}"
        );
        let e = parse_recipe::<Outer>("", Path::new("r.toml"), &["train.lr=3".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`lr`"), "{e}");
    }

    #[test]
    fn malformed_toml_and_override_are_errors() {
        assert!(parse_recipe::<Outer>("[train\n", Path::new("r.toml"), &[])
            .unwrap_err()
            .to_string()
            .contains("r.toml"));
        assert!(parse_recipe::<Outer>("", Path::new("r.toml"), &["novalue".into()]).is_err());
        let e = parse_recipe::<Outer>("[train]\nmax_steps = \"many\"\n", Path::new("r.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_steps") || e.contains("invalid type"), "{e}");
    }
}
