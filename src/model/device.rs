//! Device selection: CPU by default, `cuda:N` when built with the `cuda` feature.

use super::{Error, Result};
use candle_core::{DType, Device};

/// Parse a `--device` value (`cpu`, `cuda`, `cuda:N`).
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    if spec.eq_ignore_ascii_case("cpu") {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                Error::Msg(format!("--device '{spec}': expected cpu, cuda or cuda:N"))
            })?,
        None => {
            return Err(Error::Msg(format!(
                "--device '{spec}': expected cpu, cuda or cuda:N"
            )))
        }
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::Msg(format!(
            "--device '{spec}': this build has no GPU support; rebuild with `--features cuda`"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        Error::Msg(format!(
            "--device '{spec}': {}",
            super::first_line(&e.to_string())
        ))
    })
}

/// A short human name for a device, for status lines and JSON.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// A float dtype by its short or PyTorch name (`f32`/`float32`, `bf16`/`bfloat16`,
/// `f16`/`float16`).
pub fn parse_dtype(s: &str) -> Option<DType> {
    match s.trim() {
        "f32" | "float32" => Some(DType::F32),
        "bf16" | "bfloat16" => Some(DType::BF16),
        "f16" | "float16" => Some(DType::F16),
        _ => None,
    }
}
