//! Health that tells the truth: `/v2/health/live` while the process serves HTTP;
//! `/health` and `/v2/health/ready` only while the model is loaded, the engine thread
//! alive and the server not draining. (Loading: `http.rs`'s
//! `loading_answers_503_with_an_estimate`.)

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use futures::StreamExt;
use serde_json::json;

async fn status(server: &Server, path: &str) -> Option<u16> {
    reqwest::get(format!("{}{path}", server.base)).await.ok().map(|r| r.status().as_u16())
}

/// A panic on the engine thread (injected by the debug build's
/// `RILL_TEST_ENGINE_PANIC_AT_STEP`) fails the request in flight with a clear error,
/// turns readiness to 503 and refuses new requests, and the process exits non-zero.
#[tokio::test]
async fn an_engine_panic_fails_requests_goes_unready_and_exits_non_zero() {
    let mut server = Server::start(&[], &[("RILL_TEST_ENGINE_PANIC_AT_STEP", "3")]).await;
    assert_eq!(status(&server, "/health").await, Some(200));
    let body = json!({"inputs": "Hello", "parameters": {"max_new_tokens": 50, "ignore_eos": true}});
    let (code, events) = server.stream(body.clone()).await;
    assert_eq!(code, 200, "{events:?}");
    let last = events.last().unwrap();
    let error = last["error"].as_str().unwrap_or_default();
    assert!(error.contains("the engine failed") && error.contains("injected"), "{events:?}");
    // The server's condition, not this request's: `unavailable` (503), not a failed step.
    assert_eq!(last["error_type"], "unavailable", "{events:?}");
    assert!(events.len() < 50, "the stream stopped at the failure");

    // Unready at once; still live; new requests refused with 503 in each family's shape.
    assert_eq!(status(&server, "/health").await, Some(503));
    assert_eq!(status(&server, "/v2/health/ready").await, Some(503));
    assert_eq!(status(&server, "/v2/health/live").await, Some(200));
    let (code, err) = server.post("/generate", body).await;
    assert_eq!((code, err["error_type"].as_str()), (503, Some("unavailable")), "{err}");
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
    let (code, err) = server.post("/v1/chat/completions", chat).await;
    assert_eq!(code, 503, "{err}");
    assert_eq!(err["error"]["type"], "service_unavailable");

    // Then it exits non-zero, for the orchestrator to restart it.
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "still running after the engine died");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(1), "{exit}");
}

/// SIGTERM under load: readiness 503 at once and new requests 503, while every stream
/// in flight finishes; then exit 0.
#[tokio::test]
async fn sigterm_drains_under_load() {
    let mut server = Server::start(&["--max-concurrent-requests", "16"], &[]).await;
    let client = reqwest::Client::new();
    let body =
        json!({"inputs": "Hello", "parameters": {"max_new_tokens": 200, "ignore_eos": true}});
    let mut streams = Vec::new();
    for _ in 0..8 {
        let r = client.post(format!("{}/generate_stream", server.base)).json(&body).send();
        let r = r.await.unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // Readiness goes 503 at once (poll briefly: the signal is delivered asynchronously).
    let start = Instant::now();
    while status(&server, "/health").await != Some(503) {
        assert!(start.elapsed() < Duration::from_secs(5), "/health stayed 200 after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status(&server, "/v2/health/ready").await, Some(503));
    let (code, err) = server.post("/generate", json!({"inputs": "Hi"})).await;
    assert_eq!(code, 503, "{err}");
    assert_eq!(err["error"], "the server is shutting down");
    let texts = futures::future::join_all(streams.into_iter().map(|r| async move {
        let mut text = String::new();
        let mut body = r.bytes_stream();
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        text
    }))
    .await;
    for text in texts {
        assert_eq!(text.matches("data:").count(), 200, "an in-flight stream was cut");
        assert!(!text.contains("\"error\""), "{text}");
    }
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
}
