//! The workbench's state: everything a frame is drawn from. It holds no model, thread or file
//! handle, so tests build it directly and drive it with actions.

use crate::eval::{RunListing, SampleRecord, Summary};
use crate::judge::JudgeConfig;
use crate::model::CheckpointInfo;
use crate::remote::EndpointConfig;
use crate::scenario::{self, Domain};
use crate::sim::{self, Mode, Output, SamplingChoice, SimSample};
use crate::train::StepEvent;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Ticks per second (the runtime sends `Action::Tick` this often).
pub const TICKS_PER_S: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Simulate,
    /// The exact prompts of the selected scenario (`v`), opened from Simulate.
    PromptView,
    Checkpoints,
    Prompts,
    Compare,
    Converse,
    Eval,
    Train,
}

impl Screen {
    /// The screens with a tab in the header, in order.
    pub const TABS: [Screen; 7] = [
        Screen::Simulate,
        Screen::Checkpoints,
        Screen::Prompts,
        Screen::Compare,
        Screen::Converse,
        Screen::Eval,
        Screen::Train,
    ];

    /// The tab's label where the header is short of room.
    pub fn short_title(self) -> &'static str {
        match self {
            Screen::Simulate => "Sim",
            Screen::PromptView => "View",
            Screen::Checkpoints => "Ckpt",
            Screen::Prompts => "Prm",
            Screen::Compare => "Cmp",
            Screen::Converse => "Conv",
            Screen::Eval => "Eval",
            Screen::Train => "Train",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Screen::Simulate => "Simulate",
            Screen::PromptView => "Prompt view",
            Screen::Checkpoints => "Checkpoints",
            Screen::Prompts => "Prompts",
            Screen::Compare => "Compare",
            Screen::Converse => "Converse",
            Screen::Eval => "Eval",
            Screen::Train => "Train",
        }
    }
}

/// The panes of the Simulate screen, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Scenarios,
    Thread,
    States,
    Reply,
}

impl Pane {
    pub const ORDER: [Pane; 4] = [Pane::Scenarios, Pane::Thread, Pane::States, Pane::Reply];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

/// The scenario browser: folded domains, the filter, the selected row.
#[derive(Debug, Clone, Default)]
pub struct Browser {
    pub filter: String,
    /// Typing goes into the filter.
    pub filtering: bool,
    pub folded: BTreeSet<Domain>,
    /// Index into `App::browser_rows()`.
    pub selected: usize,
}

/// One visible row of the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowserRow {
    Domain {
        domain: Domain,
        count: usize,
        folded: bool,
    },
    /// Index into `App::scenarios`.
    Scenario(usize),
}

/// What a long task is, for the status line and for Esc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Simulate,
    Compare,
    Eval,
    Plan,
    Train,
    Converse,
    /// Rendering the prompt a conversation's turn was written from.
    ConversePrompt,
}

/// A task running on a worker thread.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: u64,
    pub kind: JobKind,
    pub cancel: Arc<AtomicBool>,
    pub started: u64,
}

/// The loaded checkpoint, as the status bar shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub device: String,
    pub weights: String,
    pub context: usize,
    pub load_ms: u64,
    /// The prompt set the checkpoint names (`humanlm.toml`).
    pub default_set: Option<String>,
    /// The type a dense checkpoint was quantized to as it loaded (`q8_0 (auto)`), if it was.
    pub quantized_on_load: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ModelState {
    pub loaded: Option<ModelInfo>,
    /// Being loaded in the background: name and the tick it started.
    pub loading: Option<(String, u64)>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JudgeState {
    Loading,
    /// The embedding judge, by model name.
    Ready(String),
    /// Why there is no judge (no embedding model on disk).
    Missing(String),
}

/// Decode statistics of the call that is streaming.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Tokens streamed in this call (all samples).
    pub tokens: usize,
    /// From the call's start to its first token (prefill included).
    pub ttft_ms: Option<f64>,
    /// Decode rate after the first token, over all samples.
    pub tok_s: f64,
    /// Prompt tokens the prefix cache served (None until known, and for endpoints).
    #[serde(default)]
    pub cached_tokens: Option<usize>,
}

/// One call's text for one sample as it streams (the whole output once the call is done).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallOut {
    pub text: String,
    pub done: bool,
}

/// One sample of a simulation, streaming or finished.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleOut {
    /// Per call (`stance` … `response`, or `joint`).
    pub calls: BTreeMap<String, CallOut>,
    /// The finished sample (parsed states and reply, each call's stop reason and tokens), once
    /// the simulation is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<SimSample>,
    /// Embedding similarity with the real reply, per call name.
    #[serde(default)]
    pub scores: BTreeMap<String, f64>,
    /// The text each score was computed on (rescored when the final parse differs).
    #[serde(skip)]
    pub scored: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Waiting for the checkpoint, or generating.
    Running,
    Done,
    Cancelled,
    Failed(String),
}

/// A simulation of one scenario: its settings, the calls so far and every sample's output.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRun {
    pub job: u64,
    pub scenario: String,
    pub checkpoint: String,
    pub set: String,
    pub set_hash: String,
    pub mode: Mode,
    pub sampling: SamplingChoice,
    /// The plan's calls so far (a reopened session knows only their names).
    pub calls: Vec<sim::Call>,
    /// The call streaming now.
    pub current: Option<String>,
    pub samples: Vec<SampleOut>,
    pub status: RunStatus,
    pub stats: Stats,
    /// Calls expected (known from the set and mode when the run starts).
    pub expected_calls: usize,
    pub dropped_turns: usize,
    /// Texts sent to the judge per output name (a score on its way is not asked for twice).
    pub requested: BTreeMap<String, Vec<String>>,
    /// Ticks at start and end, for the elapsed time.
    pub started: u64,
    pub finished: Option<u64>,
}

impl SimRun {
    pub fn new(job: u64, scenario: &str, mode: Mode, sampling: &SamplingChoice, tick: u64) -> Self {
        SimRun {
            job,
            scenario: scenario.to_string(),
            checkpoint: String::new(),
            set: String::new(),
            set_hash: String::new(),
            mode,
            sampling: sampling.clone(),
            calls: vec![],
            current: None,
            samples: vec![SampleOut::default(); sampling.n.max(1)],
            status: RunStatus::Running,
            stats: Stats::default(),
            expected_calls: 0,
            dropped_turns: 0,
            requested: BTreeMap::new(),
            started: tick,
            finished: None,
        }
    }

    pub fn running(&self) -> bool {
        self.status == RunStatus::Running
    }

    /// Where the streaming call is: its prefill, or its decode speed.
    pub fn progress(&self) -> String {
        let prompt = self.calls.last().map_or(0, |c| c.prompt_tokens);
        let cached = self.stats.cached_tokens.filter(|&c| c > 0);
        match self.stats.ttft_ms {
            _ if self.current.is_none() => "…".to_string(),
            None => match cached {
                Some(c) => format!(
                    "prefilling {} of {prompt} prompt tokens ({c} cached)",
                    prompt.saturating_sub(c)
                ),
                None => format!("prefilling {prompt} prompt tokens"),
            },
            Some(t) => format!(
                "{:.1} tok/s · ttft {:.2} s · {} tokens{}",
                self.stats.tok_s,
                t / 1000.0,
                self.stats.tokens,
                cached.map_or(String::new(), |c| format!(" · {c}/{prompt} prompt cached"))
            ),
        }
    }

    pub fn total_tokens(&self) -> usize {
        self.samples
            .iter()
            .filter_map(|s| s.result.as_ref())
            .flat_map(|r| r.outputs.values())
            .map(|o| o.tokens)
            .sum()
    }
}

/// A finished sample as the worker hands it over: every call done, its whole output as text.
impl From<SimSample> for SampleOut {
    fn from(s: SimSample) -> SampleOut {
        SampleOut {
            calls: s
                .outputs
                .iter()
                .map(|(k, o)| {
                    let call = CallOut {
                        text: o.raw.clone(),
                        done: true,
                    };
                    (k.clone(), call)
                })
                .collect(),
            result: Some(s),
            scores: Default::default(),
            scored: Default::default(),
        }
    }
}

impl SampleOut {
    /// Whether the finished sample kept the format (`None` while it runs).
    pub fn valid(&self) -> Option<bool> {
        self.result.as_ref().map(|r| r.valid)
    }

    /// The final reply, once finished, if the run had a call that writes one.
    pub fn response(&self) -> Option<&str> {
        let r = self.result.as_ref()?;
        let has_reply = r
            .outputs
            .keys()
            .any(|k| sim::CallKind::of(k).writes_reply());
        has_reply.then_some(r.response.as_str())
    }

    /// The final reasoning of the reply call, if it thought.
    pub fn think(&self) -> Option<&str> {
        self.result.as_ref()?.think.as_deref()
    }

    /// A state's parsed value, once finished.
    pub fn state(&self, key: &str) -> Option<&str> {
        self.result.as_ref()?.states.get(key).map(String::as_str)
    }

    /// What a finished call produced (its stop reason, tokens and format verdict).
    pub fn output(&self, call: &str) -> Option<&Output> {
        self.result.as_ref()?.outputs.get(call)
    }
}

/// What streams from a simulation worker.
#[derive(Debug, Clone, PartialEq)]
pub enum SimMsg {
    Started {
        checkpoint: String,
        set: String,
        set_hash: String,
        calls: usize,
    },
    Call(sim::Call),
    Text {
        call: String,
        sample: usize,
        delta: String,
        stats: Stats,
    },
    /// The streaming call's prefill starts with `cached` prompt tokens from the prefix cache.
    Prefill {
        cached: usize,
    },
    CallDone {
        call: String,
    },
    Done {
        samples: Vec<SampleOut>,
        dropped_turns: usize,
    },
    Failed(String),
}

/// The Simulator's-eye view of one scenario: its plan and what the plan was made for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanView {
    pub scenario: String,
    pub set: String,
    pub set_hash: String,
    pub mode: Mode,
    pub plan: sim::Plan,
}

#[derive(Debug, Clone, Default)]
pub struct PromptViewState {
    pub job: Option<u64>,
    pub plan: Option<PlanView>,
    pub error: Option<String>,
    pub call: usize,
    pub scroll: usize,
    pub ids: bool,
}

/// A row of the Checkpoints screen.
#[derive(Debug, Clone)]
pub struct CkptRow {
    pub name: String,
    pub path: String,
    pub info: Option<CheckpointInfo>,
    pub error: Option<String>,
    pub default_set: Option<String>,
    /// Adapters are listed under their base, indented.
    pub depth: u8,
    /// A model behind an OpenAI-compatible endpoint (`name` is its `endpoint:URL#MODEL` spec),
    /// kept in `checkpoints/endpoints.toml`.
    pub endpoint: Option<EndpointConfig>,
}

/// The checkpoint spec of an endpoint: `endpoint:URL#MODEL` (what the CLI's `--checkpoint`
/// takes too).
pub fn endpoint_spec(cfg: &EndpointConfig) -> String {
    format!("endpoint:{}#{}", cfg.base_url, cfg.model)
}

impl CkptRow {
    /// A row for an endpoint of `checkpoints/endpoints.toml`.
    pub fn for_endpoint(cfg: EndpointConfig) -> CkptRow {
        CkptRow {
            name: endpoint_spec(&cfg),
            path: cfg.base_url.clone(),
            info: None,
            error: None,
            default_set: None,
            depth: 0,
            endpoint: Some(cfg),
        }
    }

    /// How the list shows the row: an endpoint as `model @ host:port` (the spec is long).
    pub fn label(&self) -> String {
        match &self.endpoint {
            Some(e) => {
                let host = e
                    .base_url
                    .split("://")
                    .nth(1)
                    .and_then(|r| r.split('/').next())
                    .unwrap_or(&e.base_url);
                format!("{} @ {host}", e.model)
            }
            None => self.name.clone(),
        }
    }

    /// The architecture, when the decoder cannot run it (an embedding model such as BERT).
    pub fn unsupported(&self) -> Option<&str> {
        let arch = self.info.as_ref()?.architecture.as_str();
        crate::model::Arch::parse(arch).is_none().then_some(arch)
    }
}

#[derive(Debug, Clone, Default)]
pub struct CkptScreen {
    pub rows: Vec<CkptRow>,
    pub selected: usize,
    pub scanned: bool,
    /// The form that adds an endpoint (`a`), while it is open.
    pub form: Option<EndpointForm>,
    /// The row to select after the next scan (an endpoint just added).
    pub select_next: Option<String>,
    /// What dense checkpoints load as (`Q` cycles it; `None`: each checkpoint's default).
    pub quantize: Option<crate::model::quantize::Quantize>,
}

/// The fields of the add-an-endpoint form, in order.
pub const ENDPOINT_FIELDS: [&str; 3] = ["URL", "model", "key env"];

/// Adding an endpoint: base URL, model id, and the name of the variable holding the API key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointForm {
    pub fields: [String; 3],
    pub focus: usize,
    /// Why the last Enter did not add it.
    pub error: Option<String>,
}

/// A judge configuration of `prompts/judges/`, as the Eval screen's picker lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeRow {
    /// The file's stem (`embedding`, `rubric-openai`, ...).
    pub name: String,
    pub path: PathBuf,
    /// `embedding`, `lexical`, `rubric`, `aspects`; `?` when the file does not parse.
    pub kind: String,
    /// What it runs on: the embedding model, the metric, the checkpoint or endpoint.
    pub detail: String,
    pub config: Option<JudgeConfig>,
    /// Why it cannot run here (a parse error, an API key variable that is not set, a missing
    /// model); such a judge is listed but not started.
    pub unavailable: Option<String>,
}

/// One file of a prompt set.
#[derive(Debug, Clone, PartialEq)]
pub struct FileInfo {
    pub name: String,
    pub path: PathBuf,
    /// First 12 hex digits of the sha256 of its contents.
    pub hash: String,
    /// The set the file comes from when this set inherits it.
    pub inherited_from: Option<String>,
    pub text: String,
}

/// A prompt set as the Prompts screen shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SetInfo {
    pub name: String,
    pub dir: PathBuf,
    pub description: String,
    pub hash: Option<String>,
    pub layout: String,
    pub dimensions: Vec<String>,
    pub sampling: String,
    pub files: Vec<FileInfo>,
    /// Why the set does not load (its files are still listed).
    pub error: Option<String>,
}

/// A line of a diff: `' '`, `'-'`, `'+'`.
#[derive(Debug, Clone, PartialEq)]
pub struct FileDiff {
    pub name: String,
    /// `same`, `changed`, `only in A`, `only in B`.
    pub status: &'static str,
    pub lines: Vec<(char, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiffView {
    pub a: String,
    pub b: String,
    pub files: Vec<FileDiff>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptsFocus {
    #[default]
    Sets,
    Files,
    Preview,
}

#[derive(Debug, Clone, Default)]
pub struct PromptsScreen {
    pub set: usize,
    pub file: usize,
    pub focus: PromptsFocus,
    pub scroll: usize,
    /// The diff's base set (`a`).
    pub mark: Option<String>,
    pub diff: Option<DiffView>,
    pub diff_scroll: usize,
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Side {
    pub checkpoint: String,
    pub set: String,
}

/// Blind rating: replies shown as A/B/C in a shuffled order.
#[derive(Debug, Clone, PartialEq)]
pub struct Blind {
    /// `order[i]` is the side shown under letter i.
    pub order: Vec<usize>,
    pub focus: usize,
    /// 0 = similarity, 1 = humanlike.
    pub field: usize,
    pub ratings: Vec<[Option<u8>; 2]>,
    pub revealed: bool,
}

impl Blind {
    pub fn complete(&self) -> bool {
        self.ratings
            .iter()
            .all(|r| r[0].is_some() && r[1].is_some())
    }
}

#[derive(Debug, Clone, Default)]
pub struct CompareState {
    pub sides: Vec<Side>,
    pub selected: usize,
    pub job: Option<u64>,
    pub scenario: Option<String>,
    pub runs: Vec<SimRun>,
    pub blind: Option<Blind>,
}

/// What streams from an evaluation worker.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalMsg {
    Started { total: usize, resumed: usize },
    Loading { checkpoint: String },
    Scenario { scenario: String },
    Done { scenario: String },
    Skipped { scenario: String },
    Finished(Result<PathBuf, String>),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalProgress {
    pub job: u64,
    pub total: usize,
    pub resumed: usize,
    pub done: usize,
    pub current: String,
    pub skipped: usize,
    pub started: u64,
    /// Tick of the first scenario finished in this session (the ETA's pace starts there).
    pub first_done: Option<u64>,
}

/// The selected run: its summary, the run before it, and its samples.
#[derive(Debug, Clone)]
pub struct RunDetail {
    pub path: PathBuf,
    pub summary: Option<Summary>,
    pub prev: Option<(String, Summary)>,
    pub samples: Vec<SampleRecord>,
}

#[derive(Debug, Clone, Default)]
pub struct EvalScreen {
    pub runs: Vec<RunListing>,
    pub selected: usize,
    pub detail: Option<RunDetail>,
    /// Drill-down into the samples: the selected sample.
    pub drill: Option<usize>,
    pub progress: Option<EvalProgress>,
    pub scanned: bool,
    /// The judges of `prompts/judges/` (`None` until read).
    pub judges: Option<Vec<JudgeRow>>,
    /// The judge picker (`r`), open, with its selected row.
    pub picker: Option<usize>,
    /// The judge of the last run started here (the picker opens on it).
    pub judge: Option<String>,
}

/// The training methods the Train screen offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrainMethod {
    #[default]
    Sft,
    Grpo,
}

impl TrainMethod {
    pub fn name(self) -> &'static str {
        match self {
            TrainMethod::Sft => "SFT",
            TrainMethod::Grpo => "GRPO",
        }
    }
}

/// The rows of the Train form, in order (GRPO's own rows last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainField {
    Method,
    Base,
    Scenarios,
    Output,
    Steps,
    Lr,
    Rank,
    Resume,
    N,
    Reward,
    Validation,
    ValEvery,
}

impl TrainField {
    pub const ALL: [TrainField; 12] = [
        TrainField::Method,
        TrainField::Base,
        TrainField::Scenarios,
        TrainField::Output,
        TrainField::Steps,
        TrainField::Lr,
        TrainField::Rank,
        TrainField::Resume,
        TrainField::N,
        TrainField::Reward,
        TrainField::Validation,
        TrainField::ValEvery,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TrainField::Method => "method",
            TrainField::Base => "base checkpoint",
            TrainField::Scenarios => "scenarios",
            TrainField::Output => "output name",
            TrainField::Steps => "steps",
            TrainField::Lr => "learning rate",
            TrainField::Rank => "LoRA rank",
            TrainField::Resume => "if it exists",
            TrainField::N => "rollouts per prompt",
            TrainField::Reward => "reward judge",
            TrainField::Validation => "validation scenarios",
            TrainField::ValEvery => "validate every",
        }
    }

    /// Typed in (Enter edits) rather than chosen with ←/→.
    pub fn is_text(self) -> bool {
        matches!(
            self,
            TrainField::Scenarios
                | TrainField::Output
                | TrainField::Steps
                | TrainField::Lr
                | TrainField::Rank
                | TrainField::N
                | TrainField::Validation
                | TrainField::ValEvery
        )
    }
}

/// The Train form: what the next pass will be.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainForm {
    pub method: TrainMethod,
    /// Empty: the checkpoint in use.
    pub base: String,
    pub scenarios: String,
    /// A folder name under `checkpoints/` (empty: `<base>-<method>-lora`).
    pub output: String,
    pub steps: String,
    /// Empty: the method's default.
    pub lr: String,
    pub rank: String,
    /// Continue a run already in the output folder instead of refusing.
    pub resume: bool,
    pub n: String,
    /// A judge of `prompts/judges/` by name (GRPO's reward).
    pub reward: String,
    /// Held-out scenarios (file or folder) validated during the pass; empty: none.
    pub validation: String,
    /// Steps between validation passes.
    pub val_every: String,
    pub focus: usize,
    /// Typing goes into the focused text field.
    pub editing: bool,
    /// Why the last start was refused.
    pub error: Option<String>,
}

impl Default for TrainForm {
    /// The training defaults (`TrainConfig::new`), as the CLI's flags show them.
    fn default() -> Self {
        let defaults = crate::train::TrainConfig::defaults();
        TrainForm {
            method: TrainMethod::Sft,
            base: String::new(),
            scenarios: "scenarios".into(),
            output: String::new(),
            steps: defaults.steps.to_string(),
            lr: String::new(),
            rank: defaults.rank.to_string(),
            resume: false,
            n: crate::train::GrpoParams::default().n.to_string(),
            reward: "embedding".into(),
            validation: String::new(),
            val_every: "10".into(),
            focus: 0,
            editing: false,
            error: None,
        }
    }
}

impl TrainForm {
    /// The rows the form shows for its method.
    pub fn fields(&self) -> Vec<TrainField> {
        TrainField::ALL
            .into_iter()
            .filter(|f| match f {
                TrainField::N | TrainField::Reward => self.method == TrainMethod::Grpo,
                TrainField::ValEvery => !self.validation.trim().is_empty(),
                _ => true,
            })
            .collect()
    }

    /// The value of a text field ("" for a choice).
    pub fn text(&self, f: TrainField) -> &str {
        match f {
            TrainField::Scenarios => &self.scenarios,
            TrainField::Output => &self.output,
            TrainField::Steps => &self.steps,
            TrainField::Lr => &self.lr,
            TrainField::Rank => &self.rank,
            TrainField::N => &self.n,
            TrainField::Validation => &self.validation,
            TrainField::ValEvery => &self.val_every,
            _ => "",
        }
    }

    pub fn text_mut(&mut self, f: TrainField) -> Option<&mut String> {
        Some(match f {
            TrainField::Scenarios => &mut self.scenarios,
            TrainField::Output => &mut self.output,
            TrainField::Steps => &mut self.steps,
            TrainField::Lr => &mut self.lr,
            TrainField::Rank => &mut self.rank,
            TrainField::N => &mut self.n,
            TrainField::Validation => &mut self.validation,
            TrainField::ValEvery => &mut self.val_every,
            _ => return None,
        })
    }
}

/// What streams from a training worker.
#[derive(Debug, Clone)]
pub enum TrainMsg {
    Data { examples: usize, skipped: usize },
    Note(String),
    Step(Box<StepEvent>),
    Val(Box<crate::train::ValEvent>),
    Saved(PathBuf),
    Finished(Result<PathBuf, String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrainStatus {
    Running,
    Done,
    /// Stopped by Esc; the trainer saved a checkpoint first.
    Cancelled(String),
    Failed(String),
}

/// A training pass started here: its settings, the step events so far, how it ended.
#[derive(Debug, Clone)]
pub struct TrainRun {
    pub job: u64,
    pub method: TrainMethod,
    pub base: String,
    /// The adapter's folder name under `checkpoints/`.
    pub name: String,
    pub out: PathBuf,
    pub rank: usize,
    pub steps: usize,
    /// The reward judge (GRPO).
    pub judge: Option<String>,
    pub events: Vec<StepEvent>,
    /// Validation passes, oldest first (a resumed run's repeat replaces the earlier line).
    pub val: Vec<crate::train::ValEvent>,
    pub examples: Option<(usize, usize)>,
    /// Notes and saved checkpoints, newest last.
    pub log: Vec<String>,
    /// The last checkpoint folder the trainer reported saving.
    pub saved: Option<PathBuf>,
    pub status: TrainStatus,
    /// Esc was pressed: the trainer is saving a checkpoint before it stops.
    pub stopping: bool,
    pub started: u64,
}

impl TrainRun {
    pub fn running(&self) -> bool {
        self.status == TrainStatus::Running
    }
}

#[derive(Debug, Clone, Default)]
pub struct TrainScreen {
    pub form: TrainForm,
    pub run: Option<TrainRun>,
    /// The run's view is shown (else the form).
    pub show_run: bool,
    /// `q` was pressed once while a pass runs (a second `q` quits anyway).
    pub quit_warned: bool,
}

/// One conversation of the Converse screen: started from a scenario, or forked from another
/// branch at one of its turns (the turns before the fork point kept, an edited turn after them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Branch {
    pub scenario: String,
    /// The branch it was forked from and how many of that branch's turns it kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<(usize, usize)>,
    /// How it came to be, in a few words (`from the scenario`, `fork at turn 4`, ...).
    pub origin: String,
    /// The conversation's seed (each turn's own is drawn from it); a fork gets its own, so a
    /// regenerated turn differs from the one it replaces.
    pub seed: u64,
    pub turns: Vec<crate::converse::Turn>,
    /// Who writes the next turn, when the turns do not say it (a fork writes the turn it was
    /// forked at again, by the same side); `None`: [`Branch::next_speaker`] derives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<crate::scenario::Speaker>,
    /// How it ended; `None` while it can go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<crate::converse::End>,
    /// Who talked when it last ran: the simulated user's checkpoint, prompt set and mode, and
    /// the assistant.
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub set: String,
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub assistant: String,
}

impl Branch {
    /// How deep in the tree it is (a conversation from the scenario is 0).
    pub fn depth(&self, all: &[Branch]) -> usize {
        let mut d = 0;
        let mut at = self.parent;
        while let Some((p, _)) = at {
            d += 1;
            at = all.get(p).and_then(|b| b.parent).filter(|_| d < all.len());
        }
        d
    }

    /// Who writes the next turn: the one named, else the other side of the last turn (the
    /// scenario's `opens` before any turn was generated; the user when there is no turn).
    pub fn next_speaker(&self, scenario: &crate::scenario::Scenario) -> crate::scenario::Speaker {
        use crate::scenario::Speaker;
        let opens = scenario.conversation.as_ref().and_then(|c| c.opens);
        let generated = self.turns.iter().any(|t| t.generated);
        self.next
            .or(opens.filter(|_| !generated))
            .unwrap_or_else(|| match self.turns.last() {
                Some(t) if t.speaker == Speaker::User => Speaker::Assistant,
                _ => Speaker::User,
            })
    }

    /// The turns that came from the scenario's thread.
    pub fn thread_turns(&self) -> usize {
        self.turns.iter().take_while(|t| !t.generated).count()
    }
}

/// The name the workbench gives the assistant's one call of a turn (beside the simulated user's
/// `stance` ... `response`).
pub const ASSISTANT_CALL: &str = "assistant";

/// The turn being written: who writes it and its text so far (the simulated user's per call).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TurnStream {
    pub index: usize,
    pub speaker: Option<crate::scenario::Speaker>,
    /// Per call (`stance` ... `response`; the assistant's one call is [`ASSISTANT_CALL`]), in order.
    pub calls: Vec<(String, String)>,
    pub stats: Stats,
    /// Ticks at the turn's start.
    pub started: u64,
}

/// Which part of the Converse screen the arrows move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvFocus {
    #[default]
    Transcript,
    Branches,
}

/// One call's prompt as its side saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallPrompt {
    pub name: String,
    /// Its length in tokens (an endpoint's is not known).
    pub tokens: Option<usize>,
    pub text: String,
}

/// The prompt one turn was written from, as its side saw it (`v` on Converse).
#[derive(Debug, Clone, PartialEq)]
pub struct TurnPrompt {
    pub branch: usize,
    pub turn: usize,
    pub calls: Option<Result<Vec<CallPrompt>, String>>,
    pub job: Option<u64>,
    pub call: usize,
    pub scroll: usize,
}

/// Editing a turn's text in the workbench (`e`): Enter makes the edit a new branch.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnEdit {
    pub turn: usize,
    pub text: String,
}

/// The Converse screen: the conversation tree, the branch shown, the turn under the cursor.
#[derive(Debug, Clone, Default)]
pub struct ConverseScreen {
    /// The assistant: a checkpoint or endpoint spec; empty: the checkpoint in use.
    pub assistant: String,
    /// New turns before `max-turns`; `None`: the scenario's `max_turns`.
    pub max_turns: Option<usize>,
    pub branches: Vec<Branch>,
    /// The branch shown.
    pub branch: usize,
    /// The turn under the cursor; `None`: the last one, following the conversation as it grows.
    pub cursor: Option<usize>,
    pub focus: ConvFocus,
    /// The branch list's selected row.
    pub branch_row: usize,
    /// The running conversation: its job and the branch it writes into.
    pub job: Option<(u64, usize)>,
    pub stream: Option<TurnStream>,
    pub edit: Option<TurnEdit>,
    pub prompt: Option<TurnPrompt>,
    pub scroll: usize,
}

impl ConverseScreen {
    pub fn current(&self) -> Option<&Branch> {
        self.branches.get(self.branch)
    }

    pub fn running(&self) -> bool {
        self.job.is_some()
    }

    /// The branch the running conversation writes into.
    pub fn running_branch(&self) -> Option<usize> {
        self.job.map(|(_, b)| b)
    }

    /// The branches in tree order: each followed by its forks, depth first.
    pub fn tree(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.branches.len());
        let mut stack: Vec<usize> = (0..self.branches.len())
            .rev()
            .filter(|&i| self.branches[i].parent.is_none_or(|(p, _)| p >= i))
            .collect();
        while let Some(i) = stack.pop() {
            out.push(i);
            stack.extend(
                (0..self.branches.len())
                    .rev()
                    .filter(|&j| j > i && self.branches[j].parent.is_some_and(|(p, _)| p == i)),
            );
        }
        out
    }

    /// The turn under the cursor (the last one when the cursor follows).
    pub fn cursor_turn(&self) -> Option<usize> {
        let n = self.current()?.turns.len();
        (n > 0).then(|| self.cursor.unwrap_or(n - 1).min(n - 1))
    }
}

/// What streams from a conversation worker.
#[derive(Debug, Clone, PartialEq)]
pub enum ConvMsg {
    Started {
        user: String,
        set: String,
        assistant: String,
    },
    TurnStarted {
        index: usize,
        speaker: crate::scenario::Speaker,
    },
    /// The simulated user's call starts (its prefill is the first text).
    Call {
        name: String,
        prefill: String,
    },
    Prefill {
        cached: usize,
    },
    /// Text of the call streaming now (the assistant's turn is one call).
    Text(String),
    TurnFinished(Box<crate::converse::Turn>),
    Ended(crate::converse::End),
}

/// The layout of a saved session: 2 keeps each finished sample as the simulator's `SimSample`.
pub const SESSION_VERSION: u32 = 2;

/// A saved session (`s`), as written under `runs/sessions/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// [`SESSION_VERSION`] when saved; older files are read through a conversion.
    pub version: u32,
    pub saved_unix: u64,
    pub scenario: String,
    pub checkpoint: String,
    pub prompt_set: String,
    pub prompt_hash: String,
    pub mode: String,
    pub sampling: SamplingChoice,
    pub dropped_turns: usize,
    pub samples: Vec<SampleOut>,
    /// The Converse screen's conversation tree (none in older files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conversations: Vec<Branch>,
}

/// Wrapped lines kept between frames (the thread and the prompt view can be long).
#[derive(Default)]
pub struct Caches {
    pub thread: Option<(ThreadKey, std::rc::Rc<Vec<ratatui::text::Line<'static>>>)>,
    pub prompt: Option<(PromptKey, std::rc::Rc<Vec<ratatui::text::Line<'static>>>)>,
    /// Lines and height of scrollable panes at the last frame, to bound scrolling.
    pub extents: BTreeMap<&'static str, (usize, usize)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadKey {
    pub scenario: usize,
    pub width: u16,
    pub persona: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptKey {
    pub scenario: String,
    pub set_hash: String,
    pub call: usize,
    pub width: u16,
    pub ids: bool,
}

/// Where things are on disk.
#[derive(Debug, Clone)]
pub struct Paths {
    pub checkpoints: PathBuf,
    pub scenarios: PathBuf,
    pub prompts: PathBuf,
    pub runs: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            checkpoints: PathBuf::from("checkpoints"),
            scenarios: PathBuf::from("scenarios"),
            prompts: PathBuf::from("prompts"),
            runs: PathBuf::from("runs"),
        }
    }
}

impl Paths {
    /// The folders library calls resolve names in.
    pub fn roots(&self) -> crate::roots::Roots {
        crate::roots::Roots::new(&self.checkpoints, &self.prompts)
    }
}

pub struct App {
    pub screen: Screen,
    /// The help popup and its scroll.
    pub help: Option<usize>,
    /// An error popup (any key closes it).
    pub error: Option<String>,
    /// A line in the status bar and the tick it was set.
    pub message: Option<(Level, String, u64)>,
    pub quit: bool,
    pub size: (u16, u16),
    pub tick: u64,
    /// Seeds the blind order (set from the clock by the runtime; fixed in tests).
    pub seed: u64,
    pub paths: Paths,

    pub model: ModelState,
    /// The checkpoint asked for last (what Simulate runs on once loaded).
    pub checkpoint: String,
    pub judge: JudgeState,

    pub scenarios: Vec<scenario::Loaded>,
    pub scenario_problems: Vec<String>,
    pub browser: Browser,
    pub focus: Pane,
    pub thread_scroll: usize,
    pub reply_scroll: usize,
    /// The reply pane keeps the end of a streaming reply in view until scrolled.
    pub reply_follow: bool,
    pub persona_open: bool,
    pub show_think: bool,
    pub show_reference: bool,

    pub mode: Mode,
    pub sampling: SamplingChoice,
    /// The active prompt set.
    pub set: String,
    /// Chosen by hand: a checkpoint switch keeps it.
    pub set_pinned: bool,
    pub sets: Vec<SetInfo>,

    pub sim: Option<SimRun>,
    pub sample: usize,
    pub jobs: Vec<Job>,
    pub next_job: u64,

    pub prompt_view: PromptViewState,
    pub ckpts: CkptScreen,
    pub prompts: PromptsScreen,
    pub compare: CompareState,
    pub converse: ConverseScreen,
    pub eval: EvalScreen,
    pub train: TrainScreen,
    /// The key bindings: the built-in table, or the user's file applied to it.
    pub keys: crate::tui::keys::Keymap,

    pub caches: RefCell<Caches>,
}

impl App {
    /// A workbench on `checkpoint` with `set` as its prompt set; nothing loaded yet.
    pub fn new(paths: Paths, checkpoint: &str, set: &str) -> App {
        App {
            screen: Screen::Simulate,
            help: None,
            error: None,
            message: None,
            quit: false,
            size: (120, 40),
            tick: 0,
            seed: 0,
            paths,
            model: ModelState::default(),
            checkpoint: checkpoint.to_string(),
            judge: JudgeState::Loading,
            scenarios: vec![],
            scenario_problems: vec![],
            browser: Browser::default(),
            focus: Pane::Scenarios,
            thread_scroll: 0,
            reply_scroll: 0,
            reply_follow: true,
            persona_open: false,
            show_think: false,
            show_reference: false,
            mode: Mode::Humanlm,
            sampling: SamplingChoice::default(),
            set: set.to_string(),
            set_pinned: false,
            sets: vec![],
            sim: None,
            sample: 0,
            jobs: vec![],
            next_job: 1,
            prompt_view: PromptViewState::default(),
            ckpts: CkptScreen::default(),
            prompts: PromptsScreen::default(),
            compare: CompareState::default(),
            converse: ConverseScreen::default(),
            eval: EvalScreen::default(),
            train: TrainScreen::default(),
            keys: crate::tui::keys::Keymap::default(),
            caches: RefCell::new(Caches::default()),
        }
    }

    /// The visible rows of the scenario browser: domains with their (matching) scenarios.
    pub fn browser_rows(&self) -> Vec<BrowserRow> {
        let words: Vec<String> = self
            .browser
            .filter
            .to_lowercase()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let filtering = !words.is_empty();
        let mut rows = vec![];
        for domain in Domain::ALL {
            let matching: Vec<usize> = self
                .scenarios
                .iter()
                .enumerate()
                .filter(|(_, e)| e.scenario.domain == domain)
                .filter(|(_, e)| {
                    let hay = format!(
                        "{} {} {}",
                        e.scenario.id,
                        e.scenario.title,
                        e.scenario.domain.name()
                    )
                    .to_lowercase();
                    words.iter().all(|w| hay.contains(w.as_str()))
                })
                .map(|(i, _)| i)
                .collect();
            if matching.is_empty() {
                continue;
            }
            // A filter shows every match, folded or not.
            let folded = !filtering && self.browser.folded.contains(&domain);
            rows.push(BrowserRow::Domain {
                domain,
                count: matching.len(),
                folded,
            });
            if !folded {
                rows.extend(matching.into_iter().map(BrowserRow::Scenario));
            }
        }
        rows
    }

    /// The scenario under the browser's cursor.
    pub fn selected_scenario(&self) -> Option<&scenario::Loaded> {
        match self.browser_rows().get(self.browser.selected) {
            Some(BrowserRow::Scenario(i)) => self.scenarios.get(*i),
            _ => None,
        }
    }

    pub fn selected_scenario_index(&self) -> Option<usize> {
        match self.browser_rows().get(self.browser.selected) {
            Some(BrowserRow::Scenario(i)) => Some(*i),
            _ => None,
        }
    }

    pub fn scenario_by_id(&self, id: &str) -> Option<&scenario::Loaded> {
        self.scenarios.iter().find(|e| e.scenario.id == id)
    }

    pub fn set_info(&self, name: &str) -> Option<&SetInfo> {
        self.sets.iter().find(|s| s.name == name)
    }

    /// The state dimensions of the active set, from its `states.toml` (none until the sets
    /// are read, a moment after start).
    pub fn dimensions(&self) -> Vec<String> {
        self.set_info(&self.set)
            .map(|s| s.dimensions.clone())
            .unwrap_or_default()
    }

    pub fn job(&self, kind: JobKind) -> Option<&Job> {
        self.jobs.iter().find(|j| j.kind == kind)
    }

    /// Whether the layout has room for the scenario list beside the thread.
    pub fn wide(&self) -> bool {
        self.size.0 >= 100
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.message = Some((Level::Info, text.into(), self.tick));
    }

    pub fn fail(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.message = Some((Level::Error, text.clone(), self.tick));
        self.error = Some(text);
    }
}
