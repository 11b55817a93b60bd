//! Conversations: a simulated user and an assistant take turns, each seeing the conversation
//! from its own side.
//!
//! The simulated user sees a thread scenario: the conversation so far with its own turns as
//! HUMAN's (the user role, under its prompt set and mode, states first when the set has them),
//! the assistant's turns as assistant messages, and its persona followed by the conversation's
//! intent. It is the same simulation `humanlm simulate` runs, on a scenario that grows by a turn
//! at a time, so every prompt set and checkpoint works unchanged. The assistant sees plain chat:
//! its own system prompt, the simulated user's turns as `user` messages (no names, no tags) and
//! its own as `assistant`, through its own chat template, or an endpoint's chat API.
//!
//! A conversation always ends with a reason ([`EndReason`]); a fault in the middle (an endpoint
//! that goes down, a reply that is not what the API promises) ends it as `error` with the turns
//! so far kept, so nothing already generated is lost.

pub mod diagnostics;
pub mod run;

use crate::generate::{self, SamplingParams, StopReason};
use crate::model::chat::Message;
use crate::prompts::PromptSet;
use crate::scenario::{Conversation, Role, Scenario, Speaker};
use crate::sim::{self, Engine, Mode, SamplingChoice, SimEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The author name assistant turns carry in a scenario file.
pub const ASSISTANT_AUTHOR: &str = "assistant";

/// Why a conversation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// The simulated user wrote one of its end markers.
    UserEnded,
    /// The assistant wrote one of its end markers, or nothing at all.
    AssistantEnded,
    /// The turn limit was reached.
    MaxTurns,
    /// The next turn's prompt (with room to answer) no longer fits a side's context.
    Context,
    Cancelled,
    /// A side failed (an endpoint down or answering garbage); `End::detail` says how.
    Error,
}

impl EndReason {
    pub const ALL: [EndReason; 6] = [
        EndReason::UserEnded,
        EndReason::AssistantEnded,
        EndReason::MaxTurns,
        EndReason::Context,
        EndReason::Cancelled,
        EndReason::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EndReason::UserEnded => "user-ended",
            EndReason::AssistantEnded => "assistant-ended",
            EndReason::MaxTurns => "max-turns",
            EndReason::Context => "context",
            EndReason::Cancelled => "cancelled",
            EndReason::Error => "error",
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How and why a conversation ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct End {
    pub reason: EndReason,
    /// What happened, in a line (the marker written, the error, the token counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The reason, then the detail in brackets when there is one.
impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{} ({d})", self.reason),
            None => write!(f, "{}", self.reason),
        }
    }
}

/// One turn of a conversation: a thread turn it started from, or a generated one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub speaker: Speaker,
    /// The message as the other side sees it (an end marker cut off).
    pub text: String,
    /// Whether the turn was generated here (false: it came from the scenario's thread).
    pub generated: bool,
    /// The simulated user's states for this turn (sets and modes that generate them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub states: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think: Option<String>,
    /// The end marker the turn held, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    /// Why the turn's (reply) generation stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
    /// The seed the turn was sampled with (`serve --as-user` given it gives the same turn).
    #[serde(default)]
    pub seed: u64,
    /// New tokens over all of the turn's calls.
    #[serde(default)]
    pub tokens: usize,
    /// Prompt tokens over all of the turn's calls, and how many came from the prefix cache.
    #[serde(default)]
    pub prompt_tokens: usize,
    #[serde(default)]
    pub cached_tokens: usize,
    #[serde(default)]
    pub ms: u64,
    /// Written by hand in the workbench (an edit), not by either side.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub edited: bool,
}

impl Turn {
    /// A turn with only its speaker and text (one a harness sent, say).
    pub fn said(speaker: Speaker, text: &str) -> Turn {
        Turn {
            speaker,
            text: text.to_string(),
            generated: true,
            ..Turn::from_thread(&crate::scenario::Turn {
                author: String::new(),
                text: String::new(),
                role: Role::User,
            })
        }
    }

    /// A turn of the scenario's thread: the target's (and any other person's) turns are the
    /// user's, an AI assistant's are the assistant's.
    fn from_thread(t: &crate::scenario::Turn) -> Turn {
        Turn {
            speaker: match t.role {
                Role::User => Speaker::User,
                Role::Assistant => Speaker::Assistant,
            },
            text: t.text.clone(),
            generated: false,
            states: BTreeMap::new(),
            think: None,
            marker: None,
            stop_reason: None,
            seed: 0,
            tokens: 0,
            prompt_tokens: 0,
            cached_tokens: 0,
            ms: 0,
            edited: false,
        }
    }
}

/// Sampling for the assistant's turns (the user's come from the prompt set, as in `simulate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantSampling {
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
}

impl Default for AssistantSampling {
    fn default() -> Self {
        AssistantSampling {
            temperature: 0.7,
            top_p: 1.0,
            max_tokens: 512,
        }
    }
}

/// The simulated user: what writes its turns, and how.
pub struct UserSide<'a> {
    pub engine: Engine<'a>,
    pub set: &'a PromptSet,
    pub mode: Mode,
    /// `n` is ignored (a conversation has one user); the seed is the conversation's, from which
    /// every turn's own seed is drawn ([`turn_seed`]).
    pub sampling: SamplingChoice,
}

/// Who talks and how: everything a conversation needs beside its scenario.
pub struct Setup<'a> {
    pub user: UserSide<'a>,
    pub assistant: Engine<'a>,
    pub assistant_sampling: AssistantSampling,
    /// New turns before `max-turns` (default: the table's `max_turns`).
    pub max_turns: Option<usize>,
}

/// The seed of the conversation's turn at `index` (counting the thread's turns): distinct per
/// turn, so two turns never replay the same random stream, and fixed by the conversation's seed.
pub fn turn_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index as u64 + 1)
}

/// A whole conversation: where it started, its turns and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub scenario: String,
    pub seed: u64,
    pub turns: Vec<Turn>,
    pub end: End,
}

impl Transcript {
    /// The generated turns only.
    pub fn new_turns(&self) -> impl Iterator<Item = &Turn> {
        self.turns.iter().filter(|t| t.generated)
    }
}

/// What streams out of a conversation.
pub enum Event<'a> {
    TurnStarted {
        index: usize,
        speaker: Speaker,
    },
    /// The simulated user's calls (states and reply), as `simulate` streams them.
    User(SimEvent<'a>),
    /// The assistant's text as it arrives.
    AssistantText(&'a str),
    TurnFinished {
        index: usize,
        turn: &'a Turn,
    },
}

/// The scenario the simulated user sees before turn `turns.len()`: the thread replaced by the
/// conversation so far (its own turns under the target's name, so they become HUMAN's), the
/// reference reply gone.
pub fn user_view(scenario: &Scenario, turns: &[Turn]) -> Scenario {
    let mut sc = scenario.clone();
    let thread = scenario.turns.len();
    sc.turns = turns
        .iter()
        .enumerate()
        .map(|(i, t)| match (!t.generated && i < thread, t.speaker) {
            // A thread turn keeps its author (someone else in a group thread stays themselves);
            // a turn generated where a fork cut the thread short is the conversation's.
            (true, _) => crate::scenario::Turn {
                text: t.text.clone(),
                ..scenario.turns[i].clone()
            },
            (false, Speaker::User) => crate::scenario::Turn {
                author: scenario.target.author.clone(),
                text: t.text.clone(),
                role: Role::User,
            },
            (false, Speaker::Assistant) => crate::scenario::Turn {
                author: ASSISTANT_AUTHOR.into(),
                text: t.text.clone(),
                role: Role::Assistant,
            },
        })
        .collect();
    sc.target.response = None;
    sc
}

/// The messages the assistant sees: its system prompt, every user turn as `user`, its own turns
/// as `assistant`.
pub fn assistant_messages(system: Option<&str>, turns: &[Turn]) -> Vec<Message> {
    let mut messages: Vec<Message> = system
        .map(|s| Message::new("system", s))
        .into_iter()
        .collect();
    messages.extend(
        turns
            .iter()
            .map(|t| Message::new(t.speaker.name(), &t.text)),
    );
    messages
}

/// The first of `markers` in `text`, and the text before it.
fn split_marker<'t>(text: &'t str, markers: &[String]) -> Option<(&'t str, String)> {
    markers
        .iter()
        .filter_map(|m| text.find(m.as_str()).map(|at| (at, m)))
        .min_by_key(|(at, _)| *at)
        .map(|(at, m)| (&text[..at], m.clone()))
}

/// A turn that failed: the conversation ends here, its reason named.
pub enum TurnFault {
    Context(String),
    Cancelled,
    Error(String),
}

impl From<sim::Error> for TurnFault {
    fn from(e: sim::Error) -> TurnFault {
        match e {
            e @ sim::Error::TooLong { .. } => TurnFault::Context(e.to_string()),
            e => TurnFault::Error(e.to_string()),
        }
    }
}

fn cancelled(cancel: Option<&AtomicBool>) -> bool {
    cancel.is_some_and(|c| c.load(Ordering::Relaxed))
}

/// The simulated user's next turn after `turns`: one simulation of [`user_view`] with the
/// turn's seed; the reply, its states, and the end marker it held (the text before the marker
/// is the turn). `humanlm serve --as-user` answers with exactly this.
pub fn user_turn(
    side: &UserSide,
    scenario: &Scenario,
    turns: &[Turn],
    seed: u64,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(SimEvent),
) -> Result<Turn, TurnFault> {
    let view = user_view(scenario, turns);
    let set = side.set;
    let choice = SamplingChoice {
        n: 1,
        seed,
        ..side.sampling.clone()
    };
    let opts = sim::Options::new(side.mode, choice.params(set));
    let started = Instant::now();
    let mut cached_tokens = 0;
    let (plan, samples) = sim::simulate_with(side.engine, set, &view, &opts, cancel, &mut |e| {
        if let SimEvent::Prefill { cached, .. } = &e {
            cached_tokens += cached;
        }
        on_event(e)
    })?;
    if cancelled(cancel) {
        return Err(TurnFault::Cancelled);
    }
    let prompt_tokens = plan.calls.iter().map(|c| c.prompt_tokens).sum::<usize>();
    let sample = samples.into_iter().next().unwrap_or_default();
    let reply_call = plan
        .calls
        .iter()
        .find(|c| c.kind().writes_reply())
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let raw = sample
        .outputs
        .get(&reply_call)
        .map(|o| o.raw.clone())
        .unwrap_or_default();
    let stop_reason = sample.stop_reasons.get(&reply_call).cloned();
    let markers = scenario
        .conversation
        .clone()
        .unwrap_or_default()
        .user_end_markers();
    // A marker may sit inside the reply's tags or after them (the reply's parse drops what
    // follows its closing tag), so the raw output is searched too.
    // A marker that is an end-of-sequence token (UserLM's `<|endconversation|>`) never reaches
    // the text: the token that stopped the reply is compared instead.
    let eos = sample
        .outputs
        .get(&reply_call)
        .and_then(|o| o.eos_token.clone())
        .filter(|t| markers.contains(t));
    let (text, marker) = match split_marker(&sample.response, &markers) {
        Some((before, m)) => (before.trim().to_string(), Some(m)),
        None => (
            sample.response.trim().to_string(),
            split_marker(&raw, &markers).map(|(_, m)| m).or(eos),
        ),
    };
    Ok(Turn {
        speaker: Speaker::User,
        text,
        generated: true,
        states: sample.states,
        think: sample.think,
        marker,
        stop_reason,
        seed,
        tokens: sample.tokens,
        prompt_tokens,
        cached_tokens,
        ms: started.elapsed().as_millis() as u64,
        edited: false,
    })
}

/// The assistant's prompt for `messages` through its chat template, and its token ids.
fn render_for_assistant(
    model: &crate::model::Model,
    messages: &[Message],
) -> Result<(String, Vec<u32>), String> {
    let text = model
        .chat
        .render(messages, true, &serde_json::json!({}))
        .map_err(|e| e.to_string())?;
    let ids = model
        .tokenizer
        .encode_rendered(&text)
        .map_err(|e| e.to_string())?;
    Ok((text, ids))
}

/// What the assistant is shown for its turn after `turns`: the exact prompt text through its
/// chat template and its length in tokens; for an endpoint, the messages its chat API is sent
/// (as JSON; the server applies its own template, so no count).
pub fn assistant_prompt(
    engine: Engine,
    table: &Conversation,
    turns: &[Turn],
) -> Result<(String, Option<usize>), String> {
    let messages = assistant_messages(table.assistant_system.as_deref(), turns);
    match engine {
        Engine::Local(model) => {
            render_for_assistant(model, &messages).map(|(text, ids)| (text, Some(ids.len())))
        }
        Engine::Remote(_) => serde_json::to_string_pretty(&messages)
            .map(|j| (j, None))
            .map_err(|e| e.to_string()),
    }
}

/// The assistant's next turn after `turns`.
pub fn assistant_turn(
    engine: Engine,
    table: &Conversation,
    turns: &[Turn],
    sampling: &AssistantSampling,
    seed: u64,
    cancel: Option<&AtomicBool>,
    emit: &mut dyn FnMut(&str),
) -> Result<Turn, TurnFault> {
    let messages = assistant_messages(table.assistant_system.as_deref(), turns);
    let started = Instant::now();
    let (raw, tokens, stop_reason, prompt_tokens, cached_tokens) =
        match engine {
            Engine::Local(model) => {
                let (_, ids) = render_for_assistant(model, &messages).map_err(TurnFault::Error)?;
                let context = model.decoder.max_positions();
                if ids.len() + 1 >= context {
                    return Err(TurnFault::Context(format!(
                    "the assistant's prompt has {} tokens, beyond the context of {context} tokens",
                    ids.len()
                )));
                }
                let params = SamplingParams {
                    max_new_tokens: sampling.max_tokens.min(context - ids.len()),
                    temperature: sampling.temperature,
                    top_p: sampling.top_p,
                    seed,
                    n: 1,
                    ..Default::default()
                };
                let mut cached = 0;
                let g = generate::generate(model, &ids, &params, cancel, &mut |e| match e {
                    generate::Event::Text { delta, .. } => emit(delta),
                    generate::Event::Prefill { cached: c, .. } => cached = c,
                    generate::Event::Finished { .. } => {}
                })
                .map_err(|e| TurnFault::Error(e.to_string()))?;
                let s = g.samples.into_iter().next();
                let (text, tokens, reason) = s
                    .map(|s| (s.text, s.tokens, s.stop_reason))
                    .unwrap_or((String::new(), 0, StopReason::Length));
                (text, tokens, reason, g.prompt_tokens, cached)
            }
            Engine::Remote(endpoint) => {
                use crate::remote::{ChatRequest, GenParams};
                let req = ChatRequest::new(
                    messages,
                    GenParams {
                        max_tokens: Some(sampling.max_tokens),
                        temperature: Some(sampling.temperature),
                        top_p: (sampling.top_p < 1.0).then_some(sampling.top_p),
                        seed: Some(seed),
                        ..Default::default()
                    },
                );
                let r = endpoint
                    .chat_stream(&req, &mut |_, delta| emit(delta))
                    .map_err(|e| TurnFault::Error(e.to_string()))?;
                let Some(choice) = r.choices.into_iter().next() else {
                    return Err(TurnFault::Error(format!(
                        "{}: the reply holds no choice",
                        endpoint.config().base_url
                    )));
                };
                let reason = crate::remote::wire::stop_reason(choice.finish_reason.as_deref());
                let usage = r.usage.unwrap_or_default();
                (
                    choice.message.content,
                    usage.completion_tokens,
                    reason,
                    usage.prompt_tokens,
                    0,
                )
            }
        };
    if cancelled(cancel) {
        return Err(TurnFault::Cancelled);
    }
    let (text, marker) = match split_marker(&raw, &table.assistant_end_markers) {
        Some((before, m)) => (before.trim().to_string(), Some(m)),
        None => (raw.trim().to_string(), None),
    };
    Ok(Turn {
        speaker: Speaker::Assistant,
        text,
        generated: true,
        states: BTreeMap::new(),
        think: None,
        marker,
        stop_reason: Some(stop_reason),
        seed,
        tokens,
        prompt_tokens,
        cached_tokens,
        ms: started.elapsed().as_millis() as u64,
        edited: false,
    })
}

/// Who writes the first new turn: the table's `opens`, else whoever did not write the thread's
/// last turn (the user when there is none).
pub fn first_speaker(scenario: &Scenario) -> Speaker {
    let table = scenario.conversation.clone().unwrap_or_default();
    table.opens.unwrap_or_else(|| match scenario.turns.last() {
        Some(t) if t.role == Role::User => Speaker::Assistant,
        _ => Speaker::User,
    })
}

/// The scenario's thread as a conversation's first turns.
pub fn thread_turns(scenario: &Scenario) -> Vec<Turn> {
    scenario.turns.iter().map(Turn::from_thread).collect()
}

/// Run one conversation to its end. `seed` is the conversation's; never fails once started: a
/// fault ends the conversation with the turns so far.
pub fn converse(
    setup: &Setup,
    scenario: &Scenario,
    seed: u64,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(Event),
) -> Transcript {
    let turns = thread_turns(scenario);
    let speaker = first_speaker(scenario);
    converse_from(setup, scenario, turns, speaker, seed, cancel, on_event)
}

/// Go on with a conversation from `turns` (a fork or an edit keeps the turns before its point),
/// `speaker` writing the next one, until it ends. Turns already generated count towards the
/// turn limit, so a fork of a conversation ends where the conversation would have.
pub fn converse_from(
    setup: &Setup,
    scenario: &Scenario,
    mut turns: Vec<Turn>,
    mut speaker: Speaker,
    seed: u64,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(Event),
) -> Transcript {
    let table = scenario.conversation.clone().unwrap_or_default();
    let max_turns = setup.max_turns.unwrap_or(table.max_turns);
    let mut new = turns.iter().filter(|t| t.generated).count();
    let end = loop {
        if new >= max_turns {
            break End {
                reason: EndReason::MaxTurns,
                detail: Some(format!("{new} new turn{}", if new == 1 { "" } else { "s" })),
            };
        }
        if cancelled(cancel) {
            break End {
                reason: EndReason::Cancelled,
                detail: None,
            };
        }
        let index = turns.len();
        let turn_seed = turn_seed(seed, index);
        on_event(Event::TurnStarted { index, speaker });
        let result = match speaker {
            Speaker::User => {
                user_turn(&setup.user, scenario, &turns, turn_seed, cancel, &mut |e| {
                    on_event(Event::User(e))
                })
            }
            Speaker::Assistant => assistant_turn(
                setup.assistant,
                &table,
                &turns,
                &setup.assistant_sampling,
                turn_seed,
                cancel,
                &mut |d| on_event(Event::AssistantText(d)),
            ),
        };
        let turn = match result {
            Ok(t) => t,
            Err(f) => {
                break match f {
                    TurnFault::Context(d) => End {
                        reason: EndReason::Context,
                        detail: Some(d),
                    },
                    TurnFault::Cancelled => End {
                        reason: EndReason::Cancelled,
                        detail: None,
                    },
                    TurnFault::Error(d) => End {
                        reason: EndReason::Error,
                        detail: Some(format!("{} turn: {d}", speaker.name())),
                    },
                }
            }
        };
        new += 1;
        let ends = match (&turn.marker, speaker) {
            (Some(m), Speaker::User) => Some((EndReason::UserEnded, format!("wrote {m}"))),
            (Some(m), Speaker::Assistant) => {
                Some((EndReason::AssistantEnded, format!("wrote {m}")))
            }
            (None, Speaker::Assistant) if turn.text.is_empty() => {
                Some((EndReason::AssistantEnded, "wrote nothing".to_string()))
            }
            _ if turn.stop_reason == Some(StopReason::Context) => Some((
                EndReason::Context,
                format!("the {} turn filled the context", speaker.name()),
            )),
            _ => None,
        };
        turns.push(turn);
        on_event(Event::TurnFinished {
            index,
            turn: &turns[index],
        });
        if let Some((reason, detail)) = ends {
            break End {
                reason,
                detail: Some(detail),
            };
        }
        speaker = speaker.other();
    };
    Transcript {
        scenario: scenario.id.clone(),
        seed,
        turns,
        end,
    }
}

/// A transcript as a scenario file: the conversation up to its last user turn is the thread,
/// that turn the target's reply, so it can be simulated again, forked or evaluated. None when
/// the conversation holds no user turn.
pub fn to_scenario(scenario: &Scenario, t: &Transcript) -> Option<Scenario> {
    let last_user = t.turns.iter().rposition(|x| x.speaker == Speaker::User)?;
    let mut sc = user_view(scenario, &t.turns[..last_user]);
    sc.target.response = Some(t.turns[last_user].text.clone());
    if !t.scenario.is_empty() {
        sc.source = Some(crate::scenario::Source::note(&format!(
            "humanlm converse on {}, seed {}, ended {}",
            t.scenario, t.seed, t.end.reason
        )));
    }
    if sc.conversation.is_none() {
        sc.conversation = Some(Conversation::default());
    }
    Some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_split_at_the_first_one() {
        let m = vec!["<|endconversation|>".to_string(), "bye!".to_string()];
        assert_eq!(
            split_marker("ok thanks bye! <|endconversation|>", &m),
            Some(("ok thanks ", "bye!".to_string()))
        );
        assert_eq!(split_marker("ok thanks", &m), None);
    }

    #[test]
    fn turn_seeds_differ_by_turn_and_conversation() {
        let a: std::collections::HashSet<u64> = (0..3)
            .flat_map(|s| (0..50).map(move |i| turn_seed(s, i)))
            .collect();
        assert_eq!(a.len(), 150);
        assert_eq!(turn_seed(7, 3), turn_seed(7, 3));
    }
}
