//! `humanlm export-dataset --format verl`: the shipped scenarios as rows of the HumanLM verl
//! recipe, read back with the parquet crate and with pyarrow (from `.venv-test/`, made by
//! scripts/test-venv.sh), and each row's prompt checked against what `sim::plan` renders.

use crate::common;

use humanlm::model::chat::Message;
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

fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| Message {
            role: m["role"].as_str().unwrap().into(),
            content: m["content"].as_str().unwrap().into(),
            name: m["name"].as_str().map(String::from),
        })
        .collect()
}

/// The row's messages, rendered with the set's chat template (else the model's) and the row's
/// thinking switch and pre-filled tag, must be exactly the prompt the simulator sends.
fn assert_row_is_the_simulators_prompt(row: &Value, set_name: &str) {
    let model = common::default_model();
    let set = PromptSet::load(set_name, &common::root().join("prompts")).unwrap();
    let id = row["extra_info"]["scenario_id"].as_str().unwrap();
    let state = row["extra_info"]["state_name"].as_str().unwrap();
    let scenario = shipped().into_iter().find(|s| s.id == id).unwrap();
    let opts = Options {
        mode: Mode::Humanlm,
        params: SamplingChoice::default().params(&set),
        truncate: Truncate::None,
    };
    let plan = sim::plan(&set, &scenario, &opts, model).unwrap();
    let call = plan.calls.iter().find(|c| c.name == state).unwrap();
    let extra = &row["extra_info"];
    let template = set.chat.as_ref().unwrap_or(&model.chat);
    let thinking = extra["enable_thinking"].as_bool().unwrap();
    let rendered = template
        .render(
            &messages(&row["prompt"]),
            true,
            &serde_json::json!({ "enable_thinking": thinking }),
        )
        .unwrap()
        + extra["prefill"].as_str().unwrap();
    assert_eq!(rendered, call.prompt, "{id}/{state}: messages → prompt");
    assert_eq!(extra["raw_prompt"].as_str().unwrap(), call.prompt);
    assert_eq!(thinking, call.thinking);
    assert_eq!(extra["stop"].as_str().unwrap(), call.stop);
    assert_eq!(extra["max_tokens"].as_u64().unwrap() as usize, call.budget);
    assert_eq!(extra["prompt_hash"].as_str().unwrap(), set.hash);
    assert_eq!(
        row["reward_model"]["ground_truth"].as_str().unwrap(),
        scenario.target.response.as_deref().unwrap()
    );
    assert_eq!(
        extra["persona"].as_str().unwrap(),
        serde_json::to_string(&scenario.persona.unwrap_or_default()).unwrap()
    );
}

#[test]
fn shipped_scenarios_become_verl_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("humanlm.parquet");
    let report = export(
        &common::root().join("scenarios"),
        &out,
        &["--prompts", "humanlm"],
    );
    let with_reply = shipped()
        .iter()
        .filter(|s| {
            s.target
                .response
                .as_deref()
                .is_some_and(|r| !r.trim().is_empty())
        })
        .count();
    assert!(with_reply > 0);
    let (columns, rows) = read_rows(&out);
    assert_eq!(rows.len(), 7 * with_reply);
    assert_eq!(report["rows"], rows.len());
    assert_eq!(
        columns,
        [
            "data_source",
            "prompt.list.element.role",
            "prompt.list.element.content",
            "prompt.list.element.name",
            "ability",
            "reward_model.style",
            "reward_model.ground_truth",
            "extra_info.index",
            "extra_info.split",
            "extra_info.scenario_id",
            "extra_info.domain",
            "extra_info.state_name",
            "extra_info.hierarchy_name",
            "extra_info.name",
            "extra_info.persona",
            "extra_info.enable_thinking",
            "extra_info.prefill",
            "extra_info.stop",
            "extra_info.max_tokens",
            "extra_info.raw_prompt",
            "extra_info.prompt_set",
            "extra_info.prompt_hash",
        ]
    );
    // Seven rows per scenario, in the method's order, sharing one index.
    let order = [
        "stance",
        "emotion",
        "belief",
        "value",
        "goal",
        "communication",
        "response",
    ];
    for (i, chunk) in rows.chunks(7).enumerate() {
        let states: Vec<&str> = chunk
            .iter()
            .map(|r| r["extra_info"]["state_name"].as_str().unwrap())
            .collect();
        assert_eq!(states, order);
        for r in chunk {
            assert_eq!(r["extra_info"]["index"], i);
            assert_eq!(
                r["extra_info"]["scenario_id"],
                chunk[0]["extra_info"]["scenario_id"]
            );
            assert_eq!(r["reward_model"]["style"], "model");
            assert_eq!(r["extra_info"]["name"], "HUMAN");
            assert_eq!(r["prompt"][0]["role"], "system");
        }
        // Thinking is on for the reply only (the humanlm set).
        assert!(chunk[6]["extra_info"]["enable_thinking"].as_bool().unwrap());
        assert!(!chunk[0]["extra_info"]["enable_thinking"].as_bool().unwrap());
    }
    // Thread turns carry their authors as `name`; the target is HUMAN.
    assert!(rows.iter().any(|r| r["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "HUMAN")));
    // A state row and the reply row of a multi-turn scenario, rendered, are the simulator's
    // prompts.
    let pick = |state: &str| {
        rows.iter()
            .find(|r| {
                r["extra_info"]["state_name"] == state && r["prompt"].as_array().unwrap().len() > 3
            })
            .unwrap()
    };
    assert_row_is_the_simulators_prompt(pick("belief"), "humanlm");
    assert_row_is_the_simulators_prompt(pick("response"), "humanlm");

    // Another tool reads the same file: pyarrow, as the recipe's `datasets` loader does.
    let python = std::env::var_os("HUMANLM_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::root().join(".venv-test/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/test-venv.sh (it installs pyarrow)",
        python.display()
    );
    let script = r#"
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
print(json.dumps({"rows": t.num_rows, "types": {f.name: str(f.type) for f in t.schema},
                  "first": t.slice(0, 1).to_pylist()[0]}))
"#;
    let o = Command::new(&python)
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

#[test]
fn states_subset_prefilled_tags_and_skipped_scenarios() {
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
    // The instruct set (the default checkpoint's own), two states named by letter.
    let report = export(&dir, &out, &["--states", "r,b"]);
    assert_eq!(report["scenarios"], 1);
    assert_eq!(report["skipped"][0][0], without.id.as_str());
    assert_eq!(report["prompt_set"], "instruct");
    let (_, rows) = read_rows(&out);
    let states: Vec<&str> = rows
        .iter()
        .map(|r| r["extra_info"]["state_name"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["belief", "response"]);
    // The instruct set pre-fills the opening tag; the row says so and its raw prompt ends with it.
    assert_eq!(rows[0]["extra_info"]["prefill"], "<belief>");
    assert!(rows[0]["extra_info"]["raw_prompt"]
        .as_str()
        .unwrap()
        .ends_with("<belief>"));
    assert_row_is_the_simulators_prompt(&rows[0], "instruct");
    assert_row_is_the_simulators_prompt(&rows[1], "instruct");

    // An existing file is kept unless --force; a bad --states is refused; both in one line.
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
    let o = humanlm(&[
        "export-dataset",
        "--scenarios",
        dir.to_str().unwrap(),
        "--out",
        tmp.path().join("x.parquet").to_str().unwrap(),
        "--states",
        "s,q",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("'q'") && err.trim_end().lines().count() == 1,
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
    assert_eq!(read_rows(&out).1.len(), 7);
}
