//! What defines a training run: the method, the data, every option with its default, and the
//! checks a configuration must pass before a run starts.

use super::grpo::GrpoParams;
use super::optim::AdamWParams;
use super::sft::ThinkConfig;
use super::{Error, Result};
use crate::model::lora_params::{LoraParams, LoraShape};
use crate::model::weights::LoadOptions;
use crate::model::Model;
use crate::scenario::Scenario;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
        /// Rows whose persona fails the recipe's filter at this many list items are skipped
        /// (`scenario::import::persona_filter`). Configs saved before the filter existed read
        /// as 0, which is what those runs did.
        #[serde(default)]
        min_persona_items: usize,
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
    pub fn load(&self) -> Result<(Vec<Scenario>, Vec<String>)> {
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
                min_persona_items,
            } => {
                use crate::scenario::import;
                let rows = import::read_rows(file)?;
                for (i, row) in rows.iter().enumerate() {
                    if limit.is_some_and(|l| out.len() >= l) {
                        break;
                    }
                    match import::persona_filter(row, *min_persona_items)
                        .and_then(|()| import::row_to_scenario(row, *domain))
                    {
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
    /// Validation during the run (`--val`). Not part of a run's identity: a resume may change
    /// how it validates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val: Option<super::ValConfig>,
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
            val: None,
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

    /// Whether `other` is the same run (what a resume requires): everything but where it runs
    /// and how it validates.
    pub(super) fn same_run(&self, other: &TrainConfig) -> bool {
        let placed = TrainConfig {
            device: other.device.clone(),
            dtype: other.dtype.clone(),
            val: other.val.clone(),
            ..self.clone()
        };
        placed == *other
    }

    /// The device and load options this configuration asks for.
    pub(super) fn load_options(&self) -> Result<LoadOptions> {
        let device = crate::model::device::parse_device(&self.device)?;
        let dtype =
            match &self.dtype {
                None => None,
                Some(d) => Some(crate::model::device::parse_dtype(d).ok_or_else(|| {
                    Error::Msg(format!("--dtype '{d}': expected f32, bf16 or f16"))
                })?),
            };
        Ok(LoadOptions {
            device,
            dtype,
            dequantize: true,
        })
    }

    pub(super) fn check(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Msg("--rank must be at least 1".into()));
        }
        if self.full && self.dropout > 0.0 {
            return Err(Error::Msg(
                "--dropout applies to LoRA factors, not to --full".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Msg(format!(
                "--dropout must be in [0, 1), not {}",
                self.dropout
            )));
        }
        if self.steps == 0 {
            return Err(Error::Msg("--steps must be at least 1".into()));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::Msg(format!(
                "--lr must be a positive number, not {}",
                self.lr
            )));
        }
        if let Method::Grpo(g) = &self.method {
            g.check()?;
        }
        Ok(())
    }
}

impl LoraParams {
    /// The factors a training configuration asks for (see [`LoraParams::new`]).
    pub fn init(model: &Model, cfg: &TrainConfig) -> Result<LoraParams> {
        Ok(LoraParams::new(
            &model.decoder,
            &LoraShape {
                rank: cfg.rank,
                alpha: cfg.alpha,
                dropout: cfg.dropout,
                targets: cfg.targets.clone(),
            },
            cfg.seed,
            Some(cfg.base.clone()),
        )?)
    }
}
