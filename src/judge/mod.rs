//! Judges: scores of simulated states and replies against the person's real reply.
//!
//! One trait, five kinds: the HumanLM rubric judge (a language model scores a whole group of
//! rollouts at once), the six-aspect judge (one reply on all six dimensions), embedding cosine
//! similarity, lexical overlap, and a verifiable word check for testing training. Judges are configured in TOML files; results are cached on
//! disk keyed by the judge configuration and a hash of the inputs.

pub mod embedding;
pub mod lexical;
pub mod llm;
pub mod rubric;

use crate::prompts::{PromptSet, StateSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What can go wrong while reading a judge configuration, building a judge or scoring with it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A judge file (configuration, cache entry) is at fault.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A judge that cannot work as configured, or a judgement that failed.
    #[error("{0}")]
    Msg(String),
    #[error(transparent)]
    Model(#[from] crate::model::Error),
    #[error(transparent)]
    Prompt(#[from] crate::prompts::Error),
    #[error(transparent)]
    Remote(#[from] crate::remote::Error),
    #[error(transparent)]
    Write(#[from] crate::files::WriteError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl Error {
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// One group to judge: `items` (n rollouts of one dimension, or n replies) against the real reply.
#[derive(Debug, Clone, Serialize)]
pub struct Group<'a> {
    pub dimension: &'a StateSpec,
    /// The thread as text.
    pub context: &'a str,
    pub reference: &'a str,
    pub items: Vec<Item<'a>>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Item<'a> {
    pub text: &'a str,
    /// Whether the simulator kept the tag format (the judge is told to halve a malformed item;
    /// a rubric judge with `halve_malformed` also halves it in code).
    pub valid: bool,
    /// Tokens the simulator generated for it, given to judges that bound the length
    /// ([`Judge::counts_tokens`]); left out of the cache key otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
}

/// One item's score in [0, 1] (cosine similarity may be negative), with what the judge said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub score: f64,
    /// The judge model's reply for the group (shared by its items), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// The judge's reasoning for this item, or why it was scored without asking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Set when the judge failed (after retries) and the score is the fallback 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Score {
    pub fn of(score: f64) -> Score {
        Score {
            score,
            raw: None,
            note: None,
            error: None,
        }
    }
}

pub trait Judge: Send + Sync {
    /// A short name for tables: `embedding`, `rouge_l`, `rubric:gpt-5-mini`...
    fn name(&self) -> String;
    /// Everything that changes scores, for the cache key and run.json.
    fn config(&self) -> serde_json::Value;
    /// Score every item of the group, in order.
    fn score_group(&self, group: &Group) -> Result<Vec<Score>>;
    /// Judges that score one reply on every state dimension at once (the six-aspect judge)
    /// return the scores per dimension; others `None`.
    fn score_aspects(
        &self,
        _context: &str,
        _reference: &str,
        _response: &str,
    ) -> Option<Result<BTreeMap<String, Score>>> {
        None
    }
    /// Whether the judge needs each item's generated token count ([`Item::tokens`]).
    fn counts_tokens(&self) -> bool {
        false
    }
}

/// A judge configuration file (`prompts/judges/*.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum JudgeConfig {
    /// Cosine similarity of sentence embeddings.
    Embedding {
        /// A folder name under checkpoints/ or a path.
        #[serde(default = "default_embedder")]
        model: String,
    },
    /// ROUGE-L F1 or token F1.
    Lexical {
        #[serde(default)]
        metric: LexicalMetric,
    },
    /// The HumanLM rubric judge: one language-model call per group.
    Rubric(rubric::RubricConfig),
    /// The six-aspect judge: one language-model call per reply, scoring all six dimensions.
    Aspects(rubric::RubricConfig),
    /// Verifiable: 1 when the item holds `word` (case-insensitive, as a whole word) and was
    /// written in at most `max_tokens` tokens, else 0. For checking that training works.
    Contains { word: String, max_tokens: usize },
}

fn default_embedder() -> String {
    embedding::DEFAULT_EMBEDDER.to_string()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LexicalMetric {
    #[default]
    RougeL,
    TokenF1,
}

impl JudgeConfig {
    /// The judge used when none is named: embedding similarity, which needs no key.
    pub fn default_config() -> JudgeConfig {
        JudgeConfig::Embedding {
            model: default_embedder(),
        }
    }

    pub fn read(path: &Path) -> Result<JudgeConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().trim().replace('\n', " ");
            // An internally tagged enum loses the span of a field error; find the line of the
            // field (or value) the message names instead.
            let line = e
                .span()
                .map(|s| text[..s.start].matches('\n').count() + 1)
                .or_else(|| {
                    let name = msg.split('`').nth(1)?;
                    text.lines().position(|l| {
                        let l = l.trim_start();
                        l.starts_with(name) || l.contains(&format!("\"{name}\""))
                    })
                })
                .map(|l| format!(":{}", l + usize::from(e.span().is_none())))
                .unwrap_or_default();
            Error::Msg(format!("{}{line}: {msg}", path.display()))
        })
    }

    /// Build the judge. `prompts` is the set whose judge templates a rubric judge renders.
    pub fn build(
        &self,
        roots: &crate::roots::Roots,
        prompts: Arc<PromptSet>,
    ) -> Result<Box<dyn Judge>> {
        let checkpoints = &roots.checkpoints;
        Ok(match self {
            JudgeConfig::Embedding { model } => {
                let dir = resolve_dir(model, checkpoints);
                let e = embedding::Embedder::load(&dir, &candle_core::Device::Cpu)?;
                Box::new(EmbeddingJudge {
                    model: model.clone(),
                    embedder: e,
                })
            }
            JudgeConfig::Lexical { metric } => Box::new(LexicalJudge { metric: *metric }),
            JudgeConfig::Rubric(cfg) => {
                Box::new(rubric::RubricJudge::new(cfg.clone(), roots, prompts)?)
            }
            JudgeConfig::Aspects(cfg) => Box::new(rubric::AspectsJudge::new(
                rubric::RubricJudge::new(cfg.clone(), roots, prompts)?,
            )),
            JudgeConfig::Contains { word, max_tokens } => {
                Box::new(ContainsJudge::new(word, *max_tokens))
            }
        })
    }
}

fn resolve_dir(spec: &str, root: &Path) -> PathBuf {
    let p = PathBuf::from(spec);
    if p.exists() {
        p
    } else {
        root.join(spec)
    }
}

/// Cosine similarity of each item with the real reply (all-MiniLM-L6-v2 by default).
pub struct EmbeddingJudge {
    model: String,
    embedder: embedding::Embedder,
}

impl EmbeddingJudge {
    pub fn load(dir: &Path) -> Result<EmbeddingJudge> {
        Ok(EmbeddingJudge {
            model: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            embedder: embedding::Embedder::load(dir, &candle_core::Device::Cpu)?,
        })
    }

    /// Cosine similarities of each text with the reference.
    pub fn similarities(&self, reference: &str, texts: &[&str]) -> Result<Vec<f64>> {
        let mut all = vec![reference];
        all.extend_from_slice(texts);
        let v = self.embedder.embed(&all)?;
        Ok(v[1..]
            .iter()
            .map(|x| embedding::cosine(&v[0], x) as f64)
            .collect())
    }
}

impl Judge for EmbeddingJudge {
    fn name(&self) -> String {
        "embedding".into()
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "embedding", "model": self.model })
    }
    fn score_group(&self, group: &Group) -> Result<Vec<Score>> {
        let texts: Vec<&str> = group.items.iter().map(|i| i.text).collect();
        Ok(self
            .similarities(group.reference, &texts)?
            .into_iter()
            .zip(&group.items)
            // An empty item says nothing; its embedding ([CLS][SEP]) is not a prediction.
            .map(|(s, i)| Score::of(if i.text.trim().is_empty() { 0.0 } else { s }))
            .collect())
    }
}

/// The verifiable judge ([`JudgeConfig::Contains`]).
pub struct ContainsJudge {
    word: String,
    max_tokens: usize,
}

impl ContainsJudge {
    pub fn new(word: &str, max_tokens: usize) -> ContainsJudge {
        ContainsJudge {
            word: word.to_lowercase(),
            max_tokens,
        }
    }

    /// Whether `text`, written in `tokens` tokens, earns the reward.
    pub fn holds(&self, text: &str, tokens: usize) -> bool {
        tokens <= self.max_tokens && lexical::has_word(text, &self.word)
    }
}

impl Judge for ContainsJudge {
    fn name(&self) -> String {
        format!("contains '{}' within {} tokens", self.word, self.max_tokens)
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "contains", "word": self.word, "max_tokens": self.max_tokens })
    }
    fn score_group(&self, group: &Group) -> Result<Vec<Score>> {
        group
            .items
            .iter()
            .map(|i| {
                let tokens = i.tokens.ok_or_else(|| {
                    Error::Msg(format!(
                        "judge {}: the item's token count is unknown",
                        self.name()
                    ))
                })?;
                Ok(Score::of(f64::from(u8::from(self.holds(i.text, tokens)))))
            })
            .collect()
    }
    fn counts_tokens(&self) -> bool {
        true
    }
}

pub struct LexicalJudge {
    pub metric: LexicalMetric,
}

impl Judge for LexicalJudge {
    fn name(&self) -> String {
        match self.metric {
            LexicalMetric::RougeL => "rouge_l".into(),
            LexicalMetric::TokenF1 => "token_f1".into(),
        }
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "lexical", "metric": self.metric })
    }
    fn score_group(&self, group: &Group) -> Result<Vec<Score>> {
        Ok(group
            .items
            .iter()
            .map(|i| {
                Score::of(match self.metric {
                    LexicalMetric::RougeL => lexical::rouge_l_f1(i.text, group.reference),
                    LexicalMetric::TokenF1 => lexical::token_f1(i.text, group.reference),
                })
            })
            .collect())
    }
}

/// Judge results on disk: one JSON file per (judge configuration, group) under `dir`.
pub struct Cache {
    dir: PathBuf,
    /// Ask the judge even when the cache has an answer (and store the new one).
    refresh: bool,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Cache {
        Cache {
            dir,
            refresh: false,
        }
    }

    /// The same cache, asking the judge again for everything when `refresh` is set.
    pub fn refreshing(self, refresh: bool) -> Cache {
        Cache { refresh, ..self }
    }

    fn path(&self, judge: &dyn Judge, input: &impl Serialize) -> PathBuf {
        let key = |v: &serde_json::Value| -> String {
            let mut h = Sha256::new();
            h.update(v.to_string().as_bytes());
            h.finalize()
                .iter()
                .take(10)
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let config = key(&judge.config());
        let input = key(&serde_json::to_value(input).unwrap_or_default());
        self.dir.join(config).join(format!("{input}.json"))
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Option<T> {
        if self.refresh {
            return None;
        }
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    /// A cache that cannot be written is an error, not a silent miss: a run would otherwise
    /// pay for every judgement again on its next resume without saying why.
    fn put<T: Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        crate::files::write(path, serde_json::to_string(value)?)?;
        Ok(())
    }

    /// Per-dimension scores of one reply from an aspects judge, cached like groups.
    pub fn score_aspects(
        &self,
        judge: &dyn Judge,
        context: &str,
        reference: &str,
        response: &str,
    ) -> Option<Result<BTreeMap<String, Score>>> {
        let path = self.path(judge, &("aspects", context, reference, response));
        if let Some(hit) = self.get::<BTreeMap<String, Score>>(&path) {
            return Some(Ok(hit));
        }
        let out = judge.score_aspects(context, reference, response)?;
        if let Ok(scores) = &out {
            if scores.values().all(|s| s.error.is_none()) {
                if let Err(e) = self.put(&path, scores) {
                    return Some(Err(e));
                }
            }
        }
        Some(out)
    }

    /// Scores from the cache, else from the judge (and then cached). Failed judgements are not
    /// cached, so a rerun tries again.
    pub fn score(&self, judge: &dyn Judge, group: &Group) -> Result<Vec<Score>> {
        let path = self.path(judge, group);
        if let Some(scores) = self.get::<Vec<Score>>(&path) {
            if scores.len() == group.items.len() {
                return Ok(scores);
            }
        }
        let scores = judge.score_group(group)?;
        if scores.iter().all(|s| s.error.is_none()) {
            self.put(&path, &scores)?;
        }
        Ok(scores)
    }
}
