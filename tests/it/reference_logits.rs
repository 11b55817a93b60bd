//! Numerics against PyTorch: logits and greedy continuations from Hugging Face transformers
//! (fixtures made by scripts/reference/*.py; their versions are recorded inside).

use crate::common;

use candle_core::{Device, Tensor};
use humanlm::generate::{generate, SamplingParams};
use humanlm::model::weights::LoadOptions;
use humanlm::model::{Model, Ops};
use serde_json::Value;

fn read(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
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

fn all_logits(model: &Model, ids: &[u32], ops: Ops) -> Vec<Vec<f32>> {
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = match ops {
        Ops::Fast => {
            let mut cache = model.decoder.new_cache(1, ids.len()).unwrap();
            model
                .decoder
                .forward(&input, Some(&mut cache), ops, true)
                .unwrap()
        }
        Ops::Diff => model.decoder.forward(&input, None, ops, true).unwrap(),
    };
    logits.squeeze(0).unwrap().to_vec2().unwrap()
}

fn greedy(model: &Model, ids: &[u32], n: usize) -> Vec<u32> {
    let params = SamplingParams {
        max_new_tokens: n,
        ignore_eos: true,
        ..Default::default()
    };
    generate(model, ids, &params, None, &mut |_| {})
        .unwrap()
        .samples
        .remove(0)
        .token_ids
}

/// The default model, dequantized to f32 (what transformers computes from the GGUF), matches
/// the reference within 1e-3 × max |logit| at sampled positions, on every path; greedy
/// continuations are identical.
#[test]
fn smollm2_f32_matches_transformers() {
    let model = common::load(
        "smollm2-135m-instruct",
        LoadOptions {
            dequantize: true,
            ..Default::default()
        },
    );
    check_smollm2(&model, true);
}

/// The same model written by transformers' save_pretrained as an HF folder (made by
/// scripts/reference/smollm2_save_hf.py; ~540 MB, so only where HUMANLM_SMOLLM2_HF points at
/// it) gives the same logits through the safetensors path.
#[test]
fn smollm2_hf_folder_matches_transformers() {
    let Some(dir) = std::env::var_os("HUMANLM_SMOLLM2_HF") else {
        eprintln!("skipped: set HUMANLM_SMOLLM2_HF to a folder made by scripts/reference/smollm2_save_hf.py");
        return;
    };
    let model = common::load(dir.to_str().unwrap(), LoadOptions::default());
    check_smollm2(&model, false);
}

fn check_smollm2(model: &Model, with_diff: bool) {
    let fx = read(&common::fixture("smollm2_logits.json"));
    let mut longest = 0;
    for p in fx["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let ids = ids_of(&p["input_ids"]);
        longest = longest.max(ids.len());
        let mut paths = vec![(Ops::Fast, all_logits(model, &ids, Ops::Fast))];
        if with_diff && ids.len() < 400 {
            // The differentiable path is the training path; checking it on the shorter prompts
            // is enough to prove it computes the same function.
            paths.push((Ops::Diff, all_logits(model, &ids, Ops::Diff)));
        }
        for (ops, logits) in &paths {
            for row in p["rows"].as_array().unwrap() {
                let pos = row["position"].as_u64().unwrap() as usize;
                let tol = 1e-3 * row["max_abs"].as_f64().unwrap() as f32;
                let ours = &logits[pos];
                for key in ["top", "probe"] {
                    let idx = ids_of(&row[format!("{key}_ids")]);
                    let want = floats(&row[format!("{key}_logits")]);
                    for (i, w) in idx.iter().zip(&want) {
                        let d = (ours[*i as usize] - w).abs();
                        assert!(
                            d <= tol,
                            "{name} {ops:?} pos {pos} id {i}: ours {} ref {w} (Δ {d} > {tol})",
                            ours[*i as usize]
                        );
                    }
                }
                let argmax = ours
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0;
                assert_eq!(
                    argmax as u64,
                    row["argmax"].as_u64().unwrap(),
                    "{name} {ops:?} pos {pos}"
                );
            }
        }
        assert_eq!(
            greedy(model, &ids, 32),
            ids_of(&p["greedy_ids"]),
            "{name}: greedy continuation"
        );
    }
    assert!(
        longest > 1000,
        "the fixture must include a prompt longer than 1,000 tokens"
    );
}

fn check_tiny(dir: &str, model: &Model, fx: &Value) {
    for (s, ids) in fx["input_ids"].as_array().unwrap().iter().enumerate() {
        let ids = ids_of(ids);
        let want: Vec<Vec<f32>> = fx["logits"][s]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        for ops in [Ops::Fast, Ops::Diff] {
            let ours = all_logits(model, &ids, ops);
            let max_abs = want.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
            for (pos, (o, w)) in ours.iter().zip(&want).enumerate() {
                for (v, (a, b)) in o.iter().zip(w).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * max_abs.max(1.0),
                        "{dir} {ops:?} seq {s} pos {pos} id {v}: {a} vs {b}"
                    );
                }
            }
        }
        assert_eq!(
            greedy(model, &ids, 16),
            ids_of(&fx["greedy_ids"][s]),
            "{dir} seq {s}: greedy"
        );
    }
}

/// Tiny random llama / qwen2 (sharded) / qwen3 models saved by transformers' save_pretrained
/// load through the safetensors path and give transformers' logits.
#[test]
fn tiny_hf_models_match_transformers() {
    for dir in ["llama", "qwen2", "qwen3"] {
        let path = common::fixture(&format!("tiny/{dir}"));
        let model = common::load(path.to_str().unwrap(), LoadOptions::default());
        check_tiny(dir, &model, &read(&path.join("reference.json")));
    }
}

/// A PEFT LoRA adapter gives PeftModel's logits live (unmerged) and merged; switching it off
/// gives the base model's logits again without reloading.
#[test]
fn peft_adapter_matches_peft() {
    let path = common::fixture("tiny/qwen3-lora");
    let mut model = common::load(path.to_str().unwrap(), LoadOptions::default());
    assert_eq!(model.decoder.active_adapter(), Some("qwen3-lora"));
    check_tiny(
        "qwen3-lora live",
        &model,
        &read(&path.join("reference.json")),
    );
    model.decoder.set_active_adapter(None).unwrap();
    check_tiny(
        "qwen3-lora off",
        &model,
        &read(&common::fixture("tiny/qwen3/reference.json")),
    );
    model
        .decoder
        .set_active_adapter(Some("qwen3-lora"))
        .unwrap();
    model.decoder.merge_adapter("qwen3-lora").unwrap();
    assert_eq!(model.decoder.active_adapter(), None);
    check_tiny(
        "qwen3-lora merged",
        &model,
        &read(&path.join("reference.json")),
    );
}

/// bf16 and f16 safetensors load (computed in f32 on the CPU) and stay within their rounding of
/// the f32 reference.
#[test]
fn half_precision_safetensors() {
    use candle_core::DType;
    let src = common::fixture("tiny/qwen3");
    let fx = read(&src.join("reference.json"));
    for dtype in [DType::BF16, DType::F16] {
        let tmp = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
        let st = tmp.path().join("model.safetensors");
        let tensors = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
        let half: std::collections::HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&half, &st).unwrap();
        let model = common::load(tmp.path().to_str().unwrap(), LoadOptions::default());
        let ids = ids_of(&fx["input_ids"][1]);
        let want: Vec<Vec<f32>> = fx["logits"][1]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        let ours = all_logits(&model, &ids, Ops::Fast);
        let max_abs = want.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
        let diff = ours
            .iter()
            .flatten()
            .zip(want.iter().flatten())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff > 0.0,
            "{dtype:?}: the weights should have been rounded"
        );
        assert!(
            diff <= 0.05 * max_abs,
            "{dtype:?}: Δ {diff} vs max |logit| {max_abs}"
        );
    }
}
