//! Prompts (`p`): the prompt sets, their files with hashes, a preview, and a line diff between
//! two sets. Files open in $EDITOR; changes on disk are picked up within a second.

use super::{dim, extent, pane, scrollbar, ACCENT, BAD, GOOD};
use crate::tui::app::{App, DiffView, PromptsFocus};
use crate::tui::text;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{List, ListItem, ListState, Paragraph};
use ratatui::Frame;

pub fn draw(f: &mut Frame, app: &App, body: Rect) {
    if let Some(d) = &app.prompts.diff {
        draw_diff(f, app, body, d);
        return;
    }
    let (sets_w, files_w) = if body.width >= 110 {
        (26, 36)
    } else {
        (20, 28)
    };
    let [sets, files, preview] = Layout::horizontal([
        Constraint::Length(sets_w),
        Constraint::Length(files_w),
        Constraint::Min(0),
    ])
    .areas(body);
    let p = &app.prompts;
    let hl = |focused: bool| {
        Style::default()
            .bg(if focused { ACCENT } else { Color::DarkGray })
            .fg(Color::Black)
    };

    let items: Vec<ListItem> = app
        .sets
        .iter()
        .map(|s| {
            let mut spans = vec![Span::styled(
                if s.name == app.set { "● " } else { "  " },
                Style::default().fg(GOOD),
            )];
            spans.push(Span::styled(
                s.name.clone(),
                Style::default().add_modifier(Modifier::BOLD),
            ));
            if p.mark.as_deref() == Some(s.name.as_str()) {
                spans.push(Span::styled(" A", Style::default().fg(ACCENT)));
            }
            match (&s.hash, &s.error) {
                (_, Some(_)) => spans.push(Span::styled(" ✗", Style::default().fg(BAD))),
                (Some(h), None) => {
                    spans.push(Span::styled(format!(" {}", &h[..h.len().min(8)]), dim()))
                }
                _ => {}
            }
            ListItem::new(Line::from(spans))
        })
        .collect();
    let list = List::new(items)
        .block(pane(" Prompt sets ", p.focus == PromptsFocus::Sets))
        .highlight_style(hl(p.focus == PromptsFocus::Sets));
    let mut state = ListState::default().with_selected(Some(p.set));
    f.render_stateful_widget(list, sets, &mut state);

    let Some(set) = app.sets.get(p.set) else {
        f.render_widget(
            Paragraph::new(Line::styled(
                format!("no prompt sets in {}", app.paths.prompts.display()),
                dim(),
            ))
            .block(pane(" Files ", false)),
            files,
        );
        return;
    };
    let fw = files_w.saturating_sub(4) as usize;
    let items: Vec<ListItem> = set
        .files
        .iter()
        .map(|file| {
            let mut lines = vec![Line::from(vec![
                Span::raw(text::truncate(&file.name, fw.saturating_sub(9))),
                Span::styled(format!(" {}", &file.hash[..file.hash.len().min(8)]), dim()),
            ])];
            if let Some(from) = &file.inherited_from {
                lines.push(Line::styled(format!("  from {from}"), dim()));
            }
            ListItem::new(lines)
        })
        .collect();
    let list = List::new(items)
        .block(pane(
            format!(" {} · files ", set.name),
            p.focus == PromptsFocus::Files,
        ))
        .highlight_style(hl(p.focus == PromptsFocus::Files));
    let mut state = ListState::default().with_selected(Some(p.file));
    f.render_stateful_widget(list, files, &mut state);

    // The set's summary, then the selected file with line numbers.
    let file = set.files.get(p.file);
    let title = match file {
        Some(file) => format!(" {} · {} ", file.name, file.path.display()),
        None => " preview ".into(),
    };
    let block = pane(
        text::truncate(&title, preview.width.saturating_sub(4) as usize),
        p.focus == PromptsFocus::Preview,
    );
    let inner = block.inner(preview);
    let w = inner.width.saturating_sub(1) as usize;
    let mut lines = vec![Line::from(vec![
        Span::styled(
            set.name.clone(),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::styled(format!(" {}", set.hash.clone().unwrap_or_default()), dim()),
    ])];
    let about = format!("{} layout · {}", set.layout, set.sampling);
    for l in text::wrap(&about, w) {
        lines.push(Line::styled(l, dim()));
    }
    for l in text::wrap(&set.description, inner.width.saturating_sub(1) as usize) {
        lines.push(Line::styled(l, dim()));
    }
    if let Some(e) = &set.error {
        for l in text::wrap(&format!("✗ {e}"), inner.width.saturating_sub(1) as usize) {
            lines.push(Line::styled(l, Style::default().fg(BAD)));
        }
    }
    lines.push(Line::raw(""));
    if let Some(file) = file {
        let digits = file.text.lines().count().max(1).to_string().len();
        let w = (inner.width as usize).saturating_sub(digits + 2).max(8);
        for (i, l) in file.text.lines().enumerate() {
            for (j, part) in text::wrap(&l.replace('\t', "    "), w)
                .into_iter()
                .enumerate()
            {
                let number = if j == 0 {
                    format!("{:>digits$} ", i + 1)
                } else {
                    " ".repeat(digits + 1)
                };
                lines.push(Line::from(vec![
                    Span::styled(number, dim()),
                    Span::raw(part),
                ]));
            }
        }
    }
    let height = inner.height as usize;
    let pos = extent(app, "preview", lines.len(), height, p.scroll);
    let total = lines.len();
    let visible: Vec<Line> = lines.into_iter().skip(pos).take(height).collect();
    f.render_widget(block, preview);
    f.render_widget(Paragraph::new(visible), inner);
    scrollbar(f, preview, total, height, pos);
}

fn draw_diff(f: &mut Frame, app: &App, body: Rect, d: &DiffView) {
    let changed = d.files.iter().filter(|x| x.status != "same").count();
    let block = pane(
        format!(
            " Diff · A {} → B {} · {changed} of {} files differ ",
            d.a,
            d.b,
            d.files.len()
        ),
        true,
    );
    let inner = block.inner(body);
    let mut lines = vec![];
    for file in &d.files {
        let style = match file.status {
            "same" => dim(),
            _ => Style::default().fg(ACCENT).add_modifier(Modifier::BOLD),
        };
        lines.push(Line::styled(
            format!("{} · {}", file.name, file.status),
            style,
        ));
        for (tag, l) in &file.lines {
            let (style, mark) = match tag {
                '-' => (Style::default().fg(BAD), "- "),
                '+' => (Style::default().fg(GOOD), "+ "),
                '…' => (dim(), "… "),
                _ => (Style::default(), "  "),
            };
            lines.push(Line::styled(format!("{mark}{l}"), style));
        }
        if !file.lines.is_empty() {
            lines.push(Line::raw(""));
        }
    }
    let height = inner.height as usize;
    let total = lines.len();
    let pos = extent(app, "diff", total, height, app.prompts.diff_scroll);
    let visible: Vec<Line> = lines.into_iter().skip(pos).take(height).collect();
    f.render_widget(block, body);
    f.render_widget(Paragraph::new(visible), inner);
    scrollbar(f, body, total, height, pos);
}
