//! Sampling, seeds, best_of, watermark and grammars through the real binary.

mod common;

use common::{Server, metric};
use futures::future::join_all;
use rill_proto::TokenId;
use serde_json::{Value, json};

fn token_ids(body: &Value) -> Vec<u32> {
    body["details"]["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no tokens in {body}"))
        .iter()
        .map(|t| t["id"].as_u64().unwrap() as u32)
        .collect()
}

fn sampled(seed: Option<u64>, max_new_tokens: u32) -> Value {
    let mut p = json!({
        "do_sample": true, "temperature": 0.8, "top_k": 60, "top_p": 0.95,
        "repetition_penalty": 1.2, "frequency_penalty": 0.3,
        "max_new_tokens": max_new_tokens, "ignore_eos": true, "details": true,
    });
    if let Some(s) = seed {
        p["seed"] = json!(s);
    }
    json!({"inputs": "Once upon a time", "parameters": p})
}

#[tokio::test]
async fn a_seed_gives_the_same_text_alone_in_a_crowd_and_after_preemption() {
    let server = Server::start(&[], &[]).await;
    let (status, alone) = server.post("/generate", sampled(Some(42), 40)).await;
    assert_eq!(status, 200, "{alone}");
    assert_eq!(alone["details"]["seed"], 42);
    let want = token_ids(&alone);

    // The same request among 15 others with their own seeds.
    let mut requests: Vec<Value> = (0..15).map(|i| sampled(Some(1000 + i), 40)).collect();
    requests.insert(7, sampled(Some(42), 40));
    let answers = join_all(requests.into_iter().map(|r| server.post("/generate", r))).await;
    assert!(answers.iter().all(|(s, _)| *s == 200));
    assert_eq!(token_ids(&answers[7].1), want, "seed 42 under load");
    let distinct: std::collections::HashSet<Vec<u32>> =
        answers.iter().map(|(_, b)| token_ids(b)).collect();
    assert!(distinct.len() > 10, "different seeds should mostly differ");

    // A KV cache of 16 blocks cannot hold eight such sequences: they preempt
    // each other and are recomputed, and the text stays the same.
    let small = Server::start(&["--max-batch-total-tokens", "256"], &[]).await;
    let mut requests: Vec<Value> = (0..7).map(|i| sampled(Some(2000 + i), 40)).collect();
    requests.push(sampled(Some(42), 40));
    let answers = join_all(requests.into_iter().map(|r| small.post("/generate", r))).await;
    assert!(answers.iter().all(|(s, _)| *s == 200));
    assert!(metric(&small, "rill_preemptions").await.unwrap_or(0.0) > 0.0);
    assert_eq!(token_ids(&answers[7].1), want, "seed 42 after preemption");
    small.wait_idle().await;

    // Streamed, while 15 other sampled requests run: the same tokens.
    let mut body = sampled(Some(42), 40);
    body["parameters"]["details"] = json!(false);
    let others = join_all((0..15).map(|i| server.post("/generate", sampled(Some(3000 + i), 40))));
    let ((status, events), others) = tokio::join!(server.stream(body), others);
    assert_eq!(status, 200);
    assert!(others.iter().all(|(s, _)| *s == 200));
    let streamed: Vec<u32> =
        events.iter().map(|e| e["token"]["id"].as_u64().unwrap() as u32).collect();
    assert_eq!(streamed, want);
    server.wait_idle().await;
}

#[tokio::test]
async fn seeds_are_reported_and_random_when_absent() {
    let server = Server::start(&[], &[]).await;
    let (_, a) = server.post("/generate", sampled(None, 8)).await;
    let (_, b) = server.post("/generate", sampled(None, 8)).await;
    let (sa, sb) = (&a["details"]["seed"], &b["details"]["seed"]);
    assert!(sa.is_u64() && sb.is_u64() && sa != sb, "{sa} {sb}");
    // Greedy requests have no seed.
    let greedy = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 3, "details": true}});
    let (_, g) = server.post("/generate", greedy).await;
    assert_eq!(g["details"]["seed"], Value::Null);
    // TGI: without `parameters` the request samples (and so gets a seed).
    let (status, _) = server.post("/generate", json!({"inputs": "Hi"})).await;
    assert_eq!(status, 200);
    // top_k = 1 sampling is greedy whatever the seed.
    let greedy = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 12, "details": true}});
    let (_, g) = server.post("/generate", greedy).await;
    let k1 = json!({"inputs": "Hi", "parameters": {
        "max_new_tokens": 12, "details": true, "top_k": 1, "seed": 5}});
    let (_, k) = server.post("/generate", k1).await;
    assert_eq!(token_ids(&g), token_ids(&k));
}

#[tokio::test]
async fn best_of_returns_the_highest_mean_logprob_and_the_others() {
    let server = Server::start(&[], &[]).await;
    let body = json!({"inputs": "Once upon a time", "parameters": {
        "best_of": 2, "do_sample": true, "max_new_tokens": 12, "ignore_eos": true,
        "details": true}});
    let (status, r) = server.post("/generate", body).await;
    assert_eq!(status, 200, "{r}");
    let others = r["details"]["best_of_sequences"].as_array().unwrap();
    assert_eq!(others.len(), 1);
    let mean = |tokens: &Value| {
        let t = tokens.as_array().unwrap();
        t.iter().map(|t| t["logprob"].as_f64().unwrap()).sum::<f64>() / t.len() as f64
    };
    assert!(mean(&r["details"]["tokens"]) >= mean(&others[0]["tokens"]));
    assert_eq!(others[0]["generated_tokens"], 12);
    assert!(others[0]["seed"].is_u64() && others[0]["seed"] != r["details"]["seed"]);
    server.wait_idle().await;
}

#[tokio::test]
async fn watermarked_text_is_detected() {
    let server = Server::start(&[], &[]).await;
    let run = |watermark: bool| {
        let body = json!({"inputs": "The", "parameters": {
            "do_sample": true, "seed": 3, "watermark": watermark, "max_new_tokens": 120,
            "ignore_eos": true, "details": true}});
        server.post("/generate", body)
    };
    let ids = |b: &Value| token_ids(b).into_iter().map(TokenId).collect::<Vec<_>>();
    let (_, marked) = run(true).await;
    let (_, plain) = run(false).await;
    let z = |b| rill_backend::sampler::watermark::z_score(&ids(b)).unwrap();
    assert!(z(&marked) > 4.0, "watermarked z = {}", z(&marked));
    assert!(z(&plain) < 4.0, "plain z = {}", z(&plain));
}

/// An order record: nested objects, arrays of objects, enums, required fields,
/// bounded so that every output ends within the fixture model's context.
fn order_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 0, "maximum": 9999},
            "status": {"enum": ["new", "paid", "shipped"]},
            "customer": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 8},
                    "vip": {"type": "boolean"}
                },
                "required": ["name", "vip"],
                "additionalProperties": false
            },
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"},
                        "qty": {"type": "integer", "minimum": 1, "maximum": 99}
                    },
                    "required": ["sku", "qty"],
                    "additionalProperties": false
                },
                "minItems": 1,
                "maxItems": 3
            }
        },
        "required": ["id", "status", "customer", "items"],
        "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false}
    })
}

#[tokio::test]
async fn json_schema_outputs_always_parse_and_validate() {
    let server = Server::start(&[], &[]).await;
    let schema = order_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for batch in (0..50u64).collect::<Vec<_>>().chunks(10) {
        let requests = batch.iter().map(|&seed| {
            let body = json!({"inputs": "Order:", "parameters": {
                "do_sample": true, "seed": seed, "max_new_tokens": 200, "details": true,
                "grammar": {"type": "json", "value": schema}}});
            server.post("/generate", body)
        });
        for ((status, r), seed) in join_all(requests).await.into_iter().zip(batch) {
            assert_eq!(status, 200, "seed {seed}: {r}");
            let text = r["generated_text"].as_str().unwrap();
            assert_eq!(r["details"]["finish_reason"], "eos_token", "seed {seed}: {text}");
            let value: Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
            if let Err(e) = validator.validate(&value) {
                panic!("seed {seed}: {text} does not validate: {e}");
            }
        }
    }
    // The OpenAI-style form takes the schema from `value.schema`.
    let body = json!({"inputs": "Order:", "parameters": {"max_new_tokens": 200, "grammar":
        {"type": "json_schema", "value": {"name": "order", "schema": schema}}}});
    let (status, r) = server.post("/generate", body).await;
    assert_eq!(status, 200, "{r}");
    assert!(
        validator.is_valid(&serde_json::from_str(r["generated_text"].as_str().unwrap()).unwrap())
    );
    server.wait_idle().await;
}

#[tokio::test]
async fn regex_outputs_always_match_and_stream_alike() {
    let server = Server::start(&[], &[]).await;
    let pattern = r"[a-z]{2,6}-\d{2,3}( [A-Z][a-z]{1,5}){1,3}";
    let full = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
    let requests = (0..30u64).map(|seed| {
        let body = json!({"inputs": "Code:", "parameters": {
            "do_sample": true, "seed": seed, "temperature": 1.5, "max_new_tokens": 60,
            "grammar": {"type": "regex", "value": pattern}}});
        server.post("/generate", body)
    });
    for (status, r) in join_all(requests).await {
        assert_eq!(status, 200, "{r}");
        let text = r["generated_text"].as_str().unwrap();
        assert!(full.is_match(text), "{text:?} does not match");
    }
    let body = json!({"inputs": "Code:", "parameters": {
        "do_sample": true, "seed": 4, "max_new_tokens": 60,
        "grammar": {"type": "regex", "value": pattern}}});
    let (_, whole) = server.post("/generate", body.clone()).await;
    let (status, events) = server.stream(body).await;
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap()["generated_text"], whole["generated_text"]);
    server.wait_idle().await;
}

#[tokio::test]
async fn bad_grammars_are_refused_before_queueing() {
    let server = Server::start(&[], &[]).await;
    let cases = [
        (json!({"type": "regex", "value": "(ab"}), "grammar is not valid"),
        (json!({"type": "json", "value": {"type": "nonsense"}}), "grammar is not valid"),
        (json!({"type": "yaml", "value": "x"}), ""),
    ];
    for (grammar, message) in cases {
        let body = json!({"inputs": "Hi", "parameters": {"grammar": grammar}});
        let (status, r) = server.post("/generate", body).await;
        assert_eq!(status, 422, "{grammar}: {r}");
        let error = r["error"].as_str().unwrap();
        assert!(error.contains(message), "{error}");
        if !message.is_empty() {
            assert_eq!(r["error_type"], "validation");
            assert!(error.len() > message.len() + 10, "the parser's message is missing: {error}");
        }
    }
    assert_eq!(metric(&server, "rill_queue_size").await, Some(0.0));
    server.assert_answers().await;

    let disabled = Server::start(&["--disable-grammar-support"], &[]).await;
    let body = json!({"inputs": "Hi", "parameters": {"grammar": {"type": "regex", "value": "a+"}}});
    let (status, r) = disabled.post("/generate", body).await;
    assert_eq!(
        (status, r["error"].as_str()),
        (422, Some("Input validation error: grammar is not supported"))
    );
}

#[tokio::test]
async fn a_grammar_failing_mid_generation_fails_its_request_alone_with_424() {
    let server = Server::start(&[], &[]).await;
    // Compiles (and its first mask is fine), but past the first token the parser
    // needs more than llguidance's per-row item limit: that sequence fails.
    let properties: serde_json::Map<String, Value> =
        (0..5000).map(|i| (format!("p{i}"), json!({"type": "integer"}))).collect();
    let schema = json!({"type": "object", "properties": properties});
    let hostile = json!({"inputs": "Hi", "parameters": {
        "max_new_tokens": 50, "grammar": {"type": "json", "value": schema}}});
    let healthy =
        json!({"inputs": "Hello", "parameters": {"max_new_tokens": 30, "ignore_eos": true}});
    let (bad, good) =
        tokio::join!(server.post("/generate", hostile.clone()), server.post("/generate", healthy));
    assert_eq!(bad.0, 424, "{}", bad.1);
    assert_eq!(bad.1["error_type"], "generation");
    assert!(bad.1["error"].as_str().unwrap().contains("grammar"), "{}", bad.1);
    assert_eq!(good.0, 200, "the other request is unharmed: {}", good.1);
    assert_eq!(good.1["generated_text"].as_str().map(str::is_empty), Some(false));
    // Streaming fails before its first token (the grammar fails on the tokens it
    // forces after the first): the real status, not a 200 with an error event.
    let (status, events) = server.stream(hostile).await;
    assert_eq!(status, 424, "{events:?}");
    assert_eq!(events[0]["error_type"], "generation");
    server.wait_idle().await;
    server.assert_answers().await;
}
