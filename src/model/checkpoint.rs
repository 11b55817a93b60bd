//! Checkpoint discovery: what a folder (or file) holds, its metadata, and loading it.
//!
//! A checkpoint is a folder under `checkpoints/` (by name) or any path: a GGUF file, an HF folder
//! (config.json + safetensors, single or sharded), or a PEFT adapter folder whose base resolves to
//! another checkpoint.

use super::chat::{ChatTemplate, CHATML_FALLBACK};
use super::config::ModelConfig;
use super::decoder::Decoder;
use super::lora::{Adapter, AdapterConfig};
use super::quantize::{Quantize, Source};
use super::tokenizer::{SpecialTokens, Tokenizer};
use super::weights::{LoadOptions, Store};
use super::{dominant, Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where checkpoints live unless a path is given.
pub fn default_root() -> PathBuf {
    std::env::var_os("HUMANLM_CHECKPOINTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("checkpoints"))
}

/// Per-checkpoint workbench settings, beside the weights.
pub const SETTINGS_FILE: &str = "humanlm.toml";

/// What `humanlm.toml` may say.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The prompt set the checkpoint was trained with.
    prompts: Option<String>,
    /// What its dense weights become on load (see `Quantize`).
    quantize: Option<String>,
}

/// The checkpoint `make run` and the demo use.
pub const DEFAULT_CHECKPOINT: &str = "smollm2-135m-instruct";

#[derive(Debug, Clone)]
pub enum CheckpointKind {
    Gguf { file: PathBuf },
    Hf { dir: PathBuf, shards: Vec<PathBuf> },
    Adapter { dir: PathBuf, base: Box<Checkpoint> },
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub name: String,
    pub path: PathBuf,
    pub kind: CheckpointKind,
}

/// What `humanlm checkpoints` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckpointInfo {
    pub name: String,
    pub path: String,
    pub format: String,
    pub architecture: String,
    pub parameters: u64,
    pub dtype: String,
    pub context_length: usize,
    pub size_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter_base: Option<String>,
    /// What the weights become when loaded on the CPU: `as stored` (GGUF), `none` (dense f32)
    /// or a quantized type, and where that came from (`None`: quantized in the file).
    pub loads_as: String,
    #[serde(rename = "loads_as_reason", serialize_with = "loads_as_reason")]
    pub loads_as_source: Option<Source>,
}

/// `loads_as_source` in words.
fn loads_as_reason<S: serde::Serializer>(
    src: &Option<Source>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(Source::reason_of(*src))
}

impl Checkpoint {
    /// Resolve a name (a folder in `root`), a path, or `hf:ORG/NAME[@REVISION]` (fetched into
    /// the Hugging Face cache, see `hub`).
    pub fn resolve(spec: &str, root: &Path) -> Result<Checkpoint> {
        if let Some(r) = super::hub::HubRef::from_spec(spec) {
            return Self::from_hub(&r, root);
        }
        let direct = PathBuf::from(spec);
        let path = if direct.exists() {
            direct
        } else if root.join(spec).exists() {
            root.join(spec)
        } else {
            return Err(Error::file(
                &direct,
                format!(
                    "checkpoint not found (no such path, and no folder '{spec}' in {})",
                    root.display()
                ),
            ));
        };
        Self::open(&path, root)
    }

    /// A Hub repository's snapshot (fetched as needed), named after the repository.
    pub fn from_hub(r: &super::hub::HubRef, root: &Path) -> Result<Checkpoint> {
        let snap = super::hub::Hub::from_env().snapshot(r)?;
        let mut c = Self::open(&snap, root)?;
        c.name = r.repo.rsplit('/').next().unwrap_or(&r.repo).to_string();
        Ok(c)
    }

    /// Inspect a path and decide what kind of checkpoint it is.
    pub fn open(path: &Path, root: &Path) -> Result<Checkpoint> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
            .unwrap_or_else(|| path.display().to_string());
        if path.is_file() {
            if path.extension().is_some_and(|e| e == "gguf") {
                return Ok(Checkpoint {
                    name,
                    path: path.into(),
                    kind: CheckpointKind::Gguf { file: path.into() },
                });
            }
            return Err(Error::file(
                path,
                "not a checkpoint (expected a .gguf file or a folder)",
            ));
        }
        if !path.is_dir() {
            return Err(Error::file(path, "checkpoint not found"));
        }
        if path.join("adapter_config.json").is_file() {
            let cfg = AdapterConfig::read(&path.join("adapter_config.json"))?;
            let base = resolve_base(path, cfg.base_model_name_or_path.as_deref(), root)?;
            return Ok(Checkpoint {
                name,
                path: path.into(),
                kind: CheckpointKind::Adapter {
                    dir: path.into(),
                    base: Box::new(base),
                },
            });
        }
        if path.join("config.json").is_file() {
            let shards = safetensors_files(path)?;
            return Ok(Checkpoint {
                name,
                path: path.into(),
                kind: CheckpointKind::Hf {
                    dir: path.into(),
                    shards,
                },
            });
        }
        let mut ggufs: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::file(path, format!("cannot list: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
            .collect();
        ggufs.sort();
        match ggufs.len() {
            0 => Err(Error::file(
                path,
                "not a checkpoint: no config.json, adapter_config.json or .gguf file",
            )),
            1 => Ok(Checkpoint {
                name,
                path: path.into(),
                kind: CheckpointKind::Gguf {
                    file: ggufs.remove(0),
                },
            }),
            n => Err(Error::file(
                path,
                format!("{n} .gguf files; name the file to use"),
            )),
        }
    }

    /// `humanlm.toml` in this checkpoint's folder, if there is one.
    fn settings(&self) -> Result<Settings> {
        let file = self.path.join(SETTINGS_FILE);
        if !(self.path.is_dir() && file.is_file()) {
            return Ok(Settings::default());
        }
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::file(&file, format!("cannot read: {e}")))?;
        let s: Settings = toml::from_str(&text)
            .map_err(|e| Error::file(&file, e.message().trim().replace('\n', " ")))?;
        if let Some(q) = &s.quantize {
            if Quantize::parse(q).is_none() {
                return Err(Error::file(
                    &file,
                    format!("quantize = '{q}': expected {}", Quantize::NAMES),
                ));
            }
        }
        Ok(s)
    }

    /// The prompt set this checkpoint is meant to be used with, from `humanlm.toml` in its
    /// folder (`prompts = "instruct"`); an adapter without one takes its base's.
    pub fn default_prompt_set(&self) -> Result<Option<String>> {
        if let Some(p) = self.settings()?.prompts {
            return Ok(Some(p));
        }
        match &self.kind {
            CheckpointKind::Adapter { base, .. } => base.default_prompt_set(),
            _ => Ok(None),
        }
    }

    /// What this checkpoint's dense matrices become when loaded with `opts`, and why: the
    /// option if given, else `quantize = "..."` in `humanlm.toml` (an adapter's, then its
    /// base's), else [`Quantize::default_for`] its size. `None` for a GGUF, which keeps its own
    /// types, and for training, which needs dense weights.
    pub fn load_quantize(&self, opts: &LoadOptions) -> Result<Option<(Quantize, Source)>> {
        if opts.dequantize {
            return Ok(None);
        }
        if let Some(q) = opts.quantize {
            return Ok(matches!(&self.base().kind, CheckpointKind::Hf { .. })
                .then_some((q, Source::Asked)));
        }
        match &self.kind {
            CheckpointKind::Gguf { .. } => Ok(None),
            CheckpointKind::Adapter { base, .. } => match self.settings()?.quantize {
                Some(q) if matches!(&base.base().kind, CheckpointKind::Hf { .. }) => Ok(Some((
                    Quantize::parse(&q).expect("checked"),
                    Source::Settings,
                ))),
                _ => base.load_quantize(opts),
            },
            CheckpointKind::Hf { shards, .. } => {
                if let Some(q) = self.settings()?.quantize {
                    return Ok(Some((
                        Quantize::parse(&q).expect("checked"),
                        Source::Settings,
                    )));
                }
                let q = Quantize::default_for(hf_parameters(shards)?, &opts.device);
                Ok(Some((q, Source::Default(q))))
            }
        }
    }

    /// Refuse a dense (training) load that cannot fit in memory, saying what would.
    fn check_dense_fits(&self, opts: &LoadOptions) -> Result<()> {
        let (parameters, path) = match self.base() {
            Checkpoint {
                kind: CheckpointKind::Hf { shards, .. },
                path,
                ..
            } => (hf_parameters(shards)?, path),
            c @ Checkpoint {
                kind: CheckpointKind::Gguf { .. },
                ..
            } => (c.info()?.parameters, &c.path),
            _ => unreachable!("base() follows adapters down"),
        };
        let Some(available) = available_memory() else {
            return Ok(());
        };
        match dense_fit_problem(parameters, opts.activation_dtype(), available) {
            Some(msg) if opts.device.is_cpu() => Err(Error::file(path, msg)),
            _ => Ok(()),
        }
    }

    /// The checkpoint holding the weights (an adapter's base, followed down).
    fn base(&self) -> &Checkpoint {
        match &self.kind {
            CheckpointKind::Adapter { base, .. } => base.base(),
            _ => self,
        }
    }

    /// All checkpoints under `root`; entries that fail to open are reported, not hidden.
    pub fn list(root: &Path) -> Vec<Result<Checkpoint>> {
        let Ok(rd) = std::fs::read_dir(root) else {
            return vec![];
        };
        let mut paths: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && !is_hidden(p))
            .collect();
        paths.sort();
        paths.iter().map(|p| Self::open(p, root)).collect()
    }

    /// Metadata without loading weights.
    pub fn info(&self) -> Result<CheckpointInfo> {
        let mut info = CheckpointInfo {
            name: self.name.clone(),
            path: self.path.display().to_string(),
            format: String::new(),
            architecture: String::new(),
            parameters: 0,
            dtype: String::new(),
            context_length: 0,
            size_bytes: dir_size(&self.path),
            adapter_base: None,
            loads_as: "as stored".into(),
            loads_as_source: None,
        };
        if let Some((q, src)) = self.load_quantize(&LoadOptions::default())? {
            info.loads_as = q.to_string();
            info.loads_as_source = Some(src);
        }
        match &self.kind {
            CheckpointKind::Gguf { file } => {
                let store = Store::open_gguf(file)?;
                let Store::Gguf { content, .. } = &store else {
                    unreachable!()
                };
                info.format = "gguf".into();
                info.architecture = content
                    .metadata
                    .get("general.architecture")
                    .and_then(|v| v.to_string().ok())
                    .cloned()
                    .unwrap_or_default();
                info.parameters = content
                    .tensor_infos
                    .values()
                    .map(|t| t.shape.elem_count() as u64)
                    .sum();
                info.dtype = dominant(
                    content
                        .tensor_infos
                        .values()
                        .map(|t| format!("{:?}", t.ggml_dtype)),
                );
                if let Ok(cfg) = ModelConfig::from_gguf(content, file) {
                    info.context_length = cfg.max_position_embeddings;
                }
                if self.path.is_file() {
                    info.size_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
            CheckpointKind::Hf { dir, shards } => {
                let cfg_path = dir.join("config.json");
                let v = read_json(&cfg_path)?;
                info.format = "hf".into();
                info.architecture = v
                    .get("model_type")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string();
                info.context_length = v
                    .get("max_position_embeddings")
                    .and_then(Value::as_u64)
                    .unwrap_or(0) as usize;
                let mut dtypes = vec![];
                for s in shards {
                    for (_, (dtype, n)) in safetensors_header(s)? {
                        info.parameters += n;
                        dtypes.push(dtype);
                    }
                }
                info.dtype = dominant(dtypes.into_iter());
            }
            CheckpointKind::Adapter { dir, base } => {
                let cfg = AdapterConfig::read(&dir.join("adapter_config.json"))?;
                let file = dir.join("adapter_model.safetensors");
                info.format = "lora".into();
                let base_info = base.info()?;
                info.architecture = base_info.architecture;
                info.context_length = base_info.context_length;
                let mut dtypes = vec![];
                for (_, (dtype, n)) in safetensors_header(&file)? {
                    info.parameters += n;
                    dtypes.push(dtype);
                }
                info.dtype = format!(
                    "{} (r={}, alpha={})",
                    dominant(dtypes.into_iter()),
                    cfg.r,
                    cfg.lora_alpha
                );
                info.adapter_base = Some(base.name.clone());
            }
        }
        Ok(info)
    }

    /// Load weights, tokenizer and chat template. An adapter is attached live (unmerged) and
    /// made active; call `Decoder::merge_adapter` to fold it in.
    pub fn load(&self, opts: &LoadOptions) -> Result<Model> {
        let mut opts = opts.clone();
        opts.quantize = self.load_quantize(&opts)?.map(|(q, _)| q);
        if opts.dequantize {
            self.check_dense_fits(&opts)?;
        }
        let opts = &opts;
        match &self.kind {
            CheckpointKind::Gguf { file } => {
                let store = Store::open_gguf(file)?;
                let Store::Gguf { content, .. } = &store else {
                    unreachable!()
                };
                let config = ModelConfig::from_gguf(content, file)?;
                let tokenizer = Tokenizer::from_gguf(content, file)?;
                let template = content
                    .metadata
                    .get("tokenizer.chat_template")
                    .and_then(|v| v.to_string().ok())
                    .cloned();
                let bos = token_text(&tokenizer, tokenizer.bos_id);
                let eos = token_text(&tokenizer, tokenizer.eos_ids.first().copied());
                let chat = match template {
                    Some(t) => ChatTemplate::new(&t, file, &bos, &eos)?,
                    None => ChatTemplate::new(CHATML_FALLBACK, file, &bos, &eos)?,
                };
                let decoder = Decoder::load(&store, &config, opts)?;
                Model::new(self.clone(), decoder, tokenizer, chat)
            }
            CheckpointKind::Hf { dir, shards } => {
                let cfg_path = dir.join("config.json");
                let config = ModelConfig::from_hf_json(&cfg_path)?;
                let (tokenizer, chat) = hf_tokenizer(dir)?;
                if shards.is_empty() {
                    return Err(Error::file(
                        dir,
                        "no model.safetensors (or sharded model-*-of-*.safetensors) found",
                    ));
                }
                check_index(dir)?;
                let store = Store::open_safetensors(shards.clone())?;
                let decoder = Decoder::load(&store, &config, opts)?;
                Model::new(self.clone(), decoder, tokenizer, chat)
            }
            CheckpointKind::Adapter { dir, base } => {
                let mut model = base.load(opts)?;
                let adapter =
                    Adapter::load(dir, &self.name, &opts.device, opts.activation_dtype())?;
                model.decoder.attach_adapter(&adapter)?;
                model.decoder.set_active_adapter(Some(&self.name))?;
                model.checkpoint = self.clone();
                Ok(model)
            }
        }
    }
}

/// A loaded checkpoint: decoder, tokenizer and chat template, ready to generate.
pub struct Model {
    pub checkpoint: Checkpoint,
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
    /// Prompt blocks already prefilled, shared by every call on this model.
    pub prefix_cache: super::PrefixCache,
}

impl Model {
    fn new(
        checkpoint: Checkpoint,
        decoder: Decoder,
        tokenizer: Tokenizer,
        chat: ChatTemplate,
    ) -> Result<Model> {
        let bound = tokenizer.id_bound();
        if bound > decoder.vocab_rows() {
            return Err(Error::file(
                &tokenizer.source,
                format!(
                    "tokenizer has ids up to {} but the model's embedding has only {} rows",
                    bound - 1,
                    decoder.vocab_rows()
                ),
            ));
        }
        let prefix_cache =
            super::PrefixCache::new(super::prefix_cache::default_mb(&decoder.device));
        Ok(Model {
            checkpoint,
            decoder,
            tokenizer,
            chat,
            prefix_cache,
        })
    }
}

fn token_text(tok: &Tokenizer, id: Option<u32>) -> String {
    id.and_then(|i| tok.id_to_token(i)).unwrap_or_default()
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid JSON: {e}")))
}

/// The weight files of an HF folder: `model.safetensors`, or the shards its index lists.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return Ok(index_shards(&index)?
            .into_iter()
            .map(|f| dir.join(f))
            .collect());
    }
    Ok(vec![])
}

/// A sharded checkpoint's index: tensor name → shard file.
fn index_map(index: &Path) -> Result<serde_json::Map<String, Value>> {
    let v = read_json(index)?;
    v.get("weight_map")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| Error::file(index, "missing field 'weight_map'"))
}

/// The shard files a `model.safetensors.index.json` names, sorted, each once.
pub(super) fn index_shards(index: &Path) -> Result<Vec<String>> {
    let mut files: Vec<String> = index_map(index)?
        .values()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Every tensor the index places in a shard is in that shard's header (a shard from another
/// revision, or a hand-edited index, would otherwise fail later as a "missing tensor").
fn check_index(dir: &Path) -> Result<()> {
    let index = dir.join("model.safetensors.index.json");
    if dir.join("model.safetensors").is_file() || !index.is_file() {
        return Ok(());
    }
    let map = index_map(&index)?;
    let mut headers: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    for (tensor, shard) in &map {
        let shard = shard.as_str().unwrap_or_default();
        if !headers.contains_key(shard) {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(Error::file(
                    &path,
                    "missing safetensors file (named by model.safetensors.index.json)",
                ));
            }
            let names = safetensors_header(&path)?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            headers.insert(shard.to_string(), names);
        }
        if !headers[shard].contains(tensor) {
            return Err(Error::file(
                dir.join(shard),
                format!(
                    "has no tensor '{tensor}', which model.safetensors.index.json places in it"
                ),
            ));
        }
    }
    Ok(())
}

/// Tokenizer and chat template of an HF folder.
fn hf_tokenizer(dir: &Path) -> Result<(Tokenizer, ChatTemplate)> {
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(Error::file(&tok_path, "missing tokenizer.json"));
    }
    let cfg_path = dir.join("tokenizer_config.json");
    let tcfg = if cfg_path.is_file() {
        read_json(&cfg_path)?
    } else {
        Value::Null
    };
    let token_str = |v: Option<&Value>| -> Option<String> {
        match v? {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
            _ => None,
        }
    };
    let mut special = SpecialTokens {
        bos: token_str(tcfg.get("bos_token")),
        add_bos: tcfg.get("add_bos_token").and_then(Value::as_bool),
        eos_ids: vec![],
        eos_tokens: token_str(tcfg.get("eos_token")).into_iter().collect(),
    };
    let gen_path = dir.join("generation_config.json");
    if gen_path.is_file() {
        let g = read_json(&gen_path)?;
        match g.get("eos_token_id") {
            Some(Value::Number(n)) => special.eos_ids.extend(n.as_u64().map(|x| x as u32)),
            Some(Value::Array(a)) => special
                .eos_ids
                .extend(a.iter().filter_map(|x| x.as_u64().map(|x| x as u32))),
            _ => {}
        }
    }
    let tokenizer = Tokenizer::from_hf_file(&tok_path, &special)?;
    // transformers 5 writes the template to chat_template.jinja; older versions embed it.
    let jinja = dir.join("chat_template.jinja");
    let (source, origin) = if jinja.is_file() {
        let t = std::fs::read_to_string(&jinja)
            .map_err(|e| Error::file(&jinja, format!("cannot read: {e}")))?;
        (t, jinja)
    } else {
        match tcfg.get("chat_template") {
            Some(Value::String(s)) => (s.clone(), cfg_path.clone()),
            Some(Value::Array(list)) => {
                let default = list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .or(list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .unwrap_or(CHATML_FALLBACK);
                (default.to_string(), cfg_path.clone())
            }
            _ => (CHATML_FALLBACK.to_string(), cfg_path.clone()),
        }
    };
    let bos = special.bos.clone().unwrap_or_default();
    let eos = special.eos_tokens.first().cloned().unwrap_or_default();
    let chat = ChatTemplate::new(&source, &origin, &bos, &eos)?;
    Ok((tokenizer, chat))
}

/// Resolve an adapter's `base_model_name_or_path`: relative to the adapter folder, as a path,
/// as a folder in `root`, or by the last component of a hub id (`Org/Model` → `root/model`).
fn resolve_base(adapter_dir: &Path, base: Option<&str>, root: &Path) -> Result<Checkpoint> {
    let cfg = adapter_dir.join("adapter_config.json");
    let base = base.ok_or_else(|| Error::file(&cfg, "missing field 'base_model_name_or_path'"))?;
    let last = base.rsplit('/').next().unwrap_or(base);
    let candidates = [
        adapter_dir.join(base),
        PathBuf::from(base),
        root.join(base),
        root.join(last),
        root.join(last.to_lowercase()),
    ];
    for c in &candidates {
        if c.exists() && c != adapter_dir {
            return Checkpoint::open(c, root);
        }
    }
    // A Hub id, as PEFT writes it: through the Hugging Face cache (fetched if online).
    if let Some(r) = super::hub::HubRef::parse(base) {
        return Checkpoint::from_hub(&r, root).map_err(|e| {
            Error::file(
                &cfg,
                format!("base model '{base}' is not local and not on the Hub: {e}"),
            )
        });
    }
    Err(Error::file(
        &cfg,
        format!(
            "base model '{base}' not found (looked next to the adapter and in {})",
            root.display()
        ),
    ))
}

/// Weights in a dense checkpoint's shards, from their headers.
fn hf_parameters(shards: &[PathBuf]) -> Result<u64> {
    let mut n = 0;
    for s in shards {
        if !s.is_file() {
            return Err(Error::file(s, "missing safetensors file"));
        }
        n += safetensors_header(s)?
            .iter()
            .map(|(_, (_, c))| c)
            .sum::<u64>();
    }
    Ok(n)
}

/// Why `parameters` dense weights in `dtype` cannot be trained in `available` bytes, if they
/// cannot: activations, gradients and the optimizer come on top, so the weights alone must leave
/// a fifth free.
fn dense_fit_problem(parameters: u64, dtype: candle_core::DType, available: u64) -> Option<String> {
    let need = parameters * dtype.size_in_bytes() as u64;
    if need as f64 <= 0.8 * available as f64 {
        return None;
    }
    let gb = |b: u64| b as f64 / 1e9;
    let hint = if dtype == candle_core::DType::F32 {
        format!("; --dtype bf16 would need {:.1} GB", gb(need / 2))
    } else {
        String::new()
    };
    Some(format!(
        "training loads the weights dense: {parameters} parameters need {:.1} GB as {dtype:?} but {:.1} GB of memory is available{hint}",
        gb(need),
        gb(available)
    ))
}

/// What the kernel says a new allocation can take (`MemAvailable`), if it says.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn dir_size(p: &Path) -> u64 {
    if p.is_file() {
        return p.metadata().map(|m| m.len()).unwrap_or(0);
    }
    std::fs::read_dir(p)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

/// Tensor name → (dtype, element count), from a safetensors header alone.
fn safetensors_header(path: &Path) -> Result<Vec<(String, (String, u64))>> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| Error::file(path, "not a valid safetensors file: too short"))?;
    let n = u64::from_le_bytes(len);
    let file_len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if n > 100_000_000 || n + 8 > file_len {
        return Err(Error::file(
            path,
            "not a valid safetensors file: bad header length",
        ));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf)
        .map_err(|_| Error::file(path, "not a valid safetensors file: truncated header"))?;
    let v: Value = serde_json::from_slice(&buf)
        .map_err(|e| Error::file(path, format!("not a valid safetensors header: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::file(path, "not a valid safetensors header"))?;
    let mut out = vec![];
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t
            .get("dtype")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let count = t
            .get("shape")
            .and_then(Value::as_array)
            .map(|s| s.iter().map(|d| d.as_u64().unwrap_or(0)).product())
            .unwrap_or(0);
        out.push((name.clone(), (dtype, count)));
    }
    Ok(out)
}

#[cfg(test)]
mod fit_tests {
    use super::dense_fit_problem;
    use candle_core::DType;

    #[test]
    fn an_8b_model_does_not_train_dense_in_24_gb_and_the_message_says_what_would() {
        let avail = 22_000_000_000;
        let msg = dense_fit_problem(8_190_000_000, DType::F32, avail).unwrap();
        assert!(
            msg.contains("32.8 GB as F32") && msg.contains("--dtype bf16 would need 16.4 GB"),
            "{msg}"
        );
        // In bf16 the weights take 16.4 GB, under the 17.6 GB bound (80% of 22): it fits.
        assert_eq!(dense_fit_problem(8_190_000_000, DType::BF16, avail), None);
        assert_eq!(dense_fit_problem(135_000_000, DType::F32, avail), None);
    }
}
