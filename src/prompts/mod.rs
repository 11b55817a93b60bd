//! Prompt sets: the state configuration and every template, as editable files under
//! `prompts/<set>/`, rendered by minijinja.
//!
//! Templates render with strict undefined variables and are test-rendered when the set loads,
//! so a misspelt variable fails at load with the file and line rather than producing a prompt
//! with a hole in it. Every set has a hash over its files; each rendered prompt carries it.

pub mod pyformat;
pub mod recipe;

use crate::model::chat::ChatTemplate;
use crate::scenario::Persona;
use pyformat::PyFormat;
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

/// The key of the reply in every set's `states.toml` (its last entry): the reply is generated and
/// judged like a state, and its call is named after it.
pub const RESPONSE: &str = "response";

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
    /// A set whose files fill in whatever this folder lacks (a sibling folder's name).
    #[serde(default)]
    inherits: Option<String>,
    /// The chat template file; absent means the checkpoint's own template.
    #[serde(default)]
    chat_template: Option<String>,
    #[serde(default)]
    layout: Layout,
    #[serde(default)]
    prefill_tag: bool,
    #[serde(default = "yes")]
    response_thinking: bool,
    #[serde(default)]
    untagged_reply: bool,
    #[serde(default)]
    sampling: SamplingDefaults,
    /// System prompts written as the HumanLM recipe's Python format strings (a set made by
    /// `prompts import`), in place of `system.jinja`.
    #[serde(default)]
    recipe: Option<RecipeFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    /// The prompt the recipe stores in every dataset row (all states).
    dataset_prompt: String,
    /// Per state, the prompt its StateDataset swaps in for that state's generation.
    #[serde(default)]
    state_prompts: std::collections::BTreeMap<String, String>,
    /// The recipe's batched judge prompt, its extra guideline and its generations block
    /// (`metrics/state_reward.py`), in place of `judge.jinja`.
    judge_prompt: String,
    judge_guidelines: String,
    judge_generations: String,
    /// The recipe's response-level judge (`metrics/state_reward_on_response.py`: one reply
    /// scored on every state) and its block around the reply, in place of
    /// `judge_aspects.jinja`; both or neither (older recipe checkouts lack the file).
    #[serde(default)]
    judge_aspects: Option<String>,
    #[serde(default)]
    judge_aspects_generation: Option<String>,
}

/// A recipe set's system prompts, parsed.
#[derive(Debug)]
struct RecipeSystem {
    dataset: PyFormat,
    states: Vec<(String, PyFormat)>,
    judge: PyFormat,
    guidelines: PyFormat,
    generations: PyFormat,
    /// The response-level judge and its reply block, where the set has them.
    aspects: Option<(PyFormat, PyFormat)>,
}

/// Who the system prompt is written for, beyond the persona: what the recipe fills its prompts
/// with. Jinja sets do not use it.
#[derive(Debug, Clone, Default)]
pub struct SystemContext {
    /// The simulated person's id in the data (the recipe's `target_user_id`).
    pub user_id: String,
    /// The thread's platform as the recipe names it (`media_source`: Reddit, Amazon, …).
    pub platform: String,
}

fn yes() -> bool {
    true
}

/// How a thread becomes chat messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// HumanLM: every turn is its own named message and the model speaks as HUMAN in the user
    /// role (for simulators trained on it).
    #[default]
    Thread,
    /// One system message and one user message holding the whole thread (`task.jinja`); the
    /// model answers as the assistant (for general instruct models).
    Transcript,
}

/// Sampling settings a set recommends; command-line flags override them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub no_repeat_ngram: Option<usize>,
}

/// One turn of a thread as templates see it (the target already relabelled HUMAN).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThreadTurn {
    pub author: String,
    /// `user` or `assistant`.
    pub role: String,
    pub text: String,
}

/// The templates every set provides (itself or through `inherits`), besides the state file.
const TEMPLATES: [&str; 6] = [
    "persona.jinja",
    "system.jinja",
    "thread.jinja",
    "judge.jinja",
    "judge_aspects.jinja",
    "trace.jinja",
];
/// Only the transcript layout renders the thread into one user message.
const TRANSCRIPT_TEMPLATE: &str = "task.jinja";

/// Where prompt sets live unless a path is given.
pub fn default_root() -> PathBuf {
    std::env::var_os("HUMANLM_PROMPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("prompts"))
}

pub const DEFAULT_SET: &str = "humanlm";

/// Which prompt set a run uses: the one the user named, else the checkpoint's own (its
/// `humanlm.toml`), else [`DEFAULT_SET`]. Every command and the workbench choose through this.
pub fn set_for(named: Option<&str>, checkpoints_own: Option<String>) -> String {
    named
        .map(str::to_string)
        .or(checkpoints_own)
        .unwrap_or_else(|| DEFAULT_SET.to_string())
}

/// A loaded prompt set.
#[derive(Debug)]
pub struct PromptSet {
    pub name: String,
    pub dir: PathBuf,
    pub description: String,
    /// The six states then `response`, in generation order.
    pub states: Vec<StateSpec>,
    /// The set's own chat template; `None` means the checkpoint's.
    pub chat: Option<ChatTemplate>,
    pub layout: Layout,
    /// Whether the generation prompt already opens the tag the model must fill.
    pub prefill_tag: bool,
    /// Whether the reply of `humanlm` mode is generated with thinking on.
    pub response_thinking: bool,
    /// Whether the reply is written bare, without `<response>` tags (the recipe's no-tag
    /// configs): then the whole output, past any thinking, is the reply.
    pub untagged_reply: bool,
    pub sampling: SamplingDefaults,
    /// The files the set is made of (file name → where it was found, after inheritance).
    pub files: Vec<(String, PathBuf)>,
    recipe: Option<RecipeSystem>,
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
            let known = list(root).join(", ");
            return Err(err(
                &dir,
                format!(
                    "prompt set '{spec}' not found (sets in {}: {known})",
                    root.display()
                ),
            ));
        }
        let toml_err = |p: &Path, text: &str, e: toml::de::Error| Error::File {
            path: p.to_path_buf(),
            line: e.span().map(|s| text[..s.start].matches('\n').count() + 1),
            msg: e.message().trim().replace('\n', " "),
        };
        let read_at = |p: &Path| -> Result<String> {
            std::fs::read_to_string(p).map_err(|e| err(p, format!("cannot read: {e}")))
        };
        let set_path = dir.join("set.toml");
        let set_text = read_at(&set_path)?;
        let set: SetFile =
            toml::from_str(&set_text).map_err(|e| toml_err(&set_path, &set_text, e))?;
        // The folders a file is looked up in: this set's, then its ancestors'.
        let mut chain = vec![dir.clone()];
        let mut parent = set.inherits.clone();
        while let Some(p) = parent {
            let pdir = dir.parent().unwrap_or(Path::new(".")).join(&p);
            if chain.contains(&pdir) || chain.len() > 8 {
                return Err(err(
                    &set_path,
                    format!("`inherits` forms a cycle through '{p}'"),
                ));
            }
            let ptext = read_at(&pdir.join("set.toml")).map_err(|_| {
                err(
                    &set_path,
                    format!("inherits '{p}', but {} has no set.toml", pdir.display()),
                )
            })?;
            let pset: SetFile =
                toml::from_str(&ptext).map_err(|e| toml_err(&pdir.join("set.toml"), &ptext, e))?;
            chain.push(pdir);
            parent = pset.inherits;
        }
        let find = |name: &str| -> Result<(PathBuf, String)> {
            for d in &chain {
                let p = d.join(name);
                if p.is_file() {
                    return Ok((p.clone(), read_at(&p)?));
                }
            }
            Err(err(
                &dir.join(name),
                "missing (not in this set nor in the sets it inherits)",
            ))
        };
        let (states_path, states_text) = find("states.toml")?;
        let states: StatesFile =
            toml::from_str(&states_text).map_err(|e| toml_err(&states_path, &states_text, e))?;
        let states = states.state;
        if states.last().map(|s| s.key.as_str()) != Some(RESPONSE) {
            return Err(err(&states_path, "the last [[state]] must be `response`"));
        }
        let mut files = vec![
            ("set.toml".to_string(), set_path.clone(), set_text.clone()),
            ("states.toml".to_string(), states_path, states_text),
        ];
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        let recipe_aspects = set
            .recipe
            .as_ref()
            .is_some_and(|r| r.judge_aspects.is_some());
        let mut names: Vec<&str> = TEMPLATES
            .into_iter()
            .filter(|n| set.recipe.is_none() || !["system.jinja", "judge.jinja"].contains(n))
            .filter(|n| !recipe_aspects || *n != "judge_aspects.jinja")
            .collect();
        if set.layout == Layout::Transcript {
            names.push(TRANSCRIPT_TEMPLATE);
        }
        for name in names {
            let (p, text) = find(name)?;
            env.add_template_owned(name.to_string(), text.clone())
                .map_err(|e| jinja_err(&p, &e))?;
            files.push((name.to_string(), p, text));
        }
        let chat = match &set.chat_template {
            Some(file) => {
                let (p, text) = find(file)?;
                let chat = ChatTemplate::new(&text, &p, "", "<|im_end|>")
                    .map_err(|e| err(&p, e.to_string()))?;
                files.push((file.clone(), p, text));
                Some(chat)
            }
            None => None,
        };
        let recipe = match &set.recipe {
            Some(r) => {
                let mut parse = |file: &str, fields: &[&str]| -> Result<PyFormat> {
                    let (p, text) = find(file)?;
                    let t = PyFormat::parse(&text, &p, fields)?;
                    files.push((file.to_string(), p, text));
                    Ok(t)
                };
                let dataset = parse(&r.dataset_prompt, &recipe::DATASET_FIELDS)?;
                let mut per_state = vec![];
                for (key, file) in &r.state_prompts {
                    if !states.iter().any(|s| &s.key == key) {
                        return Err(err(
                            &set_path,
                            format!("recipe.state_prompts names `{key}`, which states.toml lacks"),
                        ));
                    }
                    per_state.push((key.clone(), parse(file, &recipe::STATE_FIELDS)?));
                }
                let aspects =
                    match (&r.judge_aspects, &r.judge_aspects_generation) {
                        (Some(prompt), Some(generation)) => Some((
                            parse(prompt, &recipe::ASPECTS_FIELDS)?,
                            parse(generation, &recipe::ASPECTS_GENERATION_FIELDS)?,
                        )),
                        (None, None) => None,
                        _ => return Err(err(
                            &set_path,
                            "recipe.judge_aspects and recipe.judge_aspects_generation go together",
                        )),
                    };
                Some(RecipeSystem {
                    dataset,
                    states: per_state,
                    judge: parse(&r.judge_prompt, &recipe::JUDGE_FIELDS)?,
                    guidelines: parse(&r.judge_guidelines, &recipe::GUIDELINE_FIELDS)?,
                    generations: parse(&r.judge_generations, &recipe::GENERATIONS_FIELDS)?,
                    aspects,
                })
            }
            None => None,
        };
        let mut hasher = Sha256::new();
        for (name, _, text) in &files {
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
            layout: set.layout,
            prefill_tag: set.prefill_tag,
            response_thinking: set.response_thinking,
            untagged_reply: set.untagged_reply,
            sampling: set.sampling,
            files: files.into_iter().map(|(n, p, _)| (n, p)).collect(),
            recipe,
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
        let all: Vec<&StateSpec> = self.states.iter().collect();
        let who = SystemContext::default();
        self.system("x", &all, &who)?;
        for s in &self.states {
            self.system("x", &[s], &who)?;
        }
        let turns = [
            ThreadTurn {
                author: "a".into(),
                role: "user".into(),
                text: "x".into(),
            },
            ThreadTurn {
                author: "b".into(),
                role: "assistant".into(),
                text: "x".into(),
            },
        ];
        self.thread(&turns)?;
        self.thread(&[])?;
        if self.layout == Layout::Transcript {
            self.task("x", "x", &all)?;
            self.task("x", "x", &all[..1])?;
        }
        for d in &self.states {
            self.judge(d, "x", "x", &["x", "y"])?;
        }
        self.judge_aspects("x", "x", "x")?;
        self.trace("x", "x", "x")?;
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
                // The same persona as the HumanLM recipe's rows hold it (recipe sets read it).
                "recipe": p.recipe_value(),
            })
        });
        self.render("persona.jinja", serde_json::json!({ "persona": value }))
    }

    /// The system prompt asking for `states` (in order) for the given rendered persona.
    ///
    /// A recipe set answers a single state with its state prompt (filled as the recipe's
    /// StateDataset fills it from `extra_info`), and anything else with the dataset prompt
    /// (filled as its process_dataset does).
    pub fn system(
        &self,
        persona: &str,
        states: &[&StateSpec],
        who: &SystemContext,
    ) -> Result<String> {
        if let Some(r) = &self.recipe {
            let own = match states {
                [one] => r.states.iter().find(|(k, _)| *k == one.key),
                _ => None,
            };
            return Ok(match own {
                Some((key, t)) => t.render(|f| match f {
                    "persona" => persona.to_string(),
                    "name" => crate::sim::HUMAN.to_string(),
                    "state_name" => key.clone(),
                    "media_source" => who.platform.clone(),
                    _ => who.user_id.clone(), // target_user_id (the fields are checked at load)
                }),
                None => r.dataset.render(|f| match f {
                    "persona" => persona.to_string(),
                    "name" => who.user_id.clone(),
                    "platform" => who.platform.clone(),
                    _ => "None".to_string(), // memory: the recipe passes None
                }),
            });
        }
        self.render(
            "system.jinja",
            serde_json::json!({ "persona": persona, "states": states }),
        )
    }

    /// The thread as plain text (`thread.jinja`).
    pub fn thread(&self, turns: &[ThreadTurn]) -> Result<String> {
        self.render("thread.jinja", serde_json::json!({ "turns": turns }))
    }

    /// The single user message of the transcript layout (`task.jinja`).
    pub fn task(&self, persona: &str, context: &str, states: &[&StateSpec]) -> Result<String> {
        self.render(
            TRANSCRIPT_TEMPLATE,
            serde_json::json!({ "persona": persona, "context": context, "states": states }),
        )
    }

    /// The rubric judge prompt: every item of a group scored against the real reply on one
    /// dimension (`judge.jinja`).
    pub fn judge(
        &self,
        dimension: &StateSpec,
        context: &str,
        reference: &str,
        items: &[&str],
    ) -> Result<String> {
        if let Some(r) = &self.recipe {
            // As the recipe's state_reward: the items stripped and numbered from 1 in a JSON
            // object (indent 2), framed by the generations block.
            let numbered: serde_json::Map<String, serde_json::Value> = items
                .iter()
                .enumerate()
                .map(|(i, t)| ((i + 1).to_string(), serde_json::Value::from(t.trim())))
                .collect();
            let json = crate::pyjson::dumps_indented(&serde_json::Value::Object(numbered), 2);
            let name = &dimension.key;
            let generations = r.generations.render(|f| match f {
                "generations" => json.clone(),
                _ => name.clone(),
            });
            let guidelines = r.guidelines.render(|_| name.clone());
            return Ok(r.judge.render(|f| match f {
                "context" => context.to_string(),
                "ground_truth" => reference.to_string(),
                "generations_text" => generations.clone(),
                "other_guidelines" => guidelines.clone(),
                "state_name" => name.clone(),
                "state_desc" => dimension.description.clone(),
                _ => items.len().to_string(), // num_generations
            }));
        }
        self.render(
            "judge.jinja",
            serde_json::json!({
                "dimension": dimension, "context": context, "reference": reference, "items": items,
            }),
        )
    }

    /// The six-aspect judge prompt: one reply scored on every state dimension
    /// (`judge_aspects.jinja`).
    ///
    /// A recipe set with the recipe's response-level judge fills it as its
    /// `state_reward_on_response.compute_score` does, over [`Self::dimensions`] in order (the
    /// recipe's eval passes a config of the states without the reply, `sebvgc.json`): the
    /// reply stripped (its reward manager strips the parsed field before calling the metric)
    /// inside the reply block, `other_guidelines` empty (no run script passes one), the names
    /// as Python's `str()` of a list and `{name: description}` as `json.dumps(indent=2)`.
    pub fn judge_aspects(&self, context: &str, reference: &str, response: &str) -> Result<String> {
        let dimensions: Vec<&StateSpec> = self.dimensions().collect();
        if let Some((prompt, block)) = self.recipe.as_ref().and_then(|r| r.aspects.as_ref()) {
            let generation = block.render(|_| response.trim().to_string());
            let names: Vec<&str> = dimensions.iter().map(|d| d.key.as_str()).collect();
            let descs: serde_json::Map<String, serde_json::Value> = dimensions
                .iter()
                .map(|d| {
                    (
                        d.key.clone(),
                        serde_json::Value::from(d.description.as_str()),
                    )
                })
                .collect();
            let descs = crate::pyjson::dumps_indented(&serde_json::Value::Object(descs), 2);
            let names = recipe::py_str_list(&names);
            return Ok(prompt.render(|f| match f {
                "context" => context.to_string(),
                "ground_truth" => reference.to_string(),
                "generation_text" => generation.clone(),
                "other_guidelines" => String::new(),
                "state_names" => names.clone(),
                _ => descs.clone(), // state_desc (the fields are checked at load)
            }));
        }
        self.render(
            "judge_aspects.jinja",
            serde_json::json!({
                "dimensions": dimensions, "context": context, "reference": reference,
                "response": response,
            }),
        )
    }

    /// The prompt that asks a judge model for an SFT-think trace (`trace.jinja`).
    pub fn trace(&self, persona: &str, context: &str, response: &str) -> Result<String> {
        self.render(
            "trace.jinja",
            serde_json::json!({ "persona": persona, "context": context, "response": response }),
        )
    }

    pub fn state(&self, key: &str) -> Option<&StateSpec> {
        self.states.iter().find(|s| s.key == key)
    }

    /// The reply's entry ([`RESPONSE`], the last of `states.toml`, checked at load).
    pub fn response(&self) -> &StateSpec {
        self.states
            .last()
            .expect("states.toml ends with the response (checked at load)")
    }

    /// The state dimensions (everything but the response), in generation order.
    pub fn dimensions(&self) -> impl Iterator<Item = &StateSpec> {
        self.states.iter().filter(|s| s.key != RESPONSE)
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
