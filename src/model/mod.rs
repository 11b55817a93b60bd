//! Checkpoints, tokenizers, chat templates and the decoder.
//!
//! The one place that knows how weights are stored (GGUF, HF safetensors, PEFT adapters) and how
//! the llama / qwen2 / qwen3 family computes. Nothing here knows about scenarios or prompts.

pub mod attention;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod device;
pub mod grad;
pub mod hub;
pub mod kv_cache;
pub mod loader;
pub mod lora;
pub mod lora_params;
pub mod packed;
pub mod prefix_cache;
pub mod quantize;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

pub use checkpoint::{Checkpoint, CheckpointInfo, CheckpointKind, Model};
pub use config::{Arch, ModelConfig};
pub use decoder::{Decoder, Ops, DECODE_ROWS_TOGETHER};
pub use kv_cache::KvCache;
pub use prefix_cache::PrefixCache;
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
        Error::File {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// candle errors can carry multi-line context or backtraces; a user needs the first line.
pub(crate) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// The most common value, with the others after it: "Q4_1 (also Q8_0, F32)".
pub(crate) fn dominant(items: impl Iterator<Item = String>) -> String {
    let mut counts: Vec<(String, usize)> = vec![];
    for it in items {
        match counts.iter_mut().find(|(n, _)| *n == it) {
            Some((_, c)) => *c += 1,
            None => counts.push((it, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut names = counts.into_iter().map(|(n, _)| n);
    match names.next() {
        None => String::new(),
        Some(first) => {
            let rest: Vec<String> = names.collect();
            if rest.is_empty() {
                first
            } else {
                format!("{first} (also {})", rest.join(", "))
            }
        }
    }
}
