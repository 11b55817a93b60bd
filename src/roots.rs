//! Where the workbench finds what it reads by name: checkpoints and prompt sets.
//!
//! The binary's edge (the CLI's flags and environment, the workbench's start-up) decides these
//! once and hands them down; library code never reads an environment variable to find a folder,
//! so a test, a second workbench or an embedding program can point each call elsewhere.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// Checkpoints referred to by name (`--checkpoint NAME`), and the embedders judges use.
    pub checkpoints: PathBuf,
    /// Prompt sets referred to by name (`--prompts NAME`, a judge's `prompts = "..."`).
    pub prompts: PathBuf,
}

impl Roots {
    pub fn new(checkpoints: impl Into<PathBuf>, prompts: impl Into<PathBuf>) -> Roots {
        Roots {
            checkpoints: checkpoints.into(),
            prompts: prompts.into(),
        }
    }
}
