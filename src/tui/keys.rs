//! Every key binding in one table: the update logic looks keys up here and the help popup is
//! rendered from it, so the two cannot disagree.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

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
    /// Train: start the pass the form describes.
    StartTrain,
    /// Train: use the adapter the pass wrote as the current checkpoint.
    LoadAdapter,
    /// Train: back from the run's view to the form.
    TrainForm,
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
    Eval,
    JudgePicker,
    EndpointForm,
    Train,
    TrainEdit,
}

impl Ctx {
    pub fn title(self) -> &'static str {
        match self {
            Ctx::Global => "Everywhere",
            Ctx::Simulate => "Simulate",
            Ctx::PromptView => "Simulator's-eye view (v)",
            Ctx::Checkpoints => "Checkpoints (m)",
            Ctx::Prompts => "Prompts (p)",
            Ctx::Compare => "Compare (c)",
            Ctx::Blind => "Blind rating (c, then b)",
            Ctx::Eval => "Eval (e)",
            Ctx::JudgePicker => "Judge picker (e, then r)",
            Ctx::EndpointForm => "Add an endpoint (m, then a)",
            Ctx::Train => "Train (t)",
            Ctx::TrainEdit => "Train form, editing a field (Enter)",
        }
    }
}

/// One row of the table.
pub struct Binding {
    pub ctx: Ctx,
    pub keys: &'static [KeyCode],
    /// How the keys are written in help.
    pub label: &'static str,
    pub cmd: Cmd,
    pub help: &'static str,
}

const fn b(
    ctx: Ctx,
    keys: &'static [KeyCode],
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

/// The bindings; a screen's own rows are looked up before the global ones.
pub const BINDINGS: &[Binding] = &[
    b(
        Ctx::Global,
        &[Char('q')],
        "q",
        Cmd::Quit,
        "quit (Ctrl-C too)",
    ),
    b(Ctx::Global, &[Char('?')], "?", Cmd::Help, "this help"),
    b(
        Ctx::Global,
        &[Esc],
        "Esc",
        Cmd::Back,
        "cancel what runs · close · back to Simulate",
    ),
    b(Ctx::Global, &[Up, Char('k')], "↑ k", Cmd::Up, "up"),
    b(Ctx::Global, &[Down, Char('j')], "↓ j", Cmd::Down, "down"),
    b(Ctx::Global, &[Left, Char('h')], "← h", Cmd::Left, "left"),
    b(Ctx::Global, &[Right, Char('l')], "→ l", Cmd::Right, "right"),
    b(Ctx::Global, &[PageUp], "PgUp", Cmd::PageUp, "page up"),
    b(Ctx::Global, &[PageDown], "PgDn", Cmd::PageDown, "page down"),
    b(
        Ctx::Global,
        &[Home, Char('g')],
        "Home g",
        Cmd::Top,
        "to the top",
    ),
    b(
        Ctx::Global,
        &[End, Char('G')],
        "End G",
        Cmd::Bottom,
        "to the end",
    ),
    b(Ctx::Global, &[Tab], "Tab", Cmd::NextPane, "next pane"),
    b(
        Ctx::Global,
        &[BackTab],
        "S-Tab",
        Cmd::PrevPane,
        "previous pane",
    ),
    b(
        Ctx::Global,
        &[Char('v')],
        "v",
        Cmd::GoPromptView,
        "prompt the model saw",
    ),
    b(
        Ctx::Global,
        &[Char('m')],
        "m",
        Cmd::GoCheckpoints,
        "checkpoints",
    ),
    b(
        Ctx::Global,
        &[Char('p')],
        "p",
        Cmd::GoPrompts,
        "prompt sets",
    ),
    b(Ctx::Global, &[Char('c')], "c", Cmd::GoCompare, "compare"),
    b(
        Ctx::Global,
        &[Char('e')],
        "e",
        Cmd::GoEval,
        "evaluation runs",
    ),
    b(
        Ctx::Global,
        &[Char('t')],
        "t",
        Cmd::GoTrain,
        "train (SFT or GRPO, LoRA)",
    ),
    b(
        Ctx::Global,
        &[Char('s')],
        "s",
        Cmd::SaveSession,
        "save the session (runs/sessions/)",
    ),
    b(
        Ctx::Global,
        &[Char('o')],
        "o",
        Cmd::OpenSession,
        "open the latest saved session",
    ),
    b(
        Ctx::Global,
        &[Char('M')],
        "M",
        Cmd::CycleMode,
        "mode: humanlm → response → joint",
    ),
    b(
        Ctx::Global,
        &[Char('n')],
        "n",
        Cmd::CycleSamples,
        "number of samples: 1 2 3 4 6 8",
    ),
    b(
        Ctx::Simulate,
        &[Enter],
        "Enter",
        Cmd::Enter,
        "simulate the selected scenario (on a domain: fold)",
    ),
    b(
        Ctx::Simulate,
        &[Char('/')],
        "/",
        Cmd::Filter,
        "filter scenarios (Esc clears)",
    ),
    b(
        Ctx::Simulate,
        &[Char('r')],
        "r",
        Cmd::Regenerate,
        "regenerate with a new seed",
    ),
    b(
        Ctx::Simulate,
        &[Char('T')],
        "T",
        Cmd::ToggleThink,
        "show or fold the <think> block",
    ),
    b(
        Ctx::Simulate,
        &[Char('f')],
        "f",
        Cmd::TogglePersona,
        "unfold or fold the persona",
    ),
    b(
        Ctx::Simulate,
        &[Char('R')],
        "R",
        Cmd::ToggleReference,
        "show or hide the real reply",
    ),
    b(
        Ctx::PromptView,
        &[Tab, Right, Char('l')],
        "Tab →",
        Cmd::NextPane,
        "next call",
    ),
    b(
        Ctx::PromptView,
        &[BackTab, Left, Char('h')],
        "S-Tab ←",
        Cmd::PrevPane,
        "previous call",
    ),
    b(
        Ctx::PromptView,
        &[Char('i')],
        "i",
        Cmd::ShowIds,
        "token ids instead of text",
    ),
    b(
        Ctx::Checkpoints,
        &[Enter],
        "Enter",
        Cmd::Enter,
        "load the checkpoint (in the background)",
    ),
    b(
        Ctx::Checkpoints,
        &[Char('r')],
        "r",
        Cmd::Rescan,
        "rescan checkpoints/",
    ),
    b(
        Ctx::Checkpoints,
        &[Char('a')],
        "a",
        Cmd::AddEndpoint,
        "add an OpenAI-compatible endpoint (checkpoints/endpoints.toml)",
    ),
    b(
        Ctx::Checkpoints,
        &[Char('x')],
        "x",
        Cmd::RemoveEndpoint,
        "remove the selected endpoint",
    ),
    b(
        Ctx::EndpointForm,
        &[Tab, Down],
        "Tab ↓",
        Cmd::NextPane,
        "next field (URL, model, API-key variable)",
    ),
    b(
        Ctx::EndpointForm,
        &[BackTab, Up],
        "S-Tab ↑",
        Cmd::PrevPane,
        "previous field",
    ),
    b(
        Ctx::EndpointForm,
        &[Enter],
        "Enter",
        Cmd::Enter,
        "next field; on the last, check and add it",
    ),
    b(
        Ctx::EndpointForm,
        &[Esc],
        "Esc",
        Cmd::Back,
        "close without adding",
    ),
    b(
        Ctx::Prompts,
        &[Enter],
        "Enter",
        Cmd::Enter,
        "on a set: use it · on a file: open in $EDITOR",
    ),
    b(
        Ctx::Prompts,
        &[Char('E')],
        "E",
        Cmd::Edit,
        "open the file in $EDITOR",
    ),
    b(
        Ctx::Prompts,
        &[Char('a')],
        "a",
        Cmd::MarkDiff,
        "mark the set as the diff's base (A)",
    ),
    b(
        Ctx::Prompts,
        &[Char('d')],
        "d",
        Cmd::Diff,
        "diff the marked set against this one",
    ),
    b(
        Ctx::Prompts,
        &[Char('r')],
        "r",
        Cmd::Rescan,
        "reload the sets from disk",
    ),
    b(
        Ctx::Compare,
        &[Enter],
        "Enter",
        Cmd::Enter,
        "run the selected scenario under every side",
    ),
    b(
        Ctx::Compare,
        &[Left, Char('h')],
        "← h",
        Cmd::Left,
        "previous prompt set for the side",
    ),
    b(
        Ctx::Compare,
        &[Right, Char('l')],
        "→ l",
        Cmd::Right,
        "next prompt set for the side",
    ),
    b(
        Ctx::Compare,
        &[Char('[')],
        "[",
        Cmd::PrevCheckpoint,
        "previous checkpoint for the side",
    ),
    b(
        Ctx::Compare,
        &[Char(']')],
        "]",
        Cmd::NextCheckpoint,
        "next checkpoint for the side",
    ),
    b(
        Ctx::Compare,
        &[Char('+')],
        "+",
        Cmd::AddSide,
        "add a third side (C)",
    ),
    b(
        Ctx::Compare,
        &[Char('-')],
        "-",
        Cmd::RemoveSide,
        "remove the third side",
    ),
    b(
        Ctx::Compare,
        &[Char('b')],
        "b",
        Cmd::Blind,
        "blind rating of the replies",
    ),
    b(
        Ctx::Blind,
        &[Left, Char('h')],
        "← h",
        Cmd::Left,
        "previous reply",
    ),
    b(
        Ctx::Blind,
        &[Right, Char('l')],
        "→ l",
        Cmd::Right,
        "next reply",
    ),
    b(
        Ctx::Blind,
        &[Tab],
        "Tab",
        Cmd::NextPane,
        "similarity ↔ humanlike",
    ),
    b(
        Ctx::Blind,
        &[],
        "1-9 0",
        Cmd::Enter,
        "score the field (0 = 10)",
    ),
    b(
        Ctx::Blind,
        &[Enter],
        "Enter",
        Cmd::Enter,
        "reveal models + reference and save (all rated)",
    ),
    b(
        Ctx::Eval,
        &[Char('r')],
        "r",
        Cmd::RunEval,
        "choose a judge and start an evaluation over scenarios/",
    ),
    b(
        Ctx::Eval,
        &[Enter],
        "Enter",
        Cmd::Enter,
        "samples of the run, sorted by score",
    ),
    b(Ctx::Eval, &[Char('R')], "R", Cmd::Rescan, "rescan runs/"),
    b(
        Ctx::JudgePicker,
        &[Up, Char('k')],
        "↑ k",
        Cmd::Up,
        "previous judge",
    ),
    b(
        Ctx::JudgePicker,
        &[Down, Char('j')],
        "↓ j",
        Cmd::Down,
        "next judge",
    ),
    b(
        Ctx::JudgePicker,
        &[Enter],
        "Enter",
        Cmd::Enter,
        "start the evaluation with this judge",
    ),
    b(
        Ctx::JudgePicker,
        &[Char('R')],
        "R",
        Cmd::Rescan,
        "reread prompts/judges/",
    ),
    b(Ctx::JudgePicker, &[Esc], "Esc", Cmd::Back, "close"),
    b(
        Ctx::Train,
        &[Up, Char('k')],
        "↑ k",
        Cmd::Up,
        "previous field",
    ),
    b(
        Ctx::Train,
        &[Down, Char('j')],
        "↓ j",
        Cmd::Down,
        "next field",
    ),
    b(
        Ctx::Train,
        &[Left, Char('h')],
        "← h",
        Cmd::Left,
        "previous choice (method, base, resume, reward)",
    ),
    b(
        Ctx::Train,
        &[Right, Char('l')],
        "→ l",
        Cmd::Right,
        "next choice",
    ),
    b(
        Ctx::Train,
        &[Enter],
        "Enter",
        Cmd::Enter,
        "edit the field · on a finished run: back to the form",
    ),
    b(
        Ctx::Train,
        &[Char('r')],
        "r",
        Cmd::StartTrain,
        "start the pass (in the background)",
    ),
    b(
        Ctx::Train,
        &[Char('L')],
        "L",
        Cmd::LoadAdapter,
        "use the new adapter as the checkpoint (when done)",
    ),
    b(
        Ctx::Train,
        &[Char('f')],
        "f",
        Cmd::TrainForm,
        "the form ↔ the run's view",
    ),
    b(
        Ctx::Train,
        &[Esc],
        "Esc",
        Cmd::Back,
        "stop the pass (it saves a checkpoint) · back",
    ),
    b(
        Ctx::TrainEdit,
        &[],
        "type",
        Cmd::Enter,
        "edit the value (Backspace deletes)",
    ),
    b(
        Ctx::TrainEdit,
        &[Enter, Esc, Tab],
        "Enter Esc",
        Cmd::Enter,
        "done editing",
    ),
];

/// The command for `key` in the first of `ctxs` that binds it.
pub fn lookup(ctxs: &[Ctx], key: &KeyEvent) -> Option<Cmd> {
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return match key.code {
            Char('c') | Char('q') => Some(Cmd::Quit),
            _ => None,
        };
    }
    for ctx in ctxs {
        for bind in BINDINGS.iter().filter(|b| b.ctx == *ctx) {
            if bind.keys.contains(&key.code) {
                return Some(bind.cmd);
            }
        }
    }
    None
}
