//! `humanlm serve` and the `remote` client, with real components: the real binary serving the
//! default checkpoint, the official `openai` Python package (from `.venv-test/`, made by
//! `scripts/test-venv.sh`), our own `remote::Endpoint`, and small loopback servers that fail
//! on purpose (HTTP 500, 429, a stall, non-JSON, a broken stream).

use crate::common;

use humanlm::model::chat::Message;
use humanlm::remote::{ChatRequest, Endpoint, EndpointConfig, ErrorKind, GenParams};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const MODEL: &str = "smollm2-135m-instruct";

/// A running `humanlm serve`; killed when dropped (so a failing test leaves no server behind).
pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start() -> Server {
        Self::start_with(&["--checkpoint", MODEL])
    }

    /// `humanlm serve --port 0` with `args`.
    pub(crate) fn start_with(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_humanlm"))
            .args(["serve", "--port", "0"])
            .args(args)
            .env("HUMANLM_CHECKPOINTS", common::checkpoints())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start humanlm");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let sink = stderr.clone();
            let err = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "humanlm serve printed no `listening on` line; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let port = line
            .strip_prefix("listening on http://127.0.0.1:")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Server {
            child,
            port,
            stderr,
        }
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn endpoint(&self) -> Endpoint {
        let mut cfg = EndpointConfig::new(&self.base_url(), MODEL);
        cfg.timeout_s = 60.0;
        cfg.retries = 0;
        Endpoint::new(cfg).unwrap()
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The venv's python: `HUMANLM_TEST_PYTHON`, else `.venv-test/bin/python`.
pub(crate) fn test_python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("HUMANLM_TEST_PYTHON") {
        return p.into();
    }
    let p = common::root().join(".venv-test/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test-venv.sh (it installs the `openai` package these tests \
         drive the server with), or set HUMANLM_TEST_PYTHON to a python that has it",
        p.display()
    );
    p
}

fn chat_req(question: &str, params: GenParams) -> ChatRequest {
    ChatRequest::new(vec![Message::new("user", question)], params)
}

fn greedy(max_tokens: usize) -> GenParams {
    GenParams {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

/// One server for the whole scenario (loading the model once): the official OpenAI client, our
/// client, bad requests, and a clean Ctrl-C while a stream is running.
#[test]
fn serve_with_openai_client_and_ours() {
    let python = test_python();
    let server = Server::start();

    // 1. The official OpenAI Python client.
    let out = Command::new(&python)
        .arg(common::root().join("scripts/tests/openai_client.py"))
        .args(["--base-url", &server.base_url(), "--model", MODEL])
        .output()
        .expect("cannot run the openai client script");
    assert!(
        out.status.success(),
        "the OpenAI client checks failed:\n{}\n{}\nserver stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.stderr()
    );

    // 2. Our client against the same server.
    let ep = server.endpoint();
    assert_eq!(ep.models().unwrap(), vec![MODEL.to_string()]);

    let req = chat_req("Name three fruits.", greedy(16));
    let full = ep.chat(&req).unwrap();
    let c = &full.choices[0];
    assert_eq!(c.message.role, "assistant");
    assert!(!c.message.content.trim().is_empty(), "{full:?}");
    let u = full.usage.unwrap();
    assert_eq!(u.total_tokens, u.prompt_tokens + u.completion_tokens);
    assert!(
        u.completion_tokens > 0 && u.completion_tokens <= 16,
        "{u:?}"
    );
    match c.finish_reason.as_deref() {
        Some("length") => assert_eq!(u.completion_tokens, 16),
        Some("stop") => {}
        other => panic!("finish_reason {other:?}"),
    }

    let mut deltas = String::new();
    let mut pieces = 0;
    let streamed = ep
        .chat_stream(&req, &mut |i, d| {
            assert_eq!(i, 0);
            deltas.push_str(d);
            pieces += 1;
        })
        .unwrap();
    assert!(pieces > 1, "text should arrive in pieces, got {pieces}");
    assert_eq!(deltas, c.message.content, "streamed deltas differ at T=0");
    assert_eq!(streamed.text(), full.text());
    assert_eq!(streamed.choices[0].finish_reason, c.finish_reason);
    assert_eq!(streamed.usage, full.usage);

    // A harness resends the whole conversation: the second request's prompt comes from the
    // prefix cache but its last block, and the usage says so as OpenAI's API does.
    let long = "The tenant and the landlord disagree about the deposit. ".repeat(40);
    let req3 = chat_req(&format!("{long}\nWho is right?"), greedy(4));
    let first = ep.chat(&req3).unwrap().usage.unwrap();
    let again = ep.chat(&req3).unwrap().usage.unwrap();
    let cached = |u: &humanlm::remote::wire::Usage| u.prompt_tokens_details.unwrap().cached_tokens;
    assert_eq!(cached(&first), 0, "{first:?}");
    assert!(
        cached(&again) + 128 >= again.prompt_tokens && cached(&again) < again.prompt_tokens,
        "{again:?}"
    );

    // n samples, seeded: the streamed batch equals the plain one, choice by choice.
    let sampled = GenParams {
        temperature: Some(1.0),
        seed: Some(7),
        n: Some(2),
        max_tokens: Some(8),
        top_k: Some(50),
        ..Default::default()
    };
    let req2 = chat_req("Describe your morning.", sampled);
    let plain = ep.chat(&req2).unwrap();
    let mut by_choice = [String::new(), String::new()];
    let streamed = ep
        .chat_stream(&req2, &mut |i, d| by_choice[i].push_str(d))
        .unwrap();
    assert_eq!(plain.choices.len(), 2);
    for (i, text) in by_choice.iter().enumerate() {
        assert_eq!(text, &plain.choices[i].message.content, "choice {i}");
        assert_eq!(&streamed.choices[i].message.content, text);
    }

    // Raw completions, a stop string cutting the text where we ask.
    let prompt = "The three primary colours are";
    let comp = ep.complete(prompt, &greedy(12)).unwrap();
    let text = comp.text().to_string();
    let mut streamed_text = String::new();
    let cs = ep
        .complete_stream(prompt, &greedy(12), &mut |_, d| streamed_text.push_str(d))
        .unwrap();
    assert_eq!(streamed_text, text);
    assert_eq!(cs.text(), text);
    let cut = text
        .char_indices()
        .nth(text.chars().count() / 2)
        .map(|(i, _)| i)
        .unwrap();
    let stop = text[cut..].chars().take(2).collect::<String>();
    let stopped = ep
        .complete(
            prompt,
            &GenParams {
                stop: Some(vec![stop.clone()]),
                ..greedy(12)
            },
        )
        .unwrap();
    let before = &text[..text.find(&stop).unwrap()];
    assert_eq!(stopped.text(), before, "stop {stop:?} in {text:?}");
    assert_eq!(stopped.choices[0].finish_reason.as_deref(), Some("stop"));

    // 3. Bad requests: OpenAI-style errors, not retried (4xx).
    let mut retrying = EndpointConfig::new(&server.base_url(), "no-such-model");
    retrying.retries = 3;
    let e = Endpoint::new(retrying).unwrap().chat(&req).unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Status { code: 404, .. }) && e.attempts == 1,
        "{e}"
    );
    assert!(e.to_string().contains("no-such-model"), "{e}");
    let e = ep
        .chat(&chat_req(
            "x",
            GenParams {
                temperature: Some(-0.5),
                ..Default::default()
            },
        ))
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Status { code: 400, .. })
            && e.to_string().contains("temperature"),
        "{e}"
    );
    let long = "hello ".repeat(9000);
    let e = ep.complete(&long, &greedy(4)).unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Status { code: 400, .. }) && e.to_string().contains("context"),
        "{e}"
    );
    for (body, want) in [
        ("{not json", "invalid request body"),
        (r#"{"model": "smollm2-135m-instruct"}"#, "messages"),
        (
            r#"{"model": "smollm2-135m-instruct", "messages": []}"#,
            "at least one message",
        ),
        (
            r#"{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "x"}], "logprobs": true}"#,
            "logprobs",
        ),
    ] {
        let (status, reply) = raw_post(server.port, "/v1/chat/completions", body);
        assert_eq!(status, 400, "{body} → {reply}");
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{body} → {reply}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }

    // 4. Ctrl-C while a stream runs: the stream ends early and the server exits cleanly.
    let (first_tx, first_rx) = mpsc::channel();
    let streaming = {
        let ep = ep.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            ep.complete_stream("Once upon a time", &greedy(4000), &mut |_, _| {
                if !sent {
                    let _ = first_tx.send(());
                    sent = true;
                }
            })
        })
    };
    first_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the long stream never started");
    let mut server = server;
    let t0 = Instant::now();
    let status = Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the server did not exit within 20 s of Ctrl-C; stderr:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        exit.success(),
        "exit status {exit:?}; stderr:\n{}",
        server.stderr()
    );
    let r = streaming.join().unwrap().unwrap();
    let u = r.usage.unwrap();
    assert!(
        u.completion_tokens < 4000,
        "the stream should have been cut short: {u:?}"
    );
    assert!(
        server.stderr().contains("shutting down"),
        "{}",
        server.stderr()
    );
}

/// POST `body` with std only (no client logic in between); returns status and body.
pub(crate) fn raw_post(port: u16, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = reply.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

/// A loopback HTTP server answering every request with `reply(hit number, request text)`,
/// optionally after a pause. Counts the requests it got.
pub(crate) struct Fake {
    pub(crate) url: String,
    pub(crate) hits: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

pub(crate) type Reply = (Duration, String);

pub(crate) fn fake(reply: impl Fn(usize, &str) -> Reply + Send + Sync + 'static) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(vec![]));
    let reply = Arc::new(reply);
    {
        let (hits, requests) = (hits.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (hits, requests, reply) = (hits.clone(), requests.clone(), reply.clone());
                std::thread::spawn(move || {
                    let Some(req) = read_request(&mut conn) else {
                        return;
                    };
                    let n = hits.fetch_add(1, Ordering::SeqCst);
                    requests.lock().unwrap().push(req.clone());
                    let (pause, text) = reply(n, &req);
                    std::thread::sleep(pause);
                    let _ = conn.write_all(text.as_bytes());
                    let _ = conn.flush();
                });
            }
        });
    }
    Fake {
        url,
        hits,
        requests,
    }
}

/// Head and body of one request (Content-Length framing, which is what ureq sends).
fn read_request(conn: &mut TcpStream) -> Option<String> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut head = String::new();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(head + &String::from_utf8_lossy(&body))
}

pub(crate) fn http(status: &str, content_type: &str, body: &str, extra_headers: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

fn client(url: &str, timeout_s: f64, retries: usize) -> Endpoint {
    let mut cfg = EndpointConfig::new(url, "m");
    cfg.timeout_s = timeout_s;
    cfg.retries = retries;
    Endpoint::new(cfg).unwrap()
}

const OK_CHAT: &str = r#"{"id": "x", "object": "chat.completion", "created": 1, "model": "m",
  "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
  "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}"#;

#[test]
fn client_errors_are_clear_and_retried_as_configured() {
    let req = chat_req("hi", greedy(4));

    // A closed port: unreachable, retried (a connection failure may be transient).
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/v1");
    let e = client(&url, 5.0, 1).chat(&req).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("endpoint {url}: unreachable (connection refused)")),
        "{e}"
    );
    assert_eq!(e.attempts, 2);

    // HTTP 500: retried `retries` times, then the body's message.
    let f = fake(|_, _| {
        (
            Duration::ZERO,
            http(
                "500 Internal Server Error",
                "application/json",
                r#"{"error": {"message": "the model fell over", "type": "server_error"}}"#,
                "",
            ),
        )
    });
    let e = client(&f.url, 5.0, 2).chat(&req).unwrap_err();
    assert_eq!(f.hits.load(Ordering::SeqCst), 3, "1 try + 2 retries");
    assert!(
        e.to_string().starts_with(&format!(
            "endpoint {}: HTTP 500: the model fell over",
            f.url
        )),
        "{e}"
    );
    assert!(!e.to_string().contains('\n'));

    // A 4xx is not retried.
    let f = fake(|_, _| {
        (
            Duration::ZERO,
            http(
                "400 Bad Request",
                "application/json",
                r#"{"error": {"message": "bad n"}}"#,
                "",
            ),
        )
    });
    let e = client(&f.url, 5.0, 3).chat(&req).unwrap_err();
    assert_eq!(f.hits.load(Ordering::SeqCst), 1);
    assert!(e.to_string().ends_with("HTTP 400: bad n"), "{e}");

    // 429 then success: retried after Retry-After, and the reply is used.
    let f = fake(|n, _| {
        if n == 0 {
            (
                Duration::ZERO,
                http(
                    "429 Too Many Requests",
                    "text/plain",
                    "slow down",
                    "Retry-After: 0\r\n",
                ),
            )
        } else {
            (
                Duration::ZERO,
                http("200 OK", "application/json", OK_CHAT, ""),
            )
        }
    });
    let r = client(&f.url, 5.0, 1).chat(&req).unwrap();
    assert_eq!(r.text(), "fine");
    assert_eq!(f.hits.load(Ordering::SeqCst), 2);
    // The request named the configured model and carried the parameters.
    let sent = f.requests.lock().unwrap()[1].clone();
    let body: serde_json::Value =
        serde_json::from_str(sent.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["model"], "m");
    assert_eq!(body["max_tokens"], 4);
    assert!(
        body.get("top_k").is_none(),
        "unset parameters are left out: {body}"
    );

    // A server that stalls past the timeout.
    let f = fake(|_, _| {
        (
            Duration::from_secs(3),
            http("200 OK", "application/json", OK_CHAT, ""),
        )
    });
    let t0 = Instant::now();
    let e = client(&f.url, 0.5, 0).chat(&req).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(
        e.to_string(),
        format!("endpoint {}: timed out after 0.5 s", f.url)
    );

    // Not JSON.
    let f = fake(|_, _| {
        (
            Duration::ZERO,
            http("200 OK", "text/html", "<html>hello</html>", ""),
        )
    });
    let e = client(&f.url, 5.0, 2).chat(&req).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("endpoint {}: reply is not valid JSON: ", f.url))
            && e.to_string().contains("<html>hello"),
        "{e}"
    );
    assert_eq!(
        f.hits.load(Ordering::SeqCst),
        1,
        "a malformed reply is not retried"
    );

    // A stream that breaks off after text was delivered: an error, and not retried (the caller
    // already saw the text).
    let f = fake(|_, _| {
        let chunk = r#"{"id": "s", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "partial"}, "finish_reason": null}]}"#;
        (
            Duration::ZERO,
            http(
                "200 OK",
                "text/event-stream",
                &format!("data: {chunk}\n\n"),
                "",
            ),
        )
    });
    let mut got = String::new();
    let e = client(&f.url, 5.0, 2)
        .chat_stream(&req, &mut |_, d| got.push_str(d))
        .unwrap_err();
    assert_eq!(got, "partial");
    assert_eq!(f.hits.load(Ordering::SeqCst), 1);
    assert!(e.to_string().contains("stream broke off"), "{e}");

    // The API key is read from the named variable and sent as a bearer token.
    let f = fake(|_, req| {
        if req
            .to_ascii_lowercase()
            .contains("authorization: bearer sekrit-123")
        {
            (
                Duration::ZERO,
                http("200 OK", "application/json", OK_CHAT, ""),
            )
        } else {
            (
                Duration::ZERO,
                http(
                    "401 Unauthorized",
                    "application/json",
                    r#"{"error": {"message": "no key"}}"#,
                    "",
                ),
            )
        }
    });
    let var = "HUMANLM_TEST_SERVE_KEY";
    std::env::set_var(var, "sekrit-123");
    let mut cfg = EndpointConfig::new(&f.url, "m");
    cfg.api_key_env = Some(var.into());
    assert_eq!(
        Endpoint::new(cfg).unwrap().chat(&req).unwrap().text(),
        "fine"
    );
    let e = client(&f.url, 5.0, 0).chat(&req).unwrap_err();
    assert!(e.to_string().ends_with("HTTP 401: no key"), "{e}");
}

/// Requests over the concurrency limit wait their turn: a server that takes 0.3 s per request
/// and a limit of 1 serve three threads in ≥ 0.9 s, never two at once.
#[test]
fn concurrency_limit_is_shared_by_clones() {
    let live = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let f = {
        let (live, peak) = (live.clone(), peak.clone());
        fake(move |_, _| {
            let now = live.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            live.fetch_sub(1, Ordering::SeqCst);
            (
                Duration::ZERO,
                http("200 OK", "application/json", OK_CHAT, ""),
            )
        })
    };
    let mut cfg = EndpointConfig::new(&f.url, "m");
    cfg.max_concurrency = 1;
    let ep = Endpoint::new(cfg).unwrap();
    let t0 = Instant::now();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let ep = ep.clone();
            std::thread::spawn(move || ep.chat(&chat_req("hi", greedy(4))).unwrap())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().text(), "fine");
    }
    assert_eq!(peak.load(Ordering::SeqCst), 1);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
}

/// Send `head` (request line and headers) and `body` on a fresh connection and return the raw
/// reply (status line first), or what arrived before `wait` ran out.
fn raw_request(port: u16, head: &str, body: &[u8], wait: Duration) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(wait)).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(body).unwrap();
    let mut out = vec![0u8; 4096];
    let n = c.read(&mut out).unwrap_or(0);
    String::from_utf8_lossy(&out[..n]).to_string()
}

fn wait_exit(server: &mut Server, within: Duration) -> (std::process::ExitStatus, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            return (s, t0.elapsed());
        }
        assert!(
            t0.elapsed() < within,
            "the server did not exit within {within:?}; stderr:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(server: &Server, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &server.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn a_stalled_or_oversized_request_and_a_crowd_cannot_tie_the_server_up() {
    let server = Server::start_with(&[
        "--checkpoint",
        MODEL,
        "--body-timeout-s",
        "1",
        "--max-body-mb",
        "0.01",
        "--max-requests",
        "1",
    ]);
    let head = |len: usize| {
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
    };
    // Half a body, then silence: 408 after the body timeout, not a connection held forever.
    let t0 = Instant::now();
    let reply = raw_request(
        server.port,
        &head(200),
        b"{\"model\": ",
        Duration::from_secs(10),
    );
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("did not arrive within 1 s"), "{reply}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // A body over the limit: 413.
    let big = vec![b' '; 20_000];
    let reply = raw_request(server.port, &head(big.len()), &big, Duration::from_secs(10));
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");

    // One request in flight (a long stream) is the bound: the next is told 503 at once.
    let ep = server.endpoint();
    let (first_tx, first_rx) = mpsc::channel();
    let streaming = std::thread::spawn(move || {
        let mut sent = false;
        ep.complete_stream("Once upon a time", &greedy(300), &mut |_, _| {
            if !sent {
                let _ = first_tx.send(());
                sent = true;
            }
        })
    });
    first_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let req = br#"{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#;
    let reply = raw_request(server.port, &head(req.len()), req, Duration::from_secs(10));
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(
        reply.to_lowercase().contains("retry-after: 1") && reply.contains("--max-requests"),
        "{reply}"
    );
    streaming.join().unwrap().unwrap();
    // The stream over, its permit is back.
    let reply = raw_request(server.port, &head(req.len()), req, Duration::from_secs(60));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[test]
fn shutdown_has_a_deadline_and_a_second_signal_stops_at_once() {
    let args = |deadline: &'static str| {
        [
            "--checkpoint",
            MODEL,
            "--body-timeout-s",
            "600",
            "--shutdown-timeout-s",
            deadline,
        ]
    };
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{";
    // A client that sent half a body and waits keeps a request open; SIGTERM still ends the
    // server once the deadline passes.
    let mut server = Server::start_with(&args("1"));
    let mut stalled = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stalled.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    signal(&server, "-TERM");
    let (status, took) = wait_exit(&mut server, Duration::from_secs(20));
    assert!(status.success(), "{status:?}; {}", server.stderr());
    assert!(
        took >= Duration::from_millis(800),
        "it did not wait for the request: {took:?}"
    );
    assert!(
        server.stderr().contains("deadline passed"),
        "{}",
        server.stderr()
    );
    drop(stalled);

    // With a long deadline, a second Ctrl-C stops it at once.
    let mut server = Server::start_with(&args("120"));
    let mut stalled = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stalled.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    signal(&server, "-INT");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "it should be waiting for the request"
    );
    signal(&server, "-INT");
    let (status, took) = wait_exit(&mut server, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        server.stderr().contains("a second signal"),
        "{}",
        server.stderr()
    );
    drop(stalled);
}
