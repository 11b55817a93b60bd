//! The terminal workbench: load a simulator checkpoint, run it on thread scenarios, watch the
//! states and the reply stream in, score them against the real reply, compare and evaluate.
//!
//! The shape follows the usual TUI split: `App` (app.rs) is the whole state; `update` is the
//! only function that changes it, driven by `Action`s from keys, the mouse and worker messages;
//! `ui::draw` renders a frame from it and nothing else. Anything slow (models, judges, files)
//! runs on worker threads (worker.rs) that report through a channel, so the UI never waits; the
//! runtime below owns the terminal, the channel, the loaded model and the judge.
//!
//! `HUMANLM_TUI_MAX_TOKENS=N` caps every call's new tokens (quick end-to-end checks);
//! `HUMANLM_DEVICE=cuda:0` loads checkpoints on a GPU; `HUMANLM_KEYS=FILE` reads the key
//! bindings from FILE instead of `~/.config/humanlm/keys.toml` (keys.rs).

pub mod action;
pub mod app;
pub mod keys;
pub mod terminal;
pub mod text;
pub mod ui;
pub mod update;
pub mod worker;

pub use action::{Action, Effect};
pub use app::App;
pub use ui::draw;
pub use update::update;

use crate::judge::EmbeddingJudge;
use crate::model::checkpoint::DEFAULT_CHECKPOINT;
use crate::model::Checkpoint;
use app::Paths;
use ratatui::crossterm::event::{self, Event};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use worker::{Msg, Tx};

/// The environment variable that caps every call's new tokens.
pub const MAX_TOKENS_ENV: &str = "HUMANLM_TUI_MAX_TOKENS";

/// Owns what the state must not: the terminal, the model, the judge, the channel.
struct Runtime {
    tx: Tx,
    paths: Paths,
    /// The checkpoint or endpoint simulations run on.
    model: Option<crate::sim::Simulator>,
    embedder: Option<Arc<EmbeddingJudge>>,
    /// The latest checkpoint load asked for; older loads that finish late are dropped.
    load_seq: u64,
    /// Effects waiting for a checkpoint to finish loading.
    pending: Vec<Effect>,
    /// Assistants conversations opened (other than the checkpoint in use), kept for the next.
    assistants: Arc<std::sync::Mutex<Vec<crate::sim::Simulator>>>,
    mtimes: Vec<(PathBuf, SystemTime)>,
}

impl Runtime {
    fn execute(&mut self, effect: Effect, term: &mut terminal::Term) {
        let tx = &self.tx;
        match effect {
            Effect::LoadCheckpoint(spec, quantize) => {
                self.load_seq += 1;
                let (seq, root) = (self.load_seq, self.paths.checkpoints.clone());
                worker::spawn("load", tx, None, move |tx| {
                    worker::load_checkpoint(&spec, quantize, &root, seq, tx)
                });
            }
            Effect::LoadEndpoint(cfg) => {
                self.load_seq += 1;
                let seq = self.load_seq;
                worker::spawn("endpoint", tx, None, move |tx| {
                    worker::load_endpoint(cfg, seq, tx)
                });
            }
            Effect::SaveEndpoints(list) => {
                let root = self.paths.checkpoints.clone();
                worker::spawn(
                    "endpoints",
                    tx,
                    None,
                    move |tx| match worker::save_endpoints(&root, &list) {
                        Ok(_) => tx.send(Action::Checkpoints(worker::scan_checkpoints(&root))),
                        Err(error) => tx.send(Action::Failed { job: None, error }),
                    },
                );
            }
            Effect::ScanJudges => {
                let (prompts, root) = (self.paths.prompts.clone(), self.paths.checkpoints.clone());
                worker::spawn("judges", tx, None, move |tx| {
                    tx.send(Action::Judges(worker::scan_judges(&prompts, &root)))
                });
            }
            Effect::Train {
                job,
                cfg,
                out,
                resume,
                cancel,
            } => {
                let roots = self.paths.roots();
                worker::spawn("train", tx, Some(job), move |tx| {
                    worker::train(job, &cfg, &out, resume, &roots, &cancel, tx)
                });
            }
            Effect::ScanScenarios => {
                let dir = self.paths.scenarios.clone();
                worker::spawn("scenarios", tx, None, move |tx| {
                    let mut entries = vec![];
                    let mut problems = vec![];
                    for r in crate::scenario::load_all(&dir) {
                        match r {
                            Ok(l) => entries.push(l),
                            Err(e) => problems.push(e.to_string()),
                        }
                    }
                    tx.send(Action::Scenarios { entries, problems });
                });
            }
            Effect::ScanCheckpoints => {
                let root = self.paths.checkpoints.clone();
                worker::spawn("checkpoints", tx, None, move |tx| {
                    tx.send(Action::Checkpoints(worker::scan_checkpoints(&root)))
                });
            }
            Effect::ScanPrompts => {
                let root = self.paths.prompts.clone();
                worker::spawn("prompts", tx, None, move |tx| {
                    tx.send(Action::PromptSets(worker::scan_prompts(&root)))
                });
            }
            Effect::ScanRuns => {
                let root = self.paths.runs.clone();
                worker::spawn("runs", tx, None, move |tx| {
                    tx.send(Action::Runs(crate::eval::list_runs(&root)))
                });
            }
            Effect::LoadRun { path, prev } => {
                worker::spawn("run", tx, None, move |tx| {
                    tx.send(Action::RunDetail(worker::load_run(&path, prev.as_deref())))
                });
            }
            Effect::Simulate(req) => {
                let Some(model) = self.model.clone() else {
                    self.pending.push(Effect::Simulate(req));
                    return;
                };
                let prompts = self.paths.prompts.clone();
                let job = req.job;
                worker::spawn("simulate", tx, Some(job), move |tx| {
                    worker::simulate(&model, &req, &prompts, &|msg| {
                        tx.send(Action::Sim { job, msg })
                    })
                });
            }
            Effect::Plan(req) => {
                let Some(model) = self.model.clone() else {
                    self.pending.push(Effect::Plan(req));
                    return;
                };
                let prompts = self.paths.prompts.clone();
                worker::spawn("plan", tx, Some(req.job), move |tx| {
                    let result = worker::plan(&model, &req, &prompts);
                    tx.send(Action::Plan {
                        job: req.job,
                        result,
                    })
                });
            }
            // Both wait for the simulated user's checkpoint.
            Effect::Converse(req) if self.model.is_none() => {
                self.pending.push(Effect::Converse(req))
            }
            Effect::TurnPrompt(req) if self.model.is_none() => {
                self.pending.push(Effect::TurnPrompt(req))
            }
            Effect::Converse(req) => {
                let user = self.model.clone().expect("checked above");
                let (opened, paths) = (self.assistants.clone(), self.paths.clone());
                let job = req.job;
                worker::spawn("converse", tx, Some(job), move |tx| {
                    let send = |msg| tx.send(Action::Conv { job, msg });
                    let r =
                        worker::assistant_for(&req.assistant, &user, &opened, &paths.checkpoints)
                            .and_then(|a| worker::converse(&user, &a, &req, &paths.prompts, &send));
                    if let Err(error) = r {
                        tx.send(Action::Failed {
                            job: Some(job),
                            error,
                        });
                    }
                });
            }
            Effect::TurnPrompt(req) => {
                let user = self.model.clone().expect("checked above");
                let (opened, paths) = (self.assistants.clone(), self.paths.clone());
                worker::spawn("turn-prompt", tx, Some(req.job), move |tx| {
                    let result =
                        worker::assistant_for(&req.assistant, &user, &opened, &paths.checkpoints)
                            .and_then(|a| worker::turn_prompt(&user, &a, &req, &paths.prompts));
                    tx.send(Action::TurnPrompt {
                        job: req.job,
                        result,
                    })
                });
            }
            Effect::Score {
                job,
                call,
                reference,
                texts,
            } => {
                let Some(judge) = self.embedder.clone() else {
                    return;
                };
                worker::spawn("score", tx, None, move |tx| {
                    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                    let result = judge
                        .similarities(&reference, &refs)
                        .map_err(|e| e.to_string());
                    tx.send(Action::Scores {
                        job,
                        call,
                        texts,
                        result,
                    })
                });
            }
            Effect::Compare { req, sides } => {
                if self.model.is_none() {
                    self.pending.push(Effect::Compare { req, sides });
                    return;
                }
                let (model, paths) = (self.model.clone(), self.paths.clone());
                worker::spawn("compare", tx, Some(req.job), move |tx| {
                    worker::compare(model, &req, &sides, &paths, tx)
                });
            }
            Effect::Eval { job, spec, cancel } => {
                let roots = self.paths.roots();
                worker::spawn("eval", tx, Some(job), move |tx| {
                    worker::eval(job, &spec, &roots, &cancel, tx)
                });
            }
            Effect::Edit(path) => {
                let result = terminal::suspended(term, || edit(&path))
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                tx.send(Action::EditorDone { path, result });
            }
            Effect::EditTurn { branch, turn, text } => {
                let result = terminal::suspended(term, || edit_text(&text))
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                tx.send(Action::TurnEdited {
                    branch,
                    turn,
                    result,
                });
            }
            Effect::AppendRating(v) => {
                let runs = self.paths.runs.clone();
                worker::spawn("ratings", tx, None, move |tx| {
                    match worker::append_rating(&runs, v) {
                        Ok(p) => {
                            tx.send(Action::Info(format!("ratings appended to {}", p.display())))
                        }
                        Err(error) => tx.send(Action::Failed { job: None, error }),
                    }
                });
            }
            Effect::SaveSession(s) => {
                let runs = self.paths.runs.clone();
                worker::spawn("session", tx, None, move |tx| {
                    match worker::save_session(&runs, *s) {
                        Ok(p) => tx.send(Action::Info(format!("session saved to {}", p.display()))),
                        Err(error) => tx.send(Action::Failed { job: None, error }),
                    }
                });
            }
            Effect::OpenLatestSession => {
                let runs = self.paths.runs.clone();
                worker::spawn(
                    "session",
                    tx,
                    None,
                    move |tx| match worker::open_latest_session(&runs) {
                        Ok(s) => tx.send(Action::SessionOpened(s)),
                        Err(error) => tx.send(Action::Failed { job: None, error }),
                    },
                );
            }
        }
    }

    /// Files under prompts/ whose modification time changed since the last look.
    fn changed_prompts(&mut self) -> Vec<String> {
        let now = worker::prompt_mtimes(&self.paths.prompts);
        let before: BTreeMap<&PathBuf, &SystemTime> =
            self.mtimes.iter().map(|(p, t)| (p, t)).collect();
        let mut changed: Vec<String> = now
            .iter()
            .filter(|(p, t)| before.get(p) != Some(&t))
            .map(|(p, _)| p.display().to_string())
            .collect();
        let after: Vec<&PathBuf> = now.iter().map(|(p, _)| p).collect();
        changed.extend(
            self.mtimes
                .iter()
                .filter(|(p, _)| !after.contains(&p))
                .map(|(p, _)| format!("{} (removed)", p.display())),
        );
        self.mtimes = now;
        changed
    }
}

/// Open `path` in `$VISUAL`, else `$EDITOR`, else `vi`.
fn edit(path: &Path) -> Result<(), String> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let mut words = editor.split_whitespace();
    let program = words.next().unwrap_or("vi");
    let status = std::process::Command::new(program)
        .args(words)
        .arg(path)
        .status()
        .map_err(|e| format!("cannot run '{editor}': {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("'{editor}' exited with {status}"))
    }
}

/// `text` edited in the user's editor through a temporary file (removed after).
fn edit_text(text: &str) -> Result<String, String> {
    let path = std::env::temp_dir().join(format!("humanlm-turn-{}.txt", std::process::id()));
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    let edited = edit(&path).and_then(|()| {
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    });
    let _ = std::fs::remove_file(&path);
    edited
}

fn translate(ev: Event) -> Option<Action> {
    match ev {
        Event::Key(k) => Some(Action::Key(k)),
        Event::Mouse(m) => Some(Action::Mouse(m)),
        Event::Resize(w, h) => Some(Action::Resize(w, h)),
        _ => None,
    }
}

/// Open the workbench on the default checkpoint (loaded in the background) and the scenarios
/// under `scenarios/`. Returns when the user quits; the terminal is restored on every path.
pub fn run(checkpoints: &Path) -> anyhow::Result<()> {
    let paths = Paths {
        checkpoints: checkpoints.to_path_buf(),
        prompts: crate::prompts::default_root(),
        ..Paths::default()
    };
    // The checkpoint's own prompt set is known before it loads (a small settings file).
    let default_set = crate::prompts::set_for(
        None,
        Checkpoint::resolve(DEFAULT_CHECKPOINT, checkpoints)
            .ok()
            .and_then(|c| c.default_prompt_set().ok().flatten()),
    );
    let mut app = App::new(paths.clone(), DEFAULT_CHECKPOINT, &default_set);
    // A bad key file is refused here, before the terminal is taken over.
    app.keys = keys::Keymap::load()?;
    app.seed = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut startup_error = None;
    if let Ok(v) = std::env::var(MAX_TOKENS_ENV) {
        match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => app.sampling.max_tokens = Some(n),
            _ => startup_error = Some(format!("{MAX_TOKENS_ENV}='{v}': expected a number ≥ 1")),
        }
    }
    app.model.loading = Some((DEFAULT_CHECKPOINT.to_string(), 0));

    terminal::install_panic_hook();
    let mut term = terminal::enter()?;
    let _guard = terminal::Guard;
    let size = term.size()?;
    app.size = (size.width, size.height);
    if let Some(e) = startup_error {
        app.fail(e);
    }

    let (sender, rx) = mpsc::channel::<Msg>();
    let mut rt = Runtime {
        tx: Tx(sender),
        paths: paths.clone(),
        model: None,
        embedder: None,
        load_seq: 0,
        pending: vec![],
        assistants: Default::default(),
        mtimes: worker::prompt_mtimes(&paths.prompts),
    };
    for e in [
        Effect::ScanScenarios,
        Effect::ScanPrompts,
        Effect::ScanCheckpoints,
        Effect::LoadCheckpoint(DEFAULT_CHECKPOINT.to_string(), None),
    ] {
        rt.execute(e, &mut term);
    }
    {
        let root = paths.checkpoints.clone();
        worker::spawn("judge", &rt.tx, None, move |tx| {
            worker::load_embedder(&root, tx)
        });
    }

    let tick = Duration::from_millis(1000 / app::TICKS_PER_S);
    let mut last_tick = Instant::now();
    let mut last_poll = Instant::now();
    let mut dirty = true;
    loop {
        if dirty {
            let size = term.size()?;
            app.size = (size.width, size.height);
            term.draw(|f| ui::draw(f, &app))?;
            dirty = false;
        }
        let mut actions = vec![];
        // Short waits while something streams, so text appears as it is generated.
        let wait = if app.jobs.is_empty() {
            tick.saturating_sub(last_tick.elapsed())
        } else {
            Duration::from_millis(30)
        };
        if event::poll(wait)? {
            actions.extend(translate(event::read()?));
            while event::poll(Duration::ZERO)? {
                actions.extend(translate(event::read()?));
            }
        }
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Action(a) => actions.push(a),
                Msg::Model { seq, model, info } => {
                    if seq == rt.load_seq {
                        rt.model = Some(model);
                        actions.push(Action::ModelLoaded(info));
                        for e in std::mem::take(&mut rt.pending) {
                            rt.execute(e, &mut term);
                        }
                    }
                }
                Msg::Embedder(judge, name) => {
                    rt.embedder = Some(judge);
                    actions.push(Action::Embedder(Ok(name)));
                }
            }
        }
        if last_tick.elapsed() >= tick {
            last_tick = Instant::now();
            actions.push(Action::Tick);
        }
        if last_poll.elapsed() >= Duration::from_secs(1) {
            last_poll = Instant::now();
            let changed = rt.changed_prompts();
            if !changed.is_empty() {
                actions.push(Action::PromptsChanged(changed));
            }
        }
        for a in actions {
            dirty = true;
            for e in update(&mut app, a) {
                rt.execute(e, &mut term);
            }
        }
        if app.quit {
            for j in &app.jobs {
                j.cancel.store(true, Ordering::Relaxed);
            }
            break;
        }
    }
    drop(term);
    Ok(())
}
