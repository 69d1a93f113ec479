//! The Hugging Face Inference API end to end: tasks, parameters, errors, the response
//! cache, waiting for the model, embeddings against the transformers /
//! sentence-transformers oracle; and the API-key matrix on every route family (KServe's
//! included).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Server, metric};
use serde_json::{Value, json};

const LLAMA: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../integration-tests/fixtures/models/llama");

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../integration-tests/fixtures/models")
        .join(name)
}

async fn post(
    server: &Server,
    path: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> (u16, String, Value) {
    let mut r = reqwest::Client::new().post(format!("{}{path}", server.base)).json(&body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let cache = r.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (status, cache, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn text_generation_follows_the_inference_api() {
    let server =
        Server::start(&["--model-id", LLAMA, "--served-model-name", "org/tiny-llama"], &[]).await;
    let greedy = json!({"max_new_tokens": 6, "temperature": 0.0});
    // The model's own task, its named task, the pipeline route: one answer.
    let (status, _, a) = post(
        &server,
        "/models/org/tiny-llama",
        json!({"inputs": "Hello", "parameters": greedy}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{a}");
    let text = a[0]["generated_text"].as_str().unwrap().to_string();
    assert!(text.starts_with("Hello") && text.len() > 5, "return_full_text defaults to true: {a}");
    for path in ["/models/org/tiny-llama/text-generation", "/pipeline/text-generation"] {
        let (status, _, b) =
            post(&server, path, json!({"inputs": "Hello", "parameters": greedy}), &[]).await;
        assert_eq!((status, &b), (200, &a), "{path}");
    }
    // The same as TGI's greedy /generate.
    let (_, tgi) = server
        .post("/generate", json!({"inputs": "Hello", "parameters": {"max_new_tokens": 6}}))
        .await;
    assert_eq!(format!("Hello{}", tgi["generated_text"].as_str().unwrap()), text);

    // A list of inputs answers a list of lists; n answers with seeds repeat exactly.
    let body = json!({"inputs": ["Hello", "Once upon"], "parameters": {
        "max_new_tokens": 4, "do_sample": true, "seed": 7, "num_return_sequences": 2,
        "return_full_text": false, "details": true}});
    let (status, _, many) = post(&server, "/models/org/tiny-llama", body.clone(), &[]).await;
    assert_eq!(status, 200, "{many}");
    assert_eq!(many.as_array().unwrap().len(), 2);
    assert_eq!(many[0].as_array().unwrap().len(), 2);
    assert_eq!(many[1][0]["details"]["seed"], 7);
    assert_eq!(many[1][1]["details"]["seed"], 8);
    let (_, _, again) = post(&server, "/models/org/tiny-llama", json!({"inputs": body["inputs"], "parameters": body["parameters"], "options": {"use_cache": false}}), &[]).await;
    assert_eq!(again, many);

    // max_time: a soft deadline, answered with what there is (1 ms: even the tiny model
    // in a release build cannot generate 200 tokens in it).
    let body = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 200, "max_time": 0.001, "ignore_eos": true, "details": true}});
    let started = Instant::now();
    let (status, _, cut) = post(&server, "/pipeline/text-generation", body, &[]).await;
    assert_eq!(status, 200, "{cut}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(cut[0]["details"]["generated_tokens"].as_u64().unwrap() < 200, "{cut}");

    // stream: TGI's events.
    let (status, events) = server
        .sse(
            "/models/org/tiny-llama",
            json!({"inputs": "Hello", "parameters": greedy, "stream": true}),
        )
        .await;
    assert_eq!(status, 200);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["generated_text"].as_str().unwrap(), text);
    server.wait_idle().await;
}

#[tokio::test]
async fn errors_have_the_api_shape_and_status() {
    let server =
        Server::start(&["--model-id", LLAMA, "--served-model-name", "org/tiny-llama"], &[]).await;
    let cases = [
        ("/models/nobody/else", json!({"inputs": "Hi"}), 404, "Model nobody/else does not exist"),
        (
            "/models/org/tiny-llama/summarization",
            json!({"inputs": "Hi"}),
            400,
            "Task `summarization` is not served by this model. Served tasks: text-generation, conversational, feature-extraction, sentence-similarity",
        ),
        (
            "/pipeline/dance",
            json!({"inputs": "Hi"}),
            400,
            "Task `dance` is unknown. Served tasks: text-generation, conversational, feature-extraction, sentence-similarity",
        ),
        (
            "/pipeline/text-generation",
            json!({"inputs": 3}),
            400,
            "`inputs` must be a string or a list of strings",
        ),
        (
            "/pipeline/text-generation",
            json!({"parameters": {}}),
            400,
            "Invalid value for `.`: missing field `inputs`",
        ),
        (
            "/pipeline/text-generation",
            json!({"inputs": "Hi", "parameters": {"temperature": 200.0}}),
            400,
            "`temperature` must be >= 0.0 and <= 100.0",
        ),
        (
            "/pipeline/text-generation",
            json!({"inputs": "Hi", "parameters": {"max_new_tokens": "many"}}),
            400,
            "Invalid value for `parameters.max_new_tokens`: invalid type: string \"many\", expected u32",
        ),
        (
            "/pipeline/text-generation",
            json!({"inputs": "Hi", "parameters": {"max_new_tokens": 100000}}),
            400,
            "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 256. Given: 3 `inputs` tokens and 100000 `max_new_tokens`",
        ),
        (
            "/pipeline/conversational",
            json!({"inputs": {"past_user_inputs": ["a"], "text": "b"}}),
            400,
            "`past_user_inputs` and `generated_responses` must have the same length",
        ),
        (
            "/pipeline/sentence-similarity",
            json!({"inputs": "Hi"}),
            400,
            "`inputs` must be {\"source_sentence\": string, \"sentences\": [string]}: invalid type: string \"Hi\", expected struct SimilarityInputs",
        ),
    ];
    for (path, body, want, message) in cases {
        let (status, _, err) = post(&server, path, body.clone(), &[]).await;
        assert_eq!(status, want, "{path} {body}: {err}");
        assert_eq!(err, json!({"error": message}), "{path} {body}");
    }
    let r = reqwest::Client::new()
        .post(format!("{}/pipeline/text-generation", server.base))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    server.assert_answers().await;
    server.wait_idle().await;
}

#[tokio::test]
async fn deterministic_answers_are_cached_and_sampled_ones_never() {
    let server = Server::start(&["--model-id", LLAMA], &[]).await;
    let path = "/pipeline/text-generation";
    let greedy =
        json!({"inputs": "The cache", "parameters": {"max_new_tokens": 24, "ignore_eos": true}});
    let (_, first, a) = post(&server, path, greedy.clone(), &[]).await;
    let generated = metric(&server, "rill_request_success").await;
    let (_, second, b) = post(&server, path, greedy.clone(), &[]).await;
    assert_eq!((first.as_str(), second.as_str()), ("MISS", "HIT"));
    assert_eq!(a, b);
    // A hit costs no engine work at all (not a timing: nothing was generated).
    assert_eq!(metric(&server, "rill_request_success").await, generated);
    // Parameters spelled differently but meaning the same share the entry.
    let same = json!({"inputs": "The cache", "parameters": {"max_new_tokens": 24, "ignore_eos": true, "temperature": 0.0, "return_full_text": true}});
    assert_eq!(post(&server, path, same, &[]).await.1, "HIT");
    // Turned off per request, by option or by header.
    let mut off = greedy.clone();
    off["options"] = json!({"use_cache": false});
    assert_eq!(post(&server, path, off, &[]).await.1, "MISS");
    assert_eq!(post(&server, path, greedy.clone(), &[("x-use-cache", "0")]).await.1, "MISS");
    // Sampled without a seed: never cached; with one: cached.
    let sampled =
        json!({"inputs": "The cache", "parameters": {"max_new_tokens": 4, "do_sample": true}});
    for _ in 0..2 {
        assert_eq!(post(&server, path, sampled.clone(), &[]).await.1, "MISS");
    }
    let seeded = json!({"inputs": "The cache", "parameters": {"max_new_tokens": 4, "do_sample": true, "seed": 3}});
    assert_eq!(post(&server, path, seeded.clone(), &[]).await.1, "MISS");
    assert_eq!(post(&server, path, seeded, &[]).await.1, "HIT");
    assert_eq!(metric(&server, "rill_response_cache_hits").await, Some(3.0));
    assert!(metric(&server, "rill_response_cache_entries").await.unwrap() >= 2.0);
}

#[tokio::test]
async fn conversational_renders_the_chat_template_and_returns_the_conversation() {
    let server = Server::start(&["--model-id", LLAMA], &[]).await;
    let inputs = json!({"past_user_inputs": ["Hi"], "generated_responses": ["Hello!"], "text": "How are you?"});
    let body = json!({"inputs": inputs, "parameters": {"max_new_tokens": 5}});
    let (status, _, a) = post(&server, "/pipeline/conversational", body, &[]).await;
    assert_eq!(status, 200, "{a}");
    let reply = a["generated_text"].as_str().unwrap();
    assert_eq!(a["conversation"]["past_user_inputs"], json!(["Hi", "How are you?"]));
    assert_eq!(a["conversation"]["generated_responses"], json!(["Hello!", reply]));
    // The same prompt as the OpenAI chat route renders, so the same greedy reply.
    let chat = json!({"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"}], "max_tokens": 5, "temperature": 0});
    let (_, c) = server.post("/v1/chat/completions", chat).await;
    assert_eq!(c["choices"][0]["message"]["content"], reply);
}

/// An F32 tensor of a fixture's `embeddings.safetensors`.
fn oracle(name: &str, tensor: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture(name).join("embeddings.safetensors")).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let [start, end] = [0, 1].map(|i| header[tensor]["data_offsets"][i].as_u64().unwrap() as usize);
    let data = &bytes[8 + len + start..8 + len + end];
    data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    let mut out = Vec::new();
    match v {
        Value::Array(items) => items.iter().for_each(|i| out.extend(floats(i))),
        Value::Number(n) => out.push(n.as_f64().unwrap() as f32),
        other => panic!("not a number: {other}"),
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

#[tokio::test]
async fn embeddings_over_http_equal_the_oracle() {
    let dir = fixture("qwen2");
    let server = Server::start(
        &["--model-id", dir.to_str().unwrap(), "--served-model-name", "gte-tiny"],
        &[],
    )
    .await;
    let reference: Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let prompt = reference["prompts"][0]["text"].as_str().unwrap();
    // Per token, the pipeline's [1][tokens][hidden], where huggingface_hub posts it.
    let body = json!({"inputs": prompt});
    let (status, _, states) =
        post(&server, "/models/gte-tiny/pipeline/feature-extraction", body, &[]).await;
    assert_eq!(status, 200, "{states}");
    assert_eq!(states.as_array().unwrap().len(), 1);
    let want = oracle("qwen2", "prompt0.hidden");
    assert_eq!(states[0].as_array().unwrap().len() * 64, want.len());
    assert!(max_abs_diff(&floats(&states), &want) < 1e-4);
    // A list answers a list.
    let (_, _, two) =
        post(&server, "/pipeline/feature-extraction", json!({"inputs": [prompt, prompt]}), &[])
            .await;
    assert_eq!(two, json!([states, states]));

    // Pooled as modules.json says (last token, normalized): sentence-transformers' vectors.
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join("embeddings.json")).unwrap()).unwrap();
    let sentences: Vec<&str> =
        meta["sentences"].as_array().unwrap().iter().map(|s| s["text"].as_str().unwrap()).collect();
    let vectors: Vec<Vec<f32>> = (0..sentences.len())
        .map(|i| oracle("qwen2", &format!("sentence{i}.sentence_transformers")))
        .collect();
    let body = json!({"inputs": {"source_sentence": sentences[0], "sentences": &sentences[1..]}});
    let (status, _, scores) =
        post(&server, "/models/gte-tiny/sentence-similarity", body, &[]).await;
    assert_eq!(status, 200, "{scores}");
    for (i, score) in floats(&scores).iter().enumerate() {
        let want = cosine(&vectors[0], &vectors[i + 1]);
        assert!((score - want).abs() < 1e-4, "sentence {}: {score} vs {want}", i + 1);
    }

    // OpenAI's /v1/embeddings: the same vectors, as floats or base64.
    let (status, list) =
        server.post("/v1/embeddings", json!({"model": "gte-tiny", "input": sentences})).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["object"], "list");
    for (i, want) in vectors.iter().enumerate() {
        assert_eq!(list["data"][i]["index"], i);
        assert!(max_abs_diff(&floats(&list["data"][i]["embedding"]), want) < 1e-4, "sentence {i}");
    }
    let tokens: u64 = meta["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ids"].as_array().unwrap().len() as u64)
        .sum();
    assert_eq!(list["usage"]["prompt_tokens"], tokens);
    let (_, b64) = server
        .post("/v1/embeddings", json!({"input": sentences[0], "encoding_format": "base64"}))
        .await;
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> =
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(decoded, floats(&list["data"][0]["embedding"]));
    // Bad input: OpenAI's shape naming the field; nothing leaks.
    let (status, err) =
        server.post("/v1/embeddings", json!({"input": [], "model": "gte-tiny"})).await;
    assert_eq!((status, err["error"]["param"].as_str()), (400, Some("input")), "{err}");
    let (status, err) = server.post("/v1/embeddings", json!({"input": "x", "dimensions": 8})).await;
    assert_eq!((status, err["error"]["param"].as_str()), (400, Some("dimensions")), "{err}");
    let long = "word ".repeat(400);
    let (status, err) = server.post("/v1/embeddings", json!({"input": long})).await;
    assert_eq!(status, 400, "{err}");
    let (status, _, err) =
        post(&server, "/pipeline/feature-extraction", json!({"inputs": long}), &[]).await;
    assert_eq!(status, 400, "{err}");
    let (status, _, cut) = post(
        &server,
        "/pipeline/feature-extraction",
        json!({"inputs": long, "parameters": {"truncate": true}}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{cut}");
    server.wait_idle().await;
}

/// While the model loads: 503 with an estimate at once, or held until it is ready (and
/// KServe's liveness 200, readiness 503).
#[tokio::test]
async fn loading_is_503_unless_the_request_waits_for_the_model() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/models/llama-1.1b");
    // ~1.1B random bf16 weights take seconds to generate: long enough to look.
    let server = Server::spawn(
        &["--model-id", config, "--load-format", "dummy", "--served-model-name", "big"],
        &[],
    );
    let start = Instant::now();
    while reqwest::get(format!("{}/health", server.base)).await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "port never opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 1}});
    let (status, _, err) = post(&server, "/models/big", body.clone(), &[]).await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"], "Model big is currently loading");
    assert!(err["estimated_time"].as_f64().is_some_and(|t| t > 0.0), "{err}");
    // KServe's view meanwhile: live, not ready, and `infer` is 503 in its shape.
    let status = |path: &str| {
        let url = format!("{}{path}", server.base);
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/v2/health/live").await, 200);
    assert_eq!(status("/v2/health/ready").await, 503);
    assert_eq!(status("/v2/models/big/ready").await, 503);
    let infer = json!({"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["Hi"]}]});
    let (status, _, err) = post(&server, "/v2/models/big/infer", infer, &[]).await;
    assert_eq!((status, err), (503, json!({"error": "Model big is loading"})));
    let mut waiting = body.clone();
    waiting["options"] = json!({"wait_for_model": true});
    let by_option = post(&server, "/models/big", waiting, &[]);
    let by_header = post(&server, "/models/big", body, &[("x-wait-for-model", "true")]);
    let ((a, _, ra), (b, _, rb)) = tokio::join!(by_option, by_header);
    assert_eq!((a, b), (200, 200), "{ra} {rb}");
    assert!(reqwest::get(format!("{}/health", server.base)).await.unwrap().status() == 200);
}

/// Every inference route of every family: 401 without a known key, 403 for a key scoped
/// to another model, 200 for an open key or one scoped to this model; open routes stay open.
#[tokio::test]
async fn api_keys_and_scopes_guard_every_family() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "# from a file\nfiled:tiny\n").unwrap();
    let server = Server::start(
        &[
            "--model-id",
            LLAMA,
            "--served-model-name",
            "tiny",
            "--api-key",
            "open",
            "--api-key",
            "elsewhere:qwen,mistral",
            "--api-key-file",
            file.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let client = reqwest::Client::new();
    let routes = [
        ("/generate", json!({"inputs": "Hi", "parameters": {"max_new_tokens": 1}})),
        ("/", json!({"inputs": "Hi", "parameters": {"max_new_tokens": 1}})),
        ("/v1/completions", json!({"prompt": "Hi", "max_tokens": 1})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}),
        ),
        ("/v1/embeddings", json!({"input": "Hi"})),
        ("/models/tiny", json!({"inputs": "Hi", "parameters": {"max_new_tokens": 1}})),
        ("/pipeline/feature-extraction", json!({"inputs": "Hi"})),
        (
            "/v2/models/tiny/infer",
            json!({"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["Hi"]}],
                "parameters": {"max_tokens": 1}}),
        ),
        ("/v2/models/tiny/generate", json!({"text_input": "Hi", "parameters": {"max_tokens": 1}})),
    ];
    for (path, body) in &routes {
        let url = format!("{}{path}", server.base);
        for (key, want) in [
            (None, 401),
            (Some("wrong"), 401),
            (Some("elsewhere"), 403),
            (Some("open"), 200),
            (Some("filed"), 200),
        ] {
            let mut r = client.post(&url).json(body);
            if let Some(k) = key {
                r = r.bearer_auth(k);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status().as_u16(), want, "{path} with {key:?}");
            let e: Value = r.json().await.unwrap();
            if want == 403 {
                let text = e.to_string();
                assert!(text.contains("not allowed to use the model `tiny`"), "{path}: {e}");
            }
            if want != 200 {
                assert!(!e.to_string().contains("elsewhere"), "a key is never echoed: {e}");
            }
        }
    }
    for path in [
        "/health",
        "/info",
        "/metrics",
        "/v1/models",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/tiny",
        "/v2/models/tiny/ready",
    ] {
        let r = reqwest::get(format!("{}{path}", server.base)).await.unwrap();
        assert_eq!(r.status(), 200, "{path} stays open");
    }
}
