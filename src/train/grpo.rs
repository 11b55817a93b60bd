//! HumanLM's GRPO at small scale.
//!
//! Each scenario with a real reply is copied once per state (the six states with thinking off,
//! the reply with the set's thinking setting), each copy with that state's own prompt exactly as
//! the simulator renders it; the copies are shuffled so a step mixes states. For every prompt of
//! a step, a group of `n` rollouts is sampled from the current policy; the reward scores the
//! group in one call; advantages are the rewards normalised within the group. The loss is the
//! clipped policy-gradient surrogate, averaged over rollout tokens, plus a low-variance KL
//! estimate (k3, clamped as verl's `low_var_kl`) against the reference policy — the same base with the adapter switched off, so
//! no second copy of the weights exists. The step's rollouts are split into `mini_batches`
//! consecutive optimizer updates.

use super::reward::{RewardSpec, Rollout, Target};
use super::run::{no_examples, nth_example, planned};
use super::{Error, Result, RewardStats, RolloutSample, StepEvent, TrainEvent, Trainer};
use crate::generate::{self, SamplingParams, StopReason};
use crate::model::Model;
use crate::prompts::PromptSet;
use crate::sim::{self, parse, CallKind, Mode};
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GrpoParams {
    /// Rollouts per prompt (the group size).
    pub n: usize,
    pub temperature: f32,
    /// Weight of the KL penalty against the base.
    pub kl_coef: f64,
    /// The surrogate's clipping range: ratios outside 1 ± clip stop pulling.
    pub clip: f64,
    /// Optimizer updates per step (the step's rollouts split into this many parts).
    pub mini_batches: usize,
    /// Cap on each call's token budget (0: each state's own budget).
    pub max_new_tokens: usize,
    /// States to train (empty: the six states and `response`).
    #[serde(default)]
    pub states: Vec<String>,
    pub reward: RewardSpec,
}

impl Default for GrpoParams {
    fn default() -> Self {
        GrpoParams {
            n: 4,
            temperature: 0.8,
            kl_coef: 0.001,
            clip: 0.2,
            mini_batches: 1,
            max_new_tokens: 0,
            states: vec![],
            reward: RewardSpec::default(),
        }
    }
}

impl GrpoParams {
    pub(super) fn check(&self) -> Result<()> {
        if self.n < 2 {
            return Err(Error::Msg(
                "--n must be at least 2: advantages are relative within a group".into(),
            ));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::Msg(
                "--temperature must be above 0 for rollouts".into(),
            ));
        }
        if self.mini_batches == 0 {
            return Err(Error::Msg("--mini-batches must be at least 1".into()));
        }
        if !(self.clip > 0.0 && self.kl_coef >= 0.0) {
            return Err(Error::Msg(
                "--clip must be above 0 and --kl-coef at least 0".into(),
            ));
        }
        Ok(())
    }
}

/// One prompt of the GRPO data: a scenario's call for one state.
#[derive(Debug, Clone)]
pub struct GrpoExample {
    pub scenario: String,
    pub state: String,
    pub prompt: Vec<u32>,
    pub prefill: String,
    pub stop: String,
    pub thinking: bool,
    pub budget: usize,
    pub reference: String,
    pub context: String,
}

/// Every (scenario, state) prompt, with reasons for what was skipped.
pub fn grpo_examples(
    model: &Model,
    set: &PromptSet,
    scenarios: &[crate::scenario::Scenario],
    g: &GrpoParams,
    max_seq: usize,
) -> Result<(Vec<GrpoExample>, Vec<String>)> {
    for s in &g.states {
        if set.state(s).is_none() {
            return Err(Error::Msg(format!(
                "--states: prompt set '{}' has no state '{s}'",
                set.name
            )));
        }
    }
    let mut out = vec![];
    let mut skipped = vec![];
    for (sc, reply, plan) in planned(model, set, scenarios, Mode::Humanlm, &mut skipped) {
        let context = set.thread(&sim::thread_turns(sc))?;
        for call in plan.calls {
            if !g.states.is_empty() && !g.states.contains(&call.name) {
                continue;
            }
            let budget = match g.max_new_tokens {
                0 => call.budget,
                cap => call.budget.min(cap),
            };
            if call.ids.len() + budget > max_seq {
                skipped.push(format!(
                    "{} ({}): {} tokens, over --max-seq {max_seq}",
                    sc.id,
                    call.name,
                    call.ids.len() + budget
                ));
                continue;
            }
            out.push(GrpoExample {
                scenario: sc.id.clone(),
                state: call.name,
                prompt: call.ids,
                prefill: call.prefill,
                stop: call.stop,
                thinking: call.thinking,
                budget,
                reference: reply.to_string(),
                context: context.clone(),
            });
        }
    }
    Ok((out, skipped))
}

/// What the strict format yields for a rollout: the state's value or the reply, or `None`.
pub fn parse_rollout(ex: &GrpoExample, full: &str) -> Option<String> {
    let key = ex.state.as_str();
    let values = match CallKind::of(key) {
        CallKind::Response if ex.thinking => parse::strict_thinking(full, &[key]),
        _ => parse::strict(full, &[key]),
    };
    values.map(|v| v.into_iter().next().unwrap_or_default())
}

/// One sampled continuation, ready for the loss.
struct Row {
    group: usize,
    ids: Vec<u32>,
    advantage: f64,
}

pub(super) fn train(
    t: &mut Trainer,
    set: &Arc<PromptSet>,
    g: &GrpoParams,
    roots: &crate::roots::Roots,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<()> {
    let (scenarios, mut skipped) = t.cfg.data.load()?;
    let (examples, more) = grpo_examples(&t.model, set, &scenarios, g, t.cfg.max_seq)?;
    skipped.extend(more);
    on_event(TrainEvent::Data {
        examples: examples.len(),
        skipped: &skipped,
    });
    if examples.is_empty() {
        return Err(no_examples(&t.cfg.data, &skipped));
    }
    let reward = g.reward.build(roots, set.clone())?;
    on_event(TrainEvent::Note(&format!("reward: {}", reward.name())));
    let batch = t.cfg.batch.max(1);
    for step in t.start..t.cfg.steps {
        t.check_cancel(cancel, step)?;
        let lr = super::optim::learning_rate(step, t.cfg.lr, t.cfg.warmup, t.cfg.steps);
        let t0 = std::time::Instant::now();
        // Rollouts and rewards, one group per prompt.
        let mut groups: Vec<&GrpoExample> = vec![];
        let mut rows: Vec<Row> = vec![];
        let mut all_rewards = vec![];
        let mut by_state: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut shown = vec![];
        for j in 0..batch {
            let k = step * batch + j;
            let ex = &examples[nth_example(examples.len(), t.cfg.seed, k)];
            let params = SamplingParams {
                max_new_tokens: ex.budget,
                temperature: g.temperature,
                top_p: 1.0,
                seed: t
                    .cfg
                    .seed
                    .wrapping_mul(0x9E37_79B9)
                    .wrapping_add(k as u64 * 1000),
                stop: vec![ex.stop.clone()],
                keep_stop: false,
                n: g.n,
                ..Default::default()
            };
            let gen = generate::generate(&t.model, &ex.prompt, &params, cancel, &mut |_| {})?;
            t.check_cancel(cancel, step)?;
            let mut rollouts = vec![];
            let mut ids = vec![];
            for s in gen.samples {
                let stop = if s.stop_reason == StopReason::Stop {
                    ex.stop.as_str()
                } else {
                    ""
                };
                let full = format!("{}{}{stop}", ex.prefill, s.text);
                // The sampled end-of-sequence token is part of what the policy chose.
                let mut seq = s.token_ids;
                seq.extend(s.eos_token);
                rollouts.push(Rollout {
                    value: parse_rollout(ex, &full),
                    text: full,
                    tokens: s.tokens,
                });
                ids.push(seq);
            }
            let target = Target {
                state: &ex.state,
                context: &ex.context,
                reference: &ex.reference,
            };
            let rewards = match reward.score_group(&target, &rollouts) {
                Ok(r) => r,
                Err(e) => {
                    let dir = t.save(step)?;
                    return Err(Error::Msg(format!(
                        "reward failed at step {} ({} / {}): {e}; checkpoint saved in {}, --resume continues",
                        step + 1,
                        ex.scenario,
                        ex.state,
                        dir.display()
                    )));
                }
            };
            let stats = RewardStats::of(&rewards);
            // Normalised by the sample standard deviation, as GRPO does.
            let std = stats.std * (g.n as f64 / (g.n as f64 - 1.0)).sqrt();
            for (i, (seq, r)) in ids.into_iter().zip(&rewards).enumerate() {
                // A group whose rewards are all equal teaches nothing but the KL term.
                let advantage = if std > 1e-9 {
                    (r - stats.mean) / (std + 1e-6)
                } else {
                    0.0
                };
                if !seq.is_empty() {
                    rows.push(Row {
                        group: groups.len(),
                        ids: seq,
                        advantage,
                    });
                }
                if i == 0 && shown.len() < 4 {
                    shown.push(RolloutSample {
                        scenario: ex.scenario.clone(),
                        state: ex.state.clone(),
                        text: rollouts[i].text.chars().take(400).collect(),
                        reward: *r,
                    });
                }
            }
            by_state
                .entry(ex.state.clone())
                .or_default()
                .extend(&rewards);
            all_rewards.extend(rewards);
            groups.push(ex);
        }
        // Reference and behaviour log-probabilities, without gradients and without dropout.
        t.params.dropout_off();
        let reference = t.with_reference(|m| row_logps(m, &groups, &rows, g.temperature))?;
        // With one update per step the policy has not moved when the loss is taken, so the
        // behaviour log-probabilities are the (detached) current ones; otherwise they are
        // computed once, before the first update.
        let old = if g.mini_batches > 1 {
            Some(row_logps(&t.model, &groups, &rows, g.temperature)?)
        } else {
            None
        };
        let tokens: usize = rows.iter().map(|r| r.ids.len()).sum();
        let parts = split(rows.len(), g.mini_batches);
        let (mut loss_sum, mut kl_sum, mut kl_tokens, mut norm_sum) = (0.0, 0.0, 0usize, 0.0);
        for range in &parts {
            let part_tokens: usize = rows[range.clone()].iter().map(|r| r.ids.len()).sum();
            if part_tokens == 0 {
                continue;
            }
            let mut grads: Vec<Tensor> = vec![];
            let mut part_loss = 0.0;
            // One forward per group within the part: its rows share the prompt.
            let mut i = range.start;
            while i < range.end {
                let gi = rows[i].group;
                let mut j = i;
                while j < range.end && rows[j].group == gi {
                    j += 1;
                }
                t.params.dropout_on(t.cfg.seed ^ ((step * 7919 + i) as u64));
                let new = group_logps(&t.model, groups[gi], &rows[i..j], g.temperature)?;
                t.params.dropout_off();
                let (mask, adv, refp, oldp) = {
                    let (n, l) = new.dims2()?;
                    let mut mask = vec![0f32; n * l];
                    let mut adv = vec![0f32; n * l];
                    let mut refp = vec![0f32; n * l];
                    let mut oldp = vec![0f32; n * l];
                    for (r, row) in rows[i..j].iter().enumerate() {
                        for p in 0..row.ids.len() {
                            mask[r * l + p] = 1.0;
                            adv[r * l + p] = row.advantage as f32;
                            refp[r * l + p] = reference[i + r][p];
                            if let Some(o) = &old {
                                oldp[r * l + p] = o[i + r][p];
                            }
                        }
                    }
                    let dev = &t.model.decoder.device;
                    let f = |v: Vec<f32>| Tensor::from_vec(v, (n, l), dev);
                    (f(mask)?, f(adv)?, f(refp)?, f(oldp)?)
                };
                let oldp = if old.is_some() { oldp } else { new.detach() };
                let ratio = (&new - &oldp)?.exp()?;
                let clipped = ratio.clamp(1.0 - g.clip, 1.0 + g.clip)?;
                let surrogate = (&ratio * &adv)?.minimum(&(&clipped * &adv)?)?;
                let kl = low_var_kl(&refp, &new)?;
                let per_token = ((kl.clone() * g.kl_coef)? - surrogate)?;
                let loss = ((per_token * &mask)?.sum_all()? / part_tokens as f64)?;
                kl_sum += (kl * &mask)?.sum_all()?.to_scalar::<f32>()? as f64;
                kl_tokens += rows[i..j].iter().map(|r| r.ids.len()).sum::<usize>();
                part_loss += loss.to_scalar::<f32>()? as f64;
                let gr = t.grads(&loss)?;
                if grads.is_empty() {
                    grads = gr;
                } else {
                    for (acc, x) in grads.iter_mut().zip(gr) {
                        *acc = (&*acc + x)?;
                    }
                }
                i = j;
            }
            norm_sum += t.update(grads, part_loss, lr, step)?;
            loss_sum += part_loss;
        }
        let updates = parts.len().max(1) as f64;
        let ev = StepEvent {
            step: step + 1,
            steps: t.cfg.steps,
            loss: loss_sum / updates,
            lr,
            grad_norm: norm_sum / updates,
            tokens,
            tokens_per_s: 0.0,
            eta_s: 0.0,
            reward: Some(RewardStats::of(&all_rewards)),
            reward_by_state: by_state
                .iter()
                .map(|(k, v)| (k.clone(), RewardStats::of(v)))
                .collect(),
            kl: Some(if kl_tokens > 0 {
                kl_sum / kl_tokens as f64
            } else {
                0.0
            }),
            rollouts: shown,
        };
        t.finish_step(ev, t0.elapsed().as_secs_f64(), on_event)?;
    }
    Ok(())
}

/// `n` consecutive ranges covering `0..len` as evenly as possible (empty ones dropped).
fn split(len: usize, n: usize) -> Vec<std::ops::Range<usize>> {
    let n = n.clamp(1, len.max(1));
    (0..n)
        .map(|i| (i * len / n)..((i + 1) * len / n))
        .filter(|r| !r.is_empty())
        .collect()
}

/// Per-token log-probabilities (temperature-scaled, as sampled) of `rows`' tokens under the
/// model, as a (rows, longest) tensor on the differentiable path; positions past a row's end
/// hold garbage and are masked by the caller. The prompt runs once and every row attends to
/// its keys and values, so a group costs one prompt plus its rollouts, not n prompts.
fn group_logps(model: &Model, ex: &GrpoExample, rows: &[Row], temperature: f32) -> Result<Tensor> {
    let dec = &model.decoder;
    let dev = &dec.device;
    let n = rows.len();
    let longest = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
    let prompt = Tensor::new(ex.prompt.as_slice(), dev)?.unsqueeze(0)?;
    let (first, prefix) = dec.prefix(&prompt)?;
    let vocab = first.dim(1)?;
    // The prompt's last position predicts every row's first token.
    let mut logits = first.unsqueeze(1)?.broadcast_as((n, 1, vocab))?;
    let mut labels = Vec::with_capacity(n * longest);
    let mut input = Vec::with_capacity(n * longest.saturating_sub(1));
    for r in rows {
        // Right padding: causal attention keeps it from touching the real positions.
        let pad = r.ids.last().copied().unwrap_or(0);
        let mut ids = r.ids.clone();
        ids.resize(longest, pad);
        input.extend_from_slice(&ids[..longest - 1]);
        labels.extend(ids);
    }
    if longest > 1 {
        let input = Tensor::from_vec(input, (n, longest - 1), dev)?;
        let rest = dec.forward_after(&input, &prefix, 0)?;
        logits = Tensor::cat(&[&logits, &rest], 1)?;
    }
    let labels = Tensor::from_vec(labels, (n, longest), dev)?;
    let logits = (logits / temperature as f64)?;
    let vocab = logits.dim(D::Minus1)?;
    let lp = crate::model::grad::token_logprobs(
        &logits.reshape((n * longest, vocab))?,
        &labels.flatten_all()?,
    )?;
    Ok(lp.reshape((n, longest))?.to_dtype(DType::F32)?)
}

/// [`group_logps`] for every row, detached, as plain numbers.
fn row_logps(
    model: &Model,
    groups: &[&GrpoExample],
    rows: &[Row],
    temperature: f32,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(rows.len());
    let mut i = 0;
    while i < rows.len() {
        let gi = rows[i].group;
        let mut j = i;
        while j < rows.len() && rows[j].group == gi {
            j += 1;
        }
        let lp = group_logps(model, groups[gi], &rows[i..j], temperature)?.detach();
        for (r, v) in rows[i..j].iter().zip(lp.to_vec2::<f32>()?) {
            out.push(v[..r.ids.len()].to_vec());
        }
        i = j;
    }
    Ok(out)
}

/// The per-token KL estimate against the reference as verl's `low_var_kl` computes it: k3,
/// exp(ref − new) − (ref − new) − 1 (unbiased, never negative), with the log-ratio clamped to
/// [−20, 20] before the exponential and the estimate to [−10, 10] after, so one token far from
/// the reference cannot dominate the loss; a clamped value passes no gradient, as in PyTorch.
pub fn low_var_kl(reference: &Tensor, new: &Tensor) -> candle_core::Result<Tensor> {
    let d = (reference - new)?.clamp(-20f32, 20f32)?;
    ((d.exp()? - &d)? - 1.0)?.clamp(-10f32, 10f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values worked out by hand from verl's `kl_penalty(..., "low_var_kl")`: kl = clamp(ref −
    /// new, −20, 20); kld = exp(kl) − kl − 1; clamp(kld, −10, 10). Its gradient with respect to
    /// `new` is 1 − exp(kl) inside both clamps and 0 where either clamps.
    #[test]
    fn the_kl_is_clamped_as_verls_low_var_kl() {
        let dev = candle_core::Device::Cpu;
        let diffs = [0.0f32, 0.2, -0.2, 2.0, 3.0, 30.0, -30.0];
        let reference = Tensor::new(&diffs, &dev).unwrap();
        let new = candle_core::Var::zeros(diffs.len(), DType::F32, &dev).unwrap();
        let kl = low_var_kl(&reference, new.as_tensor()).unwrap();
        let got: Vec<f32> = kl.to_vec1().unwrap();
        let want = [
            0.0,
            0.2f32.exp() - 1.2,    // 0.021403
            (-0.2f32).exp() - 0.8, // 0.018731
            2.0f32.exp() - 3.0,    // 4.389056
            10.0,                  // exp(3) − 4 = 16.09, clamped
            10.0,                  // the log-ratio clamped to 20, the estimate to 10
            10.0,                  // exp(−20) + 19, clamped
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        let grads = kl.sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = grads.get(new.as_tensor()).unwrap().to_vec1().unwrap();
        let want_g = [
            0.0,
            1.0 - 0.2f32.exp(),
            1.0 - (-0.2f32).exp(),
            1.0 - 2.0f32.exp(),
            0.0,
            0.0,
            0.0,
        ];
        for (a, b) in g.iter().zip(want_g) {
            assert!((a - b).abs() < 1e-5, "{g:?} vs {want_g:?}");
        }
    }
}
