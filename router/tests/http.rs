//! The real `rill` binary on the tiny `llama` fixture model, over HTTP.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, metric};
use futures::StreamExt;
use serde_json::{Value, json};

fn reference_greedy() -> (String, Vec<u64>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../integration-tests/fixtures/models/llama/reference.json"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let p = &r["prompts"][0];
    let ids = p["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    (p["text"].as_str().unwrap().to_string(), ids)
}

#[tokio::test]
async fn generate_gives_transformers_greedy_tokens_with_details() {
    let server = Server::start(&[], &[]).await;
    let (prompt, greedy) = reference_greedy();
    let params = json!({"max_new_tokens": 16, "details": true, "ignore_eos": true});
    let (status, body) =
        server.post("/generate", json!({"inputs": prompt, "parameters": params})).await;
    assert_eq!(status, 200, "{body}");
    let details = &body["details"];
    assert_eq!(details["finish_reason"], "length");
    assert_eq!(details["generated_tokens"], 16);
    let ids: Vec<u64> =
        details["tokens"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, greedy);
    let text: String =
        details["tokens"].as_array().unwrap().iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(body["generated_text"], text);

    // TGI compat route answers a list; return_full_text prepends the prompt.
    let params = json!({"max_new_tokens": 16, "ignore_eos": true, "return_full_text": true});
    let (status, list) = server.post("/", json!({"inputs": prompt, "parameters": params})).await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["generated_text"], format!("{prompt}{text}"));
}

#[tokio::test]
async fn concurrent_streams_match_their_solo_text() {
    let server = Server::start(&[], &[]).await;
    let prompts: Vec<String> =
        (0..32).map(|i| format!("Request {i}: the quick brown fox")).collect();
    let body = |p: &str| json!({"inputs": p, "parameters": {"max_new_tokens": 20, "ignore_eos": true, "details": true}});
    let mut solo = Vec::new();
    for p in &prompts {
        let (_, events) = server.stream(body(p)).await;
        solo.push(events.last().unwrap()["generated_text"].clone());
    }
    let together = futures::future::join_all(prompts.iter().map(|p| server.stream(body(p)))).await;
    for ((status, events), want) in together.iter().zip(&solo) {
        assert_eq!(*status, 200);
        assert_eq!(events.len(), 20);
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["index"], i as u64 + 1);
            let last = i + 1 == events.len();
            assert_eq!(e["generated_text"].is_null(), !last);
        }
        let last = events.last().unwrap();
        assert_eq!(&last["generated_text"], want);
        assert_eq!(last["details"]["finish_reason"], "length");
        assert_eq!(last["details"]["generated_tokens"], 20);
        let streamed: String =
            events.iter().map(|e| e["token"]["text"].as_str().unwrap()).collect();
        assert_eq!(&Value::String(streamed), want);
    }
}

#[tokio::test]
async fn stop_sequence_spanning_tokens_ends_the_text() {
    let server = Server::start(&[], &[]).await;
    let (prompt, _) = reference_greedy();
    let params = json!({"max_new_tokens": 16, "ignore_eos": true, "details": true});
    let (_, full) = server.post("/generate", json!({"inputs": prompt, "parameters": params})).await;
    let tokens = full["details"]["tokens"].as_array().unwrap();
    // A stop string made of the end of token 5 and the start of token 6.
    let (a, b) = (tokens[4]["text"].as_str().unwrap(), tokens[5]["text"].as_str().unwrap());
    assert!(!a.is_empty() && !b.is_empty());
    let stop = format!("{}{}", a.chars().last().unwrap(), b.chars().next().unwrap());
    let expected: String =
        tokens[..6].iter().map(|t| t["text"].as_str().unwrap()).collect::<String>();
    let expected = &expected[..expected.find(&stop).unwrap() + stop.len()];
    let params = json!({"max_new_tokens": 16, "ignore_eos": true, "details": true, "stop": [stop]});
    let (status, body) =
        server.post("/generate", json!({"inputs": prompt, "parameters": params})).await;
    assert_eq!(status, 200);
    assert_eq!(body["details"]["finish_reason"], "stop_sequence");
    assert_eq!(body["generated_text"], expected);
}

#[tokio::test]
async fn bad_requests_get_the_right_status_and_error_type() {
    let server = Server::start(&["--max-stop-sequences", "2"], &[]).await;
    let cases = [
        (json!({"inputs": "Hi", "parameters": {"temperature": 0.0}}), 422, "validation"),
        (json!({"inputs": "Hi", "parameters": {"top_p": 1.5}}), 422, "validation"),
        (json!({"inputs": "Hi", "parameters": {"stop": ["a", "b", "c"]}}), 422, "validation"),
        (json!({"inputs": "Hi", "parameters": {"max_new_tokens": 100000}}), 422, "validation"),
        (json!({"inputs": ""}), 422, "validation"),
        (json!({"inputs": 5}), 422, "validation"),
        (json!({"nothing": true}), 422, "validation"),
        // Found by schemathesis: serde would read a struct from an array, field by field.
        (json!({"inputs": "Hi", "parameters": [null, null]}), 422, "validation"),
        // No LoRA adapters are served: refused, not silently ignored.
        (json!({"inputs": "Hi", "parameters": {"adapter_id": "my-lora"}}), 422, "validation"),
        // Found by the property tests: beyond f32, so infinite.
        (json!({"inputs": "Hi", "parameters": {"temperature": 1e39}}), 422, "validation"),
    ];
    for (body, status, error_type) in cases {
        for path in ["/generate", "/generate_stream"] {
            let (got, err) = server.post(path, body.clone()).await;
            assert_eq!(got, status, "{path} {body}: {err}");
            assert_eq!(err["error_type"], error_type, "{path} {body}");
            assert!(err["error"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
    // A stream refused before its first token answers with the real status.
    let (status, _) =
        server.stream(json!({"inputs": "Hi", "parameters": {"decoder_input_details": true}})).await;
    assert_eq!(status, 422);

    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/generate", server.base))
        .header("content-type", "application/json")
        .body("{\"inputs\":")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let big = "x".repeat(2_100_000);
    let r = client
        .post(format!("{}/generate", server.base))
        .json(&json!({"inputs": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // The server is unharmed.
    server.assert_answers().await;
}

#[tokio::test]
async fn a_full_server_answers_429() {
    let server = Server::start(&["--max-concurrent-requests", "1"], &[]).await;
    let long =
        json!({"inputs": "Hello", "parameters": {"max_new_tokens": 200, "ignore_eos": true}});
    let client = reqwest::Client::new();
    let first =
        client.post(format!("{}/generate_stream", server.base)).json(&long).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let (status, err) = server.post("/generate", json!({"inputs": "Hi"})).await;
    assert_eq!(status, 429);
    assert_eq!(err["error_type"], "overloaded");
    drop(first);
}

#[tokio::test]
async fn tokenize_and_info() {
    let server = Server::start(&[], &[]).await;
    let (status, tokens) = server.post("/tokenize", json!({"inputs": "The quick brown fox"})).await;
    assert_eq!(status, 200);
    let tokens = tokens.as_array().unwrap();
    assert_eq!(tokens[0]["id"], 1, "BOS first");
    let text: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(text, "The quick brown fox");
    let info: Value =
        reqwest::get(format!("{}/info", server.base)).await.unwrap().json().await.unwrap();
    assert_eq!(info["max_total_tokens"], 256);
    assert_eq!(info["max_input_tokens"], 255);
    assert_eq!(info["router"], "rill");
}

/// Machines without AVX-512 take the AVX2 kernels, and those without AVX2 the scalar
/// ones, which implement the same arithmetic (`RILL_CPU_ISA` caps the choice, so this
/// runs every path the test machine has): the text and every logprob must not change.
#[tokio::test]
async fn every_cpu_instruction_set_generates_the_same_text() {
    let body = json!({"inputs": "Hello there",
        "parameters": {"max_new_tokens": 12, "ignore_eos": true, "details": true, "top_n_tokens": 2}});
    let best = Server::start(&[], &[]).await.post("/generate", body.clone()).await;
    for isa in ["avx2", "scalar"] {
        let capped = Server::start(&[], &[("RILL_CPU_ISA", isa)]).await;
        assert_eq!(capped.post("/generate", body.clone()).await, best, "RILL_CPU_ISA={isa}");
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let mut server = Server::start(&[], &[]).await;
    let client = reqwest::Client::new();
    let body =
        json!({"inputs": "Hello", "parameters": {"max_new_tokens": 250, "ignore_eos": true}});
    let stream =
        client.post(format!("{}/generate_stream", server.base)).json(&body).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut events = 0;
    let mut body = stream.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    events += text.matches("data:").count();
    assert_eq!(events, 250, "the in-flight stream completed");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn metrics_cover_tgi_set_and_kv_blocks() {
    let server = Server::start(&[], &[]).await;
    let body = json!({"inputs": "Hello", "parameters": {"max_new_tokens": 5, "ignore_eos": true}});
    for _ in 0..3 {
        assert_eq!(server.post("/generate", body.clone()).await.0, 200);
        // Regression: the gauge was published on the engine's next loop, after the response,
        // so a loaded machine could read the finished request's blocks as still in use.
        assert_eq!(metric(&server, "rill_kv_blocks_used").await, Some(0.0));
    }
    assert_eq!(server.post("/generate", json!({"inputs": ""})).await.0, 422);
    let text =
        reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
    for name in [
        "rill_request_count 4",
        "rill_request_success 3",
        "rill_request_failure{err=\"validation\"} 1",
        "rill_request_duration_bucket",
        "rill_request_validation_duration_bucket",
        "rill_request_queue_duration_bucket",
        "rill_request_inference_duration_bucket",
        "rill_request_mean_time_per_token_duration_bucket",
        "rill_request_time_to_first_token_duration_bucket",
        "rill_request_inter_token_latency_duration_bucket",
        "rill_request_input_length_bucket",
        "rill_request_generated_tokens_bucket",
        "rill_batch_forward_duration_bucket{method=\"prefill\"",
        "rill_batch_forward_duration_bucket{method=\"decode\"",
        "rill_batch_next_size_bucket",
        "rill_queue_size",
        "rill_batch_current_size",
        "rill_kv_blocks_total",
        "rill_preemptions",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert_eq!(metric(&server, "rill_kv_blocks_used").await, Some(0.0));
    assert!(metric(&server, "rill_kv_blocks_total").await.unwrap() > 0.0);
    assert_eq!(metric(&server, "rill_kv_cache_usage").await, Some(0.0));
    // Every exported series says what it is.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        let help = format!("# HELP {name} ");
        assert!(text.lines().any(|l| l.starts_with(&help)), "{name} has no HELP text:\n{text}");
    }
}

/// Start 64 streams, drop half of them after a few tokens: every block comes
/// back and the server keeps answering.
#[tokio::test]
async fn disconnect_storm_leaks_no_blocks() {
    let server = Server::start(&[], &[]).await;
    let client = reqwest::Client::new();
    let body = json!({"inputs": "Tell me a long story", "parameters": {"max_new_tokens": 240, "ignore_eos": true}});
    let streams = futures::future::join_all(
        (0..64).map(|_| client.post(format!("{}/generate_stream", server.base)).json(&body).send()),
    )
    .await;
    let mut kept = Vec::new();
    for (i, r) in streams.into_iter().enumerate() {
        let mut events = r.unwrap().bytes_stream();
        events.next().await.unwrap().unwrap();
        if i % 2 == 0 {
            drop(events); // the client goes away after its first token
        } else {
            kept.push(events);
        }
    }
    // The others read to the end.
    for mut events in kept {
        while events.next().await.is_some() {}
    }
    server.wait_idle().await;
    // The dropped half stopped early: far fewer tokens ran than 64 full requests.
    let ran = metric(&server, "rill_batch_next_tokens_sum").await.unwrap();
    let full = 64.0 * (6.0 + 240.0);
    assert!(ran < 0.75 * full, "{ran} tokens ran; 64 complete requests are {full}");
    server.assert_answers().await;
}

#[tokio::test]
async fn openapi_document_and_swagger_ui_are_served_offline() {
    let server = Server::start(&[], &[]).await;
    let doc: Value = reqwest::get(format!("{}/api-doc/openapi.json", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = ["/", "/generate", "/generate_stream", "/tokenize", "/health", "/info", "/metrics"];
    let openai = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/chat_tokenize"];
    let hf = ["/models/{model_id}", "/models/{model_id}/{task}", "/pipeline/{task}"];
    let kserve = [
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model_name}",
        "/v2/models/{model_name}/ready",
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
        "/v2/models/{model_name}/generate",
        "/v2/models/{model_name}/generate_stream",
    ];
    for path in paths.into_iter().chain(openai).chain(hf).chain(kserve) {
        assert!(doc["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    let params = &doc["components"]["schemas"]["GenerateParameters"]["properties"];
    for field in ["max_new_tokens", "temperature", "top_p", "stop", "details", "truncate", "seed"] {
        assert!(params[field].is_object(), "{field} missing from GenerateParameters");
    }
    let chat = &doc["components"]["schemas"]["ChatCompletionRequest"]["allOf"];
    assert!(chat[1]["properties"]["messages"].is_object(), "{chat}");
    assert_eq!(chat[0]["$ref"], "#/components/schemas/SamplingFields");
    let sampling = &doc["components"]["schemas"]["SamplingFields"]["properties"];
    assert!(sampling["temperature"].is_object() && sampling["logit_bias"].is_object());
    let tensor = &doc["components"]["schemas"]["InputTensor"]["properties"];
    assert!(tensor["datatype"].is_object() && tensor["shape"].is_object(), "{tensor}");
    let page = reqwest::get(format!("{}/docs/", server.base)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Swagger UI"));
}

#[tokio::test]
async fn api_key_guards_generation_routes_only() {
    let server =
        Server::start(&["--api-key", "s3cret", "--cors-allow-origin", "https://chat.example"], &[])
            .await;
    let client = reqwest::Client::new();
    let body = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}});
    for path in ["/generate", "/generate_stream", "/"] {
        let url = format!("{}{path}", server.base);
        let r = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without a key");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error_type"], "authentication");
        let r = client.post(&url).bearer_auth("wrong!").json(&body).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong key");
        let r = client.post(&url).bearer_auth("s3cret").json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} with the key");
    }
    // Health, info, metrics and tokenize stay open.
    assert_eq!(reqwest::get(format!("{}/health", server.base)).await.unwrap().status(), 200);
    assert_eq!(server.post("/tokenize", json!({"inputs": "Hi"})).await.0, 200);
    // CORS for the configured origin only.
    let allowed = client
        .get(format!("{}/info", server.base))
        .header("Origin", "https://chat.example")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://chat.example");
    let other = client
        .get(format!("{}/info", server.base))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn top_n_tokens_lists_the_most_likely_alternatives() {
    let server = Server::start(&[], &[]).await;
    let (prompt, _) = reference_greedy();
    let params =
        json!({"max_new_tokens": 6, "ignore_eos": true, "details": true, "top_n_tokens": 3});
    let (status, body) =
        server.post("/generate", json!({"inputs": prompt, "parameters": params})).await;
    assert_eq!(status, 200, "{body}");
    let tokens = body["details"]["tokens"].as_array().unwrap();
    let top = body["details"]["top_tokens"].as_array().unwrap();
    assert_eq!(top.len(), tokens.len());
    for (token, alternatives) in tokens.iter().zip(top) {
        let alternatives = alternatives.as_array().unwrap();
        assert_eq!(alternatives.len(), 3);
        // Greedy: the chosen token is the most likely one, with the same logprob.
        assert_eq!(alternatives[0]["id"], token["id"]);
        assert_eq!(alternatives[0]["logprob"], token["logprob"]);
        let lps: Vec<f64> = alternatives.iter().map(|a| a["logprob"].as_f64().unwrap()).collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]) && lps.iter().all(|&l| l <= 0.0), "{lps:?}");
    }
    // Streams carry each token's alternatives.
    let (_, events) = server.stream(json!({"inputs": prompt, "parameters": params})).await;
    for (event, alternatives) in events.iter().zip(top) {
        assert_eq!(&event["top_tokens"], alternatives);
    }
    // Without top_n_tokens the field is omitted from details.
    let params = json!({"max_new_tokens": 2, "details": true});
    let (_, body) = server.post("/generate", json!({"inputs": prompt, "parameters": params})).await;
    assert!(body["details"].get("top_tokens").is_none());
}

/// `decoder_input_details`: every prompt token with its logprob (the first has
/// none), the same whether the prompt is prefilled whole or in 4-token chunks.
#[tokio::test]
async fn decoder_input_details_report_prompt_logprobs() {
    let (prompt, _) = reference_greedy();
    let params = json!({"max_new_tokens": 3, "decoder_input_details": true});
    let body = json!({"inputs": prompt, "parameters": params});
    let whole = Server::start(&[], &[]).await;
    let (status, a) = whole.post("/generate", body.clone()).await;
    assert_eq!(status, 200, "{a}");
    let (_, tokens) = whole.post("/tokenize", json!({"inputs": prompt})).await;
    let prefill = a["details"]["prefill"].as_array().unwrap();
    let ids: Vec<&Value> = prefill.iter().map(|t| &t["id"]).collect();
    let want: Vec<&Value> = tokens.as_array().unwrap().iter().map(|t| &t["id"]).collect();
    assert_eq!(ids, want);
    assert!(prefill[0]["logprob"].is_null());
    assert!(prefill[1..].iter().all(|t| t["logprob"].as_f64().is_some_and(|l| l <= 0.0)));

    let chunked = Server::start(&["--max-batch-prefill-tokens", "4"], &[]).await;
    let (_, b) = chunked.post("/generate", body).await;
    assert_eq!(a["details"]["prefill"], b["details"]["prefill"]);
    assert_eq!(a["generated_text"], b["generated_text"]);
}

/// The port opens before the model is loaded: 503 until it is ready.
#[tokio::test]
async fn loading_answers_503_with_an_estimate() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/models/llama-1.1b");
    // ~1.1B random bf16 weights take seconds to generate: long enough to look.
    let server = Server::spawn(&["--model-id", config, "--load-format", "dummy"], &[]);
    let start = Instant::now();
    let health = loop {
        if let Ok(r) = reqwest::get(format!("{}/health", server.base)).await {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "port never opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(health.status(), 503);
    // Live (the process serves HTTP) while not ready.
    let get = |path: &'static str| reqwest::get(format!("{}{path}", server.base));
    assert_eq!(get("/v2/health/live").await.unwrap().status(), 200);
    assert_eq!(get("/v2/health/ready").await.unwrap().status(), 503);
    let (status, err) = server.post("/generate", json!({"inputs": "Hi"})).await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error_type"], "loading");
    assert_eq!(err["error"], "Model is loading");
    assert!(err["estimated_time"].as_f64().is_some_and(|t| t > 0.0), "{err}");
    let (status, _) = server.stream(json!({"inputs": "Hi"})).await;
    assert_eq!(status, 503);
}

/// Odd but well-formed requests get an answer (never a 5xx) and leave the server
/// healthy and leak-free.
#[tokio::test]
async fn odd_requests_never_break_the_server() {
    let server = Server::start(&[], &[]).await;
    let odd = [
        json!({"inputs": "\u{0}\u{1}\u{fffd}\u{10ffff}", "parameters": {"max_new_tokens": 3}}),
        json!({"inputs": "😀".repeat(200), "parameters": {"max_new_tokens": 2, "truncate": 5}}),
        json!({"inputs": "Hi", "parameters": {"max_new_tokens": -1}}),
        json!({"inputs": "Hi", "parameters": {"max_new_tokens": 4294967296u64}}),
        json!({"inputs": "Hi", "parameters": {"top_k": 2147483647, "max_new_tokens": 2}}),
        json!({"inputs": "Hi", "parameters": {"temperature": 1e30, "max_new_tokens": 2}}),
        json!({"inputs": "Hi", "parameters": {"stop": [""], "max_new_tokens": 2}}),
        json!({"inputs": "Hi", "parameters": {"stop": ["x".repeat(10_000)], "max_new_tokens": 2}}),
        json!({"inputs": "Hi", "parameters": {"seed": 18446744073709551615u64, "max_new_tokens": 2}}),
        json!({"inputs": "Hi", "parameters": {"grammar": {"type": "regex", "value": "("}, "max_new_tokens": 2}}),
        json!({"inputs": "Hi", "parameters": null}),
        json!({"inputs": "Hi", "parameters": {"unknown_field": true, "max_new_tokens": 2}}),
        json!({"inputs": "Hi", "stream": "yes"}),
        json!([1, 2, 3]),
    ];
    for body in odd {
        for path in ["/generate", "/generate_stream", "/", "/tokenize"] {
            let (status, _) = server.post(path, body.clone()).await;
            assert!(status < 500, "{path} {body}: {status}");
        }
    }
    server.wait_idle().await;
    server.assert_answers().await;
}

/// A full server refuses with 429 before it tokenizes or compiles anything (TGI's
/// rule): a request whose grammar would not compile is told 429, not 422, while the
/// only slot is taken.
#[tokio::test]
async fn a_full_server_refuses_before_validating() {
    let server = Server::start(&["--max-concurrent-requests", "1"], &[]).await;
    let long =
        json!({"inputs": "Hello", "parameters": {"max_new_tokens": 240, "ignore_eos": true}});
    let stream = reqwest::Client::new()
        .post(format!("{}/generate_stream", server.base))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let bad = json!({"inputs": "Hi", "parameters": {"grammar": {"type": "regex", "value": "("}}});
    let (status, err) = server.post("/generate", bad.clone()).await;
    assert_eq!((status, err["error_type"].as_str()), (429, Some("overloaded")), "{err}");
    let _ = stream.text().await.unwrap();
    let (status, err) = server.post("/generate", bad).await;
    assert_eq!((status, err["error_type"].as_str()), (422, Some("validation")), "{err}");
}
