//! The command line: subcommands map one-to-one onto library calls and hold no logic of their own
//! beyond argument parsing and printing. Each command group's arguments and its function sit
//! together in one file; this one holds the command tree, the dispatch and what they share.

mod checkpoints;
mod converse;
mod eval;
mod export;
mod generate;
mod gpu;
mod prompts;
mod scenarios;
mod serve;
mod simulate;
mod train;

use crate::generate::{self as gen, Event, SamplingParams};
use crate::model::checkpoint::{default_root, DEFAULT_CHECKPOINT};
use crate::model::device::parse_device;
use crate::model::weights::LoadOptions;
use crate::model::{Checkpoint, Model};
use crate::sim::{Mode, Truncate};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

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
    /// Memory for each loaded model's prefix cache, in MiB (0 = off): prompt blocks already
    /// prefilled are reused by later calls. Default: 512 on the CPU, 4096 on a GPU.
    #[arg(long, global = true, value_name = "MB")]
    prefix_cache_mb: Option<usize>,
    /// What a dense (safetensors) checkpoint's matrices become on load: none, q8_0, q4_0 or
    /// q4_k. Default: the checkpoint's humanlm.toml (`quantize = "q8_0"`), else q8_0 on the CPU
    /// above 1B parameters and none below; GGUF files keep their own types.
    #[arg(long, global = true, value_name = "TYPE", env = "HUMANLM_QUANTIZE", value_parser = quantize_parser)]
    quantize: Option<crate::model::quantize::Quantize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// List checkpoints with their architecture, size and quantization.
    Checkpoints {
        #[arg(long)]
        json: bool,
        /// List the Hugging Face cache's checkpoints instead (as hf:ORG/NAME@REVISION, the
        /// --checkpoint that loads each).
        #[arg(long)]
        hub: bool,
    },
    /// Fetch a checkpoint from the Hugging Face Hub into its cache (HF_HOME, HF_HUB_CACHE,
    /// HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE as huggingface_hub reads them); any command then
    /// loads it as --checkpoint hf:ORG/NAME[@REVISION], offline too.
    Pull {
        /// ORG/NAME or ORG/NAME@REVISION (branch, tag or commit; default main).
        repo: String,
        #[arg(long)]
        json: bool,
    },
    /// Generate text from a prompt or a chat.
    Generate(generate::GenerateArgs),
    /// Measure prefill and decode speed.
    Bench(generate::BenchArgs),
    /// Check a GPU against the CPU and measure the decoder's speed there; one JSON summary.
    GpuCheck(gpu::GpuCheckArgs),
    /// Simulate a person's states and reply on a scenario.
    Simulate(simulate::SimulateArgs),
    /// Serve the checkpoint as an OpenAI-compatible endpoint (one generation at a time).
    Serve(serve::ServeArgs),
    /// A simulated user and an assistant take turns on a scenario (or every scenario of a
    /// folder, written as a resumable run).
    Converse(Box<converse::ConverseArgs>),
    /// Simulate and judge every scenario with a reference reply; write a run folder.
    Eval(eval::EvalArgs),
    /// Fine-tune a checkpoint on scenarios (LoRA); writes a PEFT adapter loadable by name.
    #[command(subcommand)]
    Train(Box<train::TrainCommand>),
    /// Write a checkpoint as a Hugging Face folder (an adapter merged into its base with --merge).
    Export(export::ExportArgs),
    /// Write scenarios as training rows for another trainer (the HumanLM verl recipe's Parquet).
    ExportDataset(export::ExportDatasetArgs),
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
    /// List prompt sets, or import one from the HumanLM recipe's files.
    #[command(subcommand)]
    Prompts(prompts::PromptsAction),
    /// List thread scenarios (or `check` them).
    #[command(args_conflicts_with_subcommands = true)]
    Scenarios {
        #[command(subcommand)]
        action: Option<scenarios::ScenarioAction>,
        /// A scenario file or a folder of them.
        #[arg(default_value = "scenarios")]
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Where a command that loads a model runs it.
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

/// Entry point: runs the CLI and returns the process exit code (2 on any error).
pub fn main() -> i32 {
    crate::alloc::keep_freed_memory();
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
    if let Some(mb) = cli.prefix_cache_mb {
        crate::model::prefix_cache::choose_mb(mb);
    }
    if let Some(q) = cli.quantize {
        crate::model::quantize::choose(q);
    }
    match cli.command {
        None => workbench(&root),
        Some(Command::Checkpoints { json, hub }) => checkpoints::list_checkpoints(&root, json, hub),
        Some(Command::Pull { repo, json }) => checkpoints::pull(&root, &repo, json),
        Some(Command::Generate(args)) => generate::generate_cmd(&root, args),
        Some(Command::Bench(args)) => generate::bench_cmd(&root, args),
        Some(Command::GpuCheck(args)) => crate::gpu::run(args.into(), &root),
        Some(Command::Simulate(args)) => simulate::simulate_cmd(&root, args),
        Some(Command::Serve(args)) => serve::serve_cmd(&root, args),
        Some(Command::Converse(args)) => converse::converse_cmd(&root, *args),
        Some(Command::Eval(args)) => eval::eval_cmd(&root, args),
        Some(Command::Train(cmd)) => train::train_cmd(&root, *cmd),
        Some(Command::Export(args)) => export::export_cmd(&root, args),
        Some(Command::ExportDataset(args)) => export::export_dataset_cmd(&root, args),
        Some(Command::Runs { dir, json }) => eval::runs_cmd(&dir, json),
        Some(Command::Compare { run_a, run_b, json }) => eval::compare_cmd(&run_a, &run_b, json),
        Some(Command::Prompts(action)) => prompts::prompts_cmd(action),
        Some(Command::Scenarios { action, path, json }) => {
            scenarios::scenarios_cmd(action, &path, json)
        }
    }
}

fn quantize_parser(s: &str) -> Result<crate::model::quantize::Quantize, String> {
    use crate::model::quantize::Quantize;
    Quantize::parse(s).ok_or_else(|| format!("expected {}", Quantize::NAMES))
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

fn stream(model: &Model, ids: &[u32], params: &SamplingParams) -> anyhow::Result<gen::Generation> {
    let mut stdout = std::io::stdout().lock();
    let mut io_err: Option<std::io::Error> = None;
    let out = gen::generate(model, ids, params, None, &mut |ev| {
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

/// `--mode`: the library's modes by name, listed in `--help` and in clap's error.
fn mode_parser() -> impl TypedValueParser<Value = Mode> {
    PossibleValuesParser::new(Mode::ALL.map(|m| PossibleValue::new(m.name())))
        .try_map(|s| s.parse::<Mode>())
}

/// `--truncate`: the library's policies by name, each with its description in `--help`.
fn truncate_parser() -> impl TypedValueParser<Value = Truncate> {
    PossibleValuesParser::new(
        Truncate::ALL.map(|t| PossibleValue::new(t.name()).help(t.description())),
    )
    .try_map(|s| s.parse::<Truncate>())
}

/// The domain named on the command line, or an error listing the known ones.
fn parse_domain(name: &str) -> anyhow::Result<crate::scenario::Domain> {
    use crate::scenario::Domain;
    Domain::parse(name).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown domain '{name}' (expected one of: {})",
            Domain::ALL.map(|d| d.name()).join(", ")
        )
    })
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
