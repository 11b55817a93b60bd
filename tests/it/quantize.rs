//! Quantize on load (`--quantize`): a dense HF checkpoint's matrices become Q8_0 / Q4_0 / Q4_K as
//! they are read.
//!
//! References: tests/fixtures/quantize/blocks.json, ggml's reference quantizers through gguf-py
//! (made by scripts/reference/quantize_blocks.py): our blocks must be those bytes, so a checkpoint
//! quantized here is the one llama.cpp's `llama-quantize --pure` makes. The model-level tests then
//! bound how far the quantized model's logits move from the dense model's.

use crate::common::{self, humanlm};
use candle_core::{IndexOp, Tensor};
use humanlm::model::quantize::{pack, DenseRows, DenseType, Quantize};
use humanlm::model::weights::LoadOptions;
use humanlm::model::{Checkpoint, Model, Ops};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn quantizes_to_the_blocks_llama_cpp_writes() {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("quantize/blocks.json")).unwrap(),
    )
    .unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let data = hex(case["data_hex"].as_str().unwrap());
        let src = DenseRows {
            bytes: &data,
            dtype: match case["dtype"].as_str().unwrap() {
                "f32" => DenseType::F32,
                _ => DenseType::BF16,
            },
            n: case["rows"].as_u64().unwrap() as usize,
            k: case["cols"].as_u64().unwrap() as usize,
        };
        for (q, key) in [(Quantize::Q8_0, "q8_0_hex"), (Quantize::Q4_0, "q4_0_hex")] {
            let ours = pack(&src, q).unwrap().ggml_blocks();
            let want = hex(case[key].as_str().unwrap());
            assert_eq!(ours.len(), want.len());
            let differing = ours.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(
                differing, 0,
                "{} {q}: {differing} bytes differ",
                case["name"]
            );
        }
    }
}

/// Logits at every position, the fast (inference) path.
fn all_logits(model: &Model, ids: &[u32]) -> Vec<Vec<f32>> {
    let input = Tensor::new(ids, &model.decoder.device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .decoder
        .forward(&input, None, Ops::Fast, true)
        .unwrap()
        .i(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn load(path: &Path, q: Quantize) -> Model {
    Checkpoint::open(path, &common::checkpoints())
        .and_then(|c| {
            c.load(&LoadOptions {
                quantize: Some(q),
                ..Default::default()
            })
        })
        .unwrap_or_else(|e| panic!("{e}"))
}

/// How far quantized logits are from dense ones: the RMS of their difference relative to the
/// dense logits' spread (standard deviation over the vocabulary, averaged over positions), and the
/// share of positions whose argmax moved.
fn drift(dense: &[Vec<f32>], quant: &[Vec<f32>]) -> (f32, f32) {
    let (mut sq, mut spread, mut count) = (0f64, 0f64, 0usize);
    let mut moved = 0;
    for (d, q) in dense.iter().zip(quant) {
        let mean = d.iter().sum::<f32>() / d.len() as f32;
        let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / d.len() as f32;
        spread += var.sqrt() as f64;
        sq += d
            .iter()
            .zip(q)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>();
        count += d.len();
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        };
        // A move counts where the dense top-2 margin is clear: over three times this position's
        // rms error (random tiny models have near-ties, which any rounding may flip).
        let top = argmax(d);
        let second = d
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != top)
            .map(|(_, x)| *x)
            .fold(f32::NEG_INFINITY, f32::max);
        let here =
            (d.iter().zip(q).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / d.len() as f32).sqrt();
        moved += usize::from(argmax(q) != top && d[top] - second > 3.0 * here);
    }
    let rms = (sq / count as f64).sqrt();
    (
        (rms / (spread / dense.len() as f64)) as f32,
        moved as f32 / dense.len() as f32,
    )
}

fn reference_ids(dir: &Path) -> Vec<Vec<u32>> {
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    fx["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

#[test]
fn tiny_models_quantized_stay_within_the_quantization_error() {
    for name in ["qwen3", "llama"] {
        let dir = common::fixture(&format!("tiny/{name}"));
        let dense = load(&dir, Quantize::None);
        assert!(dense.decoder.weight_kinds().contains("F32"));
        for ids in reference_ids(&dir) {
            let want = all_logits(&dense, &ids);
            let mut errs = vec![];
            for (q, kind) in [
                (Quantize::Q8_0, "Q8_0"),
                (Quantize::Q4_0, "Q4_0"),
                // Rows of 64 and 128 are not whole Q4_K blocks (256): those matrices take Q8_0.
                (Quantize::Q4K, "Q8_0"),
            ] {
                let m = load(&dir, q);
                let kinds = m.decoder.weight_kinds();
                assert!(kinds.starts_with(kind), "{name} {q}: {kinds}");
                let (err, moved) = drift(&want, &all_logits(&m, &ids));
                println!("{name} {q}: rms |Δ|/sd {err:.4}, argmax moved at {moved:.2} of positions with a clear margin");
                errs.push((q, err, moved));
            }
            let (q8, q4) = (errs[0], errs[1]);
            assert!(
                q8.1 > 0.0,
                "{name}: q8_0 changed nothing, so nothing was quantized"
            );
            // Measured: q8_0 moves the logits by 3.3-4.6% of their spread and no argmax, q4_0 by
            // ten times that (its step is 16 times coarser) and half the argmaxes: random
            // weights at initializer 0.2 are harsher on 4 bits than trained ones (the default
            // model's test below).
            assert!(q8.1 < 0.1 && q8.2 == 0.0, "{name}: {q8:?}");
            assert!(
                q4.1 < 0.8 && q4.1 > 4.0 * q8.1,
                "{name}: {q4:?} against {q8:?}"
            );
        }
    }
}

/// The default model written as an f32 HF folder by `humanlm export` (as a user would make one),
/// once per test binary: f32 holds the GGUF's Q4_1 values exactly, as llama.cpp's re-quantization
/// sees them.
fn default_as_hf() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("smollm2-hf");
        let o = humanlm(&[
            "export",
            "--checkpoint",
            "smollm2-135m-instruct",
            "--out",
            out.to_str().unwrap(),
            "--dtype",
            "f32",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (tmp, out)
    })
    .1
}

#[test]
fn the_default_model_quantized_on_load_keeps_its_predictions() {
    let dir = default_as_hf();
    let dense = load(dir, Quantize::None);
    let text = "<|im_start|>user\nWrite two sentences about the sea and the people who live by it.<|im_end|>\n<|im_start|>assistant\nThe sea is vast and full of life, and the people who live by it";
    let ids = dense.tokenizer.encode_raw(text).unwrap();
    assert!(ids.len() > 30);
    let want = all_logits(&dense, &ids);
    drop(dense);
    let mut seen = vec![];
    for q in [Quantize::Q8_0, Quantize::Q4_0, Quantize::Q4K] {
        let m = load(dir, q);
        let got = all_logits(&m, &ids);
        let (err, moved) = drift(&want, &got);
        println!(
            "default {q}: rms |Δ|/sd {err:.4}, argmax moved at {moved:.2} of positions with a clear margin of {} positions",
            ids.len()
        );
        seen.push((q, err, moved));
    }
    let [q8, q4, q4k] = seen[..] else {
        unreachable!()
    };
    // Measured on this prompt (39 positions, the f32 export): q8_0 3.5% of the spread and one
    // argmax moved (a near-tie), q4_k 13% and two, q4_0 82% and eleven. The weights were Q4_1
    // before export, and a 135M model is known to suffer at 4 bits: Q4_0's symmetric grid,
    // re-quantizing Q4_1's, moves the tail of the vocabulary most (the argmax far less). That
    // these are llama.cpp's numbers too is the next test's job.
    assert!(q8.1 < 0.08 && q8.2 <= 0.06, "{q8:?}");
    assert!(q4.1 < 1.5 && q4.2 <= 0.4, "{q4:?}");
    assert!(
        q4k.1 < q4.1 && q4k.1 > q8.1,
        "{q4k:?} between {q8:?} and {q4:?}"
    );
}

/// A copy of the tiny Qwen3 in a checkpoints folder of its own, as `q3`.
fn tiny_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q3");
    common::copy_fixture("tiny/qwen3", &dir);
    (tmp, dir)
}

fn stderr_line(o: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

#[test]
fn the_checkpoints_setting_and_the_flag_choose_the_type_and_bad_ones_are_refused() {
    let (tmp, dir) = tiny_copy();
    let listed = |extra: &[&str]| -> Value {
        let mut args = vec!["checkpoints", "--json"];
        args.extend_from_slice(extra);
        common::run_json(&args, tmp.path())[0].clone()
    };
    // Below 1B parameters a dense checkpoint stays dense unless asked.
    let v = listed(&[]);
    assert_eq!(v["loads_as"], "none", "{v}");
    assert_eq!(v["loads_as_reason"], "default below 1B parameters");
    let v = listed(&["--quantize", "q4_0"]);
    assert_eq!(
        (&v["loads_as"], &v["loads_as_reason"]),
        (&"q4_0".into(), &"--quantize".into())
    );
    std::fs::write(dir.join("humanlm.toml"), "quantize = \"q8_0\"\n").unwrap();
    let v = listed(&[]);
    assert_eq!(
        (&v["loads_as"], &v["loads_as_reason"]),
        (&"q8_0".into(), &"humanlm.toml".into())
    );
    let v = listed(&["--quantize", "none"]);
    assert_eq!(v["loads_as"], "none", "the flag wins over the file: {v}");
    // The default GGUF keeps its own types.
    let o = humanlm(&["checkpoints", "--json"]);
    let all: Value = serde_json::from_slice(&o.stdout).unwrap();
    let gguf = all
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["format"] == "gguf")
        .unwrap();
    assert_eq!(gguf["loads_as"], "as stored");

    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--checkpoint",
            "q3",
            "--prompt",
            "hello",
            "--max-tokens",
            "4",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_humanlm"))
            .args(&args)
            .env("HUMANLM_CHECKPOINTS", tmp.path())
            .env_remove("HUMANLM_QUANTIZE")
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // clap's own usage error (its line, then a pointer to --help).
    let o = run(&["--quantize", "q3_k"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.lines()
            .next()
            .unwrap()
            .contains("expected none, q8_0, q4_0 or q4_k"),
        "{err}"
    );

    std::fs::write(dir.join("humanlm.toml"), "quantize = \"q5\"\n").unwrap();
    let err = stderr_line(&run(&[]));
    assert!(
        err.contains("humanlm.toml") && err.contains("quantize = 'q5'"),
        "{err}"
    );
    std::fs::remove_file(dir.join("humanlm.toml")).unwrap();

    // A matrix stored as integers cannot be quantized: the shard and the tensor are named.
    let file = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    let t = tensors[name].to_dtype(candle_core::DType::I64).unwrap();
    tensors.insert(name.into(), t);
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let err = stderr_line(&run(&["--quantize", "q8_0"]));
    assert!(
        err.contains("model.safetensors") && err.contains(name) && err.contains("I64"),
        "{err}"
    );
}

/// Where llama.cpp's top-2 margin is at least this, its greedy choice counts as clear (the
/// measurement behind it is in tests/it/quantized_parity.rs: both sides quantize activations to
/// 8 bits, and a different rounding order moves logits by up to ~0.25).
const TIE: f32 = 0.4;

#[test]
fn quantizing_the_exported_default_model_gives_llama_cpps_blocks_and_tokens() {
    use sha2::{Digest, Sha256};
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("quantize/llamacpp_requantized.json")).unwrap(),
    )
    .unwrap();
    let dir = default_as_hf();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut hashed = vec!["model.embed_tokens.weight".to_string()];
    for i in [0, 29] {
        for m in [
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            hashed.push(format!("model.layers.{i}.{m}.weight"));
        }
    }
    for (kind, q) in [("q8_0", Quantize::Q8_0), ("q4_0", Quantize::Q4_0)] {
        let want = &fx["types"][kind];
        for hf in &hashed {
            let view = st.tensor(hf).unwrap();
            assert_eq!(view.dtype(), safetensors::Dtype::F32);
            let src = DenseRows {
                bytes: view.data(),
                dtype: DenseType::F32,
                n: view.shape()[0],
                k: view.shape()[1],
            };
            let sha: String = Sha256::digest(pack(&src, q).unwrap().ggml_blocks())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let gguf = humanlm::model::weights::gguf_name(hf);
            assert_eq!(
                want["blocks"][&gguf]["sha256"].as_str().unwrap(),
                sha,
                "{kind} {hf}: not llama.cpp's blocks"
            );
        }
        let model = load(dir, q);
        let steps = fx["steps"].as_u64().unwrap() as usize;
        let (mut clear, mut total) = (0, 0);
        for p in want["prompts"].as_array().unwrap() {
            let nums = |k: &str| -> Vec<f64> {
                p[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            };
            let prompt: Vec<u32> = nums("input_ids").iter().map(|&x| x as u32).collect();
            let greedy: Vec<u32> = nums("greedy").iter().map(|&x| x as u32).collect();
            let margins = nums("margins");
            // Teacher-forced: llama.cpp's tokens in, so one near-tie does not end the comparison.
            let mut ids = prompt.clone();
            ids.extend_from_slice(&greedy[..steps - 1]);
            let logits = all_logits(&model, &ids);
            for step in 0..steps {
                let row = &logits[prompt.len() - 1 + step];
                let ours = row
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0 as u32;
                total += 1;
                if margins[step] as f32 >= TIE {
                    clear += 1;
                    assert_eq!(
                        ours,
                        greedy[step],
                        "{kind}, prompt {:?}, step {step}: llama.cpp chose {} by a margin of {}",
                        p["text"]
                            .as_str()
                            .unwrap()
                            .chars()
                            .take(40)
                            .collect::<String>(),
                        greedy[step],
                        margins[step]
                    );
                }
            }
        }
        println!("{kind}: the same argmax as llama.cpp at all {clear} clear steps of {total}");
        assert!(
            clear * 2 >= total,
            "{kind}: only {clear} of {total} steps were clear"
        );
    }
}

#[test]
fn an_adapter_runs_live_on_a_base_quantized_on_load() {
    let adapter = common::fixture("tiny/qwen3-lora");
    let base = common::fixture("tiny/qwen3");
    for ids in reference_ids(&base) {
        let dense = all_logits(&load(&adapter, Quantize::None), &ids);
        let quant = load(&adapter, Quantize::Q8_0);
        assert!(quant.decoder.weight_kinds().starts_with("Q8_0"));
        let with = all_logits(&quant, &ids);
        let without = all_logits(&load(&base, Quantize::Q8_0), &ids);
        let (err, moved) = drift(&dense, &with);
        let (effect, _) = drift(&with, &without);
        println!(
            "adapter on q8_0: {err:.4} from the dense adapter, the adapter moves it {effect:.4}"
        );
        // The quantized base with the live adapter stays as close to the dense adapter as the
        // base alone does to the dense base (previous tests; one near-tie of 12 positions may
        // flip), and the adapter still matters.
        assert!(err < 0.1 && moved <= 0.1, "{err} {moved}");
        assert!(effect > 5.0 * err, "{effect} against {err}");
    }
}
