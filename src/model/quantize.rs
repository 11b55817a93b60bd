//! Quantize on load: a dense checkpoint's projection matrices (f32, f16 or bf16 in safetensors)
//! converted tensor by tensor into the packed types the CPU kernels run, straight from the
//! memory-mapped shard, so an 8B model never exists in memory as f32.
//!
//! Q8_0 and Q4_0 follow ggml's reference quantizers (`quantize_row_q8_0_ref`,
//! `quantize_row_q4_0_ref`) to the bit, so a checkpoint quantized here holds the same blocks as
//! llama.cpp's `llama-quantize --pure` of the same weights (tested against gguf-py, which
//! mirrors them). Q4_K goes through candle's quantizer and its matmul.

use super::packed::Packed;
use candle_core::quantized::GgmlDType;
use half::{bf16, f16};
use rayon::prelude::*;
use std::fmt;

const QK: usize = 32;

/// The storage a dense matrix is converted to at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantize {
    /// Keep the checkpoint's float weights (f32 activations on the CPU, bf16 on a GPU).
    None,
    Q8_0,
    Q4_0,
    Q4K,
}

impl Quantize {
    pub const NAMES: &'static str = "none, q8_0, q4_0 or q4_k";

    pub fn parse(s: &str) -> Option<Quantize> {
        Some(match s.to_ascii_lowercase().as_str() {
            "none" | "dense" => Quantize::None,
            "q8_0" | "q8" => Quantize::Q8_0,
            "q4_0" => Quantize::Q4_0,
            "q4_k" | "q4k" => Quantize::Q4K,
            _ => return None,
        })
    }

    pub fn ggml(self) -> Option<GgmlDType> {
        match self {
            Quantize::None => None,
            Quantize::Q8_0 => Some(GgmlDType::Q8_0),
            Quantize::Q4_0 => Some(GgmlDType::Q4_0),
            Quantize::Q4K => Some(GgmlDType::Q4K),
        }
    }

    /// Bytes per weight once quantized (f32 for `None`, the CPU's dense type).
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            Quantize::None => 4.0,
            Quantize::Q8_0 => 34.0 / 32.0,
            Quantize::Q4_0 => 18.0 / 32.0,
            Quantize::Q4K => 144.0 / 256.0,
        }
    }

    /// The default for a dense checkpoint of `parameters` weights on `device`: on the CPU, a model
    /// above 1B parameters would need 4 bytes a weight as f32 and decode at memory speed, so it
    /// loads as Q8_0 (within a fraction of a percent of the dense logits); a GPU keeps bf16.
    pub fn default_for(parameters: u64, device: &candle_core::Device) -> Quantize {
        if device.is_cpu() && parameters > 1_000_000_000 {
            Quantize::Q8_0
        } else {
            Quantize::None
        }
    }
}

impl fmt::Display for Quantize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Quantize::None => "none",
            Quantize::Q8_0 => "q8_0",
            Quantize::Q4_0 => "q4_0",
            Quantize::Q4K => "q4_k",
        })
    }
}

/// Where a load's [`Quantize`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--quantize`, `HUMANLM_QUANTIZE` or the workbench's choice.
    Asked,
    /// `quantize = "..."` in the checkpoint's `humanlm.toml`.
    Settings,
    /// [`Quantize::default_for`] the checkpoint's size (and device), which chose this.
    Default(Quantize),
}

impl Source {
    /// Why, in words (`humanlm checkpoints --json`'s `loads_as_reason`).
    pub fn reason(self) -> &'static str {
        match self {
            Source::Asked => "--quantize",
            Source::Settings => super::checkpoint::SETTINGS_FILE,
            Source::Default(Quantize::None) => "default below 1B parameters",
            Source::Default(_) => "default above 1B parameters on the CPU",
        }
    }

    /// `reason` of a load's source, `None` being a GGUF's own types.
    pub fn reason_of(src: Option<Source>) -> &'static str {
        src.map_or("quantized in the file", Source::reason)
    }

    /// The short mark tables and the status bar put after the type.
    pub fn tag(self) -> &'static str {
        match self {
            Source::Asked => "",
            Source::Settings => " (toml)",
            Source::Default(_) => " (auto)",
        }
    }
}

static CHOSEN: std::sync::OnceLock<Quantize> = std::sync::OnceLock::new();

/// The process-wide choice (`--quantize`, `HUMANLM_QUANTIZE`) every load without its own takes;
/// set once, at start-up.
pub fn choose(q: Quantize) {
    let _ = CHOSEN.set(q);
}

pub fn chosen() -> Option<Quantize> {
    CHOSEN.get().copied()
}

/// The element type of a dense matrix as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseType {
    F32,
    F16,
    BF16,
}

impl DenseType {
    fn size(self) -> usize {
        match self {
            DenseType::F32 => 4,
            DenseType::F16 | DenseType::BF16 => 2,
        }
    }
}

/// A dense (n, k) matrix in its stored bytes (little-endian, row-major), read a row at a time.
pub struct DenseRows<'a> {
    pub bytes: &'a [u8],
    pub dtype: DenseType,
    pub n: usize,
    pub k: usize,
}

impl DenseRows<'_> {
    /// Row `r` as f32 into `out` (length k).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let sz = self.dtype.size();
        let src = &self.bytes[r * self.k * sz..(r + 1) * self.k * sz];
        match self.dtype {
            DenseType::F32 => {
                for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            DenseType::F16 => {
                for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            DenseType::BF16 => {
                for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        }
    }

    /// The whole matrix as f32 (for quantizers that need a tensor: Q4_K).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n * self.k];
        out.par_chunks_mut(self.k)
            .enumerate()
            .for_each(|(r, row)| self.row(r, row));
        out
    }
}

/// One block of 32 as ggml's `quantize_row_q8_0_ref` writes it: scale, then 32 signed bytes.
pub fn q8_0_block(x: &[f32], qs: &mut [u8]) -> f16 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in qs.iter_mut().zip(x) {
        // roundf: halves away from zero, as Rust's `round`.
        *q = ((v * id).round() as i8) as u8;
    }
    f16::from_f32(d)
}

/// One block of 32 as ggml's `quantize_row_q4_0_ref` writes it: the scale is the signed value of
/// largest magnitude over −8, and byte j holds element j (low nibble) and j + 16 (high).
pub fn q4_0_block(x: &[f32], qs: &mut [u8]) -> f16 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let nib = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    for j in 0..QK / 2 {
        qs[j] = nib(x[j]) | (nib(x[j + QK / 2]) << 4);
    }
    f16::from_f32(d)
}

/// Quantize `src` to Q8_0 or Q4_0 in this crate's packed layout. `None` for other types or a row
/// length that is not a multiple of 32 (the caller falls back).
pub fn pack(src: &DenseRows, q: Quantize) -> Option<Packed> {
    let (n, k) = (src.n, src.k);
    if k % QK != 0 || !matches!(q, Quantize::Q8_0 | Quantize::Q4_0) {
        return None;
    }
    let bpr = k / QK; // blocks per row
    let q_bytes = if q == Quantize::Q8_0 { QK } else { QK / 2 };
    let mut d = vec![f16::ZERO; n * bpr];
    let mut qs = vec![0u8; n * bpr * q_bytes];
    d.par_chunks_mut(bpr)
        .zip(qs.par_chunks_mut(bpr * q_bytes))
        .enumerate()
        .for_each_init(
            || vec![0f32; k],
            |row, (r, (d_row, q_row))| {
                src.row(r, row);
                for ((x, dd), qq) in row
                    .chunks_exact(QK)
                    .zip(d_row.iter_mut())
                    .zip(q_row.chunks_exact_mut(q_bytes))
                {
                    *dd = if q == Quantize::Q8_0 {
                        q8_0_block(x, qq)
                    } else {
                        q4_0_block(x, qq)
                    };
                }
            },
        );
    Some(Packed::from_blocks(n, k, q.ggml()?, d, qs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    fn bytes_of(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// candle implements the same reference quantizers; the repacked blocks must decode to what
    /// candle's blocks decode to, for every type we pack.
    #[test]
    fn packs_the_blocks_candle_quantizes() {
        let (n, k) = (5, 96);
        let vals: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 97.0)
            .collect();
        let bytes = bytes_of(&vals);
        let src = DenseRows {
            bytes: &bytes,
            dtype: DenseType::F32,
            n,
            k,
        };
        for q in [Quantize::Q8_0, Quantize::Q4_0] {
            let ours = pack(&src, q).unwrap();
            let t = Tensor::from_vec(vals.clone(), (n, k), &Device::Cpu).unwrap();
            let theirs = QTensor::quantize(&t, q.ggml().unwrap()).unwrap();
            let theirs = Packed::from_qtensor(&theirs).unwrap().unwrap();
            let values = |p: &Packed| -> Vec<f32> {
                p.dequantize_rows(0..n, &Device::Cpu)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1())
                    .unwrap()
            };
            let (a, b) = (values(&ours), values(&theirs));
            assert_eq!(a, b, "{q}");
        }
    }

    #[test]
    fn reads_each_stored_type() {
        let vals = [1.5f32, -2.25, 0.0, 3.0];
        let f16b: Vec<u8> = vals
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16b: Vec<u8> = vals
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        let f32b = bytes_of(&vals);
        for (bytes, dtype) in [
            (&f16b, DenseType::F16),
            (&bf16b, DenseType::BF16),
            (&f32b, DenseType::F32),
        ] {
            let src = DenseRows {
                bytes,
                dtype,
                n: 2,
                k: 2,
            };
            let mut row = [0f32; 2];
            src.row(1, &mut row);
            assert_eq!(row, [0.0, 3.0], "{dtype:?}");
        }
    }
}
