//! Eval (`e`): evaluation runs, the selected run's metrics with 95% intervals beside the run
//! before it, a per-dimension bar chart, diagnostics, live progress, and the samples.

use super::{dim, pane, spinner, ACCENT, BAD, GOOD, WARN};
use crate::eval::{CheckpointSummary, SampleRecord};
use crate::prompts::RESPONSE;
use crate::tui::app::{App, EvalProgress, RunDetail, TICKS_PER_S};
use crate::tui::text;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Gauge, Paragraph, Row, Table, TableState};
use ratatui::Frame;

pub fn draw(f: &mut Frame, app: &App, body: Rect) {
    draw_screen(f, app, body);
    if let Some(sel) = app.eval.picker {
        draw_picker(f, app, body, sel);
    }
}

/// The judge picker (`r`): every judge of `prompts/judges/` with its kind and what it runs on;
/// one that cannot run here says why instead of starting.
fn draw_picker(f: &mut Frame, app: &App, body: Rect, sel: usize) {
    let rows = app.eval.judges.as_deref().unwrap_or(&[]);
    let h = (rows.len() as u16 + 7).clamp(8, body.height);
    let r = super::centered(body, 96, h);
    f.render_widget(ratatui::widgets::Clear, r);
    let block = ratatui::widgets::Block::bordered()
        .border_style(Style::default().fg(ACCENT))
        .title(
            Line::from(format!(
                " Judge for an evaluation of {} over {} ",
                text::truncate(&app.checkpoint, 40),
                app.paths.scenarios.display()
            ))
            .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .title_bottom(Line::from(" ↑↓ choose · Enter start · Esc close ").right_aligned());
    let inner = block.inner(r);
    f.render_widget(block, r);
    if app.eval.judges.is_none() {
        f.render_widget(
            Paragraph::new(Line::styled(
                format!("{} reading prompts/judges/…", spinner(app)),
                dim(),
            )),
            inner,
        );
        return;
    }
    if rows.is_empty() {
        f.render_widget(
            Paragraph::new(Line::styled(
                "no judge files in prompts/judges/ (*.toml)",
                Style::default().fg(WARN),
            )),
            inner,
        );
        return;
    }
    let [list, why] = Layout::vertical([Constraint::Min(1), Constraint::Length(2)]).areas(inner);
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|j| {
            Row::new(vec![
                Cell::from(j.name.clone()),
                Cell::from(j.kind.clone()),
                Cell::from(j.detail.clone()),
                Cell::from(match &j.unavailable {
                    None => Span::styled("ready", Style::default().fg(GOOD)),
                    Some(_) => Span::styled("unavailable", Style::default().fg(BAD)),
                }),
            ])
        })
        .collect();
    let table = Table::new(
        table_rows,
        [
            Constraint::Length(16),
            Constraint::Length(10),
            Constraint::Min(10),
            Constraint::Length(11),
        ],
    )
    .header(
        Row::new(vec!["JUDGE", "KIND", "RUNS ON", ""])
            .style(Style::default().fg(ACCENT).add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(Style::default().bg(ACCENT).fg(Color::Black));
    let mut state = TableState::default().with_selected(Some(sel));
    f.render_stateful_widget(table, list, &mut state);
    let line = match rows.get(sel).and_then(|j| j.unavailable.as_ref()) {
        Some(w) => Line::styled(format!("✗ {w}"), Style::default().fg(BAD)),
        None => Line::styled(
            "scores every reply (and each state in humanlm mode) against the real reply",
            dim(),
        ),
    };
    f.render_widget(
        Paragraph::new(line).wrap(ratatui::widgets::Wrap { trim: true }),
        why,
    );
}

fn draw_screen(f: &mut Frame, app: &App, body: Rect) {
    let progress_h = u16::from(app.eval.progress.is_some());
    let [progress, rest] =
        Layout::vertical([Constraint::Length(progress_h), Constraint::Min(0)]).areas(body);
    if let Some(p) = &app.eval.progress {
        draw_progress(f, app, progress, p);
    }
    if let (Some(sel), Some(d)) = (app.eval.drill, &app.eval.detail) {
        draw_drill(f, rest, d, sel);
        return;
    }
    let runs_h = (app.eval.runs.len() as u16 + 3).clamp(4, rest.height / 2);
    let [runs, detail] =
        Layout::vertical([Constraint::Length(runs_h), Constraint::Min(0)]).areas(rest);
    draw_runs(f, app, runs);
    draw_detail(f, app, detail);
}

fn draw_progress(f: &mut Frame, app: &App, area: Rect, p: &EvalProgress) {
    let ratio = if p.total > 0 {
        p.done as f64 / p.total as f64
    } else {
        0.0
    };
    let fresh = p.done.saturating_sub(p.resumed);
    let eta = match p.first_done {
        Some(_) if fresh > 0 => {
            let elapsed = app.tick.saturating_sub(p.started) as f64 / TICKS_PER_S as f64;
            let left = p.total.saturating_sub(p.done) as f64 * elapsed / fresh as f64;
            format!(" · ETA {}", text::duration(left))
        }
        _ => String::new(),
    };
    let label = format!(
        "{} {}/{} scenarios{eta} · {} · Esc cancels (r resumes)",
        spinner(app),
        p.done,
        p.total,
        p.current
    );
    f.render_widget(
        Gauge::default()
            .ratio(ratio.clamp(0.0, 1.0))
            .label(label)
            .gauge_style(Style::default().fg(ACCENT).bg(Color::DarkGray)),
        area,
    );
}

fn draw_runs(f: &mut Frame, app: &App, area: Rect) {
    let block = pane(
        format!(" Runs · {} ", app.paths.runs.display()),
        app.eval.drill.is_none(),
    );
    if app.eval.runs.is_empty() {
        let msg = if app.eval.scanned {
            "no evaluation runs yet: r chooses a judge and starts one over scenarios/"
        } else {
            "reading runs…"
        };
        f.render_widget(Paragraph::new(Line::styled(msg, dim())).block(block), area);
        return;
    }
    let rows: Vec<Row> = app
        .eval
        .runs
        .iter()
        .map(|r| {
            let resp: Vec<String> = r.response.values().map(|v| format!("{v:.1}")).collect();
            Row::new(vec![
                Cell::from(
                    r.created
                        .replace('T', " ")
                        .trim_end_matches('Z')
                        .to_string(),
                ),
                Cell::from(r.checkpoints.join("+")),
                Cell::from(r.mode.clone()),
                Cell::from(r.judge.clone()),
                Cell::from(r.samples.to_string()),
                Cell::from(resp.join(" ")),
                Cell::from(if r.complete {
                    Span::raw("")
                } else {
                    Span::styled("incomplete", Style::default().fg(WARN))
                }),
            ])
        })
        .collect();
    let header = Row::new(vec![
        "CREATED",
        "CHECKPOINT",
        "MODE",
        "JUDGE",
        "SAMPLES",
        "RESPONSE",
        "",
    ])
    .style(Style::default().fg(ACCENT).add_modifier(Modifier::BOLD));
    let table = Table::new(
        rows,
        [
            Constraint::Length(19),
            Constraint::Min(16),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(10),
        ],
    )
    .header(header)
    .block(block)
    .row_highlight_style(Style::default().bg(ACCENT).fg(Color::Black));
    let mut state = TableState::default().with_selected(Some(app.eval.selected));
    f.render_stateful_widget(table, area, &mut state);
}

fn first(summary: &crate::eval::Summary) -> Option<&CheckpointSummary> {
    summary.checkpoints.first()
}

fn draw_detail(f: &mut Frame, app: &App, area: Rect) {
    let Some(d) = &app.eval.detail else {
        if !app.eval.runs.is_empty() {
            f.render_widget(
                Paragraph::new(Line::styled("reading the run…", dim())).block(pane(" Run ", false)),
                area,
            );
        }
        return;
    };
    let Some(cur) = d.summary.as_ref().and_then(first) else {
        f.render_widget(
            Paragraph::new(Line::styled(
                "this run has no summary yet (it did not finish): r resumes it",
                dim(),
            ))
            .block(pane(" Run ", false)),
            area,
        );
        return;
    };
    let prev = d
        .prev
        .as_ref()
        .and_then(|(name, s)| first(s).map(|c| (name, c)));
    let [main, diag] = Layout::vertical([Constraint::Min(0), Constraint::Length(4)]).areas(area);
    let [table_area, chart_area] =
        Layout::horizontal([Constraint::Percentage(52), Constraint::Percentage(48)]).areas(main);

    // Metrics with intervals and the change since the previous run.
    let keys = crate::eval::metrics_in_order(&cur.metrics, &cur.dimensions);
    let rows: Vec<Row> = keys
        .iter()
        .map(|k| {
            let m = &cur.metrics[*k];
            let delta = prev
                .and_then(|(_, p)| p.metrics.get(*k))
                .map(|p| {
                    let d = m.mean - p.mean;
                    Span::styled(
                        format!("{d:+.1}"),
                        Style::default().fg(if d >= 0.0 { GOOD } else { BAD }),
                    )
                })
                .unwrap_or_else(|| Span::raw(""));
            Row::new(vec![
                Cell::from(k.to_string()),
                Cell::from(format!("{:.1}", m.mean)),
                Cell::from(format!("{:.1}–{:.1}", m.ci95[0], m.ci95[1])),
                Cell::from(delta),
            ])
        })
        .collect();
    let title = format!(
        " {} · {} scenarios · ×100, 95% CI ",
        cur.checkpoint, cur.n_scenarios
    );
    let table = Table::new(
        rows,
        [
            Constraint::Min(13),
            Constraint::Length(5),
            Constraint::Length(11),
            Constraint::Length(6),
        ],
    )
    .header(
        Row::new(vec!["METRIC", "MEAN", "95% CI", "Δ PREV"])
            .style(Style::default().fg(ACCENT).add_modifier(Modifier::BOLD)),
    )
    .block(pane(
        text::truncate(&title, table_area.width.saturating_sub(4) as usize),
        false,
    ));
    f.render_widget(table, table_area);

    // Per-dimension bars: this run, and the previous one beneath in grey.
    let block = pane(
        match prev {
            Some(_) => " By dimension (▒ the run before) ",
            None => " By dimension ",
        },
        false,
    );
    let inner = block.inner(chart_area);
    let bar_w = (inner.width as usize).saturating_sub(14 + 6).max(4);
    let mut lines = vec![];
    for k in &cur.judged() {
        let Some(m) = cur.metrics.get(k) else {
            continue;
        };
        let cells = |v: f64| ((v / 100.0).clamp(0.0, 1.0) * bar_w as f64).round() as usize;
        lines.push(Line::from(vec![
            Span::styled(format!("{k:<14}"), Style::default().fg(ACCENT)),
            Span::styled("█".repeat(cells(m.mean)), Style::default().fg(GOOD)),
            Span::raw(format!(" {:.1}", m.mean)),
        ]));
        if let Some(p) = prev.and_then(|(_, p)| p.metrics.get(k)) {
            lines.push(Line::from(vec![
                Span::raw(" ".repeat(14)),
                Span::styled("▒".repeat(cells(p.mean)), dim()),
                Span::styled(format!(" {:.1}", p.mean), dim()),
            ]));
        }
    }
    if lines.is_empty() {
        lines.push(Line::styled("no per-dimension scores in this run", dim()));
    }
    f.render_widget(block, chart_area);
    f.render_widget(Paragraph::new(lines), inner);

    let g = &cur.diagnostics;
    let diag_line = Line::from(vec![
        Span::raw(format!(
            "format valid {:.0}% · length ×{:.2} of the real reply · distinct-2 {:.2} · assistant-speak {:.0}% · context copy {:.0}% · judge failures {} · {} samples",
            g.valid_rate * 100.0,
            g.length_ratio,
            g.distinct_2,
            g.assistant_speak_rate * 100.0,
            g.context_copy_rate * 100.0,
            g.judge_failures,
            g.samples
        )),
    ]);
    f.render_widget(
        Paragraph::new(diag_line)
            .wrap(ratatui::widgets::Wrap { trim: true })
            .block(pane(" Diagnostics · Enter: samples ", false)),
        diag,
    );
}

/// The samples of the run, worst reply first.
pub fn sorted(d: &RunDetail) -> Vec<&SampleRecord> {
    let mut v: Vec<&SampleRecord> = d.samples.iter().collect();
    let score = |r: &SampleRecord| r.scores.get(RESPONSE).map_or(0.0, |s| s.score);
    v.sort_by(|a, b| {
        score(a)
            .total_cmp(&score(b))
            .then(a.scenario.cmp(&b.scenario))
    });
    v
}

fn draw_drill(f: &mut Frame, area: Rect, d: &RunDetail, sel: usize) {
    let samples = sorted(d);
    let [list, detail] =
        Layout::horizontal([Constraint::Length(40), Constraint::Min(0)]).areas(area);
    let rows: Vec<Row> = samples
        .iter()
        .map(|r| {
            let s = r.scores.get(RESPONSE).map_or(0.0, |s| s.score);
            Row::new(vec![
                Cell::from(Span::styled(
                    format!("{:>5.1}", s * 100.0),
                    Style::default().fg(super::simulate::score_color(s)),
                )),
                Cell::from(format!("{}#{}", r.scenario, r.sample)),
            ])
        })
        .collect();
    let table = Table::new(rows, [Constraint::Length(6), Constraint::Min(10)])
        .header(
            Row::new(vec!["SCORE", "SAMPLE"])
                .style(Style::default().fg(ACCENT).add_modifier(Modifier::BOLD)),
        )
        .block(pane(" Samples · worst reply first ", true))
        .row_highlight_style(Style::default().bg(ACCENT).fg(Color::Black));
    let mut state = TableState::default().with_selected(Some(sel));
    f.render_stateful_widget(table, list, &mut state);

    let Some(r) = samples.get(sel) else {
        return;
    };
    let block = pane(
        format!(" {} · {} · sample {} ", r.scenario, r.domain, r.sample),
        false,
    );
    let inner = block.inner(detail);
    let w = inner.width as usize;
    let mut lines = vec![];
    for (k, v) in &r.sim.states {
        let score = r
            .scores
            .get(k)
            .map(|s| format!(" {:.0}", s.score * 100.0))
            .unwrap_or_default();
        lines.push(Line::from(vec![
            Span::styled(format!("{k:<14}"), Style::default().fg(ACCENT)),
            Span::raw(text::truncate(v, w.saturating_sub(19))),
            Span::styled(score, dim()),
        ]));
    }
    if !r.sim.states.is_empty() {
        lines.push(Line::raw(""));
    }
    lines.push(Line::styled(
        "reply",
        Style::default().fg(ACCENT).add_modifier(Modifier::BOLD),
    ));
    lines.extend(text::wrap(&r.sim.response, w).into_iter().map(Line::raw));
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        "real reply",
        Style::default().fg(GOOD).add_modifier(Modifier::BOLD),
    ));
    lines.extend(
        text::wrap(&r.reference, w)
            .into_iter()
            .map(|l| Line::styled(l, Style::default().fg(GOOD))),
    );
    lines.push(Line::raw(""));
    let sims: Vec<String> = r
        .similarity
        .iter()
        .map(|(k, v)| format!("{k} {:.0}", v * 100.0))
        .collect();
    lines.push(Line::styled(
        format!(
            "{} · {} · {} tokens · {} ms{}{}",
            if r.sim.valid {
                "valid format"
            } else {
                "invalid format"
            },
            sims.join(" · "),
            r.sim.tokens,
            r.sim.ms,
            if r.assistant_speak {
                " · assistant-speak"
            } else {
                ""
            },
            if r.context_copy {
                " · copies the context"
            } else {
                ""
            },
        ),
        dim(),
    ));
    for (k, s) in &r.scores {
        if let Some(e) = &s.error {
            lines.push(Line::styled(
                format!("{k}: judge failed: {e}"),
                Style::default().fg(BAD),
            ));
        }
    }
    f.render_widget(block, detail);
    f.render_widget(
        Paragraph::new(lines).wrap(ratatui::widgets::Wrap { trim: false }),
        inner,
    );
}
