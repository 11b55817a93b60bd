//! `update`: the one place the state changes. It does no I/O: work it wants done comes back as
//! effects, which the runtime starts on worker threads.

use super::action::{Action, Effect, SimRequest};
use super::app::*;
use super::keys::{self, Cmd, Ctx};
use super::text;
use super::ui;
use crate::sim::{Mode, SamplingChoice};
use ratatui::crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, MouseButton, MouseEvent, MouseEventKind,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Sample counts `n` cycles through.
const SAMPLE_COUNTS: [usize; 6] = [1, 2, 3, 4, 6, 8];
/// How long a status message stays (ticks).
const MESSAGE_TICKS: u64 = 6 * TICKS_PER_S;

/// Apply one action; returns the work to start.
pub fn update(app: &mut App, action: Action) -> Vec<Effect> {
    let mut fx = vec![];
    match action {
        Action::Key(key) => on_key(app, key, &mut fx),
        Action::Mouse(m) => on_mouse(app, m),
        Action::Resize(w, h) => app.size = (w, h),
        Action::Tick => {
            app.tick += 1;
            if let Some((Level::Info, _, at)) = &app.message {
                if app.tick.saturating_sub(*at) > MESSAGE_TICKS {
                    app.message = None;
                }
            }
        }
        Action::Scenarios { entries, problems } => {
            app.scenarios = entries;
            app.scenarios.sort_by(|a, b| {
                (a.scenario.domain, &a.scenario.id).cmp(&(b.scenario.domain, &b.scenario.id))
            });
            if !problems.is_empty() {
                app.fail(format!(
                    "{} scenario files have problems: {}",
                    problems.len(),
                    problems.join("; ")
                ));
            }
            app.scenario_problems = problems;
            select_first_scenario(app);
        }
        Action::ModelLoaded(info) => {
            app.model.loading = None;
            app.model.error = None;
            if !app.set_pinned {
                app.set = crate::prompts::set_for(None, info.default_set.clone());
            }
            app.info(format!(
                "{} loaded in {} ({}) · prompt set {}",
                info.name,
                text::duration(info.load_ms as f64 / 1000.0),
                info.device,
                app.set
            ));
            app.model.loaded = Some(info);
        }
        Action::ModelFailed { name, error } => {
            app.model.loading = None;
            app.model.error = Some(error.clone());
            if app.model.loaded.is_none() {
                // A simulation waiting for this checkpoint will not start.
                if let Some(run) = app.sim.as_mut().filter(|r| r.running()) {
                    run.status = RunStatus::Failed(format!("{name} did not load"));
                    let job = run.job;
                    app.jobs.retain(|j| j.id != job);
                }
            }
            app.fail(format!("checkpoint {name} did not load: {error}"));
        }
        Action::Embedder(r) => match r {
            Ok(name) => {
                app.judge = JudgeState::Ready(name);
                fx.extend(rescore(app));
            }
            Err(why) => app.judge = JudgeState::Missing(why),
        },
        Action::Checkpoints(rows) => {
            app.ckpts.rows = rows;
            app.ckpts.scanned = true;
            // An endpoint just added stays selected; else the checkpoint in use.
            let want = app
                .ckpts
                .select_next
                .take()
                .unwrap_or_else(|| app.checkpoint.clone());
            app.ckpts.selected = app
                .ckpts
                .rows
                .iter()
                .position(|r| r.name == want)
                .unwrap_or(0);
        }
        Action::Judges(rows) => {
            let first_read = app.eval.judges.is_none();
            app.eval.judges = Some(rows);
            if first_read && app.eval.picker.is_some() {
                app.eval.picker = Some(preferred_judge(app));
            }
            if let (Some(sel), Some(rows)) = (app.eval.picker, &app.eval.judges) {
                app.eval.picker = Some(sel.min(rows.len().saturating_sub(1)));
            }
        }
        Action::Train { job, msg } => train_msg(app, job, msg, &mut fx),
        Action::PromptSets(sets) => {
            let error_before = app.set_info(&app.set).and_then(|s| s.error.clone());
            app.sets = sets;
            app.prompts.set = app.prompts.set.min(app.sets.len().saturating_sub(1));
            let files = app.sets.get(app.prompts.set).map_or(0, |s| s.files.len());
            app.prompts.file = app.prompts.file.min(files.saturating_sub(1));
            // A broken set in use is reported once per new error, not on every rescan.
            if let Some(s) = app.set_info(&app.set) {
                if let Some(e) = s.error.clone().filter(|e| Some(e) != error_before.as_ref()) {
                    let msg = format!("prompt set {} does not load: {e}", s.name);
                    app.fail(msg);
                }
            }
            // The prompt view follows edits of the set it shows.
            let stale = app.prompt_view.plan.as_ref().is_some_and(|p| {
                app.set_info(&p.set)
                    .and_then(|s| s.hash.as_ref())
                    .is_some_and(|h| *h != p.set_hash)
            });
            if stale && app.screen == Screen::PromptView && app.prompt_view.job.is_none() {
                open_prompt_view(app, &mut fx);
            }
        }
        Action::PromptsChanged(files) => {
            app.info(format!("{} changed on disk · reloaded", files.join(", ")));
            fx.push(Effect::ScanPrompts);
        }
        Action::Sim { job, msg } => sim_msg(app, job, msg, &mut fx),
        Action::Cmp { job, side, msg } => {
            let finished = matches!(msg, SimMsg::Done { .. } | SimMsg::Failed(_));
            if app.compare.job == Some(job) {
                if let Some(run) = app.compare.runs.get_mut(side) {
                    apply(run, msg, app.tick);
                }
                if finished && app.compare.runs.iter().all(|r| !r.running()) {
                    app.jobs.retain(|j| j.id != job);
                    app.compare.job = None;
                }
            }
        }
        Action::Plan { job, result } => {
            app.jobs.retain(|j| j.id != job);
            if app.prompt_view.job == Some(job) {
                app.prompt_view.job = None;
                match result {
                    Ok(plan) => {
                        app.prompt_view.call =
                            app.prompt_view.call.min(plan.plan.calls.len().max(1) - 1);
                        app.prompt_view.plan = Some(plan);
                        app.prompt_view.error = None;
                    }
                    Err(e) => app.prompt_view.error = Some(e),
                }
            }
        }
        Action::Scores {
            job,
            call,
            texts,
            result,
        } => match result {
            Ok(scores) => {
                if let Some(run) = app.sim.as_mut().filter(|r| r.job == job) {
                    for ((s, v), t) in run.samples.iter_mut().zip(scores).zip(texts) {
                        // An empty output says nothing; its embedding is not a prediction.
                        let v = if t.trim().is_empty() { 0.0 } else { v };
                        s.scores.insert(call.clone(), v);
                        s.scored.insert(call.clone(), t);
                    }
                }
            }
            Err(e) => app.fail(format!("embedding judge: {e}")),
        },
        Action::Eval { job, msg } => eval_msg(app, job, msg, &mut fx),
        Action::Runs(runs) => {
            app.eval.scanned = true;
            let keep = app.eval.runs.get(app.eval.selected).map(|r| r.path.clone());
            app.eval.runs = runs;
            app.eval.selected = keep
                .and_then(|p| app.eval.runs.iter().position(|r| r.path == p))
                .unwrap_or(0);
            fx.extend(load_selected_run(app));
        }
        Action::RunDetail(d) => {
            if app.eval.runs.get(app.eval.selected).map(|r| &r.path) == Some(&d.path) {
                app.eval.detail = Some(d);
            }
        }
        Action::EditorDone { path, result } => match result {
            Ok(()) => {
                app.info(format!("edited {}", path.display()));
                fx.push(Effect::ScanPrompts);
            }
            Err(e) => app.fail(format!("editor: {e}")),
        },
        Action::SessionOpened(s) => open_session(app, s, &mut fx),
        Action::Info(text) => app.info(text),
        Action::Failed { job, error } => {
            if let Some(job) = job {
                app.jobs.retain(|j| j.id != job);
                if let Some(run) = app.sim.as_mut().filter(|r| r.job == job && r.running()) {
                    run.status = RunStatus::Failed(error.clone());
                }
                if app.compare.job == Some(job) {
                    app.compare.job = None;
                    for r in app.compare.runs.iter_mut().filter(|r| r.running()) {
                        r.status = RunStatus::Failed(error.clone());
                    }
                }
                if app.prompt_view.job == Some(job) {
                    app.prompt_view.job = None;
                    app.prompt_view.error = Some(error.clone());
                }
                if app.eval.progress.as_ref().is_some_and(|p| p.job == job) {
                    app.eval.progress = None;
                }
                if let Some(run) = app.train.run.as_mut().filter(|r| r.job == job) {
                    run.status = TrainStatus::Failed(error.clone());
                }
            }
            app.fail(error);
        }
    }
    fx
}

fn on_key(app: &mut App, key: KeyEvent, fx: &mut Vec<Effect>) {
    if key.kind == KeyEventKind::Release {
        return;
    }
    if app.error.is_some() {
        // Any key closes the error (and its line in the status bar); Ctrl-C still quits.
        app.error = None;
        if matches!(app.message, Some((Level::Error, _, _))) {
            app.message = None;
        }
        if keys::lookup(&[], &key) == Some(Cmd::Quit) {
            app.quit = true;
        }
        return;
    }
    if let Some(scroll) = app.help {
        match keys::lookup(&[Ctx::Global], &key) {
            Some(Cmd::Quit) => app.quit = true,
            Some(Cmd::Up) => app.help = Some(scroll.saturating_sub(1)),
            Some(Cmd::Down) => app.help = Some(bounded(app, "help", scroll + 1)),
            Some(Cmd::PageUp) => app.help = Some(scroll.saturating_sub(10)),
            Some(Cmd::PageDown) => app.help = Some(bounded(app, "help", scroll + 10)),
            _ => app.help = None,
        }
        return;
    }
    if app.screen == Screen::Simulate && app.browser.filtering {
        filter_key(app, key, fx);
        return;
    }
    if app.screen == Screen::Checkpoints && app.ckpts.form.is_some() {
        endpoint_form_key(app, key, fx);
        return;
    }
    if app.screen == Screen::Eval && app.eval.picker.is_some() {
        if let Some(cmd) = keys::lookup(&[Ctx::JudgePicker, Ctx::Global], &key) {
            picker_cmd(app, cmd, fx);
        }
        return;
    }
    if app.screen == Screen::Train && app.train.form.editing {
        train_edit_key(app, key);
        return;
    }
    if app.screen == Screen::Compare {
        if let Some(b) = app.compare.blind.as_mut().filter(|b| !b.revealed) {
            if let KeyCode::Char(c @ '0'..='9') = key.code {
                let v = if c == '0' { 10 } else { c as u8 - b'0' };
                let field = b.field;
                b.ratings[b.focus][field] = Some(v);
                // After similarity comes humanlike; after both, the next reply.
                if field == 0 {
                    b.field = 1;
                } else if b.focus + 1 < b.ratings.len() {
                    b.focus += 1;
                    b.field = 0;
                }
                return;
            }
        }
    }
    let ctxs: &[Ctx] = match app.screen {
        Screen::Simulate => &[Ctx::Simulate, Ctx::Global],
        Screen::PromptView => &[Ctx::PromptView, Ctx::Global],
        Screen::Checkpoints => &[Ctx::Checkpoints, Ctx::Global],
        Screen::Prompts => &[Ctx::Prompts, Ctx::Global],
        Screen::Compare if app.compare.blind.is_some() => &[Ctx::Blind, Ctx::Global],
        Screen::Compare => &[Ctx::Compare, Ctx::Global],
        Screen::Eval => &[Ctx::Eval, Ctx::Global],
        Screen::Train => &[Ctx::Train, Ctx::Global],
    };
    let Some(cmd) = keys::lookup(ctxs, &key) else {
        return;
    };
    command(app, cmd, fx);
}

/// Keys while typing a filter: text goes in, arrows still move, Enter simulates.
fn filter_key(app: &mut App, key: KeyEvent, fx: &mut Vec<Effect>) {
    if keys::lookup(&[], &key) == Some(Cmd::Quit) {
        app.quit = true;
        return;
    }
    match key.code {
        KeyCode::Esc => {
            app.browser.filter.clear();
            app.browser.filtering = false;
            select_first_scenario(app);
        }
        KeyCode::Enter => {
            app.browser.filtering = false;
            if app.selected_scenario().is_some() {
                start_sim(app, fx);
            }
        }
        KeyCode::Tab => {
            app.browser.filtering = false;
            command(app, Cmd::NextPane, fx);
        }
        KeyCode::Backspace => {
            app.browser.filter.pop();
            select_first_scenario(app);
        }
        KeyCode::Up => move_browser(app, -1),
        KeyCode::Down => move_browser(app, 1),
        KeyCode::Char(c) => {
            app.browser.filter.push(c);
            select_first_scenario(app);
        }
        _ => {}
    }
}

fn command(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    // Commands every screen shares.
    match cmd {
        Cmd::Quit => {
            // Quitting ends a training pass without its final save: say so once.
            if app.train.run.as_ref().is_some_and(|r| r.running()) && !app.train.quit_warned {
                app.train.quit_warned = true;
                app.info("a training pass is running: Esc on Train stops it and saves a checkpoint; q again quits anyway");
                return;
            }
            app.quit = true;
            return;
        }
        Cmd::Help => {
            app.help = Some(0);
            return;
        }
        Cmd::Back => {
            back(app);
            return;
        }
        Cmd::GoPromptView => {
            if app.screen == Screen::PromptView {
                app.screen = Screen::Simulate;
            } else {
                open_prompt_view(app, fx);
            }
            return;
        }
        Cmd::GoCheckpoints => {
            toggle_screen(app, Screen::Checkpoints);
            if app.screen == Screen::Checkpoints {
                fx.push(Effect::ScanCheckpoints);
            }
            return;
        }
        Cmd::GoPrompts => {
            toggle_screen(app, Screen::Prompts);
            if app.screen == Screen::Prompts {
                if let Some(i) = app.sets.iter().position(|s| s.name == app.set) {
                    if app.prompts.diff.is_none() && !app.prompts.set_touched() {
                        app.prompts.set = i;
                    }
                }
            }
            return;
        }
        Cmd::GoCompare => {
            toggle_screen(app, Screen::Compare);
            if app.compare.sides.is_empty() {
                init_compare(app);
            }
            return;
        }
        Cmd::GoEval => {
            toggle_screen(app, Screen::Eval);
            if app.screen == Screen::Eval {
                fx.push(Effect::ScanRuns);
            }
            return;
        }
        Cmd::GoTrain => {
            toggle_screen(app, Screen::Train);
            if app.screen == Screen::Train {
                // The form's choices: checkpoints to start from, judges for the reward.
                if !app.ckpts.scanned {
                    fx.push(Effect::ScanCheckpoints);
                }
                if app.eval.judges.is_none() {
                    fx.push(Effect::ScanJudges);
                }
            }
            return;
        }
        Cmd::CycleMode => {
            app.mode = match app.mode {
                Mode::Humanlm => Mode::Response,
                Mode::Response => Mode::Joint,
                Mode::Joint => Mode::Humanlm,
            };
            app.info(format!(
                "mode {} (applies to the next run)",
                mode_name(app.mode)
            ));
            return;
        }
        Cmd::CycleSamples => {
            let i = SAMPLE_COUNTS
                .iter()
                .position(|n| *n == app.sampling.n)
                .map_or(0, |i| (i + 1) % SAMPLE_COUNTS.len());
            app.sampling.n = SAMPLE_COUNTS[i];
            app.info(format!(
                "{} sample{} per run (applies to the next run)",
                app.sampling.n,
                if app.sampling.n == 1 { "" } else { "s" }
            ));
            return;
        }
        Cmd::SaveSession => {
            save_session(app, fx);
            return;
        }
        Cmd::OpenSession => {
            fx.push(Effect::OpenLatestSession);
            return;
        }
        _ => {}
    }
    match app.screen {
        Screen::Simulate => simulate_cmd(app, cmd, fx),
        Screen::PromptView => prompt_view_cmd(app, cmd),
        Screen::Checkpoints => checkpoints_cmd(app, cmd, fx),
        Screen::Prompts => prompts_cmd(app, cmd, fx),
        Screen::Compare => compare_cmd(app, cmd, fx),
        Screen::Eval => eval_cmd(app, cmd, fx),
        Screen::Train => train_cmd(app, cmd, fx),
    }
}

fn toggle_screen(app: &mut App, screen: Screen) {
    app.screen = if app.screen == screen {
        Screen::Simulate
    } else {
        screen
    };
}

/// Esc: cancel what runs here, else close what is open, else back to Simulate.
fn back(app: &mut App) {
    let cancel_kind = match app.screen {
        Screen::Simulate => Some(JobKind::Simulate),
        Screen::Compare => Some(JobKind::Compare),
        Screen::Eval => Some(JobKind::Eval),
        Screen::Train => Some(JobKind::Train),
        _ => None,
    };
    match app.screen {
        Screen::Simulate => {
            if !app.browser.filter.is_empty() {
                app.browser.filter.clear();
                select_first_scenario(app);
            } else if !cancel(app, JobKind::Simulate) && !app.wide() && app.focus == Pane::Scenarios
            {
                app.focus = Pane::Reply;
            }
            return;
        }
        Screen::Prompts if app.prompts.diff.is_some() => {
            app.prompts.diff = None;
            return;
        }
        Screen::Eval if app.eval.drill.is_some() => {
            app.eval.drill = None;
            return;
        }
        Screen::Compare if app.compare.blind.is_some() => {
            app.compare.blind = None;
            return;
        }
        _ => {}
    }
    if let Some(kind) = cancel_kind {
        if cancel(app, kind) {
            return;
        }
    }
    app.screen = Screen::Simulate;
}

/// Cancel the running job of `kind`; whether there was one.
pub fn cancel(app: &mut App, kind: JobKind) -> bool {
    let Some(job) = app.job(kind).cloned() else {
        return false;
    };
    job.cancel.store(true, Ordering::Relaxed);
    app.jobs.retain(|j| j.id != job.id);
    match kind {
        JobKind::Simulate => {
            if let Some(run) = app.sim.as_mut().filter(|r| r.job == job.id) {
                run.status = RunStatus::Cancelled;
                run.finished = Some(app.tick);
                run.current = None;
            }
            app.info("simulation cancelled");
        }
        JobKind::Compare => {
            for r in app.compare.runs.iter_mut().filter(|r| r.running()) {
                r.status = RunStatus::Cancelled;
                r.finished = Some(app.tick);
            }
            app.compare.job = None;
            app.info("comparison cancelled");
        }
        JobKind::Eval => {
            // The worker reports when it has stopped; the progress stays until then.
            app.info("cancelling the evaluation (it resumes where it stopped: r)");
        }
        JobKind::Plan => {}
        JobKind::Train => {
            // The trainer saves a checkpoint, then reports; the run stays on screen until then.
            if let Some(run) = app.train.run.as_mut().filter(|r| r.job == job.id) {
                run.stopping = true;
            }
            app.info("stopping the training: it saves a checkpoint first");
        }
    }
    true
}

fn new_job(app: &mut App, kind: JobKind) -> Job {
    let job = Job {
        id: app.next_job,
        kind,
        cancel: Arc::new(AtomicBool::new(false)),
        started: app.tick,
    };
    app.next_job += 1;
    app.jobs.push(job.clone());
    job
}

fn select_first_scenario(app: &mut App) {
    let rows = app.browser_rows();
    app.browser.selected = rows
        .iter()
        .position(|r| matches!(r, BrowserRow::Scenario(_)))
        .unwrap_or(0);
    app.thread_scroll = 0;
}

fn move_browser(app: &mut App, delta: isize) {
    let n = app.browser_rows().len();
    if n == 0 {
        return;
    }
    let before = app.browser.selected;
    app.browser.selected = (before as isize + delta).clamp(0, n as isize - 1) as usize;
    if app.browser.selected != before {
        app.thread_scroll = 0;
    }
}

/// Fold (`fold = true`) or unfold the domain under the cursor.
fn fold(app: &mut App, fold: bool) {
    let rows = app.browser_rows();
    let domain = match rows.get(app.browser.selected) {
        Some(BrowserRow::Domain { domain, .. }) => *domain,
        Some(BrowserRow::Scenario(i)) => app.scenarios[*i].scenario.domain,
        None => return,
    };
    if fold {
        app.browser.folded.insert(domain);
    } else {
        app.browser.folded.remove(&domain);
    }
    let rows = app.browser_rows();
    app.browser.selected = rows
        .iter()
        .position(|r| matches!(r, BrowserRow::Domain { domain: d, .. } if *d == domain))
        .unwrap_or(0);
}

fn simulate_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    let area = if app.focus == Pane::Thread {
        "thread"
    } else {
        "reply"
    };
    let page = extent(app, area).1.max(2) - 1;
    match cmd {
        Cmd::Enter => match app.browser_rows().get(app.browser.selected) {
            Some(BrowserRow::Domain { folded, .. }) if app.focus == Pane::Scenarios => {
                let f = !*folded;
                fold(app, f);
            }
            _ => start_sim(app, fx),
        },
        Cmd::Filter => {
            app.browser.filtering = true;
            app.focus = Pane::Scenarios;
        }
        Cmd::Regenerate => {
            app.sampling.seed = app.sampling.seed.wrapping_add(1);
            start_sim(app, fx);
        }
        Cmd::ToggleThink => app.show_think = !app.show_think,
        Cmd::TogglePersona => {
            app.persona_open = !app.persona_open;
            if app.persona_open {
                // The persona is at the end of the thread: show it (the frame bounds this).
                app.thread_scroll = usize::MAX / 4;
            }
        }
        Cmd::ToggleReference => app.show_reference = !app.show_reference,
        Cmd::NextPane | Cmd::PrevPane => {
            let i = Pane::ORDER
                .iter()
                .position(|p| *p == app.focus)
                .unwrap_or(0);
            let n = Pane::ORDER.len();
            let j = if cmd == Cmd::NextPane {
                (i + 1) % n
            } else {
                (i + n - 1) % n
            };
            app.focus = Pane::ORDER[j];
        }
        Cmd::Up | Cmd::Down | Cmd::PageUp | Cmd::PageDown | Cmd::Top | Cmd::Bottom => {
            let pane = app.focus;
            scroll_pane(app, pane, cmd, page);
        }
        Cmd::Left | Cmd::Right => match app.focus {
            Pane::Scenarios => fold(app, cmd == Cmd::Left),
            _ => {
                let n = app.sim.as_ref().map_or(1, |r| r.samples.len()).max(1);
                app.sample = if cmd == Cmd::Right {
                    (app.sample + 1) % n
                } else {
                    (app.sample + n - 1) % n
                };
                app.reply_scroll = 0;
                app.reply_follow = true;
            }
        },
        _ => {}
    }
}

/// Scroll a Simulate pane (the browser moves its cursor instead).
fn scroll_pane(app: &mut App, pane: Pane, cmd: Cmd, page: usize) {
    let delta: isize = match cmd {
        Cmd::Up => -1,
        Cmd::Down => 1,
        Cmd::PageUp => -(page as isize),
        Cmd::PageDown => page as isize,
        Cmd::Top => isize::MIN / 2,
        _ => isize::MAX / 2,
    };
    match pane {
        Pane::Scenarios => move_browser(app, delta),
        Pane::Thread => app.thread_scroll = shift(app, "thread", app.thread_scroll, delta),
        Pane::Reply | Pane::States => {
            app.reply_scroll = shift(app, "reply", app.reply_scroll, delta);
            let (total, height) = extent(app, "reply");
            app.reply_follow = app.reply_scroll + height >= total;
        }
    }
}

/// Lines and height of a scrollable area at the last frame.
fn extent(app: &App, name: &str) -> (usize, usize) {
    app.caches
        .borrow()
        .extents
        .get(name)
        .copied()
        .unwrap_or((usize::MAX / 4, 1))
}

/// `pos` bounded so the last line stays at the bottom of the area.
fn bounded(app: &App, name: &str, pos: usize) -> usize {
    let (total, height) = extent(app, name);
    pos.min(total.saturating_sub(height))
}

fn shift(app: &App, name: &str, pos: usize, delta: isize) -> usize {
    let moved = if delta < 0 {
        pos.saturating_sub(delta.unsigned_abs())
    } else {
        pos.saturating_add(delta as usize)
    };
    bounded(app, name, moved)
}

/// Simulate the selected scenario with the current settings (a running one is cancelled).
fn start_sim(app: &mut App, fx: &mut Vec<Effect>) {
    let Some(entry) = app.selected_scenario().cloned() else {
        app.info("select a scenario first");
        return;
    };
    if app.model.loaded.is_none() && app.model.loading.is_none() {
        app.fail("no checkpoint is loaded: press m to choose one");
        return;
    }
    cancel(app, JobKind::Simulate);
    let job = new_job(app, JobKind::Simulate);
    let mut run = SimRun::new(
        job.id,
        &entry.scenario.id,
        app.mode,
        &app.sampling,
        app.tick,
    );
    run.checkpoint = app.checkpoint.clone();
    run.set = app.set.clone();
    run.set_hash = app
        .set_info(&app.set)
        .and_then(|s| s.hash.clone())
        .unwrap_or_default();
    app.sim = Some(run);
    app.sample = 0;
    app.reply_scroll = 0;
    app.reply_follow = true;
    if !app.wide() && app.focus == Pane::Scenarios {
        app.focus = Pane::Reply;
    }
    fx.push(Effect::Simulate(SimRequest {
        job: job.id,
        scenario: entry.scenario,
        set: app.set.clone(),
        mode: app.mode,
        sampling: app.sampling.clone(),
        cancel: job.cancel,
    }));
}

/// Apply a worker message to a run; returns the call that just finished.
fn apply(run: &mut SimRun, msg: SimMsg, tick: u64) -> Option<String> {
    match msg {
        SimMsg::Started {
            checkpoint,
            set,
            set_hash,
            calls,
        } => {
            run.checkpoint = checkpoint;
            run.set = set;
            run.set_hash = set_hash;
            run.expected_calls = calls;
        }
        SimMsg::Call(info) => {
            run.current = Some(info.name.clone());
            run.stats = Stats::default();
            for s in &mut run.samples {
                s.calls.entry(info.name.clone()).or_default();
            }
            run.calls.push(info);
        }
        SimMsg::Text {
            call,
            sample,
            delta,
            stats,
        } => {
            if let Some(s) = run.samples.get_mut(sample) {
                s.calls.entry(call).or_default().text.push_str(&delta);
            }
            run.stats = stats;
        }
        SimMsg::CallDone { call } => {
            for s in &mut run.samples {
                if let Some(c) = s.calls.get_mut(&call) {
                    c.done = true;
                }
            }
            run.current = None;
            return Some(call);
        }
        SimMsg::Done {
            samples,
            dropped_turns,
        } => {
            for (mine, fin) in run.samples.iter_mut().zip(samples) {
                let scores = std::mem::take(&mut mine.scores);
                let scored = std::mem::take(&mut mine.scored);
                *mine = fin;
                mine.scores = scores;
                mine.scored = scored;
            }
            run.dropped_turns = dropped_turns;
            run.current = None;
            if run.running() {
                run.status = RunStatus::Done;
            }
            run.finished = Some(tick);
        }
        SimMsg::Failed(e) => {
            run.status = RunStatus::Failed(e);
            run.current = None;
            run.finished = Some(tick);
        }
    }
    None
}

fn sim_msg(app: &mut App, job: u64, msg: SimMsg, fx: &mut Vec<Effect>) {
    let finished = matches!(msg, SimMsg::Done { .. } | SimMsg::Failed(_));
    if finished {
        app.jobs.retain(|j| j.id != job);
    }
    let failure = match &msg {
        SimMsg::Failed(e) => Some(e.clone()),
        _ => None,
    };
    let Some(run) = app.sim.as_mut().filter(|r| r.job == job) else {
        return;
    };
    let was_cancelled = run.status == RunStatus::Cancelled;
    let done_call = apply(run, msg, app.tick);
    if let Some(e) = failure {
        if !was_cancelled {
            app.fail(e);
        }
        return;
    }
    if done_call.is_some() || finished {
        fx.extend(rescore(app));
    }
}

/// Score every finished output whose text has no score yet (or changed since it was scored);
/// what was asked for is remembered, so a score on its way is not asked for twice.
fn rescore(app: &mut App) -> Vec<Effect> {
    let mut fx = vec![];
    if !matches!(app.judge, JudgeState::Ready(_)) {
        return fx;
    }
    let Some(reference) = app
        .sim
        .as_ref()
        .and_then(|r| app.scenario_by_id(&r.scenario))
        .and_then(|e| e.scenario.target.response.clone())
    else {
        return fx;
    };
    let mut keys = app.dimensions();
    let Some(run) = &mut app.sim else {
        return fx;
    };
    keys.push("response".to_string());
    for key in keys {
        let mut texts = vec![];
        for s in &run.samples {
            let done = if key == "response" {
                s.calls
                    .get("response")
                    .or_else(|| s.calls.get("joint"))
                    .is_some_and(|c| c.done)
            } else {
                text::call_of(s, &key).is_some_and(|c| c.done)
            };
            if !done {
                break;
            }
            texts.push(if key == "response" {
                text::reply_text(run, s).1
            } else {
                text::state_text(run, s, &key).unwrap_or_default()
            });
        }
        if texts.len() != run.samples.len() {
            continue;
        }
        let fresh = run
            .samples
            .iter()
            .zip(&texts)
            .all(|(s, t)| s.scored.get(&key) == Some(t))
            || run.requested.get(&key) == Some(&texts);
        if !fresh {
            run.requested.insert(key.clone(), texts.clone());
            fx.push(Effect::Score {
                job: run.job,
                call: key,
                reference: reference.clone(),
                texts,
            });
        }
    }
    fx
}

fn open_prompt_view(app: &mut App, fx: &mut Vec<Effect>) {
    let entry = app.selected_scenario().cloned().or_else(|| {
        app.sim
            .as_ref()
            .and_then(|r| app.scenario_by_id(&r.scenario).cloned())
    });
    let Some(entry) = entry else {
        app.info("select a scenario first");
        return;
    };
    app.screen = Screen::PromptView;
    let same = app.prompt_view.plan.as_ref().is_some_and(|p| {
        p.scenario == entry.scenario.id
            && p.set == app.set
            && p.mode == app.mode
            && Some(&p.set_hash) == app.set_info(&app.set).and_then(|s| s.hash.as_ref())
    });
    if same {
        return;
    }
    if app.model.loaded.is_none() && app.model.loading.is_none() {
        app.prompt_view.error = Some("no checkpoint is loaded: press m to choose one".into());
        return;
    }
    let job = new_job(app, JobKind::Plan);
    // The call streaming in Simulate is the one worth seeing first; after an edit of the set,
    // the call that was on screen.
    let current = app.sim.as_ref().and_then(|r| {
        r.current
            .as_ref()
            .and_then(|c| r.calls.iter().position(|x| &x.name == c))
    });
    let kept = app
        .prompt_view
        .plan
        .as_ref()
        .filter(|p| p.scenario == entry.scenario.id)
        .map(|_| app.prompt_view.call);
    // The old prompts of the same scenario stay on screen until the new ones are rendered.
    let old = kept.and(app.prompt_view.plan.take());
    app.prompt_view = PromptViewState {
        job: Some(job.id),
        plan: old,
        error: None,
        call: current.or(kept).unwrap_or(0),
        scroll: if kept.is_some() {
            app.prompt_view.scroll
        } else {
            0
        },
        ids: app.prompt_view.ids,
    };
    fx.push(Effect::Plan(SimRequest {
        job: job.id,
        scenario: entry.scenario,
        set: app.set.clone(),
        mode: app.mode,
        sampling: app.sampling.clone(),
        cancel: job.cancel,
    }));
}

fn prompt_view_cmd(app: &mut App, cmd: Cmd) {
    let n = app
        .prompt_view
        .plan
        .as_ref()
        .map_or(1, |p| p.plan.calls.len())
        .max(1);
    let page = extent(app, "prompt").1.max(2) - 1;
    let pv = &mut app.prompt_view;
    match cmd {
        Cmd::NextPane | Cmd::Right => {
            pv.call = (pv.call + 1) % n;
            pv.scroll = 0;
        }
        Cmd::PrevPane | Cmd::Left => {
            pv.call = (pv.call + n - 1) % n;
            pv.scroll = 0;
        }
        Cmd::ShowIds => {
            pv.ids = !pv.ids;
            pv.scroll = 0;
        }
        Cmd::Up | Cmd::Down | Cmd::PageUp | Cmd::PageDown | Cmd::Top | Cmd::Bottom => {
            let delta = scroll_delta(cmd, page);
            let pos = app.prompt_view.scroll;
            app.prompt_view.scroll = shift(app, "prompt", pos, delta);
        }
        _ => {}
    }
}

fn scroll_delta(cmd: Cmd, page: usize) -> isize {
    match cmd {
        Cmd::Up => -1,
        Cmd::Down => 1,
        Cmd::PageUp => -(page as isize),
        Cmd::PageDown => page as isize,
        Cmd::Top => isize::MIN / 2,
        _ => isize::MAX / 2,
    }
}

fn checkpoints_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    let n = app.ckpts.rows.len();
    match cmd {
        Cmd::Up => app.ckpts.selected = app.ckpts.selected.saturating_sub(1),
        Cmd::Down => app.ckpts.selected = (app.ckpts.selected + 1).min(n.saturating_sub(1)),
        Cmd::Top => app.ckpts.selected = 0,
        Cmd::Bottom => app.ckpts.selected = n.saturating_sub(1),
        Cmd::Rescan => fx.push(Effect::ScanCheckpoints),
        Cmd::Enter => {
            let Some(row) = app.ckpts.rows.get(app.ckpts.selected).cloned() else {
                return;
            };
            if let Some(e) = &row.error {
                app.fail(format!("{}: {e}", row.name));
                return;
            }
            if let Some(arch) = row.unsupported() {
                app.fail(format!(
                    "{} is a {arch} model (an embedding model for the judge), not a simulator: \
                     simulators are llama, qwen2 or qwen3",
                    row.name
                ));
                return;
            }
            if app
                .model
                .loading
                .as_ref()
                .is_some_and(|(n, _)| *n == row.name)
            {
                return;
            }
            app.checkpoint = row.name.clone();
            app.model.loading = Some((row.name.clone(), app.tick));
            match row.endpoint.clone() {
                Some(cfg) => {
                    app.info(format!("connecting to {}", row.label()));
                    fx.push(Effect::LoadEndpoint(cfg));
                }
                None => {
                    app.info(format!("loading {} in the background", row.name));
                    // A checkpoint given as a path loads from that path.
                    fx.push(Effect::LoadCheckpoint(row.path.clone()));
                }
            }
        }
        Cmd::AddEndpoint => app.ckpts.form = Some(EndpointForm::default()),
        Cmd::RemoveEndpoint => {
            let Some(row) = app.ckpts.rows.get(app.ckpts.selected).cloned() else {
                return;
            };
            if row.endpoint.is_none() {
                app.info("only endpoints are removed here (checkpoint folders stay on disk)");
                return;
            }
            app.ckpts.rows.retain(|r| r.name != row.name);
            app.ckpts.selected = app
                .ckpts
                .selected
                .min(app.ckpts.rows.len().saturating_sub(1));
            fx.push(Effect::SaveEndpoints(endpoints(app)));
            app.info(format!("removed {}", row.label()));
        }
        _ => {}
    }
}

/// The endpoints the Checkpoints screen lists, as `checkpoints/endpoints.toml` holds them.
fn endpoints(app: &App) -> Vec<crate::remote::EndpointConfig> {
    app.ckpts
        .rows
        .iter()
        .filter_map(|r| r.endpoint.clone())
        .collect()
}

/// Keys while the add-an-endpoint form is open: text goes into the focused field.
fn endpoint_form_key(app: &mut App, key: KeyEvent, fx: &mut Vec<Effect>) {
    let ctrl = key
        .modifiers
        .contains(ratatui::crossterm::event::KeyModifiers::CONTROL);
    if keys::lookup(&[], &key) == Some(Cmd::Quit) {
        app.quit = true;
        return;
    }
    let Some(form) = app.ckpts.form.as_mut() else {
        return;
    };
    let n = form.fields.len();
    match key.code {
        KeyCode::Esc => app.ckpts.form = None,
        KeyCode::Tab | KeyCode::Down => form.focus = (form.focus + 1) % n,
        KeyCode::BackTab | KeyCode::Up => form.focus = (form.focus + n - 1) % n,
        KeyCode::Enter if form.focus + 1 < n => form.focus += 1,
        KeyCode::Enter => submit_endpoint(app, fx),
        KeyCode::Backspace => {
            form.fields[form.focus].pop();
        }
        KeyCode::Char('u') if ctrl => form.fields[form.focus].clear(),
        KeyCode::Char(c) if !ctrl => form.fields[form.focus].push(c),
        _ => {}
    }
}

/// An endpoint from the form's fields, or what is wrong with them (naming the field).
pub fn endpoint_from_form(fields: &[String; 3]) -> Result<crate::remote::EndpointConfig, String> {
    let url = fields[0].trim().trim_end_matches('/').to_string();
    let model = fields[1].trim().to_string();
    let var = fields[2].trim().to_string();
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match host {
        None => {
            return Err(format!(
                "URL '{url}': it starts with http:// or https:// and ends with the API version, e.g. http://127.0.0.1:8000/v1"
            ))
        }
        Some(h) if h.is_empty() || h.starts_with('/') => {
            return Err(format!("URL '{url}': no host"))
        }
        _ => {}
    }
    if url.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(format!("URL '{url}': no spaces or '#'"));
    }
    if model.is_empty() {
        return Err("model: the model id the server serves (its GET /models lists them)".into());
    }
    if model.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(format!("model '{model}': no spaces or '#'"));
    }
    if !var.is_empty() {
        let ident = var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !var.starts_with(|c: char| c.is_ascii_digit());
        if !ident || var.starts_with("sk-") {
            // The value is not repeated: it may be the key itself, pasted in the wrong place.
            return Err(
                "key env: the NAME of the environment variable that holds the key (e.g. OPENAI_API_KEY), never the key itself"
                    .into(),
            );
        }
    }
    let mut cfg = crate::remote::EndpointConfig::new(&url, &model);
    cfg.api_key_env = (!var.is_empty()).then_some(var);
    Ok(cfg)
}

fn submit_endpoint(app: &mut App, fx: &mut Vec<Effect>) {
    let Some(form) = app.ckpts.form.as_mut() else {
        return;
    };
    let cfg = match endpoint_from_form(&form.fields) {
        Ok(c) => c,
        Err(e) => {
            form.error = Some(e);
            return;
        }
    };
    app.ckpts.form = None;
    let row = CkptRow::for_endpoint(cfg);
    // The same URL and model again replaces the entry (a new key variable, say).
    match app.ckpts.rows.iter().position(|r| r.name == row.name) {
        Some(i) => app.ckpts.rows[i] = row.clone(),
        None => app.ckpts.rows.push(row.clone()),
    }
    app.ckpts.selected = app
        .ckpts
        .rows
        .iter()
        .position(|r| r.name == row.name)
        .unwrap_or(0);
    app.ckpts.select_next = Some(row.name.clone());
    app.info(format!(
        "added {} to checkpoints/endpoints.toml · Enter uses it",
        row.label()
    ));
    fx.push(Effect::SaveEndpoints(endpoints(app)));
}

impl PromptsScreen {
    /// Whether the user moved in the set list since opening (then it is not reset).
    pub fn set_touched(&self) -> bool {
        self.file != 0 || self.scroll != 0 || self.focus != PromptsFocus::Sets
    }
}

fn prompts_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    if app.prompts.diff.is_some() {
        let page = extent(app, "diff").1.max(2) - 1;
        if matches!(
            cmd,
            Cmd::Up | Cmd::Down | Cmd::PageUp | Cmd::PageDown | Cmd::Top | Cmd::Bottom
        ) {
            let pos = app.prompts.diff_scroll;
            app.prompts.diff_scroll = shift(app, "diff", pos, scroll_delta(cmd, page));
        } else if cmd == Cmd::Diff {
            app.prompts.diff = None;
        }
        return;
    }
    let nsets = app.sets.len();
    let nfiles = app.sets.get(app.prompts.set).map_or(0, |s| s.files.len());
    let page = extent(app, "preview").1.max(2) - 1;
    let p = &mut app.prompts;
    match (cmd, p.focus) {
        (Cmd::Up, PromptsFocus::Sets) => {
            p.set = p.set.saturating_sub(1);
            p.file = 0;
            p.scroll = 0;
        }
        (Cmd::Down, PromptsFocus::Sets) => {
            p.set = (p.set + 1).min(nsets.saturating_sub(1));
            p.file = 0;
            p.scroll = 0;
        }
        (Cmd::Up, PromptsFocus::Files) => {
            p.file = p.file.saturating_sub(1);
            p.scroll = 0;
        }
        (Cmd::Down, PromptsFocus::Files) => {
            p.file = (p.file + 1).min(nfiles.saturating_sub(1));
            p.scroll = 0;
        }
        (
            Cmd::Up | Cmd::Down | Cmd::PageUp | Cmd::PageDown | Cmd::Top | Cmd::Bottom,
            PromptsFocus::Preview,
        ) => {
            let pos = p.scroll;
            app.prompts.scroll = shift(app, "preview", pos, scroll_delta(cmd, page));
        }
        (Cmd::Right | Cmd::NextPane, f) => {
            p.focus = match f {
                PromptsFocus::Sets => PromptsFocus::Files,
                _ => PromptsFocus::Preview,
            }
        }
        (Cmd::Left | Cmd::PrevPane, f) => {
            p.focus = match f {
                PromptsFocus::Preview => PromptsFocus::Files,
                _ => PromptsFocus::Sets,
            }
        }
        (Cmd::Enter, PromptsFocus::Sets) => {
            if let Some(s) = app.sets.get(app.prompts.set) {
                if let Some(e) = &s.error {
                    let msg = format!("prompt set {} does not load: {e}", s.name);
                    app.fail(msg);
                } else {
                    app.set = s.name.clone();
                    app.set_pinned = true;
                    app.info(format!("prompt set {} is used from now on", app.set));
                }
            }
        }
        (Cmd::Enter | Cmd::Edit, _) => {
            let file = app
                .sets
                .get(app.prompts.set)
                .and_then(|s| s.files.get(app.prompts.file));
            if let Some(f) = file {
                fx.push(Effect::Edit(f.path.clone()));
            }
        }
        (Cmd::MarkDiff, _) => {
            if let Some(s) = app.sets.get(app.prompts.set) {
                app.prompts.mark = Some(s.name.clone());
                app.info(format!("{} marked as A: d diffs it against a set", s.name));
            }
        }
        (Cmd::Diff, _) => {
            let Some(b) = app.sets.get(app.prompts.set) else {
                return;
            };
            let a = app
                .prompts
                .mark
                .as_ref()
                .and_then(|m| app.set_info(m))
                .filter(|a| a.name != b.name)
                .or_else(|| app.sets.iter().find(|s| s.name != b.name));
            match a {
                Some(a) => {
                    app.prompts.diff = Some(diff_sets(a, b));
                    app.prompts.diff_scroll = 0;
                }
                None => app.info("only one prompt set: nothing to diff against"),
            }
        }
        (Cmd::Rescan, _) => fx.push(Effect::ScanPrompts),
        _ => {}
    }
}

/// A line diff of every file of two sets (by file name).
pub fn diff_sets(a: &SetInfo, b: &SetInfo) -> DiffView {
    let mut names: Vec<&str> = a.files.iter().map(|f| f.name.as_str()).collect();
    for f in &b.files {
        if !names.contains(&f.name.as_str()) {
            names.push(&f.name);
        }
    }
    let mut files = vec![];
    for name in names {
        let fa = a.files.iter().find(|f| f.name == name);
        let fb = b.files.iter().find(|f| f.name == name);
        let (ta, tb) = (
            fa.map_or("", |f| f.text.as_str()),
            fb.map_or("", |f| f.text.as_str()),
        );
        let status = match (fa, fb) {
            (Some(_), None) => "only in A",
            (None, Some(_)) => "only in B",
            _ if ta == tb => "same",
            _ => "changed",
        };
        let mut lines = vec![];
        if status != "same" {
            let d = similar::TextDiff::from_lines(ta, tb);
            for group in d.grouped_ops(2) {
                if !lines.is_empty() {
                    lines.push(('…', String::new()));
                }
                for op in group {
                    for change in d.iter_changes(&op) {
                        let tag = match change.tag() {
                            similar::ChangeTag::Delete => '-',
                            similar::ChangeTag::Insert => '+',
                            similar::ChangeTag::Equal => ' ',
                        };
                        lines.push((tag, change.value().trim_end_matches('\n').to_string()));
                    }
                }
            }
        }
        files.push(FileDiff {
            name: name.to_string(),
            status,
            lines,
        });
    }
    DiffView {
        a: a.name.clone(),
        b: b.name.clone(),
        files,
    }
}

fn init_compare(app: &mut App) {
    let other = app
        .sets
        .iter()
        .find(|s| s.name != app.set && s.error.is_none())
        .map_or_else(|| app.set.clone(), |s| s.name.clone());
    app.compare.sides = vec![
        Side {
            checkpoint: app.checkpoint.clone(),
            set: app.set.clone(),
        },
        Side {
            checkpoint: app.checkpoint.clone(),
            set: other,
        },
    ];
    app.compare.selected = 0;
}

fn cycle<T: Clone + PartialEq>(items: &[T], current: &T, forward: bool) -> Option<T> {
    if items.is_empty() {
        return None;
    }
    let i = items.iter().position(|x| x == current);
    let n = items.len();
    let j = match (i, forward) {
        (Some(i), true) => (i + 1) % n,
        (Some(i), false) => (i + n - 1) % n,
        (None, _) => 0,
    };
    Some(items[j].clone())
}

fn compare_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    if let Some(b) = app.compare.blind.as_mut() {
        let n = b.order.len().max(1);
        let (mut reveal, mut incomplete) = (false, false);
        match cmd {
            Cmd::Left => {
                b.focus = (b.focus + n - 1) % n;
                b.field = 0;
            }
            Cmd::Right => {
                b.focus = (b.focus + 1) % n;
                b.field = 0;
            }
            Cmd::NextPane | Cmd::PrevPane => b.field = 1 - b.field,
            Cmd::Enter if !b.revealed => {
                if b.complete() {
                    b.revealed = true;
                    reveal = true;
                } else {
                    incomplete = true;
                }
            }
            _ => {}
        }
        if reveal {
            fx.push(Effect::AppendRating(rating_record(app)));
        } else if incomplete {
            app.info("rate every reply for similarity and humanlikeness first (1-9, 0 = 10)");
        }
        return;
    }
    let n = app.compare.sides.len();
    if n == 0 {
        return;
    }
    match cmd {
        Cmd::Up | Cmd::PrevPane => app.compare.selected = (app.compare.selected + n - 1) % n.max(1),
        Cmd::Down | Cmd::NextPane => app.compare.selected = (app.compare.selected + 1) % n.max(1),
        Cmd::Left | Cmd::Right => {
            let names: Vec<String> = app
                .sets
                .iter()
                .filter(|s| s.error.is_none())
                .map(|s| s.name.clone())
                .collect();
            if let Some(side) = app.compare.sides.get_mut(app.compare.selected) {
                if let Some(next) = cycle(&names, &side.set, cmd == Cmd::Right) {
                    side.set = next;
                }
            }
        }
        Cmd::PrevCheckpoint | Cmd::NextCheckpoint => {
            if !app.ckpts.scanned {
                fx.push(Effect::ScanCheckpoints);
                app.info("reading checkpoints/ … press again");
                return;
            }
            let names: Vec<String> = app
                .ckpts
                .rows
                .iter()
                .filter(|r| r.error.is_none() && r.unsupported().is_none())
                .map(|r| r.name.clone())
                .collect();
            if let Some(side) = app.compare.sides.get_mut(app.compare.selected) {
                if let Some(next) = cycle(&names, &side.checkpoint, cmd == Cmd::NextCheckpoint) {
                    side.checkpoint = next;
                }
            }
        }
        Cmd::AddSide if n < 3 => {
            let last = app.compare.sides.last().cloned();
            if let Some(s) = last {
                app.compare.sides.push(s);
                app.compare.selected = app.compare.sides.len() - 1;
            }
        }
        Cmd::RemoveSide if n > 2 => {
            app.compare.sides.pop();
            app.compare.selected = app.compare.selected.min(app.compare.sides.len() - 1);
        }
        Cmd::Enter => start_compare(app, fx),
        Cmd::Blind => {
            let runs = &app.compare.runs;
            if runs.is_empty() || runs.iter().any(|r| r.status != RunStatus::Done) {
                app.info("run a comparison to the end first (Enter)");
                return;
            }
            let mut order: Vec<usize> = (0..runs.len()).collect();
            let job = app.compare.runs[0].job;
            {
                use rand::seq::SliceRandom;
                use rand::SeedableRng;
                let mut rng = rand::rngs::StdRng::seed_from_u64(app.seed ^ job);
                order.shuffle(&mut rng);
            }
            app.compare.blind = Some(Blind {
                ratings: vec![[None, None]; order.len()],
                order,
                focus: 0,
                field: 0,
                revealed: false,
            });
        }
        _ => {}
    }
}

fn start_compare(app: &mut App, fx: &mut Vec<Effect>) {
    let Some(entry) = app.selected_scenario().cloned() else {
        app.info("select a scenario in Simulate first");
        return;
    };
    cancel(app, JobKind::Compare);
    let job = new_job(app, JobKind::Compare);
    // Blind rating needs one reply per side: one sample each.
    let sampling = SamplingChoice {
        n: 1,
        ..app.sampling.clone()
    };
    app.compare.runs = app
        .compare
        .sides
        .iter()
        .map(|side| {
            let mut r = SimRun::new(job.id, &entry.scenario.id, app.mode, &sampling, app.tick);
            r.checkpoint = side.checkpoint.clone();
            r.set = side.set.clone();
            r
        })
        .collect();
    app.compare.job = Some(job.id);
    app.compare.scenario = Some(entry.scenario.id.clone());
    app.compare.blind = None;
    fx.push(Effect::Compare {
        req: SimRequest {
            job: job.id,
            scenario: entry.scenario,
            set: app.set.clone(),
            mode: app.mode,
            sampling,
            cancel: job.cancel,
        },
        sides: app.compare.sides.clone(),
    });
}

/// The line appended to `runs/ratings.jsonl` once every reply is rated.
fn rating_record(app: &App) -> serde_json::Value {
    let c = &app.compare;
    let reference = c
        .scenario
        .as_ref()
        .and_then(|id| app.scenario_by_id(id))
        .and_then(|e| e.scenario.target.response.clone());
    let Some(b) = &c.blind else {
        return serde_json::Value::Null;
    };
    let items: Vec<serde_json::Value> = b
        .order
        .iter()
        .enumerate()
        .map(|(letter, &side)| {
            let run = &c.runs[side];
            let reply = run
                .samples
                .first()
                .map(|s| text::reply_text(run, s).1)
                .unwrap_or_default();
            serde_json::json!({
                "label": ((b'A' + letter as u8) as char).to_string(),
                "checkpoint": run.checkpoint,
                "prompt_set": run.set,
                "prompt_hash": run.set_hash,
                "reply": reply,
                "similarity": b.ratings[letter][0],
                "humanlike": b.ratings[letter][1],
            })
        })
        .collect();
    let run0 = c.runs.first();
    serde_json::json!({
        "scenario": c.scenario,
        "mode": run0.map(|r| mode_name(r.mode)),
        "seed": run0.map(|r| r.sampling.seed),
        "reference": reference,
        "items": items,
    })
}

fn eval_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    if let Some(sel) = app.eval.drill {
        let n = app.eval.detail.as_ref().map_or(0, |d| d.samples.len());
        app.eval.drill = Some(match cmd {
            Cmd::Up => sel.saturating_sub(1),
            Cmd::Down => (sel + 1).min(n.saturating_sub(1)),
            Cmd::PageUp => sel.saturating_sub(10),
            Cmd::PageDown => (sel + 10).min(n.saturating_sub(1)),
            Cmd::Top => 0,
            Cmd::Bottom => n.saturating_sub(1),
            _ => sel,
        });
        return;
    }
    let n = app.eval.runs.len();
    let before = app.eval.selected;
    match cmd {
        Cmd::Up => app.eval.selected = app.eval.selected.saturating_sub(1),
        Cmd::Down => app.eval.selected = (app.eval.selected + 1).min(n.saturating_sub(1)),
        Cmd::Top => app.eval.selected = 0,
        Cmd::Bottom => app.eval.selected = n.saturating_sub(1),
        Cmd::Rescan => fx.push(Effect::ScanRuns),
        Cmd::Enter
            if app
                .eval
                .detail
                .as_ref()
                .is_some_and(|d| !d.samples.is_empty()) =>
        {
            app.eval.drill = Some(0);
        }
        Cmd::RunEval => {
            if app.job(JobKind::Eval).is_some() || app.eval.progress.is_some() {
                app.info("an evaluation is running (Esc cancels it)");
                return;
            }
            if app.eval.judges.is_none() {
                fx.push(Effect::ScanJudges);
            }
            app.eval.picker = Some(preferred_judge(app));
        }
        _ => {}
    }
    if app.eval.selected != before {
        app.eval.detail = None;
        fx.extend(load_selected_run(app));
    }
}

fn load_selected_run(app: &App) -> Option<Effect> {
    let run = app.eval.runs.get(app.eval.selected)?;
    Some(Effect::LoadRun {
        path: run.path.clone(),
        prev: app
            .eval
            .runs
            .get(app.eval.selected + 1)
            .map(|r| r.path.clone()),
    })
}

/// The judge the picker opens on: the last one used here, else the embedding judge.
fn preferred_judge(app: &App) -> usize {
    let Some(rows) = &app.eval.judges else {
        return 0;
    };
    app.eval
        .judge
        .as_ref()
        .and_then(|j| rows.iter().position(|r| r.name == *j))
        .or_else(|| rows.iter().position(|r| r.name == "embedding"))
        .unwrap_or(0)
}

/// Keys of the judge picker.
fn picker_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    let n = app.eval.judges.as_ref().map_or(0, |j| j.len());
    let sel = app.eval.picker.unwrap_or(0);
    match cmd {
        Cmd::Quit => app.quit = true,
        Cmd::Help => app.help = Some(0),
        Cmd::Back => app.eval.picker = None,
        Cmd::Up => app.eval.picker = Some(sel.saturating_sub(1)),
        Cmd::Down => app.eval.picker = Some((sel + 1).min(n.saturating_sub(1))),
        Cmd::Top => app.eval.picker = Some(0),
        Cmd::Bottom => app.eval.picker = Some(n.saturating_sub(1)),
        Cmd::Rescan => {
            app.eval.judges = None;
            fx.push(Effect::ScanJudges);
        }
        Cmd::Enter => {
            let Some(row) = app.eval.judges.as_ref().and_then(|j| j.get(sel)).cloned() else {
                return;
            };
            let config = match (&row.unavailable, row.config) {
                (None, Some(c)) => c,
                (why, _) => {
                    let why = why.clone().unwrap_or_else(|| "does not load".into());
                    app.fail(format!("judge {}: {why}", row.name));
                    return;
                }
            };
            app.eval.picker = None;
            app.eval.judge = Some(row.name.clone());
            start_eval(app, fx, config);
        }
        _ => {}
    }
}

fn start_eval(app: &mut App, fx: &mut Vec<Effect>, judge: crate::judge::JudgeConfig) {
    if app.job(JobKind::Eval).is_some() || app.eval.progress.is_some() {
        app.info("an evaluation is running (Esc cancels it)");
        return;
    }
    let job = new_job(app, JobKind::Eval);
    let spec = crate::eval::EvalSpec {
        checkpoints: vec![app.checkpoint.clone()],
        scenarios: app.paths.scenarios.clone(),
        mode: app.mode,
        prompts: Some(app.set.clone()),
        judge,
        sampling: app.sampling.clone(),
        truncate: crate::sim::Truncate::None,
        out: app.paths.runs.clone(),
    };
    app.eval.progress = Some(EvalProgress {
        job: job.id,
        started: app.tick,
        current: "starting".into(),
        ..Default::default()
    });
    fx.push(Effect::Eval {
        job: job.id,
        spec: Box::new(spec),
        cancel: job.cancel,
    });
}

fn eval_msg(app: &mut App, job: u64, msg: EvalMsg, fx: &mut Vec<Effect>) {
    let tick = app.tick;
    let Some(p) = app.eval.progress.as_mut().filter(|p| p.job == job) else {
        return;
    };
    match msg {
        EvalMsg::Started { total, resumed } => {
            p.total = total;
            p.resumed = resumed;
            p.done = resumed;
        }
        EvalMsg::Loading { checkpoint } => p.current = format!("loading {checkpoint}"),
        EvalMsg::Scenario { scenario } => p.current = scenario,
        EvalMsg::Done { .. } => {
            p.done += 1;
            p.first_done.get_or_insert(tick);
        }
        EvalMsg::Skipped { .. } => p.skipped += 1,
        EvalMsg::Finished(r) => {
            app.eval.progress = None;
            app.jobs.retain(|j| j.id != job);
            match r {
                Ok(dir) => {
                    app.info(format!("evaluation written to {}", dir.display()));
                    app.eval.selected = 0;
                    app.eval.detail = None;
                }
                Err(e) if e.starts_with("cancelled") => {
                    app.info("evaluation cancelled: r resumes it where it stopped")
                }
                Err(e) => app.fail(format!("evaluation: {e}")),
            }
            fx.push(Effect::ScanRuns);
        }
    }
}

fn save_session(app: &mut App, fx: &mut Vec<Effect>) {
    let Some(run) = &app.sim else {
        app.info("nothing to save: simulate a scenario first");
        return;
    };
    if run.running() {
        app.info("the simulation is still running: save it when it is done");
        return;
    }
    fx.push(Effect::SaveSession(Box::new(Session {
        version: 1,
        saved_unix: 0,
        scenario: run.scenario.clone(),
        checkpoint: run.checkpoint.clone(),
        prompt_set: run.set.clone(),
        prompt_hash: run.set_hash.clone(),
        mode: mode_name(run.mode).to_string(),
        sampling: run.sampling.clone(),
        dropped_turns: run.dropped_turns,
        samples: run.samples.clone(),
    })));
}

fn open_session(app: &mut App, s: Session, fx: &mut Vec<Effect>) {
    let Some(mode) = parse_mode(&s.mode) else {
        app.fail(format!("session: unknown mode '{}'", s.mode));
        return;
    };
    // Show the session's scenario in the browser.
    app.browser.filter.clear();
    app.browser.filtering = false;
    if let Some(i) = app
        .scenarios
        .iter()
        .position(|e| e.scenario.id == s.scenario)
    {
        app.browser.folded.remove(&app.scenarios[i].scenario.domain);
        if let Some(row) = app
            .browser_rows()
            .iter()
            .position(|r| *r == BrowserRow::Scenario(i))
        {
            app.browser.selected = row;
        }
    } else {
        app.info(format!(
            "scenario {} is not under {} any more",
            s.scenario,
            app.paths.scenarios.display()
        ));
    }
    cancel(app, JobKind::Simulate);
    app.mode = mode;
    app.sampling = s.sampling.clone();
    app.set = s.prompt_set.clone();
    app.set_pinned = true;
    if s.checkpoint != app.checkpoint {
        app.checkpoint = s.checkpoint.clone();
        app.model.loading = Some((s.checkpoint.clone(), app.tick));
        fx.push(Effect::LoadCheckpoint(s.checkpoint.clone()));
    }
    let id = app.next_job;
    app.next_job += 1;
    let mut run = SimRun::new(id, &s.scenario, mode, &s.sampling, app.tick);
    run.checkpoint = s.checkpoint;
    run.set = s.prompt_set;
    run.set_hash = s.prompt_hash;
    run.dropped_turns = s.dropped_turns;
    run.samples = s.samples;
    // Scores are recomputed when the judge is there.
    for smp in &mut run.samples {
        smp.scored = smp
            .scores
            .keys()
            .filter_map(|k| {
                let t = if k == "response" {
                    smp.response.clone()
                } else {
                    smp.states.get(k).cloned()
                };
                t.map(|t| (k.clone(), t))
            })
            .collect();
    }
    let names: Vec<String> = run
        .samples
        .first()
        .map(|smp| smp.calls.keys().cloned().collect())
        .unwrap_or_default();
    run.calls = names
        .into_iter()
        .map(|name| crate::sim::Call {
            name,
            ..Default::default()
        })
        .collect();
    run.expected_calls = run.calls.len();
    run.status = RunStatus::Done;
    run.finished = Some(app.tick);
    app.sim = Some(run);
    app.sample = 0;
    app.screen = Screen::Simulate;
    app.info(format!(
        "opened the session of {}",
        app.sim.as_ref().map_or("", |r| r.scenario.as_str())
    ));
}

fn on_mouse(app: &mut App, m: MouseEvent) {
    let delta: isize = match m.kind {
        MouseEventKind::ScrollUp => -3,
        MouseEventKind::ScrollDown => 3,
        MouseEventKind::Down(MouseButton::Left) => {
            if app.screen == Screen::Simulate && app.help.is_none() {
                if let Some(p) = ui::simulate::pane_at(app, m.column, m.row) {
                    app.focus = p;
                }
            }
            return;
        }
        _ => return,
    };
    if app.help.is_some() {
        let pos = app.help.unwrap_or(0);
        app.help = Some(shift(app, "help", pos, delta));
        return;
    }
    match app.screen {
        Screen::Simulate => {
            if let Some(p) = ui::simulate::pane_at(app, m.column, m.row) {
                let cmd = if delta < 0 { Cmd::Up } else { Cmd::Down };
                for _ in 0..3 {
                    scroll_pane(app, p, cmd, 1);
                }
            }
        }
        Screen::PromptView => {
            let pos = app.prompt_view.scroll;
            app.prompt_view.scroll = shift(app, "prompt", pos, delta);
        }
        Screen::Prompts => {
            if app.prompts.diff.is_some() {
                let pos = app.prompts.diff_scroll;
                app.prompts.diff_scroll = shift(app, "diff", pos, delta);
            } else {
                let pos = app.prompts.scroll;
                app.prompts.scroll = shift(app, "preview", pos, delta);
            }
        }
        Screen::Checkpoints => {
            let n = app.ckpts.rows.len();
            app.ckpts.selected = (app.ckpts.selected as isize + delta.signum())
                .clamp(0, n.saturating_sub(1) as isize) as usize;
        }
        Screen::Eval => {
            if let Some(sel) = app.eval.drill {
                let n = app.eval.detail.as_ref().map_or(0, |d| d.samples.len());
                app.eval.drill = Some(
                    (sel as isize + delta.signum()).clamp(0, n.saturating_sub(1) as isize) as usize,
                );
            }
        }
        Screen::Compare | Screen::Train => {}
    }
}

/// The base checkpoints a pass can start from: local models, not adapters or endpoints.
pub fn train_bases(app: &App) -> Vec<String> {
    app.ckpts
        .rows
        .iter()
        .filter(|r| {
            r.depth == 0 && r.error.is_none() && r.endpoint.is_none() && r.unsupported().is_none()
        })
        .filter(|r| r.info.as_ref().is_none_or(|i| i.adapter_base.is_none()))
        .map(|r| r.name.clone())
        .collect()
}

/// The base the form names, else the checkpoint in use when it is a local base, else the
/// default checkpoint.
pub fn train_base(app: &App) -> String {
    let f = &app.train.form;
    if !f.base.is_empty() {
        return f.base.clone();
    }
    let in_use_is_base = !app.checkpoint.starts_with("endpoint:")
        && !app
            .ckpts
            .rows
            .iter()
            .any(|r| r.name == app.checkpoint && r.depth > 0);
    if in_use_is_base {
        app.checkpoint.clone()
    } else {
        crate::model::checkpoint::DEFAULT_CHECKPOINT.to_string()
    }
}

/// The output folder name the form gives, or its default.
pub fn train_output(app: &App) -> String {
    let f = &app.train.form;
    if f.output.trim().is_empty() {
        format!(
            "{}-{}-lora",
            train_base(app),
            f.method.name().to_lowercase()
        )
    } else {
        f.output.trim().to_string()
    }
}

/// What a start of the form would run: the configuration, the adapter's folder name and
/// path, and the reward judge's name; or what is wrong, naming the field.
pub fn train_plan(
    app: &App,
) -> Result<
    (
        crate::train::TrainConfig,
        String,
        std::path::PathBuf,
        Option<String>,
    ),
    String,
> {
    use crate::train::{reward::RewardSpec, Data, TrainConfig};
    let f = &app.train.form;
    let base = train_base(app);
    if base.starts_with("endpoint:") {
        return Err("base checkpoint: training needs local weights, not an endpoint".into());
    }
    if app.ckpts.rows.iter().any(|r| r.name == base && r.depth > 0) {
        return Err(format!(
            "base checkpoint: {base} is an adapter; train from its base (or merge it first)"
        ));
    }
    let scenarios = f.scenarios.trim();
    if scenarios.is_empty() {
        return Err("scenarios: a scenario file or folder (e.g. scenarios)".into());
    }
    let name = train_output(app);
    let plain = name
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if !plain {
        return Err(format!(
            "output name '{name}': a folder name under {} (letters, digits, - _ .)",
            app.paths.checkpoints.display()
        ));
    }
    if let Some(r) = app.ckpts.rows.iter().find(|r| r.name == name) {
        let adapter = r.depth > 0 || r.info.as_ref().is_some_and(|i| i.adapter_base.is_some());
        if !adapter {
            return Err(format!(
                "output name '{name}': that is a checkpoint, not an adapter this pass may write"
            ));
        }
        if !f.resume {
            return Err(format!(
                "output name '{name}': it exists; choose another name, or set 'if it exists' to resume"
            ));
        }
    }
    let number = |what: &str, v: &str, min: usize| -> Result<usize, String> {
        match v.trim().parse::<usize>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(format!("{what} '{}': a whole number ≥ {min}", v.trim())),
        }
    };
    let steps = number("steps", &f.steps, 1)?;
    let rank = number("LoRA rank", &f.rank, 1)?;
    let data = Data::Scenarios {
        path: std::path::PathBuf::from(scenarios),
    };
    let mut judge = None;
    let mut cfg = match f.method {
        TrainMethod::Sft => TrainConfig::sft(&base, data),
        TrainMethod::Grpo => {
            let mut cfg = TrainConfig::grpo(&base, data);
            let n = number("rollouts per prompt", &f.n, 2)?;
            let rows = app.eval.judges.as_ref();
            let row = rows.and_then(|rows| rows.iter().find(|r| r.name == f.reward));
            let config = match (row, f.reward.as_str()) {
                (Some(r), _) => {
                    if let Some(why) = &r.unavailable {
                        return Err(format!("reward judge {}: {why}", r.name));
                    }
                    Some(r.path.clone())
                }
                // The default embedding judge needs no file.
                (None, "embedding") => None,
                (None, other) => {
                    return Err(format!(
                        "reward judge '{other}': not in prompts/judges/ (←/→ chooses one)"
                    ))
                }
            };
            if let crate::train::Method::Grpo(g) = &mut cfg.method {
                g.n = n;
                g.reward = RewardSpec::Judge { config };
                // The workbench's cap on new tokens holds for rollouts too.
                if let Some(m) = app.sampling.max_tokens {
                    g.max_new_tokens = m;
                }
            }
            judge = Some(f.reward.clone());
            cfg
        }
    };
    cfg.steps = steps;
    cfg.set_rank(rank, None);
    if !f.lr.trim().is_empty() {
        match f.lr.trim().parse::<f64>() {
            Ok(lr) if lr.is_finite() && lr > 0.0 => cfg.lr = lr,
            _ => {
                return Err(format!(
                    "learning rate '{}': a positive number such as 1e-4",
                    f.lr.trim()
                ))
            }
        }
    }
    let out = app.paths.checkpoints.join(&name);
    Ok((cfg, name, out, judge))
}

fn train_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    let has_run = app.train.run.is_some();
    match cmd {
        Cmd::StartTrain => return start_train(app, fx),
        Cmd::LoadAdapter => return load_adapter(app, fx),
        Cmd::TrainForm => {
            if has_run {
                app.train.show_run = !app.train.show_run;
            }
            return;
        }
        _ => {}
    }
    if has_run && app.train.show_run {
        let running = app.train.run.as_ref().is_some_and(|r| r.running());
        if cmd == Cmd::Enter && !running {
            app.train.show_run = false;
        }
        return;
    }
    let fields = app.train.form.fields();
    let n = fields.len();
    let form = &mut app.train.form;
    form.focus = form.focus.min(n - 1);
    let field = fields[form.focus];
    match cmd {
        Cmd::Up | Cmd::PrevPane => form.focus = form.focus.saturating_sub(1),
        Cmd::Down | Cmd::NextPane => form.focus = (form.focus + 1).min(n - 1),
        Cmd::Top => form.focus = 0,
        Cmd::Bottom => form.focus = n - 1,
        Cmd::Enter if field.is_text() => form.editing = true,
        Cmd::Enter | Cmd::Right => cycle_train_choice(app, field, true, fx),
        Cmd::Left => cycle_train_choice(app, field, false, fx),
        _ => {}
    }
}

fn cycle_train_choice(app: &mut App, field: TrainField, forward: bool, fx: &mut Vec<Effect>) {
    // A refusal is about the values it saw; a change makes it stale.
    app.train.form.error = None;
    match field {
        TrainField::Method => {
            let f = &mut app.train.form;
            f.method = match f.method {
                TrainMethod::Sft => TrainMethod::Grpo,
                TrainMethod::Grpo => TrainMethod::Sft,
            };
            if f.method == TrainMethod::Grpo && app.eval.judges.is_none() {
                fx.push(Effect::ScanJudges);
            }
        }
        TrainField::Base => {
            if !app.ckpts.scanned {
                fx.push(Effect::ScanCheckpoints);
                app.info("reading checkpoints/ … press again");
                return;
            }
            let current = train_base(app);
            if let Some(next) = cycle(&train_bases(app), &current, forward) {
                app.train.form.base = next;
            }
        }
        TrainField::Resume => app.train.form.resume = !app.train.form.resume,
        TrainField::Reward => {
            let Some(rows) = &app.eval.judges else {
                fx.push(Effect::ScanJudges);
                app.info("reading prompts/judges/ … press again");
                return;
            };
            let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
            let current = app.train.form.reward.clone();
            if let Some(next) = cycle(&names, &current, forward) {
                app.train.form.reward = next;
            }
        }
        _ => {}
    }
}

/// Keys while a text field of the Train form is edited.
fn train_edit_key(app: &mut App, key: KeyEvent) {
    if keys::lookup(&[], &key) == Some(Cmd::Quit) {
        app.quit = true;
        return;
    }
    let fields = app.train.form.fields();
    let form = &mut app.train.form;
    let field = fields[form.focus.min(fields.len() - 1)];
    match key.code {
        KeyCode::Enter | KeyCode::Esc | KeyCode::Tab => form.editing = false,
        KeyCode::Backspace => {
            form.error = None;
            if let Some(t) = form.text_mut(field) {
                t.pop();
            }
        }
        KeyCode::Char(c) => {
            form.error = None;
            if let Some(t) = form.text_mut(field) {
                t.push(c);
            }
        }
        _ => {}
    }
}

fn start_train(app: &mut App, fx: &mut Vec<Effect>) {
    if app.train.run.as_ref().is_some_and(|r| r.running()) {
        app.info("a training pass is running (Esc stops it)");
        return;
    }
    let (cfg, name, out, judge) = match train_plan(app) {
        Ok(p) => p,
        Err(e) => {
            app.train.form.error = Some(e.clone());
            app.train.show_run = false;
            app.info(format!("not started: {e}"));
            return;
        }
    };
    app.train.form.error = None;
    app.train.form.editing = false;
    app.train.quit_warned = false;
    let job = new_job(app, JobKind::Train);
    app.train.run = Some(TrainRun {
        job: job.id,
        method: app.train.form.method,
        base: cfg.base.clone(),
        name,
        out: out.clone(),
        rank: cfg.rank,
        steps: cfg.steps,
        judge,
        // A resumed run shows its whole history, not just the steps from here on.
        events: if app.train.form.resume {
            crate::train::read_events(&out)
        } else {
            vec![]
        },
        examples: None,
        log: vec![],
        saved: None,
        status: TrainStatus::Running,
        stopping: false,
        started: app.tick,
    });
    app.train.show_run = true;
    fx.push(Effect::Train {
        job: job.id,
        cfg: Box::new(cfg),
        out,
        resume: app.train.form.resume,
        cancel: job.cancel,
    });
}

fn train_msg(app: &mut App, job: u64, msg: TrainMsg, fx: &mut Vec<Effect>) {
    let Some(run) = app.train.run.as_mut().filter(|r| r.job == job) else {
        return;
    };
    match msg {
        TrainMsg::Data { examples, skipped } => {
            run.examples = Some((examples, skipped));
            run.log.push(if skipped > 0 {
                format!("{examples} examples ({skipped} skipped: too long or unusable)")
            } else {
                format!("{examples} examples")
            });
        }
        TrainMsg::Note(n) => run.log.push(n),
        TrainMsg::Step(e) => crate::train::push_event(&mut run.events, *e),
        TrainMsg::Saved(p) => {
            run.log.push(format!("saved {}", p.display()));
            run.saved = Some(p);
        }
        TrainMsg::Finished(r) => {
            app.jobs.retain(|j| j.id != job);
            match r {
                Ok(out) => {
                    run.status = TrainStatus::Done;
                    run.log
                        .push(format!("done: the adapter is in {}", out.display()));
                    let name = run.name.clone();
                    app.info(format!("training done: L uses {name} as the checkpoint"));
                }
                Err(e) if run.stopping => {
                    run.status = TrainStatus::Cancelled(e);
                    app.info("training stopped; its checkpoint is saved (L uses it)");
                }
                Err(e) => {
                    run.status = TrainStatus::Failed(e.clone());
                    app.fail(format!("training: {e}"));
                }
            }
            // The new adapter (or checkpoint) is listed with the others.
            fx.push(Effect::ScanCheckpoints);
        }
    }
}

/// `L`: the adapter the pass wrote (after the end or a stop) becomes the
/// checkpoint in use; Simulate switches to it once it has loaded.
fn load_adapter(app: &mut App, fx: &mut Vec<Effect>) {
    let Some(run) = &app.train.run else {
        app.info("no training pass yet: r starts one");
        return;
    };
    // A stop saves checkpoint-N and refreshes the adapter at the top of the output folder, so
    // after a stop as after the end, the folder itself is the newest adapter.
    let path = match &run.status {
        TrainStatus::Done | TrainStatus::Cancelled(_) => run.out.clone(),
        TrainStatus::Running => {
            app.info("the pass is still running (Esc stops it and saves a checkpoint)");
            return;
        }
        TrainStatus::Failed(_) => {
            app.info("this pass failed: its last saved checkpoint, if any, is in the Checkpoints list (m)");
            return;
        }
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    app.checkpoint = name.clone();
    app.model.loading = Some((name.clone(), app.tick));
    app.info(format!("loading {name}: Simulate uses it once it is ready"));
    fx.push(Effect::LoadCheckpoint(path.display().to_string()));
    fx.push(Effect::ScanCheckpoints);
    app.screen = Screen::Simulate;
}
