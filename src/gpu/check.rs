//! `humanlm gpu-check`: in one run, (1) the default checkpoint's logits on a device against the
//! CPU in f32, (2) a small seeded random Qwen3 on the device against the same weights on the CPU
//! in f32, (3) the decoder's prefill, decode and LoRA-training speed on random-weight models at
//! real shapes. One JSON summary goes to stdout (and, after every stage, to `--out`, so a run cut
//! short still leaves what it measured). A failed parity check makes the exit code non-zero; a
//! stage that errors (out of memory, an op missing on the device) is recorded and the run goes on.

use super::random::{self, Fill};
use crate::model::device::{device_name, parse_device};
use crate::model::weights::{LoadOptions, Store};
use crate::model::{Checkpoint, Decoder, ModelConfig, Ops};
use candle_core::{DType, Device, Tensor, D};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `humanlm gpu-check` checks and measures (the CLI's flags, parsed).
#[derive(Debug, Clone)]
pub struct GpuCheckArgs {
    /// The device under test: cuda, cuda:N, or cpu (the CPU path runs the same checks).
    pub device: String,
    /// Activation and weight dtype on the device: bf16, f16 or f32.
    pub dtype: String,
    /// Op choice on the device in the parity checks: fast (inference) or diff (training path).
    pub ops: String,
    /// The checkpoint for the default-model parity check (name or path).
    pub checkpoint: String,
    /// Skip the default-model parity check (its weights are not on this machine).
    pub no_default_model: bool,
    /// The small random model of the second parity check (a shape name or config.json).
    pub parity_shape: String,
    /// Shapes to measure, comma-separated: tiny-qwen3, qwen3-0.6b, qwen3-8b, or config.json paths.
    pub shapes: Vec<String>,
    /// Prompt length for prefill and before decoding.
    pub prompt: usize,
    /// Batch sizes for prefill and decode, comma-separated.
    pub batches: Vec<usize>,
    /// Tokens decoded after the prompt (per sequence).
    pub decode: usize,
    /// LoRA training batch as SEQUENCESxTOKENS; 0x0 skips training.
    pub train_batch: (usize, usize),
    /// Timed training steps (after one untimed warm-up step).
    pub train_steps: usize,
    /// LoRA rank (alpha = 2 × rank), on every projection of every layer.
    pub rank: usize,
    /// Timed repeats of each prefill (the median is reported).
    pub repeats: usize,
    /// Override the parity tolerance (max |Δlogit| / max |logit|; default by dtype: bf16 0.08,
    /// f16 0.03, f32 0.01).
    pub tolerance: Option<f64>,
    pub seed: u64,
    /// Also write the JSON summary here (rewritten after every stage).
    pub out: Option<PathBuf>,
    /// Also measure stock candle-transformers' qwen3 on the same weights (the anchor).
    pub stock: bool,
    /// KEY=VALUE recorded under "meta" (card and driver from nvidia-smi, the command line...).
    pub meta: Vec<String>,
}

fn parse_dtype(s: &str) -> anyhow::Result<DType> {
    crate::model::device::parse_dtype(s)
        .ok_or_else(|| anyhow::anyhow!("--dtype '{s}': expected bf16, f16 or f32"))
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        DType::F64 => "f64",
        _ => "other",
    }
}

/// Largest allowed `max|Δlogit| / max|logit|` against the CPU's f32 result. bf16 keeps 8
/// mantissa bits: on the default checkpoint the CPU's own bf16 path lands at 0.045 (30 layers,
/// every activation rounded), so 0.08 leaves room for a GPU's different summation order but not
/// for a wrong kernel (those move logits by their whole range). f16 keeps 11 bits. f32 differs
/// only in summation order and, for quantized weights, in how activations are quantized (q8_1
/// on CUDA, q8_0 on the CPU).
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 0.08,
        DType::F16 => 0.03,
        _ => 0.01,
    }
}

/// Published figures to compare with (rust-ml-facts.md, measured on the same H100 model).
fn anchors() -> Value {
    json!({
        "card": "NVIDIA H100 80GB HBM3, bf16, random weights, prompt 512, 128 new tokens",
        "pytorch_2.11_transformers_5.17": {
            "qwen3-0.6b": {"decode_b1": 9.2, "decode_b8": 78.7, "prefill_b1": 10079.0, "lora_train": 10746.0},
            "qwen3-8b": {"decode_b1": 10.3, "decode_b8": 89.3, "prefill_b1": 11618.0, "lora_train": 6691.0}
        },
        "candle_transformers_0.11.1_qwen3": {
            "qwen3-0.6b": {"decode_b1": 134.0, "decode_b8": 1094.0, "prefill_b1": 49785.0, "prefill_b8": 73950.0},
            "qwen3-8b": {"decode_b1": 81.8, "decode_b8": 470.0, "prefill_b1": 17209.0, "prefill_b8": 20168.0}
        },
        "limits": {
            "qwen3-8b decode_b1 (bandwidth, 16.4 GB per token at 3 TB/s)": 180.0,
            "qwen3-8b prefill (compute, 16 GFLOP per token at 750 TFLOP/s)": 45000.0
        }
    })
}

/// The targets (tokens/s): (shape, metric, minimum). LoRA training's target is PEFT's
/// figure above.
const TARGETS: &[(&str, &str, f64)] = &[
    ("qwen3-8b", "decode_b1", 200.0),
    ("qwen3-8b", "decode_b8", 1400.0),
    ("qwen3-8b", "prefill_b1", 30000.0),
    ("qwen3-0.6b", "decode_b1", 500.0),
    ("qwen3-0.6b", "lora_train", 10746.0),
    ("qwen3-8b", "lora_train", 6691.0),
];

/// The candle version this binary was built with, read from the lock file compiled in.
fn candle_version() -> String {
    let lock = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"));
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "name = \"candle-core\"" {
            if let Some(v) = lines
                .next()
                .and_then(|v| v.trim().strip_prefix("version = "))
            {
                return v.trim_matches('"').to_string();
            }
        }
    }
    "unknown".into()
}

/// Name, compute capability and memory of a CUDA device (null elsewhere).
fn device_info(dev: &Device) -> Value {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        let stream = d.cuda_stream();
        let ctx = stream.context();
        return json!({
            "name": ctx.name().ok(),
            "compute_capability": ctx.compute_capability().ok().map(|(a, b)| format!("{a}.{b}")),
            "memory_total_mib": ctx.total_mem().ok().map(|m| m / (1 << 20)),
        });
    }
    json!({ "name": device_name(dev) })
}

/// GPU memory in use now (MiB), or null on the CPU.
pub(super) fn memory_used_mib(dev: &Device) -> Value {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        let stream = d.cuda_stream();
        if let Ok((free, total)) = stream.context().mem_get_info() {
            return json!((total - free) / (1 << 20));
        }
    }
    let _ = dev;
    Value::Null
}

/// Accumulates the summary and writes it out after every stage.
struct Report {
    v: Value,
    out: Option<PathBuf>,
}

impl Report {
    fn save(&self) -> anyhow::Result<()> {
        if let Some(path) = &self.out {
            crate::files::write(path, serde_json::to_string_pretty(&self.v)?)?;
        }
        Ok(())
    }
}

fn progress(msg: &str) {
    eprintln!("gpu-check: {msg}");
}

/// Time `f` on `dev`, waiting for queued GPU work before and after.
pub(super) fn timed<T>(
    dev: &Device,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, f64)> {
    dev.synchronize()?;
    let t = Instant::now();
    let out = f()?;
    dev.synchronize()?;
    Ok((out, t.elapsed().as_secs_f64()))
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// How a candidate's logits differ from the reference's, both (positions, vocab).
fn compare(reference: &Tensor, candidate: &Tensor, tol: f64) -> anyhow::Result<Value> {
    let r = reference.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let c = candidate.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let rows_r = r.to_vec2::<f32>()?;
    let rows_c = c.to_vec2::<f32>()?;
    if rows_r.len() != rows_c.len() || rows_r.first().map(Vec::len) != rows_c.first().map(Vec::len)
    {
        anyhow::bail!(
            "logits of different shapes: {:?} vs {:?}",
            r.dims(),
            c.dims()
        );
    }
    let (mut max_diff, mut max_ref, mut agree, mut worst_gap) = (0f64, 0f64, 0usize, 0f64);
    let mut finite = true;
    for (a, b) in rows_r.iter().zip(&rows_c) {
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .map(|(i, _)| i)
                .unwrap_or(0)
        };
        for (x, y) in a.iter().zip(b) {
            finite &= y.is_finite();
            max_diff = max_diff.max((x - y).abs() as f64);
            max_ref = max_ref.max(x.abs() as f64);
        }
        let (ia, ib) = (argmax(a), argmax(b));
        if ia == ib {
            agree += 1;
        }
        // Where the top choices differ, how far below the reference's best the candidate's pick
        // is, in the reference's own logits: a near-tie is fine, a real disagreement is not.
        worst_gap = worst_gap.max((a[ia] - a[ib]) as f64);
    }
    let rel = if max_ref > 0.0 {
        max_diff / max_ref
    } else {
        f64::INFINITY
    };
    // A differing top-1 is allowed only at a near-tie: within a quarter of the tolerance.
    let pass = finite && rel <= tol && worst_gap <= tol / 4.0 * max_ref;
    Ok(json!({
        "positions": rows_r.len(),
        "vocab": rows_r[0].len(),
        "max_abs_diff": max_diff,
        "max_abs_logit": max_ref,
        "rel_diff": rel,
        "tolerance_rel": tol,
        "top1_agree": agree,
        "top1_worst_gap": worst_gap,
        "all_finite": finite,
        "pass": pass,
    }))
}

/// Logits at every position of `ids` (one sequence) through `ops` without a cache.
fn all_logits(dec: &Decoder, ids: &[u32], ops: Ops) -> anyhow::Result<Tensor> {
    let input = Tensor::new(ids, &dec.device)?.unsqueeze(0)?;
    Ok(dec.forward(&input, None, ops, true)?.squeeze(0)?)
}

/// The default checkpoint on `dev` against itself on the CPU in f32 (the workbench's CPU path).
fn parity_default(
    ck: &Checkpoint,
    dev: &Device,
    dtype: DType,
    ops: Ops,
    tol: f64,
) -> anyhow::Result<Value> {
    let reference = ck.load(&LoadOptions::default())?;
    // A short chat-like text: the prompt the workbench's own smoke tests use, several positions.
    let text = "<|im_start|>user\nWhat is the capital of France? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\nThe capital of France is";
    let ids = reference.tokenizer.encode_raw(text)?;
    let want = all_logits(&reference.decoder, &ids, Ops::Fast)?;
    drop(reference);
    let cand = ck.load(&LoadOptions {
        device: dev.clone(),
        dtype: Some(dtype),
        // The differentiable path trains on dequantized weights; check it the way it runs.
        dequantize: ops == Ops::Diff,
        quantize: None,
    })?;
    let got = all_logits(&cand.decoder, &ids, ops)?;
    let mut v = compare(&want, &got, tol)?;
    v["checkpoint"] = json!(ck.path.display().to_string());
    v["weights"] = json!(cand.decoder.weight_kinds());
    v["prompt_tokens"] = json!(ids.len());
    Ok(v)
}

/// The same seeded random weights on `dev` and on the CPU in f32.
fn parity_random(
    spec: &str,
    dev: &Device,
    dtype: DType,
    ops: Ops,
    seed: u64,
    tol: f64,
) -> anyhow::Result<Value> {
    let (label, cfg) = random::resolve_shape(spec)?;
    let cpu = random::random_decoder(&cfg, &label, Fill::Seeded(seed), &LoadOptions::default())?;
    let ids = random_ids(&cfg, 1, 48.min(cfg.max_position_embeddings), seed)?;
    let want = all_logits(&cpu, &ids[0], Ops::Fast)?;
    drop(cpu);
    let cand = random::random_decoder(
        &cfg,
        &label,
        Fill::Seeded(seed),
        &LoadOptions {
            device: dev.clone(),
            dtype: Some(dtype),
            dequantize: false,
            quantize: None,
        },
    )?;
    let got = all_logits(&cand, &ids[0], ops)?;
    let mut v = compare(&want, &got, tol)?;
    v["shape"] = json!(label);
    v["prompt_tokens"] = json!(ids[0].len());
    Ok(v)
}

pub(super) fn random_ids(
    cfg: &ModelConfig,
    batch: usize,
    len: usize,
    seed: u64,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    Ok((0..batch)
        .map(|_| {
            (0..len)
                .map(|_| rng.random_range(0..cfg.vocab_size as u32))
                .collect()
        })
        .collect())
}

/// Prefill `prompt` tokens at `batch`, then decode `steps` greedy tokens. Returns
/// (prefill seconds, decode seconds).
fn prefill_and_decode(
    dec: &Decoder,
    batch: usize,
    prompt: usize,
    steps: usize,
    seed: u64,
) -> anyhow::Result<(f64, f64)> {
    let dev = &dec.device;
    let ids = random_ids(&dec.config, batch, prompt, seed)?;
    let flat: Vec<u32> = ids.concat();
    let input = Tensor::from_vec(flat, (batch, prompt), dev)?;
    let mut cache = dec.new_cache(batch, prompt + steps)?;
    let (logits, prefill_s) = timed(dev, || {
        Ok(dec.forward(&input, Some(&mut cache), Ops::Fast, false)?)
    })?;
    let ((), decode_s) = timed(dev, || {
        let mut logits = logits;
        for _ in 0..steps {
            // Greedy, with the chosen ids read back every step as a sampler does (this is the
            // synchronisation point a real generation loop has).
            let next: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
            let input = Tensor::from_vec(next, (batch, 1), dev)?;
            logits = dec.forward(&input, Some(&mut cache), Ops::Fast, false)?;
        }
        let _ = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        Ok(())
    })?;
    Ok((prefill_s, decode_s))
}

/// Prefill and decode speed of one shape at every batch size.
fn measure_inference(dec: &Decoder, a: &GpuCheckArgs) -> anyhow::Result<Value> {
    // Warm-up: kernel modules load and cuBLAS sets up on first use; keep that out of the timings.
    prefill_and_decode(dec, 1, a.prompt.min(64), 2, a.seed)?;
    let mut prefill = vec![];
    let mut decode = vec![];
    for &b in &a.batches {
        let mut pre = vec![];
        let mut dec_s = vec![];
        for r in 0..a.repeats.max(1) {
            // Decode is timed on the first repeat only: it is long enough to be steady.
            let steps = if r == 0 { a.decode } else { 0 };
            let (p, d) = prefill_and_decode(dec, b, a.prompt, steps, a.seed + r as u64)?;
            pre.push(p);
            if r == 0 {
                dec_s.push(d);
            }
        }
        let p = median(pre.clone());
        prefill.push(json!({
            "batch": b, "prompt": a.prompt, "seconds": p, "runs": pre,
            "tok_per_s": (b * a.prompt) as f64 / p,
        }));
        if a.decode > 0 {
            let d = dec_s[0];
            decode.push(json!({
                "batch": b, "after_prompt": a.prompt, "steps": a.decode, "seconds": d,
                "ms_per_step": d * 1e3 / a.decode as f64,
                "tok_per_s": (b * a.decode) as f64 / d,
            }));
        }
    }
    Ok(
        json!({ "prefill": prefill, "decode": decode, "memory_used_mib": memory_used_mib(&dec.device) }),
    )
}

/// Run one stage; an error becomes `{"error": ...}` in the summary instead of ending the run.
fn stage(name: &str, f: impl FnOnce() -> anyhow::Result<Value>) -> Value {
    progress(&format!("{name} ..."));
    let t = Instant::now();
    let mut v = match f() {
        Ok(v) => v,
        Err(e) => {
            let msg = crate::model::first_line(&e.to_string());
            progress(&format!("{name}: error: {msg}"));
            json!({ "error": msg })
        }
    };
    let secs = t.elapsed().as_secs_f64();
    progress(&format!("{name} done in {secs:.1} s"));
    if let Value::Object(m) = &mut v {
        m.insert("stage_seconds".into(), json!(secs));
    }
    v
}

/// `humanlm gpu-check`. Returns an error (exit 2) on bad input or a failed parity check, after
/// the summary is printed.
pub fn run(a: GpuCheckArgs, checkpoints: &Path) -> anyhow::Result<()> {
    let dtype = parse_dtype(&a.dtype)?;
    let ops = match a.ops.as_str() {
        "fast" => Ops::Fast,
        "diff" => Ops::Diff,
        o => anyhow::bail!("--ops '{o}': expected fast or diff"),
    };
    let tol = a.tolerance.unwrap_or(tolerance(dtype));
    if !(tol >= 0.0 && tol.is_finite()) {
        anyhow::bail!("--tolerance {tol}: must be a finite number ≥ 0");
    }
    // Everything a user can get wrong is checked before the long work starts.
    let mut shapes = vec![];
    for s in &a.shapes {
        let (label, cfg) = random::resolve_shape(s)?;
        if a.prompt + a.decode > cfg.max_position_embeddings {
            anyhow::bail!(
                "--prompt {} + --decode {} exceeds the {} positions of shape '{label}'",
                a.prompt,
                a.decode,
                cfg.max_position_embeddings
            );
        }
        shapes.push((label, cfg));
    }
    random::resolve_shape(&a.parity_shape)?;
    if a.train_batch.0 > 0 && a.train_batch.1 < 2 {
        anyhow::bail!(
            "--train-batch {}x{}: a sequence needs at least 2 tokens (0x0 skips training)",
            a.train_batch.0,
            a.train_batch.1
        );
    }
    if a.prompt == 0 || a.batches.is_empty() || a.batches.contains(&0) {
        anyhow::bail!("--prompt and every --batches value must be positive");
    }
    let mut meta = serde_json::Map::new();
    for m in &a.meta {
        let (k, v) = m
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--meta '{m}': expected KEY=VALUE"))?;
        meta.insert(k.to_string(), json!(v));
    }
    let ck = if a.no_default_model {
        None
    } else {
        Some(Checkpoint::resolve(&a.checkpoint, checkpoints)?)
    };
    let dev = parse_device(&a.device)?;
    let mut report = Report {
        v: json!({
            "humanlm_version": env!("CARGO_PKG_VERSION"),
            "candle_version": candle_version(),
            "cuda_feature": cfg!(feature = "cuda"),
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "device": device_name(&dev),
            "card": device_info(&dev),
            "dtype": dtype_name(dtype),
            "ops": a.ops,
            "meta": meta,
            "sizes": {
                "prompt": a.prompt, "batches": a.batches, "decode": a.decode,
                "train_batch": [a.train_batch.0, a.train_batch.1], "train_steps": a.train_steps,
                "lora_rank": a.rank, "repeats": a.repeats,
            },
            "method": {
                "weights": format!("random, normal(0, {}) on the device (uniform with that deviation, seeded, for parity); norms 1", random::WEIGHT_STD),
                "prefill": "random token ids, one forward pass into a fresh KV cache, median of the repeats",
                "decode": "greedy after the prefill, the chosen ids read back to the host every step; tokens/s counts every sequence of the batch",
                "parity": "max |Δlogit| over every position and vocabulary entry, relative to max |logit| of the CPU f32 reference; top-1 may differ only at near-ties (the reference logit of the device's pick within a quarter of the tolerance of the reference's best)",
            },
            "parity": {},
            "throughput": {},
            "targets": [],
            "anchors": anchors(),
        }),
        out: a.out.clone(),
    };
    report.save()?;

    let default = match &ck {
        None => {
            json!({ "skipped": "--no-default-model: the checkpoint's weights were not on this machine" })
        }
        Some(ck) => stage("parity: default checkpoint", || {
            parity_default(ck, &dev, dtype, ops, tol)
        }),
    };
    report.v["parity"]["default_model"] = default;
    report.save()?;
    report.v["parity"]["random_model"] = stage("parity: random model", || {
        parity_random(&a.parity_shape, &dev, dtype, ops, a.seed, tol)
    });
    report.save()?;

    for (label, cfg) in &shapes {
        let mut entry = json!({
            "parameters": cfg.parameter_count(),
            "config": cfg,
        });
        let opts = LoadOptions {
            device: dev.clone(),
            dtype: Some(dtype),
            dequantize: false,
            quantize: None,
        };
        let t = Instant::now();
        // One set of random tensors serves our decoder and the stock candle model alike.
        let built = random::random_tensors(cfg, Fill::OnDevice, &dev, dtype).and_then(|t| {
            let store = Store::from_tensors(format!("<random {label}>"), t.clone());
            Ok((Decoder::load(&store, cfg, &opts)?, t))
        });
        let (dec, tensors) = match built {
            Ok(d) => d,
            Err(e) => {
                entry["error"] = json!(format!("cannot build: {e}"));
                report.v["throughput"][label.as_str()] = entry;
                report.save()?;
                continue;
            }
        };
        dev.synchronize()?;
        entry["build_seconds"] = json!(t.elapsed().as_secs_f64());
        entry["inference"] = stage(&format!("{label}: prefill and decode"), || {
            measure_inference(&dec, &a)
        });
        report.v["throughput"][label.as_str()] = entry;
        report.save()?;
        if a.stock {
            report.v["throughput"][label.as_str()]["stock_candle"] =
                stage(&format!("{label}: stock candle-transformers qwen3"), || {
                    super::stock::measure_stock(&dec, &tensors, &a)
                });
            report.save()?;
        }
        drop(tensors);
        let train = if a.train_batch.0 > 0 {
            stage(&format!("{label}: LoRA training"), || {
                super::train::measure_training(&dec, &a)
            })
        } else {
            json!({ "skipped": "--train-batch 0x…" })
        };
        report.v["throughput"][label.as_str()]["train"] = train;
        report.save()?;
    }

    // Targets: met or not for every shape that was measured.
    let mut targets = vec![];
    for (shape, metric, min) in TARGETS {
        let got = metric_value(&report.v["throughput"][*shape], metric);
        targets.push(json!({
            "shape": shape, "metric": metric, "target_tok_per_s": min,
            "measured_tok_per_s": got,
            "met": got.map(|g| g >= *min),
        }));
    }
    report.v["targets"] = json!(targets);
    let parity_pass = ["default_model", "random_model"].iter().all(|k| {
        let p = &report.v["parity"][*k];
        p.get("skipped").is_some() || p["pass"].as_bool() == Some(true)
    });
    report.v["parity_pass"] = json!(parity_pass);
    report.save()?;
    println!("{}", serde_json::to_string_pretty(&report.v)?);
    if !parity_pass {
        anyhow::bail!(
            "parity check failed on {} (see \"parity\" in the summary)",
            a.device
        );
    }
    Ok(())
}

/// A metric (`decode_b1`, `prefill_b8`, `lora_train`) of one shape's entry, if measured.
fn metric_value(entry: &Value, metric: &str) -> Option<f64> {
    if metric == "lora_train" {
        return entry["train"]["tok_per_s"].as_f64();
    }
    let (kind, b) = metric.split_once("_b")?;
    let b: u64 = b.parse().ok()?;
    entry["inference"][kind]
        .as_array()?
        .iter()
        .find(|x| x["batch"].as_u64() == Some(b))?["tok_per_s"]
        .as_f64()
}
