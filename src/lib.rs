//! humanlm: a terminal workbench for simulating human users with language models.
//!
//! Data flows one way: checkpoint → `model` → `generate` → (simulation, judging, evaluation,
//! training); the CLI sits on top and only calls down.

pub mod alloc;
pub mod cli;
pub mod converse;
pub mod eval;
pub mod export;
pub mod files;
pub mod generate;
pub mod gpu;
pub mod judge;
pub mod model;
pub mod prompts;
pub mod pyjson;
pub mod remote;
pub mod roots;
pub mod scenario;
pub mod serve;
pub mod sim;
pub mod train;
pub mod tui;
