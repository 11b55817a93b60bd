//! Prompt sets: loading, inheritance, strict templates, and the judge and trace templates.

use crate::common;

use humanlm::prompts::{list, Layout, PromptSet};
use std::path::{Path, PathBuf};

fn shipped() -> PathBuf {
    common::root().join("prompts")
}

/// A copy of the shipped sets in a temporary folder, to break on purpose.
fn copy_sets() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for set in list(&shipped()) {
        let to = dir.path().join(&set);
        std::fs::create_dir(&to).unwrap();
        for e in std::fs::read_dir(shipped().join(&set)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn load_err(name: &str, root: &Path) -> String {
    PromptSet::load(name, root).unwrap_err().to_string()
}

#[test]
fn shipped_sets_load_with_distinct_hashes() {
    let names = list(&shipped());
    assert!(names.contains(&"humanlm".to_string()) && names.contains(&"instruct".to_string()));
    let h = PromptSet::load("humanlm", &shipped()).unwrap();
    let i = PromptSet::load("instruct", &shipped()).unwrap();
    assert_eq!(h.layout, Layout::Thread);
    assert_eq!(i.layout, Layout::Transcript);
    assert_ne!(h.hash, i.hash);
    assert_eq!(h.hash.len(), 12);
    // Same files, same hash.
    assert_eq!(PromptSet::load("humanlm", &shipped()).unwrap().hash, h.hash);
    // Seven states in the method's order, in both sets.
    for s in [&h, &i] {
        let keys: Vec<&str> = s.states.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "stance",
                "emotion",
                "belief",
                "value",
                "goal",
                "communication",
                "response"
            ]
        );
    }
    // The instruct set inherits the judge templates instead of copying them.
    let judge = i.files.iter().find(|(n, _)| n == "judge.jinja").unwrap();
    assert!(judge.1.ends_with("humanlm/judge.jinja"), "{:?}", judge.1);
    let system = i.files.iter().find(|(n, _)| n == "system.jinja").unwrap();
    assert!(
        system.1.ends_with("instruct/system.jinja"),
        "{:?}",
        system.1
    );
    assert_eq!(i.sampling.repetition_penalty, Some(1.2));
}

#[test]
fn an_edit_changes_the_hash() {
    let dir = copy_sets();
    let before = PromptSet::load("instruct", dir.path()).unwrap().hash;
    // An inherited file is part of the child's hash too.
    let judge = dir.path().join("humanlm/judge.jinja");
    let text = std::fs::read_to_string(&judge).unwrap();
    std::fs::write(
        &judge,
        text.replace("strict evaluator", "careful evaluator"),
    )
    .unwrap();
    assert_ne!(
        PromptSet::load("instruct", dir.path()).unwrap().hash,
        before
    );
}

#[test]
fn unknown_variable_fails_at_load_with_file_and_line() {
    let dir = copy_sets();
    let p = dir.path().join("humanlm/judge.jinja");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str("\n{{ refrence }}\n");
    let line = text.lines().count();
    std::fs::write(&p, text).unwrap();
    let e = load_err("humanlm", dir.path());
    assert!(e.contains(&format!("judge.jinja:{line}")), "{e}");
    // The child set that inherits the file fails the same way.
    let e = load_err("instruct", dir.path());
    assert!(e.contains("judge.jinja"), "{e}");
}

#[test]
fn template_syntax_error_names_file_and_line() {
    let dir = copy_sets();
    let p = dir.path().join("instruct/task.jinja");
    std::fs::write(&p, "line one\n{% if states %}\nno endif\n").unwrap();
    let e = load_err("instruct", dir.path());
    assert!(e.contains("task.jinja:"), "{e}");
}

#[test]
fn missing_files_cycles_and_bad_toml() {
    let dir = copy_sets();
    std::fs::remove_file(dir.path().join("humanlm/trace.jinja")).unwrap();
    let e = load_err("humanlm", dir.path());
    assert!(e.contains("trace.jinja") && e.contains("missing"), "{e}");

    let dir = copy_sets();
    std::fs::write(
        dir.path().join("humanlm/set.toml"),
        "description = \"x\"\ninherits = \"instruct\"\n",
    )
    .unwrap();
    let e = load_err("instruct", dir.path());
    assert!(e.contains("cycle"), "{e}");

    let dir = copy_sets();
    std::fs::write(
        dir.path().join("instruct/set.toml"),
        "description = \"x\"\nlayout = \"sideways\"\n",
    )
    .unwrap();
    let e = load_err("instruct", dir.path());
    assert!(e.contains("set.toml:2"), "{e}");

    let e = load_err("no-such-set", &shipped());
    assert!(e.contains("not found") && e.contains("humanlm"), "{e}");
}

#[test]
fn judge_prompt_numbers_items_and_asks_for_parseable_json() {
    let set = PromptSet::load("humanlm", &shipped()).unwrap();
    let stance = set.state("stance").unwrap();
    let p = set
        .judge(
            stance,
            "[op]\nShould we?",
            "No way.",
            &["agrees", "disagrees strongly"],
        )
        .unwrap();
    assert!(p.contains("<item 1>\nagrees\n</item 1>"), "{p}");
    assert!(p.contains("<item 2>\ndisagrees strongly\n</item 2>"), "{p}");
    assert!(p.contains("No way.") && p.contains("Should we?"));
    // The output skeleton the judge is shown is itself valid JSON with one entry per item.
    let skeleton = p.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(skeleton).expect(skeleton);
    assert!(v["1"]["score"].is_number() && v["2"]["score"].is_number() && v["3"].is_null());
    // The reply's rubric carries the length and copying rules; a state's does not.
    let response = set.state("response").unwrap();
    let r = set.judge(response, "c", "r", &["x"]).unwrap();
    assert!(r.contains("copies the conversation scores 0"));
    assert!(!p.contains("copies the conversation"));

    let a = set
        .judge_aspects("[op]\nShould we?", "No way.", "Nah.")
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(a.lines().last().unwrap()).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 6, "{keys:?}");
    assert!(v["communication"]["score"].is_number());
}

#[test]
fn trace_prompt_holds_persona_context_and_reply() {
    let set = PromptSet::load("humanlm", &shipped()).unwrap();
    let t = set
        .trace("Values:\nhonesty", "[op]\nThoughts?", "Honestly, no.")
        .unwrap();
    assert!(t.contains("Values:\nhonesty") && t.contains("[op]\nThoughts?"));
    assert!(t.contains("Honestly, no.") && t.contains("2 to 4 sentences"));
}
