//! `humanlm simulate`: one scenario simulated, streamed or as JSON; and the sampling flags
//! `eval` shares.

use super::{mode_parser, set_threads, truncate_parser, RuntimeArgs};
use crate::generate::SamplingParams;
use crate::model::device::parse_device;
use crate::model::weights::LoadOptions;
use crate::model::Checkpoint;
use clap::Args;
use std::io::Write;

#[derive(Args)]
pub(super) struct SimulateArgs {
    #[command(flatten)]
    rt: RuntimeArgs,
    /// Scenario id (under scenarios/) or file.
    #[arg(long)]
    scenario: String,
    #[arg(long, value_parser = mode_parser(), default_value = "humanlm")]
    mode: crate::sim::Mode,
    /// Prompt set: a folder under prompts/ or a path (default: the checkpoint's, else humanlm).
    #[arg(long)]
    prompts: Option<String>,
    #[command(flatten)]
    sampling: SimSamplingArgs,
    /// What to do when a thread does not fit the context: refuse, or drop the oldest turns.
    #[arg(long, value_parser = truncate_parser(), default_value = "none")]
    truncate: crate::sim::Truncate,
    /// Print the exact rendered prompts (special tokens included); with --json, every call's
    /// chat messages, prompt text, thinking flag, stop string and token budget.
    #[arg(long)]
    show_prompt: bool,
    /// Only render the prompts (as --show-prompt) and generate nothing.
    #[arg(long)]
    prompt_only: bool,
    #[arg(long)]
    json: bool,
}

/// Sampling for simulations; unset values come from the prompt set, then the method's defaults.
#[derive(Args, Clone)]
pub(super) struct SimSamplingArgs {
    #[arg(long, default_value_t = 1)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Default: the set's, else 0.4 (the method's evaluation temperature).
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Default: the set's, else 1.0 (off).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Ban repeating any n-gram of prompt + output (0 = off). Default: the set's, else 4 (the
    /// method's).
    #[arg(long)]
    no_repeat_ngram: Option<usize>,
    /// Cap every call's new tokens below its state's limit.
    #[arg(long)]
    max_tokens: Option<usize>,
}

impl SimSamplingArgs {
    fn params(&self, set: &crate::prompts::PromptSet) -> SamplingParams {
        self.choice().params(set)
    }

    pub(super) fn choice(&self) -> crate::sim::SamplingChoice {
        crate::sim::SamplingChoice {
            n: self.n,
            seed: self.seed,
            temperature: self.temperature,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            no_repeat_ngram: self.no_repeat_ngram,
            max_tokens: self.max_tokens,
        }
    }
}

/// The prompt set a command uses: the one named, else the checkpoint's, else the default.
pub(super) fn prompt_set(
    named: Option<&str>,
    default: Option<String>,
) -> anyhow::Result<crate::prompts::PromptSet> {
    let name = crate::prompts::set_for(named, default);
    Ok(crate::prompts::PromptSet::load(
        &name,
        &crate::prompts::default_root(),
    )?)
}

pub(super) fn simulate_cmd(root: &std::path::Path, a: SimulateArgs) -> anyhow::Result<()> {
    use crate::sim::{simulate_with, Options, SimEvent, Simulator};
    let scenario = crate::scenario::find(&a.scenario, std::path::Path::new("scenarios"))?.scenario;
    // Resolve the checkpoint (cheap) before loading weights, so a bad set fails fast.
    let default_set = match crate::remote::Endpoint::parse_spec(&a.rt.checkpoint) {
        Some(_) => None,
        None => Checkpoint::resolve(&a.rt.checkpoint, root)?.default_prompt_set()?,
    };
    let set = prompt_set(a.prompts.as_deref(), default_set)?;
    set_threads(a.rt.threads);
    let sim = Simulator::open(
        &a.rt.checkpoint,
        root,
        &LoadOptions {
            device: parse_device(&a.rt.device)?,
            ..Default::default()
        },
    )?;
    let opts = Options {
        mode: a.mode,
        params: a.sampling.params(&set),
        truncate: a.truncate,
    };
    // What every JSON answer starts with: the run's identity and the plan's truncation.
    let header = |plan: &crate::sim::Plan| {
        serde_json::json!({
            "scenario": scenario.id,
            "checkpoint": sim.name(),
            "mode": a.mode,
            "prompt_set": set.name,
            "prompt_hash": set.hash,
            "truncate": a.truncate,
            "dropped_turns": plan.dropped_turns,
        })
    };
    if a.prompt_only {
        let plan = crate::sim::plan_with(&set, &scenario, &opts, sim.engine())?;
        let mut stdout = std::io::stdout().lock();
        if a.json {
            let mut v = header(&plan);
            v["calls"] = serde_json::to_value(&plan.calls)?;
            writeln!(stdout, "{v}")?;
        } else {
            for call in &plan.calls {
                writeln!(
                    stdout,
                    "── prompt: {} ({} tokens, budget {}, stop {:?}, thinking {}) ──\n{}",
                    call.name,
                    call.prompt_tokens,
                    call.budget,
                    call.stop,
                    call.thinking,
                    call.prompt
                )?;
            }
        }
        return Ok(());
    }
    let stream = !a.json;
    let mut stdout = std::io::stdout().lock();
    let mut io_err: Option<std::io::Error> = None;
    if stream {
        writeln!(
            stdout,
            "\x1b[2m{} · {} · prompt set {} ({}) · {} mode\x1b[0m",
            scenario.id,
            sim.name(),
            set.name,
            set.hash,
            a.mode.name()
        )?;
    }
    // Prompt tokens the prefix cache served, per call (local checkpoints).
    let mut cached: std::collections::BTreeMap<String, usize> = Default::default();
    let mut order = InOrder::default();
    let (plan, samples) = simulate_with(sim.engine(), &set, &scenario, &opts, None, &mut |e| {
        if let SimEvent::Prefill { call, cached: c } = e {
            cached.insert(call.to_string(), c);
        }
        if !stream || io_err.is_some() {
            return;
        }
        let out = match e {
            SimEvent::CallStarted { call } if a.show_prompt => order.start(
                &call.name,
                format!(
                    "\n\x1b[2m── prompt: {} ({} tokens) ──\n{}\x1b[0m",
                    call.name, call.prompt_tokens, call.prompt
                ),
            ),
            SimEvent::CallStarted { call } => order.start(
                &call.name,
                format!("\n\x1b[1m{}\x1b[0m: {}", call.name, call.prefill),
            ),
            SimEvent::Text {
                call,
                sample: 0,
                delta,
            } => order.text(call, delta),
            SimEvent::CallFinished { call } => order.finish(call),
            _ => String::new(),
        };
        let r = write!(stdout, "{out}");
        if let Err(e) = r.and_then(|_| stdout.flush()) {
            io_err = Some(e);
        }
    })?;
    if let Some(e) = io_err {
        return Err(e.into());
    }
    if a.json {
        let mut v = header(&plan);
        v["samples"] = serde_json::to_value(&samples)?;
        // Per call: its prompt, and how much of it was computed rather than cached.
        v["prompt_tokens"] = plan
            .calls
            .iter()
            .map(|c| {
                let hit = cached.get(&c.name).copied();
                (
                    c.name.clone(),
                    serde_json::json!({
                        "prompt": c.prompt_tokens,
                        "cached": hit,
                        "computed": hit.map(|h| c.prompt_tokens - h),
                    }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
        if a.show_prompt {
            v["calls"] = serde_json::to_value(&plan.calls)?;
        }
        writeln!(stdout, "{v}")?;
    } else {
        if plan.dropped_turns > 0 {
            writeln!(
                stdout,
                "\n[--truncate oldest: dropped the {} oldest turns after the post to fit the context]",
                plan.dropped_turns
            )?;
        }
        for (i, s) in samples.iter().enumerate() {
            if samples.len() > 1 {
                writeln!(stdout, "\n── sample {} ──", i + 1)?;
                for (k, v) in &s.states {
                    writeln!(stdout, "{k}: {v}")?;
                }
                writeln!(stdout, "response: {}", s.response)?;
            }
            writeln!(
                stdout,
                "\n[{}; {} tokens, {} ms; prompt set {} ({})]",
                if s.valid {
                    "valid format"
                } else {
                    "INVALID format (the model broke the tag format)"
                },
                s.tokens,
                s.ms,
                set.name,
                set.hash
            )?;
        }
        if !cached.is_empty() {
            let prompt: usize = plan.calls.iter().map(|c| c.prompt_tokens).sum();
            writeln!(
                stdout,
                "[prefix cache: {} of {prompt} prompt tokens reused]",
                cached.values().sum::<usize>()
            )?;
        }
    }
    Ok(())
}

/// A simulation's streamed text, call after call in plan order, although its calls decode
/// together: the first unfinished call streams live, the others' text waits until it is their
/// turn.
#[derive(Default)]
struct InOrder {
    /// Started calls in order: name, heading and text not yet shown, finished.
    calls: Vec<(String, String, bool)>,
    /// The call that streams live.
    live: usize,
}

impl InOrder {
    /// A call starts: what to write now.
    fn start(&mut self, name: &str, heading: String) -> String {
        self.calls.push((name.to_string(), heading, false));
        self.flush()
    }

    fn text(&mut self, name: &str, delta: &str) -> String {
        match self.calls.iter().position(|c| c.0 == name) {
            Some(i) if i == self.live => delta.to_string(),
            Some(i) => {
                self.calls[i].1.push_str(delta);
                String::new()
            }
            None => String::new(),
        }
    }

    fn finish(&mut self, name: &str) -> String {
        if let Some(c) = self.calls.iter_mut().find(|c| c.0 == name) {
            c.2 = true;
        }
        self.flush()
    }

    /// Shows the live call's waiting text, and every call after it that has finished.
    fn flush(&mut self) -> String {
        let mut out = String::new();
        while let Some((_, pending, done)) = self.calls.get_mut(self.live) {
            out.push_str(&std::mem::take(pending));
            if !*done {
                break;
            }
            out.push('\n');
            self.live += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::InOrder;

    #[test]
    fn calls_stream_in_plan_order_though_they_decode_together() {
        let mut o = InOrder::default();
        let mut shown = o.start("a", "A:".into());
        shown += &o.start("b", "B:".into());
        shown += &o.text("b", "b1");
        shown += &o.text("a", "a1");
        shown += &o.finish("b");
        assert_eq!(shown, "A:a1", "b waits for a");
        shown += &o.text("a", "a2");
        shown += &o.finish("a");
        assert_eq!(shown, "A:a1a2\nB:b1\n");
        assert_eq!(o.flush(), "");
    }
}
