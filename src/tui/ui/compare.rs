//! Compare (`c`): one scenario under two or three configurations (prompt set and checkpoint)
//! side by side, and the blind rating of their replies (`b`).

use super::{dim, pane, spinner, ACCENT, BAD, GOOD, HUMAN, WARN};
use crate::tui::app::{App, Blind, RunStatus, SimRun};
use crate::tui::text;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

pub fn draw(f: &mut Frame, app: &App, body: Rect) {
    let c = &app.compare;
    let n = c.sides.len();
    let [config, main] =
        Layout::vertical([Constraint::Length(n as u16 + 3), Constraint::Min(0)]).areas(body);
    // The scenario and the sides' configurations.
    let scenario = c
        .scenario
        .clone()
        .or_else(|| app.selected_scenario().map(|e| e.scenario.id.clone()))
        .unwrap_or_else(|| "(select a scenario in Simulate)".into());
    let mut lines = vec![Line::from(vec![
        Span::styled("scenario ", dim()),
        Span::styled(scenario, Style::default().add_modifier(Modifier::BOLD)),
        Span::styled(
            format!(
                " · {} mode · seed {} · one sample per side",
                app.mode.name(),
                app.sampling.seed
            ),
            dim(),
        ),
    ])];
    let blind_hidden = c.blind.as_ref().is_some_and(|b| !b.revealed);
    for (i, s) in c.sides.iter().enumerate() {
        let selected = i == c.selected && c.blind.is_none();
        let hash = app
            .set_info(&s.set)
            .and_then(|x| x.hash.clone())
            .unwrap_or_default();
        let style = if selected {
            Style::default().fg(Color::Black).bg(ACCENT)
        } else {
            Style::default()
        };
        let body = if blind_hidden {
            "hidden until every reply is rated".to_string()
        } else {
            format!("{} · prompt set {} {hash}", s.checkpoint, s.set)
        };
        lines.push(Line::from(vec![
            Span::styled(
                format!(" {} ", letter(i)),
                style.add_modifier(Modifier::BOLD),
            ),
            Span::raw(" "),
            Span::raw(body),
        ]));
    }
    f.render_widget(
        Paragraph::new(lines).block(pane(" Compare ", c.blind.is_none())),
        config,
    );
    match &c.blind {
        Some(b) => draw_blind(f, app, main, b),
        None => draw_sides(f, app, main),
    }
}

fn status_span(app: &App, run: &SimRun) -> Span<'static> {
    match &run.status {
        RunStatus::Running if run.calls.is_empty() => {
            Span::styled(format!(" {} queued ", spinner(app)), dim())
        }
        RunStatus::Running => Span::styled(
            format!(
                " {} {} · {} ",
                spinner(app),
                run.current.clone().unwrap_or_default(),
                run.progress()
            ),
            Style::default().fg(GOOD),
        ),
        RunStatus::Done => Span::styled(
            format!(" ✓ {} tokens ", run.total_tokens()),
            Style::default().fg(GOOD),
        ),
        RunStatus::Cancelled => Span::styled(" cancelled ", Style::default().fg(WARN)),
        RunStatus::Failed(e) => Span::styled(format!(" ✗ {e} "), Style::default().fg(BAD)),
    }
}

fn draw_sides(f: &mut Frame, app: &App, area: Rect) {
    let c = &app.compare;
    if c.runs.is_empty() {
        f.render_widget(
            Paragraph::new(vec![
                Line::styled(
                    "Enter runs the scenario selected in Simulate under every side.",
                    dim(),
                ),
                Line::styled(
                    "↑↓ picks a side · ←→ its prompt set · [ ] its checkpoint · + adds a third side.",
                    dim(),
                ),
                Line::styled(
                    "Then b rates the replies blind: similarity to the real reply and humanlikeness, 1-10.",
                    dim(),
                ),
            ]),
            area,
        );
        return;
    }
    let cols = Layout::horizontal(vec![
        Constraint::Ratio(1, c.runs.len() as u32);
        c.runs.len()
    ])
    .split(area);
    for (i, (run, col)) in c.runs.iter().zip(cols.iter()).enumerate() {
        let title = format!(" {} · {} · {} ", letter(i), run.checkpoint, run.set);
        let block = pane(
            text::truncate(&title, col.width.saturating_sub(4) as usize),
            false,
        )
        .title_bottom(Line::from(status_span(app, run)));
        let inner = block.inner(*col);
        let w = inner.width as usize;
        let mut lines = vec![];
        if let Some(s) = run.samples.first() {
            if run.mode != crate::sim::Mode::Response {
                let lw = if w >= 50 { 13 } else { 6 };
                for key in app.dimensions() {
                    let v = text::state_text(run, s, &key).unwrap_or_default();
                    let label = format!("{:<lw$}", key.chars().take(lw).collect::<String>());
                    lines.push(Line::from(vec![
                        Span::styled(label, Style::default().fg(ACCENT)),
                        Span::raw(" "),
                        Span::raw(text::truncate(&v, w.saturating_sub(lw + 1))),
                    ]));
                }
                lines.push(Line::raw(""));
            }
            let (_, reply) = text::reply_text(run, s);
            for l in text::wrap(&reply, w) {
                lines.push(Line::raw(l));
            }
        }
        let height = inner.height as usize;
        let skip = lines.len().saturating_sub(height);
        let visible: Vec<Line> = lines.into_iter().skip(skip).collect();
        f.render_widget(block, *col);
        f.render_widget(Paragraph::new(visible), inner);
    }
}

fn draw_blind(f: &mut Frame, app: &App, area: Rect, b: &Blind) {
    let c = &app.compare;
    let reference = c
        .scenario
        .as_ref()
        .and_then(|id| app.scenario_by_id(id))
        .and_then(|e| e.scenario.target.response.clone());
    let ref_h = if b.revealed { 6 } else { 0 };
    let [cols_area, ref_area] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(ref_h)]).areas(area);
    let cols = Layout::horizontal(vec![
        Constraint::Ratio(1, b.order.len() as u32);
        b.order.len()
    ])
    .split(cols_area);
    for (i, (&side, col)) in b.order.iter().zip(cols.iter()).enumerate() {
        let run = &c.runs[side];
        let focused = i == b.focus && !b.revealed;
        let title = if b.revealed {
            format!(" {} = {} · {} ", letter(i), run.checkpoint, run.set)
        } else {
            format!(" {} ", letter(i))
        };
        let field = |k: usize, name: &str| -> Vec<Span<'static>> {
            let v = b.ratings[i][k].map_or(" ".to_string(), |v| v.to_string());
            let style = if focused && b.field == k {
                Style::default().fg(Color::Black).bg(ACCENT)
            } else {
                Style::default()
            };
            vec![
                Span::raw(format!(" {name} ")),
                Span::styled(format!("[{v}]"), style),
            ]
        };
        let mut bottom = field(0, "similarity");
        bottom.extend(field(1, "humanlike"));
        bottom.push(Span::raw(" "));
        let block = pane(
            text::truncate(&title, col.width.saturating_sub(4) as usize),
            focused,
        )
        .title_bottom(Line::from(bottom));
        let inner = block.inner(*col);
        let reply = run
            .samples
            .first()
            .map(|s| text::reply_text(run, s).1)
            .unwrap_or_default();
        let mut lines: Vec<Line> = text::wrap(&reply, inner.width as usize)
            .into_iter()
            .map(Line::raw)
            .collect();
        if reply.is_empty() {
            lines.push(Line::styled("(empty reply)", dim()));
        }
        lines.truncate(inner.height as usize);
        f.render_widget(block, *col);
        f.render_widget(Paragraph::new(lines), inner);
    }
    if b.revealed {
        let block = pane(" Real reply · ratings saved to runs/ratings.jsonl ", false);
        let inner = block.inner(ref_area);
        let lines: Vec<Line> = match &reference {
            Some(r) => text::wrap(r, inner.width as usize)
                .into_iter()
                .map(|l| Line::styled(l, Style::default().fg(HUMAN)))
                .collect(),
            None => vec![Line::styled("this scenario has no reference reply", dim())],
        };
        f.render_widget(block, ref_area);
        f.render_widget(Paragraph::new(lines), inner);
    }
}
