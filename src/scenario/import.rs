//! HUMANUAL rows → scenario files.
//!
//! A HUMANUAL row (the benchmark's Hugging Face datasets, JSONL or Parquet) holds `prompt` (the
//! thread: a list of `{role, content, metadata}`, turn 0 the post), `completion` (the person's
//! real reply), `post_id`, `user_id`, `timestamp`, `metadata`, `persona` and `turn_id`. Dumps
//! differ in whether `prompt`, `metadata` and `persona` are nested values or JSON strings, so
//! both are accepted.

use super::{
    Demographics, Domain, Error, Persona, Result, Role, Scenario, Source, Target, Timestamp, Turn,
};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One row as read from the file, with where it came from (for error messages).
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based line (JSONL) or row number (Parquet, JSON array).
    pub number: usize,
    pub value: Value,
}

/// Read every row of a `.jsonl`, `.json` (an array) or `.parquet` file.
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "parquet" => read_parquet(path),
        "jsonl" | "ndjson" => {
            let text = read_text(path)?;
            let mut rows = vec![];
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value = serde_json::from_str(line).map_err(|e| Error::File {
                    path: path.to_path_buf(),
                    pos: Some((i + 1, e.column())),
                    msg: format!("not a JSON object: {e}"),
                })?;
                rows.push(Row {
                    number: i + 1,
                    value,
                });
            }
            Ok(rows)
        }
        "json" => {
            let text = read_text(path)?;
            let v: Value = serde_json::from_str(&text).map_err(|e| Error::File {
                path: path.to_path_buf(),
                pos: Some((e.line(), e.column())),
                msg: format!("invalid JSON: {e}"),
            })?;
            match v {
                Value::Array(items) => Ok(items
                    .into_iter()
                    .enumerate()
                    .map(|(i, value)| Row {
                        number: i + 1,
                        value,
                    })
                    .collect()),
                _ => Err(Error::at(path, "expected a JSON array of rows")),
            }
        }
        _ => Err(Error::at(
            path,
            "unknown format (expected .jsonl, .json or .parquet)",
        )),
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::at(path, format!("cannot read: {e}")))
}

fn read_parquet(path: &Path) -> Result<Vec<Row>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file =
        std::fs::File::open(path).map_err(|e| Error::at(path, format!("cannot read: {e}")))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| Error::at(path, format!("not a readable Parquet file: {e}")))?;
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| Error::at(path, format!("cannot read rows: {e}")))?;
    let mut rows = vec![];
    for (i, r) in iter.enumerate() {
        let r = r.map_err(|e| Error::at(path, format!("row {}: {e}", i + 1)))?;
        rows.push(Row {
            number: i + 1,
            value: r.to_json_value(),
        });
    }
    Ok(rows)
}

/// A value that may arrive as a JSON string holding JSON.
fn unstring(v: &Value) -> Value {
    match v {
        Value::String(s) => {
            let t = s.trim();
            if t.starts_with('{') || t.starts_with('[') {
                serde_json::from_str(t).unwrap_or_else(|_| v.clone())
            } else {
                v.clone()
            }
        }
        _ => v.clone(),
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => None,
        // A completion given as a message (or a list of them).
        Value::Object(o) => o.get("content").and_then(text_of),
        Value::Array(a) => a.first().and_then(text_of),
        Value::Bool(b) => Some(b.to_string()),
    }
}

/// A persona section's items. A list is kept item for item as written (the recipe renders
/// them verbatim), dropping only items that are exactly empty; a single string (not the
/// recipe's shape, seen in hand-made dumps) is read as one item per line, bullets removed.
fn strings(v: Option<&Value>) -> Vec<String> {
    match v.map(unstring) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(text_of)
            .filter(|s| !s.is_empty())
            .collect(),
        Some(Value::String(s)) => s
            .lines()
            .map(|l| l.trim().trim_start_matches("- ").to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        _ => vec![],
    }
}

/// Who wrote a thread message: the first author-like field of its metadata (or of itself).
fn author_of(msg: &Value) -> Option<String> {
    const KEYS: [&str; 9] = [
        "author",
        "user_id",
        "username",
        "user",
        "name",
        "commenter",
        "reviewer",
        "from",
        "sender",
    ];
    let meta = msg.get("metadata").map(unstring).unwrap_or(Value::Null);
    for k in KEYS {
        for src in [&meta, msg] {
            if let Some(s) = src.get(k).and_then(text_of) {
                let s = s.trim().to_string();
                if !s.is_empty() {
                    return Some(s);
                }
            }
        }
    }
    None
}

/// The row's persona, its values as written: the recipe puts them into the prompt verbatim,
/// and leaves out a demographic that says "NA" when it renders (so the importer keeps it).
fn persona_of(v: Option<&Value>) -> Option<Persona> {
    let v = unstring(v?);
    match &v {
        Value::String(s) if !s.is_empty() => Some(Persona {
            text: Some(s.clone()),
            ..Default::default()
        }),
        Value::Object(o) => {
            let demographics = o.get("demographics").map(unstring).and_then(|d| {
                let f = |k: &str| d.get(k).and_then(text_of);
                let demo = Demographics {
                    // The published personas write `age group`.
                    age_group: f("age group")
                        .or_else(|| f("age_group"))
                        .or_else(|| f("age")),
                    gender: f("gender"),
                    location: f("location"),
                    occupation: f("occupation"),
                    nationality: f("nationality"),
                    other: f("other"),
                };
                (demo != Demographics::default()).then_some(demo)
            });
            let p = Persona {
                text: None,
                demographics,
                interests: strings(o.get("interests")),
                values: strings(o.get("values")),
                communication: strings(o.get("communication")),
                statistics: strings(o.get("statistics")),
            };
            (p != Persona::default()).then_some(p)
        }
        _ => None,
    }
}

/// The recipe's default persona filter (`is_valid_persona_json`): a generated persona with
/// fewer list items than this says too little to condition on (the generator's fallback
/// persona has four).
pub const MIN_PERSONA_ITEMS: usize = 10;

/// The recipe's persona filter: a dict persona is kept only when its `interests`, `values`,
/// `communication` and `statistics` lists hold at least `min` items together (a section that
/// is not a list counts nothing, as there); a plain-string persona, or none, is always kept.
/// `min` 0 keeps every row.
pub fn persona_filter(row: &Row, min: usize) -> std::result::Result<(), String> {
    if min == 0 {
        return Ok(());
    }
    let Some(Value::Object(p)) = row.value.get("persona").map(unstring) else {
        return Ok(());
    };
    let items: usize = ["interests", "values", "communication", "statistics"]
        .iter()
        .filter_map(|k| p.get(*k).and_then(Value::as_array).map(Vec::len))
        .sum();
    if items < min {
        return Err(format!(
            "persona has {items} list items, fewer than --min-persona-items {min}"
        ));
    }
    Ok(())
}

/// The JSON text of a metrics value the row has, as the recipe's `json.dumps` writes it (the
/// text its rows carry); `null` counts as absent, as `json.dumps(d.get(k))` cannot tell them
/// apart.
fn metrics_text(v: Option<&Value>) -> Option<String> {
    v.filter(|m| !m.is_null()).map(crate::pyjson::dumps)
}

/// The row's identity: dataset, row number, post, user, time, turn and the metrics the recipe
/// carries into its training rows.
fn source_of(row: &Row, domain: Domain, first_meta: &Value, metadata: &Value) -> Source {
    let v = &row.value;
    let text = |k: &str| v.get(k).and_then(text_of).filter(|s| !s.trim().is_empty());
    let timestamp = match v.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.is_i64() => n.as_i64().map(Timestamp::Int),
        Some(Value::String(s)) => Some(Timestamp::Text(s.clone())),
        Some(other) => Some(Timestamp::Text(other.to_string())),
    };
    let turn_id = v.get("turn_id").and_then(|t| match t {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    Source {
        note: None,
        dataset: Some(domain.recipe_dataset().to_string()),
        file: None,
        row: Some(row.number as u64),
        post_id: text("post_id"),
        user_id: text("user_id"),
        timestamp,
        turn_id,
        post_metrics: metrics_text(first_meta.get("post_metrics")),
        comment_metrics: metrics_text(metadata.get("comment_metrics")),
    }
}

/// Lowercase ASCII letters, digits and dashes, for ids and file names.
fn slug(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= max {
            break;
        }
    }
    out.trim_end_matches('-').to_string()
}

/// Who wrote a thread turn, as the HumanLM recipe reads it for each HUMANUAL dataset (its
/// `get_message_usr_id`): the turn's `role` holds the author id (a post author, a commenter, a
/// store, a video title, a hashed user id, a model, a sender), and some datasets name the author
/// in the turn's metadata instead. A turn by the row's `user_id` is the simulated person.
/// Rows in the older `user`/`assistant` layout fall back to the author-like metadata fields.
fn dataset_author(domain: Domain, msg: &Value, meta: &Value, role: &str) -> Option<String> {
    let text = |v: Option<&Value>| {
        v.and_then(text_of)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let named_role = (!role.is_empty() && role != "user").then(|| role.to_string());
    match domain {
        // Reddit: the metadata's author.
        Domain::Opinion => text(meta.get("author")).or(named_role),
        // Amazon: the item's store.
        Domain::Book => text(meta.get("store"))
            .or(named_role)
            .map(|s| format!("Amazon store: {s}")),
        // YouTube: the video's channel, or the commenter's display name.
        Domain::News => {
            let kind = text(meta.get("kind")).unwrap_or_default();
            let snippet = meta.get("snippet");
            if kind.contains("#video") {
                text(snippet.and_then(|s| s.get("channelTitle")))
            } else if kind.contains("#comment") {
                text(snippet.and_then(|s| s.get("authorDisplayName")))
            } else {
                None
            }
            .or(named_role)
        }
        // Medium, Enron (and chat, handled by the caller): the role itself.
        _ => named_role,
    }
    .or_else(|| author_of(msg))
}

/// A turn's text as the recipe renders it for the dataset (its `get_message_content`): a YouTube
/// video as its title, description and transcript; an Amazon item as its sheet; a Medium
/// article without its leading `POLITICS` line; everything else as written.
fn dataset_content(
    domain: Domain,
    meta: &Value,
    content: String,
) -> std::result::Result<String, String> {
    let field = |k: &str| meta.get(k).and_then(text_of).unwrap_or_default();
    match domain {
        Domain::News if field("kind").contains("#video") => Ok(format!(
            "- Title: {}\n\n- Description: {}\n\n- Transcript: {}",
            field("title"),
            field("description"),
            field("transcript")
        )),
        Domain::Book if meta.get("categories").is_some() => item_sheet(meta),
        Domain::Politics => Ok(content
            .strip_prefix("POLITICS\n\n")
            .map(str::to_string)
            .unwrap_or(content)),
        _ => Ok(content),
    }
}

/// An Amazon item's sheet from its metadata: category path, title, subtitle, price, the author
/// (with their about text) when there is one, description, features and details.
fn item_sheet(meta: &Value) -> std::result::Result<String, String> {
    let field = |k: &str| {
        meta.get(k)
            .and_then(text_of)
            .unwrap_or_else(|| "None".into())
    };
    let list = |k: &str| -> std::result::Result<Vec<String>, String> {
        match meta.get(k).map(unstring) {
            Some(Value::Array(a)) => Ok(a.iter().filter_map(text_of).collect()),
            _ => Err(format!("the item's `{k}` is not a list")),
        }
    };
    // `details` and `author` are Python-literal strings in the published rows, or JSON already.
    let table = |k: &str| {
        meta.get(k).map(|v| match v {
            Value::String(s) => python_literal(s),
            other => other.clone(),
        })
    };
    let mut out = format!(
        "- Category: {}\n- Title: {}\n- Subtitle: {}\n- Price: {}\n",
        list("categories")?.join("->"),
        field("title"),
        field("subtitle"),
        field("price")
    );
    if let Some(Value::Object(author)) = table("author") {
        let name = author.get("name").and_then(text_of).unwrap_or_default();
        out.push_str(&format!("- Author: {name}\n"));
        if let Some(about) = author.get("about") {
            let about: Vec<String> = match about {
                Value::Array(a) => a.iter().filter_map(text_of).collect(),
                v => text_of(v).into_iter().collect(),
            };
            out.push_str(&format!("  {}\n", about.join(" ")));
        }
    }
    let details = match table("details") {
        Some(Value::Object(d)) => d,
        _ => return Err("the item's `details` is not a table".into()),
    };
    let details: Vec<String> = details
        .iter()
        .map(|(k, v)| format!("  {k}: {}", text_of(v).unwrap_or_default()))
        .collect();
    out.push_str(&format!(
        "- Description: {}\n- Features:\n{}\n- Details:\n{}",
        list("description")?.join(" "),
        list("features")?.join(" "),
        details.join("\n")
    ));
    Ok(out)
}

/// A Python literal (`{'a': 'b'}`, as `str(dict)` writes it) read as JSON, as far as simple
/// dicts, lists, strings, numbers, `None`, `True` and `False` go; the text itself otherwise.
fn python_literal(s: &str) -> Value {
    if let Ok(v) = serde_json::from_str(s) {
        return v;
    }
    let mut json = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                json.push('"');
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => {
                            if let Some(e) = chars.next() {
                                if e == '\'' {
                                    json.push('\'');
                                } else {
                                    json.push('\\');
                                    json.push(e);
                                }
                            }
                        }
                        '"' if c == '\'' => json.push_str("\\\""),
                        d if d == c => break,
                        d => json.push(d),
                    }
                }
                json.push('"');
            }
            c if c.is_ascii_alphabetic() => {
                // A bare word outside strings: Python's constants.
                let mut word = String::from(c);
                while let Some(&d) = chars.peek().filter(|d| d.is_ascii_alphanumeric()) {
                    word.push(d);
                    chars.next();
                }
                json.push_str(match word.as_str() {
                    "None" => "null",
                    "True" => "true",
                    "False" => "false",
                    other => other,
                });
            }
            _ => json.push(c),
        }
    }
    serde_json::from_str(&json).unwrap_or_else(|_| Value::String(s.to_string()))
}

/// Convert one row; `Err` says why the row cannot become a scenario.
pub fn row_to_scenario(row: &Row, domain: Domain) -> std::result::Result<Scenario, String> {
    let v = &row.value;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    let messages = match v.get("prompt").map(unstring) {
        Some(Value::Array(m)) => m,
        Some(Value::String(s)) => vec![serde_json::json!({"role": "user", "content": s})],
        _ => return Err("no `prompt` list".into()),
    };
    let user_id = v
        .get("user_id")
        .and_then(text_of)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let target_author = user_id.clone().unwrap_or_else(|| "HUMAN".to_string());
    let mut turns = vec![];
    for (i, m) in messages.iter().enumerate() {
        let m = unstring(m);
        let role = m.get("role").and_then(text_of).unwrap_or_default();
        if role == "system" {
            continue; // a system message is not a thread turn
        }
        let meta = m.get("metadata").map(unstring).unwrap_or(Value::Null);
        let Some(content) = m.get("content").and_then(text_of) else {
            return Err(format!("prompt[{i}] has no `content`"));
        };
        let text =
            dataset_content(domain, &meta, content).map_err(|e| format!("prompt[{i}]: {e}"))?;
        if text.trim().is_empty() {
            continue;
        }
        // Chat rows: the assistant is the turn whose role names a GPT model (or says
        // `assistant`); every other turn is the person themself.
        let assistant =
            role == "assistant" || (domain == Domain::Chat && role.to_lowercase().contains("gpt"));
        let author = if assistant {
            role.clone()
        } else if domain == Domain::Chat {
            target_author.clone()
        } else {
            dataset_author(domain, &m, &meta, &role).unwrap_or_else(|| {
                if i == 0 {
                    "original_poster".into()
                } else {
                    format!("commenter_{i}")
                }
            })
        };
        turns.push(Turn {
            author,
            text,
            role: if assistant {
                Role::Assistant
            } else {
                Role::User
            },
        });
    }
    if turns.is_empty() {
        return Err("empty thread".into());
    }
    // The reply as written: it is the recipe's `ground_truth`, compared as it stands.
    let response = v
        .get("completion")
        .and_then(text_of)
        .filter(|s| !s.trim().is_empty());
    let metadata = v.get("metadata").map(unstring).unwrap_or(Value::Null);
    let title = metadata
        .get("title")
        .or_else(|| metadata.get("subject"))
        .and_then(text_of)
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| {
            let first = turns[0].text.lines().next().unwrap_or_default().trim();
            let mut t: String = first.chars().take(80).collect();
            if first.chars().count() > 80 {
                t.push('…');
            }
            t
        });
    let post = v.get("post_id").and_then(text_of).unwrap_or_default();
    let turn_id = v.get("turn_id").and_then(text_of);
    let key = match (&post, &turn_id) {
        (p, Some(t)) if !p.is_empty() => format!("{p}-{t}"),
        (p, None) if !p.is_empty() => format!("{p}-{}", user_id.as_deref().unwrap_or("")),
        _ => format!("row-{}", row.number),
    };
    let id = format!("{}-{}", domain.name(), slug(&key, 48));
    let first_meta = messages
        .first()
        .map(unstring)
        .and_then(|m| m.get("metadata").map(unstring))
        .unwrap_or(Value::Null);
    let source = source_of(row, domain, &first_meta, &metadata);
    let sc = Scenario {
        id,
        domain,
        title: title.trim().to_string(),
        source: Some(source),
        persona: persona_of(v.get("persona")),
        turns,
        target: Target {
            author: target_author,
            response,
        },
        conversation: None,
    };
    sc.validate(Path::new("<row>")).map_err(|e| {
        let s = e.to_string();
        s.split_once(": ").map(|x| x.1.to_string()).unwrap_or(s)
    })?;
    Ok(sc)
}

/// What an import did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub written: Vec<PathBuf>,
    /// Rows that could not become scenarios: (row number, reason).
    pub skipped: Vec<(usize, String)>,
    /// Scenario ids whose file already existed (left alone without `overwrite`).
    pub existing: Vec<String>,
}

/// Convert up to `limit` usable rows of `input` into scenario files under `out`, leaving out
/// rows whose persona fails [`persona_filter`] at `min_persona_items`. Each file is written
/// whole (a temporary file renamed into place); existing files are kept unless `overwrite`.
pub fn import(
    input: &Path,
    domain: Domain,
    limit: Option<usize>,
    min_persona_items: usize,
    out: &Path,
    overwrite: bool,
) -> Result<Report> {
    let rows = read_rows(input)?;
    if rows.is_empty() {
        return Err(Error::at(input, "no rows"));
    }
    std::fs::create_dir_all(out)
        .map_err(|e| Error::at(out, format!("cannot create folder: {e}")))?;
    let mut report = Report::default();
    let mut ids = std::collections::HashSet::new();
    for row in &rows {
        if limit.is_some_and(|l| report.written.len() + report.existing.len() >= l) {
            break;
        }
        let mut sc = match persona_filter(row, min_persona_items)
            .and_then(|()| row_to_scenario(row, domain))
        {
            Ok(sc) => sc,
            Err(why) => {
                report.skipped.push((row.number, why));
                continue;
            }
        };
        let file_name = input.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(src) = sc.source.as_mut() {
            src.file = file_name;
        }
        // Two rows of one post and turn (a dump with repeated rows) get distinct ids.
        if !ids.insert(sc.id.clone()) {
            sc.id = format!("{}-r{}", sc.id, row.number);
            ids.insert(sc.id.clone());
        }
        let path = out.join(format!("{}.toml", sc.id));
        if path.exists() && !overwrite {
            report.existing.push(sc.id);
            continue;
        }
        let text =
            toml::to_string(&sc).map_err(|e| Error::at(&path, format!("cannot serialise: {e}")))?;
        let header = "# Imported by `humanlm scenarios import` ([source] names the row).\n";
        // What we write must load back as the same scenario.
        let back = Scenario::from_toml(&text, &path)?;
        debug_assert_eq!(back, sc);
        crate::files::write(&path, format!("{header}{text}"))
            .map_err(|e| Error::at(&path, format!("cannot write: {}", e.source)))?;
        report.written.push(path);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals_read_as_json() {
        let v = python_literal(
            r#"{'a': None, 'b': 'Say "None": True', 'c': [1, False], 'd': 'it\'s'}"#,
        );
        assert_eq!(
            v,
            serde_json::json!({"a": null, "b": "Say \"None\": True", "c": [1, false], "d": "it's"})
        );
        // Not a literal it understands: the text itself.
        assert_eq!(
            python_literal("{'a': b'x'"),
            Value::String("{'a': b'x'".into())
        );
    }
}
