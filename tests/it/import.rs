//! `humanlm scenarios import`: HUMANUAL rows (JSONL and Parquet) become scenario files.

use crate::common;

use humanlm::scenario::{load_all, Role, Scenario};
use std::path::Path;
use std::process::Command;

fn humanlm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn import(file: &str, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let f = common::fixture(file);
    let mut args = vec![
        "scenarios",
        "import",
        f.to_str().unwrap(),
        "--domain",
        "opinion",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    humanlm(&args)
}

fn loaded(dir: &Path) -> Vec<Scenario> {
    let mut v: Vec<Scenario> = load_all(dir)
        .into_iter()
        .map(|r| r.unwrap().scenario)
        .collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

#[test]
fn jsonl_rows_become_valid_scenarios_and_bad_rows_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = import("humanual/rows.jsonl", dir.path(), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("row 4 skipped: empty thread"), "{stdout}");
    assert!(
        stdout.contains("row 5 skipped: prompt[0] has unknown role 'narrator'"),
        "{stdout}"
    );
    assert!(
        stdout.contains("wrote 3 scenarios") && stdout.contains("skipped 2 rows"),
        "{stdout}"
    );
    let all = loaded(dir.path());
    assert_eq!(all.len(), 3);
    let aita = all.iter().find(|s| s.id == "opinion-t3-abc123-2").unwrap();
    assert_eq!(
        aita.title,
        "AITA for refusing to swap my Christmas shift again?"
    );
    assert_eq!(aita.turns.len(), 3);
    assert_eq!(aita.turns[0].author, "ward_nurse_k");
    assert_eq!(aita.target.author, "ward_nurse_k");
    assert!(aita.target_in_thread());
    assert_eq!(
        aita.target.response.as_deref(),
        Some("I did, twice. She said 'team player' like it was a diagnosis.")
    );
    let p = aita.persona.as_ref().unwrap();
    assert_eq!(
        p.demographics.as_ref().unwrap().occupation.as_deref(),
        Some("nurse")
    );
    assert_eq!(p.communication, ["short paragraphs", "dry humour"]);
    assert!(aita.source.as_deref().unwrap().contains("post t3_abc123"));
    // JSON-string encodings and non-ASCII survive.
    let book = all.iter().find(|s| s.id == "opinion-b00xyz-0").unwrap();
    assert_eq!(
        book.turns[0].text,
        "Ce livre m'a déçue : la fin arrive trop vite."
    );
    assert_eq!(book.turns[0].author, "lectrice_lyon");
    assert!(book.persona.is_none());
    assert!(book.target.response.as_deref().unwrap().contains("★★★★"));
    // Unnamed user turns of a chat-like row fall back to numbered commenters outside `chat`.
    let chat = all.iter().find(|s| s.id == "opinion-conv-77-1").unwrap();
    assert_eq!(chat.turns[1].role, Role::Assistant);
    assert_eq!(
        chat.persona.as_ref().unwrap().communication,
        ["lowercase", "terse"]
    );
}

#[test]
fn parquet_gives_the_same_scenarios_as_jsonl() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    assert_eq!(import("humanual/rows.jsonl", a.path(), &[]).0, 0);
    let (code, stdout, stderr) = import("humanual/rows.parquet", b.path(), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("wrote 3 scenarios"), "{stdout}");
    assert_eq!(loaded(a.path()), loaded(b.path()));
}

#[test]
fn chat_domain_names_unnamed_user_turns_after_the_person() {
    let dir = tempfile::tempdir().unwrap();
    let f = common::fixture("humanual/rows.jsonl");
    let (code, _, stderr) = humanlm(&[
        "scenarios",
        "import",
        f.to_str().unwrap(),
        "--domain",
        "chat",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let chat = loaded(dir.path())
        .into_iter()
        .find(|s| s.id == "chat-conv-77-1")
        .unwrap();
    assert_eq!(chat.turns[0].author, "wildchat-u-9");
    assert_eq!(chat.target.author, "wildchat-u-9");
}

#[test]
fn limit_existing_files_and_force() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = import("humanual/rows.jsonl", dir.path(), &["--limit", "1"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("wrote 1 scenarios"), "{stdout}");
    let file = dir.path().join("opinion-t3-abc123-2.toml");
    std::fs::write(
        &file,
        std::fs::read_to_string(&file).unwrap() + "# my edit\n",
    )
    .unwrap();
    let (code, stdout, _) = import("humanual/rows.jsonl", dir.path(), &[]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("wrote 2 scenarios") && stdout.contains("kept 1 existing"),
        "{stdout}"
    );
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("# my edit"));
    let (code, _, _) = import("humanual/rows.jsonl", dir.path(), &["--force"]);
    assert_eq!(code, 0);
    assert!(!std::fs::read_to_string(&file)
        .unwrap()
        .contains("# my edit"));
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".toml") && !n.starts_with('.')),
        "{names:?}"
    );
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = humanlm(&[
        "scenarios",
        "import",
        "tests/fixtures/humanual/rows.jsonl",
        "--domain",
        "sports",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown domain 'sports'") && err.contains("opinion"),
        "{err}"
    );

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": []}\nnot json\n").unwrap();
    let (code, _, err) = humanlm(&[
        "scenarios",
        "import",
        bad.to_str().unwrap(),
        "--domain",
        "news",
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.jsonl:2:") && err.lines().count() == 1,
        "{err}"
    );

    let fake = dir.path().join("fake.parquet");
    std::fs::write(&fake, "PAR1 but not really").unwrap();
    let (code, _, err) = humanlm(&[
        "scenarios",
        "import",
        fake.to_str().unwrap(),
        "--domain",
        "news",
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("fake.parquet") && err.contains("Parquet"),
        "{err}"
    );

    let none = dir.path().join("none.jsonl");
    std::fs::write(&none, "{\"prompt\": []}\n").unwrap();
    let (code, out, err) = humanlm(&[
        "scenarios",
        "import",
        none.to_str().unwrap(),
        "--domain",
        "news",
        "--out",
        dir.path().join("out2").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("no row could be converted"), "{err}");
}
