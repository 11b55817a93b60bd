//! `update`: the one place the state changes. It does no I/O: work it wants done comes back as
//! effects, which the runtime starts on worker threads.
//!
//! This file routes: actions to their screen, keys through the binding table (modal popups and
//! forms first), the commands every screen shares, and worker messages to the state they
//! update. Each screen's own keys and state changes are in the file named after it, beside its
//! drawing code in `ui/`.

mod checkpoints;
mod compare;
pub mod converse;
mod eval;
mod help;
mod prompt_view;
mod prompts;
mod simulate;
mod train;

pub use checkpoints::endpoint_from_form;
pub use train::{train_base, train_bases, train_output, train_plan};

use super::action::{Action, Effect};
use super::app::*;
use super::keys::{Cmd, Ctx};
use super::text;
use super::ui;
use crate::sim::Mode;
use checkpoints::{checkpoints_cmd, endpoint_form_key};
use compare::{compare_cmd, init_compare};
use converse::{
    converse_cmd, converse_failed, converse_msg, fork_simulation, open_turn_prompt, turn_edit_key,
    turn_edited, turn_prompt_cmd, turn_prompt_result,
};
use eval::{eval_cmd, eval_msg, load_selected_run, picker_cmd, preferred_judge};
use prompt_view::{open_prompt_view, prompt_view_cmd};
use prompts::prompts_cmd;
use ratatui::crossterm::event::{KeyEvent, KeyEventKind, MouseButton, MouseEvent, MouseEventKind};
use simulate::{
    apply, filter_key, open_session, rescore, save_session, scroll_pane, select_first_scenario,
    sim_msg, simulate_cmd,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use train::{train_cmd, train_edit_key, train_msg};

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
        Action::Conv { job, msg } => converse_msg(app, job, msg),
        Action::TurnPrompt { job, result } => turn_prompt_result(app, job, result),
        Action::TurnEdited {
            branch,
            turn,
            result,
        } => turn_edited(app, branch, turn, result),
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
                converse_failed(app, job, &error);
            }
            app.fail(error);
        }
    }
    fx
}

/// A key: popups and forms that are open take it first, else the screen's bindings, then the
/// global ones.
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
        if app.keys.lookup(&[], &key) == Some(Cmd::Quit) {
            app.quit = true;
        }
        return;
    }
    if let Some(scroll) = app.help {
        help::help_key(app, scroll, key);
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
        if let Some(cmd) = app.keys.lookup(&[Ctx::JudgePicker, Ctx::Global], &key) {
            picker_cmd(app, cmd, fx);
        }
        return;
    }
    if app.screen == Screen::Train && app.train.form.editing {
        train_edit_key(app, key);
        return;
    }
    if app.screen == Screen::Converse && app.converse.edit.is_some() {
        turn_edit_key(app, key);
        return;
    }
    if app.screen == Screen::Converse && app.converse.prompt.is_some() {
        match app.keys.lookup(&[Ctx::PromptView, Ctx::Global], &key) {
            Some(Cmd::Quit) => app.quit = true,
            Some(cmd) => turn_prompt_cmd(app, cmd),
            None => {}
        }
        return;
    }
    let ctxs: &[Ctx] = match app.screen {
        Screen::Simulate => &[Ctx::Simulate, Ctx::Global],
        Screen::PromptView => &[Ctx::PromptView, Ctx::Global],
        Screen::Checkpoints => &[Ctx::Checkpoints, Ctx::Global],
        Screen::Prompts => &[Ctx::Prompts, Ctx::Global],
        Screen::Compare if app.compare.blind.is_some() => &[Ctx::Blind, Ctx::Global],
        Screen::Compare => &[Ctx::Compare, Ctx::Global],
        Screen::Converse => &[Ctx::Converse, Ctx::Global],
        Screen::Eval => &[Ctx::Eval, Ctx::Global],
        Screen::Train => &[Ctx::Train, Ctx::Global],
    };
    let Some(cmd) = app.keys.lookup(ctxs, &key) else {
        return;
    };
    command(app, cmd, fx);
}

/// A command: the ones every screen shares here, the rest by the screen's own file.
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
        Cmd::GoPromptView if app.screen == Screen::Converse => {
            open_turn_prompt(app, fx);
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
        Cmd::GoConverse => {
            toggle_screen(app, Screen::Converse);
            // The assistant's choices: checkpoints and endpoints.
            if app.screen == Screen::Converse && !app.ckpts.scanned {
                fx.push(Effect::ScanCheckpoints);
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
                app.mode.name()
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
        Screen::Simulate if cmd == Cmd::Fork => fork_simulation(app, fx),
        Screen::Simulate => simulate_cmd(app, cmd, fx),
        Screen::PromptView => prompt_view_cmd(app, cmd),
        Screen::Checkpoints => checkpoints_cmd(app, cmd, fx),
        Screen::Prompts => prompts_cmd(app, cmd, fx),
        Screen::Compare => compare_cmd(app, cmd, fx),
        Screen::Converse => converse_cmd(app, cmd, fx),
        Screen::Eval => eval_cmd(app, cmd, fx),
        Screen::Train => train_cmd(app, cmd, fx),
    }
}

/// Open `screen`, or back to Simulate when it is the one open.
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
        Screen::Converse => Some(JobKind::Converse),
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
        JobKind::Plan | JobKind::ConversePrompt => {}
        JobKind::Converse => {
            // The worker ends the conversation as `cancelled` (the turn it was writing is
            // dropped) and reports; the branch's job stays until then, so nothing else starts.
            app.info("stopping the conversation");
        }
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

/// A new job of `kind`, listed as running, with its own cancel flag.
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

/// `pos` moved by `delta` lines, bounded to the area.
fn shift(app: &App, name: &str, pos: usize, delta: isize) -> usize {
    let moved = if delta < 0 {
        pos.saturating_sub(delta.unsigned_abs())
    } else {
        pos.saturating_add(delta as usize)
    };
    bounded(app, name, moved)
}

/// How many lines a scrolling command moves (`page` for a page; the ends as far as it goes).
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

/// The item after (or before) `current` in `items`, wrapping; the first when `current` is not
/// there.
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

/// The wheel scrolls the pane under it (or the help); a click focuses a Simulate pane.
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
        Screen::Converse => {
            let cmd = if delta < 0 { Cmd::Up } else { Cmd::Down };
            if let Some(p) = app.converse.prompt.as_ref() {
                let pos = p.scroll;
                let moved = shift(app, "turn_prompt", pos, delta);
                if let Some(p) = app.converse.prompt.as_mut() {
                    p.scroll = moved;
                }
            } else {
                converse_cmd(app, cmd, &mut vec![]);
            }
        }
        Screen::Compare | Screen::Train => {}
    }
}
