//! The trainer both methods share: open (or resume) a run, take gradients and optimizer steps,
//! write events and whole checkpoints, and stop cleanly when cancelled or diverged.

use super::events::{StepEvent, TrainEvent};
use super::optim::{self, AdamW};
use super::{grpo, sft, Data, Error, Method, Result, TrainConfig};
use crate::model::lora_params::{set_from_file, LoraParams, TRAINING};
use crate::model::{Checkpoint, Model};
use crate::prompts::PromptSet;
use crate::scenario::Scenario;
use candle_core::{Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    fn save(&self, dir: &Path, decoder: &crate::model::Decoder, base: &Checkpoint) -> Result<()> {
        match self {
            Trainable::Lora(l) => Ok(l.save(dir, decoder)?),
            Trainable::Full { vars, .. } => {
                let tensors = vars
                    .iter()
                    .map(|(n, v)| Ok((n.clone(), decoder.qk_rows_layout(n, v.as_tensor(), true)?)))
                    .collect::<Result<HashMap<_, _>>>()?;
                crate::export::merge::write_trained(base, &tensors, dir)?;
                Ok(())
            }
        }
    }

    /// Load what [`Trainable::save`] wrote (resume).
    fn load(&self, dir: &Path, decoder: &crate::model::Decoder) -> Result<()> {
        match self {
            Trainable::Lora(l) => Ok(l.load_into(dir, decoder)?),
            Trainable::Full { vars, .. } => Ok(set_from_file(
                &dir.join("model.safetensors"),
                vars.iter().map(|(n, v)| (n.clone(), n.as_str(), v)),
                decoder,
            )?),
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
) -> Result<PathBuf> {
    cfg.check()?;
    // Steps re-allocate the same large buffers: keep freed memory for them (also when the
    // trainer runs inside another program: the TUI's worker, the tests).
    crate::alloc::keep_freed_memory();
    let (mut trainer, set) = Trainer::open(cfg, out, roots, resume, cancel)?;
    let set = Arc::new(set);
    trainer.val = super::val::Validator::new(&trainer, set.clone(), roots)?;
    // The untrained policy is the curve's first point.
    if trainer.start == 0 {
        trainer.validate(0, on_event)?;
    }
    match &cfg.method {
        Method::Sft { think } => {
            sft::train(&mut trainer, &set, think.as_ref(), roots, cancel, on_event)?
        }
        Method::Grpo(g) => grpo::train(&mut trainer, &set, g, roots, cancel, on_event)?,
    }
    Ok(out.to_path_buf())
}

/// What both methods share: the model with the adapter being trained, the optimizer, the
/// output folder, the step bookkeeping and the validation.
pub struct Trainer<'c> {
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
    /// Set when the user stops the run (validation passes watch it too).
    pub cancel: Option<&'c AtomicBool>,
    val: Option<super::val::Validator>,
}

impl<'c> Trainer<'c> {
    fn open(
        cfg: &TrainConfig,
        out: &Path,
        roots: &crate::roots::Roots,
        resume: bool,
        cancel: Option<&'c AtomicBool>,
    ) -> Result<(Trainer<'c>, PromptSet)> {
        let ckpt = Checkpoint::resolve(&cfg.base, &roots.checkpoints)?;
        if matches!(
            ckpt.kind,
            crate::model::checkpoint::CheckpointKind::Adapter { .. }
        ) {
            return Err(Error::file(
                &ckpt.path,
                "the base is itself an adapter; merge it first (humanlm export --merge)",
            ));
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
        std::fs::create_dir_all(out).map_err(|e| Error::file(out, e.to_string()))?;
        let mut start = 0;
        if resume {
            let (dir, step) = latest_checkpoint(out)?
                .ok_or_else(|| Error::file(out, "nothing to resume (no checkpoint-N folder)"))?;
            let path = dir.join("trainer_state.json");
            let state: TrainerState = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
                .and_then(|mut v: serde_json::Value| {
                    if let Some(c) = v.get_mut("config") {
                        super::config::upgrade_saved_config(c).map_err(|e| e.to_string())?;
                    }
                    serde_json::from_value(v).map_err(|e| e.to_string())
                })
                .map_err(|e| Error::file(&path, e))?;
            if !state.config.same_run(cfg) {
                return Err(Error::file(
                    dir,
                    "was trained with a different configuration; resume with the same options",
                ));
            }
            params.load(&dir, &model.decoder)?;
            model.decoder.weights_changed();
            // A finished run's last checkpoint has no optimizer state (nothing follows it).
            if step < cfg.steps {
                let moments = candle_core::safetensors::load(
                    dir.join("optimizer.safetensors"),
                    &Device::Cpu,
                )?;
                opt.restore(&moments, state.optimizer_t)
                    .map_err(|e| Error::file(dir, e.to_string()))?;
            }
            start = step;
        } else if latest_checkpoint(out)?.is_some() {
            return Err(Error::file(
                out,
                "already holds a training run; pass --resume to continue it, or choose another --out",
            ));
        }
        if let Trainable::Lora(l) = &params {
            l.attach(&mut model.decoder, out)?;
        }
        let events = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.join("events.jsonl"))
            .map_err(|e| Error::file(out.join("events.jsonl"), e.to_string()))?;
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
                cancel,
                val: None,
            },
            set,
        ))
    }

    /// Run `f` on the reference policy: the base with the adapter switched off, or the frozen
    /// copy a full run keeps.
    pub fn with_reference<R>(&mut self, f: impl FnOnce(&Model) -> Result<R>) -> Result<R> {
        match &self.params {
            Trainable::Full {
                reference: Some(r), ..
            } => f(r),
            Trainable::Full {
                reference: None, ..
            } => Err(Error::Msg("this run keeps no reference model".into())),
            Trainable::Lora(_) => {
                self.model.decoder.set_active_adapter(None)?;
                let r = f(&self.model);
                self.model.decoder.set_active_adapter(Some(TRAINING))?;
                r
            }
        }
    }

    /// Stop with a saved checkpoint when cancelled.
    pub(super) fn check_cancel(&mut self, cancel: Option<&AtomicBool>, step: usize) -> Result<()> {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            self.save(step)?;
            return Err(Error::Msg(format!(
                "interrupted at step {step}; checkpoint saved, --resume continues"
            )));
        }
        Ok(())
    }

    /// Gradients of `loss` for every trainable factor, in the optimizer's order.
    pub(super) fn grads(&self, loss: &Tensor) -> Result<Vec<Tensor>> {
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
    pub(super) fn update(
        &mut self,
        mut grads: Vec<Tensor>,
        loss: f64,
        lr: f64,
        step: usize,
    ) -> Result<f64> {
        if !loss.is_finite() {
            return Err(Error::Msg(format!(
                "loss is {loss} at step {step}: stopped; the last good checkpoint (step {}) is in {}",
                self.last_good,
                self.out.display()
            )));
        }
        let norm = optim::clip(&mut grads, self.cfg.max_grad_norm)?;
        if !norm.is_finite() {
            return Err(Error::Msg(format!(
                "gradient norm is {norm} at step {step}: stopped; the last good checkpoint (step {}) is in {}",
                self.last_good,
                self.out.display()
            )));
        }
        self.opt.step(&grads, lr)?;
        // Rollouts and validation after this step must not reuse keys and values the old
        // weights computed.
        self.model.decoder.weights_changed();
        Ok(norm)
    }

    /// Record a finished step: the event line, then a checkpoint when one is due.
    pub(super) fn finish_step(
        &mut self,
        mut ev: StepEvent,
        step_secs: f64,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<()> {
        let done = ev.step - self.start;
        ev.tokens_per_s = ev.tokens as f64 / step_secs.max(1e-9);
        ev.eta_s = self.started.elapsed().as_secs_f64() / done as f64 * (ev.steps - ev.step) as f64;
        self.write_event(&ev)?;
        on_event(TrainEvent::Step(&ev));
        let every = self.cfg.save_every;
        if ev.step == ev.steps || (every > 0 && ev.step.is_multiple_of(every)) {
            let dir = self.save(ev.step)?;
            on_event(TrainEvent::Saved(&dir));
        }
        self.validate(ev.step, on_event)
    }

    /// Validate the current policy when step `step` is due for it.
    fn validate(&mut self, step: usize, on_event: &mut dyn FnMut(TrainEvent)) -> Result<()> {
        let Some(mut val) = self.val.take() else {
            return Ok(());
        };
        let r = if val.due(step, self.cfg.steps) {
            val.run(self, step, on_event)
        } else {
            Ok(())
        };
        self.val = Some(val);
        r
    }

    /// Append one line to `events.jsonl`.
    pub(super) fn write_event(&mut self, ev: &impl Serialize) -> Result<()> {
        writeln!(self.events, "{}", serde_json::to_string(ev)?)?;
        self.events.flush()?;
        Ok(())
    }

    /// Replace `<out>/best/` with the current model and `best.json` (`info`: its step and
    /// validation score), written whole.
    pub(super) fn save_best(&mut self, info: &serde_json::Value) -> Result<PathBuf> {
        let best = self.out.join("best");
        let write = || -> Result<()> {
            let tmp = crate::files::temp_dir_beside(&best)?;
            self.params
                .save(tmp.path(), &self.model.decoder, &self.base)?;
            std::fs::write(
                tmp.path().join("best.json"),
                serde_json::to_string_pretty(info)?,
            )?;
            crate::files::replace_dir(tmp, &best)?;
            Ok(())
        };
        write().map_err(|e| {
            Error::file(
                &best,
                format!("cannot save the best model (the previous one is intact): {e}"),
            )
        })?;
        Ok(best)
    }

    /// Write `checkpoint-<step>/` whole, then refresh the top-level adapter.
    pub(super) fn save(&mut self, step: usize) -> Result<PathBuf> {
        let out = &self.out;
        let final_dir = out.join(format!("checkpoint-{step}"));
        let write = || -> Result<()> {
            let tmp = crate::files::temp_dir_beside(&final_dir)?;
            let dir = tmp.path();
            self.params.save(dir, &self.model.decoder, &self.base)?;
            // The optimizer's moments only matter to a run that goes on: the last step's
            // checkpoint goes without them (twice the model's size in f32, 1 GB for a full run
            // of the default model).
            if step < self.cfg.steps {
                let opt = dir.join("optimizer.safetensors");
                self.opt
                    .with_state(|s| candle_core::safetensors::save(s, &opt))?;
            }
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
            Error::file(
                &final_dir,
                format!("cannot save checkpoint (the previous one is intact): {e}"),
            )
        })?;
        self.last_good = step;
        Ok(final_dir)
    }
}

/// Index `k` of an endless stream over `n` items, reshuffled every epoch; depends only on the
/// seed, so a resumed run sees the same batches.
pub(super) fn nth_example(n: usize, seed: u64, k: usize) -> usize {
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
fn latest_checkpoint(out: &Path) -> Result<Option<(PathBuf, usize)>> {
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
pub(super) fn planned<'a>(
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
pub(super) fn no_examples(data: &Data, skipped: &[String]) -> Error {
    Error::file(
        data.path(),
        format!(
            "no usable training example ({} skipped{})",
            skipped.len(),
            skipped
                .first()
                .map(|s| format!("; first: {s}"))
                .unwrap_or_default()
        ),
    )
}
