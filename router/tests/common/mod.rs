//! A real `rill` process for end-to-end tests, and small HTTP helpers.
#![allow(dead_code)] // each test binary uses its own subset

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The tiny random `llama` fixture the tests serve unless they name a model.
pub const FIXTURE_LLAMA: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../integration-tests/fixtures/models/llama");

/// A running `rill` on a free loopback port, killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    /// Spawn `rill` on a free port with the test defaults, without waiting for it: the
    /// tiny `llama` fixture unless `args` name a `--model-id`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        let model: &[&str] =
            if args.contains(&"--model-id") { &[] } else { &["--model-id", FIXTURE_LLAMA] };
        Server::spawn_exactly(&[model, args].concat(), env)
    }

    /// Spawn `rill` with only `args` beside the port and KV size (no `--model-id`
    /// unless given: the bundled demo model).
    pub fn spawn_exactly(args: &[&str], env: &[(&str, &str)]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_rill"))
            .args(["--hostname", "127.0.0.1", "--port", &port.to_string()])
            .args(["--kv-cache-memory-mib", "16"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("MODEL_ID")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rill");
        Server { child, base: format!("http://127.0.0.1:{port}") }
    }

    /// Spawn and wait until `/health` says 200.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn(args, env).healthy().await
    }

    /// Wait until `/health` says 200.
    pub async fn healthy(self) -> Server {
        let server = self;
        let start = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(format!("{}/health", server.base)).await
                && r.status() == 200
            {
                return server;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "rill did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until no request runs and no KV block is in use (a leak fails the test).
    pub async fn wait_idle(&self) {
        let start = Instant::now();
        while metric(self, "rill_kv_blocks_used").await != Some(0.0)
            || metric(self, "rill_batch_current_size").await != Some(0.0)
        {
            assert!(start.elapsed() < Duration::from_secs(30), "blocks still in use");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A small request still succeeds.
    pub async fn assert_answers(&self) {
        let body = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}});
        let (status, err) = self.post("/generate", body).await;
        assert_eq!(status, 200, "{err}");
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The `data:` events of a `/generate_stream`, parsed (or the error body).
    pub async fn stream(&self, body: Value) -> (u16, Vec<Value>) {
        let (status, events) = self.sse("/generate_stream", body).await;
        let parse = |e: &String| serde_json::from_str(e).unwrap_or(Value::String(e.clone()));
        (status, events.iter().map(parse).collect())
    }

    /// The raw `data:` payloads of a server-sent-event stream on any route (OpenAI's
    /// end with `[DONE]`), or the error body.
    pub async fn sse(&self, path: &str, body: Value) -> (u16, Vec<String>) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        if status != 200 {
            return (status, vec![text]);
        }
        let events = text
            .split("\n\n")
            .filter_map(|e| e.trim().strip_prefix("data:"))
            .map(|d| d.trim().to_string())
            .collect();
        (status, events)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of an unlabelled metric in `/metrics`.
pub async fn metric(server: &Server, name: &str) -> Option<f64> {
    let text =
        reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
