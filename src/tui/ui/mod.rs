//! Rendering: a pure function of the state. One module per screen; this one draws the header,
//! the status bar, the key hints and the popups every screen shares.

pub mod checkpoints;
pub mod compare;
pub mod converse;
pub mod eval;
pub mod help;
pub mod prompt_view;
pub mod prompts;
pub mod simulate;
pub mod train;

use super::app::{App, JobKind, JudgeState, Level, RunStatus, Screen};
use super::text;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};
use ratatui::Frame;

pub const ACCENT: Color = Color::Cyan;
pub const HUMAN: Color = Color::LightMagenta;
pub const DIM: Color = Color::DarkGray;
pub const WARN: Color = Color::Yellow;
pub const BAD: Color = Color::LightRed;
pub const GOOD: Color = Color::Green;

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

pub fn spinner(app: &App) -> &'static str {
    SPINNER[(app.tick % SPINNER.len() as u64) as usize]
}

pub fn dim() -> Style {
    Style::default().fg(DIM)
}

/// A bordered pane whose border shows whether it has the focus.
pub fn pane<'a>(title: impl Into<Line<'a>>, focused: bool) -> Block<'a> {
    let style = if focused {
        Style::default().fg(ACCENT)
    } else {
        Style::default().fg(Color::Gray)
    };
    Block::bordered()
        .border_style(style)
        .title(title.into().style(if focused {
            Style::default().fg(ACCENT).add_modifier(Modifier::BOLD)
        } else {
            Style::default().add_modifier(Modifier::BOLD)
        }))
}

/// The body of the screen: everything between the header and the two status lines.
pub fn body_rect(app: &App) -> Rect {
    let (w, h) = app.size;
    Rect::new(0, 1, w, h.saturating_sub(3))
}

/// Draw the whole frame.
pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    let [header, body, status, hints] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(f, app, header);
    match app.screen {
        Screen::Simulate => simulate::draw(f, app, body),
        Screen::PromptView => prompt_view::draw(f, app, body),
        Screen::Checkpoints => checkpoints::draw(f, app, body),
        Screen::Prompts => prompts::draw(f, app, body),
        Screen::Compare => compare::draw(f, app, body),
        Screen::Converse => converse::draw(f, app, body),
        Screen::Eval => eval::draw(f, app, body),
        Screen::Train => train::draw(f, app, body),
    }
    draw_status(f, app, status);
    draw_hints(f, app, hints);
    if let Some(scroll) = app.help {
        help::draw(f, app, body, scroll);
    }
    if let Some(e) = &app.error {
        draw_error(f, area, e);
    }
}

fn draw_header(f: &mut Frame, app: &App, area: Rect) {
    // The tabs in full, or (when the checkpoint would not fit beside them) the other tabs in
    // short; without room for the checkpoint either way, in full.
    let right = model_status(app);
    let rw = right.width() as u16;
    let full = tab_line(app, false);
    let short = tab_line(app, true);
    let (left, right) = if full.width() as u16 + rw < area.width {
        (full, Some(right))
    } else if short.width() as u16 + rw < area.width {
        (short, Some(right))
    } else {
        (full, None)
    };
    f.render_widget(Paragraph::new(left), area);
    if let Some(right) = right {
        let r = Rect::new(area.x + area.width - rw, area.y, rw, 1);
        f.render_widget(Paragraph::new(right), r);
    }
}

/// The name, then a tab per screen (the current one in full and highlighted).
fn tab_line(app: &App, short: bool) -> Line<'static> {
    let mut spans = vec![Span::styled(
        " humanlm ",
        Style::default()
            .fg(Color::Black)
            .bg(ACCENT)
            .add_modifier(Modifier::BOLD),
    )];
    let current = match app.screen {
        Screen::PromptView => Screen::Simulate,
        s => s,
    };
    for (i, s) in Screen::TABS.iter().enumerate() {
        if i > 0 {
            spans.push(Span::styled("│", dim()));
        }
        spans.push(if *s == current {
            Span::styled(
                format!(" {} ", s.title()),
                Style::default()
                    .fg(ACCENT)
                    .add_modifier(Modifier::BOLD | Modifier::REVERSED),
            )
        } else if short {
            Span::raw(format!(" {} ", s.short_title()))
        } else {
            Span::raw(format!(" {} ", s.title()))
        });
    }
    if app.screen == Screen::PromptView {
        spans.push(Span::styled(" › prompt view ", Style::default().fg(ACCENT)));
    }
    Line::from(spans)
}

/// The checkpoint and device in the header.
fn model_status(app: &App) -> Line<'static> {
    let mut spans = vec![];
    if let Some((name, since)) = &app.model.loading {
        let secs = app.tick.saturating_sub(*since) as f64 / super::app::TICKS_PER_S as f64;
        spans.push(Span::styled(
            format!("{} loading {name} {secs:.0} s ", spinner(app)),
            Style::default().fg(WARN),
        ));
    }
    match &app.model.loaded {
        Some(m) => {
            spans.push(Span::styled(
                m.name.clone(),
                Style::default().add_modifier(Modifier::BOLD),
            ));
            if let Some(q) = &m.quantized_on_load {
                spans.push(Span::styled(format!(" · {q}"), dim()));
            }
            spans.push(Span::styled(format!(" · {} ", m.device), dim()));
        }
        None if app.model.loading.is_none() => {
            spans.push(Span::styled(
                "no checkpoint loaded (m) ",
                Style::default().fg(BAD),
            ));
        }
        None => {}
    }
    Line::from(spans)
}

fn draw_status(f: &mut Frame, app: &App, area: Rect) {
    // What runs comes first; the settings take what is left, in full or in short.
    let left = activity_line(app);
    let room = (area.width as usize).saturating_sub(left.width() + 2);
    let right = [settings_line(app), short_settings_line(app)]
        .into_iter()
        .find(|l| l.width() <= room)
        .unwrap_or_default();
    let rw = right.width() as u16;
    let [l, r] = Layout::horizontal([Constraint::Min(0), Constraint::Length(rw)]).areas(area);
    f.render_widget(Paragraph::new(left), l);
    f.render_widget(Paragraph::new(right), r);
}

fn short_settings_line(app: &App) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("n {} · ", app.sampling.n), dim()),
        Span::styled(app.mode.name().to_string(), Style::default().fg(ACCENT)),
        Span::styled(" · ", dim()),
        Span::raw(format!("{} ", app.set)),
    ])
}

/// Judge, seed, samples, mode and prompt set: what the next run will use.
fn settings_line(app: &App) -> Line<'static> {
    let judge = match &app.judge {
        JudgeState::Ready(_) => "judge embedding".to_string(),
        JudgeState::Loading => "judge loading".to_string(),
        JudgeState::Missing(_) => "no judge".to_string(),
    };
    let hash = app
        .set_info(&app.set)
        .and_then(|s| s.hash.clone())
        .unwrap_or_else(|| "?".into());
    Line::from(vec![
        Span::styled(
            format!(
                "{judge} · seed {} · n {} · ",
                app.sampling.seed, app.sampling.n
            ),
            dim(),
        ),
        Span::styled(app.mode.name().to_string(), Style::default().fg(ACCENT)),
        Span::styled(" · set ", dim()),
        Span::raw(app.set.clone()),
        Span::styled(format!(" {hash} "), dim()),
    ])
}

/// What is running (with its speed), else the last message, else the last run's summary.
fn activity_line(app: &App) -> Line<'static> {
    if let Some((level, msg, _)) = &app.message {
        if *level == Level::Error || app.jobs.is_empty() {
            let style = match level {
                Level::Error => Style::default().fg(BAD),
                Level::Info => Style::default(),
            };
            return Line::from(Span::styled(format!(" {msg}"), style));
        }
    }
    let spin = spinner(app);
    if let Some(run) = app.sim.as_ref().filter(|r| r.running()) {
        if run.calls.is_empty() {
            let what = if app.model.loaded.is_none() {
                format!("waiting for {} to load", app.checkpoint)
            } else {
                "preparing the prompts".to_string()
            };
            return Line::from(format!(" {spin} {what} · Esc cancel"));
        }
        let current = run.current.clone().unwrap_or_else(|| "…".into());
        return Line::from(vec![
            Span::styled(format!(" {spin} generating "), Style::default().fg(GOOD)),
            Span::styled(current, Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                " ({}/{}) · {}",
                run.calls.len(),
                run.expected_calls.max(run.calls.len()),
                run.progress()
            )),
            Span::styled(" · Esc cancel", dim()),
        ]);
    }
    if let Some((_, b)) = app.converse.job {
        let turn = app.converse.stream.as_ref().map(|s| {
            let who = match s.speaker {
                Some(crate::scenario::Speaker::Assistant) => "the assistant",
                _ => "HUMAN",
            };
            format!(" · turn {} · {who} writing", s.index + 1)
        });
        return Line::from(vec![
            Span::styled(format!(" {spin} conversing "), Style::default().fg(GOOD)),
            Span::raw(format!("branch {}{}", b + 1, turn.unwrap_or_default())),
            Span::styled(" · Esc stops (on Converse)", dim()),
        ]);
    }
    if let Some(p) = &app.eval.progress {
        return Line::from(format!(
            " {spin} evaluating {}/{} · {} · Esc cancel (on Eval)",
            p.done, p.total, p.current
        ));
    }
    if app.job(JobKind::Compare).is_some() {
        return Line::from(format!(" {spin} comparing · Esc cancel (on Compare)"));
    }
    if let Some(run) = app.train.run.as_ref().filter(|r| r.running()) {
        let step = run.events.last().map_or(0, |e| e.step);
        let what = if run.stopping {
            "stopping (saving a checkpoint)".to_string()
        } else {
            format!("step {step}/{} · Esc stops (on Train)", run.steps)
        };
        return Line::from(format!(
            " {spin} training {} {} · {what}",
            run.method.name(),
            run.name
        ));
    }
    if app.screen == Screen::Converse {
        if let Some(end) = app.converse.current().and_then(|b| b.end.as_ref()) {
            let style = match end.reason {
                crate::converse::EndReason::Error => Style::default().fg(BAD),
                crate::converse::EndReason::Cancelled | crate::converse::EndReason::Context => {
                    Style::default().fg(WARN)
                }
                _ => Style::default().fg(GOOD),
            };
            return Line::from(Span::styled(format!(" conversation ended: {end}"), style));
        }
    }
    if let Some(run) = &app.sim {
        let secs = run.finished.unwrap_or(app.tick).saturating_sub(run.started) as f64
            / super::app::TICKS_PER_S as f64;
        return match &run.status {
            RunStatus::Done => {
                let valid = run.samples.iter().all(|s| s.valid() == Some(true));
                let mut spans = vec![
                    Span::styled(" ✓ done", Style::default().fg(GOOD)),
                    Span::raw(format!(
                        " · {} · {} calls · {} tokens · {}",
                        run.scenario,
                        run.calls.len(),
                        run.total_tokens(),
                        text::duration(secs)
                    )),
                ];
                if run.dropped_turns > 0 {
                    spans.push(Span::styled(
                        format!(" · {} old turns dropped to fit", run.dropped_turns),
                        Style::default().fg(WARN),
                    ));
                }
                spans.push(if valid {
                    Span::styled(" · valid format", Style::default().fg(GOOD))
                } else {
                    Span::styled(
                        " · invalid format (the model broke the tags)",
                        Style::default().fg(WARN),
                    )
                });
                Line::from(spans)
            }
            RunStatus::Cancelled => Line::from(Span::styled(
                format!(" cancelled · {}", run.scenario),
                Style::default().fg(WARN),
            )),
            RunStatus::Failed(e) => {
                Line::from(Span::styled(format!(" ✗ {e}"), Style::default().fg(BAD)))
            }
            RunStatus::Running => Line::from(""),
        };
    }
    Line::from(Span::styled(
        " ready · Enter simulates the selected scenario",
        dim(),
    ))
}

fn draw_hints(f: &mut Frame, app: &App, area: Rect) {
    let hints: &[(&str, &str)] = match app.screen {
        Screen::Simulate if app.browser.filtering => &[
            ("type", "filter"),
            ("↑↓", "choose"),
            ("Enter", "simulate"),
            ("Esc", "clear"),
        ],
        Screen::Simulate => &[
            ("?", "help"),
            ("q", "quit"),
            ("Enter", "simulate"),
            ("r", "regen"),
            ("n", "samples"),
            ("M", "mode"),
            ("/", "filter"),
            ("Tab", "pane"),
            ("v", "prompt"),
            ("m", "models"),
            ("p", "prompts"),
            ("c", "compare"),
            ("e", "eval"),
            ("t", "train"),
        ],
        Screen::PromptView => &[
            ("Tab", "next call"),
            ("↑↓", "scroll"),
            ("i", "token ids"),
            ("Esc", "back"),
            ("?", "help"),
        ],
        Screen::Checkpoints if app.ckpts.form.is_some() => &[
            ("type", "value"),
            ("Tab", "field"),
            ("Enter", "add"),
            ("Esc", "cancel"),
        ],
        Screen::Checkpoints => &[
            ("Enter", "load"),
            ("a", "add endpoint"),
            ("x", "remove endpoint"),
            ("r", "rescan"),
            ("Esc", "back"),
            ("?", "help"),
        ],
        Screen::Prompts if app.prompts.diff.is_some() => {
            &[("↑↓", "scroll"), ("Esc", "close the diff")]
        }
        Screen::Prompts => &[
            ("Enter", "use set / edit file"),
            ("a", "mark A"),
            ("d", "diff"),
            ("←→", "column"),
            ("Esc", "back"),
            ("?", "help"),
        ],
        Screen::Compare if app.compare.blind.is_some() => &[
            ("←→", "reply"),
            ("Tab", "field"),
            ("1-9 0", "score"),
            ("Enter", "reveal"),
            ("Esc", "leave"),
        ],
        Screen::Compare => &[
            ("Enter", "run"),
            ("↑↓", "side"),
            ("←→", "prompt set"),
            ("[ ]", "checkpoint"),
            ("+ -", "sides"),
            ("b", "blind"),
            ("Esc", "back"),
        ],
        Screen::Converse if app.converse.edit.is_some() => &[
            ("type", "text"),
            ("Backspace", "delete"),
            ("Enter", "keep as a branch"),
            ("Esc", "drop"),
        ],
        Screen::Converse if app.converse.prompt.is_some() => {
            &[("Tab", "next call"), ("↑↓", "scroll"), ("Esc", "close")]
        }
        Screen::Converse if app.converse.running() => &[
            ("Esc", "stop"),
            ("↑↓", "turn"),
            ("Tab", "branches"),
            ("v", "prompt"),
            ("?", "help"),
        ],
        Screen::Converse => &[
            ("Enter", "go on"),
            ("N", "new"),
            ("↑↓", "turn"),
            ("F", "fork"),
            ("e/E", "edit"),
            ("v", "prompt"),
            ("[ ]", "assistant"),
            ("+ -", "turns"),
            ("Tab", "branches"),
            ("Esc", "back"),
        ],
        Screen::Eval if app.eval.drill.is_some() => &[("↑↓", "sample"), ("Esc", "back to runs")],
        Screen::Eval if app.eval.picker.is_some() => &[
            ("↑↓", "judge"),
            ("Enter", "start"),
            ("R", "reread"),
            ("Esc", "close"),
        ],
        Screen::Eval => &[
            ("r", "run eval"),
            ("Enter", "samples"),
            ("↑↓", "run"),
            ("R", "rescan"),
            ("Esc", "cancel/back"),
        ],
        Screen::Train if app.train.form.editing => &[
            ("type", "value"),
            ("Backspace", "delete"),
            ("Enter", "done"),
        ],
        Screen::Train if app.train.show_run && app.train.run.is_some() => {
            match app.train.run.as_ref().map(|r| &r.status) {
                Some(super::app::TrainStatus::Running) => &[
                    ("Esc", "stop (saves a checkpoint)"),
                    ("f", "form"),
                    ("?", "help"),
                ],
                _ => &[
                    ("L", "use the adapter"),
                    ("Enter", "new pass"),
                    ("r", "run again"),
                    ("Esc", "back"),
                ],
            }
        }
        Screen::Train => &[
            ("↑↓", "field"),
            ("←→", "choose"),
            ("Enter", "edit"),
            ("r", "start"),
            ("f", "run view"),
            ("Esc", "back"),
        ],
    };
    let mut spans = vec![Span::raw(" ")];
    for (k, what) in hints {
        spans.push(Span::styled(
            *k,
            Style::default().fg(ACCENT).add_modifier(Modifier::BOLD),
        ));
        spans.push(Span::raw(format!(" {what} ")));
        spans.push(Span::styled("· ", dim()));
    }
    spans.pop();
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// A rectangle of `w`×`h` centred in `area` (clipped to it).
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn draw_error(f: &mut Frame, area: Rect, e: &str) {
    let w = (text::width(e) as u16 + 4).clamp(30, area.width.saturating_sub(4).max(30));
    let lines = text::wrap(e, w.saturating_sub(2) as usize).len() as u16;
    let r = centered(area, w, lines + 3);
    f.render_widget(Clear, r);
    let block = Block::bordered()
        .border_style(Style::default().fg(BAD))
        .title(" Error ".bold())
        .title_bottom(Line::from(" any key closes ").right_aligned());
    f.render_widget(
        Paragraph::new(e.to_string())
            .wrap(Wrap { trim: false })
            .block(block),
        r,
    );
}

/// Record a scrollable area's size for the update logic, and bound its scroll position.
pub fn extent(app: &App, name: &'static str, total: usize, height: usize, pos: usize) -> usize {
    app.caches
        .borrow_mut()
        .extents
        .insert(name, (total, height));
    pos.min(total.saturating_sub(height))
}

/// A vertical scrollbar on the right edge of `area` when `total` exceeds `height`.
pub fn scrollbar(f: &mut Frame, area: Rect, total: usize, height: usize, pos: usize) {
    if total <= height || area.height < 3 {
        return;
    }
    let mut state =
        ratatui::widgets::ScrollbarState::new(total.saturating_sub(height)).position(pos);
    // On the right border, between the corners.
    f.render_stateful_widget(
        ratatui::widgets::Scrollbar::new(ratatui::widgets::ScrollbarOrientation::VerticalRight)
            .begin_symbol(None)
            .end_symbol(None)
            .track_symbol(Some("│"))
            .thumb_symbol("┃"),
        area.inner(ratatui::layout::Margin {
            vertical: 1,
            horizontal: 0,
        }),
        &mut state,
    );
}
