//! Judges and evaluation runs: run folders, resuming, summaries, comparisons, and the rubric
//! judge's group rules and failure handling over HTTP.

use crate::common;

use humanlm::eval::{self, EvalSpec, Progress};
use humanlm::judge::rubric::{RubricConfig, RubricJudge};
use humanlm::judge::{Group, Item, Judge, JudgeConfig};
use humanlm::prompts::PromptSet;
use humanlm::remote::EndpointConfig;
use humanlm::sim::{Mode, SamplingChoice, Truncate};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Three scenarios: two shipped ones with reference replies, one without.
fn scenario_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = common::root().join("scenarios");
    for id in ["opinion-gym-etiquette-06", "chat-monstera-05"] {
        let l = humanlm::scenario::find(id, &root).unwrap();
        std::fs::copy(&l.path, dir.path().join(format!("{id}.toml"))).unwrap();
    }
    std::fs::write(
        dir.path().join("no-reference.toml"),
        "id = \"no-reference\"\ndomain = \"news\"\ntitle = \"t\"\n[[turns]]\nauthor = \"a\"\ntext = \"Rain again.\"\n[target]\nauthor = \"b\"\n",
    )
    .unwrap();
    dir
}

fn spec(scenarios: &Path, out: &Path) -> EvalSpec {
    EvalSpec {
        checkpoints: vec![common::default_gguf()
            .parent()
            .unwrap()
            .display()
            .to_string()],
        scenarios: scenarios.to_path_buf(),
        mode: Mode::Humanlm,
        prompts: None,
        judge: JudgeConfig::default_config(),
        sampling: SamplingChoice {
            n: 2,
            seed: 3,
            temperature: Some(0.8),
            max_tokens: Some(8),
            ..Default::default()
        },
        truncate: Truncate::None,
        out: out.to_path_buf(),
        protocol: None,
        paper: vec![],
        state_judge: None,
        rejudge: false,
        device: "cpu".into(),
    }
}

/// Every sampling field a user sets reaches the generation and the run's record: the run's reply
/// is the one `simulate` gives with the same choice, and `run.json` holds the choice and what it
/// resolved to against the prompt set (an unset temperature is the set's, else 0.4).
#[test]
fn a_run_records_and_applies_every_sampling_field() {
    let sc = scenario_dir();
    std::fs::remove_file(sc.path().join("chat-monstera-05.toml")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut s = spec(sc.path(), out.path());
    s.mode = Mode::Response;
    s.sampling = SamplingChoice {
        n: 1,
        seed: 11,
        temperature: None,
        top_p: 0.9,
        repetition_penalty: Some(1.3),
        no_repeat_ngram: Some(3),
        max_tokens: Some(12),
    };
    let dir = eval::run(&s, &common::roots(), None, &mut |_| {}).unwrap();
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["sampling"], serde_json::to_value(&s.sampling).unwrap());
    let set = PromptSet::load(
        run["checkpoints"][0]["prompt_set"].as_str().unwrap(),
        &common::root().join("prompts"),
    )
    .unwrap();
    let want = s.sampling.params(&set);
    let used = &run["checkpoints"][0]["sampling_used"];
    assert_eq!(used, &serde_json::to_value(&want).unwrap());
    assert_eq!(used["top_p"].as_f64().unwrap() as f32, 0.9);
    assert_eq!(used["repetition_penalty"].as_f64().unwrap() as f32, 1.3);
    assert_eq!(used["no_repeat_ngram"], 3);
    assert_eq!(used["max_new_tokens"], 12);
    assert_eq!(used["seed"], 11);
    let set_temperature = set.sampling.temperature.unwrap_or(0.4);
    assert_eq!(
        used["temperature"].as_f64().unwrap() as f32,
        set_temperature
    );

    let records = eval::read_samples(&dir.join("samples.jsonl"));
    assert_eq!(records.len(), 1);
    let scenario = humanlm::scenario::find("opinion-gym-etiquette-06", sc.path())
        .unwrap()
        .scenario;
    let opts = humanlm::sim::Options::new(Mode::Response, want);
    let (_, samples) = humanlm::sim::simulate(
        common::default_model(),
        &set,
        &scenario,
        &opts,
        None,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(records[0].sim.response, samples[0].response);
    // The record keeps the whole sample: each call's raw output and stop reason too.
    assert_eq!(records[0].sim.outputs, samples[0].outputs);
    // A different choice of any one field changes the reply, so the equality above is not luck.
    let mut other = opts.clone();
    other.params.repetition_penalty = 1.0;
    other.params.no_repeat_ngram = 0;
    let (_, changed) = humanlm::sim::simulate(
        common::default_model(),
        &set,
        &scenario,
        &other,
        None,
        &mut |_| {},
    )
    .unwrap();
    assert_ne!(changed[0].response, samples[0].response);
}

#[test]
fn a_run_writes_its_folder_scores_every_dimension_and_resumes() {
    let sc = scenario_dir();
    let out = tempfile::tempdir().unwrap();
    let s = spec(sc.path(), out.path());
    let mut events = vec![];
    let dir = eval::run(&s, &common::roots(), None, &mut |p| events.push(p)).unwrap();
    assert!(events
        .iter()
        .any(|p| matches!(p, Progress::Skipped { scenario, .. } if scenario == "no-reference")));
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["mode"], "humanlm");
    assert_eq!(run["n"], 2);
    assert_eq!(run["scenarios"]["with_reference"], 2);
    assert_eq!(run["checkpoints"][0]["prompt_set"], "instruct");
    assert_eq!(
        run["checkpoints"][0]["fingerprint"].as_str().unwrap().len(),
        16
    );
    assert_eq!(run["judge"]["name"], "embedding");
    assert!(run["program"]["version"].is_string());

    // The reply and every state of the run's set (its states.toml), in that order.
    let set = humanlm::prompts::PromptSet::load("instruct", &common::roots().prompts).unwrap();
    let dimensions = eval::judged_dimensions(&set);
    assert_eq!(dimensions[0], "response");
    assert_eq!(dimensions.len(), set.states.len());
    let records = eval::read_samples(&dir.join("samples.jsonl"));
    assert_eq!(records.len(), 4);
    for r in &records {
        for dim in &dimensions {
            let s = &r.scores[dim];
            assert!((-1.0..=1.0).contains(&s.score), "{dim}: {}", s.score);
        }
        assert!(r.similarity.contains_key("embedding") && r.similarity.contains_key("rouge_l"));
        assert!(!r.reference.is_empty());
    }
    let summary: eval::Summary =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let c = &summary.checkpoints[0];
    assert_eq!(c.dimensions, dimensions);
    assert_eq!(c.n_scenarios, 2);
    assert_eq!(c.diagnostics.skipped_no_reference, 1);
    assert_eq!(c.diagnostics.samples, 4);
    for (k, m) in &c.metrics {
        assert!(
            m.ci95[0] <= m.mean + 1e-9 && m.mean <= m.ci95[1] + 1e-9,
            "{k}: {m:?}"
        );
        assert_eq!(m.n, 2);
    }
    // Scores are ×100 and the reply's embedding score is the embedding similarity itself.
    assert_eq!(c.metrics["response"].mean, c.metrics["embedding"].mean);
    let want: f64 = records
        .iter()
        .map(|r| r.similarity["embedding"])
        .sum::<f64>()
        / 4.0
        * 100.0;
    assert!((c.metrics["embedding"].mean - want).abs() < 1e-9);

    // Interrupted: the last scenario's second sample is missing and the file ends mid-line.
    let samples = dir.join("samples.jsonl");
    let text = std::fs::read_to_string(&samples).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(
        &samples,
        format!("{}\n{}\n{{\"checkp", lines[0], lines[1] /* */) + "",
    )
    .unwrap();
    let first = records[0].scenario.clone();
    let mut redone = vec![];
    let again = eval::run(&s, &common::roots(), None, &mut |p| {
        if let Progress::Scenario { scenario, .. } = p {
            redone.push(scenario)
        }
    })
    .unwrap();
    assert_eq!(again, dir, "the same command resumes the same run");
    assert_eq!(redone.len(), 1);
    assert_ne!(redone[0], first);
    let after = eval::read_samples(&samples);
    assert_eq!(after.len(), 4);
    assert_eq!(after[0].sim.response, records[0].sim.response);

    // A comparison of a run with itself: zero differences, half the wins.
    let cmp = eval::compare(&dir, &dir, 0).unwrap();
    let r = &cmp.metrics["response"];
    assert_eq!(r.diff.mean, 0.0);
    assert_eq!(r.win_rate_b, 0.5);
    let listed = eval::list_runs(out.path());
    assert_eq!(listed.len(), 1);
    assert!(listed[0].complete);
}

#[test]
fn a_folder_without_reference_replies_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("x.toml"),
        "id = \"x\"\ndomain = \"news\"\ntitle = \"t\"\n[[turns]]\nauthor = \"a\"\ntext = \"Hi\"\n[target]\nauthor = \"b\"\n",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let e = eval::run(
        &spec(dir.path(), out.path()),
        &common::roots(),
        None,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no scenario with a reference reply"), "{e}");
}

#[test]
fn shipped_judge_configs_parse_and_bad_ones_name_the_line() {
    let dir = common::root().join("prompts/judges");
    let mut kinds = vec![];
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let c = JudgeConfig::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        kinds.push(
            serde_json::to_value(&c).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds, ["aspects", "embedding", "lexical", "rubric"]);
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "kind = \"rubric\"\ncheckpoint = \"x\"\ntemprature = 0.5\n",
    )
    .unwrap();
    let e = JudgeConfig::read(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.toml:3") && e.contains("temprature"), "{e}");
    std::fs::write(&bad, "kind = \"oracle\"\n").unwrap();
    let e = JudgeConfig::read(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.toml:1") && e.contains("oracle"), "{e}");
}

/// An OpenAI-compatible judge on loopback that answers from a script and records prompts.
struct ScriptedJudge {
    url: String,
    prompts: Arc<Mutex<Vec<String>>>,
}

fn scripted(replies: Vec<(u16, String)>) -> ScriptedJudge {
    let mut replies = replies.into_iter();
    serve_judge(move |_| replies.next().unwrap_or((200, "{}".into())))
}

/// The JSON body of one HTTP request on `stream` (null if it is not JSON).
fn read_request(stream: &std::net::TcpStream) -> serde_json::Value {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut len = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap_or_default()
}

/// A loopback judge whose every answer (status, content) comes from `answer`, given the request.
fn serve_judge(
    mut answer: impl FnMut(&serde_json::Value) -> (u16, String) + Send + 'static,
) -> ScriptedJudge {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let prompts = Arc::new(Mutex::new(vec![]));
    let seen = prompts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let req = read_request(&stream);
            seen.lock().unwrap().push(
                req["messages"][0]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            let (status, content) = answer(&req);
            let body = if status == 200 {
                serde_json::json!({
                    "id": "x", "object": "chat.completion", "created": 0, "model": "judge",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
                })
                .to_string()
            } else {
                serde_json::json!({"error": {"message": content, "type": "server_error"}})
                    .to_string()
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    ScriptedJudge { url, prompts }
}

fn rubric(url: &str, retries: usize) -> RubricJudge {
    rubric_with(url, retries, false)
}

fn rubric_with(url: &str, retries: usize, halve_malformed: bool) -> RubricJudge {
    let mut endpoint = EndpointConfig::new(url, "judge");
    endpoint.retries = 0;
    endpoint.timeout_s = 10.0;
    let cfg = RubricConfig {
        checkpoint: None,
        endpoint: Some(endpoint),
        prompts: None,
        sampling: Default::default(),
        retries,
        backoff_s: 0.0,
        halve_malformed,
    };
    let set = Arc::new(PromptSet::load("humanlm", &common::root().join("prompts")).unwrap());
    RubricJudge::new(cfg, &common::roots(), set).unwrap()
}

fn group<'a>(set: &'a PromptSet, items: &[(&'a str, bool)]) -> Group<'a> {
    group_on(set, "stance", items)
}

fn group_on<'a>(set: &'a PromptSet, key: &str, items: &[(&'a str, bool)]) -> Group<'a> {
    Group {
        dimension: set.state(key).unwrap(),
        context: "[op]\nShould the council ban cars from the high street?",
        reference: "Absolutely not, the shops will die.",
        items: items
            .iter()
            .map(|(t, v)| Item {
                text: t,
                valid: *v,
                tokens: None,
            })
            .collect(),
    }
}

#[test]
fn rubric_group_rules() {
    let set = PromptSet::load("humanlm", &common::root().join("prompts")).unwrap();
    // On the response, the judge sees two unique items: "strongly against" (1), "in favour" (2).
    let reply = r#"Here you go: {"key_points": ["against the ban"], "1": {"thought": "same", "score": 0.9}, "2": {"thought": "opposite", "score": -0.3}}"#;
    let items = [
        ("strongly against", true),
        ("in favour", true),
        ("strongly   against", false),
        ("", true),
        ("  Absolutely not, the shops will die.\n", true),
    ];
    let server = scripted(vec![(200, reply.into())]);
    let judge = rubric(&server.url, 0);
    let s = judge
        .score_group(&group_on(&set, "response", &items))
        .unwrap();
    let prompts = server.prompts.lock().unwrap().clone();
    assert_eq!(prompts.len(), 1, "one call for the group");
    assert!(prompts[0].contains("<item 1>\nstrongly against\n</item 1>"));
    assert!(prompts[0].contains("<item 2>\nin favour\n</item 2>"));
    assert!(
        !prompts[0].contains("<item 3>"),
        "identical items are judged once, and the copy is not sent"
    );
    assert_eq!(s[0].score, 0.9);
    assert_eq!(s[0].note.as_deref(), Some("same"));
    assert!(s[0].raw.as_deref().unwrap().contains("key_points"));
    assert_eq!(s[1].score, 0.0, "clamped");
    assert_eq!(
        s[2].score, 0.9,
        "malformed: halved by the judge's instruction only"
    );
    assert_eq!(s[3].score, 0.0, "empty");
    assert!(
        (s[4].score - 1.0).abs() < 1e-12,
        "a copy (once stripped): min(1, best + 0.1)"
    );
    assert!(s.iter().all(|x| x.error.is_none()));

    // With halve_malformed the code halves too.
    let server = scripted(vec![(200, reply.into())]);
    let s = rubric_with(&server.url, 0, true)
        .score_group(&group_on(&set, "response", &items))
        .unwrap();
    assert!((s[2].score - 0.45).abs() < 1e-12, "{}", s[2].score);

    // On a state, a copy of the reply is an ordinary item, sent and judged.
    let reply3 = r#"{"1": {"score": 0.9}, "2": {"score": 0.1}, "3": {"score": 0.4}}"#;
    let server = scripted(vec![(200, reply3.into())]);
    let s = rubric(&server.url, 0)
        .score_group(&group(&set, &items))
        .unwrap();
    let prompts = server.prompts.lock().unwrap().clone();
    assert!(prompts[0].contains("<item 3>\nAbsolutely not, the shops will die.\n</item 3>"));
    assert_eq!(s[4].score, 0.4);

    // Nothing but copies and empties: no call, and the copies score 1.
    let server = scripted(vec![]);
    let s = rubric(&server.url, 0)
        .score_group(&group_on(
            &set,
            "response",
            &[("Absolutely not, the shops will die.", true), (" ", true)],
        ))
        .unwrap();
    assert!(server.prompts.lock().unwrap().is_empty());
    assert_eq!((s[0].score, s[1].score), (1.0, 0.0));
}

#[test]
fn rubric_retries_an_unparseable_reply_then_fails_visibly() {
    let set = PromptSet::load("humanlm", &common::root().join("prompts")).unwrap();
    // Not JSON, then a server error, then prose: three attempts, no score.
    let server = scripted(vec![
        (200, "I think item 1 is pretty good!".into()),
        (500, "overloaded".into()),
        (200, "Score: high".into()),
        (200, r#"{"1": {"score": 0.5}}"#.into()),
    ]);
    let judge = rubric(&server.url, 2);
    let s = judge
        .score_group(&group(&set, &[("against", true)]))
        .unwrap();
    assert_eq!(server.prompts.lock().unwrap().len(), 3);
    assert_eq!(s[0].score, 0.0);
    let err = s[0].error.as_deref().unwrap();
    assert!(err.contains("judge failed after 3 attempts"), "{err}");
    assert_eq!(
        s[0].raw.as_deref(),
        Some("Score: high"),
        "the last reply is kept"
    );

    // A broken-JSON reply is recovered by the regex fallback on the first try.
    let server = scripted(vec![(
        200,
        r#"{"1": {"thought": "x", "score": 0.6,}"#.into(),
    )]);
    let s = rubric(&server.url, 2)
        .score_group(&group(&set, &[("against", true)]))
        .unwrap();
    assert_eq!(s[0].score, 0.6);
}

/// Judgements that failed in an outage are retried by the next run of the same command, from
/// the recorded samples (nothing is generated again), and only the failed ones are asked again.
#[test]
fn a_rerun_judges_again_what_failed_and_only_that() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let sc = tempfile::tempdir().unwrap();
    let root = common::root().join("scenarios");
    let l = humanlm::scenario::find("opinion-gym-etiquette-06", &root).unwrap();
    std::fs::copy(&l.path, sc.path().join("one.toml")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let healthy = Arc::new(AtomicBool::new(false));
    let up = healthy.clone();
    let server = serve_judge(move |_| {
        if up.load(Ordering::SeqCst) {
            (200, r#"{"1": {"score": 0.6}, "2": {"score": 0.6}}"#.into())
        } else {
            (500, "overloaded".into())
        }
    });
    let mut endpoint = EndpointConfig::new(&server.url, "judge");
    endpoint.retries = 0;
    endpoint.timeout_s = 10.0;
    let mut s = spec(sc.path(), out.path());
    s.mode = Mode::Response;
    s.judge = JudgeConfig::Rubric(RubricConfig {
        checkpoint: None,
        endpoint: Some(endpoint),
        prompts: None,
        sampling: Default::default(),
        retries: 0,
        backoff_s: 0.0,
        halve_malformed: false,
    });
    let dir = eval::run(&s, &common::roots(), None, &mut |_| {}).unwrap();
    let first = eval::read_samples(&dir.join("samples.jsonl"));
    assert!(first.iter().all(|r| r.scores["response"].error.is_some()));
    let calls_in_outage = server.prompts.lock().unwrap().len();
    assert!(calls_in_outage > 0);

    healthy.store(true, Ordering::SeqCst);
    let mut generated = 0;
    let again = eval::run(&s, &common::roots(), None, &mut |p| {
        if matches!(p, Progress::Scenario { .. }) {
            generated += 1;
        }
    })
    .unwrap();
    assert_eq!(again, dir);
    assert_eq!(generated, 0, "the samples are reused, not generated again");
    let second = eval::read_samples(&dir.join("samples.jsonl"));
    assert_eq!(second.len(), first.len());
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.sim.response, b.sim.response);
    }
    assert!(second.iter().all(|r| r.scores["response"].error.is_none()
        && (r.scores["response"].score - 0.6).abs() < 1e-12
        || r.sim.response.trim().is_empty()));
    // A third run finds nothing failed and asks nothing.
    let asked = server.prompts.lock().unwrap().len();
    eval::run(&s, &common::roots(), None, &mut |_| {}).unwrap();
    assert_eq!(server.prompts.lock().unwrap().len(), asked);
}

/// The shipped service judges send what the services accept, checked against a loopback
/// stand-in that applies their rules: gpt-5-mini (a reasoning model) takes only temperature 1 and
/// refuses `max_tokens` for `max_completion_tokens`; Claude through Anthropic's OpenAI-compatible
/// endpoint takes temperature 0..=1 and a token limit. A refused request is a configuration
/// error, reported with the service's message, asked once, never scored as 0.
#[test]
fn shipped_service_judges_send_what_the_services_accept() {
    let server = serve_judge(|req| {
        let refuse = |m: &str| (400, m.to_string());
        match req["model"].as_str().unwrap_or_default() {
            "gpt-5-mini" => {
                if req.get("max_tokens").is_some() {
                    return refuse(
                        "Unsupported parameter: 'max_tokens' is not supported with this model. \
                         Use 'max_completion_tokens' instead.",
                    );
                }
                if req["temperature"].as_f64() != Some(1.0) {
                    return refuse(
                        "Unsupported value: 'temperature' does not support this value with this \
                         model. Only the default (1) value is supported.",
                    );
                }
                if req["max_completion_tokens"].as_u64() != Some(4096) {
                    return refuse("max_completion_tokens: expected the recipe's 4096");
                }
            }
            "claude-haiku-4-5" => {
                let t = req["temperature"].as_f64().unwrap_or(-1.0);
                if !(0.0..=1.0).contains(&t) || req["max_tokens"].as_u64() != Some(4096) {
                    return refuse("temperature must be in [0, 1]; max_tokens 4096 expected");
                }
            }
            other => return refuse(&format!("model {other} not found")),
        }
        (
            200,
            r#"{"key_points": "x", "1": {"thought": "t", "score": 0.7}}"#.into(),
        )
    });
    let set = PromptSet::load("humanlm", &common::root().join("prompts")).unwrap();
    let judge_for = |file: &str, edit: &dyn Fn(&mut RubricConfig)| {
        let path = common::root().join("prompts/judges").join(file);
        let JudgeConfig::Rubric(mut cfg) = JudgeConfig::read(&path).unwrap() else {
            panic!("{file} is not a rubric judge");
        };
        let e = cfg.endpoint.as_mut().unwrap();
        e.base_url = server.url.clone();
        e.api_key_env = None;
        edit(&mut cfg);
        RubricJudge::new(
            cfg,
            &common::roots(),
            Arc::new(PromptSet::load("humanlm", &common::root().join("prompts")).unwrap()),
        )
        .unwrap()
    };
    for file in ["rubric-openai.toml", "rubric-anthropic.toml"] {
        let s = judge_for(file, &|_| {})
            .score_group(&group(&set, &[("against", true)]))
            .unwrap();
        assert_eq!(s[0].score, 0.7, "{file}: {:?}", s[0]);
        assert!(s[0].error.is_none(), "{file}: {:?}", s[0].error);
    }
    // gpt-5-mini sent the old way (max_tokens, temperature 0): refused once, as a
    // configuration error that carries the service's message.
    let before = server.prompts.lock().unwrap().len();
    let e = judge_for("rubric-openai.toml", &|c| {
        c.sampling.token_limit = humanlm::judge::llm::TokenLimit::MaxTokens;
        c.sampling.temperature = 0.0;
    })
    .score_group(&group(&set, &[("against", true)]))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("configuration") && e.contains("'max_tokens'"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    assert_eq!(
        server.prompts.lock().unwrap().len(),
        before + 1,
        "asked once"
    );
}

#[test]
fn an_unreachable_judge_is_an_error_in_the_score_not_a_crash() {
    let set = PromptSet::load("humanlm", &common::root().join("prompts")).unwrap();
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let judge = rubric(&format!("http://127.0.0.1:{port}/v1"), 1);
    let s = judge
        .score_group(&group(&set, &[("against", true)]))
        .unwrap();
    let err = s[0].error.as_deref().unwrap();
    assert!(err.contains("unreachable"), "{err}");
}

/// A prompt-set root holding the shipped sets and two sets imported from the recipe-layout
/// fixture: `paper-r` (the evaluation config `r`: the reply alone) and `paper-states`
/// (`sebvgcr`: the six states, for the state judge).
fn paper_prompts_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for set in ["humanlm", "instruct", "judges"] {
        common::copy_prompt_set(set, &root.path().join(set));
    }
    let recipe = common::fixture("recipe/humanlm");
    for (name, config) in [("paper-r", "r"), ("paper-states", "sebvgcr")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_humanlm"))
            .args(["prompts", "import"])
            .arg(&recipe)
            .args(["--name", name, "--config", config])
            .env("HUMANLM_PROMPTS", root.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    root
}

/// `humanlm eval` with `prompts` as the prompt-set root; (exit success, stdout, stderr).
fn eval_cli(prompts: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .arg("eval")
        .args(args)
        .env("HUMANLM_CHECKPOINTS", common::checkpoints())
        .env("HUMANLM_PROMPTS", prompts)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The paper's protocol end to end on the default model, in its base-model form (`paper-base`:
/// 512 new tokens; the trained form's 1,024 differ only in that number, which protocol.rs's
/// tests check, and decoding them took most of the time budget): the reply alone under the
/// imported `r` set, decoded as the recipe's evaluation (n 1, temperature 0.4, no n-gram ban as
/// its code), judged by a loopback judge at temperature 0 answering in the
/// recipe's JSON, with the state judge scoring the reply on every state. Checked: the judge
/// request is the imported set's recipe text, the per-domain scores and their macro average,
/// the published column, run.json's record of the preset, and `--rejudge` re-scoring without
/// generating.
#[test]
fn the_paper_protocol_runs_end_to_end_with_per_domain_results() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let prompts = paper_prompts_root();
    let sc = tempfile::tempdir().unwrap();
    let shipped = common::root().join("scenarios");
    for id in ["opinion-gym-etiquette-06", "politics-four-day-week-01"] {
        let l = humanlm::scenario::find(id, &shipped).unwrap();
        std::fs::copy(&l.path, sc.path().join(format!("{id}.toml"))).unwrap();
    }
    // Scores by scenario: the opinion thread is about a gym, the politics one about a council.
    // After `rejudge_to` is set (non-zero), every reply scores that instead.
    let rejudge_to = Arc::new(AtomicU64::new(0));
    let later = rejudge_to.clone();
    let requests = Arc::new(Mutex::new(vec![]));
    let seen = requests.clone();
    let server = serve_judge(move |req| {
        seen.lock().unwrap().push(req.clone());
        let prompt = req["messages"][0]["content"].as_str().unwrap_or_default();
        let mut score = if prompt.contains("borough council") {
            0.8
        } else {
            0.4
        };
        let r = later.load(Ordering::SeqCst);
        if r > 0 {
            score = r as f64 / 100.0;
        }
        if req["model"] == "state-judge" {
            let by: serde_json::Map<String, serde_json::Value> = [
                "stance",
                "emotion",
                "belief",
                "value",
                "goal",
                "communication",
            ]
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    serde_json::json!({"thought": "t", "score": 0.5}),
                )
            })
            .collect();
            return (200, serde_json::Value::Object(by).to_string());
        }
        (
            200,
            format!(r#"{{"1": {{"thought": "key points", "score": {score}}}}}"#),
        )
    });
    let judges = tempfile::tempdir().unwrap();
    let judge = judges.path().join("judge.toml");
    let judge_file = |top: &str, model: &str| {
        format!(
            "{top}\n[endpoint]\nbase_url = \"{}\"\nmodel = \"{model}\"\nretries = 0\n\
             [sampling]\ntemperature = 0.0\nmax_tokens = 4096\n",
            server.url
        )
    };
    std::fs::write(&judge, judge_file("kind = \"rubric\"", "judge")).unwrap();
    let state_judge = judges.path().join("state-judge.toml");
    let top = "kind = \"aspects\"\nprompts = \"paper-states\"";
    std::fs::write(&state_judge, judge_file(top, "state-judge")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let scenarios = sc.path().to_str().unwrap().to_string();
    let out_dir = out.path().to_str().unwrap().to_string();
    let (judge_s, state_s) = (
        judge.to_str().unwrap().to_string(),
        state_judge.to_str().unwrap().to_string(),
    );
    let args = [
        "--checkpoint",
        "smollm2-135m-instruct",
        "--scenarios",
        &scenarios,
        "--protocol",
        "paper-base",
        "--prompts",
        "paper-r",
        "--judge",
        &judge_s,
        "--state-judge",
        &state_s,
        "--paper",
        "qwen3-8b",
        "--out",
        &out_dir,
    ];
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let (ok, stdout, stderr) = eval_cli(prompts.path(), &with_json);
    assert!(ok, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let c = &summary["checkpoints"][0];
    let close = |v: &serde_json::Value, want: f64| {
        let got = v
            .as_f64()
            .unwrap_or_else(|| panic!("no number for {want}: {stdout}"));
        assert!((got - want).abs() < 1e-9, "{got} != {want}: {stdout}");
    };
    close(&c["by_domain"]["response"]["opinion"]["mean"], 40.0);
    close(&c["by_domain"]["response"]["politics"]["mean"], 80.0);
    close(&c["macro_average"]["response"]["mean"], 60.0);
    close(&c["macro_average"]["aspect.stance"]["mean"], 50.0);
    assert!(c["by_domain"]["embedding"]["politics"]["mean"].is_number());
    close(&c["paper"]["response"]["opinion"], 18.7);
    assert_eq!(c["diagnostics"]["judge_failures"], 0);

    // The judge saw the imported set's recipe request for the reply that was generated, at
    // temperature 0; the state judge was asked once per reply.
    let dir = Path::new(&out_dir).join(summary["run"].as_str().unwrap());
    let records = eval::read_samples(&dir.join("samples.jsonl"));
    assert_eq!(records.len(), 2);
    let set = PromptSet::load("paper-r", prompts.path()).unwrap();
    let reqs = requests.lock().unwrap().clone();
    for r in &records {
        let scenario = humanlm::scenario::find(&r.scenario, sc.path())
            .unwrap()
            .scenario;
        let context = set.thread(&humanlm::sim::thread_turns(&scenario)).unwrap();
        if r.sim.response.trim().is_empty() {
            continue; // scored 0 without a call
        }
        let want = set
            .judge(
                set.response(),
                &context,
                &r.reference,
                &[r.sim.response.as_str()],
            )
            .unwrap();
        assert!(
            reqs.iter()
                .any(|q| q["model"] == "judge" && q["messages"][0]["content"] == want.as_str()),
            "no judge request with the recipe text for {}",
            r.scenario
        );
    }
    assert!(reqs.iter().all(|q| q["temperature"] == 0.0));
    assert_eq!(
        reqs.iter().filter(|q| q["model"] == "state-judge").count(),
        2
    );

    // run.json records the preset as the recipe's code runs it.
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["protocol"]["name"], "paper-base");
    assert_eq!(info["protocol"]["no_repeat_ngram"], 0);
    assert_eq!(info["protocol"]["stop"], "</response>");
    assert_eq!(info["protocol"]["thinking"], true);
    let used = &info["checkpoints"][0]["sampling_used"];
    assert_eq!(used["max_new_tokens"], 512);
    assert_eq!(used["no_repeat_ngram"], 0);
    assert_eq!(used["n"], 1);
    assert!((used["temperature"].as_f64().unwrap() - 0.4).abs() < 1e-6);
    assert_eq!(info["checkpoints"][0]["paper"], "qwen3-8b");
    let calls: Vec<&String> = records[0].sim.outputs.keys().collect();
    assert_eq!(calls, ["response"], "the reply alone is generated");

    // Keep the first judgement as a run of its own, to compare with the re-judged one.
    let before = Path::new(&out_dir).join("before");
    std::fs::create_dir(&before).unwrap();
    std::fs::copy(dir.join("samples.jsonl"), before.join("samples.jsonl")).unwrap();

    // --rejudge: every reply judged again (the judge now says 0.6), nothing generated again.
    rejudge_to.store(60, Ordering::SeqCst);
    let mut again = args.to_vec();
    again.push("--rejudge");
    let (ok, report, stderr) = eval_cli(prompts.path(), &again);
    assert!(ok, "{stderr}");
    let rejudged = eval::read_samples(&dir.join("samples.jsonl"));
    for (a, b) in records.iter().zip(&rejudged) {
        assert_eq!(a.sim.response, b.sim.response);
        if !b.sim.response.trim().is_empty() {
            assert!((b.scores["response"].score - 0.6).abs() < 1e-12);
        }
    }
    // compare pairs the runs per domain: opinion 40 → 60, politics 80 → 60, macro unchanged.
    let cmp = eval::compare(&before, &dir, 0).unwrap();
    let d = &cmp.by_domain["response"];
    assert!((d["opinion"].diff.mean - 20.0).abs() < 1e-9);
    assert!((d["politics"].diff.mean + 20.0).abs() < 1e-9);
    assert_eq!(d["opinion"].win_rate_b, 1.0);
    let m = &cmp.macro_average["response"];
    assert!(m.diff.mean.abs() < 1e-9 && (m.a - 60.0).abs() < 1e-9 && (m.b - 60.0).abs() < 1e-9);
    // The report lays the run out as Table 1: domains, the macro average, the paper's row.
    let header = report
        .lines()
        .find(|l| l.contains("METRIC"))
        .unwrap_or_else(|| panic!("{report}"));
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        &cols[cols.len() - 3..],
        ["opinion", "politics", "macro"],
        "{report}"
    );
    let response_row = report
        .lines()
        .find(|l| l.trim_start().starts_with("response"))
        .unwrap();
    assert!(response_row.contains("60.0"), "{report}");
    let paper_row = report
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("response"))
        .nth(1)
        .unwrap();
    let cells: Vec<&str> = paper_row.split_whitespace().collect();
    assert_eq!(&cells[cells.len() - 3..], ["18.7", "—", "9.5"], "{report}");
}

/// What contradicts the preset is refused before any model loads, with the fix in the message.
#[test]
fn the_paper_protocol_refuses_what_contradicts_it() {
    let prompts = paper_prompts_root();
    let sc = scenario_dir();
    let out = tempfile::tempdir().unwrap();
    let judges = tempfile::tempdir().unwrap();
    let judge = judges.path().join("judge.toml");
    std::fs::write(
        &judge,
        "kind = \"rubric\"\n[endpoint]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"j\"\n[sampling]\ntemperature = 1.0\n",
    )
    .unwrap();
    let base = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "--checkpoint",
            "smollm2-135m-instruct",
            "--scenarios",
            sc.path().to_str().unwrap(),
            "--protocol",
            "paper",
            "--out",
            out.path().to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&str]| {
        let a = base(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        eval_cli(prompts.path(), &refs)
    };
    let (ok, _, err) = run(&["--prompts", "paper-states", "--judge", "x.toml"]);
    assert!(!ok && err.contains("x.toml"), "{err}");
    let j = judge.to_str().unwrap();
    let (ok, _, err) = run(&["--prompts", "paper-r", "--judge", j]);
    assert!(
        !ok && err.contains("judges at temperature 0") && err.contains(j),
        "{err}"
    );
    std::fs::write(
        &judge,
        "kind = \"rubric\"\n[endpoint]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"j\"\n[sampling]\ntemperature = 0.0\n",
    )
    .unwrap();
    let (ok, _, err) = run(&["--prompts", "paper-states", "--judge", j]);
    assert!(!ok && err.contains("--config r"), "{err}");
    let (ok, _, err) = run(&["--prompts", "paper-r", "--judge", j, "--n", "4"]);
    assert!(!ok && err.contains("--n 1"), "{err}");
    let (ok, _, err) = run(&["--prompts", "paper-r", "--judge", j, "--paper", "nope"]);
    assert!(!ok && err.contains("humanlm-recipe"), "{err}");
    let (ok, _, err) = run(&["--prompts", "paper-r", "--judge", j, "--mode", "joint"]);
    assert!(!ok && err.contains("drop --mode"), "{err}");
    // Nothing was run: no run folder was left behind.
    assert_eq!(
        std::fs::read_dir(out.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

/// A loopback chat endpoint that streams `reply` (as server-sent events) for every request; as a
/// real server does, the reply ends before the stop string.
fn serve_streaming_chat(reply: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            read_request(&stream);
            // A chat chunk's `delta` and a text completion's `text`, so either route reads it.
            let chunk = serde_json::json!({
                "id": "x", "object": "chat.completion.chunk", "created": 0, "model": "sim",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": reply},
                             "text": reply, "finish_reason": "stop"}]
            });
            let events = format!("data: {chunk}\n\ndata: [DONE]\n\n");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{events}",
                events.len()
            );
        }
    });
    url
}

/// An endpoint is sent the n-gram size but may ignore it (vLLM and the hosted APIs do): a run
/// that asked an endpoint for a ban says "ban not applied" in run.json and the summary, and a
/// run that asked for none says nothing.
#[test]
fn an_endpoint_asked_for_an_ngram_ban_is_reported_as_not_applied() {
    let url = serve_streaming_chat("<response>Wipe the bench, mate.");
    let sc = tempfile::tempdir().unwrap();
    let root = common::root().join("scenarios");
    let l = humanlm::scenario::find("opinion-gym-etiquette-06", &root).unwrap();
    std::fs::copy(&l.path, sc.path().join("one.toml")).unwrap();
    let out = tempfile::tempdir().unwrap();
    for (size, noted) in [(4, true), (0, false)] {
        let mut s = spec(sc.path(), out.path());
        s.checkpoints = vec![format!("endpoint:{url}#sim")];
        s.mode = Mode::Response;
        s.judge = JudgeConfig::Lexical {
            metric: Default::default(),
        };
        s.sampling = SamplingChoice {
            no_repeat_ngram: Some(size),
            ..Default::default()
        };
        let dir = eval::run(&s, &common::roots(), None, &mut |_| {}).unwrap();
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
        let notes = info["checkpoints"][0]["notes"].as_array().unwrap().clone();
        let summary: eval::Summary =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(notes.len(), usize::from(noted), "{notes:?}");
        assert_eq!(summary.checkpoints[0].notes.len(), usize::from(noted));
        if noted {
            let n = notes[0].as_str().unwrap();
            assert!(n.contains("ban not applied") && n.contains("4-gram"), "{n}");
        }
        let records = eval::read_samples(&dir.join("samples.jsonl"));
        assert_eq!(
            records[0].sim.response, "Wipe the bench, mate.",
            "{:?}",
            records[0].sim
        );
    }
}
