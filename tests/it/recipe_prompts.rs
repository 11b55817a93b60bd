//! `humanlm prompts import`: a set made from a recipe-layout folder (the fixture's own texts in
//! the HumanLM recipe's file layout) renders, for published-layout HUMANUAL rows of every
//! dataset, exactly what the recipe's logic gives the model (and what its judge is asked):
//! `tests/fixtures/recipe/goldens.json`,
//! derived by `make_goldens.py` in Python (Jinja2 for the chat template) independently of this
//! code.

use crate::common;
use humanlm::prompts::recipe::{import, ImportSpec};
use humanlm::prompts::PromptSet;
use humanlm::scenario::import::{read_rows, row_to_scenario};
use humanlm::scenario::{Domain, Scenario};
use humanlm::sim::{self, Mode, Options, SamplingChoice, Truncate};
use serde_json::Value;
use std::path::Path;

/// The two generations the goldens' judge prompts score (make_goldens.py's JUDGED).
const JUDGED: [&str; 2] = [
    "  Then put it in writing ",
    "NTA \u{2014} \"team player\" is code\nfor doormat",
];
/// The reply the goldens' response-level judge requests score (make_goldens.py's
/// ASPECTS_RESPONSE): braces, a non-ASCII character, and spaces around it that the recipe strips.
const ASPECTS_RESPONSE: &str =
    "\n  Put the {deposit} rules in writing \u{2014} {{all}} of them }{ \n";
const CONFIGS: [&str; 4] = ["sebvgcr", "r", "r_no_tag", "think_r"];
const DOMAINS: [Domain; 6] = [
    Domain::Opinion,
    Domain::Book,
    Domain::News,
    Domain::Politics,
    Domain::Chat,
    Domain::Email,
];

fn recipe() -> std::path::PathBuf {
    common::fixture("recipe/humanlm")
}

fn goldens() -> Value {
    let text = std::fs::read_to_string(common::fixture("recipe/goldens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn published() -> Vec<Scenario> {
    let rows = read_rows(&common::fixture("humanual/published.jsonl")).unwrap();
    rows.iter()
        .zip(DOMAINS)
        .map(|(r, d)| row_to_scenario(r, d).unwrap_or_else(|e| panic!("{d:?}: {e}")))
        .collect()
}

/// A prompts root holding the shipped `humanlm` set (the imported sets inherit its judges).
fn root_with_default_set() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::copy_prompt_set("humanlm", &dir.path().join("humanlm"));
    dir
}

fn spec(config: &str, name: &str) -> ImportSpec {
    ImportSpec {
        recipe: recipe(),
        config: config.into(),
        name: name.into(),
        chat_template: None,
        thinking: true,
        overwrite: false,
    }
}

/// The fields of a call the goldens hold, from a plan's JSON.
fn call_fields(call: &Value) -> Value {
    serde_json::json!({
        "name": call["name"], "chat_messages": call["chat_messages"], "prompt": call["prompt"],
        "thinking": call["thinking"], "stop": call["stop"], "budget": call["budget"],
    })
}

fn first_difference(a: &str, b: &str) -> String {
    let at = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map(|((i, _), _)| i)
        .unwrap_or(a.len().min(b.len()));
    let from = a[..at]
        .char_indices()
        .rev()
        .nth(60)
        .map(|x| x.0)
        .unwrap_or(0);
    format!(
        "at byte {at}: ours …{:?}… golden …{:?}…",
        &a[from..(at + 60).min(a.len())],
        b.get(from..(at + 60).min(b.len())).unwrap_or("")
    )
}

#[test]
fn imported_sets_render_every_dataset_as_the_recipe_does() {
    let root = root_with_default_set();
    let goldens = goldens();
    let scenarios = published();
    let model = common::default_model();
    for config in CONFIGS {
        let name = format!("recipe-{config}");
        let done = import(&spec(config, &name), root.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(done
            .sources
            .iter()
            .any(|(f, h)| f.ends_with(".json") && h.len() == 64));
        let set = PromptSet::load(&name, root.path()).unwrap();
        // The recipe's no-tag runs write the reply bare.
        assert_eq!(set.untagged_reply, config.ends_with("_no_tag"), "{config}");
        for (sc, domain) in scenarios.iter().zip(DOMAINS) {
            let want = &goldens[config][domain.name()];
            // The judge's request for every state, as the recipe's batched state judge words it.
            let context = set.thread(&sim::thread_turns(sc)).unwrap();
            let reference = sc.target.response.as_deref().unwrap();
            for state in &set.states {
                let got = set.judge(state, &context, reference, &JUDGED).unwrap();
                let golden = want["judge"][&state.key].as_str().unwrap();
                assert!(
                    got == golden,
                    "{config} {domain} judge {}: {}",
                    state.key,
                    first_difference(&got, golden)
                );
            }
            for mode in [Mode::Humanlm, Mode::Joint] {
                let Some(want) = want.get(mode.name()) else {
                    continue;
                };
                let opts = Options {
                    mode,
                    params: SamplingChoice::default().params(&set),
                    truncate: Truncate::None,
                };
                let plan = sim::plan(&set, sc, &opts, model).unwrap();
                let got: Vec<Value> = plan
                    .calls
                    .iter()
                    .map(|c| call_fields(&serde_json::to_value(c).unwrap()))
                    .collect();
                let want = want.as_array().unwrap();
                assert_eq!(got.len(), want.len(), "{config} {domain} {mode:?}");
                for (g, w) in got.iter().zip(want) {
                    let what = format!("{config} {domain} {mode:?} call {}", w["name"]);
                    let (gp, wp) = (g["prompt"].as_str().unwrap(), w["prompt"].as_str().unwrap());
                    assert!(
                        gp == wp,
                        "{what}: prompt differs {}",
                        first_difference(gp, wp)
                    );
                    assert_eq!(g, w, "{what}");
                }
            }
        }
    }
}

#[test]
fn an_imported_sets_aspects_judge_asks_as_the_recipes_response_level_judge() {
    let root = root_with_default_set();
    let goldens = goldens();
    import(&spec("sebvgcr", "seb"), root.path()).unwrap_or_else(|e| panic!("{e}"));
    let set = PromptSet::load("seb", root.path()).unwrap();
    let set_toml = std::fs::read_to_string(root.path().join("seb/set.toml")).unwrap();
    assert!(
        set_toml.contains("judge_aspects = \"judge/aspects.txt\""),
        "{set_toml}"
    );
    assert!(set
        .files
        .iter()
        .all(|(name, _)| name != "judge_aspects.jinja"));
    for (sc, domain) in published().iter().zip(DOMAINS) {
        let context = set.thread(&sim::thread_turns(sc)).unwrap();
        let reference = sc.target.response.as_deref().unwrap();
        let got = set
            .judge_aspects(&context, reference, ASPECTS_RESPONSE)
            .unwrap();
        let golden = goldens["sebvgcr"][domain.name()]["aspects"]
            .as_str()
            .unwrap();
        assert!(
            got == golden,
            "{domain} aspects: {}",
            first_difference(&got, golden)
        );
    }

    // A checkout without the file (older recipe versions): the import still works and the set
    // asks with the inherited judge_aspects.jinja.
    let copy = recipe_copy();
    std::fs::remove_file(copy.path().join("metrics/state_reward_on_response.py")).unwrap();
    let mut s = spec("sebvgcr", "old");
    s.recipe = copy.path().to_path_buf();
    let done = import(&s, root.path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(done.sources.iter().all(|(f, _)| !f.contains("on_response")));
    assert!(!root.path().join("old/judge/aspects.txt").exists());
    let old = PromptSet::load("old", root.path()).unwrap();
    let own = old.judge_aspects("c", "r", "x").unwrap();
    let jinja = &old
        .files
        .iter()
        .find(|(name, _)| name == "judge_aspects.jinja")
        .unwrap()
        .1;
    assert!(jinja.starts_with(root.path().join("humanlm")), "{jinja:?}");
    assert!(own.contains("\"communication\": {\"thought\""), "{own}");
}

#[test]
fn the_cli_imports_a_set_and_shows_the_recipes_prompt_as_json() {
    let root = root_with_default_set();
    let scenarios = tempfile::tempdir().unwrap();
    let sc = &published()[0];
    let file = scenarios.path().join("opinion.toml");
    std::fs::write(&file, toml::to_string(sc).unwrap()).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_humanlm"))
            .args(args)
            .env("HUMANLM_PROMPTS", root.path())
            .env("HUMANLM_CHECKPOINTS", common::checkpoints())
            .output()
            .unwrap()
    };
    let recipe = recipe();
    let out = run(&[
        "prompts",
        "import",
        recipe.to_str().unwrap(),
        "--name",
        "seb",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["states"].as_array().unwrap().len(), 7);
    // source.toml names every file read with its sha256.
    let source = std::fs::read_to_string(root.path().join("seb/source.toml")).unwrap();
    for f in [
        "state_config/sebvgcr.json",
        "system_prompts/base.txt",
        "process_dataset.py",
        "metrics/state_reward.py",
        "metrics/state_reward_on_response.py",
    ] {
        assert!(source.contains(f), "{source}");
    }
    // A second import under the same name is refused; --force replaces it.
    let again = run(&[
        "prompts",
        "import",
        recipe.to_str().unwrap(),
        "--name",
        "seb",
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let out = run(&[
        "simulate",
        "--scenario",
        file.to_str().unwrap(),
        "--prompts",
        "seb",
        "--prompt-only",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<Value> = plan["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(call_fields)
        .collect();
    assert_eq!(
        Value::Array(got),
        goldens()["sebvgcr"]["opinion"]["humanlm"],
        "simulate --prompt-only --json"
    );
}

/// Copy of the fixture recipe folder, to break on purpose.
fn recipe_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                copy(&p, &to.join(p.file_name().unwrap()));
            } else {
                std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    copy(&recipe(), dir.path());
    dir
}

#[test]
fn what_the_import_does_not_understand_is_refused_naming_file_and_line() {
    let root = root_with_default_set();
    let edit = |rel: &str, from: &str, to: &str| {
        let copy = recipe_copy();
        let p = copy.path().join(rel);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{rel} lacks {from:?}");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
        copy
    };
    let cases = [
        (
            edit(
                "system_prompts/sebvgcr_goal.txt",
                "{persona}",
                "{persona} for {post}",
            ),
            "sebvgcr",
            "sebvgcr_goal.txt:5: unknown placeholder {post}",
        ),
        (
            edit(
                "system_prompts/base.txt",
                "{additional_notes}",
                "{additional_notes!r}",
            ),
            "r",
            "base.txt:16: placeholder {additional_notes!r} is not a plain field name",
        ),
        (
            edit(
                "state_config/sebvgcr.json",
                "sebvgcr_value.txt",
                "nowhere.txt",
            ),
            "sebvgcr",
            "system_prompt",
        ),
        (
            edit(
                "state_config/r.json",
                "\"max_tokens\": 512",
                "\"max_tokens\": \"many\"",
            ),
            "r",
            "r.json:2: state `response`: no positive integer `max_tokens`",
        ),
        (
            edit(
                "process_dataset.py",
                "additional_notes = \"- Write",
                "notes = \"- Write",
            ),
            "r",
            "process_dataset.py: no non-empty `additional_notes",
        ),
        (
            edit(
                "metrics/state_reward.py",
                "{json.dumps(generations_dict, indent=2)}",
                "{json.dumps(generations_dict)}",
            ),
            "r",
            "state_reward.py:36: generations_text: placeholder {json.dumps(generations_dict)} is \
             not a plain field name",
        ),
        (
            edit(
                "metrics/state_reward_on_response.py",
                "{state_names}",
                "{state_list}",
            ),
            "sebvgcr",
            "state_reward_on_response.py:9: STATE_PROMPT_BATCHED: unknown placeholder {state_list}",
        ),
        (
            edit(
                "metrics/state_reward_on_response.py",
                "\\n{generation}\\n",
                "\\n{generation.strip()}\\n",
            ),
            "r",
            "state_reward_on_response.py:44: generation_text: placeholder {generation.strip()} is \
             not a plain field name",
        ),
        (recipe_copy(), "sebvgc", "sebvgc.json: cannot read"),
    ];
    for (copy, config, says) in cases {
        let mut s = spec(config, "broken");
        s.recipe = copy.path().to_path_buf();
        let e = import(&s, root.path()).unwrap_err().to_string();
        assert!(e.contains(says), "{config}: {e}");
        // Nothing is left behind.
        assert!(!root.path().join("broken").exists());
        let leftovers: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}

#[test]
fn the_goldens_are_what_the_reference_script_derives() {
    let out = std::process::Command::new(common::test_python())
        .arg(common::fixture("recipe/make_goldens.py"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
