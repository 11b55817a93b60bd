//! `humanlm export --merge`: the committed adapter merged into the default checkpoint (a llama
//! GGUF, so q_proj rows must be un-permuted) and written as a Hugging Face folder must compute
//! what the adapter computes live, what transformers computes from the same folder, and what
//! `peft` computes from the GGUF and the adapter; its tokenizer must encode like llama.cpp in
//! both runtimes. References: tests/fixtures/export/merge_reference.json, made by
//! scripts/reference/export_merge.py.

use crate::common;
use crate::common::humanlm;

use candle_core::{DType, Device, IndexOp, Tensor};
use humanlm::model::weights::LoadOptions;
use humanlm::model::{Model, Ops};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn adapter() -> PathBuf {
    common::fixture("peft/ours")
}

fn reference() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(common::fixture("export/merge_reference.json")).unwrap(),
    )
    .unwrap()
}

/// One export per test binary (through the CLI, as a user runs it), in a temporary folder.
fn merged_dir() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("merged");
        let o = humanlm(&[
            "export",
            "--merge",
            "--checkpoint",
            adapter().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--dtype",
            "f32",
            "--json",
        ]);
        assert!(
            o.status.success(),
            "export failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let report: Value = serde_json::from_slice(&o.stdout).unwrap();
        // r=2 on q_proj and v_proj of 30 layers.
        assert_eq!(report["merged_modules"], 60, "{report}");
        (tmp, out)
    })
    .1
}

fn f32_opts() -> LoadOptions {
    LoadOptions {
        dequantize: true,
        dtype: Some(DType::F32),
        ..Default::default()
    }
}

fn all_logits(model: &Model, ids: &[u32]) -> Tensor {
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .decoder
        .forward(&input, None, Ops::Diff, true)
        .unwrap()
        .i(0)
        .unwrap()
}

fn ids(fx: &Value) -> Vec<u32> {
    fx["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Largest gap between `logits` and one recorded side of the fixture (top ids, probe ids and
/// logsumexp at every recorded position).
fn gap_to(logits: &Tensor, fx: &Value, side: &str) -> f32 {
    let probes: Vec<usize> = fx["probe_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let mut worst = 0f32;
    for (pos, want) in fx[side].as_object().unwrap() {
        let row: Vec<f32> = logits
            .i(pos.parse::<usize>().unwrap())
            .unwrap()
            .to_vec1()
            .unwrap();
        for (id, w) in want["top_ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(floats(&want["top_logits"]))
        {
            worst = worst.max((row[id.as_u64().unwrap() as usize] - w).abs());
        }
        for (id, w) in probes.iter().zip(floats(&want["probe_logits"])) {
            worst = worst.max((row[*id] - w).abs());
        }
        let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = m + row.iter().map(|x| (*x as f64 - m).exp()).sum::<f64>().ln();
        worst = worst.max((lse - want["logsumexp"].as_f64().unwrap()).abs() as f32);
    }
    worst
}

#[test]
fn merged_export_computes_what_the_adapter_computes() {
    let fx = reference();
    let ids = ids(&fx);
    let merged = common::load(merged_dir().to_str().unwrap(), f32_opts());
    assert_eq!(merged.checkpoint.name, "merged");
    let merged_logits = all_logits(&merged, &ids);

    // 1. Our runtime, the adapter live on the GGUF base (f32): every logit of every position.
    let live = common::load(adapter().to_str().unwrap(), f32_opts());
    let live_logits = all_logits(&live, &ids);
    let vs_live: f32 = (&merged_logits - &live_logits)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    // 2. transformers loading the exported folder; 3. transformers + peft on the GGUF.
    let vs_transformers = gap_to(&merged_logits, &fx, "merged");
    let vs_peft = gap_to(&merged_logits, &fx, "peft");
    eprintln!(
        "max |Δlogit|: merged vs live adapter {vs_live:.2e}, vs transformers on the export {vs_transformers:.2e}, vs transformers+peft {vs_peft:.2e}"
    );
    assert!(vs_live < 1e-3, "merged vs live adapter: {vs_live}");
    assert!(
        vs_transformers < 2e-3,
        "merged vs transformers: {vs_transformers}"
    );
    assert!(vs_peft < 2e-3, "merged vs transformers+peft: {vs_peft}");

    // The check has teeth: the bare base is far from the adapted references, and so is the
    // export with q_proj left in llama.cpp's row order.
    let mut base = live;
    base.decoder.set_active_adapter(None).unwrap();
    let base_gap = gap_to(&all_logits(&base, &ids), &fx, "peft");
    assert!(
        base_gap > 20.0 * vs_peft.max(1e-4),
        "base {base_gap} vs merged {vs_peft}"
    );
}

#[test]
fn unpermuting_is_what_makes_the_export_right() {
    // Permute q_proj/k_proj back to llama.cpp's order in the exported file: the logits must then
    // move far from the reference, so the fixture would catch an export that forgot the step.
    let fx = reference();
    let dir = merged_dir();
    let broken = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap() != "model.safetensors" {
            std::fs::copy(&f, broken.path().join(f.file_name().unwrap())).unwrap();
        }
    }
    let cfg = humanlm::model::ModelConfig::from_hf_json(&dir.join("config.json")).unwrap();
    let mut tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, t) in tensors.iter_mut() {
        let heads = if name.ends_with("q_proj.weight") {
            cfg.num_heads
        } else if name.ends_with("k_proj.weight") {
            cfg.num_kv_heads
        } else {
            continue;
        };
        let (out, cols) = t.dims2().unwrap();
        *t = t
            .reshape((heads, 2, out / heads / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((out, cols))
            .unwrap();
    }
    candle_core::safetensors::save(&tensors, broken.path().join("model.safetensors")).unwrap();
    let model = common::load(broken.path().to_str().unwrap(), f32_opts());
    let gap = gap_to(&all_logits(&model, &ids(&fx)), &fx, "peft");
    assert!(gap > 1.0, "GGUF row order gave max |Δlogit| {gap} only");
}

#[test]
fn exported_tokenizer_and_template_match_llama_cpp_and_transformers() {
    let fx = reference();
    let model = common::load(merged_dir().to_str().unwrap(), LoadOptions::default());
    let llama_cpp: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("smollm2_tokenizer.json")).unwrap(),
    )
    .unwrap();
    let cases = llama_cpp["cases"].as_array().unwrap();
    let theirs = fx["tokens"].as_array().unwrap();
    assert_eq!(cases.len(), theirs.len());
    for (c, t) in cases.iter().zip(theirs) {
        let text = c["text"].as_str().unwrap();
        assert_eq!(t["text"].as_str().unwrap(), text);
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let transformers: Vec<u32> = t["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        // transformers reading our tokenizer.json, and our runtime reading it, both give
        // llama.cpp's ids for the GGUF.
        assert_eq!(transformers, want, "transformers on {text:?}");
        assert_eq!(
            model.tokenizer.encode_rendered(text).unwrap(),
            want,
            "ours on {text:?}"
        );
        assert!(t["decodes_back"].as_bool().unwrap(), "{text:?}");
    }
    // No BOS is added to a raw prompt, in either runtime.
    let hello: Vec<u32> = fx["encode_hello_with_special_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(model.tokenizer.encode_raw("Hello").unwrap(), hello);
    let messages: Vec<humanlm::model::chat::Message> =
        serde_json::from_value(fx["chat_messages"].clone()).unwrap();
    let rendered = model
        .chat
        .render(&messages, true, &serde_json::json!({}))
        .unwrap();
    assert_eq!(rendered, fx["chat"].as_str().unwrap());
    // The stop tokens survive the round trip through generation_config.json.
    let gguf = common::default_model();
    assert_eq!(model.tokenizer.eos_ids, gguf.tokenizer.eos_ids);
    assert_eq!(model.tokenizer.bos_id, gguf.tokenizer.bos_id);
}

#[test]
fn refuses_bad_requests_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let one_line = |o: &std::process::Output| {
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        err
    };
    // An adapter without --merge.
    let err = one_line(&humanlm(&[
        "export",
        "--checkpoint",
        adapter().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(err.contains("--merge"), "{err}");
    assert!(!out.exists());
    // An existing folder without --force.
    std::fs::create_dir(&out).unwrap();
    let err = one_line(&humanlm(&[
        "export",
        "--merge",
        "--checkpoint",
        adapter().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(
        err.contains(out.to_str().unwrap()) && err.contains("--force"),
        "{err}"
    );
    // A bad dtype.
    let err = one_line(&humanlm(&[
        "export",
        "--merge",
        "--checkpoint",
        adapter().to_str().unwrap(),
        "--out",
        tmp.path().join("x").to_str().unwrap(),
        "--dtype",
        "f8",
    ]));
    assert!(err.contains("f8"), "{err}");
    // An adapter whose weights do not fit the base: the file is named, nothing is written.
    let bad = tmp.path().join("bad-adapter");
    std::fs::create_dir(&bad).unwrap();
    std::fs::copy(
        adapter().join("adapter_config.json"),
        bad.join("adapter_config.json"),
    )
    .unwrap();
    let a = Tensor::zeros((2, 100), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((576, 2), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string(),
                a,
            ),
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight".to_string(),
                b,
            ),
        ]),
        bad.join("adapter_model.safetensors"),
    )
    .unwrap();
    let dest = tmp.path().join("never");
    let err = one_line(&humanlm(&[
        "export",
        "--merge",
        "--checkpoint",
        bad.to_str().unwrap(),
        "--out",
        dest.to_str().unwrap(),
    ]));
    assert!(err.contains("adapter_model.safetensors"), "{err}");
    assert!(!dest.exists());
    // No temporary folder is left behind either.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn force_replaces_an_export_and_a_plain_checkpoint_exports_too() {
    // The GGUF default itself (no adapter) to a bf16 folder, replacing what is there.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("plain");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("stale.txt"), "old").unwrap();
    let o = humanlm(&[
        "export",
        "--checkpoint",
        "smollm2-135m-instruct",
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        "bf16",
        "--force",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.join("stale.txt").exists());
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    assert_eq!(cfg["model_type"], "llama");
    let ck =
        humanlm::model::Checkpoint::resolve(out.to_str().unwrap(), &common::checkpoints()).unwrap();
    let info = ck.info().unwrap();
    assert_eq!(info.format, "hf");
    assert!(info.dtype.starts_with("BF16"), "{}", info.dtype);
    // The base's default prompt set comes along.
    assert_eq!(
        ck.default_prompt_set().unwrap().as_deref(),
        Some("instruct")
    );
    // bf16 weights stay close to the GGUF's f32 logits (greedy next token identical).
    let m = common::load(out.to_str().unwrap(), LoadOptions::default());
    let ids = ids(&reference());
    let ours = all_logits(&m, &ids);
    let gguf = all_logits(&common::load("smollm2-135m-instruct", f32_opts()), &ids);
    let last = ids.len() - 1;
    assert_eq!(
        ours.i(last)
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap(),
        gguf.i(last)
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap()
    );
}

/// An adapter on a safetensors base (the tiny random qwen3 and its PEFT LoRA): the merged
/// export gives every logit PeftModel computed (tests/fixtures/tiny/qwen3-lora/reference.json),
/// and carries the base's tokenizer files over unchanged.
#[test]
fn adapter_on_a_safetensors_base_exports_to_peft_logits() {
    let src = common::fixture("tiny/qwen3-lora");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("qwen3-merged");
    let o = humanlm(&[
        "export",
        "--merge",
        "--checkpoint",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let base = common::fixture("tiny/qwen3");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(base.join(f)).unwrap(),
            "{f}"
        );
    }
    let model = common::load(out.to_str().unwrap(), LoadOptions::default());
    assert!(model.decoder.active_adapter().is_none());
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("reference.json")).unwrap())
            .unwrap();
    let mut worst = 0f32;
    for (s, ids) in fx["input_ids"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let ours: Vec<Vec<f32>> = all_logits(&model, &ids).to_vec2().unwrap();
        let want: Vec<Vec<f32>> = fx["logits"][s]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        let max_abs = want.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
        for (o, w) in ours.iter().zip(&want) {
            for (a, b) in o.iter().zip(w) {
                worst = worst.max((a - b).abs() / max_abs.max(1.0));
            }
        }
    }
    assert!(worst <= 1e-4, "merged tiny qwen3 vs peft: relative {worst}");
    // And the adapter did something: the bare base is far from these logits.
    let bare = common::load(base.to_str().unwrap(), LoadOptions::default());
    let ids: Vec<u32> = fx["input_ids"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let diff: f32 = (all_logits(&bare, &ids) - all_logits(&model, &ids))
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(diff > 1e-2, "the adapter changed nothing: {diff}");
}
