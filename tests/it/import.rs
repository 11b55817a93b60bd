//! `humanlm scenarios import`: HUMANUAL rows (JSONL and Parquet) become scenario files.

use crate::common;

use humanlm::scenario::{load_all, Role, Scenario, Source, Timestamp};
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
    // The recipe's persona filter: the chat row's persona has one list item (its communication
    // is a string, which counts nothing).
    assert!(
        stdout
            .contains("row 3 skipped: persona has 1 list items, fewer than --min-persona-items 10"),
        "{stdout}"
    );
    assert!(
        stdout.contains("wrote 3 scenarios") && stdout.contains("skipped 2 rows"),
        "{stdout}"
    );
    let all = loaded(dir.path());
    assert_eq!(all.len(), 3);
    // A role is the author's id in the published layout, whatever it says.
    let told = all.iter().find(|s| s.id == "opinion-p-role-0").unwrap();
    assert_eq!(told.turns[0].author, "narrator");
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
    // Persona values as written (the recipe renders them verbatim): padding kept, "NA" and an
    // empty demographic kept, only the exactly empty list item dropped.
    assert_eq!(
        p.interests,
        ["night shifts", "cycling", "  board games ", "hill walking"]
    );
    assert_eq!(
        p.statistics,
        ["about 40 comments a month", "mostly evenings"]
    );
    let demo = p.demographics.as_ref().unwrap();
    assert_eq!(demo.nationality.as_deref(), Some("NA"));
    assert_eq!(demo.other.as_deref(), Some(""));
    // The row's identity, as a table.
    let src = aita.source.as_ref().unwrap();
    assert_eq!(
        src,
        &Source {
            dataset: Some("reddit".into()),
            file: Some("rows.jsonl".into()),
            row: Some(1),
            post_id: Some("t3_abc123".into()),
            user_id: Some("ward_nurse_k".into()),
            timestamp: Some(Timestamp::Text("2025-12-03T21:14:00Z".into())),
            turn_id: Some(2),
            ..Default::default()
        }
    );
    assert_eq!(
        src.summary(),
        "reddit rows.jsonl row 1, post t3_abc123, user ward_nurse_k, turn 2, time 2025-12-03T21:14:00Z"
    );
    let text = std::fs::read_to_string(dir.path().join("opinion-t3-abc123-2.toml")).unwrap();
    assert!(text.contains("[source]\ndataset = \"reddit\"\n"), "{text}");
    // JSON-string encodings and non-ASCII survive.
    let book = all.iter().find(|s| s.id == "opinion-b00xyz-0").unwrap();
    assert_eq!(
        book.turns[0].text,
        "Ce livre m'a déçue : la fin arrive trop vite."
    );
    assert_eq!(book.turns[0].author, "lectrice_lyon");
    assert!(book.persona.is_none());
    assert!(book.target.response.as_deref().unwrap().contains("★★★★"));
    // Unnamed user turns of a chat-like row fall back to numbered commenters outside `chat`;
    // the filter off, the chat row with its small persona imports too.
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = import(
        "humanual/rows.jsonl",
        dir.path(),
        &["--min-persona-items", "0"],
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("wrote 4 scenarios"), "{stdout}");
    let all = loaded(dir.path());
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
    // The Parquet file holds the JSONL file's first three rows; the chat row's small persona
    // is filtered out of both.
    assert!(
        stdout.contains("wrote 2 scenarios") && stdout.contains("row 3 skipped: persona has 1"),
        "{stdout}"
    );
    let from_jsonl = loaded(a.path());
    let from_parquet = loaded(b.path());
    assert_eq!(from_parquet.len(), 2);
    for s in &from_parquet {
        // The same row of another file: only the source's file name differs.
        let mut s = s.clone();
        let src = s.source.as_mut().unwrap();
        assert_eq!(src.file.as_deref(), Some("rows.parquet"));
        src.file = Some("rows.jsonl".into());
        assert_eq!(Some(&s), from_jsonl.iter().find(|j| j.id == s.id));
    }
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
        "--min-persona-items",
        "0",
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

/// One row of each HUMANUAL dataset in the published layout (`prompt[i].role` is the author id,
/// metadata as JSON strings; tests/fixtures/humanual/make_published.py): every row imports, each
/// turn's author and text as the HumanLM recipe reads them, and the person's own earlier turns
/// are theirs (the simulator shows them as HUMAN).
#[test]
fn published_rows_of_every_dataset_import_as_the_recipe_reads_them() {
    use humanlm::scenario::import::{read_rows, row_to_scenario};
    use humanlm::scenario::{Domain, Role};
    let rows = read_rows(&common::fixture("humanual/published.jsonl")).unwrap();
    let domains = [
        Domain::Opinion,
        Domain::Book,
        Domain::News,
        Domain::Politics,
        Domain::Chat,
        Domain::Email,
    ];
    assert_eq!(rows.len(), domains.len());
    let sc: Vec<Scenario> = rows
        .iter()
        .zip(domains)
        .map(|(r, d)| row_to_scenario(r, d).unwrap_or_else(|e| panic!("{d:?}: {e}")))
        .collect();
    let authors =
        |s: &Scenario| -> Vec<String> { s.turns.iter().map(|t| t.author.clone()).collect() };

    // Reddit: the metadata's author; the person's earlier comment is theirs.
    assert_eq!(
        authors(&sc[0]),
        ["ward_nurse_k", "night_owl_22", "ward_nurse_k"]
    );
    assert_eq!(sc[0].target.author, "night_owl_22");
    let demographics = sc[0]
        .persona
        .as_ref()
        .unwrap()
        .demographics
        .clone()
        .unwrap();
    assert_eq!(demographics.age_group.as_deref(), Some("25-34"));
    assert_eq!(demographics.occupation.as_deref(), Some("nurse"));

    // Amazon: the store, and the item sheet built from the item's metadata.
    assert_eq!(authors(&sc[1]), ["Amazon store: Penguin Classics"]);
    assert_eq!(
        sc[1].turns[0].text,
        "- Category: Books->Science Fiction & Fantasy->Fantasy\n\
         - Title: A Wizard of Earthsea\n\
         - Subtitle: Paperback – 2012\n\
         - Price: 9.99\n\
         - Author: Ursula K. Le Guin\n\
         \x20 American author. Wrote Earthsea.\n\
         - Description: A boy learns the true names of things. The first Earthsea book.\n\
         - Features:\nPaperback edition With maps\n\
         - Details:\n  Publisher: Penguin\n  Language: English\n  Paperback: 240 pages"
    );

    // YouTube: the video by its channel, shown as title, description and transcript; the
    // comment by its author's display name.
    assert_eq!(authors(&sc[2]), ["City News Tonight", "@riverside"]);
    assert_eq!(
        sc[2].turns[0].text,
        "- Title: Council votes to close the library\n\n\
         - Description: The council voted 5-4 last night.\n\n\
         - Transcript: Good evening. The library closes in March."
    );
    assert_eq!(
        sc[2].persona.as_ref().unwrap().text.as_deref(),
        Some("No training data available for this user")
    );

    // Medium: the role; the leading POLITICS line dropped.
    assert_eq!(authors(&sc[3]), ["f3a9c2d1"]);
    assert_eq!(
        sc[3].turns[0].text,
        "Why ranked-choice voting keeps winning local referendums."
    );

    // WildChat: the model's turn is the assistant's, every other turn the person's.
    assert_eq!(sc[4].turns[0].author, "7be2a1f0c9");
    assert_eq!(sc[4].turns[0].role, Role::User);
    assert_eq!(sc[4].turns[1].role, Role::Assistant);
    assert_eq!(sc[4].target.author, "7be2a1f0c9");

    // Enron: the sender; the person's first email is theirs.
    assert_eq!(
        authors(&sc[5]),
        ["jeff.dasovich@enron.com", "sara.shackleton@enron.com"]
    );
    assert_eq!(sc[5].target.author, sc[5].turns[0].author);
    for s in &sc {
        assert!(s.target.response.is_some(), "{}", s.id);
    }

    // Each row's identity: the recipe's dataset name, the row, post, user, turn and time, and
    // the metrics as their JSON text where the row has them.
    let datasets: Vec<_> = sc
        .iter()
        .map(|s| s.source.as_ref().unwrap().dataset.clone().unwrap())
        .collect();
    assert_eq!(
        datasets,
        [
            "reddit",
            "amazon",
            "youtube",
            "medium",
            "wildchat_english",
            "enron"
        ]
    );
    let reddit = sc[0].source.as_ref().unwrap();
    assert_eq!(reddit.row, Some(1));
    assert_eq!(reddit.post_id.as_deref(), Some("abc123"));
    assert_eq!(reddit.user_id.as_deref(), Some("night_owl_22"));
    assert_eq!(reddit.turn_id, Some(3));
    assert_eq!(reddit.timestamp, Some(Timestamp::Int(1764796440)));
    assert_eq!(
        reddit.post_metrics.as_deref(),
        Some(r#"{"score": 412, "upvote_ratio": 0.97, "awards": 1e-05}"#)
    );
    assert_eq!(
        reddit.comment_metrics.as_deref(),
        Some(r#"{"score": 31, "controversiality": 0}"#)
    );
    let amazon = sc[1].source.as_ref().unwrap();
    assert_eq!(amazon.timestamp, Some(Timestamp::Int(1700000000000)));
    assert_eq!(amazon.post_metrics, None);
    assert_eq!(amazon.comment_metrics, None);
    // The generated persona's values as written, "NA" included (the renderer skips it).
    let demo = sc[0]
        .persona
        .as_ref()
        .unwrap()
        .demographics
        .clone()
        .unwrap();
    assert_eq!(demo.location.as_deref(), Some("NA"));

    // The persona filter counts the lists of a generated persona: the Reddit row's has 10
    // items, enough at the default and not at 11; plain-text personas always pass.
    use humanlm::scenario::import::{persona_filter, MIN_PERSONA_ITEMS};
    assert_eq!(MIN_PERSONA_ITEMS, 10);
    assert_eq!(persona_filter(&rows[0], 10), Ok(()));
    assert_eq!(
        persona_filter(&rows[0], 11).unwrap_err(),
        "persona has 10 list items, fewer than --min-persona-items 11"
    );
    assert_eq!(persona_filter(&rows[2], 1000), Ok(()));
    assert_eq!(persona_filter(&rows[0], 0), Ok(()));
}

/// The one-line `source` of a hand-written file still loads (as a note) and is written back as
/// a line; the table form refuses unknown fields like the rest of the schema.
#[test]
fn source_is_a_line_or_a_table() {
    let base = "id = \"x\"\ndomain = \"opinion\"\ntitle = \"t\"\n";
    let rest = "\n[[turns]]\nauthor = \"a\"\ntext = \"hi\"\n\n[target]\nauthor = \"b\"\n";
    let p = Path::new("x.toml");
    let line = Scenario::from_toml(
        &format!("{base}source = \"written for humanlm\"\n{rest}"),
        p,
    )
    .unwrap();
    assert_eq!(line.source, Some(Source::note("written for humanlm")));
    assert_eq!(
        line.source.as_ref().unwrap().summary(),
        "written for humanlm"
    );
    let back = toml::to_string(&line).unwrap();
    assert!(
        back.contains("source = \"written for humanlm\"\n"),
        "{back}"
    );

    let table = Scenario::from_toml(
        &format!(
            "{base}{rest}\n[source]\ndataset = \"reddit\"\npost_id = \"p1\"\ntimestamp = 1700000000\nturn_id = 1\n"
        ),
        p,
    )
    .unwrap();
    let src = table.source.clone().unwrap();
    assert_eq!(src.timestamp, Some(Timestamp::Int(1700000000)));
    assert_eq!(src.summary(), "reddit, post p1, turn 1, time 1700000000");
    assert_eq!(
        Scenario::from_toml(&toml::to_string(&table).unwrap(), p).unwrap(),
        table
    );

    let err = Scenario::from_toml(
        &format!("{base}{rest}\n[source]\ndataset = \"reddit\"\npost = \"p1\"\n"),
        p,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("x.toml:")
            && err.contains("unknown field `post`")
            && err.lines().count() == 1,
        "{err}"
    );
}
