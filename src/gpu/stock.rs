//! The anchor measured beside ours in the same run: stock candle-transformers' `qwen3` model on
//! the very same random weights (the tensors are shared, not copied), timed by the same protocol
//! as [`super::check`]'s prefill and decode — one forward pass over the prompt, then greedy steps
//! with the chosen ids read back to the host every step.
//!
//! Stock candle keeps its KV cache by concatenation and returns only the last position's logits,
//! which is what a user of the crate gets; nothing here tunes it.

use super::check::{median, random_ids, timed, GpuCheckArgs};
use crate::model::{Decoder, ModelConfig, Ops};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen3;
use serde_json::{json, Value};
use std::collections::HashMap;

/// candle-transformers' config for one of our Qwen3 shapes.
fn stock_config(cfg: &ModelConfig) -> qwen3::Config {
    qwen3::Config {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_layers,
        num_attention_heads: cfg.num_heads,
        head_dim: cfg.head_dim,
        attention_bias: cfg.attention_bias,
        num_key_value_heads: cfg.num_kv_heads,
        max_position_embeddings: cfg.max_position_embeddings,
        sliding_window: None,
        max_window_layers: cfg.num_layers,
        tie_word_embeddings: cfg.tie_word_embeddings,
        rope_theta: cfg.rope_theta,
        rms_norm_eps: cfg.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: candle_nn::Activation::Silu,
    }
}

/// Prefill then greedy decode on the stock model; (prefill seconds, decode seconds).
fn stock_prefill_and_decode(
    model: &mut qwen3::ModelForCausalLM,
    cfg: &ModelConfig,
    dev: &Device,
    batch: usize,
    prompt: usize,
    steps: usize,
    seed: u64,
) -> anyhow::Result<(f64, f64)> {
    model.clear_kv_cache();
    let flat: Vec<u32> = random_ids(cfg, batch, prompt, seed)?.concat();
    let input = Tensor::from_vec(flat, (batch, prompt), dev)?;
    let (logits, prefill_s) = timed(dev, || Ok(model.forward(&input, 0)?))?;
    let ((), decode_s) = timed(dev, || {
        let mut logits = logits;
        for i in 0..steps {
            let next: Vec<u32> = logits.squeeze(1)?.argmax(D::Minus1)?.to_vec1()?;
            let input = Tensor::from_vec(next, (batch, 1), dev)?;
            logits = model.forward(&input, prompt + i)?;
        }
        let _ = logits.squeeze(1)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        Ok(())
    })?;
    Ok((prefill_s, decode_s))
}

/// The last position's logits of both models on one short prompt: the anchor must be the same
/// model as ours for its speed to compare (max |Δ| relative to max |logit|, and top-1 agreement).
fn agreement(
    model: &mut qwen3::ModelForCausalLM,
    ours: &Decoder,
    a: &GpuCheckArgs,
) -> anyhow::Result<Value> {
    let dev = &ours.device;
    let len = a.prompt.min(32);
    let ids: Vec<u32> = random_ids(&ours.config, 1, len, a.seed ^ 7)?.concat();
    let input = Tensor::from_vec(ids, (1, len), dev)?;
    let mine = ours
        .forward(&input, None, Ops::Fast, false)?
        .to_dtype(DType::F32)?
        .flatten_all()?;
    model.clear_kv_cache();
    let theirs = model
        .forward(&input, 0)?
        .to_dtype(DType::F32)?
        .flatten_all()?;
    model.clear_kv_cache();
    let diff: f32 = (&mine - &theirs)?.abs()?.max_all()?.to_scalar()?;
    let scale: f32 = mine.abs()?.max_all()?.to_scalar()?;
    let top = |t: &Tensor| -> anyhow::Result<u32> { Ok(t.argmax(0)?.to_scalar()?) };
    Ok(json!({
        "positions": 1, "prompt": len,
        "max_abs_diff": diff, "rel_diff": diff as f64 / scale.max(1e-12) as f64,
        "top1_agree": top(&mine)? == top(&theirs)?,
    }))
}

/// Prefill and decode speed of stock candle-transformers on `tensors` (the weights `ours` was
/// loaded from), at every batch size, with the two models' agreement on one prompt.
pub fn measure_stock(
    ours: &Decoder,
    tensors: &HashMap<String, Tensor>,
    a: &GpuCheckArgs,
) -> anyhow::Result<Value> {
    let (cfg, dev, dtype) = (&ours.config, &ours.device, ours.dtype);
    let vb = VarBuilder::from_tensors(tensors.clone(), dtype, dev);
    let mut model = qwen3::ModelForCausalLM::new(&stock_config(cfg), vb)?;
    let agree = agreement(&mut model, ours, a)?;
    stock_prefill_and_decode(&mut model, cfg, dev, 1, a.prompt.min(64), 2, a.seed)?;
    let mut prefill = vec![];
    let mut decode = vec![];
    for &b in &a.batches {
        let mut pre = vec![];
        let mut dec_s = None;
        for r in 0..a.repeats.max(1) {
            let steps = if r == 0 { a.decode } else { 0 };
            let (p, d) = stock_prefill_and_decode(
                &mut model,
                cfg,
                dev,
                b,
                a.prompt,
                steps,
                a.seed + r as u64,
            )?;
            pre.push(p);
            dec_s.get_or_insert(d);
        }
        let p = median(pre.clone());
        prefill.push(json!({
            "batch": b, "prompt": a.prompt, "seconds": p, "runs": pre,
            "tok_per_s": (b * a.prompt) as f64 / p,
        }));
        if let (Some(d), true) = (dec_s, a.decode > 0) {
            decode.push(json!({
                "batch": b, "after_prompt": a.prompt, "steps": a.decode, "seconds": d,
                "ms_per_step": d * 1e3 / a.decode as f64,
                "tok_per_s": (b * a.decode) as f64 / d,
            }));
        }
    }
    model.clear_kv_cache();
    Ok(json!({
        "model": "candle-transformers qwen3::ModelForCausalLM (stock), same tensors",
        "agreement_with_ours": agree,
        "prefill": prefill, "decode": decode,
        "memory_used_mib": super::check::memory_used_mib(dev),
    }))
}
