//! Prompt sets: the state configuration and every template, as editable files under
//! `prompts/<set>/`, rendered by minijinja.
//!
//! Templates render with strict undefined variables and are test-rendered when the set loads,
//! so a misspelt variable fails at load with the file and line rather than producing a prompt
//! with a hole in it. Every set has a hash over its files; each rendered prompt carries it.

use crate::model::chat::ChatTemplate;
use crate::scenario::Persona;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}{}: {msg}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    File {
        path: PathBuf,
        line: Option<usize>,
        msg: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn err(path: &Path, msg: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        line: None,
        msg: msg.into(),
    }
}

/// One state dimension (or the response): its tag, what it asks for, and its token budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    pub key: String,
    pub description: String,
    pub max_tokens: usize,
    /// Budget when thinking is on (the response); defaults to `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_thinking: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatesFile {
    state: Vec<StateSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFile {
    description: String,
    chat_template: String,
}

/// The files every set provides, besides `set.toml` and `states.toml`.
const TEMPLATES: [&str; 2] = ["persona.jinja", "system.jinja"];

/// Where prompt sets live unless a path is given.
pub fn default_root() -> PathBuf {
    std::env::var_os("HUMANLM_PROMPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("prompts"))
}

pub const DEFAULT_SET: &str = "humanlm";

/// A loaded prompt set.
#[derive(Debug)]
pub struct PromptSet {
    pub name: String,
    pub dir: PathBuf,
    pub description: String,
    /// The six states then `response`, in generation order.
    pub states: Vec<StateSpec>,
    pub chat: ChatTemplate,
    /// First 12 hex digits of the sha256 over the set's files (names and contents).
    pub hash: String,
    env: minijinja::Environment<'static>,
}

impl PromptSet {
    /// Load a set by name (a folder under `root`) or path.
    pub fn load(spec: &str, root: &Path) -> Result<PromptSet> {
        let dir = if Path::new(spec).is_dir() {
            PathBuf::from(spec)
        } else {
            root.join(spec)
        };
        if !dir.is_dir() {
            return Err(err(&dir, format!("prompt set '{spec}' not found")));
        }
        let read = |name: &str| -> Result<(PathBuf, String)> {
            let p = dir.join(name);
            let text =
                std::fs::read_to_string(&p).map_err(|e| err(&p, format!("cannot read: {e}")))?;
            Ok((p, text))
        };
        let toml_err = |p: &Path, text: &str, e: toml::de::Error| Error::File {
            path: p.to_path_buf(),
            line: e.span().map(|s| text[..s.start].matches('\n').count() + 1),
            msg: e.message().trim().replace('\n', " "),
        };
        let (set_path, set_text) = read("set.toml")?;
        let set: SetFile =
            toml::from_str(&set_text).map_err(|e| toml_err(&set_path, &set_text, e))?;
        let (states_path, states_text) = read("states.toml")?;
        let states: StatesFile =
            toml::from_str(&states_text).map_err(|e| toml_err(&states_path, &states_text, e))?;
        let states = states.state;
        if states.last().map(|s| s.key.as_str()) != Some("response") {
            return Err(err(&states_path, "the last [[state]] must be `response`"));
        }
        let mut hasher = Sha256::new();
        let mut files = vec![
            ("set.toml".to_string(), set_text.clone()),
            ("states.toml".to_string(), states_text.clone()),
        ];
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        for name in TEMPLATES {
            let (p, text) = read(name)?;
            env.add_template_owned(name.to_string(), text.clone())
                .map_err(|e| jinja_err(&p, &e))?;
            files.push((name.to_string(), text));
        }
        let (chat_path, chat_text) = read(&set.chat_template)?;
        files.push((set.chat_template.clone(), chat_text.clone()));
        for (name, text) in &files {
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.update([0]);
        }
        let hash: String = hasher
            .finalize()
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        let chat = ChatTemplate::new(&chat_text, &chat_path, "", "<|im_end|>")
            .map_err(|e| err(&chat_path, e.to_string()))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.to_string());
        let set = PromptSet {
            name,
            dir: dir.clone(),
            description: set.description,
            states,
            chat,
            hash,
            env,
        };
        set.self_check()?;
        Ok(set)
    }

    /// Render every template once with full and empty inputs: unknown variables fail here.
    fn self_check(&self) -> Result<()> {
        let full = Persona {
            text: None,
            demographics: Some(Default::default()),
            interests: vec!["x".into()],
            values: vec!["x".into()],
            communication: vec!["x".into()],
            statistics: vec!["x".into()],
        };
        self.persona(Some(&full))?;
        self.persona(Some(&Persona {
            text: Some("x".into()),
            ..Default::default()
        }))?;
        self.persona(None)?;
        self.system("x", &self.states.iter().collect::<Vec<_>>())?;
        Ok(())
    }

    fn render(&self, name: &str, ctx: serde_json::Value) -> Result<String> {
        let path = self.dir.join(name);
        let t = self
            .env
            .get_template(name)
            .map_err(|e| jinja_err(&path, &e))?;
        t.render(minijinja::Value::from_serialize(&ctx))
            .map_err(|e| jinja_err(&path, &e))
    }

    /// The persona block of the system prompt ("Missing" when there is none).
    pub fn persona(&self, persona: Option<&Persona>) -> Result<String> {
        // Every field present (null or empty when unset), so templates can test any of them
        // under strict undefined-variable checking.
        let value = persona.map(|p| {
            let d = p.demographics.clone().unwrap_or_default();
            serde_json::json!({
                "text": p.text,
                "demographics": {
                    "age_group": d.age_group, "gender": d.gender, "location": d.location,
                    "occupation": d.occupation, "nationality": d.nationality, "other": d.other,
                },
                "interests": p.interests,
                "values": p.values,
                "communication": p.communication,
                "statistics": p.statistics,
            })
        });
        self.render("persona.jinja", serde_json::json!({ "persona": value }))
    }

    /// The system prompt asking for `states` (in order) for the given rendered persona.
    pub fn system(&self, persona: &str, states: &[&StateSpec]) -> Result<String> {
        self.render(
            "system.jinja",
            serde_json::json!({ "persona": persona, "states": states }),
        )
    }

    pub fn state(&self, key: &str) -> Option<&StateSpec> {
        self.states.iter().find(|s| s.key == key)
    }

    /// The six state dimensions (everything but the response).
    pub fn dimensions(&self) -> impl Iterator<Item = &StateSpec> {
        self.states.iter().filter(|s| s.key != "response")
    }
}

fn jinja_err(path: &Path, e: &minijinja::Error) -> Error {
    Error::File {
        path: path.to_path_buf(),
        line: e.line(),
        msg: e
            .detail()
            .map(str::to_string)
            .unwrap_or_else(|| e.kind().to_string()),
    }
}

/// Names of the sets under `root`.
pub fn list(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("set.toml").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
