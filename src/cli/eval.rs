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
    /// Default: humanlm.
    #[arg(long, value_parser = mode_parser())]
    mode: Option<crate::sim::Mode>,
    /// Prompt set for every checkpoint (default: each checkpoint's own).
    #[arg(long)]
    prompts: Option<String>,
    /// Judge configuration file (default: embedding similarity, which needs no key; under
    /// --protocol, the paper's evaluation judge prompts/judges/rubric-anthropic.toml).
    #[arg(long)]
    judge: Option<PathBuf>,
    /// Decode and judge as the HumanLM recipe's evaluation did: the reply alone (a set
    /// imported with --config r), thinking on, n 1, temperature 0.4, 1,024 new tokens (512
    /// for paper-base), no n-gram ban as in its code (--no-repeat-ngram 4 for the paper's
    /// text), a judge at temperature 0.
    #[arg(long, value_enum)]
    protocol: Option<crate::eval::protocol::Protocol>,
    /// Show the paper's published numbers for this method beside the checkpoint's (repeat once
    /// per checkpoint, in order): humanlm, humanlm-recipe, qwen3-8b, grpo-think.
    #[arg(long = "paper")]
    paper: Vec<String>,
    /// Also score each reply on every state dimension with this judge (kind = "aspects"; the
    /// paper's state alignment), reported as aspect.<dimension>.
    #[arg(long)]
    state_judge: Option<PathBuf>,
    /// Judge every recorded sample of the run again (no regeneration, no judge cache).
    #[arg(long)]
    rejudge: bool,
    /// cpu, cuda or cuda:N for local checkpoints (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
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
    let prompts_root = crate::prompts::default_root();
    let judge_file = match (&a.judge, a.protocol) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(_)) => Some(prompts_root.join(crate::eval::protocol::PAPER_JUDGE)),
        (None, None) => None,
    };
    let judge = match &judge_file {
        Some(p) => crate::judge::JudgeConfig::read(p)?,
        None => crate::judge::JudgeConfig::default_config(),
    };
    if let (Some(p), Some(file)) = (a.protocol, &judge_file) {
        p.check_judge(&judge, file)?;
        if a.mode.is_some_and(|m| m != crate::sim::Mode::Humanlm) {
            anyhow::bail!(
                "--protocol {} runs the set's own calls (the reply alone under an `r` set); \
                 drop --mode",
                p.name()
            );
        }
    }
    let spec = EvalSpec {
        checkpoints: a.checkpoint.clone(),
        scenarios: a.scenarios.clone(),
        mode: a.mode.unwrap_or(crate::sim::Mode::Humanlm),
        prompts: a.prompts.clone(),
        judge,
        sampling: a.sampling.choice(),
        truncate: a.truncate,
        out: a.out.clone(),
        protocol: a.protocol,
        paper: a.paper.clone(),
        state_judge: a
            .state_judge
            .as_deref()
            .map(crate::judge::JudgeConfig::read)
            .transpose()?,
        rejudge: a.rejudge,
        device: a.device.clone(),
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} scenarios · ETA {eta} · {msg}",
        )
        .expect("valid template"),
    );
    let mut skipped = vec![];
    let roots = crate::roots::Roots::new(root, prompts_root);
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
        write_domain_table(&mut out, c)?;
        for n in &c.notes {
            writeln!(out, "  note: {n}")?;
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
        if d.judge_failures > 0 {
            writeln!(
                out,
                "  {} judgements still failed (scored 0): run the same command again to retry them",
                d.judge_failures
            )?;
        }
    }
    Ok(())
}

/// One checkpoint's metrics as the paper's Table 1 lays them out: a column per domain, then
/// the macro average; each cell the mean ×100 ± half its 95% interval. A run that names a
/// published method gets that method's numbers on the line under each metric it reports.
fn write_domain_table(
    out: &mut impl Write,
    c: &crate::eval::CheckpointSummary,
) -> std::io::Result<()> {
    use crate::eval::paper::MACRO;
    let domains = domain_columns(&c.by_domain);
    let cell = |e: Option<&crate::eval::stats::Estimate>| match e {
        Some(e) => format!("{:.1} ±{:.1}", e.mean, (e.ci95[1] - e.ci95[0]) / 2.0),
        None => "—".to_string(),
    };
    write_row(
        out,
        &format!("  {:<22}", "METRIC (×100, ±95%)"),
        &domains,
        |d| d.to_string(),
    )?;
    for k in crate::eval::metrics_in_order(&c.metrics, &c.dimensions) {
        write_row(out, &format!("  {k:<22}"), &domains, |d| match d {
            MACRO => cell(c.macro_average.get(k)),
            d => cell(c.by_domain.get(k).and_then(|m| m.get(d))),
        })?;
        if let Some(p) = &c.paper {
            if let Some(published) = p.values.get(k.as_str()) {
                write_row(out, &format!("    {:<20}", p.label), &domains, |d| {
                    published
                        .get(d)
                        .map(|v| format!("{v:.1}"))
                        .unwrap_or("—".into())
                })?;
            }
        }
    }
    if let Some(p) = &c.paper {
        writeln!(out, "  published numbers: {} ({})", p.label, p.source)?;
        if domains.len() < crate::scenario::Domain::ALL.len() {
            writeln!(
                out,
                "  this run's macro averages its {} domain(s); the paper's averages all six",
                domains.len()
            )?;
        }
    }
    Ok(())
}

/// One line of a per-domain table: `label`, then a right-aligned cell per domain and one for
/// the macro average, each given by `cell` from its column's name.
fn write_row(
    out: &mut impl Write,
    label: &str,
    domains: &[&String],
    cell: impl Fn(&str) -> String,
) -> std::io::Result<()> {
    write!(out, "{label}")?;
    for d in domains {
        write!(out, " {:>13}", cell(d))?;
    }
    writeln!(out, " {:>13}", cell(crate::eval::paper::MACRO))
}

/// The columns of a per-domain table before its macro average: the domains any metric has.
fn domain_columns<V>(
    by_domain: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, V>>,
) -> Vec<&String> {
    let mut domains: Vec<&String> = by_domain.values().flat_map(|d| d.keys()).collect();
    domains.sort_by_key(|d| crate::eval::domain_order(d));
    domains.dedup();
    domains
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
    // B − A per domain and for the macro average (each domain weighted equally).
    let domains = domain_columns(&c.by_domain);
    writeln!(out)?;
    write_row(
        &mut out,
        &format!("{:<22}", "B−A BY DOMAIN (±95%)"),
        &domains,
        |d| d.to_string(),
    )?;
    let cell = |m: Option<&crate::eval::MetricComparison>| match m {
        Some(m) => format!(
            "{:+.1} ±{:.1}",
            m.diff.mean,
            (m.diff.ci95[1] - m.diff.ci95[0]) / 2.0
        ),
        None => "—".to_string(),
    };
    for k in crate::eval::metrics_in_order(&c.metrics, &c.dimensions) {
        write_row(&mut out, &format!("{k:<22}"), &domains, |d| match d {
            crate::eval::paper::MACRO => cell(c.macro_average.get(k)),
            d => cell(c.by_domain.get(k).and_then(|m| m.get(d))),
        })?;
    }
    Ok(())
}
