//! Embedding similarity with a sentence-transformers model (all-MiniLM-L6-v2).
//!
//! An [`Embedder`] computes what `SentenceTransformer(folder).encode(texts)` computes for a
//! BERT-family sentence-transformers folder (HF layout: `config.json`, `model.safetensors`,
//! `tokenizer.json`, optionally `modules.json`, `sentence_bert_config.json` and the pooling
//! module's `config.json`):
//!
//! 1. tokenize with the folder's `tokenizer.json`, truncating to `max_seq_length` tokens
//!    ([CLS] and [SEP] included; from `sentence_bert_config.json`, else the tokenizer's
//!    `model_max_length`, never more than the model's position table), lowercasing first when
//!    `sentence_bert_config.json` says `do_lower_case`;
//! 2. run candle-transformers' BERT in f32 on batches of up to [`BATCH_SIZE`] texts, padded to
//!    the longest text in the batch with the attention mask hiding the padding. Texts are sorted
//!    by token count and a batch never mixes a text with one more than twice its length, so
//!    padding stays small (sentence-transformers pads whole batches of 32: one long reply makes
//!    31 short ones cost 256 tokens each; the results are the same either way);
//! 3. pool the token vectors as the pooling module's `config.json` says: mean over the
//!    non-padding tokens (MiniLM's mode), [CLS], max, or mean·√n; other modes are refused;
//! 4. L2-normalise. The result is always a unit vector (all-MiniLM-L6-v2 ends with a `Normalize`
//!    module, so this is exactly its output; for a model without one only the length differs,
//!    which no cosine sees).
//!
//! Checked against sentence-transformers in `tests/embedding.rs` (fixture made by
//! `scripts/reference/minilm_embeddings.py`).

use crate::model::{first_line, Error, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Folder name of the default embedding model under `checkpoints/`.
pub const DEFAULT_EMBEDDER: &str = "all-minilm-l6-v2";

/// Texts per forward pass (sentence-transformers' default `batch_size`).
pub const BATCH_SIZE: usize = 32;

/// How token vectors become one sentence vector (sentence-transformers' `Pooling` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over non-padding tokens.
    Mean,
    /// The first ([CLS]) token's vector.
    Cls,
    /// Element-wise max over non-padding tokens.
    Max,
    /// Sum over non-padding tokens divided by √(token count).
    MeanSqrtLen,
}

/// A loaded sentence-embedding model. Cheap to share between threads (`&Embedder` is `Sync`).
pub struct Embedder {
    model: BertModel,
    tokenizer: tokenizers::Tokenizer,
    device: Device,
    pooling: Pooling,
    max_seq_length: usize,
    do_lower_case: bool,
    dim: usize,
    dir: PathBuf,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dir", &self.dir)
            .field("pooling", &self.pooling)
            .field("max_seq_length", &self.max_seq_length)
            .field("dim", &self.dim)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid JSON: {e}")))
}

fn read_json_if_exists(path: &Path) -> Result<Option<Value>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

fn require(path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::file(
            &path,
            "missing (needed by the embedding model)",
        ))
    }
}

/// The pooling module's folder: from modules.json when present, else `1_Pooling`.
fn pooling_config_path(dir: &Path) -> Result<Option<PathBuf>> {
    let modules = dir.join("modules.json");
    if let Some(v) = read_json_if_exists(&modules)? {
        let list = v
            .as_array()
            .ok_or_else(|| Error::file(&modules, "expected a JSON array of modules"))?;
        for m in list {
            let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
            if ty.ends_with(".Pooling") || ty == "Pooling" {
                let sub = m.get("path").and_then(Value::as_str).unwrap_or("");
                return Ok(Some(dir.join(sub).join("config.json")));
            }
        }
        return Err(Error::file(
            &modules,
            "no sentence_transformers.models.Pooling module listed",
        ));
    }
    let default = dir.join("1_Pooling").join("config.json");
    Ok(default.exists().then_some(default))
}

fn read_pooling(path: &Path) -> Result<Pooling> {
    let v = read_json(path)?;
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let known = [
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_max_tokens", Pooling::Max),
        ("pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
    ];
    let unsupported = ["pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"];
    if let Some(k) = unsupported.iter().find(|k| flag(k)) {
        return Err(Error::file(
            path,
            format!("{k} is not supported (only mean, cls, max and mean_sqrt_len pooling)"),
        ));
    }
    let on: Vec<_> = known.iter().filter(|(k, _)| flag(k)).collect();
    match on.as_slice() {
        [(_, p)] => Ok(*p),
        [] => Err(Error::file(path, "no pooling mode is switched on")),
        _ => Err(Error::file(
            path,
            format!(
                "several pooling modes at once ({}) are not supported",
                on.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

impl Embedder {
    /// Load a sentence-transformers folder. Errors are one line naming the file at fault.
    pub fn load(dir: &Path, device: &Device) -> Result<Embedder> {
        if !dir.is_dir() {
            return Err(Error::file(
                dir,
                "not a folder (expected a sentence-transformers model)",
            ));
        }
        let config_path = require(dir.join("config.json"))?;
        let weights_path = require(dir.join("model.safetensors"))?;
        let tokenizer_path = require(dir.join("tokenizer.json"))?;

        // config.json: a BERT config.
        let config_value = read_json(&config_path)?;
        if let Some(mt) = config_value.get("model_type").and_then(Value::as_str) {
            if mt != "bert" {
                return Err(Error::file(
                    &config_path,
                    format!("model_type \"{mt}\" is not supported (only bert)"),
                ));
            }
        }
        let config: BertConfig = serde_json::from_value(config_value.clone())
            .map_err(|e| Error::file(&config_path, format!("not a BERT config: {e}")))?;

        // Sequence length and lowercasing: sentence_bert_config.json, else the tokenizer's limit.
        let st_config_path = dir.join("sentence_bert_config.json");
        let st_config = read_json_if_exists(&st_config_path)?;
        let mut max_seq_length = st_config
            .as_ref()
            .and_then(|v| v.get("max_seq_length"))
            .and_then(Value::as_u64)
            .map(|n| n as usize);
        if max_seq_length.is_none() {
            let tc = read_json_if_exists(&dir.join("tokenizer_config.json"))?;
            max_seq_length = tc
                .as_ref()
                .and_then(|v| v.get("model_max_length"))
                .and_then(Value::as_u64)
                .map(|n| n as usize);
        }
        let max_seq_length = max_seq_length
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        if max_seq_length < 2 {
            return Err(Error::file(
                &st_config_path,
                format!("max_seq_length {max_seq_length} leaves no room for [CLS] and [SEP]"),
            ));
        }
        let do_lower_case = st_config
            .as_ref()
            .and_then(|v| v.get("do_lower_case"))
            .and_then(Value::as_bool)
            .unwrap_or(false);

        let pooling = match pooling_config_path(dir)? {
            Some(p) if p.exists() => read_pooling(&p)?,
            Some(p) => return Err(Error::file(&p, "missing (the pooling module's config)")),
            // No modules.json and no 1_Pooling: sentence-transformers falls back to mean pooling.
            None => Pooling::Mean,
        };

        // tokenizer.json: our own truncation, no padding (batches are padded here).
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| Error::file(&tokenizer_path, first_line(&e.to_string())))?;
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                direction: tokenizers::TruncationDirection::Right,
                max_length: max_seq_length,
                strategy: tokenizers::TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| Error::file(&tokenizer_path, first_line(&e.to_string())))?;
        tokenizer.with_padding(None);

        let tensors = candle_core::safetensors::load(&weights_path, device)
            .map_err(|e| Error::file(&weights_path, first_line(&e.to_string())))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = BertModel::load(vb, &config)
            .map_err(|e| Error::file(&weights_path, first_line(&e.to_string())))?;

        Ok(Embedder {
            model,
            tokenizer,
            device: device.clone(),
            pooling,
            max_seq_length,
            do_lower_case,
            dim: config.hidden_size,
            dir: dir.to_path_buf(),
        })
    }

    /// Embedding width (384 for MiniLM-L6).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Tokens per text at most, [CLS] and [SEP] included.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Token ids of one text as the model sees it (truncated, with [CLS] and [SEP]).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_all(&[text])?.pop().unwrap_or_default())
    }

    fn encode_all(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<String> = texts
            .iter()
            .map(|t| {
                if self.do_lower_case {
                    t.to_lowercase()
                } else {
                    t.to_string()
                }
            })
            .collect();
        let encodings = self.tokenizer.encode_batch(inputs, true).map_err(|e| {
            Error::Msg(format!(
                "embedding tokenizer: {}",
                first_line(&e.to_string())
            ))
        })?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    /// Unit-length embeddings of `texts`, in order. Empty text embeds "[CLS] [SEP]".
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = self.encode_all(texts)?;
        // Longest first, as sentence-transformers does, so each batch pads little.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); ids.len()];
        let mut start = 0;
        while start < order.len() {
            // A batch ends at BATCH_SIZE texts, or where lengths fall to half of its longest:
            // a few long texts then do not pad many short ones to their length.
            let longest = ids[order[start]].len();
            let mut end = start + 1;
            while end < order.len()
                && end - start < BATCH_SIZE
                && ids[order[end]].len() * 2 > longest
            {
                end += 1;
            }
            let chunk = &order[start..end];
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let vecs = self.embed_batch(&batch)?;
            for (&i, v) in chunk.iter().zip(vecs) {
                out[i] = v;
            }
            start = end;
        }
        Ok(out)
    }

    /// One forward pass over token-id sequences (each non-empty), padded to the longest.
    fn embed_batch(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let b = batch.len();
        let len = batch.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; b * len];
        let mut mask = vec![0u32; b * len];
        for (r, seq) in batch.iter().enumerate() {
            ids[r * len..r * len + seq.len()].copy_from_slice(seq);
            mask[r * len..r * len + seq.len()].fill(1);
        }
        let dev = &self.device;
        let input_ids = Tensor::from_vec(ids, (b, len), dev)?;
        let token_type_ids = input_ids.zeros_like()?;
        let mask = Tensor::from_vec(mask, (b, len), dev)?;
        let hidden = self
            .model
            .forward(&input_ids, &token_type_ids, Some(&mask))?; // (b, len, dim)

        let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (b, len, 1)
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean | Pooling::MeanSqrtLen => {
                let sum = hidden.broadcast_mul(&maskf)?.sum(1)?; // (b, dim)
                let count = maskf.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (b, 1)
                let denom = if self.pooling == Pooling::Mean {
                    count
                } else {
                    count.sqrt()?
                };
                sum.broadcast_div(&denom)?
            }
            Pooling::Max => {
                // Padding set to -1e9 (as sentence-transformers does), then the max.
                let neg = ((maskf.ones_like()? - &maskf)? * -1e9f64)?;
                hidden.broadcast_mul(&maskf)?.broadcast_add(&neg)?.max(1)?
            }
        };
        // torch.nn.functional.normalize: x / max(‖x‖, 1e-12).
        let norm = pooled
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        let unit = pooled.broadcast_div(&norm)?;
        Ok(unit.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }

    /// Cosine similarity of two texts' embeddings.
    pub fn similarity(&self, a: &str, b: &str) -> Result<f32> {
        let e = self.embed(&[a, b])?;
        Ok(cosine(&e[0], &e[1]))
    }
}

/// Cosine similarity (accumulated in f64); 0 when either vector is all zeros. Panics when the
/// lengths differ (vectors from different models are not comparable).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())) as f32
}

#[cfg(test)]
mod tests {
    use super::{cosine, Embedder};

    #[test]
    fn embedder_is_shareable_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Embedder>();
    }

    #[test]
    fn cosine_basics() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-7);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-7);
        assert!((cosine(&[1.0, 1.0], &[-1.0, -1.0]) + 1.0).abs() < 1e-7);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]), 0.0);
    }
}
