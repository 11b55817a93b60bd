//! LoRA adapters in PEFT's on-disk layout.
//!
//! `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ` with `s = α/r` (or `α/√r` for rsLoRA), A of shape (r, in) and B of
//! shape (out, r). Only the low-rank term is added: the base output is never scaled.

use super::{Error, Result};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Every linear projection of a llama-family decoder layer, by the last part of its HF name: what
/// "all projections" means for an adapter (PEFT's `all-linear` without the head).
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The low-rank factors of one adapted linear layer.
#[derive(Debug, Clone)]
pub struct LoraWeights {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    /// Dropout on the adapter's input while training (PEFT's `lora_dropout`); shared by every
    /// layer of one adapter so the trainer can switch it off for gradient-free passes.
    pub dropout: Option<Arc<Dropout>>,
}

/// Inverted dropout with its own seeded generator: masks depend only on the seed the trainer
/// sets before each pass, so a resumed run draws the same masks (candle's CPU generator cannot
/// be seeded).
#[derive(Debug)]
pub struct Dropout {
    pub p: f64,
    state: Mutex<(bool, StdRng)>,
}

impl Dropout {
    pub fn new(p: f64) -> Dropout {
        Dropout {
            p,
            state: Mutex::new((false, StdRng::seed_from_u64(0))),
        }
    }

    /// Switch dropout on with a fresh generator seeded by `seed`, or off (`None`).
    pub fn set(&self, seed: Option<u64>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *st = (seed.is_some(), StdRng::seed_from_u64(seed.unwrap_or(0)));
    }

    /// Whether masks are being drawn (a gradient pass with p > 0).
    pub fn live(&self) -> bool {
        self.p > 0.0 && self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.0 || self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let rng = &mut st.1;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.random::<f64>() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }
}

impl LoraWeights {
    /// The delta this adapter adds to `x·Wᵀ`.
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let dropped;
        let x = match &self.dropout {
            Some(d) => {
                dropped = d.apply(x)?;
                &dropped
            }
            None => x,
        };
        Ok((x
            .broadcast_matmul(&self.a.t()?)?
            .broadcast_matmul(&self.b.t()?)?
            * self.scale)?)
    }

    /// Whether this pass drops the adapter's inputs.
    pub fn dropout_live(&self) -> bool {
        self.dropout.as_ref().is_some_and(|d| d.live())
    }

    /// `s·B·A`, the change to W when the adapter is merged.
    pub fn merged_delta(&self) -> Result<Tensor> {
        Ok((self.b.matmul(&self.a)? * self.scale)?)
    }
}

/// `adapter_config.json`, the fields we use.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterConfig {
    pub base_model_name_or_path: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    pub target_modules: Vec<String>,
    /// Used while training only; kept so the saved config says how the adapter was trained.
    pub lora_dropout: f64,
}

impl AdapterConfig {
    pub fn read(path: &Path) -> Result<AdapterConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::file(path, format!("invalid JSON: {e}")))?;
        if let Some(t) = v.get("peft_type").and_then(Value::as_str) {
            if t != "LORA" {
                return Err(Error::file(
                    path,
                    format!("peft_type '{t}' is not supported (only LORA)"),
                ));
            }
        }
        let r = v
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| Error::file(path, "field 'r' must be a positive integer"))?
            as usize;
        let target_modules = match v.get("target_modules") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => vec![],
        };
        if v.get("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
            return Err(Error::file(
                path,
                "fan_in_fan_out adapters (GPT-2 Conv1D layers) are not supported",
            ));
        }
        Ok(AdapterConfig {
            base_model_name_or_path: v
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(String::from),
            r,
            lora_alpha: v
                .get("lora_alpha")
                .and_then(Value::as_f64)
                .unwrap_or(r as f64),
            use_rslora: v
                .get("use_rslora")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            target_modules,
            lora_dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        })
    }

    /// `adapter_config.json` as PEFT writes it (the fields PEFT needs to load the adapter).
    pub fn to_peft_json(&self) -> Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model_name_or_path,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "use_rslora": self.use_rslora,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
        })
    }

    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
}

/// A loaded adapter: factors keyed by the HF module path (`model.layers.0.self_attn.q_proj`).
#[derive(Debug, Clone)]
pub struct Adapter {
    pub name: String,
    pub dir: PathBuf,
    pub config: AdapterConfig,
    pub modules: BTreeMap<String, LoraWeights>,
    /// Whether B's rows are in PEFT's (Hugging Face) order, as on disk, rather than already in
    /// the order the decoder runs (see `Decoder::lora_b_layout`).
    pub peft_layout: bool,
}

impl Adapter {
    pub fn load(dir: &Path, name: &str, device: &Device, dtype: DType) -> Result<Adapter> {
        let config = AdapterConfig::read(&dir.join("adapter_config.json"))?;
        let file = dir.join("adapter_model.safetensors");
        if !file.is_file() {
            return Err(Error::file(&file, "missing adapter weights"));
        }
        let tensors = candle_core::safetensors::load(&file, device).map_err(|e| {
            Error::file(
                &file,
                format!(
                    "not a valid safetensors file: {}",
                    super::first_line(&e.to_string())
                ),
            )
        })?;
        let mut a_parts: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut b_parts: BTreeMap<String, Tensor> = BTreeMap::new();
        for (key, t) in tensors {
            let Some((module, which)) = parse_peft_key(&key) else {
                return Err(Error::file(
                    &file,
                    format!("unexpected tensor '{key}' (expected PEFT LoRA keys)"),
                ));
            };
            let t = t.to_dtype(dtype)?;
            if which == 'A' {
                a_parts.insert(module, t);
            } else {
                b_parts.insert(module, t);
            }
        }
        let scale = config.scale();
        let mut modules = BTreeMap::new();
        for (module, a) in a_parts {
            let b = b_parts.remove(&module).ok_or_else(|| {
                Error::file(&file, format!("'{module}' has lora_A but no lora_B"))
            })?;
            let (ra, _) = a.dims2()?;
            let (_, rb) = b.dims2()?;
            if ra != config.r || rb != config.r {
                return Err(Error::file(
                    &file,
                    format!(
                        "'{module}': rank {ra}/{rb} does not match r = {} in adapter_config.json",
                        config.r
                    ),
                ));
            }
            modules.insert(
                module,
                LoraWeights {
                    a,
                    b,
                    scale,
                    dropout: None,
                },
            );
        }
        if let Some(module) = b_parts.keys().next() {
            return Err(Error::file(
                &file,
                format!("'{module}' has lora_B but no lora_A"),
            ));
        }
        if modules.is_empty() {
            return Err(Error::file(&file, "no LoRA tensors found"));
        }
        Ok(Adapter {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            config,
            modules,
            peft_layout: true,
        })
    }
}

/// `base_model.model.<module>.lora_A[.<adapter>].weight` → (`<module>`, 'A').
pub fn parse_peft_key(key: &str) -> Option<(String, char)> {
    let rest = key.strip_prefix("base_model.model.").unwrap_or(key);
    let rest = rest.strip_suffix(".weight")?;
    for (tag, which) in [(".lora_A", 'A'), (".lora_B", 'B')] {
        if let Some(pos) = rest.find(tag) {
            let tail = &rest[pos + tag.len()..];
            if tail.is_empty() || (tail.starts_with('.') && !tail[1..].contains('.')) {
                return Some((rest[..pos].to_string(), which));
            }
        }
    }
    None
}

/// The PEFT key under which a module's factor is saved.
pub fn peft_key(module: &str, which: char) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_zeroes_about_p_scales_the_rest_and_repeats_with_its_seed() {
        let d = Dropout::new(0.25);
        let x = Tensor::ones((64, 64), DType::F32, &Device::Cpu).unwrap();
        let off: Vec<f32> = d
            .apply(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(off.iter().all(|&v| v == 1.0), "off by default");
        d.set(Some(9));
        let a: Vec<f32> = d
            .apply(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let zeros = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((zeros - 0.25).abs() < 0.03, "{zeros}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        d.set(Some(9));
        let b: Vec<f32> = d
            .apply(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b, "the same seed draws the same mask");
        d.set(None);
        let c: Vec<f32> = d
            .apply(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(c.iter().all(|&v| v == 1.0));
    }
}
