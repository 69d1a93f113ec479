//! The OpenAI routes of the real binary on the tiny `llama` fixture model: shapes,
//! streams, choices, logprobs, stop strings, structured output, tools, and every
//! refusal in OpenAI's error shape. (The real SDKs run in
//! integration-tests/python/test_openai.py.)

mod common;

use std::time::{Duration, Instant};

use common::Server;
use serde_json::{Value, json};

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
        "max_tokens": 12, "temperature": 0,
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

/// The JSON chunks of an OpenAI stream, checking it ends with `[DONE]`.
fn parse_chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

/// Concatenated `delta.content` of choice `index`.
fn streamed_text(chunks: &[Value], index: u64) -> String {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().unwrap().clone())
        .filter(|c| c["index"] == index)
        .filter_map(|c| c["delta"]["content"].as_str().map(String::from))
        .collect()
}

fn assert_openai_error(status: u16, body: &Value, want_status: u16, param: &str) {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(e["type"].is_string(), "{body}");
    assert_eq!(e["param"], param, "{body}");
}

#[tokio::test]
async fn models_are_listed_and_unknown_ones_are_404() {
    let server = Server::start(&["--served-model-name", "tiny-llama"], &[]).await;
    let list: Value =
        reqwest::get(format!("{}/v1/models", server.base)).await.unwrap().json().await.unwrap();
    assert_eq!(list["object"], "list");
    let m = &list["data"][0];
    assert_eq!((m["id"].as_str(), m["object"].as_str()), (Some("tiny-llama"), Some("model")));
    assert_eq!(m["max_model_len"], 256);
    assert!(m["created"].as_u64().unwrap() > 1_700_000_000);
    let one = reqwest::get(format!("{}/v1/models/tiny-llama", server.base)).await.unwrap();
    assert_eq!(one.status(), 200);

    for model in [json!("tiny-llama"), json!("tgi"), json!("dummy"), Value::Null] {
        let (status, body) =
            server.post("/v1/chat/completions", chat(json!({"model": model}))).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["model"], "tiny-llama");
    }
    let (status, body) = server.post("/v1/chat/completions", chat(json!({"model": "gpt-4"}))).await;
    assert_openai_error(status, &body, 404, "model");
    assert_eq!(body["error"]["code"], "model_not_found");
    let (status, body) =
        server.post("/v1/completions", json!({"model": "gpt-4", "prompt": "Hi"})).await;
    assert_openai_error(status, &body, 404, "model");
}

#[tokio::test]
async fn chat_stream_and_non_stream_agree_under_greedy_decoding() {
    let server = Server::start(&[], &[]).await;
    let (status, whole) = server.post("/v1/chat/completions", chat(json!({}))).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(whole["system_fingerprint"].is_string());
    let choice = &whole["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["finish_reason"] == "length" || choice["finish_reason"] == "stop");
    let usage = &whole["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);

    let body = chat(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (status, events) = server.sse("/v1/chat/completions", body).await;
    assert_eq!(status, 200);
    let chunks = parse_chunks(&events);
    let ids: std::collections::HashSet<_> = chunks.iter().map(|c| c["id"].clone()).collect();
    assert_eq!(ids.len(), 1, "one id for every chunk");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&chunks, 0), choice["message"]["content"].as_str().unwrap());
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "the usage chunk has no choices");
    // The same usage, except that the repeated prompt now hits the prefix cache:
    // every whole 16-token block but the one holding the last prompt token.
    let mut expected = usage.clone();
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    expected["prompt_tokens_details"]["cached_tokens"] = json!((prompt - 1) / 16 * 16);
    assert_eq!(last["usage"], expected);
    let finish: Vec<&Value> = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().unwrap())
        .filter(|c| !c["finish_reason"].is_null())
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["finish_reason"], choice["finish_reason"]);
    // Without include_usage no chunk carries usage.
    let (_, events) = server.sse("/v1/chat/completions", chat(json!({"stream": true}))).await;
    assert!(parse_chunks(&events).iter().all(|c| c.get("usage").is_none()));
    server.wait_idle().await;
}

#[tokio::test]
async fn n_choices_repeat_with_a_seed_and_logprobs_have_top_alternatives() {
    let server = Server::start(&[], &[]).await;
    let body = chat(json!({"n": 3, "seed": 7, "temperature": 1.0, "max_tokens": 10}));
    let (status, a) = server.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{a}");
    let (_, b) = server.post("/v1/chat/completions", body.clone()).await;
    let texts = |v: &Value| -> Vec<String> {
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["message"]["content"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(texts(&a).len(), 3);
    assert_eq!(texts(&a), texts(&b), "a seeded request repeats exactly");
    let distinct: std::collections::HashSet<_> = texts(&a).into_iter().collect();
    assert!(distinct.len() > 1, "choices draw from different seeds");
    let indexes: Vec<_> =
        a["choices"].as_array().unwrap().iter().map(|c| c["index"].clone()).collect();
    assert_eq!(indexes, [0, 1, 2]);
    // Streamed, the same three texts.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (_, events) = server.sse("/v1/chat/completions", streamed).await;
    let chunks = parse_chunks(&events);
    let st: Vec<String> = (0..3).map(|i| streamed_text(&chunks, i)).collect();
    assert_eq!(st, texts(&a));

    let body = chat(json!({"logprobs": true, "top_logprobs": 3}));
    let (status, r) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{r}");
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, r["usage"]["completion_tokens"].as_u64().unwrap());
    // The tokens' raw bytes make up the text, even where a token holds part of a character.
    let bytes: Vec<u8> = content
        .iter()
        .flat_map(|t| t["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8))
        .collect();
    let text = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(String::from_utf8_lossy(&bytes), text);
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        let best = top.iter().map(|t| t["logprob"].as_f64().unwrap()).fold(f64::MIN, f64::max);
        assert!((entry["logprob"].as_f64().unwrap() - best).abs() < 1e-5, "{entry}");
        assert!(entry["bytes"].is_array());
    }
    server.wait_idle().await;
}

#[tokio::test]
async fn stop_strings_are_cut_from_the_text_and_never_streamed() {
    let server = Server::start(&[], &[]).await;
    let body = json!({"prompt": "The quick brown fox", "max_tokens": 16, "temperature": 0, "ignore_eos": true});
    let (_, full) = server.post("/v1/completions", body.clone()).await;
    let text = full["choices"][0]["text"].as_str().unwrap().to_string();
    // A stop string of the middle of the text, likely spanning tokens.
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let want = &text[..text.find(&stop).unwrap()];
    let mut stopped = body.clone();
    stopped["stop"] = json!(stop);
    let (_, r) = server.post("/v1/completions", stopped.clone()).await;
    assert_eq!(r["choices"][0]["text"], want);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    stopped["stream"] = json!(true);
    let (_, events) = server.sse("/v1/completions", stopped).await;
    let streamed: String = parse_chunks(&events)
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str().map(String::from))
        .collect();
    assert_eq!(streamed, want);
    server.wait_idle().await;
}

#[tokio::test]
async fn completions_take_lists_of_prompts_and_token_ids() {
    let server = Server::start(&[], &[]).await;
    let one = |prompt: Value| json!({"prompt": prompt, "max_tokens": 6, "temperature": 0});
    let (_, a) = server.post("/v1/completions", one(json!("Hello"))).await;
    let (_, b) = server.post("/v1/completions", one(json!("The quick brown fox"))).await;
    let (status, both) = server
        .post("/v1/completions", json!({"prompt": ["Hello", "The quick brown fox"], "max_tokens": 6, "temperature": 0, "n": 2, "logprobs": 2}))
        .await;
    assert_eq!(status, 200, "{both}");
    assert_eq!(both["object"], "text_completion");
    let choices = both["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let want = if i < 2 { &a } else { &b };
        assert_eq!(c["text"], want["choices"][0]["text"], "choice {i}");
        let lp = &c["logprobs"];
        let n = lp["tokens"].as_array().unwrap().len();
        assert_eq!(n, 6);
        assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
        assert_eq!(lp["text_offset"][0], 0);
        assert!(
            lp["top_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t.as_object().unwrap().len() <= 2)
        );
    }
    let usage = &both["usage"];
    assert_eq!(
        usage["prompt_tokens"].as_u64().unwrap(),
        a["usage"]["prompt_tokens"].as_u64().unwrap()
            + b["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    assert_eq!(usage["completion_tokens"], 24);

    // Token ids are the same prompt as the text they encode.
    let (_, ids) = server.post("/tokenize", json!({"inputs": "Hello"})).await;
    let ids: Vec<u64> = ids.as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let (status, c) = server.post("/v1/completions", one(json!(ids))).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["choices"][0]["text"], a["choices"][0]["text"]);
    server.wait_idle().await;
}

#[tokio::test]
async fn logit_bias_moves_the_choice() {
    let server = Server::start(&[], &[]).await;
    let body = json!({"prompt": "Hello", "max_tokens": 5, "temperature": 0, "ignore_eos": true, "logit_bias": {"65": 100}});
    let (status, r) = server.post("/v1/completions", body).await;
    assert_eq!(status, 200, "{r}");
    let (_, ids) = server.post("/tokenize", json!({"inputs": r["choices"][0]["text"]})).await;
    let ids: Vec<u64> =
        ids.as_array().unwrap().iter().skip(1).map(|t| t["id"].as_u64().unwrap()).collect();
    assert!(ids.iter().all(|&t| t == 65), "{r} -> {ids:?}");
}

#[tokio::test]
async fn json_schema_output_is_valid_and_ends() {
    let server = Server::start(&[], &[]).await;
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
        "required": ["name", "age"], "additionalProperties": false,
    });
    let validator = jsonschema::validator_for(&schema).unwrap();
    for seed in 0..6 {
        let body = chat(json!({
            "temperature": 1.0, "seed": seed, "max_tokens": 120,
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": true}},
        }));
        let (status, r) = server.post("/v1/chat/completions", body).await;
        assert_eq!(status, 200, "{r}");
        let content = r["choices"][0]["message"]["content"].as_str().unwrap();
        let value: Value =
            serde_json::from_str(content).unwrap_or_else(|e| panic!("{content:?}: {e}"));
        assert!(validator.is_valid(&value), "{content}");
        assert_eq!(r["choices"][0]["finish_reason"], "stop", "seed {seed}: {content:?}");
        assert!(!content.contains('\n'), "compact JSON: {content:?}");
    }
    let body = chat(json!({"response_format": {"type": "json_object"}, "max_tokens": 60}));
    let (status, r) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{r}");
    // TGI's forms, which huggingface_hub sends: a schema as `value`, and regexes.
    let body = chat(
        json!({"response_format": {"type": "json_object", "value": schema}, "max_tokens": 120, "seed": 1, "temperature": 1.0}),
    );
    let (_, r) = server.post("/v1/chat/completions", body).await;
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(validator.is_valid(&serde_json::from_str(content).unwrap()), "{content}");
    let body = chat(
        json!({"response_format": {"type": "regex", "value": "[0-9]{3}-[0-9]{4}"}, "max_tokens": 20}),
    );
    let (_, r) = server.post("/v1/chat/completions", body).await;
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(regex::Regex::new("^[0-9]{3}-[0-9]{4}$").unwrap().is_match(content), "{content}");
    let bad = chat(
        json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}),
    );
    let (status, r) = server.post("/v1/chat/completions", bad).await;
    assert_openai_error(status, &r, 400, "response_format");
}

#[tokio::test]
async fn every_bad_request_names_its_field_and_harms_nothing() {
    let server = Server::start(&["--max-n", "4"], &[]).await;
    let chat_cases = [
        (json!({"messages": "hi"}), "messages"),
        (json!({"messages": []}), "messages"),
        (json!({"messages": [{"role": "robot", "content": "x"}]}), "messages[0].role"),
        (json!({"messages": [{"role": "user", "content": 5}]}), "messages[0].content"),
        (chat(json!({"temperature": 3})), "temperature"),
        (chat(json!({"temperature": "hot"})), "temperature"),
        (chat(json!({"top_p": 0})), "top_p"),
        (chat(json!({"n": 0})), "n"),
        (chat(json!({"n": 1000})), "n"),
        (chat(json!({"max_tokens": 0})), "max_tokens"),
        (chat(json!({"max_tokens": 100000})), "max_tokens"),
        (chat(json!({"top_logprobs": 5})), "top_logprobs"),
        (chat(json!({"logprobs": true, "top_logprobs": 21})), "top_logprobs"),
        (chat(json!({"logprobs": true, "top_logprobs": 1_000_000})), "top_logprobs"),
        (chat(json!({"presence_penalty": -3})), "presence_penalty"),
        (chat(json!({"frequency_penalty": 9})), "frequency_penalty"),
        (chat(json!({"logit_bias": {"999999": 1}})), "logit_bias"),
        (chat(json!({"stop": ["a", "b", "c", "d", "e"]})), "stop"),
        (chat(json!({"response_format": {"type": "yaml"}})), "response_format.type"),
        (chat(json!({"tool_choice": "required"})), "tool_choice"),
        (chat(json!({"stream_options": {"include_usage": "yes"}})), "stream_options.include_usage"),
    ];
    let long = "word ".repeat(400);
    let chat_cases = chat_cases
        .into_iter()
        .chain([(json!({"messages": [{"role": "user", "content": long}]}), "messages")]);
    for (body, param) in chat_cases {
        for stream in [false, true] {
            let mut body = body.clone();
            body["stream"] = json!(stream);
            let (status, r) = server.post("/v1/chat/completions", body.clone()).await;
            assert_openai_error(status, &r, 400, param);
        }
    }
    let completion_cases = [
        (json!({"prompt": "Hi", "echo": true}), "echo"),
        (json!({"prompt": "Hi", "suffix": "end"}), "suffix"),
        (json!({"prompt": "Hi", "logprobs": 6}), "logprobs"),
        (json!({"prompt": "Hi", "best_of": 3}), "best_of"),
        (json!({"prompt": []}), "prompt"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": [1, 999999]}), "prompt"),
        (json!({"prompt": {"text": "Hi"}}), "prompt"),
        (json!({"prompt": "Hi", "max_tokens": 1000}), "max_tokens"),
    ];
    for (body, param) in completion_cases {
        let (status, r) = server.post("/v1/completions", body.clone()).await;
        assert_openai_error(status, &r, 400, param);
    }
    // Malformed JSON and oversized bodies.
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/chat/completions", server.base))
        .header("content-type", "application/json")
        .body("{\"messages\":")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    let big = json!({"prompt": "x".repeat(2_100_000)});
    let r = client.post(format!("{}/v1/completions", server.base)).json(&big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    server.wait_idle().await;
    server.assert_answers().await;
}

#[tokio::test]
async fn chat_templates_render_once_with_one_bos_and_hostile_ones_are_bounded() {
    let server = Server::start(&[], &[]).await;
    let (status, r) = server.post("/chat_tokenize", chat(json!({}))).await;
    assert_eq!(status, 200, "{r}");
    let text = r["templated_text"].as_str().unwrap();
    assert_eq!(
        text,
        "<s><|system|>\nBe brief.<|eot|>\n<|user|>\nHello there<|eot|>\n<|assistant|>\n"
    );
    let tokens = r["tokenize_response"].as_array().unwrap();
    assert_eq!(tokens.iter().filter(|t| t["id"] == 1).count(), 1, "one BOS: {r}");
    assert_eq!(tokens[0]["id"], 1);

    let looping = "{% for i in range(1000000000) %}{{ i }}{% endfor %}";
    let hostile = Server::start(&["--chat-template", looping], &[]).await;
    let started = Instant::now();
    let (status, r) = hostile.post("/v1/chat/completions", chat(json!({}))).await;
    assert_openai_error(status, &r, 400, "messages");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded");
    let raising = "{{ raise_exception('Only user and assistant roles are supported!') }}";
    let strict = Server::start(&["--chat-template", raising], &[]).await;
    let (status, r) = strict.post("/v1/chat/completions", chat(json!({}))).await;
    assert_openai_error(status, &r, 400, "messages");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Only user and assistant roles are supported!"),
        "{r}"
    );
    hostile.assert_answers().await;
}

#[tokio::test]
async fn api_key_guards_openai_routes_with_openai_errors() {
    let server = Server::start(&["--api-key", "s3cret"], &[]).await;
    let client = reqwest::Client::new();
    for (path, body) in [
        ("/v1/chat/completions", chat(json!({}))),
        ("/v1/completions", json!({"prompt": "Hi", "max_tokens": 2})),
    ] {
        let url = format!("{}{path}", server.base);
        let r = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_api_key", "{e}");
        let r = client.post(&url).bearer_auth("s3cret").json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} with the key");
    }
    assert_eq!(reqwest::get(format!("{}/v1/models", server.base)).await.unwrap().status(), 200);
}

#[tokio::test]
async fn odd_but_valid_openai_requests_never_break_the_server() {
    let server = Server::start(&[], &[]).await;
    let user = |content: Value| json!([{"role": "user", "content": content}]);
    let odd = [
        json!({"messages": user(json!("\u{0}\u{1}\u{fffd}\u{10ffff}")), "max_tokens": 3}),
        json!({"messages": user(json!("😀".repeat(40))), "max_tokens": 2}),
        json!({"messages": user(json!("{{ raise_exception('x') }}{% for %}")), "max_tokens": 2}),
        json!({"messages": user(json!([{"type": "text", "text": ""}])), "max_tokens": 2}),
        json!({"messages": user(json!("Hi")), "max_tokens": 4294967296u64}),
        json!({"messages": user(json!("Hi")), "max_tokens": -1}),
        json!({"messages": user(json!("Hi")), "max_tokens": 2, "seed": -9223372036854775808i64}),
        json!({"messages": user(json!("Hi")), "max_tokens": 2, "stop": ["", "x".repeat(10_000)]}),
        json!({"messages": user(json!("Hi")), "max_tokens": 2, "top_k": 2147483647}),
        json!({"messages": user(json!("Hi")), "max_tokens": 2, "n": null, "stream": null, "tools": []}),
        json!({"messages": user(json!("Hi")), "max_tokens": 2, "tool_choice": "auto"}),
        json!({"messages": user(json!("Hi")), "max_tokens": 2, "logprobs": true, "top_logprobs": 20}),
        json!({"messages": user(json!("Hi")), "max_tokens": 2, "chat_template_kwargs": {"messages": 1}}),
        json!({"messages": user(json!("Hi")), "max_tokens": 2, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
        json!({"messages": [{"role": "assistant", "content": null}], "max_tokens": 2}),
        json!({"messages": user(json!("Hi")), "unknown_field": {"deep": [1, 2]}, "max_tokens": 2}),
        json!({"messages": user(json!("Hi")), "max_tokens": 2, "n": 8, "stream": true}),
        json!([1, 2, 3]),
        json!(null),
    ];
    for body in odd {
        for stream in [false, true] {
            let mut body = body.clone();
            if body.is_object() && body.get("stream").is_none() {
                body["stream"] = json!(stream);
            }
            let (status, r) = server.post("/v1/chat/completions", body.clone()).await;
            assert!(status < 500, "{body}: {status} {r}");
            let (status, r) = server.post("/chat_tokenize", body.clone()).await;
            assert!(status < 500, "{body}: {status} {r}");
            if let Some(messages) = body.get("messages") {
                let mut completion = body.clone();
                completion["prompt"] = messages[0]["content"].clone();
                let (status, r) = server.post("/v1/completions", completion).await;
                assert!(status < 500, "{body}: {status} {r}");
            }
        }
    }
    server.wait_idle().await;
    server.assert_answers().await;
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 16},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": false}}})
}

fn time_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}},
            "required": ["zone"], "additionalProperties": false}}})
}

/// Tool calls reassembled from a stream's deltas, as the SDKs do it.
fn reassemble(chunks: &[Value]) -> Vec<(String, String, String)> {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for delta in chunks.iter().flat_map(|c| c["choices"].as_array().unwrap()).map(|c| &c["delta"]) {
        for d in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = d["index"].as_u64().unwrap() as usize;
            if let Some(id) = d["id"].as_str() {
                assert_eq!(i, calls.len(), "calls start in index order");
                assert_eq!(d["type"], "function");
                let name = d["function"]["name"].as_str().unwrap().to_string();
                calls.push((id.to_string(), name, String::new()));
            }
            if let Some(fragment) = d["function"]["arguments"].as_str() {
                calls[i].2.push_str(fragment);
            }
        }
    }
    calls
}

#[tokio::test]
async fn forced_tool_choices_return_valid_calls_whole_and_streamed() {
    let server = Server::start(&[], &[]).await;
    let validators: std::collections::HashMap<&str, jsonschema::Validator> =
        [("get_weather", weather_tool()), ("get_time", time_tool())]
            .into_iter()
            .map(|(name, t)| {
                (name, jsonschema::validator_for(&t["function"]["parameters"]).unwrap())
            })
            .collect();
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    for (choice, parallel) in [(json!("required"), true), (json!("required"), false), (named, true)]
    {
        for seed in 0..4 {
            let body = chat(json!({
                "tools": [weather_tool(), time_tool()], "tool_choice": choice, "parallel_tool_calls": parallel,
                "max_tokens": 200, "temperature": 1.0, "seed": seed,
            }));
            let (status, r) = server.post("/v1/chat/completions", body.clone()).await;
            assert_eq!(status, 200, "{r}");
            let c = &r["choices"][0];
            let calls = c["message"]["tool_calls"].as_array().unwrap();
            assert!(!calls.is_empty());
            // A random model may keep adding parallel calls until the token limit; then
            // the last call is cut off and the reason is `length`.
            let complete = match c["finish_reason"].as_str() {
                Some("tool_calls") => calls.len(),
                Some("length") if parallel => calls.len() - 1,
                other => panic!("{choice} seed {seed}: {other:?} {r}"),
            };
            if !parallel {
                assert_eq!(calls.len(), 1);
            }
            for call in &calls[..complete] {
                assert!(call["id"].as_str().unwrap().starts_with("call_"));
                assert_eq!(call["type"], "function");
                let name = call["function"]["name"].as_str().unwrap();
                if choice.is_object() {
                    assert_eq!(name, "get_time");
                }
                let args =
                    call["function"]["arguments"].as_str().expect("arguments is a JSON string");
                let args: Value = serde_json::from_str(args).unwrap();
                assert!(validators[name].is_valid(&args), "{name} {args}");
            }
            // Streamed: the same calls, from OpenAI's deltas, and no raw syntax as content.
            let mut streamed = body.clone();
            streamed["stream"] = json!(true);
            let (_, events) = server.sse("/v1/chat/completions", streamed).await;
            let chunks = parse_chunks(&events);
            let got = reassemble(&chunks);
            let want: Vec<(String, String)> = calls
                .iter()
                .map(|c| {
                    (
                        c["function"]["name"].as_str().unwrap().into(),
                        c["function"]["arguments"].as_str().unwrap().into(),
                    )
                })
                .collect();
            assert_eq!(
                got.iter().map(|(_, n, a)| (n.clone(), a.clone())).collect::<Vec<_>>(),
                want
            );
            assert_eq!(streamed_text(&chunks, 0), "", "no content beside forced calls");
            let reasons: Vec<&Value> = chunks
                .iter()
                .flat_map(|c| c["choices"].as_array().unwrap())
                .map(|c| &c["finish_reason"])
                .filter(|f| !f.is_null())
                .collect();
            assert_eq!(reasons, [&c["finish_reason"]]);
        }
    }
    // `none`: the tools reach the template, the answer is text.
    let body = chat(json!({"tools": [weather_tool()], "tool_choice": "none"}));
    let (status, r) = server.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{r}");
    assert!(r["choices"][0]["message"].get("tool_calls").is_none(), "{r}");
    assert_ne!(r["choices"][0]["finish_reason"], "tool_calls");
    // Bad tool definitions name the field.
    let cases = [
        (
            json!({"tools": [weather_tool()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (json!({"tools": [weather_tool(), weather_tool()]}), "tools[1].function.name"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "x", "parameters": [1]}}]}),
            "tools[0].function.parameters",
        ),
        (json!({"tools": [weather_tool()], "tool_choice": "sometimes"}), "tool_choice"),
    ];
    for (extra, param) in cases {
        let (status, r) = server.post("/v1/chat/completions", chat(extra.clone())).await;
        assert_openai_error(status, &r, 400, param);
    }
    server.wait_idle().await;
}

#[tokio::test]
async fn clients_leaving_openai_streams_leak_no_blocks() {
    let server = Server::start(&[], &[]).await;
    let client = reqwest::Client::new();
    let mut streams = Vec::new();
    for i in 0..8 {
        let body = chat(
            json!({"n": 2, "max_tokens": 200, "ignore_eos": true, "stream": true, "seed": i, "temperature": 1.0}),
        );
        let r = client
            .post(format!("{}/v1/chat/completions", server.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    let body = json!({"prompt": ["a", "b"], "max_tokens": 200, "ignore_eos": true, "stream": true});
    let r =
        client.post(format!("{}/v1/completions", server.base)).json(&body).send().await.unwrap();
    streams.push(r);
    // Read a little of each, then hang up.
    for r in &mut streams {
        let first = r.chunk().await.unwrap();
        assert!(first.is_some_and(|c| !c.is_empty()));
    }
    drop(streams);
    server.wait_idle().await;
    server.assert_answers().await;
}

/// `x-request-id` is echoed (or generated) on every route and names the OpenAI response.
#[tokio::test]
async fn request_ids_are_echoed_and_name_openai_responses() {
    let server = Server::start(&[], &[]).await;
    let client = reqwest::Client::new();
    let send = |path: &str, body: Value, id: Option<&str>| {
        let mut r = client.post(format!("{}{path}", server.base)).json(&body);
        if let Some(id) = id {
            r = r.header("x-request-id", id);
        }
        r.send()
    };
    let r = send("/v1/chat/completions", chat(json!({})), Some("req-42.a")).await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-42.a");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], "chatcmpl-req-42.a", "{body}");
    let r = send("/v1/completions", json!({"prompt": "Hi", "max_tokens": 2}), Some("c-1"))
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "cmpl-c-1");

    // Generated when absent or not a plain token; on errors and other families too.
    let tgi = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}});
    for id in [None, Some("has space")] {
        let r = send("/generate", tgi.clone(), id).await.unwrap();
        let echoed = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(echoed.len() == 32 && echoed.bytes().all(|b| b.is_ascii_hexdigit()), "{echoed}");
    }
    let r = send("/generate", json!({"inputs": ""}), Some("bad-1")).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), &r.headers()["x-request-id"]),
        (422, &"bad-1".parse().unwrap())
    );
}
