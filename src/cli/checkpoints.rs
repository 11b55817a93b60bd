//! `humanlm checkpoints`: the checkpoints folder as a table or JSON.

use super::{human_bytes, human_count};
use crate::model::Checkpoint;
use std::io::Write;

pub(super) fn list_checkpoints(root: &std::path::Path, json: bool) -> anyhow::Result<()> {
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
