//! Prompts (`p`): browsing the prompt sets and their files, choosing the set in use, opening a
//! file in `$EDITOR`, and the line diff of two sets.

use super::{extent, scroll_delta, shift};
use crate::tui::action::Effect;
use crate::tui::app::*;
use crate::tui::keys::Cmd;
use crate::tui::text;

impl PromptsScreen {
    /// Whether the user moved in the set list since opening (then it is not reset).
    pub fn set_touched(&self) -> bool {
        self.file != 0 || self.scroll != 0 || self.focus != PromptsFocus::Sets
    }
}

/// A command on Prompts: move in sets, files and the preview, use a set, edit a file, diff two
/// sets.
pub(super) fn prompts_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    if app.prompts.diff.is_some() {
        let page = extent(app, "diff").1.max(2) - 1;
        if matches!(
            cmd,
            Cmd::Up | Cmd::Down | Cmd::PageUp | Cmd::PageDown | Cmd::Top | Cmd::Bottom
        ) {
            let pos = app.prompts.diff_scroll;
            app.prompts.diff_scroll = shift(app, "diff", pos, scroll_delta(cmd, page));
        } else if cmd == Cmd::Diff {
            app.prompts.diff = None;
        }
        return;
    }
    let nsets = app.sets.len();
    let nfiles = app.sets.get(app.prompts.set).map_or(0, |s| s.files.len());
    let page = extent(app, "preview").1.max(2) - 1;
    let p = &mut app.prompts;
    match (cmd, p.focus) {
        (Cmd::Up, PromptsFocus::Sets) => {
            p.set = p.set.saturating_sub(1);
            p.file = 0;
            p.scroll = 0;
        }
        (Cmd::Down, PromptsFocus::Sets) => {
            p.set = (p.set + 1).min(nsets.saturating_sub(1));
            p.file = 0;
            p.scroll = 0;
        }
        (Cmd::Up, PromptsFocus::Files) => {
            p.file = p.file.saturating_sub(1);
            p.scroll = 0;
        }
        (Cmd::Down, PromptsFocus::Files) => {
            p.file = (p.file + 1).min(nfiles.saturating_sub(1));
            p.scroll = 0;
        }
        (
            Cmd::Up | Cmd::Down | Cmd::PageUp | Cmd::PageDown | Cmd::Top | Cmd::Bottom,
            PromptsFocus::Preview,
        ) => {
            let pos = p.scroll;
            app.prompts.scroll = shift(app, "preview", pos, scroll_delta(cmd, page));
        }
        (Cmd::Right | Cmd::NextPane, f) => {
            p.focus = match f {
                PromptsFocus::Sets => PromptsFocus::Files,
                _ => PromptsFocus::Preview,
            }
        }
        (Cmd::Left | Cmd::PrevPane, f) => {
            p.focus = match f {
                PromptsFocus::Preview => PromptsFocus::Files,
                _ => PromptsFocus::Sets,
            }
        }
        (Cmd::Enter, PromptsFocus::Sets) => {
            if let Some(s) = app.sets.get(app.prompts.set) {
                if let Some(e) = &s.error {
                    let msg = format!("prompt set {} does not load: {e}", s.name);
                    app.fail(msg);
                } else {
                    app.set = s.name.clone();
                    app.set_pinned = true;
                    app.info(format!("prompt set {} is used from now on", app.set));
                }
            }
        }
        (Cmd::Enter | Cmd::Edit, _) => {
            let file = app
                .sets
                .get(app.prompts.set)
                .and_then(|s| s.files.get(app.prompts.file));
            if let Some(f) = file {
                fx.push(Effect::Edit(f.path.clone()));
            }
        }
        (Cmd::MarkDiff, _) => {
            if let Some(s) = app.sets.get(app.prompts.set) {
                app.prompts.mark = Some(s.name.clone());
                app.info(format!("{} marked as A: d diffs it against a set", s.name));
            }
        }
        (Cmd::Diff, _) => {
            let Some(b) = app.sets.get(app.prompts.set) else {
                return;
            };
            let a = app
                .prompts
                .mark
                .as_ref()
                .and_then(|m| app.set_info(m))
                .filter(|a| a.name != b.name)
                .or_else(|| app.sets.iter().find(|s| s.name != b.name));
            match a {
                Some(a) => {
                    app.prompts.diff = Some(text::diff_sets(a, b));
                    app.prompts.diff_scroll = 0;
                }
                None => app.info("only one prompt set: nothing to diff against"),
            }
        }
        (Cmd::Rescan, _) => fx.push(Effect::ScanPrompts),
        _ => {}
    }
}
