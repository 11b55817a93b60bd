//! Building a [`Decoder`] from a checkpoint's tensors: every shape checked against the config,
//! packed projections fused for decode, the rotary tables computed once.

use super::config::ModelConfig;
use super::decoder::{Decoder, Embedding, Layer, Linear, RmsNorm};
use super::packed::Packed;
use super::weights::{LoadOptions, Store, Weight};
use super::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

impl Decoder {
    /// Load the decoder `cfg` describes from `store`, as `opts` asks (device, dtype, packing).
    pub fn load(store: &Store, cfg: &ModelConfig, opts: &LoadOptions) -> Result<Decoder> {
        let dtype = opts.activation_dtype();
        let dev = &opts.device;
        let hd = cfg.head_dim;
        let check = |name: &str, want: &[usize]| -> Result<()> {
            match store.shape(name) {
                None => Err(Error::file(
                    store.path_for(name),
                    format!("missing tensor '{name}'"),
                )),
                Some(got) => {
                    // GGUF lists dims innermost-first in its header but candle reports them
                    // outermost-first, like safetensors.
                    if got == want {
                        Ok(())
                    } else {
                        Err(Error::file(
                            store.path_for(name),
                            format!("tensor '{name}' has shape {got:?}, config expects {want:?}"),
                        ))
                    }
                }
            }
        };
        let norm = |name: &str, size: usize| -> Result<RmsNorm> {
            check(name, &[size])?;
            Ok(RmsNorm {
                weight: store.dense(name, dev, dtype)?,
                eps: cfg.rms_norm_eps as f32,
            })
        };
        let linear = |module: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            let wname = format!("{module}.weight");
            check(&wname, &[out, inp])?;
            let b = if bias {
                let bname = format!("{module}.bias");
                check(&bname, &[out])?;
                Some(store.dense(&bname, dev, dtype)?)
            } else {
                None
            };
            Linear::new(module, store.matrix(&wname, opts)?, b)
        };
        let (h, q_out, kv_out) = (cfg.hidden_size, cfg.num_heads * hd, cfg.num_kv_heads * hd);
        check("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        // A packed (quantized) embedding stays packed: rows are decoded per token, and a tied
        // output projection shares the same matrix instead of a dense f32 copy.
        let embed = match store.matrix("model.embed_tokens.weight", &opts.for_embedding())? {
            Weight::Packed(p, _) => Embedding::Packed(p),
            _ => Embedding::Dense(store.dense("model.embed_tokens.weight", dev, dtype)?),
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let bias = cfg.attention_bias;
            layers.push(Layer {
                attn_norm: norm(&format!("{p}.input_layernorm.weight"), h)?,
                q: linear(&format!("{p}.self_attn.q_proj"), q_out, h, bias)?,
                k: linear(&format!("{p}.self_attn.k_proj"), kv_out, h, bias)?,
                v: linear(&format!("{p}.self_attn.v_proj"), kv_out, h, bias)?,
                o: linear(&format!("{p}.self_attn.o_proj"), h, q_out, false)?,
                q_norm: if cfg.qk_norm {
                    Some(norm(&format!("{p}.self_attn.q_norm.weight"), hd)?)
                } else {
                    None
                },
                k_norm: if cfg.qk_norm {
                    Some(norm(&format!("{p}.self_attn.k_norm.weight"), hd)?)
                } else {
                    None
                },
                mlp_norm: norm(&format!("{p}.post_attention_layernorm.weight"), h)?,
                gate: linear(
                    &format!("{p}.mlp.gate_proj"),
                    cfg.intermediate_size,
                    h,
                    false,
                )?,
                up: linear(&format!("{p}.mlp.up_proj"), cfg.intermediate_size, h, false)?,
                down: linear(
                    &format!("{p}.mlp.down_proj"),
                    h,
                    cfg.intermediate_size,
                    false,
                )?,
                fused_qkv: None,
                fused_gate_up: None,
            });
            let l = layers.last_mut().expect("just pushed");
            l.fused_qkv = fuse(&mut [&mut l.q, &mut l.k, &mut l.v]);
            l.fused_gate_up = fuse(&mut [&mut l.gate, &mut l.up]);
        }
        let norm_f = norm("model.norm.weight", h)?;
        let lm_head = if !cfg.tie_word_embeddings && store.contains("lm_head.weight") {
            linear("lm_head", cfg.vocab_size, h, false)?
        } else {
            // Tied: the embedding matrix doubles as the output projection.
            let w = match &embed {
                Embedding::Packed(p) => Weight::Packed(p.clone(), 0..p.n),
                // A GGUF type without our kernels: candle's quantized matmul.
                Embedding::Dense(_) if store.is_gguf() && !opts.dequantize => {
                    store.matrix("model.embed_tokens.weight", opts)?
                }
                Embedding::Dense(t) => Weight::Dense(t.clone()),
            };
            Linear::new("lm_head", w, None)?
        };
        let (cos, sin) = rope_tables(cfg, dev)?;
        Ok(Decoder {
            config: cfg.clone(),
            embed,
            layers,
            norm: norm_f,
            lm_head,
            cos,
            sin,
            rope_interleaved: store.is_gguf() && cfg.arch == super::Arch::Llama,
            device: dev.clone(),
            dtype,
            adapters: vec![],
            active_adapter: None,
            weights_id: super::decoder::fresh_weights_id(),
        })
    }
}

/// Stack the packed weights of `parts` into one matrix and point each part at its rows.
fn fuse(parts: &mut [&mut Linear]) -> Option<Arc<Packed>> {
    let mut packs = vec![];
    for l in parts.iter() {
        match &l.weight {
            Weight::Packed(p, rows) if rows.start == 0 && rows.end == p.n => packs.push(p.clone()),
            _ => return None,
        }
    }
    let fused = Arc::new(Packed::concat(
        &packs.iter().map(|p| p.as_ref()).collect::<Vec<_>>(),
    )?);
    let mut start = 0;
    for (l, p) in parts.iter_mut().zip(&packs) {
        l.weight = Weight::Packed(fused.clone(), start..start + p.n);
        start += p.n;
    }
    Some(fused)
}

/// cos/sin tables (positions, head_dim / 2), with Llama 3 frequency scaling if set. Computed in
/// f32 like the PyTorch reference: f64 tables are more exact but move logits by ~1e-6, enough to
/// flip near-ties in greedy decoding relative to every other implementation.
fn rope_tables(cfg: &ModelConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim;
    let theta = cfg.rope_theta as f32;
    let mut inv: Vec<f32> = (0..hd)
        .step_by(2)
        .map(|i| 1.0 / theta.powf(i as f32 / hd as f32))
        .collect();
    if let Some(sc) = &cfg.rope_scaling {
        let orig = sc.original_max_position_embeddings as f32;
        let (factor, low, high) = (
            sc.factor as f32,
            sc.low_freq_factor as f32,
            sc.high_freq_factor as f32,
        );
        let low_wavelen = orig / low;
        let high_wavelen = orig / high;
        for f in inv.iter_mut() {
            let wavelen = 2.0 * std::f32::consts::PI / *f;
            if wavelen > low_wavelen {
                *f /= factor;
            } else if wavelen >= high_wavelen {
                let smooth = (orig / wavelen - low) / (high - low);
                *f = (1.0 - smooth) * *f / factor + smooth * *f;
            }
        }
    }
    let n = cfg.max_position_embeddings.min(1 << 17);
    // Angles as an outer product in f32, cos/sin by candle's kernels (as its own models do).
    let inv = Tensor::new(inv.as_slice(), device)?;
    let angles = Tensor::arange(0u32, n as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((n, 1))?
        .matmul(&inv.reshape((1, hd / 2))?)?;
    Ok((angles.cos()?, angles.sin()?))
}
