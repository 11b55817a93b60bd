//! Every integration test, in one binary: the crate and its dependencies link once instead of
//! once per file. Each module is one area of the workbench; `common` holds what they share.
//! Timings, the budget and the test groups are in `tests/README.md` and `.config/nextest.toml`.

// Helpers shared by the tests unwrap too: in a test, the panic is the failure report.
#![allow(clippy::unwrap_used)]

// The allocator the binary runs on (src/main.rs), so model and training tests run as users'
// commands do: with glibc's, every large training buffer is page-faulted back in, and a full
// fine-tuning step takes twice as long.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

mod bad_input;
mod converse;
mod embedding;
mod endpoint;
mod eval;
mod export;
mod export_dataset;
mod generate;
mod gguf_types;
mod gpu_check;
mod hub;
mod import;
mod lexical;
mod peft_interop;
mod prefix_cache;
mod prompts;
mod quantize;
mod quantized_parity;
mod recipe_prompts;
mod reference_logits;
mod scenarios;
mod serve;
mod simulate;
mod tokenizer;
mod train;
mod train_targets;
mod train_val;
mod tui;
mod tui_converse;
mod tui_e2e;
