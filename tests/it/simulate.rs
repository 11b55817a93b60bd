//! Simulation: golden rendered prompts, and the whole pipeline on the default checkpoint.

use crate::common;

use humanlm::generate::SamplingParams;
use humanlm::prompts::PromptSet;
use humanlm::scenario::{find, Scenario};
use humanlm::sim::{plan, simulate, Mode, Options, Truncate};
use std::path::Path;

fn set() -> PromptSet {
    load_set("humanlm")
}

fn load_set(name: &str) -> PromptSet {
    PromptSet::load(name, &common::root().join("prompts")).unwrap()
}

fn opts(mode: Mode) -> Options {
    Options::new(mode, SamplingParams::default())
}

/// Compare with a committed file; `UPDATE_GOLDEN=1` rewrites it (review the diff!).
fn golden(name: &str, got: &str) {
    let path = common::root().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(got, want, "{name} differs from the golden file");
}

fn persona_less() -> Scenario {
    let text = r#"
id = "golden-no-persona"
domain = "chat"
title = "A short chat"
[[turns]]
author = "sam"
text = "Can you help me plan a picnic?"
[[turns]]
author = "assistant"
role = "assistant"
text = "Sure! How many people, and where?"
[target]
author = "sam"
"#;
    Scenario::from_toml(text, Path::new("golden.toml")).unwrap()
}

#[test]
fn golden_prompts() {
    let set = set();
    let model = common::default_model();
    let rich = find("book-middlemarch-01", &common::root().join("scenarios"))
        .unwrap()
        .scenario;
    for (name, sc) in [("rich", rich), ("no-persona", persona_less())] {
        let calls = plan(&set, &sc, &opts(Mode::Humanlm), model).unwrap().calls;
        assert_eq!(calls.len(), 7);
        golden(&format!("{name}-stance.txt"), &calls[0].prompt);
        golden(&format!("{name}-response.txt"), &calls[6].prompt);
        // The target's own earlier turns are relabelled HUMAN; nobody else is.
        assert!(!calls[0]
            .prompt
            .contains(&format!("<name>{}</name>", sc.target.author)));
    }
    let joint = plan(&set, &persona_less(), &opts(Mode::Joint), model)
        .unwrap()
        .calls;
    golden("no-persona-joint.txt", &joint[0].prompt);
}

/// The instruct set: the whole thread in one user message, the model answering as the
/// assistant with the opening tag pre-filled, through the checkpoint's own chat template.
#[test]
fn golden_prompts_instruct_set() {
    let set = load_set("instruct");
    let model = common::default_model();
    let rich = find("book-middlemarch-01", &common::root().join("scenarios"))
        .unwrap()
        .scenario;
    let calls = plan(&set, &rich, &opts(Mode::Humanlm), model)
        .unwrap()
        .calls;
    assert_eq!(calls.len(), 7);
    golden("instruct-rich-stance.txt", &calls[0].prompt);
    golden("instruct-rich-response.txt", &calls[6].prompt);
    assert!(calls[0].prompt.ends_with("<|im_start|>assistant\n<stance>"));
    assert_eq!(calls[0].prefill, "<stance>");
    // The reply of an instruct model is not generated with thinking on.
    assert!(!calls[6].thinking);
    let joint = plan(&set, &persona_less(), &opts(Mode::Joint), model)
        .unwrap()
        .calls;
    golden("instruct-no-persona-joint.txt", &joint[0].prompt);
}

/// Every call capped at a few tokens: what these tests prove is the plumbing, not the text (the
/// format-validity rates in the README come from full runs).
fn short_params(repetition_penalty: f32) -> SamplingParams {
    SamplingParams {
        max_new_tokens: 6,
        temperature: 0.4,
        repetition_penalty,
        no_repeat_ngram: 4,
        seed: 1,
        ..Default::default()
    }
}

const MODES: [Mode; 3] = [Mode::Humanlm, Mode::Response, Mode::Joint];

/// Every shipped scenario plans, renders and fits the default checkpoint's context in every mode
/// of both shipped prompt sets: one call per state plus the response in HumanLM mode, one
/// otherwise, each prompt tokenized, ending with its pre-filled tag, and leaving room for its
/// budget. Planning is all of a simulation but the generation, so this covers every scenario in
/// seconds; `simulate_runs_in_every_mode_and_set` runs the generation itself.
#[test]
fn every_scenario_plans_in_every_mode_and_set() {
    let model = common::default_model();
    let context = model.decoder.max_positions();
    let all = humanlm::scenario::load_all(&common::root().join("scenarios"));
    assert!(all.len() >= 29, "{} scenarios", all.len());
    for set_name in ["humanlm", "instruct"] {
        let set = load_set(set_name);
        for l in &all {
            let sc = &l.as_ref().unwrap().scenario;
            for mode in MODES {
                let o = Options::new(mode, short_params(1.0));
                let calls = plan(&set, sc, &o, model)
                    .unwrap_or_else(|e| panic!("{set_name} {} {mode:?}: {e}", sc.id))
                    .calls;
                let want = if mode == Mode::Humanlm { 7 } else { 1 };
                assert_eq!(calls.len(), want, "{set_name} {} {mode:?}", sc.id);
                for c in &calls {
                    let at = format!("{set_name} {} {mode:?} {}", sc.id, c.name);
                    assert_eq!(c.ids.len(), c.prompt_tokens, "{at}");
                    assert!(c.prompt_tokens > 0 && c.budget > 0, "{at}");
                    assert!(c.prompt_tokens + c.budget <= context, "{at}");
                    assert!(c.prompt.ends_with(&c.prefill), "{at}");
                }
            }
        }
    }
}

/// The shortest shipped scenario, by its response prompt under the given set.
fn shortest_scenario(set: &PromptSet) -> Scenario {
    let model = common::default_model();
    let o = Options::new(Mode::Response, short_params(1.0));
    humanlm::scenario::load_all(&common::root().join("scenarios"))
        .into_iter()
        .map(|l| l.unwrap().scenario)
        .min_by_key(|sc| plan(set, sc, &o, model).unwrap().calls[0].prompt_tokens)
        .unwrap()
}

/// `simulate()` end to end on the default checkpoint, in every mode of both shipped sets, on the
/// shortest scenario: every call generates and stops, HumanLM mode fills six states, and the
/// instruct set puts its pre-filled tags back before parsing (six tokens never reach a closing
/// tag, so each call stops on length and keeps what it wrote raw, without the pre-filled tag).
/// The same on every scenario is `every_scenario_simulates_in_every_mode` (ignored: minutes).
#[test]
fn simulate_runs_in_every_mode_and_set() {
    let model = common::default_model();
    for (set_name, penalty) in [("humanlm", 1.0), ("instruct", 1.2)] {
        let set = load_set(set_name);
        let sc = shortest_scenario(&set);
        for mode in MODES {
            check_simulation(model, &set, &sc, mode, penalty);
        }
    }
}

fn check_simulation(
    model: &humanlm::model::Model,
    set: &PromptSet,
    sc: &Scenario,
    mode: Mode,
    repetition_penalty: f32,
) {
    let o = Options::new(mode, short_params(repetition_penalty));
    let (plan, samples) = simulate(model, set, sc, &o, None, &mut |_| {})
        .unwrap_or_else(|e| panic!("{} {mode:?}: {e}", sc.id));
    assert_eq!(samples.len(), 1);
    let s = &samples[0];
    assert_eq!(s.stop_reasons.len(), plan.calls.len(), "{} {mode:?}", sc.id);
    assert_eq!(s.outputs.len(), plan.calls.len(), "{} {mode:?}", sc.id);
    if mode == Mode::Humanlm {
        assert_eq!(s.states.len(), 6, "{} {mode:?}", sc.id);
    }
    assert!(s.tokens > 0);
    for call in &plan.calls {
        let out = &s.outputs[&call.name];
        if !call.prefill.is_empty() {
            assert!(
                !out.raw.starts_with(&call.prefill),
                "{} {mode:?} {}: {:?}",
                sc.id,
                call.name,
                out.raw
            );
        }
    }
}

/// Every shipped scenario through `simulate()` in every mode of both sets: about 170 calls and
/// 290k prompt tokens on two cores, so it is left out of `make test`; run it with
/// `cargo test --release -- --ignored every_scenario_simulates` (README, "Tests").
#[test]
#[ignore = "minutes of prefill; run by name (README, Tests)"]
fn every_scenario_simulates_in_every_mode() {
    let model = common::default_model();
    for (set_name, penalty) in [("humanlm", 1.0), ("instruct", 1.2)] {
        let set = load_set(set_name);
        for l in humanlm::scenario::load_all(&common::root().join("scenarios")) {
            let sc = l.unwrap().scenario;
            for mode in MODES {
                check_simulation(model, &set, &sc, mode, penalty);
            }
        }
    }
}

/// A scenario longer than the model's context is refused with the token counts, never cut
/// silently.
#[test]
fn scenario_longer_than_context_is_refused() {
    use humanlm::model::weights::LoadOptions;
    let tiny = common::load(
        common::fixture("tiny/llama").to_str().unwrap(),
        LoadOptions::default(),
    );
    let sc = find(
        "opinion-tipping-culture-long",
        &common::root().join("scenarios"),
    )
    .unwrap()
    .scenario;
    let params = SamplingParams {
        max_new_tokens: 4,
        ..Default::default()
    };
    let err = simulate(
        &tiny,
        &set(),
        &sc,
        &Options::new(Mode::Response, params),
        None,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("opinion-tipping-culture-long")
            && err.contains("context of 256 tokens")
            && err.contains("--truncate oldest"),
        "{err}"
    );
}

/// `Truncate::Oldest` drops the oldest turns after the post until the prompt fits, and says
/// how many it dropped; when even the post and one reply do not fit, it refuses.
#[test]
fn truncation_drops_oldest_turns_and_says_so() {
    use humanlm::model::weights::LoadOptions;
    let tiny = common::load(
        common::fixture("tiny/llama").to_str().unwrap(),
        LoadOptions::default(),
    );
    // A set with a one-line system prompt, so a short thread fits the tiny model's 256 tokens.
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    common::copy_prompt_set("humanlm", &short);
    std::fs::write(short.join("system.jinja"), "Reply as HUMAN.").unwrap();
    let set = PromptSet::load(short.to_str().unwrap(), dir.path()).unwrap();
    let mut text = String::from(
        "id = \"long-thread\"\ndomain = \"opinion\"\ntitle = \"t\"\n[[turns]]\nauthor = \"op\"\ntext = \"Is this a good idea?\"\n",
    );
    for i in 0..12 {
        text.push_str(&format!(
            "[[turns]]\nauthor = \"user{i}\"\ntext = \"{}\"\n",
            "I have thoughts about this and they are long. ".repeat(3)
        ));
    }
    text.push_str("[target]\nauthor = \"op\"\n");
    let sc = Scenario::from_toml(&text, Path::new("long.toml")).unwrap();
    let params = SamplingParams {
        max_new_tokens: 4,
        ..Default::default()
    };
    let mut o = Options::new(Mode::Response, params);
    let refused = plan(&set, &sc, &o, &tiny).unwrap_err().to_string();
    assert!(
        refused.contains("beyond the context of 256 tokens"),
        "{refused}"
    );
    o.truncate = Truncate::Oldest;
    let p = plan(&set, &sc, &o, &tiny).unwrap();
    assert!(
        p.dropped_turns > 0 && p.dropped_turns < 12,
        "{}",
        p.dropped_turns
    );
    let call = &p.calls[0];
    assert!(call.prompt_tokens + call.budget <= 256);
    // The post stays; the newest turns stay; the oldest replies went.
    assert!(call.prompt.contains("Is this a good idea?"));
    assert!(call.prompt.contains("<name>user11</name>"));
    assert!(!call.prompt.contains("<name>user0</name>"));
    // One turn fewer dropped would not have fitted: the policy drops no more than it must.
    let mut fewer = sc.clone();
    fewer.turns.drain(1..p.dropped_turns);
    o.truncate = Truncate::None;
    assert!(plan(&set, &fewer, &o, &tiny).is_err());
}
