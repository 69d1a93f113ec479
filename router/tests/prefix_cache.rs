//! Prefix caching through the HTTP API: a repeated prompt reports its cached tokens
//! (TGI's `details.cached_tokens`, OpenAI's `usage.prompt_tokens_details.cached_tokens`)
//! and answers exactly as it did cold; `cache_salt` keeps tenants apart; the metrics
//! count queries, hits and cached blocks; `--prefix-caching false` turns it off.

mod common;

use common::{Server, metric};
use serde_json::{Value, json};

const PROMPT: &str = "The quick brown fox jumps over the lazy dog, and then the dog \
                      chases the fox all the way back across the long green field.";

fn generate(prompt: &str) -> Value {
    json!({"inputs": prompt, "parameters": {"max_new_tokens": 6, "details": true,
           "decoder_input_details": false}})
}

async fn cached(server: &Server, body: Value) -> (String, u64) {
    let (status, out) = server.post("/generate", body).await;
    assert_eq!(status, 200, "{out}");
    let cached = out["details"]["cached_tokens"].as_u64().unwrap();
    let tokens: Vec<_> = out["details"]["tokens"].as_array().unwrap().to_vec();
    (format!("{}|{tokens:?}", out["generated_text"]), cached)
}

#[tokio::test]
async fn a_repeated_prompt_is_served_from_the_cache_and_answers_the_same() {
    let server = Server::start(&[], &[]).await;
    let (cold, none) = cached(&server, generate(PROMPT)).await;
    assert_eq!(none, 0);
    let (warm, hit) = cached(&server, generate(PROMPT)).await;
    assert!(hit >= 16 && hit % 16 == 0, "whole blocks: {hit}");
    assert_eq!(warm, cold, "text, tokens and logprobs are the same");
    // Prompt logprobs need every prompt row: no hit, and the same answer.
    let body = json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "details": true,
                      "decoder_input_details": true}});
    let (status, out) = server.post("/generate", body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["details"]["cached_tokens"], 0);
    assert!(out["details"]["prefill"].as_array().unwrap().len() > 16);

    // OpenAI's usage, streamed and not.
    let completion = |extra: Value| {
        let mut body = json!({"model": "llama", "prompt": PROMPT, "max_tokens": 4,
                              "temperature": 0});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let (status, out) = server.post("/v1/completions", completion(json!({}))).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(), Some(hit));
    let body = completion(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (status, events) = server.sse("/v1/completions", body).await;
    assert_eq!(status, 200);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(), Some(hit));

    // A salt is a namespace of its own: cold once, then warm.
    let salted = || completion(json!({"cache_salt": "tenant-a"}));
    let (_, out) = server.post("/v1/completions", salted()).await;
    assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let (_, again) = server.post("/v1/completions", salted()).await;
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(), Some(hit));
    assert_eq!(again["choices"][0]["text"], out["choices"][0]["text"]);
    let mut tgi_salted = generate(PROMPT);
    tgi_salted["parameters"]["cache_salt"] = json!("tenant-b");
    assert_eq!(cached(&server, tgi_salted).await.1, 0);

    server.wait_idle().await;
    assert!(metric(&server, "rill_prefix_cache_hits").await.unwrap() >= 4.0 * hit as f64);
    assert!(metric(&server, "rill_prefix_cache_queries").await.unwrap() > 0.0);
    assert!(metric(&server, "rill_kv_blocks_cached").await.unwrap() > 0.0);
    assert_eq!(metric(&server, "rill_kv_blocks_used").await, Some(0.0));
}

#[tokio::test]
async fn prefix_caching_can_be_turned_off() {
    let server = Server::start(&["--prefix-caching", "false"], &[]).await;
    let (cold, _) = cached(&server, generate(PROMPT)).await;
    let (warm, hit) = cached(&server, generate(PROMPT)).await;
    assert_eq!((hit, warm), (0, cold));
    server.wait_idle().await;
    assert_eq!(metric(&server, "rill_prefix_cache_hits").await, Some(0.0));
    assert_eq!(metric(&server, "rill_kv_blocks_cached").await, Some(0.0));
}
