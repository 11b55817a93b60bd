//! `humanlm checkpoints`: the checkpoints folder as a table or JSON.

use super::{human_bytes, human_count};
use crate::model::Checkpoint;
use std::io::Write;

pub(super) fn list_checkpoints(
    root: &std::path::Path,
    json: bool,
    hub: bool,
) -> anyhow::Result<()> {
    let mut infos = vec![];
    let mut problems = vec![];
    let entries: Vec<_> = if hub {
        crate::model::hub::Hub::from_env()
            .cached()
            .into_iter()
            .map(|(r, snap)| {
                Checkpoint::open(&snap, root).map(|mut c| {
                    c.name = format!("hf:{r}");
                    c
                })
            })
            .collect()
    } else {
        Checkpoint::list(root)
    };
    for entry in entries {
        match entry.and_then(|c| c.info()) {
            Ok(i) => infos.push(i),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&infos)?)?;
    } else if infos.is_empty() && hub {
        let cache = crate::model::hub::Hub::from_env().cache;
        writeln!(
            out,
            "no checkpoints in the Hugging Face cache {} (humanlm pull ORG/NAME)",
            cache.display()
        )?;
    } else if infos.is_empty() {
        writeln!(
            out,
            "no checkpoints in {} (run scripts/fetch-checkpoints.sh)",
            root.display()
        )?;
    } else {
        writeln!(
            out,
            "{:<26} {:<6} {:<8} {:>9} {:<22} {:<16} {:>8} {:>9}  base",
            "NAME", "FORMAT", "ARCH", "PARAMS", "DTYPE", "LOADS AS", "CONTEXT", "SIZE"
        )?;
        for i in &infos {
            writeln!(
                out,
                "{:<26} {:<6} {:<8} {:>9} {:<22} {:<16} {:>8} {:>9}  {}",
                i.name,
                i.format,
                i.architecture,
                human_count(i.parameters),
                i.dtype,
                loads_as(i),
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

/// The LOADS AS column: the type, and where it came from when it was not asked for.
fn loads_as(i: &crate::model::CheckpointInfo) -> String {
    let why = i.loads_as_source.map_or("", |s| s.tag());
    let what = if i.loads_as == "none" {
        "f32"
    } else {
        &i.loads_as
    };
    format!("{what}{why}")
}

/// `humanlm pull ORG/NAME[@REVISION]`: the snapshot fetched (or found) in the Hugging Face cache.
pub(super) fn pull(root: &std::path::Path, spec: &str, json: bool) -> anyhow::Result<()> {
    use crate::model::hub::HubRef;
    let r = HubRef::parse(spec.strip_prefix("hf:").unwrap_or(spec))
        .ok_or_else(|| anyhow::anyhow!("'{spec}': expected ORG/NAME or ORG/NAME@REVISION"))?;
    let ckpt = Checkpoint::from_hub(&r, root)?;
    let info = ckpt.info()?;
    let mut out = std::io::stdout().lock();
    if json {
        let mut v = serde_json::to_value(&info)?;
        v["repo"] = r.repo.clone().into();
        v["revision"] = r.revision.clone().into();
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "{r}: {} {} · {} parameters · {} · loads as {} · {}",
            info.format,
            info.architecture,
            human_count(info.parameters),
            human_bytes(info.size_bytes),
            loads_as(&info),
            info.path
        )?;
        writeln!(out, "use it as --checkpoint hf:{r}")?;
    }
    Ok(())
}
