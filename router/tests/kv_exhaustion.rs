//! KV exhaustion: more concurrent demand than the cache holds. Sequences preempt each
//! other and are recomputed, every request completes, and every answer equals the one
//! the same request gets alone on an idle server — greedy and seeded sampling, streams,
//! OpenAI's seeded `n`, stop strings and grammars alike (`best_of`, which TGI does not
//! let a seed fix, by its shape). A request that could never
//! fit is refused up front without disturbing the others, and nothing leaks.

mod common;

use common::{Server, metric};
use futures::future::join_all;
use serde_json::{Value, json};

/// A request and the route it goes to.
struct Case {
    path: &'static str,
    body: Value,
}

fn prompt(i: usize) -> String {
    // Different lengths (about 4 to 60 tokens), so blocks fill and free at different times.
    format!("Request {i}: {}", "the river sang to the stones ".repeat(i % 9))
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for i in 0..14 {
        let inputs = prompt(i);
        let sampled = json!({"do_sample": true, "temperature": 0.9, "top_k": 40, "top_p": 0.9,
                             "repetition_penalty": 1.1, "seed": 100 + i});
        let mut parameters =
            json!({"max_new_tokens": 40 + (i % 4) * 10, "ignore_eos": true, "details": true});
        let path = match i % 7 {
            0 => "/generate",
            1 => {
                parameters.as_object_mut().unwrap().extend(sampled.as_object().unwrap().clone());
                "/generate"
            }
            2 => "/generate_stream",
            3 => {
                // TGI refuses a seed with best_of, so these differ run to run: only their
                // shape is compared.
                parameters.as_object_mut().unwrap().extend(sampled.as_object().unwrap().clone());
                parameters.as_object_mut().unwrap().remove("seed");
                parameters["best_of"] = json!(2);
                "/generate"
            }
            4 => {
                parameters["stop"] = json!(["stones", "river"]);
                parameters["ignore_eos"] = json!(false);
                "/generate"
            }
            5 => {
                parameters["grammar"] =
                    json!({"type": "regex", "value": "(yes|no)( (and|or) (yes|no)){3,12}"});
                "/generate"
            }
            _ => {
                cases.push(Case {
                    path: "/v1/chat/completions",
                    body: json!({"model": "llama", "messages": [{"role": "user", "content": inputs}],
                                 "n": 2, "seed": 7 + i, "temperature": 0.8, "max_tokens": 48}),
                });
                continue;
            }
        };
        cases.push(Case { path, body: json!({"inputs": inputs, "parameters": parameters}) });
    }
    cases
}

/// What a response says, without the parts that differ run to run (timings, ids,
/// cached-token counts).
fn answer(path: &str, status: u16, body: &Value) -> Value {
    assert_eq!(status, 200, "{path}: {body}");
    match path {
        "/v1/chat/completions" => json!(
            body["choices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| json!([c["message"]["content"], c["finish_reason"]]))
                .collect::<Vec<_>>()
        ),
        _ => {
            let details = &body["details"];
            let tokens = |d: &Value| {
                d["tokens"].as_array().unwrap().iter().map(|t| t["id"].clone()).collect::<Vec<_>>()
            };
            match details["best_of_sequences"].as_array() {
                Some(others) => json!([tokens(details).len(), others.len()]),
                None => json!([body["generated_text"], details["finish_reason"], tokens(details)]),
            }
        }
    }
}

async fn run(server: &Server, case: &Case) -> Value {
    if case.path == "/generate_stream" {
        let (status, events) = server.stream(case.body.clone()).await;
        assert_eq!(status, 200, "{events:?}");
        let last = events.last().unwrap();
        let ids: Vec<Value> = events.iter().map(|e| e["token"]["id"].clone()).collect();
        return json!([last["generated_text"], last["details"]["finish_reason"], ids]);
    }
    let (status, body) = server.post(case.path, case.body.clone()).await;
    answer(case.path, status, &body)
}

#[tokio::test]
async fn demand_beyond_the_cache_preempts_recomputes_and_changes_no_answer() {
    // 16 blocks of 16 tokens: two or three of these sequences at a time, not fourteen.
    let server = Server::start(&["--max-batch-total-tokens", "256"], &[]).await;
    let cases = cases();
    let mut alone = Vec::new();
    for case in &cases {
        alone.push(run(&server, case).await);
    }
    server.wait_idle().await;
    assert_eq!(
        metric(&server, "rill_preemptions").await,
        Some(0.0),
        "one at a time never preempts"
    );

    // All at once, twice over, with a request that can never fit among them.
    let too_long = json!({"inputs": prompt(8), "parameters": {"max_new_tokens": 250}});
    let storm = cases.iter().chain(&cases).map(|c| run(&server, c));
    let (answers, (status, refused)) =
        tokio::join!(join_all(storm), server.post("/generate", too_long));
    assert_eq!(status, 422, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("max_new_tokens"), "{refused}");
    for (i, got) in answers.iter().enumerate() {
        assert_eq!(got, &alone[i % cases.len()], "case {} under exhaustion", i % cases.len());
    }
    assert!(metric(&server, "rill_preemptions").await.unwrap() > 0.0, "the cache never ran out");
    server.wait_idle().await;
    server.assert_answers().await;
}
