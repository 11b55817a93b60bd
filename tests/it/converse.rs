//! Conversations: each side's view of the conversation (golden prompts under each shipped
//! prompt set and a ChatML and a Llama-3 template), the end reasons on the default model, the
//! run folder (resume, a failing endpoint, a cut transcript), `--save-scenario`, and
//! `serve --as-user` against `converse` through the official OpenAI client.

use crate::common;
use crate::common::humanlm;
use crate::serve::{fake, http, raw_post, test_python, Server};
use humanlm::converse::{
    self, assistant_messages, user_view, AssistantSampling, EndReason, Event, Setup, Transcript,
    Turn, UserSide,
};
use humanlm::model::chat::ChatTemplate;
use humanlm::prompts::PromptSet;
use humanlm::scenario::{Scenario, Speaker};
use humanlm::sim::{Engine, Mode, Options, SamplingChoice};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const MODEL: &str = "smollm2-135m-instruct";

/// A support chat the user opens after the agent's greeting.
const PARCEL: &str = r#"
id = "conv-parcel"
domain = "chat"
title = "A parcel that has not arrived"

[persona]
text = "A night-shift nurse in Leeds who writes short, blunt messages."

[[turns]]
author = "assistant"
role = "assistant"
text = "Hi, this is Parcelly support. How can I help?"

[target]
author = "sam"

[conversation]
intent = "Find out where parcel PX-1234 is and get it delivered before Friday."
max_turns = 6
assistant_system = "You are Parcelly's support agent. Be brief."
"#;

fn parcel() -> Scenario {
    Scenario::from_toml(PARCEL, Path::new("conv-parcel.toml")).unwrap()
}

fn shipped_set(name: &str) -> PromptSet {
    PromptSet::load(name, &common::root().join("prompts")).unwrap()
}

fn said(speaker: Speaker, text: &str) -> Turn {
    Turn::said(speaker, text)
}

/// The greeting from the thread, then three turns of the conversation.
fn three_turns() -> Vec<Turn> {
    let mut turns = vec![Turn {
        generated: false,
        ..said(
            Speaker::Assistant,
            "Hi, this is Parcelly support. How can I help?",
        )
    }];
    turns.push(said(Speaker::User, "my parcel never came"));
    turns.push(said(
        Speaker::Assistant,
        "Sorry to hear that! What is the tracking number?",
    ));
    turns.push(said(Speaker::User, "PX-1234. it was due monday"));
    turns
}

/// The prompt of the simulated user's reply call after `turns`.
fn user_prompt(set: &PromptSet, turns: &[Turn]) -> String {
    let view = user_view(&parcel(), turns);
    let opts = Options::new(Mode::Response, SamplingChoice::default().params(set));
    let plan = humanlm::sim::plan(set, &view, &opts, common::default_model()).unwrap();
    plan.calls[0].prompt.clone()
}

const LLAMA3: &str = "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";

#[test]
fn each_side_sees_the_conversation_from_its_own_side() {
    let turns = three_turns();
    // The user writes turn 4 after the first three; the assistant answers after all four.
    let before_user = &turns[..3];

    // The simulator: HUMAN in the user role, the agent's turns as the assistant's, the
    // generation prompt opening HUMAN's turn; the persona and the intent in the system prompt.
    let humanlm = user_prompt(&shipped_set("humanlm"), before_user);
    assert!(
        humanlm.contains("<|im_start|>user\n<name>HUMAN</name>\nmy parcel never came<|im_end|>"),
        "{humanlm}"
    );
    assert!(
        humanlm.contains(
            "<|im_start|>assistant\nSorry to hear that! What is the tracking number?<|im_end|>"
        ),
        "{humanlm}"
    );
    assert!(
        humanlm
            .contains("What HUMAN wants from this conversation:\nFind out where parcel PX-1234 is"),
        "{humanlm}"
    );
    assert!(
        humanlm.ends_with("<|im_start|>user\n<name>HUMAN</name>\n<think>\n\n</think>\n\n"),
        "{humanlm}"
    );
    assert!(
        !humanlm.contains("<|im_start|>assistant\nmy parcel"),
        "{humanlm}"
    );
    assert!(
        !humanlm.contains("Parcelly's support agent"),
        "the agent's system prompt is not the user's: {humanlm}"
    );
    insta::assert_snapshot!("user_side_humanlm", humanlm);

    // The instruct set: the model stays an assistant that reads the transcript and writes
    // HUMAN's message; the user's turns are HUMAN's in it.
    let instruct = user_prompt(&shipped_set("instruct"), before_user);
    assert!(
        instruct.contains("[HUMAN]\nmy parcel never came"),
        "{instruct}"
    );
    assert!(
        instruct.contains("[assistant]\nSorry to hear that!"),
        "{instruct}"
    );
    insta::assert_snapshot!("user_side_instruct_chatml", instruct);

    // The same set under a Llama-3 template.
    let root = tempfile::tempdir().unwrap();
    common::copy_prompt_set("humanlm", &root.path().join("humanlm"));
    let llama = root.path().join("instruct-llama3");
    common::copy_prompt_set("instruct", &llama);
    std::fs::write(llama.join("llama3.jinja"), LLAMA3).unwrap();
    let toml = std::fs::read_to_string(llama.join("set.toml")).unwrap();
    std::fs::write(
        llama.join("set.toml"),
        format!("chat_template = \"llama3.jinja\"\n{toml}"),
    )
    .unwrap();
    let set = PromptSet::load("instruct-llama3", root.path()).unwrap();
    let l3 = user_prompt(&set, before_user);
    assert!(
        l3.starts_with("<|im_start|>") || l3.contains("<|start_header_id|>system<|end_header_id|>"),
        "{l3}"
    );
    assert!(
        l3.contains("<|start_header_id|>user<|end_header_id|>\n\nHere is a conversation."),
        "{l3}"
    );
    assert!(l3.contains("[HUMAN]\nmy parcel never came"), "{l3}");
    insta::assert_snapshot!("user_side_instruct_llama3", l3);

    // The assistant: its own system prompt, the user's turns as `user` without names or tags.
    let messages = assistant_messages(Some("You are Parcelly's support agent. Be brief."), &turns);
    let chatml = &common::default_model().chat;
    let a = chatml
        .render(&messages, true, &serde_json::json!({}))
        .unwrap();
    assert!(
        a.contains("<|im_start|>system\nYou are Parcelly's support agent. Be brief.<|im_end|>"),
        "{a}"
    );
    assert!(a.contains("<|im_start|>user\nmy parcel never came<|im_end|>\n<|im_start|>assistant\nSorry to hear that!"), "{a}");
    assert!(
        a.ends_with(
            "<|im_start|>user\nPX-1234. it was due monday<|im_end|>\n<|im_start|>assistant\n"
        ),
        "{a}"
    );
    insta::assert_snapshot!("assistant_side_chatml", a);
    let l3 = ChatTemplate::new(
        LLAMA3,
        Path::new("llama3.jinja"),
        "<|begin_of_text|>",
        "<|eot_id|>",
    )
    .unwrap();
    let b = l3.render(&messages, true, &serde_json::json!({})).unwrap();
    assert!(
        b.contains("<|start_header_id|>user<|end_header_id|>\n\nmy parcel never came<|eot_id|>"),
        "{b}"
    );
    assert!(
        b.ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"),
        "{b}"
    );
    insta::assert_snapshot!("assistant_side_llama3", b);
    for p in [&a, &b] {
        assert!(
            !p.contains("HUMAN") && !p.contains("<name>"),
            "the assistant never sees the simulator's labels: {p}"
        );
        assert!(!p.contains("night-shift nurse"), "nor the persona: {p}");
    }
}

fn setup<'a>(set: &'a PromptSet, assistant: Engine<'a>, seed_tokens: usize) -> Setup<'a> {
    Setup {
        user: UserSide {
            engine: Engine::Local(common::default_model()),
            set,
            mode: Mode::Response,
            sampling: SamplingChoice {
                max_tokens: Some(seed_tokens),
                ..Default::default()
            },
        },
        assistant,
        assistant_sampling: AssistantSampling {
            max_tokens: 12,
            ..Default::default()
        },
        max_turns: None,
    }
}

fn texts(t: &Transcript) -> Vec<(Speaker, String)> {
    t.turns
        .iter()
        .map(|x| (x.speaker, x.text.clone()))
        .collect()
}

#[test]
fn conversations_end_for_each_reason_on_the_default_model() {
    let model = common::default_model();
    let set = shipped_set("instruct");
    let sc = parcel();

    // The turn limit; the same seed gives the same transcript.
    let mut s = setup(&set, Engine::Local(model), 12);
    s.max_turns = Some(3);
    let t = converse::converse(&s, &sc, 5, None, &mut |_| {});
    assert_eq!(t.end.reason, EndReason::MaxTurns, "{:?}", t.end);
    let new: Vec<&Turn> = t.new_turns().collect();
    assert_eq!(
        new.iter().map(|x| x.speaker).collect::<Vec<_>>(),
        [Speaker::User, Speaker::Assistant, Speaker::User]
    );
    assert!(new.iter().all(|x| !x.text.is_empty() && x.tokens > 0));
    // Turn 3's prompt starts with turn 1's: the prefix cache serves it.
    assert!(new[2].cached_tokens > 0, "{:?}", new[2]);
    let again = converse::converse(&s, &sc, 5, None, &mut |_| {});
    assert_eq!(texts(&again), texts(&t));

    // The user's end marker: what comes before it is the turn, and the conversation ends.
    let mut marked = sc.clone();
    marked.conversation.as_mut().unwrap().end_markers = Some(vec!["e".into()]);
    let t = converse::converse(&s, &marked, 5, None, &mut |_| {});
    assert_eq!(t.end.reason, EndReason::UserEnded, "{:?}", t.end);
    let last = t.turns.last().unwrap();
    assert_eq!(last.marker.as_deref(), Some("e"));
    assert!(!last.text.contains('e'), "{last:?}");
    assert_eq!(t.new_turns().count(), 1);

    // A marker that is an end-of-sequence token ends the conversation when the reply stops on
    // it (the default model ends its turns with <|im_end|>; the first seed whose first turn
    // does so within 120 tokens is the one checked).
    let mut eos_marked = sc.clone();
    eos_marked.conversation.as_mut().unwrap().end_markers = Some(vec!["<|im_end|>".into()]);
    let long = setup(&set, Engine::Local(model), 120);
    let ended = (0..12u64)
        .map(|seed| converse::converse(&long, &eos_marked, seed, None, &mut |_| {}))
        .find(|t| {
            t.new_turns().next().unwrap().stop_reason == Some(humanlm::generate::StopReason::Eos)
        })
        .expect("no seed in 0..12 ended the first turn on <|im_end|>");
    assert_eq!(ended.end.reason, EndReason::UserEnded, "{:?}", ended.end);
    assert_eq!(
        ended.turns.last().unwrap().marker.as_deref(),
        Some("<|im_end|>")
    );
    assert_eq!(ended.new_turns().count(), 1);

    // Cancelled once the first turn is in: that turn is kept.
    let cancel = AtomicBool::new(false);
    let t = converse::converse(&s, &sc, 5, Some(&cancel), &mut |e| {
        if let Event::TurnFinished { .. } = e {
            cancel.store(true, Ordering::Relaxed);
        }
    });
    assert_eq!(t.end.reason, EndReason::Cancelled);
    assert_eq!(t.new_turns().count(), 1);
    // Cancelled in the middle of a turn: the unfinished turn is dropped.
    let cancel = AtomicBool::new(false);
    let t = converse::converse(&s, &sc, 5, Some(&cancel), &mut |e| {
        if let Event::User(humanlm::sim::SimEvent::Text { .. }) = e {
            cancel.store(true, Ordering::Relaxed);
        }
    });
    assert_eq!(t.end.reason, EndReason::Cancelled);
    assert_eq!(t.new_turns().count(), 0);

    // The assistant's context (a tiny model of 256 positions) fills after the user's turn.
    let tiny = common::load(
        common::fixture("tiny/llama").to_str().unwrap(),
        Default::default(),
    );
    let s = setup(&set, Engine::Local(&tiny), 12);
    let mut long = sc.clone();
    long.conversation.as_mut().unwrap().assistant_system =
        Some("You are Parcelly's support agent. Be brief. ".repeat(40));
    let t = converse::converse(&s, &long, 5, None, &mut |_| {});
    assert_eq!(t.end.reason, EndReason::Context, "{:?}", t.end);
    assert_eq!(t.new_turns().count(), 1);
    assert!(
        t.end.detail.as_deref().unwrap_or("").contains("256"),
        "{:?}",
        t.end
    );
}

/// What the workbench's `F` and `e` run: a conversation going on from a turn of another.
#[test]
fn a_fork_or_an_edit_goes_on_from_its_turn_on_the_default_model() {
    let model = common::default_model();
    let set = shipped_set("instruct");
    let sc = parcel();
    let mut s = setup(&set, Engine::Local(model), 12);
    s.max_turns = Some(3);
    let whole = converse::converse(&s, &sc, 5, None, &mut |_| {});
    assert_eq!(whole.end.reason, EndReason::MaxTurns);
    // The greeting, then user, assistant, user: fork at the assistant's turn (index 2).
    let at = 2;
    assert_eq!(whole.turns[at].speaker, Speaker::Assistant);
    let kept = whole.turns[..at].to_vec();

    // The same seed writes the same turns again (each turn's seed comes from the
    // conversation's seed and the turn's index), and the turns before the point are kept.
    let mut started = vec![];
    let same = converse::converse_from(
        &s,
        &sc,
        kept.clone(),
        Speaker::Assistant,
        5,
        None,
        &mut |e| {
            if let Event::TurnStarted { index, speaker } = e {
                started.push((index, speaker));
            }
        },
    );
    assert_eq!(texts(&same), texts(&whole));
    // Turns already generated count toward the limit: only the two after the point are new.
    assert_eq!(started, [(2, Speaker::Assistant), (3, Speaker::User)]);
    assert_eq!(same.end.reason, EndReason::MaxTurns);

    // Another seed writes the turn again differently, from the same point.
    let other = (6..12u64)
        .map(|seed| {
            converse::converse_from(
                &s,
                &sc,
                kept.clone(),
                Speaker::Assistant,
                seed,
                None,
                &mut |_| {},
            )
        })
        .find(|t| texts(t) != texts(&whole))
        .expect("no seed in 6..12 gave the forked turn another text");
    assert_eq!(texts(&other)[..at], texts(&whole)[..at]);
    assert_eq!(other.turns.len(), whole.turns.len());

    // An edited user turn: kept as written, and the assistant answers what it says.
    let mut edited = whole.turns[..at].to_vec();
    edited[1].text = "Where is parcel PX-1234? I need it before Friday.".into();
    edited[1].edited = true;
    let t = converse::converse_from(
        &s,
        &sc,
        edited.clone(),
        Speaker::Assistant,
        5,
        None,
        &mut |_| {},
    );
    assert_eq!(t.turns[1].text, edited[1].text);
    assert!(t.turns[1].edited);
    assert_eq!(t.turns[2].speaker, Speaker::Assistant);
    let (prompt, tokens) = converse::assistant_prompt(
        Engine::Local(model),
        sc.conversation.as_ref().unwrap(),
        &edited,
    )
    .unwrap();
    assert!(
        prompt.contains("PX-1234? I need it before Friday."),
        "{prompt}"
    );
    assert!(tokens.unwrap() > 0);
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const SSE_OK: &str = "data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Sorry! What is the tracking number?\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

#[test]
fn a_run_keeps_every_conversation_through_failures_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let scenarios = tmp.path().join("scenarios");
    std::fs::create_dir(&scenarios).unwrap();
    std::fs::write(scenarios.join("conv-parcel.toml"), PARCEL).unwrap();
    let base = [
        "converse",
        "--prompts",
        "instruct",
        "--mode",
        "response",
        "--max-tokens",
        "8",
        "--assistant-max-tokens",
        "8",
        "--seed",
        "3",
    ];

    // An assistant endpoint that answers once, then sends garbage: the conversation ends as
    // `error` with its three turns saved.
    let ep = fake(|n, _| {
        let body = if n == 0 {
            http("200 OK", "text/event-stream", SSE_OK, "")
        } else {
            http("200 OK", "application/json", "this is not json", "")
        };
        (Duration::ZERO, body)
    });
    let out_dir = tmp.path().join("run-ep");
    let assistant = format!("endpoint:{}#m", ep.url);
    let mut args = base.to_vec();
    args.extend([
        "--scenario",
        scenarios.to_str().unwrap(),
        "--assistant",
        &assistant,
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let o = humanlm(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = out_dir.join("transcripts/conv-parcel-0.jsonl");
    let l = lines(&file);
    assert_eq!(l[0]["type"], "conversation");
    let turns: Vec<&serde_json::Value> = l.iter().filter(|x| x["type"] == "turn").collect();
    assert_eq!(turns.len(), 4, "the greeting and three new turns: {l:?}");
    assert_eq!(turns[2]["text"], "Sorry! What is the tracking number?");
    let end = l.last().unwrap();
    assert_eq!(end["reason"], "error", "{end}");
    assert!(
        end["detail"]
            .as_str()
            .unwrap()
            .starts_with("assistant turn: "),
        "{end}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["end_reasons"]["error"], 1);
    // Run again: the failed conversation runs again, the earlier file kept aside.
    let o = humanlm(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out_dir
        .join("transcripts/interrupted/conv-parcel-0.jsonl")
        .exists());
    assert_eq!(lines(&file).last().unwrap()["reason"], "error");

    // The default model on both sides, two conversations: max-turns; a rerun keeps them.
    let out_dir = tmp.path().join("run-local");
    let mut args = base.to_vec();
    args.extend([
        "--scenario",
        scenarios.to_str().unwrap(),
        "--turns",
        "2",
        "--n",
        "2",
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    let o = humanlm(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["end_reasons"]["max-turns"], 2, "{v}");
    assert_eq!(v["summary"]["turns"]["mean"], 2.0);
    let first = std::fs::read_to_string(out_dir.join("transcripts/conv-parcel-1.jsonl")).unwrap();
    let o = humanlm(&args);
    assert!(o.status.success());
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again["summary"], v["summary"]);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("transcripts/conv-parcel-1.jsonl")).unwrap(),
        first
    );
    // A transcript cut in the middle: one line naming the file and line, the file untouched.
    let cut = &first[..first.len() - 30];
    std::fs::write(out_dir.join("transcripts/conv-parcel-1.jsonl"), cut).unwrap();
    let o = humanlm(&args);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("conv-parcel-1.jsonl:"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("transcripts/conv-parcel-1.jsonl")).unwrap(),
        cut
    );
    // Another run's folder is refused.
    let mut other = args.clone();
    other[10] = "4"; // --seed 4
    let o = humanlm(&other);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds another run"));

    // One conversation saved as a scenario: the thread up to the last user turn, that turn the
    // reference reply; it loads and simulates like any scenario.
    let saved = tmp.path().join("saved.toml");
    let file = scenarios.join("conv-parcel.toml");
    let mut args = base.to_vec();
    args.extend([
        "--scenario",
        file.to_str().unwrap(),
        "--turns",
        "3",
        "--save-scenario",
        saved.to_str().unwrap(),
        "--json",
    ]);
    let o = humanlm(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let turns = v["conversations"][0]["turns"].as_array().unwrap().clone();
    assert_eq!(turns.len(), 4);
    let sc = Scenario::load(&saved).unwrap();
    assert_eq!(sc.turns.len(), 3);
    assert_eq!(sc.turns[1].author, "sam");
    assert_eq!(sc.turns[1].text, turns[1]["text"].as_str().unwrap());
    assert_eq!(sc.target.response.as_deref(), turns[3]["text"].as_str());
    assert_eq!(sc.conversation, parcel().conversation);
    let o = humanlm(&[
        "simulate",
        "--scenario",
        saved.to_str().unwrap(),
        "--prompt-only",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // It is never overwritten.
    let o = humanlm(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}

#[test]
fn serve_as_user_writes_the_turn_converse_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("conv-parcel.toml");
    std::fs::write(&file, PARCEL).unwrap();
    let set = shipped_set("instruct");
    let model = common::default_model();
    let mut s = setup(&set, Engine::Local(model), 12);
    s.max_turns = Some(3);
    let t = converse::converse(&s, &parcel(), 11, None, &mut |_| {});
    assert_eq!(t.turns.len(), 4);

    let server = Server::start_with(&[
        "--checkpoint",
        MODEL,
        "--as-user",
        "--scenario",
        file.to_str().unwrap(),
        "--prompts",
        "instruct",
        "--mode",
        "response",
        "--max-tokens",
        "12",
    ]);
    // The conversation before the last user turn, from the assistant's side.
    let mut messages =
        vec![serde_json::json!({"role": "system", "content": "You are Parcelly's support agent."})];
    for x in &t.turns[..3] {
        messages.push(serde_json::json!({"role": x.speaker.name(), "content": x.text}));
    }
    let req = tmp.path().join("req.json");
    std::fs::write(
        &req,
        serde_json::json!({"messages": messages, "seed": 11}).to_string(),
    )
    .unwrap();
    let out = Command::new(test_python())
        .arg(common::root().join("scripts/tests/as_user_client.py"))
        .args(["--base-url", &server.base_url(), "--model", MODEL])
        .arg("--request")
        .arg(&req)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.stderr()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected = &t.turns[3].text;
    assert_eq!(v["content"].as_str(), Some(expected.as_str()), "{v}");
    assert_eq!(v["streamed"].as_str(), Some(expected.as_str()), "{v}");
    assert_eq!(v["role"], "assistant");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{v}");

    // What a simulated user cannot do is a 400 naming it.
    let post =
        |body: serde_json::Value| raw_post(server.port, "/v1/chat/completions", &body.to_string());
    let (status, body) = post(serde_json::json!({"model": MODEL, "n": 2, "messages": messages}));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("n must be 1"), "{body}");
    let (status, body) =
        post(serde_json::json!({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("messages[0]: role `tool`"), "{body}");
}

#[test]
fn bad_conversation_tables_are_one_line_naming_the_file() {
    let with = |table: &str| {
        let text = PARCEL.replace("[conversation]\n", &format!("[conversation]\n{table}\n"));
        Scenario::from_toml(&text.replace("max_turns = 6\n", ""), Path::new("c.toml"))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let e = with("max_turn = 3");
    assert!(
        e.starts_with("c.toml:") && e.contains("unknown field `max_turn`"),
        "{e}"
    );
    let e = with("max_turns = 0");
    assert!(e.starts_with("c.toml: conversation.max_turns is 0"), "{e}");
    let e = with("max_turns = 100000");
    assert!(e.contains("from 1 to 1000"), "{e}");
    let e = with("end_markers = [3]");
    assert!(e.starts_with("c.toml:") && e.contains("string"), "{e}");
    let e = with("end_markers = [\"\"]");
    assert!(
        e.contains("conversation.end_markers holds an empty string"),
        "{e}"
    );
    let e = with("opens = \"agent\"");
    assert!(e.contains("user") && e.contains("assistant"), "{e}");
    // A conversation may start from nothing; a thread scenario may not.
    let empty = PARCEL.split("[[turns]]").next().unwrap().to_string()
        + "[target]\nauthor = \"sam\"\n[conversation]\n";
    assert!(Scenario::from_toml(&empty, Path::new("c.toml")).is_ok());
    let e = Scenario::from_toml(&empty.replace("[conversation]\n", ""), Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("the thread is empty"), "{e}");
    // The command refuses an absurd --turns before loading anything.
    let o = humanlm(&[
        "converse",
        "--scenario",
        "chat-airline-change-04",
        "--turns",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--turns 0"));
}
