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
    /// SFT: examples per micro-batch (default 1). GRPO: prompts (groups) per step (default
    /// [`super::grpo::DEFAULT_BATCH`]).
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
            batch: if grpo { super::grpo::DEFAULT_BATCH } else { 1 },
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
    /// and how it validates. GRPO's mini-batch is compared as the prompts an update takes, so
    /// 0 and any value at least the batch (both one update a step) are the same run.
    pub(super) fn same_run(&self, other: &TrainConfig) -> bool {
        let placed = TrainConfig {
            device: other.device.clone(),
            dtype: other.dtype.clone(),
            val: other.val.clone(),
            ..self.clone()
        };
        placed.updates_normalised() == other.updates_normalised()
    }

    /// This configuration with GRPO's `ppo_mini_batch` as the prompts an update takes.
    fn updates_normalised(&self) -> TrainConfig {
        let mut c = self.clone();
        if let Method::Grpo(g) = &mut c.method {
            g.ppo_mini_batch = g.mini_batch_prompts(c.batch);
        }
        c
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
            quantize: None,
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

/// A configuration saved with a checkpoint by an earlier build (the `config` of
/// `trainer_state.json`), brought to this build's fields before it is read. GRPO's
/// `mini_batches` counted optimizer updates a step, splitting the step's rollouts evenly;
/// `ppo_mini_batch` counts prompts an update, whole groups. One update becomes 0 (the whole
/// batch); k updates of a batch k divides become batch / k prompts each, the same split when
/// every group kept its n rollouts. Any other count split groups apart, which whole-prompt
/// updates cannot repeat, so such a run is refused rather than resumed as something else.
pub fn upgrade_saved_config(config: &mut serde_json::Value) -> Result<()> {
    let Some(obj) = config.as_object_mut() else {
        return Ok(());
    };
    if obj.get("method").and_then(|m| m.as_str()) != Some("grpo") {
        return Ok(());
    }
    let Some(k) = obj.remove("mini_batches") else {
        return Ok(());
    };
    let k = k.as_u64().unwrap_or(1).max(1);
    let batch = obj
        .get("batch")
        .and_then(|b| b.as_u64())
        .unwrap_or(1)
        .max(1);
    let per_update = if k == 1 {
        0
    } else if batch.is_multiple_of(k) {
        batch / k
    } else {
        return Err(Error::Msg(format!(
            "saved with --mini-batches {k} at --batch {batch}, updates that split prompts' groups; \
             --ppo-mini-batch counts whole prompts an update and cannot continue it: start a new run"
        )));
    };
    obj.entry("ppo_mini_batch").or_insert(per_update.into());
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn grpo(batch: usize, ppo_mini_batch: usize) -> TrainConfig {
        let mut c = TrainConfig::grpo("base", Data::Scenarios { path: "s".into() });
        c.batch = batch;
        if let Method::Grpo(g) = &mut c.method {
            g.ppo_mini_batch = ppo_mini_batch;
        }
        c
    }

    /// The config of a run saved with `mini_batches`, as that build wrote it.
    fn saved(batch: usize, mini_batches: usize) -> serde_json::Value {
        let mut v = serde_json::to_value(grpo(batch, 0)).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("ppo_mini_batch");
        o.remove("entropy_coef");
        o.insert("mini_batches".into(), mini_batches.into());
        v
    }

    fn upgraded(mut v: serde_json::Value) -> Result<TrainConfig> {
        upgrade_saved_config(&mut v)?;
        Ok(serde_json::from_value(v).unwrap())
    }

    /// One update a step reads as the whole batch; k updates of a batch k divides as batch / k
    /// prompts each; a split through groups is refused in one line; SFT configs pass untouched.
    #[test]
    fn saved_mini_batches_become_prompts_per_update() {
        let one = upgraded(saved(4, 1)).unwrap();
        assert_eq!(one, grpo(4, 0));
        assert!(one.same_run(&grpo(4, 0)) && one.same_run(&grpo(4, 4)));
        assert_eq!(upgraded(saved(8, 2)).unwrap(), grpo(8, 4));
        let e = upgraded(saved(1, 2)).unwrap_err().to_string();
        assert!(e.contains("--mini-batches 2") && !e.contains('\n'), "{e}");
        let sft = TrainConfig::defaults();
        let mut v = serde_json::to_value(&sft).unwrap();
        upgrade_saved_config(&mut v).unwrap();
        assert_eq!(serde_json::from_value::<TrainConfig>(v).unwrap(), sft);
    }

    /// 0 and any mini-batch at least the batch are one update a step, the same run; a smaller
    /// one, or another entropy weight, is another run.
    #[test]
    fn mini_batches_compare_by_what_they_do() {
        assert!(grpo(7, 0).same_run(&grpo(7, 7)));
        assert!(grpo(7, 9).same_run(&grpo(7, 0)));
        assert!(!grpo(7, 0).same_run(&grpo(7, 3)));
        assert!(!grpo(8, 0).same_run(&grpo(7, 0)));
        let mut e = grpo(7, 0);
        if let Method::Grpo(g) = &mut e.method {
            g.entropy_coef = 0.01;
        }
        assert!(!e.same_run(&grpo(7, 0)));
        // The batch defaults: GRPO's is one prompt per state, SFT's stays 1.
        assert_eq!(
            grpo(7, 0).batch,
            TrainConfig::grpo("b", Data::Scenarios { path: "s".into() }).batch
        );
        assert_eq!(TrainConfig::defaults().batch, 1);
    }
}
