//! Reading tensors from a checkpoint, whatever its format, under one naming scheme (the HF one).

use super::quantize::{self, DenseRows, DenseType, Quantize};
use super::{Error, Result};
use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A projection matrix stored as (out, in): quantized blocks or a dense tensor.
#[derive(Debug, Clone)]
pub enum Weight {
    /// Rows of a matrix repacked for this crate's SIMD kernels (CPU; Q4_0, Q4_1, Q8_0). The
    /// matrix may be shared: q/k/v and gate/up projections are fused into one at load.
    Packed(Arc<super::packed::Packed>, std::ops::Range<usize>),
    /// candle's quantized matmul (other types, and GPUs).
    Quant(QMatMul),
    Dense(Tensor),
}

impl Weight {
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            Weight::Packed(p, rows) => (rows.len(), p.k),
            Weight::Quant(QMatMul::QTensor(q)) => q.shape().dims2()?,
            Weight::Quant(QMatMul::Tensor(t))
            | Weight::Quant(QMatMul::TensorF16(t))
            | Weight::Dense(t) => t.dims2()?,
        })
    }

    /// The matrix as a dense tensor (dequantized if needed).
    pub fn to_dense(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Weight::Packed(p, rows) => p.dequantize_rows(rows.clone(), device)?.to_dtype(dtype)?,
            Weight::Quant(QMatMul::QTensor(q)) => q.dequantize(device)?.to_dtype(dtype)?,
            Weight::Quant(QMatMul::Tensor(t))
            | Weight::Quant(QMatMul::TensorF16(t))
            | Weight::Dense(t) => t.to_dtype(dtype)?,
        })
    }

    /// A short name of the storage type (`Q4_1`, `F32`...).
    pub fn kind(&self) -> String {
        match self {
            Weight::Packed(p, _) => format!("{:?}", p.dtype),
            Weight::Quant(QMatMul::QTensor(q)) => format!("{:?}", q.dtype()),
            Weight::Quant(QMatMul::Tensor(t))
            | Weight::Quant(QMatMul::TensorF16(t))
            | Weight::Dense(t) => format!("{:?}", t.dtype()).to_uppercase(),
        }
    }
}

/// How to materialise weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Dtype of activations and dense weights; `None` picks f32 on CPU, bf16 on GPU.
    pub dtype: Option<DType>,
    /// Dequantize every quantized matrix (the differentiable path cannot backpropagate through
    /// quantized matmuls).
    pub dequantize: bool,
    /// What dense matrices become (`None`: the checkpoint's `humanlm.toml`, else
    /// [`Quantize::default_for`]; resolved by `Checkpoint::load`). Quantized checkpoints keep their
    /// own types, and training (`dequantize`) keeps dense weights.
    pub quantize: Option<Quantize>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: None,
            dequantize: false,
            quantize: quantize::chosen(),
        }
    }
}

impl LoadOptions {
    /// The options for the token embedding: its rows are decoded one token at a time, which the
    /// packed types do and candle's Q4_K does not, so a Q4_K load keeps it in Q8_0.
    pub fn for_embedding(&self) -> LoadOptions {
        let mut o = self.clone();
        if o.quantize == Some(Quantize::Q4K) {
            o.quantize = Some(Quantize::Q8_0);
        }
        o
    }

    pub fn activation_dtype(&self) -> DType {
        self.dtype.unwrap_or(if self.device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        })
    }
}

/// The tensors of a checkpoint.
pub enum Store {
    Gguf {
        path: PathBuf,
        content: gguf_file::Content,
        file: std::cell::RefCell<std::fs::File>,
    },
    Safetensors {
        paths: Vec<PathBuf>,
        st: candle_core::safetensors::MmapedSafetensors,
    },
    /// Tensors already in memory under HF names (random-weight models built from a config, for
    /// speed and parity checks without downloading anything). `label` stands in for a file in
    /// messages.
    Memory {
        label: PathBuf,
        tensors: std::collections::HashMap<String, Tensor>,
    },
}

/// HF tensor name → the name llama.cpp's converter gives it in a GGUF.
pub fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        if let Some((n, tail)) = rest.split_once('.') {
            let (module, suffix) = tail.rsplit_once('.').unwrap_or((tail, "weight"));
            let short = match module {
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "self_attn.q_norm" => "attn_q_norm",
                "self_attn.k_norm" => "attn_k_norm",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                other => other,
            };
            return format!("blk.{n}.{short}.{suffix}");
        }
    }
    hf.to_string()
}

impl Store {
    pub fn open_gguf(path: &Path) -> Result<Store> {
        let mut file = std::fs::File::open(path)
            .map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| {
            Error::file(
                path,
                format!(
                    "not a valid GGUF file: {}",
                    super::first_line(&e.to_string())
                ),
            )
        })?;
        // A truncated file still has a readable header; check that every tensor lies inside it.
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
            let end = content.tensor_data_offset + info.offset + bytes as u64;
            if end > len {
                return Err(Error::file(path, format!("truncated: tensor '{name}' ends at byte {end} but the file has {len} bytes")));
            }
        }
        Ok(Store::Gguf {
            path: path.to_path_buf(),
            content,
            file: std::cell::RefCell::new(file),
        })
    }

    pub fn open_safetensors(paths: Vec<PathBuf>) -> Result<Store> {
        for p in &paths {
            if !p.is_file() {
                return Err(Error::file(p, "missing safetensors file"));
            }
            // Validate each file separately so the error names the one at fault.
            // SAFETY: the file is only read; a concurrent writer would be the user's mistake.
            unsafe { candle_core::safetensors::MmapedSafetensors::new(p) }.map_err(|e| {
                Error::file(
                    p,
                    format!(
                        "not a valid safetensors file: {}",
                        super::first_line(&e.to_string())
                    ),
                )
            })?;
        }
        // SAFETY: as above.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&paths) }
            .map_err(|e| Error::file(&paths[0], super::first_line(&e.to_string())))?;
        Ok(Store::Safetensors { paths, st })
    }

    pub fn from_tensors(
        label: impl Into<PathBuf>,
        tensors: std::collections::HashMap<String, Tensor>,
    ) -> Store {
        Store::Memory {
            label: label.into(),
            tensors,
        }
    }

    pub fn is_gguf(&self) -> bool {
        matches!(self, Store::Gguf { .. })
    }

    /// The file to blame for a problem with tensor `name`.
    pub fn path_for(&self, name: &str) -> PathBuf {
        match self {
            Store::Gguf { path, .. } => path.clone(),
            Store::Safetensors { paths, .. } => {
                if paths.len() > 1 {
                    for p in paths {
                        if let Ok(one) =
                            // SAFETY: read-only map; used only to find the owning shard for a
                            // message.
                            unsafe { candle_core::safetensors::MmapedSafetensors::new(p) }
                        {
                            if one.get(name).is_ok() {
                                return p.clone();
                            }
                        }
                    }
                }
                paths[0].clone()
            }
            Store::Memory { label, .. } => label.clone(),
        }
    }

    fn store_name(&self, hf: &str) -> String {
        if self.is_gguf() {
            gguf_name(hf)
        } else {
            hf.to_string()
        }
    }

    pub fn contains(&self, hf: &str) -> bool {
        let name = self.store_name(hf);
        match self {
            Store::Gguf { content, .. } => content.tensor_infos.contains_key(&name),
            Store::Safetensors { st, .. } => st.get(&name).is_ok(),
            Store::Memory { tensors, .. } => tensors.contains_key(&name),
        }
    }

    fn missing(&self, hf: &str) -> Error {
        Error::file(
            self.path_for(hf),
            format!("missing tensor '{}'", self.store_name(hf)),
        )
    }

    fn qtensor(&self, hf: &str, device: &Device) -> Result<QTensor> {
        let Store::Gguf {
            path,
            content,
            file,
        } = self
        else {
            unreachable!("qtensor on a non-GGUF store")
        };
        let name = gguf_name(hf);
        if !content.tensor_infos.contains_key(&name) {
            return Err(self.missing(hf));
        }
        let mut f = file.borrow_mut();
        content.tensor(&mut *f, &name, device).map_err(|e| {
            Error::file(
                path,
                format!(
                    "cannot read tensor '{name}': {}",
                    super::first_line(&e.to_string())
                ),
            )
        })
    }

    /// A dense tensor in `dtype` (vectors, norms, biases, embeddings).
    pub fn dense(&self, hf: &str, device: &Device, dtype: DType) -> Result<Tensor> {
        match self {
            Store::Gguf { .. } => Ok(self
                .qtensor(hf, device)?
                .dequantize(device)?
                .to_dtype(dtype)?),
            Store::Safetensors { st, .. } => {
                let t = st.load(hf, device).map_err(|_| self.missing(hf))?;
                Ok(t.to_dtype(dtype)?)
            }
            Store::Memory { tensors, .. } => {
                let t = tensors.get(hf).ok_or_else(|| self.missing(hf))?;
                Ok(t.to_device(device)?.to_dtype(dtype)?)
            }
        }
    }

    /// A projection matrix, quantized when the file is and `opts` allows it.
    pub fn matrix(&self, hf: &str, opts: &LoadOptions) -> Result<Weight> {
        let dtype = opts.activation_dtype();
        match self {
            Store::Gguf { .. } => {
                let q = self.qtensor(hf, &opts.device)?;
                if opts.dequantize {
                    Ok(Weight::Dense(q.dequantize(&opts.device)?.to_dtype(dtype)?))
                } else if let (true, Some(p)) = (
                    opts.device.is_cpu() && dtype == DType::F32,
                    super::packed::Packed::from_qtensor(&q)?,
                ) {
                    let n = p.n;
                    Ok(Weight::Packed(Arc::new(p), 0..n))
                } else {
                    match QMatMul::from_arc(Arc::new(q))? {
                        QMatMul::Tensor(t) => Ok(Weight::Dense(t.to_dtype(dtype)?)),
                        q => Ok(Weight::Quant(q)),
                    }
                }
            }
            Store::Safetensors { .. } | Store::Memory { .. } => match opts.quantize {
                Some(q) if q != Quantize::None && !opts.dequantize => self.quantized(hf, q, opts),
                _ => Ok(Weight::Dense(self.dense(hf, &opts.device, dtype)?)),
            },
        }
    }

    /// A dense matrix quantized to `q` as it is read: from the mapped bytes row by row into the
    /// packed layout (Q8_0, Q4_0 on the CPU), so no f32 copy of the matrix is made; otherwise
    /// (Q4_K, a GPU) through an f32 copy of this one tensor and candle's quantizer.
    fn quantized(&self, hf: &str, q: Quantize, opts: &LoadOptions) -> Result<Weight> {
        let path = self.path_for(hf);
        let owned: Vec<u8>;
        let rows = match self {
            Store::Safetensors { st, .. } => {
                let view = st.get(hf).map_err(|_| self.missing(hf))?;
                let dtype = match view.dtype() {
                    safetensors::Dtype::F32 => DenseType::F32,
                    safetensors::Dtype::F16 => DenseType::F16,
                    safetensors::Dtype::BF16 => DenseType::BF16,
                    other => {
                        return Err(Error::file(
                            &path,
                            format!("tensor '{hf}' is {other:?}; --quantize {q} converts f32, f16 or bf16 weights"),
                        ))
                    }
                };
                let &[n, k] = view.shape() else {
                    return Err(Error::file(
                        &path,
                        format!(
                            "tensor '{hf}' has shape {:?}, expected a matrix",
                            view.shape()
                        ),
                    ));
                };
                DenseRows {
                    bytes: view.data(),
                    dtype,
                    n,
                    k,
                }
            }
            Store::Memory { tensors, .. } => {
                let t = tensors.get(hf).ok_or_else(|| self.missing(hf))?;
                let (n, k) = t.dims2()?;
                owned = t
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect();
                DenseRows {
                    bytes: &owned,
                    dtype: DenseType::F32,
                    n,
                    k,
                }
            }
            Store::Gguf { .. } => unreachable!("GGUF matrices keep their own types"),
        };
        let (n, k) = (rows.n, rows.k);
        if opts.device.is_cpu() && opts.activation_dtype() == DType::F32 {
            if let Some(p) = quantize::pack(&rows, q) {
                return Ok(Weight::Packed(Arc::new(p), 0..n));
            }
        }
        let kind = q.ggml().expect("a quantized type");
        if k % kind.block_size() != 0 {
            // As llama.cpp does for such rows: Q4_K's 256-wide blocks fall back to Q8_0's 32.
            return if q != Quantize::Q8_0 && k % 32 == 0 {
                self.quantized(hf, Quantize::Q8_0, opts)
            } else {
                Ok(Weight::Dense(self.dense(
                    hf,
                    &opts.device,
                    opts.activation_dtype(),
                )?))
            };
        }
        let t = Tensor::from_vec(rows.to_f32(), (n, k), &Device::Cpu)?.to_device(&opts.device)?;
        let qt = QTensor::quantize(&t, kind).map_err(|e| {
            Error::file(
                &path,
                format!(
                    "cannot quantize '{hf}' to {q}: {}",
                    super::first_line(&e.to_string())
                ),
            )
        })?;
        Ok(Weight::Quant(QMatMul::from_arc(Arc::new(qt))?))
    }

    /// Shape of a tensor without loading it.
    pub fn shape(&self, hf: &str) -> Option<Vec<usize>> {
        let name = self.store_name(hf);
        match self {
            Store::Gguf { content, .. } => content
                .tensor_infos
                .get(&name)
                .map(|i| i.shape.dims().to_vec()),
            Store::Safetensors { st, .. } => st.get(&name).ok().map(|v| v.shape().to_vec()),
            Store::Memory { tensors, .. } => tensors.get(&name).map(|t| t.dims().to_vec()),
        }
    }
}
