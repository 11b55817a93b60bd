//! Text generation: sampling, stop conditions, streaming, n samples decoded as one batch.
//!
//! Knows tokens and text, nothing about states or scenarios. Output streams through a callback
//! (a channel sender fits), and a shared flag cancels between tokens and between prefill steps.

pub mod bench;
mod sampler;
mod stop;

pub use sampler::{Sampler, SamplingParams};
pub use stop::StopMatcher;

use crate::model::prefix_cache::BLOCK;
use crate::model::{Error, KvCache, Model, Result};
use candle_core::Tensor;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Why a sample ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model emitted an end-of-sequence token.
    Eos,
    /// A stop string appeared (which one is in `Sample::stop_string`).
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The context window is full.
    Context,
    Cancelled,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            StopReason::Eos => "eos",
            StopReason::Stop => "stop",
            StopReason::Length => "length",
            StopReason::Context => "context",
            StopReason::Cancelled => "cancelled",
        };
        f.write_str(s)
    }
}

/// One finished sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub text: String,
    /// Generated token ids (the EOS token, if any, excluded).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub token_ids: Vec<u32>,
    pub tokens: usize,
    pub stop_reason: StopReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_string: Option<String>,
    /// The end-of-sequence token that ended the sample (a tokenizer may have several), so
    /// training can score exactly the sequence that was sampled.
    #[serde(skip)]
    pub eos_token: Option<u32>,
}

/// The result of one `generate` call.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub samples: Vec<Sample>,
    pub prompt_tokens: usize,
    /// Of `prompt_tokens`, how many came from the prefix cache instead of being computed.
    pub cached_prompt_tokens: usize,
    /// Time from the call to the first sampled token (prefill included).
    pub ttft_ms: f64,
    /// Decode throughput over all samples, after the first token.
    pub tokens_per_s: f64,
    /// Prompt tokens computed (not taken from the cache) per second of prefill.
    pub prefill_tokens_per_s: f64,
}

/// What streams out while generating.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// Prefill starts: `cached` of the prompt's `prompt` tokens come from the prefix cache.
    Prefill { prompt: usize, cached: usize },
    /// New text of sample `sample` (already cleared of any stop string).
    Text { sample: usize, delta: &'a str },
    /// Sample `sample` ended.
    Finished { sample: usize, reason: StopReason },
}

/// Prompt tokens per prefill call: its steps run layer by layer, each packed layer dequantized
/// once per group. A whole number of blocks, so groups never move a step's boundaries.
const PREFILL_GROUP: usize = 4 * BLOCK;

struct Row {
    ids: Vec<u32>,
    stop: StopMatcher,
    sampler: Sampler,
    done: Option<(StopReason, Option<String>)>,
    eos: Option<u32>,
    text: String,
}

/// A prompt prefilled into a fresh KV cache (batch 1).
pub struct Prefilled {
    pub cache: KvCache,
    /// The last position's logits (1, vocab); None when cancelled before the end.
    pub logits: Option<Tensor>,
    /// Prompt tokens taken from the prefix cache instead of computed.
    pub cached_tokens: usize,
}

/// Prefill `prompt` into a cache of `capacity` positions, starting from the longest prefix the
/// model's prefix cache holds, and keep the whole blocks computed for later calls (also when
/// cancelled: what was computed is not lost).
pub fn prefill(
    model: &Model,
    prompt: &[u32],
    capacity: usize,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(Event),
) -> Result<Prefilled> {
    let dec = &model.decoder;
    let mut cache = dec.new_cache(1, capacity)?;
    // The longest cached prefix, short of the last token, whose logits start sampling and so
    // are always computed: whole blocks, then part of one where the prompt parts from it.
    let key = dec.cache_key();
    // Blocks are taken and kept in part on the CPU only (see `PrefixCache::lookup`).
    let in_part = dec.device.is_cpu();
    let cached = model
        .prefix_cache
        .lookup(&key, prompt, prompt.len().saturating_sub(1), in_part);
    cache.load_blocks(&cached)?;
    let cached_tokens = cache.len();
    on_event(Event::Prefill {
        prompt: prompt.len(),
        cached: cached_tokens,
    });
    // The rest is prefilled in steps of one block, aligned to absolute positions, so the keys
    // and values (and logits) never depend on where a call started (see `prefix_cache`). The
    // cancel flag is read between groups of steps: Esc during a long prompt waits for one
    // group at most (well under a second for the default model on two cores).
    let mut logits = None;
    let mut at = cached_tokens;
    while at < prompt.len() {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            logits = None;
            break;
        }
        // Groups end at multiples of a block, as the steps inside them do.
        let end = ((at / BLOCK) * BLOCK + PREFILL_GROUP).min(prompt.len());
        logits = Some(dec.prefill(&prompt[at..end], &mut cache, BLOCK)?);
        at = end;
    }
    model
        .prefix_cache
        .insert(&key, prompt, cached_tokens / BLOCK, &cache, in_part)?;
    Ok(Prefilled {
        cache,
        logits,
        cached_tokens,
    })
}

/// Generate `params.n` continuations of `prompt` (token ids). The prompt is prefilled once; its
/// KV cache is copied into `n` rows that decode together, and finished rows leave the batch.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    params: &SamplingParams,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(Event),
) -> Result<Generation> {
    let dec = &model.decoder;
    let tok = &model.tokenizer;
    params.validate()?;
    if prompt.is_empty() {
        return Err(Error::Msg("empty prompt".into()));
    }
    let ctx = dec.max_positions();
    if prompt.len() >= ctx {
        return Err(Error::Msg(format!(
            "prompt of {} tokens does not fit the context of {ctx} tokens (it needs room for at least one new token)",
            prompt.len()
        )));
    }
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= dec.vocab_rows()) {
        return Err(Error::Msg(format!(
            "token id {bad} is outside the vocabulary of {} ids",
            dec.vocab_rows()
        )));
    }
    let n = params.n.max(1);
    let capacity = (prompt.len() + params.max_new_tokens).min(ctx);
    let start = Instant::now();
    let Prefilled {
        mut cache,
        logits,
        cached_tokens,
    } = prefill(model, prompt, capacity, cancel, on_event)?;
    let Some(logits) = logits else {
        return Ok(cancelled_during_prefill(
            n,
            prompt.len(),
            cached_tokens,
            on_event,
        ));
    };
    let prefill_s = start.elapsed().as_secs_f64();
    let computed = prompt.len() - cached_tokens;
    let first: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
    if n > 1 {
        cache = cache.repeat_batch(n)?;
    }
    let mut rows: Vec<Row> = (0..n)
        .map(|i| Row {
            ids: vec![],
            stop: StopMatcher::new(&params.stop, params.keep_stop),
            sampler: Sampler::new(params, params.seed.wrapping_add(i as u64)),
            done: None,
            eos: None,
            text: String::new(),
        })
        .collect();
    let mut row_logits: Vec<Vec<f32>> = vec![first; n];
    let mut active: Vec<usize> = (0..n).collect();
    let mut ttft = None;
    let mut first_token_at = None;
    let mut generated = 0usize;
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            for &i in &active {
                rows[i].done = Some((StopReason::Cancelled, None));
                on_event(Event::Finished {
                    sample: i,
                    reason: StopReason::Cancelled,
                });
            }
            break;
        }
        let mut next_tokens = Vec::with_capacity(active.len());
        let mut still = Vec::with_capacity(active.len());
        for (slot, &i) in active.iter().enumerate() {
            let row = &mut rows[i];
            let token = row.sampler.sample(&mut row_logits[slot], prompt, &row.ids);
            generated += 1;
            if ttft.is_none() {
                ttft = Some(start.elapsed().as_secs_f64());
                first_token_at = Some(Instant::now());
            }
            if !params.ignore_eos && tok.eos_ids.contains(&token) {
                row.done = Some((StopReason::Eos, None));
                row.eos = Some(token);
            } else {
                row.ids.push(token);
                let full = tok.decode(&row.ids)?;
                let (delta, hit) = row.stop.push(&full);
                if !delta.is_empty() {
                    row.text.push_str(&delta);
                    on_event(Event::Text {
                        sample: i,
                        delta: &delta,
                    });
                }
                if let Some(s) = hit {
                    row.done = Some((StopReason::Stop, Some(s)));
                } else if row.ids.len() >= params.max_new_tokens {
                    row.done = Some((StopReason::Length, None));
                } else if prompt.len() + row.ids.len() >= capacity {
                    row.done = Some((StopReason::Context, None));
                }
            }
            match &row.done {
                Some((reason, _)) => {
                    // Text held back as a possible stop-string prefix is released at the end.
                    let rest = row.stop.finish();
                    if !rest.is_empty() {
                        row.text.push_str(&rest);
                        on_event(Event::Text {
                            sample: i,
                            delta: &rest,
                        });
                    }
                    on_event(Event::Finished {
                        sample: i,
                        reason: reason.clone(),
                    });
                }
                None => {
                    still.push(slot);
                    next_tokens.push(token);
                }
            }
        }
        if still.is_empty() {
            break;
        }
        if still.len() != active.len() {
            let keep: Vec<u32> = still.iter().map(|&s| s as u32).collect();
            cache.keep_rows(&keep)?;
            active = still.iter().map(|&s| active[s]).collect();
        }
        let input = Tensor::new(next_tokens.as_slice(), &dec.device)?.unsqueeze(1)?;
        let logits = dec.forward(&input, Some(&mut cache), crate::model::Ops::Fast, false)?;
        row_logits = logits.to_vec2()?;
    }
    let decode_s = first_token_at
        .map(|t| t.elapsed().as_secs_f64())
        .unwrap_or(0.0);
    let samples = rows
        .into_iter()
        .map(|r| {
            let (stop_reason, stop_string) = r.done.unwrap_or((StopReason::Cancelled, None));
            Sample {
                text: r.text,
                tokens: r.ids.len(),
                token_ids: r.ids,
                stop_reason,
                stop_string,
                eos_token: r.eos,
            }
        })
        .collect();
    Ok(Generation {
        samples,
        prompt_tokens: prompt.len(),
        cached_prompt_tokens: cached_tokens,
        ttft_ms: ttft.unwrap_or(0.0) * 1000.0,
        tokens_per_s: if decode_s > 0.0 {
            generated.saturating_sub(n) as f64 / decode_s
        } else {
            0.0
        },
        prefill_tokens_per_s: if prefill_s > 0.0 {
            computed as f64 / prefill_s
        } else {
            0.0
        },
    })
}

/// What a call cancelled before its first token returns: every sample empty, `Cancelled`.
fn cancelled_during_prefill(
    n: usize,
    prompt_tokens: usize,
    cached_prompt_tokens: usize,
    on_event: &mut dyn FnMut(Event),
) -> Generation {
    for i in 0..n {
        on_event(Event::Finished {
            sample: i,
            reason: StopReason::Cancelled,
        });
    }
    Generation {
        samples: (0..n)
            .map(|_| Sample {
                text: String::new(),
                token_ids: vec![],
                tokens: 0,
                stop_reason: StopReason::Cancelled,
                stop_string: None,
                eos_token: None,
            })
            .collect(),
        prompt_tokens,
        cached_prompt_tokens,
        ttft_ms: 0.0,
        tokens_per_s: 0.0,
        prefill_tokens_per_s: 0.0,
    }
}
