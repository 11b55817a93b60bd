//! Entering and leaving the terminal's full-screen mode, on every way out: a normal quit, an
//! error, a panic on the UI thread, and around an external editor.

use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::cursor::Show;
use ratatui::crossterm::event::{DisableMouseCapture, EnableMouseCapture};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::Terminal;
use std::io::{stdout, Stdout};
use std::sync::OnceLock;
use std::thread::ThreadId;

pub type Term = Terminal<CrosstermBackend<Stdout>>;

static UI_THREAD: OnceLock<ThreadId> = OnceLock::new();

/// Raw mode, the alternate screen and mouse reporting on.
pub fn enter() -> std::io::Result<Term> {
    enable_raw_mode()?;
    if let Err(e) = execute!(stdout(), EnterAlternateScreen, EnableMouseCapture) {
        let _ = restore();
        return Err(e);
    }
    let mut t = Terminal::new(CrosstermBackend::new(stdout()))?;
    t.clear()?;
    Ok(t)
}

/// Back to the shell's terminal: raw mode off, main screen, mouse off, cursor shown. Safe to
/// call more than once.
pub fn restore() -> std::io::Result<()> {
    let raw = disable_raw_mode();
    execute!(stdout(), DisableMouseCapture, LeaveAlternateScreen, Show)?;
    raw
}

/// Restores the terminal when dropped (an error or a panic unwinding through `run`).
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = restore();
    }
}

/// A panic on the UI thread restores the terminal before the message is printed, so the message
/// is readable and the shell usable. Panics on worker threads are caught there and shown in the
/// workbench; printing them would scribble over the screen, so the hook stays quiet for them.
pub fn install_panic_hook() {
    let _ = UI_THREAD.set(std::thread::current().id());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if UI_THREAD.get() == Some(&std::thread::current().id()) {
            let _ = restore();
            previous(info);
        }
    }));
}

/// Leave the full screen for an external program, run `f`, and come back.
pub fn suspended<T>(term: &mut Term, f: impl FnOnce() -> T) -> std::io::Result<T> {
    restore()?;
    let out = f();
    enable_raw_mode()?;
    execute!(stdout(), EnterAlternateScreen, EnableMouseCapture)?;
    term.clear()?;
    Ok(out)
}
