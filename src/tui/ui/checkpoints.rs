//! Checkpoints (`m`): every checkpoint with its metadata, adapters under their base, and the
//! endpoints of `checkpoints/endpoints.toml`; Enter loads one in the background (an endpoint is
//! asked for its models) and Simulate switches to it when it is ready; `a` adds an endpoint.

use super::{centered, dim, pane, spinner, ACCENT, BAD, GOOD, WARN};
use crate::tui::app::{App, EndpointForm, ENDPOINT_FIELDS, TICKS_PER_S};
use crate::tui::text;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

/// `135M`, `1.5B`.
pub fn params(n: u64) -> String {
    match n {
        0 => "?".into(),
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.0}M", n as f64 / 1e6),
        n => format!("{:.0}K", n as f64 / 1e3),
    }
}

/// `86 MB`, `1.2 GB`.
pub fn bytes(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.1} GB", n as f64 / 1e9)
    } else {
        format!("{:.0} MB", n as f64 / 1e6)
    }
}

/// The columns shown: all, or without DTYPE and SIZE when narrow.
fn keep<T>(cols: Vec<T>, narrow: bool) -> Vec<T> {
    cols.into_iter()
        .enumerate()
        .filter(|(i, _)| !narrow || (*i != 4 && *i != 6))
        .map(|(_, c)| c)
        .collect()
}

pub fn draw(f: &mut Frame, app: &App, body: Rect) {
    let [list, detail] = Layout::vertical([Constraint::Min(5), Constraint::Length(6)]).areas(body);
    let block = pane(
        format!(" Checkpoints · {} ", app.paths.checkpoints.display()),
        true,
    );
    if app.ckpts.rows.is_empty() {
        let msg = if app.ckpts.scanned {
            format!(
                "no checkpoints in {} (scripts/fetch-checkpoints.sh fetches the defaults)",
                app.paths.checkpoints.display()
            )
        } else {
            format!("{} reading checkpoints…", spinner(app))
        };
        f.render_widget(Paragraph::new(Line::styled(msg, dim())).block(block), list);
        if let Some(form) = &app.ckpts.form {
            draw_form(f, body, form);
        }
        return;
    }
    // Narrow terminals leave out the dtype and size (the details below show them).
    let narrow = body.width < 110;
    let loaded = app.model.loaded.as_ref().map(|m| m.name.as_str());
    let loading = app.model.loading.as_ref().map(|(n, _)| n.as_str());
    let rows: Vec<Row> = app
        .ckpts
        .rows
        .iter()
        .map(|r| {
            let name = format!("{}{}", if r.depth > 0 { "  └ " } else { "" }, r.label());
            let state = if loaded == Some(r.name.as_str()) {
                Span::styled("● loaded", Style::default().fg(GOOD))
            } else if r.unsupported().is_some() {
                Span::styled("(embedder)", dim())
            } else if loading.is_some_and(|l| l == r.name || r.path.ends_with(l)) {
                Span::styled(
                    format!("{} loading", spinner(app)),
                    Style::default().fg(WARN),
                )
            } else {
                Span::raw("")
            };
            if let Some(e) = &r.endpoint {
                let key = e
                    .api_key_env
                    .as_ref()
                    .map_or_else(|| "no key".to_string(), |v| format!("${v}"));
                return Row::new(keep(
                    vec![
                        Cell::from(name),
                        Cell::from("http"),
                        Cell::from("remote"),
                        Cell::from("—"),
                        Cell::from(key),
                        Cell::from("—"),
                        Cell::from("—"),
                        Cell::from(crate::prompts::DEFAULT_SET),
                        Cell::from(Line::from(state)),
                    ],
                    narrow,
                ));
            }
            match (&r.info, &r.error) {
                (Some(i), _) => Row::new(keep(
                    vec![
                        Cell::from(name),
                        Cell::from(i.format.clone()),
                        Cell::from(i.architecture.clone()),
                        Cell::from(params(i.parameters)),
                        Cell::from(text::truncate(&i.dtype, 22)),
                        Cell::from(i.context_length.to_string()),
                        Cell::from(bytes(i.size_bytes)),
                        Cell::from(match r.unsupported() {
                            Some(_) => "—".to_string(),
                            None => crate::prompts::set_for(None, r.default_set.clone()),
                        }),
                        Cell::from(Line::from(state)),
                    ],
                    narrow,
                )),
                // The whole error is in the details below.
                (None, _) => Row::new(vec![
                    Cell::from(Line::from(vec![
                        Span::raw(name),
                        Span::styled(" ✗ unreadable", Style::default().fg(BAD)),
                    ])),
                    Cell::from("?"),
                ]),
            }
        })
        .collect();
    let header = Row::new(keep(
        vec![
            "NAME", "FORMAT", "ARCH", "PARAMS", "DTYPE", "CONTEXT", "SIZE", "PROMPTS", "",
        ],
        narrow,
    ))
    .style(Style::default().fg(ACCENT).add_modifier(Modifier::BOLD));
    let widths = keep(
        vec![
            Constraint::Min(22),
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(22),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(11),
        ],
        narrow,
    );
    let table = Table::new(rows, widths)
        .header(header)
        .block(block)
        .row_highlight_style(Style::default().bg(ACCENT).fg(Color::Black));
    let mut state = TableState::default().with_selected(Some(app.ckpts.selected));
    f.render_stateful_widget(table, list, &mut state);

    // The selected checkpoint in full (paths and errors do not fit the table).
    let mut lines = vec![];
    if let Some(r) = app.ckpts.rows.get(app.ckpts.selected) {
        lines.push(Line::from(vec![
            Span::styled("path ", dim()),
            Span::raw(r.path.clone()),
        ]));
        if let Some(i) = &r.info {
            if let Some(base) = &i.adapter_base {
                lines.push(Line::from(vec![
                    Span::styled("LoRA adapter on ", dim()),
                    Span::raw(base.clone()),
                ]));
            }
            lines.push(Line::from(vec![
                Span::styled("weights ", dim()),
                Span::raw(format!(
                    "{} · {} parameters · {}",
                    i.dtype,
                    params(i.parameters),
                    bytes(i.size_bytes)
                )),
            ]));
            // What a dense checkpoint becomes in memory, and why (Q changes it).
            if i.loads_as != "as stored" {
                let (what, why) = match app.ckpts.quantize {
                    Some(q) => (q.to_string(), "chosen here with Q".to_string()),
                    None => (
                        i.loads_as.clone(),
                        crate::model::quantize::Source::reason_of(i.loads_as_source).to_string(),
                    ),
                };
                let what = if what == "none" {
                    "dense (no quantization)".to_string()
                } else {
                    what
                };
                lines.push(Line::from(vec![
                    Span::styled("loads as ", dim()),
                    Span::raw(format!(
                        "{what} · {why} · Q cycles default/none/q8_0/q4_0/q4_k"
                    )),
                ]));
            }
        }
        if let Some(e) = &r.endpoint {
            lines.push(Line::from(vec![
                Span::styled("endpoint ", dim()),
                Span::raw(format!(
                    "model {} · API key {} · OpenAI-compatible (vLLM, llama.cpp, humanlm serve)",
                    e.model,
                    e.api_key_env
                        .as_ref()
                        .map_or_else(|| "none".to_string(), |v| format!("from ${v}")),
                )),
            ]));
        }
        if let Some(e) = &r.error {
            lines.push(Line::styled(e.clone(), Style::default().fg(BAD)));
        }
    }
    if let Some(m) = &app.model.loaded {
        lines.push(Line::from(vec![
            Span::styled("in use ", dim()),
            Span::raw(format!(
                "{} ({}) on {} · loaded in {:.1} s · context {}",
                m.name,
                m.weights,
                m.device,
                m.load_ms as f64 / 1000.0,
                m.context
            )),
        ]));
    }
    if let Some((name, since)) = &app.model.loading {
        lines.push(Line::styled(
            format!(
                "{} loading {name} · {:.0} s (Simulate keeps the current one until it is ready)",
                spinner(app),
                app.tick.saturating_sub(*since) as f64 / TICKS_PER_S as f64
            ),
            Style::default().fg(WARN),
        ));
    }
    if let Some(e) = &app.model.error {
        lines.push(Line::styled(
            format!("last load failed: {e}"),
            Style::default().fg(BAD),
        ));
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(pane(" Details ", false)),
        detail,
    );
    if let Some(form) = &app.ckpts.form {
        draw_form(f, body, form);
    }
}

/// The add-an-endpoint popup: three fields, the focused one with a cursor, and what is wrong.
fn draw_form(f: &mut Frame, body: Rect, form: &EndpointForm) {
    let r = centered(body, 74, 14);
    f.render_widget(Clear, r);
    let block = Block::bordered()
        .border_style(Style::default().fg(ACCENT))
        .title(Line::from(" Add an endpoint ").style(Style::default().add_modifier(Modifier::BOLD)))
        .title_bottom(Line::from(" Tab next · Enter add · Esc cancel ").right_aligned());
    let inner = block.inner(r);
    let hints = [
        "http://127.0.0.1:8000/v1",
        "the id the server serves",
        "optional: e.g. OPENAI_API_KEY",
    ];
    let room = (inner.width as usize).saturating_sub(11);
    let mut lines = vec![];
    for (i, label) in ENDPOINT_FIELDS.iter().enumerate() {
        let focused = form.focus == i;
        let value = &form.fields[i];
        let mut spans = vec![Span::styled(
            format!(" {label:<9}"),
            if focused {
                Style::default().fg(ACCENT).add_modifier(Modifier::BOLD)
            } else {
                dim()
            },
        )];
        if value.is_empty() && !focused {
            spans.push(Span::styled(hints[i], dim()));
        } else {
            // The end of a long value stays in view while typing.
            let shown: String = {
                let chars: Vec<char> = value.chars().collect();
                let skip = chars.len().saturating_sub(room.saturating_sub(1));
                chars[skip..].iter().collect()
            };
            spans.push(Span::raw(shown));
            if focused {
                spans.push(Span::styled("▌", Style::default().fg(ACCENT)));
                if value.is_empty() {
                    spans.push(Span::styled(format!(" {}", hints[i]), dim()));
                }
            }
        }
        lines.push(Line::from(spans));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        " Any OpenAI-compatible server (vLLM, llama.cpp, humanlm serve). The key stays in its variable; checkpoints/endpoints.toml keeps the URL, model and variable name.",
        dim(),
    ));
    if let Some(e) = &form.error {
        lines.push(Line::styled(format!(" ✗ {e}"), Style::default().fg(BAD)));
    }
    f.render_widget(block, r);
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
}
