//! Exports out of the workbench, for other tools: a checkpoint as a Hugging Face folder (an
//! adapter merged into its base), and scenarios as training rows of the HumanLM verl recipe.
//!
//! Both write atomically (a temporary name in the same folder, renamed into place) and refuse to
//! replace what exists unless asked to.

pub mod merge;
pub mod verl;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {}", .0.display(), .1)]
    File(PathBuf, String),
    #[error("{0}")]
    Msg(String),
    #[error(transparent)]
    Model(#[from] crate::model::Error),
    #[error(transparent)]
    Sim(#[from] crate::sim::Error),
    #[error(transparent)]
    Scenario(#[from] crate::scenario::Error),
    #[error(transparent)]
    Prompt(#[from] crate::prompts::Error),
    #[error("tensor error: {}", crate::model::first_line(&.0.to_string()))]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Write(#[from] crate::files::WriteError),
}

pub type Result<T> = std::result::Result<T, Error>;
