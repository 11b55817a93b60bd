//! `humanlm generate` (a prompt or a chat, streamed or as JSON) and `humanlm bench` (prefill
//! and decode speed, measured by [`crate::generate::bench`]).

use super::{load, stream, RuntimeArgs};
use crate::generate::{self as gen, SamplingParams};
use crate::model::chat::Message;
use crate::model::Error;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub(super) struct GenerateArgs {
    #[command(flatten)]
    rt: RuntimeArgs,
    /// Raw prompt text (no chat template; add --chat to send it as one user message).
    #[arg(
        long,
        conflicts_with = "messages",
        required_unless_present = "messages"
    )]
    prompt: Option<String>,
    /// Wrap --prompt as a user message and apply the chat template.
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// JSON file: an array of {"role": ..., "content": ...}, rendered by the chat template.
    #[arg(long)]
    messages: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Ban repeating any n-gram of prompt + output (0 = off).
    #[arg(long, default_value_t = 0)]
    no_repeat_ngram: usize,
    /// Stop when this string appears (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep the stop string at the end of the output.
    #[arg(long)]
    keep_stop: bool,
    /// Number of samples, decoded together as a batch.
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub(super) fn generate_cmd(root: &std::path::Path, a: GenerateArgs) -> anyhow::Result<()> {
    let messages = match &a.messages {
        Some(path) => Some(read_messages(path)?),
        None => None,
    };
    let model = load(root, &a.rt)?;
    let ids = match (&messages, &a.prompt) {
        (Some(m), _) => model.tokenizer.encode_rendered(&model.chat.render(
            m,
            true,
            &serde_json::json!({}),
        )?)?,
        (None, Some(p)) if a.chat => model.tokenizer.encode_rendered(&model.chat.render(
            &[Message::new("user", p)],
            true,
            &serde_json::json!({}),
        )?)?,
        (None, Some(p)) => model.tokenizer.encode_raw(p)?,
        (None, None) => unreachable!("clap requires --prompt or --messages"),
    };
    let params = SamplingParams {
        max_new_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        min_p: a.min_p,
        seed: a.seed,
        repetition_penalty: a.repetition_penalty,
        no_repeat_ngram: a.no_repeat_ngram,
        stop: a.stop.clone(),
        keep_stop: a.keep_stop,
        n: a.n,
        ignore_eos: false,
    };
    if a.json || a.n > 1 {
        let out = gen::generate(&model, &ids, &params, None, &mut |_| {})?;
        let mut stdout = std::io::stdout().lock();
        if a.json {
            writeln!(stdout, "{}", serde_json::to_string(&out)?)?;
        } else {
            for (i, s) in out.samples.iter().enumerate() {
                writeln!(
                    stdout,
                    "--- sample {} ({} tokens, stop: {}) ---\n{}",
                    i + 1,
                    s.tokens,
                    s.stop_reason,
                    s.text
                )?;
            }
        }
        return Ok(());
    }
    let out = stream(&model, &ids, &params)?;
    let s = &out.samples[0];
    println!();
    eprintln!(
        "[{} prompt tokens ({} cached), {} new, stop: {}{}, ttft {:.0} ms, {:.1} tok/s]",
        out.prompt_tokens,
        out.cached_prompt_tokens,
        s.tokens,
        s.stop_reason,
        s.stop_string
            .as_ref()
            .map(|x| format!(" {x:?}"))
            .unwrap_or_default(),
        out.ttft_ms,
        out.tokens_per_s
    );
    Ok(())
}

fn read_messages(path: &std::path::Path) -> anyhow::Result<Vec<Message>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let messages: Vec<Message> = serde_json::from_str(&text).map_err(|e| {
        Error::file(
            path,
            format!("expected a JSON array of {{\"role\", \"content\"}} objects: {e}"),
        )
    })?;
    if messages.is_empty() {
        return Err(Error::file(path, "no messages").into());
    }
    Ok(messages)
}

#[derive(Args)]
pub(super) struct BenchArgs {
    #[command(flatten)]
    rt: RuntimeArgs,
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Instead: run these prompts in order (a JSON array of rendered prompt strings, special
    /// tokens included, as `simulate --prompt-only --json` prints them) through the model's
    /// prefix cache, one new token each, and report each one's time and cached tokens.
    #[arg(long, value_name = "FILE")]
    prompts: Option<std::path::PathBuf>,
    /// Prefill twice and decode at batch 1 only (no batch-4 decode, no prefix-reuse workload):
    /// for models too large to measure fully in reasonable time.
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    json: bool,
}

pub(super) fn bench_cmd(root: &std::path::Path, a: BenchArgs) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let model = load(root, &a.rt)?;
    let load_s = t.elapsed().as_secs_f64();
    if let Some(path) = &a.prompts {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        let prompts: Vec<String> = serde_json::from_str(&text).map_err(|e| {
            Error::file(
                path,
                format!("expected a JSON array of prompt strings: {e}"),
            )
        })?;
        let report = gen::bench::prompts(&model, &prompts)?;
        let mut out = std::io::stdout().lock();
        if a.json {
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
        } else {
            for (i, r) in report.calls.iter().enumerate() {
                writeln!(
                    out,
                    "prompt {:>3}  {:>6} tokens  {:>6} cached  {:>7.3} s",
                    i + 1,
                    r.prompt_tokens,
                    r.cached_tokens,
                    r.seconds
                )?;
            }
            writeln!(
                out,
                "total        {:>6} tokens  {:>6} cached  {:>7.3} s",
                report.prompt_tokens, report.cached_tokens, report.seconds
            )?;
        }
        return Ok(());
    }
    let mut report =
        gen::bench::bench(&model, a.prompt_tokens, a.new_tokens, a.rt.threads, a.quick)?;
    report.load_s = load_s;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(
            out,
            "checkpoint   {} ({}) on {}, {} threads, loaded in {:.1} s",
            report.checkpoint, report.weights, report.device, report.threads, report.load_s
        )?;
        writeln!(
            out,
            "prefill      {:>8.1} tok/s  ({} tokens)",
            report.prefill_tok_s, report.prompt_tokens
        )?;
        writeln!(
            out,
            "decode b=1   {:>8.1} tok/s  ({} tokens)",
            report.decode_tok_s_b1, report.new_tokens
        )?;
        if let Some(b4) = report.decode_tok_s_b4 {
            writeln!(out, "decode b=4   {b4:>8.1} tok/s  (total over the batch)")?;
        }
        if let Some(r) = &report.prefix_reuse {
            writeln!(
            out,
            "prefix reuse {:>8.2} s → {:.2} s with the prefix cache ({}× faster; {} of {} prompt tokens computed, {} prompts sharing the prompt above)",
            r.seconds_off,
            r.seconds_on,
            format_args!("{:.1}", r.seconds_off / r.seconds_on.max(1e-9)),
            r.computed_tokens,
            r.prompt_tokens,
            r.prompts
        )?;
        }
        writeln!(out, "peak RSS     {:>8.1} MiB", report.peak_rss_mb)?;
    }
    Ok(())
}
