//! Short local fine-tuning passes with LoRA on the differentiable decoder path: supervised
//! fine-tuning ([`sft`]) and HumanLM's GRPO ([`grpo`]).
//!
//! The base weights stay frozen plain tensors (quantized matrices are dequantized: there is no
//! backward through a quantized matmul); only the LoRA factors are `Var`s. Both methods share
//! one configuration, one output folder layout and one step event:
//!
//! - a PEFT-layout adapter (`adapter_config.json`, `adapter_model.safetensors`) loadable as a
//!   checkpoint;
//! - `events.jsonl`, one [`StepEvent`] per step (the TUI tails it);
//! - `checkpoint-N/` folders with the adapter, the optimizer state and `trainer_state.json`,
//!   each written whole (a temporary folder renamed into place), so `--resume` continues
//!   exactly where it stopped and a failed save leaves the previous checkpoint intact.

pub mod grpo;
pub mod optim;
pub mod plan;
pub mod policy;
pub mod reward;
pub mod sft;

pub use grpo::GrpoParams;
pub use sft::{sft_examples, sft_loss, Example, ThinkConfig};

use crate::model::lora::{peft_key, Adapter, AdapterConfig, Dropout, LoraWeights};
use crate::model::weights::LoadOptions;
use crate::model::{Checkpoint, Model};
use crate::prompts::PromptSet;
use crate::scenario::Scenario;
use candle_core::{Device, Tensor, Var};
use optim::{AdamW, AdamWParams};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The name the adapter being trained is attached under.
const TRAINING: &str = "training";

/// The training method and its own options.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Method {
    /// The real reply as the target, loss on its tokens only; with `think`, the reply is
    /// preceded by a thinking trace written by a judge model.
    Sft {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        think: Option<ThinkConfig>,
    },
    /// HumanLM's GRPO: rollouts per state, judged against the real reply.
    Grpo(GrpoParams),
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Sft { .. } => "sft",
            Method::Grpo(_) => "grpo",
        }
    }
}

/// Where the training scenarios come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Data {
    /// Scenario files: one file or a folder of them.
    Scenarios { path: PathBuf },
    /// A HUMANUAL file (JSONL, JSON or Parquet rows), converted on the fly.
    Humanual {
        file: PathBuf,
        domain: crate::scenario::Domain,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
}

impl Data {
    pub fn path(&self) -> &Path {
        match self {
            Data::Scenarios { path } => path,
            Data::Humanual { file, .. } => file,
        }
    }

    /// Every scenario, and one line for each row or file that could not be used.
    pub fn load(&self) -> anyhow::Result<(Vec<Scenario>, Vec<String>)> {
        let mut out = vec![];
        let mut skipped = vec![];
        match self {
            Data::Scenarios { path } => {
                for l in crate::scenario::load_all(path) {
                    match l {
                        Ok(l) => out.push(l.scenario),
                        Err(e) => skipped.push(e.to_string()),
                    }
                }
            }
            Data::Humanual {
                file,
                domain,
                limit,
            } => {
                let rows =
                    crate::scenario::import::read_rows(file).map_err(|e| anyhow::anyhow!("{e}"))?;
                for (i, row) in rows.iter().enumerate() {
                    if limit.is_some_and(|l| out.len() >= l) {
                        break;
                    }
                    match crate::scenario::import::row_to_scenario(row, *domain) {
                        Ok(sc) => out.push(sc),
                        Err(e) => skipped.push(format!("{} row {}: {e}", file.display(), i + 1)),
                    }
                }
            }
        }
        Ok((out, skipped))
    }
}

/// Everything that defines a training run (saved with every checkpoint; a resume must match).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    #[serde(flatten)]
    pub method: Method,
    pub base: String,
    pub data: Data,
    /// Prompt set whose prompts frame the target (default: the base's own).
    pub prompts: Option<String>,
    pub rank: usize,
    pub alpha: f64,
    /// Dropout on the adapters' inputs during the gradient passes (PEFT's `lora_dropout`).
    #[serde(default)]
    pub dropout: f64,
    /// HF module names' last parts to adapt (`q_proj`, ..., `down_proj`).
    pub targets: Vec<String>,
    pub lr: f64,
    pub warmup: usize,
    pub steps: usize,
    /// SFT: examples per micro-batch. GRPO: prompts (groups) per step.
    pub batch: usize,
    /// SFT: micro-batches per optimizer step.
    pub grad_accum: usize,
    pub max_grad_norm: f64,
    /// Examples longer than this (prompt + target or budget) are skipped and counted.
    pub max_seq: usize,
    pub seed: u64,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub save_every: usize,
    #[serde(default)]
    pub adamw: AdamWParams,
    /// Train every weight instead of LoRA factors (small models: weights, gradients and AdamW
    /// state take about 16 bytes a parameter in f32). `rank`, `alpha`, `dropout` and `targets`
    /// do not apply.
    #[serde(default)]
    pub full: bool,
    /// Where the pass runs (`cpu`, `cuda`, `cuda:N`). Not part of a run's identity: a resume
    /// may move it.
    #[serde(default = "cpu")]
    pub device: String,
    /// Weights' and activations' dtype (`f32`, `bf16`, `f16`); None: f32 on the CPU, bf16 on a
    /// GPU. May change across a resume (the optimizer keeps f32 state either way).
    #[serde(default)]
    pub dtype: Option<String>,
}

/// LoRA's alpha when none is given: twice the rank, a scale α/r of 2 at every rank (at the
/// default rank 8, alpha 16).
pub fn default_alpha(rank: usize) -> f64 {
    2.0 * rank as f64
}

fn cpu() -> String {
    "cpu".into()
}

impl TrainConfig {
    /// Defaults of a short LoRA pass (rank 8 on every projection, alpha twice the rank). The one
    /// source of training defaults: the CLI's flags and the workbench's Train form show these.
    pub fn new(method: Method, base: &str, data: Data) -> TrainConfig {
        let grpo = matches!(method, Method::Grpo(_));
        let rank = 8;
        TrainConfig {
            method,
            base: base.into(),
            data,
            prompts: None,
            rank,
            alpha: default_alpha(rank),
            dropout: 0.0,
            targets: crate::model::lora::PROJECTIONS.map(String::from).to_vec(),
            lr: if grpo { 1e-4 } else { 1e-3 },
            warmup: 2,
            steps: 30,
            batch: 1,
            grad_accum: 1,
            max_grad_norm: 1.0,
            max_seq: 1024,
            seed: 0,
            save_every: 0,
            adamw: AdamWParams::default(),
            full: false,
            device: cpu(),
            dtype: None,
        }
    }

    pub fn sft(base: &str, data: Data) -> TrainConfig {
        TrainConfig::new(Method::Sft { think: None }, base, data)
    }

    pub fn grpo(base: &str, data: Data) -> TrainConfig {
        TrainConfig::new(Method::Grpo(GrpoParams::default()), base, data)
    }

    /// The defaults with no base or data yet: what the CLI's `--help` and the Train form show.
    pub fn defaults() -> TrainConfig {
        TrainConfig::sft(
            "",
            Data::Scenarios {
                path: Default::default(),
            },
        )
    }

    /// Sets the LoRA rank, and alpha to `alpha` or else to its default for that rank, so the
    /// adapter's scale α/r is the same whichever face (CLI or workbench) chose the rank.
    pub fn set_rank(&mut self, rank: usize, alpha: Option<f64>) {
        self.rank = rank;
        self.alpha = alpha.unwrap_or_else(|| default_alpha(rank));
    }

    /// Whether `other` is the same run (what a resume requires): everything but where it runs.
    fn same_run(&self, other: &TrainConfig) -> bool {
        let placed = TrainConfig {
            device: other.device.clone(),
            dtype: other.dtype.clone(),
            ..self.clone()
        };
        placed == *other
    }

    /// The device and load options this configuration asks for.
    fn load_options(&self) -> anyhow::Result<LoadOptions> {
        let device = crate::model::device::parse_device(&self.device)?;
        let dtype = match &self.dtype {
            None => None,
            Some(d) => Some(
                crate::model::device::parse_dtype(d)
                    .ok_or_else(|| anyhow::anyhow!("--dtype '{d}': expected f32, bf16 or f16"))?,
            ),
        };
        Ok(LoadOptions {
            device,
            dtype,
            dequantize: true,
        })
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.rank == 0 {
            anyhow::bail!("--rank must be at least 1");
        }
        if self.full && self.dropout > 0.0 {
            anyhow::bail!("--dropout applies to LoRA factors, not to --full");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            anyhow::bail!("--dropout must be in [0, 1), not {}", self.dropout);
        }
        if self.steps == 0 {
            anyhow::bail!("--steps must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            anyhow::bail!("--lr must be a positive number, not {}", self.lr);
        }
        if let Method::Grpo(g) = &self.method {
            g.check()?;
        }
        Ok(())
    }
}

/// Reward statistics over a set of rollouts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RewardStats {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl RewardStats {
    pub fn of(xs: &[f64]) -> RewardStats {
        let n = xs.len();
        if n == 0 {
            return RewardStats::default();
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        RewardStats {
            mean,
            std: var.sqrt(),
            n,
        }
    }
}

/// One rollout shown in the events (and the TUI): what was written and what it scored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutSample {
    pub scenario: String,
    pub state: String,
    pub text: String,
    pub reward: f64,
}

/// One line of `events.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepEvent {
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens the gradient passes ran on (GRPO: rollout tokens).
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub eta_s: f64,
    /// GRPO: reward over every rollout of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<RewardStats>,
    /// GRPO: reward per state (the six states and `response`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reward_by_state: BTreeMap<String, RewardStats>,
    /// GRPO: mean low-variance KL estimate against the base (adapters off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// GRPO: a few rollouts with their rewards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<RolloutSample>,
}

/// Read a run's `events.jsonl` (lines that do not parse, e.g. one being written, are skipped).
pub fn read_events(out: &Path) -> Vec<StepEvent> {
    let mut events = vec![];
    let text = std::fs::read_to_string(out.join("events.jsonl")).unwrap_or_default();
    for ev in text.lines().filter_map(|l| serde_json::from_str(l).ok()) {
        push_event(&mut events, ev);
    }
    events
}

/// Append a step to a run's history. A resumed run repeats the steps after its last checkpoint,
/// and the repeat replaces what the interrupted run logged for them.
pub fn push_event(events: &mut Vec<StepEvent>, ev: StepEvent) {
    events.retain(|e| e.step < ev.step);
    events.push(ev);
}

/// What a training run reports as it goes.
pub enum TrainEvent<'a> {
    Data {
        examples: usize,
        skipped: &'a [String],
    },
    /// Something worth a line (e.g. traces being written).
    Note(&'a str),
    Step(&'a StepEvent),
    Saved(&'a Path),
}

/// Which layers get LoRA factors, and how large.
#[derive(Debug, Clone)]
pub struct LoraShape {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// HF module names' last parts (`q_proj`, ..., `down_proj`).
    pub targets: Vec<String>,
}

/// The trainable LoRA factors, by HF module name.
pub struct LoraParams {
    pub vars: Vec<(String, Var, Var)>,
    pub config: AdapterConfig,
    /// Shared by every adapted layer; the trainer switches it on for gradient passes only.
    pub dropout: Option<Arc<Dropout>>,
}

impl LoraParams {
    /// The factors a training configuration asks for (see [`LoraParams::new`]).
    pub fn init(model: &Model, cfg: &TrainConfig) -> anyhow::Result<LoraParams> {
        LoraParams::new(
            &model.decoder,
            &LoraShape {
                rank: cfg.rank,
                alpha: cfg.alpha,
                dropout: cfg.dropout,
                targets: cfg.targets.clone(),
            },
            cfg.seed,
            Some(cfg.base.clone()),
        )
    }

    /// PEFT's initialisation: A uniform in ±1/√in (Kaiming with a = √5), B zero, so training
    /// starts from the base model exactly. The factors live on the decoder's device in its
    /// dtype: the adapter's matmuls take the layer's input as the base weights do.
    pub fn new(
        dec: &crate::model::Decoder,
        shape: &LoraShape,
        seed: u64,
        base: Option<String>,
    ) -> anyhow::Result<LoraParams> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (dev, dtype) = (&dec.device, dec.dtype);
        let mut vars = vec![];
        for (name, in_dim, out_dim) in dec.linear_shapes() {
            let last = name.rsplit('.').next().unwrap_or_default();
            if !shape.targets.iter().any(|t| t == last) {
                continue;
            }
            let bound = 1.0 / (in_dim as f64).sqrt();
            let a: Vec<f32> = (0..shape.rank * in_dim)
                .map(|_| rand::Rng::random_range(&mut rng, -bound..bound) as f32)
                .collect();
            let a = Tensor::from_vec(a, (shape.rank, in_dim), dev)?.to_dtype(dtype)?;
            let a = Var::from_tensor(&a)?;
            let b = Var::zeros((out_dim, shape.rank), dtype, dev)?;
            vars.push((name, a, b));
        }
        if vars.is_empty() {
            anyhow::bail!(
                "no linear layer of the base matches the targets {:?}",
                shape.targets
            );
        }
        let mut modules: Vec<String> = shape.targets.clone();
        modules.sort();
        Ok(LoraParams {
            vars,
            config: AdapterConfig {
                base_model_name_or_path: base,
                r: shape.rank,
                lora_alpha: shape.alpha,
                use_rslora: false,
                target_modules: modules,
                lora_dropout: shape.dropout,
            },
            dropout: (shape.dropout > 0.0).then(|| Arc::new(Dropout::new(shape.dropout))),
        })
    }

    /// Trainable values in all factors.
    pub fn parameter_count(&self) -> usize {
        self.vars
            .iter()
            .map(|(_, a, b)| a.elem_count() + b.elem_count())
            .sum()
    }

    /// Attach (or re-attach) the factors to the decoder as the active adapter.
    pub fn attach(&self, dec: &mut crate::model::Decoder, dir: &Path) -> anyhow::Result<()> {
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
                            dropout: self.dropout.clone(),
                        },
                    )
                })
                .collect(),
            // The factors train in the decoder's own row order; `save` converts.
            peft_layout: false,
        };
        dec.attach_adapter(&adapter)?;
        dec.set_active_adapter(Some(TRAINING))?;
        Ok(())
    }

    /// Switch dropout on for the next gradient pass, seeded so a resumed run repeats it.
    pub fn dropout_on(&self, seed: u64) {
        if let Some(d) = &self.dropout {
            d.set(Some(seed));
        }
    }

    pub fn dropout_off(&self) {
        if let Some(d) = &self.dropout {
            d.set(None);
        }
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
                decoder.qk_rows_layout(n, b.as_tensor(), true)?,
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
        let vars = self.vars.iter().flat_map(|(n, a, b)| {
            // A's rows are the rank; B's are the layer's outputs (q/k permuted on llama GGUFs).
            [(peft_key(n, 'A'), "", a), (peft_key(n, 'B'), n.as_str(), b)]
        });
        set_from_file(&dir.join("adapter_model.safetensors"), vars, decoder)
    }
}

/// Set each `(key, module, var)` from tensor `key` of a saved safetensors `file`, its rows moved
/// from Hugging Face order to the decoder's for `module` (see `Decoder::qk_rows_layout`), on the
/// variable's device in its dtype.
fn set_from_file<'a>(
    file: &Path,
    vars: impl Iterator<Item = (String, &'a str, &'a Var)>,
    decoder: &crate::model::Decoder,
) -> anyhow::Result<()> {
    let t = candle_core::safetensors::load(file, &Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    for (k, module, v) in vars {
        let x = t
            .get(&k)
            .ok_or_else(|| anyhow::anyhow!("{}: lacks '{k}'", file.display()))?;
        if x.dims() != v.dims() {
            anyhow::bail!("{}: '{k}' has the wrong shape", file.display());
        }
        let x = decoder.qk_rows_layout(module, x, false)?;
        v.set(&x.to_device(v.device())?.to_dtype(v.dtype())?)?;
    }
    Ok(())
}

/// What a run trains.
pub enum Trainable {
    /// LoRA factors on the frozen base.
    Lora(LoraParams),
    /// Every weight (`--full`). GRPO's reference policy is then a frozen second copy of the
    /// base, since there is no adapter to switch off.
    Full {
        vars: Vec<(String, Var)>,
        reference: Option<Box<Model>>,
    },
}

impl Trainable {
    /// Switch LoRA dropout on for the next gradient pass (nothing to do for full training).
    pub fn dropout_on(&self, seed: u64) {
        if let Trainable::Lora(l) = self {
            l.dropout_on(seed)
        }
    }

    pub fn dropout_off(&self) {
        if let Trainable::Lora(l) = self {
            l.dropout_off()
        }
    }

    /// The optimizer's view: every trainable tensor with a stable name.
    fn named(&self) -> Vec<(String, Var)> {
        match self {
            Trainable::Lora(l) => l.named(),
            Trainable::Full { vars, .. } => vars.clone(),
        }
    }

    /// Write the trained state into `dir`: a PEFT adapter, or a whole Hugging Face checkpoint.
    fn save(
        &self,
        dir: &Path,
        decoder: &crate::model::Decoder,
        base: &Checkpoint,
    ) -> anyhow::Result<()> {
        match self {
            Trainable::Lora(l) => l.save(dir, decoder),
            Trainable::Full { vars, .. } => {
                let tensors = vars
                    .iter()
                    .map(|(n, v)| Ok((n.clone(), decoder.qk_rows_layout(n, v.as_tensor(), true)?)))
                    .collect::<anyhow::Result<HashMap<_, _>>>()?;
                crate::export::merge::write_trained(base, &tensors, dir)?;
                Ok(())
            }
        }
    }

    /// Load what [`Trainable::save`] wrote (resume).
    fn load(&self, dir: &Path, decoder: &crate::model::Decoder) -> anyhow::Result<()> {
        match self {
            Trainable::Lora(l) => l.load_into(dir, decoder),
            Trainable::Full { vars, .. } => set_from_file(
                &dir.join("model.safetensors"),
                vars.iter().map(|(n, v)| (n.clone(), n.as_str(), v)),
                decoder,
            ),
        }
    }
}

/// Run (or resume) a training pass. Returns the output folder.
pub fn run(
    cfg: &TrainConfig,
    out: &Path,
    roots: &crate::roots::Roots,
    resume: bool,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(TrainEvent),
) -> anyhow::Result<PathBuf> {
    cfg.check()?;
    let (mut trainer, set) = Trainer::open(cfg, out, roots, resume)?;
    let set = Arc::new(set);
    match &cfg.method {
        Method::Sft { think } => {
            sft::train(&mut trainer, &set, think.as_ref(), roots, cancel, on_event)?
        }
        Method::Grpo(g) => grpo::train(&mut trainer, &set, g, roots, cancel, on_event)?,
    }
    Ok(out.to_path_buf())
}

/// What both methods share: the model with the adapter being trained, the optimizer, the
/// output folder and the step bookkeeping.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub model: Model,
    pub params: Trainable,
    /// The base checkpoint (a full run's saves take its config and tokenizer).
    base: Checkpoint,
    pub opt: AdamW,
    vars: Vec<(String, Var)>,
    pub out: PathBuf,
    /// The first step this process runs (non-zero after a resume).
    pub start: usize,
    last_good: usize,
    events: std::fs::File,
    started: std::time::Instant,
}

impl Trainer {
    fn open(
        cfg: &TrainConfig,
        out: &Path,
        roots: &crate::roots::Roots,
        resume: bool,
    ) -> anyhow::Result<(Trainer, PromptSet)> {
        let ckpt = Checkpoint::resolve(&cfg.base, &roots.checkpoints)?;
        if matches!(
            ckpt.kind,
            crate::model::checkpoint::CheckpointKind::Adapter { .. }
        ) {
            anyhow::bail!(
                "{}: the base is itself an adapter; merge it first (humanlm export --merge)",
                ckpt.path.display()
            );
        }
        let set_name = crate::prompts::set_for(cfg.prompts.as_deref(), ckpt.default_prompt_set()?);
        let set = PromptSet::load(&set_name, &roots.prompts)?;
        // One device for the model and a full run's reference copy.
        let opts = cfg.load_options()?;
        let mut model = ckpt.load(&opts)?;
        let params = if cfg.full {
            let vars = model.decoder.make_trainable()?;
            let reference = match cfg.method {
                Method::Grpo(_) => Some(Box::new(ckpt.load(&opts)?)),
                Method::Sft { .. } => None,
            };
            Trainable::Full { vars, reference }
        } else {
            Trainable::Lora(LoraParams::init(&model, cfg)?)
        };
        let vars = params.named();
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
            let path = dir.join("trainer_state.json");
            let state: TrainerState = std::fs::read_to_string(&path)
                .map_err(anyhow::Error::from)
                .and_then(|t| Ok(serde_json::from_str(&t)?))
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if !state.config.same_run(cfg) {
                anyhow::bail!(
                    "{}: was trained with a different configuration; resume with the same options",
                    dir.display()
                );
            }
            params.load(&dir, &model.decoder)?;
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
        if let Trainable::Lora(l) = &params {
            l.attach(&mut model.decoder, out)?;
        }
        let events = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.join("events.jsonl"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", out.join("events.jsonl").display()))?;
        Ok((
            Trainer {
                cfg: cfg.clone(),
                model,
                params,
                base: ckpt.clone(),
                opt,
                vars,
                out: out.to_path_buf(),
                start,
                last_good: start,
                events,
                started: std::time::Instant::now(),
            },
            set,
        ))
    }

    /// Run `f` on the reference policy: the base with the adapter switched off, or the frozen
    /// copy a full run keeps.
    pub fn with_reference<R>(
        &mut self,
        f: impl FnOnce(&Model) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        match &self.params {
            Trainable::Full {
                reference: Some(r), ..
            } => f(r),
            Trainable::Full {
                reference: None, ..
            } => {
                anyhow::bail!("this run keeps no reference model")
            }
            Trainable::Lora(_) => {
                self.model.decoder.set_active_adapter(None)?;
                let r = f(&self.model);
                self.model.decoder.set_active_adapter(Some(TRAINING))?;
                r
            }
        }
    }

    /// Stop with a saved checkpoint when cancelled.
    fn check_cancel(&mut self, cancel: Option<&AtomicBool>, step: usize) -> anyhow::Result<()> {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            self.save(step)?;
            anyhow::bail!("interrupted at step {step}; checkpoint saved, --resume continues");
        }
        Ok(())
    }

    /// Gradients of `loss` for every trainable factor, in the optimizer's order.
    fn grads(&self, loss: &Tensor) -> anyhow::Result<Vec<Tensor>> {
        let g = loss.backward()?;
        self.vars
            .iter()
            .map(|(_, v)| {
                Ok(g.get(v.as_tensor())
                    .cloned()
                    .unwrap_or(v.as_tensor().zeros_like()?))
            })
            .collect()
    }

    /// Clip and apply `grads`; returns the norm before clipping. A non-finite loss stops the
    /// run before the update, keeping the last good checkpoint.
    fn update(
        &mut self,
        mut grads: Vec<Tensor>,
        loss: f64,
        lr: f64,
        step: usize,
    ) -> anyhow::Result<f64> {
        if !loss.is_finite() {
            anyhow::bail!(
                "loss is {loss} at step {step}: stopped; the last good checkpoint (step {}) is in {}",
                self.last_good,
                self.out.display()
            );
        }
        let norm = optim::clip(&mut grads, self.cfg.max_grad_norm)?;
        if !norm.is_finite() {
            anyhow::bail!(
                "gradient norm is {norm} at step {step}: stopped; the last good checkpoint (step {}) is in {}",
                self.last_good,
                self.out.display()
            );
        }
        self.opt.step(&grads, lr)?;
        Ok(norm)
    }

    /// Record a finished step: the event line, then a checkpoint when one is due.
    fn finish_step(
        &mut self,
        mut ev: StepEvent,
        step_secs: f64,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> anyhow::Result<()> {
        let done = ev.step - self.start;
        ev.tokens_per_s = ev.tokens as f64 / step_secs.max(1e-9);
        ev.eta_s = self.started.elapsed().as_secs_f64() / done as f64 * (ev.steps - ev.step) as f64;
        writeln!(self.events, "{}", serde_json::to_string(&ev)?)?;
        self.events.flush()?;
        on_event(TrainEvent::Step(&ev));
        let every = self.cfg.save_every;
        if ev.step == ev.steps || (every > 0 && ev.step % every == 0) {
            let dir = self.save(ev.step)?;
            on_event(TrainEvent::Saved(&dir));
        }
        Ok(())
    }

    /// Write `checkpoint-<step>/` whole, then refresh the top-level adapter.
    fn save(&mut self, step: usize) -> anyhow::Result<PathBuf> {
        let out = &self.out;
        let final_dir = out.join(format!("checkpoint-{step}"));
        let write = || -> anyhow::Result<()> {
            let tmp = crate::files::temp_dir_beside(&final_dir)?;
            let dir = tmp.path();
            self.params.save(dir, &self.model.decoder, &self.base)?;
            candle_core::safetensors::save(&self.opt.state(), dir.join("optimizer.safetensors"))?;
            let state = TrainerState {
                step,
                optimizer_t: self.opt.t,
                config: self.cfg.clone(),
            };
            std::fs::write(
                dir.join("trainer_state.json"),
                serde_json::to_string_pretty(&state)?,
            )?;
            crate::files::replace_dir(tmp, &final_dir)?;
            // The top level is the latest model (adapter or whole checkpoint): each file
            // replaced whole. Checkpoint files are never modified in place, so a hard link is
            // as good as a copy (and free for a full model).
            for entry in std::fs::read_dir(&final_dir)? {
                let f = entry?.file_name();
                let name = f.to_string_lossy();
                if name == "optimizer.safetensors" || name == "trainer_state.json" {
                    continue;
                }
                crate::files::place_copy(&final_dir.join(&f), &out.join(&f))?;
            }
            Ok(())
        };
        write().map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot save checkpoint (the previous one is intact): {e}",
                final_dir.display()
            )
        })?;
        self.last_good = step;
        Ok(final_dir)
    }
}

/// Index `k` of an endless stream over `n` items, reshuffled every epoch; depends only on the
/// seed, so a resumed run sees the same batches.
pub(crate) fn nth_example(n: usize, seed: u64, k: usize) -> usize {
    let epoch = k / n;
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    v.shuffle(&mut rng);
    v[k % n]
}

#[derive(Debug, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    optimizer_t: usize,
    config: TrainConfig,
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

/// Every scenario with a reference reply, with its reply and its simulation plan in `mode`;
/// the others are added to `skipped` with the reason. Both methods train on these.
fn planned<'a>(
    model: &Model,
    set: &PromptSet,
    scenarios: &'a [Scenario],
    mode: crate::sim::Mode,
    skipped: &mut Vec<String>,
) -> Vec<(&'a Scenario, &'a str, crate::sim::Plan)> {
    let opts = crate::sim::Options::new(mode, Default::default());
    let mut out = vec![];
    for sc in scenarios {
        let Some(reply) = sc.target.response.as_deref() else {
            skipped.push(format!("{}: no reference reply", sc.id));
            continue;
        };
        match crate::sim::plan(set, sc, &opts, model) {
            Ok(plan) => out.push((sc, reply, plan)),
            Err(e) => skipped.push(format!("{}: {e}", sc.id)),
        }
    }
    out
}

/// A usable-data error naming the source, the count skipped and the first reason.
fn no_examples(data: &Data, skipped: &[String]) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: no usable training example ({} skipped{})",
        data.path().display(),
        skipped.len(),
        skipped
            .first()
            .map(|s| format!("; first: {s}"))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_runs_repeated_steps_replace_the_interrupted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let line = |step: usize, loss: f64| {
            format!(
                r#"{{"step":{step},"steps":5,"loss":{loss},"lr":0.1,"grad_norm":1.0,"tokens":3,"tokens_per_s":1.0,"eta_s":0.0}}"#
            )
        };
        // Stopped after step 3 with checkpoint-1; the resume ran 2..5 again.
        let text = [
            line(1, 9.0),
            line(2, 8.0),
            line(3, 7.0),
            line(2, 8.5),
            line(3, 7.5),
            "{\"step\": 4, \"truncated".into(),
            line(4, 6.5),
            line(5, 6.0),
        ]
        .join("\n");
        std::fs::write(dir.path().join("events.jsonl"), text).unwrap();
        let events = read_events(dir.path());
        let got: Vec<(usize, f64)> = events.iter().map(|e| (e.step, e.loss)).collect();
        assert_eq!(got, [(1, 9.0), (2, 8.5), (3, 7.5), (4, 6.5), (5, 6.0)]);
    }
}
