//! The help popup's keys: up and down scroll it, any other key closes it.

use super::bounded;
use crate::tui::app::App;
use crate::tui::keys::{Cmd, Ctx};
use ratatui::crossterm::event::KeyEvent;

/// A key while the help is open at line `scroll`.
pub(super) fn help_key(app: &mut App, scroll: usize, key: KeyEvent) {
    match app.keys.lookup(&[Ctx::Global], &key) {
        Some(Cmd::Quit) => app.quit = true,
        Some(Cmd::Up) => app.help = Some(scroll.saturating_sub(1)),
        Some(Cmd::Down) => app.help = Some(bounded(app, "help", scroll + 1)),
        Some(Cmd::PageUp) => app.help = Some(scroll.saturating_sub(10)),
        Some(Cmd::PageDown) => app.help = Some(bounded(app, "help", scroll + 10)),
        _ => app.help = None,
    }
}
