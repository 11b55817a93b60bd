//! Supervised fine-tuning: the real reply in the position the simulator speaks from (the
//! response prompt of the prompt set, so under the HumanLM set the target speaks in the user
//! role), loss on the reply's tokens only. The SFT-think variant targets
//! `<think>trace</think><response>reply</response>`, the traces written by a judge model from
//! the set's trace prompt and cached in the run folder.

use super::run::{no_examples, nth_example, planned};
use super::{Error, Result, StepEvent, TrainEvent, Trainer};
use crate::judge::llm::ChatModel;
use crate::judge::rubric::RubricConfig;
use crate::judge::JudgeConfig;
use crate::model::{Model, Ops};
use crate::prompts::PromptSet;
use crate::scenario::Scenario;
use crate::sim::{self, Mode};
use candle_core::{IndexOp, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// SFT-think: the judge configuration (a `rubric` judge file: its model and sampling) whose
/// model writes the thinking traces.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThinkConfig {
    pub judge: PathBuf,
}

/// One SFT example: the prompt's ids and the target's ids (loss only on the latter).
#[derive(Debug, Clone)]
pub struct Example {
    pub scenario: String,
    pub prompt: Vec<u32>,
    pub target: Vec<u32>,
}

/// Build SFT examples from every scenario with a reference reply; `traces` (by scenario id)
/// turns on the thinking variant.
pub fn sft_examples(
    model: &Model,
    set: &PromptSet,
    scenarios: &[Scenario],
    max_seq: usize,
    traces: Option<&HashMap<String, String>>,
) -> Result<(Vec<Example>, Vec<String>)> {
    let mut out = vec![];
    let mut skipped = vec![];
    let eos = *model
        .tokenizer
        .eos_ids
        .first()
        .ok_or_else(|| Error::Msg("the tokenizer has no end-of-sequence token".into()))?;
    // The thinking variant frames the reply as HumanLM's response call does (thinking on).
    let mode = if traces.is_some() {
        Mode::Humanlm
    } else {
        Mode::Response
    };
    for (sc, reply, plan) in planned(model, set, scenarios, mode, &mut skipped) {
        let call = plan.calls.last().expect("a plan has a response call");
        // The reply as the model must write it after the prompt (and any pre-filled tag).
        let (open, close) = match (set.untagged_reply, call.prefill.is_empty()) {
            (true, _) => ("", ""),
            (false, true) => ("<response>", "</response>"),
            (false, false) => ("", "</response>"),
        };
        let think = match traces {
            Some(t) => match t.get(&sc.id) {
                Some(trace) => format!("<think>\n{}\n</think>\n", trace.trim()),
                None => {
                    skipped.push(format!("{}: no thinking trace", sc.id));
                    continue;
                }
            },
            None => String::new(),
        };
        let text = format!("{think}{open}{}{close}", reply.trim());
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

/// Mean cross-entropy over the target tokens of a batch, on the differentiable path.
pub fn sft_loss(model: &Model, batch: &[&Example]) -> Result<(Tensor, usize)> {
    let mut total: Option<Tensor> = None;
    let mut count = 0usize;
    for ex in batch {
        let ids: Vec<u32> = ex.prompt.iter().chain(&ex.target).copied().collect();
        // Position i predicts token i+1: the inputs drop the last token, and only the
        // positions that predict target tokens get logits.
        let input = Tensor::new(&ids[..ids.len() - 1], &model.decoder.device)?.unsqueeze(0)?;
        let start = ex.prompt.len() - 1;
        let logits = model
            .decoder
            .forward_from(&input, None, Ops::Diff, start)?
            .i(0)?;
        let labels = Tensor::new(ex.target.as_slice(), &model.decoder.device)?;
        let sum = crate::model::grad::token_logprobs(&logits, &labels)?
            .sum_all()?
            .neg()?;
        total = Some(match total {
            Some(t) => (t + sum)?,
            None => sum,
        });
        count += ex.target.len();
    }
    let total = total.ok_or_else(|| Error::Msg("empty batch".into()))?;
    Ok(((total / count as f64)?, count))
}

pub(super) fn train(
    t: &mut Trainer,
    set: &PromptSet,
    think: Option<&ThinkConfig>,
    roots: &crate::roots::Roots,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<()> {
    let (scenarios, mut skipped) = t.cfg.data.load()?;
    let traces = match think {
        Some(th) => Some(write_traces(
            t,
            set,
            th,
            &scenarios,
            &roots.checkpoints,
            on_event,
        )?),
        None => None,
    };
    let (examples, more) = sft_examples(&t.model, set, &scenarios, t.cfg.max_seq, traces.as_ref())?;
    skipped.extend(more);
    on_event(TrainEvent::Data {
        examples: examples.len(),
        skipped: &skipped,
    });
    if examples.is_empty() {
        return Err(no_examples(&t.cfg.data, &skipped));
    }
    let batch = t.cfg.batch.max(1);
    let accum = t.cfg.grad_accum.max(1);
    let per_step = batch * accum;
    for step in t.start..t.cfg.steps {
        t.check_cancel(cancel, step)?;
        let lr = super::optim::learning_rate(step, t.cfg.lr, t.cfg.warmup, t.cfg.steps);
        let t0 = std::time::Instant::now();
        let mut grads: Vec<Tensor> = vec![];
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        for micro in 0..accum {
            let first = step * per_step + micro * batch;
            let mb: Vec<&Example> = (first..first + batch)
                .map(|k| &examples[nth_example(examples.len(), t.cfg.seed, k)])
                .collect();
            t.params
                .dropout_on(t.cfg.seed ^ (first as u64).wrapping_mul(0x2545_F491));
            let (loss, n) = sft_loss(&t.model, &mb)?;
            t.params.dropout_off();
            let g = t.grads(&(loss.clone() / accum as f64)?)?;
            if grads.is_empty() {
                grads = g;
            } else {
                for (acc, gi) in grads.iter_mut().zip(g) {
                    *acc = (&*acc + gi)?;
                }
            }
            loss_sum += loss.to_scalar::<f32>()? as f64;
            tokens += n;
        }
        let loss = loss_sum / accum as f64;
        let grad_norm = t.update(grads, loss, lr, step)?;
        let ev = StepEvent {
            step: step + 1,
            steps: t.cfg.steps,
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: 0.0,
            eta_s: 0.0,
            reward: None,
            reward_by_state: Default::default(),
            kl: None,
            rollouts: vec![],
        };
        t.finish_step(ev, t0.elapsed().as_secs_f64(), on_event)?;
    }
    Ok(())
}

/// One cached trace.
#[derive(Serialize, Deserialize)]
struct TraceLine {
    key: String,
    scenario: String,
    trace: String,
}

/// Thinking traces for every scenario with a reply, written by the judge's model from the set's
/// trace prompt; cached in `<out>/traces.jsonl` by (model, prompt), so a resumed or repeated run
/// asks again only for what changed.
fn write_traces(
    t: &Trainer,
    set: &PromptSet,
    think: &ThinkConfig,
    scenarios: &[Scenario],
    checkpoints: &Path,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<HashMap<String, String>> {
    let rubric: RubricConfig = match JudgeConfig::read(&think.judge)? {
        JudgeConfig::Rubric(r) | JudgeConfig::Aspects(r) => r,
        _ => {
            return Err(Error::file(
                &think.judge,
                "thinking traces need a judge with a language model (kind = \"rubric\")",
            ))
        }
    };
    if set.prefill_tag {
        return Err(Error::Msg(format!(
            "prompt set '{}' pre-fills the reply's opening tag, so no thinking block can precede it; use a set without pre-fill (e.g. --prompts humanlm)",
            set.name
        )));
    }
    let model = rubric.open_model(checkpoints)?;
    let identity = model.identity();
    let path = t.out.join("traces.jsonl");
    let mut cache: HashMap<String, String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<TraceLine>(l).ok())
        .map(|l| (l.key, l.trace))
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::file(path, e.to_string()))?;
    let mut traces = HashMap::new();
    let todo: Vec<&Scenario> = scenarios
        .iter()
        .filter(|s| s.target.response.is_some())
        .collect();
    for (i, sc) in todo.iter().enumerate() {
        let reply = sc.target.response.as_deref().unwrap_or_default();
        let persona = set.persona(sc.persona.as_ref())?;
        let context = set.thread(&sim::thread_turns(sc))?;
        let prompt = set.trace(&persona, &context, reply)?;
        let key = hex(&Sha256::digest(format!("{identity}\n{prompt}")));
        let trace = match cache.get(&key) {
            Some(tr) => tr.clone(),
            None => {
                on_event(TrainEvent::Note(&format!(
                    "writing thinking trace {}/{} ({})",
                    i + 1,
                    todo.len(),
                    sc.id
                )));
                let raw = ask_with_retries(&model, &rubric, &prompt)
                    .map_err(|e| Error::file(&think.judge, format!("trace for {}: {e}", sc.id)))?;
                let tr = clean_trace(&raw);
                if tr.is_empty() {
                    continue;
                }
                writeln!(
                    file,
                    "{}",
                    serde_json::to_string(&TraceLine {
                        key: key.clone(),
                        scenario: sc.id.clone(),
                        trace: tr.clone()
                    })?
                )?;
                file.flush()?;
                cache.insert(key, tr.clone());
                tr
            }
        };
        traces.insert(sc.id.clone(), trace);
    }
    Ok(traces)
}

fn ask_with_retries(model: &ChatModel, cfg: &RubricConfig, prompt: &str) -> Result<String> {
    let mut last = None;
    for attempt in 0..=cfg.retries {
        if attempt > 0 {
            let wait = cfg.backoff_s * 2f64.powi(attempt as i32 - 1);
            std::thread::sleep(std::time::Duration::from_secs_f64(wait.max(0.0)));
        }
        match model.ask(prompt, &cfg.sampling, attempt as u64) {
            Ok(r) if !clean_trace(&r).is_empty() => return Ok(r),
            Ok(_) => last = Some(Error::Msg("the model wrote an empty trace".into())),
            Err(e) => last = Some(e.into()),
        }
    }
    Err(last.unwrap_or_else(|| Error::Msg("no attempt made".into())))
}

/// The monologue without think blocks or tags a model might wrap it in.
fn clean_trace(raw: &str) -> String {
    let text = match raw.rfind("</think>") {
        Some(i) => &raw[i + "</think>".len()..],
        None => raw,
    };
    text.replace("<think>", "")
        .replace("</think>", "")
        .trim()
        .to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
