//! The help popup (`?`): every binding of the key table in use, by where it applies.

use super::{centered, dim, extent, scrollbar, ACCENT};
use crate::tui::app::App;
use crate::tui::keys::{Ctx, Keymap};
use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;

/// The help text of the built-in table.
pub fn lines() -> Vec<Line<'static>> {
    lines_of(&Keymap::default())
}

/// The help text of `keys`, one line per binding under a heading per context.
pub fn lines_of(keys: &Keymap) -> Vec<Line<'static>> {
    let mut out = vec![];
    for ctx in Ctx::ALL {
        if !out.is_empty() {
            out.push(Line::raw(""));
        }
        out.push(Line::styled(
            ctx.title(),
            Style::default().fg(ACCENT).add_modifier(Modifier::BOLD),
        ));
        for b in keys.rows(ctx) {
            out.push(Line::from(vec![
                Span::styled(
                    format!("  {:<9}", b.label),
                    Style::default().add_modifier(Modifier::BOLD),
                ),
                Span::raw(b.help),
            ]));
        }
    }
    out.push(Line::raw(""));
    out.push(Line::styled(
        "Mouse: the wheel scrolls the pane under it, a click focuses a pane; Shift+drag selects text.",
        dim(),
    ));
    out.push(Line::styled(
        "HUMANLM_TUI_MAX_TOKENS caps every call's new tokens; HUMANLM_DEVICE picks cpu or cuda:N.",
        dim(),
    ));
    out.push(Line::styled(
        "Endpoints added with a are kept in checkpoints/endpoints.toml (URL, model, key variable).",
        dim(),
    ));
    out.push(Line::styled(
        "Train writes checkpoints/NAME (a LoRA adapter) with events.jsonl, one line per step.",
        dim(),
    ));
    out
}

pub fn draw(f: &mut Frame, app: &App, area: Rect, scroll: usize) {
    let lines = lines_of(&app.keys);
    let r = centered(area, 76, area.height);
    f.render_widget(Clear, r);
    let block = Block::bordered()
        .border_style(Style::default().fg(ACCENT))
        .title(Line::from(" Help · keys ").style(Style::default().add_modifier(Modifier::BOLD)))
        .title_bottom(Line::from(" ↑↓ scroll · Esc or ? closes ").right_aligned());
    let inner = block.inner(r);
    let height = inner.height as usize;
    let total = lines.len();
    let pos = extent(app, "help", total, height, scroll);
    let visible: Vec<Line> = lines.into_iter().skip(pos).take(height).collect();
    f.render_widget(block, r);
    f.render_widget(Paragraph::new(visible), inner);
    scrollbar(f, r, total, height, pos);
}
