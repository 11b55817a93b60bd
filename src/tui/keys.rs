//! Every key binding in one table: the update logic looks keys up here and the help popup is
//! rendered from it, so the two cannot disagree.
//!
//! [`BINDINGS`] is the built-in table. A user file (`keys.toml`, found by [`user_file`]) may give
//! an action of a context other keys; [`Keymap`] is the table with those applied, checked whole
//! before the workbench starts, so a bad file is refused in one line instead of half-working.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::path::{Path, PathBuf};

/// What a key asks for, before the screen decides what it means there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Quit,
    Help,
    /// Esc: cancel what runs, else close what is open, else go back to Simulate.
    Back,
    Up,
    Down,
    Left,
    Right,
    PageUp,
    PageDown,
    Top,
    Bottom,
    NextPane,
    PrevPane,
    Enter,
    GoPromptView,
    GoCheckpoints,
    GoPrompts,
    GoCompare,
    GoConverse,
    GoEval,
    GoTrain,
    Filter,
    Regenerate,
    CycleMode,
    CycleSamples,
    ToggleThink,
    TogglePersona,
    ToggleReference,
    SaveSession,
    OpenSession,
    ShowIds,
    Rescan,
    Edit,
    MarkDiff,
    Diff,
    Blind,
    AddSide,
    RemoveSide,
    PrevCheckpoint,
    NextCheckpoint,
    RunEval,
    AddEndpoint,
    RemoveEndpoint,
    CycleQuantize,
    /// Converse (and Simulate): a new branch from the turn under the cursor (Simulate: from
    /// the simulation shown), generation going on from there.
    Fork,
    /// Converse: edit the text of the turn under the cursor in the workbench.
    EditTurn,
    /// Converse: a new conversation from the scenario selected in Simulate.
    NewConversation,
    /// Converse: one more, or one fewer, new turn before the conversation ends.
    MoreTurns,
    FewerTurns,
    /// Train: start the pass the form describes.
    StartTrain,
    /// Train: use the adapter the pass wrote as the current checkpoint.
    LoadAdapter,
    /// Train: use the best validated step's adapter (`best/`) as the current checkpoint.
    LoadBest,
    /// Train: back from the run's view to the form.
    TrainForm,
    /// Text fields: empty the focused field.
    ClearField,
    /// Blind rating: score the focused field; the value is the key's place in its binding
    /// (1st key 1, …, 10th key 10), so `1`…`9`, `0` are 1…9, 10.
    Score(u8),
    /// Not a command: the help's row for typing into a text field (printable keys and Backspace
    /// edit the text there, so no binding may take them).
    Type,
}

impl Cmd {
    /// The action's name in `keys.toml`; `None` for the help-only [`Cmd::Type`].
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Cmd::Quit => "quit",
            Cmd::Help => "help",
            Cmd::Back => "back",
            Cmd::Up => "up",
            Cmd::Down => "down",
            Cmd::Left => "left",
            Cmd::Right => "right",
            Cmd::PageUp => "page_up",
            Cmd::PageDown => "page_down",
            Cmd::Top => "top",
            Cmd::Bottom => "bottom",
            Cmd::NextPane => "next_pane",
            Cmd::PrevPane => "prev_pane",
            Cmd::Enter => "enter",
            Cmd::GoPromptView => "prompt_view",
            Cmd::GoCheckpoints => "checkpoints",
            Cmd::GoPrompts => "prompts",
            Cmd::GoCompare => "compare",
            Cmd::GoConverse => "converse",
            Cmd::GoEval => "eval",
            Cmd::GoTrain => "train",
            Cmd::Filter => "filter",
            Cmd::Regenerate => "regenerate",
            Cmd::CycleMode => "cycle_mode",
            Cmd::CycleSamples => "cycle_samples",
            Cmd::ToggleThink => "toggle_think",
            Cmd::TogglePersona => "toggle_persona",
            Cmd::ToggleReference => "toggle_reference",
            Cmd::SaveSession => "save_session",
            Cmd::OpenSession => "open_session",
            Cmd::ShowIds => "show_ids",
            Cmd::Rescan => "rescan",
            Cmd::Edit => "edit",
            Cmd::MarkDiff => "mark_diff",
            Cmd::Diff => "diff",
            Cmd::Blind => "blind",
            Cmd::AddSide => "add_side",
            Cmd::RemoveSide => "remove_side",
            Cmd::PrevCheckpoint => "prev_checkpoint",
            Cmd::NextCheckpoint => "next_checkpoint",
            Cmd::RunEval => "run_eval",
            Cmd::AddEndpoint => "add_endpoint",
            Cmd::RemoveEndpoint => "remove_endpoint",
            Cmd::CycleQuantize => "cycle_quantize",
            Cmd::Fork => "fork",
            Cmd::EditTurn => "edit_turn",
            Cmd::NewConversation => "new_conversation",
            Cmd::MoreTurns => "more_turns",
            Cmd::FewerTurns => "fewer_turns",
            Cmd::StartTrain => "start_train",
            Cmd::LoadAdapter => "load_adapter",
            Cmd::LoadBest => "load_best",
            Cmd::TrainForm => "train_form",
            Cmd::ClearField => "clear_field",
            Cmd::Score(_) => "score",
            Cmd::Type => return None,
        })
    }
}

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctx {
    Global,
    Simulate,
    PromptView,
    Checkpoints,
    Prompts,
    Compare,
    Blind,
    Converse,
    /// Editing a turn's text on Converse.
    TurnEdit,
    Eval,
    JudgePicker,
    EndpointForm,
    Train,
    TrainEdit,
    /// Typing a scenario filter on Simulate.
    Filter,
}

impl Ctx {
    /// Every context, in the order the help lists them.
    pub const ALL: [Ctx; 15] = [
        Ctx::Global,
        Ctx::Simulate,
        Ctx::PromptView,
        Ctx::Checkpoints,
        Ctx::Prompts,
        Ctx::Compare,
        Ctx::Blind,
        Ctx::Converse,
        Ctx::TurnEdit,
        Ctx::EndpointForm,
        Ctx::Eval,
        Ctx::JudgePicker,
        Ctx::Train,
        Ctx::TrainEdit,
        Ctx::Filter,
    ];

    /// The context's table name in `keys.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Ctx::Global => "global",
            Ctx::Simulate => "simulate",
            Ctx::PromptView => "prompt_view",
            Ctx::Checkpoints => "checkpoints",
            Ctx::Prompts => "prompts",
            Ctx::Compare => "compare",
            Ctx::Blind => "blind",
            Ctx::Converse => "converse",
            Ctx::TurnEdit => "turn_edit",
            Ctx::Eval => "eval",
            Ctx::JudgePicker => "judge_picker",
            Ctx::EndpointForm => "endpoint_form",
            Ctx::Train => "train",
            Ctx::TrainEdit => "train_edit",
            Ctx::Filter => "filter",
        }
    }

    /// Whether the context is a text field: printable keys and Backspace edit the text there.
    pub fn is_text(self) -> bool {
        matches!(
            self,
            Ctx::Filter | Ctx::EndpointForm | Ctx::TrainEdit | Ctx::TurnEdit
        )
    }

    pub fn title(self) -> &'static str {
        match self {
            Ctx::Global => "Everywhere",
            Ctx::Simulate => "Simulate",
            Ctx::PromptView => "Simulator's-eye view (v)",
            Ctx::Checkpoints => "Checkpoints (m)",
            Ctx::Prompts => "Prompts (p)",
            Ctx::Compare => "Compare (c)",
            Ctx::Blind => "Blind rating (c, then b)",
            Ctx::Converse => "Converse (C)",
            Ctx::TurnEdit => "Converse, editing a turn (e)",
            Ctx::Eval => "Eval (e)",
            Ctx::JudgePicker => "Judge picker (e, then r)",
            Ctx::EndpointForm => "Add an endpoint (m, then a)",
            Ctx::Train => "Train (t)",
            Ctx::TrainEdit => "Train form, editing a field (Enter)",
            Ctx::Filter => "Scenario filter (/ on Simulate)",
        }
    }
}

/// A key as bindings name it: Shift is in the key itself (`G`, `BackTab`), Ctrl is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub code: KeyCode,
    pub ctrl: bool,
}

/// A key without Ctrl.
pub const fn key(code: KeyCode) -> Key {
    Key { code, ctrl: false }
}

/// Ctrl with a letter.
pub const fn ctrl(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        ctrl: true,
    }
}

impl Key {
    /// The key of a terminal event (Alt is not told apart, as before there was a file).
    pub fn of(ev: &KeyEvent) -> Key {
        let ctrl = ev.modifiers.contains(KeyModifiers::CONTROL);
        let code = match ev.code {
            KeyCode::Char(c) if ctrl => KeyCode::Char(c.to_ascii_lowercase()),
            c => c,
        };
        Key { code, ctrl }
    }

    /// Whether typing the key in a text field edits the text (so no binding may take it there).
    pub fn edits_text(self) -> bool {
        !self.ctrl && matches!(self.code, KeyCode::Char(_) | KeyCode::Backspace)
    }

    /// Ctrl-C and Ctrl-Q: they always quit, whatever the file says.
    fn always_quits(self) -> bool {
        self.ctrl && matches!(self.code, KeyCode::Char('c' | 'q'))
    }

    /// A key name as `keys.toml` writes it: `q`, `G`, `ctrl-c`, `shift-tab`, `pgup`, `f5`, …;
    /// what is wrong with it otherwise.
    pub fn parse(name: &str) -> Result<Key, &'static str> {
        let (mut rest, mut ctrl, mut shift) = (name.trim(), false, false);
        loop {
            let lower = rest.to_ascii_lowercase();
            if rest.chars().count() > 1 && lower.starts_with("ctrl-") {
                (ctrl, rest) = (true, &rest[5..]);
            } else if rest.chars().count() > 1 && lower.starts_with("shift-") {
                (shift, rest) = (true, &rest[6..]);
            } else if rest.chars().count() > 1 && lower.starts_with("alt-") {
                return Err("Alt is not told apart from the plain key; leave out alt-");
            } else {
                break;
            }
        }
        let mut chars = rest.chars();
        let code = match (chars.next(), chars.next()) {
            (None, _) => return Err("no key after the modifiers"),
            (Some(c), None) => KeyCode::Char(c),
            _ => match rest.to_ascii_lowercase().as_str() {
                "esc" | "escape" => KeyCode::Esc,
                "enter" | "return" => KeyCode::Enter,
                "tab" => KeyCode::Tab,
                "backtab" => KeyCode::BackTab,
                "space" => KeyCode::Char(' '),
                "backspace" => KeyCode::Backspace,
                "delete" | "del" => KeyCode::Delete,
                "insert" | "ins" => KeyCode::Insert,
                "up" => KeyCode::Up,
                "down" => KeyCode::Down,
                "left" => KeyCode::Left,
                "right" => KeyCode::Right,
                "home" => KeyCode::Home,
                "end" => KeyCode::End,
                "pgup" | "pageup" => KeyCode::PageUp,
                "pgdn" | "pgdown" | "pagedown" => KeyCode::PageDown,
                f => match f.strip_prefix('f').and_then(|n| n.parse::<u8>().ok()) {
                    Some(n @ 1..=24) => KeyCode::F(n),
                    _ => return Err("not a key name (e.g. q, ctrl-c, shift-tab, pgup, f5)"),
                },
            },
        };
        let code = match (shift, code) {
            (false, c) => c,
            (true, KeyCode::Tab) => KeyCode::BackTab,
            (true, KeyCode::Char(c)) if c.is_alphabetic() => {
                KeyCode::Char(c.to_uppercase().next().unwrap_or(c))
            }
            (true, _) => return Err("shift- goes with tab or a letter (write ? or G itself)"),
        };
        let code = match code {
            KeyCode::Char(c) if ctrl => KeyCode::Char(c.to_ascii_lowercase()),
            c => c,
        };
        Ok(Key { code, ctrl })
    }

    /// How the help writes the key.
    pub fn label(self) -> String {
        let name = match self.code {
            KeyCode::Char(' ') => "Space".to_string(),
            KeyCode::Char(c) if self.ctrl => c.to_ascii_uppercase().to_string(),
            KeyCode::Char(c) => c.to_string(),
            KeyCode::Up => "↑".into(),
            KeyCode::Down => "↓".into(),
            KeyCode::Left => "←".into(),
            KeyCode::Right => "→".into(),
            KeyCode::PageUp => "PgUp".into(),
            KeyCode::PageDown => "PgDn".into(),
            KeyCode::BackTab => "S-Tab".into(),
            KeyCode::Delete => "Del".into(),
            KeyCode::Insert => "Ins".into(),
            KeyCode::F(n) => format!("F{n}"),
            c => format!("{c:?}"),
        };
        if self.ctrl {
            format!("Ctrl-{name}")
        } else {
            name
        }
    }
}

/// One row of the built-in table.
pub struct Binding {
    pub ctx: Ctx,
    pub keys: &'static [Key],
    /// How the keys are written in help.
    pub label: &'static str,
    pub cmd: Cmd,
    pub help: &'static str,
}

const fn b(
    ctx: Ctx,
    keys: &'static [Key],
    label: &'static str,
    cmd: Cmd,
    help: &'static str,
) -> Binding {
    Binding {
        ctx,
        keys,
        label,
        cmd,
        help,
    }
}

use KeyCode::{BackTab, Char, Down, End, Enter, Esc, Home, Left, PageDown, PageUp, Right, Tab, Up};

/// The Blind rating's score keys, 1…10 in order.
const SCORE_KEYS: &[Key] = &[
    key(Char('1')),
    key(Char('2')),
    key(Char('3')),
    key(Char('4')),
    key(Char('5')),
    key(Char('6')),
    key(Char('7')),
    key(Char('8')),
    key(Char('9')),
    key(Char('0')),
];

/// The bindings; a screen's own rows are looked up before the global ones.
pub const BINDINGS: &[Binding] = &[
    b(
        Ctx::Global,
        &[key(Char('q'))],
        "q",
        Cmd::Quit,
        "quit (Ctrl-C too)",
    ),
    b(Ctx::Global, &[key(Char('?'))], "?", Cmd::Help, "this help"),
    b(
        Ctx::Global,
        &[key(Esc)],
        "Esc",
        Cmd::Back,
        "cancel what runs · close · back to Simulate",
    ),
    b(
        Ctx::Global,
        &[key(Up), key(Char('k'))],
        "↑ k",
        Cmd::Up,
        "up",
    ),
    b(
        Ctx::Global,
        &[key(Down), key(Char('j'))],
        "↓ j",
        Cmd::Down,
        "down",
    ),
    b(
        Ctx::Global,
        &[key(Left), key(Char('h'))],
        "← h",
        Cmd::Left,
        "left",
    ),
    b(
        Ctx::Global,
        &[key(Right), key(Char('l'))],
        "→ l",
        Cmd::Right,
        "right",
    ),
    b(Ctx::Global, &[key(PageUp)], "PgUp", Cmd::PageUp, "page up"),
    b(
        Ctx::Global,
        &[key(PageDown)],
        "PgDn",
        Cmd::PageDown,
        "page down",
    ),
    b(
        Ctx::Global,
        &[key(Home), key(Char('g'))],
        "Home g",
        Cmd::Top,
        "to the top",
    ),
    b(
        Ctx::Global,
        &[key(End), key(Char('G'))],
        "End G",
        Cmd::Bottom,
        "to the end",
    ),
    b(Ctx::Global, &[key(Tab)], "Tab", Cmd::NextPane, "next pane"),
    b(
        Ctx::Global,
        &[key(BackTab)],
        "S-Tab",
        Cmd::PrevPane,
        "previous pane",
    ),
    b(
        Ctx::Global,
        &[key(Char('v'))],
        "v",
        Cmd::GoPromptView,
        "prompt the model saw",
    ),
    b(
        Ctx::Global,
        &[key(Char('m'))],
        "m",
        Cmd::GoCheckpoints,
        "checkpoints",
    ),
    b(
        Ctx::Global,
        &[key(Char('p'))],
        "p",
        Cmd::GoPrompts,
        "prompt sets",
    ),
    b(
        Ctx::Global,
        &[key(Char('c'))],
        "c",
        Cmd::GoCompare,
        "compare",
    ),
    b(
        Ctx::Global,
        &[key(Char('C'))],
        "C",
        Cmd::GoConverse,
        "converse: a simulated user talks with an assistant",
    ),
    b(
        Ctx::Global,
        &[key(Char('e'))],
        "e",
        Cmd::GoEval,
        "evaluation runs",
    ),
    b(
        Ctx::Global,
        &[key(Char('t'))],
        "t",
        Cmd::GoTrain,
        "train (SFT or GRPO, LoRA)",
    ),
    b(
        Ctx::Global,
        &[key(Char('s'))],
        "s",
        Cmd::SaveSession,
        "save the session (runs/sessions/)",
    ),
    b(
        Ctx::Global,
        &[key(Char('o'))],
        "o",
        Cmd::OpenSession,
        "open the latest saved session",
    ),
    b(
        Ctx::Global,
        &[key(Char('M'))],
        "M",
        Cmd::CycleMode,
        "mode: humanlm → response → joint",
    ),
    b(
        Ctx::Global,
        &[key(Char('n'))],
        "n",
        Cmd::CycleSamples,
        "number of samples: 1 2 3 4 6 8",
    ),
    b(
        Ctx::Simulate,
        &[key(Enter)],
        "Enter",
        Cmd::Enter,
        "simulate the selected scenario (on a domain: fold)",
    ),
    b(
        Ctx::Simulate,
        &[key(Char('/'))],
        "/",
        Cmd::Filter,
        "filter scenarios (Esc clears)",
    ),
    b(
        Ctx::Simulate,
        &[key(Char('r'))],
        "r",
        Cmd::Regenerate,
        "regenerate with a new seed",
    ),
    b(
        Ctx::Simulate,
        &[key(Char('T'))],
        "T",
        Cmd::ToggleThink,
        "show or fold the <think> block",
    ),
    b(
        Ctx::Simulate,
        &[key(Char('f'))],
        "f",
        Cmd::TogglePersona,
        "unfold or fold the persona",
    ),
    b(
        Ctx::Simulate,
        &[key(Char('R'))],
        "R",
        Cmd::ToggleReference,
        "show or hide the real reply",
    ),
    b(
        Ctx::Simulate,
        &[key(Char('F'))],
        "F",
        Cmd::Fork,
        "go on as a conversation: the thread and the reply shown, on Converse",
    ),
    b(
        Ctx::PromptView,
        &[key(Tab), key(Right), key(Char('l'))],
        "Tab →",
        Cmd::NextPane,
        "next call",
    ),
    b(
        Ctx::PromptView,
        &[key(BackTab), key(Left), key(Char('h'))],
        "S-Tab ←",
        Cmd::PrevPane,
        "previous call",
    ),
    b(
        Ctx::PromptView,
        &[key(Char('i'))],
        "i",
        Cmd::ShowIds,
        "token ids instead of text",
    ),
    b(
        Ctx::Checkpoints,
        &[key(Enter)],
        "Enter",
        Cmd::Enter,
        "load the checkpoint (in the background)",
    ),
    b(
        Ctx::Checkpoints,
        &[key(Char('r'))],
        "r",
        Cmd::Rescan,
        "rescan checkpoints/",
    ),
    b(
        Ctx::Checkpoints,
        &[key(Char('a'))],
        "a",
        Cmd::AddEndpoint,
        "add an OpenAI-compatible endpoint (checkpoints/endpoints.toml)",
    ),
    b(
        Ctx::Checkpoints,
        &[key(Char('x'))],
        "x",
        Cmd::RemoveEndpoint,
        "remove the selected endpoint",
    ),
    b(
        Ctx::Checkpoints,
        &[key(Char('Q'))],
        "Q",
        Cmd::CycleQuantize,
        "what dense checkpoints load as: default, none, q8_0, q4_0, q4_k",
    ),
    b(
        Ctx::EndpointForm,
        &[key(Tab), key(Down)],
        "Tab ↓",
        Cmd::NextPane,
        "next field (URL, model, API-key variable)",
    ),
    b(
        Ctx::EndpointForm,
        &[key(BackTab), key(Up)],
        "S-Tab ↑",
        Cmd::PrevPane,
        "previous field",
    ),
    b(
        Ctx::EndpointForm,
        &[key(Enter)],
        "Enter",
        Cmd::Enter,
        "next field; on the last, check and add it",
    ),
    b(
        Ctx::EndpointForm,
        &[key(Esc)],
        "Esc",
        Cmd::Back,
        "close without adding",
    ),
    b(
        Ctx::EndpointForm,
        &[ctrl('u')],
        "Ctrl-U",
        Cmd::ClearField,
        "clear the field",
    ),
    b(
        Ctx::Prompts,
        &[key(Enter)],
        "Enter",
        Cmd::Enter,
        "on a set: use it · on a file: open in $EDITOR",
    ),
    b(
        Ctx::Prompts,
        &[key(Char('E'))],
        "E",
        Cmd::Edit,
        "open the file in $EDITOR",
    ),
    b(
        Ctx::Prompts,
        &[key(Char('a'))],
        "a",
        Cmd::MarkDiff,
        "mark the set as the diff's base (A)",
    ),
    b(
        Ctx::Prompts,
        &[key(Char('d'))],
        "d",
        Cmd::Diff,
        "diff the marked set against this one",
    ),
    b(
        Ctx::Prompts,
        &[key(Char('r'))],
        "r",
        Cmd::Rescan,
        "reload the sets from disk",
    ),
    b(
        Ctx::Compare,
        &[key(Enter)],
        "Enter",
        Cmd::Enter,
        "run the selected scenario under every side",
    ),
    b(
        Ctx::Compare,
        &[key(Left), key(Char('h'))],
        "← h",
        Cmd::Left,
        "previous prompt set for the side",
    ),
    b(
        Ctx::Compare,
        &[key(Right), key(Char('l'))],
        "→ l",
        Cmd::Right,
        "next prompt set for the side",
    ),
    b(
        Ctx::Compare,
        &[key(Char('['))],
        "[",
        Cmd::PrevCheckpoint,
        "previous checkpoint for the side",
    ),
    b(
        Ctx::Compare,
        &[key(Char(']'))],
        "]",
        Cmd::NextCheckpoint,
        "next checkpoint for the side",
    ),
    b(
        Ctx::Compare,
        &[key(Char('+'))],
        "+",
        Cmd::AddSide,
        "add a third side (C)",
    ),
    b(
        Ctx::Compare,
        &[key(Char('-'))],
        "-",
        Cmd::RemoveSide,
        "remove the third side",
    ),
    b(
        Ctx::Compare,
        &[key(Char('b'))],
        "b",
        Cmd::Blind,
        "blind rating of the replies",
    ),
    b(
        Ctx::Blind,
        &[key(Left), key(Char('h'))],
        "← h",
        Cmd::Left,
        "previous reply",
    ),
    b(
        Ctx::Blind,
        &[key(Right), key(Char('l'))],
        "→ l",
        Cmd::Right,
        "next reply",
    ),
    b(
        Ctx::Blind,
        &[key(Tab)],
        "Tab",
        Cmd::NextPane,
        "similarity ↔ humanlike",
    ),
    b(
        Ctx::Blind,
        SCORE_KEYS,
        "1-9 0",
        Cmd::Score(0),
        "score the field (0 = 10)",
    ),
    b(
        Ctx::Blind,
        &[key(Enter)],
        "Enter",
        Cmd::Enter,
        "reveal models + reference and save (all rated)",
    ),
    b(
        Ctx::Converse,
        &[key(Enter)],
        "Enter",
        Cmd::Enter,
        "go on with the branch shown (none yet: start one) · on Branches: show it",
    ),
    b(
        Ctx::Converse,
        &[key(Char('N'))],
        "N",
        Cmd::NewConversation,
        "a new conversation from the scenario selected in Simulate",
    ),
    b(
        Ctx::Converse,
        &[key(Char('F'))],
        "F",
        Cmd::Fork,
        "fork at the turn under the cursor: write it again, and go on",
    ),
    b(
        Ctx::Converse,
        &[key(Char('e'))],
        "e",
        Cmd::EditTurn,
        "edit the turn's text here (the edit becomes a new branch)",
    ),
    b(
        Ctx::Converse,
        &[key(Char('E'))],
        "E",
        Cmd::Edit,
        "edit the turn's text in $EDITOR (a new branch)",
    ),
    b(
        Ctx::Converse,
        &[key(Char('['))],
        "[",
        Cmd::PrevCheckpoint,
        "previous assistant checkpoint",
    ),
    b(
        Ctx::Converse,
        &[key(Char(']'))],
        "]",
        Cmd::NextCheckpoint,
        "next assistant checkpoint",
    ),
    b(
        Ctx::Converse,
        &[key(Char('+'))],
        "+",
        Cmd::MoreTurns,
        "one more new turn before max-turns",
    ),
    b(
        Ctx::Converse,
        &[key(Char('-'))],
        "-",
        Cmd::FewerTurns,
        "one fewer new turn before max-turns",
    ),
    b(
        Ctx::TurnEdit,
        &[],
        "type",
        Cmd::Type,
        "the turn's text (Backspace deletes)",
    ),
    b(
        Ctx::TurnEdit,
        &[key(Enter)],
        "Enter",
        Cmd::Enter,
        "keep the edit as a new branch",
    ),
    b(
        Ctx::TurnEdit,
        &[key(Esc)],
        "Esc",
        Cmd::Back,
        "drop the edit",
    ),
    b(
        Ctx::Eval,
        &[key(Char('r'))],
        "r",
        Cmd::RunEval,
        "choose a judge and start an evaluation over scenarios/",
    ),
    b(
        Ctx::Eval,
        &[key(Enter)],
        "Enter",
        Cmd::Enter,
        "samples of the run, sorted by score",
    ),
    b(
        Ctx::Eval,
        &[key(Char('R'))],
        "R",
        Cmd::Rescan,
        "rescan runs/",
    ),
    b(
        Ctx::JudgePicker,
        &[key(Up), key(Char('k'))],
        "↑ k",
        Cmd::Up,
        "previous judge",
    ),
    b(
        Ctx::JudgePicker,
        &[key(Down), key(Char('j'))],
        "↓ j",
        Cmd::Down,
        "next judge",
    ),
    b(
        Ctx::JudgePicker,
        &[key(Enter)],
        "Enter",
        Cmd::Enter,
        "start the evaluation with this judge",
    ),
    b(
        Ctx::JudgePicker,
        &[key(Char('R'))],
        "R",
        Cmd::Rescan,
        "reread prompts/judges/",
    ),
    b(Ctx::JudgePicker, &[key(Esc)], "Esc", Cmd::Back, "close"),
    b(
        Ctx::Train,
        &[key(Up), key(Char('k'))],
        "↑ k",
        Cmd::Up,
        "previous field",
    ),
    b(
        Ctx::Train,
        &[key(Down), key(Char('j'))],
        "↓ j",
        Cmd::Down,
        "next field",
    ),
    b(
        Ctx::Train,
        &[key(Left), key(Char('h'))],
        "← h",
        Cmd::Left,
        "previous choice (method, base, resume, reward)",
    ),
    b(
        Ctx::Train,
        &[key(Right), key(Char('l'))],
        "→ l",
        Cmd::Right,
        "next choice",
    ),
    b(
        Ctx::Train,
        &[key(Enter)],
        "Enter",
        Cmd::Enter,
        "edit the field · on a finished run: back to the form",
    ),
    b(
        Ctx::Train,
        &[key(Char('r'))],
        "r",
        Cmd::StartTrain,
        "start the pass (in the background)",
    ),
    b(
        Ctx::Train,
        &[key(Char('L'))],
        "L",
        Cmd::LoadAdapter,
        "use the new adapter as the checkpoint (when done)",
    ),
    b(
        Ctx::Train,
        &[key(Char('B'))],
        "B",
        Cmd::LoadBest,
        "use the best validated step's adapter instead (when done)",
    ),
    b(
        Ctx::Train,
        &[key(Char('f'))],
        "f",
        Cmd::TrainForm,
        "the form ↔ the run's view",
    ),
    b(
        Ctx::Train,
        &[key(Esc)],
        "Esc",
        Cmd::Back,
        "stop the pass (it saves a checkpoint) · back",
    ),
    b(
        Ctx::TrainEdit,
        &[],
        "type",
        Cmd::Type,
        "edit the value (Backspace deletes)",
    ),
    b(
        Ctx::TrainEdit,
        &[key(Enter), key(Esc), key(Tab)],
        "Enter Esc",
        Cmd::Enter,
        "done editing",
    ),
    b(
        Ctx::Filter,
        &[],
        "type",
        Cmd::Type,
        "the filter text (Backspace deletes)",
    ),
    b(
        Ctx::Filter,
        &[key(Esc)],
        "Esc",
        Cmd::Back,
        "clear the filter and stop typing",
    ),
    b(
        Ctx::Filter,
        &[key(Enter)],
        "Enter",
        Cmd::Enter,
        "stop typing and simulate the selection",
    ),
    b(
        Ctx::Filter,
        &[key(Tab)],
        "Tab",
        Cmd::NextPane,
        "stop typing, next pane",
    ),
    b(Ctx::Filter, &[key(Up)], "↑", Cmd::Up, "previous scenario"),
    b(Ctx::Filter, &[key(Down)], "↓", Cmd::Down, "next scenario"),
];

/// One row of the table in use: a built-in row, its keys as the user file gave them.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub ctx: Ctx,
    pub keys: Vec<Key>,
    /// How the keys are written in help: the built-in label, or the file's keys.
    pub label: String,
    pub cmd: Cmd,
    pub help: &'static str,
}

/// The binding table in use: [`BINDINGS`] with the user file's keys applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Keymap {
    rows: Vec<Row>,
}

impl Default for Keymap {
    fn default() -> Self {
        Keymap {
            rows: BINDINGS
                .iter()
                .map(|b| Row {
                    ctx: b.ctx,
                    keys: b.keys.to_vec(),
                    label: b.label.to_string(),
                    cmd: b.cmd,
                    help: b.help,
                })
                .collect(),
        }
    }
}

/// Why a key file is refused; each names the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: [{ctx}]: unknown context (the contexts: {known})", path.display())]
    UnknownContext {
        path: PathBuf,
        ctx: String,
        known: String,
    },
    #[error("{}: {ctx} = …: expected a table [{ctx}] of action = \"key\" lines", path.display())]
    NotATable { path: PathBuf, ctx: String },
    #[error("{}: [{ctx}] {action}: unknown action here (the actions of [{ctx}]: {known})", path.display())]
    UnknownAction {
        path: PathBuf,
        ctx: String,
        action: String,
        known: String,
    },
    #[error("{}: [{ctx}] {action}: expected \"key\" or [\"key\", …], at least one", path.display())]
    NotKeys {
        path: PathBuf,
        ctx: String,
        action: String,
    },
    #[error("{}: [{ctx}] {action} = \"{key}\": {why}", path.display())]
    BadKey {
        path: PathBuf,
        ctx: String,
        action: String,
        key: String,
        why: String,
    },
    #[error("{}: [{ctx}] \"{key}\" is bound to both {first} and {second}", path.display())]
    Conflict {
        path: PathBuf,
        ctx: String,
        key: String,
        first: String,
        second: String,
    },
}

/// The environment variable naming another key file (tests point it at a temporary one).
pub const KEYS_ENV: &str = "HUMANLM_KEYS";

/// The user's key file: `$HUMANLM_KEYS`, else `$XDG_CONFIG_HOME/humanlm/keys.toml`, else
/// `~/.config/humanlm/keys.toml`; `None` when there is no home to look in.
pub fn user_file() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(p) = var(KEYS_ENV) {
        return Some(PathBuf::from(p));
    }
    let config = var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("humanlm").join("keys.toml"))
}

impl Keymap {
    /// The table with the user's file applied ([`user_file`]); the built-in table when that
    /// file does not exist (a file `HUMANLM_KEYS` names must exist).
    pub fn load() -> Result<Keymap, KeysError> {
        let Some(path) = user_file() else {
            return Ok(Keymap::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Keymap::parse(&text, &path),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && std::env::var_os(KEYS_ENV).is_none_or(|v| v.is_empty()) =>
            {
                Ok(Keymap::default())
            }
            Err(source) => Err(KeysError::Read { path, source }),
        }
    }

    /// The built-in table with the bindings of `text` (a `keys.toml` read from `path`) applied:
    /// a table per context of `action = "key"` or `action = ["key", …]`, each replacing that
    /// action's keys in that context.
    pub fn parse(text: &str, path: &Path) -> Result<Keymap, KeysError> {
        let path = path.to_path_buf();
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e.span().map_or(0, |s| s.start).min(text.len());
            KeysError::Syntax {
                path: path.clone(),
                line: text[..at].matches('\n').count() + 1,
                message: e.message().replace('\n', " "),
            }
        })?;
        let mut map = Keymap::default();
        for (ctx_name, actions) in &table {
            let Some(ctx) = Ctx::ALL.into_iter().find(|c| c.name() == ctx_name) else {
                return Err(KeysError::UnknownContext {
                    path,
                    ctx: ctx_name.clone(),
                    known: Ctx::ALL.map(Ctx::name).join(", "),
                });
            };
            let toml::Value::Table(actions) = actions else {
                return Err(KeysError::NotATable {
                    path,
                    ctx: ctx_name.clone(),
                });
            };
            for (action, value) in actions {
                map.bind(ctx, action, value, &path)?;
            }
        }
        map.check(&path)?;
        Ok(map)
    }

    /// Give `action` of `ctx` the keys `value` names.
    fn bind(
        &mut self,
        ctx: Ctx,
        action: &str,
        value: &toml::Value,
        path: &Path,
    ) -> Result<(), KeysError> {
        let at = |what: &str| (path.to_path_buf(), ctx.name().to_string(), what.to_string());
        let Some(row) = self
            .rows
            .iter_mut()
            .find(|r| r.ctx == ctx && r.cmd.name() == Some(action))
        else {
            let (path, ctx_name, action) = at(action);
            let known: Vec<&str> = BINDINGS
                .iter()
                .filter(|b| b.ctx == ctx)
                .filter_map(|b| b.cmd.name())
                .collect();
            return Err(KeysError::UnknownAction {
                path,
                ctx: ctx_name,
                action,
                known: known.join(", "),
            });
        };
        let names: Option<Vec<&str>> = match value {
            toml::Value::String(s) => Some(vec![s.as_str()]),
            toml::Value::Array(items) => items.iter().map(|v| v.as_str()).collect(),
            _ => None,
        };
        let Some(names) = names.filter(|n| !n.is_empty()) else {
            let (path, ctx, action) = at(action);
            return Err(KeysError::NotKeys { path, ctx, action });
        };
        let bad = |name: &str, why: &str| {
            let (path, ctx, action) = at(action);
            KeysError::BadKey {
                path,
                ctx,
                action,
                key: name.to_string(),
                why: why.to_string(),
            }
        };
        let mut keys = vec![];
        for name in &names {
            let k = Key::parse(name).map_err(|why| bad(name, why))?;
            if k.always_quits() && row.cmd != Cmd::Quit {
                return Err(bad(name, "Ctrl-C and Ctrl-Q always quit"));
            }
            if ctx.is_text() && k.edits_text() {
                return Err(bad(
                    name,
                    "this context is a text field: printable keys and Backspace type there",
                ));
            }
            keys.push(k);
        }
        if matches!(row.cmd, Cmd::Score(_)) && keys.len() > SCORE_KEYS.len() {
            return Err(bad(
                names[SCORE_KEYS.len()],
                "score takes at most 10 keys (1…10)",
            ));
        }
        row.label = keys.iter().map(|k| k.label()).collect::<Vec<_>>().join(" ");
        row.keys = keys;
        Ok(())
    }

    /// No key may mean two actions in one context.
    fn check(&self, path: &Path) -> Result<(), KeysError> {
        for (i, a) in self.rows.iter().enumerate() {
            for b in self.rows[i + 1..].iter().filter(|b| b.ctx == a.ctx) {
                if let Some(k) = a.keys.iter().find(|k| b.keys.contains(k)) {
                    let name = |r: &Row| r.cmd.name().unwrap_or("type").to_string();
                    return Err(KeysError::Conflict {
                        path: path.to_path_buf(),
                        ctx: a.ctx.name().to_string(),
                        key: k.label(),
                        first: name(a),
                        second: name(b),
                    });
                }
            }
        }
        Ok(())
    }

    /// The rows of `ctx`, in table order (what the help lists).
    pub fn rows(&self, ctx: Ctx) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(move |r| r.ctx == ctx)
    }

    /// The command for `key` in the first of `ctxs` that binds it. Ctrl-C and Ctrl-Q quit
    /// everywhere; in a text field Ctrl with a key no row takes counts as the plain key.
    pub fn lookup(&self, ctxs: &[Ctx], ev: &KeyEvent) -> Option<Cmd> {
        let key = Key::of(ev);
        if key.always_quits() {
            return Some(Cmd::Quit);
        }
        for ctx in ctxs {
            let plain = Key { ctrl: false, ..key };
            for try_key in std::iter::once(key).chain((key.ctrl && ctx.is_text()).then_some(plain))
            {
                for row in self.rows(*ctx) {
                    if let Some(i) = row.keys.iter().position(|k| *k == try_key) {
                        return Some(match row.cmd {
                            Cmd::Score(_) => Cmd::Score(i as u8 + 1),
                            c => c,
                        });
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    fn parse(text: &str) -> Result<Keymap, String> {
        Keymap::parse(text, Path::new("/home/u/keys.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn key_names_parse() {
        let k = |n: &str| Key::parse(n).unwrap();
        assert_eq!(k("q"), key(Char('q')));
        assert_eq!(k("G"), key(Char('G')));
        assert_eq!(k("shift-g"), key(Char('G')));
        assert_eq!(k("ctrl-c"), ctrl('c'));
        assert_eq!(k("Ctrl-U"), ctrl('u'));
        assert_eq!(k("shift-tab"), key(BackTab));
        assert_eq!(k("pgup"), key(PageUp));
        assert_eq!(k("PgDn"), key(PageDown));
        assert_eq!(k("f5"), key(KeyCode::F(5)));
        assert_eq!(k("space"), key(Char(' ')));
        assert_eq!(k("-"), key(Char('-')));
        assert!(Key::parse("f25").is_err());
        assert!(Key::parse("pageupp").is_err());
        assert!(Key::parse("ctrl-").is_err());
        assert!(Key::parse("alt-x").is_err());
        assert!(Key::parse("shift-up").is_err());
    }

    #[test]
    fn the_builtin_table_has_no_conflicts_and_every_action_a_name() {
        Keymap::default().check(Path::new("built-in")).unwrap();
        for b in BINDINGS {
            assert!(b.cmd.name().is_some() || b.keys.is_empty(), "{}", b.help);
        }
    }

    #[test]
    fn an_override_replaces_the_keys_and_the_label() {
        let map = parse("[global]\nquit = \"x\"\n[simulate]\nregenerate = [\"f5\", \"ctrl-r\"]\n")
            .unwrap();
        let none = KeyModifiers::NONE;
        assert_eq!(
            map.lookup(&[Ctx::Global], &ev(Char('x'), none)),
            Some(Cmd::Quit)
        );
        assert_eq!(map.lookup(&[Ctx::Global], &ev(Char('q'), none)), None);
        let sim = [Ctx::Simulate, Ctx::Global];
        assert_eq!(
            map.lookup(&sim, &ev(KeyCode::F(5), none)),
            Some(Cmd::Regenerate)
        );
        assert_eq!(
            map.lookup(&sim, &ev(Char('r'), KeyModifiers::CONTROL)),
            Some(Cmd::Regenerate)
        );
        assert_eq!(map.lookup(&sim, &ev(Char('r'), none)), None);
        let row = map
            .rows(Ctx::Simulate)
            .find(|r| r.cmd == Cmd::Regenerate)
            .unwrap();
        assert_eq!(row.label, "F5 Ctrl-R");
        // Ctrl-C quits whatever the file says.
        assert_eq!(
            map.lookup(&sim, &ev(Char('c'), KeyModifiers::CONTROL)),
            Some(Cmd::Quit)
        );
    }

    #[test]
    fn the_readme_example_is_accepted() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n[global]").unwrap() + "```toml\n".len();
        let len = readme[start..].find("```").unwrap();
        let map = parse(&readme[start..start + len]).unwrap();
        let none = KeyModifiers::NONE;
        assert_eq!(
            map.lookup(&[Ctx::Global], &ev(KeyCode::F(1), none)),
            Some(Cmd::Help)
        );
    }

    #[test]
    fn score_keys_count_from_one() {
        let map = parse("[blind]\nscore = [\"a\", \"s\", \"d\"]\n").unwrap();
        let none = KeyModifiers::NONE;
        assert_eq!(
            map.lookup(&[Ctx::Blind], &ev(Char('d'), none)),
            Some(Cmd::Score(3))
        );
        let default = Keymap::default();
        assert_eq!(
            default.lookup(&[Ctx::Blind], &ev(Char('0'), none)),
            Some(Cmd::Score(10))
        );
        assert!(parse(
            "[blind]\nscore = [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"0\",\"a\"]"
        )
        .unwrap_err()
        .contains("at most 10"));
    }

    #[test]
    fn each_fault_is_one_line_naming_file_entry_and_fault() {
        let cases = [
            (
                "[glob]\nquit = \"x\"",
                "/home/u/keys.toml: [glob]: unknown context",
            ),
            (
                "[global]\nexplode = \"x\"",
                "/home/u/keys.toml: [global] explode: unknown action here",
            ),
            (
                "[simulate]\nquit = \"x\"",
                "[simulate] quit: unknown action here",
            ),
            (
                "[global]\nquit = \"ctrl-\"",
                "[global] quit = \"ctrl-\": no key",
            ),
            (
                "[global]\nquit = \"hyper-x\"",
                "[global] quit = \"hyper-x\": not a key name",
            ),
            ("[global]\nquit = 3", "[global] quit: expected \"key\""),
            ("[global]\nquit = []", "[global] quit: expected \"key\""),
            ("global = 3", "global = …: expected a table"),
            (
                "[global]\nhelp = \"h\"",
                "[global] \"h\" is bound to both help and left",
            ),
            ("[global]\nhelp = \"ctrl-c\"", "always quit"),
            (
                "[filter]\ndown = \"j\"",
                "[filter] down = \"j\": this context is a text field",
            ),
            ("[global]\n\nquit = \"x", "/home/u/keys.toml:3: "),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
            assert!(e.starts_with("/home/u/keys.toml"), "{e}");
        }
    }

    #[test]
    fn ctrl_in_a_text_field_falls_back_to_the_plain_key() {
        let map = Keymap::default();
        let e = ev(Enter, KeyModifiers::CONTROL);
        assert_eq!(map.lookup(&[Ctx::Filter], &e), Some(Cmd::Enter));
        assert_eq!(
            map.lookup(&[Ctx::Global], &ev(Char('j'), KeyModifiers::CONTROL)),
            None
        );
        assert_eq!(
            map.lookup(&[Ctx::EndpointForm], &ev(Char('u'), KeyModifiers::CONTROL)),
            Some(Cmd::ClearField)
        );
    }
}
