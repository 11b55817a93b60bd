//! The speed benchmark behind `humanlm bench`: prefill (best of three) and decode at batch 1
//! and 4 on a fixed English prompt, with the process's peak resident memory.

use super::{generate, SamplingParams};
use crate::model::device::device_name;
use crate::model::{Model, Ops, Result};
use candle_core::Tensor;
use serde::Serialize;
use std::time::Instant;

/// Speed of prefill and decode on one loaded model.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub checkpoint: String,
    /// The weights' kinds (quantization), as `Decoder::weight_kinds` names them.
    pub weights: String,
    pub device: String,
    /// The threads asked for, else the available parallelism.
    pub threads: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub prefill_tok_s: f64,
    pub decode_tok_s_b1: f64,
    /// Tokens per second over the whole batch of four.
    pub decode_tok_s_b4: f64,
    /// The process's peak resident memory (`VmHWM`) in MiB; 0 where `/proc` does not tell.
    pub peak_rss_mb: f64,
}

/// Measure `model`: a prefill of `prompt_tokens` tokens, then `new_tokens` decoded (EOS
/// ignored) at batch 1 and at batch 4. `threads` is what the caller set, for the report.
pub fn bench(
    model: &Model,
    prompt_tokens: usize,
    new_tokens: usize,
    threads: Option<usize>,
) -> Result<BenchReport> {
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let text = "The quick brown fox jumps over the lazy dog while the researchers argue about user simulators. ";
    let mut ids = model
        .tokenizer
        .encode_raw(&text.repeat(prompt_tokens / 8 + 8))?;
    ids.truncate(prompt_tokens);
    let dec = &model.decoder;
    // Prefill: best of three (the first run also pays for page faults on the weights).
    let mut prefill = f64::MAX;
    for _ in 0..3 {
        let mut cache = dec.new_cache(1, ids.len() + 1)?;
        let input = Tensor::new(ids.as_slice(), &dec.device)?.unsqueeze(0)?;
        let t = Instant::now();
        let _ = dec.forward(&input, Some(&mut cache), Ops::Fast, false)?;
        prefill = prefill.min(t.elapsed().as_secs_f64());
    }
    let decode = |n: usize| -> Result<f64> {
        let params = SamplingParams {
            max_new_tokens: new_tokens,
            n,
            ignore_eos: true,
            ..Default::default()
        };
        let out = generate(model, &ids, &params, None, &mut |_| {})?;
        Ok(out.tokens_per_s)
    };
    Ok(BenchReport {
        checkpoint: model.checkpoint.name.clone(),
        weights: dec.weight_kinds(),
        device: device_name(&dec.device),
        threads,
        prompt_tokens: ids.len(),
        new_tokens,
        prefill_tok_s: ids.len() as f64 / prefill,
        decode_tok_s_b1: decode(1)?,
        decode_tok_s_b4: decode(4)?,
        peak_rss_mb: peak_rss_mb(),
    })
}

/// The process's peak resident memory in MiB, from `/proc/self/status`; 0 where unreadable.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
