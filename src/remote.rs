//! A client for OpenAI-compatible endpoints (vLLM, llama.cpp, `humanlm serve`, hosted APIs).
//!
//! Blocking, for worker threads: judges call a model behind an endpoint, and endpoint
//! checkpoints (`endpoint:URL#MODEL`) generate through one. An [`Endpoint`] is cheap to clone
//! and shares one connection pool and one concurrency limit across its clones and threads.
//! Connection failures, timeouts, 429 and 5xx replies are retried with exponential backoff and
//! jitter; other 4xx replies are not. Every error is one line naming the endpoint and what
//! happened.
//!
//! The request and reply types are the wire format in [`wire`], which `humanlm serve` uses too.

pub mod wire;

pub use wire::{
    ChatChoice, ChatChunk, ChatRequest, ChatResponse, CompletionChoice, CompletionRequest,
    CompletionResponse, GenParams, Usage,
};

use crate::model::chat::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Where an endpoint is and how to talk to it; fits in a TOML table (unknown keys refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Base URL up to and including the API version, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The model id sent with every request.
    pub model: String,
    /// Name of the environment variable holding the API key (read at request time); none: no
    /// `Authorization` header.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Limit for one request; for a streamed reply, for the reply to start and between chunks.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Requests in flight at once, over all clones of the endpoint.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Extra attempts after a connection failure, timeout, 429 or 5xx.
    #[serde(default = "default_retries")]
    pub retries: usize,
}

fn default_timeout_s() -> f64 {
    120.0
}
fn default_max_concurrency() -> usize {
    4
}
fn default_retries() -> usize {
    2
}

impl EndpointConfig {
    /// A config with the default timeout (120 s), concurrency (4) and retries (2), no API key.
    pub fn new(base_url: &str, model: &str) -> EndpointConfig {
        EndpointConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            timeout_s: default_timeout_s(),
            max_concurrency: default_max_concurrency(),
            retries: default_retries(),
        }
    }
}

/// What went wrong talking to an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    /// The configuration or a spec is unusable (no request was made).
    Config(String),
    /// `api_key_env` names a variable that is unset or empty.
    MissingKey(String),
    /// No connection could be made (refused, host unknown, network down).
    Unreachable(String),
    /// The connection broke after it was made.
    Connection(String),
    /// No complete reply within `timeout_s` seconds.
    Timeout(f64),
    /// An HTTP error status, with the message from the reply's body.
    Status { code: u16, message: String },
    /// The reply body is not JSON.
    InvalidJson(String),
    /// The reply is JSON but not what the API promises (or a stream broke off, or carried an
    /// error).
    Protocol(String),
}

impl ErrorKind {
    /// Worth another attempt: the failure may be transient.
    pub fn retryable(&self) -> bool {
        match self {
            ErrorKind::Unreachable(_) | ErrorKind::Connection(_) | ErrorKind::Timeout(_) => true,
            ErrorKind::Status { code, .. } => *code == 408 || *code == 429 || *code >= 500,
            _ => false,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorKind::Config(m) | ErrorKind::Protocol(m) => f.write_str(m),
            ErrorKind::MissingKey(var) => write!(
                f,
                "the API key variable {var} (api_key_env) is not set in the environment"
            ),
            ErrorKind::Unreachable(why) => write!(f, "unreachable ({why})"),
            ErrorKind::Connection(why) => write!(f, "connection failed ({why})"),
            ErrorKind::Timeout(s) => write!(f, "timed out after {s:.1} s"),
            ErrorKind::Status { code, message } => write!(f, "HTTP {code}: {message}"),
            ErrorKind::InvalidJson(why) => write!(f, "reply is not valid JSON: {why}"),
        }
    }
}

/// An endpoint error: `endpoint URL: what happened`, on one line.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    /// The endpoint's base URL.
    pub endpoint: String,
    pub kind: ErrorKind,
    /// Attempts made (1 + retries used).
    pub attempts: usize,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msg = format!("endpoint {}: {}", self.endpoint, self.kind);
        f.write_str(&one_line(&msg))?;
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// A failed attempt, before it becomes an `Error`.
struct Failure {
    kind: ErrorKind,
    /// The server's `Retry-After`, if it sent one.
    retry_after: Option<Duration>,
}

impl From<ErrorKind> for Failure {
    fn from(kind: ErrorKind) -> Failure {
        Failure {
            kind,
            retry_after: None,
        }
    }
}

/// A counting semaphore shared by all clones of an endpoint.
struct Limit {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Permit<'a>(&'a Limit);

impl Limit {
    fn acquire(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

struct Inner {
    cfg: EndpointConfig,
    /// `cfg.base_url` without a trailing slash.
    base: String,
    agent: ureq::Agent,
    limit: Limit,
}

/// A connection to one model behind an OpenAI-compatible endpoint. Clones share the pool and
/// the concurrency limit.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base_url", &self.inner.base)
            .field("model", &self.inner.cfg.model)
            .finish()
    }
}

/// Backoff before retry `n` (0-based): 0.5 s · 2ⁿ, at most 8 s, scaled by a random factor in
/// [0.5, 1) so that many clients do not retry in step.
fn backoff(n: usize) -> Duration {
    let base = (0.5 * 2f64.powi(n.min(8) as i32)).min(8.0);
    Duration::from_secs_f64(base * (0.5 + rand::random::<f64>() * 0.5))
}

/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Largest reply body read.
const MAX_BODY: u64 = 64 << 20;

impl Endpoint {
    pub fn new(cfg: EndpointConfig) -> Result<Endpoint> {
        let base = cfg.base_url.trim().trim_end_matches('/').to_string();
        let fail = |m: String| Error {
            endpoint: base.clone(),
            kind: ErrorKind::Config(m),
            attempts: 0,
        };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(fail(format!(
                "base_url must start with http:// or https:// (got {:?})",
                cfg.base_url
            )));
        }
        if cfg.model.trim().is_empty() {
            return Err(fail("model must not be empty".into()));
        }
        if !(cfg.timeout_s.is_finite() && cfg.timeout_s > 0.0) {
            return Err(fail(format!(
                "timeout_s must be > 0 (got {})",
                cfg.timeout_s
            )));
        }
        if cfg.max_concurrency == 0 {
            return Err(fail("max_concurrency must be ≥ 1".into()));
        }
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs_f64(cfg.timeout_s)))
                .max_idle_connections_per_host(cfg.max_concurrency.max(1))
                .user_agent(concat!("humanlm/", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        Ok(Endpoint {
            inner: Arc::new(Inner {
                limit: Limit {
                    free: Mutex::new(cfg.max_concurrency),
                    freed: Condvar::new(),
                },
                cfg,
                base,
                agent,
            }),
        })
    }

    /// Split an endpoint checkpoint spec `endpoint:http://host:port/v1#model` into its URL and
    /// model; `None` when `spec` is not one.
    pub fn parse_spec(spec: &str) -> Option<(String, String)> {
        let rest = spec.strip_prefix("endpoint:")?;
        let (url, model) = rest.split_once('#')?;
        let ok_url = url.starts_with("http://") || url.starts_with("https://");
        if !ok_url || model.trim().is_empty() || url.len() <= "https://".len() {
            return None;
        }
        Some((url.to_string(), model.to_string()))
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.inner.cfg
    }

    /// The model ids the endpoint serves (`GET /models`).
    pub fn models(&self) -> Result<Vec<String>> {
        let list: wire::ModelList = self.with_retries(|_| {
            let req = self.inner.agent.get(self.url("/models"));
            let req = self.authorize(req)?;
            let resp = req.call().map_err(|e| self.transport(e))?;
            self.read_json(resp, "a model list")
        })?;
        Ok(list.data.into_iter().map(|m| m.id).collect())
    }

    /// One chat completion (`POST /chat/completions`, not streamed). An empty `req.model` is
    /// filled in with the configured model.
    pub fn chat(&self, req: &ChatRequest) -> Result<ChatResponse> {
        let mut req = req.clone();
        self.fill_model(&mut req.model);
        req.stream = false;
        req.stream_options = None;
        self.with_retries(|_| {
            let resp = self.post("/chat/completions", &req, false)?;
            self.read_json(resp, "a chat completion")
        })
    }

    /// A streamed chat completion: `on_delta(choice, text)` gets the text as it arrives; the
    /// returned response holds the whole texts, finish reasons and (when the server sends it)
    /// usage. A failure before any text arrived is retried; after, it is returned.
    pub fn chat_stream(
        &self,
        req: &ChatRequest,
        on_delta: &mut dyn FnMut(usize, &str),
    ) -> Result<ChatResponse> {
        let mut req = req.clone();
        self.fill_model(&mut req.model);
        req.stream = true;
        req.stream_options = Some(wire::StreamOptions {
            include_usage: true,
        });
        let s = self.stream::<ChatChunk>("/chat/completions", &req, on_delta)?;
        Ok(ChatResponse {
            id: s.id,
            object: "chat.completion".into(),
            created: s.created,
            model: s.model,
            choices: s.choices,
            usage: s.usage,
        })
    }

    /// A raw text completion (`POST /completions`, not streamed).
    pub fn complete(&self, prompt: &str, params: &GenParams) -> Result<CompletionResponse> {
        let mut req = CompletionRequest::new(prompt, params.clone());
        self.fill_model(&mut req.model);
        self.with_retries(|_| {
            let resp = self.post("/completions", &req, false)?;
            self.read_json(resp, "a text completion")
        })
    }

    /// A streamed raw text completion; see [`Endpoint::chat_stream`].
    pub fn complete_stream(
        &self,
        prompt: &str,
        params: &GenParams,
        on_delta: &mut dyn FnMut(usize, &str),
    ) -> Result<CompletionResponse> {
        let mut req = CompletionRequest::new(prompt, params.clone());
        self.fill_model(&mut req.model);
        req.stream = true;
        req.stream_options = Some(wire::StreamOptions {
            include_usage: true,
        });
        let s = self.stream::<CompletionResponse>("/completions", &req, on_delta)?;
        Ok(CompletionResponse {
            id: s.id,
            object: "text_completion".into(),
            created: s.created,
            model: s.model,
            choices: s.choices,
            usage: s.usage,
        })
    }

    /// The one streamed request of both kinds: post `req` to `path`, read its event stream
    /// into choices, handing each choice's new text to `on_delta(choice, text)` as it arrives.
    /// A failure before any text arrived is retried; after, it is returned.
    fn stream<K: Chunk>(
        &self,
        path: &str,
        req: &impl Serialize,
        on_delta: &mut dyn FnMut(usize, &str),
    ) -> Result<Streamed<K::Choice>> {
        let mut delivered = false;
        self.with_retries(|_| {
            let resp = self.post(path, req, true)?;
            let mut out = Streamed {
                id: String::new(),
                created: 0,
                model: String::new(),
                choices: vec![],
                usage: None,
            };
            self.read_sse(resp, &mut delivered, |v| {
                let chunk: K = serde_json::from_value(v).map_err(|e| {
                    ErrorKind::Protocol(format!("stream chunk is not {}: {e}", K::WHAT))
                })?;
                let text = out.add(chunk.into_parts());
                for (i, t) in &text {
                    on_delta(*i, t);
                }
                Ok(Progress {
                    delivered: !text.is_empty(),
                    finished: out.finished(),
                })
            })?;
            Ok(out)
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.base)
    }

    fn fill_model(&self, model: &mut String) {
        if model.is_empty() {
            *model = self.inner.cfg.model.clone();
        }
    }

    fn error(&self, kind: ErrorKind, attempts: usize) -> Error {
        Error {
            endpoint: self.inner.base.clone(),
            kind,
            attempts,
        }
    }

    /// Run `attempt` under the concurrency limit, retrying transient failures. `attempt` gets
    /// the 0-based attempt number. The limit is not held while backing off.
    fn with_retries<T>(
        &self,
        mut attempt: impl FnMut(usize) -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        let mut n = 0;
        loop {
            let r = {
                let _permit = self.inner.limit.acquire();
                attempt(n)
            };
            match r {
                Ok(v) => return Ok(v),
                Err(f) if f.kind.retryable() && n < self.inner.cfg.retries => {
                    let wait = f
                        .retry_after
                        .map(|d| d.min(MAX_RETRY_AFTER))
                        .unwrap_or_else(|| backoff(n));
                    std::thread::sleep(wait);
                    n += 1;
                }
                Err(f) => return Err(self.error(f.kind, n + 1)),
            }
        }
    }

    fn authorize<B>(
        &self,
        req: ureq::RequestBuilder<B>,
    ) -> std::result::Result<ureq::RequestBuilder<B>, Failure> {
        let Some(var) = &self.inner.cfg.api_key_env else {
            return Ok(req);
        };
        match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => {
                Ok(req.header("authorization", format!("Bearer {}", key.trim())))
            }
            _ => Err(ErrorKind::MissingKey(var.clone()).into()),
        }
    }

    fn post(
        &self,
        path: &str,
        body: &impl Serialize,
        stream: bool,
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, Failure> {
        let mut req = self.inner.agent.post(self.url(path)).header(
            "accept",
            if stream {
                "text/event-stream"
            } else {
                "application/json"
            },
        );
        if stream {
            // A stream may run long: limit the wait for it to start and between chunks instead.
            let t = Some(Duration::from_secs_f64(self.inner.cfg.timeout_s));
            req = req
                .config()
                .timeout_global(None)
                .timeout_connect(t)
                .timeout_recv_response(t)
                .timeout_per_read(t)
                .build();
        }
        let req = self.authorize(req)?;
        let resp = req.send_json(body).map_err(|e| self.transport(e))?;
        self.check_status(resp)
    }

    /// An error status becomes a `Failure` with the body's message.
    fn check_status(
        &self,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, Failure> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .unwrap_or_default();
        let message = error_message(&body)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("no message").into());
        Err(Failure {
            kind: ErrorKind::Status {
                code: status.as_u16(),
                message,
            },
            retry_after,
        })
    }

    fn read_json<T: DeserializeOwned>(
        &self,
        resp: ureq::http::Response<ureq::Body>,
        what: &str,
    ) -> std::result::Result<T, Failure> {
        let mut resp = self.check_status(resp)?;
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| self.transport(e))?;
        let value: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| ErrorKind::InvalidJson(format!("{e} (reply starts {:?})", head(&body))))?;
        serde_json::from_value(value)
            .map_err(|e| ErrorKind::Protocol(format!("reply is not {what}: {e}")).into())
    }

    /// Read a server-sent-event stream, handing each `data:` JSON payload to `on_data` until
    /// `[DONE]`. `delivered` records whether any text reached the caller: after that a failure
    /// is not retried.
    fn read_sse(
        &self,
        resp: ureq::http::Response<ureq::Body>,
        delivered: &mut bool,
        mut on_data: impl FnMut(serde_json::Value) -> std::result::Result<Progress, ErrorKind>,
    ) -> std::result::Result<(), Failure> {
        let no_retry = |kind: ErrorKind, delivered: bool| -> Failure {
            // Text already handed out cannot be taken back: a broken stream is final then.
            let kind = match kind {
                k if delivered && k.retryable() => {
                    ErrorKind::Protocol(format!("stream broke off: {k}"))
                }
                k => k,
            };
            kind.into()
        };
        let mut reader = std::io::BufReader::new(resp.into_body().into_reader());
        let mut line = String::new();
        let mut finished = false;
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| no_retry(self.transport(ureq::Error::from(e)).kind, *delivered))?;
            if n == 0 {
                if finished {
                    return Ok(());
                }
                return Err(no_retry(
                    ErrorKind::Connection("the stream ended before [DONE]".into()),
                    *delivered,
                ));
            }
            let Some(data) = line.trim_end_matches(['\r', '\n']).strip_prefix("data:") else {
                continue; // blank separators, comments, `event:` and `id:` lines
            };
            let data = data.trim();
            if data == "[DONE]" {
                return Ok(());
            }
            let value: serde_json::Value = serde_json::from_str(data).map_err(|e| {
                no_retry(
                    ErrorKind::InvalidJson(format!(
                        "stream event: {e} (event starts {:?})",
                        head(data)
                    )),
                    *delivered,
                )
            })?;
            if value.get("error").is_some() {
                let msg = error_message(data).unwrap_or_else(|| head(data));
                return Err(no_retry(
                    ErrorKind::Protocol(format!("error in stream: {msg}")),
                    *delivered,
                ));
            }
            let p = on_data(value).map_err(|k| no_retry(k, *delivered))?;
            *delivered |= p.delivered;
            finished = p.finished;
        }
    }

    /// A transport error as a failure kind.
    fn transport(&self, e: ureq::Error) -> Failure {
        use std::io::ErrorKind as Io;
        let kind = match e {
            ureq::Error::Timeout(_) => ErrorKind::Timeout(self.inner.cfg.timeout_s),
            ureq::Error::Io(io) => match io.kind() {
                Io::TimedOut | Io::WouldBlock => ErrorKind::Timeout(self.inner.cfg.timeout_s),
                Io::ConnectionRefused => ErrorKind::Unreachable("connection refused".into()),
                Io::AddrNotAvailable | Io::NetworkUnreachable | Io::HostUnreachable => {
                    ErrorKind::Unreachable(io.to_string())
                }
                Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe => {
                    ErrorKind::Connection(format!("the server closed the connection: {io}"))
                }
                Io::UnexpectedEof => ErrorKind::Connection(
                    "the server closed the connection before replying in full".into(),
                ),
                _ => ErrorKind::Connection(io.to_string()),
            },
            ureq::Error::HostNotFound => ErrorKind::Unreachable("host not found".into()),
            ureq::Error::ConnectionFailed => ErrorKind::Unreachable("connection failed".into()),
            ureq::Error::BadUri(u) => ErrorKind::Config(format!("invalid URL: {u}")),
            ureq::Error::BodyExceedsLimit(n) => {
                ErrorKind::Protocol(format!("reply larger than {n} bytes"))
            }
            other => ErrorKind::Protocol(format!("malformed reply: {other}")),
        };
        kind.into()
    }
}

/// What one stream event did.
struct Progress {
    /// Text reached the caller.
    delivered: bool,
    /// Every choice seen so far has its finish reason.
    finished: bool,
}

/// A stream chunk of either kind, as the shared accumulator reads it.
trait Chunk: DeserializeOwned {
    /// What a chunk should be, for the error when it is not.
    const WHAT: &'static str;
    /// The reply's choice the chunk's deltas grow.
    type Choice: StreamedChoice;
    fn into_parts(self) -> ChunkParts;
}

/// What a chunk of either kind carries: the reply's head and one delta per choice.
struct ChunkParts {
    id: String,
    created: u64,
    model: String,
    usage: Option<Usage>,
    deltas: Vec<ChoiceDelta>,
}

/// New text (empty: none) for the choice with `index`, and its role or finish reason if sent.
struct ChoiceDelta {
    index: usize,
    role: Option<String>,
    text: String,
    finish_reason: Option<String>,
}

/// A reply's choice as a stream builds it up.
trait StreamedChoice {
    /// An empty choice, before any delta.
    fn new(index: usize) -> Self;
    fn index(&self) -> usize;
    fn finish_reason(&self) -> Option<&str>;
    fn set_finish_reason(&mut self, reason: String);
    /// Append text, and take the role if the delta names one.
    fn push(&mut self, role: Option<String>, text: &str);
}

impl Chunk for ChatChunk {
    const WHAT: &'static str = "a chat completion chunk";
    type Choice = ChatChoice;
    fn into_parts(self) -> ChunkParts {
        ChunkParts {
            id: self.id,
            created: self.created,
            model: self.model,
            usage: self.usage,
            deltas: self
                .choices
                .into_iter()
                .map(|c| ChoiceDelta {
                    index: c.index,
                    role: c.delta.role,
                    text: c.delta.content.unwrap_or_default(),
                    finish_reason: c.finish_reason,
                })
                .collect(),
        }
    }
}

impl Chunk for CompletionResponse {
    const WHAT: &'static str = "a text completion";
    type Choice = CompletionChoice;
    fn into_parts(self) -> ChunkParts {
        ChunkParts {
            id: self.id,
            created: self.created,
            model: self.model,
            usage: self.usage,
            deltas: self
                .choices
                .into_iter()
                .map(|c| ChoiceDelta {
                    index: c.index,
                    role: None,
                    text: c.text,
                    finish_reason: c.finish_reason,
                })
                .collect(),
        }
    }
}

impl StreamedChoice for ChatChoice {
    fn new(index: usize) -> Self {
        ChatChoice {
            index,
            message: Message::new("assistant", ""),
            finish_reason: None,
        }
    }
    fn index(&self) -> usize {
        self.index
    }
    fn finish_reason(&self) -> Option<&str> {
        self.finish_reason.as_deref()
    }
    fn set_finish_reason(&mut self, reason: String) {
        self.finish_reason = Some(reason);
    }
    fn push(&mut self, role: Option<String>, text: &str) {
        if let Some(role) = role {
            self.message.role = role;
        }
        self.message.content.push_str(text);
    }
}

impl StreamedChoice for CompletionChoice {
    fn new(index: usize) -> Self {
        CompletionChoice {
            index,
            text: String::new(),
            finish_reason: None,
            logprobs: None,
        }
    }
    fn index(&self) -> usize {
        self.index
    }
    fn finish_reason(&self) -> Option<&str> {
        self.finish_reason.as_deref()
    }
    fn set_finish_reason(&mut self, reason: String) {
        self.finish_reason = Some(reason);
    }
    fn push(&mut self, _role: Option<String>, text: &str) {
        self.text.push_str(text);
    }
}

/// A streamed reply of either kind so far: the first chunk's head, the last usage sent, and
/// the choices ordered by index.
struct Streamed<C> {
    id: String,
    created: u64,
    model: String,
    usage: Option<Usage>,
    choices: Vec<C>,
}

impl<C: StreamedChoice> Streamed<C> {
    /// Add one chunk; returns the new text per choice index, in the chunk's order.
    fn add(&mut self, chunk: ChunkParts) -> Vec<(usize, String)> {
        if self.id.is_empty() {
            self.id = chunk.id;
            self.created = chunk.created;
            self.model = chunk.model;
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        let mut text = vec![];
        for d in chunk.deltas {
            let choice = self.choice(d.index);
            choice.push(d.role, &d.text);
            if let Some(reason) = d.finish_reason {
                choice.set_finish_reason(reason);
            }
            if !d.text.is_empty() {
                text.push((d.index, d.text));
            }
        }
        text
    }

    /// Every choice seen so far has its finish reason.
    fn finished(&self) -> bool {
        !self.choices.is_empty() && self.choices.iter().all(|c| c.finish_reason().is_some())
    }

    /// The choice with `index`, created (and the list kept ordered by index) if new.
    fn choice(&mut self, index: usize) -> &mut C {
        let pos = match self.choices.iter().position(|c| c.index() == index) {
            Some(p) => p,
            None => {
                let p = self.choices.partition_point(|c| c.index() < index);
                self.choices.insert(p, C::new(index));
                p
            }
        };
        &mut self.choices[pos]
    }
}

/// The message of an error body: OpenAI's `{"error": {"message"}}`, or `{"error": "…"}`,
/// `{"detail": …}`, `{"message": …}`, or the body's text itself.
fn error_message(body: &str) -> Option<String> {
    let text = body.trim();
    if text.is_empty() {
        return None;
    }
    let from_json = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            let pick = |v: &serde_json::Value| -> Option<String> {
                match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Null => None,
                    other => Some(other.to_string()),
                }
            };
            v.pointer("/error/message")
                .and_then(pick)
                .or_else(|| v.get("error").filter(|e| e.is_string()).and_then(pick))
                .or_else(|| v.get("detail").and_then(pick))
                .or_else(|| v.get("message").and_then(pick))
        });
    Some(one_line(&from_json.unwrap_or_else(|| head(text))))
}

/// The first 200 characters of `s`, on one line.
fn head(s: &str) -> String {
    let mut h: String = s.chars().take(200).collect();
    if h.len() < s.len() {
        h.push('…');
    }
    one_line(&h)
}

/// Where the endpoints added in the workbench are kept, in the checkpoints folder.
pub const ENDPOINTS_FILE: &str = "endpoints.toml";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    #[serde(default)]
    endpoint: Vec<EndpointConfig>,
}

/// The endpoints of `<root>/endpoints.toml` (none when there is no file).
pub fn read_endpoints(root: &std::path::Path) -> std::result::Result<Vec<EndpointConfig>, String> {
    let path = root.join(ENDPOINTS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    toml::from_str::<EndpointsFile>(&text)
        .map(|f| f.endpoint)
        .map_err(|e| one_line(&format!("{}: {}", path.display(), e.message())))
}

/// Write `<root>/endpoints.toml` whole (a temporary file renamed into place).
pub fn save_endpoints(
    root: &std::path::Path,
    list: &[EndpointConfig],
) -> std::result::Result<std::path::PathBuf, String> {
    std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let path = root.join(ENDPOINTS_FILE);
    let body = toml::to_string(&EndpointsFile {
        endpoint: list.to_vec(),
    })
    .map_err(|e| e.to_string())?;
    let text = format!(
        "# OpenAI-compatible endpoints added in the workbench (Checkpoints, a). Each is used as the\n\
         # checkpoint `endpoint:BASE_URL#MODEL`; api_key_env names the variable holding the key.\n\n{body}"
    );
    crate::files::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

impl EndpointConfig {
    /// The configuration of `endpoint:URL#MODEL`: the one saved in `<root>/endpoints.toml` (with
    /// its API-key variable and limits) when it is listed there, the defaults otherwise.
    pub fn for_spec(url: &str, model: &str, root: &std::path::Path) -> EndpointConfig {
        let same =
            |a: &str, b: &str| a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/');
        read_endpoints(root)
            .unwrap_or_default()
            .into_iter()
            .find(|c| same(&c.base_url, url) && c.model == model)
            .unwrap_or_else(|| EndpointConfig::new(url, model))
    }
}

/// Why an endpoint's fields (as typed in the workbench's add-an-endpoint form) are refused,
/// naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EndpointFieldError {
    #[error("URL '{0}': it starts with http:// or https:// and ends with the API version, e.g. http://127.0.0.1:8000/v1")]
    Scheme(String),
    #[error("URL '{0}': no host")]
    NoHost(String),
    #[error("URL '{0}': no spaces or '#'")]
    UrlChars(String),
    #[error("model: the model id the server serves (its GET /models lists them)")]
    NoModel,
    #[error("model '{0}': no spaces or '#'")]
    ModelChars(String),
    // The value is not repeated: it may be the key itself, pasted in the wrong place.
    #[error("key env: the NAME of the environment variable that holds the key (e.g. OPENAI_API_KEY), never the key itself")]
    KeyEnv,
}

/// An endpoint's base URL, trimmed and without a trailing `/`: `http(s)://HOST…`, no spaces or
/// `#` (the spec `endpoint:URL#MODEL` splits at `#`).
pub fn endpoint_url(url: &str) -> std::result::Result<String, EndpointFieldError> {
    let url = url.trim().trim_end_matches('/').to_string();
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match host {
        None => return Err(EndpointFieldError::Scheme(url)),
        Some(h) if h.is_empty() || h.starts_with('/') => {
            return Err(EndpointFieldError::NoHost(url))
        }
        _ => {}
    }
    if url.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(EndpointFieldError::UrlChars(url));
    }
    Ok(url)
}

/// A model id as the server serves it, trimmed: not empty, no spaces or `#`.
pub fn endpoint_model(model: &str) -> std::result::Result<String, EndpointFieldError> {
    let model = model.trim().to_string();
    if model.is_empty() {
        return Err(EndpointFieldError::NoModel);
    }
    if model.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(EndpointFieldError::ModelChars(model));
    }
    Ok(model)
}

/// The name of the variable holding the API key, trimmed (`None` when empty): an identifier,
/// and not a pasted key (`sk-…`).
pub fn endpoint_key_env(var: &str) -> std::result::Result<Option<String>, EndpointFieldError> {
    let var = var.trim();
    if var.is_empty() {
        return Ok(None);
    }
    let ident = var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !var.starts_with(|c: char| c.is_ascii_digit());
    if !ident || var.starts_with("sk-") {
        return Err(EndpointFieldError::KeyEnv);
    }
    Ok(Some(var.to_string()))
}

/// An endpoint from its three fields as typed (URL, model, key variable), each checked in that
/// order.
pub fn checked_endpoint(
    url: &str,
    model: &str,
    key_env: &str,
) -> std::result::Result<EndpointConfig, EndpointFieldError> {
    let url = endpoint_url(url)?;
    let model = endpoint_model(model)?;
    let mut cfg = EndpointConfig::new(&url, &model);
    cfg.api_key_env = endpoint_key_env(key_env)?;
    Ok(cfg)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_endpoint_brings_its_key_variable() {
        let dir = tempfile::tempdir().unwrap();
        let mut saved = EndpointConfig::new("http://127.0.0.1:9/v1", "judge");
        saved.api_key_env = Some("JUDGE_KEY".into());
        save_endpoints(dir.path(), std::slice::from_ref(&saved)).unwrap();
        let found = EndpointConfig::for_spec("http://127.0.0.1:9/v1/", "judge", dir.path());
        assert_eq!(found.api_key_env.as_deref(), Some("JUDGE_KEY"));
        let other = EndpointConfig::for_spec("http://127.0.0.1:9/v1", "other", dir.path());
        assert_eq!(other.api_key_env, None);
    }

    #[test]
    fn spec_parsing() {
        assert_eq!(
            Endpoint::parse_spec("endpoint:http://127.0.0.1:8000/v1#Qwen/Qwen3-8B"),
            Some((
                "http://127.0.0.1:8000/v1".to_string(),
                "Qwen/Qwen3-8B".to_string()
            ))
        );
        assert_eq!(Endpoint::parse_spec("smollm2-135m-instruct"), None);
        assert_eq!(Endpoint::parse_spec("endpoint:http://h/v1"), None);
        assert_eq!(Endpoint::parse_spec("endpoint:http://h/v1#"), None);
        assert_eq!(Endpoint::parse_spec("endpoint:ftp://h/v1#m"), None);
    }

    #[test]
    fn config_from_toml() {
        let c: EndpointConfig =
            toml::from_str("base_url = \"http://h:1/v1\"\nmodel = \"m\"\nretries = 5").unwrap();
        assert_eq!(c.retries, 5);
        assert_eq!(c.timeout_s, 120.0);
        assert_eq!(c.max_concurrency, 4);
        let e = toml::from_str::<EndpointConfig>("base_url = \"x\"\nmodel = \"m\"\nretry = 5")
            .unwrap_err();
        assert!(e.to_string().contains("retry"), "{e}");
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = EndpointConfig::new("127.0.0.1:8000/v1", "m");
        let e = Endpoint::new(c.clone()).unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        c.base_url = "http://127.0.0.1:8000/v1/".into();
        c.timeout_s = 0.0;
        assert!(Endpoint::new(c.clone()).is_err());
        c.timeout_s = 1.0;
        c.max_concurrency = 0;
        assert!(Endpoint::new(c.clone()).is_err());
        c.max_concurrency = 1;
        let ep = Endpoint::new(c).unwrap();
        assert_eq!(ep.url("/models"), "http://127.0.0.1:8000/v1/models");
    }

    #[test]
    fn missing_key_variable_is_named() {
        let mut c = EndpointConfig::new("http://127.0.0.1:9/v1", "m");
        c.api_key_env = Some("HUMANLM_TEST_SURELY_UNSET_KEY".into());
        c.retries = 3;
        let e = Endpoint::new(c).unwrap().models().unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::MissingKey("HUMANLM_TEST_SURELY_UNSET_KEY".into())
        );
        assert_eq!(e.attempts, 1, "a missing key is not retried");
        assert!(
            e.to_string().contains("HUMANLM_TEST_SURELY_UNSET_KEY"),
            "{e}"
        );
    }

    #[test]
    fn error_messages_from_bodies() {
        assert_eq!(
            error_message(r#"{"error": {"message": "bad\nthing", "type": "x"}}"#).as_deref(),
            Some("bad thing")
        );
        assert_eq!(
            error_message(r#"{"error": "boom"}"#).as_deref(),
            Some("boom")
        );
        assert_eq!(
            error_message(r#"{"detail": "nope"}"#).as_deref(),
            Some("nope")
        );
        assert_eq!(
            error_message("<html>oops</html>").as_deref(),
            Some("<html>oops</html>")
        );
        assert_eq!(error_message("  "), None);
    }

    #[test]
    fn limit_counts() {
        let l = Limit {
            free: Mutex::new(2),
            freed: Condvar::new(),
        };
        let a = l.acquire();
        let _b = l.acquire();
        assert_eq!(*l.free.lock().unwrap(), 0);
        drop(a);
        assert_eq!(*l.free.lock().unwrap(), 1);
    }

    #[test]
    fn endpoint_fields_are_checked_by_name() {
        let ok =
            checked_endpoint(" https://api.example.com/v1/ ", " gpt-5-mini ", " KEY_1 ").unwrap();
        assert_eq!(ok.base_url, "https://api.example.com/v1");
        assert_eq!(ok.model, "gpt-5-mini");
        assert_eq!(ok.api_key_env.as_deref(), Some("KEY_1"));
        assert_eq!(endpoint_key_env(" "), Ok(None));
        let err = |u: &str, m: &str, k: &str| checked_endpoint(u, m, k).unwrap_err();
        assert_eq!(
            err("ftp://h/v1", "m", ""),
            EndpointFieldError::Scheme("ftp://h/v1".into())
        );
        assert_eq!(
            err("http:///v1", "m", ""),
            EndpointFieldError::NoHost("http:///v1".into())
        );
        assert_eq!(
            err("http://h/v#1", "m", ""),
            EndpointFieldError::UrlChars("http://h/v#1".into())
        );
        assert_eq!(err("http://h/v1", " ", ""), EndpointFieldError::NoModel);
        assert_eq!(
            err("http://h/v1", "a b", ""),
            EndpointFieldError::ModelChars("a b".into())
        );
        assert_eq!(err("http://h/v1", "m", "1KEY"), EndpointFieldError::KeyEnv);
        assert_eq!(
            err("http://h/v1", "m", "sk-abc"),
            EndpointFieldError::KeyEnv
        );
        // A pasted key is never repeated in the message.
        assert!(!err("http://h/v1", "m", "sk-secret")
            .to_string()
            .contains("secret"));
        // The URL is checked before the model, the model before the key variable.
        assert!(matches!(err("x", "", "1"), EndpointFieldError::Scheme(_)));
        assert_eq!(err("http://h/v1", "", "1"), EndpointFieldError::NoModel);
    }
}
