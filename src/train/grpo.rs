//! HumanLM's GRPO at small scale.
//!
//! Each scenario with a real reply is copied once per state (the six states with thinking off,
//! the reply with the set's thinking setting), each copy with that state's own prompt exactly as
//! the simulator renders it; a step's prompts are drawn stratified by state (see
//! [`StateStreams`]) so every step of at least as many prompts as states mixes all of them. For
//! every prompt of a step, a group of `n` rollouts is sampled from the current policy; the reward
//! scores the group in one call; advantages are the rewards normalised within the group. The loss
//! is the clipped policy-gradient surrogate, averaged over rollout tokens, plus a low-variance KL
//! estimate (k3, clamped as verl's `low_var_kl`) against the reference policy — the same base
//! with the adapter switched off, so no second copy of the weights exists — minus an optional
//! entropy bonus. The step's prompts are split into optimizer updates of `ppo_mini_batch` prompts
//! each, as verl counts `ppo_mini_batch_size`.

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

/// Prompts a GRPO step trains on when `--batch` is not given. The recipe takes 32 prompts × 4
/// rollouts a step in mini-batches of 4 prompts; scaled to a small CPU run, a step is 7
/// prompts × 4 rollouts, one update: with prompts drawn stratified by state
/// ([`StateStreams`]), 7 is the smallest step that holds every one of the seven states.
pub const DEFAULT_BATCH: usize = 7;

/// GRPO's own options (the batch, prompts a step, is [`super::TrainConfig::batch`]; its GRPO
/// default is [`DEFAULT_BATCH`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GrpoParams {
    /// Rollouts per prompt (the group size).
    pub n: usize,
    pub temperature: f32,
    /// Weight of the KL penalty against the base.
    pub kl_coef: f64,
    /// The surrogate's clipping range: ratios outside 1 ± clip stop pulling.
    pub clip: f64,
    /// Prompts per optimizer update, each bringing its `n` rollouts (verl's
    /// `ppo_mini_batch_size`, which counts prompts too); a step makes ceil(batch / this)
    /// updates. 0: the whole batch, one update per step. Configurations saved with the older
    /// `mini_batches` (a count of updates) are converted on resume by
    /// [`super::upgrade_saved_config`].
    #[serde(default)]
    pub ppo_mini_batch: usize,
    /// Weight of the entropy bonus: the loss loses this times the mean token entropy of the
    /// policy (verl's `entropy_coeff`; the recipe uses 0).
    #[serde(default)]
    pub entropy_coef: f64,
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
            ppo_mini_batch: 0,
            entropy_coef: 0.0,
            max_new_tokens: 0,
            states: vec![],
            reward: RewardSpec::default(),
        }
    }
}

impl GrpoParams {
    /// Prompts an optimizer update takes at `batch` prompts a step: `ppo_mini_batch`, or the
    /// whole batch when that is 0 or larger, so 0 and any value ≥ batch mean the same run.
    pub fn mini_batch_prompts(&self, batch: usize) -> usize {
        let batch = batch.max(1);
        match self.ppo_mini_batch {
            0 => batch,
            m => m.min(batch),
        }
    }

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
        if !(self.entropy_coef >= 0.0 && self.entropy_coef.is_finite()) {
            return Err(Error::Msg(format!(
                "--entropy-coef must be a number at least 0, not {}",
                self.entropy_coef
            )));
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

/// Which examples each GRPO step trains on, drawn stratified by state so a step mixes them
/// evenly. Each state has its own endless stream over its examples (reshuffled every epoch, as
/// [`nth_example`] does), and a step takes its prompts in rounds: every round draws each state
/// once, in an order shuffled per round, and a step's last round is cut short when the batch
/// is not a multiple of the states. So every step of at least as many prompts as states holds
/// every state, and states are balanced, not weighted by how many examples each has. State `s`
/// in round `r` takes item `r` of its stream (a state a cut-short round leaves out skips that
/// item), so a step's prompts depend only on the seed, the step and the batch, and a resumed
/// run draws what the interrupted one would have.
#[derive(Debug, Clone)]
pub struct StateStreams {
    /// Example indices of each state, the states in order of first appearance.
    by_state: Vec<Vec<usize>>,
}

impl StateStreams {
    /// The streams over examples whose states are `states`, in the examples' order.
    pub fn new<'a>(states: impl IntoIterator<Item = &'a str>) -> StateStreams {
        let mut names: Vec<&str> = vec![];
        let mut by_state: Vec<Vec<usize>> = vec![];
        for (i, st) in states.into_iter().enumerate() {
            match names.iter().position(|n| *n == st) {
                Some(p) => by_state[p].push(i),
                None => {
                    names.push(st);
                    by_state.push(vec![i]);
                }
            }
        }
        StateStreams { by_state }
    }

    /// Example indices of step `step` (from 0) at `batch` prompts a step.
    pub fn step(&self, seed: u64, step: usize, batch: usize) -> Vec<usize> {
        let states = self.by_state.len();
        if states == 0 {
            return vec![];
        }
        let rounds = batch.div_ceil(states);
        // The rounds' state orders get a seed of their own, apart from the streams'.
        let order_seed = seed ^ 0xA076_1D64_78BD_642F;
        (0..batch)
            .map(|j| {
                let round = step * rounds + j / states;
                let s = nth_example(states, order_seed, round * states + j % states);
                let own = &self.by_state[s];
                // The first state's stream is seeded by the seed itself: with one state this is
                // the plain seeded shuffle over every example.
                let stream_seed = seed ^ (s as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
                own[nth_example(own.len(), stream_seed, round)]
            })
            .collect()
    }
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
    let streams = StateStreams::new(examples.iter().map(|e| e.state.as_str()));
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
        let (mut rollout_s, mut judge_s) = (0.0, 0.0);
        // Every prompt's rollouts decode together (the tokens each would get alone, with the
        // weights streamed once per step for all of them).
        let picked: Vec<(&GrpoExample, SamplingParams)> = streams
            .step(t.cfg.seed, step, batch)
            .iter()
            .enumerate()
            .map(|(j, &e)| {
                let k = step * batch + j;
                let ex = &examples[e];
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
                (ex, params)
            })
            .collect();
        let jobs: Vec<generate::Job> = picked
            .iter()
            .map(|(ex, params)| generate::Job {
                prompt: &ex.prompt,
                params,
            })
            .collect();
        let t_gen = std::time::Instant::now();
        let gens = generate::generate_many(&t.model, &jobs, cancel, &mut |_, _| {})?;
        rollout_s += t_gen.elapsed().as_secs_f64();
        t.check_cancel(cancel, step)?;
        for (&(ex, _), gen) in picked.iter().zip(gens) {
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
            let t_judge = std::time::Instant::now();
            let scored = reward.score_group(&target, &rollouts);
            judge_s += t_judge.elapsed().as_secs_f64();
            let rewards = match scored {
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
        let t_update = std::time::Instant::now();
        // Whole groups per optimizer update, `ppo_mini_batch` prompts each; rows are in group
        // order, so each update's rows are one run of them.
        let per_update = g.mini_batch_prompts(batch);
        let parts: Vec<std::ops::Range<usize>> = (0..groups.len())
            .step_by(per_update)
            .map(|first| {
                let row = |gi: usize| rows.partition_point(|r| r.group < gi);
                row(first)..row(first + per_update)
            })
            .filter(|r| !r.is_empty())
            .collect();
        // Reference and behaviour log-probabilities, without gradients and without dropout.
        t.params.dropout_off();
        let reference = t.with_reference(|m| row_logps(m, &groups, &rows, g.temperature))?;
        // With one update per step the policy has not moved when the loss is taken, so the
        // behaviour log-probabilities are the (detached) current ones; otherwise they are
        // computed once, before the first update.
        let old = if parts.len() > 1 {
            Some(row_logps(&t.model, &groups, &rows, g.temperature)?)
        } else {
            None
        };
        let tokens: usize = rows.iter().map(|r| r.ids.len()).sum();
        // The entropy costs a pass over the whole vocabulary at every token: only when it counts.
        let entropy = g.entropy_coef > 0.0;
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
                let (new, ent) =
                    group_logps(&t.model, groups[gi], &rows[i..j], g.temperature, entropy)?;
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
                let (per_token, kl) = token_loss(&new, &oldp, &refp, &adv, ent.as_ref(), g)?;
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
            rollout_s: Some(rollout_s),
            judge_s: Some(judge_s),
            update_s: Some(t_update.elapsed().as_secs_f64()),
        };
        t.finish_step(ev, t0.elapsed().as_secs_f64(), on_event)?;
    }
    Ok(())
}

/// Per-token log-probabilities (temperature-scaled, as sampled) of `rows`' tokens under the
/// model, as a (rows, longest) tensor on the differentiable path; positions past a row's end
/// hold garbage and are masked by the caller. The prompt runs once and every row attends to
/// its keys and values, so a group costs one prompt plus its rollouts, not n prompts. With
/// `entropy`, also the policy's entropy at each of those positions ([`token_entropy`]), same
/// shape, differentiable too.
fn group_logps(
    model: &Model,
    ex: &GrpoExample,
    rows: &[Row],
    temperature: f32,
    entropy: bool,
) -> Result<(Tensor, Option<Tensor>)> {
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
    let logits = logits.reshape((n * longest, vocab))?;
    let lp = crate::model::grad::token_logprobs(&logits, &labels.flatten_all()?)?;
    let ent = if entropy {
        Some(token_entropy(&logits)?.reshape((n, longest))?)
    } else {
        None
    };
    Ok((lp.reshape((n, longest))?.to_dtype(DType::F32)?, ent))
}

/// The entropy −Σ p log p of each row's softmax: logits (rows, vocab) → (rows), in f32
/// whatever the logits' dtype (a bf16 log-softmax is too coarse to sum over a vocabulary).
pub fn token_entropy(logits: &Tensor) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    (logp.exp()? * &logp)?.sum(D::Minus1)?.neg()
}

/// The per-token loss before masking, and the KL estimate it used: `kl_coef` times the KL to
/// the reference ([`low_var_kl`]), minus the clipped surrogate of the ratio new / old weighted
/// by the advantage, minus `entropy_coef` times the token entropy when one is given (verl's
/// `pg_loss − entropy_coeff · entropy`). Every argument is (rows, longest).
pub fn token_loss(
    new: &Tensor,
    old: &Tensor,
    reference: &Tensor,
    advantage: &Tensor,
    entropy: Option<&Tensor>,
    g: &GrpoParams,
) -> candle_core::Result<(Tensor, Tensor)> {
    let ratio = (new - old)?.exp()?;
    let clipped = ratio.clamp(1.0 - g.clip, 1.0 + g.clip)?;
    let surrogate = (&ratio * advantage)?.minimum(&(&clipped * advantage)?)?;
    let kl = low_var_kl(reference, new)?;
    let mut per_token = ((kl.clone() * g.kl_coef)? - surrogate)?;
    if let Some(h) = entropy {
        per_token = (per_token - (h * g.entropy_coef)?)?;
    }
    Ok((per_token, kl))
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
        let lp = group_logps(model, groups[gi], &rows[i..j], temperature, false)?
            .0
            .detach();
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

    /// The gradient of the sum of `loss` with respect to `var`, flattened.
    fn grad_of(loss: &Tensor, var: &candle_core::Var) -> Vec<f32> {
        let grads = loss.sum_all().unwrap().backward().unwrap();
        let g = grads.get(var.as_tensor()).unwrap();
        g.flatten_all().unwrap().to_vec1().unwrap()
    }

    const SEVEN: [&str; 7] = [
        "stance",
        "emotion",
        "belief",
        "value",
        "goal",
        "communication",
        "response",
    ];

    /// Examples as `grpo_examples` lists them: scenario by scenario, each with its states in
    /// order; one state missing from some scenarios (as --max-seq skips do), so states have
    /// different counts.
    fn example_states(scenarios: usize) -> Vec<&'static str> {
        let mut v = vec![];
        for sc in 0..scenarios {
            for (i, st) in SEVEN.iter().enumerate() {
                if !(i == 2 && sc % 3 == 0) {
                    v.push(*st);
                }
            }
        }
        v
    }

    fn states_of(ex: &[&'static str], picked: &[usize]) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for &i in picked {
            *m.entry(ex[i]).or_insert(0) += 1;
        }
        m
    }

    /// At a batch of 7 every step holds each of the seven states exactly once; at 9 each at least
    /// once; a step's prompts are the same whenever they are asked for (a resume asks again),
    /// change with the seed, and each state's stream covers its examples before repeating.
    #[test]
    fn every_step_holds_every_state() {
        let ex = example_states(10);
        let streams = StateStreams::new(ex.iter().copied());
        for step in 0..40 {
            let picked = streams.step(5, step, 7);
            let by = states_of(&ex, &picked);
            assert_eq!(by.len(), 7, "step {step}: {by:?}");
            assert!(by.values().all(|&c| c == 1), "step {step}: {by:?}");
            assert_eq!(picked, streams.step(5, step, 7));
            let by = states_of(&ex, &streams.step(5, step, 9));
            assert_eq!(by.len(), 7, "step {step} at 9: {by:?}");
            assert_eq!(by.values().sum::<usize>(), 9);
        }
        assert_ne!(streams.step(5, 0, 7), streams.step(6, 0, 7));
        // Ten steps of 7: each state's ten draws are ten different examples (one epoch), the
        // state with seven examples repeats only after all seven.
        let mut seen: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for step in 0..10 {
            for i in streams.step(5, step, 7) {
                seen.entry(ex[i]).or_default().push(i);
            }
        }
        for (st, mut v) in seen {
            let own = ex.iter().filter(|s| **s == st).count();
            let first: std::collections::BTreeSet<usize> =
                v[..own.min(10)].iter().copied().collect();
            assert_eq!(first.len(), own.min(10), "{st}: {v:?}");
            v.sort();
            assert!(v.iter().all(|&i| ex[i] == st));
        }
        // The order within a step varies from step to step.
        let orders: std::collections::BTreeSet<Vec<&str>> = (0..10)
            .map(|step| streams.step(5, step, 7).iter().map(|&i| ex[i]).collect())
            .collect();
        assert!(orders.len() > 1);
    }

    /// With one state the draw is the plain seeded shuffle over every example, as before states
    /// were stratified, so single-state runs draw what they always did.
    #[test]
    fn one_state_draws_the_plain_shuffle() {
        let ex = ["response"; 5];
        let streams = StateStreams::new(ex.iter().copied());
        for step in 0..6 {
            let want: Vec<usize> = (0..3).map(|j| nth_example(5, 3, step * 3 + j)).collect();
            assert_eq!(streams.step(3, step, 3), want);
        }
        assert!(StateStreams::new([]).step(0, 0, 4).is_empty());
    }

    /// The entropy of softmax([0, 0]) is ln 2 and of softmax([0, ln 3]) = (1/4, 3/4) is
    /// −(¼ ln ¼ + ¾ ln ¾); its gradient with respect to logit j is −p_j (ln p_j + H).
    #[test]
    fn the_token_entropy_is_worked_out_by_hand() {
        let dev = candle_core::Device::Cpu;
        let logits =
            candle_core::Var::from_vec(vec![0f32, 0.0, 0.0, 3f32.ln()], (2, 2), &dev).unwrap();
        let h = token_entropy(logits.as_tensor()).unwrap();
        let got: Vec<f32> = h.to_vec1().unwrap();
        let h1 = -(0.25f32 * 0.25f32.ln() + 0.75 * 0.75f32.ln()); // 0.562335
        assert!((got[0] - 2f32.ln()).abs() < 1e-6, "{got:?}");
        assert!((got[1] - h1).abs() < 1e-6, "{got:?}");
        let g = grad_of(&h, &logits);
        let want = [
            0.0,
            0.0,
            -0.25 * (0.25f32.ln() + h1), // 0.206
            -0.75 * (0.75f32.ln() + h1), // −0.206
        ];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{g:?} vs {want:?}");
        }
    }

    /// Without an entropy the loss is the surrogate and KL terms alone; with one, the loss
    /// loses exactly `entropy_coef` times it, and its gradient reaches the logits the entropy
    /// came from.
    #[test]
    fn the_entropy_bonus_lowers_the_loss_by_its_weight() {
        let dev = candle_core::Device::Cpu;
        let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), (1, 2), &dev).unwrap();
        let new = candle_core::Var::from_vec(vec![-0.5f32, -1.0], (1, 2), &dev).unwrap();
        let old = t(&[-0.6, -1.0]);
        let reference = t(&[-0.4, -1.2]);
        let adv = t(&[1.0, -0.5]);
        let mut g = GrpoParams::default();
        let (plain, kl) = token_loss(new.as_tensor(), &old, &reference, &adv, None, &g).unwrap();
        // By hand: ratio exp(new − old), its clip to [0.8, 1.2], min(ratio·adv, clip·adv).
        let (r0, r1) = (0.1f32.exp(), 1.0f32);
        let surrogate = [r0.min(1.2), -0.5 * r1];
        let k = [(0.1f32).exp() - 1.1, (-0.2f32).exp() - 0.8];
        let want: Vec<f32> = (0..2).map(|i| 0.001 * k[i] - surrogate[i]).collect();
        let got: Vec<f32> = plain.flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        let kl: Vec<f32> = kl.flatten_all().unwrap().to_vec1().unwrap();
        assert!((kl[1] - k[1]).abs() < 1e-6, "{kl:?}");
        // A weight of 0 with no entropy is the loss as it was; a weight of 0.1 subtracts 0.1 H.
        let logits =
            candle_core::Var::from_vec(vec![0f32, 0.0, 0.0, 3f32.ln()], (2, 2), &dev).unwrap();
        let h = token_entropy(logits.as_tensor())
            .unwrap()
            .reshape((1, 2))
            .unwrap();
        g.entropy_coef = 0.1;
        let (bonus, _) = token_loss(new.as_tensor(), &old, &reference, &adv, Some(&h), &g).unwrap();
        let diff: Vec<f32> = (&plain - &bonus)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let hv: Vec<f32> = h.flatten_all().unwrap().to_vec1().unwrap();
        for (d, h) in diff.iter().zip(&hv) {
            assert!((d - 0.1 * h).abs() < 1e-6, "{diff:?} vs 0.1 × {hv:?}");
        }
        let gl = grad_of(&bonus, &logits);
        assert!((gl[2] + 0.1 * 0.2058).abs() < 1e-3, "{gl:?}");
        // The policy's own gradient is unchanged by the bonus (it enters through the logits).
        assert_eq!(grad_of(&plain, &new), grad_of(&bonus, &new));
    }

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
