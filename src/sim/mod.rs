//! HumanLM simulation: a scenario and a prompt set become exact prompts; the model writes the
//! six states and the reply; the outputs are parsed. Scoring lives elsewhere.
//!
//! Modes: `humanlm` generates each state independently (its own system prompt, thinking off,
//! stopping at its closing tag), then the reply with thinking on, stopping at `</response>`;
//! `response` is the reply alone (the paper's baseline); `joint` asks for all seven tags at once.

pub mod parse;

use crate::generate::{self, Event, SamplingParams, StopReason};
use crate::model::chat::ChatTemplate;
use crate::model::chat::Message;
use crate::model::Model;
use crate::prompts::{Layout, PromptSet, StateSpec, ThreadTurn};
use crate::scenario::{Role, Scenario};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

/// The name the simulated person always has in prompts.
pub const HUMAN: &str = "HUMAN";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Humanlm,
    Response,
    Joint,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Prompt(#[from] crate::prompts::Error),
    #[error(transparent)]
    Model(#[from] crate::model::Error),
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Truncate {
    /// Refuse, with the token counts.
    #[default]
    None,
    /// Drop the oldest turns after the opening post until every call fits; the number dropped
    /// is reported with the result.
    Oldest,
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

/// One generation call of a simulation: a state, the reply, or the joint output.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    /// `stance` … `communication`, `response`, or `joint`.
    pub name: String,
    /// The exact prompt text, special tokens included (ending with `prefill`, if any).
    pub prompt: String,
    pub prompt_tokens: usize,
    /// The prompt's token ids (tokenized once, when the plan is made).
    #[serde(skip)]
    pub ids: Vec<u32>,
    pub thinking: bool,
    /// The opening tag already written at the end of the prompt (sets with `prefill_tag`).
    pub prefill: String,
    pub stop: String,
    /// How many tokens the call may generate.
    pub budget: usize,
}

/// The calls of a simulation, rendered (what the simulator sees).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub calls: Vec<Call>,
    /// Thread turns left out to fit the context (`Truncate::Oldest`), oldest first after the post.
    pub dropped_turns: usize,
}

/// What one call produced for one sample.
#[derive(Debug, Clone, Serialize)]
pub struct Output {
    /// Generated text as it came out (the stop string stripped, the prefill not included).
    pub raw: String,
    pub tokens: usize,
    pub stop_reason: StopReason,
    /// Whether the strict (or strict-thinking) parse succeeded.
    pub valid: bool,
}

/// One simulated reply with its states.
#[derive(Debug, Clone, Serialize)]
pub struct SimSample {
    pub states: BTreeMap<String, String>,
    pub response: String,
    pub think: Option<String>,
    pub valid: bool,
    pub stop_reasons: BTreeMap<String, StopReason>,
    pub tokens: usize,
    pub ms: u64,
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
    let context = model.decoder.max_positions();
    let mut sc = scenario.clone();
    let mut dropped = 0;
    loop {
        let calls = plan_calls(set, &sc, opts, model)?;
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
    model: &Model,
) -> Result<Vec<Call>> {
    let persona = set.persona(scenario.persona.as_ref())?;
    let response = set.state("response").expect("checked at load");
    let turns = thread_turns(scenario);
    let mut calls = vec![];
    let mut add = |name: &str, specs: &[&StateSpec], thinking: bool, stop: &str| -> Result<()> {
        let system = set.system(&persona, specs)?;
        let mut prompt = match set.layout {
            Layout::Thread => render_thread(set, model, scenario, &system, thinking)?,
            Layout::Transcript => {
                let task = set.task(&persona, &set.thread(&turns)?, specs)?;
                let messages = [Message::new("system", &system), Message::new("user", &task)];
                chat_template(set, model).render(
                    &messages,
                    true,
                    &serde_json::json!({ "enable_thinking": thinking }),
                )?
            }
        };
        let prefill = if set.prefill_tag {
            format!("<{}>", specs[0].key)
        } else {
            String::new()
        };
        prompt.push_str(&prefill);
        let ids = model.tokenizer.encode_rendered(&prompt)?;
        let budget = match name {
            "joint" => specs.iter().map(|x| x.max_tokens).sum(),
            _ if thinking => specs[0].max_tokens_thinking.unwrap_or(specs[0].max_tokens),
            _ => specs[0].max_tokens,
        };
        calls.push(Call {
            name: name.into(),
            prompt,
            prompt_tokens: ids.len(),
            ids,
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
                add(&s.key, &[s], false, &format!("</{}>", s.key))?;
            }
            add(
                "response",
                &[response],
                set.response_thinking,
                "</response>",
            )?;
        }
        Mode::Response => add("response", &[response], false, "</response>")?,
        Mode::Joint => add(
            "joint",
            &set.states.iter().collect::<Vec<_>>(),
            false,
            "</response>",
        )?,
    }
    Ok(calls)
}

/// The set's chat template, or the checkpoint's own when the set has none.
fn chat_template<'a>(set: &'a PromptSet, model: &'a Model) -> &'a ChatTemplate {
    set.chat.as_ref().unwrap_or(&model.chat)
}

/// The HumanLM prompt: system message, the thread as named user turns (the target relabelled
/// HUMAN), assistant turns as they are, and the generation prompt that opens HUMAN's turn.
pub fn render_thread(
    set: &PromptSet,
    model: &Model,
    scenario: &Scenario,
    system: &str,
    thinking: bool,
) -> Result<String> {
    let mut messages = vec![Message::new("system", system)];
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
    Ok(chat_template(set, model).render(
        &messages,
        true,
        &serde_json::json!({ "enable_thinking": thinking }),
    )?)
}

/// What streams out of `simulate`.
#[derive(Debug, Clone)]
pub enum SimEvent<'a> {
    CallStarted {
        call: &'a Call,
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

/// Run a simulation: every call of the plan, `n` samples each (decoded as one batch).
pub fn simulate(
    model: &Model,
    set: &PromptSet,
    scenario: &Scenario,
    opts: &Options,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(SimEvent),
) -> Result<(Plan, Vec<SimSample>)> {
    let plan = plan(set, scenario, opts, model)?;
    let n = opts.params.n.max(1);
    let mut samples: Vec<SimSample> = (0..n)
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
        .collect();
    for call in &plan.calls {
        on_event(SimEvent::CallStarted { call });
        let p = SamplingParams {
            max_new_tokens: call.budget,
            stop: vec![call.stop.clone()],
            keep_stop: false,
            ..opts.params.clone()
        };
        let started = std::time::Instant::now();
        let g = generate::generate(model, &call.ids, &p, cancel, &mut |e| {
            if let Event::Text { sample, delta } = e {
                on_event(SimEvent::Text {
                    call: &call.name,
                    sample,
                    delta,
                });
            }
        })?;
        let ms = started.elapsed().as_millis() as u64;
        on_event(SimEvent::CallFinished { call: &call.name });
        for (s, out) in samples.iter_mut().zip(g.samples) {
            // The pre-filled opening tag and a stripped stop string are put back before strict
            // parsing.
            let stop = if out.stop_reason == StopReason::Stop {
                call.stop.as_str()
            } else {
                ""
            };
            let full = format!("{}{}{stop}", call.prefill, out.text);
            let valid = absorb(s, set, call, &full);
            s.valid &= valid;
            s.tokens += out.tokens;
            s.ms += ms;
            s.stop_reasons
                .insert(call.name.clone(), out.stop_reason.clone());
            s.outputs.insert(
                call.name.clone(),
                Output {
                    raw: out.text,
                    tokens: out.tokens,
                    stop_reason: out.stop_reason,
                    valid,
                },
            );
        }
    }
    Ok((plan, samples))
}

/// Parse one call's output into the sample; returns strict validity.
fn absorb(s: &mut SimSample, set: &PromptSet, call: &Call, full: &str) -> bool {
    // The generation prompt of a thinking-off call already holds the empty think block, and a
    // state's opening tag is the model's to write.
    match call.name.as_str() {
        "response" => {
            s.response = parse::extract_response(full);
            if call.thinking {
                s.think = parse::think(full);
                parse::strict_thinking(full, &["response"]).is_some()
            } else {
                parse::strict(full, &["response"]).is_some()
            }
        }
        "joint" => {
            let tags: Vec<&str> = set.states.iter().map(|x| x.key.as_str()).collect();
            for (tag, content) in parse::flexible(full) {
                if tag != "response" && set.state(&tag).is_some() {
                    s.states.entry(tag).or_insert(content);
                }
            }
            s.response = parse::extract_response(full);
            parse::strict(full, &tags).is_some()
        }
        key => {
            let value = parse::flexible(full)
                .into_iter()
                .find(|(t, _)| t == key)
                .map(|(_, c)| c)
                .unwrap_or_else(|| full.replace(&call.stop, "").trim().to_string());
            s.states.insert(key.to_string(), value);
            parse::strict(full, &[key]).is_some()
        }
    }
}
