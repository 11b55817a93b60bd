//! `humanlm export-dataset --format verl`: scenarios as the rows of the HumanLM verl recipe.
//!
//! The recipe trains on one Parquet row per (example, state): `prompt` is the chat (a list of
//! `{role, content, name}` messages; `name` labels thread authors, the recipe's multi-role
//! template reads it), `reward_model.ground_truth` is the person's real reply (every state is
//! judged against it), and `extra_info` says which state the row asks for. Each row's messages
//! come from `sim::plan`, so they are exactly what this simulator sends for that call; the
//! rendered text (chat template and pre-filled tag included) is kept beside them as
//! `extra_info.raw_prompt`, for trainers that take a finished prompt string.
//!
//! Written with the parquet crate's column writer (no Arrow): the only nested column is
//! `prompt`, a list of structs, whose levels are spelled out in `write_rows`.

use super::{Error, Result};
use crate::model::chat::Message;
use crate::model::Model;
use crate::prompts::PromptSet;
use crate::scenario::Scenario;
use crate::sim::{self, Mode, Options, SamplingChoice, Truncate};
use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Parse `--states` against the set's `states.toml`: `all`, or a comma-separated list of keys
/// or their one-letter names (each key's first letter, where no other key shares it: `s,e,b,v,g,c,r`
/// for the method's). Returns keys in the set's generation order, whatever order they were named
/// in.
pub fn parse_states(spec: &str, set: &PromptSet) -> std::result::Result<Vec<String>, String> {
    let keys: Vec<&str> = set.states.iter().map(|s| s.key.as_str()).collect();
    let letter = |k: &str| {
        k.chars()
            .next()
            .filter(|c| keys.iter().filter(|o| o.starts_with(*c)).count() == 1)
    };
    if spec.trim() == "all" {
        return Ok(keys.iter().map(|k| k.to_string()).collect());
    }
    let mut out: Vec<String> = vec![];
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let key = keys
            .iter()
            .find(|k| {
                **k == part || (part.chars().count() == 1 && letter(k) == part.chars().next())
            })
            .map(|k| k.to_string())
            .ok_or_else(|| {
                let letters: Vec<String> = keys
                    .iter()
                    .filter_map(|k| letter(k))
                    .map(String::from)
                    .collect();
                format!(
                    "unknown state '{part}' (expected {}, their full names, or all)",
                    letters.join(",")
                )
            })?;
        if !out.contains(&key) {
            out.push(key);
        }
    }
    if out.is_empty() {
        return Err("no states given".into());
    }
    out.sort_by_key(|k| keys.iter().position(|n| n == k));
    Ok(out)
}

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

/// `extra_info` of a row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Extra {
    /// The scenario's position among the exported ones: the rows of one example share it.
    pub index: i64,
    pub split: String,
    pub scenario_id: String,
    pub domain: String,
    pub state_name: String,
    /// The same, under the name the recipe's reward manager reads.
    pub hierarchy_name: String,
    /// Who the model speaks as (the recipe's `speak_as`).
    pub name: String,
    /// The scenario's persona as JSON (`{}` when it has none).
    pub persona: String,
    pub enable_thinking: bool,
    /// The opening tag the set pre-fills after the generation prompt ("" if none).
    pub prefill: String,
    pub stop: String,
    pub max_tokens: i64,
    pub raw_prompt: String,
    pub prompt_set: String,
    pub prompt_hash: String,
}

/// What an export wrote and what it left out.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatasetReport {
    pub out: PathBuf,
    pub rows: usize,
    pub scenarios: usize,
    /// (scenario id or file, why).
    pub skipped: Vec<(String, String)>,
    pub prompt_set: String,
    pub prompt_hash: String,
}

/// The rows of one scenario, one per state in `states`, as `sim::plan` renders its calls in
/// humanlm mode. `None` when the scenario has no reference reply.
pub fn scenario_rows(
    model: &Model,
    set: &PromptSet,
    scenario: &Scenario,
    states: &[String],
    truncate: Truncate,
    index: i64,
    split: &str,
) -> Result<Option<Vec<Row>>> {
    let Some(reply) = scenario
        .target
        .response
        .as_ref()
        .filter(|r| !r.trim().is_empty())
    else {
        return Ok(None);
    };
    let opts = Options {
        mode: Mode::Humanlm,
        // No cap below each state's own budget: the rows carry the set's limits.
        params: SamplingChoice::default().params(set),
        truncate,
    };
    let plan = sim::plan(set, scenario, &opts, model)?;
    let persona = match &scenario.persona {
        Some(p) => serde_json::to_string(p).unwrap_or_default(),
        None => "{}".into(),
    };
    let mut rows = vec![];
    for key in states {
        let call =
            plan.calls.iter().find(|c| &c.name == key).ok_or_else(|| {
                Error::Msg(format!("prompt set '{}' has no state '{key}'", set.name))
            })?;
        rows.push(Row {
            data_source: format!("humanlm/{}", scenario.domain.name()),
            prompt: call.chat_messages.clone(),
            ability: "user_simulation".into(),
            // Scored by an LLM judge against the real reply, not by a rule.
            style: "model".into(),
            ground_truth: reply.clone(),
            extra: Extra {
                index,
                split: split.into(),
                scenario_id: scenario.id.clone(),
                domain: scenario.domain.name().into(),
                state_name: key.clone(),
                hierarchy_name: key.clone(),
                name: sim::HUMAN.into(),
                persona: persona.clone(),
                enable_thinking: call.thinking,
                prefill: call.prefill.clone(),
                stop: call.stop.clone(),
                max_tokens: call.budget as i64,
                raw_prompt: call.prompt.clone(),
                prompt_set: set.name.clone(),
                prompt_hash: set.hash.clone(),
            },
        });
    }
    Ok(Some(rows))
}

/// Export every scenario under `scenarios` with a reference reply; others are skipped and
/// reported. Refuses to replace `out` unless `force`.
#[allow(clippy::too_many_arguments)]
pub fn export_dataset(
    model: &Model,
    set: &PromptSet,
    scenarios: &Path,
    states: &[String],
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
    let mut exported = 0;
    for loaded in crate::scenario::load_all(scenarios) {
        let loaded = loaded?;
        let sc = &loaded.scenario;
        match scenario_rows(model, set, sc, states, truncate, exported as i64, split) {
            Ok(Some(r)) => {
                rows.extend(r);
                exported += 1;
            }
            Ok(None) => skipped.push((sc.id.clone(), "no reference reply".to_string())),
            // A thread too long for the context is one example lost, not a failed export.
            Err(Error::Sim(e @ sim::Error::TooLong { .. })) => {
                skipped.push((sc.id.clone(), e.to_string()))
            }
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
        scenarios: exported,
        skipped,
        prompt_set: set.name.clone(),
        prompt_hash: set.hash.clone(),
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
    required int64 index;
    required binary split (STRING);
    required binary scenario_id (STRING);
    required binary domain (STRING);
    required binary state_name (STRING);
    required binary hierarchy_name (STRING);
    required binary name (STRING);
    required binary persona (STRING);
    required boolean enable_thinking;
    required binary prefill (STRING);
    required binary stop (STRING);
    required int64 max_tokens;
    required binary raw_prompt (STRING);
    required binary prompt_set (STRING);
    required binary prompt_hash (STRING);
  }
}
";

/// One leaf column's data: values with their definition and repetition levels (`None` for a
/// required column outside any list, where every row has exactly one value).
enum Column {
    Bytes(Vec<ByteArray>, Option<(Vec<i16>, Vec<i16>)>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
}

fn strings<'a>(rows: &'a [Row], f: impl Fn(&'a Row) -> &'a str) -> Column {
    Column::Bytes(rows.iter().map(|r| ByteArray::from(f(r))).collect(), None)
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
        Column::Int(rows.iter().map(|r| r.extra.index).collect()),
        strings(rows, |r| &r.extra.split),
        strings(rows, |r| &r.extra.scenario_id),
        strings(rows, |r| &r.extra.domain),
        strings(rows, |r| &r.extra.state_name),
        strings(rows, |r| &r.extra.hierarchy_name),
        strings(rows, |r| &r.extra.name),
        strings(rows, |r| &r.extra.persona),
        Column::Bool(rows.iter().map(|r| r.extra.enable_thinking).collect()),
        strings(rows, |r| &r.extra.prefill),
        strings(rows, |r| &r.extra.stop),
        Column::Int(rows.iter().map(|r| r.extra.max_tokens).collect()),
        strings(rows, |r| &r.extra.raw_prompt),
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

    fn shipped(name: &str) -> PromptSet {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
        PromptSet::load(name, &root).unwrap()
    }

    #[test]
    fn states_are_named_by_the_sets_keys_and_their_letters() {
        let set = shipped("humanlm");
        let keys: Vec<String> = set.states.iter().map(|s| s.key.clone()).collect();
        assert_eq!(parse_states("all", &set).unwrap(), keys);
        // Letters or names, in any order and repeated: the set's order, once each.
        assert_eq!(
            parse_states("r,b,belief", &set).unwrap(),
            vec!["belief".to_string(), "response".to_string()]
        );
        let err = parse_states("s,q", &set).unwrap_err();
        assert_eq!(
            err,
            "unknown state 'q' (expected s,e,b,v,g,c,r, their full names, or all)"
        );
        assert_eq!(parse_states(" , ", &set).unwrap_err(), "no states given");
    }
}
