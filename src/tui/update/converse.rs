//! Converse (`C`): a simulated user (the checkpoint in use) talking with an assistant, the
//! conversation tree of branches, forking and editing any turn, and the prompt each side saw.

use super::{cycle, new_job, scroll_delta};
use crate::converse::{End, EndReason, Turn};
use crate::scenario::{Scenario, Speaker, MAX_TURNS_LIMIT};
use crate::tui::action::{ConverseRequest, Effect};
use crate::tui::app::*;
use crate::tui::keys::{Cmd, Ctx};
use crate::tui::text;
use ratatui::crossterm::event::{KeyCode, KeyEvent};

/// A command on Converse.
pub(super) fn converse_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    let c = &mut app.converse;
    match (cmd, c.focus) {
        (Cmd::NextPane | Cmd::PrevPane, _) => {
            c.focus = match c.focus {
                ConvFocus::Transcript => ConvFocus::Branches,
                ConvFocus::Branches => ConvFocus::Transcript,
            };
            if c.focus == ConvFocus::Branches {
                c.branch_row = c.tree().iter().position(|&b| b == c.branch).unwrap_or(0);
            }
        }
        (
            Cmd::Up | Cmd::Down | Cmd::PageUp | Cmd::PageDown | Cmd::Top | Cmd::Bottom,
            ConvFocus::Branches,
        ) => {
            let n = c.branches.len();
            let delta = scroll_delta(cmd, 5).clamp(-(n as isize), n as isize);
            c.branch_row =
                (c.branch_row as isize + delta).clamp(0, n.saturating_sub(1) as isize) as usize;
        }
        (Cmd::Enter, ConvFocus::Branches) => {
            if let Some(&b) = c.tree().get(c.branch_row) {
                show_branch(app, b);
            }
        }
        (Cmd::Up | Cmd::Down | Cmd::Top | Cmd::Bottom, ConvFocus::Transcript) => {
            move_cursor(app, cmd)
        }
        (Cmd::PageUp | Cmd::PageDown, ConvFocus::Transcript) => {
            // Within the turn under the cursor (a long one does not fit).
            let page = super::extent(app, "transcript").1.max(2) - 1;
            let c = &mut app.converse;
            c.scroll = if cmd == Cmd::PageUp {
                c.scroll.saturating_sub(page)
            } else {
                c.scroll.saturating_add(page)
            };
        }
        (Cmd::Enter, ConvFocus::Transcript) => go_on(app, fx),
        (Cmd::NewConversation, _) => new_conversation(app, fx),
        (Cmd::Fork, _) => fork(app, fx),
        (Cmd::EditTurn, _) => {
            if let Some((_, turn)) = cursor_turn(app) {
                let text = turn.text.clone();
                app.converse.edit = Some(TurnEdit {
                    turn: app.converse.cursor_turn().unwrap_or(0),
                    text,
                });
            }
        }
        (Cmd::Edit, _) => {
            if let Some((b, turn)) = cursor_turn(app) {
                fx.push(Effect::EditTurn {
                    branch: b,
                    turn: app.converse.cursor_turn().unwrap_or(0),
                    text: turn.text.clone(),
                });
            }
        }
        (Cmd::PrevCheckpoint | Cmd::NextCheckpoint, _) => {
            // The assistant: the checkpoint in use ("") or any checkpoint or endpoint listed.
            let mut names = vec![String::new()];
            names.extend(
                app.ckpts
                    .rows
                    .iter()
                    .map(|r| r.name.clone())
                    .filter(|n| *n != app.checkpoint),
            );
            if let Some(next) = cycle(&names, &app.converse.assistant, cmd == Cmd::NextCheckpoint) {
                app.converse.assistant = next;
                let who = assistant_name(app);
                app.info(format!(
                    "assistant {who} (applies to the next turn it writes)"
                ));
            }
        }
        (Cmd::MoreTurns | Cmd::FewerTurns, _) => {
            let now = max_turns(app);
            let n = if cmd == Cmd::MoreTurns {
                now + 1
            } else {
                now.saturating_sub(1)
            };
            app.converse.max_turns = Some(n.clamp(1, MAX_TURNS_LIMIT));
            app.info(format!("max {} new turns per conversation", max_turns(app)));
        }
        _ => {}
    }
}

/// Keys while editing a turn inline: text goes in, Enter keeps it as a new branch, Esc drops it.
pub(super) fn turn_edit_key(app: &mut App, key: KeyEvent) {
    match app.keys.lookup(&[Ctx::TurnEdit], &key) {
        Some(Cmd::Quit) => app.quit = true,
        Some(Cmd::Back) => app.converse.edit = None,
        Some(Cmd::Enter) => {
            if let Some(e) = app.converse.edit.take() {
                let b = app.converse.branch;
                commit_edit(app, b, e.turn, e.text);
            }
        }
        Some(_) => {}
        None => {
            let Some(e) = app.converse.edit.as_mut() else {
                return;
            };
            match key.code {
                KeyCode::Backspace => {
                    e.text.pop();
                }
                KeyCode::Char(ch) => e.text.push(ch),
                _ => {}
            }
        }
    }
}

/// The text `$EDITOR` gave back for a turn.
pub(super) fn turn_edited(
    app: &mut App,
    branch: usize,
    turn: usize,
    result: Result<String, String>,
) {
    match result {
        Ok(t) => {
            // Editors end a file with a newline the turn never had.
            let t = t.trim_end_matches(['\n', '\r']).to_string();
            commit_edit(app, branch, turn, t)
        }
        Err(e) => app.fail(format!("editor: {e}")),
    }
}

/// The branch with the turn under the cursor, and that turn.
fn cursor_turn(app: &App) -> Option<(usize, &Turn)> {
    let c = &app.converse;
    let i = c.cursor_turn()?;
    Some((c.branch, &c.current()?.turns[i]))
}

fn show_branch(app: &mut App, b: usize) {
    let c = &mut app.converse;
    c.branch = b.min(c.branches.len().saturating_sub(1));
    c.cursor = None;
    c.scroll = 0;
    c.focus = ConvFocus::Transcript;
}

fn move_cursor(app: &mut App, cmd: Cmd) {
    let c = &mut app.converse;
    let Some(now) = c.cursor_turn() else {
        return;
    };
    let last = c.current().map_or(0, |b| b.turns.len().saturating_sub(1));
    let to = match cmd {
        Cmd::Up => now.saturating_sub(1),
        Cmd::Down => now + 1,
        Cmd::Top => 0,
        _ => last,
    };
    // On the last turn the cursor follows the conversation as it grows.
    c.cursor = (to < last).then_some(to);
    c.scroll = 0;
}

/// The assistant's name as the screen shows it.
pub fn assistant_name(app: &App) -> String {
    if app.converse.assistant.is_empty() {
        format!("{} (the checkpoint in use)", app.checkpoint)
    } else {
        app.converse.assistant.clone()
    }
}

/// New turns before `max-turns` for the branch shown.
pub fn max_turns(app: &App) -> usize {
    app.converse.max_turns.unwrap_or_else(|| {
        app.converse
            .current()
            .and_then(|b| app.scenario_by_id(&b.scenario))
            .or_else(|| app.selected_scenario())
            .and_then(|e| e.scenario.conversation.as_ref().map(|c| c.max_turns))
            .unwrap_or_else(|| crate::scenario::Conversation::default().max_turns)
    })
}

/// A seed no branch has yet, so a fork's turns differ from the ones it replaces.
fn fresh_seed(app: &App) -> u64 {
    let mut seed = app
        .sampling
        .seed
        .wrapping_add(app.converse.branches.len() as u64);
    while app.converse.branches.iter().any(|b| b.seed == seed) {
        seed = seed.wrapping_add(1);
    }
    seed
}

/// Whether a new conversation may start (one runs at a time; the user's checkpoint is there).
fn can_start(app: &mut App) -> bool {
    if app.converse.running() {
        app.info("a conversation is running: Esc stops it first");
        return false;
    }
    if app.model.loaded.is_none() && app.model.loading.is_none() {
        app.fail("no checkpoint is loaded: press m to choose one");
        return false;
    }
    true
}

/// A new branch at the end of the tree, shown, and the conversation going on in it.
fn add_branch(app: &mut App, branch: Branch, fx: &mut Vec<Effect>) {
    app.converse.branches.push(branch);
    let b = app.converse.branches.len() - 1;
    show_branch(app, b);
    go_on(app, fx);
}

/// A new conversation from the scenario selected in Simulate.
fn new_conversation(app: &mut App, fx: &mut Vec<Effect>) {
    let Some(entry) = app.selected_scenario().cloned() else {
        app.info("select a scenario in Simulate first");
        return;
    };
    if !can_start(app) {
        return;
    }
    let branch = Branch {
        scenario: entry.scenario.id.clone(),
        origin: "from the scenario".into(),
        seed: fresh_seed(app),
        turns: crate::converse::thread_turns(&entry.scenario),
        ..Default::default()
    };
    add_branch(app, branch, fx);
}

/// Fork at the turn under the cursor: the turns before it are kept, the same side writes it
/// again (with the branch's own seed), and the conversation goes on from there. On a thread
/// turn this makes it the point where HUMAN replies.
fn fork(app: &mut App, fx: &mut Vec<Effect>) {
    let Some((b, turn)) = cursor_turn(app) else {
        app.info("nothing to fork: start a conversation first (Enter)");
        return;
    };
    let speaker = turn.speaker;
    let i = app.converse.cursor_turn().unwrap_or(0);
    if !can_start(app) {
        return;
    }
    let parent = &app.converse.branches[b];
    let branch = Branch {
        scenario: parent.scenario.clone(),
        parent: Some((b, i)),
        origin: format!("fork at turn {}", i + 1),
        seed: fresh_seed(app),
        turns: parent.turns[..i].to_vec(),
        next: Some(speaker),
        ..Default::default()
    };
    add_branch(app, branch, fx);
}

/// An edited turn: a new branch with the turns before it and the edit, shown and ready to go
/// on (Enter); the branch it came from stays as it was.
fn commit_edit(app: &mut App, b: usize, i: usize, text: String) {
    let Some(parent) = app.converse.branches.get(b) else {
        return;
    };
    let Some(old) = parent.turns.get(i) else {
        return;
    };
    if old.text == text {
        app.info("the turn is unchanged: no new branch");
        return;
    }
    let mut turns = parent.turns[..i].to_vec();
    turns.push(Turn {
        text,
        edited: true,
        states: Default::default(),
        think: None,
        marker: None,
        stop_reason: None,
        tokens: 0,
        prompt_tokens: 0,
        cached_tokens: 0,
        ms: 0,
        ..old.clone()
    });
    let branch = Branch {
        scenario: parent.scenario.clone(),
        parent: Some((b, i)),
        origin: format!("edit of turn {}", i + 1),
        seed: fresh_seed(app),
        turns,
        user: parent.user.clone(),
        set: parent.set.clone(),
        mode: parent.mode.clone(),
        assistant: parent.assistant.clone(),
        ..Default::default()
    };
    app.converse.branches.push(branch);
    let n = app.converse.branches.len();
    show_branch(app, n - 1);
    app.info(format!(
        "turn {} edited as branch {n} · Enter goes on from it",
        i + 1
    ));
}

/// Go on with the branch shown (none: start one from the selected scenario).
fn go_on(app: &mut App, fx: &mut Vec<Effect>) {
    let Some(branch) = app.converse.current().cloned() else {
        new_conversation(app, fx);
        return;
    };
    let Some(scenario) = app
        .scenario_by_id(&branch.scenario)
        .map(|e| e.scenario.clone())
    else {
        app.fail(format!(
            "scenario {} is not under {} any more",
            branch.scenario,
            app.paths.scenarios.display()
        ));
        return;
    };
    let generated = branch.turns.iter().filter(|t| t.generated).count();
    if let Some(end) = &branch.end {
        let again = match end.reason {
            EndReason::Cancelled | EndReason::Error => true,
            EndReason::MaxTurns => generated < max_turns(app),
            _ => false,
        };
        if !again {
            let hint = if end.reason == EndReason::MaxTurns {
                "+ allows another turn"
            } else {
                "F forks a turn to go on differently"
            };
            app.info(format!("the conversation ended: {end} · {hint}"));
            return;
        }
    }
    if !can_start(app) {
        return;
    }
    let job = new_job(app, JobKind::Converse);
    let b = app.converse.branch;
    app.converse.job = Some((job.id, b));
    app.converse.stream = None;
    app.converse.cursor = None;
    app.converse.scroll = 0;
    let next = branch.next_speaker(&scenario);
    {
        let br = &mut app.converse.branches[b];
        br.end = None;
        br.user = app.checkpoint.clone();
        br.set = app.set.clone();
        br.mode = app.mode.name().to_string();
    }
    fx.push(Effect::Converse(request(
        app,
        job,
        scenario,
        branch.turns,
        next,
        branch.seed,
    )));
}

fn request(
    app: &App,
    job: Job,
    scenario: Scenario,
    turns: Vec<Turn>,
    next: Speaker,
    seed: u64,
) -> ConverseRequest {
    ConverseRequest {
        job: job.id,
        scenario,
        turns,
        next,
        seed,
        set: app.set.clone(),
        mode: app.mode,
        sampling: app.sampling.clone(),
        assistant: app.converse.assistant.clone(),
        max_turns: Some(max_turns(app)),
        cancel: job.cancel,
    }
}

/// A message from the conversation worker.
pub(super) fn converse_msg(app: &mut App, job: u64, msg: ConvMsg) {
    let Some((_, b)) = app.converse.job.filter(|(j, _)| *j == job) else {
        return;
    };
    let tick = app.tick;
    let c = &mut app.converse;
    match msg {
        ConvMsg::Started {
            user,
            set,
            assistant,
        } => {
            if let Some(br) = c.branches.get_mut(b) {
                br.user = user;
                br.set = set;
                br.assistant = assistant;
            }
        }
        ConvMsg::TurnStarted { index, speaker } => {
            c.stream = Some(TurnStream {
                index,
                speaker: Some(speaker),
                calls: if speaker == Speaker::Assistant {
                    vec![(ASSISTANT_CALL.into(), String::new())]
                } else {
                    vec![]
                },
                stats: Stats::default(),
                started: tick,
            });
        }
        ConvMsg::Call { name, prefill } => {
            if let Some(s) = c.stream.as_mut() {
                s.calls.push((name, prefill));
                s.stats.cached_tokens = None;
            }
        }
        ConvMsg::Prefill { cached } => {
            if let Some(s) = c.stream.as_mut() {
                s.stats.cached_tokens = Some(cached);
            }
        }
        ConvMsg::Text(d) => {
            if let Some(s) = c.stream.as_mut() {
                if let Some((_, t)) = s.calls.last_mut() {
                    t.push_str(&d);
                }
                s.stats.tokens += 1;
            }
        }
        ConvMsg::TurnFinished(turn) => {
            if let Some(br) = c.branches.get_mut(b) {
                br.turns.push(*turn);
                br.next = None;
            }
            c.stream = None;
        }
        ConvMsg::Ended(end) => {
            if let Some(br) = c.branches.get_mut(b) {
                br.end = Some(end.clone());
            }
            c.job = None;
            c.stream = None;
            app.jobs.retain(|j| j.id != job);
            let new = app
                .converse
                .branches
                .get(b)
                .map_or(0, |br| br.turns.iter().filter(|t| t.generated).count());
            // A turn limit names the count already.
            app.info(if end.reason == EndReason::MaxTurns {
                format!("conversation ended: {end}")
            } else {
                format!(
                    "conversation ended: {end} · {new} new turn{}",
                    if new == 1 { "" } else { "s" }
                )
            });
        }
    }
}

/// A conversation's worker failed: the branch keeps its turns and says why it ended.
pub(super) fn converse_failed(app: &mut App, job: u64, error: &str) {
    let c = &mut app.converse;
    if let Some((_, b)) = c.job.filter(|(j, _)| *j == job) {
        if let Some(br) = c.branches.get_mut(b) {
            br.end = Some(End {
                reason: EndReason::Error,
                detail: Some(error.to_string()),
            });
        }
        c.job = None;
        c.stream = None;
    }
    if c.prompt.as_ref().is_some_and(|p| p.job == Some(job)) {
        if let Some(p) = c.prompt.as_mut() {
            p.job = None;
            p.calls = Some(Err(error.to_string()));
        }
    }
}

/// Go on as a conversation from the simulation shown on Simulate: the thread and the sample's
/// reply (with its states) become a branch, and the assistant answers it.
pub(super) fn fork_simulation(app: &mut App, fx: &mut Vec<Effect>) {
    let Some(run) = app.sim.as_ref() else {
        app.info("simulate a scenario first (Enter), then F goes on with it as a conversation");
        return;
    };
    if run.running() {
        app.info("the simulation is still running: F when it is done");
        return;
    }
    let Some(entry) = app.scenario_by_id(&run.scenario).cloned() else {
        app.fail(format!("scenario {} is not loaded", run.scenario));
        return;
    };
    let Some(sample) = run.samples.get(app.sample) else {
        app.info("the simulation has no reply to go on from");
        return;
    };
    let (_, reply) = text::reply_text(run, sample);
    let mut turn = Turn::said(Speaker::User, &reply);
    for key in app.dimensions() {
        if let Some(v) = text::state_text(run, sample, &key).filter(|v| !v.is_empty()) {
            turn.states.insert(key, v);
        }
    }
    turn.think = sample.think().map(str::to_string);
    turn.seed = run.sampling.seed;
    let mut turns = crate::converse::thread_turns(&entry.scenario);
    turns.push(turn);
    let origin = if run.samples.len() > 1 {
        format!("from the simulation (sample {})", app.sample + 1)
    } else {
        "from the simulation".to_string()
    };
    let branch = Branch {
        scenario: run.scenario.clone(),
        origin,
        seed: fresh_seed(app),
        turns,
        user: run.checkpoint.clone(),
        set: run.set.clone(),
        mode: run.mode.name().to_string(),
        ..Default::default()
    };
    if !can_start(app) {
        return;
    }
    app.screen = Screen::Converse;
    add_branch(app, branch, fx);
}

/// `v` on Converse: the prompt the turn under the cursor was written from, as its side saw it
/// (none yet: the prompt of the next turn).
pub(super) fn open_turn_prompt(app: &mut App, fx: &mut Vec<Effect>) {
    if app.converse.prompt.is_some() {
        app.converse.prompt = None;
        return;
    }
    let Some(branch) = app.converse.current().cloned() else {
        app.info("start a conversation first (Enter)");
        return;
    };
    let Some(scenario) = app
        .scenario_by_id(&branch.scenario)
        .map(|e| e.scenario.clone())
    else {
        app.fail(format!("scenario {} is not loaded", branch.scenario));
        return;
    };
    if app.model.loaded.is_none() && app.model.loading.is_none() {
        app.fail("no checkpoint is loaded: press m to choose one");
        return;
    }
    let (turn, turns, next) = match app.converse.cursor_turn() {
        Some(i) => (i, branch.turns[..i].to_vec(), branch.turns[i].speaker),
        None => (
            branch.turns.len(),
            branch.turns.clone(),
            branch.next_speaker(&scenario),
        ),
    };
    let job = new_job(app, JobKind::ConversePrompt);
    app.converse.prompt = Some(TurnPrompt {
        branch: app.converse.branch,
        turn,
        calls: None,
        job: Some(job.id),
        call: 0,
        scroll: 0,
    });
    fx.push(Effect::TurnPrompt(request(
        app,
        job,
        scenario,
        turns,
        next,
        branch.seed,
    )));
}

/// The rendered prompt of a turn.
pub(super) fn turn_prompt_result(app: &mut App, job: u64, result: Result<Vec<CallPrompt>, String>) {
    app.jobs.retain(|j| j.id != job);
    if let Some(p) = app.converse.prompt.as_mut().filter(|p| p.job == Some(job)) {
        p.job = None;
        // The reply's call is the one worth seeing first.
        p.call = result.as_ref().map_or(0, |c| c.len().saturating_sub(1));
        p.calls = Some(result);
    }
}

/// Keys in the prompt popup: calls, scrolling, Esc or `v` closes.
pub(super) fn turn_prompt_cmd(app: &mut App, cmd: Cmd) {
    let page = super::extent(app, "turn_prompt").1.max(2) - 1;
    let Some(p) = app.converse.prompt.as_mut() else {
        return;
    };
    let n = match &p.calls {
        Some(Ok(c)) => c.len().max(1),
        _ => 1,
    };
    match cmd {
        Cmd::Back | Cmd::GoPromptView => app.converse.prompt = None,
        Cmd::NextPane | Cmd::Right => {
            p.call = (p.call + 1) % n;
            p.scroll = 0;
        }
        Cmd::PrevPane | Cmd::Left => {
            p.call = (p.call + n - 1) % n;
            p.scroll = 0;
        }
        Cmd::Up | Cmd::Down | Cmd::PageUp | Cmd::PageDown | Cmd::Top | Cmd::Bottom => {
            let delta = scroll_delta(cmd, page);
            let pos = p.scroll;
            let moved = super::shift(app, "turn_prompt", pos, delta);
            if let Some(p) = app.converse.prompt.as_mut() {
                p.scroll = moved;
            }
        }
        _ => {}
    }
}
