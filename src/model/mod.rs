//! Checkpoints, tokenizers, chat templates and the decoder.
//!
//! The one place that knows how weights are stored (GGUF, HF safetensors, PEFT adapters) and how
//! the llama / qwen2 / qwen3 family computes. Nothing here knows about scenarios or prompts.

pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod device;
pub mod lora;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

pub use checkpoint::{Checkpoint, CheckpointInfo, CheckpointKind, Model};
pub use config::{Arch, ModelConfig};
pub use decoder::{Decoder, KvCache, Ops};
pub use tokenizer::Tokenizer;

/// Everything that can go wrong while finding, reading or running a checkpoint. Every variant
/// that concerns a file names it, so the CLI can print one line a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder that exists (or should) is at fault.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A problem not tied to one file (bad argument, prompt too long...).
    #[error("{0}")]
    Msg(String),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::File { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// candle errors can carry multi-line context or backtraces; a user needs the first line.
pub(crate) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}
