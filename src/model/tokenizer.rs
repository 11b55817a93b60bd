//! Tokenizers: an HF `tokenizer.json`, or one rebuilt from GGUF metadata.
//!
//! A GGUF stores the BPE vocabulary and merges but names its pre-tokenizer only by a key
//! (`tokenizer.ggml.pre`). Guessing it gives silently wrong ids, so each supported kind is spelled
//! out here and anything else is refused by name.

use super::{Error, Result};
use candle_core::quantized::gguf_file;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The text that ends a turn in the chat formats we know; generation stops on these even when a
/// checkpoint's config lists only its document-level EOS.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
];

/// Digits split as Llama 3 / Qwen2 do: letters, 1-3 digit runs (llama-bpe) or single digits (qwen2).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The file the tokenizer came from (tokenizer.json or the GGUF), for error messages.
    pub source: PathBuf,
    pub bos_id: Option<u32>,
    /// Whether a raw (non-templated) prompt starts with BOS.
    pub add_bos: bool,
    /// Token ids that end generation.
    pub eos_ids: Vec<u32>,
    /// The checkpoint's own end-of-sequence token (tokenizer_config.json's `eos_token`, a GGUF's
    /// `tokenizer.ggml.eos_token_id`), what HF calls `tokenizer.eos_token`: the token an SFT
    /// target ends with. `eos_ids` is sorted, so its first entry need not be this one.
    pub eos_id: Option<u32>,
    /// Whether `inner` adds the BOS itself (an HF post-processor), so we must not add it again.
    post_processor_adds_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Load an HF `tokenizer.json`. `bos`/`eos` come from tokenizer_config.json and
    /// generation_config.json, which the caller has read.
    pub fn from_hf_file(path: &Path, special: &SpecialTokens) -> Result<Tokenizer> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::file(path, format!("invalid JSON: {e}")))?;
        let post_processor_adds_bos = v
            .get("post_processor")
            .map(|p| !p.is_null() && p.to_string().contains("\"SpecialToken\""))
            .unwrap_or(false);
        let inner = <tokenizers::Tokenizer as std::str::FromStr>::from_str(&text).map_err(|e| {
            Error::file(
                path,
                format!(
                    "not a valid tokenizer: {}",
                    super::first_line(&e.to_string())
                ),
            )
        })?;
        let mut tok = Tokenizer {
            inner,
            source: path.to_path_buf(),
            bos_id: None,
            add_bos: special.add_bos.unwrap_or(false) || post_processor_adds_bos,
            eos_ids: vec![],
            eos_id: None,
            post_processor_adds_bos,
        };
        tok.bos_id = special.bos.as_deref().and_then(|b| tok.token_id(b));
        tok.eos_id = special
            .eos_tokens
            .first()
            .and_then(|t| tok.token_id(t))
            .or(special.eos_ids.first().copied());
        tok.finish_eos(&special.eos_ids, &special.eos_tokens);
        Ok(tok)
    }

    /// Rebuild the tokenizer a GGUF describes in its `tokenizer.ggml.*` metadata.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Tokenizer> {
        let md = &content.metadata;
        let get_str = |k: &str| md.get(k).and_then(|v| v.to_string().ok()).cloned();
        let model = get_str("tokenizer.ggml.model")
            .ok_or_else(|| Error::file(path, "missing metadata 'tokenizer.ggml.model'"))?;
        if model != "gpt2" {
            return Err(Error::file(
                path,
                format!("tokenizer model '{model}' is not supported (only byte-level BPE, 'gpt2'); use an HF folder with tokenizer.json"),
            ));
        }
        let pre = get_str("tokenizer.ggml.pre").unwrap_or_else(|| "default".into());
        let pre_tokenizer = match pre.as_str() {
            "smollm" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]}),
            "default" | "gpt-2" | "gpt2" => {
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
            }
            "llama-bpe" | "llama3" => split_then_bytes(LLAMA3_PATTERN),
            "qwen2" => split_then_bytes(QWEN2_PATTERN),
            other => {
                return Err(Error::file(
                    path,
                    format!("tokenizer pre-tokenizer '{other}' is not supported (supported: smollm, gpt2, llama-bpe, qwen2)"),
                ))
            }
        };
        let tokens = md
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .ok_or_else(|| Error::file(path, "missing metadata 'tokenizer.ggml.tokens'"))?;
        let types: Vec<i32> = md
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect())
            .unwrap_or_default();
        let merges: Vec<String> = md
            .get("tokenizer.ggml.merges")
            .and_then(|v| v.to_vec().ok())
            .map(|v| {
                v.iter()
                    .filter_map(|m| m.to_string().ok().cloned())
                    .collect()
            })
            .ok_or_else(|| Error::file(path, "missing metadata 'tokenizer.ggml.merges'"))?;
        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        for (id, t) in tokens.iter().enumerate() {
            let s = t
                .to_string()
                .map_err(|_| Error::file(path, format!("token {id} is not a string")))?;
            if !vocab.contains_key(s) {
                vocab.insert(s.clone(), json!(id));
            }
            // 3 = control, 4 = user-defined: matched whole in the input, never split by BPE.
            let kind = types.get(id).copied().unwrap_or(1);
            if kind == 3 || kind == 4 {
                added.push(
                    json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": kind == 3}),
                );
            }
        }
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges},
        });
        let inner = <tokenizers::Tokenizer as std::str::FromStr>::from_str(&doc.to_string())
            .map_err(|e| {
                Error::file(
                    path,
                    format!(
                        "cannot build tokenizer from metadata: {}",
                        super::first_line(&e.to_string())
                    ),
                )
            })?;
        let get_u32 = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        let mut tok = Tokenizer {
            inner,
            source: path.to_path_buf(),
            bos_id: get_u32("tokenizer.ggml.bos_token_id"),
            add_bos: md
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(false),
            eos_ids: vec![],
            eos_id: get_u32("tokenizer.ggml.eos_token_id"),
            post_processor_adds_bos: false,
        };
        let eos: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
            .iter()
            .filter_map(|k| get_u32(k))
            .collect();
        tok.finish_eos(&eos, &[]);
        Ok(tok)
    }

    fn finish_eos(&mut self, ids: &[u32], names: &[String]) {
        let mut eos: Vec<u32> = ids.to_vec();
        eos.extend(names.iter().filter_map(|n| self.token_id(n)));
        eos.extend(END_OF_TURN_TOKENS.iter().filter_map(|n| self.token_id(n)));
        eos.sort_unstable();
        eos.dedup();
        self.eos_ids = eos;
    }

    /// Ids of a rendered chat prompt: special tokens in the text are matched, nothing is added.
    pub fn encode_rendered(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::file(&self.source, format!("cannot tokenize: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids of a raw prompt, with BOS prepended when the checkpoint asks for it.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        if self.post_processor_adds_bos {
            let enc = self
                .inner
                .encode_fast(text, true)
                .map_err(|e| Error::file(&self.source, format!("cannot tokenize: {e}")))?;
            return Ok(enc.get_ids().to_vec());
        }
        let mut ids = Vec::new();
        if let (true, Some(b)) = (self.add_bos, self.bos_id) {
            ids.push(b);
        }
        ids.extend(self.encode_rendered(text)?);
        Ok(ids)
    }

    /// Text of the ids, special tokens included (a user should see exactly what was generated).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::file(&self.source, format!("cannot decode: {e}")))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The tokenizer as a Hugging Face `tokenizer.json` document (`export` writes it for a GGUF
    /// base, whose tokenizer exists only as metadata).
    pub fn to_hf_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| Error::file(&self.source, format!("cannot serialise tokenizer: {e}")))
    }

    /// Number of ids the tokenizer can produce (vocabulary plus added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The largest id the tokenizer can produce, plus one.
    pub fn id_bound(&self) -> usize {
        let base = self
            .inner
            .get_vocab(true)
            .values()
            .copied()
            .max()
            .map(|m| m as usize + 1)
            .unwrap_or(0);
        base.max(self.vocab_size())
    }
}

fn split_then_bytes(pattern: &str) -> Value {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]})
}

/// Special-token settings of an HF folder (tokenizer_config.json + generation_config.json).
#[derive(Debug, Default, Clone)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub add_bos: Option<bool>,
    pub eos_ids: Vec<u32>,
    pub eos_tokens: Vec<String>,
}
