//! `humanlm export-dataset --format verl`: scenarios as the HumanLM verl recipe's RL rows, read
//! back with the parquet crate and with pyarrow (from `.venv-test/`, made by
//! scripts/test-venv.sh). Each row's system message and rendered prompt are checked against the
//! set's joint call as `sim::plan` makes it; the rest of the row, for one HUMANUAL row of each
//! dataset imported and exported, against the rows a Python script derives by the recipe's
//! logic (tests/fixtures/export/make_verl_golden.py).

use crate::common;

use humanlm::prompts::PromptSet;
use humanlm::scenario::Scenario;
use humanlm::sim::{self, Mode, Options, SamplingChoice, Truncate};
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn humanlm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .args(args)
        .env("HUMANLM_CHECKPOINTS", common::checkpoints())
        .current_dir(common::root())
        .output()
        .unwrap()
}

fn export(scenarios: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "export-dataset",
        "--format",
        "verl",
        "--scenarios",
        scenarios.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = humanlm(&args);
    assert!(
        o.status.success(),
        "export-dataset failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Every row as JSON, through the parquet crate's record reader.
fn read_rows(path: &Path) -> (Vec<String>, Vec<Value>) {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let columns = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.path().string())
        .collect();
    let rows = reader
        .get_row_iter(None)
        .unwrap()
        .map(|r| r.unwrap().to_json_value())
        .collect();
    (columns, rows)
}

fn shipped() -> Vec<Scenario> {
    humanlm::scenario::load_all(&common::root().join("scenarios"))
        .into_iter()
        .map(|l| l.unwrap().scenario)
        .collect()
}

/// The set's joint call for a scenario, as the simulator plans it.
fn joint_call(scenario: &Scenario, set_name: &str) -> sim::Call {
    let model = common::default_model();
    let set = PromptSet::load(set_name, &common::root().join("prompts")).unwrap();
    let opts = Options {
        mode: Mode::Joint,
        params: SamplingChoice::default().params(&set),
        truncate: Truncate::None,
    };
    sim::plan(&set, scenario, &opts, model)
        .unwrap()
        .calls
        .remove(0)
}

/// What every row must say of its scenario, whatever the data: the joint call's system
/// message first and its rendered prompt, the thread as named user messages (assistant turns
/// unnamed), `raw_prompt` as those messages, the reply as the ground truth.
fn assert_row_is_the_scenarios(row: &Value, scenario: &Scenario, set_name: &str) {
    let call = joint_call(scenario, set_name);
    let extra = &row["extra_info"];
    let prompt = row["prompt"].as_array().unwrap();
    assert_eq!(prompt[0]["role"], "system");
    assert_eq!(prompt[0]["name"], "");
    assert_eq!(
        prompt[0]["content"].as_str().unwrap(),
        call.chat_messages[0].content,
        "{}: the joint call's system prompt",
        scenario.id
    );
    assert_eq!(prompt.len(), scenario.turns.len() + 1);
    for (m, t) in prompt[1..].iter().zip(sim::thread_turns(scenario)) {
        assert_eq!(m["content"].as_str().unwrap(), t.text);
        if t.role == "assistant" {
            assert_eq!(m["role"], "assistant");
            assert!(m["name"].is_null());
        } else {
            assert_eq!(m["role"], "user");
            assert_eq!(m["name"].as_str().unwrap(), t.author);
        }
    }
    // raw_prompt holds the same messages; an assistant's has no name key at all.
    let raw: Value = serde_json::from_str(extra["raw_prompt"].as_str().unwrap()).unwrap();
    for (r, m) in raw.as_array().unwrap().iter().zip(prompt) {
        assert_eq!(r["role"], m["role"]);
        assert_eq!(r["content"], m["content"]);
        assert_eq!(r.get("name").is_none(), m["name"].is_null());
    }
    assert_eq!(extra["prompt_text"].as_str().unwrap(), call.prompt);
    assert_eq!(extra["enable_thinking"].as_bool().unwrap(), call.thinking);
    assert_eq!(extra["prefill"].as_str().unwrap(), call.prefill);
    assert_eq!(extra["stop"].as_str().unwrap(), call.stop);
    assert_eq!(extra["max_tokens"].as_u64().unwrap() as usize, call.budget);
    assert_eq!(extra["scenario_id"].as_str().unwrap(), scenario.id);
    assert_eq!(extra["prompt_set"].as_str().unwrap(), set_name);
    assert_eq!(
        row["reward_model"]["ground_truth"].as_str().unwrap(),
        scenario.target.response.as_deref().unwrap()
    );
}

fn python() -> PathBuf {
    let python = std::env::var_os("HUMANLM_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::root().join(".venv-test/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/test-venv.sh (it installs pyarrow)",
        python.display()
    );
    python
}

/// The recipe's `extra_info` fields in its order, then ours.
const EXTRA_INFO: [&str; 23] = [
    "split",
    "index",
    "name",
    "post",
    "state_name",
    "persona",
    "media_source",
    "target_user_id",
    "raw_prompt",
    "post_metrics",
    "comment_metrics",
    "post_id",
    "is_top_level",
    "scenario_id",
    "domain",
    "hierarchy_name",
    "enable_thinking",
    "prefill",
    "stop",
    "max_tokens",
    "prompt_text",
    "prompt_set",
    "prompt_hash",
];

#[test]
fn shipped_scenarios_become_verl_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("humanlm.parquet");
    let report = export(
        &common::root().join("scenarios"),
        &out,
        &["--prompts", "humanlm"],
    );
    let with_reply: Vec<Scenario> = shipped()
        .into_iter()
        .filter(|s| {
            s.target
                .response
                .as_deref()
                .is_some_and(|r| !r.trim().is_empty())
        })
        .collect();
    assert!(!with_reply.is_empty());
    let (columns, rows) = read_rows(&out);
    // One row per example: the recipe's StateDataset makes the per-state rows at train time.
    assert_eq!(rows.len(), with_reply.len());
    assert_eq!(report["rows"], rows.len());
    assert_eq!(report["state_name"], "stance");
    let mut expected = vec![
        "data_source".to_string(),
        "prompt.list.element.role".into(),
        "prompt.list.element.content".into(),
        "prompt.list.element.name".into(),
        "ability".into(),
        "reward_model.style".into(),
        "reward_model.ground_truth".into(),
    ];
    expected.extend(EXTRA_INFO.iter().map(|f| format!("extra_info.{f}")));
    assert_eq!(columns, expected);
    for (i, r) in rows.iter().enumerate() {
        let extra = &r["extra_info"];
        let sc = with_reply
            .iter()
            .find(|s| s.id == extra["scenario_id"].as_str().unwrap())
            .unwrap();
        assert_eq!(extra["index"], i);
        assert_eq!(extra["split"], "train");
        assert_eq!(r["ability"], "generation");
        assert_eq!(r["reward_model"]["style"], "custom");
        assert_eq!(r["data_source"], sc.domain.recipe_dataset());
        assert_eq!(extra["media_source"], sc.domain.platform());
        assert_eq!(extra["name"], "HUMAN");
        assert!(extra["post"].is_null());
        assert_eq!(extra["state_name"], "stance");
        assert_eq!(extra["hierarchy_name"], "stance");
        // Hand-written scenarios: no row identity beyond the target's name.
        assert_eq!(extra["target_user_id"].as_str().unwrap(), sc.target.author);
        assert_eq!(extra["post_id"], "");
        assert_eq!(extra["post_metrics"], "null");
        assert_eq!(extra["comment_metrics"], "null");
        assert_eq!(extra["is_top_level"], sc.turns.len() == 1);
        // The persona in the recipe's key names (its JSON parsed, not our schema's names).
        let persona: Value = serde_json::from_str(extra["persona"].as_str().unwrap()).unwrap();
        match sc.persona.as_ref() {
            Some(p) if p.text.is_some() => assert_eq!(persona, p.text.clone().unwrap().as_str()),
            Some(p) => {
                if let Some(age) = p.demographics.as_ref().and_then(|d| d.age_group.clone()) {
                    assert_eq!(persona["demographics"]["age group"], age.as_str());
                }
                // A section the scenario lacks is left out, as the generator never writes it empty.
                if p.interests.is_empty() {
                    assert!(persona.get("interests").is_none());
                } else {
                    assert_eq!(persona["interests"], serde_json::json!(p.interests));
                }
            }
            None => assert_eq!(persona, ""),
        }
    }
    // Thread turns carry their authors as `name`; the target is HUMAN.
    assert!(rows.iter().any(|r| r["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "HUMAN")));
    // A multi-turn scenario's row and a one-turn one's are the joint call's.
    for pick in [
        rows.iter()
            .find(|r| r["prompt"].as_array().unwrap().len() > 3)
            .unwrap(),
        rows.iter()
            .find(|r| r["extra_info"]["is_top_level"] == true)
            .unwrap_or(&rows[0]),
    ] {
        let id = pick["extra_info"]["scenario_id"].as_str().unwrap();
        let sc = with_reply.iter().find(|s| s.id == id).unwrap();
        assert_row_is_the_scenarios(pick, sc, "humanlm");
    }

    // Another tool reads the same file: pyarrow, as the recipe's `datasets` loader does.
    let script = r#"
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
print(json.dumps({"rows": t.num_rows, "types": {f.name: str(f.type) for f in t.schema},
                  "first": t.slice(0, 1).to_pylist()[0]}))
"#;
    let o = Command::new(python())
        .args(["-c", script, out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let seen: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(seen["rows"], rows.len());
    assert_eq!(
        seen["types"]["prompt"],
        "list<element: struct<role: string not null, content: string not null, name: string> not null>"
    );
    assert_eq!(seen["first"]["prompt"], rows[0]["prompt"]);
    assert_eq!(seen["first"]["extra_info"], rows[0]["extra_info"]);
    assert_eq!(seen["first"]["reward_model"], rows[0]["reward_model"]);
}

/// One HUMANUAL row of each dataset (tests/fixtures/humanual/published.jsonl), imported with
/// `scenarios import` and exported: pyarrow's reading of every field of every row is the row
/// the recipe makes (tests/fixtures/export/verl_golden.json, derived in Python), the system
/// text taken from the export (the prompt set's), and the row identity round-trips.
#[test]
fn published_rows_export_as_the_recipes_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let scenarios = tmp.path().join("scenarios");
    let fixture = std::fs::read_to_string(common::fixture("humanual/published.jsonl")).unwrap();
    let domains = ["opinion", "book", "news", "politics", "chat", "email"];
    let lines: Vec<&str> = fixture.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), domains.len());
    for (line, domain) in lines.iter().zip(domains) {
        let file = tmp.path().join(format!("{domain}.jsonl"));
        std::fs::write(&file, format!("{line}\n")).unwrap();
        let o = humanlm(&[
            "scenarios",
            "import",
            file.to_str().unwrap(),
            "--domain",
            domain,
            "--out",
            scenarios.to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "{domain}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert!(String::from_utf8_lossy(&o.stdout).contains("wrote 1 scenarios"));
    }
    let out = tmp.path().join("published.parquet");
    let report = export(&scenarios, &out, &["--prompts", "humanlm"]);
    assert_eq!(report["rows"], domains.len());

    // Every field of every row, as pyarrow reads it, against the golden rows.
    let script = r#"
import json, sys
import pyarrow.parquet as pq
table = pq.read_table(sys.argv[1])
golden = json.load(open(sys.argv[2], encoding="utf-8"))
placeholder = golden["system_placeholder"]
recipe = ["data_source", "prompt", "ability", "reward_model", "extra_info"]
problems = []
rows = table.to_pylist()
if len(rows) != len(golden["rows"]):
    problems.append("%d rows, golden %d" % (len(rows), len(golden["rows"])))
if table.schema.names != recipe:
    problems.append("columns %s" % table.schema.names)
for i, (got, want) in enumerate(zip(rows, golden["rows"])):
    system = got["prompt"][0]["content"]
    want["prompt"][0]["content"] = system
    want["extra_info"]["raw_prompt"] = want["extra_info"]["raw_prompt"].replace(
        json.dumps(placeholder), json.dumps(system), 1)
    for col in recipe:
        if col == "extra_info":
            names = list(got[col])[:len(want[col])]
            if names != list(want[col]):
                problems.append("row %d: extra_info starts %s" % (i, names))
            for k, v in want[col].items():
                if got[col].get(k) != v:
                    problems.append("row %d extra_info.%s: %r, want %r" % (i, k, got[col].get(k), v))
        elif got[col] != want[col]:
            problems.append("row %d %s: %r, want %r" % (i, col, got[col], want[col]))
print(json.dumps({"problems": problems, "rows": rows}))
"#;
    let o = Command::new(python())
        .args(["-c", script, out.to_str().unwrap()])
        .arg(common::fixture("export/verl_golden.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let seen: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        seen["problems"],
        serde_json::json!([]),
        "{}",
        seen["problems"]
    );

    // The system message and our own fields are the joint call's for the imported scenario.
    let imported: Vec<Scenario> = humanlm::scenario::load_all(&scenarios)
        .into_iter()
        .map(|l| l.unwrap().scenario)
        .collect();
    for row in seen["rows"].as_array().unwrap() {
        let id = row["extra_info"]["scenario_id"].as_str().unwrap();
        let sc = imported.iter().find(|s| s.id == id).unwrap();
        assert_row_is_the_scenarios(row, sc, "humanlm");
        assert_eq!(row["extra_info"]["domain"], sc.domain.name());
    }
}

#[test]
fn skipped_scenarios_force_and_the_retired_states_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("scenarios");
    std::fs::create_dir(&dir).unwrap();
    let mut all = shipped();
    let with = all.remove(0);
    let mut without = all.remove(0);
    without.target.response = None;
    for s in [&with, &without] {
        std::fs::write(
            dir.join(format!("{}.toml", s.id)),
            toml::to_string(s).unwrap(),
        )
        .unwrap();
    }
    let out = tmp.path().join("instruct.parquet");
    // The instruct set (the default checkpoint's own): one row, its joint call pre-filled.
    let report = export(&dir, &out, &[]);
    assert_eq!(report["rows"], 1);
    assert_eq!(report["skipped"][0][0], without.id.as_str());
    assert_eq!(report["prompt_set"], "instruct");
    let (_, rows) = read_rows(&out);
    assert_eq!(rows.len(), 1);
    let prefill = rows[0]["extra_info"]["prefill"].as_str().unwrap();
    assert!(rows[0]["extra_info"]["prompt_text"]
        .as_str()
        .unwrap()
        .ends_with(prefill));
    assert_row_is_the_scenarios(&rows[0], &with, "instruct");

    // --states is refused in one line that says why.
    let o = humanlm(&[
        "export-dataset",
        "--scenarios",
        dir.to_str().unwrap(),
        "--out",
        tmp.path().join("x.parquet").to_str().unwrap(),
        "--states",
        "r,b",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--states")
            && err.contains("StateDataset")
            && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(!tmp.path().join("x.parquet").exists());
    // Metrics that are not JSON (a hand-edited [source]): refused in one line naming the file.
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let mut broken = with.clone();
    broken.source = Some(humanlm::scenario::Source {
        post_metrics: Some("{not json".into()),
        ..Default::default()
    });
    let bad_file = bad.join("broken.toml");
    std::fs::write(&bad_file, toml::to_string(&broken).unwrap()).unwrap();
    let o = humanlm(&[
        "export-dataset",
        "--scenarios",
        bad.to_str().unwrap(),
        "--out",
        tmp.path().join("y.parquet").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("broken.toml")
            && err.contains("source.post_metrics is not JSON")
            && err.trim_end().lines().count() == 1,
        "{err}"
    );
    // An existing file is kept unless --force, in one line.
    let o = humanlm(&[
        "export-dataset",
        "--scenarios",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--force") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    // Only scenarios without a reply: nothing to write, said so, no file.
    std::fs::remove_file(dir.join(format!("{}.toml", with.id))).unwrap();
    let o = humanlm(&[
        "export-dataset",
        "--scenarios",
        dir.to_str().unwrap(),
        "--out",
        tmp.path().join("empty.parquet").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!tmp.path().join("empty.parquet").exists());
    // --force replaces the earlier file.
    std::fs::write(
        dir.join(format!("{}.toml", with.id)),
        toml::to_string(&with).unwrap(),
    )
    .unwrap();
    export(&dir, &out, &["--force"]);
    assert_eq!(read_rows(&out).1.len(), 1);
}

/// A set whose only state is the reply (the recipe's `r.json`): its rows name the state
/// `response`, as the recipe's rows name the first key of their state config.
#[test]
fn a_response_only_set_names_its_state_response() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts");
    std::fs::create_dir(&prompts).unwrap();
    common::copy_prompt_set("humanlm", &prompts.join("humanlm"));
    let states = prompts.join("humanlm/states.toml");
    let text = std::fs::read_to_string(&states).unwrap();
    let response = &text[text.find("[[state]]\nkey = \"response\"").unwrap()..];
    std::fs::write(&states, response).unwrap();
    let scenario = shipped()
        .into_iter()
        .find(|s| s.target.response.is_some())
        .unwrap();
    let dir = tmp.path().join("scenarios");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{}.toml", scenario.id)),
        toml::to_string(&scenario).unwrap(),
    )
    .unwrap();
    let out = tmp.path().join("r.parquet");
    let o = Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .args(["export-dataset", "--scenarios"])
        .arg(&dir)
        .arg("--out")
        .arg(&out)
        .args(["--prompts", "humanlm", "--json"])
        .env("HUMANLM_CHECKPOINTS", common::checkpoints())
        .env("HUMANLM_PROMPTS", &prompts)
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, rows) = read_rows(&out);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["extra_info"]["state_name"], "response");
    assert_eq!(rows[0]["extra_info"]["hierarchy_name"], "response");
}
