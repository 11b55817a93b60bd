//! A language model that answers one prompt: a local checkpoint or an OpenAI-compatible
//! endpoint. Judges (and trace writing) talk to either the same way.

use super::{Error, Result};
use crate::generate::{self, SamplingParams};
use crate::model::chat::Message;
use crate::model::weights::LoadOptions;
use crate::model::{Checkpoint, Model};
use crate::remote::{ChatRequest, Endpoint, EndpointConfig, GenParams};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// How a judge model is sampled.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    #[serde(default)]
    pub temperature: f32,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// The request field that carries `max_tokens` to an endpoint: OpenAI's reasoning models
    /// (gpt-5-mini) refuse `max_tokens` and take `max_completion_tokens`.
    #[serde(default)]
    pub token_limit: TokenLimit,
    #[serde(default)]
    pub seed: u64,
}

/// Which request field limits an endpoint judge's reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenLimit {
    #[default]
    MaxTokens,
    MaxCompletionTokens,
}

fn default_max_tokens() -> usize {
    1024
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            max_tokens: default_max_tokens(),
            token_limit: TokenLimit::default(),
            seed: 0,
        }
    }
}

/// Where a judge's language model runs.
#[derive(Clone)]
pub enum ChatModel {
    /// A local checkpoint; one generation at a time (the CPU cannot do better).
    Local(Arc<Mutex<Model>>),
    Remote(Endpoint),
}

impl std::fmt::Debug for ChatModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChatModel::Local(m) => match m.lock() {
                Ok(m) => write!(f, "Local({})", m.checkpoint.name),
                Err(_) => write!(f, "Local(<poisoned>)"),
            },
            ChatModel::Remote(e) => write!(f, "Remote({})", e.config().base_url),
        }
    }
}

impl ChatModel {
    /// A checkpoint name or path, or `endpoint:URL#MODEL`.
    pub fn open(spec: &str, checkpoints: &Path) -> Result<ChatModel> {
        if let Some((url, model)) = Endpoint::parse_spec(spec) {
            return Ok(ChatModel::Remote(Endpoint::new(EndpointConfig::new(
                &url, &model,
            ))?));
        }
        let model = Checkpoint::resolve(spec, checkpoints)?.load(&LoadOptions::default())?;
        Ok(ChatModel::Local(Arc::new(Mutex::new(model))))
    }

    /// Answer one user message (the model's chat template applied locally or by the server).
    pub fn ask(&self, prompt: &str, s: &Sampling, attempt: u64) -> Result<String> {
        // A retry at a temperature above zero should not repeat the same sample.
        let seed = s.seed.wrapping_add(attempt);
        match self {
            ChatModel::Local(m) => {
                let model = m
                    .lock()
                    .map_err(|_| Error::Msg("judge model lock poisoned".into()))?;
                let text = model.chat.render(
                    &[Message::new("user", prompt)],
                    true,
                    &serde_json::json!({ "enable_thinking": false }),
                )?;
                let ids = model.tokenizer.encode_rendered(&text)?;
                let params = SamplingParams {
                    max_new_tokens: s.max_tokens,
                    temperature: s.temperature,
                    seed,
                    ..Default::default()
                };
                let out = generate::generate(&model, &ids, &params, None, &mut |_| {})?;
                Ok(out.samples[0].text.clone())
            }
            ChatModel::Remote(e) => {
                let req = ChatRequest::new(
                    vec![Message::new("user", prompt)],
                    GenParams {
                        max_tokens: (s.token_limit == TokenLimit::MaxTokens)
                            .then_some(s.max_tokens),
                        max_completion_tokens: (s.token_limit == TokenLimit::MaxCompletionTokens)
                            .then_some(s.max_tokens),
                        temperature: Some(s.temperature),
                        seed: Some(seed),
                        ..Default::default()
                    },
                );
                Ok(e.chat(&req)?.text().to_string())
            }
        }
    }

    /// What identifies the model in a cache key.
    pub fn identity(&self) -> String {
        match self {
            ChatModel::Local(m) => m
                .lock()
                .map(|m| format!("local:{}", m.checkpoint.path.display()))
                .unwrap_or_default(),
            ChatModel::Remote(e) => {
                format!("endpoint:{}#{}", e.config().base_url, e.config().model)
            }
        }
    }
}
