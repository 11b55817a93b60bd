//! Every GGUF weight type the runtime claims: a random llama-architecture model is written with
//! candle's GGUF writer in each type, loaded through the quantized path, and compared with the
//! same file loaded dequantized to f32 (identical weights, exact activations). The tokenizer
//! metadata comes from the default checkpoint.

use crate::common;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use humanlm::model::weights::LoadOptions;
use humanlm::model::{Checkpoint, Ops};

const HIDDEN: usize = 256;
const INTER: usize = 512;
const LAYERS: usize = 2;

fn write_model(path: &std::path::Path, dtype: GgmlDType) {
    let dev = Device::Cpu;
    let mut f = std::fs::File::open(common::default_gguf()).unwrap();
    let base = gguf_file::Content::read(&mut f).unwrap();
    let vocab = base.metadata["tokenizer.ggml.tokens"]
        .to_vec()
        .unwrap()
        .len();
    let mut md: Vec<(String, gguf_file::Value)> = base
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    use gguf_file::Value as V;
    md.extend([
        (
            "general.architecture".to_string(),
            V::String("llama".into()),
        ),
        ("llama.context_length".into(), V::U32(512)),
        ("llama.embedding_length".into(), V::U32(HIDDEN as u32)),
        ("llama.block_count".into(), V::U32(LAYERS as u32)),
        ("llama.feed_forward_length".into(), V::U32(INTER as u32)),
        ("llama.attention.head_count".into(), V::U32(4)),
        ("llama.attention.head_count_kv".into(), V::U32(2)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            V::F32(1e-5),
        ),
        ("llama.rope.freq_base".into(), V::F32(10000.0)),
    ]);
    let mut tensors: Vec<(String, QTensor)> = vec![];
    let mut matrix = |name: String, out: usize, inp: usize| {
        let w = Tensor::randn(0f32, 0.08, (out, inp), &dev).unwrap();
        tensors.push((name, QTensor::quantize(&w, dtype).unwrap()));
    };
    matrix("token_embd.weight".into(), vocab, HIDDEN);
    for i in 0..LAYERS {
        matrix(format!("blk.{i}.attn_q.weight"), HIDDEN, HIDDEN);
        matrix(format!("blk.{i}.attn_k.weight"), 128, HIDDEN);
        matrix(format!("blk.{i}.attn_v.weight"), 128, HIDDEN);
        matrix(format!("blk.{i}.attn_output.weight"), HIDDEN, HIDDEN);
        matrix(format!("blk.{i}.ffn_gate.weight"), INTER, HIDDEN);
        matrix(format!("blk.{i}.ffn_up.weight"), INTER, HIDDEN);
        matrix(format!("blk.{i}.ffn_down.weight"), HIDDEN, INTER);
    }
    let ones = Tensor::ones(HIDDEN, candle_core::DType::F32, &dev).unwrap();
    let mut norms = vec!["output_norm.weight".to_string()];
    for i in 0..LAYERS {
        norms.push(format!("blk.{i}.attn_norm.weight"));
        norms.push(format!("blk.{i}.ffn_norm.weight"));
    }
    for n in norms {
        tensors.push((n, QTensor::quantize(&ones, GgmlDType::F32).unwrap()));
    }
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
}

#[test]
fn every_supported_gguf_type_loads_and_computes() {
    let tmp = tempfile::tempdir().unwrap();
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 1543 + 7) % 40000).collect();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        let path = tmp.path().join(format!("model-{dtype:?}.gguf"));
        write_model(&path, dtype);
        let ck = Checkpoint::resolve(path.to_str().unwrap(), tmp.path()).unwrap();
        assert!(
            ck.info().unwrap().dtype.starts_with(&format!("{dtype:?}")),
            "{dtype:?}: {:?}",
            ck.info().unwrap().dtype
        );
        let quant = ck.load(&LoadOptions::default()).unwrap();
        assert_eq!(quant.decoder.weight_kinds(), format!("{dtype:?}"));
        let dense = ck
            .load(&LoadOptions {
                dequantize: true,
                ..Default::default()
            })
            .unwrap();
        for (step, s) in [(0usize, 40usize), (1, 12), (2, 1)] {
            // Long prefill (the dense GEMM path for packed types), short prefill (integer
            // kernels, 4 rows at a time) and one row.
            let x = input.narrow(1, 0, s).unwrap();
            let logits = |m: &humanlm::model::Model| -> Vec<Vec<f32>> {
                m.decoder
                    .forward(&x, None, Ops::Fast, true)
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
                    .to_vec2()
                    .unwrap()
            };
            let (q, d) = (logits(&quant), logits(&dense));
            let max = d.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
            let diff = q
                .iter()
                .flatten()
                .zip(d.iter().flatten())
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            // Only activation quantization (8 bits per block) separates the two; a wiring fault
            // (a transposed or misnamed tensor) moves logits by their own magnitude.
            let mean_d = q
                .iter()
                .flatten()
                .zip(d.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
                / (q.len() * q[0].len()) as f32;
            let mean_l =
                d.iter().flatten().map(|v| v.abs()).sum::<f32>() / (d.len() * d[0].len()) as f32;
            eprintln!("{dtype:?} case {step}: max Δ {diff:.4} (max |logit| {max:.3}), mean Δ {mean_d:.4} (mean |logit| {mean_l:.3})");
            assert!(diff <= 0.1 * max && mean_d <= 0.05 * mean_l, "{dtype:?} case {step}: max Δ {diff} vs max |logit| {max}, mean Δ {mean_d} vs {mean_l}");
        }
    }
}
