//! LoRA training speed for `gpu-check`: the decoder's differentiable path with LoRA factors on
//! every projection, next-token cross-entropy, backward, and the trainer's own gradient clipping
//! and AdamW step (`train::optim`).
//!
//! The SFT trainer itself (`train::sft`) is tied to a loaded checkpoint (tokenizer, prompt set,
//! scenarios) and runs one example at a time on the CPU; a random-weight model has none of that,
//! so the step is assembled here from the same parts, on the whole batch at once as PEFT's
//! benchmark does.

use super::check::GpuCheckArgs;
use crate::model::lora_params::{LoraParams, LoraShape};
use crate::model::{Decoder, Ops};
use crate::train::optim::{self, AdamW, AdamWParams};
use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::time::Instant;

/// The projections PEFT's benchmark adapts ("all projections").
const TARGETS: [&str; 7] = crate::model::lora::PROJECTIONS;

/// Train LoRA factors on `dec` (a clone: the adapter is attached to the copy only) for one
/// warm-up step and `a.train_steps` timed steps of `a.train_batch` random tokens.
pub fn measure_training(base: &Decoder, a: &GpuCheckArgs) -> anyhow::Result<Value> {
    let (batch, seq) = a.train_batch;
    if seq < 2 || seq > base.max_positions() {
        anyhow::bail!(
            "--train-batch: {seq} tokens per sequence; need 2 to {}",
            base.max_positions()
        );
    }
    let mut dec = base.clone();
    let dev = dec.device.clone();
    // The trainer's own LoRA factors (PEFT's initialisation, in the decoder's dtype), alpha =
    // 2·rank as PEFT's benchmark uses.
    let lora = LoraParams::new(
        &dec,
        &LoraShape {
            rank: a.rank,
            alpha: 2.0 * a.rank as f64,
            dropout: 0.0,
            targets: TARGETS.map(String::from).to_vec(),
        },
        a.seed,
        None,
    )?;
    lora.attach(&mut dec, std::path::Path::new("<gpu-check>"))?;
    let vars = lora.named();
    let trainable = lora.parameter_count();
    let alpha = lora.config.lora_alpha;
    let dtype = dec.dtype;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed.wrapping_add(1));
    let mut opt = AdamW::new(vars.clone(), AdamWParams::default())?;

    let vocab = dec.config.vocab_size as u32;
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| rng.random_range(0..vocab))
        .collect();
    let ids = Tensor::from_vec(ids, (batch, seq), &dev)?;
    // Position i predicts token i+1: inputs drop the last token, labels the first.
    let input = ids.narrow(1, 0, seq - 1)?;
    let labels = ids.narrow(1, 1, seq - 1)?.flatten_all()?;
    let mut step = || -> anyhow::Result<(f64, f64)> {
        let logits = dec.forward(&input, None, Ops::Diff, true)?;
        let logits = logits.flatten_to(1)?;
        let loss = crate::model::grad::token_logprobs(&logits, &labels)?
            .mean_all()?
            .neg()?;
        let grads = loss.backward()?;
        let mut g = vars
            .iter()
            .map(|(_, v)| {
                grads
                    .get(v.as_tensor())
                    .cloned()
                    .map(Ok)
                    .unwrap_or_else(|| v.as_tensor().zeros_like())
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = optim::clip(&mut g, 1.0)?;
        opt.step(&g, 1e-4)?;
        Ok((
            loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64,
            norm,
        ))
    };
    // Warm-up: kernels, cuBLAS, the allocator's first large buffers.
    let (first_loss, first_norm) = step()?;
    let mut times = vec![];
    let mut losses = vec![first_loss];
    for _ in 0..a.train_steps.max(1) {
        dev.synchronize()?;
        let t = Instant::now();
        let (l, _) = step()?;
        dev.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
        losses.push(l);
    }
    let total: f64 = times.iter().sum();
    let mut sorted = times.clone();
    sorted.sort_by(|x, y| x.total_cmp(y));
    if !losses.iter().all(|l| l.is_finite()) || !first_norm.is_finite() {
        anyhow::bail!("training produced a non-finite loss or gradient: losses {losses:?}");
    }
    Ok(json!({
        "batch": batch,
        "seq": seq,
        "lora_rank": a.rank,
        "lora_alpha": alpha,
        "targets": TARGETS,
        "trainable_parameters": trainable,
        "lora_dtype": format!("{dtype:?}").to_lowercase(),
        "steps": times.len(),
        "step_seconds": times,
        "median_step_seconds": sorted[sorted.len() / 2],
        "tok_per_s": (batch * seq * times.len()) as f64 / total,
        "losses": losses,
        "first_grad_norm": first_norm,
        "memory_used_mib": super::check::memory_used_mib(&dev),
        "path": "Decoder::forward(Ops::Diff) on the whole batch, adapter attached live, mean next-token cross-entropy over every position, backward, train::optim::clip (max norm 1) and AdamW (lr 1e-4); tokens/s counts batch × seq per step",
    }))
}
