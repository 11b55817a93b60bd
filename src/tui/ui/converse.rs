//! Converse (`C`): who talks with whom, the conversation tree, the transcript with the turn
//! being written, the state cards of the turn under the cursor, and the prompt each side saw.

use super::{centered, dim, extent, pane, scrollbar, spinner, ACCENT, BAD, GOOD, HUMAN, WARN};
use crate::converse::{EndReason, Turn};
use crate::prompts::RESPONSE;
use crate::scenario::Speaker;
use crate::tui::app::{App, Branch, CallPrompt, ConvFocus, TurnStream, ASSISTANT_CALL};
use crate::tui::text;
use crate::tui::update::converse::max_turns;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;

/// Where the panes are for a body rectangle.
pub struct Areas {
    pub config: Rect,
    /// The branch tree: a column when wide, the whole body when narrow and focused.
    pub branches: Option<Rect>,
    pub transcript: Rect,
    /// The state cards of the turn under the cursor (none when the prompt set has no states).
    pub states: Option<Rect>,
}

pub fn areas(app: &App, body: Rect) -> Areas {
    let [config, rest] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(body);
    let (branches, right) = if app.wide() {
        let w = if rest.width >= 140 { 34 } else { 28 };
        let [l, r] = Layout::horizontal([Constraint::Length(w), Constraint::Min(0)]).areas(rest);
        (Some(l), r)
    } else {
        (
            (app.converse.focus == ConvFocus::Branches).then_some(rest),
            rest,
        )
    };
    let dims = app.dimensions().len();
    let states_h = (dims as u16 + 2).min(right.height / 3);
    let (transcript, states) = if dims == 0 || states_h < 3 {
        (right, None)
    } else {
        let [t, s] =
            Layout::vertical([Constraint::Min(0), Constraint::Length(states_h)]).areas(right);
        (t, Some(s))
    };
    Areas {
        config,
        branches,
        transcript,
        states,
    }
}

pub fn draw(f: &mut Frame, app: &App, body: Rect) {
    let a = areas(app, body);
    draw_config(f, app, a.config);
    draw_transcript(f, app, a.transcript);
    if let Some(s) = a.states {
        draw_states(f, app, s);
    }
    if let Some(b) = a.branches {
        if !app.wide() {
            f.render_widget(Clear, b);
        }
        draw_branches(f, app, b);
    }
    if let Some(e) = &app.converse.edit {
        draw_edit(f, body, e.turn, &e.text);
    }
    if app.converse.prompt.is_some() {
        draw_prompt(f, app, body);
    }
}

/// The scenario, who talks with whom, the turn limit and the seed.
fn draw_config(f: &mut Frame, app: &App, area: Rect) {
    let c = &app.converse;
    let scenario = c
        .current()
        .map(|b| b.scenario.clone())
        .or_else(|| app.selected_scenario().map(|e| e.scenario.id.clone()))
        .unwrap_or_else(|| "no scenario".into());
    let seed = c.current().map_or(app.sampling.seed, |b| b.seed);
    // What matters most first: at 80 columns the end is cut.
    let assistant = if c.assistant.is_empty() {
        "the same checkpoint".to_string()
    } else {
        c.assistant.clone()
    };
    let line = Line::from(vec![
        Span::styled(
            format!(" {scenario} "),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::styled(
            format!("· max {} new turns · seed {seed} · ", max_turns(app)),
            dim(),
        ),
        Span::styled(app.checkpoint.clone(), Style::default().fg(HUMAN)),
        Span::styled(format!(" ({} {}) ⇄ ", app.set, app.mode.name()), dim()),
        Span::styled(assistant, Style::default().fg(ACCENT)),
    ]);
    f.render_widget(Paragraph::new(line), area);
}

/// How a branch ended, in a word or two (running, or able to go on, when it has not).
fn end_label(app: &App, i: usize, b: &Branch) -> (String, Style) {
    if app.converse.running_branch() == Some(i) {
        return (
            format!("{} running", spinner(app)),
            Style::default().fg(GOOD),
        );
    }
    match &b.end {
        Some(e) => (e.reason.name().to_string(), end_style(e.reason)),
        None => ("open".into(), dim()),
    }
}

fn end_style(reason: EndReason) -> Style {
    match reason {
        EndReason::UserEnded | EndReason::AssistantEnded => Style::default().fg(GOOD),
        EndReason::MaxTurns => Style::default(),
        EndReason::Context | EndReason::Cancelled => Style::default().fg(WARN),
        EndReason::Error => Style::default().fg(BAD),
    }
}

fn draw_branches(f: &mut Frame, app: &App, area: Rect) {
    let c = &app.converse;
    let focused = c.focus == ConvFocus::Branches;
    let title = if app.wide() {
        " Branches ".to_string()
    } else {
        " Branches (Enter shows · Tab leaves) ".to_string()
    };
    let block = pane(title, focused);
    if c.branches.is_empty() {
        let msg = "none yet: Enter starts a conversation on the scenario selected in Simulate";
        f.render_widget(
            Paragraph::new(Line::styled(msg, dim()))
                .wrap(Wrap { trim: true })
                .block(block),
            area,
        );
        return;
    }
    let inner_w = area.width.saturating_sub(2) as usize;
    let items: Vec<ListItem> = c
        .tree()
        .into_iter()
        .map(|i| {
            let b = &c.branches[i];
            let depth = b.depth(&c.branches);
            let indent = if depth == 0 {
                String::new()
            } else {
                format!("{}└ ", "  ".repeat(depth - 1))
            };
            let mark = if i == c.branch { "● " } else { "  " };
            let (end, end_st) = end_label(app, i, b);
            // Two lines: where it came from, then its length and how it ended.
            let head = format!("{mark}{indent}{} {}", i + 1, b.origin);
            let pad = " ".repeat(2 + text::width(&indent) + 2);
            ListItem::new(vec![
                Line::styled(
                    text::truncate(&head, inner_w),
                    if i == c.branch {
                        Style::default().add_modifier(Modifier::BOLD)
                    } else {
                        Style::default()
                    },
                ),
                Line::from(vec![
                    Span::styled(format!("{pad}{} turns · ", b.turns.len()), dim()),
                    Span::styled(end, end_st),
                ]),
            ])
        })
        .collect();
    let list = List::new(items).block(block).highlight_style(
        Style::default()
            .bg(if focused { ACCENT } else { Color::DarkGray })
            .fg(Color::Black),
    );
    let row = if focused {
        c.branch_row
    } else {
        c.tree().iter().position(|&b| b == c.branch).unwrap_or(0)
    };
    let mut state = ListState::default().with_selected(Some(row));
    f.render_stateful_widget(list, area, &mut state);
}

/// Who a turn is from, as the screen names it.
fn speaker_span(speaker: Speaker) -> Span<'static> {
    match speaker {
        Speaker::User => Span::styled(
            "HUMAN",
            Style::default().fg(HUMAN).add_modifier(Modifier::BOLD),
        ),
        Speaker::Assistant => Span::styled(
            "assistant",
            Style::default().fg(ACCENT).add_modifier(Modifier::BOLD),
        ),
    }
}

/// A finished turn: its header (number, speaker, where it came from, its cost) and its text;
/// a user turn's states as one dim line each.
fn turn_lines(
    i: usize,
    t: &Turn,
    thread: bool,
    dims: &[String],
    width: usize,
    out: &mut Vec<Line<'static>>,
) {
    let mut head = vec![
        Span::styled(format!("{} ", i + 1), dim()),
        speaker_span(t.speaker),
    ];
    if thread {
        head.push(Span::styled(" (thread)", dim()));
    }
    if t.edited {
        head.push(Span::styled(" ✎ edited", Style::default().fg(WARN)));
    }
    if t.generated && !t.edited && t.tokens > 0 {
        let mut cost = format!(
            " · {} tok · {}",
            t.tokens,
            text::duration(t.ms as f64 / 1e3)
        );
        if t.cached_tokens > 0 {
            cost.push_str(&format!(" · {} cached", t.cached_tokens));
        }
        head.push(Span::styled(cost, dim()));
    }
    if let Some(m) = &t.marker {
        head.push(Span::styled(
            format!(" · ends: {m}"),
            Style::default().fg(GOOD),
        ));
    }
    if let Some(r) = &t.stop_reason {
        if !matches!(
            r,
            crate::generate::StopReason::Eos | crate::generate::StopReason::Stop
        ) {
            head.push(Span::styled(
                format!(" · stopped: {r}"),
                Style::default().fg(WARN),
            ));
        }
    }
    out.push(Line::from(head));
    let text_w = width.saturating_sub(2).max(10);
    // In the prompt set's order, then any other the turn has.
    let mut keys: Vec<&String> = dims.iter().filter(|d| t.states.contains_key(*d)).collect();
    keys.extend(t.states.keys().filter(|k| !dims.contains(k)));
    for k in keys {
        let v = &t.states[k];
        let l = text::truncate(&format!("{k}: {v}"), text_w);
        out.push(Line::styled(format!("  {l}"), dim()));
    }
    if t.text.trim().is_empty() {
        out.push(Line::styled("  (empty turn)", Style::default().fg(WARN)));
    }
    for l in text::wrap(&t.text, text_w) {
        out.push(Line::raw(format!("  {l}")));
    }
}

/// The turn being written: the states so far (dim) and the reply with a cursor.
fn stream_lines(app: &App, s: &TurnStream, width: usize, out: &mut Vec<Line<'static>>) {
    let mut head = vec![
        Span::styled(format!("{} ", s.index + 1), dim()),
        s.speaker.map_or(Span::raw("…"), speaker_span),
        Span::styled(
            format!(" {} writing", spinner(app)),
            Style::default().fg(GOOD),
        ),
    ];
    if s.stats.tokens > 0 {
        head.push(Span::styled(format!(" · {} tok", s.stats.tokens), dim()));
    }
    out.push(Line::from(head));
    let text_w = width.saturating_sub(2).max(10);
    let n = s.calls.len();
    for (j, (name, body)) in s.calls.iter().enumerate() {
        let last = j + 1 == n;
        let is_reply = name == RESPONSE || name == ASSISTANT_CALL;
        if !is_reply {
            let v = text::state_from_raw(name, "", body);
            let l = text::truncate(&format!("{name}: {v}"), text_w);
            let mut spans = vec![Span::styled(format!("  {l}"), dim())];
            if last {
                spans.push(Span::styled("▌", Style::default().fg(ACCENT)));
            }
            out.push(Line::from(spans));
            continue;
        }
        // The reply as the other side will see it: no thinking, no `<response>` tag.
        let shown = body
            .rsplit_once("</think>")
            .map_or(body.as_str(), |(_, r)| r);
        let shown = shown.trim();
        let shown = shown.strip_prefix("<response>").unwrap_or(shown);
        let shown = shown.split("</response>").next().unwrap_or(shown).trim();
        let wrapped = text::wrap(shown, text_w);
        let k = wrapped.len();
        for (i, l) in wrapped.into_iter().enumerate() {
            let mut spans = vec![Span::raw(format!("  {l}"))];
            if last && i + 1 == k {
                spans.push(Span::styled("▌", Style::default().fg(ACCENT)));
            }
            out.push(Line::from(spans));
        }
        if k == 0 {
            out.push(Line::styled("  ▌", Style::default().fg(ACCENT)));
        }
    }
    if n == 0 {
        out.push(Line::styled(
            format!("  {} waiting for the first token…", spinner(app)),
            dim(),
        ));
    }
}

/// The line under the last turn: who writes next, or how the conversation ended.
fn end_line(app: &App, b: &Branch, width: usize) -> Line<'static> {
    let (label, style) = match &b.end {
        _ if app.converse.running_branch() == Some(app.converse.branch) => (
            "Esc stops the conversation".to_string(),
            Style::default().fg(GOOD),
        ),
        Some(e) => {
            let hint = match e.reason {
                EndReason::MaxTurns => "+ and Enter go on",
                EndReason::Cancelled | EndReason::Error => "Enter goes on",
                _ => "F forks a turn",
            };
            (format!("ended: {e} · {hint}"), end_style(e.reason))
        }
        None => {
            let next = app
                .scenario_by_id(&b.scenario)
                .map(|e| b.next_speaker(&e.scenario));
            let who = match next {
                Some(Speaker::Assistant) => "the assistant",
                _ => "HUMAN",
            };
            (
                format!("{who} writes turn {} · Enter goes on", b.turns.len() + 1),
                dim(),
            )
        }
    };
    let marker = format!("── {label} ");
    let pad = width.saturating_sub(text::width(&marker));
    Line::styled(format!("{marker}{}", "─".repeat(pad)), style)
}

fn draw_transcript(f: &mut Frame, app: &App, area: Rect) {
    let c = &app.converse;
    let focused = c.focus == ConvFocus::Transcript;
    let Some(b) = c.current() else {
        let block = pane(" Conversation ", focused);
        let hint = match app.selected_scenario() {
            Some(e) => format!(
                "Enter starts a conversation on {} ({}): the checkpoint in use plays HUMAN, \
                 [ ] chooses the assistant, + - the number of new turns.",
                e.scenario.id, e.scenario.title
            ),
            None => "select a scenario in Simulate (s), then Enter here starts a conversation"
                .to_string(),
        };
        f.render_widget(
            Paragraph::new(Line::styled(hint, dim()))
                .wrap(Wrap { trim: true })
                .block(block),
            area,
        );
        return;
    };
    let new = b.turns.iter().filter(|t| t.generated).count();
    let title = format!(
        " Conversation {}/{} · {} · {} turns ({new} new) ",
        c.branch + 1,
        c.branches.len(),
        b.origin,
        b.turns.len()
    );
    let block = pane(
        text::truncate(&title, area.width.saturating_sub(4) as usize),
        focused,
    );
    let inner = block.inner(area);
    let width = inner.width.saturating_sub(2) as usize;
    let thread = b.thread_turns();
    let dims = app.dimensions();
    let running_here = c.running_branch() == Some(c.branch);
    // While the conversation grows and the cursor follows it, the turn being written is the
    // one in view: no finished turn is marked.
    let cursor = c
        .cursor_turn()
        .filter(|_| c.cursor.is_some() || !running_here);
    let mut lines: Vec<Line> = vec![];
    let mut starts = vec![];
    for (i, t) in b.turns.iter().enumerate() {
        if i > 0 {
            lines.push(Line::raw(""));
        }
        starts.push(lines.len());
        let mut turn = vec![];
        turn_lines(i, t, i < thread && !t.edited, &dims, width, &mut turn);
        // The turn under the cursor has a bar in the gutter.
        let bar = if cursor == Some(i) && focused {
            Span::styled("▌", Style::default().fg(ACCENT))
        } else if cursor == Some(i) {
            Span::styled("▌", dim())
        } else {
            Span::raw(" ")
        };
        for l in turn {
            let mut spans = vec![bar.clone()];
            spans.extend(l.spans);
            lines.push(Line::from(spans));
        }
    }
    if let Some(s) = c.stream.as_ref().filter(|_| running_here) {
        lines.push(Line::raw(""));
        let mut turn = vec![];
        stream_lines(app, s, width, &mut turn);
        for l in turn {
            let mut spans = vec![Span::raw(" ")];
            spans.extend(l.spans);
            lines.push(Line::from(spans));
        }
    }
    lines.push(Line::raw(""));
    lines.push(end_line(app, b, width + 1));
    let height = inner.height as usize;
    // Following: the end in view; else the cursor's turn from its top, scrolled within it.
    let want = match (c.cursor, cursor) {
        (Some(_), Some(i)) => starts[i].saturating_add(c.scroll),
        _ => usize::MAX / 4,
    };
    let pos = extent(app, "transcript", lines.len(), height, want);
    let visible: Vec<Line> = lines.iter().skip(pos).take(height).cloned().collect();
    f.render_widget(block, area);
    f.render_widget(Paragraph::new(visible), inner);
    scrollbar(f, area, lines.len(), height, pos);
}

/// The cards of the turn under the cursor (the streaming one while it is written).
fn draw_states(f: &mut Frame, app: &App, area: Rect) {
    let c = &app.converse;
    let dims = app.dimensions();
    let running_here = c.running_branch() == Some(c.branch);
    let stream = c
        .stream
        .as_ref()
        .filter(|s| running_here && c.cursor.is_none() && s.speaker == Some(Speaker::User));
    let turn = c
        .cursor_turn()
        .and_then(|i| Some((i, c.current()?.turns.get(i)?)));
    let title = match (stream, turn) {
        (Some(s), _) => format!(" States · turn {} (writing) ", s.index + 1),
        (None, Some((i, _))) => format!(" States · turn {} ", i + 1),
        _ => " States ".to_string(),
    };
    let block = pane(title, false);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let label_w = 14usize;
    let text_w = (inner.width as usize).saturating_sub(label_w).max(4);
    let mut lines = vec![];
    let note = match (stream, turn) {
        (None, Some((_, t))) if t.speaker == Speaker::Assistant => {
            Some("the assistant's turn: no states")
        }
        (None, Some((_, t))) if t.edited => Some("an edited turn: written by hand, no states"),
        (None, Some((_, t))) if t.states.is_empty() => Some(if t.generated {
            "no states: written in a mode or set without them"
        } else {
            "a turn of the thread: no states"
        }),
        (None, None) => Some("no turn yet"),
        _ => None,
    };
    if let Some(n) = note {
        f.render_widget(Paragraph::new(Line::styled(n, dim())), inner);
        return;
    }
    for key in &dims {
        let (value, live) = match (stream, turn) {
            (Some(s), _) => match s.calls.iter().position(|(n, _)| n == key) {
                Some(j) => (
                    text::state_from_raw(key, "", &s.calls[j].1),
                    j + 1 == s.calls.len(),
                ),
                None => ("waiting".to_string(), false),
            },
            (None, Some((_, t))) => (
                t.states
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| "(empty)".into()),
                false,
            ),
            _ => (String::new(), false),
        };
        let shown = text::truncate(&value, text_w);
        let mut spans = vec![
            Span::styled(
                format!("{key:<label_w$}"),
                Style::default().fg(ACCENT).add_modifier(Modifier::BOLD),
            ),
            Span::raw(shown),
        ];
        if live {
            spans.push(Span::styled("▌", Style::default().fg(ACCENT)));
        }
        lines.push(Line::from(spans));
    }
    f.render_widget(Paragraph::new(lines), inner);
}

fn draw_edit(f: &mut Frame, body: Rect, turn: usize, text_now: &str) {
    let w = body.width.saturating_sub(8).clamp(30, 100);
    let inner_w = w.saturating_sub(2) as usize;
    let wrapped = text::wrap(text_now, inner_w.saturating_sub(1).max(8));
    let h = (wrapped.len() as u16 + 2).clamp(5, body.height.saturating_sub(2).max(5));
    let r = centered(body, w, h);
    f.render_widget(Clear, r);
    let block = pane(format!(" Edit turn {} ", turn + 1), true).title_bottom(
        Line::from(" Enter keeps it as a new branch · Esc drops the edit ").right_aligned(),
    );
    let inner = block.inner(r);
    let mut lines: Vec<Line> = wrapped.into_iter().map(Line::raw).collect();
    match lines.last_mut() {
        Some(l) => l.spans.push(Span::styled("▌", Style::default().fg(ACCENT))),
        None => lines.push(Line::styled("▌", Style::default().fg(ACCENT))),
    }
    // The end of the text (where typing goes) stays in view.
    let skip = lines.len().saturating_sub(inner.height as usize);
    f.render_widget(block, r);
    f.render_widget(Paragraph::new(lines.split_off(skip)), inner);
}

/// The prompt a turn was written from: one tab per call, the exact text its side saw.
fn draw_prompt(f: &mut Frame, app: &App, body: Rect) {
    let Some(p) = &app.converse.prompt else {
        return;
    };
    // The whole body: the prompt is long and wide.
    let r = body;
    f.render_widget(Clear, r);
    let side = app
        .converse
        .branches
        .get(p.branch)
        .and_then(|b| b.turns.get(p.turn))
        .map(|t| t.speaker);
    let title = format!(
        " Prompt of turn {}{} ",
        p.turn + 1,
        match side {
            Some(Speaker::Assistant) => " · as the assistant saw it",
            Some(Speaker::User) => " · as the simulated user saw it",
            None => " (the next one)",
        }
    );
    let block = pane(title, true)
        .title_bottom(Line::from(" Tab next call · ↑↓ scroll · Esc closes ").right_aligned());
    let inner_w = r.width.saturating_sub(3) as usize;
    let mut tabs = None;
    let lines: Vec<Line> = match &p.calls {
        None => vec![Line::styled(
            format!("{} rendering the prompt…", spinner(app)),
            dim(),
        )],
        Some(Err(e)) => vec![Line::styled(format!("✗ {e}"), Style::default().fg(BAD))],
        Some(Ok(calls)) => {
            tabs = Some(call_tabs(calls, p.call, inner_w));
            match calls.get(p.call) {
                Some(call) => super::prompt_view::text_lines(&call.text, "", inner_w),
                None => vec![],
            }
        }
    };
    let mut inner = block.inner(r);
    f.render_widget(block, r);
    // The calls on a line of their own above the text, which scrolls under it.
    if let Some(t) = tabs {
        f.render_widget(Paragraph::new(t), Rect { height: 1, ..inner });
        inner.y += 1;
        inner.height = inner.height.saturating_sub(1);
    }
    let height = inner.height as usize;
    let pos = extent(app, "turn_prompt", lines.len(), height, p.scroll);
    let visible: Vec<Line> = lines.iter().skip(pos).take(height).cloned().collect();
    f.render_widget(Paragraph::new(visible), inner);
    scrollbar(f, r, lines.len(), height, pos);
}

/// One tab per call with its length in tokens; where they do not fit, without the lengths;
/// where that does not fit either, only the call shown and its place among them.
fn call_tabs(calls: &[CallPrompt], shown: usize, width: usize) -> Line<'static> {
    let tab = |i: usize, label: String| {
        if i == shown {
            Span::styled(label, Style::default().fg(Color::Black).bg(ACCENT))
        } else {
            Span::raw(label)
        }
    };
    let tokens = |c: &CallPrompt| c.tokens.map(|n| format!(" {n} tok")).unwrap_or_default();
    let full: Vec<Span> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| tab(i, format!(" {}{} ", c.name, tokens(c))))
        .collect();
    if full.iter().map(|s| s.width()).sum::<usize>() <= width {
        return Line::from(full);
    }
    let names: Vec<Span> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| tab(i, format!(" {} ", c.name)))
        .collect();
    if names.iter().map(|s| s.width()).sum::<usize>() <= width {
        return Line::from(names);
    }
    let Some(c) = calls.get(shown) else {
        return Line::default();
    };
    Line::from(vec![
        tab(shown, format!(" {}{} ", c.name, tokens(c))),
        Span::styled(
            format!(" call {}/{} · Tab next", shown + 1, calls.len()),
            dim(),
        ),
    ])
}
