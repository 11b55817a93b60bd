//! Text generation: sampling, stop conditions, streaming, n samples of one prompt — or the
//! samples of several prompts ([`generate_many`]) — decoded as one batch.
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
    let mut g = generate_many(model, &[Job { prompt, params }], cancel, &mut |_, e| {
        on_event(e)
    })?;
    Ok(g.pop().expect("one job, one generation"))
}

/// One prompt of [`generate_many`] and how to continue it.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub prompt: &'a [u32],
    pub params: &'a SamplingParams,
}

/// A job's state while it decodes.
struct Running<'a> {
    job: Job<'a>,
    cache: KvCache,
    rows: Vec<Row>,
    /// The logits each active row samples from next (one per `active` entry).
    logits: Vec<Vec<f32>>,
    /// Indices into `rows` of the samples still decoding, in cache row order.
    active: Vec<usize>,
    capacity: usize,
    started: Instant,
    prefill_s: f64,
    cached_tokens: usize,
    first_token_at: Option<Instant>,
    finished_at: Option<Instant>,
    generated: usize,
}

/// Generate continuations of several independent prompts, decoded together: each prompt is
/// prefilled in turn (later ones reuse what earlier ones left in the prefix cache), then every
/// prompt's samples decode in one batch, a step at a time, until each ends by its own
/// parameters. Each generation is bit for bit the one [`generate`] gives its prompt alone (see
/// [`crate::model::Decoder::decode_rows`]), while the weights stream once per step for all.
/// Events carry the job's index.
pub fn generate_many(
    model: &Model,
    jobs: &[Job],
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(usize, Event),
) -> Result<Vec<Generation>> {
    let dec = &model.decoder;
    let ctx = dec.max_positions();
    for job in jobs {
        job.params.validate()?;
        let prompt = job.prompt;
        if prompt.is_empty() {
            return Err(Error::Msg("empty prompt".into()));
        }
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
    }
    let mut running: Vec<Running> = Vec::with_capacity(jobs.len());
    for (j, &job) in jobs.iter().enumerate() {
        let (prompt, params) = (job.prompt, job.params);
        let n = params.n.max(1);
        let capacity = (prompt.len() + params.max_new_tokens).min(ctx);
        let started = Instant::now();
        let Prefilled {
            mut cache,
            logits,
            cached_tokens,
        } = prefill(model, prompt, capacity, cancel, &mut |e| on_event(j, e))?;
        let Some(logits) = logits else {
            // Cancelled: every job ends before its first token, with what it took from the
            // prefix cache (nothing for those not reached).
            let took = |i: usize| match i.cmp(&j) {
                std::cmp::Ordering::Less => running[i].cached_tokens,
                std::cmp::Ordering::Equal => cached_tokens,
                std::cmp::Ordering::Greater => 0,
            };
            return Ok(jobs
                .iter()
                .enumerate()
                .map(|(i, job)| {
                    cancelled_during_prefill(
                        job.params.n.max(1),
                        job.prompt.len(),
                        took(i),
                        &mut |e| on_event(i, e),
                    )
                })
                .collect());
        };
        let prefill_s = started.elapsed().as_secs_f64();
        let first: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        if n > 1 {
            cache = cache.repeat_batch(n)?;
        }
        running.push(Running {
            job,
            cache,
            rows: (0..n)
                .map(|i| Row {
                    ids: vec![],
                    stop: StopMatcher::new(&params.stop, params.keep_stop),
                    sampler: Sampler::new(params, params.seed.wrapping_add(i as u64)),
                    done: None,
                    eos: None,
                    text: String::new(),
                })
                .collect(),
            logits: vec![first; n],
            active: (0..n).collect(),
            capacity,
            started,
            prefill_s,
            cached_tokens,
            first_token_at: None,
            finished_at: None,
            generated: 0,
        });
    }
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            for (j, r) in running.iter_mut().enumerate() {
                for &i in &r.active {
                    r.rows[i].done = Some((StopReason::Cancelled, None));
                    on_event(
                        j,
                        Event::Finished {
                            sample: i,
                            reason: StopReason::Cancelled,
                        },
                    );
                }
                r.active.clear();
            }
            break;
        }
        let mut next_tokens = Vec::new();
        for (j, r) in running.iter_mut().enumerate() {
            if r.active.is_empty() {
                continue;
            }
            let still = sample_step(model, r, &mut |e| on_event(j, e))?;
            if still.len() != r.active.len() {
                if still.is_empty() {
                    r.finished_at = Some(Instant::now());
                } else {
                    let keep: Vec<u32> = still.iter().map(|&(s, _)| s as u32).collect();
                    r.cache.keep_rows(&keep)?;
                }
                r.active = still.iter().map(|&(s, _)| r.active[s]).collect();
            }
            next_tokens.extend(still.iter().map(|&(_, t)| t));
        }
        if next_tokens.is_empty() {
            break;
        }
        let mut live: Vec<&mut Running> = running
            .iter_mut()
            .filter(|r| !r.active.is_empty())
            .collect();
        let logits: Vec<Vec<f32>> = {
            let mut caches: Vec<&mut KvCache> = live.iter_mut().map(|r| &mut r.cache).collect();
            dec.decode_rows(&next_tokens, &mut caches)?.to_vec2()?
        };
        let mut logits = logits.into_iter();
        for r in live.iter_mut() {
            r.logits = logits.by_ref().take(r.active.len()).collect();
        }
    }
    Ok(running.into_iter().map(finish).collect())
}

/// Sample one token for each active row of `r`, stream its text and end the rows that stop.
/// Returns the rows that go on: (slot in `r.active`, the token just sampled).
fn sample_step(
    model: &Model,
    r: &mut Running,
    on_event: &mut dyn FnMut(Event),
) -> Result<Vec<(usize, u32)>> {
    let tok = &model.tokenizer;
    let (prompt, params) = (r.job.prompt, r.job.params);
    let mut still = Vec::with_capacity(r.active.len());
    for (slot, &i) in r.active.iter().enumerate() {
        let row = &mut r.rows[i];
        let token = row.sampler.sample(&mut r.logits[slot], prompt, &row.ids);
        r.generated += 1;
        r.first_token_at.get_or_insert_with(Instant::now);
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
            } else if prompt.len() + row.ids.len() >= r.capacity {
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
            None => still.push((slot, token)),
        }
    }
    Ok(still)
}

/// A finished job's generation and its timings.
fn finish(r: Running) -> Generation {
    let n = r.rows.len();
    let decode_s = match (r.first_token_at, r.finished_at) {
        (Some(t0), Some(t1)) => t1.duration_since(t0).as_secs_f64(),
        (Some(t0), None) => t0.elapsed().as_secs_f64(),
        _ => 0.0,
    };
    let computed = r.job.prompt.len() - r.cached_tokens;
    let samples = r
        .rows
        .into_iter()
        .map(|row| {
            let (stop_reason, stop_string) = row.done.unwrap_or((StopReason::Cancelled, None));
            Sample {
                text: row.text,
                tokens: row.ids.len(),
                token_ids: row.ids,
                stop_reason,
                stop_string,
                eos_token: row.eos,
            }
        })
        .collect();
    Generation {
        samples,
        prompt_tokens: r.job.prompt.len(),
        cached_prompt_tokens: r.cached_tokens,
        ttft_ms: r
            .first_token_at
            .map_or(0.0, |t| t.duration_since(r.started).as_secs_f64() * 1000.0),
        tokens_per_s: if decode_s > 0.0 {
            r.generated.saturating_sub(n) as f64 / decode_s
        } else {
            0.0
        },
        prefill_tokens_per_s: if r.prefill_s > 0.0 {
            computed as f64 / r.prefill_s
        } else {
            0.0
        },
    }
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
