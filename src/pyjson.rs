//! JSON text exactly as Python's `json.dumps(value)` writes it with its defaults, for the
//! fields the HumanLM recipe fills with `json.dumps` (`extra_info.raw_prompt`, `persona`, the
//! metrics): the recipe's readers only parse them, but a row should be the one the recipe itself
//! would have written, byte for byte.
//!
//! The defaults: `", "` between items and `": "` after keys, keys in the order they come
//! (`serde_json`'s `preserve_order`), `ensure_ascii` (everything outside printable ASCII as
//! `\uXXXX` in lowercase hex, characters beyond the BMP as surrogate pairs), and floats as
//! Python's `repr` writes them. `dumps_indented` is `indent=n`, as the recipe's judge prompt
//! shows the generations. Tested against Python's own output
//! (`tests/fixtures/export/py_json_dumps.json`, made by `make_py_json_dumps.py` there).

use serde_json::Value;

/// `json.dumps(value)`.
pub fn dumps(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, None, 0, &mut out);
    out
}

/// `json.dumps(value, indent=n)`: each item on its own line, indented `n` spaces per level,
/// `","` between items (no trailing space) and empty containers as `[]` / `{}`.
pub fn dumps_indented(value: &Value, indent: usize) -> String {
    let mut out = String::new();
    write_value(value, Some(indent), 0, &mut out);
    out
}

/// Before an item: the separator from the previous one and, when indenting, the new line.
fn item_start(i: usize, indent: Option<usize>, level: usize, out: &mut String) {
    match indent {
        None if i > 0 => out.push_str(", "),
        None => {}
        Some(n) => {
            if i > 0 {
                out.push(',');
            }
            out.push('\n');
            out.push_str(&" ".repeat(n * (level + 1)));
        }
    }
}

/// After the last item of a non-empty container, when indenting: the closing bracket's line.
fn container_end(indent: Option<usize>, level: usize, out: &mut String) {
    if let Some(n) = indent {
        out.push('\n');
        out.push_str(&" ".repeat(n * level));
    }
}

fn write_value(v: &Value, indent: Option<usize>, level: usize, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                out.push_str(&n.to_string());
            } else {
                out.push_str(&float_repr(n.as_f64().unwrap_or(f64::NAN)));
            }
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                item_start(i, indent, level, out);
                write_value(item, indent, level + 1, out);
            }
            if !items.is_empty() {
                container_end(indent, level, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                item_start(i, indent, level, out);
                write_str(k, out);
                out.push_str(": ");
                write_value(item, indent, level + 1, out);
            }
            if !map.is_empty() {
                container_end(indent, level, out);
            }
            out.push('}');
        }
    }
}

/// A string with `ensure_ascii`: the short escapes Python uses, every other character outside
/// space..`~` as `\uXXXX` (UTF-16 code units, so a pair beyond the BMP).
fn write_str(s: &str, out: &mut String) {
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
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest digits that read back to the same float (Rust's `{:e}`
/// gives those too), written positionally when the decimal exponent is in -4..16 and in
/// scientific notation (`1e-05`, `1.5e+16`) otherwise; a whole number keeps its `.0`.
fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let body = if (-4..16).contains(&exp) {
        if exp < 0 {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        } else {
            let point = exp as usize + 1;
            if digits.len() > point {
                format!("{}.{}", &digits[..point], &digits[point..])
            } else {
                format!("{digits}{}.0", "0".repeat(point - digits.len()))
            }
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{first}{frac}e{esign}{:02}", exp.abs())
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case of the fixture: the value (read with key order kept) dumped here is the text
    /// Python's `json.dumps` wrote for it.
    #[test]
    fn matches_pythons_json_dumps() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/export/py_json_dumps.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let fixture: Value = serde_json::from_str(&text).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() > 20);
        for case in cases {
            let expected = case["dumps"].as_str().unwrap();
            // The value travels as Python's own dump, read back here.
            let value: Value = serde_json::from_str(expected).unwrap();
            assert_eq!(dumps(&value), expected, "{}", case["what"]);
            let indented = case["dumps_indent2"].as_str().unwrap();
            assert_eq!(
                dumps_indented(&value, 2),
                indented,
                "{} (indent=2)",
                case["what"]
            );
        }
    }
}
