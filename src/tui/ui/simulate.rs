//! Simulate (home): the scenario browser, the thread, the six state cards and the reply.

use super::{dim, extent, pane, scrollbar, spinner, ACCENT, BAD, DIM, GOOD, HUMAN, WARN};
use crate::prompts::RESPONSE;
use crate::scenario::{Persona, Role, Scenario};
use crate::tui::app::{App, BrowserRow, Pane, RunStatus, SampleOut, SimRun, ThreadKey};
use crate::tui::text;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, List, ListItem, ListState, Paragraph};
use ratatui::Frame;
use std::rc::Rc;

/// Where the panes are for a body rectangle.
pub struct Areas {
    /// The scenario list: a column when wide, a popup when narrow and focused, else hidden.
    pub list: Option<Rect>,
    pub thread: Rect,
    pub states: Rect,
    pub reply: Rect,
}

pub fn areas(app: &App, body: Rect) -> Areas {
    if app.wide() {
        let list_w = if body.width >= 140 { 34 } else { 28 };
        let [list, right] =
            Layout::horizontal([Constraint::Length(list_w), Constraint::Min(0)]).areas(body);
        let [thread, bottom] =
            Layout::vertical([Constraint::Percentage(42), Constraint::Percentage(58)]).areas(right);
        let [states, reply] =
            Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
                .areas(bottom);
        Areas {
            list: Some(list),
            thread,
            states,
            reply,
        }
    } else {
        let [thread, bottom] =
            Layout::vertical([Constraint::Percentage(36), Constraint::Percentage(64)]).areas(body);
        let [states, reply] =
            Layout::horizontal([Constraint::Percentage(52), Constraint::Percentage(48)])
                .areas(bottom);
        // The list takes the whole body while it has the focus (Tab or Esc leaves it).
        let list = (app.focus == Pane::Scenarios).then_some(body);
        Areas {
            list,
            thread,
            states,
            reply,
        }
    }
}

/// The pane under a screen position (the mouse).
pub fn pane_at(app: &App, col: u16, row: u16) -> Option<Pane> {
    let a = areas(app, super::body_rect(app));
    let hit = |r: Rect| col >= r.x && col < r.x + r.width && row >= r.y && row < r.y + r.height;
    if a.list.is_some_and(hit) {
        return Some(Pane::Scenarios);
    }
    [
        (a.thread, Pane::Thread),
        (a.states, Pane::States),
        (a.reply, Pane::Reply),
    ]
    .into_iter()
    .find(|(r, _)| hit(*r))
    .map(|(_, p)| p)
}

pub fn draw(f: &mut Frame, app: &App, body: Rect) {
    let a = areas(app, body);
    draw_thread(f, app, a.thread);
    draw_states(f, app, a.states);
    draw_reply(f, app, a.reply);
    if let Some(list) = a.list {
        if !app.wide() {
            f.render_widget(Clear, list);
        }
        draw_list(f, app, list);
    }
}

fn draw_list(f: &mut Frame, app: &App, area: Rect) {
    let focused = app.focus == Pane::Scenarios;
    let title = if app.wide() {
        " Scenarios (/ filter) "
    } else {
        " Scenarios (/ filter · Enter simulates · Tab leaves) "
    };
    let mut block = pane(title, focused);
    if app.browser.filtering || !app.browser.filter.is_empty() {
        let cursor = if app.browser.filtering { "▌" } else { "" };
        block = block.title_bottom(Line::from(vec![
            Span::styled(" /", Style::default().fg(ACCENT)),
            Span::raw(format!("{}{cursor} ", app.browser.filter)),
        ]));
    }
    let inner_w = area.width.saturating_sub(2) as usize;
    let rows = app.browser_rows();
    let running = app.sim.as_ref().map(|r| r.scenario.as_str());
    let items: Vec<ListItem> = rows
        .iter()
        .map(|r| match r {
            BrowserRow::Domain {
                domain,
                count,
                folded,
            } => ListItem::new(Line::from(vec![
                Span::styled(
                    if *folded { "▸ " } else { "▾ " },
                    Style::default().fg(ACCENT),
                ),
                Span::styled(
                    format!("{} ({count})", domain.name()),
                    Style::default().add_modifier(Modifier::BOLD),
                ),
            ])),
            BrowserRow::Scenario(i) => {
                let sc = &app.scenarios[*i].scenario;
                let mark = if running == Some(sc.id.as_str()) {
                    "● "
                } else {
                    "  "
                };
                ListItem::new(Line::from(vec![
                    Span::styled(mark, Style::default().fg(GOOD)),
                    Span::raw(text::truncate(&sc.title, inner_w.saturating_sub(3))),
                ]))
            }
        })
        .collect();
    if items.is_empty() {
        let msg = if app.scenarios.is_empty() {
            format!("no scenarios under {}", app.paths.scenarios.display())
        } else {
            "nothing matches the filter (Esc clears it)".to_string()
        };
        f.render_widget(
            Paragraph::new(Line::styled(msg, dim()))
                .wrap(ratatui::widgets::Wrap { trim: true })
                .block(block),
            area,
        );
        return;
    }
    let list = List::new(items).block(block).highlight_style(
        Style::default()
            .bg(if focused { ACCENT } else { Color::DarkGray })
            .fg(Color::Black),
    );
    let mut state = ListState::default().with_selected(Some(app.browser.selected));
    f.render_stateful_widget(list, area, &mut state);
}

/// A stable colour per author, so a name keeps its colour through a thread.
fn author_color(name: &str) -> Color {
    const PALETTE: [Color; 7] = [
        Color::Cyan,
        Color::Green,
        Color::Yellow,
        Color::Blue,
        Color::LightGreen,
        Color::LightCyan,
        Color::LightYellow,
    ];
    let h = name
        .bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619));
    PALETTE[h as usize % PALETTE.len()]
}

/// The thread as wrapped lines: each turn's author (the target as HUMAN), its text, the marker
/// of whose reply comes next, and the persona when unfolded.
pub fn thread_lines(sc: &Scenario, width: usize, persona_open: bool) -> Vec<Line<'static>> {
    let mut out = vec![];
    let text_w = width.saturating_sub(2).max(10);
    for (i, t) in sc.turns.iter().enumerate() {
        if i > 0 {
            out.push(Line::raw(""));
        }
        let is_target = t.role == Role::User && t.author == sc.target.author;
        let mut head = if is_target {
            vec![
                Span::styled(
                    "HUMAN",
                    Style::default().fg(HUMAN).add_modifier(Modifier::BOLD),
                ),
                Span::styled(format!(" ({})", t.author), dim()),
            ]
        } else {
            vec![Span::styled(
                t.author.clone(),
                Style::default()
                    .fg(author_color(&t.author))
                    .add_modifier(Modifier::BOLD),
            )]
        };
        if t.role == Role::Assistant {
            head.push(Span::styled(" · assistant", dim()));
        }
        out.push(Line::from(head));
        for l in text::wrap(&t.text, text_w) {
            out.push(Line::raw(format!("  {l}")));
        }
    }
    out.push(Line::raw(""));
    let fold = if persona_open {
        "persona ▾ (f folds)"
    } else if sc.persona.is_some() {
        "persona ▸ (f unfolds)"
    } else {
        "no persona"
    };
    let marker = format!("── HUMAN ({}) replies next ─ {fold} ", sc.target.author);
    let pad = width.saturating_sub(text::width(&marker));
    out.push(Line::styled(
        format!("{marker}{}", "─".repeat(pad)),
        Style::default().fg(HUMAN),
    ));
    if persona_open {
        match &sc.persona {
            Some(p) => {
                for (k, v) in persona_fields(p) {
                    let body = text::wrap(&v, text_w.saturating_sub(k.len() + 2).max(10));
                    for (j, l) in body.into_iter().enumerate() {
                        let label = if j == 0 {
                            format!("  {k}: ")
                        } else {
                            " ".repeat(k.len() + 4)
                        };
                        out.push(Line::from(vec![
                            Span::styled(label, Style::default().fg(HUMAN)),
                            Span::raw(l),
                        ]));
                    }
                }
            }
            None => out.push(Line::styled("  (this scenario has no persona)", dim())),
        }
        // Where the scenario comes from, beside who the person is: for an imported row, the
        // post and user it was taken from.
        if let Some(src) = &sc.source {
            let label = "  source: ";
            for (j, l) in text::wrap(&src.summary(), text_w.saturating_sub(label.len()).max(10))
                .into_iter()
                .enumerate()
            {
                out.push(Line::from(vec![
                    Span::styled(if j == 0 { label } else { "          " }, dim()),
                    Span::styled(l, dim()),
                ]));
            }
        }
    }
    out
}

fn persona_fields(p: &Persona) -> Vec<(&'static str, String)> {
    let mut out = vec![];
    if let Some(t) = &p.text {
        out.push(("persona", t.clone()));
    }
    if let Some(d) = &p.demographics {
        let parts: Vec<String> = [
            &d.age_group,
            &d.gender,
            &d.location,
            &d.occupation,
            &d.nationality,
            &d.other,
        ]
        .iter()
        .filter_map(|x| x.as_ref())
        .filter(|x| x.as_str() != "NA")
        .cloned()
        .collect();
        if !parts.is_empty() {
            out.push(("demographics", parts.join(" · ")));
        }
    }
    for (k, v) in [
        ("interests", &p.interests),
        ("values", &p.values),
        ("communication", &p.communication),
        ("statistics", &p.statistics),
    ] {
        if !v.is_empty() {
            out.push((k, v.join("; ")));
        }
    }
    out
}

fn draw_thread(f: &mut Frame, app: &App, area: Rect) {
    let focused = app.focus == Pane::Thread;
    let index = app.selected_scenario_index().or_else(|| {
        app.sim.as_ref().and_then(|r| {
            app.scenarios
                .iter()
                .position(|e| e.scenario.id == r.scenario)
        })
    });
    let Some(index) = index else {
        let block = pane(" Thread ", focused);
        let msg = if app.scenarios.is_empty() {
            "no scenario loaded"
        } else {
            "select a scenario (↑↓, Enter on a domain folds it)"
        };
        f.render_widget(Paragraph::new(Line::styled(msg, dim())).block(block), area);
        return;
    };
    let sc = &app.scenarios[index].scenario;
    let title = format!(" Thread · {} · {} ", sc.domain.name(), sc.title);
    let block = pane(
        text::truncate(&title, area.width.saturating_sub(4) as usize),
        focused,
    );
    let inner = block.inner(area);
    let width = inner.width.saturating_sub(1);
    let key = ThreadKey {
        scenario: index,
        width,
        persona: app.persona_open,
    };
    let lines = {
        let mut caches = app.caches.borrow_mut();
        match &caches.thread {
            Some((k, lines)) if *k == key => lines.clone(),
            _ => {
                let lines = Rc::new(thread_lines(sc, width as usize, app.persona_open));
                caches.thread = Some((key, lines.clone()));
                lines
            }
        }
    };
    let height = inner.height as usize;
    let pos = extent(app, "thread", lines.len(), height, app.thread_scroll);
    // Only the visible lines are handed to the widget.
    let visible: Vec<Line> = lines.iter().skip(pos).take(height).cloned().collect();
    f.render_widget(Paragraph::new(visible).block(block), area);
    scrollbar(f, area, lines.len(), height, pos);
}

/// The sample shown (the selected one, bounded by how many the run has).
fn shown_sample<'a>(app: &App, run: &'a SimRun) -> Option<&'a SampleOut> {
    run.samples
        .get(app.sample.min(run.samples.len().saturating_sub(1)))
}

fn draw_states(f: &mut Frame, app: &App, area: Rect) {
    let focused = app.focus == Pane::States;
    let block = pane(" States ", focused);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let dims = app.dimensions();
    if inner.height == 0 || dims.is_empty() {
        return;
    }
    let run = app.sim.as_ref();
    let sample = run.and_then(|r| shown_sample(app, r));
    let has_scores = sample.is_some_and(|s| dims.iter().any(|d| s.scores.contains_key(d)));
    let label_w = 14usize;
    let score_w = if has_scores { 8 } else { 0 };
    let text_w = (inner.width as usize)
        .saturating_sub(label_w + score_w)
        .max(4);
    // Lines per card: equal shares, the remainder to the first cards.
    let n = dims.len();
    let base = inner.height as usize / n;
    let extra = inner.height as usize % n;
    let mut lines: Vec<Line> = vec![];
    for (i, key) in dims.iter().enumerate() {
        let cap = (base + usize::from(i < extra)).max(1);
        let mut body: Vec<Span> = vec![];
        let (content, style, streaming, flags) = card_content(run, sample, key);
        let mut wrapped = if content.is_empty() {
            vec![String::new()]
        } else {
            text::wrap(&content, text_w)
        };
        let flag_text = flags.join(" ");
        if !flag_text.is_empty() {
            if cap >= 2 {
                wrapped.truncate(cap - 1);
                wrapped.push(flag_text.clone());
            } else {
                wrapped = vec![format!("{flag_text} {}", wrapped.join(" "))];
            }
        }
        if wrapped.len() > cap {
            wrapped.truncate(cap);
            let last = wrapped.pop().unwrap_or_default();
            wrapped.push(text::truncate(&format!("{last} …"), text_w));
        }
        let score = sample.and_then(|s| s.scores.get(key)).copied();
        for (j, l) in wrapped.iter().enumerate() {
            let label = if j == 0 {
                Span::styled(
                    format!("{key:<width$}", width = label_w),
                    Style::default().fg(ACCENT).add_modifier(Modifier::BOLD),
                )
            } else {
                Span::raw(" ".repeat(label_w))
            };
            let is_flag = !flag_text.is_empty() && *l == flag_text;
            let mut spans = vec![label];
            let l_style = if is_flag {
                Style::default().fg(WARN)
            } else {
                style
            };
            let shown = text::truncate(l, text_w);
            let pad = text_w.saturating_sub(text::width(&shown));
            spans.push(Span::styled(shown, l_style));
            let last_line = j + 1 == wrapped.len();
            if streaming && last_line {
                spans.push(Span::styled("▌", Style::default().fg(ACCENT)));
            }
            if has_scores {
                let used = usize::from(streaming && last_line);
                spans.push(Span::raw(" ".repeat(pad.saturating_sub(used))));
                if j == 0 {
                    spans.push(score_span(score));
                }
            }
            body.extend(spans);
            lines.push(Line::from(std::mem::take(&mut body)));
        }
        for _ in wrapped.len()..cap {
            lines.push(Line::raw(""));
        }
    }
    f.render_widget(Paragraph::new(lines), inner);
}

/// ` █▌·· 71` for a similarity, nothing while it is computed.
fn score_span(score: Option<f64>) -> Span<'static> {
    match score {
        Some(v) => Span::styled(
            format!(
                " {}{:>3}",
                text::bar(v, 4).replace(' ', "·"),
                (v * 100.0).round() as i64
            ),
            Style::default().fg(score_color(v)),
        ),
        None => Span::raw(""),
    }
}

pub fn score_color(v: f64) -> Color {
    if v >= 0.6 {
        GOOD
    } else if v >= 0.3 {
        WARN
    } else {
        BAD
    }
}

/// What a card shows: its text, style, whether it is streaming, and its warnings.
fn card_content(
    run: Option<&SimRun>,
    sample: Option<&SampleOut>,
    key: &str,
) -> (String, Style, bool, Vec<&'static str>) {
    let (Some(run), Some(s)) = (run, sample) else {
        return (String::new(), dim(), false, vec![]);
    };
    if run.mode == crate::sim::Mode::Response {
        return (
            "— not generated in response mode".into(),
            dim(),
            false,
            vec![],
        );
    }
    let call = text::call_of(s, key);
    let Some(call) = call else {
        let what = match run.status {
            RunStatus::Running => "waiting",
            RunStatus::Cancelled => "not generated (cancelled)",
            _ => "not generated",
        };
        return (what.into(), dim(), false, vec![]);
    };
    let content = text::state_text(run, s, key).unwrap_or_default();
    let streaming = !call.done && run.running();
    if content.is_empty() && !streaming {
        let flags = text::flags(text::output_of(s, key), "");
        return ("(empty)".into(), dim(), false, flags);
    }
    let flags = if call.done {
        text::flags(text::output_of(s, key), &content)
    } else {
        vec![]
    };
    (content, Style::default(), streaming, flags)
}

fn draw_reply(f: &mut Frame, app: &App, area: Rect) {
    let focused = app.focus == Pane::Reply;
    let run = app.sim.as_ref();
    let n = run.map_or(1, |r| r.samples.len());
    let sample = run.and_then(|r| shown_sample(app, r));
    let title = if n > 1 {
        format!(" Reply · sample {}/{n} ", app.sample.min(n - 1) + 1)
    } else {
        " Reply ".to_string()
    };
    let mut block = pane(title, focused);
    if let Some(v) = sample.and_then(|s| s.scores.get(RESPONSE)) {
        block = block.title(
            Line::from(vec![
                Span::raw(" sim"),
                score_span(Some(*v)),
                Span::raw(" "),
            ])
            .right_aligned(),
        );
    }
    let inner = block.inner(area);
    f.render_widget(block, area);
    let width = inner.width.saturating_sub(1) as usize;
    let mut lines: Vec<Line> = vec![];
    if n > 1 {
        let mut tabs = vec![];
        for i in 0..n {
            let label = format!(" {} ", i + 1);
            tabs.push(if i == app.sample.min(n - 1) {
                Span::styled(label, Style::default().fg(Color::Black).bg(ACCENT))
            } else {
                Span::raw(label)
            });
        }
        lines.push(Line::from(tabs));
    }
    match (run, sample) {
        (Some(run), Some(s)) => reply_lines(app, run, s, width, &mut lines),
        _ => {
            let hint = format!(
                "Enter simulates the selected scenario ({} mode, {} sample{}).",
                app.mode.name(),
                app.sampling.n,
                if app.sampling.n == 1 { "" } else { "s" }
            );
            for l in text::wrap(&hint, width) {
                lines.push(Line::styled(l, dim()));
            }
        }
    }
    let height = inner.height as usize;
    let want = if app.reply_follow {
        usize::MAX / 4
    } else {
        app.reply_scroll
    };
    let pos = extent(app, "reply", lines.len(), height, want);
    let visible: Vec<Line> = lines.into_iter().skip(pos).take(height).collect();
    f.render_widget(Paragraph::new(visible), inner);
}

fn reply_lines(
    app: &App,
    run: &SimRun,
    s: &SampleOut,
    width: usize,
    lines: &mut Vec<Line<'static>>,
) {
    let (think, reply) = text::reply_text(run, s);
    let call = text::call_of(s, RESPONSE);
    let output = text::output_of(s, RESPONSE);
    let streaming = run.running() && call.is_some_and(|c| !c.done);
    if let Some(t) = think.filter(|t| !t.is_empty()) {
        if app.show_think {
            lines.push(Line::styled("<think>", dim()));
            for l in text::wrap(&t, width) {
                lines.push(Line::styled(
                    l,
                    Style::default().fg(DIM).add_modifier(Modifier::ITALIC),
                ));
            }
            lines.push(Line::styled("</think>", dim()));
        } else {
            let words = t.split_whitespace().count();
            lines.push(Line::styled(
                format!("<think> {words} words, folded (T) </think>"),
                dim(),
            ));
        }
    }
    if reply.is_empty() {
        let what = match (&run.status, call) {
            (RunStatus::Running, None) if run.mode == crate::sim::Mode::Humanlm => {
                format!("{} the states come first…", spinner(app))
            }
            (RunStatus::Running, _) => format!("{} waiting for the first token…", spinner(app)),
            (RunStatus::Failed(e), _) => format!("failed: {e}"),
            (RunStatus::Cancelled, _) => "cancelled before the reply".into(),
            _ => "(empty reply)".into(),
        };
        lines.push(Line::styled(what, dim()));
    } else {
        let wrapped = text::wrap(&reply, width);
        let last = wrapped.len().saturating_sub(1);
        for (i, l) in wrapped.into_iter().enumerate() {
            if streaming && i == last {
                lines.push(Line::from(vec![
                    Span::raw(l),
                    Span::styled("▌", Style::default().fg(ACCENT)),
                ]));
            } else {
                lines.push(Line::raw(l));
            }
        }
    }
    let mut notes = vec![];
    if let (Some(_), false) = (call, streaming) {
        notes.extend(text::flags(output, &reply));
    }
    match s.valid() {
        Some(true) => lines.push(Line::styled("✓ valid format", Style::default().fg(GOOD))),
        Some(false) if run.status == RunStatus::Done => {
            notes.push("⚠ invalid format: the model broke the tag format")
        }
        _ => {}
    }
    for l in text::wrap(&notes.join(" · "), width) {
        if !l.is_empty() {
            lines.push(Line::styled(l, Style::default().fg(WARN)));
        }
    }
    let reference = app
        .scenario_by_id(&run.scenario)
        .and_then(|e| e.scenario.target.response.clone());
    if let Some(r) = reference {
        lines.push(Line::raw(""));
        if app.show_reference {
            lines.push(Line::styled(
                "real reply ▾ (R hides)",
                Style::default().fg(GOOD).add_modifier(Modifier::BOLD),
            ));
            for l in text::wrap(&r, width) {
                lines.push(Line::styled(l, Style::default().fg(GOOD)));
            }
        } else {
            lines.push(Line::styled("real reply ▸ (R shows)", dim()));
        }
    }
}
