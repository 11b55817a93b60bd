//! Python `str.format` templates, as the HumanLM recipe's system prompt files are written.
//!
//! The recipe fills its prompts with `str.format`, so its files escape braces as `{{`/`}}` and
//! name fields as `{persona}`. A set imported from the recipe keeps those files byte for byte and
//! fills them here the same way. Only plain `{name}` fields are understood: an indexed, attribute,
//! conversion or format-spec field (`{0}`, `{a.b}`, `{x!r}`, `{x:>3}`), an unknown name or an
//! unmatched brace is refused at load, with the file and line, instead of rendering differently
//! from Python.

use super::{Error, Result};
use std::path::Path;

/// One parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct PyFormat {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Field(String),
}

impl PyFormat {
    /// Parse `text` (read from `path`), accepting only the field names in `known`.
    pub fn parse(text: &str, path: &Path, known: &[&str]) -> Result<PyFormat> {
        let fail = |at: usize, msg: String| Error::File {
            path: path.to_path_buf(),
            line: Some(text[..at].matches('\n').count() + 1),
            msg,
        };
        let mut pieces = vec![];
        let mut lit = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|x| x.1) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|x| x.1) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => {
                    return Err(fail(
                        i,
                        "a single '}' (Python's str.format needs '}}' for a literal brace)".into(),
                    ))
                }
                '{' => {
                    let rest = &text[i + 1..];
                    let Some(end) = rest.find('}') else {
                        return Err(fail(i, "a '{' that is never closed".into()));
                    };
                    let name = &rest[..end];
                    let plain = !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && !name.starts_with(|c: char| c.is_ascii_digit());
                    if !plain {
                        return Err(fail(
                            i,
                            format!(
                                "placeholder {{{name}}} is not a plain field name (only {} are \
                                 filled here)",
                                list(known)
                            ),
                        ));
                    }
                    if !known.contains(&name) {
                        return Err(fail(
                            i,
                            format!("unknown placeholder {{{name}}} (known: {})", list(known)),
                        ));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Field(name.to_string()));
                    // Skip the field's characters and its closing brace.
                    while chars.peek().is_some_and(|(j, _)| *j <= i + 1 + end) {
                        chars.next();
                    }
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        Ok(PyFormat { pieces })
    }

    /// The field names the template uses, in order of first use.
    pub fn fields(&self) -> Vec<&str> {
        let mut out: Vec<&str> = vec![];
        for p in &self.pieces {
            if let Piece::Field(n) = p {
                if !out.contains(&n.as_str()) {
                    out.push(n);
                }
            }
        }
        out
    }

    /// Fill the fields; `value` gives each field's text (parse checked every name is known).
    pub fn render(&self, value: impl Fn(&str) -> String) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(n) => out.push_str(&value(n)),
            }
        }
        out
    }
}

fn list(known: &[&str]) -> String {
    known
        .iter()
        .map(|k| format!("{{{k}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(text: &str) -> Result<String> {
        let t = PyFormat::parse(text, Path::new("t.txt"), &["persona", "name"])?;
        Ok(t.render(|n| format!("<{n}>")))
    }

    #[test]
    fn fields_and_escaped_braces_render_as_python_does() {
        // Python: "a {{x}} {persona}\n{name}}}".format(persona="<persona>", name="<name>")
        assert_eq!(
            fill("a {{x}} {persona}\n{name}}}").unwrap(),
            "a {x} <persona>\n<name>}"
        );
        assert_eq!(
            fill("é {persona}{persona}").unwrap(),
            "é <persona><persona>"
        );
    }

    #[test]
    fn what_python_would_fill_differently_is_refused_with_its_line() {
        for (text, line, says) in [
            ("ok\n{platform}", 2, "unknown placeholder {platform}"),
            ("{persona!r}", 1, "not a plain field name"),
            ("x\n\n{0}", 3, "not a plain field name"),
            ("{}", 1, "not a plain field name"),
            ("a } b", 1, "single '}'"),
            ("a {persona", 1, "never closed"),
        ] {
            let e = fill(text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("t.txt:{line}: ")), "{text:?}: {e}");
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
