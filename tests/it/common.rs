//! Shared helpers for integration tests: where the default checkpoint and fixtures live.
#![allow(dead_code)]

use humanlm::model::weights::LoadOptions;
use humanlm::model::{Checkpoint, Model};
use std::path::PathBuf;
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn checkpoints() -> PathBuf {
    root().join("checkpoints")
}

pub fn default_gguf() -> PathBuf {
    checkpoints().join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The shipped checkpoints and prompt sets, as library calls take them.
pub fn roots() -> humanlm::roots::Roots {
    humanlm::roots::Roots::new(checkpoints(), root().join("prompts"))
}

/// A copy of the shipped prompt set `name` in the new folder `to`, for a test to edit.
pub fn copy_prompt_set(name: &str, to: &std::path::Path) {
    copy_dir(&root().join("prompts").join(name), to);
}

/// The files of `from` copied into the new folder `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// A copy of the fixture folder `name` in the new folder `to`, for a test to edit.
pub fn copy_fixture(name: &str, to: &std::path::Path) {
    copy_dir(&fixture(name), to);
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// The default checkpoint, loaded once per test binary.
pub fn default_model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| load("smollm2-135m-instruct", LoadOptions::default()))
}

pub fn load(spec: &str, opts: LoadOptions) -> Model {
    let ck = Checkpoint::resolve(spec, &checkpoints()).unwrap_or_else(|e| panic!("{e}"));
    ck.load(&opts).unwrap_or_else(|e| panic!("{e}"))
}

/// Run the binary with `HUMANLM_CHECKPOINTS` set to the shipped checkpoints.
pub fn humanlm(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .args(args)
        .env("HUMANLM_CHECKPOINTS", checkpoints())
        .output()
        .unwrap()
}

/// Run the binary with `HUMANLM_CHECKPOINTS` set; panics with its stderr unless it succeeds, and
/// returns its stdout parsed as JSON.
pub fn run_json(args: &[&str], checkpoints: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .args(args)
        .env("HUMANLM_CHECKPOINTS", checkpoints)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "humanlm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The Python of the test venv (`.venv-test/`, made by scripts/test-venv.sh; `HUMANLM_TEST_PYTHON`
/// overrides it), which reference scripts run under.
pub fn test_python() -> PathBuf {
    let python = std::env::var_os("HUMANLM_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv-test/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/test-venv.sh",
        python.display()
    );
    python
}
