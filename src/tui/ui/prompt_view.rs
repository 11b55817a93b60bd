//! The Simulator's-eye view (`v`): the exact prompt of each call, special tokens highlighted,
//! with token counts, where generation starts, and the token ids on demand.

use super::{dim, extent, pane, scrollbar, spinner, ACCENT, GOOD, WARN};
use crate::sim::Call;
use crate::tui::app::{App, PromptKey};
use crate::tui::text;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use std::rc::Rc;

pub fn draw(f: &mut Frame, app: &App, body: Rect) {
    let pv = &app.prompt_view;
    let Some(plan) = &pv.plan else {
        let block = pane(" Prompt seen by the model ", true);
        let msg = match (&pv.error, pv.job) {
            (Some(e), _) => Line::styled(format!("✗ {e}"), Style::default().fg(super::BAD)),
            (None, Some(_)) if app.model.loaded.is_none() => Line::styled(
                format!("{} waiting for {} to load…", spinner(app), app.checkpoint),
                dim(),
            ),
            (None, Some(_)) => {
                Line::styled(format!("{} rendering the prompts…", spinner(app)), dim())
            }
            (None, None) => Line::styled("select a scenario in Simulate, then press v", dim()),
        };
        f.render_widget(
            Paragraph::new(msg)
                .wrap(ratatui::widgets::Wrap { trim: false })
                .block(block),
            body,
        );
        return;
    };
    let [tabs, main] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(body);
    // The calls as tabs: name and prompt tokens.
    let mut spans = vec![Span::raw(" ")];
    for (i, c) in plan.plan.calls.iter().enumerate() {
        let label = format!(" {} {} ", c.name, c.prompt_tokens);
        spans.push(if i == pv.call {
            Span::styled(label, Style::default().fg(Color::Black).bg(ACCENT))
        } else {
            Span::raw(label)
        });
    }
    f.render_widget(Paragraph::new(Line::from(spans)), tabs);
    let Some(call) = plan.plan.calls.get(pv.call) else {
        return;
    };
    let title = format!(
        " Prompt seen by the model · {} · {} tokens · may generate {} · set {} {} · {} ",
        call.name,
        thousands(call.prompt_tokens),
        call.budget,
        plan.set,
        plan.set_hash,
        plan.scenario,
    );
    let mut block = pane(
        text::truncate(&title, main.width.saturating_sub(4) as usize),
        true,
    );
    let mut bottom = vec![Span::raw(format!(
        " {} mode · thinking {} · stops at {} ",
        plan.mode.name(),
        if call.thinking { "on" } else { "off" },
        call.stop
    ))];
    if plan.plan.dropped_turns > 0 {
        bottom.push(Span::styled(
            format!("· {} old turns dropped to fit ", plan.plan.dropped_turns),
            Style::default().fg(WARN),
        ));
    }
    block = block.title_bottom(Line::from(bottom));
    let inner = block.inner(main);
    let width = inner.width.saturating_sub(1);
    let key = PromptKey {
        scenario: plan.scenario.clone(),
        set_hash: format!("{}:{}", plan.set_hash, plan.mode.name()),
        call: pv.call,
        width,
        ids: pv.ids,
    };
    let lines = {
        let mut caches = app.caches.borrow_mut();
        match &caches.prompt {
            Some((k, lines)) if *k == key => lines.clone(),
            _ => {
                let lines = Rc::new(if pv.ids {
                    id_lines(call, width as usize)
                } else {
                    prompt_lines(call, width as usize)
                });
                caches.prompt = Some((key, lines.clone()));
                lines
            }
        }
    };
    let height = inner.height as usize;
    let pos = extent(app, "prompt", lines.len(), height, pv.scroll);
    let visible: Vec<Line> = lines.iter().skip(pos).take(height).cloned().collect();
    f.render_widget(block, main);
    f.render_widget(Paragraph::new(visible), inner);
    scrollbar(f, main, lines.len(), height, pos);
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Pieces of a prompt line: plain text or a special token (`<|im_start|>`, `<think>`…).
fn pieces(line: &str) -> Vec<(bool, &str)> {
    let mut out = vec![];
    let mut rest = line;
    while !rest.is_empty() {
        let next = [
            rest.find("<|")
                .map(|i| (i, rest[i..].find("|>").map(|j| i + j + 2))),
            rest.find("<think>").map(|i| (i, Some(i + 7))),
            rest.find("</think>").map(|i| (i, Some(i + 8))),
        ]
        .into_iter()
        .flatten()
        .filter_map(|(i, end)| end.map(|e| (i, e)))
        .min();
        match next {
            Some((i, e)) => {
                if i > 0 {
                    out.push((false, &rest[..i]));
                }
                out.push((true, &rest[i..e]));
                rest = &rest[e..];
            }
            None => {
                out.push((false, rest));
                break;
            }
        }
    }
    out
}

/// The prompt text, newlines shown as ⏎, special tokens highlighted, wrapped to `width`; then
/// the pre-filled tag and where generation starts.
pub fn prompt_lines(call: &Call, width: usize) -> Vec<Line<'static>> {
    text_lines(&call.prompt, &call.prefill, width)
}

/// A prompt's text as [`prompt_lines`] shows it, given the tag it ends with pre-filled (empty:
/// none, or not known apart from the text).
pub fn text_lines(prompt: &str, prefill: &str, width: usize) -> Vec<Line<'static>> {
    let special = Style::default()
        .fg(Color::Yellow)
        .add_modifier(Modifier::BOLD);
    let body = prompt.strip_suffix(prefill).unwrap_or(prompt);
    let width = width.max(8);
    let mut out = vec![];
    let src_lines: Vec<&str> = body.split('\n').collect();
    let last = src_lines.len() - 1;
    for (li, src) in src_lines.iter().enumerate() {
        // Wrap by characters, keeping each piece's style.
        let mut line: Vec<Span<'static>> = vec![];
        let mut w = 0;
        for (is_special, piece) in pieces(src) {
            let style = if is_special {
                special
            } else {
                Style::default()
            };
            let mut buf = String::new();
            for c in piece.chars() {
                let cw = text::width(c.encode_utf8(&mut [0; 4]));
                if w + cw > width {
                    line.push(Span::styled(std::mem::take(&mut buf), style));
                    out.push(Line::from(std::mem::take(&mut line)));
                    w = 0;
                }
                buf.push(c);
                w += cw;
            }
            if !buf.is_empty() {
                line.push(Span::styled(buf, style));
            }
        }
        if li < last {
            line.push(Span::styled("⏎", dim()));
        }
        out.push(Line::from(line));
    }
    // Where the model takes over.
    let mut tail = vec![];
    if !prefill.is_empty() {
        tail.push(Span::styled(
            prefill.to_string(),
            Style::default().fg(GOOD).add_modifier(Modifier::BOLD),
        ));
    }
    tail.push(Span::styled("▌", Style::default().fg(ACCENT)));
    tail.push(Span::styled(
        if prefill.is_empty() {
            "  ← generation starts here"
        } else {
            "  ← generation starts here (the tag is pre-filled)"
        },
        Style::default().fg(ACCENT),
    ));
    match out.last_mut() {
        Some(l) if l.width() + 30 < width => l.spans.extend(tail),
        _ => out.push(Line::from(tail)),
    }
    out
}

/// The token ids of the prompt, wrapped.
pub fn id_lines(call: &Call, width: usize) -> Vec<Line<'static>> {
    let mut out = vec![Line::styled(
        format!(
            "{} token ids (the prompt exactly as the model receives it)",
            call.ids.len()
        ),
        dim(),
    )];
    let joined = call
        .ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    out.extend(text::wrap(&joined, width).into_iter().map(Line::raw));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_tokens_are_split_out() {
        let p = pieces("<|im_start|>user hi<|im_end|><think>");
        assert_eq!(
            p,
            vec![
                (true, "<|im_start|>"),
                (false, "user hi"),
                (true, "<|im_end|>"),
                (true, "<think>")
            ]
        );
        assert_eq!(thousands(1184), "1,184");
        assert_eq!(thousands(12), "12");
    }
}
