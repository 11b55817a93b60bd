//! `humanlm scenarios`: list scenario files, `check` them, or `import` HUMANUAL rows as
//! scenario files.

use super::parse_domain;
use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;

#[derive(Subcommand)]
pub(super) enum ScenarioAction {
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
        /// Skip rows whose generated persona has fewer list items (interests, values,
        /// communication and statistics together) than this, as the HumanLM recipe does;
        /// plain-text personas are always kept; 0 keeps every row.
        #[arg(long, default_value_t = crate::scenario::import::MIN_PERSONA_ITEMS)]
        min_persona_items: usize,
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

pub(super) fn scenarios_cmd(
    action: Option<ScenarioAction>,
    path: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
    match action {
        None => list_scenarios(path, json),
        Some(ScenarioAction::Check { paths }) => check_scenarios(&paths),
        Some(ScenarioAction::Import {
            file,
            domain,
            limit,
            min_persona_items,
            out,
            force,
            json,
        }) => import_scenarios(&file, &domain, limit, min_persona_items, &out, force, json),
    }
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
    /// Where the scenario comes from, in one line (a note, or the imported row's identity).
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
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
            source: s.source.as_ref().map(|x| x.summary()),
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
    min_persona_items: usize,
    out: &std::path::Path,
    force: bool,
    json: bool,
) -> anyhow::Result<()> {
    let domain = parse_domain(domain)?;
    let report =
        crate::scenario::import::import(file, domain, limit, min_persona_items, out, force)?;
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
