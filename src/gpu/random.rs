//! Random-weight decoders built from a config: the project's own decoder at real model shapes
//! (Qwen3-0.6B, Qwen3-8B) without downloading anything, for speed and parity checks.
//!
//! The weights go through the same `Store` → `Decoder::load` route as a checkpoint (an in-memory
//! store), so what is measured is exactly the decoder the workbench runs.

use crate::model::weights::{LoadOptions, Store};
use crate::model::{Decoder, Error, ModelConfig, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Standard deviation of every random matrix: transformers' `initializer_range` for Qwen3. Small
/// enough that activations and logits stay well inside bf16's range across 36 layers.
pub const WEIGHT_STD: f64 = 0.02;

/// The named shapes, for help texts and error messages.
pub const SHAPE_NAMES: &[&str] = &["tiny-qwen3", "qwen3-0.6b", "qwen3-8b"];

/// The `config.json` of a named shape (the values of Hugging Face's Qwen/Qwen3-0.6B and
/// Qwen/Qwen3-8B), or `None` for an unknown name.
pub fn named_config(name: &str) -> Option<Value> {
    let qwen3 = |hidden: usize, layers: usize, heads: usize, inter: usize, tie: bool| {
        json!({
            "model_type": "qwen3",
            "architectures": ["Qwen3ForCausalLM"],
            "vocab_size": 151936,
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "hidden_act": "silu",
            "max_position_embeddings": 40960,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1_000_000.0,
            "attention_bias": false,
            "tie_word_embeddings": tie,
            "torch_dtype": "bfloat16"
        })
    };
    match name {
        "qwen3-0.6b" => Some(qwen3(1024, 28, 16, 3072, true)),
        "qwen3-8b" => Some(qwen3(4096, 36, 32, 12288, false)),
        // Small enough for CI on two cores, yet every feature of the family: grouped-query
        // attention, per-head q/k norms, an untied output layer.
        "tiny-qwen3" => Some(json!({
            "model_type": "qwen3",
            "vocab_size": 1024,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1_000_000.0,
            "tie_word_embeddings": false
        })),
        _ => None,
    }
}

/// A shape by name, or a `config.json` path. Returns the name to report and the config.
pub fn resolve_shape(spec: &str) -> Result<(String, ModelConfig)> {
    if let Some(v) = named_config(spec) {
        let cfg = ModelConfig::from_hf_value(&v, Path::new(spec))?;
        return Ok((spec.to_string(), cfg));
    }
    let path = PathBuf::from(spec);
    if path.is_file() {
        return Ok((spec.to_string(), ModelConfig::from_hf_json(&path)?));
    }
    Err(Error::Msg(format!(
        "shape '{spec}': not a known shape ({}) nor a config.json file",
        SHAPE_NAMES.join(", ")
    )))
}

/// Every tensor the decoder reads for `cfg`, with its shape, and whether it is a norm weight.
fn tensor_specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>, bool)> {
    let (h, hd, inter) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, h],
        false,
    )];
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        let mut add = |name: String, shape: Vec<usize>, norm: bool| out.push((name, shape, norm));
        add(format!("{p}.input_layernorm.weight"), vec![h], true);
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            true,
        );
        for (m, o, i_) in [
            ("self_attn.q_proj", q, h),
            ("self_attn.k_proj", kv, h),
            ("self_attn.v_proj", kv, h),
            ("self_attn.o_proj", h, q),
            ("mlp.gate_proj", inter, h),
            ("mlp.up_proj", inter, h),
            ("mlp.down_proj", h, inter),
        ] {
            add(format!("{p}.{m}.weight"), vec![o, i_], false);
        }
        if cfg.attention_bias {
            add(format!("{p}.self_attn.q_proj.bias"), vec![q], false);
            add(format!("{p}.self_attn.k_proj.bias"), vec![kv], false);
            add(format!("{p}.self_attn.v_proj.bias"), vec![kv], false);
        }
        if cfg.qk_norm {
            add(format!("{p}.self_attn.q_norm.weight"), vec![hd], true);
            add(format!("{p}.self_attn.k_norm.weight"), vec![hd], true);
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h], true));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h], false));
    }
    out
}

/// How the random values are drawn.
#[derive(Debug, Clone, Copy)]
pub enum Fill {
    /// From a seeded generator on the CPU, in f32: the same weights on every run and device, so
    /// a decoder on the GPU can be compared with the same decoder on the CPU.
    Seeded(u64),
    /// candle's generator on the target device (curand on a GPU): fast at 8B parameters, values
    /// differ between runs, which speed measurements do not care about.
    OnDevice,
}

/// Random weights for `cfg` under their Hugging Face names: norms are 1 (as transformers
/// initialises them), every other tensor normal(0, [`WEIGHT_STD`]) (uniform with that deviation
/// for `Fill::Seeded`).
pub fn random_tensors(
    cfg: &ModelConfig,
    fill: Fill,
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    let mut rng = match fill {
        Fill::Seeded(seed) => Some(rand::rngs::StdRng::seed_from_u64(seed)),
        Fill::OnDevice => None,
    };
    // Uniform on ±√3·σ has deviation σ; cheaper than a normal draw and just as good here.
    let bound = (3.0f64).sqrt() * WEIGHT_STD;
    for (name, shape, norm) in tensor_specs(cfg) {
        let t = if norm {
            Tensor::ones(shape.as_slice(), dtype, device)?
        } else if let Some(rng) = rng.as_mut() {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?
                .to_device(device)?
                .to_dtype(dtype)?
        } else {
            // curand fills f32 only; the f32 copy lives for one tensor at a time.
            Tensor::randn(0f32, WEIGHT_STD as f32, shape.as_slice(), device)?.to_dtype(dtype)?
        };
        tensors.insert(name, t);
    }
    Ok(tensors)
}

/// A store of [`random_tensors`].
pub fn random_store(
    cfg: &ModelConfig,
    label: &str,
    fill: Fill,
    device: &Device,
    dtype: DType,
) -> Result<Store> {
    let tensors = random_tensors(cfg, fill, device, dtype)?;
    Ok(Store::from_tensors(format!("<random {label}>"), tensors))
}

/// A decoder with random weights for `cfg` on `opts.device` in `opts.activation_dtype()`.
pub fn random_decoder(
    cfg: &ModelConfig,
    label: &str,
    fill: Fill,
    opts: &LoadOptions,
) -> Result<Decoder> {
    let store = random_store(cfg, label, fill, &opts.device, opts.activation_dtype())?;
    Decoder::load(&store, cfg, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_shapes_have_the_published_sizes() {
        let (_, c) = resolve_shape("qwen3-0.6b").unwrap();
        // Qwen3-0.6B: 596M parameters with the tied embedding counted once.
        assert_eq!(c.parameter_count(), 596_049_920);
        assert!(c.tie_word_embeddings && c.qk_norm);
        let (_, c) = resolve_shape("qwen3-8b").unwrap();
        // Qwen3-8B: 8.19B parameters.
        assert_eq!(c.parameter_count(), 8_190_735_360);
        assert!(resolve_shape("qwen3-9b").is_err());
    }

    #[test]
    fn seeded_store_is_reproducible_and_loads() {
        let (_, cfg) = resolve_shape("tiny-qwen3").unwrap();
        let opts = LoadOptions::default();
        let a = random_decoder(&cfg, "t", Fill::Seeded(3), &opts).unwrap();
        let b = random_decoder(&cfg, "t", Fill::Seeded(3), &opts).unwrap();
        let ids = Tensor::new(&[[1u32, 5, 9, 200]], &Device::Cpu).unwrap();
        let la = a
            .forward(&ids, None, crate::model::Ops::Fast, true)
            .unwrap();
        let lb = b
            .forward(&ids, None, crate::model::Ops::Fast, true)
            .unwrap();
        let d = (la.clone() - lb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
        let m = la
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(m.is_finite() && m > 0.0);
    }
}
