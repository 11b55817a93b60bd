//! Thread scenarios: the schema of a scenario file, loading and validation.
//!
//! One TOML file per scenario. The field names are a contract shared with other tools (and the
//! HUMANUAL importer), so unknown fields are refused rather than ignored: a typo in a hand-written
//! file would otherwise silently drop a persona or a reference reply.

pub mod import;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem in one file, with the position when the parser knows it.
    #[error("{}{}: {msg}", path.display(), pos.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    File {
        path: PathBuf,
        pos: Option<(usize, usize)>,
        msg: String,
    },
}

impl Error {
    fn at(path: &Path, msg: impl Into<String>) -> Error {
        Error::File {
            path: path.to_path_buf(),
            pos: None,
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The kinds of thread the workbench knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    Opinion,
    Politics,
    News,
    Book,
    Chat,
    Email,
}

impl Domain {
    pub const ALL: [Domain; 6] = [
        Domain::Opinion,
        Domain::Politics,
        Domain::News,
        Domain::Book,
        Domain::Chat,
        Domain::Email,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Domain::Opinion => "opinion",
            Domain::Politics => "politics",
            Domain::News => "news",
            Domain::Book => "book",
            Domain::Chat => "chat",
            Domain::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Domain> {
        Domain::ALL.into_iter().find(|d| d.name() == s)
    }

    /// The HumanLM recipe's `--dataset` name for the domain's HUMANUAL dataset (its
    /// `data_source` column).
    pub fn recipe_dataset(self) -> &'static str {
        match self {
            Domain::Opinion => "reddit",
            Domain::Book => "amazon",
            Domain::News => "youtube",
            Domain::Politics => "medium",
            Domain::Chat => "wildchat_english",
            Domain::Email => "enron",
        }
    }

    /// The platform the recipe names in its prompts and `extra_info.media_source`.
    pub fn platform(self) -> &'static str {
        match self {
            Domain::Opinion => "Reddit",
            Domain::Book => "Amazon",
            Domain::News => "Youtube",
            Domain::Politics => "Medium",
            Domain::Chat => "WildChat",
            Domain::Email => "Enron",
        }
    }
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Who a turn belongs to in the chat format: people are `user`, an AI assistant is `assistant`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    User,
    Assistant,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demographics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occupation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nationality: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other: Option<String>,
}

/// Who the simulated person is: free text, or structured sections (not both).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "demographics_table"
    )]
    pub demographics: Option<Demographics>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interests: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communication: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statistics: Vec<String>,
}

/// Demographics only as a table: serde would also take a list and assign its items to the
/// fields in declaration order, silently making `["male", "30s"]` a gender of "30s".
fn demographics_table<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Demographics>, D::Error> {
    struct Table;
    impl<'de> serde::de::Visitor<'de> for Table {
        type Value = Demographics;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(
                "a table (age_group, gender, location, occupation, nationality, other) for \
                 persona.demographics",
            )
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            map: A,
        ) -> std::result::Result<Demographics, A::Error> {
            Demographics::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_map(Table).map(Some)
}

impl Persona {
    /// The persona as the HumanLM recipe's rows hold it (what its `format_persona` reads and
    /// its `extra_info.persona` dumps): a text persona as a string; a structured one as the
    /// persona generator's object, `demographics` under its key names (`age group`, …) then
    /// the four lists, with only the parts this persona has.
    pub fn recipe_value(&self) -> serde_json::Value {
        use serde_json::Value;
        if let Some(t) = &self.text {
            return Value::String(t.clone());
        }
        let mut out = serde_json::Map::new();
        if let Some(d) = &self.demographics {
            let mut demo = serde_json::Map::new();
            for (k, v) in [
                ("age group", &d.age_group),
                ("gender", &d.gender),
                ("location", &d.location),
                ("occupation", &d.occupation),
                ("nationality", &d.nationality),
                ("other", &d.other),
            ] {
                if let Some(v) = v {
                    demo.insert(k.into(), Value::String(v.clone()));
                }
            }
            out.insert("demographics".into(), Value::Object(demo));
        }
        for (k, v) in [
            ("interests", &self.interests),
            ("values", &self.values),
            ("communication", &self.communication),
            ("statistics", &self.statistics),
        ] {
            if !v.is_empty() {
                out.insert(k.into(), serde_json::json!(v));
            }
        }
        Value::Object(out)
    }

    fn is_structured(&self) -> bool {
        self.demographics.is_some()
            || !self.interests.is_empty()
            || !self.values.is_empty()
            || !self.communication.is_empty()
            || !self.statistics.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    pub author: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "is_user")]
    pub role: Role,
}

fn is_user(r: &Role) -> bool {
    *r == Role::User
}

/// Whose next reply is simulated, and what they really wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub author: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

/// A row's timestamp as the dataset wrote it: an integer (the builders' UTC seconds, Amazon's
/// milliseconds), or the original JSON value's text for anything else (a float `created_utc`,
/// a date string), so nothing is lost by forcing one type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Timestamp {
    Int(i64),
    Text(String),
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Timestamp::Int(i) => write!(f, "{i}"),
            Timestamp::Text(t) => f.write_str(t),
        }
    }
}

/// Where a scenario comes from. A hand-written file says so in a line (`source = "..."`, read
/// as `note`); an imported HUMANUAL row keeps its identity as a table, which `export-dataset`
/// writes back into the recipe's `extra_info` (post id, user id, metrics, top-level or not).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The recipe's `--dataset` name (reddit, amazon, youtube, medium, wildchat_english, enron).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// The name of the file the row was imported from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The row's number in that file as the importer counts it (1-based; a JSONL file's line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    /// The row's `turn_id` (`len(prompt)`: 1 is a reply to the post itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<i64>,
    /// The JSON text of the post's `metadata.post_metrics` (as Python's `json.dumps` writes it),
    /// only when the row has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_metrics: Option<String>,
    /// The JSON text of the row `metadata.comment_metrics`, only when the row has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment_metrics: Option<String>,
}

impl Source {
    /// A source that is only a note (the one-line form).
    pub fn note(text: &str) -> Source {
        Source {
            note: Some(text.to_string()),
            ..Default::default()
        }
    }

    fn is_note_only(&self) -> bool {
        self.note.is_some()
            && Source {
                note: None,
                ..self.clone()
            } == Source::default()
    }

    /// One line for listings: the note, then the row's identity (`reddit test.jsonl row 3,
    /// post abc, user u, turn 2, time 1700000000`), what of it there is.
    pub fn summary(&self) -> String {
        let mut head: Vec<String> = vec![];
        head.extend(self.dataset.clone());
        head.extend(self.file.clone());
        if let Some(r) = self.row {
            head.push(format!("row {r}"));
        }
        let mut parts: Vec<String> = vec![];
        parts.extend(self.note.clone());
        if !head.is_empty() {
            parts.push(head.join(" "));
        }
        for (label, v) in [
            ("post", self.post_id.clone()),
            ("user", self.user_id.clone()),
            ("turn", self.turn_id.map(|t| t.to_string())),
            ("time", self.timestamp.as_ref().map(|t| t.to_string())),
        ] {
            if let Some(v) = v {
                parts.push(format!("{label} {v}"));
            }
        }
        if self.post_metrics.is_some() || self.comment_metrics.is_some() {
            parts.push("with metrics".into());
        }
        parts.join(", ")
    }
}

/// `source` as a line (a note) or a table. A note-only source is written back as a line, so a
/// hand-written file keeps its shape through a load and save.
mod source_field {
    use super::Source;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Source>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(src) if src.is_note_only() => s.serialize_str(src.note.as_deref().unwrap_or("")),
            Some(src) => src.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Source>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Source;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a line of text, or a table (note, dataset, file, row, post_id, user_id, \
                     timestamp, turn_id, post_metrics, comment_metrics) for source",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Source, E> {
                Ok(Source::note(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Source, A::Error> {
                Source::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_any(V).map(Some)
    }
}

/// One scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub id: String,
    pub domain: Domain,
    pub title: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "source_field"
    )]
    pub source: Option<Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persona: Option<Persona>,
    #[serde(default)]
    pub turns: Vec<Turn>,
    pub target: Target,
    /// How the thread goes on as a conversation (`humanlm converse`); a chat scenario without
    /// the table can still be continued with the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<Conversation>,
}

/// Who speaks in a conversation: the simulated user or the assistant it talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    User,
    Assistant,
}

impl Speaker {
    pub fn name(self) -> &'static str {
        match self {
            Speaker::User => "user",
            Speaker::Assistant => "assistant",
        }
    }

    pub fn other(self) -> Speaker {
        match self {
            Speaker::User => Speaker::Assistant,
            Speaker::Assistant => Speaker::User,
        }
    }
}

/// The most turns a conversation may be given: far beyond any context the workbench runs, so
/// a larger number is a typo.
pub const MAX_TURNS_LIMIT: usize = 1000;

/// UserLM's marker for "the user has ended the conversation", the default end marker.
pub const DEFAULT_END_MARKER: &str = "<|endconversation|>";

/// The `[conversation]` table: what the simulated user wants and how the conversation ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conversation {
    /// What the simulated user wants from the conversation, shown to the simulator beside the
    /// persona (free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// Who writes the first new turn; default: whoever did not write the thread's last turn
    /// (the user when the thread is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opens: Option<Speaker>,
    /// New turns (both sides together) before the conversation is ended as `max-turns`.
    #[serde(default = "default_max_turns")]
    pub max_turns: usize,
    /// Text that, written by the simulated user, ends the conversation (default: UserLM's
    /// `<|endconversation|>`; `[]` for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_markers: Option<Vec<String>>,
    /// Text that, written by the assistant, ends the conversation (e.g. a hand-off).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assistant_end_markers: Vec<String>,
    /// The assistant's system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assistant_system: Option<String>,
    /// The intent counts as addressed once an assistant turn contains one of these (case
    /// insensitive); a user who ends before that has ended early.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addressed_when: Vec<String>,
}

fn default_max_turns() -> usize {
    10
}

impl Default for Conversation {
    fn default() -> Self {
        Conversation {
            intent: None,
            opens: None,
            max_turns: default_max_turns(),
            end_markers: None,
            assistant_end_markers: vec![],
            assistant_system: None,
            addressed_when: vec![],
        }
    }
}

impl Conversation {
    /// The user's end markers, the default when the table names none.
    pub fn user_end_markers(&self) -> Vec<String> {
        self.end_markers
            .clone()
            .unwrap_or_else(|| vec![DEFAULT_END_MARKER.to_string()])
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.max_turns == 0 || self.max_turns > MAX_TURNS_LIMIT {
            return Err(format!(
                "conversation.max_turns is {}: give a number from 1 to {MAX_TURNS_LIMIT}",
                self.max_turns
            ));
        }
        let markers = self.user_end_markers();
        for (field, list) in [
            ("end_markers", &markers),
            ("assistant_end_markers", &self.assistant_end_markers),
            ("addressed_when", &self.addressed_when),
        ] {
            if list.iter().any(|m| m.trim().is_empty()) {
                return Err(format!("conversation.{field} holds an empty string"));
            }
        }
        if self.intent.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err("conversation.intent is empty (leave it out instead)".into());
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

impl Scenario {
    /// The simulated person's id in the data: the imported row's `user_id`, else the target's
    /// author (the recipe's `target_user_id`).
    pub fn user_id(&self) -> &str {
        self.source
            .as_ref()
            .and_then(|s| s.user_id.as_deref())
            .unwrap_or(&self.target.author)
    }

    /// Parse and validate scenario TOML; `path` names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Scenario> {
        let sc: Scenario = toml::from_str(text).map_err(|e| Error::File {
            path: path.to_path_buf(),
            pos: e.span().map(|s| line_col(text, s.start)),
            msg: e.message().trim().replace('\n', " "),
        })?;
        sc.validate(path)?;
        Ok(sc)
    }

    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::at(path, format!("cannot read: {e}")))?;
        Self::from_toml(&text, path)
    }

    /// The checks serde cannot express.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::at(path, m));
        if self.id.trim().is_empty() || self.id.chars().any(char::is_whitespace) {
            return bad(format!(
                "id '{}' must be non-empty and without spaces",
                self.id
            ));
        }
        if self.title.trim().is_empty() {
            return bad("title is empty".into());
        }
        // A conversation may start from nothing: its user (or assistant) opens it.
        if self.turns.is_empty() && self.conversation.is_none() {
            return bad(
                "the thread is empty: add at least one [[turns]] (or a [conversation] table, \
                 for a conversation that starts from nothing)"
                    .into(),
            );
        }
        if let Some(c) = &self.conversation {
            c.validate().or_else(bad)?;
        }
        for (i, t) in self.turns.iter().enumerate() {
            if t.author.trim().is_empty() {
                return bad(format!("turn {}: author is empty", i + 1));
            }
            if t.text.trim().is_empty() {
                return bad(format!("turn {} by '{}': text is empty", i + 1, t.author));
            }
        }
        if self.target.author.trim().is_empty() {
            return bad("target.author is empty".into());
        }
        if let Some(p) = &self.persona {
            if p.text.is_some() && p.is_structured() {
                return bad(
                    "persona: give either `text` or the structured sections, not both".into(),
                );
            }
        }
        Ok(())
    }

    /// Whether the target wrote earlier turns of the thread.
    pub fn target_in_thread(&self) -> bool {
        self.turns.iter().any(|t| t.author == self.target.author)
    }

    /// Rough size of the thread in words (for listings; token counts need a tokenizer).
    pub fn words(&self) -> usize {
        self.turns
            .iter()
            .map(|t| t.text.split_whitespace().count())
            .sum()
    }
}

/// A scenario and the file it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub scenario: Scenario,
}

/// Every `*.toml` below `path` (or `path` itself), sorted; each file loaded or its error.
/// Duplicate ids are reported as errors on the later file.
pub fn load_all(path: &Path) -> Vec<Result<Loaded>> {
    let mut files = vec![];
    if path.is_file() {
        files.push(path.to_path_buf());
    } else if path.is_dir() {
        collect(path, &mut files);
    } else {
        return vec![Err(Error::at(path, "no such file or folder"))];
    }
    files.sort();
    let mut seen: std::collections::HashMap<String, PathBuf> = Default::default();
    files
        .into_iter()
        .map(|f| {
            let sc = Scenario::load(&f)?;
            if let Some(first) = seen.get(&sc.id) {
                return Err(Error::at(
                    &f,
                    format!("duplicate id '{}' (also in {})", sc.id, first.display()),
                ));
            }
            seen.insert(sc.id.clone(), f.clone());
            Ok(Loaded {
                path: f,
                scenario: sc,
            })
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

/// Find a scenario by id under `root`, or load it from a path.
pub fn find(spec: &str, root: &Path) -> Result<Loaded> {
    let p = Path::new(spec);
    if p.is_file() {
        return Ok(Loaded {
            path: p.to_path_buf(),
            scenario: Scenario::load(p)?,
        });
    }
    for l in load_all(root).into_iter().flatten() {
        if l.scenario.id == spec {
            return Ok(l);
        }
    }
    Err(Error::at(
        p,
        format!(
            "no scenario file and no scenario with this id under {}",
            root.display()
        ),
    ))
}
