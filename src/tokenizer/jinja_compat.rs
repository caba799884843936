//! The pieces of transformers' jinja2 environment that minijinja lacks or does differently.
//!
//! transformers renders chat templates in a jinja2 sandbox with a few additions
//! (`raise_exception`, `strftime_now`, a `tojson` that is Python's `json.dumps` with
//! `ensure_ascii=False`) and Python's own value printing (`None`, `True`). Templates on the
//! hub depend on all of them, so a render only matches byte for byte when they are
//! reproduced here. Key decision: reproduce Python's output format exactly (separators,
//! float spelling, escapes) rather than minijinja's compact JSON, because the JSON a template
//! prints (tool schemas, arguments) ends up in the tokens the model is trained on.

use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, ValueKind};
use minijinja::{Error, ErrorKind, Output, State, Value};

/// A string-keyed map that keeps its keys in insertion order, as a Python `dict` does
/// (minijinja's own maps sort their keys unless its `preserve_order` feature is on).
#[derive(Debug)]
pub(crate) struct OrderedMap(pub(crate) Vec<(String, Value)>);

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(
            self.0
                .iter()
                .map(|(k, _)| Value::from(k.as_str()))
                .collect(),
        )
    }
}

/// `raise_exception(message)`: the template's way to reject a conversation; an error, never a panic.
pub(crate) fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Prints values the way jinja2 (Python's `str`) does: `None`, `True`, `False`; everything
/// else as minijinja prints it.
pub(crate) fn python_formatter(
    out: &mut Output,
    state: &mut State,
    value: &Value,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.write_str("None").map_err(Error::from),
        ValueKind::Bool => out
            .write_str(if value.is_true() { "True" } else { "False" })
            .map_err(Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// The `tojson` filter as transformers defines it:
/// `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
pub(crate) fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        Some(v) => Some(v),
        None => indent,
    };
    let indent: Option<String> = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) if v.kind() == ValueKind::String => {
            Some(v.as_str().unwrap_or_default().to_string())
        }
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an int or a string",
                ))
            }
        },
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let (item_sep, key_sep) = match kwargs.get::<Option<Value>>("separators")? {
        Some(seps) if !seps.is_none() => {
            let parts: Vec<Value> = seps.try_iter()?.collect();
            match (
                parts.first().and_then(|v| v.as_str()),
                parts.get(1).and_then(|v| v.as_str()),
            ) {
                (Some(a), Some(b)) if parts.len() == 2 => (a.to_string(), b.to_string()),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ))
                }
            }
        }
        // Python's defaults: ", " without indent, "," with it (the newline does the spacing).
        _ => (
            if indent.is_some() { "," } else { ", " }.to_string(),
            ": ".to_string(),
        ),
    };
    kwargs.assert_all_used()?;
    let opts = JsonOpts {
        indent,
        ensure_ascii,
        sort_keys,
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    dump(value, &opts, 0, &mut out)?;
    // jinja2 marks tojson output safe; chat templates have autoescape off, so plain is equivalent.
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<String>,
    ensure_ascii: bool,
    sort_keys: bool,
    item_sep: String,
    key_sep: String,
}

fn newline(opts: &JsonOpts, level: usize, out: &mut String) {
    if let Some(ind) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn dump(value: &Value, opts: &JsonOpts, level: usize, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&number(value)),
        ValueKind::String => string(value.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if opts.sort_keys {
                keys.sort_by_key(key_string);
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(opts, level + 1, out);
                string(&key_string(key), opts.ensure_ascii, out);
                out.push_str(&opts.key_sep);
                dump(&value.get_item(key)?, opts, level + 1, out)?;
            }
            newline(opts, level, out);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(opts, level + 1, out);
                dump(item, opts, level + 1, out)?;
            }
            newline(opts, level, out);
            out.push(']');
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a {kind} value is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// Python's `json.dumps` turns `None`, `True` and numbers used as keys into strings.
fn key_string(key: &Value) -> String {
    match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.into(),
        ValueKind::Number => number(key),
        _ => key.to_string(),
    }
}

/// A number spelled as Python's `repr`: integers plainly, floats with `.0` or Python's exponent form.
fn number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    let f = match f64::try_from(value.clone()) {
        Ok(f) => f,
        Err(_) => return value.to_string(),
    };
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust `{:e}` gives "1e-9", Python "1e-09"; Rust "1.5e20", Python "1.5e+20".
        let s = format!("{f:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mant}e{sign}{digits:0>2}");
    }
    format!("{f:?}")
}

fn string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `strftime_now(format)`: the current time formatted with Python's `strftime` directives.
///
/// transformers uses the local time of the machine; this uses UTC (no time-zone database is
/// available without another dependency). Supported: `%Y %y %m %d %e %B %b %A %a %H %I %p %M %S
/// %j %%`; an unknown directive is an error rather than a silent difference.
pub(crate) fn strftime_now(format: String) -> Result<Value, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&format, secs).map(Value::from)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats the UTC time `secs` seconds after the Unix epoch.
pub(crate) fn strftime(format: &str, secs: i64) -> Result<String, Error> {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (hour, minute, second) = (sod / 3600, (sod % 3600) / 60, sod % 60);
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3)
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match d {
            'Y' => write!(out, "{year}"),
            'y' => write!(out, "{:02}", year.rem_euclid(100)),
            'm' => write!(out, "{month:02}"),
            'd' => write!(out, "{day:02}"),
            'e' => write!(out, "{day:>2}"),
            'B' => write!(out, "{}", MONTHS[(month - 1) as usize]),
            'b' => write!(out, "{}", &MONTHS[(month - 1) as usize][..3]),
            'A' => write!(out, "{}", DAYS[weekday]),
            'a' => write!(out, "{}", &DAYS[weekday][..3]),
            'H' => write!(out, "{hour:02}"),
            'I' => write!(out, "{:02}", if hour % 12 == 0 { 12 } else { hour % 12 }),
            'p' => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            'M' => write!(out, "{minute:02}"),
            'S' => write!(out, "{second:02}"),
            'j' => write!(out, "{yday:03}"),
            '%' => write!(out, "%"),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported directive %{other}"),
                ))
            }
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str) -> String {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson);
        env.set_formatter(python_formatter);
        env.render_str(src, ()).unwrap()
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        // json.dumps({"a": [1, 2.5, None, True], "é": "x\"\n"}, ensure_ascii=False)
        assert_eq!(
            render(r#"{{ {"a": [1, 2.5, none, true], "é": "x\"\n"} | tojson }}"#),
            r#"{"a": [1, 2.5, null, true], "é": "x\"\n"}"#
        );
        // json.dumps([1, {"b": []}], indent=2)
        assert_eq!(
            render("{{ [1, {'b': []}] | tojson(indent=2) }}"),
            "[\n  1,\n  {\n    \"b\": []\n  }\n]"
        );
        // json.dumps(["é"], ensure_ascii=True) and separators=(",", ":")
        assert_eq!(
            render("{{ ['é'] | tojson(ensure_ascii=true) }}"),
            r#"["\u00e9"]"#
        );
        assert_eq!(
            render("{{ [1, 2] | tojson(separators=[',', ':']) }}"),
            "[1,2]"
        );
        // repr(1e-09), repr(1.0), repr(1.5e+20)
        assert_eq!(
            render("{{ [0.000000001, 1.0, 150000000000000000000.0] | tojson }}"),
            "[1e-09, 1.0, 1.5e+20]"
        );
    }

    #[test]
    fn python_values_print_like_python() {
        assert_eq!(
            render("{{ none }} {{ true }} {{ false }} {{ 1 }}"),
            "None True False 1"
        );
    }

    #[test]
    fn strftime_known_dates() {
        // datetime.utcfromtimestamp(0).strftime(...) == "Thursday 01 January 1970 00:00:00 001"
        assert_eq!(
            strftime("%A %d %B %Y %H:%M:%S %j", 0).unwrap(),
            "Thursday 01 January 1970 00:00:00 001"
        );
        // 1709251199 = 2024-02-29T23:59:59Z (a leap day): "Thu 29 Feb 24 11PM 060"
        assert_eq!(
            strftime("%a %d %b %y %I%p %j", 1_709_251_199).unwrap(),
            "Thu 29 Feb 24 11PM 060"
        );
        assert!(strftime("%Q", 0).is_err());
    }
}
