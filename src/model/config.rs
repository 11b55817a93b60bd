//! The shape of a decoder of the llama / qwen2 / qwen3 family, read from an HF `config.json`
//! or from GGUF metadata. One struct for all three: they differ only in a few switches.

use super::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The architectures the decoder implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub fn parse(name: &str) -> Option<Arch> {
        match name {
            "llama" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

/// Llama 3.1-style frequency scaling of RoPE (`rope_type: "llama3"`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (always for qwen2).
    pub attention_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (qwen3).
    pub qk_norm: bool,
}

fn field<'a>(v: &'a Value, key: &str, path: &Path) -> Result<&'a Value> {
    v.get(key)
        .filter(|x| !x.is_null())
        .ok_or_else(|| Error::file(path, format!("missing field '{key}'")))
}

fn usize_field(v: &Value, key: &str, path: &Path) -> Result<usize> {
    field(v, key, path)?
        .as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| {
            Error::file(
                path,
                format!("field '{key}' must be a non-negative integer"),
            )
        })
}

fn opt_usize(v: &Value, key: &str, path: &Path) -> Result<Option<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
            Error::file(
                path,
                format!("field '{key}' must be a non-negative integer"),
            )
        }),
    }
}

fn opt_f64(v: &Value, key: &str, path: &Path) -> Result<Option<f64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| Error::file(path, format!("field '{key}' must be a number"))),
    }
}

impl ModelConfig {
    /// Read an HF `config.json`. Unknown architectures and missing fields are refused by name.
    pub fn from_hf_json(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::file(path, format!("invalid JSON: {e}")))?;
        Self::from_hf_value(&v, path)
    }

    pub fn from_hf_value(v: &Value, path: &Path) -> Result<ModelConfig> {
        let model_type = field(v, "model_type", path)?
            .as_str()
            .ok_or_else(|| Error::file(path, "field 'model_type' must be a string"))?;
        let arch = Arch::parse(model_type).ok_or_else(|| {
            Error::file(
                path,
                format!("unknown architecture '{model_type}' (supported: llama, qwen2, qwen3)"),
            )
        })?;
        let hidden_size = usize_field(v, "hidden_size", path)?;
        let num_heads = usize_field(v, "num_attention_heads", path)?;
        let num_kv_heads = opt_usize(v, "num_key_value_heads", path)?.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(Error::file(
                path,
                format!("num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})"),
            ));
        }
        let head_dim = opt_usize(v, "head_dim", path)?.unwrap_or(hidden_size / num_heads);
        // transformers 5 keeps rope settings in `rope_parameters`; older files use
        // `rope_theta` and `rope_scaling` at the top level.
        let rope = v
            .get("rope_parameters")
            .filter(|r| r.is_object())
            .or(v.get("rope_scaling").filter(|r| r.is_object()));
        let rope_theta = opt_f64(v, "rope_theta", path)?
            .or(rope
                .and_then(|r| r.get("rope_theta"))
                .and_then(Value::as_f64))
            .unwrap_or(10_000.0);
        let rope_scaling = match rope {
            None => None,
            Some(r) => {
                let kind = r
                    .get("rope_type")
                    .or(r.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                match kind {
                    "default" => None,
                    "llama3" => Some(Llama3RopeScaling {
                        factor: opt_f64(r, "factor", path)?.unwrap_or(1.0),
                        low_freq_factor: opt_f64(r, "low_freq_factor", path)?.unwrap_or(1.0),
                        high_freq_factor: opt_f64(r, "high_freq_factor", path)?.unwrap_or(4.0),
                        original_max_position_embeddings: opt_usize(r, "original_max_position_embeddings", path)?
                            .unwrap_or(8192),
                    }),
                    other => {
                        return Err(Error::file(
                            path,
                            format!("rope scaling type '{other}' is not supported (supported: default, llama3)"),
                        ))
                    }
                }
            }
        };
        let attention_bias = match arch {
            Arch::Qwen2 => true,
            _ => v
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        let cfg = ModelConfig {
            arch,
            vocab_size: usize_field(v, "vocab_size", path)?,
            hidden_size,
            intermediate_size: usize_field(v, "intermediate_size", path)?,
            num_layers: usize_field(v, "num_hidden_layers", path)?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta,
            rope_scaling,
            rms_norm_eps: opt_f64(v, "rms_norm_eps", path)?.unwrap_or(1e-6),
            max_position_embeddings: opt_usize(v, "max_position_embeddings", path)?.unwrap_or(4096),
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            attention_bias,
            qk_norm: arch == Arch::Qwen3,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Read the hyper-parameters a GGUF file stores under `<arch>.*`.
    pub fn from_gguf(
        content: &candle_core::quantized::gguf_file::Content,
        path: &Path,
    ) -> Result<ModelConfig> {
        let md = &content.metadata;
        let arch_name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| Error::file(path, "missing metadata 'general.architecture'"))?;
        let arch = Arch::parse(arch_name).ok_or_else(|| {
            Error::file(
                path,
                format!("unknown architecture '{arch_name}' (supported: llama, qwen2, qwen3)"),
            )
        })?;
        let get = |k: &str| -> Result<&candle_core::quantized::gguf_file::Value> {
            let key = format!("{arch_name}.{k}");
            md.get(&key)
                .ok_or_else(|| Error::file(path, format!("missing metadata '{key}'")))
        };
        let get_u = |k: &str| -> Result<usize> {
            let v = get(k)?;
            v.to_u64()
                .or_else(|_| v.to_u32().map(u64::from))
                .map(|x| x as usize)
                .map_err(|_| {
                    Error::file(
                        path,
                        format!("metadata '{arch_name}.{k}' must be an integer"),
                    )
                })
        };
        let get_f = |k: &str| -> Result<Option<f64>> {
            match md.get(&format!("{arch_name}.{k}")) {
                None => Ok(None),
                Some(v) => v
                    .to_f32()
                    .map(f64::from)
                    .or_else(|_| v.to_f64())
                    .map(Some)
                    .map_err(|_| {
                        Error::file(path, format!("metadata '{arch_name}.{k}' must be a float"))
                    }),
            }
        };
        let hidden_size = get_u("embedding_length")?;
        let num_heads = get_u("attention.head_count")?;
        let num_kv_heads = if md.contains_key(&format!("{arch_name}.attention.head_count_kv")) {
            get_u("attention.head_count_kv")?
        } else {
            num_heads
        };
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(Error::file(path, format!("head_count ({num_heads}) must be a positive multiple of head_count_kv ({num_kv_heads})")));
        }
        let head_dim = if md.contains_key(&format!("{arch_name}.attention.key_length")) {
            get_u("attention.key_length")?
        } else {
            hidden_size / num_heads
        };
        let vocab_size = match md.get("tokenizer.ggml.tokens") {
            Some(t) => t.to_vec().map(|v| v.len()).unwrap_or(0),
            None => 0,
        };
        let emb = content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| Error::file(path, "missing tensor 'token_embd.weight'"))?;
        let emb_rows = emb.shape.dims().first().copied().unwrap_or(0);
        let cfg = ModelConfig {
            arch,
            vocab_size: if vocab_size == 0 {
                emb_rows
            } else {
                emb_rows.max(vocab_size)
            },
            hidden_size,
            intermediate_size: get_u("feed_forward_length")?,
            num_layers: get_u("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta: get_f("rope.freq_base")?.unwrap_or(10_000.0),
            rope_scaling: None,
            rms_norm_eps: get_f("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
            max_position_embeddings: get_u("context_length").unwrap_or(4096),
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            qk_norm: content
                .tensor_infos
                .contains_key("blk.0.attn_q_norm.weight"),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("head_dim", self.head_dim),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                return Err(Error::file(path, format!("'{name}' must be positive")));
            }
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::file(
                path,
                format!(
                    "head_dim {} must be even for rotary embeddings",
                    self.head_dim
                ),
            ));
        }
        Ok(())
    }

    /// Number of parameters implied by the shapes (embedding counted once when tied).
    pub fn parameter_count(&self) -> u64 {
        let (h, i, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let q = (self.num_heads * self.head_dim) as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.attention_bias {
            attn += q + 2 * kv;
        }
        if self.qk_norm {
            attn += 2 * self.head_dim as u64;
        }
        let layer = attn + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_layers as u64 * layer + h + head
    }
}
