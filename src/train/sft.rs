//! Supervised fine-tuning: the real reply in the position the simulator speaks from (the
//! response prompt of the prompt set, so under the HumanLM set the target speaks in the user
//! role), loss on the reply's tokens only. The SFT-think variant puts a thinking trace before
//! the reply, the traces written by a judge model from the set's trace prompt and cached in the
//! run folder.
//!
//! The targets are the HumanLM recipe's SFT generations (process_dataset.py,
//! `make_map_fn_sft`), see `recipe_generation`: the reply bare under a no-tag set,
//! `<response>\n{reply}\n</response>` otherwise, and `<think>\n{trace}\n</think>\n` before the
//! tagged reply for SFT-think; then the end-of-sequence token, as the SFT dataset appends it.
//! What the prompt already ends with (the open `<think>` of a thinking generation prompt, a
//! pre-filled `<response>`) is not repeated: the target continues the prompt.

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

/// The recipe's SFT generation text, split where a prompt may already have written part of it:
/// `head` is its opening tag and the newline after it (empty for a bare reply), `body` the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Generation {
    head: &'static str,
    body: String,
}

impl Generation {
    /// What the model writes after `prompt`: the generation less the longest start of its
    /// opening tag that the prompt already ends with (`<think>` from a thinking generation
    /// prompt, `<response>` pre-filled by a set).
    fn after(&self, prompt: &str) -> String {
        let written = (1..=self.head.len())
            .rev()
            .find(|&k| prompt.ends_with(&self.head[..k]))
            .unwrap_or(0);
        format!("{}{}", &self.head[written..], self.body)
    }
}

/// The reply as the HumanLM recipe's SFT rows hold it (process_dataset.py, `make_map_fn_sft`):
/// bare under a no-tag set (`--no_tag`), `<response>\n{reply}\n</response>` otherwise, and with
/// a trace (`--thinking_sft`) `<think>\n{trace}\n</think>\n` before the tagged reply. The reply
/// is taken as stored (the recipe does not strip it); the trace stripped, as the recipe's trace
/// writer returns it. The recipe refuses thinking with no tag, and so does this.
fn recipe_generation(reply: &str, trace: Option<&str>, untagged: bool) -> Result<Generation> {
    Ok(match (trace, untagged) {
        (Some(_), true) => return Err(Error::Msg(NO_TAG_THINK.into())),
        (None, true) => Generation {
            head: "",
            body: reply.to_string(),
        },
        (None, false) => Generation {
            head: "<response>\n",
            body: format!("{reply}\n</response>"),
        },
        (Some(t), false) => Generation {
            head: "<think>\n",
            body: format!("{}\n</think>\n<response>\n{reply}\n</response>", t.trim()),
        },
    })
}

const NO_TAG_THINK: &str = "SFT-think needs a set whose reply is tagged: the HumanLM recipe builds thinking data only with <response> tags (process_dataset.py refuses --thinking_sft with --no_tag)";

/// Why `set` cannot train SFT-think, if it cannot: its reply prompt must leave room for a
/// thinking block (no pre-filled tag, thinking on) and its reply must be tagged.
fn think_refusal(set: &PromptSet) -> Option<String> {
    if set.prefill_tag {
        return Some(format!(
            "prompt set '{}' pre-fills the reply's opening tag, so no thinking block can precede it; use a set without pre-fill (e.g. --prompts humanlm)",
            set.name
        ));
    }
    if set.untagged_reply {
        return Some(format!("prompt set '{}': {NO_TAG_THINK}", set.name));
    }
    if !set.response_thinking {
        return Some(format!(
            "prompt set '{}' writes the reply with thinking off (response_thinking = false), so its prompt already closes the think block; use a set with thinking on",
            set.name
        ));
    }
    None
}

/// Build SFT examples from every scenario with a reference reply; `traces` (by scenario id)
/// turns on the thinking variant. Each target is the ids of the recipe's generation as it
/// continues the prompt (`Generation::after`), then the end-of-sequence token; prompt and target
/// are tokenized apart (no BOS added to the target), as the recipe's SFT dataset does.
pub fn sft_examples(
    model: &Model,
    set: &PromptSet,
    scenarios: &[Scenario],
    max_seq: usize,
    traces: Option<&HashMap<String, String>>,
) -> Result<(Vec<Example>, Vec<String>)> {
    let mut out = vec![];
    let mut skipped = vec![];
    // The tokenizer's own EOS, as the recipe's SFT dataset appends `tokenizer.eos_token`.
    let tok = &model.tokenizer;
    let eos = tok
        .eos_id
        .or(tok.eos_ids.first().copied())
        .ok_or_else(|| Error::Msg("the tokenizer has no end-of-sequence token".into()))?;
    // The thinking variant prompts as HumanLM's response call does (thinking on); plain SFT as
    // the response mode does (thinking off), as the recipe's enable_thinking does for each.
    let mode = match traces {
        Some(_) => {
            if let Some(why) = think_refusal(set) {
                return Err(Error::Msg(why));
            }
            Mode::Humanlm
        }
        None => Mode::Response,
    };
    for (sc, reply, plan) in planned(model, set, scenarios, mode, &mut skipped) {
        let call = plan.calls.last().expect("a plan has a response call");
        let trace = match traces {
            Some(t) => match t.get(&sc.id) {
                Some(trace) => Some(trace.as_str()),
                None => {
                    skipped.push(format!("{}: no thinking trace", sc.id));
                    continue;
                }
            },
            None => None,
        };
        let text = recipe_generation(reply, trace, set.untagged_reply)?.after(&call.prompt);
        let mut target = tok.encode_rendered(&text)?;
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
            rollout_s: None,
            judge_s: None,
            update_s: Some(t0.elapsed().as_secs_f64()),
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
    // Refused before any trace is asked for.
    if let Some(why) = think_refusal(set) {
        return Err(Error::Msg(why));
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

/// The monologue as the recipe keeps it (stripped of surrounding whitespace), less what a
/// thinking model writes before it: everything up to its last `</think>` goes, and stray think
/// tags are removed, so the trace cannot close the think block it is put in early.
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
