//! `humanlm prompts import`: a prompt set made from a copy of the HumanLM verl recipe's files.
//!
//! The recipe (folder `humanlm/` of verl-recipe) describes a run by a state config
//! (`state_config/<config>.json`: per state its description, threshold, token budget and,
//! optionally, its own system prompt file) and builds its system prompts from
//! `system_prompts/base.txt`. The import reproduces what the recipe gives the model:
//!
//! - the *dataset prompt*: what `process_dataset.py` stores in every row, `base.txt` filled with
//!   the config's state block and notes, then with the row's persona, user id and platform;
//! - the *state prompts*: the files the config names, which the recipe's `StateDataset` swaps in
//!   per state at train time (stripped, then filled from the row's `extra_info`);
//! - the chat template the recipe trains with, and the persona formatted as its `format_persona`;
//! - the judges' requests: the batched state judge (`metrics/state_reward.py`) and, where the
//!   checkout has it, the response-level judge that scores one reply on every state at once
//!   (`metrics/state_reward_on_response.py`), with the thread as its `parse_messages` writes it.
//!
//! The recipe's texts stay the user's: they are copied from the given folder, never shipped.

use super::pyformat::PyFormat;
use super::{Error, Result, DEFAULT_SET, RESPONSE};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Fields the dataset prompt is filled with (the recipe's `process_dataset` values).
pub const DATASET_FIELDS: [&str; 4] = ["name", "persona", "platform", "memory"];
/// Fields a state prompt may use (the part of `extra_info` a simulation knows).
pub const STATE_FIELDS: [&str; 5] = [
    "persona",
    "name",
    "state_name",
    "media_source",
    "target_user_id",
];
/// Fields of the recipe's batched judge prompt (`metrics/state_reward.py`).
pub const JUDGE_FIELDS: [&str; 7] = [
    "context",
    "ground_truth",
    "generations_text",
    "other_guidelines",
    "state_name",
    "state_desc",
    "num_generations",
];
/// Fields of its extra guideline.
pub const GUIDELINE_FIELDS: [&str; 1] = ["state_name"];
/// Fields of its generations block; `generations` stands for the expression the recipe writes
/// there, `json.dumps(generations_dict, indent=2)`.
pub const GENERATIONS_FIELDS: [&str; 2] = ["state_name", "generations"];
const GENERATIONS_EXPR: &str = "{json.dumps(generations_dict, indent=2)}";
/// Fields of the recipe's response-level state judge (`metrics/state_reward_on_response.py`):
/// one reply scored on every state at once.
pub const ASPECTS_FIELDS: [&str; 6] = [
    "context",
    "ground_truth",
    "generation_text",
    "other_guidelines",
    "state_names",
    "state_desc",
];
/// Fields of its block around the reply (`generation_text`).
pub const ASPECTS_GENERATION_FIELDS: [&str; 1] = ["generation"];
/// The response-level judge's file: optional, as older recipe checkouts lack it (the set then
/// keeps the inherited `judge_aspects.jinja`).
const ASPECTS_JUDGE: &str = "state_reward_on_response.py";

/// The chat template the recipe's run script trains and evaluates with.
pub const DEFAULT_CHAT_TEMPLATE: &str = "chat_templates/qwen3_multi_role_template_think.jinja";
/// The response budget when thinking is on: the run script raises the generation length to
/// 1024 tokens whenever thinking is enabled.
const THINKING_BUDGET: usize = 1024;

/// What `prompts import` was asked to do.
#[derive(Debug, Clone)]
pub struct ImportSpec {
    /// The recipe's `humanlm/` folder.
    pub recipe: PathBuf,
    /// A state config's name (`sebvgcr`, `r`, `r_no_tag`, `think_r`, …).
    pub config: String,
    /// The new set's folder name.
    pub name: String,
    /// The chat template, relative to `recipe` (default [`DEFAULT_CHAT_TEMPLATE`]).
    pub chat_template: Option<PathBuf>,
    /// Whether the reply is generated with thinking on (the recipe's HumanLM runs: on).
    pub thinking: bool,
    pub overwrite: bool,
}

/// What an import wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Imported {
    pub dir: PathBuf,
    pub states: Vec<String>,
    /// Source files read (relative to the recipe folder) and their sha256.
    pub sources: Vec<(String, String)>,
}

struct State {
    key: String,
    desc: String,
    max_tokens: usize,
    system_prompt: Option<PathBuf>,
}

fn at(path: &Path, line: Option<usize>, msg: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        line,
        msg: msg.into(),
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| at(path, None, format!("cannot read: {e}")))
}

/// 1-based line of the first occurrence of `needle` in `text` (for messages about a JSON key).
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.find(needle)
        .map(|i| text[..i].matches('\n').count() + 1)
}

/// The states of a state config, and the file's text (for its hash and for messages).
fn read_config(path: &Path) -> Result<(Vec<State>, String)> {
    let text = read(path)?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| at(path, Some(e.line()), format!("not JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(at(path, None, "a state config is a JSON object of states"));
    };
    let mut states = vec![];
    for (key, cfg) in &map {
        let line = line_of(&text, &format!("\"{key}\""));
        let bad = |msg: String| at(path, line, format!("state `{key}`: {msg}"));
        let Value::Object(cfg) = cfg else {
            return Err(bad("is not an object".into()));
        };
        for k in cfg.keys() {
            if !["desc", "threshold", "max_tokens", "system_prompt"].contains(&k.as_str()) {
                return Err(bad(format!(
                    "unknown field `{k}` (known: desc, threshold, max_tokens, system_prompt)"
                )));
            }
        }
        let desc = cfg
            .get("desc")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no `desc` string".into()))?;
        let max_tokens = cfg
            .get("max_tokens")
            .and_then(Value::as_u64)
            .filter(|n| *n > 0)
            .ok_or_else(|| bad("no positive integer `max_tokens`".into()))?;
        let system_prompt = match cfg.get("system_prompt") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(PathBuf::from(p)),
            Some(_) => return Err(bad("`system_prompt` is not a path string".into())),
        };
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                "a state's key must be a tag name (letters, digits, _ or -)".into(),
            ));
        }
        states.push(State {
            key: key.clone(),
            desc: desc.to_string(),
            max_tokens: max_tokens as usize,
            system_prompt,
        });
    }
    match states.last() {
        None => return Err(at(path, None, "no states")),
        Some(s) if s.key != RESPONSE => {
            return Err(at(
                path,
                None,
                format!(
                    "the last state is `{}`, not `response`: a simulation ends with the reply \
                     (a config without one, like sebvgc, only scores replies)",
                    s.key
                ),
            ))
        }
        _ => {}
    }
    Ok((states, text))
}

/// The note lines `process_dataset.py` appends in tagged mode: the string literal assigned to
/// `additional_notes` that is not empty (the recipe keeps them in its code, not in a prompt
/// file, so they are read from there).
fn tagged_notes(path: &Path) -> Result<String> {
    assigned_literal(path, "additional_notes").map(|(_, text)| text)
}

/// [`assigned_literal`] checked as a format string with `fields`; a fault is reported at the
/// assignment's line (a literal's own lines shift under `\` continuations).
fn format_literal(
    path: &Path,
    name: &str,
    fields: &[&str],
    expr: Option<(&str, &str)>,
) -> Result<String> {
    let (line, text) = assigned_literal(path, name)?;
    let text = match expr {
        Some((from, to)) => text.replace(from, to),
        None => text,
    };
    PyFormat::parse(&text, path, fields).map_err(|e| match e {
        Error::File { msg, .. } => at(path, Some(line), format!("{name}: {msg}")),
    })?;
    Ok(text)
}

/// The first non-empty string literal assigned to `name` in the Python file at `path`: one
/// literal or several concatenated (adjacent, over `\` continuations or inside parentheses),
/// plain or f-strings (an f-string's fields are left as `{field}`, for [`PyFormat`]).
fn assigned_literal(path: &Path, name: &str) -> Result<(usize, String)> {
    let text = read(path)?;
    let mut offset = 0;
    let mut problem = None;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += line.len();
        let t = line.trim_start();
        let Some(rest) = t.strip_prefix(name) else {
            continue;
        };
        let Some(rhs) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        if rhs.starts_with('=') {
            continue; // a comparison
        }
        let at = start + (line.len() - rhs.len());
        match python_string_concat(&text[at..]) {
            Ok(v) if !v.is_empty() => return Ok((i + 1, v)),
            Ok(_) => {}
            Err(m) => problem = problem.or(Some((i + 1, m))),
        }
    }
    Err(match problem {
        Some((line, m)) => at(path, Some(line), format!("{name}: {m}")),
        None => at(
            path,
            None,
            format!("no non-empty `{name} = \"...\"` assignment (the text this import reads)"),
        ),
    })
}

/// Adjacent Python string literals at the start of `src`, decoded: implicit concatenation,
/// `\` line continuations, an enclosing pair of parentheses, `f` prefixes. Only '…', "…" and
/// triple-quoted literals with the common escapes.
fn python_string_concat(src: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = src.trim_start_matches([' ', '\t']);
    let paren = rest.starts_with('(');
    if paren {
        rest = &rest[1..];
    }
    let mut any = false;
    loop {
        rest = if paren {
            rest.trim_start()
        } else {
            rest.trim_start_matches([' ', '\t'])
        };
        if let Some(r) = rest.strip_prefix("\\\n") {
            rest = r;
            continue;
        }
        if paren && rest.starts_with(')') {
            break;
        }
        let lit = rest
            .strip_prefix(['f', 'F'])
            .filter(|r| r.starts_with(['"', '\'']))
            .unwrap_or(rest);
        let Some(quote) = lit.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            if paren {
                return Err("something other than string literals inside the parentheses".into());
            }
            break;
        };
        rest = lit;
        if rest.starts_with("\"\"\"") || rest.starts_with("\'\'\'") {
            // A triple-quoted literal: `"""` right after a literal is an empty one plus a quote.
            let q3 = &rest[..3];
            if let Some(end) = rest[3..].find(q3) {
                out.push_str(&unescape(&rest[3..3 + end])?);
                rest = &rest[3 + end + 3..];
                any = true;
                continue;
            }
        }
        let body = &rest[1..];
        let mut end = None;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == quote {
                end = Some(i);
                break;
            } else if c == '\n' {
                return Err("a string literal runs past the end of its line".into());
            }
        }
        let end = end.ok_or("an unterminated string literal")?;
        out.push_str(&unescape(&body[..end])?);
        rest = &body[end + 1..];
        any = true;
    }
    if !any {
        return Err("not a string literal".into());
    }
    Ok(out)
}

fn unescape(s: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('\'') => out.push('\''),
            Some('\n') => {}
            other => {
                return Err(format!(
                    "escape \\{} is not understood",
                    other.unwrap_or(' ')
                ))
            }
        }
    }
    Ok(out)
}

/// Python's `str()` of a list of strings, as the recipe writes its state names into the
/// response-level judge's prompt: `['stance', 'emotion']`. Each item as `repr(str)` writes it:
/// in single quotes unless it holds a `'` and no `"`, with `\\`, the quote, `\n`, `\r`, `\t` and
/// other control characters escaped (exact for printable text, which a state's key always is).
pub fn py_str_list(items: &[&str]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let quote = if item.contains('\'') && !item.contains('"') {
            '"'
        } else {
            '\''
        };
        out.push(quote);
        for c in item.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c == quote => {
                    out.push('\\');
                    out.push(c);
                }
                c if (c as u32) < 0x20 || (0x7f..0xa1).contains(&(c as u32)) || c == '\u{ad}' => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c => out.push(c),
            }
        }
        out.push(quote);
    }
    out.push(']');
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Read the recipe's files for `spec.config` and write the set `root/<name>/`.
pub fn import(spec: &ImportSpec, root: &Path) -> Result<Imported> {
    let recipe = &spec.recipe;
    if !recipe.is_dir() {
        return Err(at(
            recipe,
            None,
            "not a folder (give the recipe's humanlm/ folder)",
        ));
    }
    if spec.name.is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        || spec.name.starts_with('.')
    {
        return Err(at(
            &root.join(&spec.name),
            None,
            "a set's name is letters, digits, '-', '_' or '.'",
        ));
    }
    let mut sources: Vec<(String, String)> = vec![];
    let mut note = |path: &Path, text: &str| {
        let rel = path
            .strip_prefix(recipe)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned();
        sources.push((rel, sha256_hex(text.as_bytes())));
    };

    let config_path = recipe
        .join("state_config")
        .join(format!("{}.json", spec.config));
    let (states, config_text) = read_config(&config_path)?;
    note(&config_path, &config_text);
    // The recipe's no-tag runs: a single state whose description is the whole task block, no
    // notes, and an untagged reply.
    let no_tag = spec.config.ends_with("_no_tag");
    if no_tag && states.len() != 1 {
        return Err(at(
            &config_path,
            None,
            "a _no_tag config must have exactly one state (the recipe's --no_tag rule)",
        ));
    }

    // The dataset prompt: base.txt filled with the state block and notes. The recipe's base.txt
    // names the block `{hierarchy_template}` while process_dataset passes `state_template=`;
    // the committed per-state files show the block in that slot, so both names fill it.
    let base_path = recipe.join("system_prompts").join("base.txt");
    let base_text = read(&base_path)?;
    note(&base_path, &base_text);
    let base = PyFormat::parse(
        &base_text,
        &base_path,
        &["state_template", "hierarchy_template", "additional_notes"],
    )?;
    let (block, notes) = if no_tag {
        (states[0].desc.clone(), String::new())
    } else {
        let block: Vec<String> = states
            .iter()
            .map(|s| format!("<{k}>\n<{d}>\n</{k}>", k = s.key, d = s.desc))
            .collect();
        let code = recipe.join("process_dataset.py");
        let notes = tagged_notes(&code)?;
        note(&code, &read(&code)?);
        (block.join("\n"), notes)
    };
    let dataset_prompt = base.render(|f| match f {
        "additional_notes" => notes.clone(),
        _ => block.clone(),
    });
    // The row-time fill must succeed too (a brace in a description would break the recipe).
    let written_base = Path::new("system").join("dataset.txt");
    PyFormat::parse(
        &dataset_prompt,
        &root.join(&spec.name).join(&written_base),
        &DATASET_FIELDS,
    )?;

    let mut state_prompts: Vec<(String, String)> = vec![];
    for s in &states {
        let Some(rel) = &s.system_prompt else {
            continue;
        };
        let p = config_path.parent().unwrap_or(Path::new(".")).join(rel);
        let text = read(&p).map_err(|_| {
            at(
                &config_path,
                line_of(&config_text, &format!("\"{}\"", s.key)),
                format!(
                    "state `{}`: system_prompt {} is missing",
                    s.key,
                    p.display()
                ),
            )
        })?;
        note(&p, &text);
        // StateDataset strips the file before filling it.
        let text = text.trim().to_string();
        PyFormat::parse(&text, &p, &STATE_FIELDS)?;
        state_prompts.push((s.key.clone(), text));
    }

    // The judge: the batched prompt, its generations block and its extra guideline, as
    // metrics/state_reward.py writes them.
    let judge_path = recipe.join("metrics").join("state_reward.py");
    let judge_prompt = format_literal(&judge_path, "STATE_PROMPT_BATCHED", &JUDGE_FIELDS, None)?;
    let guidelines = format_literal(&judge_path, "other_guidelines", &GUIDELINE_FIELDS, None)?;
    let generations = format_literal(
        &judge_path,
        "generations_text",
        &GENERATIONS_FIELDS,
        Some((GENERATIONS_EXPR, "{generations}")),
    )?;
    note(&judge_path, &read(&judge_path)?);
    // The response-level judge, where the checkout has it: its prompt and the block it frames
    // the reply with, as metrics/state_reward_on_response.py writes them.
    let aspects_path = recipe.join("metrics").join(ASPECTS_JUDGE);
    let aspects = if aspects_path.is_file() {
        let prompt = format_literal(&aspects_path, "STATE_PROMPT_BATCHED", &ASPECTS_FIELDS, None)?;
        let generation = format_literal(
            &aspects_path,
            "generation_text",
            &ASPECTS_GENERATION_FIELDS,
            None,
        )?;
        note(&aspects_path, &read(&aspects_path)?);
        Some((prompt, generation))
    } else {
        None
    };

    let chat_rel = spec
        .chat_template
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CHAT_TEMPLATE));
    let chat_path = recipe.join(&chat_rel);
    let chat_text = read(&chat_path)?;
    crate::model::chat::ChatTemplate::new(&chat_text, &chat_path, "", "<|im_end|>")
        .map_err(|e| at(&chat_path, None, e.to_string()))?;
    note(&chat_path, &chat_text);

    // The set's files.
    let mut files: Vec<(PathBuf, String)> = vec![];
    let mut set_toml = format!(
        "# Imported by `humanlm prompts import` from the HumanLM recipe at {}, state config {}.\n\
         # The system and judge prompts are the recipe's Python format strings (see source.toml\n\
         # for the files and their sha256); what this folder lacks comes from the `{DEFAULT_SET}` set.\n\
         description = {}\ninherits = {}\nchat_template = \"chat_template.jinja\"\n\
         layout = \"thread\"\nprefill_tag = false\nresponse_thinking = {}\nuntagged_reply = {}\n\n[recipe]\n\
         dataset_prompt = \"system/dataset.txt\"\njudge_prompt = \"judge/prompt.txt\"\n\
         judge_guidelines = \"judge/guidelines.txt\"\njudge_generations = \"judge/generations.txt\"\n",
        recipe.display(),
        spec.config,
        toml_str(&format!("HumanLM recipe, state config {}", spec.config)),
        toml_str(DEFAULT_SET),
        spec.thinking,
        no_tag,
    );
    if aspects.is_some() {
        set_toml.push_str(
            "judge_aspects = \"judge/aspects.txt\"\n\
             judge_aspects_generation = \"judge/aspects_generation.txt\"\n",
        );
    }
    if !state_prompts.is_empty() {
        set_toml.push_str("\n[recipe.state_prompts]\n");
        for (k, _) in &state_prompts {
            set_toml.push_str(&format!("{k} = \"system/{k}.txt\"\n"));
        }
    }
    files.push(("set.toml".into(), set_toml));
    let mut states_toml = format!(
        "# From {}: each state's description and token budget.\n",
        config_path
            .strip_prefix(recipe)
            .unwrap_or(&config_path)
            .display()
    );
    for s in &states {
        states_toml.push_str(&format!(
            "\n[[state]]\nkey = {}\nmax_tokens = {}\ndescription = {}\n",
            toml_str(&s.key),
            s.max_tokens,
            toml_str(&s.desc)
        ));
        if s.key == RESPONSE && spec.thinking {
            states_toml.push_str(&format!("max_tokens_thinking = {THINKING_BUDGET}\n"));
        }
    }
    files.push(("states.toml".into(), states_toml));
    files.push(("persona.jinja".into(), RECIPE_PERSONA.to_string()));
    files.push(("thread.jinja".into(), RECIPE_THREAD.to_string()));
    files.push(("judge/prompt.txt".into(), judge_prompt));
    files.push(("judge/guidelines.txt".into(), guidelines));
    files.push(("judge/generations.txt".into(), generations));
    if let Some((prompt, generation)) = aspects {
        files.push(("judge/aspects.txt".into(), prompt));
        files.push(("judge/aspects_generation.txt".into(), generation));
    }
    files.push(("chat_template.jinja".into(), chat_text));
    files.push((written_base, dataset_prompt));
    for (k, text) in &state_prompts {
        files.push((Path::new("system").join(format!("{k}.txt")), text.clone()));
    }
    let mut source_toml = format!(
        "# What `humanlm prompts import` read.\nrecipe = {}\nconfig = {}\nthinking = {}\n\n[sha256]\n",
        toml_str(&recipe.display().to_string()),
        toml_str(&spec.config),
        spec.thinking
    );
    for (rel, hash) in &sources {
        source_toml.push_str(&format!("{} = \"{hash}\"\n", toml_str(rel)));
    }
    files.push(("source.toml".into(), source_toml));

    // Written into a fresh folder beside the target, loaded back, then moved into place: a
    // failed import leaves nothing half-written.
    let dir = root.join(&spec.name);
    if dir.exists() && !spec.overwrite {
        return Err(at(
            &dir,
            None,
            "already exists (pass --force to replace it)",
        ));
    }
    std::fs::create_dir_all(root).map_err(|e| at(root, None, format!("cannot create: {e}")))?;
    let tmp = root.join(format!(".{}.import-{}", spec.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let write_all = || -> Result<()> {
        for (rel, text) in &files {
            let p = tmp.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| at(parent, None, format!("cannot create: {e}")))?;
            }
            std::fs::write(&p, text).map_err(|e| at(&p, None, format!("cannot write: {e}")))?;
        }
        Ok(())
    };
    let checked = write_all().and_then(|_| {
        // The set must load from where it will live (its `inherits` is a sibling).
        super::PromptSet::load(tmp.to_str().unwrap_or_default(), root).map(|_| ())
    });
    if let Err(e) = checked {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| at(&dir, None, format!("cannot replace: {e}")))?;
    }
    std::fs::rename(&tmp, &dir)
        .map_err(|e| at(&dir, None, format!("cannot move into place: {e}")))?;
    Ok(Imported {
        dir,
        states: states.iter().map(|s| s.key.clone()).collect(),
        sources,
    })
}

/// The thread as the recipe's `utils.parse_messages` writes a row's messages for its judge (the
/// system message left out): `**{Role} {name}**: {content}` per message, joined by newlines; an
/// assistant message has no name, which Python prints as `None`.
const RECIPE_THREAD: &str = r#"{#- The HumanLM recipe's parse_messages. Variables: turns (author, role, text). -#}
{%- for t in turns -%}
{%- if not loop.first %}{{ "\n" }}{% endif -%}
{%- if t.role == "assistant" -%}**Assistant None**: {% else -%}**User {{ t.author }}**: {% endif -%}
{{- t.text -}}
{%- endfor -%}
"#;

/// A persona as the recipe's `format_persona` writes it (no dropout: the dropout applies only to
/// its `test_dropout` split). A plain-text persona verbatim; demographics under the recipe's key
/// names, skipping empty and "NA" values, "Missing" when none is left; each list as
/// `Name: ` then two-space-indented lines, or `Name: Missing`.
const RECIPE_PERSONA: &str = r#"{#- The HumanLM recipe's format_persona, without dropout. Variables: persona (its `recipe`
    value: a string, or the generator's object with demographics under their key names) or none
    (rendered empty). -#}
{%- if persona is none -%}
{%- elif persona.recipe is string -%}
{{- persona.recipe -}}
{%- else -%}
{%- set r = persona.recipe -%}
{%- set ns = namespace(demo=[], lines=[]) -%}
{%- if r.demographics is defined -%}
{%- for key, value in r.demographics | items -%}
{%- if value and value | trim != "NA" -%}{%- set ns.demo = ns.demo + ["  " ~ key ~ ": " ~ value] -%}{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- if ns.demo -%}{%- set ns.lines = ["Demographics:"] + ns.demo -%}{%- else -%}{%- set ns.lines = ["Demographics: Missing"] -%}{%- endif -%}
{%- for key in ["interests", "values", "communication", "statistics"] -%}
{%- set items = r[key] if r[key] is defined else [] -%}
{%- if items -%}{%- set ns.lines = ns.lines + [key | capitalize ~ ": \n  " ~ items | join("\n  ")] -%}{%- else -%}{%- set ns.lines = ns.lines + [key | capitalize ~ ": Missing"] -%}{%- endif -%}
{%- endfor -%}
{{- ns.lines | join("\n") -}}
{%- endif -%}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_string_literals_concatenate_across_continuations() {
        let src = "\"- one\\n\" \\\n    \"- two \\\"x\\\"\"\"\"\nrest";
        assert_eq!(python_string_concat(src).unwrap(), "- one\n- two \"x\"");
        assert_eq!(python_string_concat("''").unwrap(), "");
        assert!(python_string_concat("foo").is_err());
        assert!(python_string_concat("\"open\n").is_err());
    }

    /// Cases written out from Python's `str()` of a list (`repr` of each string).
    #[test]
    fn a_list_of_names_prints_as_python_prints_it() {
        assert_eq!(py_str_list(&["stance", "emotion"]), "['stance', 'emotion']");
        assert_eq!(py_str_list(&[]), "[]");
        assert_eq!(py_str_list(&["it's"]), "[\"it's\"]");
        assert_eq!(py_str_list(&["it's \"x\""]), "['it\\'s \"x\"']");
        assert_eq!(
            py_str_list(&["a\\b\tc\n\u{1}\u{7f}"]),
            "['a\\\\b\\tc\\n\\x01\\x7f']"
        );
        assert_eq!(py_str_list(&["caf\u{e9}"]), "['caf\u{e9}']");
    }
}
