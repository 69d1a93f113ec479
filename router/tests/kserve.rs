//! The Open Inference Protocol end to end with plain HTTP, as its documentation writes
//! requests: metadata, health, `infer` in JSON and in Triton's binary tensor
//! extension, MLServer's naming, Triton's `generate` / `generate_stream`, and every
//! bad input answered 400/422 `{"error"}` without harm to the server.

mod common;

use common::Server;
use serde_json::{Value, json};

const LLAMA: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../integration-tests/fixtures/models/llama");

async fn start() -> Server {
    Server::start(
        &["--model-id", LLAMA, "--served-model-name", "org/tiny", "--served-model-name", "tiny"],
        &[],
    )
    .await
}

async fn get(server: &Server, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{}{path}", server.base)).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn text_input(name: &str, shape: Value, data: Value) -> Value {
    json!({"name": name, "shape": shape, "datatype": "BYTES", "data": data})
}

/// TGI's greedy answer to `prompt`, to compare with.
async fn tgi_greedy(server: &Server, prompt: &str, n: u32) -> String {
    let body = json!({"inputs": prompt, "parameters": {"max_new_tokens": n}});
    let (status, r) = server.post("/generate", body).await;
    assert_eq!(status, 200, "{r}");
    r["generated_text"].as_str().unwrap().to_string()
}

/// BYTES elements in the binary extension's encoding.
fn encode(elements: &[&str]) -> Vec<u8> {
    elements
        .iter()
        .flat_map(|e| [(e.len() as u32).to_le_bytes().to_vec(), e.as_bytes().to_vec()].concat())
        .collect()
}

fn decode(mut raw: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let len = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
        out.push(String::from_utf8(raw[4..4 + len].to_vec()).unwrap());
        raw = &raw[4 + len..];
    }
    out
}

#[tokio::test]
async fn metadata_health_and_readiness() {
    let server = start().await;
    let (status, meta) = get(&server, "/v2").await;
    assert_eq!(status, 200);
    assert_eq!(meta["name"], "rill");
    assert!(
        meta["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")),
        "{meta}"
    );
    assert_eq!(get(&server, "/v2/health/live").await, (200, json!({"live": true})));
    assert_eq!(get(&server, "/v2/health/ready").await, (200, json!({"ready": true})));
    for path in ["/v2/models/org/tiny", "/v2/models/tiny", "/v2/models/tiny/versions/1"] {
        let (status, m) = get(&server, path).await;
        assert_eq!(status, 200, "{path}: {m}");
        assert_eq!(m["name"], "org/tiny", "the first served name is the model's");
        assert_eq!(m["versions"], json!(["1"]));
        assert_eq!(
            m["inputs"],
            json!([{"name": "text_input", "datatype": "BYTES", "shape": [-1]}])
        );
        assert_eq!(
            m["outputs"],
            json!([{"name": "text_output", "datatype": "BYTES", "shape": [-1]}])
        );
        assert_eq!(m["parameters"]["max_tokens"]["datatype"], "INT64");
    }
    assert_eq!(
        get(&server, "/v2/models/tiny/ready").await,
        (200, json!({"name": "org/tiny", "ready": true}))
    );
    assert_eq!(get(&server, "/v2/models/org/tiny/versions/1/ready").await.0, 200);
    let (status, config) = get(&server, "/v2/models/tiny/config").await;
    assert_eq!((status, &config["input"][0]["data_type"]), (200, &json!("TYPE_STRING")));
    let (status, err) = get(&server, "/v2/models/other").await;
    assert_eq!(
        (status, err),
        (404, json!({"error": "Request for unknown model: 'other' is not found"}))
    );
    let (status, err) = get(&server, "/v2/models/tiny/versions/2/ready").await;
    assert_eq!(status, 404, "{err}");
    assert_eq!(err["error"], "Request for unknown model: 'tiny' version 2 is not found");
    // Any other method: 405 with the methods that path takes (found by schemathesis: the
    // one catch-all route made axum list GET and POST everywhere).
    let client = reqwest::Client::new();
    for (path, allow) in [("/v2/models/tiny", "GET,HEAD"), ("/v2/models/tiny/infer", "POST")] {
        let r = client
            .request(reqwest::Method::OPTIONS, format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{path}");
        assert_eq!(r.headers()["allow"], allow, "{path}");
    }
}

#[tokio::test]
async fn infer_answers_text_tensors_with_the_cores_tokens() {
    let server = start().await;
    let hello = tgi_greedy(&server, "Hello", 6).await;
    let once = tgi_greedy(&server, "Once upon", 6).await;
    // The protocol documentation's request: one BYTES tensor, parameters, an id.
    let body = json!({
        "id": "42",
        "inputs": [text_input("text_input", json!([1]), json!(["Hello"]))],
        "parameters": {"max_tokens": 6, "temperature": 0},
        "outputs": [{"name": "text_output"}],
    });
    let (status, r) = server.post("/v2/models/org/tiny/infer", body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (&r["id"], &r["model_name"], &r["model_version"]),
        (&json!("42"), &json!("org/tiny"), &json!("1"))
    );
    assert_eq!(
        r["outputs"],
        json!([{"name": "text_output", "shape": [1], "datatype": "BYTES",
            "parameters": {"content_type": "str"}, "data": [hello]}])
    );
    // A batch answers each string in its place and shape; no parameters is greedy.
    let body = json!({"inputs": [text_input("text_input", json!([2, 1]), json!([["Hello"], ["Once upon"]]))],
        "parameters": {"max_new_tokens": 6}});
    let (status, r) = server.post("/v2/models/tiny/versions/1/infer", body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["outputs"][0]["shape"], json!([2, 1]));
    assert_eq!(r["outputs"][0]["data"], json!([hello, once]));
    assert!(r.get("id").is_none());
    // MLServer's shape: the one BYTES input named `args`, `content_type: str`, and a
    // parameter as a tensor, as TensorRT-LLM models take it; the prompt kept in front.
    let body = json!({"inputs": [
        {"name": "args", "shape": [1], "datatype": "BYTES", "parameters": {"content_type": "str"}, "data": ["Hello"]},
        {"name": "max_tokens", "shape": [1, 1], "datatype": "INT32", "data": [[6]]},
        {"name": "exclude_input_in_output", "shape": [1], "datatype": "BOOL", "data": [false]},
    ]});
    let (status, r) = server.post("/v2/models/tiny/infer", body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["outputs"][0]["data"], json!([format!("Hello{hello}")]));
    // Sampled with a seed: the same answer twice.
    let body = json!({"inputs": [text_input("text", json!([1]), json!(["Hello"]))],
        "parameters": {"max_tokens": 6, "temperature": 0.8, "seed": 3}});
    let (_, a) = server.post("/v2/models/tiny/infer", body.clone()).await;
    let (_, b) = server.post("/v2/models/tiny/infer", body).await;
    assert_eq!(a["outputs"], b["outputs"]);
    server.wait_idle().await;
}

#[tokio::test]
async fn the_binary_tensor_extension_goes_both_ways() {
    let server = start().await;
    let hello = tgi_greedy(&server, "Hello", 5).await;
    let once = tgi_greedy(&server, "Once upon", 5).await;
    let raw = encode(&["Hello", "Once upon"]);
    let header = json!({
        "inputs": [{"name": "text_input", "shape": [2], "datatype": "BYTES",
            "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "text_output", "parameters": {"binary_data": true}}],
        "parameters": {"max_tokens": 5},
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&raw);
    let r = reqwest::Client::new()
        .post(format!("{}/v2/models/tiny/infer", server.base))
        .header("Inference-Header-Content-Length", header.len())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let length: usize =
        r.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let bytes = r.bytes().await.unwrap();
    let json: Value = serde_json::from_slice(&bytes[..length]).unwrap();
    let out = &json["outputs"][0];
    assert!(out.get("data").is_none(), "{json}");
    let size = out["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
    assert_eq!(size, bytes.len() - length);
    assert_eq!(decode(&bytes[length..]), [hello.clone(), once]);
    // `binary_data_output` asks for every output in binary; JSON stays the default.
    let body = json!({"inputs": [text_input("text_input", json!([1]), json!(["Hello"]))],
        "parameters": {"max_tokens": 5, "binary_data_output": true}});
    let r = reqwest::Client::new()
        .post(format!("{}/v2/models/tiny/infer", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let length: usize =
        r.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let bytes = r.bytes().await.unwrap();
    assert_eq!(decode(&bytes[length..]), [hello]);
    server.wait_idle().await;
}

#[tokio::test]
async fn triton_generate_and_generate_stream() {
    let server = start().await;
    let hello = tgi_greedy(&server, "Hello", 6).await;
    // Triton's documented request.
    let body = json!({"text_input": "Hello", "parameters": {"stream": false, "temperature": 0, "max_tokens": 6}});
    let (status, r) = server.post("/v2/models/tiny/generate", body.clone()).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r, json!({"model_name": "org/tiny", "model_version": "1", "text_output": hello}));
    // TensorRT-LLM's: parameters as top-level keys.
    let flat = json!({"text_input": "Hello", "max_tokens": 6, "details": true});
    let (status, r) = server.post("/v2/models/org/tiny/versions/1/generate", flat).await;
    assert_eq!((status, &r["text_output"]), (200, &json!(hello)), "{r}");
    assert_eq!(r["details"]["generated_tokens"], 6);
    // The stream's events add up to the answer; the last one has the details.
    let mut body = body;
    body["parameters"]["details"] = json!(true);
    let (status, events) = server.sse("/v2/models/tiny/generate_stream", body).await;
    assert_eq!(status, 200, "{events:?}");
    let events: Vec<Value> = events.iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String = events.iter().map(|e| e["text_output"].as_str().unwrap()).collect();
    assert_eq!(text, hello);
    assert!(events.iter().all(|e| e["model_name"] == "org/tiny" && e["model_version"] == "1"));
    assert_eq!(events.last().unwrap()["details"]["finish_reason"], "length");
    assert!(events[0].get("details").is_none());
    let full =
        json!({"text_input": "Hello", "parameters": {"max_tokens": 6, "return_full_text": true}});
    let (_, events) = server.sse("/v2/models/tiny/generate_stream", full).await;
    let text: String = events
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["text_output"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, format!("Hello{hello}"));
    // Bad input is KServe's 422 with the protocol's error shape, before any event.
    for body in [
        json!({"parameters": {"max_tokens": 3}}),
        json!({"text_input": 3}),
        json!({"text_input": "Hi", "parameters": {"temperature": -1}}),
        json!({"text_input": "Hi", "bad_words": ""}),
        json!({"text_input": "Hi", "parameters": {"max_tokens": 100000}}),
    ] {
        for route in ["generate", "generate_stream"] {
            let (status, err) =
                server.post(&format!("/v2/models/tiny/{route}"), body.clone()).await;
            assert_eq!(status, 422, "{route} {body}: {err}");
            assert!(err["error"].is_string() && err.as_object().unwrap().len() == 1, "{err}");
        }
    }
    server.wait_idle().await;
    server.assert_answers().await;
}

#[tokio::test]
async fn bad_tensors_are_400_naming_what_is_wrong() {
    let server = start().await;
    let infer = |body: Value| {
        let server = &server;
        async move { server.post("/v2/models/tiny/infer", body).await }
    };
    let cases = [
        (
            json!({"inputs": [{"name": "text_input", "shape": [1], "datatype": "FP32", "data": [1.0]}]}),
            "input `text_input` must be BYTES, not FP32",
        ),
        (
            json!({"inputs": [text_input("text_input", json!([2]), json!(["a"]))]}),
            "input `text_input` has shape [2] (2 elements) but 1 elements of data",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]}),
            "missing input `text_input`: the text to generate from, a BYTES tensor",
        ),
        (
            json!({"inputs": [text_input("a", json!([1]), json!(["x"])), text_input("b", json!([1]), json!(["y"]))]}),
            "several BYTES inputs and none named `text_input`: which is the text?",
        ),
        (
            json!({"inputs": [text_input("text_input", json!([1]), json!(["x"])),
                {"name": "foo", "shape": [1], "datatype": "INT64", "data": [1]}]}),
            "unexpected inference input `foo` for model `org/tiny`: it takes `text_input` and generation parameters",
        ),
        (
            json!({"inputs": [text_input("text_input", json!([1]), json!(["x"]))], "outputs": [{"name": "logits"}]}),
            "unexpected inference output `logits` for model `org/tiny`: it has `text_output`",
        ),
        (
            json!({"inputs": [text_input("text_input", json!([1]), json!(["x"]))], "parameters": {"top_p": 2.0}}),
            "Input validation error: `top_p` must be > 0.0 and < 1.0",
        ),
        (
            json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                "parameters": {"content_type": "np"}, "data": ["x"]}]}),
            "input `text` has content_type `np`: text takes `str` or `base64`",
        ),
        (
            json!({"inputs": [text_input("text_input", json!([0]), json!([]))]}),
            "input `text_input` holds no text",
        ),
    ];
    for (body, message) in cases {
        let (status, err) = infer(body.clone()).await;
        assert_eq!((status, err), (400, json!({"error": message})), "{body}");
    }
    let (status, err) = infer(json!({"inputs": "Hello"})).await;
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().starts_with("Invalid request at `inputs`"), "{err}");
    let r = reqwest::Client::new()
        .post(format!("{}/v2/models/tiny/infer", server.base))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A binary header longer than the body, and binary data nobody claims.
    let r = reqwest::Client::new()
        .post(format!("{}/v2/models/tiny/infer", server.base))
        .header("Inference-Header-Content-Length", "9999")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let header =
        json!({"inputs": [text_input("text_input", json!([1]), json!(["x"]))]}).to_string();
    let r = reqwest::Client::new()
        .post(format!("{}/v2/models/tiny/infer", server.base))
        .header("Inference-Header-Content-Length", header.len())
        .body(format!("{header}extra"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "5 bytes of binary data are not claimed by any input"
    );
    let (status, err) = server.post("/v2/models/nope/infer", json!({})).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (404, Some("Request for unknown model: 'nope' is not found"))
    );
    let (status, _) = server.post("/v2/models/tiny/versions/9/infer", json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = server.post("/v2/models/tiny/explain", json!({})).await;
    assert_eq!(status, 404);
    server.wait_idle().await;
    server.assert_answers().await;
}
