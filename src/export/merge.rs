//! `humanlm export`: a checkpoint (an adapter merged into its base, or a plain checkpoint) written
//! as a Hugging Face folder that transformers and this runtime both load.
//!
//! Weights are read through the same `Store` the runtime loads from, dequantized to f32, merged
//! in f32 (`W += s·B·A`, PEFT's definition) and only then cast to the output dtype, so a merge
//! loses no more than the final rounding.

use super::{Error, Result};
use crate::model::chat::CHATML_FALLBACK;
use crate::model::config::{Arch, ModelConfig};
use crate::model::decoder::permute_qk_rows;
use crate::model::lora::Adapter;
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::{gguf_name, Store};
use crate::model::{Checkpoint, CheckpointKind};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// What `export` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeReport {
    pub out: PathBuf,
    pub base: String,
    /// The adapter merged in, if any.
    pub adapter: Option<String>,
    /// How many linear layers the adapter changed.
    pub merged_modules: usize,
    pub tensors: usize,
    pub dtype: String,
    pub bytes: u64,
}

pub use crate::model::device::parse_dtype;

fn hf_dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

/// Export `ckpt` to `out`. An adapter is merged into its base; anything else is copied with its
/// weights dequantized. `dtype` defaults to the base's float type (f32 for GGUF, whose quantized
/// values f32 holds exactly).
pub fn export(
    ckpt: &Checkpoint,
    out: &Path,
    dtype: Option<DType>,
    force: bool,
) -> Result<MergeReport> {
    if out.exists() && !force {
        return Err(Error::File(
            out.to_path_buf(),
            "already exists (--force replaces it)".into(),
        ));
    }
    let (base, adapter) = match &ckpt.kind {
        CheckpointKind::Adapter { dir, base } => {
            let a = Adapter::load(dir, &ckpt.name, &Device::Cpu, DType::F32)?;
            (base.as_ref(), Some(a))
        }
        _ => (ckpt, None),
    };
    let src = Source::open(base)?;
    let dtype = dtype.unwrap_or(src.default_dtype);
    let cfg = &src.config;
    let mut tensors: Vec<(String, Tensor)> = vec![];
    let mut pending: HashMap<String, crate::model::lora::LoraWeights> = adapter
        .as_ref()
        .map(|a| a.modules.clone().into_iter().collect())
        .unwrap_or_default();
    let adapter_file = adapter
        .as_ref()
        .map(|a| a.dir.join("adapter_model.safetensors"));
    let mut merged = 0;
    let mut tie = cfg.tie_word_embeddings;
    let names = hf_tensor_names(cfg, &src.store);
    src.check_covered(&names)?;
    for name in &names {
        let mut t = src.store.dense(name, &Device::Cpu, DType::F32)?;
        if let Some(heads) = src.permuted_heads(name) {
            t = permute_qk_rows(&t, heads, true)?;
        }
        if let Some(module) = name.strip_suffix(".weight") {
            if let Some(lora) = pending.remove(module) {
                t = merge_into(&t, &lora, module, adapter_file.as_deref())?;
                merged += 1;
            }
        }
        tensors.push((name.clone(), t));
    }
    // A LoRA on the output projection of a tied model: the merged head is no longer the
    // embedding, so it is written on its own and the tie is dropped.
    if let Some(lora) = pending.remove("lm_head") {
        let embed = tensors
            .iter()
            .find(|(n, _)| n == "model.embed_tokens.weight")
            .map(|(_, t)| t.clone())
            .ok_or_else(|| Error::Msg("no embedding to untie".into()))?;
        let head = merge_into(&embed, &lora, "lm_head", adapter_file.as_deref())?;
        tensors.push(("lm_head.weight".into(), head));
        tie = false;
        merged += 1;
    }
    if let (Some(module), Some(file)) = (pending.keys().next(), &adapter_file) {
        return Err(Error::File(
            file.clone(),
            format!("adapter targets '{module}', which the base model does not have"),
        ));
    }
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    let count = tensors.len();
    // Written whole in a folder beside `out`, then renamed over it (removed if anything fails).
    let tmp = crate::files::temp_dir_beside(out)?;
    let bytes = write_folder(&src, ckpt, &tensors, tmp.path(), dtype, tie)?;
    crate::files::replace_dir(tmp, out)?;
    Ok(MergeReport {
        out: out.to_path_buf(),
        base: base.name.clone(),
        adapter: adapter.map(|a| a.name),
        merged_modules: merged,
        tensors: count,
        dtype: hf_dtype_name(dtype).into(),
        bytes,
    })
}

/// `model.safetensors`, the config and tokenizer files, and the prompt-set setting of `ckpt`,
/// written into the existing folder `dir`. Returns the weights file's size.
fn write_folder(
    src: &Source,
    ckpt: &Checkpoint,
    tensors: &HashMap<String, Tensor>,
    dir: &Path,
    dtype: DType,
    tie: bool,
) -> Result<u64> {
    let weights = dir.join("model.safetensors");
    candle_core::safetensors::save(tensors, &weights)
        .map_err(|e| Error::File(weights.clone(), format!("cannot write: {e}")))?;
    src.write_side_files(dir, dtype, tie)?;
    if let Some(set) = ckpt.default_prompt_set()? {
        write(
            &dir.join(crate::model::checkpoint::SETTINGS_FILE),
            &format!("prompts = {}\n", toml_string(&set)),
        )?;
    }
    Ok(std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0))
}

/// Write fully fine-tuned weights of `base` into the existing folder `dir` as a Hugging Face
/// checkpoint: `tensors` holds every parameter under its HF name in HF row order (a tied model
/// has no `lm_head.weight`), in the dtype it trained in; config and tokenizer are the base's.
pub fn write_trained(
    base: &Checkpoint,
    tensors: &HashMap<String, Tensor>,
    dir: &Path,
) -> Result<()> {
    let src = Source::open(base)?;
    let dtype = tensors
        .values()
        .next()
        .map(|t| t.dtype())
        .unwrap_or(DType::F32);
    let tie = !tensors.contains_key("lm_head.weight");
    write_folder(&src, base, tensors, dir, dtype, tie)?;
    Ok(())
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)
        .map_err(|e| Error::File(path.to_path_buf(), format!("cannot write: {e}")))
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v).unwrap_or_default();
    text.push('\n');
    write(path, &text)
}

/// `W + s·B·A`, with the shapes checked against the base layer.
fn merge_into(
    w: &Tensor,
    lora: &crate::model::lora::LoraWeights,
    module: &str,
    file: Option<&Path>,
) -> Result<Tensor> {
    let delta = lora.merged_delta()?.to_dtype(DType::F32)?;
    if delta.dims() != w.dims() {
        return Err(Error::File(
            file.map(Path::to_path_buf).unwrap_or_default(),
            format!(
                "'{module}': adapter is {:?} but the base layer is {:?}",
                delta.dims(),
                w.dims()
            ),
        ));
    }
    Ok((w + delta)?)
}

/// Every tensor the decoder reads, under its HF name, in a stable order (as `Decoder::load`).
fn hf_tensor_names(cfg: &ModelConfig, store: &Store) -> Vec<String> {
    let mut names = vec!["model.embed_tokens.weight".to_string()];
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        names.push(format!("{p}.input_layernorm.weight"));
        for m in ["q_proj", "k_proj", "v_proj"] {
            names.push(format!("{p}.self_attn.{m}.weight"));
            if cfg.attention_bias {
                names.push(format!("{p}.self_attn.{m}.bias"));
            }
        }
        names.push(format!("{p}.self_attn.o_proj.weight"));
        if cfg.qk_norm {
            names.push(format!("{p}.self_attn.q_norm.weight"));
            names.push(format!("{p}.self_attn.k_norm.weight"));
        }
        names.push(format!("{p}.post_attention_layernorm.weight"));
        for m in ["gate_proj", "up_proj", "down_proj"] {
            names.push(format!("{p}.mlp.{m}.weight"));
        }
    }
    names.push("model.norm.weight".into());
    if !cfg.tie_word_embeddings && store.contains("lm_head.weight") {
        names.push("lm_head.weight".into());
    }
    names
}

/// The base checkpoint being exported: its tensors, shape, tokenizer and side files.
struct Source {
    store: Store,
    config: ModelConfig,
    /// Whether q/k rows are in llama.cpp's order (llama GGUFs; see `permute_qk_rows`).
    gguf_llama: bool,
    default_dtype: DType,
    kind: SourceKind,
}

enum SourceKind {
    Gguf { file: PathBuf },
    Hf { dir: PathBuf },
}

impl Source {
    fn open(base: &Checkpoint) -> Result<Source> {
        match &base.kind {
            CheckpointKind::Gguf { file } => {
                let store = Store::open_gguf(file)?;
                let Store::Gguf { content, .. } = &store else {
                    unreachable!("open_gguf returns a GGUF store")
                };
                let config = ModelConfig::from_gguf(content, file)?;
                Ok(Source {
                    gguf_llama: config.arch == Arch::Llama,
                    config,
                    store,
                    default_dtype: DType::F32,
                    kind: SourceKind::Gguf { file: file.clone() },
                })
            }
            CheckpointKind::Hf { dir, shards } => {
                let cfg_path = dir.join("config.json");
                let config = ModelConfig::from_hf_json(&cfg_path)?;
                if shards.is_empty() {
                    return Err(Error::File(
                        dir.clone(),
                        "no model.safetensors (or sharded model-*-of-*.safetensors) found".into(),
                    ));
                }
                let store = Store::open_safetensors(shards.clone())?;
                let v = read_json(&cfg_path)?;
                let named = v
                    .get("torch_dtype")
                    .or(v.get("dtype"))
                    .and_then(Value::as_str)
                    .and_then(parse_dtype);
                Ok(Source {
                    config,
                    store,
                    gguf_llama: false,
                    default_dtype: named.unwrap_or(DType::F32),
                    kind: SourceKind::Hf { dir: dir.clone() },
                })
            }
            CheckpointKind::Adapter { dir, .. } => Err(Error::File(
                dir.clone(),
                "an adapter's base is itself an adapter; merge that one first".into(),
            )),
        }
    }

    /// Heads to un-permute for this tensor, if it is a llama GGUF's q or k projection.
    fn permuted_heads(&self, name: &str) -> Option<usize> {
        if !self.gguf_llama {
            return None;
        }
        if name.contains(".self_attn.q_proj.") {
            Some(self.config.num_heads)
        } else if name.contains(".self_attn.k_proj.") {
            Some(self.config.num_kv_heads)
        } else {
            None
        }
    }

    /// Refuse a base holding tensors the export would silently drop (a GGUF's `rope_freqs`,
    /// say, which changes what the model computes).
    fn check_covered(&self, names: &[String]) -> Result<()> {
        let (file, stored): (PathBuf, Vec<String>) = match &self.store {
            Store::Gguf { path, content, .. } => {
                (path.clone(), content.tensor_infos.keys().cloned().collect())
            }
            Store::Safetensors { paths, st } => (
                paths[0].clone(),
                st.tensors().into_iter().map(|(n, _)| n).collect(),
            ),
            #[allow(unreachable_patterns)]
            _ => return Ok(()),
        };
        let wanted: BTreeSet<String> = names
            .iter()
            .map(|n| {
                if self.store.is_gguf() {
                    gguf_name(n)
                } else {
                    n.clone()
                }
            })
            .collect();
        let mut extra: Vec<&String> = stored
            .iter()
            .filter(|n| !wanted.contains(*n))
            // A tied model may still store its head; the tie makes it the embedding anyway.
            .filter(|n| {
                !(self.config.tie_word_embeddings
                    && (*n == "lm_head.weight" || *n == "output.weight"))
            })
            // Old HF checkpoints store RoPE's frequencies, which the config determines.
            .filter(|n| !n.ends_with("rotary_emb.inv_freq"))
            .collect();
        extra.sort();
        if let Some(first) = extra.first() {
            return Err(Error::File(
                file,
                format!(
                    "tensor '{first}' (and {} more) has no place in the exported model; refusing to drop it",
                    extra.len() - 1
                ),
            ));
        }
        Ok(())
    }

    /// config.json, generation_config.json and the tokenizer files.
    fn write_side_files(&self, dir: &Path, dtype: DType, tie: bool) -> Result<()> {
        match &self.kind {
            SourceKind::Hf { dir: src } => {
                let mut cfg = read_json(&src.join("config.json"))?;
                if let Some(o) = cfg.as_object_mut() {
                    o.insert("torch_dtype".into(), hf_dtype_name(dtype).into());
                    if o.contains_key("dtype") {
                        o.insert("dtype".into(), hf_dtype_name(dtype).into());
                    }
                    o.insert("tie_word_embeddings".into(), tie.into());
                }
                write_json(&dir.join("config.json"), &cfg)?;
                // The tokenizer and generation settings are the base's, byte for byte.
                for f in [
                    "tokenizer.json",
                    "tokenizer_config.json",
                    "special_tokens_map.json",
                    "chat_template.jinja",
                    "generation_config.json",
                ] {
                    let from = src.join(f);
                    if from.is_file() {
                        std::fs::copy(&from, dir.join(f))
                            .map_err(|e| Error::File(from.clone(), format!("cannot copy: {e}")))?;
                    }
                }
                Ok(())
            }
            SourceKind::Gguf { file } => self.write_gguf_side_files(file, dir, dtype, tie),
        }
    }

    fn write_gguf_side_files(
        &self,
        file: &Path,
        dir: &Path,
        dtype: DType,
        tie: bool,
    ) -> Result<()> {
        let Store::Gguf { content, .. } = &self.store else {
            unreachable!("a GGUF source has a GGUF store")
        };
        let md = &content.metadata;
        let tok = Tokenizer::from_gguf(content, file)?;
        let get_u32 = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        let text = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
        let bos_id = tok.bos_id;
        let eos_id = get_u32("tokenizer.ggml.eos_token_id").or(tok.eos_ids.first().copied());
        let pad_id = get_u32("tokenizer.ggml.padding_token_id");
        let unk_id = get_u32("tokenizer.ggml.unknown_token_id");
        let c = &self.config;
        let arch_class = match c.arch {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        };
        let mut rope = json!({"rope_theta": c.rope_theta, "rope_type": "default"});
        if let Some(s) = &c.rope_scaling {
            rope = json!({"rope_theta": c.rope_theta, "rope_type": "llama3", "factor": s.factor,
                "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings});
        }
        let mut cfg = json!({
            "architectures": [arch_class],
            "model_type": c.arch.name(),
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads,
            "num_key_value_heads": c.num_kv_heads,
            "head_dim": c.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": c.max_position_embeddings,
            "rms_norm_eps": c.rms_norm_eps,
            // transformers 5 reads `rope_parameters`, earlier versions the top-level keys.
            "rope_theta": c.rope_theta,
            "rope_parameters": rope,
            "tie_word_embeddings": tie,
            "attention_bias": c.attention_bias,
            "torch_dtype": hf_dtype_name(dtype),
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
        });
        if c.arch == Arch::Llama {
            cfg["mlp_bias"] = false.into();
            if c.rope_scaling.is_some() {
                cfg["rope_scaling"] = cfg["rope_parameters"].clone();
            }
        }
        if let Some(p) = pad_id {
            cfg["pad_token_id"] = p.into();
        }
        write_json(&dir.join("config.json"), &cfg)?;
        write_json(
            &dir.join("generation_config.json"),
            &json!({"bos_token_id": bos_id, "eos_token_id": tok.eos_ids, "pad_token_id": pad_id.or(eos_id)}),
        )?;
        // The tokenizer rebuilt from metadata, as the runtime uses it; BOS, when the GGUF asks
        // for it, becomes a post-processor so transformers' encode adds it exactly as ours does.
        let mut tj: Value = serde_json::from_str(&tok.to_hf_json()?)
            .map_err(|e| Error::File(file.to_path_buf(), format!("tokenizer: {e}")))?;
        if let (true, Some(b)) = (tok.add_bos, text(bos_id)) {
            let id = bos_id.unwrap_or(0);
            tj["post_processor"] = json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b.clone(): {"id": b, "ids": [id], "tokens": [b]}},
            });
        }
        write(
            &dir.join("tokenizer.json"),
            &serde_json::to_string(&tj).unwrap_or_default(),
        )?;
        let template = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        let mut tc = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": tok.add_bos,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": c.max_position_embeddings,
        });
        for (key, id) in [
            ("bos_token", bos_id),
            ("eos_token", eos_id),
            ("pad_token", pad_id),
            ("unk_token", unk_id),
        ] {
            if let Some(t) = text(id) {
                tc[key] = t.into();
            }
        }
        // A GGUF without a template runs with the runtime's ChatML fallback; writing that
        // fallback keeps both runtimes on the same prompt format.
        tc["chat_template"] = template
            .unwrap_or_else(|| CHATML_FALLBACK.to_string())
            .into();
        write_json(&dir.join("tokenizer_config.json"), &tc)
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::File(path.to_path_buf(), format!("cannot read: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::File(path.to_path_buf(), format!("invalid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The un-permutation is the inverse of llama.cpp's `permute` (convert_hf_to_gguf.py):
    /// `w.reshape(heads, 2, half, cols).swapaxes(1, 2).reshape(out, cols)`.
    #[test]
    fn undoes_llama_cpp_permutation() {
        let (heads, half, cols) = (3, 4, 5);
        let out = heads * 2 * half;
        let hf = Tensor::arange(0f32, (out * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((out, cols))
            .unwrap();
        let gguf = hf
            .reshape((heads, 2, half, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((out, cols))
            .unwrap();
        assert_ne!(gguf.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
        let back = permute_qk_rows(&gguf, heads, true).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
        // A bias (one dimension) moves the same way.
        let b = permute_qk_rows(
            &gguf.narrow(1, 0, 1).unwrap().squeeze(1).unwrap(),
            heads,
            true,
        )
        .unwrap();
        assert_eq!(
            b.to_vec1::<f32>().unwrap(),
            hf.narrow(1, 0, 1)
                .unwrap()
                .squeeze(1)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
    }
}
