//! Chat templates: the checkpoint's own Jinja template, rendered by a real Jinja engine
//! (minijinja with Python-compatible string methods), so prompts match what the model was
//! trained on byte for byte.

use super::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One chat turn. `name` is optional and used by templates that label speakers (HumanLM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            name: None,
        }
    }
}

/// A compiled chat template and the special tokens it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    /// Where the template text came from (a .jinja file, tokenizer_config.json or a GGUF).
    pub origin: PathBuf,
    pub source: String,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    pub fn new(
        source: &str,
        origin: &Path,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate> {
        let mut env = minijinja::Environment::new();
        // Hugging Face renders with trim_blocks and lstrip_blocks; so must we, or whitespace
        // (and thus token ids) drift.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> String {
            // Templates use it for "today's date" lines; a fixed date keeps prompts reproducible.
            fmt.replace("%d", "01")
                .replace("%b", "Jan")
                .replace("%B", "January")
                .replace("%Y", "2026")
                .replace("%m", "01")
        });
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| Error::file(origin, format!("invalid chat template: {}", describe(&e))))?;
        Ok(ChatTemplate {
            env,
            origin: origin.to_path_buf(),
            source: source.to_string(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// Load a template file (e.g. `prompts/humanlm/chat_template.jinja`).
    pub fn from_file(path: &Path, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        Self::new(&text, path, bos_token, eos_token)
    }

    /// Render `messages`; `extra` adds template variables (e.g. `enable_thinking`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &serde_json::Value,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::file(&self.origin, describe(&e)))?;
        let mut ctx = serde_json::json!({
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        });
        if let (Some(obj), Some(more)) = (ctx.as_object_mut(), extra.as_object()) {
            for (k, v) in more {
                obj.insert(k.clone(), v.clone());
            }
        }
        tmpl.render(minijinja::Value::from_serialize(&ctx))
            .map_err(|e| {
                Error::file(
                    &self.origin,
                    format!("chat template failed: {}", describe(&e)),
                )
            })
    }
}

fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("line {line}: {}", e.detail().unwrap_or(&e.to_string())),
        None => e
            .detail()
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string()),
    }
}

/// A plain ChatML template for checkpoints that ship none.
pub const CHATML_FALLBACK: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
