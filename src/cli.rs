//! The command line: subcommands map one-to-one onto library calls and hold no logic of their own
//! beyond argument parsing and printing.

use crate::generate::{self, Event, SamplingParams};
use crate::model::chat::Message;
use crate::model::checkpoint::{default_root, DEFAULT_CHECKPOINT};
use crate::model::device::{device_name, parse_device};
use crate::model::weights::LoadOptions;
use crate::model::{Checkpoint, Error, Model};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "humanlm",
    version,
    about = "A terminal workbench for simulating human users with language models"
)]
struct Cli {
    /// Folder that holds checkpoints referred to by name.
    #[arg(long, global = true, env = "HUMANLM_CHECKPOINTS")]
    checkpoints_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// List checkpoints with their architecture, size and quantization.
    Checkpoints {
        #[arg(long)]
        json: bool,
    },
    /// Generate text from a prompt or a chat.
    Generate(GenerateArgs),
    /// Measure prefill and decode speed.
    Bench(BenchArgs),
    /// Check a GPU against the CPU and measure the decoder's speed there; one JSON summary.
    GpuCheck(crate::gpu::GpuCheckArgs),
    /// Simulate a person's states and reply on a scenario.
    Simulate(SimulateArgs),
    /// Serve the checkpoint as an OpenAI-compatible endpoint (one generation at a time).
    Serve(ServeArgs),
    /// Simulate and judge every scenario with a reference reply; write a run folder.
    Eval(EvalArgs),
    /// Fine-tune a checkpoint on scenarios (LoRA); writes a PEFT adapter loadable by name.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Write a checkpoint as a Hugging Face folder (an adapter merged into its base with --merge).
    Export(crate::export::ExportArgs),
    /// Write scenarios as training rows for another trainer (the HumanLM verl recipe's Parquet).
    ExportDataset(crate::export::ExportDatasetArgs),
    /// List evaluation runs.
    Runs {
        /// The folder runs are written to.
        #[arg(long, default_value = "runs")]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Paired per-metric differences (B − A) between two runs, with 95% intervals and win rates.
    Compare {
        run_a: PathBuf,
        run_b: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List thread scenarios (or `check` them).
    #[command(args_conflicts_with_subcommands = true)]
    Scenarios {
        #[command(subcommand)]
        action: Option<ScenarioAction>,
        /// A scenario file or a folder of them.
        #[arg(default_value = "scenarios")]
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ScenarioAction {
    /// Validate scenario files; one line per problem, exit code 2 if any.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Convert HUMANUAL rows (JSONL, JSON array or Parquet) into scenario files.
    Import {
        /// The rows: .jsonl, .json or .parquet.
        file: PathBuf,
        /// opinion, politics, news, book, chat or email.
        #[arg(long)]
        domain: String,
        /// Convert at most this many rows.
        #[arg(long)]
        limit: Option<usize>,
        /// Folder for the scenario files (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Replace scenario files that already exist.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct RuntimeArgs {
    /// Checkpoint name (a folder in checkpoints/) or path.
    #[arg(long, default_value = DEFAULT_CHECKPOINT)]
    checkpoint: String,
    /// cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CPU threads for matrix products (default: all physical cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    rt: RuntimeArgs,
    /// Raw prompt text (no chat template; add --chat to send it as one user message).
    #[arg(
        long,
        conflicts_with = "messages",
        required_unless_present = "messages"
    )]
    prompt: Option<String>,
    /// Wrap --prompt as a user message and apply the chat template.
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// JSON file: an array of {"role": ..., "content": ...}, rendered by the chat template.
    #[arg(long)]
    messages: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Ban repeating any n-gram of prompt + output (0 = off).
    #[arg(long, default_value_t = 0)]
    no_repeat_ngram: usize,
    /// Stop when this string appears (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep the stop string at the end of the output.
    #[arg(long)]
    keep_stop: bool,
    /// Number of samples, decoded together as a batch.
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SimulateArgs {
    #[command(flatten)]
    rt: RuntimeArgs,
    /// Scenario id (under scenarios/) or file.
    #[arg(long)]
    scenario: String,
    #[arg(long, value_enum, default_value = "humanlm")]
    mode: crate::sim::Mode,
    /// Prompt set: a folder under prompts/ or a path (default: the checkpoint's, else humanlm).
    #[arg(long)]
    prompts: Option<String>,
    #[command(flatten)]
    sampling: SimSamplingArgs,
    /// What to do when a thread does not fit the context: refuse, or drop the oldest turns.
    #[arg(long, value_enum, default_value = "none")]
    truncate: crate::sim::Truncate,
    /// Print the exact rendered prompts (special tokens included).
    #[arg(long)]
    show_prompt: bool,
    #[arg(long)]
    json: bool,
}

/// Sampling for simulations; unset values come from the prompt set, then the method's defaults.
#[derive(Args, Clone)]
struct SimSamplingArgs {
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

    fn choice(&self) -> crate::sim::SamplingChoice {
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
fn prompt_set(
    named: Option<&str>,
    default: Option<String>,
) -> anyhow::Result<crate::prompts::PromptSet> {
    let name = crate::prompts::set_for(named, default);
    Ok(crate::prompts::PromptSet::load(
        &name,
        &crate::prompts::default_root(),
    )?)
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    rt: RuntimeArgs,
    /// Port to listen on (0: any free port; the bound one is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address to listen on; anything but loopback exposes the model without authentication.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
}

#[derive(Subcommand)]
enum TrainCommand {
    /// Supervised fine-tuning: the real reply as the target, loss on its tokens only.
    Sft(SftArgs),
    /// HumanLM GRPO: rollouts per state, judged against the real reply, KL to the base.
    Grpo(GrpoArgs),
}

/// Options both training methods take.
#[derive(Args)]
struct TrainArgs {
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
    /// SFT: examples per micro-batch; GRPO: prompts (groups) per step.
    #[arg(long, default_value_t = crate::train::TrainConfig::defaults().batch)]
    batch: usize,
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
}

#[derive(Args)]
struct SftArgs {
    #[command(flatten)]
    common: TrainArgs,
    /// SFT-think: a judge file (kind = "rubric") whose model writes a thinking trace for each
    /// reply; the target becomes <think>trace</think><response>reply</response>.
    #[arg(long)]
    think: Option<PathBuf>,
}

#[derive(Args)]
struct GrpoArgs {
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
    /// Optimizer updates per step.
    #[arg(long, default_value_t = crate::train::GrpoParams::default().mini_batches)]
    mini_batches: usize,
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

#[derive(Args)]
struct EvalArgs {
    /// Checkpoint name or path (repeat to evaluate several on the same scenarios).
    #[arg(long, required = true)]
    checkpoint: Vec<String>,
    /// A scenario file or a folder of them.
    #[arg(long, default_value = "scenarios")]
    scenarios: PathBuf,
    #[arg(long, value_enum, default_value = "humanlm")]
    mode: crate::sim::Mode,
    /// Prompt set for every checkpoint (default: each checkpoint's own).
    #[arg(long)]
    prompts: Option<String>,
    /// Judge configuration file (default: embedding similarity, which needs no key).
    #[arg(long)]
    judge: Option<PathBuf>,
    #[command(flatten)]
    sampling: SimSamplingArgs,
    #[arg(long, value_enum, default_value = "none")]
    truncate: crate::sim::Truncate,
    /// Folder the run folder is created in.
    #[arg(long, default_value = "runs")]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    rt: RuntimeArgs,
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    #[arg(long)]
    json: bool,
}

/// Entry point: runs the CLI and returns the process exit code (2 on any error).
pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => 0,
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            eprintln!("humanlm: {msg}");
            2
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let root = cli.checkpoints_dir.unwrap_or_else(default_root);
    match cli.command {
        None => workbench(&root),
        Some(Command::Checkpoints { json }) => list_checkpoints(&root, json),
        Some(Command::Generate(args)) => generate_cmd(&root, args),
        Some(Command::Bench(args)) => bench(&root, args),
        Some(Command::GpuCheck(args)) => crate::gpu::run(args, &root),
        Some(Command::Simulate(args)) => simulate_cmd(&root, args),
        Some(Command::Serve(args)) => Ok(crate::serve::run(
            load(&root, &args.rt)?,
            &args.host,
            args.port,
        )?),
        Some(Command::Eval(args)) => eval_cmd(&root, args),
        Some(Command::Train(TrainCommand::Sft(a))) => {
            let method = crate::train::Method::Sft {
                think: a.think.map(|judge| crate::train::ThinkConfig { judge }),
            };
            train_cmd(&root, method, a.common)
        }
        Some(Command::Train(TrainCommand::Grpo(a))) => {
            let method = crate::train::Method::Grpo(crate::train::GrpoParams {
                n: a.n,
                temperature: a.temperature,
                kl_coef: a.kl_coef,
                clip: a.clip,
                mini_batches: a.mini_batches,
                max_new_tokens: a.max_new_tokens,
                states: a.states,
                reward: crate::train::reward::RewardSpec::parse(&a.reward)?,
            });
            train_cmd(&root, method, a.common)
        }
        Some(Command::Export(args)) => crate::export::export_cmd(&root, args),
        Some(Command::ExportDataset(args)) => crate::export::export_dataset_cmd(&root, args),
        Some(Command::Runs { dir, json }) => runs_cmd(&dir, json),
        Some(Command::Compare { run_a, run_b, json }) => compare_cmd(&run_a, &run_b, json),
        Some(Command::Scenarios {
            action: None,
            path,
            json,
        }) => list_scenarios(&path, json),
        Some(Command::Scenarios {
            action: Some(ScenarioAction::Check { paths }),
            ..
        }) => check_scenarios(&paths),
        Some(Command::Scenarios {
            action:
                Some(ScenarioAction::Import {
                    file,
                    domain,
                    limit,
                    out,
                    force,
                    json,
                }),
            ..
        }) => import_scenarios(&file, &domain, limit, &out, force, json),
    }
}

fn set_threads(threads: Option<usize>) {
    if let Some(t) = threads {
        // Both pools read these once, on first use: candle's quantized matmul pool and rayon.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", t.to_string());
    }
}

fn load(root: &std::path::Path, rt: &RuntimeArgs) -> anyhow::Result<Model> {
    set_threads(rt.threads);
    let device = parse_device(&rt.device)?;
    let ckpt = Checkpoint::resolve(&rt.checkpoint, root)?;
    Ok(ckpt.load(&LoadOptions {
        device,
        ..Default::default()
    })?)
}

/// `humanlm` alone opens the workbench on the default checkpoint. It needs a terminal: with
/// stdout redirected it says so and exits 2 instead of writing escape codes into a file.
fn workbench(root: &std::path::Path) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "the workbench needs a terminal (stdout is not one); the subcommands work without one (humanlm --help)"
        );
    }
    crate::tui::run(root)
}

fn stream(
    model: &Model,
    ids: &[u32],
    params: &SamplingParams,
) -> anyhow::Result<generate::Generation> {
    let mut stdout = std::io::stdout().lock();
    let mut io_err: Option<std::io::Error> = None;
    let out = generate::generate(model, ids, params, None, &mut |ev| {
        if let Event::Text { delta, .. } = ev {
            if io_err.is_none() {
                if let Err(e) = stdout
                    .write_all(delta.as_bytes())
                    .and_then(|_| stdout.flush())
                {
                    io_err = Some(e);
                }
            }
        }
    })?;
    if let Some(e) = io_err {
        return Err(e.into());
    }
    Ok(out)
}

fn list_checkpoints(root: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let mut infos = vec![];
    let mut problems = vec![];
    for entry in Checkpoint::list(root) {
        match entry.and_then(|c| c.info()) {
            Ok(i) => infos.push(i),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&infos)?)?;
    } else if infos.is_empty() {
        writeln!(
            out,
            "no checkpoints in {} (run scripts/fetch-checkpoints.sh)",
            root.display()
        )?;
    } else {
        writeln!(
            out,
            "{:<26} {:<6} {:<8} {:>9} {:<22} {:>8} {:>9}  base",
            "NAME", "FORMAT", "ARCH", "PARAMS", "DTYPE", "CONTEXT", "SIZE"
        )?;
        for i in &infos {
            writeln!(
                out,
                "{:<26} {:<6} {:<8} {:>9} {:<22} {:>8} {:>9}  {}",
                i.name,
                i.format,
                i.architecture,
                human_count(i.parameters),
                i.dtype,
                i.context_length,
                human_bytes(i.size_bytes),
                i.adapter_base.as_deref().unwrap_or("-")
            )?;
        }
    }
    for p in problems {
        eprintln!("humanlm: warning: {p}");
    }
    Ok(())
}

fn human_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=9_999_999 => format!("{:.1}K", n as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    }
}

fn generate_cmd(root: &std::path::Path, a: GenerateArgs) -> anyhow::Result<()> {
    let messages = match &a.messages {
        Some(path) => Some(read_messages(path)?),
        None => None,
    };
    let model = load(root, &a.rt)?;
    let ids = match (&messages, &a.prompt) {
        (Some(m), _) => model.tokenizer.encode_rendered(&model.chat.render(
            m,
            true,
            &serde_json::json!({}),
        )?)?,
        (None, Some(p)) if a.chat => model.tokenizer.encode_rendered(&model.chat.render(
            &[Message::new("user", p)],
            true,
            &serde_json::json!({}),
        )?)?,
        (None, Some(p)) => model.tokenizer.encode_raw(p)?,
        (None, None) => unreachable!("clap requires --prompt or --messages"),
    };
    let params = SamplingParams {
        max_new_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        min_p: a.min_p,
        seed: a.seed,
        repetition_penalty: a.repetition_penalty,
        no_repeat_ngram: a.no_repeat_ngram,
        stop: a.stop.clone(),
        keep_stop: a.keep_stop,
        n: a.n,
        ignore_eos: false,
    };
    if a.json || a.n > 1 {
        let out = generate::generate(&model, &ids, &params, None, &mut |_| {})?;
        let mut stdout = std::io::stdout().lock();
        if a.json {
            writeln!(stdout, "{}", serde_json::to_string(&out)?)?;
        } else {
            for (i, s) in out.samples.iter().enumerate() {
                writeln!(
                    stdout,
                    "--- sample {} ({} tokens, stop: {}) ---\n{}",
                    i + 1,
                    s.tokens,
                    s.stop_reason,
                    s.text
                )?;
            }
        }
        return Ok(());
    }
    let out = stream(&model, &ids, &params)?;
    let s = &out.samples[0];
    println!();
    eprintln!(
        "[{} prompt tokens, {} new, stop: {}{}, ttft {:.0} ms, {:.1} tok/s]",
        out.prompt_tokens,
        s.tokens,
        s.stop_reason,
        s.stop_string
            .as_ref()
            .map(|x| format!(" {x:?}"))
            .unwrap_or_default(),
        out.ttft_ms,
        out.tokens_per_s
    );
    Ok(())
}

fn read_messages(path: &std::path::Path) -> anyhow::Result<Vec<Message>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let messages: Vec<Message> = serde_json::from_str(&text).map_err(|e| {
        Error::file(
            path,
            format!("expected a JSON array of {{\"role\", \"content\"}} objects: {e}"),
        )
    })?;
    if messages.is_empty() {
        return Err(Error::file(path, "no messages").into());
    }
    Ok(messages)
}

/// Speed of prefill and decode, as `humanlm bench` reports it.
#[derive(serde::Serialize)]
struct BenchReport {
    checkpoint: String,
    weights: String,
    device: String,
    threads: usize,
    prompt_tokens: usize,
    new_tokens: usize,
    prefill_tok_s: f64,
    decode_tok_s_b1: f64,
    decode_tok_s_b4: f64,
    peak_rss_mb: f64,
}

fn bench(root: &std::path::Path, a: BenchArgs) -> anyhow::Result<()> {
    let model = load(root, &a.rt)?;
    let threads = a.rt.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let text = "The quick brown fox jumps over the lazy dog while the researchers argue about user simulators. ";
    let mut ids = model
        .tokenizer
        .encode_raw(&text.repeat(a.prompt_tokens / 8 + 8))?;
    ids.truncate(a.prompt_tokens);
    let dec = &model.decoder;
    // Prefill: best of three (the first run also pays for page faults on the weights).
    let mut prefill = f64::MAX;
    for _ in 0..3 {
        let mut cache = dec.new_cache(1, ids.len() + 1)?;
        let input = candle_core::Tensor::new(ids.as_slice(), &dec.device)?.unsqueeze(0)?;
        let t = Instant::now();
        let _ = dec.forward(&input, Some(&mut cache), crate::model::Ops::Fast, false)?;
        prefill = prefill.min(t.elapsed().as_secs_f64());
    }
    let decode = |n: usize| -> anyhow::Result<f64> {
        let params = SamplingParams {
            max_new_tokens: a.new_tokens,
            n,
            ignore_eos: true,
            ..Default::default()
        };
        let out = generate::generate(&model, &ids, &params, None, &mut |_| {})?;
        Ok(out.tokens_per_s)
    };
    let report = BenchReport {
        checkpoint: model.checkpoint.name.clone(),
        weights: dec.weight_kinds(),
        device: device_name(&dec.device),
        threads,
        prompt_tokens: ids.len(),
        new_tokens: a.new_tokens,
        prefill_tok_s: ids.len() as f64 / prefill,
        decode_tok_s_b1: decode(1)?,
        decode_tok_s_b4: decode(4)?,
        peak_rss_mb: peak_rss_mb(),
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(
            out,
            "checkpoint   {} ({}) on {}, {} threads",
            report.checkpoint, report.weights, report.device, report.threads
        )?;
        writeln!(
            out,
            "prefill      {:>8.1} tok/s  ({} tokens)",
            report.prefill_tok_s, report.prompt_tokens
        )?;
        writeln!(
            out,
            "decode b=1   {:>8.1} tok/s  ({} tokens)",
            report.decode_tok_s_b1, report.new_tokens
        )?;
        writeln!(
            out,
            "decode b=4   {:>8.1} tok/s  (total over the batch)",
            report.decode_tok_s_b4
        )?;
        writeln!(out, "peak RSS     {:>8.1} MiB", report.peak_rss_mb)?;
    }
    Ok(())
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// One row of `humanlm scenarios --json`.
#[derive(serde::Serialize)]
struct ScenarioRow<'a> {
    id: &'a str,
    domain: crate::scenario::Domain,
    title: &'a str,
    path: String,
    turns: usize,
    words: usize,
    target: &'a str,
    target_in_thread: bool,
    has_persona: bool,
    has_response: bool,
}

fn list_scenarios(path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let mut rows = vec![];
    let mut problems = vec![];
    let loaded: Vec<_> = crate::scenario::load_all(path)
        .into_iter()
        .filter_map(|r| r.map_err(|e| problems.push(e)).ok())
        .collect();
    for l in &loaded {
        let s = &l.scenario;
        rows.push(ScenarioRow {
            id: &s.id,
            domain: s.domain,
            title: &s.title,
            path: l.path.display().to_string(),
            turns: s.turns.len(),
            words: s.words(),
            target: &s.target.author,
            target_in_thread: s.target_in_thread(),
            has_persona: s.persona.is_some(),
            has_response: s.target.response.is_some(),
        });
    }
    rows.sort_by(|a, b| (a.domain, a.id).cmp(&(b.domain, b.id)));
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    } else {
        writeln!(
            out,
            "{:<34} {:<9} {:>5} {:>6}  {:<18} TITLE",
            "ID", "DOMAIN", "TURNS", "WORDS", "TARGET"
        )?;
        for r in &rows {
            let title: String = r.title.chars().take(48).collect();
            writeln!(
                out,
                "{:<34} {:<9} {:>5} {:>6}  {:<18} {}",
                r.id,
                r.domain.name(),
                r.turns,
                r.words,
                r.target,
                title
            )?;
        }
    }
    for p in &problems {
        eprintln!("humanlm: {p}");
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "{} of {} scenario files have problems",
            problems.len(),
            problems.len() + rows.len()
        );
    }
    Ok(())
}

fn check_scenarios(paths: &[PathBuf]) -> anyhow::Result<()> {
    let (mut ok, mut bad) = (0, 0);
    for p in paths {
        for r in crate::scenario::load_all(p) {
            match r {
                Ok(_) => ok += 1,
                Err(e) => {
                    bad += 1;
                    eprintln!("{e}");
                }
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} of {} scenario files have problems", ok + bad);
    }
    println!("{ok} scenarios ok");
    Ok(())
}

fn import_scenarios(
    file: &std::path::Path,
    domain: &str,
    limit: Option<usize>,
    out: &std::path::Path,
    force: bool,
    json: bool,
) -> anyhow::Result<()> {
    use crate::scenario::Domain;
    let Some(domain) = Domain::parse(domain) else {
        anyhow::bail!(
            "unknown domain '{domain}' (expected one of: {})",
            Domain::ALL.map(|d| d.name()).join(", ")
        );
    };
    let report = crate::scenario::import::import(file, domain, limit, out, force)?;
    let mut stdout = std::io::stdout().lock();
    if json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        for (row, why) in &report.skipped {
            writeln!(stdout, "{}: row {row} skipped: {why}", file.display())?;
        }
        writeln!(
            stdout,
            "wrote {} scenarios to {}{}{}",
            report.written.len(),
            out.display(),
            if report.skipped.is_empty() {
                String::new()
            } else {
                format!("; skipped {} rows", report.skipped.len())
            },
            if report.existing.is_empty() {
                String::new()
            } else {
                format!(
                    "; kept {} existing files (--force replaces them)",
                    report.existing.len()
                )
            }
        )?;
    }
    if report.written.is_empty() && report.existing.is_empty() {
        anyhow::bail!("{}: no row could be converted", file.display());
    }
    Ok(())
}

fn simulate_cmd(root: &std::path::Path, a: SimulateArgs) -> anyhow::Result<()> {
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
            serde_json::to_value(a.mode)?.as_str().unwrap_or_default()
        )?;
    }
    let (plan, samples) = simulate_with(sim.engine(), &set, &scenario, &opts, None, &mut |e| {
        if !stream || io_err.is_some() {
            return;
        }
        let r = match e {
            SimEvent::CallStarted { call } if a.show_prompt => {
                write!(
                    stdout,
                    "\n\x1b[2m── prompt: {} ({} tokens) ──\n{}\x1b[0m",
                    call.name, call.prompt_tokens, call.prompt
                )
            }
            SimEvent::CallStarted { call } => {
                write!(stdout, "\n\x1b[1m{}\x1b[0m: {}", call.name, call.prefill)
            }
            SimEvent::Text {
                sample: 0, delta, ..
            } => write!(stdout, "{delta}"),
            SimEvent::CallFinished { .. } => writeln!(stdout),
            _ => Ok(()),
        };
        if let Err(e) = r.and_then(|_| stdout.flush()) {
            io_err = Some(e);
        }
    })?;
    if let Some(e) = io_err {
        return Err(e.into());
    }
    if a.json {
        let mut v = serde_json::json!({
            "scenario": scenario.id,
            "checkpoint": sim.name(),
            "mode": a.mode,
            "prompt_set": set.name,
            "prompt_hash": set.hash,
            "truncate": a.truncate,
            "dropped_turns": plan.dropped_turns,
            "samples": samples,
        });
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
    }
    Ok(())
}

fn eval_cmd(root: &std::path::Path, a: EvalArgs) -> anyhow::Result<()> {
    use crate::eval::{self, EvalSpec, Progress};
    let judge = match &a.judge {
        Some(p) => crate::judge::JudgeConfig::read(p)?,
        None => crate::judge::JudgeConfig::default_config(),
    };
    let spec = EvalSpec {
        checkpoints: a.checkpoint.clone(),
        scenarios: a.scenarios.clone(),
        mode: a.mode,
        prompts: a.prompts.clone(),
        judge,
        sampling: a.sampling.choice(),
        truncate: a.truncate,
        out: a.out.clone(),
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} scenarios · ETA {eta} · {msg}",
        )
        .expect("valid template"),
    );
    let mut skipped = vec![];
    let roots = crate::roots::Roots::new(root, crate::prompts::default_root());
    let dir = eval::run(&spec, &roots, None, &mut |p| match p {
        Progress::Started { total, resumed } => {
            bar.set_length(total as u64);
            bar.set_position(resumed as u64);
            // ETA from this session's pace, not from the resumed part.
            bar.reset_eta();
            if resumed > 0 {
                bar.println(format!("resuming: {resumed} of {total} already done"));
            }
        }
        Progress::Loading { checkpoint } => bar.set_message(format!("loading {checkpoint}")),
        Progress::Scenario {
            checkpoint,
            scenario,
        } => bar.set_message(format!("{checkpoint} · {scenario}")),
        Progress::Done { .. } => bar.inc(1),
        Progress::Skipped { scenario, why } => skipped.push(format!("{scenario} ({why})")),
    });
    bar.finish_and_clear();
    let dir = dir?;
    let summary: crate::eval::Summary =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json"))?)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        return Ok(());
    }
    if !skipped.is_empty() {
        writeln!(
            out,
            "skipped {} scenarios without a reference reply: {}",
            skipped.len(),
            skipped.join(", ")
        )?;
    }
    writeln!(out, "run {}", dir.display())?;
    for c in &summary.checkpoints {
        writeln!(out, "\n{} · {} scenarios", c.checkpoint, c.n_scenarios)?;
        let mut keys: Vec<&String> = c.metrics.keys().collect();
        keys.sort_by_key(|k| crate::eval::metric_order(k));
        for k in keys {
            let m = &c.metrics[k];
            writeln!(
                out,
                "  {:<22} {:>6.1}  [{:>5.1}, {:>5.1}]",
                k, m.mean, m.ci95[0], m.ci95[1]
            )?;
        }
        let d = &c.diagnostics;
        writeln!(
            out,
            "  format valid {:.0}% · length ×{:.2} of the real reply · distinct-2 {:.2} · assistant-speak {:.0}% · context copy {:.0}% · judge failures {}",
            d.valid_rate * 100.0,
            d.length_ratio,
            d.distinct_2,
            d.assistant_speak_rate * 100.0,
            d.context_copy_rate * 100.0,
            d.judge_failures
        )?;
    }
    Ok(())
}

fn runs_cmd(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let runs = crate::eval::list_runs(dir);
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&runs)?)?;
        return Ok(());
    }
    if runs.is_empty() {
        writeln!(out, "no runs in {}", dir.display())?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<48} {:<20} {:<8} {:<22} {:>7}  RESPONSE",
        "RUN", "CREATED", "MODE", "JUDGE", "SAMPLES"
    )?;
    for r in runs {
        let resp: Vec<String> = r
            .response
            .iter()
            .map(|(c, v)| format!("{c} {v:.1}"))
            .collect();
        writeln!(
            out,
            "{:<48} {:<20} {:<8} {:<22} {:>7}  {}{}",
            r.id,
            r.created,
            r.mode,
            r.judge,
            r.samples,
            resp.join(", "),
            if r.complete { "" } else { " (incomplete)" }
        )?;
    }
    Ok(())
}

fn compare_cmd(a: &std::path::Path, b: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let c = crate::eval::compare(a, b, 0)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&c)?)?;
        return Ok(());
    }
    writeln!(out, "A: {} ({})", c.a, c.checkpoint_a)?;
    writeln!(out, "B: {} ({})", c.b, c.checkpoint_b)?;
    writeln!(
        out,
        "{:<22} {:>7} {:>7} {:>8}  {:<16} {:>6}  {:>5}",
        "METRIC", "A", "B", "B−A", "95% CI", "B WINS", "N"
    )?;
    let mut keys: Vec<&String> = c.metrics.keys().collect();
    keys.sort_by_key(|k| crate::eval::metric_order(k));
    for k in keys {
        let m = &c.metrics[k];
        writeln!(
            out,
            "{:<22} {:>7.1} {:>7.1} {:>+8.1}  [{:>+6.1}, {:>+6.1}] {:>5.0}%  {:>5}",
            k,
            m.a,
            m.b,
            m.diff.mean,
            m.diff.ci95[0],
            m.diff.ci95[1],
            m.win_rate_b * 100.0,
            m.diff.n
        )?;
    }
    Ok(())
}

fn train_cmd(
    root: &std::path::Path,
    method: crate::train::Method,
    a: TrainArgs,
) -> anyhow::Result<()> {
    use crate::train::{Data, TrainConfig, TrainEvent};
    let data = match (a.scenarios, a.data) {
        (Some(path), None) => Data::Scenarios { path },
        (None, Some(file)) => {
            let name = a.domain.unwrap_or_default();
            let domain = crate::scenario::Domain::parse(&name).ok_or_else(|| {
                anyhow::anyhow!(
                    "--domain: unknown domain '{name}' (expected one of: {})",
                    crate::scenario::Domain::ALL.map(|d| d.name()).join(", ")
                )
            })?;
            Data::Humanual {
                file,
                domain,
                limit: a.limit,
            }
        }
        _ => anyhow::bail!("give either --scenarios or --data"),
    };
    let mut cfg = TrainConfig::new(method, &a.checkpoint, data);
    cfg.prompts = a.prompts.clone();
    cfg.set_rank(a.rank, a.alpha);
    cfg.dropout = a.dropout;
    cfg.targets = a.targets.clone();
    if let Some(lr) = a.lr {
        cfg.lr = lr;
    } else if a.full {
        // Every weight moves: LoRA's rates would wreck a full model within a few steps.
        cfg.lr /= 50.0;
    }
    cfg.warmup = a.warmup;
    cfg.steps = a.steps;
    cfg.batch = a.batch;
    cfg.grad_accum = a.grad_accum;
    cfg.max_grad_norm = a.max_grad_norm;
    cfg.max_seq = a.max_seq;
    cfg.seed = a.seed;
    cfg.save_every = a.save_every;
    cfg.full = a.full;
    cfg.device = a.device.clone();
    cfg.dtype = a.dtype.clone();
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
                bar.set_position(ev.step as u64);
                bar.set_message(format!(
                    "loss {:.4}{reward} · lr {:.2e} · |g| {:.3} · {:.0} tok/s",
                    ev.loss, ev.lr, ev.grad_norm, ev.tokens_per_s
                ));
                if !bar.is_hidden() {
                    return;
                }
                println!(
                    "step {}/{} loss {:.4}{reward} lr {:.2e} grad_norm {:.3} {:.0} tok/s",
                    ev.step, ev.steps, ev.loss, ev.lr, ev.grad_norm, ev.tokens_per_s
                );
            }
            TrainEvent::Saved(dir) => say(format!("saved {}", dir.display())),
        },
    );
    bar.finish_and_clear();
    let out = out?;
    println!(
        "adapter written to {} (use it as --checkpoint {})",
        out.display(),
        out.display()
    );
    Ok(())
}

/// Set `flag` on Ctrl-C (so long runs save and stop cleanly) instead of dying mid-write.
fn on_ctrl_c(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nhumanlm: stopping after this step (Ctrl-C again to abort)");
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    });
}
