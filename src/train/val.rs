//! Validation during a training run: at step 0, every `every` steps and at the end, the current
//! policy (adapters live, dropout off) is evaluated on held-out scenarios by the same pass as
//! `humanlm eval` ([`crate::eval::run_live`]), decoding as the paper protocol does. Each pass
//! is an eval run folder under `<out>/val/` (pairable with `humanlm compare`) and a
//! [`ValEvent`] line in `events.jsonl`; with `keep_best` the best step's model is kept in
//! `<out>/best/`.
//!
//! What "best" means: for plain SFT the held-out loss per target token (lower is better, the
//! usual choice for supervised training); otherwise the mean score of the reply by the
//! validation judge (the recipe's validation reward, `val-core/…/reward/mean@1`).

use super::events::{TrainEvent, ValEvent};
use super::sft::{sft_examples, sft_loss, Example};
use super::{Data, Error, Method, Result, Trainer};
use crate::eval::{self, EvalSpec, Scenarios};
use crate::judge::JudgeConfig;
use crate::prompts::{PromptSet, RESPONSE};
use crate::sim::{Mode, SamplingChoice};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// How a run validates (saved with the run, not part of its identity: a resume may change it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ValConfig {
    /// Held-out scenarios: a scenario file or folder, or a HUMANUAL file.
    pub data: Data,
    /// Validate every this many steps, besides step 0 and the last step (0: only those two).
    pub every: usize,
    /// The judge file; none: the run's reward judge for GRPO, the embedding judge for SFT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<PathBuf>,
    /// Validate on the first this many scenarios (in table order: domain, then id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// New tokens per call; none: the paper protocol's 1,024, or GRPO's `--max-new-tokens`
    /// cap when it sets one, so validation writes what training rolls out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Keep the best step's model in `<out>/best/`.
    #[serde(default)]
    pub keep_best: bool,
}

/// What the best step is chosen by.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Criterion {
    /// Held-out loss per target token, lower is better.
    Loss,
    /// The judge's mean score of the reply ×100, higher is better.
    Reply,
}

impl Criterion {
    fn name(self) -> &'static str {
        match self {
            Criterion::Loss => "loss",
            Criterion::Reply => RESPONSE,
        }
    }

    fn better(self, a: f64, b: f64) -> bool {
        match self {
            Criterion::Loss => a < b,
            Criterion::Reply => a > b,
        }
    }
}

/// A run's validation, resolved once at the start.
pub(super) struct Validator {
    cfg: ValConfig,
    scenarios: Scenarios,
    spec: EvalSpec,
    set: Arc<PromptSet>,
    /// Plain SFT: the held-out scenarios as SFT examples, for the validation loss.
    loss_examples: Vec<Example>,
    criterion: Criterion,
    /// The best (step, value) so far, including what a resumed run validated before.
    best: Option<(usize, f64)>,
    roots: crate::roots::Roots,
}

impl Validator {
    pub(super) fn new(
        t: &Trainer,
        set: Arc<PromptSet>,
        roots: &crate::roots::Roots,
    ) -> Result<Option<Validator>> {
        let Some(cfg) = t.cfg.val.clone() else {
            return Ok(None);
        };
        let (loaded, skipped) = cfg.data.load()?;
        if loaded.is_empty() {
            return Err(Error::file(
                cfg.data.path(),
                format!(
                    "--val: no usable scenario ({} skipped{})",
                    skipped.len(),
                    skipped
                        .first()
                        .map(|s| format!("; first: {s}"))
                        .unwrap_or_default()
                ),
            ));
        }
        let mut scenarios = Scenarios::from_loaded(cfg.data.path(), loaded, &mut |_| {})
            .map_err(|e| Error::Msg(format!("--val: {e}")))?;
        if let Some(n) = cfg.limit {
            if n == 0 {
                return Err(Error::Msg("--val-limit must be at least 1".into()));
            }
            scenarios.with_reference.truncate(n);
        }
        // GRPO that trains states is validated on them too, each judged against the reply as
        // its reward is; everything else on the reply alone, as the recipe validates.
        let (mode, judge, cap) = match &t.cfg.method {
            Method::Grpo(g) => {
                let states = g.states.is_empty() || g.states.iter().any(|s| s != RESPONSE);
                let cap = (g.max_new_tokens > 0).then_some(g.max_new_tokens);
                let mode = if states {
                    Mode::Humanlm
                } else {
                    Mode::Response
                };
                (mode, g.reward.judge_config()?, cap)
            }
            Method::Sft { .. } => (Mode::Response, JudgeConfig::default_config(), None),
        };
        let judge = match &cfg.judge {
            Some(p) => JudgeConfig::read(p)?,
            None => judge,
        };
        // The paper protocol's decoding (one sample at temperature 0.4, no repetition
        // penalty), with the run's seed and the token cap.
        let mut sampling = crate::eval::protocol::Protocol::Paper
            .apply(&SamplingChoice {
                seed: t.cfg.seed,
                ..Default::default()
            })
            .map_err(|e| Error::Msg(e.to_string()))?;
        if let Some(m) = cfg.max_tokens.or(cap) {
            if m == 0 {
                return Err(Error::Msg("--val-max-tokens must be at least 1".into()));
            }
            sampling.max_tokens = Some(m);
        }
        let (loss_examples, criterion) = match &t.cfg.method {
            Method::Sft { think: None } => {
                let (ex, _) = sft_examples(
                    &t.model,
                    &set,
                    &scenarios.with_reference,
                    t.cfg.max_seq,
                    None,
                )?;
                (ex, Criterion::Loss)
            }
            // SFT-think's targets need a trace for every held-out reply: no loss is taken.
            _ => (vec![], Criterion::Reply),
        };
        let spec = EvalSpec {
            checkpoints: vec![],
            scenarios: cfg.data.path().to_path_buf(),
            mode,
            prompts: Some(set.name.clone()),
            judge,
            sampling,
            truncate: Default::default(),
            out: t.out.join("val"),
            protocol: None,
            paper: vec![],
            state_judge: None,
            rejudge: false,
            device: t.cfg.device.clone(),
        };
        // A resumed run keeps the best of what it validated before.
        let mut best = None;
        for ev in super::events::read_val_events(&t.out) {
            if ev.step <= t.start && best.is_none_or(|(_, b)| criterion.better(ev.value, b)) {
                best = Some((ev.step, ev.value));
            }
        }
        Ok(Some(Validator {
            cfg,
            scenarios,
            spec,
            set,
            loss_examples,
            criterion,
            best,
            roots: roots.clone(),
        }))
    }

    /// Whether step `step` (0: before the first) is validated.
    pub(super) fn due(&self, step: usize, steps: usize) -> bool {
        step == 0 || step == steps || (self.cfg.every > 0 && step.is_multiple_of(self.cfg.every))
    }

    /// Validate the policy as it is after `step` steps.
    pub(super) fn run(
        &mut self,
        t: &mut Trainer,
        step: usize,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<()> {
        let t0 = std::time::Instant::now();
        t.params.dropout_off();
        let loss = self.loss(t)?;
        let name = format!("step-{step}");
        let spec = EvalSpec {
            checkpoints: vec![name.clone()],
            ..self.spec.clone()
        };
        let live = eval::Live {
            model: &t.model,
            set: self.set.clone(),
            fingerprint: format!("{}@{name}", t.out.display()),
        };
        let dir = eval::run_live(
            &spec,
            &self.roots,
            &self.scenarios,
            live,
            t.cancel,
            &mut |_| {},
        )
        .map_err(|e| match e {
            eval::Error::Msg(m) if m.starts_with("cancelled") => {
                Error::Msg(format!("interrupted while validating step {step}"))
            }
            e => Error::Msg(format!("validation at step {step}: {e}")),
        })?;
        let summary_path = dir.join("summary.json");
        let summary: eval::Summary = std::fs::read_to_string(&summary_path)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
            .map_err(|e| Error::file(&summary_path, e))?;
        let ours = summary
            .checkpoints
            .into_iter()
            .next()
            .ok_or_else(|| Error::file(&summary_path, "holds no checkpoint"))?;
        let value = match self.criterion {
            Criterion::Loss => loss.unwrap_or(f64::INFINITY),
            Criterion::Reply => ours.metrics.get(RESPONSE).map_or(0.0, |e| e.mean),
        };
        let improved = self
            .best
            .is_none_or(|(_, b)| self.criterion.better(value, b));
        if improved {
            self.best = Some((step, value));
            if self.cfg.keep_best {
                let info = serde_json::json!({
                    "step": step,
                    "criterion": self.criterion.name(),
                    "value": value,
                    "validation": dir,
                });
                t.save_best(&info)?;
            }
        }
        let ev = ValEvent {
            step,
            steps: t.cfg.steps,
            run: dir,
            scenarios: ours.n_scenarios,
            metrics: ours.metrics,
            loss,
            criterion: self.criterion.name().into(),
            value,
            best_step: self.best.map_or(step, |b| b.0),
            judge_failures: ours.diagnostics.judge_failures,
            secs: t0.elapsed().as_secs_f64(),
        };
        t.write_event(&ev)?;
        on_event(TrainEvent::Val(&ev));
        Ok(())
    }

    /// Plain SFT: the mean loss per target token over the held-out examples, no gradient.
    fn loss(&self, t: &Trainer) -> Result<Option<f64>> {
        if self.loss_examples.is_empty() {
            return Ok(None);
        }
        let (mut sum, mut count) = (0.0, 0usize);
        for ex in &self.loss_examples {
            let (mean, n) = sft_loss(&t.model, &[ex])?;
            sum += mean.detach().to_scalar::<f32>()? as f64 * n as f64;
            count += n;
        }
        Ok(Some(sum / count as f64))
    }
}

/// One line for a validation pass: its step, the reply's score (and the states'), the loss, the
/// best step, where the run folder is.
pub fn describe(v: &ValEvent) -> String {
    let metrics: Vec<String> = crate::eval::metrics_in_order(&v.metrics, &[])
        .into_iter()
        .take(8)
        .map(|k| {
            let e = &v.metrics[k];
            let half = (e.ci95[1] - e.ci95[0]) / 2.0;
            format!("{k} {:.1} ± {half:.1}", e.mean)
        })
        .collect();
    let loss = v
        .loss
        .map(|l| format!(" · loss {l:.4}"))
        .unwrap_or_default();
    let failed = match v.judge_failures {
        0 => String::new(),
        n => format!(" · {n} judgements failed"),
    };
    format!(
        "val step {}/{} on {} scenarios: {}{loss}{failed} · best step {} · {}",
        v.step,
        v.steps,
        v.scenarios,
        metrics.join(", "),
        v.best_step,
        v.run.display()
    )
}
