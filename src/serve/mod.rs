//! `humanlm serve`: an OpenAI-compatible endpoint on loopback, so agent-evaluation harnesses that
//! speak the OpenAI API can talk to a simulated user.
//!
//! Routes: `GET /v1/models` (and `/v1/models/{id}`), `POST /v1/chat/completions`,
//! `POST /v1/completions`, `GET /health`. Requests and replies are the types of
//! [`crate::remote::wire`], the same ones our client sends and reads. Beyond OpenAI's parameters
//! the vLLM extras `top_k`, `min_p`, `repetition_penalty`, `no_repeat_ngram`,
//! `chat_template_kwargs` and `add_generation_prompt` are accepted; any other parameter with a
//! non-trivial value is refused with a 400 rather than silently ignored.
//!
//! One generation runs at a time: requests are validated and tokenized on the async runtime,
//! then queued (first come, first served) for a single worker thread that owns the model and
//! uses every core for one batch; `n` choices of one request do decode together as a batch. A
//! client that disconnects cancels its generation (or its place in the queue). Ctrl-C or SIGTERM
//! cancels what runs, refuses what waits, and exits once the open replies are finished.

use crate::generate::{self, Event as GenEvent, Generation, SamplingParams, StopReason};
use crate::model::chat::Message;
use crate::model::Model;
use crate::remote::wire::{
    self, ChatChoice, ChatChunk, ChatRequest, ChatResponse, ChunkChoice, CompletionChoice,
    CompletionRequest, CompletionResponse, Delta, ErrorBody, GenParams, ModelCard, ModelList,
    StreamOptions, Usage,
};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// What can stop the server itself (a request's faults are [`ApiError`] replies instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("the generation worker panicked")]
    WorkerPanicked,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The server's result; request handlers name their own error type (`Result<T, ApiError>`).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Most choices one request may ask for (they decode as one batch).
pub const MAX_N: usize = 16;

/// Serve `model` on `host:port` (port 0: any free port) until Ctrl-C or SIGTERM. Prints
/// `listening on http://HOST:PORT` on stdout once bound.
/// `serve --as-user`: the server is the simulated user of a scenario. A chat request carries the
/// conversation from the assistant's side (`system` = the agent's prompt, which the user never
/// sees; `assistant` = the agent's turns; `user` = the simulated user's earlier turns); the reply
/// is the user's next turn, written by [`crate::converse::user_turn`] under the prompt set, mode
/// and the scenario's persona and intent, with the end marker appended when the user ends the
/// conversation. The request's `seed` is the conversation's seed (each turn draws its own from
/// it, as `humanlm converse` does), so the same conversation and seed give the same turn.
pub struct AsUser {
    /// Persona, intent and end markers; its thread is replaced by the request's conversation.
    scenario: crate::scenario::Scenario,
    set: crate::prompts::PromptSet,
    mode: crate::sim::Mode,
    /// The user's sampling; a request's temperature, top_p and max_tokens override it.
    sampling: crate::sim::SamplingChoice,
}

impl AsUser {
    /// The simulated user of `scenario` (whose thread the requests' conversations replace).
    pub fn new(
        mut scenario: crate::scenario::Scenario,
        set: crate::prompts::PromptSet,
        mode: crate::sim::Mode,
        sampling: crate::sim::SamplingChoice,
    ) -> AsUser {
        scenario.turns.clear();
        AsUser {
            scenario,
            set,
            mode,
            sampling,
        }
    }

    /// The request's conversation as turns, from the simulated user's side.
    fn turns(&self, messages: &[Message]) -> Result<Vec<crate::converse::Turn>, ApiError> {
        use crate::scenario::Speaker;
        let mut turns = vec![];
        for (i, m) in messages.iter().enumerate() {
            let speaker = match m.role.as_str() {
                "system" | "developer" => continue,
                "user" => Speaker::User,
                "assistant" => Speaker::Assistant,
                other => {
                    return Err(ApiError::bad(format!(
                        "messages[{i}]: role `{other}` is not supported by a simulated user (system, user, assistant)"
                    )))
                }
            };
            turns.push(crate::converse::Turn::said(speaker, &m.content));
        }
        Ok(turns)
    }

    /// The job for a request: its turns, sampling and seed, checked to fit the context.
    fn job(&self, messages: &[Message], p: &GenParams, model: &Model) -> Result<Work, ApiError> {
        if p.n.unwrap_or(1) != 1 {
            return Err(ApiError::bad(
                "n must be 1: a simulated user writes one next turn",
            ));
        }
        if p.stop.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad(
                "stop is not supported by a simulated user: its turn ends where the prompt set's reply ends",
            ));
        }
        let turns = self.turns(messages)?;
        let mut sampling = crate::sim::SamplingChoice {
            n: 1,
            ..self.sampling.clone()
        };
        if let Some(t) = p.temperature {
            sampling.temperature = Some(t);
        }
        if let Some(t) = p.top_p {
            sampling.top_p = t;
        }
        if let Some(m) = p.max_new_tokens() {
            if m == 0 {
                return Err(ApiError::bad("max_tokens must be at least 1"));
            }
            sampling.max_tokens = Some(m);
        }
        // The prompts are rendered here (cheap) so a conversation past the context is a 400
        // before it queues, as for a plain request.
        let view = crate::converse::user_view(&self.scenario, &turns);
        let opts = crate::sim::Options::new(self.mode, sampling.params(&self.set));
        match crate::sim::plan(&self.set, &view, &opts, model) {
            Ok(_) => {}
            Err(e @ crate::sim::Error::TooLong { .. }) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    e.to_string(),
                    "invalid_request_error",
                    Some("context_length_exceeded"),
                ))
            }
            Err(e) => return Err(ApiError::bad(e.to_string())),
        }
        let seed = crate::converse::turn_seed(p.seed.unwrap_or(sampling.seed), turns.len());
        Ok(Work::UserTurn {
            turns,
            sampling,
            seed,
        })
    }

    /// Write the turn (on the worker).
    fn run(
        &self,
        model: &Model,
        turns: &[crate::converse::Turn],
        sampling: &crate::sim::SamplingChoice,
        seed: u64,
        cancel: &AtomicBool,
    ) -> std::result::Result<Generation, String> {
        use crate::converse::TurnFault;
        let side = crate::converse::UserSide {
            engine: crate::sim::Engine::Local(model),
            set: &self.set,
            mode: self.mode,
            sampling: sampling.clone(),
        };
        let turn = crate::converse::user_turn(
            &side,
            &self.scenario,
            turns,
            seed,
            Some(cancel),
            &mut |_| {},
        );
        let (text, tokens, reason, prompt, cached) = match turn {
            Ok(t) => (
                match &t.marker {
                    Some(m) if t.text.is_empty() => m.clone(),
                    Some(m) => format!("{} {m}", t.text),
                    None => t.text,
                },
                t.tokens,
                match t.stop_reason {
                    Some(StopReason::Length) => StopReason::Length,
                    _ => StopReason::Stop,
                },
                t.prompt_tokens,
                t.cached_tokens,
            ),
            Err(TurnFault::Cancelled) => (String::new(), 0, StopReason::Cancelled, 0, 0),
            Err(TurnFault::Context(e)) | Err(TurnFault::Error(e)) => return Err(e),
        };
        Ok(Generation {
            samples: vec![generate::Sample {
                text,
                token_ids: vec![],
                tokens,
                stop_reason: reason,
                stop_string: None,
                eos_token: None,
            }],
            prompt_tokens: prompt,
            cached_prompt_tokens: cached,
            ttft_ms: 0.0,
            tokens_per_s: 0.0,
            prefill_tokens_per_s: 0.0,
        })
    }
}

pub fn run(model: Model, host: &str, port: u16) -> Result<()> {
    run_as(model, None, host, port, Limits::default())
}

/// What the server tolerates from clients, so none can tie it up or keep it from stopping.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request body must arrive within this (408 otherwise).
    pub body_timeout: std::time::Duration,
    /// Larger request bodies are refused (413).
    pub max_body: usize,
    /// Requests in flight (queued, generating or streaming) beyond this get 503 at once.
    pub max_requests: usize,
    /// After a stop signal, open connections get this long to finish before they are dropped.
    pub shutdown_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_timeout: std::time::Duration::from_secs(30),
            max_body: 4 << 20,
            max_requests: 64,
            shutdown_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// [`run`], as the simulated user `as_user` when given, within `limits`.
pub fn run_as(
    model: Model,
    as_user: Option<AsUser>,
    host: &str,
    port: u16,
    limits: Limits,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("serve-io")
        .enable_all()
        .build()?;
    let r = rt.block_on(serve(model, as_user.map(Arc::new), host, port, limits));
    // Connections still open after the deadline are dropped with the runtime, not waited for.
    rt.shutdown_background();
    r
}

async fn serve(
    model: Model,
    as_user: Option<Arc<AsUser>>,
    host: &str,
    port: u16,
    limits: Limits,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|source| Error::Listen {
            addr: format!("{host}:{port}"),
            source,
        })?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "humanlm: warning: serving on {addr}, reachable from other machines, without authentication"
        );
    }
    let model = Arc::new(model);
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
    let state = Arc::new(Server {
        id: model.checkpoint.name.clone(),
        created: now(),
        model: model.clone(),
        jobs: jobs_tx,
        shutdown: Arc::new(AtomicBool::new(false)),
        current: Arc::new(Mutex::new(None)),
        counter: AtomicU64::new(0),
        as_user: as_user.clone(),
        limits: limits.clone(),
        in_flight: Arc::new(tokio::sync::Semaphore::new(limits.max_requests)),
    });
    let worker = {
        let shutdown = state.shutdown.clone();
        let current = state.current.clone();
        std::thread::Builder::new()
            .name("serve-generate".into())
            .spawn(move || worker(&model, as_user.as_deref(), jobs_rx, &shutdown, &current))?
    };
    let app = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/chat/completions", post(complete::<ChatRequest>))
        .route("/v1/completions", post(complete::<CompletionRequest>))
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route (try /v1/models, /v1/chat/completions or /v1/completions)",
                "invalid_request_error",
                None,
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            bound_requests,
        ))
        .with_state(state.clone());
    let mut signals = Signals::new()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    eprintln!(
        "humanlm: serving {} ({} tokens of context){}; one generation at a time, Ctrl-C stops",
        state.id,
        state.model.decoder.max_positions(),
        match &state.as_user {
            Some(u) => format!(
                " as the simulated user of {} ({} set, {} mode)",
                u.scenario.id, u.set.name, u.mode
            ),
            None => String::new(),
        }
    );
    let stopping = state.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        signals.next().await;
        eprintln!(
            "humanlm: shutting down (open requests get {} s; a second signal stops at once)",
            stopping.limits.shutdown_timeout.as_secs_f64()
        );
        stopping.shutdown.store(true, Ordering::SeqCst);
        if let Some(c) = stopping
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            c.store(true, Ordering::SeqCst);
        }
        let _ = stop_tx.send(true);
        // The graceful shutdown waits on connections; the deadline and a second signal do not.
        let deadline = stopping.limits.shutdown_timeout;
        tokio::spawn(async move {
            let why = tokio::select! {
                _ = tokio::time::sleep(deadline) => "the shutdown deadline passed",
                _ = signals.next() => "a second signal",
            };
            eprintln!("humanlm: {why}: dropping the open connections");
            FORCE.notify_one();
        });
    });
    tokio::select! {
        r = server => r?,
        _ = async {
            let _ = stop_rx.wait_for(|s| *s).await;
            FORCE.notified().await
        } => {
            // Open connections hold the router (and the job queue's senders): the worker is
            // told to stop and left to the process's exit.
            return Ok(());
        }
    }
    // The router (and its senders) are gone once `serve` returns; dropping ours ends the worker.
    drop(state);
    worker.join().map_err(|_| Error::WorkerPanicked)?;
    Ok(())
}

/// Wakes `serve` when the shutdown deadline passes or a second signal comes (`notify_one`
/// keeps the wake-up even if it comes before `serve` waits).
static FORCE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Ctrl-C and SIGTERM, one at a time. The handlers are installed by `new`, not when a future is
/// first polled, so a signal sent right after the "listening" line is not missed.
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => {},
                _ = self.term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// At most `max_requests` requests in flight: one more gets 503 at once rather than a place in
/// an unbounded queue. The permit lives as long as the response body, so a stream counts until
/// it ends.
async fn bound_requests(
    State(s): Shared,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(permit) = s.in_flight.clone().try_acquire_owned() else {
        let mut r = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is busy: {} requests in flight (serve --max-requests)",
                s.limits.max_requests
            ),
            "server_error",
            None,
        )
        .into_response();
        r.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        return r;
    };
    let (parts, body) = next.run(req).await.into_parts();
    // A whole reply (its length known) is done with its permit; only a stream keeps it.
    if axum::body::HttpBody::size_hint(&body).exact().is_some() {
        return Response::from_parts(parts, body);
    }
    let body = axum::body::Body::from_stream(futures_util::StreamExt::map(
        body.into_data_stream(),
        move |chunk| {
            let _held = &permit;
            chunk
        },
    ));
    Response::from_parts(parts, body)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Server {
    /// The model id clients must name: the checkpoint's name.
    id: String,
    created: u64,
    model: Arc<Model>,
    /// The queue to the worker (unbounded: sending never blocks).
    jobs: std::sync::mpsc::Sender<Job>,
    shutdown: Arc<AtomicBool>,
    /// The cancel flag of the generation running now.
    current: Arc<Mutex<Option<Arc<AtomicBool>>>>,
    counter: AtomicU64,
    /// Set for `serve --as-user`: chat requests get the simulated user's next turn.
    as_user: Option<Arc<AsUser>>,
    limits: Limits,
    /// Permits for requests in flight (`Limits::max_requests`).
    in_flight: Arc<tokio::sync::Semaphore>,
}

type Shared = State<Arc<Server>>;

impl Server {
    fn request_id(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:012x}{n:04x}", rand::random::<u64>() >> 16)
    }

    fn card(&self) -> ModelCard {
        ModelCard {
            id: self.id.clone(),
            object: "model".into(),
            created: self.created,
            owned_by: "humanlm".into(),
        }
    }

    fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if model.is_empty() {
            return Err(ApiError::bad("you must provide a model parameter"));
        }
        if model != self.id {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "The model `{model}` does not exist; this server serves `{}`",
                    self.id
                ),
                "invalid_request_error",
                Some("model_not_found"),
            ));
        }
        Ok(())
    }

    /// Queue a generation; its events arrive on the returned receiver, ending with `Done`.
    fn submit(
        &self,
        work: Work,
    ) -> Result<(mpsc::UnboundedReceiver<WorkEvent>, CancelOnDrop), ApiError> {
        if self.shutdown.load(Ordering::SeqCst) {
            return Err(shutting_down());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            work,
            events: tx,
            cancel: cancel.clone(),
        };
        self.jobs.send(job).map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the generation worker has stopped",
                "server_error",
                None,
            )
        })?;
        Ok((rx, CancelOnDrop(cancel)))
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is shutting down",
        "server_error",
        None,
    )
}

/// An OpenAI-style error reply.
struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>, kind: &str, code: Option<&str>) -> Self {
        ApiError {
            status,
            body: ErrorBody::new(msg, kind, code),
        }
    }

    fn bad(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg, "invalid_request_error", None)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// What the worker is asked to do.
enum Work {
    /// A plain generation from a prompt.
    Generate {
        prompt: Vec<u32>,
        params: SamplingParams,
    },
    /// The simulated user's next turn (`--as-user`).
    UserTurn {
        turns: Vec<crate::converse::Turn>,
        sampling: crate::sim::SamplingChoice,
        seed: u64,
    },
}

/// A generation for the worker.
struct Job {
    work: Work,
    events: mpsc::UnboundedSender<WorkEvent>,
    cancel: Arc<AtomicBool>,
}

/// What the worker reports about a job.
enum WorkEvent {
    Text { sample: usize, delta: String },
    Finished { sample: usize, reason: StopReason },
    Done(Result<Generation, String>),
}

/// Cancels the job when the request goes away (client disconnected, reply finished).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The one thread that generates: jobs run in arrival order, each with all cores.
fn worker(
    model: &Model,
    as_user: Option<&AsUser>,
    jobs: std::sync::mpsc::Receiver<Job>,
    shutdown: &AtomicBool,
    current: &Mutex<Option<Arc<AtomicBool>>>,
) {
    for job in jobs {
        if job.cancel.load(Ordering::SeqCst) || job.events.is_closed() {
            continue; // the client left while waiting
        }
        if shutdown.load(Ordering::SeqCst) {
            let _ = job
                .events
                .send(WorkEvent::Done(Err("the server is shutting down".into())));
            continue;
        }
        *current.lock().unwrap_or_else(|p| p.into_inner()) = Some(job.cancel.clone());
        let t0 = Instant::now();
        let cancel = &job.cancel;
        let events = &job.events;
        let send = |msg: WorkEvent| {
            if events.send(msg).is_err() {
                cancel.store(true, Ordering::SeqCst);
            }
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &job.work {
            Work::Generate { prompt, params } => {
                generate::generate(model, prompt, params, Some(cancel), &mut |ev| match ev {
                    GenEvent::Prefill { .. } => {}
                    GenEvent::Text { sample, delta } => send(WorkEvent::Text {
                        sample,
                        delta: delta.to_string(),
                    }),
                    GenEvent::Finished { sample, reason } => {
                        send(WorkEvent::Finished { sample, reason })
                    }
                })
                .map_err(|e| e.to_string())
            }
            // The turn streams whole once written: its calls' raw text (states, thinking,
            // tags) is not the turn.
            Work::UserTurn {
                turns,
                sampling,
                seed,
            } => match as_user {
                Some(u) => u.run(model, turns, sampling, *seed, cancel).inspect(|g| {
                    let s = &g.samples[0];
                    send(WorkEvent::Text {
                        sample: 0,
                        delta: s.text.clone(),
                    });
                    send(WorkEvent::Finished {
                        sample: 0,
                        reason: s.stop_reason.clone(),
                    });
                }),
                None => Err("not serving as a simulated user".to_string()),
            },
        }));
        *current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let result = match result {
            Ok(Ok(g)) => {
                let new: usize = g.samples.iter().map(|s| s.tokens).sum();
                eprintln!(
                    "humanlm: {} prompt + {new} new tokens, {} choice(s), {:.2} s{}",
                    g.prompt_tokens,
                    g.samples.len(),
                    t0.elapsed().as_secs_f64(),
                    if cancel.load(Ordering::SeqCst) {
                        " (cancelled)"
                    } else {
                        ""
                    }
                );
                Ok(g)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err("generation panicked".to_string()),
        };
        let _ = job.events.send(WorkEvent::Done(result));
    }
}

async fn list_models(State(s): Shared) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![s.card()],
    })
}

async fn get_model(State(s): Shared, Path(id): Path<String>) -> Result<Json<ModelCard>, ApiError> {
    s.check_model(&id)?;
    Ok(Json(s.card()))
}

/// Parse a JSON body into `T`, as a 400 on failure.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad(
            "the request body is empty (expected a JSON object)",
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid request body: {e}")))
}

/// Refuse parameters we do not implement, unless their value asks for nothing (null, false, 0,
/// "", [], {}); a few that only label a request are accepted as they are.
fn check_extra(extra: &serde_json::Map<String, serde_json::Value>) -> Result<(), ApiError> {
    use serde_json::Value;
    const LABELS: &[&str] = &[
        "user",
        "metadata",
        "store",
        "service_tier",
        "parallel_tool_calls",
    ];
    for (k, v) in extra {
        let trivial = match v {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
        };
        let harmless = LABELS.contains(&k.as_str())
            || (k == "response_format" && v.get("type") == Some(&Value::from("text")))
            || (k == "best_of" && v.as_u64() == Some(1));
        if !(trivial || harmless) {
            return Err(ApiError::bad(format!(
                "parameter `{k}` is not supported by humanlm serve"
            )));
        }
    }
    Ok(())
}

/// OpenAI's parameters as our sampling parameters, checked against the prompt and context.
fn sampling(
    p: &GenParams,
    prompt_tokens: usize,
    context: usize,
) -> Result<SamplingParams, ApiError> {
    if prompt_tokens == 0 {
        return Err(ApiError::bad("the prompt is empty"));
    }
    if prompt_tokens >= context {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the prompt is {prompt_tokens} tokens long, but the model's context is {context} tokens (and at least one new token must fit)"
            ),
            "invalid_request_error",
            Some("context_length_exceeded"),
        ));
    }
    let room = context - prompt_tokens;
    // Past the context, generation stops there with finish_reason `length`.
    let max_new_tokens = p.max_new_tokens().unwrap_or(room);
    if max_new_tokens == 0 {
        return Err(ApiError::bad("max_tokens must be at least 1"));
    }
    let n = p.n.unwrap_or(1);
    if n == 0 || n > MAX_N {
        return Err(ApiError::bad(format!("n must be between 1 and {MAX_N}")));
    }
    let params = SamplingParams {
        max_new_tokens,
        temperature: p.temperature.unwrap_or(1.0),
        top_p: p.top_p.unwrap_or(1.0),
        top_k: p.top_k.unwrap_or(0),
        min_p: p.min_p.unwrap_or(0.0),
        seed: p.seed.unwrap_or_else(rand::random),
        repetition_penalty: p.repetition_penalty.unwrap_or(1.0),
        no_repeat_ngram: p.no_repeat_ngram.unwrap_or(0),
        stop: p.stop.clone().unwrap_or_default(),
        keep_stop: false,
        n,
        ignore_eos: false,
    };
    params
        .validate()
        .map_err(|e| ApiError::bad(format!("invalid sampling parameters: {e}")))?;
    Ok(params)
}

fn usage(g: &Generation) -> Usage {
    let completion: usize = g.samples.iter().map(|s| s.tokens).sum();
    Usage {
        prompt_tokens: g.prompt_tokens,
        completion_tokens: completion,
        total_tokens: g.prompt_tokens + completion,
        prompt_tokens_details: Some(wire::PromptTokensDetails {
            cached_tokens: g.cached_prompt_tokens,
        }),
    }
}

fn server_error(msg: String) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("generation failed: {msg}"),
        "server_error",
        None,
    )
}

/// Wait for a queued job to finish (non-streaming replies).
async fn finish(mut rx: mpsc::UnboundedReceiver<WorkEvent>) -> Result<Generation, ApiError> {
    while let Some(ev) = rx.recv().await {
        if let WorkEvent::Done(r) = ev {
            return r.map_err(|e| {
                if e.contains("shutting down") {
                    shutting_down()
                } else {
                    server_error(e)
                }
            });
        }
    }
    Err(server_error("the worker stopped".into()))
}

/// What differs between the two completion routes: the request's shape, how it becomes a
/// prompt, and (through [`StreamKind`]) the reply's shape. Everything else is [`complete`].
trait Endpoint: serde::de::DeserializeOwned + Send + Sync + 'static {
    const KIND: StreamKind;
    /// The start of the reply's `id` (`chatcmpl-…`, `cmpl-…`), as OpenAI names them.
    const ID_PREFIX: &'static str;
    /// The parameters both request shapes carry.
    fn common(&self) -> Common<'_>;
    /// The prompt's tokens, as a 400 when the request cannot make one.
    fn prompt(&self, model: &Model) -> Result<Vec<u32>, ApiError>;
    /// The conversation, for requests that carry one (chat).
    fn messages(&self) -> Option<&[Message]> {
        None
    }
}

/// The fields chat and text completion requests share.
struct Common<'a> {
    model: &'a str,
    extra: &'a serde_json::Map<String, serde_json::Value>,
    params: &'a GenParams,
    stream: bool,
    stream_options: Option<&'a StreamOptions>,
}

impl Endpoint for ChatRequest {
    const KIND: StreamKind = StreamKind::Chat;
    const ID_PREFIX: &'static str = "chatcmpl";

    fn common(&self) -> Common<'_> {
        Common {
            model: &self.model,
            extra: &self.extra,
            params: &self.params,
            stream: self.stream,
            stream_options: self.stream_options.as_ref(),
        }
    }

    fn messages(&self) -> Option<&[Message]> {
        Some(&self.messages)
    }

    /// The messages through the checkpoint's chat template.
    fn prompt(&self, model: &Model) -> Result<Vec<u32>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad("messages must hold at least one message"));
        }
        let messages: Vec<Message> = self
            .messages
            .iter()
            .map(|m| Message {
                // OpenAI's newer name for the system role; chat templates know `system`.
                role: if m.role == "developer" {
                    "system".into()
                } else {
                    m.role.clone()
                },
                content: m.content.clone(),
                name: m.name.clone(),
            })
            .collect();
        let kwargs =
            serde_json::Value::Object(self.chat_template_kwargs.clone().unwrap_or_default());
        let text = model
            .chat
            .render(
                &messages,
                self.add_generation_prompt.unwrap_or(true),
                &kwargs,
            )
            .map_err(|e| ApiError::bad(format!("cannot apply the chat template: {e}")))?;
        model
            .tokenizer
            .encode_rendered(&text)
            .map_err(|e| ApiError::bad(e.to_string()))
    }
}

impl Endpoint for CompletionRequest {
    const KIND: StreamKind = StreamKind::Completion;
    const ID_PREFIX: &'static str = "cmpl";

    fn common(&self) -> Common<'_> {
        Common {
            model: &self.model,
            extra: &self.extra,
            params: &self.params,
            stream: self.stream,
            stream_options: self.stream_options.as_ref(),
        }
    }

    /// The prompt as raw text, no template.
    fn prompt(&self, model: &Model) -> Result<Vec<u32>, ApiError> {
        model
            .tokenizer
            .encode_raw(&self.prompt)
            .map_err(|e| ApiError::bad(e.to_string()))
    }
}

/// `POST /v1/chat/completions` and `POST /v1/completions`: one handler, `E` the route's shape.
async fn complete<E: Endpoint>(State(s): Shared, req: axum::extract::Request) -> Response {
    // The body within the time and size limits: a client that sends half a body and waits
    // would otherwise hold its connection (and the shutdown) forever.
    let read = axum::body::to_bytes(req.into_body(), s.limits.max_body);
    let body = match tokio::time::timeout(s.limits.body_timeout, read).await {
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    s.limits.body_timeout.as_secs_f64()
                ),
                "invalid_request_error",
                None,
            )
            .into_response()
        }
        Ok(Err(_)) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than {} bytes (serve --max-body-mb)",
                    s.limits.max_body
                ),
                "invalid_request_error",
                None,
            )
            .into_response()
        }
        Ok(Ok(b)) => b,
    };
    match complete_inner::<E>(s, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Validate the request, queue its generation, then either stream the reply as server-sent
/// events or wait for it whole.
async fn complete_inner<E: Endpoint>(s: Arc<Server>, body: &[u8]) -> Result<Response, ApiError> {
    let req: E = parse(body)?;
    let c = req.common();
    s.check_model(c.model)?;
    check_extra(c.extra)?;
    let (work, n) = match &s.as_user {
        Some(u) => {
            let messages = req.messages().ok_or_else(|| {
                ApiError::bad(
                    "this server is a simulated user (serve --as-user): send the conversation to /v1/chat/completions",
                )
            })?;
            (u.job(messages, c.params, &s.model)?, 1)
        }
        None => {
            let ids = req.prompt(&s.model)?;
            let params = sampling(c.params, ids.len(), s.model.decoder.max_positions())?;
            let n = params.n;
            (
                Work::Generate {
                    prompt: ids,
                    params,
                },
                n,
            )
        }
    };
    let (rx, guard) = s.submit(work)?;
    let id = s.request_id(E::ID_PREFIX);
    let created = now();
    if c.stream {
        return Ok(sse(StreamState {
            rx,
            _guard: guard,
            kind: E::KIND,
            id,
            created,
            model: s.id.clone(),
            n,
            include_usage: c.stream_options.is_some_and(|o| o.include_usage),
            pending: VecDeque::new(),
            started: false,
            ended: false,
        }));
    }
    let generation = finish(rx).await?;
    drop(guard);
    Ok(E::KIND.response(id, created, s.id.clone(), generation))
}

#[derive(Clone, Copy)]
enum StreamKind {
    Chat,
    Completion,
}

impl StreamKind {
    /// The whole (non-streamed) reply.
    fn response(self, id: String, created: u64, model: String, g: Generation) -> Response {
        let usage = Some(usage(&g));
        let choices = g.samples.into_iter().enumerate();
        match self {
            StreamKind::Chat => Json(ChatResponse {
                id,
                object: "chat.completion".into(),
                created,
                model,
                usage,
                choices: choices
                    .map(|(index, sm)| ChatChoice {
                        index,
                        message: Message::new("assistant", &sm.text),
                        finish_reason: Some(wire::finish_reason(&sm.stop_reason).into()),
                    })
                    .collect(),
            })
            .into_response(),
            StreamKind::Completion => Json(CompletionResponse {
                id,
                object: "text_completion".into(),
                created,
                model,
                usage,
                choices: choices
                    .map(|(index, sm)| CompletionChoice {
                        index,
                        text: sm.text,
                        finish_reason: Some(wire::finish_reason(&sm.stop_reason).into()),
                        logprobs: None,
                    })
                    .collect(),
            })
            .into_response(),
        }
    }
}

/// A streamed reply being written: turns worker events into server-sent events.
struct StreamState {
    rx: mpsc::UnboundedReceiver<WorkEvent>,
    /// Dropped with the stream: a client that hangs up cancels the generation.
    _guard: CancelOnDrop,
    kind: StreamKind,
    id: String,
    created: u64,
    model: String,
    n: usize,
    include_usage: bool,
    pending: VecDeque<SseEvent>,
    started: bool,
    ended: bool,
}

fn sse(st: StreamState) -> Response {
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        let ev = st.next_event().await?;
        Some((Ok::<_, std::convert::Infallible>(ev), st))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

impl StreamState {
    fn data<T: serde::Serialize>(v: &T) -> SseEvent {
        SseEvent::default().data(serde_json::to_string(v).unwrap_or_else(|e| {
            format!(r#"{{"error": {{"message": "cannot serialize a chunk: {e}"}}}}"#)
        }))
    }

    fn chat_chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> SseEvent {
        Self::data(&ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }

    fn text_chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> SseEvent {
        Self::data(&CompletionResponse {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }

    /// A chunk for one choice: new text, or (with `finish`) its end.
    fn choice_chunk(&self, index: usize, text: Option<String>, finish: Option<&str>) -> SseEvent {
        match self.kind {
            StreamKind::Chat => self.chat_chunk(
                vec![ChunkChoice {
                    index,
                    delta: Delta {
                        role: None,
                        content: text,
                    },
                    finish_reason: finish.map(str::to_string),
                }],
                None,
            ),
            StreamKind::Completion => self.text_chunk(
                vec![CompletionChoice {
                    index,
                    text: text.unwrap_or_default(),
                    finish_reason: finish.map(str::to_string),
                    logprobs: None,
                }],
                None,
            ),
        }
    }

    fn end(&mut self, last: Option<SseEvent>) {
        self.pending.extend(last);
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.ended = true;
    }

    async fn next_event(&mut self) -> Option<SseEvent> {
        if !self.started {
            self.started = true;
            if let StreamKind::Chat = self.kind {
                // The first chunk names the role of every choice, as OpenAI's does.
                let choices = (0..self.n)
                    .map(|index| ChunkChoice {
                        index,
                        delta: Delta {
                            role: Some("assistant".into()),
                            content: Some(String::new()),
                        },
                        finish_reason: None,
                    })
                    .collect();
                return Some(self.chat_chunk(choices, None));
            }
        }
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            if self.ended {
                return None;
            }
            match self.rx.recv().await {
                Some(WorkEvent::Text { sample, delta }) => {
                    return Some(self.choice_chunk(sample, Some(delta), None));
                }
                Some(WorkEvent::Finished { sample, reason }) => {
                    let text = match self.kind {
                        StreamKind::Chat => None,
                        StreamKind::Completion => Some(String::new()),
                    };
                    return Some(self.choice_chunk(
                        sample,
                        text,
                        Some(wire::finish_reason(&reason)),
                    ));
                }
                Some(WorkEvent::Done(Ok(g))) => {
                    let last = self.include_usage.then(|| {
                        let u = Some(usage(&g));
                        match self.kind {
                            StreamKind::Chat => self.chat_chunk(vec![], u),
                            StreamKind::Completion => self.text_chunk(vec![], u),
                        }
                    });
                    self.end(last);
                }
                Some(WorkEvent::Done(Err(e))) => {
                    let err =
                        ErrorBody::new(format!("generation failed: {e}"), "server_error", None);
                    self.end(Some(Self::data(&err)));
                }
                None => {
                    let err = ErrorBody::new("the generation worker stopped", "server_error", None);
                    self.end(Some(Self::data(&err)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_defaults_and_bounds() {
        let p = sampling(&GenParams::default(), 10, 100).ok().unwrap();
        assert_eq!(p.max_new_tokens, 90, "default: the rest of the context");
        assert_eq!(p.temperature, 1.0, "OpenAI's default temperature");
        assert!(sampling(&GenParams::default(), 100, 100).is_err());
        let bad = |g: GenParams| sampling(&g, 10, 100).err().unwrap().body.error.message;
        assert!(bad(GenParams {
            temperature: Some(-1.0),
            ..Default::default()
        })
        .contains("temperature"));
        assert!(bad(GenParams {
            n: Some(MAX_N + 1),
            ..Default::default()
        })
        .contains("n must be"));
        assert!(bad(GenParams {
            max_tokens: Some(0),
            ..Default::default()
        })
        .contains("max_tokens"));
        let p = sampling(
            &GenParams {
                max_tokens: Some(5),
                max_completion_tokens: Some(7),
                seed: Some(3),
                ..Default::default()
            },
            10,
            100,
        )
        .ok()
        .unwrap();
        assert_eq!((p.max_new_tokens, p.seed), (7, 3));
    }

    #[test]
    fn extra_parameters() {
        let m = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert!(check_extra(&m(serde_json::json!({
            "user": "x", "frequency_penalty": 0, "logprobs": false, "tools": [],
            "response_format": {"type": "text"}
        })))
        .is_ok());
        let e = check_extra(&m(serde_json::json!({"presence_penalty": 0.5})))
            .err()
            .unwrap();
        assert!(e.body.error.message.contains("presence_penalty"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
