//! HumanLM simulation: a scenario and a prompt set become exact prompts; the model writes the
//! six states and the reply; the outputs are parsed. Scoring lives elsewhere.
//!
//! Modes: `humanlm` generates each state independently (its own system prompt, thinking off,
//! stopping at its closing tag), then the reply with thinking on, stopping at `</response>`;
//! `response` is the reply alone (the paper's baseline); `joint` asks for all seven tags at once.

pub mod parse;

use crate::generate::{self, Event, SamplingParams, StopReason};
use crate::model::chat::Message;
use crate::model::Model;
use crate::prompts::{Layout, PromptSet, StateSpec, ThreadTurn, RESPONSE};
use crate::scenario::{Role, Scenario};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

/// What runs a simulation's calls: a local model, or a model behind an OpenAI-compatible
/// endpoint (`endpoint:URL#MODEL`).
#[derive(Clone, Copy)]
pub enum Engine<'a> {
    Local(&'a Model),
    Remote(&'a crate::remote::Endpoint),
}

/// An engine that owns what it runs on: a loaded checkpoint or an endpoint client. Clones share
/// the model (the TUI's workers each hold one).
#[derive(Clone)]
pub enum Simulator {
    Local(std::sync::Arc<Model>),
    Remote {
        spec: String,
        endpoint: crate::remote::Endpoint,
    },
}

impl Simulator {
    /// `endpoint:URL#MODEL`, or a checkpoint name or path (loaded with `opts`).
    pub fn open(
        spec: &str,
        checkpoints: &std::path::Path,
        opts: &crate::model::weights::LoadOptions,
    ) -> Result<Simulator> {
        use crate::remote::{Endpoint, EndpointConfig};
        if let Some((url, model)) = Endpoint::parse_spec(spec) {
            // A saved endpoint brings its API-key variable (checkpoints/endpoints.toml).
            let endpoint = Endpoint::new(EndpointConfig::for_spec(&url, &model, checkpoints))?;
            return Ok(Simulator::Remote {
                spec: spec.to_string(),
                endpoint,
            });
        }
        let ckpt = crate::model::Checkpoint::resolve(spec, checkpoints)?;
        Ok(Simulator::Local(std::sync::Arc::new(ckpt.load(opts)?)))
    }

    pub fn engine(&self) -> Engine<'_> {
        match self {
            Simulator::Local(m) => Engine::Local(m),
            Simulator::Remote { endpoint, .. } => Engine::Remote(endpoint),
        }
    }

    /// The checkpoint's name, or the endpoint spec.
    pub fn name(&self) -> String {
        match self {
            Simulator::Local(m) => m.checkpoint.name.clone(),
            Simulator::Remote { spec, .. } => spec.clone(),
        }
    }

    /// The prompt set the checkpoint names; endpoints serve trained simulators, so none.
    pub fn default_prompt_set(&self) -> crate::model::Result<Option<String>> {
        match self {
            Simulator::Local(m) => m.checkpoint.default_prompt_set(),
            Simulator::Remote { .. } => Ok(None),
        }
    }
}

/// The name the simulated person always has in prompts.
pub const HUMAN: &str = "HUMAN";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Humanlm,
    Response,
    Joint,
}

impl Mode {
    /// Every mode, in the order `--help` lists them.
    pub const ALL: [Mode; 3] = [Mode::Humanlm, Mode::Response, Mode::Joint];

    /// The mode's name on the command line and in run files.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Humanlm => "humanlm",
            Mode::Response => "response",
            Mode::Joint => "joint",
        }
    }

    /// How many calls a simulation makes under `set`: one per state and the reply, or one.
    pub fn calls(self, set: &PromptSet) -> usize {
        match self {
            Mode::Humanlm => set.dimensions().count() + 1,
            Mode::Response | Mode::Joint => 1,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mode {
    type Err = UnknownName;
    fn from_str(s: &str) -> std::result::Result<Mode, UnknownName> {
        UnknownName::find("mode", s, &Mode::ALL, |m| m.name())
    }
}

/// A mode or truncation policy named by a string that is none of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{name}' (expected one of: {expected})")]
pub struct UnknownName {
    what: &'static str,
    name: String,
    expected: String,
}

impl UnknownName {
    /// The value of `all` whose name is `s`.
    fn find<T: Copy>(
        what: &'static str,
        s: &str,
        all: &[T],
        name: impl Fn(T) -> &'static str,
    ) -> std::result::Result<T, UnknownName> {
        all.iter()
            .copied()
            .find(|&v| name(v) == s)
            .ok_or_else(|| UnknownName {
                what,
                name: s.to_string(),
                expected: all.iter().map(|&v| name(v)).collect::<Vec<_>>().join(", "),
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Prompt(#[from] crate::prompts::Error),
    #[error(transparent)]
    Model(#[from] crate::model::Error),
    #[error(transparent)]
    Remote(#[from] crate::remote::Error),
    #[error("prompt set '{0}' has no chat template of its own and the endpoint's is unknown: this layout needs the chat API, which cannot pre-fill tags; use a set with `chat_template` or `prefill_tag = false`")]
    NeedsTemplate(String),
    #[error("scenario '{id}': the prompt for {call} has {prompt} tokens and may generate {budget} more, beyond the context of {context} tokens{}", if *dropped > 0 { format!(" (even after dropping {dropped} turns)") } else { " (--truncate oldest drops old turns to fit)".to_string() })]
    TooLong {
        id: String,
        call: String,
        prompt: usize,
        budget: usize,
        context: usize,
        dropped: usize,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// What to do when a prompt does not fit the model's context.
///
/// What each policy does is [`Truncate::description`], which `--help` shows too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncate {
    #[default]
    None,
    Oldest,
}

impl Truncate {
    /// Every policy, in the order `--help` lists them.
    pub const ALL: [Truncate; 2] = [Truncate::None, Truncate::Oldest];

    /// The policy's name on the command line and in run files.
    pub fn name(self) -> &'static str {
        match self {
            Truncate::None => "none",
            Truncate::Oldest => "oldest",
        }
    }

    /// What the policy does, in one sentence.
    pub fn description(self) -> &'static str {
        match self {
            Truncate::None => "Refuse, with the token counts",
            Truncate::Oldest => "Drop the oldest turns after the opening post until every call fits; the number dropped is reported with the result",
        }
    }
}

impl std::fmt::Display for Truncate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Truncate {
    type Err = UnknownName;
    fn from_str(s: &str) -> std::result::Result<Truncate, UnknownName> {
        UnknownName::find("truncation policy", s, &Truncate::ALL, |t| t.name())
    }
}

/// How to simulate: the mode, sampling, and the truncation policy.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub params: SamplingParams,
    pub truncate: Truncate,
}

impl Options {
    pub fn new(mode: Mode, params: SamplingParams) -> Options {
        Options {
            mode,
            params,
            truncate: Truncate::None,
        }
    }
}

/// The sampling a user asked for. What is left unset comes from the prompt set, then the
/// method's defaults (temperature 0.4, a 4-gram ban); the CLI and the workbench both resolve
/// their settings through `params`, so they cannot drift apart.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SamplingChoice {
    pub n: usize,
    pub seed: u64,
    pub temperature: Option<f32>,
    pub top_p: f32,
    pub repetition_penalty: Option<f32>,
    pub no_repeat_ngram: Option<usize>,
    /// Cap on every call's new tokens (below its state's limit).
    pub max_tokens: Option<usize>,
}

impl Default for SamplingChoice {
    fn default() -> Self {
        SamplingChoice {
            n: 1,
            seed: 0,
            temperature: None,
            top_p: 1.0,
            repetition_penalty: None,
            no_repeat_ngram: None,
            max_tokens: None,
        }
    }
}

impl SamplingChoice {
    /// The generation parameters for `set`.
    pub fn params(&self, set: &PromptSet) -> SamplingParams {
        let d = &set.sampling;
        SamplingParams {
            max_new_tokens: self.max_tokens.unwrap_or(usize::MAX),
            temperature: self.temperature.or(d.temperature).unwrap_or(0.4),
            top_p: self.top_p,
            seed: self.seed,
            repetition_penalty: self
                .repetition_penalty
                .or(d.repetition_penalty)
                .unwrap_or(1.0),
            no_repeat_ngram: self.no_repeat_ngram.or(d.no_repeat_ngram).unwrap_or(4),
            n: self.n,
            ..Default::default()
        }
    }
}

/// The name of the call that writes every state and the reply in one output (`joint` mode).
pub const JOINT: &str = "joint";

/// What a call generates. A call is named after it (the state's key, [`RESPONSE`] or
/// [`JOINT`]), so maps of calls and outputs stay keyed by name and the kind is read back from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind<'a> {
    /// One state dimension, by its key in `states.toml`.
    State(&'a str),
    /// The reply alone.
    Response,
    /// Every state and the reply in one output.
    Joint,
}

impl<'a> CallKind<'a> {
    /// The kind of the call named `name`.
    pub fn of(name: &'a str) -> CallKind<'a> {
        match name {
            RESPONSE => CallKind::Response,
            JOINT => CallKind::Joint,
            key => CallKind::State(key),
        }
    }

    /// The name of a call of this kind.
    pub fn name(self) -> &'a str {
        match self {
            CallKind::State(key) => key,
            CallKind::Response => RESPONSE,
            CallKind::Joint => JOINT,
        }
    }

    /// Whether the call writes the reply (the response call or the joint one).
    pub fn writes_reply(self) -> bool {
        matches!(self, CallKind::Response | CallKind::Joint)
    }
}

/// One generation call of a simulation: a state, the reply, or the joint output.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Call {
    /// What the call generates, as a name: a state's key, [`RESPONSE`] or [`JOINT`]
    /// ([`Call::kind`] reads it).
    pub name: String,
    /// The exact prompt text, special tokens included (ending with `prefill`, if any).
    pub prompt: String,
    pub prompt_tokens: usize,
    /// The prompt's token ids (tokenized once, when the plan is made; empty for an endpoint,
    /// whose tokenizer is the server's, and `prompt_tokens` is then 0).
    #[serde(skip)]
    pub ids: Vec<u32>,
    /// For an endpoint without a chat template here: the messages sent to its chat API
    /// (`prompt` then shows them as JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    /// The chat messages the prompt was rendered from (before the chat template and the
    /// prefill): what a training recipe that applies its own template needs (`export-dataset`),
    /// and what `simulate --show-prompt --json` shows for comparison with it.
    pub chat_messages: Vec<Message>,
    pub thinking: bool,
    /// The opening tag already written at the end of the prompt (sets with `prefill_tag`).
    pub prefill: String,
    pub stop: String,
    /// How many tokens the call may generate.
    pub budget: usize,
}

impl Call {
    pub fn kind(&self) -> CallKind<'_> {
        CallKind::of(&self.name)
    }
}

/// The calls of a simulation, rendered (what the simulator sees).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub calls: Vec<Call>,
    /// Thread turns left out to fit the context (`Truncate::Oldest`), oldest first after the post.
    pub dropped_turns: usize,
}

/// What one call produced for one sample.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Output {
    /// Generated text as it came out (the stop string stripped, the prefill not included).
    pub raw: String,
    pub tokens: usize,
    pub stop_reason: StopReason,
    /// The end-of-sequence token that ended it, as text, when a tokenizer has several (UserLM's
    /// `<|endconversation|>` ends a conversation, `<|eot_id|>` only a turn); not in `raw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token: Option<String>,
    /// Whether the strict (or strict-thinking) parse succeeded.
    pub valid: bool,
}

/// One simulated reply with its states.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct SimSample {
    pub states: BTreeMap<String, String>,
    pub response: String,
    pub think: Option<String>,
    pub valid: bool,
    /// Absent from eval records written before they kept the whole sample.
    #[serde(default)]
    pub stop_reasons: BTreeMap<String, StopReason>,
    pub tokens: usize,
    pub ms: u64,
    #[serde(default)]
    pub outputs: BTreeMap<String, Output>,
}

/// The thread as templates see it: the target's turns relabelled HUMAN.
pub fn thread_turns(scenario: &Scenario) -> Vec<ThreadTurn> {
    scenario
        .turns
        .iter()
        .map(|t| ThreadTurn {
            author: match t.role {
                Role::User if t.author == scenario.target.author => HUMAN.to_string(),
                _ => t.author.clone(),
            },
            role: match t.role {
                Role::User => "user".into(),
                Role::Assistant => "assistant".into(),
            },
            text: t.text.clone(),
        })
        .collect()
}

/// The calls a simulation makes, rendered, with the truncation policy applied.
pub fn plan(set: &PromptSet, scenario: &Scenario, opts: &Options, model: &Model) -> Result<Plan> {
    plan_with(set, scenario, opts, Engine::Local(model))
}

/// [`plan`] for any engine. An endpoint's context is the server's to check.
pub fn plan_with(
    set: &PromptSet,
    scenario: &Scenario,
    opts: &Options,
    engine: Engine,
) -> Result<Plan> {
    let context = match engine {
        Engine::Local(model) => model.decoder.max_positions(),
        Engine::Remote(_) => usize::MAX,
    };
    let mut sc = scenario.clone();
    let mut dropped = 0;
    loop {
        let calls = plan_calls(set, &sc, opts, engine)?;
        let Some(long) = calls.iter().find(|c| c.prompt_tokens + c.budget > context) else {
            return Ok(Plan {
                calls,
                dropped_turns: dropped,
            });
        };
        // Keep the opening post and at least one reply to it.
        if opts.truncate == Truncate::None || sc.turns.len() <= 2 {
            return Err(Error::TooLong {
                id: scenario.id.clone(),
                call: long.name.clone(),
                prompt: long.prompt_tokens,
                budget: long.budget,
                context,
                dropped,
            });
        }
        sc.turns.remove(1);
        dropped += 1;
    }
}

fn plan_calls(
    set: &PromptSet,
    scenario: &Scenario,
    opts: &Options,
    engine: Engine,
) -> Result<Vec<Call>> {
    let persona = persona_with_intent(set, scenario)?;
    let response = set.response();
    let turns = thread_turns(scenario);
    let who = crate::prompts::SystemContext {
        user_id: scenario.user_id().to_string(),
        platform: scenario.domain.platform().to_string(),
    };
    let template = match engine {
        Engine::Local(model) => Some(set.chat.as_ref().unwrap_or(&model.chat)),
        Engine::Remote(_) => set.chat.as_ref(),
    };
    let mut calls = vec![];
    let mut add =
        |kind: CallKind, specs: &[&StateSpec], thinking: bool, stop: &str| -> Result<()> {
            let system = set.system(&persona, specs, &who)?;
            // `speak_as`: who the generation prompt opens a turn for (the recipe's name for it).
            let extra = serde_json::json!({ "enable_thinking": thinking, "speak_as": HUMAN });
            let messages = match set.layout {
                Layout::Thread => thread_messages(scenario, &system),
                Layout::Transcript => {
                    let task = set.task(&persona, &set.thread(&turns)?, specs)?;
                    vec![Message::new("system", &system), Message::new("user", &task)]
                }
            };
            let chat_messages = messages.clone();
            let (mut prompt, chat) = match template {
                Some(t) => (t.render(&messages, true, &extra)?, None),
                // No template here: the endpoint's chat API applies its own, and cannot continue
                // a pre-filled assistant turn.
                None if set.prefill_tag || set.layout == Layout::Thread => {
                    return Err(Error::NeedsTemplate(set.name.clone()))
                }
                None => (
                    serde_json::to_string_pretty(&messages).unwrap_or_default(),
                    Some(messages),
                ),
            };
            let prefill = if set.prefill_tag {
                format!("<{}>", specs[0].key)
            } else {
                String::new()
            };
            prompt.push_str(&prefill);
            let ids = match engine {
                Engine::Local(model) => model.tokenizer.encode_rendered(&prompt)?,
                Engine::Remote(_) => vec![],
            };
            let budget = match kind {
                CallKind::Joint => specs.iter().map(|x| x.max_tokens).sum(),
                _ if thinking => specs[0].max_tokens_thinking.unwrap_or(specs[0].max_tokens),
                _ => specs[0].max_tokens,
            };
            calls.push(Call {
                name: kind.name().into(),
                prompt,
                prompt_tokens: ids.len(),
                ids,
                messages: chat,
                chat_messages,
                thinking,
                prefill,
                stop: stop.into(),
                budget: budget.min(opts.params.max_new_tokens),
            });
            Ok(())
        };
    match opts.mode {
        Mode::Humanlm => {
            for s in set.dimensions() {
                add(
                    CallKind::State(&s.key),
                    &[s],
                    false,
                    &format!("</{}>", s.key),
                )?;
            }
            add(
                CallKind::Response,
                &[response],
                set.response_thinking,
                "</response>",
            )?;
        }
        Mode::Response => add(CallKind::Response, &[response], false, "</response>")?,
        Mode::Joint => add(
            CallKind::Joint,
            &set.states.iter().collect::<Vec<_>>(),
            false,
            "</response>",
        )?,
    }
    Ok(calls)
}

/// The persona block, followed in a conversation by what HUMAN wants from it (the table's
/// `intent`): the intent is part of who the simulated user is in this conversation, so it sits
/// where every prompt set shows the persona.
fn persona_with_intent(set: &PromptSet, scenario: &Scenario) -> Result<String> {
    let persona = set.persona(scenario.persona.as_ref())?;
    Ok(
        match scenario
            .conversation
            .as_ref()
            .and_then(|c| c.intent.as_deref())
        {
            Some(intent) => format!(
                "{persona}\n\nWhat {HUMAN} wants from this conversation:\n{}",
                intent.trim()
            ),
            None => persona,
        },
    )
}

/// The HumanLM thread as messages: the system prompt, turns written by people as named user
/// messages (the target relabelled HUMAN), assistant turns as they are.
fn thread_messages(scenario: &Scenario, system: &str) -> Vec<Message> {
    // The system message carries an empty name, as the HumanLM recipe's rows do.
    let mut messages = vec![Message {
        name: Some(String::new()),
        ..Message::new("system", system)
    }];
    for t in thread_turns(scenario) {
        messages.push(match t.role.as_str() {
            "assistant" => Message::new("assistant", &t.text),
            _ => Message {
                role: t.role,
                content: t.text,
                name: Some(t.author),
            },
        });
    }
    messages
}

/// What streams out of `simulate`.
#[derive(Debug, Clone)]
pub enum SimEvent<'a> {
    CallStarted {
        call: &'a Call,
    },
    /// The call's prefill starts: `cached` of its prompt tokens come from the prefix cache
    /// (local models only).
    Prefill {
        call: &'a str,
        cached: usize,
    },
    Text {
        call: &'a str,
        sample: usize,
        delta: &'a str,
    },
    CallFinished {
        call: &'a str,
    },
}

/// Run a simulation: every call of the plan, `n` samples each; on a local model every call's
/// samples decode as one batch (see [`generate::generate_many`]).
pub fn simulate(
    model: &Model,
    set: &PromptSet,
    scenario: &Scenario,
    opts: &Options,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(SimEvent),
) -> Result<(Plan, Vec<SimSample>)> {
    simulate_with(Engine::Local(model), set, scenario, opts, cancel, on_event)
}

/// [`simulate`] on any engine.
pub fn simulate_with(
    engine: Engine,
    set: &PromptSet,
    scenario: &Scenario,
    opts: &Options,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(SimEvent),
) -> Result<(Plan, Vec<SimSample>)> {
    let plan = plan_with(set, scenario, opts, engine)?;
    let samples = match engine {
        Engine::Local(model) => {
            run_local(model, set, &[&plan], opts, cancel, &mut |_, e| on_event(e))?
                .pop()
                .expect("one plan, one set of samples")
        }
        Engine::Remote(endpoint) => run_remote(endpoint, set, &plan, opts, cancel, on_event)?,
    };
    Ok((plan, samples))
}

/// Several scenarios' simulations at once (an eval's), without events: on a local model every
/// call of every scenario decodes together, each with exactly the tokens it gets alone; an
/// endpoint gets them one after another.
pub fn simulate_many(
    engine: Engine,
    set: &PromptSet,
    scenarios: &[&Scenario],
    opts: &Options,
    cancel: Option<&AtomicBool>,
) -> Result<Vec<(Plan, Vec<SimSample>)>> {
    let plans = scenarios
        .iter()
        .map(|sc| plan_with(set, sc, opts, engine))
        .collect::<Result<Vec<_>>>()?;
    let samples = match engine {
        Engine::Local(model) => {
            let refs: Vec<&Plan> = plans.iter().collect();
            run_local(model, set, &refs, opts, cancel, &mut |_, _| {})?
        }
        Engine::Remote(endpoint) => plans
            .iter()
            .map(|p| run_remote(endpoint, set, p, opts, cancel, &mut |_| {}))
            .collect::<Result<Vec<_>>>()?,
    };
    Ok(plans.into_iter().zip(samples).collect())
}

/// `n` empty samples, to be filled call by call.
fn new_samples(opts: &Options) -> Vec<SimSample> {
    (0..opts.params.n.max(1))
        .map(|_| SimSample {
            states: BTreeMap::new(),
            response: String::new(),
            think: None,
            valid: true,
            stop_reasons: BTreeMap::new(),
            tokens: 0,
            ms: 0,
            outputs: BTreeMap::new(),
        })
        .collect()
}

/// The sampling parameters of one call.
fn call_params(opts: &Options, call: &Call) -> SamplingParams {
    SamplingParams {
        max_new_tokens: call.budget,
        stop: vec![call.stop.clone()],
        keep_stop: false,
        ..opts.params.clone()
    }
}

/// Every call of `plans` on a local model. The calls' prompts are all known, so they decode
/// together (each call's tokens are the ones it would get alone): the weights stream once per
/// step for all of them rather than once per call. Events carry the plan's index.
fn run_local(
    model: &Model,
    set: &PromptSet,
    plans: &[&Plan],
    opts: &Options,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(usize, SimEvent),
) -> Result<Vec<Vec<SimSample>>> {
    let n = opts.params.n.max(1);
    let calls: Vec<(usize, &Call)> = plans
        .iter()
        .enumerate()
        .flat_map(|(p, plan)| plan.calls.iter().map(move |c| (p, c)))
        .collect();
    let ps: Vec<SamplingParams> = calls.iter().map(|(_, c)| call_params(opts, c)).collect();
    let jobs: Vec<generate::Job> = calls
        .iter()
        .zip(&ps)
        .map(|((_, c), p)| generate::Job {
            prompt: &c.ids,
            params: p,
        })
        .collect();
    let began = std::time::Instant::now();
    let mut started = vec![false; calls.len()];
    let mut open = vec![n; calls.len()];
    let gens = generate::generate_many(model, &jobs, cancel, &mut |j, e| {
        let (p, call) = calls[j];
        match e {
            Event::Prefill { cached, .. } => {
                started[j] = true;
                on_event(p, SimEvent::CallStarted { call });
                on_event(
                    p,
                    SimEvent::Prefill {
                        call: &call.name,
                        cached,
                    },
                );
            }
            Event::Text { sample, delta } => on_event(
                p,
                SimEvent::Text {
                    call: &call.name,
                    sample,
                    delta,
                },
            ),
            Event::Finished { .. } => {
                open[j] -= 1;
                // A call cancelled before it started never shows.
                if open[j] == 0 && started[j] {
                    on_event(p, SimEvent::CallFinished { call: &call.name });
                }
            }
        }
    })?;
    let mut samples: Vec<Vec<SimSample>> = plans.iter().map(|_| new_samples(opts)).collect();
    for (&(p, call), g) in calls.iter().zip(gens) {
        let outs = g.samples.into_iter().map(|s| {
            let eos = s.eos_token.and_then(|t| model.tokenizer.id_to_token(t));
            (s.text, s.tokens, s.stop_reason, eos)
        });
        record(&mut samples[p], set, call, outs, 0);
    }
    // The calls overlap: a sample's time is the whole batch's.
    let ms = began.elapsed().as_millis() as u64;
    for s in samples.iter_mut().flatten() {
        s.ms = ms;
    }
    Ok(samples)
}

/// Every call of `plan` on an endpoint, one after another.
fn run_remote(
    endpoint: &crate::remote::Endpoint,
    set: &PromptSet,
    plan: &Plan,
    opts: &Options,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(SimEvent),
) -> Result<Vec<SimSample>> {
    let mut samples = new_samples(opts);
    for call in &plan.calls {
        // Once cancelled, the remaining calls are skipped rather than each prefilling its prompt
        // only to stop before its first token.
        if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
            for s in samples.iter_mut() {
                s.valid = false;
                s.stop_reasons
                    .insert(call.name.clone(), StopReason::Cancelled);
            }
            continue;
        }
        on_event(SimEvent::CallStarted { call });
        let started = std::time::Instant::now();
        let g = remote_call(
            endpoint,
            call,
            &call_params(opts, call),
            &mut |sample, delta| {
                on_event(SimEvent::Text {
                    call: &call.name,
                    sample,
                    delta,
                })
            },
        )?;
        let ms = started.elapsed().as_millis() as u64;
        on_event(SimEvent::CallFinished { call: &call.name });
        let outs = g
            .into_iter()
            .map(|(text, tokens, stop)| (text, tokens, stop, None));
        record(&mut samples, set, call, outs, ms);
    }
    Ok(samples)
}

/// A finished call's outputs, (text, tokens, stop reason, end-of-sequence token) per sample,
/// parsed into the samples.
fn record(
    samples: &mut [SimSample],
    set: &PromptSet,
    call: &Call,
    outs: impl Iterator<Item = (String, usize, StopReason, Option<String>)>,
    ms: u64,
) {
    for (s, (text, tokens, stop_reason, eos_token)) in samples.iter_mut().zip(outs) {
        // The pre-filled opening tag and a stripped stop string are put back before strict
        // parsing.
        let stop = if stop_reason == StopReason::Stop {
            call.stop.as_str()
        } else {
            ""
        };
        let full = format!("{}{}{stop}", call.prefill, text);
        let valid = absorb(s, set, call, &full);
        s.valid &= valid;
        s.tokens += tokens;
        s.ms += ms;
        s.stop_reasons
            .insert(call.name.clone(), stop_reason.clone());
        s.outputs.insert(
            call.name.clone(),
            Output {
                raw: text,
                tokens,
                stop_reason,
                eos_token,
                valid,
            },
        );
    }
}

/// One call on an endpoint: the rendered prompt through the completions API, or the messages
/// through the chat API; `n` choices, streamed. Returns (text, tokens, stop reason) per choice.
///
/// The OpenAI API reports `stop` both for a stop string and for the end-of-sequence token; both
/// count as a stop here, so an endpoint sample whose model ended without the closing tag is
/// counted valid if the rest of its format holds.
fn remote_call(
    endpoint: &crate::remote::Endpoint,
    call: &Call,
    p: &SamplingParams,
    emit: &mut dyn FnMut(usize, &str),
) -> Result<Vec<(String, usize, StopReason)>> {
    use crate::remote::{ChatRequest, GenParams};
    let params = GenParams {
        max_tokens: Some(p.max_new_tokens),
        temperature: Some(p.temperature),
        top_p: (p.top_p < 1.0).then_some(p.top_p),
        seed: Some(p.seed),
        stop: Some(vec![call.stop.clone()]),
        n: Some(p.n.max(1)),
        repetition_penalty: (p.repetition_penalty != 1.0).then_some(p.repetition_penalty),
        no_repeat_ngram: (p.no_repeat_ngram > 0).then_some(p.no_repeat_ngram),
        ..Default::default()
    };
    let n = p.n.max(1);
    let (choices, completion_tokens): (Vec<(String, Option<String>)>, usize) = match &call.messages
    {
        Some(messages) => {
            let mut req = ChatRequest::new(messages.clone(), params);
            let mut kwargs = serde_json::Map::new();
            kwargs.insert("enable_thinking".into(), call.thinking.into());
            req.chat_template_kwargs = Some(kwargs);
            let r = endpoint.chat_stream(&req, emit)?;
            (
                r.choices
                    .into_iter()
                    .map(|c| (c.message.content, c.finish_reason))
                    .collect(),
                r.usage.map(|u| u.completion_tokens).unwrap_or(0),
            )
        }
        None => {
            let r = endpoint.complete_stream(&call.prompt, &params, emit)?;
            (
                r.choices
                    .into_iter()
                    .map(|c| (c.text, c.finish_reason))
                    .collect(),
                r.usage.map(|u| u.completion_tokens).unwrap_or(0),
            )
        }
    };
    let mut out: Vec<(String, usize, StopReason)> = choices
        .into_iter()
        .map(|(text, finish)| {
            let reason = crate::remote::wire::stop_reason(finish.as_deref());
            // Usage counts all choices together; share it out evenly.
            (text, completion_tokens / n, reason)
        })
        .collect();
    out.resize(n, (String::new(), 0, StopReason::Length));
    Ok(out)
}

/// Parse one call's output into the sample; returns strict validity.
fn absorb(s: &mut SimSample, set: &PromptSet, call: &Call, full: &str) -> bool {
    // The generation prompt of a thinking-off call already holds the empty think block, and a
    // state's opening tag is the model's to write.
    match call.kind() {
        CallKind::Response if set.untagged_reply => {
            // A bare reply: valid when something is left past the thinking and no tag is used.
            let body = match full.find("</think>") {
                Some(end) if call.thinking => &full[end + "</think>".len()..],
                _ => full,
            };
            if call.thinking {
                s.think = parse::think(full);
            }
            s.response = body.trim().to_string();
            !s.response.is_empty()
                && !s.response.contains("<response>")
                && !s.response.contains("</response>")
        }
        CallKind::Response => {
            s.response = parse::extract_response(full);
            if call.thinking {
                s.think = parse::think(full);
                parse::strict_thinking(full, &[RESPONSE]).is_some()
            } else {
                parse::strict(full, &[RESPONSE]).is_some()
            }
        }
        CallKind::Joint => {
            let tags: Vec<&str> = set.states.iter().map(|x| x.key.as_str()).collect();
            for (tag, content) in parse::flexible(full) {
                if tag != RESPONSE && set.state(&tag).is_some() {
                    s.states.entry(tag).or_insert(content);
                }
            }
            s.response = parse::extract_response(full);
            parse::strict(full, &tags).is_some()
        }
        CallKind::State(key) => {
            let value = parse::flexible(full)
                .into_iter()
                .find(|(t, _)| t == key)
                .map(|(_, c)| c)
                // No closed tag: the text itself, without the tag we opened and the stop.
                .unwrap_or_else(|| {
                    let open = format!("<{key}>");
                    let text = full.strip_prefix(&call.prefill).unwrap_or(full);
                    let text = text.trim_start().strip_prefix(&open).unwrap_or(text);
                    text.replace(&call.stop, "").trim().to_string()
                });
            s.states.insert(key.to_string(), value);
            parse::strict(full, &[key]).is_some()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompts::recipe::{import, ImportSpec};
    use std::path::Path;

    /// A recipe set imported from the test fixture into a temporary prompts root.
    fn recipe_set(config: &str) -> (tempfile::TempDir, PromptSet) {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = tempfile::tempdir().unwrap();
        let to = root.path().join("humanlm");
        std::fs::create_dir(&to).unwrap();
        for e in std::fs::read_dir(here.join("prompts/humanlm")).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
        let spec = ImportSpec {
            recipe: here.join("tests/fixtures/recipe/humanlm"),
            config: config.into(),
            name: "set".into(),
            chat_template: None,
            thinking: true,
            overwrite: false,
        };
        import(&spec, root.path()).unwrap();
        let set = PromptSet::load("set", root.path()).unwrap();
        (root, set)
    }

    fn response_call() -> Call {
        Call {
            name: RESPONSE.into(),
            thinking: true,
            stop: "</response>".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_bare_reply_is_the_reply_only_for_untagged_sets() {
        let (_a, bare) = recipe_set("r_no_tag");
        let (_b, tagged) = recipe_set("r");
        let out = "hmm, short.</think>\n\nThen put it in writing. NTA.";
        let mut s = SimSample::default();
        assert!(absorb(&mut s, &bare, &response_call(), out));
        assert_eq!(s.response, "Then put it in writing. NTA.");
        assert_eq!(s.think.as_deref(), Some("hmm, short."));
        // The same output breaks a tagged set's format; tags break an untagged one's.
        let mut s = SimSample::default();
        assert!(!absorb(&mut s, &tagged, &response_call(), out));
        let mut s = SimSample::default();
        assert!(!absorb(
            &mut s,
            &bare,
            &response_call(),
            "x</think><response>y</response>"
        ));
        let mut s = SimSample::default();
        assert!(!absorb(&mut s, &bare, &response_call(), "x</think>\n  \n"));
    }
}
