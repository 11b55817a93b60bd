//! `humanlm export-dataset --format verl`: scenarios as the RL rows of the HumanLM verl recipe
//! (`process_dataset.py`'s `RL_TEMPLATE`; docs/humanual-and-recipe-formats.md §2.6).
//!
//! The recipe writes one row per example: `prompt` is the chat (the system prompt, then each
//! thread turn as a `user` message named by its author, the person as HUMAN, an assistant's turn
//! without a name), `reward_model.ground_truth` the person's real reply, and `extra_info` the
//! example's identity (persona, post, user, metrics, top-level or not) with `raw_prompt`, the
//! messages as `json.dumps` text. The states are not rows: the recipe's `StateDataset` expands
//! each row into one per state at train time and swaps in that state's system prompt, so the row
//! carries the prompt that asks for every state, which here is the set's joint call
//! (`sim::Mode::Joint`). Our own fields (scenario id, the joint call's rendered prompt and
//! limits, the prompt set) follow the recipe's in `extra_info`; its loader ignores them.
//!
//! Written with the parquet crate's column writer (no Arrow): the only nested column is
//! `prompt`, a list of structs, whose levels are spelled out in `message_column`.

use super::{Error, Result};
use crate::model::chat::Message;
use crate::model::Model;
use crate::prompts::PromptSet;
use crate::pyjson;
use crate::scenario::{Persona, Scenario};
use crate::sim::{self, Mode, Options, SamplingChoice, Truncate};
use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One training row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    pub data_source: String,
    pub prompt: Vec<Message>,
    pub ability: String,
    pub style: String,
    pub ground_truth: String,
    pub extra: Extra,
}

/// `extra_info` of a row: the recipe's fields in its order, then ours.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Extra {
    pub split: String,
    /// The row's position in the file.
    pub index: i64,
    /// Who the model speaks as (the recipe's `speak_as`): HUMAN.
    pub name: String,
    /// Declared by the recipe and never set: always null.
    pub post: Option<String>,
    /// The set's first state (the recipe's first state-config key); `StateDataset` rewrites it.
    pub state_name: String,
    /// `json.dumps` of the persona as the recipe holds it: an object in its key names, or a
    /// JSON string for a text persona (`""` when the scenario has none).
    pub persona: String,
    /// The platform (Reddit, Amazon, Youtube, Medium, WildChat, Enron).
    pub media_source: String,
    pub target_user_id: String,
    /// `json.dumps(prompt)`, before the Parquet cast: assistant messages have no `name` key.
    pub raw_prompt: String,
    /// `json.dumps` of the row's metrics, the text `null` when it had none.
    pub post_metrics: String,
    pub comment_metrics: String,
    pub post_id: String,
    pub is_top_level: bool,
    pub scenario_id: String,
    pub domain: String,
    /// `state_name` under the name the recipe's reward manager reads.
    pub hierarchy_name: String,
    /// The joint call's switches and limits, as this simulator runs it.
    pub enable_thinking: bool,
    /// The opening tag the set pre-fills after the generation prompt ("" if none).
    pub prefill: String,
    pub stop: String,
    pub max_tokens: i64,
    /// The joint call's prompt as this simulator renders it (chat template and prefill
    /// included; a transcript-layout set lays the thread out in one user message there).
    pub prompt_text: String,
    pub prompt_set: String,
    pub prompt_hash: String,
}

/// What an export wrote and what it left out.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatasetReport {
    pub out: PathBuf,
    pub rows: usize,
    /// (scenario id or file, why).
    pub skipped: Vec<(String, String)>,
    pub prompt_set: String,
    pub prompt_hash: String,
    /// The set's first state, every row's `state_name`.
    pub state_name: String,
}

/// The persona as the recipe's rows hold it before `json.dumps` ("" when the scenario has
/// none).
pub fn recipe_persona(persona: Option<&Persona>) -> Value {
    persona
        .map(Persona::recipe_value)
        .unwrap_or_else(|| Value::String(String::new()))
}

/// `json.dumps` of metrics kept as JSON text in the scenario's source, `null` when absent.
fn metrics(scenario: &Scenario, field: &str, text: Option<&String>) -> Result<String> {
    match text {
        None => Ok("null".into()),
        Some(t) => serde_json::from_str::<Value>(t)
            .map(|v| pyjson::dumps(&v))
            .map_err(|e| {
                Error::Msg(format!(
                    "scenario {}: source.{field} is not JSON: {e}",
                    scenario.id
                ))
            }),
    }
}

/// The row of one scenario, its prompt the set's joint call as `sim::plan` makes it. `None`
/// when the scenario has no reference reply.
pub fn scenario_row(
    model: &Model,
    set: &PromptSet,
    scenario: &Scenario,
    truncate: Truncate,
    index: i64,
    split: &str,
) -> Result<Option<Row>> {
    let Some(reply) = scenario
        .target
        .response
        .as_ref()
        .filter(|r| !r.trim().is_empty())
    else {
        return Ok(None);
    };
    let state_name = first_state(set)?;
    let opts = Options {
        mode: Mode::Joint,
        // No cap below the set's own budgets: the rows carry the set's limits.
        params: SamplingChoice::default().params(set),
        truncate,
    };
    let plan = sim::plan(set, scenario, &opts, model)?;
    let call = plan
        .calls
        .first()
        .ok_or_else(|| Error::Msg(format!("prompt set '{}' planned no joint call", set.name)))?;
    let system = call
        .chat_messages
        .first()
        .filter(|m| m.role == "system")
        .map(|m| m.content.clone())
        .ok_or_else(|| {
            Error::Msg(format!(
                "prompt set '{}': the joint call has no system message",
                set.name
            ))
        })?;
    // The thread the plan fitted into the context: it drops turns after the opening post.
    let mut shown = scenario.clone();
    let end = (1 + plan.dropped_turns).min(shown.turns.len());
    if end > 1 {
        shown.turns.drain(1..end);
    }
    let mut prompt = vec![Message {
        role: "system".into(),
        content: system,
        name: Some(String::new()),
    }];
    let mut raw = vec![json!({"role": "system", "name": "", "content": prompt[0].content})];
    for t in sim::thread_turns(&shown) {
        if t.role == "assistant" {
            raw.push(json!({"role": "assistant", "content": t.text}));
            prompt.push(Message::new("assistant", &t.text));
        } else {
            raw.push(json!({"role": "user", "name": t.author, "content": t.text}));
            prompt.push(Message {
                role: "user".into(),
                content: t.text,
                name: Some(t.author),
            });
        }
    }
    let source = scenario.source.clone().unwrap_or_default();
    Ok(Some(Row {
        data_source: scenario.domain.recipe_dataset().into(),
        prompt,
        ability: "generation".into(),
        style: "custom".into(),
        ground_truth: reply.clone(),
        extra: Extra {
            split: split.into(),
            index,
            name: sim::HUMAN.into(),
            post: None,
            state_name: state_name.clone(),
            persona: pyjson::dumps(&recipe_persona(scenario.persona.as_ref())),
            media_source: scenario.domain.platform().into(),
            target_user_id: scenario.user_id().to_string(),
            raw_prompt: pyjson::dumps(&Value::Array(raw)),
            post_metrics: metrics(scenario, "post_metrics", source.post_metrics.as_ref())?,
            comment_metrics: metrics(scenario, "comment_metrics", source.comment_metrics.as_ref())?,
            post_id: source.post_id.clone().unwrap_or_default(),
            // A reply to the post itself: the row's turn 1, or a hand-written thread of one turn.
            is_top_level: match source.turn_id {
                Some(t) => t == 1,
                None => scenario.turns.len() == 1,
            },
            scenario_id: scenario.id.clone(),
            domain: scenario.domain.name().into(),
            hierarchy_name: state_name,
            enable_thinking: call.thinking,
            prefill: call.prefill.clone(),
            stop: call.stop.clone(),
            max_tokens: call.budget as i64,
            prompt_text: call.prompt.clone(),
            prompt_set: set.name.clone(),
            prompt_hash: set.hash.clone(),
        },
    }))
}

fn first_state(set: &PromptSet) -> Result<String> {
    set.states
        .first()
        .map(|s| s.key.clone())
        .ok_or_else(|| Error::Msg(format!("prompt set '{}' has no states", set.name)))
}

/// Export every scenario under `scenarios` with a reference reply; others are skipped and
/// reported. Refuses to replace `out` unless `force`.
pub fn export_dataset(
    model: &Model,
    set: &PromptSet,
    scenarios: &Path,
    truncate: Truncate,
    split: &str,
    out: &Path,
    force: bool,
) -> Result<DatasetReport> {
    if out.exists() && !force {
        return Err(Error::File(
            out.to_path_buf(),
            "already exists (--force replaces it)".into(),
        ));
    }
    let mut rows = vec![];
    let mut skipped = vec![];
    for loaded in crate::scenario::load_all(scenarios) {
        let loaded = loaded?;
        let sc = &loaded.scenario;
        match scenario_row(model, set, sc, truncate, rows.len() as i64, split) {
            Ok(Some(r)) => rows.push(r),
            Ok(None) => skipped.push((sc.id.clone(), "no reference reply".to_string())),
            // A thread too long for the context is one example lost, not a failed export.
            Err(Error::Sim(e @ sim::Error::TooLong { .. })) => {
                skipped.push((sc.id.clone(), e.to_string()))
            }
            // A fault in the scenario's own fields: name its file.
            Err(Error::Msg(m)) => return Err(Error::File(loaded.path.clone(), m)),
            Err(e) => return Err(e),
        }
    }
    if rows.is_empty() {
        return Err(Error::File(
            scenarios.to_path_buf(),
            format!(
                "no scenario with a reference reply to export ({} skipped)",
                skipped.len()
            ),
        ));
    }
    write_parquet(&rows, out)?;
    Ok(DatasetReport {
        out: out.to_path_buf(),
        rows: rows.len(),
        skipped,
        prompt_set: set.name.clone(),
        prompt_hash: set.hash.clone(),
        state_name: first_state(set)?,
    })
}

/// The file's schema. Every field is required except a message's `name`; `prompt` uses the
/// standard three-level LIST layout, which pyarrow and HF datasets read as list<struct>.
pub const SCHEMA: &str = "
message verl_humanlm {
  required binary data_source (STRING);
  required group prompt (LIST) {
    repeated group list {
      required group element {
        required binary role (STRING);
        required binary content (STRING);
        optional binary name (STRING);
      }
    }
  }
  required binary ability (STRING);
  required group reward_model {
    required binary style (STRING);
    required binary ground_truth (STRING);
  }
  required group extra_info {
    required binary split (STRING);
    required int64 index;
    required binary name (STRING);
    optional binary post (STRING);
    required binary state_name (STRING);
    required binary persona (STRING);
    required binary media_source (STRING);
    required binary target_user_id (STRING);
    required binary raw_prompt (STRING);
    required binary post_metrics (STRING);
    required binary comment_metrics (STRING);
    required binary post_id (STRING);
    required boolean is_top_level;
    required binary scenario_id (STRING);
    required binary domain (STRING);
    required binary hierarchy_name (STRING);
    required boolean enable_thinking;
    required binary prefill (STRING);
    required binary stop (STRING);
    required int64 max_tokens;
    required binary prompt_text (STRING);
    required binary prompt_set (STRING);
    required binary prompt_hash (STRING);
  }
}
";

/// One leaf column's data: values with their definition and repetition levels (`None` for a
/// required column outside any list, where every row has exactly one value).
enum Column {
    Bytes(Vec<ByteArray>, Option<(Vec<i16>, Vec<i16>)>),
    /// Values and definition levels of an optional string outside any list.
    Optional(Vec<ByteArray>, Vec<i16>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
}

fn strings<'a>(rows: &'a [Row], f: impl Fn(&'a Row) -> &'a str) -> Column {
    Column::Bytes(rows.iter().map(|r| ByteArray::from(f(r))).collect(), None)
}

/// An optional string directly in a required group: definition 1 present, 0 null; no
/// repetition levels (the column is in no list).
fn optional_strings<'a>(rows: &'a [Row], f: impl Fn(&'a Row) -> Option<&'a str>) -> Column {
    let vals = rows
        .iter()
        .filter_map(|r| f(r).map(ByteArray::from))
        .collect();
    let def = rows.iter().map(|r| i16::from(f(r).is_some())).collect();
    Column::Optional(vals, def)
}

/// A leaf of `prompt.list.element`. Levels: repetition 0 starts a row's list, 1 continues it;
/// definition 1 is a present element (the list level), 2 a present optional `name`. An empty
/// list is one entry with definition 0 and no value.
fn message_column(rows: &[Row], f: impl Fn(&Message) -> Option<&str>, optional: bool) -> Column {
    let (mut vals, mut def, mut rep) = (vec![], vec![], vec![]);
    for r in rows {
        if r.prompt.is_empty() {
            def.push(0);
            rep.push(0);
            continue;
        }
        for (i, m) in r.prompt.iter().enumerate() {
            rep.push(if i == 0 { 0 } else { 1 });
            match f(m) {
                Some(v) => {
                    vals.push(ByteArray::from(v));
                    def.push(if optional { 2 } else { 1 });
                }
                None => def.push(1),
            }
        }
    }
    Column::Bytes(vals, Some((def, rep)))
}

/// The leaf columns in schema order.
fn columns(rows: &[Row]) -> Vec<Column> {
    vec![
        strings(rows, |r| &r.data_source),
        message_column(rows, |m| Some(&m.role), false),
        message_column(rows, |m| Some(&m.content), false),
        message_column(rows, |m| m.name.as_deref(), true),
        strings(rows, |r| &r.ability),
        strings(rows, |r| &r.style),
        strings(rows, |r| &r.ground_truth),
        strings(rows, |r| &r.extra.split),
        Column::Int(rows.iter().map(|r| r.extra.index).collect()),
        strings(rows, |r| &r.extra.name),
        optional_strings(rows, |r| r.extra.post.as_deref()),
        strings(rows, |r| &r.extra.state_name),
        strings(rows, |r| &r.extra.persona),
        strings(rows, |r| &r.extra.media_source),
        strings(rows, |r| &r.extra.target_user_id),
        strings(rows, |r| &r.extra.raw_prompt),
        strings(rows, |r| &r.extra.post_metrics),
        strings(rows, |r| &r.extra.comment_metrics),
        strings(rows, |r| &r.extra.post_id),
        Column::Bool(rows.iter().map(|r| r.extra.is_top_level).collect()),
        strings(rows, |r| &r.extra.scenario_id),
        strings(rows, |r| &r.extra.domain),
        strings(rows, |r| &r.extra.hierarchy_name),
        Column::Bool(rows.iter().map(|r| r.extra.enable_thinking).collect()),
        strings(rows, |r| &r.extra.prefill),
        strings(rows, |r| &r.extra.stop),
        Column::Int(rows.iter().map(|r| r.extra.max_tokens).collect()),
        strings(rows, |r| &r.extra.prompt_text),
        strings(rows, |r| &r.extra.prompt_set),
        strings(rows, |r| &r.extra.prompt_hash),
    ]
}

/// Write `rows` to `out`, atomically (`files::write_with`).
pub fn write_parquet(rows: &[Row], out: &Path) -> Result<()> {
    let fail = |e: parquet::errors::ParquetError| {
        Error::File(out.to_path_buf(), format!("cannot write Parquet: {e}"))
    };
    let schema = Arc::new(parquet::schema::parser::parse_message_type(SCHEMA).map_err(fail)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    crate::files::write_with(out, |file| -> Result<()> {
        let mut writer = SerializedFileWriter::new(file, schema, props).map_err(fail)?;
        let mut group = writer.next_row_group().map_err(fail)?;
        for col in columns(rows) {
            let mut w = group
                .next_column()
                .map_err(fail)?
                .ok_or_else(|| Error::Msg("more columns than the schema has".into()))?;
            match col {
                Column::Bytes(v, levels) => {
                    let (def, rep) = match &levels {
                        Some((d, r)) => (Some(d.as_slice()), Some(r.as_slice())),
                        None => (None, None),
                    };
                    w.typed::<ByteArrayType>()
                        .write_batch(&v, def, rep)
                        .map_err(fail)?;
                }
                Column::Optional(v, def) => {
                    w.typed::<ByteArrayType>()
                        .write_batch(&v, Some(&def), None)
                        .map_err(fail)?;
                }
                Column::Int(v) => {
                    w.typed::<Int64Type>()
                        .write_batch(&v, None, None)
                        .map_err(fail)?;
                }
                Column::Bool(v) => {
                    w.typed::<BoolType>()
                        .write_batch(&v, None, None)
                        .map_err(fail)?;
                }
            }
            w.close().map_err(fail)?;
        }
        if group.next_column().map_err(fail)?.is_some() {
            return Err(Error::Msg("fewer columns than the schema has".into()));
        }
        group.close().map_err(fail)?;
        writer.close().map_err(fail)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Demographics;

    #[test]
    fn personas_take_the_recipes_shape() {
        assert_eq!(pyjson::dumps(&recipe_persona(None)), r#""""#);
        let text = Persona {
            text: Some("A user who is chatting with an AI assistant.".into()),
            ..Default::default()
        };
        assert_eq!(
            pyjson::dumps(&recipe_persona(Some(&text))),
            r#""A user who is chatting with an AI assistant.""#
        );
        let p = Persona {
            demographics: Some(Demographics {
                age_group: Some("25-34".into()),
                location: Some("NA".into()),
                ..Default::default()
            }),
            interests: vec!["café".into()],
            statistics: vec!["40 a month".into()],
            ..Default::default()
        };
        assert_eq!(
            pyjson::dumps(&recipe_persona(Some(&p))),
            r#"{"demographics": {"age group": "25-34", "location": "NA"}, "interests": ["caf\u00e9"], "statistics": ["40 a month"]}"#
        );
    }
}
