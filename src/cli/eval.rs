//! `humanlm eval` (simulate and judge every scenario into a run folder), `runs` (the run
//! folders) and `compare` (two runs' paired differences).

use super::simulate::SimSamplingArgs;
use super::{mode_parser, truncate_parser};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub(super) struct EvalArgs {
    /// Checkpoint name or path (repeat to evaluate several on the same scenarios).
    #[arg(long, required = true)]
    checkpoint: Vec<String>,
    /// A scenario file or a folder of them.
    #[arg(long, default_value = "scenarios")]
    scenarios: PathBuf,
    #[arg(long, value_parser = mode_parser(), default_value = "humanlm")]
    mode: crate::sim::Mode,
    /// Prompt set for every checkpoint (default: each checkpoint's own).
    #[arg(long)]
    prompts: Option<String>,
    /// Judge configuration file (default: embedding similarity, which needs no key).
    #[arg(long)]
    judge: Option<PathBuf>,
    #[command(flatten)]
    sampling: SimSamplingArgs,
    #[arg(long, value_parser = truncate_parser(), default_value = "none")]
    truncate: crate::sim::Truncate,
    /// Folder the run folder is created in.
    #[arg(long, default_value = "runs")]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub(super) fn eval_cmd(root: &std::path::Path, a: EvalArgs) -> anyhow::Result<()> {
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
        let keys = crate::eval::metrics_in_order(&c.metrics, &c.dimensions);
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

pub(super) fn runs_cmd(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
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

pub(super) fn compare_cmd(
    a: &std::path::Path,
    b: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
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
    let keys = crate::eval::metrics_in_order(&c.metrics, &c.dimensions);
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
