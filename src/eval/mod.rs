//! Evaluation runs: simulate every scenario that has a reference reply, judge the reply (and in
//! `humanlm` mode each state, against the reply), and write a run folder:
//!
//! - `run.json`: everything needed to reproduce the run;
//! - `samples.jsonl`: one line per sample with every score and the raw judge text;
//! - `summary.json`: per checkpoint, metric means ×100 with bootstrap 95% intervals over
//!   scenarios, and failure-mode diagnostics.
//!
//! A run's folder name ends with a hash of its configuration, so running the same command again
//! resumes it: scenarios whose samples are all in `samples.jsonl` are not generated again, and
//! those with a failed judgement are judged again from their recorded samples.

pub mod diagnostics;
pub mod paper;
pub mod protocol;
pub mod stats;

use crate::generate::SamplingParams;
use crate::judge::{Cache, Group, Item, Judge, JudgeConfig, Score};
use crate::model::weights::LoadOptions;
use crate::model::Checkpoint;
use crate::prompts::{PromptSet, RESPONSE};
use crate::scenario::Scenario;
use crate::sim::{self, Mode, Options, SimSample};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stats::Estimate;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What can stop an evaluation run or a comparison of two runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder of the run (scenarios, run folder, samples) is at fault.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// Nothing to evaluate or compare, or the run was cancelled.
    #[error("{0}")]
    Msg(String),
    #[error(transparent)]
    Model(#[from] crate::model::Error),
    #[error(transparent)]
    Prompt(#[from] crate::prompts::Error),
    #[error(transparent)]
    Scenario(#[from] crate::scenario::Error),
    #[error(transparent)]
    Sim(#[from] crate::sim::Error),
    #[error(transparent)]
    Judge(#[from] crate::judge::Error),
    #[error(transparent)]
    Write(#[from] crate::files::WriteError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Toml(#[from] toml::ser::Error),
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

/// What to evaluate.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSpec {
    pub checkpoints: Vec<String>,
    pub scenarios: PathBuf,
    pub mode: Mode,
    /// `None`: each checkpoint's own default set.
    pub prompts: Option<String>,
    pub judge: JudgeConfig,
    /// Samples, seed and decoding: the same choice `simulate` and the workbench take, resolved
    /// against each checkpoint's prompt set (its defaults fill what is unset).
    pub sampling: sim::SamplingChoice,
    pub truncate: sim::Truncate,
    /// The folder run folders are created in.
    pub out: PathBuf,
    /// A preset that fixes the decoding to the paper's evaluation (`--protocol paper`).
    pub protocol: Option<protocol::Protocol>,
    /// The published method each checkpoint's numbers are shown beside ([`paper::find`]):
    /// none, one per checkpoint, or one for a single checkpoint.
    pub paper: Vec<String>,
    /// A judge that also scores each reply on every state dimension (the paper's state
    /// alignment, the recipe's `state_reward_on_response`), as `aspect.<dim>` metrics.
    pub state_judge: Option<JudgeConfig>,
    /// Judge every recorded sample again, without regenerating and without the judge cache.
    pub rejudge: bool,
    /// Where local checkpoints run: `cpu`, `cuda` or `cuda:N`.
    pub device: String,
}

/// One line of `samples.jsonl`: the simulated sample as the simulator returned it (its fields
/// at the top level of the line), and what the evaluation measured on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleRecord {
    pub checkpoint: String,
    pub scenario: String,
    pub domain: String,
    pub sample: usize,
    #[serde(flatten)]
    pub sim: SimSample,
    pub reference: String,
    /// The judge's score per judged dimension (`response`, and the states in humanlm mode;
    /// `aspect.<dim>` for the six-aspect judge), in [0, 1].
    pub scores: BTreeMap<String, Score>,
    /// Always-on similarity measures of the reply: `embedding`, `rouge_l`, `token_f1`.
    pub similarity: BTreeMap<String, f64>,
    pub reply_words: usize,
    pub reference_words: usize,
    pub assistant_speak: bool,
    pub context_copy: bool,
}

/// Per checkpoint in `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointSummary {
    pub checkpoint: String,
    /// What it was judged on, in its prompt set's order ([`judged_dimensions`]); tables and
    /// charts list the metrics in this order. Empty in summaries written before it was recorded.
    #[serde(default)]
    pub dimensions: Vec<String>,
    pub n_scenarios: usize,
    /// Scenario means ×100 with bootstrap 95% intervals, pooled over every scenario.
    pub metrics: BTreeMap<String, Estimate>,
    /// Per metric, each domain's scenario mean ×100 with its interval (the paper's Table 1
    /// columns).
    #[serde(default)]
    pub by_domain: BTreeMap<String, BTreeMap<String, Estimate>>,
    /// Per metric, the mean of the domain means, each domain weighted equally as the paper's
    /// average is, with a stratified bootstrap interval.
    #[serde(default)]
    pub macro_average: BTreeMap<String, Estimate>,
    /// The published numbers of the method the run reproduces, when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paper: Option<paper::PaperMethod>,
    /// What the reader must know to trust the numbers (e.g. an n-gram ban an endpoint did not
    /// apply).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub diagnostics: Diagnostics,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Diagnostics {
    /// Samples that kept the strict tag format.
    pub valid_rate: f64,
    /// Mean of reply words ÷ reference words.
    pub length_ratio: f64,
    /// Distinct word bigrams across all replies.
    pub distinct_2: f64,
    pub assistant_speak_rate: f64,
    pub context_copy_rate: f64,
    /// Scores that fell back to 0 because the judge failed after its retries.
    pub judge_failures: usize,
    /// Scenarios left out because they have no reference reply (never scored 0).
    pub skipped_no_reference: usize,
    pub samples: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub run: String,
    pub checkpoints: Vec<CheckpointSummary>,
}

/// What the runner reports as it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    Started {
        total: usize,
        resumed: usize,
    },
    Loading {
        checkpoint: String,
    },
    Scenario {
        checkpoint: String,
        scenario: String,
    },
    Done {
        checkpoint: String,
        scenario: String,
    },
    Skipped {
        scenario: String,
        why: String,
    },
}

/// The similarity measures of the reply every run reports beside the judged dimensions, in
/// table order.
pub const SIMILARITY: [&str; 3] = [EMBEDDING, ROUGE_L, TOKEN_F1];
const EMBEDDING: &str = "embedding";
const ROUGE_L: &str = "rouge_l";
const TOKEN_F1: &str = "token_f1";

/// What a metric is: a judged dimension, a similarity measure (by its place in [`SIMILARITY`])
/// or one of the six-aspect judge's `aspect.*`, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum MetricGroup {
    Dimension,
    Similarity(usize),
    Aspect,
}

fn metric_group(name: &str) -> MetricGroup {
    match SIMILARITY.iter().position(|x| *x == name) {
        Some(i) => MetricGroup::Similarity(i),
        None if name.starts_with("aspect.") => MetricGroup::Aspect,
        None => MetricGroup::Dimension,
    }
}

/// The names of `metrics` in table order: the judged dimensions in the prompt set's order
/// (`dimensions`, as a summary records them; others after, by name), then the similarity
/// measures, then the aspects.
pub fn metrics_in_order<'a, V>(
    metrics: &'a BTreeMap<String, V>,
    dimensions: &[String],
) -> Vec<&'a String> {
    let mut keys: Vec<&String> = metrics.keys().collect();
    keys.sort_by_key(|k| {
        let at = dimensions.iter().position(|d| d == *k);
        (metric_group(k), at.unwrap_or(dimensions.len()), k.as_str())
    });
    keys
}

impl CheckpointSummary {
    /// The judged dimensions in chart order: as recorded, or for an older summary, the metrics
    /// that are neither similarity measures nor aspects, by name.
    pub fn judged(&self) -> Vec<String> {
        if !self.dimensions.is_empty() {
            return self.dimensions.clone();
        }
        self.metrics
            .keys()
            .filter(|k| metric_group(k) == MetricGroup::Dimension)
            .cloned()
            .collect()
    }
}

/// The dimensions a set's runs are judged on, in its order: the reply, then its states.
pub fn judged_dimensions(set: &PromptSet) -> Vec<String> {
    std::iter::once(set.response())
        .chain(set.dimensions())
        .map(|d| d.key.clone())
        .collect()
}

/// A fingerprint of a checkpoint's files (sizes, and the first MiB of each), cheap even for
/// large checkpoints.
fn fingerprint(path: &Path) -> String {
    let mut files = vec![];
    if path.is_file() {
        files.push(path.to_path_buf());
    } else if let Ok(rd) = std::fs::read_dir(path) {
        files.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_file()));
    }
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        h.update(len.to_le_bytes());
        if let Ok(mut file) = std::fs::File::open(&f) {
            use std::io::Read;
            let mut buf = vec![0u8; 1 << 20];
            let n = file.read(&mut buf).unwrap_or(0);
            h.update(&buf[..n]);
        }
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn sha_hex(bytes: &[u8], n: usize) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(n)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The scenarios a run evaluates: those with a reference reply, in table order (domain, id),
/// with a hash of every loaded scenario (run.json) and the count left out for having no reply.
pub struct Scenarios {
    pub path: PathBuf,
    pub with_reference: Vec<Scenario>,
    pub skipped_no_reference: usize,
    hash: String,
}

impl Scenarios {
    /// `scenarios` (already loaded, e.g. converted from a HUMANUAL file), read as from `path`.
    pub fn from_loaded(
        path: &Path,
        scenarios: Vec<Scenario>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Scenarios> {
        let mut with_reference = vec![];
        let mut skipped = 0;
        let mut hash = Sha256::new();
        for sc in scenarios {
            hash.update(toml::to_string(&sc)?.as_bytes());
            if sc.target.response.is_none() {
                skipped += 1;
                progress(Progress::Skipped {
                    scenario: sc.id.clone(),
                    why: "no reference reply".into(),
                });
                continue;
            }
            with_reference.push(sc);
        }
        with_reference.sort_by(|a, b| (a.domain, &a.id).cmp(&(b.domain, &b.id)));
        if with_reference.is_empty() {
            return Err(Error::file(
                path,
                "no scenario with a reference reply ([target] response) to evaluate",
            ));
        }
        Ok(Scenarios {
            path: path.to_path_buf(),
            with_reference,
            skipped_no_reference: skipped,
            hash: hash
                .finalize()
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
    }

    /// Every scenario file under `path`; each must load.
    pub fn load(path: &Path, progress: &mut dyn FnMut(Progress)) -> Result<Scenarios> {
        let mut all = vec![];
        for l in crate::scenario::load_all(path) {
            all.push(l?.scenario);
        }
        Scenarios::from_loaded(path, all, progress)
    }
}

/// A model in memory to evaluate ([`run_live`]): the model, the prompt set it runs under, and
/// what identifies its weights (e.g. the training run and step).
pub struct Live<'a> {
    pub model: &'a crate::model::Model,
    pub set: Arc<PromptSet>,
    pub fingerprint: String,
}

/// Where a checkpoint's samples come from.
enum Source<'a> {
    /// A local checkpoint, loaded when its turn comes.
    Checkpoint(Checkpoint),
    /// `endpoint:URL#MODEL`.
    Endpoint,
    /// A model already in memory (a training run's current policy, adapters live), with what
    /// identifies its weights in run.json.
    Live {
        model: &'a crate::model::Model,
        fingerprint: String,
    },
}

/// One checkpoint of a run: how it was named, its label in tables, where its samples come
/// from, and the prompt set it runs under.
struct Subject<'a> {
    spec: String,
    label: String,
    source: Source<'a>,
    set: Arc<PromptSet>,
}

impl Subject<'_> {
    /// What identifies the weights in run.json (name, spec, path, fingerprint, adapter).
    fn identity(&self) -> serde_json::Value {
        let (path, fingerprint, adapter) = match &self.source {
            Source::Checkpoint(c) => (
                Some(c.path.clone()),
                self::fingerprint(&c.path),
                match &c.kind {
                    crate::model::checkpoint::CheckpointKind::Adapter { base, .. } => {
                        serde_json::json!({"base": base.name, "base_fingerprint": self::fingerprint(&base.path)})
                    }
                    _ => serde_json::Value::Null,
                },
            ),
            Source::Endpoint => (None, self.spec.clone(), serde_json::Value::Null),
            Source::Live { model, fingerprint } => (
                Some(model.checkpoint.path.clone()),
                fingerprint.clone(),
                serde_json::json!({"live": true}),
            ),
        };
        serde_json::json!({
            "name": self.label,
            "spec": self.spec,
            "path": path,
            "fingerprint": fingerprint,
            "adapter": adapter,
        })
    }
}

/// Resolve everything a run needs, then simulate, judge and summarise. Returns the run folder.
pub fn run(
    spec: &EvalSpec,
    roots: &crate::roots::Roots,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf> {
    if spec.checkpoints.is_empty() {
        return Err(Error::Msg("no checkpoint to evaluate".into()));
    }
    // Scenarios: every file must load; those without a reference reply are skipped and counted.
    let scenarios = Scenarios::load(&spec.scenarios, progress)?;
    // Each checkpoint: a local one (resolved now, loaded when its turn comes) or an endpoint.
    let mut subjects = vec![];
    for name in &spec.checkpoints {
        let source = match crate::remote::Endpoint::parse_spec(name) {
            Some(_) => Source::Endpoint,
            None => Source::Checkpoint(Checkpoint::resolve(name, &roots.checkpoints)?),
        };
        let (own, label) = match &source {
            Source::Checkpoint(c) => (c.default_prompt_set()?, c.name.clone()),
            _ => (None, name.clone()),
        };
        let set_name = crate::prompts::set_for(spec.prompts.as_deref(), own);
        subjects.push(Subject {
            spec: name.clone(),
            label,
            source,
            set: Arc::new(PromptSet::load(&set_name, &roots.prompts)?),
        });
    }
    execute(spec, roots, &scenarios, subjects, cancel, progress)
}

/// Evaluate a model already in memory under `set` (a training run's validation: the current
/// policy with its adapters live), as `spec.checkpoints[0]` names it. The same pass as
/// [`run`]: one run folder under `spec.out`, resumable, comparable with `humanlm compare`.
pub fn run_live(
    spec: &EvalSpec,
    roots: &crate::roots::Roots,
    scenarios: &Scenarios,
    live: Live,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf> {
    let [name] = spec.checkpoints.as_slice() else {
        return Err(Error::Msg("a live evaluation names one checkpoint".into()));
    };
    let subject = Subject {
        spec: name.clone(),
        label: name.clone(),
        source: Source::Live {
            model: live.model,
            fingerprint: live.fingerprint,
        },
        set: live.set,
    };
    execute(spec, roots, scenarios, vec![subject], cancel, progress)
}

/// Simulate, judge and summarise `subjects` on `scenarios`.
fn execute(
    spec: &EvalSpec,
    roots: &crate::roots::Roots,
    scenarios: &Scenarios,
    resolved: Vec<Subject>,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf> {
    let checkpoints_root = &roots.checkpoints;
    let skipped = scenarios.skipped_no_reference;
    let scenario_hash = scenarios.hash.clone();
    let scenarios_path = scenarios.path.clone();
    let scenarios = &scenarios.with_reference;
    // A preset fixes the decoding (and refuses what contradicts it) before anything runs.
    let sampling = match spec.protocol {
        Some(p) => {
            for r in &resolved {
                p.check_set(&r.set)?;
            }
            p.apply(&spec.sampling)?
        }
        None => spec.sampling.clone(),
    };
    let papers: Vec<Option<paper::PaperMethod>> = match spec.paper.len() {
        0 => vec![None; resolved.len()],
        n if n == resolved.len() => spec
            .paper
            .iter()
            .map(|m| paper::find(m).map(Some).map_err(Error::Msg))
            .collect::<Result<_>>()?,
        n => {
            return Err(Error::Msg(format!(
                "--paper given {n} times for {} checkpoints: name one published method per \
                 checkpoint, in the same order",
                resolved.len()
            )))
        }
    };
    let device = crate::model::device::parse_device(&spec.device)?;
    let judge = spec.judge.build(roots, resolved[0].set.clone())?;
    let state_judge = match &spec.state_judge {
        Some(c) => {
            let j = c.build(roots, resolved[0].set.clone())?;
            // An empty reply is scored without a call, which shows what the judge scores.
            match j.score_aspects("", "", "") {
                None => {
                    return Err(Error::Msg(format!(
                        "--state-judge: judge {} scores one dimension at a time; state \
                         alignment needs a judge that scores a reply on every state \
                         (kind = \"aspects\")",
                        j.name()
                    )))
                }
                Some(Ok(dims)) if dims.is_empty() => {
                    return Err(Error::Msg(format!(
                        "--state-judge: judge {} has no state dimensions to score (its prompt \
                         set has only the reply); name a set with states in its `prompts`",
                        j.name()
                    )))
                }
                _ => {}
            }
            Some(j)
        }
        None => None,
    };
    // Embedding similarity of the reply is always reported when the embedder is present.
    let embedder_dir = checkpoints_root.join(crate::judge::embedding::DEFAULT_EMBEDDER);
    let embedder = crate::judge::EmbeddingJudge::load(&embedder_dir).ok();

    // An endpoint is sent the n-gram size, but servers other than `humanlm serve` (vLLM, the
    // hosted APIs) ignore fields they do not know: the report says so instead of implying a
    // ban ran.
    let notes: Vec<Vec<String>> = resolved
        .iter()
        .map(
            |Subject {
                 label, source, set, ..
             }| {
                let size = sampling.params(set).no_repeat_ngram;
                if matches!(source, Source::Endpoint) && size > 0 {
                    vec![format!(
                        "{label}: ban not applied — the {size}-gram ban was requested, but an \
                     endpoint applies it only if it is `humanlm serve` (vLLM and hosted APIs \
                     ignore the field)"
                    )]
                } else {
                    vec![]
                }
            },
        )
        .collect();
    let run_info = serde_json::json!({
        "program": {"name": "humanlm", "version": env!("CARGO_PKG_VERSION")},
        "mode": spec.mode,
        "protocol": spec.protocol.map(|p| p.describe(&sampling, &resolved[0].set)),
        "device": spec.device,
        "n": sampling.n,
        "seed": sampling.seed,
        "sampling": sampling,
        "truncate": spec.truncate,
        "scenarios": {
            "path": scenarios_path,
            "with_reference": scenarios.len(),
            "skipped_no_reference": skipped,
            "hash": scenario_hash,
        },
        "judge": {"name": judge.name(), "config": spec.judge, "resolved": judge.config()},
        "state_judge": state_judge.as_ref().map(|j| serde_json::json!({
            "name": j.name(), "config": spec.state_judge, "resolved": j.config(),
        })),
        "checkpoints": resolved.iter().zip(&papers).zip(&notes).map(|((subject, paper), notes)| {
            let set = &subject.set;
            let mut info = subject.identity();
            info["prompt_set"] = set.name.clone().into();
            info["prompt_hash"] = set.hash.clone().into();
            info["sampling_defaults"] = serde_json::to_value(&set.sampling).unwrap_or_default();
            info["sampling_used"] = serde_json::to_value(sampling.params(set)).unwrap_or_default();
            info["paper"] = serde_json::to_value(paper.as_ref().map(|m| &m.name)).unwrap_or_default();
            info["notes"] = serde_json::to_value(notes).unwrap_or_default();
            info
        }).collect::<Vec<_>>(),
    });
    let id = sha_hex(run_info.to_string().as_bytes(), 4);
    let label: String = format!(
        "{}-{}",
        serde_json::to_value(spec.mode)?.as_str().unwrap_or("run"),
        spec.checkpoints
            .iter()
            .map(|c| {
                Path::new(c)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("+")
    )
    .chars()
    .map(|c| {
        if c.is_alphanumeric() || c == '-' || c == '+' {
            c
        } else {
            '_'
        }
    })
    .take(60)
    .collect();
    let dir = spec.out.join(format!("{label}-{id}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, format!("cannot create: {e}")))?;
    let run_json = dir.join("run.json");
    if !run_json.exists() {
        let mut info = run_info.clone();
        info["id"] = id.clone().into();
        info["created"] = now_rfc3339().into();
        crate::files::write(&run_json, &serde_json::to_string_pretty(&info)?)?;
    }
    // Re-judging asks the judge again for everything, so it must not read the cache (it still
    // writes it).
    let cache = Cache::new(spec.out.join(".judge-cache")).refreshing(spec.rejudge);

    // Resume: keep complete scenarios, drop partial ones (and a line cut off by a crash).
    let samples_path = dir.join("samples.jsonl");
    let mut done: Vec<SampleRecord> = read_samples(&samples_path);
    let n = sampling.n.max(1);
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for r in &done {
        *counts
            .entry((r.checkpoint.clone(), r.scenario.clone()))
            .or_default() += 1;
    }
    done.retain(|r| counts[&(r.checkpoint.clone(), r.scenario.clone())] == n);
    // A judgement that failed (an outage, a reply without scores) is not final: the scenario's
    // samples, already generated, are judged again (the cache holds only successes, so only
    // the failed groups are asked again).
    let mut failed: Vec<(String, String)> = vec![];
    // `rejudge` treats every recorded judgement as one to ask again.
    for r in &done {
        let key = (r.checkpoint.clone(), r.scenario.clone());
        if (spec.rejudge || r.scores.values().any(|s| s.error.is_some())) && !failed.contains(&key)
        {
            failed.push(key);
        }
    }
    let judges = Judges {
        main: judge.as_ref(),
        state: state_judge.as_deref(),
        embedder: embedder.as_ref(),
        cache: &cache,
    };
    for (checkpoint, scenario) in &failed {
        let (Some(set), Some(sc)) = (
            resolved
                .iter()
                .find(|r| &r.label == checkpoint)
                .map(|r| &r.set),
            scenarios.iter().find(|s| &s.id == scenario),
        ) else {
            continue; // no longer part of the run: its records stay as they are
        };
        let mut old: Vec<&SampleRecord> = done
            .iter()
            .filter(|r| &r.checkpoint == checkpoint && &r.scenario == scenario)
            .collect();
        old.sort_by_key(|r| r.sample);
        let samples: Vec<SimSample> = old.iter().map(|r| r.sim.clone()).collect();
        let fresh = judge_samples(checkpoint, set, sc, &samples, &judges)?;
        done.retain(|r| !(&r.checkpoint == checkpoint && &r.scenario == scenario));
        done.extend(fresh);
    }
    let mut text = String::new();
    for r in &done {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    crate::files::write(&samples_path, &text)?;
    let complete: std::collections::HashSet<(String, String)> = done
        .iter()
        .map(|r| (r.checkpoint.clone(), r.scenario.clone()))
        .collect();
    let total = resolved.len() * scenarios.len();
    progress(Progress::Started {
        total,
        resumed: complete.len(),
    });

    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&samples_path)
        .map_err(|e| Error::file(&samples_path, format!("cannot open: {e}")))?;
    for subject in &resolved {
        let (name, set) = (&subject.label, &subject.set);
        let todo: Vec<&Scenario> = scenarios
            .iter()
            .filter(|s| !complete.contains(&(name.clone(), s.id.clone())))
            .collect();
        if todo.is_empty() {
            continue;
        }
        let simulator = match &subject.source {
            Source::Live { .. } => None,
            _ => {
                progress(Progress::Loading {
                    checkpoint: name.clone(),
                });
                let load = LoadOptions {
                    device: device.clone(),
                    ..LoadOptions::default()
                };
                Some(sim::Simulator::open(
                    &subject.spec,
                    checkpoints_root,
                    &load,
                )?)
            }
        };
        let engine = match (&simulator, &subject.source) {
            (Some(s), _) => s.engine(),
            (None, Source::Live { model, .. }) => sim::Engine::Local(model),
            (None, _) => unreachable!("every other source is opened above"),
        };
        let params = SamplingParams {
            n,
            ..sampling.params(set)
        };
        let opts = Options {
            mode: spec.mode,
            params,
            truncate: spec.truncate,
        };
        // Scenarios are simulated a few at a time, their calls decoding together (each sample
        // the one it gets alone): as many as fill one joint decode step, so the KV caches held
        // at once stay a step's worth.
        let rows = spec.mode.calls(set) * n.max(1);
        let at_once = (crate::model::DECODE_ROWS_TOGETHER / rows).max(1);
        for chunk in todo.chunks(at_once) {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(Error::Msg(
                    "cancelled; run the same command again to resume".into(),
                ));
            }
            for sc in chunk {
                progress(Progress::Scenario {
                    checkpoint: name.clone(),
                    scenario: sc.id.clone(),
                });
            }
            let simulated = sim::simulate_many(engine, set, chunk, &opts, cancel)?;
            for (sc, (_, samples)) in chunk.iter().zip(simulated) {
                let records = judge_samples(name, set, sc, &samples, &judges)?;
                let mut lines = String::new();
                for r in &records {
                    lines.push_str(&serde_json::to_string(r)?);
                    lines.push('\n');
                }
                file.write_all(lines.as_bytes())
                    .and_then(|_| file.flush())
                    .map_err(|e| Error::file(&samples_path, format!("cannot write: {e}")))?;
                progress(Progress::Done {
                    checkpoint: name.clone(),
                    scenario: sc.id.clone(),
                });
            }
        }
    }
    let records = read_samples(&samples_path);
    let reported: Vec<Reported> = resolved
        .iter()
        .zip(papers)
        .zip(notes)
        .map(|((r, paper), notes)| Reported {
            checkpoint: r.label.clone(),
            dimensions: judged_dimensions(&r.set),
            paper,
            notes,
        })
        .collect();
    let summary = summarise(&dir, &reported, &records, skipped, sampling.seed);
    crate::files::write(
        &dir.join("summary.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(dir)
}

/// The judges of a run.
struct Judges<'a> {
    main: &'a dyn Judge,
    /// Scores each reply on every state dimension (state alignment).
    state: Option<&'a dyn Judge>,
    embedder: Option<&'a crate::judge::EmbeddingJudge>,
    cache: &'a Cache,
}

/// Judge one scenario's samples: the reply as one group, each state as one group, and with a
/// state judge each reply on every state dimension.
fn judge_samples(
    checkpoint: &str,
    set: &PromptSet,
    sc: &Scenario,
    samples: &[SimSample],
    judges: &Judges,
) -> Result<Vec<SampleRecord>> {
    let Judges {
        main: judge,
        state: state_judge,
        embedder,
        cache,
    } = *judges;
    let reference = sc.target.response.as_deref().unwrap_or_default();
    let context = set.thread(&sim::thread_turns(sc))?;
    let mut scores: Vec<BTreeMap<String, Score>> = vec![BTreeMap::new(); samples.len()];
    let mut dims: Vec<&crate::prompts::StateSpec> = vec![set.response()];
    if samples.iter().any(|s| !s.states.is_empty()) {
        dims.extend(set.dimensions());
    }
    for dim in dims {
        let texts: Vec<String> = samples
            .iter()
            .map(|s| {
                if dim.key == RESPONSE {
                    s.response.clone()
                } else {
                    s.states.get(&dim.key).cloned().unwrap_or_default()
                }
            })
            .collect();
        let group = Group {
            dimension: dim,
            context: &context,
            reference,
            items: texts
                .iter()
                .zip(samples)
                .map(|(t, s)| Item {
                    text: t,
                    valid: if dim.key == RESPONSE {
                        s.outputs
                            .iter()
                            .find(|(c, _)| sim::CallKind::of(c).writes_reply())
                            .is_none_or(|(_, o)| o.valid)
                    } else {
                        s.outputs.get(&dim.key).is_none_or(|o| o.valid)
                    },
                    tokens: judge.counts_tokens().then(|| {
                        s.outputs
                            .iter()
                            .filter(|(c, _)| {
                                if dim.key == RESPONSE {
                                    sim::CallKind::of(c).writes_reply()
                                } else {
                                    **c == dim.key
                                }
                            })
                            .map(|(_, o)| o.tokens)
                            .sum()
                    }),
                })
                .collect(),
        };
        for (i, sc) in cache.score(judge, &group)?.into_iter().enumerate() {
            scores[i].insert(dim.key.clone(), sc);
        }
    }
    let responses: Vec<&str> = samples.iter().map(|s| s.response.as_str()).collect();
    let emb = match embedder {
        Some(e) => Some(e.similarities(reference, &responses)?),
        None => None,
    };
    let mut out = vec![];
    for (i, s) in samples.iter().enumerate() {
        // The state judge when there is one, else the main judge if it scores aspects.
        let aspects = match state_judge {
            Some(j) => cache.score_aspects(j, &context, reference, &s.response),
            None => cache.score_aspects(judge, &context, reference, &s.response),
        };
        match aspects {
            Some(Ok(by)) => {
                for (k, v) in by {
                    scores[i].insert(format!("aspect.{k}"), v);
                }
            }
            Some(Err(e)) if state_judge.is_some() => return Err(e.into()),
            _ => {}
        }
        let mut similarity = BTreeMap::new();
        if let Some(e) = &emb {
            similarity.insert(
                EMBEDDING.to_string(),
                if s.response.trim().is_empty() {
                    0.0
                } else {
                    e[i]
                },
            );
        }
        similarity.insert(
            ROUGE_L.to_string(),
            crate::judge::lexical::rouge_l_f1(&s.response, reference),
        );
        similarity.insert(
            TOKEN_F1.to_string(),
            crate::judge::lexical::token_f1(&s.response, reference),
        );
        out.push(SampleRecord {
            checkpoint: checkpoint.to_string(),
            scenario: sc.id.clone(),
            domain: sc.domain.name().to_string(),
            sample: i,
            sim: s.clone(),
            reference: reference.to_string(),
            scores: std::mem::take(&mut scores[i]),
            similarity,
            reply_words: diagnostics::word_count(&s.response),
            reference_words: diagnostics::word_count(reference),
            assistant_speak: diagnostics::assistant_speak(&s.response),
            context_copy: diagnostics::context_copy(&s.response, &context),
        });
    }
    Ok(out)
}

pub fn read_samples(path: &Path) -> Vec<SampleRecord> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Per-scenario means of each metric for one checkpoint (the unit the intervals resample).
pub fn scenario_means(
    records: &[SampleRecord],
    checkpoint: &str,
) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut sums: BTreeMap<String, BTreeMap<String, (f64, usize)>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.checkpoint == checkpoint) {
        let values = r
            .scores
            .iter()
            .map(|(k, s)| (k.clone(), s.score))
            .chain(r.similarity.iter().map(|(k, v)| (k.clone(), *v)));
        for (k, v) in values {
            let e = sums
                .entry(k)
                .or_default()
                .entry(r.scenario.clone())
                .or_insert((0.0, 0));
            e.0 += v;
            e.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(k, by)| {
            (
                k,
                by.into_iter()
                    .map(|(s, (sum, n))| (s, sum / n as f64))
                    .collect(),
            )
        })
        .collect()
}

/// What a summary reports of one checkpoint besides its records.
#[derive(Debug, Clone)]
pub struct Reported {
    pub checkpoint: String,
    /// What it was judged on, in its prompt set's order.
    pub dimensions: Vec<String>,
    pub paper: Option<paper::PaperMethod>,
    pub notes: Vec<String>,
}

/// Each scenario's domain, from a checkpoint's records.
fn scenario_domains(records: &[SampleRecord], checkpoint: &str) -> BTreeMap<String, String> {
    records
        .iter()
        .filter(|r| r.checkpoint == checkpoint)
        .map(|r| (r.scenario.clone(), r.domain.clone()))
        .collect()
}

/// Scenario values ×100 grouped by domain, domains in the benchmark's order.
fn by_domain_values(
    by_scenario: &BTreeMap<String, f64>,
    domains: &BTreeMap<String, String>,
) -> Vec<(String, Vec<f64>)> {
    let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (sc, v) in by_scenario {
        let d = domains.get(sc).cloned().unwrap_or_default();
        groups.entry(d).or_default().push(v * 100.0);
    }
    let mut out: Vec<(String, Vec<f64>)> = groups.into_iter().collect();
    out.sort_by_key(|(d, _)| domain_order(d));
    out
}

/// A domain's place in tables: the benchmark's order, unknown names after.
pub fn domain_order(name: &str) -> (usize, String) {
    let at = crate::scenario::Domain::ALL
        .iter()
        .position(|d| d.name() == name)
        .unwrap_or(usize::MAX);
    (at, name.to_string())
}

/// The summary of a run's records, one entry per reported checkpoint.
pub fn summarise(
    dir: &Path,
    checkpoints: &[Reported],
    records: &[SampleRecord],
    skipped: usize,
    seed: u64,
) -> Summary {
    let mut out = vec![];
    for rep in checkpoints {
        let ckpt = &rep.checkpoint;
        let mine: Vec<&SampleRecord> = records.iter().filter(|r| &r.checkpoint == ckpt).collect();
        let domains = scenario_domains(records, ckpt);
        let means = scenario_means(records, ckpt);
        let mut by_domain = BTreeMap::new();
        let mut macro_average = BTreeMap::new();
        for (k, by) in &means {
            let groups = by_domain_values(by, &domains);
            by_domain.insert(
                k.clone(),
                groups
                    .iter()
                    .map(|(d, xs)| (d.clone(), stats::bootstrap(xs, seed)))
                    .collect::<BTreeMap<_, _>>(),
            );
            let xs: Vec<Vec<f64>> = groups.into_iter().map(|(_, xs)| xs).collect();
            macro_average.insert(k.clone(), stats::macro_bootstrap(&xs, seed));
        }
        let metrics = means
            .into_iter()
            .map(|(k, by)| {
                let xs: Vec<f64> = by.values().map(|v| v * 100.0).collect();
                (k, stats::bootstrap(&xs, seed))
            })
            .collect();
        let n = mine.len().max(1) as f64;
        let rate =
            |f: &dyn Fn(&SampleRecord) -> bool| mine.iter().filter(|r| f(r)).count() as f64 / n;
        let ratios: Vec<f64> = mine
            .iter()
            .filter(|r| r.reference_words > 0)
            .map(|r| r.reply_words as f64 / r.reference_words as f64)
            .collect();
        let scenarios: std::collections::BTreeSet<&str> =
            mine.iter().map(|r| r.scenario.as_str()).collect();
        out.push(CheckpointSummary {
            checkpoint: ckpt.clone(),
            dimensions: rep.dimensions.clone(),
            n_scenarios: scenarios.len(),
            metrics,
            by_domain,
            macro_average,
            paper: rep.paper.clone(),
            notes: rep.notes.clone(),
            diagnostics: Diagnostics {
                valid_rate: rate(&|r| r.sim.valid),
                length_ratio: stats::mean(&ratios),
                distinct_2: diagnostics::distinct_2(mine.iter().map(|r| r.sim.response.as_str())),
                assistant_speak_rate: rate(&|r| r.assistant_speak),
                context_copy_rate: rate(&|r| r.context_copy),
                judge_failures: mine
                    .iter()
                    .map(|r| r.scores.values().filter(|s| s.error.is_some()).count())
                    .sum(),
                skipped_no_reference: skipped,
                samples: mine.len(),
            },
        });
    }
    Summary {
        run: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        checkpoints: out,
    }
}

pub fn now_rfc3339() -> String {
    // Seconds since the epoch, formatted as UTC without a date crate.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86400;
    let (h, m, s) = ((secs % 86400) / 3600, (secs % 3600) / 60, secs % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

/// A run folder as `humanlm runs` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RunListing {
    pub id: String,
    pub path: PathBuf,
    pub created: String,
    pub mode: String,
    pub checkpoints: Vec<String>,
    pub judge: String,
    pub complete: bool,
    pub samples: usize,
    /// Response score mean ×100 per checkpoint, when summarised.
    pub response: BTreeMap<String, f64>,
}

pub fn list_runs(root: &Path) -> Vec<RunListing> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return vec![];
    };
    let mut out = vec![];
    for e in rd.flatten() {
        let dir = e.path();
        let Ok(text) = std::fs::read_to_string(dir.join("run.json")) else {
            continue;
        };
        let Ok(info) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let summary: Option<Summary> = std::fs::read_to_string(dir.join("summary.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let samples = read_samples(&dir.join("samples.jsonl")).len();
        let expected = info["n"].as_u64().unwrap_or(1) as usize
            * info["scenarios"]["with_reference"].as_u64().unwrap_or(0) as usize
            * info["checkpoints"].as_array().map(|a| a.len()).unwrap_or(0);
        out.push(RunListing {
            id: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: dir.clone(),
            created: info["created"].as_str().unwrap_or_default().to_string(),
            mode: info["mode"].as_str().unwrap_or_default().to_string(),
            checkpoints: info["checkpoints"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            judge: info["judge"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            complete: summary.is_some() && samples >= expected,
            samples,
            response: summary
                .map(|s| {
                    s.checkpoints
                        .into_iter()
                        .filter_map(|c| c.metrics.get(RESPONSE).map(|m| (c.checkpoint, m.mean)))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    out
}

/// Paired differences B − A per metric over the scenarios both runs scored.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub checkpoint_a: String,
    pub checkpoint_b: String,
    /// A's judged dimensions in its prompt set's order, for the table.
    pub dimensions: Vec<String>,
    /// metric → (mean A ×100, mean B ×100, paired B − A ×100 with interval, B's win rate),
    /// pooled over the scenarios both runs scored.
    pub metrics: BTreeMap<String, MetricComparison>,
    /// metric → domain → the same, over that domain's shared scenarios.
    pub by_domain: BTreeMap<String, BTreeMap<String, MetricComparison>>,
    /// metric → the macro averages (each domain weighted equally) and their paired
    /// difference, with a stratified bootstrap interval; the win rate is the domains' mean.
    pub macro_average: BTreeMap<String, MetricComparison>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricComparison {
    pub a: f64,
    pub b: f64,
    pub diff: Estimate,
    pub win_rate_b: f64,
}

/// Compare two runs. With one checkpoint each, those are compared; otherwise the first
/// checkpoint the runs share.
pub fn compare(a: &Path, b: &Path, seed: u64) -> Result<Comparison> {
    let load = |p: &Path| -> Result<Vec<SampleRecord>> {
        let f = p.join("samples.jsonl");
        if !f.is_file() {
            return Err(Error::file(p, "not a run folder (no samples.jsonl)"));
        }
        Ok(read_samples(&f))
    };
    let (ra, rb) = (load(a)?, load(b)?);
    let names = |r: &[SampleRecord]| -> Vec<String> {
        let mut v: Vec<String> = r.iter().map(|x| x.checkpoint.clone()).collect();
        v.dedup();
        v.sort();
        v.dedup();
        v
    };
    let (na, nb) = (names(&ra), names(&rb));
    let (ca, cb) = if na.len() == 1 && nb.len() == 1 {
        (na[0].clone(), nb[0].clone())
    } else {
        let shared = na
            .iter()
            .find(|x| nb.contains(x))
            .ok_or_else(|| Error::Msg("the runs share no checkpoint to compare".into()))?;
        (shared.clone(), shared.clone())
    };
    let (ma, mb) = (scenario_means(&ra, &ca), scenario_means(&rb, &cb));
    let domains = scenario_domains(&ra, &ca);
    let paired = |pairs: &[(f64, f64)]| {
        let xa: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        let xb: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        let p = stats::paired(&xa, &xb, seed);
        MetricComparison {
            a: stats::mean(&xa),
            b: stats::mean(&xb),
            diff: p.diff,
            win_rate_b: p.win_rate,
        }
    };
    let mut metrics = BTreeMap::new();
    let mut by_domain = BTreeMap::new();
    let mut macro_average = BTreeMap::new();
    for (k, by_a) in &ma {
        let Some(by_b) = mb.get(k) else { continue };
        // (domain, (A ×100, B ×100)) for every scenario both scored.
        let mut pairs: Vec<(String, (f64, f64))> = by_a
            .iter()
            .filter_map(|(s, a)| {
                let b = by_b.get(s)?;
                let d = domains.get(s).cloned().unwrap_or_default();
                Some((d, (a * 100.0, b * 100.0)))
            })
            .collect();
        if pairs.is_empty() {
            continue;
        }
        pairs.sort_by_key(|x| domain_order(&x.0));
        let all: Vec<(f64, f64)> = pairs.iter().map(|p| p.1).collect();
        metrics.insert(k.clone(), paired(&all));
        let mut groups: Vec<(String, Vec<(f64, f64)>)> = vec![];
        for (d, p) in pairs {
            match groups.last_mut() {
                Some((last, v)) if *last == d => v.push(p),
                _ => groups.push((d, vec![p])),
            }
        }
        let per: BTreeMap<String, MetricComparison> =
            groups.iter().map(|(d, v)| (d.clone(), paired(v))).collect();
        let diffs: Vec<Vec<f64>> = groups
            .iter()
            .map(|(_, v)| v.iter().map(|(a, b)| b - a).collect())
            .collect();
        let mean_of = |f: &dyn Fn(&MetricComparison) -> f64| {
            stats::mean(&per.values().map(f).collect::<Vec<_>>())
        };
        macro_average.insert(
            k.clone(),
            MetricComparison {
                a: mean_of(&|m| m.a),
                b: mean_of(&|m| m.b),
                diff: stats::macro_bootstrap(&diffs, seed),
                win_rate_b: mean_of(&|m| m.win_rate_b),
            },
        );
        by_domain.insert(k.clone(), per);
    }
    if metrics.is_empty() {
        return Err(Error::Msg(
            "the runs have no scenario and metric in common".into(),
        ));
    }
    let id = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    // The order of A's dimensions, from its summary (none if it has not finished).
    let dimensions = std::fs::read_to_string(a.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Summary>(&t).ok())
        .and_then(|s| s.checkpoints.into_iter().find(|c| c.checkpoint == ca))
        .map(|c| c.dimensions)
        .unwrap_or_default();
    Ok(Comparison {
        a: id(a),
        b: id(b),
        checkpoint_a: ca,
        checkpoint_b: cb,
        dimensions,
        metrics,
        by_domain,
        macro_average,
    })
}
