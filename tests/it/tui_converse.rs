//! The Converse screen without a terminal or a model: conversations driven by the messages a
//! worker sends, forks and edits as the effects they ask for, the tree and the session file,
//! and snapshots of the screen streaming, finished and forked (tests/it/snapshots/).

use crate::tui::{app, code, finished_run, key, render, send, snap, typed, STATES};
use humanlm::converse::{End, EndReason, Turn};
use humanlm::scenario::Speaker;
use humanlm::tui::action::{Action, ConverseRequest, Effect};
use humanlm::tui::app::*;
use humanlm::tui::update::converse::max_turns;
use ratatui::crossterm::event::KeyCode;
use std::sync::atomic::Ordering;

/// The workbench on Converse with the Lisbon chat selected in Simulate.
fn on_converse(w: u16, h: u16) -> App {
    let mut a = app(w, h);
    send(&mut a, [key('/')]);
    send(&mut a, typed("lisbon chat"));
    assert_eq!(a.selected_scenario().unwrap().scenario.id, "chat-trip-01");
    // Leave the filter with its match selected (Tab leaves the list).
    send(&mut a, [code(KeyCode::Tab)]);
    send(&mut a, [key('C')]);
    assert_eq!(a.screen, Screen::Converse);
    a.message = None;
    a
}

/// The conversation the effects start (exactly one).
fn started(fx: &[Effect]) -> &ConverseRequest {
    let reqs: Vec<&ConverseRequest> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Converse(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(reqs.len(), 1, "{fx:?}");
    reqs[0]
}

fn conv(job: u64, msg: ConvMsg) -> Action {
    Action::Conv { job, msg }
}

/// The worker's last message: the conversation ended, for `reason`.
fn ended(job: u64, reason: EndReason, detail: Option<&str>) -> Action {
    conv(
        job,
        ConvMsg::Ended(End {
            reason,
            detail: detail.map(str::to_string),
        }),
    )
}

/// A user turn as the worker streams it: the six states, then the reply.
fn stream_user_turn(a: &mut App, job: u64, index: usize, reply: &str) {
    send(
        a,
        [conv(
            job,
            ConvMsg::TurnStarted {
                index,
                speaker: Speaker::User,
            },
        )],
    );
    for (k, v) in STATES {
        send(
            a,
            [
                conv(
                    job,
                    ConvMsg::Call {
                        name: k.into(),
                        prefill: format!("<{k}>"),
                    },
                ),
                conv(job, ConvMsg::Prefill { cached: 120 }),
                conv(job, ConvMsg::Text(v.into())),
            ],
        );
    }
    send(
        a,
        [
            conv(
                job,
                ConvMsg::Call {
                    name: "response".into(),
                    prefill: "<response>".into(),
                },
            ),
            conv(job, ConvMsg::Text(reply.into())),
        ],
    );
}

fn user_turn(reply: &str, seed: u64) -> Turn {
    let mut t = Turn::said(Speaker::User, reply);
    for (k, v) in STATES {
        t.states.insert(k.into(), v.into());
    }
    t.seed = seed;
    t.tokens = 61;
    t.prompt_tokens = 900;
    t.cached_tokens = 720;
    t.ms = 2400;
    t
}

fn assistant_turn(reply: &str, seed: u64) -> Turn {
    let mut t = Turn::said(Speaker::Assistant, reply);
    t.seed = seed;
    t.tokens = 18;
    t.ms = 700;
    t
}

const USER_REPLY: &str = "ok but I hate museums, swap belem for something outdoors";
const ASSISTANT_REPLY: &str = "Then Day 2: a morning hike in Sintra and a sunset at Cabo da Roca.";

/// The user's turn, the assistant's, and the end at the turn limit, as a worker sends them.
fn user_then_assistant(a: &mut App, job: u64, seed: u64) {
    stream_user_turn(a, job, 2, USER_REPLY);
    send(
        a,
        [
            conv(
                job,
                ConvMsg::TurnFinished(Box::new(user_turn(USER_REPLY, seed))),
            ),
            conv(
                job,
                ConvMsg::TurnStarted {
                    index: 3,
                    speaker: Speaker::Assistant,
                },
            ),
            conv(job, ConvMsg::Text(ASSISTANT_REPLY.into())),
            conv(
                job,
                ConvMsg::TurnFinished(Box::new(assistant_turn(ASSISTANT_REPLY, seed))),
            ),
            ended(job, EndReason::MaxTurns, Some("2 new turns")),
        ],
    );
}

/// One two-turn conversation through to `max-turns`: the user's turn, then the assistant's.
fn two_turns(a: &mut App) -> u64 {
    send(a, (0..20).map(|_| key('-')));
    send(a, [key('+')]);
    assert_eq!(max_turns(a), 2);
    let fx = send(a, [code(KeyCode::Enter)]);
    let req = started(&fx);
    let (job, seed) = (req.job, req.seed);
    send(
        a,
        [conv(
            job,
            ConvMsg::Started {
                user: "smollm2-135m-instruct".into(),
                set: "instruct".into(),
                assistant: "smollm2-135m-instruct".into(),
            },
        )],
    );
    user_then_assistant(a, job, seed);
    job
}

#[test]
fn a_conversation_streams_ends_and_forks() {
    let mut a = on_converse(120, 40);
    let out = render(&mut a, 120, 40);
    assert!(
        out.contains("Enter starts a conversation on chat-trip-01"),
        "{out}"
    );
    // The turn limit is bounded both ways.
    send(&mut a, (0..20).map(|_| key('-')));
    assert_eq!(max_turns(&a), 1);
    send(&mut a, (0..1100).map(|_| key('+')));
    assert_eq!(max_turns(&a), humanlm::scenario::MAX_TURNS_LIMIT);
    send(&mut a, (0..1100).map(|_| key('-')));
    send(&mut a, [key('+')]);

    // Enter: the thread's two turns, and the user writes next (the assistant spoke last).
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    let req = started(&fx);
    assert_eq!(req.scenario.id, "chat-trip-01");
    assert_eq!(req.turns.len(), 2);
    assert!(req.turns.iter().all(|t| !t.generated));
    assert_eq!(req.next, Speaker::User);
    assert_eq!(req.max_turns, Some(2));
    assert_eq!(
        (req.set.as_str(), req.mode),
        ("instruct", humanlm::sim::Mode::Humanlm)
    );
    let (job, seed) = (req.job, req.seed);
    // One conversation at a time.
    let fx = send(&mut a, [key('N')]);
    assert!(
        fx.iter().all(|e| !matches!(e, Effect::Converse(_))),
        "{fx:?}"
    );
    assert!(a
        .message
        .as_ref()
        .unwrap()
        .1
        .contains("a conversation is running"));

    stream_user_turn(&mut a, job, 2, "ok but I hate");
    let out = render(&mut a, 120, 40);
    assert!(out.contains("writing"), "{out}");
    assert!(out.contains("conversing"), "{out}");
    snap("converse_streaming", &mut a);

    // Esc stops: the worker is told, and the branch ends as the worker reports it.
    send(&mut a, [code(KeyCode::Esc)]);
    assert!(req.cancel.load(Ordering::Relaxed));
    assert_eq!(a.screen, Screen::Converse);
    send(&mut a, [ended(job, EndReason::Cancelled, None)]);
    assert_eq!(a.converse.current().unwrap().turns.len(), 2);
    assert!(!a.converse.running());

    // Enter goes on from where it stopped, with the same seed, and runs to the turn limit.
    a.message = None;
    two_turns_after_cancel(&mut a, seed);
    let b = a.converse.current().unwrap();
    assert_eq!(b.turns.len(), 4);
    assert_eq!(b.end.as_ref().unwrap().reason, EndReason::MaxTurns);
    assert_eq!(b.user, "smollm2-135m-instruct");
    let out = render(&mut a, 120, 40);
    assert!(out.contains("conversation ended: max-turns"), "{out}");
    snap("converse_done", &mut a);
    // Ended at its limit: Enter says so and starts nothing.
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    assert!(fx.iter().all(|e| !matches!(e, Effect::Converse(_))));
    assert!(a
        .message
        .as_ref()
        .unwrap()
        .1
        .contains("+ allows another turn"));

    // Up to the user's turn, F: a branch with the turns before it, the user writing it again
    // with a seed of its own.
    send(&mut a, [code(KeyCode::Up)]);
    assert_eq!(a.converse.cursor_turn(), Some(2));
    let fx = send(&mut a, [key('F')]);
    let req = started(&fx);
    assert_eq!(req.turns.len(), 2);
    assert_eq!(req.next, Speaker::User);
    assert_ne!(req.seed, seed);
    assert_eq!(a.converse.branches.len(), 2);
    assert_eq!(a.converse.branch, 1);
    let fork = &a.converse.branches[1];
    assert_eq!(fork.parent, Some((0, 2)));
    assert_eq!(fork.origin, "fork at turn 3");
    assert_eq!(fork.depth(&a.converse.branches), 1);
    let job = req.job;
    stream_user_turn(&mut a, job, 2, "museums are fine actually");
    send(
        &mut a,
        [
            conv(
                job,
                ConvMsg::TurnFinished(Box::new(user_turn("museums are fine actually", 7))),
            ),
            ended(job, EndReason::UserEnded, Some("<|endconversation|>")),
        ],
    );
    snap("converse_fork", &mut a);
    // The tree: the fork under the conversation it came from; Enter on a row shows it.
    assert_eq!(a.converse.tree(), vec![0, 1]);
    send(
        &mut a,
        [code(KeyCode::Tab), code(KeyCode::Up), code(KeyCode::Enter)],
    );
    assert_eq!(a.converse.branch, 0);
    assert_eq!(a.converse.focus, ConvFocus::Transcript);
}

/// Enter after a cancel: the same branch goes on with its seed, then two turns to the limit.
fn two_turns_after_cancel(a: &mut App, seed: u64) {
    let fx = send(a, [code(KeyCode::Enter)]);
    let req = started(&fx);
    assert_eq!(req.seed, seed);
    assert_eq!(req.turns.len(), 2);
    let job = req.job;
    user_then_assistant(a, job, seed);
}

#[test]
fn editing_a_turn_makes_a_branch_that_goes_on_from_the_edit() {
    let mut a = on_converse(120, 40);
    two_turns(&mut a);
    // The user's turn, edited in the workbench: typing is text, Enter keeps it.
    send(&mut a, [code(KeyCode::Up)]);
    assert_eq!(a.converse.cursor_turn(), Some(2));
    send(&mut a, [key('e')]);
    assert_eq!(a.converse.edit.as_ref().unwrap().text, USER_REPLY);
    send(&mut a, (0..8).map(|_| code(KeyCode::Backspace)));
    send(&mut a, typed("a beach, F please"));
    let out = render(&mut a, 120, 40);
    assert!(out.contains("Edit turn 3"), "{out}");
    assert!(a.converse.branches.len() == 1 && !a.quit);
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    assert!(fx.is_empty(), "an edit does not start by itself: {fx:?}");
    assert_eq!(a.converse.branches.len(), 2);
    let b = a.converse.current().unwrap();
    assert_eq!(b.origin, "edit of turn 3");
    assert_eq!(b.turns.len(), 3);
    let t = &b.turns[2];
    assert_eq!(
        t.text,
        "ok but I hate museums, swap belem for something a beach, F please"
    );
    assert!(t.edited && t.states.is_empty() && t.tokens == 0);
    // The branch it came from is as it was.
    assert_eq!(a.converse.branches[0].turns[2].text, USER_REPLY);
    snap("converse_edited", &mut a);
    // Enter: the assistant answers the edit.
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    let req = started(&fx);
    assert_eq!(req.turns.len(), 3);
    assert!(req.turns[2].edited);
    assert_eq!(req.next, Speaker::Assistant);
    send(&mut a, [ended(req.job, EndReason::Cancelled, None)]);

    // E: the turn goes to $EDITOR; what comes back (its last newline dropped) is a branch.
    send(&mut a, [code(KeyCode::Up)]);
    let turn = a.converse.cursor_turn().unwrap();
    let fx = send(&mut a, [key('E')]);
    let [Effect::EditTurn {
        branch,
        turn: t,
        text,
    }] = &fx[..]
    else {
        panic!("{fx:?}")
    };
    assert_eq!((*branch, *t), (1, turn));
    assert_eq!(text, &a.converse.branches[1].turns[turn].text);
    let fx = send(
        &mut a,
        [Action::TurnEdited {
            branch: 1,
            turn,
            result: Ok("Can we skip Belém?\n".into()),
        }],
    );
    assert!(fx.is_empty());
    assert_eq!(a.converse.branches.len(), 3);
    assert_eq!(a.converse.branches[2].parent, Some((1, turn)));
    assert_eq!(
        a.converse.branches[2].turns[turn].text,
        "Can we skip Belém?"
    );
    assert_eq!(a.converse.tree(), vec![0, 1, 2]);
    assert_eq!(a.converse.branches[2].depth(&a.converse.branches), 2);
    // The same text is no edit; an editor that failed says so.
    send(&mut a, [key('e'), code(KeyCode::Enter)]);
    assert_eq!(a.converse.branches.len(), 3);
    send(
        &mut a,
        [Action::TurnEdited {
            branch: 2,
            turn,
            result: Err("vi exited with status 1".into()),
        }],
    );
    assert_eq!(a.converse.branches.len(), 3);
    assert!(a.error.as_deref().unwrap_or("").contains("vi exited"));
}

#[test]
fn the_prompt_of_a_turn_is_shown_as_its_side_saw_it() {
    let mut a = on_converse(120, 40);
    two_turns(&mut a);
    // v on the assistant's turn: the prompt of the turns before it, written by the assistant.
    let fx = send(&mut a, [key('v')]);
    let [Effect::TurnPrompt(req)] = &fx[..] else {
        panic!("{fx:?}")
    };
    assert_eq!(req.turns.len(), 3);
    assert_eq!(req.next, Speaker::Assistant);
    let prompt = "<|im_start|>system\nYou are a helpful travel assistant.<|im_end|>\n<|im_start|>user\nCan you plan two days in Lisbon for me?<|im_end|>\n<|im_start|>assistant\n";
    send(
        &mut a,
        [Action::TurnPrompt {
            job: req.job,
            result: Ok(vec![CallPrompt {
                name: "assistant".into(),
                tokens: Some(41),
                text: prompt.into(),
            }]),
        }],
    );
    let out = render(&mut a, 120, 40);
    assert!(out.contains("as the assistant saw it"), "{out}");
    assert!(out.contains("assistant 41 tok"), "{out}");
    snap("converse_prompt", &mut a);
    // v again (or Esc) closes it; on the user's turn, one call per state and the reply.
    send(&mut a, [key('v')]);
    assert!(a.converse.prompt.is_none());
    send(&mut a, [code(KeyCode::Up)]);
    let fx = send(&mut a, [key('v')]);
    let [Effect::TurnPrompt(req)] = &fx[..] else {
        panic!("{fx:?}")
    };
    assert_eq!((req.turns.len(), req.next), (2, Speaker::User));
    let calls: Vec<CallPrompt> = ["stance", "response"]
        .iter()
        .map(|n| CallPrompt {
            name: n.to_string(),
            tokens: Some(300),
            text: format!("HUMAN's {n}"),
        })
        .collect();
    send(
        &mut a,
        [Action::TurnPrompt {
            job: req.job,
            result: Ok(calls),
        }],
    );
    // The reply's call first; Tab goes round.
    assert_eq!(a.converse.prompt.as_ref().unwrap().call, 1);
    send(&mut a, [code(KeyCode::Tab)]);
    assert_eq!(a.converse.prompt.as_ref().unwrap().call, 0);
    let out = render(&mut a, 120, 40);
    assert!(
        out.contains("as the simulated user saw it") && out.contains("HUMAN's stance"),
        "{out}"
    );
    send(&mut a, [code(KeyCode::Esc)]);
    assert!(a.converse.prompt.is_none());
    assert_eq!(a.screen, Screen::Converse);
}

#[test]
fn a_simulation_goes_on_as_a_conversation() {
    let mut a = app(120, 40);
    // F before anything ran says what to do.
    let fx = send(&mut a, [key('F')]);
    assert!(fx.is_empty());
    finished_run(&mut a, 1);
    let reply = a.sim.as_ref().unwrap().samples[0]
        .response()
        .unwrap()
        .to_string();
    let fx = send(&mut a, [key('F')]);
    assert_eq!(a.screen, Screen::Converse);
    let req = started(&fx);
    assert_eq!(req.scenario.id, "opinion-fence-01");
    // The thread's two comments, then the simulated reply with its states.
    assert_eq!(req.turns.len(), 3);
    let t = &req.turns[2];
    assert_eq!(
        (t.speaker, t.text.as_str()),
        (Speaker::User, reply.as_str())
    );
    assert_eq!(t.states["goal"], "reassure the poster");
    assert_eq!(req.next, Speaker::Assistant);
    assert_eq!(a.converse.current().unwrap().origin, "from the simulation");
}

#[test]
fn conversations_are_saved_with_the_session() {
    let mut a = on_converse(120, 40);
    two_turns(&mut a);
    send(&mut a, [code(KeyCode::Up), key('F')]);
    let job = a.converse.job.unwrap().0;
    send(&mut a, [ended(job, EndReason::Cancelled, None)]);
    // No simulation ran: the session holds the conversations alone.
    let fx = send(&mut a, [key('s')]);
    let [Effect::SaveSession(s)] = &fx[..] else {
        panic!("{fx:?}")
    };
    assert!(s.samples.is_empty());
    assert_eq!(s.conversations, a.converse.branches);
    let json = serde_json::to_string(&**s).unwrap();
    let back: Session = serde_json::from_str(&json).unwrap();
    let mut b = app(120, 40);
    send(&mut b, [Action::SessionOpened(back)]);
    assert_eq!(b.screen, Screen::Converse);
    assert_eq!(b.converse.branches, a.converse.branches);
    assert_eq!(b.converse.tree(), vec![0, 1]);
    let out = render(&mut b, 120, 40);
    assert!(out.contains(ASSISTANT_REPLY), "{out}");
    // The reopened fork goes on where it stopped.
    send(
        &mut b,
        [
            code(KeyCode::Tab),
            code(KeyCode::Down),
            code(KeyCode::Enter),
        ],
    );
    assert_eq!(b.converse.branch, 1);
    let fx = send(&mut b, [code(KeyCode::Enter)]);
    let req = started(&fx);
    assert_eq!((req.turns.len(), req.next), (2, Speaker::User));
    // A session file from before conversations existed opens with none.
    let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
    old.as_object_mut().unwrap().remove("conversations");
    let s: Session = serde_json::from_value(old).unwrap();
    assert!(s.conversations.is_empty());
}
