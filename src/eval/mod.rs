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
    /// Scenario means ×100 with bootstrap 95% intervals.
    pub metrics: BTreeMap<String, Estimate>,
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

fn sha_hex(bytes: &[u8], n: usize) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(n)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Resolve everything a run needs, then simulate, judge and summarise. Returns the run folder.
pub fn run(
    spec: &EvalSpec,
    roots: &crate::roots::Roots,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf> {
    let checkpoints_root = &roots.checkpoints;
    if spec.checkpoints.is_empty() {
        return Err(Error::Msg("no checkpoint to evaluate".into()));
    }
    // Scenarios: every file must load; those without a reference reply are skipped and counted.
    let mut scenarios: Vec<Scenario> = vec![];
    let mut skipped = 0;
    let mut scenario_hash = Sha256::new();
    for l in crate::scenario::load_all(&spec.scenarios) {
        let l = l?;
        scenario_hash.update(toml::to_string(&l.scenario)?.as_bytes());
        if l.scenario.target.response.is_none() {
            skipped += 1;
            progress(Progress::Skipped {
                scenario: l.scenario.id.clone(),
                why: "no reference reply".into(),
            });
            continue;
        }
        scenarios.push(l.scenario);
    }
    scenarios.sort_by(|a, b| (a.domain, &a.id).cmp(&(b.domain, &b.id)));
    if scenarios.is_empty() {
        return Err(Error::file(
            &spec.scenarios,
            "no scenario with a reference reply ([target] response) to evaluate",
        ));
    }
    let prompts_root = &roots.prompts;
    // Each checkpoint: a local one (resolved now, loaded when its turn comes) or an endpoint.
    let mut resolved = vec![];
    for name in &spec.checkpoints {
        let ckpt = match crate::remote::Endpoint::parse_spec(name) {
            Some(_) => None,
            None => Some(Checkpoint::resolve(name, checkpoints_root)?),
        };
        let own = match &ckpt {
            Some(c) => c.default_prompt_set()?,
            None => None,
        };
        let set_name = crate::prompts::set_for(spec.prompts.as_deref(), own);
        let set = Arc::new(PromptSet::load(&set_name, prompts_root)?);
        let label = ckpt
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or(name.clone());
        resolved.push((name.clone(), label, ckpt, set));
    }
    let judge = spec.judge.build(roots, resolved[0].3.clone())?;
    // Embedding similarity of the reply is always reported when the embedder is present.
    let embedder_dir = checkpoints_root.join(crate::judge::embedding::DEFAULT_EMBEDDER);
    let embedder = crate::judge::EmbeddingJudge::load(&embedder_dir).ok();

    let sampling = &spec.sampling;
    let run_info = serde_json::json!({
        "program": {"name": "humanlm", "version": env!("CARGO_PKG_VERSION")},
        "mode": spec.mode,
        "n": spec.sampling.n,
        "seed": spec.sampling.seed,
        "sampling": spec.sampling,
        "truncate": spec.truncate,
        "scenarios": {
            "path": spec.scenarios,
            "with_reference": scenarios.len(),
            "skipped_no_reference": skipped,
            "hash": scenario_hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect::<String>(),
        },
        "judge": {"name": judge.name(), "config": spec.judge, "resolved": judge.config()},
        "checkpoints": resolved.iter().map(|(spec, label, c, set)| serde_json::json!({
            "name": label,
            "spec": spec,
            "path": c.as_ref().map(|c| c.path.clone()),
            "fingerprint": c.as_ref().map(|c| fingerprint(&c.path)).unwrap_or_else(|| spec.clone()),
            "adapter": match c.as_ref().map(|c| &c.kind) {
                Some(crate::model::checkpoint::CheckpointKind::Adapter { base, .. }) =>
                    serde_json::json!({"base": base.name, "base_fingerprint": fingerprint(&base.path)}),
                _ => serde_json::Value::Null,
            },
            "prompt_set": set.name,
            "prompt_hash": set.hash,
            "sampling_defaults": set.sampling,
            "sampling_used": sampling.params(set),
        })).collect::<Vec<_>>(),
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
    let cache = Cache::new(spec.out.join(".judge-cache"));

    // Resume: keep complete scenarios, drop partial ones (and a line cut off by a crash).
    let samples_path = dir.join("samples.jsonl");
    let mut done: Vec<SampleRecord> = read_samples(&samples_path);
    let n = spec.sampling.n.max(1);
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
    for r in &done {
        let key = (r.checkpoint.clone(), r.scenario.clone());
        if r.scores.values().any(|s| s.error.is_some()) && !failed.contains(&key) {
            failed.push(key);
        }
    }
    for (checkpoint, scenario) in &failed {
        let (Some(set), Some(sc)) = (
            resolved.iter().find(|r| &r.1 == checkpoint).map(|r| &r.3),
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
        let fresh = judge_samples(
            checkpoint,
            set,
            sc,
            &samples,
            judge.as_ref(),
            embedder.as_ref(),
            &cache,
        )?;
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
    for (spec_name, name, _, set) in &resolved {
        let todo: Vec<&Scenario> = scenarios
            .iter()
            .filter(|s| !complete.contains(&(name.clone(), s.id.clone())))
            .collect();
        if todo.is_empty() {
            continue;
        }
        progress(Progress::Loading {
            checkpoint: name.clone(),
        });
        let simulator = sim::Simulator::open(spec_name, checkpoints_root, &LoadOptions::default())?;
        let params = SamplingParams {
            n,
            ..spec.sampling.params(set)
        };
        let opts = Options {
            mode: spec.mode,
            params,
            truncate: spec.truncate,
        };
        for sc in todo {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(Error::Msg(
                    "cancelled; run the same command again to resume".into(),
                ));
            }
            progress(Progress::Scenario {
                checkpoint: name.clone(),
                scenario: sc.id.clone(),
            });
            let (_, samples) =
                sim::simulate_with(simulator.engine(), set, sc, &opts, cancel, &mut |_| {})?;
            let records = judge_samples(
                name,
                set,
                sc,
                &samples,
                judge.as_ref(),
                embedder.as_ref(),
                &cache,
            )?;
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
    let records = read_samples(&samples_path);
    let names: Vec<(String, Vec<String>)> = resolved
        .iter()
        .map(|r| (r.1.clone(), judged_dimensions(&r.3)))
        .collect();
    let summary = summarise(&dir, &names, &records, skipped, spec.sampling.seed);
    crate::files::write(
        &dir.join("summary.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(dir)
}

/// Judge one scenario's samples: the reply as one group, and each state as one group.
fn judge_samples(
    checkpoint: &str,
    set: &PromptSet,
    sc: &Scenario,
    samples: &[SimSample],
    judge: &dyn Judge,
    embedder: Option<&crate::judge::EmbeddingJudge>,
    cache: &Cache,
) -> Result<Vec<SampleRecord>> {
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
        if let Some(Ok(by)) = cache.score_aspects(judge, &context, reference, &s.response) {
            for (k, v) in by {
                scores[i].insert(format!("aspect.{k}"), v);
            }
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

/// The summary of a run's records; `checkpoints` are the run's checkpoints, each with the
/// dimensions it was judged on.
pub fn summarise(
    dir: &Path,
    checkpoints: &[(String, Vec<String>)],
    records: &[SampleRecord],
    skipped: usize,
    seed: u64,
) -> Summary {
    let mut out = vec![];
    for (ckpt, dimensions) in checkpoints {
        let mine: Vec<&SampleRecord> = records.iter().filter(|r| &r.checkpoint == ckpt).collect();
        let metrics = scenario_means(records, ckpt)
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
            dimensions: dimensions.clone(),
            n_scenarios: scenarios.len(),
            metrics,
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

fn now_rfc3339() -> String {
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
    /// metric → (mean A ×100, mean B ×100, paired B − A ×100 with interval, B's win rate).
    pub metrics: BTreeMap<String, MetricComparison>,
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
    let mut metrics = BTreeMap::new();
    for (k, by_a) in &ma {
        let Some(by_b) = mb.get(k) else { continue };
        let common: Vec<&String> = by_a.keys().filter(|s| by_b.contains_key(*s)).collect();
        if common.is_empty() {
            continue;
        }
        let xa: Vec<f64> = common.iter().map(|s| by_a[*s] * 100.0).collect();
        let xb: Vec<f64> = common.iter().map(|s| by_b[*s] * 100.0).collect();
        let p = stats::paired(&xa, &xb, seed);
        metrics.insert(
            k.clone(),
            MetricComparison {
                a: stats::mean(&xa),
                b: stats::mean(&xb),
                diff: p.diff,
                win_rate_b: p.win_rate,
            },
        );
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
    })
}
