//! LoRA training speed for `gpu-check` (written against src/train/).

use super::check::GpuCheckArgs;
use crate::model::Decoder;
use serde_json::Value;

pub fn measure_training(_dec: &Decoder, _a: &GpuCheckArgs) -> anyhow::Result<Value> {
    anyhow::bail!("not yet")
}
