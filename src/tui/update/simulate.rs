//! Simulate (home): the scenario browser and its filter, starting a run, the streamed states
//! and reply with their scores, and saving a finished run as a session or reopening one.

use super::{cancel, command, extent, new_job, scroll_delta, shift};
use crate::prompts::RESPONSE;
use crate::tui::action::{Effect, SimRequest};
use crate::tui::app::*;
use crate::tui::keys::{Cmd, Ctx};
use crate::tui::text;
use ratatui::crossterm::event::{KeyCode, KeyEvent};

/// Keys while typing a filter: text goes in, arrows still move, Enter simulates.
pub(super) fn filter_key(app: &mut App, key: KeyEvent, fx: &mut Vec<Effect>) {
    match app.keys.lookup(&[Ctx::Filter], &key) {
        Some(Cmd::Quit) => app.quit = true,
        Some(Cmd::Back) => {
            app.browser.filter.clear();
            app.browser.filtering = false;
            select_first_scenario(app);
        }
        Some(Cmd::Enter) => {
            app.browser.filtering = false;
            if app.selected_scenario().is_some() {
                start_sim(app, fx);
            }
        }
        Some(Cmd::NextPane) => {
            app.browser.filtering = false;
            command(app, Cmd::NextPane, fx);
        }
        Some(Cmd::Up) => move_browser(app, -1),
        Some(Cmd::Down) => move_browser(app, 1),
        Some(_) => {}
        // Not a binding: the key edits the filter text.
        None => match key.code {
            KeyCode::Backspace => {
                app.browser.filter.pop();
                select_first_scenario(app);
            }
            KeyCode::Char(c) => {
                app.browser.filter.push(c);
                select_first_scenario(app);
            }
            _ => {}
        },
    }
}

/// The cursor on the first scenario the browser lists (after a filter change).
pub(super) fn select_first_scenario(app: &mut App) {
    let rows = app.browser_rows();
    app.browser.selected = rows
        .iter()
        .position(|r| matches!(r, BrowserRow::Scenario(_)))
        .unwrap_or(0);
    app.thread_scroll = 0;
}

/// Move the browser's cursor by `delta` rows.
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

/// A command on Simulate: run, fold, filter, toggles, panes, scrolling, samples.
pub(super) fn simulate_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
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
pub(super) fn scroll_pane(app: &mut App, pane: Pane, cmd: Cmd, page: usize) {
    let delta = scroll_delta(cmd, page);
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
pub(super) fn apply(run: &mut SimRun, msg: SimMsg, tick: u64) -> Option<String> {
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
        SimMsg::Prefill { cached } => run.stats.cached_tokens = Some(cached),
        SimMsg::CallDone { call } => {
            for s in &mut run.samples {
                if let Some(c) = s.calls.get_mut(&call) {
                    c.done = true;
                }
            }
            // Calls decode together: another may still be running.
            if run.current.as_deref() == Some(call.as_str()) {
                run.current = None;
            }
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

/// A message from the simulation worker; finished outputs are sent to be scored.
pub(super) fn sim_msg(app: &mut App, job: u64, msg: SimMsg, fx: &mut Vec<Effect>) {
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
pub(super) fn rescore(app: &mut App) -> Vec<Effect> {
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
    keys.push(RESPONSE.to_string());
    for key in keys {
        let mut texts = vec![];
        for s in &run.samples {
            if !text::call_of(s, &key).is_some_and(|c| c.done) {
                break;
            }
            texts.push(if key == RESPONSE {
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

/// Save the finished run and the Converse screen's conversations as a session
/// (`runs/sessions/`); with no run, the conversations alone.
pub(super) fn save_session(app: &mut App, fx: &mut Vec<Effect>) {
    let conversations = app.converse.branches.clone();
    let run = app.sim.as_ref().filter(|r| !r.running());
    let session = match (run, conversations.first()) {
        (Some(run), _) => Session {
            version: SESSION_VERSION,
            saved_unix: 0,
            scenario: run.scenario.clone(),
            checkpoint: run.checkpoint.clone(),
            prompt_set: run.set.clone(),
            prompt_hash: run.set_hash.clone(),
            mode: run.mode.name().to_string(),
            sampling: run.sampling.clone(),
            dropped_turns: run.dropped_turns,
            samples: run.samples.clone(),
            conversations,
        },
        (None, Some(first)) => Session {
            version: SESSION_VERSION,
            saved_unix: 0,
            scenario: first.scenario.clone(),
            checkpoint: app.checkpoint.clone(),
            prompt_set: app.set.clone(),
            prompt_hash: app
                .set_info(&app.set)
                .and_then(|s| s.hash.clone())
                .unwrap_or_default(),
            mode: app.mode.name().to_string(),
            sampling: app.sampling.clone(),
            dropped_turns: 0,
            samples: vec![],
            conversations,
        },
        (None, None) if app.sim.is_some() => {
            app.info("the simulation is still running: save it when it is done");
            return;
        }
        (None, None) => {
            app.info("nothing to save: simulate a scenario or start a conversation first");
            return;
        }
    };
    fx.push(Effect::SaveSession(Box::new(session)));
}

/// Show a saved session as the current run, with its scenario, settings and checkpoint.
pub(super) fn open_session(app: &mut App, mut s: Session, fx: &mut Vec<Effect>) {
    let Ok(mode) = s.mode.parse::<crate::sim::Mode>() else {
        app.fail(format!("session: unknown mode '{}'", s.mode));
        return;
    };
    let conversations = std::mem::take(&mut s.conversations);
    if !conversations.is_empty() {
        if app.converse.running() {
            app.info("a conversation is running: Esc on Converse stops it, then open the session");
            return;
        }
        let n = conversations.len();
        app.converse.branches = conversations;
        app.converse.branch = 0;
        app.converse.cursor = None;
        app.converse.prompt = None;
        app.converse.edit = None;
        if s.samples.is_empty() {
            // A session of conversations only: the simulation shown stays.
            app.screen = Screen::Converse;
            app.info(format!("opened the session's {n} conversations"));
            return;
        }
    }
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
        fx.push(Effect::LoadCheckpoint(
            s.checkpoint.clone(),
            app.ckpts.quantize,
        ));
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
                let t = if k == RESPONSE {
                    smp.response()
                } else {
                    smp.state(k)
                };
                t.map(|t| (k.clone(), t.to_string()))
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
