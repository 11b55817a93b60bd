//! Short local fine-tuning passes with LoRA on the differentiable decoder path: supervised
//! fine-tuning ([`sft`]) and HumanLM's GRPO ([`grpo`]).
//!
//! The base weights stay frozen plain tensors (quantized matrices are dequantized: there is no
//! backward through a quantized matmul); only the LoRA factors
//! ([`crate::model::lora_params`]) are `Var`s. Both methods share one configuration
//! ([`config`]), one output folder layout and one step event ([`events`]); the trainer loop
//! is [`run`](mod@run):
//!
//! - a PEFT-layout adapter (`adapter_config.json`, `adapter_model.safetensors`) loadable as a
//!   checkpoint;
//! - `events.jsonl`, one [`StepEvent`] per step (the TUI tails it);
//! - with `--val`, `val/` (an eval run folder per validation) and `best/` with `--keep-best`
//!   ([`val`]);
//! - `checkpoint-N/` folders with the adapter, the optimizer state and `trainer_state.json`,
//!   each written whole (a temporary folder renamed into place), so `--resume` continues
//!   exactly where it stopped and a failed save leaves the previous checkpoint intact.

pub mod config;
pub mod error;
pub mod events;
pub mod grpo;
pub mod optim;
pub mod plan;
pub mod policy;
pub mod reward;
pub mod run;
pub mod sft;
pub mod val;

pub use config::{default_alpha, upgrade_saved_config, Data, Method, TrainConfig};
pub use error::{Error, Result};
pub use events::{
    push_event, push_val_event, read_events, read_val_events, RewardStats, RolloutSample,
    StepEvent, TrainEvent, ValEvent,
};
pub use grpo::GrpoParams;
pub use run::{run, Trainable, Trainer};
pub use sft::{sft_examples, sft_loss, Example, ThinkConfig};
pub use val::ValConfig;
