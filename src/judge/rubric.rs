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

/// `{"stance": {"score": x, "thought": ...}, ...}`, scores clamped to [0, 1], or `None` if an
/// aspect is missing.
///
/// First as the recipe's response-level judge reads its judge's reply (`state_reward_on_response`
/// through `utils.extract_json`, see [`recipe_json`]): what it accepts is taken with exactly its
/// scores. Its parser is lenient about the JSON (single or triple quotes, raw newlines inside
/// strings, trailing commas, numbers like `.5` or `+1e0`, a score written as a string, text
/// after the object), strict about the shape: every value an object with a `"score"` that
/// `float()` takes, and the keys exactly the states. Where it would ask again, this parser still
/// tries, beyond the recipe: extra keys and bare numbers are accepted, and broken JSON falls
/// back to a regex per aspect. A NaN score is refused (the recipe would carry it into its
/// reward).
pub fn parse_aspects(raw: &str, keys: &[String]) -> Option<BTreeMap<String, ItemScore>> {
    if let Some(found) = recipe_json::aspects(raw, keys) {
        return Some(found);
    }
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
    (found.len() == keys.len()).then(|| {
        found
            .into_iter()
            .map(|(k, (s, t))| (k, (s.clamp(0.0, 1.0), t)))
            .collect()
    })
}

/// The HumanLM recipe's `utils.extract_json` (the parser its judges' replies are read with) and
/// the checks `metrics/state_reward_on_response.py` applies to what it returns, written from its
/// source. `extract_json` cuts from the first `{` to the last `}` and parses one value there
/// (trailing text ignored); keys and strings are quoted with `"` or `'` (escapes: `\n`, `\t`,
/// `\r`; any other escaped character stands for itself) or triple-quoted (raw); every quoted
/// string goes through its `convert_value` (`true`/`false`/`null` in any case, else Python's
/// `float()` when it holds a `.` or an `e`, else `int()`, else the string); a number is a run of
/// `-+0123456789.eE`; `true`/`false`/`null` are matched case-insensitively; commas may trail.
/// When that parse fails it falls back to a `"score"` regex whose result is never a valid
/// aspects reply, so the judge is asked again. Python's `float()` and `int()` of a string are
/// followed for ASCII digits (whitespace around, `_` between digits, `inf`, `nan`).
mod recipe_json {
    use super::ItemScore;
    use std::collections::BTreeMap;

    /// A value as the recipe's parser returns it.
    #[derive(Debug, Clone)]
    pub(super) enum Py {
        None,
        Bool(bool),
        /// An `int`, held as the float it converts to (infinite where `float()` would overflow).
        Int(f64),
        Float(f64),
        Str(String),
        /// A list (no aspects reply reads into one, so its items are parsed and dropped).
        List,
        /// Keys in insertion order; an equal key replaces the value and keeps the first key.
        Dict(Vec<(Py, Py)>),
    }

    impl Py {
        /// The number a key compares as (Python: `True == 1 == 1.0`).
        fn number(&self) -> Option<f64> {
            match self {
                Py::Bool(b) => Some(f64::from(u8::from(*b))),
                Py::Int(x) | Py::Float(x) => Some(*x),
                _ => None,
            }
        }

        fn key_eq(&self, other: &Py) -> bool {
            match (self, other) {
                (Py::Str(a), Py::Str(b)) => a == b,
                (Py::None, Py::None) => true,
                _ => matches!((self.number(), other.number()), (Some(a), Some(b)) if a == b),
            }
        }

        /// Python's `float(x)`, or `None` where it raises.
        fn float(&self) -> Option<f64> {
            match self {
                Py::Bool(b) => Some(f64::from(u8::from(*b))),
                Py::Int(x) => x.is_finite().then_some(*x),
                Py::Float(x) => Some(*x),
                Py::Str(s) => py_float(s),
                _ => None,
            }
        }
    }

    type Parsed = Result<(Py, usize), ()>;

    /// Deeper than this, Python's recursion limit would stop the parse.
    const MAX_DEPTH: usize = 400;

    fn is_py_space(c: char) -> bool {
        c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
    }

    /// Underscores only between two digits (PEP 515), then removed.
    fn without_underscores(s: &str) -> Option<String> {
        let b: Vec<char> = s.chars().collect();
        for (i, c) in b.iter().enumerate() {
            if *c == '_'
                && !(i > 0
                    && b[i - 1].is_ascii_digit()
                    && b.get(i + 1).is_some_and(|n| n.is_ascii_digit()))
            {
                return None;
            }
        }
        Some(b.into_iter().filter(|c| *c != '_').collect())
    }

    /// `[+-]` then digits with at most one `.` (at least one digit), then an optional exponent.
    fn is_decimal(s: &str) -> bool {
        let s = s.strip_prefix(['+', '-']).unwrap_or(s);
        let (mantissa, exp) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = |t: &str| t.chars().all(|c| c.is_ascii_digit());
        let mantissa_ok = digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty());
        let exp_ok = exp.is_none_or(|e| {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && digits(e)
        });
        mantissa_ok && exp_ok
    }

    /// Python's `float(s)` of a string.
    pub(super) fn py_float(s: &str) -> Option<f64> {
        let t = s.trim_matches(is_py_space);
        let lower = t.to_ascii_lowercase();
        let (sign, word) = match lower.strip_prefix('-') {
            Some(w) => (-1.0, w),
            None => (1.0, lower.strip_prefix('+').unwrap_or(&lower)),
        };
        match word {
            "inf" | "infinity" => return Some(sign * f64::INFINITY),
            "nan" => return Some(f64::NAN),
            _ => {}
        }
        let t = without_underscores(t)?;
        if is_decimal(&t) {
            t.parse().ok()
        } else {
            None
        }
    }

    /// Python's `int(s)` of a string, as the float `float()` would make of it.
    fn py_int(s: &str) -> Option<f64> {
        let t = without_underscores(s.trim_matches(is_py_space))?;
        let digits = t.strip_prefix(['+', '-']).unwrap_or(&t);
        if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    }

    /// Its `convert_value`, applied to every quoted string.
    fn convert_value(value: String) -> Py {
        match value.to_ascii_lowercase().as_str() {
            "true" => return Py::Bool(true),
            "false" => return Py::Bool(false),
            "null" => return Py::None,
            _ => {}
        }
        let converted = if value.contains('.') || value.contains(['e', 'E']) {
            py_float(&value).map(Py::Float)
        } else {
            py_int(&value).map(Py::Int)
        };
        converted.unwrap_or(Py::Str(value))
    }

    fn skip_ws(s: &[char], mut pos: usize) -> usize {
        while pos < s.len() && matches!(s[pos], ' ' | '\t' | '\n' | '\r') {
            pos += 1;
        }
        pos
    }

    /// Whether `word` is at `pos`, ASCII letters in any case.
    fn starts(s: &[char], pos: usize, word: &str) -> bool {
        let n = word.chars().count();
        pos + n <= s.len()
            && s[pos..pos + n]
                .iter()
                .zip(word.chars())
                .all(|(a, b)| a.eq_ignore_ascii_case(&b))
    }

    fn parse_number(s: &[char], mut pos: usize) -> Parsed {
        let start = pos;
        while pos < s.len() && "-+0123456789.eE".contains(s[pos]) {
            pos += 1;
        }
        let text: String = s[start..pos].iter().collect();
        let value = if text.contains('.') || text.contains(['e', 'E']) {
            py_float(&text).map(Py::Float)
        } else {
            py_int(&text).map(Py::Int)
        };
        value.map(|v| (v, pos)).ok_or(())
    }

    fn parse_string(s: &[char], mut pos: usize) -> Parsed {
        let quote = s[pos];
        pos += 1;
        let mut out = String::new();
        while pos < s.len() {
            let c = s[pos];
            if c == '\\' {
                pos += 1;
                out.push(match *s.get(pos).ok_or(())? {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    c => c,
                });
            } else if c == quote {
                return Ok((convert_value(out), pos + 1));
            } else {
                out.push(c);
            }
            pos += 1;
        }
        Err(())
    }

    fn parse_triple(s: &[char], pos: usize) -> Parsed {
        let close = String::from(s[pos]).repeat(3);
        let mut at = pos + 3;
        while at < s.len() {
            if starts(s, at, &close) {
                let text: String = s[pos + 3..at].iter().collect();
                return Ok((convert_value(text), at + 3));
            }
            at += 1;
        }
        Err(())
    }

    fn parse_object(s: &[char], pos: usize, depth: usize) -> Parsed {
        let mut obj: Vec<(Py, Py)> = vec![];
        let mut pos = skip_ws(s, pos + 1);
        while pos < s.len() && s[pos] != '}' {
            pos = skip_ws(s, pos);
            if !matches!(s.get(pos), Some('"' | '\'')) {
                return Err(());
            }
            let (key, p) = parse_string(s, pos)?;
            pos = skip_ws(s, p);
            if pos >= s.len() || s[pos] != ':' {
                return Err(());
            }
            pos = skip_ws(s, pos + 1);
            let (value, p) = parse_value(s, pos, depth + 1)?;
            match obj.iter_mut().find(|(k, _)| k.key_eq(&key)) {
                Some(slot) => slot.1 = value,
                None => obj.push((key, value)),
            }
            pos = skip_ws(s, p);
            if pos < s.len() && s[pos] == ',' {
                pos = skip_ws(s, pos + 1);
            } else if pos < s.len() && s[pos] == '}' {
                break;
            } else if pos < s.len() {
                return Err(());
            }
        }
        if pos >= s.len() || s[pos] != '}' {
            return Err(());
        }
        Ok((Py::Dict(obj), pos + 1))
    }

    fn parse_array(s: &[char], pos: usize, depth: usize) -> Parsed {
        let mut pos = skip_ws(s, pos + 1);
        while pos < s.len() && s[pos] != ']' {
            let (_, p) = parse_value(s, pos, depth + 1)?;
            pos = skip_ws(s, p);
            if pos < s.len() && s[pos] == ',' {
                pos = skip_ws(s, pos + 1);
            } else if pos < s.len() && s[pos] == ']' {
                break;
            } else if pos < s.len() {
                return Err(());
            }
        }
        if pos >= s.len() || s[pos] != ']' {
            return Err(());
        }
        Ok((Py::List, pos + 1))
    }

    fn parse_value(s: &[char], pos: usize, depth: usize) -> Parsed {
        if depth > MAX_DEPTH {
            return Err(());
        }
        let pos = skip_ws(s, pos);
        let c = *s.get(pos).ok_or(())?;
        match c {
            '{' => parse_object(s, pos, depth),
            '[' => parse_array(s, pos, depth),
            _ if starts(s, pos, "'''") || starts(s, pos, "\"\"\"") => parse_triple(s, pos),
            '"' | '\'' => parse_string(s, pos),
            _ if starts(s, pos, "true") => Ok((Py::Bool(true), pos + 4)),
            _ if starts(s, pos, "false") => Ok((Py::Bool(false), pos + 5)),
            _ if starts(s, pos, "null") => Ok((Py::None, pos + 4)),
            _ if "-+0123456789.".contains(c) => parse_number(s, pos),
            _ => Err(()),
        }
    }

    /// `extract_json`'s full parse (its regex fallback left out: for the aspects judge its
    /// result is never a valid reply).
    pub(super) fn extract(raw: &str) -> Option<Py> {
        let a = raw.find('{')?;
        let b = raw.rfind('}')?;
        if b < a {
            return None;
        }
        let sub: Vec<char> = raw[a..=b].chars().collect();
        parse_value(&sub, 0, 0).ok().map(|(v, _)| v)
    }

    /// What `state_reward_on_response.compute_score` accepts: every entry an object with a
    /// `"score"` that `float()` takes (clamped to [0, 1]), the keys exactly `keys`.
    pub(super) fn aspects(raw: &str, keys: &[String]) -> Option<BTreeMap<String, ItemScore>> {
        let Py::Dict(entries) = extract(raw)? else {
            return None;
        };
        let mut found = BTreeMap::new();
        for (key, value) in entries {
            let (Py::Str(key), Py::Dict(fields)) = (key, value) else {
                return None;
            };
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| matches!(k, Py::Str(k) if k == name))
                    .map(|(_, v)| v)
            };
            let score = field("score")?.float().filter(|x| !x.is_nan())?;
            let thought = match field("thought") {
                Some(Py::Str(t)) => Some(t.clone()),
                _ => None,
            };
            found.insert(key, (score.clamp(0.0, 1.0), thought));
        }
        let same = found.len() == keys.len() && keys.iter().all(|k| found.contains_key(k));
        same.then_some(found)
    }
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

    fn keys() -> Vec<String> {
        ["stance", "emotion"].map(String::from).to_vec()
    }

    /// Replies the recipe's response-level judge accepts (`extract_json`, then its checks), with
    /// the scores it takes from them, worked out by hand from its code.
    #[test]
    fn aspects_accept_what_the_recipe_accepts_with_its_scores() {
        let cases: [(&str, [f64; 2]); 9] = [
            // Prose around the object, and a second object after it (the parse stops after the
            // first value of the first-{-to-last-} cut).
            (
                "Here you go: {\"stance\": {\"thought\": \"a\", \"score\": 0.7}, \"emotion\": \
                 {\"thought\": \"b\", \"score\": 0}} and {\"note\": 1} thanks",
                [0.7, 0.0],
            ),
            // Single quotes, trailing commas, a raw newline and an escaped quote in a thought.
            (
                "{'stance': {'thought': 'line one\nline \\'two\\'', 'score': .5,}, \
                 'emotion': {'score': +1e-1},}",
                [0.5, 0.1],
            ),
            // Scores written as strings go through convert_value, then float().
            (
                r#"{"stance": {"score": "0.8"}, "emotion": {"score": " 1 "}}"#,
                [0.8, 1.0],
            ),
            // Clamped to [0, 1]; float(True) is 1.0; TRUE matched in any case.
            (
                r#"{"stance": {"score": 1.7}, "emotion": {"score": TRUE}}"#,
                [1.0, 1.0],
            ),
            (
                r#"{"stance": {"score": -3}, "emotion": {"score": "true"}}"#,
                [0.0, 1.0],
            ),
            // A triple-quoted thought (raw, quotes inside kept); the thought is optional.
            (
                "{\"stance\": {\"thought\": '''it's \"x\"''', \"score\": \"1_0e-2\"}, \
                 \"emotion\": {\"score\": 0.25}}",
                [0.1, 0.25],
            ),
            // A repeated key: the later value wins, as in a Python dict.
            (
                r#"{"stance": {"score": 0.1}, "emotion": {"score": 0.2}, "stance": {"score": 0.3}}"#,
                [0.3, 0.2],
            ),
            // float("inf") of a string score, then clamped; 5. and 007 are numbers to Python.
            (
                r#"{"stance": {"score": "-Infinity"}, "emotion": {"score": 5.}}"#,
                [0.0, 1.0],
            ),
            (
                r#"{"stance": {"score": 007, "score2": [1, {"a": null}]}, "emotion": {"score": 0.0}}"#,
                [1.0, 0.0],
            ),
        ];
        for (raw, [stance, emotion]) in cases {
            let s = parse_aspects(raw, &keys()).unwrap_or_else(|| panic!("refused: {raw}"));
            assert_eq!(s["stance"].0, stance, "{raw}");
            assert_eq!(s["emotion"].0, emotion, "{raw}");
            // The recipe's own reading accepts it, not only the fallbacks.
            assert!(recipe_json::aspects(raw, &keys()).is_some(), "{raw}");
        }
        let s = parse_aspects(cases[1].0, &keys()).unwrap();
        assert_eq!(s["stance"].1.as_deref(), Some("line one\nline 'two'"));
        let s = parse_aspects(cases[5].0, &keys()).unwrap();
        assert_eq!(s["stance"].1.as_deref(), Some("it's \"x\""));
    }

    /// Replies the recipe asks again for: a state missing, a score float() refuses, an entry
    /// that is not an object, extra keys, broken JSON. Where the lenient fallbacks still find
    /// every state's score, ours takes it; a missing state or an unreadable score stays refused.
    #[test]
    fn aspects_the_recipe_refuses() {
        let refused_by_both = [
            r#"{"stance": {"score": 0.5}}"#,
            r#"{"stance": {"score": 0.5}, "emotion": {"score": "high"}}"#,
            r#"{"stance": {"score": 0.5}, "emotion": {"score": null}}"#,
            r#"{"stance": {"score": 0.5}, "emotion": {"thought": "no score"}}"#,
            "no json at all",
        ];
        for raw in refused_by_both {
            assert!(recipe_json::aspects(raw, &keys()).is_none(), "{raw}");
            assert!(parse_aspects(raw, &keys()).is_none(), "{raw}");
        }
        // float("nan") the recipe takes (and carries into its reward); refused here.
        let nan = r#"{"stance": {"score": 0.5}, "emotion": {"score": "nan"}}"#;
        assert!(parse_aspects(nan, &keys()).is_none());
        let refused_by_the_recipe = [
            // An extra key (its key set must equal the states').
            r#"{"stance": {"score": 0.5}, "emotion": {"score": 0.2}, "response": {"score": 1}}"#,
            // A bare number instead of an object.
            r#"{"stance": 0.5, "emotion": {"score": 0.2}}"#,
            // The closing brace of the object missing: its parse fails.
            r#"{"stance": {"score": 0.5,}, "emotion": {"score": 0.2}"#,
        ];
        for raw in refused_by_the_recipe {
            assert!(recipe_json::aspects(raw, &keys()).is_none(), "{raw}");
            let s = parse_aspects(raw, &keys()).unwrap_or_else(|| panic!("{raw}"));
            assert_eq!((s["stance"].0, s["emotion"].0), (0.5, 0.2), "{raw}");
        }
    }
}
