//! The GGUF-built tokenizer against llama.cpp's (the reference for a GGUF's `tokenizer.ggml.pre`)
//! on tricky strings; fixture made by scripts/reference/smollm2_tokenizer.py.

use crate::common;

use humanlm::model::chat::{ChatTemplate, Message};

#[test]
fn ids_match_llama_cpp_on_tricky_strings() {
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("smollm2_tokenizer.json")).unwrap(),
    )
    .unwrap();
    let tok = &common::default_model().tokenizer;
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode_rendered(text).unwrap();
        assert_eq!(got, want, "ids of {text:?}");
        // Byte-level BPE round-trips exactly.
        assert_eq!(tok.decode(&got).unwrap(), text, "decode of {text:?}");
    }
}

#[test]
fn unknown_pre_tokenizer_is_refused_by_name() {
    use candle_core::quantized::gguf_file::{Content, Value};
    let path = common::default_gguf();
    let mut f = std::fs::File::open(&path).unwrap();
    let mut content = Content::read(&mut f).unwrap();
    content.metadata.insert(
        "tokenizer.ggml.pre".into(),
        Value::String("mystery-bpe".into()),
    );
    let err = humanlm::model::Tokenizer::from_gguf(&content, &path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mystery-bpe") && err.contains("not supported"),
        "{err}"
    );
}

#[test]
fn special_tokens_and_eos() {
    let tok = &common::default_model().tokenizer;
    let ids = tok
        .encode_rendered("<|im_start|>user\nHi<|im_end|>")
        .unwrap();
    assert_eq!(ids.first(), tok.token_id("<|im_start|>").as_ref());
    assert_eq!(ids.last(), tok.token_id("<|im_end|>").as_ref());
    assert!(tok.eos_ids.contains(&tok.token_id("<|im_end|>").unwrap()));
}

/// The checkpoint's own template, rendered by minijinja, inserts SmolLM's default system prompt
/// exactly as transformers does (the fixture's chat prompt was rendered that way).
#[test]
fn gguf_chat_template_renders_like_transformers() {
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("smollm2_logits.json")).unwrap(),
    )
    .unwrap();
    let want = fx["prompts"][0]["text"].as_str().unwrap();
    let chat = &common::default_model().chat;
    let got = chat
        .render(
            &[Message::new("user", "What is the capital of France?")],
            true,
            &serde_json::json!({}),
        )
        .unwrap();
    assert_eq!(got, want);
}

/// The HumanLM multi-role template: thread turns in the user role with names, and the model
/// speaking as HUMAN in the user role, thinking off or on.
#[test]
fn humanlm_template_renders_roles_and_thinking() {
    let path = common::root().join("prompts/humanlm/chat_template.jinja");
    let t = ChatTemplate::from_file(&path, "", "<|im_end|>").unwrap();
    let msgs = vec![
        Message::new("system", "You are HUMAN."),
        Message {
            role: "user".into(),
            content: "Is this true?".into(),
            name: Some("alice".into()),
        },
        Message {
            role: "user".into(),
            content: "I doubt it.".into(),
            name: Some("HUMAN".into()),
        },
    ];
    let off = t
        .render(&msgs, true, &serde_json::json!({"enable_thinking": false}))
        .unwrap();
    assert_eq!(
        off,
        "<|im_start|>system\nYou are HUMAN.<|im_end|>\n<|im_start|>user\n<name>alice</name>\nIs this true?<|im_end|>\n\
         <|im_start|>user\n<name>HUMAN</name>\nI doubt it.<|im_end|>\n<|im_start|>user\n<name>HUMAN</name>\n<think>\n\n</think>\n\n"
    );
    let on = t
        .render(&msgs, true, &serde_json::json!({"enable_thinking": true}))
        .unwrap();
    assert!(
        on.ends_with("<|im_start|>user\n<name>HUMAN</name>\n<think>"),
        "{on:?}"
    );
}
