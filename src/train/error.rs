//! What can stop a training run, as one typed error: a bad option, an unusable file or folder,
//! a run that cannot go on (cancelled, diverged), or a fault from the layers it builds on.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder (data, output, checkpoint, resume state) is at fault.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A bad option (named by its flag) or a run that stopped, with what to do next.
    #[error("{0}")]
    Msg(String),
    #[error(transparent)]
    Model(#[from] crate::model::Error),
    #[error(transparent)]
    Prompt(#[from] crate::prompts::Error),
    #[error(transparent)]
    Scenario(#[from] crate::scenario::Error),
    #[error(transparent)]
    Sim(#[from] crate::sim::Error),
    #[error(transparent)]
    Judge(#[from] crate::judge::Error),
    #[error(transparent)]
    Export(#[from] crate::export::Error),
    #[error(transparent)]
    Write(#[from] crate::files::WriteError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl Error {
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
