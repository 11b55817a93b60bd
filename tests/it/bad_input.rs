//! Bad input: each fault gives exit code 2 and one line on stderr naming the file and the fault,
//! never a panic.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn humanlm(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .args(args)
        .env("HUMANLM_CHECKPOINTS", common::checkpoints())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `generate` on `ckpt` and check the error mentions every needle.
fn expect_error(ckpt: &Path, extra: &[&str], needles: &[&str]) {
    let mut args = vec![
        "generate",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--max-tokens",
        "2",
    ];
    if !extra.contains(&"--messages") {
        args.extend(["--prompt", "hello"]);
    }
    args.extend(extra);
    let (code, err) = humanlm(&args);
    assert_eq!(code, 2, "exit code for {ckpt:?}; stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected, got: {err}"
    );
    assert!(err.starts_with("humanlm: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn tiny_copy(name: &str, tmp: &Path) -> PathBuf {
    let dir = tmp.join(name);
    copy_dir(&common::fixture(&format!("tiny/{name}")), &dir);
    dir
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn missing_folder() {
    expect_error(
        Path::new("/nonexistent/model-x"),
        &[],
        &["/nonexistent/model-x", "not found"],
    );
}

#[test]
fn truncated_and_corrupt_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(common::default_gguf()).unwrap();
    let trunc = tmp.path().join("truncated.gguf");
    std::fs::write(&trunc, &bytes[..bytes.len() / 3]).unwrap();
    expect_error(&trunc, &[], &["truncated.gguf", "truncated"]);
    let corrupt = tmp.path().join("corrupt.gguf");
    let mut junk = b"GGUF".to_vec();
    junk.extend((0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8));
    std::fs::write(&corrupt, &junk).unwrap();
    expect_error(&corrupt, &[], &["corrupt.gguf", "not a valid GGUF file"]);
    let not_gguf = tmp.path().join("notes.gguf");
    std::fs::write(&not_gguf, "these are notes, not weights").unwrap();
    expect_error(&not_gguf, &[], &["notes.gguf", "not a valid GGUF file"]);
}

#[test]
fn truncated_and_corrupt_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_copy("llama", tmp.path());
    let st = dir.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    expect_error(
        &dir,
        &[],
        &["model.safetensors", "not a valid safetensors file"],
    );
    let mut bad = bytes.clone();
    bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&st, &bad).unwrap();
    expect_error(
        &dir,
        &[],
        &["model.safetensors", "not a valid safetensors file"],
    );
    // A shard listed in the index but missing on disk.
    let sharded = tiny_copy("qwen2", tmp.path());
    std::fs::remove_file(sharded.join("model-00003-of-00004.safetensors")).unwrap();
    expect_error(
        &sharded,
        &[],
        &["model-00003-of-00004.safetensors", "missing"],
    );
}

#[test]
fn config_with_unknown_architecture_or_missing_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_copy("llama", tmp.path());
    edit_json(&dir.join("config.json"), |v| {
        v["model_type"] = "gpt_neox".into()
    });
    expect_error(
        &dir,
        &[],
        &["config.json", "unknown architecture 'gpt_neox'"],
    );
    let dir = tiny_copy("qwen3", &tmp.path().join("b"));
    edit_json(&dir.join("config.json"), |v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    expect_error(&dir, &[], &["config.json", "missing field 'hidden_size'"]);
}

/// A tokenizer with more ids than the embedding has rows.
#[test]
fn tokenizer_larger_than_embedding() {
    use candle_core::Device;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_copy("llama", tmp.path());
    let st = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    for name in ["model.embed_tokens.weight", "lm_head.weight"] {
        let t = tensors[name].narrow(0, 0, 200).unwrap();
        tensors.insert(name.into(), t);
    }
    candle_core::safetensors::save(&tensors, &st).unwrap();
    edit_json(&dir.join("config.json"), |v| v["vocab_size"] = 200.into());
    expect_error(&dir, &[], &["tokenizer.json", "200 rows"]);
}

#[test]
fn adapter_with_missing_base_or_wrong_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let lonely = tiny_copy("qwen3-lora", tmp.path());
    expect_error(
        &lonely,
        &[],
        &["adapter_config.json", "base model '../qwen3' not found"],
    );
    let llama = common::fixture("tiny/llama");
    edit_json(&lonely.join("adapter_config.json"), |v| {
        v["base_model_name_or_path"] = llama.to_str().unwrap().into()
    });
    expect_error(
        &lonely,
        &[],
        &["adapter_model.safetensors", "adapter is", "base layer is"],
    );
}

#[test]
fn prompt_longer_than_context() {
    // The tiny llama has a 256-position context.
    let long = "hello world ".repeat(400);
    let ckpt = common::fixture("tiny/llama");
    let (code, err) = humanlm(&[
        "generate",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--prompt",
        &long,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("does not fit the context of 256 tokens"),
        "{err}"
    );
}

#[test]
fn bad_messages_file() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("chat.json");
    std::fs::write(&f, r#"{"role": "user"}"#).unwrap();
    let ckpt = common::fixture("tiny/llama");
    expect_error(
        &ckpt,
        &["--messages", f.to_str().unwrap()],
        &["chat.json", "JSON array"],
    );
}

#[test]
fn gpu_device_without_cuda_build() {
    let ckpt = common::fixture("tiny/llama");
    expect_error(
        &ckpt,
        &["--device", "cuda:0"],
        &["cuda:0", "--features cuda"],
    );
}
