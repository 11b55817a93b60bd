//! Checkpoints from the Hugging Face Hub (`--checkpoint hf:ORG/NAME[@REVISION]`, `humanlm pull`),
//! kept in the standard Hugging Face cache so `huggingface_hub`, transformers and this workbench
//! share one copy.
//!
//! The cache layout is the Hub client's: `models--ORG--NAME/blobs/<etag>` holds each file once,
//! `snapshots/<commit>/<file>` links to its blob, `refs/<revision>` names the commit a branch or
//! tag pointed at. Only the files a checkpoint needs are fetched. A download goes to
//! `blobs/<etag>.incomplete` and resumes from there with a `Range` request; a blob is renamed into
//! place only once its size (and, for LFS files, whose etag is their SHA-256, its hash) is right,
//! and only then linked into the snapshot, so the snapshot never holds a partial file.
//!
//! Environment, as `huggingface_hub` reads it: `HF_ENDPOINT`, `HF_HUB_CACHE` (else `HF_HOME/hub`,
//! else `~/.cache/huggingface/hub`), `HF_TOKEN` (else the file `HF_HOME/token`),
//! `HF_HUB_OFFLINE`.

use super::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A model repository at a revision (branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    pub repo: String,
    pub revision: String,
}

impl HubRef {
    /// `ORG/NAME[@REVISION]` (revision `main` if not given); `None` unless it has that shape.
    pub fn parse(spec: &str) -> Option<HubRef> {
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev),
            Some(_) => return None,
            None => (spec, "main"),
        };
        let (org, name) = repo.split_once('/')?;
        let ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !ok(org) || !ok(name) {
            return None;
        }
        Some(HubRef {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    /// A checkpoint spec naming the Hub: `hf:ORG/NAME[@REVISION]`.
    pub fn from_spec(spec: &str) -> Option<HubRef> {
        spec.strip_prefix("hf:").and_then(HubRef::parse)
    }
}

impl std::fmt::Display for HubRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision)
    }
}

/// Whether a repository file is one a checkpoint needs (weights, config, tokenizer, chat
/// template, generation config, adapter, workbench settings); README, other formats and
/// training state are left on the Hub.
pub fn is_checkpoint_file(name: &str) -> bool {
    matches!(
        name,
        "config.json"
            | "generation_config.json"
            | "tokenizer.json"
            | "tokenizer_config.json"
            | "special_tokens_map.json"
            | "chat_template.jinja"
            | "chat_template.json"
            | "model.safetensors.index.json"
            | "adapter_config.json"
            | "humanlm.toml"
    ) || (name.ends_with(".safetensors") && !name.contains('/'))
}

/// Where the Hub is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Hub {
    pub endpoint: String,
    pub cache: PathBuf,
    token: Option<String>,
    pub offline: bool,
    /// Draw download progress on stderr (hidden anyway when it is not a terminal).
    pub progress: bool,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

impl Hub {
    pub fn from_env() -> Hub {
        let home = env("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            env("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("huggingface")
        });
        let token = env("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        Hub {
            endpoint: env("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            cache: env("HF_HUB_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join("hub")),
            token,
            offline: env("HF_HUB_OFFLINE").is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            }),
            progress: true,
        }
    }

    fn repo_dir(&self, r: &HubRef) -> PathBuf {
        self.cache
            .join(format!("models--{}", r.repo.replace('/', "--")))
    }

    /// The cached snapshot of `r`, if the cache has one with a config in it.
    pub fn cached_snapshot(&self, r: &HubRef) -> Option<PathBuf> {
        let dir = self.repo_dir(r);
        let commit = if is_commit(&r.revision) {
            r.revision.clone()
        } else {
            std::fs::read_to_string(dir.join("refs").join(&r.revision))
                .ok()?
                .trim()
                .to_string()
        };
        let snap = dir.join("snapshots").join(commit);
        (snap.join("config.json").is_file() || snap.join("adapter_config.json").is_file())
            .then_some(snap)
    }

    /// Every repository revision in the cache whose snapshot holds a checkpoint this workbench
    /// loads (an adapter, or a llama / qwen2 / qwen3 config), sorted.
    pub fn cached(&self) -> Vec<(HubRef, PathBuf)> {
        let mut out = vec![];
        let Ok(rd) = std::fs::read_dir(&self.cache) else {
            return out;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let dir_name = e.file_name().to_string_lossy().to_string();
            let Some(repo) = dir_name
                .strip_prefix("models--")
                .and_then(|r| r.split_once("--"))
                .map(|(org, name)| format!("{org}/{name}"))
            else {
                continue;
            };
            let Ok(refs) = std::fs::read_dir(e.path().join("refs")) else {
                continue;
            };
            for r in refs.filter_map(|r| r.ok()) {
                let revision = r.file_name().to_string_lossy().to_string();
                let Some(hub_ref) = HubRef::parse(&format!("{repo}@{revision}")) else {
                    continue;
                };
                if let Some(snap) = self.cached_snapshot(&hub_ref).filter(|s| loadable(s)) {
                    out.push((hub_ref, snap));
                }
            }
        }
        out.sort_by(|a, b| (&a.0.repo, &a.0.revision).cmp(&(&b.0.repo, &b.0.revision)));
        out
    }

    /// The snapshot folder of `r`, fetching what the cache lacks (nothing, offline).
    pub fn snapshot(&self, r: &HubRef) -> Result<PathBuf> {
        if self.offline {
            return self.cached_snapshot(r).ok_or_else(|| {
                Error::file(
                    self.repo_dir(r),
                    format!("{r} is not in the cache and HF_HUB_OFFLINE is set"),
                )
            });
        }
        match self.fetch(r) {
            Ok(p) => Ok(p),
            // The Hub out of reach: a cached snapshot still loads, as huggingface_hub does.
            Err(Fetch::Unreachable(e)) => self.cached_snapshot(r).ok_or(e),
            Err(Fetch::Fatal(e)) => Err(e),
        }
    }

    fn agent(&self, redirects: u32) -> ureq::Agent {
        ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(redirects)
                .timeout_connect(Some(Duration::from_secs(30)))
                .timeout_recv_body(Some(Duration::from_secs(300)))
                .user_agent(concat!("humanlm/", env!("CARGO_PKG_VERSION")))
                .build(),
        )
    }

    /// The token goes to the Hub only, never to the storage a download is redirected to.
    fn authorize(
        &self,
        url: &str,
        req: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        match &self.token {
            Some(t) if url.starts_with(&format!("{}/", self.endpoint)) => {
                req.header("Authorization", format!("Bearer {t}"))
            }
            _ => req,
        }
    }

    fn get(
        &self,
        agent: &ureq::Agent,
        url: &str,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        self.authorize(url, agent.get(url))
    }

    fn head(
        &self,
        agent: &ureq::Agent,
        url: &str,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        self.authorize(url, agent.head(url))
    }

    fn fetch(&self, r: &HubRef) -> std::result::Result<PathBuf, Fetch> {
        let api = format!(
            "{}/api/models/{}/revision/{}",
            self.endpoint, r.repo, r.revision
        );
        let agent = self.agent(10);
        let mut resp = self.get(&agent, &api).call().map_err(|e| {
            Fetch::Unreachable(Error::file(&api, format!("cannot reach the Hub: {e}")))
        })?;
        check_status(&api, r, resp.status().as_u16())?;
        let info: serde_json::Value = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_json()
            .map_err(|e| Fetch::Fatal(Error::file(&api, format!("not a model listing: {e}"))))?;
        let commit = info["sha"]
            .as_str()
            .filter(|s| is_commit(s))
            .ok_or_else(|| Fetch::Fatal(Error::file(&api, "the listing has no commit sha")))?
            .to_string();
        let files: Vec<String> = info["siblings"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["rfilename"].as_str())
                    .filter(|f| is_checkpoint_file(f))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if !files
            .iter()
            .any(|f| f == "config.json" || f == "adapter_config.json")
        {
            return Err(Fetch::Fatal(Error::file(
                &api,
                format!("{r} has no config.json or adapter_config.json: not a checkpoint this workbench loads"),
            )));
        }
        let dir = self.repo_dir(r);
        let snap = dir.join("snapshots").join(&commit);
        // The index first: every shard it names must be in the repository.
        let mut order = files.clone();
        order.sort_by_key(|f| f != "model.safetensors.index.json");
        for f in &order {
            self.file(r, &commit, f, &dir, &snap)?;
            if f == "model.safetensors.index.json" {
                for shard in super::checkpoint::index_shards(&snap.join(f)).map_err(Fetch::Fatal)? {
                    if !files.contains(&shard) {
                        return Err(Fetch::Fatal(Error::file(
                            snap.join(f),
                            format!("names shard '{shard}', which {r} does not have"),
                        )));
                    }
                }
            }
        }
        if !is_commit(&r.revision) {
            let refs = dir.join("refs");
            std::fs::create_dir_all(&refs)
                .map_err(|e| Fetch::Fatal(Error::file(&refs, e.to_string())))?;
            crate::files::write(&refs.join(&r.revision), commit.as_bytes())
                .map_err(|e| Fetch::Fatal(Error::file(refs.join(&r.revision), e.to_string())))?;
        }
        Ok(snap)
    }

    /// One file of the snapshot: linked to its blob, downloading the blob if the cache lacks it.
    fn file(
        &self,
        r: &HubRef,
        commit: &str,
        name: &str,
        dir: &Path,
        snap: &Path,
    ) -> std::result::Result<(), Fetch> {
        let link = snap.join(name);
        if link.is_file() {
            return Ok(());
        }
        let url = format!("{}/{}/resolve/{commit}/{name}", self.endpoint, r.repo);
        // The Hub answers an LFS file with a redirect to its storage and the file's SHA-256 as
        // X-Linked-Etag; HEAD without following gives the headers of the repository's answer.
        let resp = self.head(&self.agent(0), &url).call().map_err(|e| {
            Fetch::Unreachable(Error::file(&url, format!("cannot reach the Hub: {e}")))
        })?;
        let status = resp.status().as_u16();
        if !(200..400).contains(&status) {
            check_status(&url, r, status)?;
            return Err(Fetch::Fatal(Error::file(&url, format!("HTTP {status}"))));
        }
        let header = |k: &str| {
            resp.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim_start_matches("W/").trim_matches('"').to_string())
        };
        let etag = header("x-linked-etag")
            .or_else(|| header("etag"))
            .filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            .ok_or_else(|| Fetch::Fatal(Error::file(&url, "no ETag in the Hub's answer")))?;
        let size: Option<u64> = header("x-linked-size")
            .or_else(|| header("content-length"))
            .and_then(|s| s.parse().ok());
        // Download from where the Hub points (its storage, for LFS files), so a resumed
        // download's Range goes straight there.
        let from = match header("location") {
            Some(loc) if (300..400).contains(&status) => {
                if loc.starts_with("http://") || loc.starts_with("https://") {
                    loc
                } else {
                    format!("{}{loc}", origin(&self.endpoint))
                }
            }
            _ => url.clone(),
        };
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs)
            .map_err(|e| Fetch::Fatal(Error::file(&blobs, e.to_string())))?;
        let blob = blobs.join(&etag);
        if !blob.is_file() {
            self.download(&from, name, &blob, size, &etag)?;
        }
        std::fs::create_dir_all(snap)
            .map_err(|e| Fetch::Fatal(Error::file(snap, e.to_string())))?;
        let target = Path::new("../../blobs").join(&etag);
        let tmp = snap.join(format!(".{name}.link"));
        let _ = std::fs::remove_file(&tmp);
        link_or_copy(&target, &blob, &tmp)
            .and_then(|_| std::fs::rename(&tmp, &link))
            .map_err(|e| {
                Fetch::Fatal(Error::file(
                    &link,
                    format!("cannot link into the snapshot: {e}"),
                ))
            })
    }

    /// Download `url` into `blob`, resuming `blob.incomplete` if a previous try left one.
    fn download(
        &self,
        url: &str,
        name: &str,
        blob: &Path,
        size: Option<u64>,
        etag: &str,
    ) -> std::result::Result<(), Fetch> {
        let part = blob.with_extension("incomplete");
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        let agent = self.agent(10);
        let mut req = self.get(&agent, url);
        if have > 0 {
            req = req.header("Range", format!("bytes={have}-"));
        }
        let mut resp = req
            .call()
            .map_err(|e| Fetch::Unreachable(Error::file(url, format!("cannot download: {e}"))))?;
        let status = resp.status().as_u16();
        let resumed = status == 206;
        if !(status == 200 || resumed) {
            return Err(Fetch::Fatal(Error::file(
                url,
                format!("HTTP {status} while downloading"),
            )));
        }
        let write_err = |e: std::io::Error| {
            // A local write failure (disk full...) leaves nothing behind to resume from.
            let _ = std::fs::remove_file(&part);
            Fetch::Fatal(Error::file(&part, format!("cannot write: {e}")))
        };
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(&part)
            .map_err(write_err)?;
        let start = if resumed { have } else { 0 };
        let bar = indicatif::ProgressBar::with_draw_target(
            size,
            if self.progress {
                indicatif::ProgressDrawTarget::stderr()
            } else {
                indicatif::ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:30!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("a valid template"),
        );
        bar.set_message(name.to_string());
        bar.set_position(start);
        let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = start;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    bar.abandon();
                    // What arrived stays in .incomplete: the next try resumes from it.
                    let _ = out.flush();
                    return Err(Fetch::Unreachable(Error::file(
                        url,
                        format!("download interrupted after {got} bytes ({e}); run the command again to resume"),
                    )));
                }
            };
            out.write_all(&buf[..n]).map_err(write_err)?;
            got += n as u64;
            bar.set_position(got);
        }
        out.sync_all().map_err(write_err)?;
        drop(out);
        bar.finish_and_clear();
        if let Some(want) = size {
            if got != want {
                let _ = std::fs::remove_file(&part);
                return Err(Fetch::Fatal(Error::file(
                    url,
                    format!("received {got} bytes, the Hub announced {want}"),
                )));
            }
        }
        // An LFS file's etag is its SHA-256: check it before the blob can be used.
        if etag.len() == 64 && etag.chars().all(|c| c.is_ascii_hexdigit()) {
            let digest = sha256_file(&part).map_err(write_err)?;
            if digest != etag.to_ascii_lowercase() {
                let _ = std::fs::remove_file(&part);
                return Err(Fetch::Fatal(Error::file(
                    url,
                    format!("SHA-256 {digest} does not match the Hub's {etag}"),
                )));
            }
        }
        std::fs::rename(&part, blob).map_err(write_err)
    }
}

/// Why a fetch failed: the Hub out of reach (a cached snapshot may serve) or anything else.
enum Fetch {
    Unreachable(Error),
    Fatal(Error),
}

fn check_status(url: &str, r: &HubRef, status: u16) -> std::result::Result<(), Fetch> {
    let msg = match status {
        200..=399 => return Ok(()),
        401 | 403 => format!(
            "access denied (HTTP {status}): {} is gated or private; set HF_TOKEN to a token with access",
            r.repo
        ),
        404 => format!("{r} not found (no such repository or revision, or it is private: HF_TOKEN)"),
        s => format!("the Hub answered HTTP {s}"),
    };
    Err(Fetch::Fatal(Error::file(url, msg)))
}

/// `scheme://host[:port]` of a URL (where a path-only redirect points).
fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

/// An adapter, or a model of an architecture the decoder runs (the cache also holds other
/// people's embedders, vision models...).
fn loadable(snap: &Path) -> bool {
    if snap.join("adapter_config.json").is_file() {
        return true;
    }
    std::fs::read_to_string(snap.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["model_type"].as_str().map(str::to_string))
        .is_some_and(|t| matches!(t.as_str(), "llama" | "qwen2" | "qwen3"))
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A relative symlink as the Hub client makes, or a copy where links are not allowed.
fn link_or_copy(target: &Path, blob: &Path, at: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        if std::os::unix::fs::symlink(target, at).is_ok() {
            return Ok(());
        }
    }
    let _ = target;
    std::fs::copy(blob, at).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repository_specs() {
        assert_eq!(
            HubRef::from_spec("hf:Qwen/Qwen3-8B"),
            Some(HubRef {
                repo: "Qwen/Qwen3-8B".into(),
                revision: "main".into()
            })
        );
        assert_eq!(
            HubRef::parse("microsoft/UserLM-8b@v1.0").unwrap().revision,
            "v1.0"
        );
        for bad in [
            "Qwen", "Qwen/", "/x", "a/b/c", "a/b@", "../x", "a/..b", "a b/c",
        ] {
            assert_eq!(HubRef::parse(bad), None, "{bad}");
        }
        assert_eq!(
            HubRef::from_spec("Qwen/Qwen3-8B"),
            None,
            "needs the hf: prefix"
        );
        assert!(is_checkpoint_file("model-00001-of-00004.safetensors"));
        assert!(!is_checkpoint_file("README.md") && !is_checkpoint_file("onnx/model.safetensors"));
    }
}
