//! `humanlm export` (a checkpoint as a Hugging Face folder, an adapter merged into its base)
//! and `humanlm export-dataset` (scenarios as the HumanLM verl recipe's Parquet rows).

use super::truncate_parser;
use crate::export::{merge, verl};
use crate::model::checkpoint::DEFAULT_CHECKPOINT;
use crate::model::weights::LoadOptions;
use crate::model::Checkpoint;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `humanlm export`.
#[derive(Args)]
pub(super) struct ExportArgs {
    /// Merge the adapter into its base (W += α/r · B·A). Required for an adapter; a plain
    /// checkpoint is written as it is (dequantized).
    #[arg(long)]
    merge: bool,
    /// The adapter (or plain checkpoint): a name in checkpoints/ or a path.
    #[arg(long)]
    checkpoint: String,
    /// The folder to write (a Hugging Face checkpoint: config.json, model.safetensors, tokenizer).
    #[arg(long)]
    out: PathBuf,
    /// Weight type: f32, bf16 or f16 (default: the base's; f32 for GGUF).
    #[arg(long)]
    dtype: Option<String>,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

/// `humanlm export-dataset`.
#[derive(Args)]
pub(super) struct ExportDatasetArgs {
    /// Row layout; `verl` (the HumanLM verl recipe's RL rows: one per scenario with a reference
    /// reply, the set's joint prompt as the system message) is the one there is.
    #[arg(long, default_value = "verl")]
    format: String,
    /// A scenario file or a folder of them.
    #[arg(long)]
    scenarios: PathBuf,
    /// The Parquet file to write.
    #[arg(long)]
    out: PathBuf,
    /// Prompt set (default: the checkpoint's, else humanlm).
    #[arg(long)]
    prompts: Option<String>,
    /// Gone: the recipe writes one row per example (asking for every state, the set's joint
    /// prompt) and its StateDataset expands the states at train time. Refused when given.
    #[arg(long, hide = true)]
    states: Option<String>,
    /// Checkpoint whose chat template renders sets without their own and whose context the
    /// prompts must fit (as when simulating).
    #[arg(long, default_value = DEFAULT_CHECKPOINT)]
    checkpoint: String,
    /// The `extra_info.split` of every row.
    #[arg(long, default_value = "train")]
    split: String,
    /// A thread that does not fit the context: skip it (none) or drop its oldest turns.
    #[arg(long, value_parser = truncate_parser(), default_value = "none")]
    truncate: crate::sim::Truncate,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

pub(super) fn export_cmd(root: &Path, a: ExportArgs) -> anyhow::Result<()> {
    let dtype = match a.dtype.as_deref() {
        None => None,
        Some(s) => Some(
            merge::parse_dtype(s)
                .ok_or_else(|| anyhow::anyhow!("--dtype '{s}' is not one of f32, bf16, f16"))?,
        ),
    };
    let ckpt = Checkpoint::resolve(&a.checkpoint, root)?;
    let is_adapter = matches!(ckpt.kind, crate::model::CheckpointKind::Adapter { .. });
    if is_adapter && !a.merge {
        anyhow::bail!(
            "{}: an adapter is exported merged into its base: add --merge",
            ckpt.path.display()
        );
    }
    let report = merge::export(&ckpt, &a.out, dtype, a.force)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(
            out,
            "wrote {} ({} tensors, {}, {:.1} MiB){}",
            report.out.display(),
            report.tensors,
            report.dtype,
            report.bytes as f64 / (1u64 << 20) as f64,
            match &report.adapter {
                Some(ad) => format!(
                    ": {ad} merged into {} ({} layers)",
                    report.base, report.merged_modules
                ),
                None if a.merge => format!(": {} has no adapter, nothing merged", report.base),
                None => format!(": {}", report.base),
            }
        )?;
    }
    Ok(())
}

pub(super) fn export_dataset_cmd(root: &Path, a: ExportDatasetArgs) -> anyhow::Result<()> {
    if a.format != "verl" {
        anyhow::bail!("--format '{}' is not supported (supported: verl)", a.format);
    }
    if a.states.is_some() {
        anyhow::bail!(
            "--states is gone: each scenario is one row, as in the HumanLM recipe, whose \
             StateDataset expands the states at train time"
        );
    }
    if a.out.exists() && !a.force {
        anyhow::bail!("{}: already exists (--force replaces it)", a.out.display());
    }
    let ckpt = Checkpoint::resolve(&a.checkpoint, root)?;
    let name = crate::prompts::set_for(a.prompts.as_deref(), ckpt.default_prompt_set()?);
    let set = crate::prompts::PromptSet::load(&name, &crate::prompts::default_root())?;
    let model = ckpt.load(&LoadOptions::default())?;
    let report = verl::export_dataset(
        &model,
        &set,
        &a.scenarios,
        a.truncate,
        &a.split,
        &a.out,
        a.force,
    )?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    for (id, why) in &report.skipped {
        writeln!(out, "skipped {id}: {why}")?;
    }
    writeln!(
        out,
        "wrote {} rows (one per scenario, state_name {}) to {}; prompt set {} ({}){}",
        report.rows,
        report.state_name,
        report.out.display(),
        report.prompt_set,
        report.prompt_hash,
        if report.skipped.is_empty() {
            String::new()
        } else {
            format!("; skipped {}", report.skipped.len())
        }
    )?;
    Ok(())
}
