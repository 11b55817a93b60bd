//! Work off the UI thread: loading checkpoints and the judge, simulating, rendering prompts,
//! scoring, evaluating, reading and writing files. Each task reports through the channel; a
//! panic inside one is caught and reported, never taking the workbench down.

use super::action::{Action, ConverseRequest, SimRequest};
use super::app::*;
use crate::judge::EmbeddingJudge;
use crate::model::weights::LoadOptions;
use crate::model::{Checkpoint, CheckpointKind, Model};
use crate::prompts::PromptSet;
use crate::remote::{Endpoint, EndpointConfig};
use crate::sim::{self, Options, SimEvent, Simulator, Truncate};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

/// What workers send to the UI thread.
pub enum Msg {
    Action(Action),
    /// A checkpoint finished loading, or an endpoint answered (`seq` tells whether it is still
    /// the one wanted).
    Model {
        seq: u64,
        model: Simulator,
        info: ModelInfo,
    },
    Embedder(Arc<EmbeddingJudge>, String),
}

pub use crate::remote::{read_endpoints, save_endpoints, ENDPOINTS_FILE};

/// Connect to an endpoint: it must answer `GET /models` and serve the model asked for.
pub fn load_endpoint(cfg: EndpointConfig, seq: u64, tx: &Tx) {
    let t0 = Instant::now();
    let spec = super::app::endpoint_spec(&cfg);
    let r = (|| -> Result<Endpoint, String> {
        let endpoint = Endpoint::new(cfg.clone()).map_err(|e| e.to_string())?;
        let models = endpoint.models().map_err(|e| e.to_string())?;
        if !models.contains(&cfg.model) {
            return Err(format!(
                "{} serves {}, not '{}'",
                cfg.base_url,
                if models.is_empty() {
                    "no model".to_string()
                } else {
                    models.join(", ")
                },
                cfg.model
            ));
        }
        Ok(endpoint)
    })();
    match r {
        Ok(endpoint) => {
            let info = ModelInfo {
                name: spec.clone(),
                device: "endpoint".into(),
                weights: "remote".into(),
                context: 0,
                load_ms: t0.elapsed().as_millis() as u64,
                default_set: None,
                quantized_on_load: None,
            };
            let _ = tx.0.send(Msg::Model {
                seq,
                model: Simulator::Remote { spec, endpoint },
                info,
            });
        }
        Err(error) => tx.send(Action::ModelFailed {
            name: spec,
            error: one_line(&error),
        }),
    }
}

/// A sender that wraps actions.
#[derive(Clone)]
pub struct Tx(pub Sender<Msg>);

impl Tx {
    pub fn send(&self, a: Action) {
        // The UI may be gone (quitting); nothing to do then.
        let _ = self.0.send(Msg::Action(a));
    }
}

/// Run `f` on a named thread; a panic becomes an `Action::Failed` for `job`.
pub fn spawn(name: &str, tx: &Tx, job: Option<u64>, f: impl FnOnce(&Tx) + Send + 'static) {
    let fail = tx.clone();
    let tx = tx.clone();
    let what = name.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("humanlm-worker-{name}"))
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&tx)));
            if let Err(p) = r {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tx.send(Action::Failed {
                    job,
                    error: format!("{what} crashed: {msg}"),
                });
            }
        });
    if let Err(e) = spawned {
        let _ = fail.0.send(Msg::Action(Action::Failed {
            job,
            error: format!("cannot start a thread for {name}: {e}"),
        }));
    }
}

/// The device checkpoints load on: `HUMANLM_DEVICE` (cpu, cuda, cuda:N), else the CPU; dense
/// matrices as `quantize` says, else as `--quantize` did, else the checkpoint's default.
fn load_options(
    quantize: Option<crate::model::quantize::Quantize>,
) -> crate::model::Result<LoadOptions> {
    let device = match std::env::var("HUMANLM_DEVICE") {
        Ok(d) => crate::model::device::parse_device(&d)?,
        Err(_) => candle_core::Device::Cpu,
    };
    let mut opts = LoadOptions {
        device,
        ..Default::default()
    };
    opts.quantize = quantize.or(opts.quantize);
    Ok(opts)
}

/// Load a checkpoint by name or path.
pub fn load_checkpoint(
    spec: &str,
    quantize: Option<crate::model::quantize::Quantize>,
    root: &Path,
    seq: u64,
    tx: &Tx,
) {
    let t0 = Instant::now();
    let r = (|| -> anyhow::Result<(Model, Option<String>, Option<String>)> {
        let ckpt = Checkpoint::resolve(spec, root)?;
        let set = ckpt.default_prompt_set()?;
        let opts = load_options(quantize)?;
        let quantized = match ckpt.load_quantize(&opts)? {
            Some((q, src)) if q != crate::model::quantize::Quantize::None => {
                Some(format!("{q}{}", src.tag()))
            }
            _ => None,
        };
        Ok((ckpt.load(&opts)?, set, quantized))
    })();
    match r {
        Ok((model, default_set, quantized_on_load)) => {
            let info = ModelInfo {
                name: model.checkpoint.name.clone(),
                device: crate::model::device::device_name(&model.decoder.device),
                weights: model.decoder.weight_kinds(),
                context: model.decoder.max_positions(),
                load_ms: t0.elapsed().as_millis() as u64,
                default_set,
                quantized_on_load,
            };
            let _ = tx.0.send(Msg::Model {
                seq,
                model: Simulator::Local(Arc::new(model)),
                info,
            });
        }
        Err(e) => tx.send(Action::ModelFailed {
            name: spec.to_string(),
            error: one_line(&e.to_string()),
        }),
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// The embedding judge from `checkpoints/all-minilm-l6-v2`, when it is there.
pub fn load_embedder(root: &Path, tx: &Tx) {
    let dir = root.join(crate::judge::embedding::DEFAULT_EMBEDDER);
    if !dir.is_dir() {
        tx.send(Action::Embedder(Err(format!(
            "no {} (scripts/fetch-checkpoints.sh fetches it)",
            dir.display()
        ))));
        return;
    }
    match EmbeddingJudge::load(&dir) {
        Ok(j) => {
            let _ = tx.0.send(Msg::Embedder(
                Arc::new(j),
                crate::judge::embedding::DEFAULT_EMBEDDER.to_string(),
            ));
        }
        Err(e) => tx.send(Action::Embedder(Err(one_line(&e.to_string())))),
    }
}

fn options(req: &SimRequest, set: &PromptSet) -> Options {
    Options {
        mode: req.mode,
        params: req.sampling.params(set),
        // The workbench runs every scenario: old turns are dropped to fit, and it says so.
        truncate: Truncate::Oldest,
    }
}

/// Simulate on `model`, streaming every step through `send`.
pub fn simulate(model: &Simulator, req: &SimRequest, prompts: &Path, send: &dyn Fn(SimMsg)) {
    let set = match PromptSet::load(&req.set, prompts) {
        Ok(s) => s,
        Err(e) => {
            send(SimMsg::Failed(one_line(&e.to_string())));
            return;
        }
    };
    let calls = req.mode.calls(&set);
    send(SimMsg::Started {
        checkpoint: model.name(),
        set: set.name.clone(),
        set_hash: set.hash.clone(),
        calls,
    });
    let opts = options(req, &set);
    let mut started = Instant::now();
    let mut first: Option<Instant> = None;
    let mut tokens = 0usize;
    let mut cached: Option<usize> = None;
    let r = sim::simulate_with(
        model.engine(),
        &set,
        &req.scenario,
        &opts,
        Some(&req.cancel),
        &mut |e| match e {
            SimEvent::CallStarted { call } => {
                started = Instant::now();
                first = None;
                tokens = 0;
                cached = None;
                send(SimMsg::Call(call.clone()));
            }
            SimEvent::Prefill { cached: c, .. } => {
                cached = Some(c);
                send(SimMsg::Prefill { cached: c });
            }
            SimEvent::Text {
                call,
                sample,
                delta,
            } => {
                let now = Instant::now();
                let t0 = *first.get_or_insert(now);
                tokens += 1;
                let secs = now.duration_since(t0).as_secs_f64();
                send(SimMsg::Text {
                    call: call.to_string(),
                    sample,
                    delta: delta.to_string(),
                    stats: Stats {
                        tokens,
                        ttft_ms: Some(t0.duration_since(started).as_secs_f64() * 1000.0),
                        tok_s: if secs > 0.0 {
                            (tokens - 1) as f64 / secs
                        } else {
                            0.0
                        },
                        cached_tokens: cached,
                    },
                });
            }
            SimEvent::CallFinished { call } => send(SimMsg::CallDone {
                call: call.to_string(),
            }),
        },
    );
    match r {
        Ok((plan, samples)) => send(SimMsg::Done {
            samples: samples.into_iter().map(SampleOut::from).collect(),
            dropped_turns: plan.dropped_turns,
        }),
        Err(e) => send(SimMsg::Failed(one_line(&e.to_string()))),
    }
}

/// The prompts a simulation would send, rendered and tokenized.
pub fn plan(model: &Simulator, req: &SimRequest, prompts: &Path) -> Result<PlanView, String> {
    let set = PromptSet::load(&req.set, prompts).map_err(|e| one_line(&e.to_string()))?;
    let opts = options(req, &set);
    let plan = sim::plan_with(&set, &req.scenario, &opts, model.engine())
        .map_err(|e| one_line(&e.to_string()))?;
    Ok(PlanView {
        scenario: req.scenario.id.clone(),
        set: set.name.clone(),
        set_hash: set.hash.clone(),
        mode: req.mode,
        plan,
    })
}

/// One scenario under each side, in turn; a side on another checkpoint loads it for the run.
pub fn compare(
    current: Option<Simulator>,
    req: &SimRequest,
    sides: &[Side],
    paths: &Paths,
    tx: &Tx,
) {
    let mut loaded: Vec<Simulator> = current.into_iter().collect();
    for (i, side) in sides.iter().enumerate() {
        let send = |msg: SimMsg| {
            tx.send(Action::Cmp {
                job: req.job,
                side: i,
                msg,
            })
        };
        if req.cancel.load(Ordering::Relaxed) {
            send(SimMsg::Failed("cancelled".into()));
            continue;
        }
        let model = match loaded.iter().find(|m| m.name() == side.checkpoint) {
            Some(m) => m.clone(),
            None => {
                let r = open(&side.checkpoint, &paths.checkpoints);
                match r {
                    Ok(m) => {
                        loaded.push(m.clone());
                        m
                    }
                    Err(e) => {
                        send(SimMsg::Failed(e));
                        continue;
                    }
                }
            }
        };
        let side_req = SimRequest {
            set: side.set.clone(),
            ..req.clone()
        };
        simulate(&model, &side_req, &paths.prompts, &send);
    }
}

/// The assistant a conversation talks to: the simulated user's own model when the spec is
/// empty or names it, else one opened before (kept in `opened`), else opened now.
pub fn assistant_for(
    spec: &str,
    user: &Simulator,
    opened: &std::sync::Mutex<Vec<Simulator>>,
    root: &Path,
) -> Result<Simulator, String> {
    if spec.is_empty() || spec == user.name() {
        return Ok(user.clone());
    }
    let mut opened = opened.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = opened.iter().find(|m| m.name() == spec) {
        return Ok(m.clone());
    }
    let m = open(spec, root)?;
    opened.push(m.clone());
    Ok(m)
}

/// The prompt set, user side and assistant sampling of a conversation request.
fn converse_setup<'a>(
    user: &'a Simulator,
    assistant: &'a Simulator,
    set: &'a PromptSet,
    req: &ConverseRequest,
) -> crate::converse::Setup<'a> {
    let mut assistant_sampling = crate::converse::AssistantSampling::default();
    if let Some(cap) = req.sampling.max_tokens {
        assistant_sampling.max_tokens = assistant_sampling.max_tokens.min(cap);
    }
    crate::converse::Setup {
        user: crate::converse::UserSide {
            engine: user.engine(),
            set,
            mode: req.mode,
            sampling: req.sampling.clone(),
        },
        assistant: assistant.engine(),
        assistant_sampling,
        max_turns: req.max_turns,
    }
}

/// Go on with a conversation until it ends, streaming every turn through `send`.
pub fn converse(
    user: &Simulator,
    assistant: &Simulator,
    req: &ConverseRequest,
    prompts: &Path,
    send: &dyn Fn(ConvMsg),
) -> Result<(), String> {
    use crate::converse::Event;
    let set = PromptSet::load(&req.set, prompts).map_err(|e| one_line(&e.to_string()))?;
    send(ConvMsg::Started {
        user: user.name(),
        set: set.name.clone(),
        assistant: assistant.name(),
    });
    let setup = converse_setup(user, assistant, &set, req);
    let t = crate::converse::converse_from(
        &setup,
        &req.scenario,
        req.turns.clone(),
        req.next,
        req.seed,
        Some(&req.cancel),
        &mut |e| match e {
            Event::TurnStarted { index, speaker } => send(ConvMsg::TurnStarted { index, speaker }),
            Event::User(SimEvent::CallStarted { call }) => send(ConvMsg::Call {
                name: call.name.clone(),
                prefill: call.prefill.clone(),
            }),
            Event::User(SimEvent::Prefill { cached, .. }) => send(ConvMsg::Prefill { cached }),
            Event::User(SimEvent::Text {
                sample: 0, delta, ..
            }) => send(ConvMsg::Text(delta.to_string())),
            Event::User(_) => {}
            Event::AssistantText(d) => send(ConvMsg::Text(d.to_string())),
            Event::TurnFinished { turn, .. } => send(ConvMsg::TurnFinished(Box::new(turn.clone()))),
        },
    );
    send(ConvMsg::Ended(t.end));
    Ok(())
}

/// The prompt the next turn of a conversation is written from, as its side sees it: the
/// simulated user's calls (states, then the reply) or the assistant's one chat prompt.
pub fn turn_prompt(
    user: &Simulator,
    assistant: &Simulator,
    req: &ConverseRequest,
    prompts: &Path,
) -> Result<Vec<crate::tui::app::CallPrompt>, String> {
    use crate::scenario::Speaker;
    match req.next {
        Speaker::User => {
            let set = PromptSet::load(&req.set, prompts).map_err(|e| one_line(&e.to_string()))?;
            let view = crate::converse::user_view(&req.scenario, &req.turns);
            let opts = Options::new(req.mode, req.sampling.params(&set));
            let plan = sim::plan_with(&set, &view, &opts, user.engine())
                .map_err(|e| one_line(&e.to_string()))?;
            let local = matches!(user, Simulator::Local(_));
            Ok(plan
                .calls
                .into_iter()
                .map(|c| crate::tui::app::CallPrompt {
                    name: c.name,
                    tokens: local.then_some(c.prompt_tokens),
                    text: c.prompt,
                })
                .collect())
        }
        Speaker::Assistant => {
            let table = req.scenario.conversation.clone().unwrap_or_default();
            let (text, tokens) =
                crate::converse::assistant_prompt(assistant.engine(), &table, &req.turns)?;
            Ok(vec![crate::tui::app::CallPrompt {
                name: crate::tui::app::ASSISTANT_CALL.to_string(),
                tokens,
                text,
            }])
        }
    }
}

/// A checkpoint by name or path, or an endpoint by its spec (with the API-key variable
/// `endpoints.toml` gives it, if it is listed there).
fn open(spec: &str, root: &Path) -> Result<Simulator, String> {
    let opts = load_options(None).map_err(|e| one_line(&e.to_string()))?;
    Simulator::open(spec, root, &opts).map_err(|e| one_line(&e.to_string()))
}

/// The checkpoints under `root`, adapters right after their base, then the endpoints of
/// `endpoints.toml`.
pub fn scan_checkpoints(root: &Path) -> Vec<CkptRow> {
    let mut bases = vec![];
    let mut adapters = vec![];
    for entry in Checkpoint::list(root) {
        match entry {
            Ok(c) => {
                let info = c.info();
                let row = CkptRow {
                    name: c.name.clone(),
                    path: c.path.display().to_string(),
                    error: info.as_ref().err().map(|e| one_line(&e.to_string())),
                    info: info.ok(),
                    default_set: c.default_prompt_set().ok().flatten(),
                    depth: 0,
                    endpoint: None,
                };
                match &c.kind {
                    CheckpointKind::Adapter { base, .. } => {
                        adapters.push((base.name.clone(), CkptRow { depth: 1, ..row }))
                    }
                    _ => bases.push(row),
                }
            }
            Err(e) => {
                let (name, path) = match &e {
                    crate::model::Error::File { path, .. } => (
                        path.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        path.display().to_string(),
                    ),
                    _ => ("?".into(), String::new()),
                };
                bases.push(CkptRow {
                    name,
                    path,
                    info: None,
                    error: Some(one_line(&e.to_string())),
                    default_set: None,
                    depth: 0,
                    endpoint: None,
                });
            }
        }
    }
    let mut rows = vec![];
    for b in bases {
        let name = b.name.clone();
        rows.push(b);
        for (_, a) in adapters.iter().filter(|(base, _)| *base == name) {
            rows.push(a.clone());
        }
    }
    // Adapters whose base is not in the folder still show.
    for (base, a) in adapters {
        if !rows.iter().any(|r| r.name == base) {
            rows.push(a);
        }
    }
    match read_endpoints(root) {
        Ok(list) => rows.extend(list.into_iter().map(CkptRow::for_endpoint)),
        Err(e) => rows.push(CkptRow {
            name: ENDPOINTS_FILE.into(),
            path: root.join(ENDPOINTS_FILE).display().to_string(),
            info: None,
            error: Some(e),
            default_set: None,
            depth: 0,
            endpoint: None,
        }),
    }
    rows
}

/// The judge configurations of `<prompts>/judges/*.toml`, each with what it runs on and, when
/// it cannot run here, why (a file that does not parse, an API key that is not set, a missing
/// model).
pub fn scan_judges(prompts: &Path, checkpoints: &Path) -> Vec<JudgeRow> {
    use crate::judge::JudgeConfig;
    let dir = prompts.join("judges");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match JudgeConfig::read(&path) {
                Ok(config) => {
                    let (kind, detail, unavailable) = describe_judge(&config, checkpoints);
                    JudgeRow {
                        name,
                        path,
                        kind,
                        detail,
                        config: Some(config),
                        unavailable,
                    }
                }
                Err(e) => JudgeRow {
                    name,
                    path,
                    kind: "?".into(),
                    detail: String::new(),
                    config: None,
                    unavailable: Some(one_line(&e.to_string())),
                },
            }
        })
        .collect()
}

/// A judge's kind, what it runs on, and why it cannot run here (if it cannot).
fn describe_judge(
    config: &crate::judge::JudgeConfig,
    checkpoints: &Path,
) -> (String, String, Option<String>) {
    use crate::judge::JudgeConfig;
    match config {
        JudgeConfig::Embedding { model } => {
            let found = Path::new(model).is_dir() || checkpoints.join(model).is_dir();
            let why = (!found).then(|| {
                format!(
                    "the embedding model {model} is not in {} (scripts/fetch-checkpoints.sh fetches it)",
                    checkpoints.display()
                )
            });
            ("embedding".into(), model.clone(), why)
        }
        JudgeConfig::Lexical { metric } => {
            let m = serde_json::to_value(metric)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            ("lexical".into(), m, None)
        }
        JudgeConfig::Contains { word, max_tokens } => (
            "contains".into(),
            format!("'{word}' within {max_tokens} tokens"),
            None,
        ),
        JudgeConfig::Rubric(cfg) | JudgeConfig::Aspects(cfg) => {
            let kind = if matches!(config, JudgeConfig::Rubric(_)) {
                "rubric"
            } else {
                "aspects"
            };
            let (detail, why) = match (&cfg.checkpoint, &cfg.endpoint) {
                (_, Some(e)) => {
                    let missing = e.api_key_env.as_ref().filter(|var| {
                        !std::env::var(var.as_str()).is_ok_and(|v| !v.trim().is_empty())
                    });
                    (
                        format!("{} @ {}", e.model, e.base_url),
                        missing.map(|var| {
                            format!(
                                "needs an API key in ${var}, which is not set: export {var} before starting humanlm, or pick a local judge"
                            )
                        }),
                    )
                }
                (Some(spec), None) => {
                    let why = match Endpoint::parse_spec(spec) {
                        Some(_) => None,
                        None => Checkpoint::resolve(spec, checkpoints)
                            .err()
                            .map(|e| one_line(&e.to_string())),
                    };
                    (spec.clone(), why)
                }
                (None, None) => (
                    String::new(),
                    Some("names neither `checkpoint` nor `[endpoint]`".into()),
                ),
            };
            (kind.into(), detail, why)
        }
    }
}

/// A training pass, its steps reported as they come.
pub fn train(
    job: u64,
    cfg: &crate::train::TrainConfig,
    out: &Path,
    resume: bool,
    roots: &crate::roots::Roots,
    cancel: &std::sync::atomic::AtomicBool,
    tx: &Tx,
) {
    use crate::train::TrainEvent;
    let send = |msg: TrainMsg| tx.send(Action::Train { job, msg });
    let r = crate::train::run(cfg, out, roots, resume, Some(cancel), &mut |e| {
        send(match e {
            TrainEvent::Data { examples, skipped } => TrainMsg::Data {
                examples,
                skipped: skipped.len(),
            },
            TrainEvent::Note(n) => TrainMsg::Note(n.to_string()),
            TrainEvent::Step(s) => TrainMsg::Step(Box::new(s.clone())),
            TrainEvent::Val(v) => TrainMsg::Val(Box::new(v.clone())),
            TrainEvent::Saved(p) => TrainMsg::Saved(p.to_path_buf()),
        })
    });
    send(TrainMsg::Finished(r.map_err(|e| one_line(&e.to_string()))));
}

fn short_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every prompt set under `root` with its files (those that do not load, with their error).
pub fn scan_prompts(root: &Path) -> Vec<SetInfo> {
    crate::prompts::list(root)
        .into_iter()
        .map(|name| match PromptSet::load(&name, root) {
            Ok(set) => {
                let p = SamplingChoice::default().params(&set);
                SetInfo {
                    name: set.name.clone(),
                    dir: set.dir.clone(),
                    description: set.description.clone(),
                    hash: Some(set.hash.clone()),
                    layout: format!("{:?}", set.layout).to_lowercase(),
                    dimensions: set.dimensions().map(|d| d.key.clone()).collect(),
                    sampling: format!(
                        "T {} · repetition ×{} · {}-gram ban",
                        p.temperature, p.repetition_penalty, p.no_repeat_ngram
                    ),
                    files: set
                        .files
                        .iter()
                        .map(|(fname, path)| file_info(fname, path, &set.dir))
                        .collect(),
                    error: None,
                }
            }
            Err(e) => {
                let dir = root.join(&name);
                let mut files: Vec<FileInfo> = std::fs::read_dir(&dir)
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| e.path())
                            .filter(|p| p.is_file())
                            .map(|p| {
                                let n = p
                                    .file_name()
                                    .map(|n| n.to_string_lossy().into_owned())
                                    .unwrap_or_default();
                                file_info(&n, &p, &dir)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                files.sort_by(|a, b| a.name.cmp(&b.name));
                SetInfo {
                    name: name.clone(),
                    dir,
                    description: String::new(),
                    hash: None,
                    layout: "?".into(),
                    dimensions: vec![],
                    sampling: String::new(),
                    files,
                    error: Some(one_line(&e.to_string())),
                }
            }
        })
        .collect()
}

use crate::sim::SamplingChoice;

fn file_info(name: &str, path: &Path, set_dir: &Path) -> FileInfo {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let parent = path.parent().unwrap_or(Path::new(""));
    FileInfo {
        name: name.to_string(),
        path: path.to_path_buf(),
        hash: short_hash(&text),
        inherited_from: (parent != set_dir).then(|| {
            parent
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        }),
        text,
    }
}

/// Modification times of the files under the prompt root (sets and judge configs).
pub fn prompt_mtimes(root: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(root) else {
        return out;
    };
    for dir in rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        if let Ok(files) = std::fs::read_dir(&dir) {
            for f in files.flatten() {
                if let Ok(m) = f.metadata().and_then(|m| m.modified()) {
                    out.push((f.path(), m));
                }
            }
        }
    }
    out.sort();
    out
}

/// The summary and samples of a run folder, and the summary of the run before it.
pub fn load_run(path: &Path, prev: Option<&Path>) -> RunDetail {
    let summary = |p: &Path| -> Option<crate::eval::Summary> {
        serde_json::from_str(&std::fs::read_to_string(p.join("summary.json")).ok()?).ok()
    };
    RunDetail {
        path: path.to_path_buf(),
        summary: summary(path),
        prev: prev.and_then(|p| {
            summary(p).map(|s| {
                (
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    s,
                )
            })
        }),
        samples: crate::eval::read_samples(&path.join("samples.jsonl")),
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Append one rating line to `runs/ratings.jsonl`.
pub fn append_rating(runs: &Path, mut v: serde_json::Value) -> Result<PathBuf, String> {
    use std::io::Write;
    v["time_unix"] = now_unix().into();
    std::fs::create_dir_all(runs).map_err(|e| format!("{}: {e}", runs.display()))?;
    let path = runs.join("ratings.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{v}").map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Write a session to `runs/sessions/` (to a temporary name, then renamed).
pub fn save_session(runs: &Path, mut s: Session) -> Result<PathBuf, String> {
    s.saved_unix = now_unix();
    let dir = runs.join("sessions");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name: String = s
        .scenario
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("session-{}-{name}.json", s.saved_unix));
    let text = serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?;
    crate::files::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

/// The most recently saved session.
pub fn open_latest_session(runs: &Path) -> Result<Session, String> {
    let dir = runs.join("sessions");
    let latest = std::fs::read_dir(&dir)
        .map_err(|_| format!("no saved sessions in {} (s saves one)", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .ok_or_else(|| format!("no saved sessions in {} (s saves one)", dir.display()))?;
    let text =
        std::fs::read_to_string(&latest).map_err(|e| format!("{}: {e}", latest.display()))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", latest.display()))?;
    if json["version"] == 1 {
        session_v1_to_v2(&mut json);
    }
    serde_json::from_value(json).map_err(|e| format!("{}: {e}", latest.display()))
}

/// Version 1 kept a finished sample's parse beside its calls (`states`, `response`, `think`,
/// `valid`, `tokens`, `ms`, and `stop`/`valid`/`tokens` per call); version 2 keeps it as the
/// simulator's own `SimSample` under `result`.
fn session_v1_to_v2(json: &mut serde_json::Value) {
    use serde_json::{json, Map, Value};
    json["version"] = json!(SESSION_VERSION);
    let Some(samples) = json.get_mut("samples").and_then(Value::as_array_mut) else {
        return;
    };
    for s in samples {
        let Some(old) = s.as_object_mut() else {
            continue;
        };
        if old.get("valid").is_none_or(Value::is_null) {
            continue; // saved unfinished: no result
        }
        let mut outputs = Map::new();
        let mut stops = Map::new();
        if let Some(calls) = old.get("calls").and_then(Value::as_object) {
            for (name, c) in calls {
                let stop = c.get("stop").cloned().unwrap_or(json!("stop"));
                stops.insert(name.clone(), stop.clone());
                let output = json!({
                    "raw": c.get("text").cloned().unwrap_or(json!("")),
                    "tokens": c.get("tokens").cloned().unwrap_or(json!(0)),
                    "stop_reason": stop,
                    "valid": c.get("valid").cloned().unwrap_or(json!(false)),
                });
                outputs.insert(name.clone(), output);
            }
        }
        let field = |k: &str, default: Value| old.get(k).cloned().unwrap_or(default);
        let result = json!({
            "states": field("states", json!({})),
            "response": field("response", Value::Null).as_str().unwrap_or_default(),
            "think": field("think", Value::Null),
            "valid": field("valid", json!(false)),
            "stop_reasons": stops,
            "tokens": field("tokens", json!(0)),
            "ms": field("ms", json!(0)),
            "outputs": outputs,
        });
        old.insert("result".into(), result);
    }
}

/// Run an evaluation, reporting progress.
pub fn eval(
    job: u64,
    spec: &crate::eval::EvalSpec,
    roots: &crate::roots::Roots,
    cancel: &std::sync::atomic::AtomicBool,
    tx: &Tx,
) {
    use crate::eval::Progress;
    let r = crate::eval::run(spec, roots, Some(cancel), &mut |p| {
        let msg = match p {
            Progress::Started { total, resumed } => EvalMsg::Started { total, resumed },
            Progress::Loading { checkpoint } => EvalMsg::Loading { checkpoint },
            Progress::Scenario { scenario, .. } => EvalMsg::Scenario { scenario },
            Progress::Done { scenario, .. } => EvalMsg::Done { scenario },
            Progress::Skipped { scenario, .. } => EvalMsg::Skipped { scenario },
        };
        tx.send(Action::Eval { job, msg });
    });
    tx.send(Action::Eval {
        job,
        msg: EvalMsg::Finished(r.map_err(|e| one_line(&e.to_string()))),
    });
}
