//! Endpoint checkpoints (`endpoint:URL#MODEL`) and the judge's HTTP path, against the real
//! `humanlm serve` on loopback.

use crate::common;

use humanlm::judge::rubric::{RubricConfig, RubricJudge};
use humanlm::judge::{Group, Item, Judge};
use humanlm::prompts::PromptSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .args(["serve", "--port", "0", "--threads", "1"])
        .current_dir(common::root())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    Server {
        child,
        url: format!("{addr}/v1"),
    }
}

fn simulate(checkpoint: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .args([
            "simulate",
            "--checkpoint",
            checkpoint,
            "--prompts",
            "humanlm",
            "--scenario",
            "opinion-gym-etiquette-06",
            "--mode",
            "response",
            "--n",
            "2",
            "--seed",
            "5",
            "--temperature",
            "0.8",
            "--max-tokens",
            "12",
            "--threads",
            "1",
            "--json",
        ])
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The same simulation on the local checkpoint and through `humanlm serve` gives the same
/// samples: the prompt, the stop string and every sampling parameter travel over the API.
#[test]
fn an_endpoint_checkpoint_simulates_like_the_local_one() {
    let server = serve();
    let spec = format!("endpoint:{}#smollm2-135m-instruct", server.url);
    let local = simulate("smollm2-135m-instruct");
    let remote = simulate(&spec);
    assert_eq!(remote["checkpoint"], spec.as_str());
    let texts = |v: &serde_json::Value| -> Vec<String> {
        v["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s["outputs"]["response"]["raw"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(texts(&local).len(), 2);
    assert_eq!(texts(&local), texts(&remote));
    assert_ne!(texts(&local)[0], texts(&local)[1], "two samples, two seeds");
}

/// A rubric judge whose model is `humanlm serve`: the call goes over HTTP and what the model
/// said is kept, parsed into scores or recorded as a failure (a 135M model rarely writes the
/// JSON asked for).
#[test]
fn the_rubric_judge_runs_over_http() {
    let server = serve();
    let cfg = RubricConfig {
        checkpoint: Some(format!("endpoint:{}#smollm2-135m-instruct", server.url)),
        endpoint: None,
        prompts: None,
        sampling: humanlm::judge::llm::Sampling {
            temperature: 0.0,
            max_tokens: 48,
            token_limit: Default::default(),
            seed: 0,
        },
        retries: 0,
        backoff_s: 0.0,
        halve_malformed: false,
    };
    let set = Arc::new(PromptSet::load("humanlm", &common::root().join("prompts")).unwrap());
    let judge = RubricJudge::new(cfg, &common::roots(), set.clone()).unwrap();
    assert_eq!(judge.name(), "rubric:smollm2-135m-instruct");
    let g = Group {
        dimension: set.state("stance").unwrap(),
        context: "[op]\nShould gyms put up signs?",
        reference: "Signs won't fix lazy people.",
        items: vec![
            Item {
                text: "against signs",
                valid: true,
                tokens: None,
            },
            Item {
                text: "for signs",
                valid: true,
                tokens: None,
            },
        ],
    };
    let s = judge.score_group(&g).unwrap();
    assert_eq!(s.len(), 2);
    let raw = s[0].raw.as_deref().unwrap();
    assert!(!raw.trim().is_empty(), "the judge model's text is kept");
    for x in &s {
        assert!((0.0..=1.0).contains(&x.score));
        if let Some(e) = &x.error {
            assert!(e.contains("judge failed after 1 attempts"), "{e}");
            assert_eq!(x.score, 0.0);
        }
    }
}
