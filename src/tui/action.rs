//! What changes the state (`Action`: keys, mouse, worker messages) and what the state asks the
//! runtime to do (`Effect`: start work on a thread, touch files, run the editor).

use super::app::{
    CkptRow, ConvMsg, EvalMsg, JudgeRow, ModelInfo, PlanView, RunDetail, Session, SetInfo, Side,
    SimMsg, TrainMsg,
};
use crate::eval::{EvalSpec, RunListing};
use crate::remote::EndpointConfig;
use crate::scenario::Scenario;
use crate::sim::{Mode, SamplingChoice};
use crate::train::TrainConfig;
use ratatui::crossterm::event::{KeyEvent, MouseEvent};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum Action {
    Key(KeyEvent),
    Mouse(MouseEvent),
    Resize(u16, u16),
    /// A quarter of a second passed (spinners, elapsed times, message expiry).
    Tick,
    Scenarios {
        entries: Vec<crate::scenario::Loaded>,
        problems: Vec<String>,
    },
    ModelLoaded(ModelInfo),
    ModelFailed {
        name: String,
        error: String,
    },
    /// The embedding judge loaded (its name), or why there is none.
    Embedder(Result<String, String>),
    Checkpoints(Vec<CkptRow>),
    PromptSets(Vec<SetInfo>),
    /// Files under prompts/ changed on disk.
    PromptsChanged(Vec<String>),
    Sim {
        job: u64,
        msg: SimMsg,
    },
    /// One side of a comparison.
    Cmp {
        job: u64,
        side: usize,
        msg: SimMsg,
    },
    Plan {
        job: u64,
        result: Result<PlanView, String>,
    },
    /// A conversation going on (Converse); a failure comes as `Failed` with the job.
    Conv {
        job: u64,
        msg: ConvMsg,
    },
    /// The prompt a conversation's turn was written from: per call its name, tokens and text.
    TurnPrompt {
        job: u64,
        result: Result<Vec<crate::tui::app::CallPrompt>, String>,
    },
    /// Similarities of one call's outputs (one per sample) with the real reply.
    Scores {
        job: u64,
        call: String,
        texts: Vec<String>,
        result: Result<Vec<f64>, String>,
    },
    Eval {
        job: u64,
        msg: EvalMsg,
    },
    Runs(Vec<RunListing>),
    /// The judge configurations of `prompts/judges/`.
    Judges(Vec<JudgeRow>),
    Train {
        job: u64,
        msg: TrainMsg,
    },
    RunDetail(RunDetail),
    EditorDone {
        path: PathBuf,
        result: Result<(), String>,
    },
    SessionOpened(Session),
    /// A conversation turn's text back from `$EDITOR` (`E` on Converse).
    TurnEdited {
        branch: usize,
        turn: usize,
        result: Result<String, String>,
    },
    /// A worker finished something worth a line in the status bar.
    Info(String),
    /// A worker failed (or panicked); `job` is cleared if given.
    Failed {
        job: Option<u64>,
        error: String,
    },
}

/// A simulation to run on the loaded checkpoint.
#[derive(Debug, Clone)]
pub struct SimRequest {
    pub job: u64,
    pub scenario: Scenario,
    pub set: String,
    pub mode: Mode,
    pub sampling: SamplingChoice,
    pub cancel: Arc<AtomicBool>,
}

/// A conversation to go on with: the loaded checkpoint is the simulated user.
#[derive(Debug, Clone)]
pub struct ConverseRequest {
    pub job: u64,
    pub scenario: Scenario,
    /// The conversation so far (for a prompt: the turns before the one shown).
    pub turns: Vec<crate::converse::Turn>,
    /// Who writes the next turn.
    pub next: crate::scenario::Speaker,
    pub seed: u64,
    pub set: String,
    pub mode: Mode,
    pub sampling: SamplingChoice,
    /// A checkpoint or endpoint spec; empty: the loaded checkpoint talks to itself.
    pub assistant: String,
    pub max_turns: Option<usize>,
    pub cancel: Arc<AtomicBool>,
}

#[derive(Debug, Clone)]
pub enum Effect {
    /// Load a checkpoint (name or path); dense matrices become the given type (`None`: the
    /// checkpoint's own default, see `Checkpoint::load_quantize`).
    LoadCheckpoint(String, Option<crate::model::quantize::Quantize>),
    /// Use a model behind an endpoint (checked with `GET /models` first).
    LoadEndpoint(EndpointConfig),
    /// Write `checkpoints/endpoints.toml`, then rescan the checkpoints.
    SaveEndpoints(Vec<EndpointConfig>),
    ScanJudges,
    /// A LoRA pass into `out` (`resume`: continue the run already there).
    Train {
        job: u64,
        cfg: Box<TrainConfig>,
        out: PathBuf,
        resume: bool,
        cancel: Arc<AtomicBool>,
    },
    ScanScenarios,
    ScanCheckpoints,
    ScanPrompts,
    ScanRuns,
    Simulate(SimRequest),
    /// Render the prompts of a simulation (needs the tokenizer).
    Plan(SimRequest),
    Converse(ConverseRequest),
    /// Render the prompt the next turn of a conversation is written from.
    TurnPrompt(ConverseRequest),
    Score {
        job: u64,
        call: String,
        reference: String,
        texts: Vec<String>,
    },
    Compare {
        req: SimRequest,
        sides: Vec<Side>,
    },
    Eval {
        job: u64,
        spec: Box<EvalSpec>,
        cancel: Arc<AtomicBool>,
    },
    LoadRun {
        path: PathBuf,
        prev: Option<PathBuf>,
    },
    Edit(PathBuf),
    /// Edit a conversation turn's text in `$EDITOR` (through a file under the system's
    /// temporary folder, removed afterwards).
    EditTurn {
        branch: usize,
        turn: usize,
        text: String,
    },
    /// One JSON line for `runs/ratings.jsonl`.
    AppendRating(serde_json::Value),
    SaveSession(Box<Session>),
    OpenLatestSession,
}
