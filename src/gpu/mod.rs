//! GPU readiness: random-weight decoders at real model shapes, and `humanlm gpu-check`, which in
//! one run checks a device's logits against the CPU and measures the decoder's speed there.

pub mod check;
pub mod random;
mod stock;
pub mod train;

pub use check::{run, GpuCheckArgs};
