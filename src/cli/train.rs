//! `humanlm train sft|grpo`: the training flags turned into a [`crate::train::TrainConfig`],
//! and the run's progress as a bar (or lines, without a terminal).

use super::{on_ctrl_c, parse_domain};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub(super) enum TrainCommand {
    /// Supervised fine-tuning: the real reply as the target, loss on its tokens only.
    Sft(SftArgs),
    /// HumanLM GRPO: rollouts per state, judged against the real reply, KL to the base.
    Grpo(GrpoArgs),
}

/// Options both training methods take.
#[derive(Args)]
pub(super) struct TrainArgs {
    /// The base checkpoint (name or path; quantized weights are dequantized for training).
    #[arg(long)]
    checkpoint: String,
    /// Scenarios with reference replies: a file or a folder.
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    scenarios: Option<PathBuf>,
    /// A HUMANUAL file (JSONL, JSON or Parquet rows) instead of scenario files; needs --domain.
    #[arg(long, requires = "domain")]
    data: Option<PathBuf>,
    /// The domain of the --data rows (news, book, opinion, politics, chat, email).
    #[arg(long)]
    domain: Option<String>,
    /// Use at most this many --data rows.
    #[arg(long)]
    limit: Option<usize>,
    /// Skip --data rows whose generated persona has fewer list items than this (the HumanLM
    /// recipe's filter, as in `scenarios import`); 0 keeps every row.
    #[arg(long, default_value_t = crate::scenario::import::MIN_PERSONA_ITEMS)]
    min_persona_items: usize,
    /// Output folder, e.g. checkpoints/my-adapter (then usable as --checkpoint my-adapter).
    #[arg(long)]
    out: PathBuf,
    /// Prompt set framing the target (default: the base's own).
    #[arg(long)]
    prompts: Option<String>,
    #[arg(long, default_value_t = crate::train::TrainConfig::defaults().rank)]
    rank: usize,
    /// LoRA alpha (default: twice the rank, a scale alpha/rank of 2).
    #[arg(long)]
    alpha: Option<f64>,
    /// Dropout on the adapters' inputs during training.
    #[arg(long, default_value_t = crate::train::TrainConfig::defaults().dropout)]
    dropout: f64,
    /// Comma-separated module names to adapt.
    #[arg(long, value_delimiter = ',', default_values_t = crate::train::TrainConfig::defaults().targets)]
    targets: Vec<String>,
    /// Peak learning rate (default: 1e-3 for SFT, 1e-4 for GRPO; a fiftieth of that with --full).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = crate::train::TrainConfig::defaults().warmup)]
    warmup: usize,
    #[arg(long, default_value_t = crate::train::TrainConfig::defaults().steps)]
    steps: usize,
    /// SFT: examples per micro-batch (default 1). GRPO: prompts per step, each with its --n
    /// rollouts (default 7: the recipe's 32 prompts × 4 scaled down to one prompt per state, so
    /// one step holds every state).
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long, default_value_t = crate::train::TrainConfig::defaults().grad_accum)]
    grad_accum: usize,
    #[arg(long, default_value_t = crate::train::TrainConfig::defaults().max_grad_norm)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = crate::train::TrainConfig::defaults().max_seq)]
    max_seq: usize,
    #[arg(long, default_value_t = crate::train::TrainConfig::defaults().seed)]
    seed: u64,
    /// Save a checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = crate::train::TrainConfig::defaults().save_every)]
    save_every: usize,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Train every weight instead of LoRA factors (small models: about 16 bytes a parameter
    /// for weights, gradients and AdamW state in f32). The output is a whole HF checkpoint.
    #[arg(long)]
    full: bool,
    /// Where to train: cpu, cuda or cuda:N (a resume may move the run).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weights and activations: f32, bf16 or f16 (default: f32 on the CPU, bf16 on a GPU).
    /// Optimizer state and master weights stay f32.
    #[arg(long)]
    dtype: Option<String>,
    /// Validate the policy on held-out scenarios (a scenario file or folder, or a HUMANUAL file
    /// with --domain) at step 0, every --val-every steps and at the end, decoding as the paper
    /// protocol does; each pass is an eval run folder in OUT/val/ and a `val` line in
    /// events.jsonl.
    #[arg(long)]
    val: Option<PathBuf>,
    /// Validate every this many steps (0: only at step 0 and at the end).
    #[arg(long, default_value_t = 10, requires = "val")]
    val_every: usize,
    /// The validation judge file (default: the reward's judge for GRPO, the embedding judge
    /// for SFT).
    #[arg(long, requires = "val")]
    val_judge: Option<PathBuf>,
    /// Validate on the first N scenarios.
    #[arg(long, requires = "val")]
    val_limit: Option<usize>,
    /// New tokens per validation call (default: the paper protocol's 1024, or GRPO's
    /// --max-new-tokens when set).
    #[arg(long, requires = "val")]
    val_max_tokens: Option<usize>,
    /// Keep the best validated step's model in OUT/best/ (best: the lowest held-out loss for
    /// SFT, the highest reply score otherwise).
    #[arg(long, requires = "val")]
    keep_best: bool,
}

#[derive(Args)]
pub(super) struct SftArgs {
    #[command(flatten)]
    common: TrainArgs,
    /// SFT-think: a judge file (kind = "rubric") whose model writes a thinking trace for each
    /// reply; the target continues the prompt's open think block as the recipe's SFT-think
    /// rows do: trace, </think>, then <response>\nreply\n</response>.
    #[arg(long)]
    think: Option<PathBuf>,
}

#[derive(Args)]
pub(super) struct GrpoArgs {
    #[command(flatten)]
    common: TrainArgs,
    /// Rollouts per prompt.
    #[arg(long, default_value_t = crate::train::GrpoParams::default().n)]
    n: usize,
    #[arg(long, default_value_t = crate::train::GrpoParams::default().temperature)]
    temperature: f32,
    #[arg(long, default_value_t = crate::train::GrpoParams::default().kl_coef)]
    kl_coef: f64,
    #[arg(long, default_value_t = crate::train::GrpoParams::default().clip)]
    clip: f64,
    /// Prompts per optimizer update, each with its --n rollouts (verl's ppo_mini_batch_size;
    /// the recipe: 4 of a batch of 32). 0 or at least --batch: the whole step, one update.
    #[arg(long, default_value_t = crate::train::GrpoParams::default().ppo_mini_batch)]
    ppo_mini_batch: usize,
    /// Weight of the entropy bonus: the loss loses this times the policy's mean token entropy
    /// over the rollouts (verl's entropy_coeff; 0, the recipe's, skips computing it).
    #[arg(long, default_value_t = crate::train::GrpoParams::default().entropy_coef)]
    entropy_coef: f64,
    /// Cap on each state's token budget (0: the prompt set's budgets).
    #[arg(long, default_value_t = crate::train::GrpoParams::default().max_new_tokens)]
    max_new_tokens: usize,
    /// Comma-separated states to train (default: the six states and response).
    #[arg(long, value_delimiter = ',')]
    states: Vec<String>,
    /// `judge` (the default embedding judge), a judge file (e.g. prompts/judges/rubric-local.toml),
    /// or `contains:WORD:MAX_TOKENS` (verifiable, for testing).
    #[arg(long, default_value = "judge")]
    reward: String,
}

pub(super) fn train_cmd(root: &std::path::Path, cmd: TrainCommand) -> anyhow::Result<()> {
    match cmd {
        TrainCommand::Sft(a) => {
            let method = crate::train::Method::Sft {
                think: a.think.map(|judge| crate::train::ThinkConfig { judge }),
            };
            train(root, method, a.common)
        }
        TrainCommand::Grpo(a) => {
            let method = crate::train::Method::Grpo(crate::train::GrpoParams {
                n: a.n,
                temperature: a.temperature,
                kl_coef: a.kl_coef,
                clip: a.clip,
                ppo_mini_batch: a.ppo_mini_batch,
                entropy_coef: a.entropy_coef,
                max_new_tokens: a.max_new_tokens,
                states: a.states,
                reward: crate::train::reward::RewardSpec::parse(&a.reward)?,
            });
            train(root, method, a.common)
        }
    }
}

fn train(root: &std::path::Path, method: crate::train::Method, a: TrainArgs) -> anyhow::Result<()> {
    use crate::train::{Data, TrainConfig, TrainEvent};
    let domain = || -> anyhow::Result<crate::scenario::Domain> {
        let name = a.domain.clone().unwrap_or_default();
        parse_domain(&name).map_err(|e| anyhow::anyhow!("--domain: {e}"))
    };
    let data = match (a.scenarios.clone(), a.data.clone()) {
        (Some(path), None) => Data::Scenarios { path },
        (None, Some(file)) => Data::Humanual {
            file,
            domain: domain()?,
            limit: a.limit,
            min_persona_items: a.min_persona_items,
        },
        _ => anyhow::bail!("give either --scenarios or --data"),
    };
    let val = match &a.val {
        None => None,
        Some(path) => {
            // A HUMANUAL file by its extension; anything else is scenario files.
            let humanual = path.is_file()
                && path
                    .extension()
                    .is_some_and(|e| ["jsonl", "json", "parquet"].contains(&&*e.to_string_lossy()));
            let data = if humanual {
                if a.domain.is_none() {
                    anyhow::bail!(
                        "--val {}: a HUMANUAL file; give its rows' --domain",
                        path.display()
                    );
                }
                Data::Humanual {
                    file: path.clone(),
                    domain: domain()?,
                    limit: None,
                    min_persona_items: a.min_persona_items,
                }
            } else {
                Data::Scenarios { path: path.clone() }
            };
            Some(crate::train::ValConfig {
                data,
                every: a.val_every,
                judge: a.val_judge.clone(),
                limit: a.val_limit,
                max_tokens: a.val_max_tokens,
                keep_best: a.keep_best,
            })
        }
    };
    let mut cfg = TrainConfig::new(method, &a.checkpoint, data);
    cfg.prompts = a.prompts.clone();
    cfg.set_rank(a.rank, a.alpha);
    cfg.dropout = a.dropout;
    cfg.targets = a.targets.clone();
    cfg.set_full(a.full, a.lr);
    cfg.warmup = a.warmup;
    cfg.steps = a.steps;
    if let Some(b) = a.batch {
        cfg.batch = b;
    }
    cfg.grad_accum = a.grad_accum;
    cfg.max_grad_norm = a.max_grad_norm;
    cfg.max_seq = a.max_seq;
    cfg.seed = a.seed;
    cfg.save_every = a.save_every;
    cfg.device = a.device.clone();
    cfg.dtype = a.dtype.clone();
    cfg.val = val;
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    on_ctrl_c(cancel.clone());
    let bar = indicatif::ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} step {pos}/{len} · ETA {eta} · {msg}",
        )
        .expect("valid template"),
    );
    // Lines above the bar; without a terminal the bar is hidden and drops them, so they go to
    // stdout instead.
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    let out = crate::train::run(
        &cfg,
        &a.out,
        &crate::roots::Roots::new(root, crate::prompts::default_root()),
        a.resume,
        Some(&cancel),
        &mut |e| match e {
            TrainEvent::Data { examples, skipped } => say(format!(
                "{examples} training examples{}",
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!("; skipped {}: {}", skipped.len(), skipped.join("; "))
                }
            )),
            TrainEvent::Note(s) => say(s.to_string()),
            TrainEvent::Step(ev) => {
                let reward = match (&ev.reward, ev.kl) {
                    (Some(r), Some(kl)) => {
                        format!(" reward {:.3} ± {:.3} kl {:.4}", r.mean, r.std, kl)
                    }
                    _ => String::new(),
                };
                let times = step_times(ev);
                bar.set_position(ev.step as u64);
                bar.set_message(format!(
                    "loss {:.4}{reward} · lr {:.2e} · |g| {:.3} · {:.0} tok/s{times}",
                    ev.loss, ev.lr, ev.grad_norm, ev.tokens_per_s
                ));
                if !bar.is_hidden() {
                    return;
                }
                println!(
                    "step {}/{} loss {:.4}{reward} lr {:.2e} grad_norm {:.3} {:.0} tok/s{times}",
                    ev.step, ev.steps, ev.loss, ev.lr, ev.grad_norm, ev.tokens_per_s
                );
            }
            TrainEvent::Val(v) => say(crate::train::val::describe(v)),
            TrainEvent::Saved(dir) => say(format!("saved {}", dir.display())),
        },
    );
    bar.finish_and_clear();
    let out = out?;
    let what = if cfg.full { "checkpoint" } else { "adapter" };
    println!(
        "{what} written to {} (use it as --checkpoint {})",
        out.display(),
        out.display()
    );
    Ok(())
}

/// Where a step's time went, as " · rollout 3.1s judge 0.4s update 2.0s" (the parts the event
/// has; empty for events without them).
fn step_times(ev: &crate::train::StepEvent) -> String {
    let parts: Vec<String> = [
        ("rollout", ev.rollout_s),
        ("judge", ev.judge_s),
        ("update", ev.update_s),
    ]
    .into_iter()
    .filter_map(|(name, s)| s.map(|s| format!("{name} {s:.1}s")))
    .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" · {}", parts.join(" "))
    }
}
