//! `rill` with no `--model-id` serves the bundled demo model (`models/demo`): the
//! README's first commands work on it — `/generate`, `/generate_stream` and the
//! OpenAI chat route through its chat template, which ends a reply at `<|end|>`.
//! (How English its text is, is scored against a word list in
//! `integration-tests/python/test_demo_model.py`.)

mod common;

use common::Server;
use serde_json::{Value, json};

async fn demo() -> Server {
    Server::spawn_exactly(&[], &[]).healthy().await
}

/// Text a reader can read: letters, spaces and punctuation, no replacement characters
/// (a byte-level tokenizer's broken UTF-8) or control characters.
fn readable(text: &str) -> bool {
    let letters = text.chars().filter(|c| c.is_ascii_alphabetic()).count();
    !text.contains('\u{fffd}')
        && text.chars().all(|c| !c.is_control() || c == '\n')
        && letters * 2 > text.chars().count()
}

#[tokio::test]
async fn the_bundled_model_is_the_demo_and_writes_text() {
    let server = demo().await;
    let info: Value =
        reqwest::get(format!("{}/info", server.base)).await.unwrap().json().await.unwrap();
    let id = info["model_id"].as_str().unwrap();
    assert!(id.ends_with("models/demo"), "{info}");

    let body = json!({"inputs": "Once upon a time", "parameters": {"max_new_tokens": 24}});
    let (status, out) = server.post("/generate", body.clone()).await;
    assert_eq!(status, 200, "{out}");
    let text = out["generated_text"].as_str().unwrap();
    assert!(readable(text), "{text:?}");

    // The stream says the same, token by token.
    let (status, events) = server.stream(body).await;
    assert_eq!(status, 200);
    let last = events.last().unwrap();
    assert_eq!(last["generated_text"], text, "{last}");
    let joined: String = events.iter().map(|e| e["token"]["text"].as_str().unwrap()).collect();
    assert_eq!(joined, text);
}

#[tokio::test]
async fn the_demo_model_chats_and_ends_its_turn() {
    let server = demo().await;
    let body = json!({
        "model": "demo",
        "messages": [{"role": "user", "content": "What is a dog?"}],
        "max_tokens": 64,
        "temperature": 0,
    });
    let (status, out) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{out}");
    let choice = &out["choices"][0];
    let content = choice["message"]["content"].as_str().unwrap();
    // The reply ends at the template's end-of-turn token, which is not part of it.
    assert_eq!(choice["finish_reason"], "stop", "{out}");
    assert!(readable(content) && !content.contains("<|"), "{content:?}");
    assert!(out["usage"]["completion_tokens"].as_u64().unwrap() < 64, "{out}");
}
