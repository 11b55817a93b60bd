//! The workbench without a terminal or a model: states built from actions, rendered with
//! ratatui's TestBackend and compared with committed snapshots (tests/it/snapshots/), and the update
//! logic driven by keys and worker messages.
//!
//! The scenarios, prompt sets, runs and checkpoints here are written by the test, so the
//! snapshots change only when the workbench does. `INSTA_UPDATE=always` (or `cargo insta
//! review`) rewrites them; review the diff.

use humanlm::eval::{RunListing, SampleRecord, Summary};
use humanlm::generate::StopReason;
use humanlm::model::quantize::Quantize;
use humanlm::model::CheckpointInfo;
use humanlm::scenario::{self, Scenario};
use humanlm::sim::{Mode, Output, SimSample};
use humanlm::tui::action::{Action, Effect};
use humanlm::tui::app::*;
use humanlm::tui::{draw, update};
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};
use ratatui::Terminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

const SCENARIOS: &[&str] = &[
    r#"
id = "opinion-fence-01"
domain = "opinion"
title = "AITA for refusing to split the cost of a fence?"
[persona]
text = "Mid-forties, owns a house, pragmatic; writes short, blunt comments."
[[turns]]
author = "fence_trouble_22"
text = "My (41F) neighbor put up a 6-foot privacy fence along our shared line without asking, then sent me a bill for half of it. I said no. AITA?"
[[turns]]
author = "porchlight_mom"
text = "NTA. You don't get to order something and send someone else the bill."
[target]
author = "iron_monk_"
response = "NTA. She built it without asking, she owns it."
"#,
    r#"
id = "opinion-gym-02"
domain = "opinion"
title = "Should gyms put up signs about wiping equipment?"
[[turns]]
author = "deadlift_diana"
text = "People leave sweat puddles on the benches. Signs or no signs?"
[target]
author = "iron_monk_"
response = "The people leaving puddles are not big readers."
"#,
    r#"
id = "politics-phones-01"
domain = "politics"
title = "A smartphone ban in schools"
[persona]
demographics = { age_group = "35-44", gender = "female", occupation = "teacher" }
values = ["fairness", "evidence over anecdote"]
communication = ["long paragraphs", "cites numbers"]
[[turns]]
author = "op_ed_desk"
text = "The government proposes a statutory ban on smartphones in schools."
[[turns]]
author = "ms_k"
text = "I teach year 9. The phones are not the problem, the notifications are."
[[turns]]
author = "parent_of_3"
text = "Easy to say when you don't have to fight about it every night."
[target]
author = "ms_k"
"#,
    r#"
id = "chat-trip-01"
domain = "chat"
title = "Planning a weekend in Lisbon"
[[turns]]
author = "sam"
text = "Can you plan two days in Lisbon for me?"
[[turns]]
author = "assistant"
role = "assistant"
text = "Sure! Day 1: Alfama and the castle. Day 2: Belém and LX Factory."
[target]
author = "sam"
response = "ok but I hate museums, swap belem for something outdoors"
"#,
    r#"
id = "book-japanese-01"
domain = "book"
title = "読書会：雪国"
[[turns]]
author = "yuki"
text = "冒頭の一文がとても有名ですね。トンネルを抜けると雪国であった。皆さんはどう読みましたか？"
[target]
author = "haru"
response = "最初の一文だけで景色が見える気がします。"
"#,
];

fn scenarios() -> Vec<scenario::Loaded> {
    let mut out: Vec<scenario::Loaded> = SCENARIOS
        .iter()
        .map(|t| scenario::Loaded {
            scenario: Scenario::from_toml(t, Path::new("test.toml")).unwrap(),
            path: PathBuf::from("test.toml"),
        })
        .collect();
    // A long thread: 60 turns of a few sentences each.
    let mut long = String::from(
        "id = \"news-long-01\"\ndomain = \"news\"\ntitle = \"A very long comment thread\"\n",
    );
    for i in 0..60 {
        long.push_str(&format!(
            "[[turns]]\nauthor = \"user_{}\"\ntext = \"Comment {i}: the council says the library closes in March; people disagree about whether the savings are real and what replaces it.\"\n",
            i % 7
        ));
    }
    long.push_str("[target]\nauthor = \"user_3\"\nresponse = \"Closing it saves nothing.\"\n");
    out.push(scenario::Loaded {
        scenario: Scenario::from_toml(&long, Path::new("long.toml")).unwrap(),
        path: PathBuf::from("long.toml"),
    });
    out
}

fn file(name: &str, set: &str, text: &str, from: Option<&str>) -> FileInfo {
    FileInfo {
        name: name.into(),
        path: PathBuf::from(format!("prompts/{}/{name}", from.unwrap_or(set))),
        hash: format!("{:012x}", text.len() * 7919),
        inherited_from: from.map(str::to_string),
        text: text.into(),
    }
}

/// The state dimensions of the shipped `humanlm` set, from its `states.toml`.
fn dimensions() -> Vec<String> {
    humanlm::prompts::PromptSet::load("humanlm", &crate::common::roots().prompts)
        .expect("the shipped humanlm set loads")
        .dimensions()
        .map(|d| d.key.clone())
        .collect()
}

fn sets() -> Vec<SetInfo> {
    let dims = dimensions();
    vec![
        SetInfo {
            name: "humanlm".into(),
            dir: PathBuf::from("prompts/humanlm"),
            description: "HumanLM: the thread as named turns; the model speaks as HUMAN".into(),
            hash: Some("a41c9e0b7d22".into()),
            layout: "thread".into(),
            dimensions: dims.clone(),
            sampling: "T 0.4 · repetition ×1 · 4-gram ban".into(),
            files: vec![
                file("set.toml", "humanlm", "description = \"HumanLM\"\n", None),
                file(
                    "system.jinja",
                    "humanlm",
                    "You are HUMAN.\nWrite {{ states }}.\nBe brief.\n",
                    None,
                ),
            ],
            error: None,
        },
        SetInfo {
            name: "instruct".into(),
            dir: PathBuf::from("prompts/instruct"),
            description: "Instruct: the assistant reads the thread and answers about HUMAN".into(),
            hash: Some("3f2a1b99c0de".into()),
            layout: "transcript".into(),
            dimensions: dims,
            sampling: "T 0.4 · repetition ×1.2 · 4-gram ban".into(),
            files: vec![
                file(
                    "set.toml",
                    "instruct",
                    "description = \"Instruct\"\ninherits = \"humanlm\"\n",
                    None,
                ),
                file(
                    "system.jinja",
                    "instruct",
                    "You predict HUMAN.\nWrite {{ states }}.\nBe brief.\n",
                    None,
                ),
                file(
                    "persona.jinja",
                    "instruct",
                    "{{ persona }}\n",
                    Some("humanlm"),
                ),
            ],
            error: None,
        },
    ]
}

fn model_info() -> ModelInfo {
    ModelInfo {
        name: "smollm2-135m-instruct".into(),
        device: "cpu".into(),
        weights: "Q4_1".into(),
        context: 8192,
        load_ms: 812,
        default_set: Some("instruct".into()),
        quantized_on_load: None,
    }
}

/// A workbench with scenarios, prompt sets, a loaded checkpoint and the judge.
pub(crate) fn app(w: u16, h: u16) -> App {
    let mut app = App::new(Paths::default(), "smollm2-135m-instruct", "instruct");
    app.size = (w, h);
    app.seed = 42;
    update(
        &mut app,
        Action::Scenarios {
            entries: scenarios(),
            problems: vec![],
        },
    );
    update(&mut app, Action::PromptSets(sets()));
    update(&mut app, Action::ModelLoaded(model_info()));
    update(&mut app, Action::Embedder(Ok("all-minilm-l6-v2".into())));
    app.message = None;
    app
}

pub(crate) fn key(c: char) -> Action {
    Action::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

pub(crate) fn code(k: KeyCode) -> Action {
    Action::Key(KeyEvent::new(k, KeyModifiers::NONE))
}

pub(crate) fn send(app: &mut App, actions: impl IntoIterator<Item = Action>) -> Vec<Effect> {
    actions.into_iter().flat_map(|a| update(app, a)).collect()
}

pub(crate) fn typed(s: &str) -> Vec<Action> {
    s.chars().map(key).collect()
}

pub(crate) fn render(app: &mut App, w: u16, h: u16) -> String {
    app.size = (w, h);
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| draw(f, app)).unwrap();
    t.backend().to_string()
}

/// Snapshots at 80×24 and 120×40.
pub(crate) fn snap(name: &str, app: &mut App) {
    for (w, h) in [(80, 24), (120, 40)] {
        let out = render(app, w, h);
        insta::assert_snapshot!(format!("{name}_{w}x{h}"), out);
    }
}

/// Snapshots at 80×24 and 120×40 of a state built at each size (the layout decides where the
/// focus goes after Enter).
fn snap_built(name: &str, build: impl Fn(&mut App)) {
    for (w, h) in [(80, 24), (120, 40)] {
        let mut a = app(w, h);
        build(&mut a);
        let out = render(&mut a, w, h);
        insta::assert_snapshot!(format!("{name}_{w}x{h}"), out);
    }
}

/// The job id of the simulation the last Enter started.
fn sim_job(fx: &[Effect]) -> u64 {
    fx.iter()
        .find_map(|e| match e {
            Effect::Simulate(r) => Some(r.job),
            _ => None,
        })
        .expect("a simulation was started")
}

fn started(job: u64) -> Action {
    Action::Sim {
        job,
        msg: SimMsg::Started {
            checkpoint: "smollm2-135m-instruct".into(),
            set: "instruct".into(),
            set_hash: "3f2a1b99c0de".into(),
            calls: 7,
        },
    }
}

fn call(job: u64, name: &str) -> Action {
    Action::Sim {
        job,
        msg: SimMsg::Call(humanlm::sim::Call {
            name: name.into(),
            prompt_tokens: 365,
            budget: 48,
            prefill: format!("<{name}>"),
            ..Default::default()
        }),
    }
}

fn text(job: u64, name: &str, sample: usize, delta: &str) -> Action {
    Action::Sim {
        job,
        msg: SimMsg::Text {
            call: name.into(),
            sample,
            delta: delta.into(),
            stats: Stats {
                tokens: 12,
                ttft_ms: Some(410.0),
                tok_s: 23.4,
                cached_tokens: None,
            },
        },
    }
}

fn done_call(job: u64, name: &str) -> Action {
    Action::Sim {
        job,
        msg: SimMsg::CallDone { call: name.into() },
    }
}

pub(crate) const STATES: [(&str, &str); 6] = [
    ("stance", "strongly disagrees with paying half"),
    ("emotion", "mild irritation at the neighbor"),
    ("belief", "you pay for what you agreed to"),
    ("value", "fairness in money matters"),
    ("goal", "reassure the poster"),
    ("communication", "blunt verdict first, one line"),
];

/// Select the fence scenario and run it to the end, through the messages a worker sends.
pub(crate) fn finished_run(app: &mut App, n: usize) -> u64 {
    for _ in 1..n {
        send(app, [key('n')]);
    }
    let fx = send(app, [code(KeyCode::Enter)]);
    let job = sim_job(&fx);
    send(app, [started(job)]);
    let mut samples = vec![SimSample::default(); n];
    for (k, v) in STATES {
        send(app, [call(job, k)]);
        for (i, sample) in samples.iter_mut().enumerate() {
            send(app, [text(job, k, i, v)]);
            sample
                .outputs
                .insert(k.to_string(), output(v, 9, StopReason::Stop, true));
            sample.stop_reasons.insert(k.to_string(), StopReason::Stop);
            sample.states.insert(k.to_string(), v.to_string());
        }
        send(app, [done_call(job, k)]);
    }
    let reply = "NTA. She built it without asking, so she owns it. If she wanted half she needed your agreement before a single post went in.";
    send(app, [call(job, "response")]);
    for (i, sample) in samples.iter_mut().enumerate() {
        let r = if i == 0 {
            reply
        } else {
            "NTA, her fence, her bill."
        };
        send(app, [text(job, "response", i, r)]);
        let stop = if i == 0 {
            StopReason::Stop
        } else {
            StopReason::Length
        };
        sample
            .outputs
            .insert("response".into(), output(r, 30, stop.clone(), i == 0));
        sample.stop_reasons.insert("response".into(), stop);
        sample.response = r.into();
        sample.valid = i == 0;
        sample.tokens = 84;
        sample.ms = 2100;
    }
    send(app, [done_call(job, "response")]);
    send(
        app,
        [Action::Sim {
            job,
            msg: SimMsg::Done {
                samples: samples.into_iter().map(SampleOut::from).collect(),
                dropped_turns: 0,
            },
        }],
    );
    job
}

/// What a finished call produced, as the simulator reports it.
fn output(raw: &str, tokens: usize, stop_reason: StopReason, valid: bool) -> Output {
    Output {
        raw: raw.into(),
        tokens,
        stop_reason,
        eos_token: None,
        valid,
    }
}

/// Scores for every dimension and the reply, as the judge worker would send them.
fn score_all(app: &mut App, fx: &[Effect]) {
    for e in fx {
        if let Effect::Score {
            job, call, texts, ..
        } = e
        {
            let v: Vec<f64> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| (t.len() % 70) as f64 / 100.0 + 0.2 + i as f64 * 0.05)
                .collect();
            update(
                app,
                Action::Scores {
                    job: *job,
                    call: call.clone(),
                    texts: texts.clone(),
                    result: Ok(v),
                },
            );
        }
    }
}

#[test]
fn simulate_home_snapshots() {
    let mut a = app(120, 40);
    snap("simulate_home", &mut a);
}

#[test]
fn simulate_streaming_snapshots() {
    snap_built("simulate_streaming", |a| {
        let fx = send(a, [code(KeyCode::Enter)]);
        let job = sim_job(&fx);
        send(a, [started(job), call(job, "stance")]);
        send(
            a,
            [text(
                job,
                "stance",
                0,
                "strongly disagrees with paying half",
            )],
        );
        let fx = send(a, [done_call(job, "stance")]);
        score_all(a, &fx);
        send(
            a,
            [call(job, "emotion"), text(job, "emotion", 0, "mild irrit")],
        );
    });
}

/// A finished run of two samples, every output scored, the real reply shown.
fn done_and_scored(a: &mut App) {
    finished_run(a, 2);
    let mut fx = vec![];
    for k in dimensions().iter().map(String::as_str).chain(["response"]) {
        let run = a.sim.as_ref().unwrap();
        fx.push(Effect::Score {
            job: run.job,
            call: k.to_string(),
            reference: String::new(),
            texts: run
                .samples
                .iter()
                .map(|s| {
                    if k == "response" {
                        s.response().unwrap_or_default().to_string()
                    } else {
                        s.state(k).unwrap_or_default().to_string()
                    }
                })
                .collect(),
        });
    }
    score_all(a, &fx);
    send(a, [key('R')]);
}

#[test]
fn simulate_done_snapshots() {
    snap_built("simulate_done", done_and_scored);
    let mut a = app(120, 40);
    done_and_scored(&mut a);
    // The second sample: cut at its token limit, flagged.
    send(
        &mut a,
        [
            code(KeyCode::Tab),
            code(KeyCode::Tab),
            code(KeyCode::Tab),
            code(KeyCode::Right),
        ],
    );
    assert_eq!(a.focus, Pane::Reply);
    assert_eq!(a.sample, 1);
    let out = render(&mut a, 120, 40);
    assert!(out.contains("sample 2/2"), "{out}");
    assert!(out.contains("⚠ hit token limit"), "{out}");
    assert!(out.contains("invalid format"), "{out}");
}

#[test]
fn simulate_filter_snapshots() {
    let mut a = app(120, 40);
    send(&mut a, [key('/')]);
    send(&mut a, typed("gym"));
    snap("simulate_filter", &mut a);
}

#[test]
fn persona_and_long_thread_render() {
    let mut a = app(120, 40);
    send(&mut a, [key('f')]);
    let out = render(&mut a, 120, 40);
    assert!(out.contains("persona ▾"), "{out}");
    assert!(out.contains("Mid-forties"), "{out}");
    // The target's own earlier turn is shown as HUMAN.
    send(&mut a, [key('f'), key('/')]);
    send(&mut a, typed("phones"));
    send(&mut a, [code(KeyCode::Tab)]);
    assert_eq!(a.focus, Pane::Thread);
    let out = render(&mut a, 120, 40);
    assert!(out.contains("HUMAN (ms_k)"), "{out}");
    // A long thread is wrapped once and then served from the cache.
    send(&mut a, [code(KeyCode::Esc), key('/')]);
    send(&mut a, typed("long"));
    send(&mut a, [code(KeyCode::Tab)]);
    render(&mut a, 120, 40);
    let first = a.caches.borrow().thread.as_ref().unwrap().1.clone();
    assert!(first.len() > 120, "{} lines", first.len());
    send(&mut a, [code(KeyCode::PageDown), code(KeyCode::PageDown)]);
    assert!(a.thread_scroll > 0);
    let out = render(&mut a, 120, 40);
    let again = a.caches.borrow().thread.as_ref().unwrap().1.clone();
    assert!(std::rc::Rc::ptr_eq(&first, &again), "wrapped again");
    assert!(!out.contains("Comment 0:"), "did not scroll");
    // CJK text wraps by display width.
    send(&mut a, [code(KeyCode::Esc), key('/')]);
    send(&mut a, typed("japanese"));
    send(&mut a, [code(KeyCode::Tab)]);
    let out = render(&mut a, 80, 24);
    assert!(out.contains("トンネル"), "{out}");
}

#[test]
fn prompt_view_snapshots() {
    let mut a = app(120, 40);
    let fx = send(&mut a, [key('v')]);
    let job = fx
        .iter()
        .find_map(|e| match e {
            Effect::Plan(r) => Some(r.job),
            _ => None,
        })
        .expect("the prompts are rendered on a worker");
    assert_eq!(a.screen, Screen::PromptView);
    let calls = ["stance", "response"]
        .iter()
        .map(|name| humanlm::sim::Call {
            name: name.to_string(),
            prompt: format!(
                "<|im_start|>system\nYou predict how one real person, called HUMAN, reacts.<|im_end|>\n<|im_start|>user\nHere is a conversation.\n\n[fence_trouble_22]\nMy (41F) neighbor put up a fence without asking.\n\nWhat is HUMAN's {name}?<|im_end|>\n<|im_start|>assistant\n<{name}>"
            ),
            prompt_tokens: if *name == "stance" { 1184 } else { 1201 },
            ids: vec![1, 9690, 198, 2683, 3142, 638],
            budget: 48,
            prefill: format!("<{name}>"),
            stop: format!("</{name}>"),
            ..Default::default()
        })
        .collect();
    send(
        &mut a,
        [Action::Plan {
            job,
            result: Ok(PlanView {
                scenario: "opinion-fence-01".into(),
                set: "instruct".into(),
                set_hash: "3f2a1b99c0de".into(),
                mode: Mode::Humanlm,
                plan: humanlm::sim::Plan {
                    calls,
                    dropped_turns: 0,
                },
            }),
        }],
    );
    snap("prompt_view", &mut a);
    // An edit of the set on disk renders the prompts again (the old ones stay meanwhile).
    send(&mut a, [code(KeyCode::Tab)]);
    let mut edited = sets();
    edited[1].hash = Some("0123456789ab".into());
    let fx = send(&mut a, [Action::PromptSets(edited)]);
    assert!(
        matches!(&fx[..], [Effect::Plan(r)] if r.set == "instruct"),
        "{fx:?}"
    );
    assert!(a.prompt_view.plan.is_some());
    assert_eq!(a.prompt_view.call, 1);
    send(&mut a, [key('i')]);
    let out = render(&mut a, 80, 24);
    assert!(out.contains("response 1201"), "{out}");
    assert!(out.contains("6 token ids"), "{out}");
    send(&mut a, [code(KeyCode::Esc)]);
    assert_eq!(a.screen, Screen::Simulate);
}

#[test]
fn help_snapshots() {
    let mut a = app(120, 40);
    send(&mut a, [key('?')]);
    snap("help", &mut a);
    // Every binding of the table is listed.
    let all: Vec<String> = humanlm::tui::ui::help::lines()
        .iter()
        .map(|l| l.to_string())
        .collect();
    for b in humanlm::tui::keys::BINDINGS {
        assert!(
            all.iter().any(|l| l.contains(b.help)),
            "help lacks {}",
            b.help
        );
    }
    send(&mut a, [code(KeyCode::Esc)]);
    assert!(a.help.is_none());
}

fn info(name: &str, format: &str, params: u64, base: Option<&str>) -> CheckpointInfo {
    CheckpointInfo {
        name: name.into(),
        path: format!("checkpoints/{name}"),
        format: format.into(),
        architecture: "llama".into(),
        parameters: params,
        dtype: if format == "lora" {
            "F32 (r=8, alpha=16)".into()
        } else {
            "Q4_1 (also F32)".into()
        },
        context_length: 8192,
        size_bytes: params / 2,
        adapter_base: base.map(str::to_string),
        loads_as: "as stored".into(),
        loads_as_source: None,
    }
}

/// The checkpoints folder the tests show: the default model, an adapter under it, a broken one.
fn ckpt_rows() -> Vec<CkptRow> {
    vec![
            CkptRow {
                name: "smollm2-135m-instruct".into(),
                path: "checkpoints/smollm2-135m-instruct".into(),
                info: Some(info("smollm2-135m-instruct", "gguf", 134_515_008, None)),
                error: None,
                default_set: Some("instruct".into()),
                depth: 0,
                endpoint: None,
            },
            CkptRow {
                name: "smollm2-humanlm-lora".into(),
                path: "checkpoints/smollm2-humanlm-lora".into(),
                info: Some(info(
                    "smollm2-humanlm-lora",
                    "lora",
                    4_884_480,
                    Some("smollm2-135m-instruct"),
                )),
                error: None,
                default_set: Some("instruct".into()),
                depth: 1,
                endpoint: None,
            },
            CkptRow {
                name: "broken".into(),
                path: "checkpoints/broken".into(),
                info: None,
                error: Some(
                    "checkpoints/broken: not a checkpoint: no config.json, adapter_config.json or .gguf file"
                        .into(),
                ),
                default_set: None,
                depth: 0,
                endpoint: None,
            },
        ]
}

#[test]
fn checkpoints_snapshots() {
    let mut a = app(120, 40);
    let fx = send(&mut a, [key('m')]);
    assert!(fx.iter().any(|e| matches!(e, Effect::ScanCheckpoints)));
    send(&mut a, [Action::Checkpoints(ckpt_rows())]);
    snap("checkpoints", &mut a);
    // Enter loads the adapter in the background; the old model serves until then.
    let fx = send(&mut a, [code(KeyCode::Down), code(KeyCode::Enter)]);
    assert!(
        matches!(&fx[..], [Effect::LoadCheckpoint(p, None)] if p.ends_with("smollm2-humanlm-lora")),
        "{fx:?}"
    );
    assert_eq!(a.checkpoint, "smollm2-humanlm-lora");
    assert!(a.model.loading.is_some());
    assert_eq!(
        a.model.loaded.as_ref().unwrap().name,
        "smollm2-135m-instruct"
    );
    // A broken entry says why instead of loading.
    let fx = send(&mut a, [code(KeyCode::Down), code(KeyCode::Enter)]);
    assert!(fx.is_empty());
    assert!(a.error.as_deref().unwrap().contains("not a checkpoint"));
}

#[test]
fn q_on_checkpoints_chooses_what_a_dense_checkpoint_loads_as() {
    let mut a = app(120, 40);
    send(&mut a, [key('m')]);
    let mut dense = info("qwen3-8b", "hf", 8_190_000_000, None);
    dense.dtype = "BF16".into();
    dense.loads_as = "q8_0".into();
    dense.loads_as_source = Some(humanlm::model::quantize::Source::Default(Quantize::Q8_0));
    let row = CkptRow {
        name: "qwen3-8b".into(),
        path: "checkpoints/qwen3-8b".into(),
        info: Some(dense),
        error: None,
        default_set: None,
        depth: 0,
        endpoint: None,
    };
    send(&mut a, [Action::Checkpoints(vec![row])]);
    let screen = render(&mut a, 120, 40);
    assert!(
        screen.contains("loads as q8_0 · default above 1B parameters on the CPU"),
        "{screen}"
    );
    // Q: dense, then q8_0 chosen here; Enter loads with it.
    send(&mut a, [key('Q')]);
    let screen = render(&mut a, 120, 40);
    assert!(
        screen.contains("loads as dense (no quantization) · chosen here with Q"),
        "{screen}"
    );
    send(&mut a, [key('Q'), key('Q')]);
    assert_eq!(a.ckpts.quantize, Some(Quantize::Q4_0));
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    assert!(
        matches!(&fx[..], [Effect::LoadCheckpoint(p, Some(Quantize::Q4_0))] if p.ends_with("qwen3-8b")),
        "{fx:?}"
    );
    // Two more and it is back to each checkpoint's own default.
    send(&mut a, [key('Q'), key('Q')]);
    assert_eq!(a.ckpts.quantize, None);
}

#[test]
fn prompts_snapshots_and_diff() {
    let mut a = app(120, 40);
    send(&mut a, [key('p')]);
    assert_eq!(a.screen, Screen::Prompts);
    // Opens on the set in use.
    assert_eq!(a.sets[a.prompts.set].name, "instruct");
    send(&mut a, [code(KeyCode::Right), code(KeyCode::Down)]);
    snap("prompts", &mut a);
    // Enter on a file opens it in the editor (the runtime suspends the screen for it).
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    assert!(
        matches!(&fx[..], [Effect::Edit(p)] if p.ends_with("instruct/system.jinja")),
        "{fx:?}"
    );
    // Diff: humanlm (marked A) against instruct.
    send(&mut a, [code(KeyCode::Left), code(KeyCode::Up), key('a')]);
    send(&mut a, [code(KeyCode::Down), key('d')]);
    let d = a.prompts.diff.clone().expect("a diff");
    assert_eq!((d.a.as_str(), d.b.as_str()), ("humanlm", "instruct"));
    let system = d.files.iter().find(|f| f.name == "system.jinja").unwrap();
    assert_eq!(system.status, "changed");
    assert!(system.lines.contains(&('-', "You are HUMAN.".to_string())));
    assert!(system
        .lines
        .contains(&('+', "You predict HUMAN.".to_string())));
    assert!(system.lines.contains(&(' ', "Be brief.".to_string())));
    assert_eq!(
        d.files
            .iter()
            .find(|f| f.name == "persona.jinja")
            .unwrap()
            .status,
        "only in B"
    );
    snap("prompts_diff", &mut a);
    send(&mut a, [code(KeyCode::Esc)]);
    assert!(a.prompts.diff.is_none());
    // Enter on a set makes it the one simulations use.
    send(&mut a, [code(KeyCode::Up), code(KeyCode::Enter)]);
    assert_eq!(a.set, "humanlm");
    assert!(a.set_pinned);
    // A change on disk rescans.
    let fx = send(
        &mut a,
        [Action::PromptsChanged(vec![
            "prompts/humanlm/system.jinja".into()
        ])],
    );
    assert!(matches!(&fx[..], [Effect::ScanPrompts]));
}

/// Both sides of a comparison, run to the end.
fn compared(a: &mut App) -> u64 {
    send(a, [key('c')]);
    assert_eq!(a.screen, Screen::Compare);
    assert_eq!(a.compare.sides[0].set, "instruct");
    assert_eq!(a.compare.sides[1].set, "humanlm");
    let fx = send(a, [code(KeyCode::Enter)]);
    let (job, sides) = fx
        .iter()
        .find_map(|e| match e {
            Effect::Compare { req, sides } => Some((req.job, sides.clone())),
            _ => None,
        })
        .expect("a comparison");
    assert_eq!(sides.len(), 2);
    for (side, reply) in [
        (0, "NTA, her fence."),
        (1, "You owe her nothing, she never asked."),
    ] {
        let mut s = SimSample {
            response: reply.into(),
            ..Default::default()
        };
        s.states
            .insert("stance".into(), format!("side {side} disagrees"));
        s.outputs
            .insert("response".into(), output(reply, 8, StopReason::Stop, true));
        let s = SampleOut::from(s);
        send(
            a,
            [
                Action::Cmp {
                    job,
                    side,
                    msg: SimMsg::Started {
                        checkpoint: "smollm2-135m-instruct".into(),
                        set: sides[side].set.clone(),
                        set_hash: "3f2a1b99c0de".into(),
                        calls: 7,
                    },
                },
                Action::Cmp {
                    job,
                    side,
                    msg: SimMsg::Done {
                        samples: vec![s],
                        dropped_turns: 0,
                    },
                },
            ],
        );
    }
    assert!(a.compare.job.is_none(), "the comparison is over");
    job
}

#[test]
fn compare_and_blind_rating() {
    let mut a = app(120, 40);
    compared(&mut a);
    snap("compare", &mut a);
    send(&mut a, [key('b')]);
    let order = a.compare.blind.as_ref().unwrap().order.clone();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 1]);
    // Models and the reference stay hidden while rating.
    let out = render(&mut a, 120, 40);
    assert!(out.contains("hidden until every reply is rated"), "{out}");
    assert!(!out.contains("She built it without asking"), "{out}");
    send(&mut a, [key('7'), key('8')]);
    // Enter before every reply is rated reveals nothing.
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    assert!(fx.is_empty());
    snap("compare_blind", &mut a);
    send(&mut a, [key('3'), key('0')]);
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    let [Effect::AppendRating(v)] = &fx[..] else {
        panic!("{fx:?}")
    };
    assert_eq!(v["scenario"], "opinion-fence-01");
    assert_eq!(
        v["reference"],
        "NTA. She built it without asking, she owns it."
    );
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["label"], "A");
    assert_eq!(items[0]["similarity"], 7);
    assert_eq!(items[0]["humanlike"], 8);
    assert_eq!(items[1]["similarity"], 3);
    assert_eq!(items[1]["humanlike"], 10);
    // A is whichever side the shuffle put first.
    assert_eq!(
        items[0]["prompt_set"],
        a.compare.sides[order[0]].set.as_str()
    );
    let out = render(&mut a, 120, 40);
    assert!(out.contains("She built it without asking"), "{out}");
    // A third side, and back.
    send(&mut a, [code(KeyCode::Esc), key('+')]);
    assert_eq!(a.compare.sides.len(), 3);
    send(&mut a, [key('-')]);
    assert_eq!(a.compare.sides.len(), 2);
}

fn estimate(mean: f64) -> serde_json::Value {
    serde_json::json!({"mean": mean, "ci95": [mean - 4.0, mean + 4.5], "n": 22})
}

fn summary(run: &str, base: f64) -> Summary {
    let metrics: serde_json::Map<String, serde_json::Value> = [
        "response",
        "stance",
        "emotion",
        "belief",
        "value",
        "goal",
        "communication",
        "embedding",
        "rouge_l",
    ]
    .iter()
    .enumerate()
    .map(|(i, k)| (k.to_string(), estimate(base + i as f64 * 2.5)))
    .collect();
    serde_json::from_value(serde_json::json!({
        "run": run,
        "checkpoints": [{
            "checkpoint": "smollm2-135m-instruct",
            "dimensions": std::iter::once("response".to_string()).chain(dimensions()).collect::<Vec<_>>(),
            "n_scenarios": 22,
            "metrics": metrics,
            "diagnostics": {
                "valid_rate": 0.12, "length_ratio": 2.4, "distinct_2": 0.81,
                "assistant_speak_rate": 0.3, "context_copy_rate": 0.05,
                "judge_failures": 0, "skipped_no_reference": 7, "samples": 22
            }
        }]
    }))
    .unwrap()
}

fn record(scenario: &str, score: f64) -> SampleRecord {
    serde_json::from_value(serde_json::json!({
        "checkpoint": "smollm2-135m-instruct", "scenario": scenario, "domain": "opinion",
        "sample": 0, "states": {"stance": "disagrees"}, "response": format!("reply to {scenario}"),
        "think": null, "reference": "the real reply", "valid": false, "tokens": 40, "ms": 900,
        "scores": {"response": {"score": score}, "stance": {"score": score / 2.0}},
        "similarity": {"embedding": score, "rouge_l": 0.1},
        "reply_words": 4, "reference_words": 3, "assistant_speak": true, "context_copy": false
    }))
    .unwrap()
}

fn listing(id: &str, created: &str, resp: f64) -> RunListing {
    RunListing {
        id: id.into(),
        path: PathBuf::from(format!("runs/{id}")),
        created: created.into(),
        mode: "humanlm".into(),
        checkpoints: vec!["smollm2-135m-instruct".into()],
        judge: "embedding".into(),
        complete: true,
        samples: 22,
        response: [("smollm2-135m-instruct".to_string(), resp)].into(),
    }
}

#[test]
fn eval_snapshots_and_drill() {
    let mut a = app(120, 40);
    let fx = send(&mut a, [key('e')]);
    assert!(fx.iter().any(|e| matches!(e, Effect::ScanRuns)));
    let fx = send(
        &mut a,
        [Action::Runs(vec![
            listing(
                "humanlm-smollm2-135m-instruct-1a2b3c4d",
                "2026-03-02T10:00:00Z",
                21.5,
            ),
            listing(
                "humanlm-smollm2-135m-instruct-0f0e0d0c",
                "2026-03-01T09:00:00Z",
                18.0,
            ),
        ])],
    );
    let [Effect::LoadRun { path, prev }] = &fx[..] else {
        panic!("{fx:?}")
    };
    assert!(path.ends_with("humanlm-smollm2-135m-instruct-1a2b3c4d"));
    assert!(prev
        .as_ref()
        .unwrap()
        .ends_with("humanlm-smollm2-135m-instruct-0f0e0d0c"));
    send(
        &mut a,
        [Action::RunDetail(RunDetail {
            path: path.clone(),
            summary: Some(summary("humanlm-smollm2-135m-instruct-1a2b3c4d", 21.5)),
            prev: Some((
                "humanlm-smollm2-135m-instruct-0f0e0d0c".into(),
                summary("humanlm-smollm2-135m-instruct-0f0e0d0c", 18.0),
            )),
            samples: vec![
                record("opinion-fence-01", 0.42),
                record("chat-trip-01", 0.11),
                record("politics-phones-01", 0.27),
            ],
        })],
    );
    snap("eval", &mut a);
    // Drill down: worst reply first.
    send(&mut a, [code(KeyCode::Enter)]);
    assert_eq!(a.eval.drill, Some(0));
    let out = render(&mut a, 120, 40);
    let chat = out.find("chat-trip-01#0").unwrap();
    let fence = out.find("opinion-fence-01#0").unwrap();
    assert!(chat < fence, "{out}");
    snap("eval_drill", &mut a);
    send(&mut a, [code(KeyCode::Esc)]);
    assert_eq!(a.eval.drill, None);
    // r opens the judge picker on the embedding judge; Enter starts a run over scenarios/ with
    // it; progress streams in.
    let fx = send(&mut a, [key('r')]);
    assert!(fx.iter().any(|e| matches!(e, Effect::ScanJudges)), "{fx:?}");
    send(&mut a, [Action::Judges(judge_rows())]);
    assert_eq!(a.eval.picker, Some(0));
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    let Some((job, spec)) = fx.iter().find_map(|e| match e {
        Effect::Eval { job, spec, .. } => Some((*job, spec.clone())),
        _ => None,
    }) else {
        panic!("{fx:?}")
    };
    assert_eq!(spec.checkpoints, vec!["smollm2-135m-instruct".to_string()]);
    assert_eq!(spec.prompts.as_deref(), Some("instruct"));
    assert_eq!(spec.judge, humanlm::judge::JudgeConfig::default_config());
    send(
        &mut a,
        [
            Action::Eval {
                job,
                msg: EvalMsg::Started {
                    total: 22,
                    resumed: 0,
                },
            },
            Action::Eval {
                job,
                msg: EvalMsg::Scenario {
                    scenario: "opinion-fence-01".into(),
                },
            },
            Action::Tick,
            Action::Eval {
                job,
                msg: EvalMsg::Done {
                    scenario: "opinion-fence-01".into(),
                },
            },
        ],
    );
    let out = render(&mut a, 120, 40);
    assert!(out.contains("1/22 scenarios"), "{out}");
    // Esc cancels; the worker's last word ends it.
    send(&mut a, [code(KeyCode::Esc)]);
    let cancel = a.jobs.iter().all(|j| j.id != job);
    assert!(cancel);
    let fx = send(
        &mut a,
        [Action::Eval {
            job,
            msg: EvalMsg::Finished(Err("cancelled; run the same command again to resume".into())),
        }],
    );
    assert!(a.eval.progress.is_none());
    assert!(a.error.is_none(), "a cancel is not an error");
    assert!(fx.iter().any(|e| matches!(e, Effect::ScanRuns)));
}

#[test]
fn error_popup_snapshot() {
    let mut a = app(120, 40);
    send(
        &mut a,
        [Action::ModelFailed {
            name: "qwen3-0.6b".into(),
            error: "checkpoints/qwen3-0.6b: checkpoint not found".into(),
        }],
    );
    snap("error", &mut a);
    // Any key closes it; nothing else happens.
    send(&mut a, [key('q')]);
    assert!(a.error.is_none());
    assert!(!a.quit);
    send(&mut a, [key('q')]);
    assert!(a.quit);
}

#[test]
fn filter_is_incremental_and_esc_clears() {
    let mut a = app(120, 40);
    let all = a.browser_rows().len();
    send(&mut a, [key('/')]);
    assert!(a.browser.filtering);
    send(&mut a, typed("op"));
    let some = a.browser_rows().len();
    assert!(some < all && some > 1);
    // Letters bound to commands are text while typing.
    send(&mut a, typed("inion-gym"));
    assert!(!a.quit);
    assert_eq!(
        a.browser_rows()
            .iter()
            .filter(|r| matches!(r, BrowserRow::Scenario(_)))
            .count(),
        1
    );
    assert_eq!(a.selected_scenario().unwrap().scenario.id, "opinion-gym-02");
    send(&mut a, (0..4).map(|_| code(KeyCode::Backspace)));
    assert_eq!(a.browser.filter, "opinion");
    // Words match anywhere, in any order.
    send(&mut a, [code(KeyCode::Esc)]);
    assert!(a.browser.filter.is_empty() && !a.browser.filtering);
    assert_eq!(a.browser_rows().len(), all);
    send(&mut a, [key('/')]);
    send(&mut a, typed("lisbon chat"));
    assert_eq!(a.selected_scenario().unwrap().scenario.id, "chat-trip-01");
    // Enter simulates the match.
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    let Some(Effect::Simulate(req)) = fx.first() else {
        panic!("{fx:?}")
    };
    assert_eq!(req.scenario.id, "chat-trip-01");
    assert_eq!(req.set, "instruct");
    assert_eq!(req.mode, Mode::Humanlm);
    assert!(!a.browser.filtering);
    assert_eq!(a.browser.filter, "lisbon chat");
}

#[test]
fn navigation_folds_and_panes() {
    let mut a = app(120, 40);
    // The first scenario row is selected, under its domain.
    assert_eq!(
        a.selected_scenario().unwrap().scenario.id,
        "opinion-fence-01"
    );
    send(&mut a, [key('j')]);
    assert_eq!(a.selected_scenario().unwrap().scenario.id, "opinion-gym-02");
    // ← folds the domain and lands on it; Enter unfolds.
    send(&mut a, [code(KeyCode::Left)]);
    assert!(a
        .browser
        .folded
        .contains(&humanlm::scenario::Domain::Opinion));
    assert!(a.selected_scenario().is_none());
    let rows = a.browser_rows();
    assert!(matches!(
        rows[0],
        BrowserRow::Domain {
            folded: true,
            count: 2,
            ..
        }
    ));
    send(&mut a, [code(KeyCode::Enter)]);
    assert!(a.browser.folded.is_empty());
    // Tab cycles the panes; Shift-Tab goes back.
    for want in [Pane::Thread, Pane::States, Pane::Reply, Pane::Scenarios] {
        send(&mut a, [code(KeyCode::Tab)]);
        assert_eq!(a.focus, want);
    }
    send(&mut a, [code(KeyCode::BackTab)]);
    assert_eq!(a.focus, Pane::Reply);
    // The mouse wheel scrolls the pane under it (the thread of a long scenario).
    send(&mut a, [key('/')]);
    send(&mut a, typed("long"));
    send(&mut a, [code(KeyCode::Tab)]);
    render(&mut a, 120, 40);
    let thread = humanlm::tui::ui::simulate::areas(&a, humanlm::tui::ui::body_rect(&a)).thread;
    send(
        &mut a,
        [Action::Mouse(MouseEvent {
            kind: MouseEventKind::ScrollDown,
            column: thread.x + 5,
            row: thread.y + 3,
            modifiers: KeyModifiers::NONE,
        })],
    );
    assert_eq!(a.thread_scroll, 3);
    // Modes and samples cycle.
    send(&mut a, [key('M')]);
    assert_eq!(a.mode, Mode::Response);
    send(&mut a, [key('M'), key('M')]);
    assert_eq!(a.mode, Mode::Humanlm);
    send(&mut a, [key('n'), key('n')]);
    assert_eq!(a.sampling.n, 3);
}

#[test]
fn narrow_layout_shows_the_list_as_a_popup() {
    let mut a = app(80, 24);
    let out = render(&mut a, 80, 24);
    assert!(out.contains("Scenarios"), "{out}");
    // Enter simulates and closes the list.
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    assert!(matches!(fx.first(), Some(Effect::Simulate(_))));
    assert_eq!(a.focus, Pane::Reply);
    let out = render(&mut a, 80, 24);
    assert!(!out.contains("Scenarios (/ filter)"), "{out}");
    assert!(out.contains("States"), "{out}");
}

#[test]
fn streaming_deltas_fill_cards_and_get_scored() {
    let mut a = app(120, 40);
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    let job = sim_job(&fx);
    let run = a.sim.as_ref().unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(a.jobs.len(), 1);
    send(&mut a, [started(job), call(job, "stance")]);
    // The prefix cache served part of the prompt: the status bar says how much is computed.
    send(
        &mut a,
        [Action::Sim {
            job,
            msg: SimMsg::Prefill { cached: 256 },
        }],
    );
    let out = render(&mut a, 120, 40);
    assert!(
        out.contains("prefilling 109 of 365 prompt tokens (256 cached)"),
        "{out}"
    );
    send(
        &mut a,
        [
            text(job, "stance", 0, "strongly "),
            text(job, "stance", 0, "disagrees"),
        ],
    );
    let run = a.sim.as_ref().unwrap();
    assert_eq!(
        humanlm::tui::text::state_text(run, &run.samples[0], "stance").as_deref(),
        Some("strongly disagrees")
    );
    assert_eq!(run.current.as_deref(), Some("stance"));
    assert_eq!(run.stats.tok_s, 23.4);
    let out = render(&mut a, 120, 40);
    assert!(out.contains("strongly disagrees▌"), "{out}");
    assert!(out.contains("generating stance (1/7)"), "{out}");
    assert!(out.contains("23.4 tok/s"), "{out}");
    assert!(out.contains("ttft 0.41 s"), "{out}");
    // A finished call is scored against the real reply, in the background.
    let fx = send(&mut a, [done_call(job, "stance")]);
    let [Effect::Score {
        call,
        reference,
        texts,
        ..
    }] = &fx[..]
    else {
        panic!("{fx:?}")
    };
    assert_eq!(call, "stance");
    assert_eq!(reference, "NTA. She built it without asking, she owns it.");
    assert_eq!(texts, &vec!["strongly disagrees".to_string()]);
    send(
        &mut a,
        [Action::Scores {
            job,
            call: "stance".into(),
            texts: texts.clone(),
            result: Ok(vec![0.71]),
        }],
    );
    assert_eq!(a.sim.as_ref().unwrap().samples[0].scores["stance"], 0.71);
    let out = render(&mut a, 120, 40);
    assert!(out.contains(" 71"), "{out}");
    // Messages of another (older) job are ignored.
    send(&mut a, [text(job + 100, "emotion", 0, "stray")]);
    assert!(!a.sim.as_ref().unwrap().samples[0]
        .calls
        .contains_key("emotion"));
    // Unfinished cards wait.
    assert!(out.contains("waiting"), "{out}");
    // The next finished call is scored alone: the earlier ones are not asked for again.
    send(
        &mut a,
        [self::call(job, "emotion"), text(job, "emotion", 0, "calm")],
    );
    let fx = send(&mut a, [done_call(job, "emotion")]);
    assert!(
        matches!(&fx[..], [Effect::Score { call, .. }] if call == "emotion"),
        "{fx:?}"
    );
    let fx = send(
        &mut a,
        [self::call(job, "belief"), done_call(job, "belief")],
    );
    assert!(
        matches!(&fx[..], [Effect::Score { call, .. }] if call == "belief"),
        "emotion's score is on its way: {fx:?}"
    );
}

#[test]
fn esc_cancels_the_simulation() {
    let mut a = app(120, 40);
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    let Some(Effect::Simulate(req)) = fx.first() else {
        panic!("{fx:?}")
    };
    let (job, flag) = (req.job, req.cancel.clone());
    send(
        &mut a,
        [
            started(job),
            call(job, "stance"),
            text(job, "stance", 0, "agr"),
        ],
    );
    send(&mut a, [code(KeyCode::Esc)]);
    assert!(flag.load(Ordering::Relaxed), "the worker is told to stop");
    assert!(a.jobs.is_empty());
    assert_eq!(a.sim.as_ref().unwrap().status, RunStatus::Cancelled);
    // What the worker returns after stopping is kept, still marked cancelled.
    let mut s = SimSample::default();
    s.outputs.insert(
        "stance".into(),
        output("agr", 1, StopReason::Cancelled, false),
    );
    s.states.insert("stance".into(), "agr".into());
    let s = SampleOut::from(s);
    send(
        &mut a,
        [Action::Sim {
            job,
            msg: SimMsg::Done {
                samples: vec![s],
                dropped_turns: 0,
            },
        }],
    );
    assert_eq!(a.sim.as_ref().unwrap().status, RunStatus::Cancelled);
    let out = render(&mut a, 120, 40);
    assert!(out.contains("⚠ cancelled"), "{out}");
    assert!(out.contains("not generated (cancelled)"), "{out}");
    // r regenerates with the next seed.
    let fx = send(&mut a, [key('r')]);
    let Some(Effect::Simulate(req)) = fx.first() else {
        panic!("{fx:?}")
    };
    assert_eq!(req.sampling.seed, 1);
    assert_eq!(a.sim.as_ref().unwrap().status, RunStatus::Running);
}

#[test]
fn a_simulation_waits_for_a_loading_checkpoint() {
    let mut a = App::new(Paths::default(), "smollm2-135m-instruct", "instruct");
    a.size = (120, 40);
    update(
        &mut a,
        Action::Scenarios {
            entries: scenarios(),
            problems: vec![],
        },
    );
    // Nothing loaded and nothing loading: say so.
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    assert!(fx.is_empty());
    assert!(a
        .error
        .as_deref()
        .unwrap()
        .contains("no checkpoint is loaded"));
    send(&mut a, [key(' ')]);
    assert!(a.error.is_none() && a.message.is_none());
    a.model.loading = Some(("smollm2-135m-instruct".into(), 0));
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    assert!(matches!(fx.first(), Some(Effect::Simulate(_))));
    let out = render(&mut a, 120, 40);
    assert!(
        out.contains("waiting for smollm2-135m-instruct to load"),
        "{out}"
    );
    // The checkpoint names its prompt set.
    send(
        &mut a,
        [Action::ModelLoaded(ModelInfo {
            default_set: Some("humanlm".into()),
            ..model_info()
        })],
    );
    assert_eq!(a.set, "humanlm");
}

#[test]
fn sessions_save_and_reopen() {
    let mut a = app(120, 40);
    let fx = send(&mut a, [key('s')]);
    assert!(fx.is_empty(), "nothing to save yet");
    finished_run(&mut a, 1);
    let fx = send(&mut a, [key('s')]);
    let [Effect::SaveSession(s)] = &fx[..] else {
        panic!("{fx:?}")
    };
    assert_eq!(s.scenario, "opinion-fence-01");
    assert_eq!(s.prompt_set, "instruct");
    assert_eq!(s.mode, "humanlm");
    assert_eq!(s.samples[0].state("goal"), Some("reassure the poster"));
    // Round trip through JSON, into a fresh workbench.
    let json = serde_json::to_string(&**s).unwrap();
    let back: Session = serde_json::from_str(&json).unwrap();
    let mut b = app(120, 40);
    send(&mut b, [key('j'), key('j')]);
    let fx = send(&mut b, [Action::SessionOpened(back)]);
    assert!(fx.is_empty(), "same checkpoint: nothing to load");
    assert_eq!(
        b.selected_scenario().unwrap().scenario.id,
        "opinion-fence-01"
    );
    let run = b.sim.as_ref().unwrap();
    assert_eq!(run.status, RunStatus::Done);
    assert_eq!(
        run.samples[0].response(),
        a.sim.as_ref().unwrap().samples[0].response()
    );
    let out = render(&mut b, 120, 40);
    assert!(out.contains("reassure the poster"), "{out}");
}

/// A session saved in the first layout (each finished sample's parse beside its calls) opens
/// with its states, reply, verdicts and stop reasons.
#[test]
fn a_version_1_session_still_opens() {
    let runs = tempfile::tempdir().unwrap();
    let dir = runs.path().join("sessions");
    std::fs::create_dir_all(&dir).unwrap();
    let v1 = serde_json::json!({
        "version": 1,
        "saved_unix": 1764000000u64,
        "scenario": "opinion-fence-01",
        "checkpoint": "smollm2-135m-instruct",
        "prompt_set": "instruct",
        "prompt_hash": "3f2a1b99c0de",
        "mode": "humanlm",
        "sampling": serde_json::to_value(humanlm::sim::SamplingChoice::default()).unwrap(),
        "dropped_turns": 0,
        "samples": [{
            "calls": {
                "stance": {"text": "<stance>disagrees</stance>", "done": true, "stop": "stop",
                           "valid": true, "tokens": 9},
                "response": {"text": "NTA, her fence.", "done": true, "stop": "length",
                             "valid": false, "tokens": 30}
            },
            "states": {"stance": "disagrees"},
            "response": "NTA, her fence.",
            "valid": false,
            "tokens": 39,
            "ms": 2100,
            "scores": {"response": 0.5}
        }]
    });
    std::fs::write(
        dir.join("session-1764000000-opinion-fence-01.json"),
        v1.to_string(),
    )
    .unwrap();
    let s = humanlm::tui::worker::open_latest_session(runs.path()).unwrap();
    assert_eq!(s.version, SESSION_VERSION);
    let smp = &s.samples[0];
    assert_eq!(smp.state("stance"), Some("disagrees"));
    assert_eq!(smp.response(), Some("NTA, her fence."));
    assert_eq!(smp.valid(), Some(false));
    assert_eq!(smp.scores["response"], 0.5);
    let reply = smp.output("response").unwrap();
    assert_eq!(
        (reply.tokens, &reply.stop_reason),
        (30, &StopReason::Length)
    );
    assert_eq!(smp.calls["stance"].text, "<stance>disagrees</stance>");
    let result = smp.result.as_ref().unwrap();
    assert_eq!((result.tokens, result.ms), (39, 2100));
}

#[test]
fn an_embedding_model_is_not_loaded_as_a_simulator() {
    let mut a = app(120, 40);
    send(&mut a, [key('m')]);
    let mut bert = info("all-minilm-l6-v2", "hf", 22_713_216, None);
    bert.architecture = "bert".into();
    send(
        &mut a,
        [Action::Checkpoints(vec![CkptRow {
            name: "all-minilm-l6-v2".into(),
            path: "checkpoints/all-minilm-l6-v2".into(),
            info: Some(bert),
            error: None,
            default_set: None,
            depth: 0,
            endpoint: None,
        }])],
    );
    let out = render(&mut a, 120, 40);
    assert!(out.contains("(embedder)"), "{out}");
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    assert!(fx.is_empty(), "{fx:?}");
    assert!(a.error.as_deref().unwrap().contains("bert model"));
    assert!(a.model.loading.is_none());
}

fn ctrl(c: char) -> Action {
    Action::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
}

/// The Checkpoints screen's endpoint form: what is wrong is said in the form (naming the
/// field), a good endpoint is added, persisted, selected, and loads as the checkpoint.
#[test]
fn an_endpoint_is_added_from_the_checkpoints_screen() {
    let mut a = app(120, 40);
    send(&mut a, [key('m')]);
    send(&mut a, [Action::Checkpoints(ckpt_rows())]);
    let fx = send(&mut a, [key('a')]);
    assert!(fx.is_empty());
    assert!(a.ckpts.form.is_some());
    // Typing goes into the form, not to the screens ('m', 'e', 'q' are letters here).
    send(&mut a, typed("localhost:8000/v1"));
    send(&mut a, [code(KeyCode::Enter)]);
    send(&mut a, typed("smollm2-135m-instruct"));
    send(&mut a, [code(KeyCode::Enter)]);
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(a.screen, Screen::Checkpoints);
    let form = a.ckpts.form.as_ref().expect("the form stays open");
    assert_eq!(form.fields[1], "smollm2-135m-instruct");
    assert!(
        form.error.as_deref().unwrap().starts_with("URL"),
        "{form:?}"
    );
    snap("checkpoints_endpoint_form", &mut a);

    // Back to the URL (Shift-Tab twice), cleared with Ctrl-U, typed again; a key pasted where
    // its variable's name belongs is refused.
    send(
        &mut a,
        [code(KeyCode::BackTab), code(KeyCode::BackTab), ctrl('u')],
    );
    send(&mut a, typed("http://127.0.0.1:8000/v1/"));
    send(&mut a, [code(KeyCode::Tab), code(KeyCode::Tab)]);
    send(&mut a, typed("sk-abc123"));
    send(&mut a, [code(KeyCode::Enter)]);
    let err = a.ckpts.form.as_ref().unwrap().error.clone().unwrap();
    assert!(err.contains("never the key itself"), "{err}");
    assert!(!err.contains("abc123"), "the key is not echoed: {err}");
    for _ in 0.."sk-abc123".len() {
        send(&mut a, [code(KeyCode::Backspace)]);
    }
    send(&mut a, typed("OPENAI_API_KEY"));
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    assert!(a.ckpts.form.is_none());
    let [Effect::SaveEndpoints(list)] = &fx[..] else {
        panic!("{fx:?}")
    };
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].base_url, "http://127.0.0.1:8000/v1");
    assert_eq!(list[0].model, "smollm2-135m-instruct");
    assert_eq!(list[0].api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    let spec = "endpoint:http://127.0.0.1:8000/v1#smollm2-135m-instruct";
    assert_eq!(a.ckpts.rows[a.ckpts.selected].name, spec);
    // The rescan after the save keeps it selected.
    let mut rows = ckpt_rows();
    rows.push(CkptRow::for_endpoint(list[0].clone()));
    send(&mut a, [Action::Checkpoints(rows)]);
    assert_eq!(a.ckpts.rows[a.ckpts.selected].name, spec);
    snap("checkpoints_endpoint", &mut a);

    // Enter connects to it; once it answers, Simulate runs through it.
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    assert!(
        matches!(&fx[..], [Effect::LoadEndpoint(c)] if *c == list[0]),
        "{fx:?}"
    );
    assert_eq!(a.checkpoint, spec);
    send(
        &mut a,
        [Action::ModelLoaded(ModelInfo {
            name: spec.into(),
            device: "endpoint".into(),
            weights: "remote".into(),
            context: 0,
            load_ms: 40,
            default_set: None,
            quantized_on_load: None,
        })],
    );
    send(&mut a, [code(KeyCode::Esc)]);
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    sim_job(&fx);
    assert_eq!(a.sim.as_ref().unwrap().checkpoint, spec);
    // x removes it (checkpoint folders are not touched).
    send(&mut a, [key('m')]);
    let fx = send(&mut a, [key('x')]);
    assert!(
        matches!(&fx[..], [Effect::SaveEndpoints(l)] if l.is_empty()),
        "{fx:?}"
    );
    a.ckpts.selected = 0;
    let fx = send(&mut a, [key('x')]);
    assert!(fx.is_empty());
    assert_eq!(a.ckpts.rows.len(), 3);
}

#[test]
fn endpoint_fields_are_checked() {
    use humanlm::tui::update::endpoint_from_form;
    let f = |u: &str, m: &str, k: &str| endpoint_from_form(&[u.into(), m.into(), k.into()]);
    let ok = f(" https://api.example.com/v1 ", " gpt-5-mini ", "").unwrap();
    assert_eq!(ok.base_url, "https://api.example.com/v1");
    assert_eq!(ok.model, "gpt-5-mini");
    assert_eq!(ok.api_key_env, None);
    assert!(f("http:///v1", "m", "").unwrap_err().contains("no host"));
    assert!(f("ftp://h/v1", "m", "").unwrap_err().starts_with("URL"));
    assert!(f("http://h/v1", "", "").unwrap_err().starts_with("model"));
    assert!(f("http://h/v1", "a#b", "")
        .unwrap_err()
        .starts_with("model"));
    assert!(f("http://h/v1", "m", "1KEY")
        .unwrap_err()
        .starts_with("key env"));
    assert!(f("http://h/v1", "m", "MY KEY")
        .unwrap_err()
        .starts_with("key env"));
    // What the form accepts is a spec the CLI accepts.
    let spec = format!("endpoint:{}#{}", ok.base_url, ok.model);
    assert_eq!(
        humanlm::remote::Endpoint::parse_spec(&spec),
        Some((ok.base_url.clone(), ok.model.clone()))
    );
}

struct Server {
    child: std::process::Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `humanlm serve` on a free loopback port.
fn serve() -> Server {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .args(["serve", "--port", "0", "--threads", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    Server {
        child,
        url: format!("{addr}/v1"),
    }
}

/// The workbench's endpoint path against a real `humanlm serve`: the form's endpoint is
/// written to endpoints.toml and listed, connecting checks the served models, and a
/// simulation streams through the server.
#[test]
fn an_endpoint_from_the_form_simulates_through_humanlm_serve() {
    use humanlm::tui::action::SimRequest;
    use humanlm::tui::worker::{self, Msg, Tx};
    let server = serve();
    let dir = tempfile::tempdir().unwrap();
    let cfg = humanlm::tui::update::endpoint_from_form(&[
        server.url.clone(),
        "smollm2-135m-instruct".into(),
        String::new(),
    ])
    .unwrap();
    worker::save_endpoints(dir.path(), std::slice::from_ref(&cfg)).unwrap();
    let rows = worker::scan_checkpoints(dir.path());
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].endpoint.as_ref(), Some(&cfg));
    let spec = rows[0].name.clone();

    let (sender, rx) = std::sync::mpsc::channel();
    let tx = Tx(sender);
    let mut wrong = cfg.clone();
    wrong.model = "no-such-model".into();
    worker::load_endpoint(wrong, 1, &tx);
    match rx.recv().unwrap() {
        Msg::Action(Action::ModelFailed { error, .. }) => {
            assert!(error.contains("serves smollm2-135m-instruct"), "{error}")
        }
        _ => panic!("a model the server does not serve must fail"),
    }
    worker::load_endpoint(cfg, 2, &tx);
    let loaded = match rx.recv().unwrap() {
        Msg::Model { seq, model, info } => {
            assert_eq!(seq, 2);
            assert_eq!(info.name, spec);
            model
        }
        Msg::Action(a) => panic!("{a:?}"),
        _ => panic!("unexpected message"),
    };
    let req = SimRequest {
        job: 3,
        scenario: scenarios()[0].scenario.clone(),
        set: "humanlm".into(),
        mode: Mode::Response,
        sampling: humanlm::sim::SamplingChoice {
            max_tokens: Some(8),
            ..Default::default()
        },
        cancel: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let msgs = std::sync::Mutex::new(vec![]);
    worker::simulate(&loaded, &req, Path::new("prompts"), &|m| {
        msgs.lock().unwrap().push(m)
    });
    let msgs = msgs.into_inner().unwrap();
    assert!(
        matches!(&msgs[0], SimMsg::Started { checkpoint, .. } if *checkpoint == spec),
        "{msgs:?}"
    );
    assert!(msgs.iter().any(|m| matches!(m, SimMsg::Text { .. })));
    let Some(SimMsg::Done { samples, .. }) = msgs.last() else {
        panic!("{msgs:?}")
    };
    let reply = samples[0].output("response").expect("the reply's output");
    assert!(reply.tokens > 0 && !reply.raw.is_empty(), "{reply:?}");
}

/// The judges the Eval picker lists: two that run here and one whose key is not set.
fn judge_rows() -> Vec<JudgeRow> {
    use humanlm::judge::{JudgeConfig, LexicalMetric};
    vec![
        JudgeRow {
            name: "embedding".into(),
            path: PathBuf::from("prompts/judges/embedding.toml"),
            kind: "embedding".into(),
            detail: "all-minilm-l6-v2".into(),
            config: Some(JudgeConfig::default_config()),
            unavailable: None,
        },
        JudgeRow {
            name: "rouge-l".into(),
            path: PathBuf::from("prompts/judges/rouge-l.toml"),
            kind: "lexical".into(),
            detail: "rouge_l".into(),
            config: Some(JudgeConfig::Lexical {
                metric: LexicalMetric::RougeL,
            }),
            unavailable: None,
        },
        JudgeRow {
            name: "rubric-openai".into(),
            path: PathBuf::from("prompts/judges/rubric-openai.toml"),
            kind: "rubric".into(),
            detail: "gpt-5-mini @ https://api.openai.com/v1".into(),
            config: Some(JudgeConfig::read(Path::new("prompts/judges/rubric-openai.toml")).unwrap()),
            unavailable: Some("needs an API key in $OPENAI_API_KEY, which is not set: export OPENAI_API_KEY before starting humanlm, or pick a local judge".into()),
        },
    ]
}

/// `r` on Eval asks which judge: one without its key says why and starts nothing; the one
/// chosen goes into the run's spec, and the picker opens on it next time.
#[test]
fn the_eval_judge_is_chosen_before_a_run() {
    let mut a = app(120, 40);
    send(&mut a, [key('e'), Action::Runs(vec![])]);
    let fx = send(&mut a, [key('r')]);
    assert!(fx.iter().any(|e| matches!(e, Effect::ScanJudges)), "{fx:?}");
    let out = render(&mut a, 120, 40);
    assert!(out.contains("reading prompts/judges/"), "{out}");
    send(&mut a, [Action::Judges(judge_rows())]);
    assert_eq!(a.eval.picker, Some(0));
    send(&mut a, [code(KeyCode::Down), code(KeyCode::Down)]);
    snap("eval_judges", &mut a);
    let fx = send(&mut a, [code(KeyCode::Enter)]);
    assert!(fx.is_empty(), "{fx:?}");
    assert!(a.jobs.is_empty());
    let e = a.error.clone().unwrap();
    assert!(
        e.contains("rubric-openai") && e.contains("OPENAI_API_KEY"),
        "{e}"
    );
    send(&mut a, [key('x')]); // closes the error; the picker stays
    assert!(a.eval.picker.is_some());
    let fx = send(&mut a, [code(KeyCode::Up), code(KeyCode::Enter)]);
    let Some(spec) = fx.iter().find_map(|e| match e {
        Effect::Eval { spec, .. } => Some(spec.clone()),
        _ => None,
    }) else {
        panic!("{fx:?}")
    };
    assert_eq!(
        spec.judge,
        humanlm::judge::JudgeConfig::Lexical {
            metric: humanlm::judge::LexicalMetric::RougeL
        }
    );
    assert!(a.eval.picker.is_none());
    assert_eq!(a.eval.judge.as_deref(), Some("rouge-l"));
    // Finished; the next r opens on the judge used.
    let job = a.eval.progress.as_ref().unwrap().job;
    send(
        &mut a,
        [Action::Eval {
            job,
            msg: EvalMsg::Finished(Ok(PathBuf::from("runs/x"))),
        }],
    );
    send(&mut a, [key('r')]);
    assert_eq!(a.eval.picker, Some(1));
    send(&mut a, [code(KeyCode::Esc)]);
    assert!(a.eval.picker.is_none());
    assert_eq!(a.screen, Screen::Eval);
}

/// The real prompts/judges/: every file parses, kinds are read from the files, and a judge
/// whose API key variable is not set is marked unavailable with the variable's name.
#[test]
fn the_shipped_judges_are_listed_with_their_kind() {
    let rows = humanlm::tui::worker::scan_judges(Path::new("prompts"), Path::new("checkpoints"));
    let kind = |n: &str| {
        rows.iter()
            .find(|r| r.name == n)
            .unwrap_or_else(|| panic!("{n} in {rows:?}"))
    };
    assert_eq!(kind("embedding").kind, "embedding");
    assert_eq!(kind("rouge-l").kind, "lexical");
    assert_eq!(kind("rubric-openai").kind, "rubric");
    assert_eq!(kind("aspects-openai").kind, "aspects");
    assert!(rows.iter().all(|r| r.config.is_some()), "{rows:?}");
    let key_set = std::env::var("OPENAI_API_KEY").is_ok_and(|v| !v.trim().is_empty());
    let why = kind("rubric-openai").unavailable.clone();
    if key_set {
        assert_eq!(why, None);
    } else {
        assert!(why.unwrap().contains("OPENAI_API_KEY"));
    }
}

fn step(n: usize, steps: usize) -> Action {
    use humanlm::train::{RewardStats, RolloutSample, StepEvent};
    let r = 0.3 + 0.05 * n as f64;
    let stat = |m: f64| RewardStats {
        mean: m,
        std: 0.1,
        n: 4,
    };
    Action::Train {
        job: 1,
        msg: TrainMsg::Step(Box::new(StepEvent {
            step: n,
            steps,
            loss: 0.9 / n as f64,
            lr: 1e-4,
            grad_norm: 0.5,
            tokens: 800,
            tokens_per_s: 412.0,
            eta_s: 40.0 * (steps - n) as f64,
            reward: Some(stat(r)),
            reward_by_state: [
                ("stance".to_string(), stat(r + 0.1)),
                ("response".to_string(), stat(r - 0.1)),
            ]
            .into(),
            kl: Some(0.002 * n as f64),
            rollout_s: Some(24.0),
            judge_s: Some(3.5),
            update_s: Some(12.5),
            rollouts: vec![
                RolloutSample {
                    scenario: "opinion-fence-01".into(),
                    state: "stance".into(),
                    text: "strongly disagrees with paying half of the fence".into(),
                    reward: r + 0.1,
                },
                RolloutSample {
                    scenario: "opinion-fence-01".into(),
                    state: "response".into(),
                    text: "NTA. You didn't agree to it,\nso it isn't your bill.".into(),
                    reward: r - 0.1,
                },
            ],
        })),
    }
}

/// The Train screen: the form (SFT, then GRPO with its rows), a start that becomes the
/// trainer's configuration, steps fed through update drawn as curves and rollouts, Esc that
/// stops with a saved checkpoint, and L that makes the adapter the checkpoint in use.
#[test]
fn train_form_run_and_adapter() {
    let mut a = app(120, 40);
    let fx = send(&mut a, [key('t')]);
    assert_eq!(a.screen, Screen::Train);
    assert!(fx.iter().any(|e| matches!(e, Effect::ScanCheckpoints)));
    assert!(fx.iter().any(|e| matches!(e, Effect::ScanJudges)));
    send(
        &mut a,
        [
            Action::Checkpoints(ckpt_rows()),
            Action::Judges(judge_rows()),
        ],
    );
    snap("train_form", &mut a);
    // → on the method: GRPO, with its two rows; the reward judge cycles over the judges.
    send(&mut a, [code(KeyCode::Right)]);
    assert_eq!(a.train.form.method, TrainMethod::Grpo);
    // Eleven: the validation row's interval shows once it names scenarios.
    assert_eq!(a.train.form.fields().len(), 11);
    // Steps: Enter edits, typing replaces, Enter ends; letters do not leave the screen.
    for _ in 0..4 {
        send(&mut a, [code(KeyCode::Down)]);
    }
    send(&mut a, [code(KeyCode::Enter)]);
    assert!(a.train.form.editing);
    send(&mut a, [code(KeyCode::Backspace), code(KeyCode::Backspace)]);
    send(&mut a, typed("0"));
    send(&mut a, [code(KeyCode::Enter)]);
    assert_eq!(a.train.form.steps, "0");
    assert_eq!(a.screen, Screen::Train);
    let fx = send(&mut a, [key('r')]);
    assert!(fx.is_empty(), "{fx:?}");
    assert!(a.train.form.error.as_deref().unwrap().starts_with("steps"));
    send(&mut a, [code(KeyCode::Enter), code(KeyCode::Backspace)]);
    send(&mut a, typed("6"));
    send(&mut a, [code(KeyCode::Enter)]);
    // The reward: rubric-openai has no key here, so the start says so.
    send(
        &mut a,
        [code(KeyCode::End), code(KeyCode::Up), code(KeyCode::Left)],
    );
    assert_eq!(a.train.form.reward, "rubric-openai");
    let fx = send(&mut a, [key('r')]);
    assert!(fx.is_empty());
    assert!(
        a.train
            .form
            .error
            .as_deref()
            .unwrap()
            .contains("OPENAI_API_KEY"),
        "{:?}",
        a.train.form.error
    );
    send(&mut a, [code(KeyCode::Right), code(KeyCode::Right)]);
    assert_eq!(a.train.form.reward, "rouge-l");
    assert_eq!(a.train.form.error, None, "a change clears the refusal");
    snap("train_form_grpo", &mut a);
    let fx = send(&mut a, [key('r')]);
    let [Effect::Train {
        job,
        cfg,
        out,
        resume,
        cancel,
    }] = &fx[..]
    else {
        panic!("{fx:?}")
    };
    assert_eq!(*job, 1);
    assert!(!resume);
    assert_eq!(cfg.base, "smollm2-135m-instruct");
    assert_eq!(cfg.steps, 6);
    assert_eq!(cfg.rank, 8);
    assert_eq!(
        out,
        &Path::new("checkpoints").join("smollm2-135m-instruct-grpo-lora")
    );
    let humanlm::train::Method::Grpo(g) = &cfg.method else {
        panic!("{cfg:?}")
    };
    assert_eq!(g.n, 4);
    assert_eq!(
        g.reward,
        humanlm::train::reward::RewardSpec::Judge {
            config: Some(PathBuf::from("prompts/judges/rouge-l.toml"))
        }
    );
    let cancel = cancel.clone();
    // A second start while it runs is refused.
    assert!(send(&mut a, [key('r')]).is_empty());
    send(
        &mut a,
        [Action::Train {
            job: 1,
            msg: TrainMsg::Data {
                examples: 22,
                skipped: 1,
            },
        }],
    );
    for n in 1..=3 {
        send(&mut a, [step(n, 6)]);
    }
    let out = render(&mut a, 120, 40);
    assert!(out.contains("step 3/6"), "{out}");
    assert!(
        out.contains("ETA 2m00s") || out.contains("ETA 2m0"),
        "{out}"
    );
    assert!(
        out.contains("0.55"),
        "the newest stance rollout's reward:\n{out}"
    );
    snap("train_running", &mut a);
    // L waits for the end; Esc stops (the trainer saves first), q asks before quitting.
    send(&mut a, [key('L')]);
    assert_eq!(a.screen, Screen::Train);
    send(&mut a, [key('q')]);
    assert!(!a.quit);
    send(&mut a, [code(KeyCode::Esc)]);
    assert!(cancel.load(Ordering::Relaxed));
    assert_eq!(a.screen, Screen::Train);
    let saved = Path::new("checkpoints/smollm2-135m-instruct-grpo-lora/checkpoint-3");
    let fx = send(
        &mut a,
        [
            Action::Train {
                job: 1,
                msg: TrainMsg::Saved(saved.to_path_buf()),
            },
            Action::Train {
                job: 1,
                msg: TrainMsg::Finished(Err(
                    "interrupted at step 3; checkpoint saved, --resume continues".into(),
                )),
            },
        ],
    );
    assert!(fx.iter().any(|e| matches!(e, Effect::ScanCheckpoints)));
    assert!(a.error.is_none(), "a stop is not an error");
    assert!(matches!(
        a.train.run.as_ref().unwrap().status,
        TrainStatus::Cancelled(_)
    ));
    assert_eq!(a.train.run.as_ref().unwrap().saved.as_deref(), Some(saved));
    // The stop refreshed the adapter at the top of the output folder: L loads that.
    let fx = send(&mut a, [key('L')]);
    assert!(
        matches!(&fx[..], [Effect::LoadCheckpoint(p, None), Effect::ScanCheckpoints] if p.ends_with("smollm2-135m-instruct-grpo-lora")),
        "{fx:?}"
    );
    assert_eq!(a.checkpoint, "smollm2-135m-instruct-grpo-lora");
    assert_eq!(a.screen, Screen::Simulate);
}

/// A validation pass as the trainer reports it: the reply's score ×100 and the best step.
fn val_event(step: usize, steps: usize, response: f64, best_step: usize) -> Action {
    use humanlm::eval::stats::Estimate;
    Action::Train {
        job: 1,
        msg: TrainMsg::Val(Box::new(humanlm::train::ValEvent {
            step,
            steps,
            run: PathBuf::from(format!("val/response-step-{step}")),
            scenarios: 6,
            metrics: [(
                "response".to_string(),
                Estimate {
                    mean: response,
                    ci95: [response - 10.0, response + 10.0],
                    n: 6,
                },
            )]
            .into(),
            loss: None,
            criterion: "response".into(),
            value: response,
            best_step,
            judge_failures: 0,
            secs: 3.0,
        })),
    }
}

/// Validation on the Train form and screen: held-out scenarios on the form become the run's
/// validation (the best kept), validation passes are drawn beside the training reward with the
/// best step marked, and B loads the best step's adapter — refused while running or before a
/// best exists.
#[test]
fn train_validation_curve_and_best() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = app(120, 40);
    a.paths.checkpoints = tmp.path().to_path_buf();
    send(
        &mut a,
        [
            key('t'),
            Action::Checkpoints(ckpt_rows()),
            Action::Judges(judge_rows()),
            code(KeyCode::Right),
        ],
    );
    // The validation row: typing a folder shows its interval row below it.
    send(&mut a, [code(KeyCode::End), code(KeyCode::Enter)]);
    send(&mut a, typed("heldout"));
    send(&mut a, [code(KeyCode::Enter)]);
    assert_eq!(a.train.form.validation, "heldout");
    assert_eq!(a.train.form.fields().len(), 12);
    send(&mut a, [code(KeyCode::End), code(KeyCode::Enter)]);
    send(&mut a, [code(KeyCode::Backspace), code(KeyCode::Backspace)]);
    send(&mut a, typed("2"));
    send(&mut a, [code(KeyCode::Enter)]);
    let out = render(&mut a, 120, 40);
    assert!(out.contains("2 steps  and at step 0 and the end"), "{out}");
    let fx = send(&mut a, [key('r')]);
    let [Effect::Train { cfg, out, .. }] = &fx[..] else {
        panic!("{fx:?}")
    };
    let val = cfg.val.as_ref().expect("validation planned");
    assert_eq!(val.data.path(), Path::new("heldout"));
    assert_eq!((val.every, val.keep_best), (2, true));
    let out = out.clone();
    send(&mut a, [val_event(0, 30, 20.0, 0)]);
    for n in 1..=2 {
        send(&mut a, [step(n, 6)]);
    }
    send(&mut a, [val_event(2, 30, 50.0, 2)]);
    for n in 3..=4 {
        send(&mut a, [step(n, 6)]);
    }
    send(&mut a, [val_event(4, 30, 40.0, 2)]);
    let screen = render(&mut a, 120, 40);
    assert!(screen.contains("held-out reward"), "{screen}");
    assert!(screen.contains("best step 2"), "{screen}");
    assert!(screen.contains("reply 40.0 ± 10.0"), "{screen}");
    // Where each step's time went.
    assert!(
        screen.contains("rollouts 24.0 s  judge 3.5 s  update 12.5 s"),
        "{screen}"
    );
    // The output folder is a temporary one: its name is not part of the layout.
    let tmp_name = tmp.path().display().to_string();
    for (w, h) in [(80, 24), (120, 40)] {
        let out = render(&mut a, w, h).replace(&tmp_name, "/TMP");
        insta::assert_snapshot!(format!("train_validation_{w}x{h}"), out);
    }
    // B waits for the end of the pass.
    assert!(send(&mut a, [key('B')]).is_empty());
    send(
        &mut a,
        [Action::Train {
            job: 1,
            msg: TrainMsg::Finished(Ok(out.clone())),
        }],
    );
    // No best/ on disk: B says so and loads nothing.
    assert!(send(&mut a, [key('B')]).is_empty());
    std::fs::create_dir_all(out.join("best")).unwrap();
    std::fs::write(out.join("best/best.json"), r#"{"step": 2}"#).unwrap();
    let fx = send(&mut a, [key('B')]);
    assert!(
        matches!(&fx[..], [Effect::LoadCheckpoint(p, None), Effect::ScanCheckpoints] if Path::new(p) == out.join("best")),
        "{fx:?}"
    );
    assert_eq!(a.checkpoint, "smollm2-135m-instruct-grpo-lora/best");
}

#[test]
fn a_finished_pass_is_loaded_as_the_checkpoint() {
    let build = |a: &mut App| {
        a.train.form.steps = "10".into();
        send(
            a,
            [
                key('t'),
                Action::Checkpoints(ckpt_rows()),
                Action::Judges(judge_rows()),
                key('r'),
            ],
        );
        let steps = 10;
        for n in 1..=steps {
            let Action::Train { msg, .. } = step(n, steps) else {
                unreachable!()
            };
            let TrainMsg::Step(mut e) = msg else {
                unreachable!()
            };
            // SFT events carry no rewards.
            e.reward = None;
            e.reward_by_state.clear();
            e.kl = None;
            e.rollouts.clear();
            e.rollout_s = None;
            e.judge_s = None;
            send(
                a,
                [Action::Train {
                    job: 1,
                    msg: TrainMsg::Step(e),
                }],
            );
        }
        send(
            a,
            [Action::Train {
                job: 1,
                msg: TrainMsg::Finished(Ok(PathBuf::from(
                    "checkpoints/smollm2-135m-instruct-sft-lora",
                ))),
            }],
        );
    };
    snap_built("train_done", build);
    let mut a = app(120, 40);
    build(&mut a);
    let run = a.train.run.as_ref().unwrap();
    assert_eq!(run.status, TrainStatus::Done);
    assert_eq!(run.method, TrainMethod::Sft);
    assert!(a.jobs.is_empty());
    let fx = send(&mut a, [key('L')]);
    assert!(
        matches!(&fx[..], [Effect::LoadCheckpoint(p, None), Effect::ScanCheckpoints] if p.ends_with("smollm2-135m-instruct-sft-lora")),
        "{fx:?}"
    );
    assert_eq!(a.checkpoint, "smollm2-135m-instruct-sft-lora");
    assert!(a.model.loading.is_some());
    // Back on Train, Enter returns to the form; the same output name is now refused unless
    // resumed (the scan lists the adapter).
    let mut rows = ckpt_rows();
    rows.push(CkptRow {
        name: "smollm2-135m-instruct-sft-lora".into(),
        path: "checkpoints/smollm2-135m-instruct-sft-lora".into(),
        info: Some(info(
            "smollm2-135m-instruct-sft-lora",
            "lora",
            4_884_480,
            Some("smollm2-135m-instruct"),
        )),
        error: None,
        default_set: None,
        depth: 1,
        endpoint: None,
    });
    send(
        &mut a,
        [Action::Checkpoints(rows), key('t'), code(KeyCode::Enter)],
    );
    assert!(!a.train.show_run);
    let fx = send(&mut a, [key('r')]);
    assert!(fx.is_empty());
    assert!(a.train.form.error.as_deref().unwrap().contains("it exists"));
    // The base cannot be an adapter or an endpoint.
    a.train.form.base = "smollm2-humanlm-lora".into();
    assert!(humanlm::tui::update::train_plan(&a)
        .unwrap_err()
        .contains("is an adapter"));
    a.train.form.base = "endpoint:http://h/v1#m".into();
    assert!(humanlm::tui::update::train_plan(&a)
        .unwrap_err()
        .contains("local weights"));
    a.train.form.base.clear();
    a.train.form.output = "../elsewhere".into();
    assert!(humanlm::tui::update::train_plan(&a)
        .unwrap_err()
        .starts_with("output name"));
}

/// A user key file as the workbench reads it: written to a temporary file that `HUMANLM_KEYS`
/// names. (Only this file's key tests set the variable; nextest runs each test in its own
/// process.)
fn keys_from_file(text: &str) -> Result<humanlm::tui::keys::Keymap, String> {
    use humanlm::tui::keys::{Keymap, KEYS_ENV};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    std::fs::write(&path, text).unwrap();
    std::env::set_var(KEYS_ENV, &path);
    let map = Keymap::load().map_err(|e| e.to_string());
    std::env::remove_var(KEYS_ENV);
    map
}

fn ctrl_key(c: char) -> Action {
    Action::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
}

#[test]
fn a_key_file_changes_what_keys_do_and_the_help_shows_it() {
    let mut a = app(120, 40);
    a.keys =
        keys_from_file("[global]\nhelp = \"f1\"\n[simulate]\nregenerate = [\"ctrl-r\"]\n").unwrap();
    // `?` no longer opens the help; F1 does, and the help lists F1 for it.
    send(&mut a, [key('?')]);
    assert!(a.help.is_none());
    send(&mut a, [code(KeyCode::F(1))]);
    assert_eq!(a.help, Some(0));
    let screen = render(&mut a, 120, 40);
    assert!(screen.contains("  F1       this help"), "{screen}");
    assert!(!screen.contains("  ?        this help"), "{screen}");
    send(&mut a, [code(KeyCode::Esc)]);
    assert!(a.help.is_none());
    // `r` no longer regenerates; Ctrl-R does.
    let seed = a.sampling.seed;
    assert!(send(&mut a, [key('r')]).is_empty());
    assert_eq!(a.sampling.seed, seed);
    let fx = send(&mut a, [ctrl_key('r')]);
    assert_eq!(a.sampling.seed, seed.wrapping_add(1));
    assert!(matches!(fx.first(), Some(Effect::Simulate(_))), "{fx:?}");
    let help: Vec<String> = humanlm::tui::ui::help::lines_of(&a.keys)
        .iter()
        .map(|l| l.to_string())
        .collect();
    assert!(help
        .iter()
        .any(|l| l.contains("Ctrl-R") && l.contains("regenerate with a new seed")));
    // Without a file, the built-in table.
    assert_eq!(
        keys_from_file("").unwrap(),
        humanlm::tui::keys::Keymap::default()
    );
}

#[test]
fn modal_keys_go_through_the_table_and_text_stays_text() {
    let mut a = app(120, 40);
    a.keys = humanlm::tui::keys::Keymap::parse(
        "[filter]\nback = \"f2\"\n[endpoint_form]\nclear_field = \"ctrl-k\"\n[blind]\nscore = [\"f3\", \"f4\"]\n",
        Path::new("keys.toml"),
    )
    .unwrap();
    // The filter: F2 clears it, Esc is no longer bound there, letters (q too) are text.
    send(&mut a, [key('/')]);
    send(&mut a, typed("quit"));
    assert_eq!(a.browser.filter, "quit");
    assert!(!a.quit);
    send(&mut a, [code(KeyCode::Esc)]);
    assert!(a.browser.filtering);
    send(&mut a, [code(KeyCode::F(2))]);
    assert!(!a.browser.filtering && a.browser.filter.is_empty());
    // The endpoint form: Ctrl-K clears the field, Ctrl-U is no longer bound.
    send(&mut a, [key('m'), key('a')]);
    send(&mut a, typed("http://h/v1"));
    send(&mut a, [ctrl_key('u')]);
    assert_eq!(a.ckpts.form.as_ref().unwrap().fields[0], "http://h/v1");
    send(&mut a, [ctrl_key('k')]);
    assert_eq!(a.ckpts.form.as_ref().unwrap().fields[0], "");
    // The help lists the filter's keys, the overridden one by its new name.
    let help: Vec<String> = humanlm::tui::ui::help::lines_of(&a.keys)
        .iter()
        .map(|l| l.to_string())
        .collect();
    assert!(help.iter().any(|l| l.starts_with("Scenario filter")));
    assert!(help
        .iter()
        .any(|l| l.contains("F2") && l.contains("clear the filter")));
    assert!(help
        .iter()
        .any(|l| l.contains("F3 F4") && l.contains("score")));
}

#[test]
fn a_bad_key_file_is_refused_in_one_line() {
    let e = keys_from_file("[simulate]\nregenerate = \"hyper-r\"\n").unwrap_err();
    assert!(
        e.contains("keys.toml: [simulate] regenerate = \"hyper-r\": not a key name"),
        "{e}"
    );
    let e = keys_from_file("[global]\nhelp = \"j\"\n").unwrap_err();
    assert!(
        e.contains("[global] \"j\" is bound to both help and down"),
        "{e}"
    );
    let e = keys_from_file("[sim]\n").unwrap_err();
    assert!(e.contains("[sim]: unknown context"), "{e}");
    let e = keys_from_file("[simulate]\nexplode = \"x\"\n").unwrap_err();
    assert!(e.contains("[simulate] explode: unknown action here"), "{e}");
    // A file HUMANLM_KEYS names must exist.
    std::env::set_var(humanlm::tui::keys::KEYS_ENV, "/nonexistent/keys.toml");
    let e = humanlm::tui::keys::Keymap::load().unwrap_err().to_string();
    std::env::remove_var(humanlm::tui::keys::KEYS_ENV);
    assert!(e.starts_with("/nonexistent/keys.toml: "), "{e}");
}

/// In a real terminal (tmux), a bad key file stops the workbench before it takes the screen:
/// the error on stderr, exit status 2.
#[test]
fn the_workbench_refuses_a_bad_key_file_before_starting() {
    use std::process::Command;
    if !Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        panic!("tmux is not installed: this test runs the binary in tmux (apt-get install tmux)");
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, "[global]\nquit = \"ctrl-\"\n").unwrap();
    let (err, rc) = (dir.path().join("err"), dir.path().join("rc"));
    let socket = format!("humanlm-keys-{}", std::process::id());
    let script = format!(
        "cd '{}' && HUMANLM_KEYS='{}' '{}' 2>'{}'; echo $? >'{}.tmp' && mv '{}.tmp' '{}'",
        env!("CARGO_MANIFEST_DIR"),
        keys.display(),
        env!("CARGO_BIN_EXE_humanlm"),
        err.display(),
        rc.display(),
        rc.display(),
        rc.display()
    );
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-L")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap()
    };
    let started = tmux(&["new-session", "-d", "-x", "80", "-y", "24", &script]);
    assert!(started.status.success(), "{started:?}");
    let t0 = std::time::Instant::now();
    while !rc.exists() && t0.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = tmux(&["kill-server"]);
    let status = std::fs::read_to_string(&rc).expect("the workbench did not exit");
    assert_eq!(status.trim(), "2");
    let err = std::fs::read_to_string(&err).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("{}: [global] quit = \"ctrl-\"", keys.display())),
        "{err}"
    );
}
