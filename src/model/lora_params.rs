//! LoRA factors being trained: `Var`s by HF module name with PEFT's initialisation, attached to
//! a [`Decoder`] as a live adapter, saved and reloaded in PEFT's layout.

use super::lora::{peft_key, Adapter, AdapterConfig, Dropout, LoraWeights};
use super::{Decoder, Error, Result};
use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The name the adapter being trained is attached under.
pub const TRAINING: &str = "training";

/// Which layers get LoRA factors, and how large.
#[derive(Debug, Clone)]
pub struct LoraShape {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// HF module names' last parts (`q_proj`, ..., `down_proj`).
    pub targets: Vec<String>,
}

/// The trainable LoRA factors, by HF module name.
pub struct LoraParams {
    pub vars: Vec<(String, Var, Var)>,
    pub config: AdapterConfig,
    /// Shared by every adapted layer; the trainer switches it on for gradient passes only.
    pub dropout: Option<Arc<Dropout>>,
}

impl LoraParams {
    /// PEFT's initialisation: A uniform in ±1/√in (Kaiming with a = √5), B zero, so training
    /// starts from the base model exactly. The factors live on the decoder's device in its
    /// dtype: the adapter's matmuls take the layer's input as the base weights do.
    pub fn new(
        dec: &Decoder,
        shape: &LoraShape,
        seed: u64,
        base: Option<String>,
    ) -> Result<LoraParams> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (dev, dtype) = (&dec.device, dec.dtype);
        let mut vars = vec![];
        for (name, in_dim, out_dim) in dec.linear_shapes() {
            let last = name.rsplit('.').next().unwrap_or_default();
            if !shape.targets.iter().any(|t| t == last) {
                continue;
            }
            let bound = 1.0 / (in_dim as f64).sqrt();
            let a: Vec<f32> = (0..shape.rank * in_dim)
                .map(|_| rand::Rng::random_range(&mut rng, -bound..bound) as f32)
                .collect();
            let a = Tensor::from_vec(a, (shape.rank, in_dim), dev)?.to_dtype(dtype)?;
            let a = Var::from_tensor(&a)?;
            let b = Var::zeros((out_dim, shape.rank), dtype, dev)?;
            vars.push((name, a, b));
        }
        if vars.is_empty() {
            return Err(Error::Msg(format!(
                "no linear layer of the base matches the targets {:?}",
                shape.targets
            )));
        }
        let mut modules: Vec<String> = shape.targets.clone();
        modules.sort();
        Ok(LoraParams {
            vars,
            config: AdapterConfig {
                base_model_name_or_path: base,
                r: shape.rank,
                lora_alpha: shape.alpha,
                use_rslora: false,
                target_modules: modules,
                lora_dropout: shape.dropout,
            },
            dropout: (shape.dropout > 0.0).then(|| Arc::new(Dropout::new(shape.dropout))),
        })
    }

    /// Trainable values in all factors.
    pub fn parameter_count(&self) -> usize {
        self.vars
            .iter()
            .map(|(_, a, b)| a.elem_count() + b.elem_count())
            .sum()
    }

    /// Attach (or re-attach) the factors to the decoder as the active adapter.
    pub fn attach(&self, dec: &mut Decoder, dir: &Path) -> Result<()> {
        let scale = self.config.scale();
        let adapter = Adapter {
            name: TRAINING.into(),
            dir: dir.to_path_buf(),
            config: self.config.clone(),
            modules: self
                .vars
                .iter()
                .map(|(n, a, b)| {
                    (
                        n.clone(),
                        LoraWeights {
                            a: a.as_tensor().clone(),
                            b: b.as_tensor().clone(),
                            scale,
                            dropout: self.dropout.clone(),
                        },
                    )
                })
                .collect(),
            // The factors train in the decoder's own row order; `save` converts.
            peft_layout: false,
        };
        dec.attach_adapter(&adapter)?;
        dec.set_active_adapter(Some(TRAINING))?;
        Ok(())
    }

    /// Switch dropout on for the next gradient pass, seeded so a resumed run repeats it.
    pub fn dropout_on(&self, seed: u64) {
        if let Some(d) = &self.dropout {
            d.set(Some(seed));
        }
    }

    pub fn dropout_off(&self) {
        if let Some(d) = &self.dropout {
            d.set(None);
        }
    }

    /// The optimizer's view: every factor with a stable name.
    pub fn named(&self) -> Vec<(String, Var)> {
        self.vars
            .iter()
            .flat_map(|(n, a, b)| [(peft_key(n, 'A'), a.clone()), (peft_key(n, 'B'), b.clone())])
            .collect()
    }

    /// Write the adapter in PEFT's layout into `dir` (which must exist).
    pub fn save(&self, dir: &Path, decoder: &Decoder) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (n, a, b) in &self.vars {
            tensors.insert(peft_key(n, 'A'), a.as_tensor().clone());
            tensors.insert(
                peft_key(n, 'B'),
                decoder.qk_rows_layout(n, b.as_tensor(), true)?,
            );
        }
        let weights = dir.join("adapter_model.safetensors");
        candle_core::safetensors::save(&tensors, &weights)
            .map_err(|e| Error::file(&weights, super::first_line(&e.to_string())))?;
        let config = dir.join("adapter_config.json");
        let json = serde_json::to_string_pretty(&self.config.to_peft_json())
            .map_err(|e| Error::file(&config, e.to_string()))?;
        std::fs::write(&config, json).map_err(|e| Error::file(&config, e.to_string()))?;
        Ok(())
    }

    /// Load factors saved by [`LoraParams::save`] (resume).
    pub fn load_into(&self, dir: &Path, decoder: &Decoder) -> Result<()> {
        let vars = self.vars.iter().flat_map(|(n, a, b)| {
            // A's rows are the rank; B's are the layer's outputs (q/k permuted on llama GGUFs).
            [(peft_key(n, 'A'), "", a), (peft_key(n, 'B'), n.as_str(), b)]
        });
        set_from_file(&dir.join("adapter_model.safetensors"), vars, decoder)
    }
}

/// Set each `(key, module, var)` from tensor `key` of a saved safetensors `file`, its rows moved
/// from Hugging Face order to the decoder's for `module` (see `Decoder::qk_rows_layout`), on the
/// variable's device in its dtype.
pub fn set_from_file<'a>(
    file: &Path,
    vars: impl Iterator<Item = (String, &'a str, &'a Var)>,
    decoder: &Decoder,
) -> Result<()> {
    let t = candle_core::safetensors::load(file, &Device::Cpu)
        .map_err(|e| Error::file(file, e.to_string()))?;
    for (k, module, v) in vars {
        let x = t
            .get(&k)
            .ok_or_else(|| Error::file(file, format!("lacks '{k}'")))?;
        if x.dims() != v.dims() {
            return Err(Error::file(file, format!("'{k}' has the wrong shape")));
        }
        let x = decoder.qk_rows_layout(module, x, false)?;
        v.set(&x.to_device(v.device())?.to_dtype(v.dtype())?)?;
    }
    Ok(())
}
