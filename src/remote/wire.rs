//! The OpenAI-compatible wire format, one definition for both sides: `remote::Endpoint` sends
//! requests and reads replies with these types, and `humanlm serve` reads the same requests and
//! writes the same replies.
//!
//! Requests are read leniently where the API is (message content as a string or a list of text
//! parts, `stop` as a string or a list) and unknown request fields are kept in `extra`, so a
//! server can refuse what it does not support instead of silently ignoring it. Replies from other
//! servers carry fields we do not use; those are ignored.

use crate::generate::StopReason;
use crate::model::chat::Message;
use serde::{Deserialize, Deserializer, Serialize};

/// A sample's end as OpenAI's `finish_reason`, which knows `stop` and `length`: end of sequence
/// and stop strings are `stop`; the token limit, the context's end and a cancellation (client
/// gone, server stopping) are `length`.
pub fn finish_reason(r: &StopReason) -> &'static str {
    match r {
        StopReason::Eos | StopReason::Stop => "stop",
        StopReason::Length | StopReason::Context | StopReason::Cancelled => "length",
    }
}

/// A reply's `finish_reason` as a sample's end: `length` is the token limit, anything else
/// (`stop`, a server's own words, none) a stop.
pub fn stop_reason(finish_reason: Option<&str>) -> StopReason {
    match finish_reason {
        Some("length") => StopReason::Length,
        _ => StopReason::Stop,
    }
}

/// Sampling parameters shared by chat and text completions: the OpenAI ones and the extra ones
/// vLLM also accepts (`top_k`, `min_p`, `repetition_penalty`, `no_repeat_ngram`). Unset fields
/// are left out of a request, so the server's defaults apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// The newer name of `max_tokens`; wins when both are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Stop strings; a single string is accepted on the wire.
    #[serde(
        default,
        deserialize_with = "de_stop",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop: Option<Vec<String>>,
    /// Choices per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_repeat_ngram: Option<usize>,
}

impl GenParams {
    /// `max_completion_tokens`, else `max_tokens`.
    pub fn max_new_tokens(&self) -> Option<usize> {
        self.max_completion_tokens.or(self.max_tokens)
    }
}

/// `stream_options` of a streaming request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and no choices) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Empty: `Endpoint` fills in its configured model; a server refuses it.
    #[serde(default)]
    pub model: String,
    #[serde(deserialize_with = "de_messages")]
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub params: GenParams,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// vLLM extra: variables for the chat template (e.g. `{"enable_thinking": false}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// vLLM extra: end the prompt with the assistant header (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_generation_prompt: Option<bool>,
    /// Every other field: sent as is, so a client can pass vendor parameters; a server decides
    /// what to accept.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatRequest {
    pub fn new(messages: Vec<Message>, params: GenParams) -> ChatRequest {
        ChatRequest {
            messages,
            params,
            ..Default::default()
        }
    }
}

/// `POST /v1/completions`: raw text in, raw text out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: String,
    /// One prompt; a list holding exactly one string is accepted on the wire.
    #[serde(deserialize_with = "de_prompt")]
    pub prompt: String,
    #[serde(flatten)]
    pub params: GenParams,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl CompletionRequest {
    pub fn new(prompt: &str, params: GenParams) -> CompletionRequest {
        CompletionRequest {
            prompt: prompt.to_string(),
            params,
            ..Default::default()
        }
    }
}

/// Token counts of one request (all choices together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// How many prompt tokens a prefix cache served (OpenAI's field; vLLM's and ours too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: usize,
    #[serde(deserialize_with = "de_message")]
    pub message: Message,
    /// `stop` (end of sequence or a stop string) or `length` (token limit or context);
    /// other servers may send others (`tool_calls`, `content_filter`).
    pub finish_reason: Option<String>,
}

/// The reply to a chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<ChatChoice>,
    /// Always sent by `humanlm serve`; a streamed reply has it only when the server honours
    /// `stream_options.include_usage`.
    #[serde(default)]
    pub usage: Option<Usage>,
}

impl ChatResponse {
    /// The text of choice 0 (empty when there is none).
    pub fn text(&self) -> &str {
        self.choices
            .first()
            .map(|c| c.message.content.as_str())
            .unwrap_or("")
    }
}

/// What a streamed chat chunk adds to one choice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: usize,
    #[serde(default)]
    pub delta: Delta,
    /// Set in the choice's last chunk only (sent as `null` before it, as OpenAI does).
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// One server-sent event of a streamed chat completion (`chat.completion.chunk`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice of a text completion; in a streamed chunk `text` is the new text only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: usize,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Always `null`: log-probabilities are not offered.
    #[serde(default)]
    pub logprobs: Option<serde_json::Value>,
}

/// The reply to a text completion, and (with `object` `text_completion`, too) each streamed
/// chunk of one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<CompletionChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl CompletionResponse {
    /// The text of choice 0 (empty when there is none).
    pub fn text(&self) -> &str {
        self.choices.first().map(|c| c.text.as_str()).unwrap_or("")
    }
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub owned_by: String,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    #[serde(default)]
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// An OpenAI-style error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

impl ErrorBody {
    pub fn new(message: impl Into<String>, kind: &str, code: Option<&str>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.into(),
                param: None,
                code: code.map(str::to_string),
            },
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Message content as OpenAI sends it: a string, a list of parts (the text parts are joined), or
/// `null` (an assistant turn that only called tools).
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
    Null(()),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    name: Option<String>,
}

impl TryFrom<RawMessage> for Message {
    type Error = String;

    fn try_from(m: RawMessage) -> Result<Message, String> {
        let content = match m.content {
            None | Some(Content::Null(())) => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(format!(
                                "message content part of type {kind:?} is not supported (only text)"
                            ))
                        }
                    }
                }
                text
            }
        };
        Ok(Message {
            role: m.role,
            content,
            name: m.name,
        })
    }
}

fn de_message<'de, D: Deserializer<'de>>(d: D) -> Result<Message, D::Error> {
    Message::try_from(RawMessage::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn de_messages<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Message>, D::Error> {
    Vec::<RawMessage>::deserialize(d)?
        .into_iter()
        .map(|m| Message::try_from(m).map_err(serde::de::Error::custom))
        .collect()
}

fn de_stop<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stop {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Stop>::deserialize(d)? {
        None => None,
        Some(Stop::One(s)) => Some(vec![s]),
        Some(Stop::Many(v)) => Some(v),
    })
}

fn de_prompt<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Prompt {
        One(String),
        Many(Vec<String>),
    }
    match Prompt::deserialize(d)? {
        Prompt::One(s) => Ok(s),
        Prompt::Many(mut v) if v.len() == 1 => Ok(v.remove(0)),
        Prompt::Many(v) => Err(serde::de::Error::custom(format!(
            "prompt must be one string (got a list of {}; send one request per prompt)",
            v.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_request_reads_openai_shapes() {
        let r: ChatRequest = serde_json::from_str(
            r#"{"model": "m", "messages": [
                {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "user", "content": "hi", "name": "Ann"},
                {"role": "assistant", "content": null}],
                "stop": "x", "temperature": 0, "max_tokens": 5, "top_k": 3, "user": "u1"}"#,
        )
        .unwrap();
        assert_eq!(r.messages[0].content, "ab");
        assert_eq!(r.messages[1].name.as_deref(), Some("Ann"));
        assert_eq!(r.messages[2].content, "");
        assert_eq!(r.params.stop, Some(vec!["x".to_string()]));
        assert_eq!(r.params.max_new_tokens(), Some(5));
        assert_eq!(r.params.top_k, Some(3));
        assert_eq!(r.extra.get("user"), Some(&serde_json::json!("u1")));
        assert!(!r.extra.contains_key("temperature"));
        // What a client sends reads back the same.
        let back: ChatRequest = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn unsupported_parts_and_prompt_lists_are_refused() {
        let e = serde_json::from_str::<ChatRequest>(
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("image_url"), "{e}");
        let e = serde_json::from_str::<CompletionRequest>(r#"{"prompt": ["a", "b"]}"#).unwrap_err();
        assert!(e.to_string().contains("one string"), "{e}");
        let ok: CompletionRequest = serde_json::from_str(r#"{"prompt": ["a"]}"#).unwrap();
        assert_eq!(ok.prompt, "a");
    }
}
