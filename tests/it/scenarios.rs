//! Scenario files: the shipped set, and every kind of bad file giving one clear line.

use crate::common;

use humanlm::scenario::{load_all, Domain, Scenario};
use std::path::Path;

const GOOD: &str = r#"
id = "t-1"
domain = "opinion"
title = "A test thread"

[persona]
interests = ["testing"]

[[turns]]
author = "alice"
text = "First post."

[target]
author = "bob"
response = "A reply."
"#;

fn err_of(text: &str) -> String {
    Scenario::from_toml(text, Path::new("scenarios/x.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn a_valid_file_loads() {
    let s = Scenario::from_toml(GOOD, Path::new("x.toml")).unwrap();
    assert_eq!(s.domain, Domain::Opinion);
    // The target may be absent from the thread: a first reply.
    assert!(!s.target_in_thread());
}

#[test]
fn malformed_toml_names_file_line_and_column() {
    let e = err_of("id = \"t-1\"\ndomain = \"opinion\"\ntitle = = \"x\"\n");
    assert!(e.starts_with("scenarios/x.toml:3:9: "), "{e}");
}

#[test]
fn unknown_domain_is_refused_with_its_position() {
    let e = err_of(&GOOD.replace("\"opinion\"", "\"sports\""));
    assert!(
        e.starts_with("scenarios/x.toml:3:") && e.contains("sports") && e.contains("opinion"),
        "{e}"
    );
}

#[test]
fn empty_thread_and_empty_fields() {
    let no_turns =
        GOOD.split("[[turns]]").next().unwrap().to_string() + "[target]\nauthor = \"bob\"\n";
    assert!(
        err_of(&no_turns).contains("the thread is empty"),
        "{}",
        err_of(&no_turns)
    );
    assert!(err_of(&GOOD.replace("\"First post.\"", "\"  \"")).contains("text is empty"));
}

#[test]
fn unknown_fields_and_mixed_personas_are_refused() {
    let e = err_of(&GOOD.replace("title = ", "tittle = \"x\"\ntitle = "));
    assert!(e.contains("tittle"), "{e}");
    let e = err_of(&GOOD.replace(
        "interests = [\"testing\"]",
        "interests = [\"testing\"]\ntext = \"a person\"",
    ));
    assert!(
        e.contains("either `text` or the structured sections"),
        "{e}"
    );
}

/// Demographics are a table; a list is refused with the field named, not assigned to the fields
/// in order.
#[test]
fn demographics_as_a_list_are_refused() {
    let table = GOOD.replace(
        "interests = [\"testing\"]",
        "interests = [\"testing\"]\ndemographics = { age_group = \"25-34\", gender = \"male\" }",
    );
    let p = Scenario::from_toml(&table, Path::new("x.toml"))
        .unwrap()
        .persona
        .unwrap();
    assert_eq!(p.demographics.unwrap().gender.as_deref(), Some("male"));
    let e = err_of(&GOOD.replace(
        "interests = [\"testing\"]",
        "interests = [\"testing\"]\ndemographics = [\"25-34\", \"male\"]",
    ));
    assert!(e.contains("persona.demographics"), "{e}");
    assert!(e.contains("x.toml") || e.contains("line"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn missing_persona_is_allowed() {
    let text = GOOD.replace("[persona]\ninterests = [\"testing\"]\n", "");
    assert!(Scenario::from_toml(&text, Path::new("x.toml"))
        .unwrap()
        .persona
        .is_none());
}

#[test]
fn check_command_reports_each_bad_file_and_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("good.toml"), GOOD).unwrap();
    std::fs::write(
        tmp.path().join("bad.toml"),
        GOOD.replace("\"opinion\"", "\"sports\""),
    )
    .unwrap();
    std::fs::write(tmp.path().join("dup.toml"), GOOD).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .args(["scenarios", "check", tmp.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.toml:3:") && err.contains("duplicate id 't-1'"),
        "{err}"
    );
}

/// The shipped scenarios: at least 24, at least 4 per domain, each with a persona and a
/// reference reply; one thread longer than 2,000 tokens; some non-ASCII text.
#[test]
fn shipped_scenarios() {
    let all: Vec<_> = load_all(&common::root().join("scenarios"))
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert!(all.len() >= 24, "{} scenarios", all.len());
    for d in Domain::ALL {
        let n = all.iter().filter(|l| l.scenario.domain == d).count();
        assert!(n >= 4, "{n} scenarios in {d}");
    }
    let tok = &common::default_model().tokenizer;
    let mut longest = 0;
    for l in &all {
        let s = &l.scenario;
        assert!(
            s.persona.is_some() && s.target.response.is_some(),
            "{}: persona and response",
            s.id
        );
        let stem = l.path.file_stem().unwrap().to_string_lossy();
        assert_eq!(stem, s.id.as_str(), "file name and id");
        assert_eq!(
            l.path
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy(),
            s.domain.name(),
            "{}: folder",
            s.id
        );
        let tokens: usize = s
            .turns
            .iter()
            .map(|t| tok.encode_rendered(&t.text).unwrap().len())
            .sum();
        longest = longest.max(tokens);
    }
    assert!(longest > 2000, "longest thread has {longest} tokens");
    let non_ascii = all
        .iter()
        .filter(|l| l.scenario.turns.iter().any(|t| !t.text.is_ascii()))
        .count();
    assert!(non_ascii >= 3, "{non_ascii} scenarios with non-ASCII text");
    assert!(all.iter().filter(|l| l.scenario.target_in_thread()).count() >= 4);
}
