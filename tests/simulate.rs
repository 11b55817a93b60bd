//! Simulation: golden rendered prompts, and the whole pipeline on the default checkpoint.

mod common;

use humanlm::generate::SamplingParams;
use humanlm::prompts::PromptSet;
use humanlm::scenario::{find, Scenario};
use humanlm::sim::{plan, simulate, Mode};
use std::path::Path;

fn set() -> PromptSet {
    PromptSet::load("humanlm", &common::root().join("prompts")).unwrap()
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
        let calls = plan(&set, &sc, Mode::Humanlm, model).unwrap();
        assert_eq!(calls.len(), 7);
        golden(&format!("{name}-stance.txt"), &calls[0].prompt);
        golden(&format!("{name}-response.txt"), &calls[6].prompt);
        // The target's own earlier turns are relabelled HUMAN; nobody else is.
        assert!(!calls[0]
            .prompt
            .contains(&format!("<name>{}</name>", sc.target.author)));
    }
    let joint = plan(&set, &persona_less(), Mode::Joint, model).unwrap();
    golden("no-persona-joint.txt", &joint[0].prompt);
}

/// Every shipped scenario runs in every mode on the default checkpoint (calls capped at a few
/// tokens to keep CI short; the format-validity rates in the README come from full runs).
#[test]
fn every_scenario_in_every_mode() {
    let set = set();
    let model = common::default_model();
    let all = humanlm::scenario::load_all(&common::root().join("scenarios"));
    let params = SamplingParams {
        max_new_tokens: 6,
        temperature: 0.4,
        no_repeat_ngram: 4,
        seed: 1,
        ..Default::default()
    };
    for l in all {
        let sc = l.unwrap().scenario;
        for mode in [Mode::Humanlm, Mode::Response, Mode::Joint] {
            let (calls, samples) = simulate(model, &set, &sc, mode, &params, None, &mut |_| {})
                .unwrap_or_else(|e| panic!("{} {mode:?}: {e}", sc.id));
            assert_eq!(samples.len(), 1);
            let s = &samples[0];
            assert_eq!(s.stop_reasons.len(), calls.len(), "{} {mode:?}", sc.id);
            if mode == Mode::Humanlm {
                assert_eq!(s.states.len(), 6, "{} {mode:?}", sc.id);
            }
            assert!(s.tokens > 0);
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
        Mode::Response,
        &params,
        None,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("opinion-tipping-culture-long") && err.contains("context of 256 tokens"),
        "{err}"
    );
}
