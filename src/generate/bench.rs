//! The speed benchmark behind `humanlm bench`: prefill (best of three) and decode at batch 1
//! and 4 on a fixed English prompt, with the process's peak resident memory.

use super::{generate, SamplingParams};
use crate::model::device::device_name;
use crate::model::{Model, Result};
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
    /// Tokens per second over the whole batch of four (not measured by a quick run).
    pub decode_tok_s_b4: Option<f64>,
    /// Not measured by a quick run.
    pub prefix_reuse: Option<PrefixReuse>,
    /// Seconds the checkpoint took to load (quantizing included), set by the caller.
    pub load_s: f64,
    /// The process's peak resident memory (`VmHWM`) in MiB; 0 where `/proc` does not tell.
    pub peak_rss_mb: f64,
}

/// Seven prompts that share the benchmark prompt and differ in a short question after it (as a
/// simulation's seven calls share their thread), prefilled one after another: with the prefix
/// cache off, then on (starting empty).
#[derive(Debug, Clone, Serialize)]
pub struct PrefixReuse {
    pub prompts: usize,
    /// All seven prompts' tokens.
    pub prompt_tokens: usize,
    /// Of those, computed with the cache on (the rest came from it).
    pub computed_tokens: usize,
    pub seconds_off: f64,
    pub seconds_on: f64,
}

/// The prefix-reuse workload on `shared` (see [`PrefixReuse`]); leaves the cache off.
fn prefix_reuse(model: &Model, shared: &[u32]) -> Result<PrefixReuse> {
    let questions = [
        "What is the person's stance?",
        "How does the person feel?",
        "What does the person believe?",
        "What does the person value?",
        "What is the person's goal?",
        "How does the person write?",
        "What would the person reply?",
    ];
    let prompts = questions
        .iter()
        .map(|q| {
            let mut ids = shared.to_vec();
            ids.extend(model.tokenizer.encode_raw(&format!("\n\n{q}\n"))?);
            Ok(ids)
        })
        .collect::<Result<Vec<_>>>()?;
    let run = |model: &Model| -> Result<(f64, usize)> {
        let t = Instant::now();
        let mut computed = 0;
        for p in &prompts {
            let out = super::prefill(model, p, p.len() + 1, None, &mut |_| {})?;
            computed += p.len() - out.cached_tokens;
        }
        Ok((t.elapsed().as_secs_f64(), computed))
    };
    model.prefix_cache.set_bound_mb(0);
    let (seconds_off, _) = run(model)?;
    model
        .prefix_cache
        .set_bound_mb(crate::model::prefix_cache::default_mb(&model.decoder.device).max(64));
    model.prefix_cache.clear();
    let (seconds_on, computed_tokens) = run(model)?;
    model.prefix_cache.clear();
    model.prefix_cache.set_bound_mb(0);
    Ok(PrefixReuse {
        prompts: prompts.len(),
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        computed_tokens,
        seconds_off,
        seconds_on,
    })
}

/// Measure `model`: a prefill of `prompt_tokens` tokens, then `new_tokens` decoded (EOS
/// ignored) at batch 1 and at batch 4. `threads` is what the caller set, for the report. A
/// `quick` run (large models) prefills twice instead of three times and measures only decode at
/// batch 1.
pub fn bench(
    model: &Model,
    prompt_tokens: usize,
    new_tokens: usize,
    threads: Option<usize>,
    quick: bool,
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
    // Prefill as every call runs it (block steps), from nothing: best of three (the first run
    // also pays for page faults on the weights).
    let bound = model.prefix_cache.stats().bound_bytes >> 20;
    model.prefix_cache.set_bound_mb(0);
    let mut prefill_s = f64::MAX;
    for _ in 0..if quick { 2 } else { 3 } {
        let t = Instant::now();
        let _ = super::prefill(model, &ids, ids.len() + 1, None, &mut |_| {})?;
        prefill_s = prefill_s.min(t.elapsed().as_secs_f64());
    }
    let reuse = if quick {
        None
    } else {
        Some(prefix_reuse(model, &ids)?)
    };
    model.prefix_cache.set_bound_mb(bound);
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
        prefill_tok_s: ids.len() as f64 / prefill_s,
        prefix_reuse: reuse,
        decode_tok_s_b1: decode(1)?,
        decode_tok_s_b4: if quick { None } else { Some(decode(4)?) },
        load_s: 0.0,
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

/// One prompt of [`prompts`].
#[derive(Debug, Clone, Serialize)]
pub struct PromptRun {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    /// From the call to its first token.
    pub seconds: f64,
}

/// What `humanlm bench --prompts` reports.
#[derive(Debug, Clone, Serialize)]
pub struct PromptsReport {
    pub checkpoint: String,
    pub prefix_cache_mb: usize,
    pub calls: Vec<PromptRun>,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub seconds: f64,
    pub peak_rss_mb: f64,
}

/// Run rendered prompts in order, one greedy token each, through the model's prefix cache as
/// it is configured.
pub fn prompts(model: &Model, prompts: &[String]) -> Result<PromptsReport> {
    let params = SamplingParams {
        max_new_tokens: 1,
        temperature: 0.0,
        ..Default::default()
    };
    let mut calls = vec![];
    for text in prompts {
        let ids = model.tokenizer.encode_rendered(text)?;
        let t = Instant::now();
        let out = generate(model, &ids, &params, None, &mut |_| {})?;
        calls.push(PromptRun {
            prompt_tokens: out.prompt_tokens,
            cached_tokens: out.cached_prompt_tokens,
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    Ok(PromptsReport {
        checkpoint: model.checkpoint.name.clone(),
        prefix_cache_mb: model.prefix_cache.stats().bound_bytes >> 20,
        prompt_tokens: calls.iter().map(|c| c.prompt_tokens).sum(),
        cached_tokens: calls.iter().map(|c| c.cached_tokens).sum(),
        seconds: calls.iter().map(|c| c.seconds).sum(),
        calls,
        peak_rss_mb: peak_rss_mb(),
    })
}
