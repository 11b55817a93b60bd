//! `humanlm pull` and `--checkpoint hf:ORG/NAME`, against a Hub on loopback.
//!
//! The server speaks the part of the Hub's HTTP protocol `huggingface_hub` uses to download: the
//! model listing (`GET /api/models/{repo}/revision/{rev}`: `sha`, `siblings[].rfilename`), and
//! `resolve/{rev}/{file}`, which answers a regular file with its bytes, an `ETag` and
//! `X-Repo-Commit`, and an LFS file (the weights) with a redirect to storage plus
//! `X-Linked-Etag` (the file's SHA-256) and `X-Linked-Size`; storage honours `Range`. It serves
//! the tiny fixtures as repositories, can require a token, cut a download short once, corrupt a
//! file, or list an index whose shard is missing.

use crate::common;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

const COMMIT: &str = "4f3c2b1a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b";

#[derive(Default)]
struct Hub {
    /// repo → file → bytes.
    repos: HashMap<String, HashMap<String, Vec<u8>>>,
    token: Option<String>,
    /// Requests as "METHOD path [range]".
    log: Mutex<Vec<String>>,
    /// The next storage download of the blob with this SHA-256 stops after this many bytes.
    cut: Mutex<Option<(String, usize)>>,
    /// Blobs served with one byte flipped (their SHA-256 then disagrees).
    corrupt: Mutex<Vec<String>>,
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn is_lfs(name: &str) -> bool {
    name.ends_with(".safetensors")
}

impl Hub {
    fn authorized(&self, h: &HeaderMap) -> bool {
        match &self.token {
            None => true,
            Some(t) => h
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == format!("Bearer {t}")),
        }
    }

    fn blob(&self, sha: &str) -> Option<Vec<u8>> {
        self.repos
            .values()
            .flat_map(|files| files.values())
            .find(|b| sha256(b) == sha)
            .cloned()
    }
}

async fn listing(
    State(hub): State<Arc<Hub>>,
    UrlPath((org, name, rev)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    hub.log
        .lock()
        .unwrap()
        .push(format!("GET /api/models/{org}/{name}/revision/{rev}"));
    if !hub.authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "{\"error\":\"Invalid credentials\"}",
        )
            .into_response();
    }
    let Some(files) = hub.repos.get(&format!("{org}/{name}")) else {
        return (
            StatusCode::NOT_FOUND,
            "{\"error\":\"Repository not found\"}",
        )
            .into_response();
    };
    if rev != "main" && rev != COMMIT {
        return (StatusCode::NOT_FOUND, "{\"error\":\"Invalid rev id\"}").into_response();
    }
    let mut names: Vec<&String> = files.keys().collect();
    names.sort();
    let siblings: Vec<_> = names
        .iter()
        .map(|n| serde_json::json!({ "rfilename": n }))
        .collect();
    axum::Json(serde_json::json!({
        "id": format!("{org}/{name}"),
        "sha": COMMIT,
        "siblings": siblings,
    }))
    .into_response()
}

async fn resolve(
    State(hub): State<Arc<Hub>>,
    UrlPath((org, name, rev, file)): UrlPath<(String, String, String, String)>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Response {
    hub.log
        .lock()
        .unwrap()
        .push(format!("{method} /{org}/{name}/resolve/{rev}/{file}"));
    if !hub.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(bytes) = hub
        .repos
        .get(&format!("{org}/{name}"))
        .and_then(|f| f.get(&file))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if is_lfs(&file) {
        let sha = sha256(bytes);
        return (
            StatusCode::FOUND,
            [
                ("location", format!("/storage/{sha}")),
                ("x-linked-etag", format!("\"{sha}\"")),
                ("x-linked-size", bytes.len().to_string()),
                ("x-repo-commit", COMMIT.to_string()),
            ],
        )
            .into_response();
    }
    // A regular file's etag is its git blob id (40 hex digits), not its SHA-256.
    let etag = sha256(bytes)[..40].to_string();
    (
        StatusCode::OK,
        [
            ("etag", format!("\"{etag}\"")),
            ("x-repo-commit", COMMIT.to_string()),
        ],
        bytes.clone(),
    )
        .into_response()
}

async fn storage(
    State(hub): State<Arc<Hub>>,
    UrlPath(sha): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    hub.log.lock().unwrap().push(format!(
        "GET /storage/{sha} {}",
        range.clone().unwrap_or_default()
    ));
    let Some(mut bytes) = hub.blob(&sha) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if hub.corrupt.lock().unwrap().contains(&sha) {
        bytes[100] ^= 0xff;
    }
    let total = bytes.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    let body = bytes[start..].to_vec();
    let cut = {
        let mut c = hub.cut.lock().unwrap();
        match c.take() {
            Some((s, n)) if s == sha => Some(n),
            other => {
                *c = other;
                None
            }
        }
    };
    let status = if start > 0 {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut h = vec![("content-length", body.len().to_string())];
    if start > 0 {
        h.push((
            "content-range",
            format!("bytes {start}-{}/{total}", total - 1),
        ));
    }
    let body = match cut {
        // The connection drops after n bytes of a longer announced body.
        // (after a pause, so the headers and the first bytes are on the wire first).
        Some(n) => {
            use futures_util::StreamExt;
            let head = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
                axum::body::Bytes::from(body[..n].to_vec()),
            )]);
            let drop = futures_util::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                Err(std::io::Error::other("connection reset"))
            });
            axum::body::Body::from_stream(head.chain(drop))
        }
        None => axum::body::Body::from(body),
    };
    let mut resp = (status, body).into_response();
    for (k, v) in h {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    resp
}

/// The server, running until the handle drops.
struct Running {
    url: String,
    hub: Arc<Hub>,
    _rt: tokio::runtime::Runtime,
}

fn serve(hub: Hub) -> Running {
    let hub = Arc::new(hub);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/api/models/{org}/{name}/revision/{rev}", get(listing))
        .route("/{org}/{name}/resolve/{rev}/{*file}", get(resolve))
        .route("/storage/{sha}", get(storage))
        .with_state(hub.clone());
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    Running { url, hub, _rt: rt }
}

/// A fixture folder as a repository, with a README and an ONNX export the pull must skip.
fn repo_of(fixture: &str) -> HashMap<String, Vec<u8>> {
    let mut files = HashMap::new();
    for e in std::fs::read_dir(common::fixture(fixture)).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name != "reference.json" {
            files.insert(name, std::fs::read(&p).unwrap());
        }
    }
    files.insert("README.md".into(), b"# tiny\n".to_vec());
    files.insert(
        ".gitattributes".into(),
        b"*.safetensors filter=lfs\n".to_vec(),
    );
    files.insert("onnx/model.safetensors".into(), vec![0; 64]);
    files
}

fn hub_with(repos: &[(&str, &str)]) -> Hub {
    Hub {
        repos: repos
            .iter()
            .map(|(name, fixture)| (name.to_string(), repo_of(fixture)))
            .collect(),
        ..Default::default()
    }
}

/// Run the binary against `url` with the Hugging Face cache in `home`.
fn run(url: &str, home: &Path, extra_env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_humanlm"));
    cmd.args(args)
        .env("HUMANLM_CHECKPOINTS", common::checkpoints())
        .env("HF_ENDPOINT", url)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HUMANLM_QUANTIZE");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn one_line_error(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

fn snapshot(home: &Path, repo: &str) -> PathBuf {
    home.join("hub")
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(COMMIT)
}

fn generate(url: &str, home: &Path, env: &[(&str, &str)], checkpoint: &str) -> Output {
    run(
        url,
        home,
        env,
        &[
            "generate",
            "--checkpoint",
            checkpoint,
            "--prompt",
            "hello there",
            "--max-tokens",
            "6",
            "--temperature",
            "0",
            "--json",
        ],
    )
}

fn texts(out: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(out).unwrap();
    v["samples"].clone()
}

#[test]
fn pull_fills_the_hugging_face_cache_with_only_the_checkpoint_and_it_loads_offline() {
    let server = serve(hub_with(&[("test-org/tiny-qwen2", "tiny/qwen2")]));
    let home = tempfile::tempdir().unwrap();
    let out = ok(&run(
        &server.url,
        home.path(),
        &[],
        &["pull", "test-org/tiny-qwen2", "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["format"].as_str(), v["architecture"].as_str()),
        (Some("hf"), Some("qwen2"))
    );

    // The cache is laid out as huggingface_hub lays it out.
    let repo = home.path().join("hub/models--test-org--tiny-qwen2");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let snap = snapshot(home.path(), "test-org/tiny-qwen2");
    let mut got: Vec<String> = std::fs::read_dir(&snap)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    got.sort();
    let mut want: Vec<String> = repo_of("tiny/qwen2")
        .into_keys()
        .filter(|f| {
            !["README.md", ".gitattributes", "onnx/model.safetensors"].contains(&f.as_str())
        })
        .collect();
    want.sort();
    assert_eq!(got, want);
    let shard = snap.join("model-00002-of-00004.safetensors");
    let bytes = std::fs::read(common::fixture(
        "tiny/qwen2/model-00002-of-00004.safetensors",
    ))
    .unwrap();
    assert_eq!(
        std::fs::read_link(&shard).unwrap(),
        Path::new("../../blobs").join(sha256(&bytes)),
        "an LFS file's blob is named by its SHA-256"
    );
    assert_eq!(std::fs::read(&shard).unwrap(), bytes);
    assert!(!server
        .hub
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("README") || l.contains("onnx")));

    // `checkpoints --hub` lists it under the spec that loads it.
    let listed: serde_json::Value = serde_json::from_str(&ok(&run(
        &server.url,
        home.path(),
        &[],
        &["checkpoints", "--hub", "--json"],
    )))
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "hf:test-org/tiny-qwen2@main");
    assert_eq!(listed[0]["path"], snap.display().to_string());

    // A second pull downloads nothing.
    let before = server.hub.log.lock().unwrap().len();
    ok(&run(
        &server.url,
        home.path(),
        &[],
        &["pull", "test-org/tiny-qwen2"],
    ));
    let log = server.hub.log.lock().unwrap();
    assert!(
        !log[before..].iter().any(|l| l.contains("/storage/")),
        "{:?}",
        &log[before..]
    );
    drop(log);

    // It runs as hf:ORG/NAME exactly as the local folder does, and offline too, even with the Hub
    // gone.
    let local = texts(&ok(&generate(
        &server.url,
        home.path(),
        &[],
        common::fixture("tiny/qwen2").to_str().unwrap(),
    )));
    let hub = texts(&ok(&generate(
        &server.url,
        home.path(),
        &[],
        "hf:test-org/tiny-qwen2",
    )));
    assert_eq!(local, hub);
    let url = server.url.clone();
    drop(server);
    let offline = texts(&ok(&generate(
        &url,
        home.path(),
        &[("HF_HUB_OFFLINE", "1")],
        "hf:test-org/tiny-qwen2@main",
    )));
    assert_eq!(local, offline);
    // Unreachable but cached: the cached snapshot serves.
    let unreachable = texts(&ok(&generate(
        &url,
        home.path(),
        &[],
        "hf:test-org/tiny-qwen2",
    )));
    assert_eq!(local, unreachable);
    // Offline and not cached: one line.
    let err = one_line_error(&generate(
        &url,
        home.path(),
        &[("HF_HUB_OFFLINE", "1")],
        "hf:test-org/other",
    ));
    assert!(
        err.contains("not in the cache") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn a_dropped_download_resumes_where_it_stopped() {
    let hub = hub_with(&[("test-org/tiny-qwen3", "tiny/qwen3")]);
    let bytes = hub.repos["test-org/tiny-qwen3"]["model.safetensors"].clone();
    let sha = sha256(&bytes);
    *hub.cut.lock().unwrap() = Some((sha.clone(), 10_000));
    let server = serve(hub);
    let home = tempfile::tempdir().unwrap();
    let err = one_line_error(&run(
        &server.url,
        home.path(),
        &[],
        &["pull", "test-org/tiny-qwen3"],
    ));
    assert!(
        err.contains("interrupted after 10000 bytes") && err.contains("resume"),
        "{err}"
    );
    // Nothing partial in the snapshot; the part kept beside the blobs.
    let snap = snapshot(home.path(), "test-org/tiny-qwen3");
    assert!(!snap.join("model.safetensors").exists());
    let part = home.path().join(format!(
        "hub/models--test-org--tiny-qwen3/blobs/{sha}.incomplete"
    ));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 10_000);

    ok(&run(
        &server.url,
        home.path(),
        &[],
        &["pull", "test-org/tiny-qwen3"],
    ));
    assert!(server
        .hub
        .log
        .lock()
        .unwrap()
        .contains(&format!("GET /storage/{sha} bytes=10000-")));
    assert_eq!(
        std::fs::read(snap.join("model.safetensors")).unwrap(),
        bytes
    );
    assert!(!part.exists());
}

#[test]
fn hub_faults_are_one_line_and_leave_nothing_half_written() {
    // A gated repository: refused without the token, fetched with it.
    let mut hub = hub_with(&[
        ("gated/tiny-llama", "tiny/llama"),
        ("test-org/broken", "tiny/qwen2"),
    ]);
    hub.token = Some("hf_secret".into());
    // The broken repository's index names a shard it does not have.
    let files = hub.repos.get_mut("test-org/broken").unwrap();
    files.remove("model-00004-of-00004.safetensors");
    let server = serve(hub);
    let home = tempfile::tempdir().unwrap();
    let err = one_line_error(&run(
        &server.url,
        home.path(),
        &[],
        &["pull", "gated/tiny-llama"],
    ));
    assert!(
        err.contains("access denied") && err.contains("HF_TOKEN"),
        "{err}"
    );
    let token = [("HF_TOKEN", "hf_secret")];
    ok(&run(
        &server.url,
        home.path(),
        &token,
        &["pull", "gated/tiny-llama"],
    ));

    let err = one_line_error(&run(
        &server.url,
        home.path(),
        &token,
        &["pull", "test-org/nothing-here"],
    ));
    assert!(err.contains("not found"), "{err}");
    let err = one_line_error(&run(
        &server.url,
        home.path(),
        &token,
        &["pull", "gated/tiny-llama@v9"],
    ));
    assert!(err.contains("gated/tiny-llama@v9 not found"), "{err}");
    let err = one_line_error(&run(
        &server.url,
        home.path(),
        &token,
        &["pull", "not a repo"],
    ));
    assert!(err.contains("expected ORG/NAME"), "{err}");

    let err = one_line_error(&run(
        &server.url,
        home.path(),
        &token,
        &["pull", "test-org/broken"],
    ));
    assert!(
        err.contains("model.safetensors.index.json")
            && err.contains("model-00004-of-00004.safetensors"),
        "{err}"
    );

    // A file whose bytes do not hash to the Hub's etag is refused and not kept.
    let llama = std::fs::read(common::fixture("tiny/llama/model.safetensors")).unwrap();
    let sha = sha256(&llama);
    server.hub.corrupt.lock().unwrap().push(sha.clone());
    let home2 = tempfile::tempdir().unwrap();
    let err = one_line_error(&run(
        &server.url,
        home2.path(),
        &token,
        &["pull", "gated/tiny-llama"],
    ));
    assert!(err.contains("SHA-256") && err.contains(&sha), "{err}");
    let blobs = home2.path().join("hub/models--gated--tiny-llama/blobs");
    assert!(!blobs.join(&sha).exists() && !blobs.join(format!("{sha}.incomplete")).exists());
    assert!(!snapshot(home2.path(), "gated/tiny-llama")
        .join("model.safetensors")
        .exists());
}

#[test]
fn an_adapter_whose_base_is_a_hub_id_loads_it_through_the_cache() {
    let server = serve(hub_with(&[("test-org/tiny-qwen3", "tiny/qwen3")]));
    let home = tempfile::tempdir().unwrap();
    let adapter = home.path().join("my-adapter");
    std::fs::create_dir(&adapter).unwrap();
    let src = common::fixture("tiny/qwen3-lora");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        adapter.join("adapter_model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(src.join("adapter_config.json"))
        .unwrap()
        .replace("\"../qwen3\"", "\"test-org/tiny-qwen3\"");
    std::fs::write(adapter.join("adapter_config.json"), cfg).unwrap();
    let via_hub = texts(&ok(&generate(
        &server.url,
        home.path(),
        &[],
        adapter.to_str().unwrap(),
    )));
    let local = texts(&ok(&generate(
        &server.url,
        home.path(),
        &[],
        src.to_str().unwrap(),
    )));
    assert_eq!(via_hub, local);
}

#[test]
fn a_local_index_that_disagrees_with_its_shards_names_the_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q2");
    common::copy_fixture("tiny/qwen2", &dir);
    let index = dir.join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    let map = v["weight_map"].as_object_mut().unwrap();
    let (tensor, shard) = map
        .iter()
        .find(|(_, s)| s.as_str() == Some("model-00001-of-00004.safetensors"))
        .map(|(t, s)| (t.clone(), s.clone()))
        .unwrap();
    let _ = shard;
    map.insert(tensor.clone(), "model-00003-of-00004.safetensors".into());
    std::fs::write(&index, v.to_string()).unwrap();
    let err = one_line_error(&generate(
        "http://127.0.0.1:9",
        tmp.path(),
        &[],
        dir.to_str().unwrap(),
    ));
    assert!(
        err.contains("model-00003-of-00004.safetensors") && err.contains(&tensor),
        "{err}"
    );
}
