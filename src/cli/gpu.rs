//! `humanlm gpu-check`: its flags, parsed into the library's [`crate::gpu::GpuCheckArgs`].

use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub(super) struct GpuCheckArgs {
    /// The device under test: cuda, cuda:N, or cpu (the CPU path runs the same checks).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Activation and weight dtype on the device: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Op choice on the device in the parity checks: fast (inference) or diff (training path).
    #[arg(long, default_value = "fast")]
    ops: String,
    /// The checkpoint for the default-model parity check (name or path).
    #[arg(long, default_value = crate::model::checkpoint::DEFAULT_CHECKPOINT)]
    checkpoint: String,
    /// Skip the default-model parity check (its weights are not on this machine).
    #[arg(long)]
    no_default_model: bool,
    /// The small random model of the second parity check (a shape name or config.json).
    #[arg(long, default_value = "tiny-qwen3")]
    parity_shape: String,
    /// Shapes to measure, comma-separated: tiny-qwen3, qwen3-0.6b, qwen3-8b, or config.json paths.
    #[arg(long, default_value = "qwen3-0.6b,qwen3-8b", value_delimiter = ',')]
    shapes: Vec<String>,
    /// Prompt length for prefill and before decoding.
    #[arg(long, default_value_t = 512)]
    prompt: usize,
    /// Batch sizes for prefill and decode, comma-separated.
    #[arg(long, default_value = "1,8", value_delimiter = ',')]
    batches: Vec<usize>,
    /// Tokens decoded after the prompt (per sequence).
    #[arg(long, default_value_t = 128)]
    decode: usize,
    /// LoRA training batch as SEQUENCESxTOKENS; 0x0 skips training.
    #[arg(long, default_value = "4x512", value_parser = parse_batch)]
    train_batch: (usize, usize),
    /// Timed training steps (after one untimed warm-up step).
    #[arg(long, default_value_t = 3)]
    train_steps: usize,
    /// LoRA rank (alpha = 2 × rank), on every projection of every layer.
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Timed repeats of each prefill (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Override the parity tolerance (max |Δlogit| / max |logit|; default by dtype: bf16 0.08,
    /// f16 0.03, f32 0.01).
    #[arg(long)]
    tolerance: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the JSON summary here (rewritten after every stage).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the anchor: stock candle-transformers' qwen3 on the same random weights.
    #[arg(long)]
    no_stock: bool,
    /// KEY=VALUE recorded under "meta" (card and driver from nvidia-smi, the command line...).
    #[arg(long)]
    meta: Vec<String>,
}

/// `--train-batch`: SEQUENCESxTOKENS.
fn parse_batch(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("'{s}': expected SEQUENCESxTOKENS, e.g. 4x512");
    let (a, b) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let a = a.trim().parse().map_err(|_| bad())?;
    let b = b.trim().parse().map_err(|_| bad())?;
    Ok((a, b))
}

impl From<GpuCheckArgs> for crate::gpu::GpuCheckArgs {
    fn from(a: GpuCheckArgs) -> Self {
        crate::gpu::GpuCheckArgs {
            device: a.device,
            dtype: a.dtype,
            ops: a.ops,
            checkpoint: a.checkpoint,
            no_default_model: a.no_default_model,
            parity_shape: a.parity_shape,
            shapes: a.shapes,
            prompt: a.prompt,
            batches: a.batches,
            decode: a.decode,
            train_batch: a.train_batch,
            train_steps: a.train_steps,
            rank: a.rank,
            repeats: a.repeats,
            tolerance: a.tolerance,
            seed: a.seed,
            out: a.out,
            stock: !a.no_stock,
            meta: a.meta,
        }
    }
}
