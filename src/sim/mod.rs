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
use crate::prompts::{PromptSet, StateSpec};
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
    #[error("scenario '{id}': the prompt for {call} has {prompt} tokens and may generate {budget} more, beyond the context of {context} tokens")]
    TooLong {
        id: String,
        call: String,
        prompt: usize,
        budget: usize,
        context: usize,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// One generation call of a simulation: a state, the reply, or the joint output.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    /// `stance` … `communication`, `response`, or `joint`.
    pub name: String,
    /// The exact prompt text, special tokens included.
    pub prompt: String,
    pub prompt_tokens: usize,
    /// The prompt's token ids (tokenized once, when the plan is made).
    #[serde(skip)]
    pub ids: Vec<u32>,
    pub thinking: bool,
    pub stop: String,
}

/// What one call produced for one sample.
#[derive(Debug, Clone, Serialize)]
pub struct Output {
    /// Generated text as it came out (the stop string stripped).
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

/// The calls a simulation makes, rendered (what the simulator sees).
pub fn plan(set: &PromptSet, scenario: &Scenario, mode: Mode, model: &Model) -> Result<Vec<Call>> {
    let persona = set.persona(scenario.persona.as_ref())?;
    let response = set.state("response").expect("checked at load");
    let mut calls = vec![];
    let mut add = |name: &str, specs: &[&StateSpec], thinking: bool, stop: &str| -> Result<()> {
        let system = set.system(&persona, specs)?;
        let prompt = render(set, scenario, &system, thinking)?;
        let ids = model.tokenizer.encode_rendered(&prompt)?;
        calls.push(Call {
            name: name.into(),
            prompt,
            prompt_tokens: ids.len(),
            ids,
            thinking,
            stop: stop.into(),
        });
        Ok(())
    };
    match mode {
        Mode::Humanlm => {
            for s in set.dimensions() {
                add(&s.key, &[s], false, &format!("</{}>", s.key))?;
            }
            add("response", &[response], true, "</response>")?;
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

/// The full prompt: system message, the thread (the target's turns relabelled HUMAN), and the
/// generation prompt that opens HUMAN's turn.
pub fn render(
    set: &PromptSet,
    scenario: &Scenario,
    system: &str,
    thinking: bool,
) -> Result<String> {
    let mut messages = vec![Message::new("system", system)];
    for t in &scenario.turns {
        let m = match t.role {
            Role::Assistant => Message::new("assistant", &t.text),
            Role::User => {
                let name = if t.author == scenario.target.author {
                    HUMAN
                } else {
                    t.author.as_str()
                };
                Message {
                    role: "user".into(),
                    content: t.text.clone(),
                    name: Some(name.into()),
                }
            }
        };
        messages.push(m);
    }
    Ok(set.chat.render(
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

/// Run a simulation: every call of the plan, `params.n` samples each (decoded as one batch).
pub fn simulate(
    model: &Model,
    set: &PromptSet,
    scenario: &Scenario,
    mode: Mode,
    params: &SamplingParams,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(SimEvent),
) -> Result<(Vec<Call>, Vec<SimSample>)> {
    let calls = plan(set, scenario, mode, model)?;
    let n = params.n.max(1);
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
    let context = model.decoder.max_positions();
    for call in &calls {
        let budget = budget(set, call);
        if call.prompt_tokens + budget > context {
            return Err(Error::TooLong {
                id: scenario.id.clone(),
                call: call.name.clone(),
                prompt: call.prompt_tokens,
                budget,
                context,
            });
        }
        on_event(SimEvent::CallStarted { call });
        let p = SamplingParams {
            max_new_tokens: budget.min(params.max_new_tokens),
            stop: vec![call.stop.clone()],
            keep_stop: false,
            ..params.clone()
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
            // A stripped stop string is put back before strict parsing.
            let full = if out.stop_reason == StopReason::Stop {
                format!("{}{}", out.text, call.stop)
            } else {
                out.text.clone()
            };
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
    Ok((calls, samples))
}

/// How many tokens a call may generate: its state's limit (the thinking limit for a thinking
/// reply), or all limits together for the joint output.
fn budget(set: &PromptSet, call: &Call) -> usize {
    match set.state(&call.name) {
        Some(s) if call.thinking => s.max_tokens_thinking.unwrap_or(s.max_tokens),
        Some(s) => s.max_tokens,
        None => set.states.iter().map(|x| x.max_tokens).sum(),
    }
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
