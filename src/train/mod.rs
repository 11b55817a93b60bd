//! Short local fine-tuning passes: supervised fine-tuning with LoRA on the differentiable
//! decoder path.
//!
//! SFT puts the target's real reply in the position the simulator speaks from (the response
//! prompt of the chosen prompt set, so under the HumanLM set the target speaks in the user
//! role) and takes the loss on the reply's tokens only. The base weights stay frozen plain
//! tensors (quantized matrices are dequantized: there is no backward through a quantized
//! matmul); only the LoRA factors are `Var`s.
//!
//! Output folder: a PEFT-layout adapter (`adapter_config.json`, `adapter_model.safetensors`)
//! loadable as a checkpoint, `events.jsonl` (one line per step), and `checkpoint-N/` folders
//! with the adapter, the optimizer state and `trainer_state.json`, each written whole (a
//! temporary folder renamed into place), so `--resume` continues exactly where it stopped.

pub mod optim;

use crate::model::lora::{peft_key, Adapter, AdapterConfig, LoraWeights};
use crate::model::weights::LoadOptions;
use crate::model::{Checkpoint, Model, Ops};
use crate::prompts::PromptSet;
use crate::sim::{self, Mode, Options};
use candle_core::{DType, Device, IndexOp, Tensor, Var, D};
use optim::{AdamW, AdamWParams};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The name the adapter being trained is attached under.
const TRAINING: &str = "training";

/// Everything that defines a training run (saved with every checkpoint).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SftConfig {
    pub base: String,
    pub scenarios: PathBuf,
    /// Prompt set whose response prompt frames the target (default: the base's own).
    pub prompts: Option<String>,
    pub rank: usize,
    pub alpha: f64,
    /// HF module names' last parts to adapt (`q_proj`, ..., `down_proj`).
    pub targets: Vec<String>,
    pub lr: f64,
    pub warmup: usize,
    pub steps: usize,
    pub batch: usize,
    pub grad_accum: usize,
    pub max_grad_norm: f64,
    /// Examples longer than this (prompt + reply) are skipped and counted.
    pub max_seq: usize,
    pub seed: u64,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub save_every: usize,
    #[serde(default)]
    pub adamw: AdamWParams,
}

impl SftConfig {
    pub fn new(base: &str, scenarios: &Path) -> SftConfig {
        SftConfig {
            base: base.into(),
            scenarios: scenarios.into(),
            prompts: None,
            rank: 8,
            alpha: 16.0,
            targets: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
            lr: 1e-3,
            warmup: 2,
            steps: 30,
            batch: 1,
            grad_accum: 1,
            max_grad_norm: 1.0,
            max_seq: 1024,
            seed: 0,
            save_every: 0,
            adamw: AdamWParams::default(),
        }
    }
}

/// One SFT example: the prompt's ids and the target's ids (loss only on the latter).
#[derive(Debug, Clone)]
pub struct Example {
    pub scenario: String,
    pub prompt: Vec<u32>,
    pub target: Vec<u32>,
}

/// One line of `events.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepEvent {
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub eta_s: f64,
}

/// Build SFT examples from every scenario with a reference reply.
pub fn sft_examples(
    model: &Model,
    set: &PromptSet,
    scenarios: &Path,
    max_seq: usize,
) -> anyhow::Result<(Vec<Example>, Vec<String>)> {
    let mut out = vec![];
    let mut skipped = vec![];
    let eos = *model
        .tokenizer
        .eos_ids
        .first()
        .ok_or_else(|| anyhow::anyhow!("the tokenizer has no end-of-sequence token"))?;
    let opts = Options::new(Mode::Response, Default::default());
    for l in crate::scenario::load_all(scenarios) {
        let sc = l?.scenario;
        let Some(reply) = sc.target.response.as_deref() else {
            skipped.push(format!("{}: no reference reply", sc.id));
            continue;
        };
        let plan = match sim::plan(set, &sc, &opts, model) {
            Ok(p) => p,
            Err(e) => {
                skipped.push(format!("{}: {e}", sc.id));
                continue;
            }
        };
        let call = &plan.calls[0];
        // The reply as the model must write it after the prompt (and any pre-filled tag).
        let open = if call.prefill.is_empty() {
            "<response>"
        } else {
            ""
        };
        let text = format!("{open}{}</response>", reply.trim());
        let mut target = model.tokenizer.encode_raw(&text)?;
        target.push(eos);
        if call.ids.len() + target.len() > max_seq {
            skipped.push(format!(
                "{}: {} tokens, over --max-seq {max_seq}",
                sc.id,
                call.ids.len() + target.len()
            ));
            continue;
        }
        out.push(Example {
            scenario: sc.id.clone(),
            prompt: call.ids.clone(),
            target,
        });
    }
    Ok((out, skipped))
}

/// The trainable LoRA factors, by HF module name.
pub struct LoraParams {
    pub vars: Vec<(String, Var, Var)>,
    pub config: AdapterConfig,
}

impl LoraParams {
    /// PEFT's initialisation: A uniform in ±1/√in (Kaiming with a = √5), B zero, so training
    /// starts from the base model exactly.
    pub fn init(model: &Model, cfg: &SftConfig) -> anyhow::Result<LoraParams> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
        let mut vars = vec![];
        for (name, in_dim, out_dim) in model.decoder.linear_shapes() {
            let last = name.rsplit('.').next().unwrap_or_default();
            if !cfg.targets.iter().any(|t| t == last) {
                continue;
            }
            let bound = 1.0 / (in_dim as f64).sqrt();
            let a: Vec<f32> = (0..cfg.rank * in_dim)
                .map(|_| rand::Rng::random_range(&mut rng, -bound..bound) as f32)
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (cfg.rank, in_dim), &Device::Cpu)?)?;
            let b = Var::zeros((out_dim, cfg.rank), DType::F32, &Device::Cpu)?;
            vars.push((name, a, b));
        }
        if vars.is_empty() {
            anyhow::bail!(
                "no linear layer of the base matches the targets {:?}",
                cfg.targets
            );
        }
        let mut modules: Vec<String> = cfg.targets.clone();
        modules.sort();
        Ok(LoraParams {
            vars,
            config: AdapterConfig {
                base_model_name_or_path: Some(cfg.base.clone()),
                r: cfg.rank,
                lora_alpha: cfg.alpha,
                use_rslora: false,
                target_modules: modules,
            },
        })
    }

    /// Attach (or re-attach) the factors to the model as the active adapter.
    pub fn attach(&self, model: &mut Model, dir: &Path) -> anyhow::Result<()> {
        let scale = self.config.scale();
        let adapter = Adapter {
            name: TRAINING.into(),
            dir: dir.to_path_buf(),
            config: self.config.clone(),
            modules: self
                .vars
                .iter()
                .map(|(n, a, b)| {
                    (
                        n.clone(),
                        LoraWeights {
                            a: a.as_tensor().clone(),
                            b: b.as_tensor().clone(),
                            scale,
                        },
                    )
                })
                .collect(),
            // The factors train in the decoder's own row order; `save` converts.
            peft_layout: false,
        };
        model.decoder.attach_adapter(&adapter)?;
        model.decoder.set_active_adapter(Some(TRAINING))?;
        Ok(())
    }

    /// The optimizer's view: every factor with a stable name.
    pub fn named(&self) -> Vec<(String, Var)> {
        self.vars
            .iter()
            .flat_map(|(n, a, b)| [(peft_key(n, 'A'), a.clone()), (peft_key(n, 'B'), b.clone())])
            .collect()
    }

    /// Write the adapter in PEFT's layout into `dir` (which must exist).
    pub fn save(&self, dir: &Path, decoder: &crate::model::Decoder) -> anyhow::Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (n, a, b) in &self.vars {
            tensors.insert(peft_key(n, 'A'), a.as_tensor().clone());
            tensors.insert(
                peft_key(n, 'B'),
                decoder.lora_b_layout(n, b.as_tensor(), true)?,
            );
        }
        candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))?;
        std::fs::write(
            dir.join("adapter_config.json"),
            serde_json::to_string_pretty(&self.config.to_peft_json())?,
        )?;
        Ok(())
    }

    /// Load factors saved by [`LoraParams::save`] (resume).
    pub fn load_into(&self, dir: &Path, decoder: &crate::model::Decoder) -> anyhow::Result<()> {
        let file = dir.join("adapter_model.safetensors");
        let t = candle_core::safetensors::load(&file, &Device::Cpu)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for (n, a, b) in &self.vars {
            for (which, v) in [('A', a), ('B', b)] {
                let k = peft_key(n, which);
                let x = t
                    .get(&k)
                    .ok_or_else(|| anyhow::anyhow!("{}: lacks '{k}'", file.display()))?;
                if x.dims() != v.dims() {
                    anyhow::bail!("{}: '{k}' has the wrong shape", file.display());
                }
                let x = if which == 'B' {
                    decoder.lora_b_layout(n, x, false)?
                } else {
                    x.clone()
                };
                v.set(&x)?;
            }
        }
        Ok(())
    }
}

/// Mean cross-entropy over the target tokens of a batch, on the differentiable path.
pub fn sft_loss(model: &Model, batch: &[&Example]) -> anyhow::Result<(Tensor, usize)> {
    let mut total: Option<Tensor> = None;
    let mut count = 0usize;
    for ex in batch {
        let ids: Vec<u32> = ex.prompt.iter().chain(&ex.target).copied().collect();
        // Position i predicts token i+1: the inputs drop the last token.
        let input = Tensor::new(&ids[..ids.len() - 1], &model.decoder.device)?.unsqueeze(0)?;
        let logits = model.decoder.forward(&input, None, Ops::Diff, true)?.i(0)?;
        let start = ex.prompt.len() - 1;
        let n = ex.target.len();
        let logits = logits.narrow(0, start, n)?;
        let labels = Tensor::new(ex.target.as_slice(), &model.decoder.device)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let picked = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
        let sum = picked.sum_all()?.neg()?;
        total = Some(match total {
            Some(t) => (t + sum)?,
            None => sum,
        });
        count += n;
    }
    let total = total.ok_or_else(|| anyhow::anyhow!("empty batch"))?;
    Ok(((total / count as f64)?, count))
}

/// What `train_sft` reports as it goes.
pub enum TrainEvent<'a> {
    Data {
        examples: usize,
        skipped: &'a [String],
    },
    Step(&'a StepEvent),
    Saved(&'a Path),
}

/// Run (or resume) an SFT pass. Returns the output folder.
pub fn train_sft(
    cfg: &SftConfig,
    out: &Path,
    checkpoints: &Path,
    resume: bool,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(TrainEvent),
) -> anyhow::Result<PathBuf> {
    let ckpt = Checkpoint::resolve(&cfg.base, checkpoints)?;
    if matches!(
        ckpt.kind,
        crate::model::checkpoint::CheckpointKind::Adapter { .. }
    ) {
        anyhow::bail!(
            "{}: the base is itself an adapter; merge it first (humanlm export --merge)",
            ckpt.path.display()
        );
    }
    let set_name = cfg
        .prompts
        .clone()
        .or(ckpt.default_prompt_set()?)
        .unwrap_or_else(|| crate::prompts::DEFAULT_SET.to_string());
    let set = PromptSet::load(&set_name, &crate::prompts::default_root())?;
    let mut model = ckpt.load(&LoadOptions {
        dequantize: true,
        dtype: Some(DType::F32),
        ..Default::default()
    })?;
    let (examples, skipped) = sft_examples(&model, &set, &cfg.scenarios, cfg.max_seq)?;
    on_event(TrainEvent::Data {
        examples: examples.len(),
        skipped: &skipped,
    });
    if examples.is_empty() {
        anyhow::bail!(
            "{}: no usable training example ({} skipped{})",
            cfg.scenarios.display(),
            skipped.len(),
            skipped
                .first()
                .map(|s| format!("; first: {s}"))
                .unwrap_or_default()
        );
    }
    let lora = LoraParams::init(&model, cfg)?;
    // The trainable factors in the optimizer's order; gradients are gathered in this order.
    let vars = lora.named();
    let mut opt = AdamW::new(vars.clone(), cfg.adamw)?;
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    let mut start = 0;
    if resume {
        let (dir, step) = latest_checkpoint(out)?.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: nothing to resume (no checkpoint-N folder)",
                out.display()
            )
        })?;
        let state: TrainerState =
            serde_json::from_str(&std::fs::read_to_string(dir.join("trainer_state.json"))?)?;
        if state.config != *cfg {
            anyhow::bail!(
                "{}: was trained with a different configuration; resume with the same options",
                dir.display()
            );
        }
        lora.load_into(&dir, &model.decoder)?;
        let moments =
            candle_core::safetensors::load(dir.join("optimizer.safetensors"), &Device::Cpu)?;
        opt.restore(&moments, state.optimizer_t)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        start = step;
    } else if latest_checkpoint(out)?.is_some() {
        anyhow::bail!(
            "{}: already holds a training run; pass --resume to continue it, or choose another --out",
            out.display()
        );
    }
    lora.attach(&mut model, out)?;
    let mut events = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("events.jsonl"))?;
    let per_step = cfg.batch.max(1) * cfg.grad_accum.max(1);
    let started = std::time::Instant::now();
    let mut last_good = start;
    for step in start..cfg.steps {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            save(&lora, &opt, cfg, out, step, &model.decoder)?;
            anyhow::bail!("interrupted at step {step}; checkpoint saved, --resume continues");
        }
        let lr = optim::learning_rate(step, cfg.lr, cfg.warmup, cfg.steps);
        // The order of examples depends only on the seed and the epoch, so a resumed run sees
        // the same batches.
        let mut grads: Vec<Tensor> = vec![];
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        let t0 = std::time::Instant::now();
        for micro in 0..cfg.grad_accum.max(1) {
            let batch: Vec<&Example> = (0..cfg.batch.max(1))
                .map(|j| {
                    let k = step * per_step + micro * cfg.batch.max(1) + j;
                    &examples
                        [order(examples.len(), cfg.seed, k / examples.len())[k % examples.len()]]
                })
                .collect();
            let (loss, n) = sft_loss(&model, &batch)?;
            let scaled = (loss.clone() / cfg.grad_accum.max(1) as f64)?;
            let g = scaled.backward()?;
            for (i, (_, v)) in vars.iter().enumerate() {
                let gi = g
                    .get(v.as_tensor())
                    .cloned()
                    .unwrap_or(v.as_tensor().zeros_like()?);
                if grads.len() <= i {
                    grads.push(gi);
                } else {
                    grads[i] = (&grads[i] + gi)?;
                }
            }
            loss_sum += loss.to_scalar::<f32>()? as f64;
            tokens += n;
        }
        let loss = loss_sum / cfg.grad_accum.max(1) as f64;
        if !loss.is_finite() {
            anyhow::bail!(
                "loss is {loss} at step {step}: stopped; the last good checkpoint (step {last_good}) is in {}",
                out.display()
            );
        }
        let grad_norm = optim::clip(&mut grads, cfg.max_grad_norm)?;
        opt.step(&grads, lr)?;
        let secs = started.elapsed().as_secs_f64();
        let ev = StepEvent {
            step: step + 1,
            steps: cfg.steps,
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: tokens as f64 / t0.elapsed().as_secs_f64(),
            eta_s: secs / (step + 1 - start) as f64 * (cfg.steps - step - 1) as f64,
        };
        writeln!(events, "{}", serde_json::to_string(&ev)?)?;
        events.flush()?;
        on_event(TrainEvent::Step(&ev));
        if cfg.save_every > 0 && (step + 1) % cfg.save_every == 0 && step + 1 < cfg.steps {
            let dir = save(&lora, &opt, cfg, out, step + 1, &model.decoder)?;
            last_good = step + 1;
            on_event(TrainEvent::Saved(&dir));
        }
    }
    let dir = save(&lora, &opt, cfg, out, cfg.steps, &model.decoder)?;
    on_event(TrainEvent::Saved(&dir));
    Ok(out.to_path_buf())
}

/// A permutation of `0..n` for epoch `epoch`.
fn order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    v.shuffle(&mut rng);
    v
}

#[derive(Debug, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    optimizer_t: usize,
    config: SftConfig,
}

/// Write `checkpoint-<step>/` whole, then refresh the top-level adapter.
fn save(
    lora: &LoraParams,
    opt: &AdamW,
    cfg: &SftConfig,
    out: &Path,
    step: usize,
    decoder: &crate::model::Decoder,
) -> anyhow::Result<PathBuf> {
    let final_dir = out.join(format!("checkpoint-{step}"));
    let tmp = out.join(format!(".checkpoint-{step}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    let write = || -> anyhow::Result<()> {
        std::fs::create_dir_all(&tmp)?;
        lora.save(&tmp, decoder)?;
        candle_core::safetensors::save(&opt.state(), tmp.join("optimizer.safetensors"))?;
        let state = TrainerState {
            step,
            optimizer_t: opt.t,
            config: cfg.clone(),
        };
        std::fs::write(
            tmp.join("trainer_state.json"),
            serde_json::to_string_pretty(&state)?,
        )?;
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir)?;
        // The top-level adapter: each file replaced by a rename, never half-written.
        for f in ["adapter_model.safetensors", "adapter_config.json"] {
            let t = out.join(format!(".{f}.tmp"));
            std::fs::copy(final_dir.join(f), &t)?;
            std::fs::rename(&t, out.join(f))?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        anyhow::anyhow!(
            "{}: cannot save checkpoint (the previous one is intact): {e}",
            final_dir.display()
        )
    })?;
    Ok(final_dir)
}

/// The `checkpoint-N` folder with the largest N.
fn latest_checkpoint(out: &Path) -> anyhow::Result<Option<(PathBuf, usize)>> {
    let Ok(rd) = std::fs::read_dir(out) else {
        return Ok(None);
    };
    Ok(rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("checkpoint-")?.parse::<usize>().ok()?;
            e.path()
                .join("trainer_state.json")
                .is_file()
                .then(|| (e.path(), n))
        })
        .max_by_key(|(_, n)| *n))
}
