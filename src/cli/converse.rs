//! `humanlm converse`: a simulated user and an assistant take turns on a scenario, streamed or
//! as JSON; over a folder of scenarios, a resumable run folder with its summary.

use super::simulate::{prompt_set, SimSamplingArgs};
use super::{mode_parser, on_ctrl_c, set_threads};
use crate::converse::run::{self, Progress};
use crate::converse::{AssistantSampling, Event, Setup, Transcript, UserSide};
use crate::model::checkpoint::DEFAULT_CHECKPOINT;
use crate::model::device::parse_device;
use crate::model::weights::LoadOptions;
use crate::model::Checkpoint;
use crate::scenario::Speaker;
use crate::sim::{SimEvent, Simulator};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Args)]
pub(super) struct ConverseArgs {
    /// Scenario id (under scenarios/), file, or a folder of scenarios (a run folder is written).
    #[arg(long)]
    scenario: String,
    /// The simulated user: a checkpoint name or path, or `endpoint:URL#MODEL`.
    #[arg(long, default_value = DEFAULT_CHECKPOINT)]
    user: String,
    /// The assistant: a checkpoint name or path, or `endpoint:URL#MODEL`.
    #[arg(long, default_value = DEFAULT_CHECKPOINT)]
    assistant: String,
    /// The user's prompt set (default: the user checkpoint's, else humanlm).
    #[arg(long)]
    prompts: Option<String>,
    /// How the user writes each turn: humanlm (states first), response, joint.
    #[arg(long, value_parser = mode_parser(), default_value = "humanlm")]
    mode: crate::sim::Mode,
    /// New turns (both sides) before the conversation ends as max-turns (default: the
    /// scenario's `max_turns`, else 10).
    #[arg(long)]
    turns: Option<usize>,
    /// The user's sampling; --n is the number of conversations per scenario (conversation k is
    /// seeded seed + k).
    #[command(flatten)]
    sampling: SimSamplingArgs,
    #[arg(long, default_value_t = 0.7)]
    assistant_temperature: f32,
    #[arg(long, default_value_t = 512)]
    assistant_max_tokens: usize,
    /// cpu, cuda or cuda:N, for both sides' local checkpoints.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    threads: Option<usize>,
    /// Write a run folder here (default for a folder of scenarios: runs/converse-…).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Save the conversation as a scenario file (one scenario, one conversation): the thread is
    /// the conversation up to its last user turn, which becomes the reference reply.
    #[arg(long)]
    save_scenario: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// Prints a conversation as it streams; the first write error is kept and ends the command.
struct Printer<'a> {
    out: std::io::StdoutLock<'a>,
    err: Option<std::io::Error>,
}

impl Printer<'_> {
    fn put(&mut self, s: &str) {
        if self.err.is_none() {
            if let Err(e) = self
                .out
                .write_all(s.as_bytes())
                .and_then(|_| self.out.flush())
            {
                self.err = Some(e);
            }
        }
    }

    fn event(&mut self, e: &Event) {
        match e {
            Event::TurnStarted { index, speaker } => self.put(&format!(
                "\n\x1b[1m── turn {} · {} ──\x1b[0m\n",
                index + 1,
                match speaker {
                    Speaker::User => crate::sim::HUMAN,
                    Speaker::Assistant => "assistant",
                }
            )),
            Event::User(SimEvent::CallStarted { call }) => {
                self.put(&format!("\x1b[2m{}\x1b[0m: {}", call.name, call.prefill))
            }
            Event::User(SimEvent::Text {
                sample: 0, delta, ..
            }) => self.put(delta),
            Event::User(SimEvent::CallFinished { .. }) => self.put("\n"),
            Event::AssistantText(d) => self.put(d),
            Event::TurnFinished { turn, .. } => {
                if turn.speaker == Speaker::Assistant {
                    self.put("\n");
                }
                self.put(&format!(
                    "\x1b[2m[{} tokens, {} ms, prompt {} ({} cached){}]\x1b[0m\n",
                    turn.tokens,
                    turn.ms,
                    turn.prompt_tokens,
                    turn.cached_tokens,
                    turn.marker
                        .as_ref()
                        .map(|m| format!(", wrote {m}"))
                        .unwrap_or_default()
                ))
            }
            _ => {}
        }
    }
}

/// The two sides: one load when both name the same checkpoint.
fn open_sides(a: &ConverseArgs, root: &Path) -> anyhow::Result<(Simulator, Simulator)> {
    let opts = LoadOptions {
        device: parse_device(&a.device)?,
        ..Default::default()
    };
    let user = Simulator::open(&a.user, root, &opts)?;
    let assistant = if a.assistant == a.user {
        user.clone()
    } else {
        Simulator::open(&a.assistant, root, &opts)?
    };
    Ok((user, assistant))
}

pub(super) fn converse_cmd(root: &Path, a: ConverseArgs) -> anyhow::Result<()> {
    let path = Path::new(&a.scenario);
    let batch = path.is_dir();
    let scenarios: Vec<crate::scenario::Scenario> = if batch {
        crate::scenario::load_all(path)
            .into_iter()
            .map(|r| r.map(|l| l.scenario))
            .collect::<Result<_, _>>()?
    } else {
        vec![crate::scenario::find(&a.scenario, Path::new("scenarios"))?.scenario]
    };
    if scenarios.is_empty() {
        anyhow::bail!("{}: holds no scenario files", path.display());
    }
    if let Some(t) = a.turns {
        if t == 0 || t > crate::scenario::MAX_TURNS_LIMIT {
            anyhow::bail!(
                "--turns {t}: give a number from 1 to {}",
                crate::scenario::MAX_TURNS_LIMIT
            );
        }
    }
    if a.save_scenario.is_some() && (batch || a.sampling.choice().n > 1) {
        anyhow::bail!(
            "--save-scenario saves one conversation: name one scenario and leave --n at 1"
        );
    }
    if let Some(p) = &a.save_scenario {
        if p.exists() {
            anyhow::bail!("{}: already exists (nothing was run)", p.display());
        }
    }
    let default_set = match crate::remote::Endpoint::parse_spec(&a.user) {
        Some(_) => None,
        None => Checkpoint::resolve(&a.user, root)?.default_prompt_set()?,
    };
    let set = prompt_set(a.prompts.as_deref(), default_set)?;
    set_threads(a.threads);
    let (user, assistant) = open_sides(&a, root)?;
    let sampling = a.sampling.choice();
    let setup = Setup {
        user: UserSide {
            engine: user.engine(),
            set: &set,
            mode: a.mode,
            sampling: sampling.clone(),
        },
        assistant: assistant.engine(),
        assistant_sampling: AssistantSampling {
            temperature: a.assistant_temperature,
            max_tokens: a.assistant_max_tokens,
            ..Default::default()
        },
        max_turns: a.turns,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    on_ctrl_c(cancel.clone());
    let mut p = Printer {
        out: std::io::stdout().lock(),
        err: None,
    };
    let stream = !a.json;
    if batch || a.out.is_some() {
        let identity = serde_json::json!({
            "user": user.name(),
            "assistant": assistant.name(),
            "prompt_set": set.name,
            "prompt_hash": set.hash,
            "mode": a.mode,
            "sampling": sampling,
            "assistant_sampling": setup.assistant_sampling,
            "turns": a.turns,
            "scenarios": scenarios.iter().map(|s| serde_json::to_value(s).unwrap_or_default()).collect::<Vec<_>>(),
        });
        let label = format!(
            "{}-{}",
            a.mode.name(),
            Path::new(&user.name())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let dir = run::open(Path::new("runs"), &label, &identity, a.out.as_deref())
            .map_err(anyhow::Error::msg)?;
        let summary = run::execute(
            &dir,
            &setup,
            &scenarios,
            sampling.n,
            sampling.seed,
            Some(&cancel),
            &mut |pr| match pr {
                Progress::Kept { scenario, k } if stream => {
                    p.put(&format!("{scenario} #{k}: finished earlier, kept\n"))
                }
                Progress::Started { scenario, k, seed } if stream => p.put(&format!(
                    "\n\x1b[1m═══ {scenario} #{k} (seed {seed}) ═══\x1b[0m\n"
                )),
                Progress::Event(e) if stream => p.event(&e),
                Progress::Finished(c) if stream => p.put(&format!("ended: {}\n", c.end)),
                _ => {}
            },
        )
        .map_err(anyhow::Error::msg)?;
        if let Some(e) = p.err.take() {
            return Err(e.into());
        }
        if a.json {
            p.put(&format!(
                "{}\n",
                serde_json::json!({"run": dir.dir, "summary": summary})
            ));
        } else {
            print_summary(&mut p, &dir.dir, &summary);
        }
        return p.err.map_or(Ok(()), |e| Err(e.into()));
    }
    let sc = &scenarios[0];
    let mut transcripts: Vec<Transcript> = vec![];
    for k in 0..sampling.n.max(1) {
        if stream && sampling.n > 1 {
            p.put(&format!("\n\x1b[1m═══ conversation {k} ═══\x1b[0m\n"));
        }
        if stream && k == 0 {
            p.put(&format!(
                "\x1b[2m{} · user {} ({} set, {} mode) · assistant {}\x1b[0m\n",
                sc.id,
                user.name(),
                set.name,
                a.mode.name(),
                assistant.name()
            ));
        }
        let t = crate::converse::converse(
            &setup,
            sc,
            sampling.seed.wrapping_add(k as u64),
            Some(&cancel),
            &mut |e| {
                if stream {
                    p.event(&e)
                }
            },
        );
        if stream {
            p.put(&format!("ended: {}\n", t.end));
        }
        transcripts.push(t);
    }
    if let Some(e) = p.err.take() {
        return Err(e.into());
    }
    if let Some(path) = &a.save_scenario {
        let Some(saved) = crate::converse::to_scenario(sc, &transcripts[0]) else {
            anyhow::bail!(
                "{}: not written: the conversation holds no user turn to save as the reply",
                path.display()
            );
        };
        // A saved file must load: a turn the model left empty cannot be a thread turn.
        saved.validate(path).map_err(|e| {
            anyhow::anyhow!("{e} (not written: the conversation cannot be a scenario as it is)")
        })?;
        let text = toml::to_string(&saved)?;
        crate::files::write(path, text)?;
        if stream {
            p.put(&format!("saved as scenario {}\n", path.display()));
        }
    }
    if a.json {
        let table = sc.conversation.clone().unwrap_or_default();
        let out: Vec<serde_json::Value> = transcripts
            .iter()
            .map(|t| {
                let mut v = serde_json::to_value(t).unwrap_or_default();
                v["diagnostics"] =
                    serde_json::to_value(crate::converse::diagnostics::diagnose(t, &table))
                        .unwrap_or_default();
                v
            })
            .collect();
        let v = serde_json::json!({
            "scenario": sc.id,
            "user": user.name(),
            "assistant": assistant.name(),
            "prompt_set": set.name,
            "prompt_hash": set.hash,
            "mode": a.mode,
            "conversations": out,
        });
        p.put(&format!("{v}\n"));
    }
    p.err.map_or(Ok(()), |e| Err(e.into()))
}

fn print_summary(p: &mut Printer, dir: &Path, s: &run::Summary) {
    p.put(&format!(
        "\n{} conversations · turns {:.1} [{:.1}, {:.1}]\n",
        s.conversations.len(),
        s.turns.mean,
        s.turns.ci95[0],
        s.turns.ci95[1]
    ));
    let ends: Vec<String> = s
        .end_reasons
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    p.put(&format!("ended: {}\n", ends.join(", ")));
    for (name, e) in &s.rates {
        if e.n > 0 {
            p.put(&format!(
                "{name}: {:.3} [{:.3}, {:.3}] (n {})\n",
                e.mean, e.ci95[0], e.ci95[1], e.n
            ));
        }
    }
    p.put(&format!("run folder: {}\n", dir.display()));
}
