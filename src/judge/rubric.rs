//! The HumanLM rubric judge and the six-aspect judge: a language model (local or behind an
//! endpoint) reads the thread, the real reply and the predictions, and answers in JSON.
//!
//! Group rules, as the HumanLM recipe's reward function applies them: an empty item scores 0
//! without asking; on the response only, a copy of the real reply (equal once both are
//! stripped) is not sent and scores min(1, best other + 0.1), so copying never beats the group
//! by much, and a group with nothing but copies and empties gives its copies 1.0; scores are
//! clamped to [0, 1]. The ×0.5 for a malformed item is the judge's instruction (its prompt
//! says so); halving again in code is an option, off by default (`halve_malformed`), as the
//! recipe does not. Items that differ only in whitespace are judged once (the method's rule; it saves calls). The
//! judge's reply is parsed leniently (first `{` to last `}`, then a regex for each item's
//! `"score"`); a reply that still lacks a score is retried with backoff (five attempts by
//! default, the recipe's count), and after the last attempt every item scores 0 with the error
//! kept.

use super::llm::{ChatModel, Sampling};
use super::{Error, Group, Judge, Result, Score};
use crate::prompts::PromptSet;
use crate::remote::{Endpoint, EndpointConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RubricConfig {
    /// A local checkpoint (name or path) or `endpoint:URL#MODEL`; or give `[endpoint]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointConfig>,
    /// The prompt set whose `judge.jinja` is used (default: the run's set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<String>,
    #[serde(default)]
    pub sampling: Sampling,
    /// Extra attempts when the reply cannot be parsed or the call fails.
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// Seconds before the first retry; doubled for each further one.
    #[serde(default = "default_backoff")]
    pub backoff_s: f64,
    /// Also halve, in code, the score of an item the simulator wrote out of format (the judge's
    /// prompt already asks it to; the recipe halves nowhere else).
    #[serde(default)]
    pub halve_malformed: bool,
}

impl RubricConfig {
    /// The judge's language model: the local checkpoint or the endpoint.
    pub fn open_model(&self, checkpoints: &Path) -> Result<ChatModel> {
        Ok(match (&self.checkpoint, &self.endpoint) {
            (Some(spec), None) => ChatModel::open(spec, checkpoints)?,
            (None, Some(e)) => ChatModel::Remote(Endpoint::new(e.clone())?),
            _ => {
                return Err(Error::Msg(
                    "a rubric judge needs exactly one of `checkpoint` or `[endpoint]`".into(),
                ))
            }
        })
    }
}

/// Four retries: five attempts in all, as the recipe's judge makes.
/// A refusal by the service: a client error that another attempt would meet again.
fn refused(kind: &crate::remote::ErrorKind) -> bool {
    matches!(kind, crate::remote::ErrorKind::Status { code, .. }
        if (400..500).contains(code) && *code != 408 && *code != 429)
}

fn default_retries() -> usize {
    4
}
fn default_backoff() -> f64 {
    1.0
}

pub struct RubricJudge {
    cfg: RubricConfig,
    model: ChatModel,
    prompts: Arc<PromptSet>,
}

impl RubricJudge {
    pub fn new(
        cfg: RubricConfig,
        roots: &crate::roots::Roots,
        run_prompts: Arc<PromptSet>,
    ) -> Result<RubricJudge> {
        let model = cfg.open_model(&roots.checkpoints)?;
        let prompts = match &cfg.prompts {
            Some(name) => Arc::new(PromptSet::load(name, &roots.prompts)?),
            None => run_prompts,
        };
        Ok(RubricJudge {
            cfg,
            model,
            prompts,
        })
    }

    /// Ask until `parse` accepts the reply, or the attempts run out (waiting `backoff_s`,
    /// doubled each time, between them). Returns the parsed value, the last reply, and the
    /// last problem. A request the service refuses (a 4xx other than 408 and 429: a wrong
    /// model, parameter or key) is a configuration error, returned at once: asking again would
    /// be refused the same way, and scoring it 0 would hide it.
    fn ask_until<T>(
        &self,
        prompt: &str,
        parse: impl Fn(&str) -> Option<T>,
        what: &str,
    ) -> Result<(Option<T>, String, String)> {
        let mut last_raw = String::new();
        let mut last_err = String::new();
        for attempt in 0..=self.cfg.retries {
            if attempt > 0 {
                let wait = self.cfg.backoff_s * 2f64.powi(attempt as i32 - 1);
                std::thread::sleep(std::time::Duration::from_secs_f64(wait.max(0.0)));
            }
            match self.model.ask(prompt, &self.cfg.sampling, attempt as u64) {
                Ok(raw) => {
                    if let Some(v) = parse(&raw) {
                        return Ok((Some(v), raw, String::new()));
                    }
                    last_err = format!("the reply has no score for every {what}");
                    last_raw = raw;
                }
                Err(Error::Remote(e)) if refused(&e.kind) => {
                    return Err(Error::Msg(format!(
                        "judge {}: the service refused the request, so the judge \
                         configuration is at fault: {e}",
                        self.name()
                    )))
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        Ok((None, last_raw, last_err))
    }
}

impl Judge for RubricJudge {
    fn name(&self) -> String {
        let model = match (&self.cfg.checkpoint, &self.cfg.endpoint) {
            (Some(c), _) => c.rsplit(['/', '#']).next().unwrap_or(c).to_string(),
            (_, Some(e)) => e.model.clone(),
            _ => String::new(),
        };
        format!("rubric:{model}")
    }

    fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "rubric",
            "model": self.model.identity(),
            "sampling": self.cfg.sampling,
            "prompts": self.prompts.name,
            "prompt_hash": self.prompts.hash,
            "retries": self.cfg.retries,
            "halve_malformed": self.cfg.halve_malformed,
        })
    }

    fn score_group(&self, group: &Group) -> Result<Vec<Score>> {
        let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        // The copy rule is the reply's: a state may well restate the reply's words.
        let judges_reply = group.dimension.key == crate::prompts::RESPONSE;
        let is_copy = |text: &str| judges_reply && text.trim() == group.reference.trim();
        // Which unique text each item is; empty items and copies are not sent.
        // Items are sent as written (the recipe strips them, nothing more); items that differ
        // only in whitespace are sent once, as the first of them is written.
        let mut unique: Vec<&str> = vec![];
        let mut keys: Vec<String> = vec![];
        let mut slot: Vec<Option<usize>> = vec![];
        for item in &group.items {
            let key = norm(item.text);
            if key.is_empty() || is_copy(item.text) {
                slot.push(None);
                continue;
            }
            let at = keys.iter().position(|k| *k == key).unwrap_or_else(|| {
                keys.push(key);
                unique.push(item.text.trim());
                unique.len() - 1
            });
            slot.push(Some(at));
        }
        let mut judged: Vec<ItemScore> = vec![];
        let (mut raw, mut error) = (None, None);
        if !unique.is_empty() {
            let prompt =
                self.prompts
                    .judge(group.dimension, group.context, group.reference, &unique)?;
            let n = unique.len();
            let (scores, text, err) = self.ask_until(&prompt, |r| parse_scores(r, n), "item")?;
            raw = Some(text);
            match scores {
                Some(s) => judged = s,
                None => {
                    error = Some(format!(
                        "judge failed after {} attempts: {err}",
                        self.cfg.retries + 1
                    ));
                    judged = vec![(0.0, None); unique.len()];
                }
            }
        }
        let mut out: Vec<Score> = group
            .items
            .iter()
            .zip(&slot)
            .map(|(item, s)| match s {
                Some(u) => {
                    let (v, thought) = &judged[*u];
                    let mut v = v.clamp(0.0, 1.0);
                    if !item.valid && self.cfg.halve_malformed {
                        v *= 0.5;
                    }
                    Score {
                        score: v,
                        raw: raw.clone(),
                        note: thought.clone(),
                        error: error.clone(),
                    }
                }
                None => Score {
                    score: 0.0,
                    raw: None,
                    note: Some(if norm(item.text).is_empty() {
                        "empty".into()
                    } else {
                        "exact copy of the real reply".into()
                    }),
                    error: None,
                },
            })
            .collect();
        let best_other = out
            .iter()
            .zip(&slot)
            .filter(|(_, s)| s.is_some())
            .map(|(x, _)| x.score)
            .fold(0.0, f64::max);
        // Nothing but copies (and empties): the copies are the best the group has.
        let copy_score = if unique.is_empty() {
            1.0
        } else {
            (best_other + 0.1).min(1.0)
        };
        for ((score, s), item) in out.iter_mut().zip(&slot).zip(&group.items) {
            if s.is_none() && is_copy(item.text) && !norm(item.text).is_empty() {
                score.score = copy_score;
            }
        }
        Ok(out)
    }
}

/// A judged score and the judge's thought about it.
pub type ItemScore = (f64, Option<String>);

/// Scores (and thoughts) for items 1..=n from a judge reply, or `None` if any is missing.
pub fn parse_scores(raw: &str, n: usize) -> Option<Vec<ItemScore>> {
    let number = |v: &serde_json::Value| -> Option<f64> {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|x: &f64| x.is_finite())
    };
    let mut found: BTreeMap<usize, ItemScore> = BTreeMap::new();
    if let (Some(a), Some(b)) = (raw.find('{'), raw.rfind('}')) {
        if a < b {
            if let Ok(serde_json::Value::Object(o)) = serde_json::from_str(&raw[a..=b]) {
                for i in 1..=n {
                    let Some(entry) = o.get(&i.to_string()) else {
                        continue;
                    };
                    // `{"score": x, "thought": ...}`, or a bare number.
                    let score = entry
                        .get("score")
                        .and_then(number)
                        .or_else(|| number(entry));
                    if let Some(s) = score {
                        let thought = entry
                            .get("thought")
                            .and_then(|t| t.as_str())
                            .map(str::to_string);
                        found.insert(i, (s, thought));
                    }
                }
            }
        }
    }
    if found.len() < n {
        // Broken JSON: an item's key, then its "score" before the next item starts.
        let re = regex::Regex::new(r#""(\d+)"\s*:\s*\{[^{}]*?"score"\s*:\s*"?(-?\d+(?:\.\d+)?)"#)
            .expect("valid regex");
        for c in re.captures_iter(raw) {
            let (Ok(i), Ok(s)) = (c[1].parse::<usize>(), c[2].parse::<f64>()) else {
                continue;
            };
            if (1..=n).contains(&i) {
                found.entry(i).or_insert((s, None));
            }
        }
    }
    (found.len() == n).then(|| found.into_values().collect())
}

/// The six-aspect judge: one call scores one reply on all six state dimensions.
pub struct AspectsJudge {
    inner: RubricJudge,
}

impl AspectsJudge {
    pub fn new(inner: RubricJudge) -> AspectsJudge {
        AspectsJudge { inner }
    }

    /// Scores per dimension for `response`, with the judge's reply kept on each.
    pub fn score(
        &self,
        context: &str,
        reference: &str,
        response: &str,
    ) -> Result<BTreeMap<String, Score>> {
        let keys: Vec<String> = self
            .inner
            .prompts
            .dimensions()
            .map(|d| d.key.clone())
            .collect();
        if response.trim().is_empty() {
            return Ok(keys
                .into_iter()
                .map(|k| {
                    let mut s = Score::of(0.0);
                    s.note = Some("empty".into());
                    (k, s)
                })
                .collect());
        }
        let prompt = self
            .inner
            .prompts
            .judge_aspects(context, reference, response)?;
        let (scores, raw, err) =
            self.inner
                .ask_until(&prompt, |r| parse_aspects(r, &keys), "aspect")?;
        let error = scores.is_none().then(|| {
            format!(
                "judge failed after {} attempts: {err}",
                self.inner.cfg.retries + 1
            )
        });
        let mut scores = scores.unwrap_or_default();
        Ok(keys
            .into_iter()
            .map(|k| {
                let (v, thought) = scores.remove(&k).unwrap_or((0.0, None));
                (
                    k,
                    Score {
                        score: v.clamp(0.0, 1.0),
                        raw: Some(raw.clone()),
                        note: thought,
                        error: error.clone(),
                    },
                )
            })
            .collect())
    }
}

impl Judge for AspectsJudge {
    fn name(&self) -> String {
        self.inner.name().replacen("rubric", "aspects", 1)
    }

    fn config(&self) -> serde_json::Value {
        let mut c = self.inner.config();
        c["kind"] = "aspects".into();
        c
    }

    /// Each reply scored on all six aspects; its score is their mean.
    fn score_group(&self, group: &Group) -> Result<Vec<Score>> {
        group
            .items
            .iter()
            .map(|item| {
                let by = self.score(group.context, group.reference, item.text)?;
                let mean = by.values().map(|s| s.score).sum::<f64>() / by.len().max(1) as f64;
                Ok(Score {
                    score: mean,
                    raw: by.values().next().and_then(|s| s.raw.clone()),
                    note: None,
                    error: by.values().find_map(|s| s.error.clone()),
                })
            })
            .collect()
    }

    fn score_aspects(
        &self,
        context: &str,
        reference: &str,
        response: &str,
    ) -> Option<Result<BTreeMap<String, Score>>> {
        Some(self.score(context, reference, response))
    }
}

/// `{"stance": {"score": x, "thought": ...}, ...}` leniently, or `None` if an aspect is missing.
pub fn parse_aspects(raw: &str, keys: &[String]) -> Option<BTreeMap<String, ItemScore>> {
    let mut found = BTreeMap::new();
    if let (Some(a), Some(b)) = (raw.find('{'), raw.rfind('}')) {
        if a < b {
            if let Ok(serde_json::Value::Object(o)) = serde_json::from_str(&raw[a..=b]) {
                for k in keys {
                    let Some(e) = o.get(k) else { continue };
                    let s = e
                        .get("score")
                        .and_then(|v| v.as_f64())
                        .or_else(|| e.as_f64());
                    if let Some(s) = s.filter(|x| x.is_finite()) {
                        let t = e
                            .get("thought")
                            .and_then(|t| t.as_str())
                            .map(str::to_string);
                        found.insert(k.clone(), (s, t));
                    }
                }
            }
        }
    }
    for k in keys {
        if found.contains_key(k) {
            continue;
        }
        let re = regex::Regex::new(&format!(
            r#""{}"\s*:\s*\{{[^{{}}]*?"score"\s*:\s*(-?\d+(?:\.\d+)?)"#,
            regex::escape(k)
        ))
        .expect("valid regex");
        if let Some(c) = re.captures(raw) {
            if let Ok(s) = c[1].parse::<f64>() {
                found.insert(k.clone(), (s, None));
            }
        }
    }
    (found.len() == keys.len()).then_some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_clean_json_with_prose_around_it() {
        let raw = "Sure! {\"key_points\": [\"a\"], \"1\": {\"thought\": \"close\", \"score\": 0.7}, \"2\": {\"thought\": \"off\", \"score\": 0}} done";
        let s = parse_scores(raw, 2).unwrap();
        assert_eq!(s[0], (0.7, Some("close".into())));
        assert_eq!(s[1].0, 0.0);
        assert!(parse_scores(raw, 3).is_none());
    }

    #[test]
    fn falls_back_to_a_regex_on_broken_json() {
        // A trailing comma and an unterminated thought: not JSON, but the scores are there.
        let raw =
            r#"{"1": {"thought": "ok", "score": 0.4,}, "2": {"thought": "meh, "score": "0.25"}"#;
        let s = parse_scores(raw, 2).unwrap();
        assert_eq!(s[0].0, 0.4);
        assert_eq!(s[1].0, 0.25);
        assert!(parse_scores("no json at all", 1).is_none());
    }

    #[test]
    fn aspects_parse_and_fallback() {
        let keys: Vec<String> = ["stance", "emotion"].map(String::from).to_vec();
        let s = parse_aspects(
            r#"{"stance": {"score": 0.5}, "emotion": {"score": 1}}"#,
            &keys,
        )
        .unwrap();
        assert_eq!(s["emotion"].0, 1.0);
        let s = parse_aspects(
            r#"{"stance": {"score": 0.5,}, "emotion": {"score": 0.2}"#,
            &keys,
        )
        .unwrap();
        assert_eq!(s["stance"].0, 0.5);
        assert!(parse_aspects(r#"{"stance": {"score": 0.5}}"#, &keys).is_none());
    }
}
