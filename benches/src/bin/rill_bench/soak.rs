//! `--workload soak`: a mixed workload for a bounded time, checking the server as it goes.
//!
//! Each client sends, in turn, a long prompt, a stream it drops after a few tokens, a
//! JSON-schema grammar, `best_of`, OpenAI chat with `n` and a stop string, TGI stop
//! sequences, a request the server must refuse (422), and a plain stream read to its
//! end — each answer checked for what it promises (the grammar's output parses, stop
//! strings are honoured, `n` and `best_of` give their count, a stream its tokens).
//! The run is cut into rounds of `--round-s`; after each, the clients pause until the
//! server is idle (the engine then checks its block manager's invariants, counted in
//! `rill_kv_cache_invariant_violations`) and the round must end with no KV block held,
//! no new invariant violation and no unexpected answer. Resident memory
//! (`process_resident_memory_bytes`) is sampled at each idle point and must not grow by
//! more than `--max-rss-growth-mib` over the second half of the run (the first half
//! is warm-up: the KV cache's pages are first touched as blocks are first used, the
//! allocator's arenas fill).
//! Exits non-zero when any check fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{Args, Target, Words, scrape, take_sse_data};

/// The kinds of request, sent in this order by each client.
const KINDS: [&str; 8] = [
    "long-prompt",
    "disconnect",
    "json-grammar",
    "best-of",
    "chat-n-stop",
    "stop-sequences",
    "refused",
    "stream",
];

/// How one request went.
enum Outcome {
    /// Answered as promised.
    Ok,
    /// Refused or cut off as the workload meant it to be.
    Provoked,
    /// Anything else: the check that failed.
    Unexpected(String),
}

/// The server's idle state after a round.
#[derive(Debug, Clone, Copy)]
struct Idle {
    blocks_used: f64,
    violations: f64,
    rss_mib: Option<f64>,
    waited: Duration,
}

/// Wait until nothing runs or waits, then read what an idle server must show.
async fn wait_idle(client: &reqwest::Client, url: &str) -> Result<Idle> {
    let start = Instant::now();
    loop {
        let m = scrape(client, url).await?;
        let get = |name: &str| m.get(name).copied();
        if get("rill_batch_current_size") == Some(0.0) && get("rill_queue_size") == Some(0.0) {
            return Ok(Idle {
                blocks_used: get("rill_kv_blocks_used").context("no rill_kv_blocks_used")?,
                violations: get("rill_kv_cache_invariant_violations").unwrap_or(0.0),
                rss_mib: get("process_resident_memory_bytes").map(|b| b / (1 << 20) as f64),
                waited: start.elapsed(),
            });
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the server did not go idle within 120 s of the round's end");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait (up to two minutes) for the server to load its model and say it is ready.
async fn ready(client: &reqwest::Client, url: &str) -> Result<()> {
    let start = Instant::now();
    while !client.get(format!("{url}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("{url}/health did not answer 200 within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

struct Client {
    http: reqwest::Client,
    url: String,
    model: String,
    words: Arc<Words>,
    args: Args,
}

impl Client {
    async fn post(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        let r = self.http.post(format!("{}{path}", self.url)).json(&body).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// The `data:` events of a TGI stream, stopping after `keep` of them if given (the
    /// connection is then dropped mid-generation).
    async fn stream(&self, body: Value, keep: Option<usize>) -> Result<(u16, Vec<Value>)> {
        let r = self.http.post(format!("{}/generate_stream", self.url)).json(&body).send().await?;
        let status = r.status().as_u16();
        let mut events = Vec::new();
        let (mut bytes, mut buffer) = (r.bytes_stream(), String::new());
        while let Some(chunk) = bytes.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk?));
            let data = take_sse_data(&mut buffer);
            events.extend(data.iter().map(|d| serde_json::from_str(d).unwrap_or(Value::Null)));
            if keep.is_some_and(|k| events.len() >= k) {
                return Ok((status, events));
            }
        }
        Ok((status, events))
    }

    async fn send(&self, kind: &str, i: usize) -> Result<Outcome> {
        let a = &self.args;
        let prompt = format!("{i}: {} {}", self.words.run, self.words.about(a.prompt_tokens));
        let tgi = |parameters: Value| json!({"inputs": prompt, "parameters": parameters});
        let n = a.max_new_tokens;
        let unexpected = |what: String| Ok(Outcome::Unexpected(format!("{kind}: {what}")));
        match kind {
            "long-prompt" => {
                let long =
                    format!("{i}: {} {}", self.words.run, self.words.about(a.long_prompt_tokens));
                let (status, body) = self
                    .post("/generate", json!({"inputs": long, "parameters": {"max_new_tokens": n, "ignore_eos": true, "details": true}}))
                    .await?;
                match (status, body["details"]["generated_tokens"].as_u64()) {
                    (200, Some(t)) if t as usize == n => Ok(Outcome::Ok),
                    _ => unexpected(format!("HTTP {status}: {body}")),
                }
            }
            "disconnect" => {
                let (status, events) = self
                    .stream(
                        tgi(json!({"max_new_tokens": n.max(8) * 4, "ignore_eos": true})),
                        Some(3),
                    )
                    .await?;
                match status {
                    200 if events.len() >= 3 => Ok(Outcome::Provoked),
                    _ => unexpected(format!("HTTP {status}: {events:?}")),
                }
            }
            "json-grammar" => {
                let schema = json!({"type": "object", "properties": {"word": {"type": "string", "maxLength": 8}},
                                    "required": ["word"], "additionalProperties": false});
                let (status, body) = self
                    .post(
                        "/generate",
                        tgi(json!({"max_new_tokens": 64, "details": true,
                                                    "grammar": {"type": "json", "value": schema}})),
                    )
                    .await?;
                let text = body["generated_text"].as_str().unwrap_or_default();
                match (status, body["details"]["finish_reason"].as_str()) {
                    (200, Some("length")) => Ok(Outcome::Ok),
                    (200, Some(_)) => match serde_json::from_str::<Value>(text) {
                        Ok(v) if v["word"].is_string() && v.as_object().unwrap().len() == 1 => {
                            Ok(Outcome::Ok)
                        }
                        _ => unexpected(format!("{text:?} does not match the schema")),
                    },
                    _ => unexpected(format!("HTTP {status}: {body}")),
                }
            }
            "best-of" => {
                let (status, body) = self
                    .post(
                        "/generate",
                        tgi(json!({"max_new_tokens": n, "best_of": 2, "do_sample": true,
                                                    "details": true})),
                    )
                    .await?;
                match (status, body["details"]["best_of_sequences"].as_array().map(Vec::len)) {
                    (200, Some(1)) => Ok(Outcome::Ok),
                    _ => unexpected(format!("HTTP {status}: {body}")),
                }
            }
            "chat-n-stop" => {
                let stop = "the";
                let (status, body) = self
                    .post(
                        "/v1/chat/completions",
                        json!({"model": self.model, "n": 2, "max_tokens": n,
                        "stop": [stop], "messages": [{"role": "user", "content": prompt}]}),
                    )
                    .await?;
                let choices = body["choices"].as_array().cloned().unwrap_or_default();
                if status != 200 || choices.len() != 2 {
                    return unexpected(format!("HTTP {status}: {body}"));
                }
                match choices
                    .iter()
                    .find(|c| c["message"]["content"].as_str().is_none_or(|t| t.contains(stop)))
                {
                    Some(c) => unexpected(format!("a choice holds its stop string: {c}")),
                    None => Ok(Outcome::Ok),
                }
            }
            "stop-sequences" => {
                let stop = "stones";
                let (status, body) = self
                    .post(
                        "/generate",
                        tgi(json!({"max_new_tokens": n, "stop": [stop], "details": true,
                                                    "do_sample": true, "temperature": 1.5})),
                    )
                    .await?;
                let text = body["generated_text"].as_str().unwrap_or_default();
                match (status, body["details"]["finish_reason"].as_str()) {
                    (200, Some("stop_sequence"))
                        if text.ends_with(stop) && text.matches(stop).count() == 1 =>
                    {
                        Ok(Outcome::Ok)
                    }
                    (200, Some(_)) if !text.contains(stop) => Ok(Outcome::Ok),
                    _ => unexpected(format!("HTTP {status}: {body}")),
                }
            }
            "refused" => {
                let (status, body) =
                    self.post("/generate", tgi(json!({"max_new_tokens": 0}))).await?;
                match (status, body["error_type"].as_str()) {
                    (422, Some("validation")) => Ok(Outcome::Provoked),
                    _ => unexpected(format!("HTTP {status}: {body}")),
                }
            }
            "stream" => {
                let (status, events) = self
                    .stream(tgi(json!({"max_new_tokens": n, "ignore_eos": true})), None)
                    .await?;
                let last = events.last().cloned().unwrap_or(Value::Null);
                match status {
                    200 if events.len() == n && last["generated_text"].is_string() => {
                        Ok(Outcome::Ok)
                    }
                    _ => unexpected(format!("HTTP {status}: {} events, last {last}", events.len())),
                }
            }
            _ => unreachable!("{kind}"),
        }
    }
}

#[derive(Default)]
struct Tally {
    ok: BTreeMap<&'static str, usize>,
    provoked: BTreeMap<&'static str, usize>,
    unexpected: Vec<String>,
}

/// Run the soak; print what each round saw and a summary; write JSON if asked.
pub async fn run(http: &reqwest::Client, args: &Args) -> Result<()> {
    let url = &args.url;
    ready(http, url).await?;
    let tgi = Target { url: url.to_string(), model: None };
    let words = Arc::new(Words::measure(http, &tgi).await?);
    let models: Value = http.get(format!("{url}/v1/models")).send().await?.json().await?;
    let model = models["data"][0]["id"].as_str().context("no model in /v1/models")?.to_string();
    let client =
        Arc::new(Client { http: http.clone(), url: url.clone(), model, words, args: args.clone() });
    let tally = Arc::new(Mutex::new(Tally::default()));
    let first = wait_idle(http, url).await?;
    let preemptions =
        || async { scrape(http, url).await.ok().and_then(|m| m.get("rill_preemptions").copied()) };
    let preempted_before = preemptions().await;
    let (deadline, started) = (Duration::from_secs_f64(args.duration_s), Instant::now());
    let mut rounds: Vec<Value> = Vec::new();
    let mut failures = Vec::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while started.elapsed() < deadline {
        let round_end = Instant::now() + Duration::from_secs_f64(args.round_s);
        let tasks: Vec<_> = (0..args.clients)
            .map(|c| {
                let (client, tally, next) =
                    (Arc::clone(&client), Arc::clone(&tally), Arc::clone(&next));
                tokio::spawn(async move {
                    let mut k = c;
                    while Instant::now() < round_end {
                        let kind = KINDS[k % KINDS.len()];
                        k += 1;
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let outcome = client.send(kind, i).await;
                        let mut t = tally.lock().await;
                        match outcome {
                            Ok(Outcome::Ok) => *t.ok.entry(kind).or_default() += 1,
                            Ok(Outcome::Provoked) => *t.provoked.entry(kind).or_default() += 1,
                            Ok(Outcome::Unexpected(what)) => t.unexpected.push(what),
                            Err(e) => t.unexpected.push(format!("{kind}: {e:#}")),
                        }
                    }
                })
            })
            .collect();
        futures::future::join_all(tasks).await;
        let idle = wait_idle(http, url).await?;
        let t = tally.lock().await;
        let requests: usize =
            t.ok.values().chain(t.provoked.values()).sum::<usize>() + t.unexpected.len();
        println!(
            "round {:>3} at {:6.1} s: {requests} requests so far, {} unexpected; idle after {:.2} s: {} KV blocks held, {} invariant violations, RSS {}",
            rounds.len() + 1,
            started.elapsed().as_secs_f64(),
            t.unexpected.len(),
            idle.waited.as_secs_f64(),
            idle.blocks_used,
            idle.violations - first.violations,
            idle.rss_mib.map_or("n/a".to_string(), |r| format!("{r:.1} MiB")),
        );
        if idle.blocks_used != 0.0 {
            failures.push(format!(
                "round {}: {} KV blocks held while idle",
                rounds.len() + 1,
                idle.blocks_used
            ));
        }
        if idle.violations != first.violations {
            failures.push(format!(
                "round {}: the engine found its block manager inconsistent",
                rounds.len() + 1
            ));
        }
        rounds.push(json!({"elapsed_s": started.elapsed().as_secs_f64(), "requests": requests,
                           "unexpected": t.unexpected.len(), "idle_wait_s": idle.waited.as_secs_f64(),
                           "kv_blocks_used": idle.blocks_used, "rss_mib": idle.rss_mib}));
    }
    let t = tally.lock().await;
    let rss = |round: usize| rounds.get(round).and_then(|r| r["rss_mib"].as_f64());
    let (midway, last_rss) = (rss((rounds.len().max(1) - 1) / 2), rss(rounds.len().max(1) - 1));
    if let Some(g) = midway.zip(last_rss).map(|(a, b)| b - a)
        && rounds.len() > 1
        && g > args.max_rss_growth_mib
    {
        failures.push(format!(
            "resident memory grew {g:.1} MiB over the second half (limit {} MiB)",
            args.max_rss_growth_mib
        ));
    }
    failures.extend(t.unexpected.iter().take(10).cloned());
    let preempted = preemptions().await.zip(preempted_before).map(|(b, a)| b - a);
    println!("answered as promised: {:?}", t.ok);
    println!(
        "sequences preempted for KV memory: {}",
        preempted.map_or("n/a".into(), |p| p.to_string())
    );
    println!("provoked (refused or dropped on purpose): {:?}", t.provoked);
    println!(
        "resident memory: {} at the start, {} midway, {} at the end",
        first.rss_mib.map_or("n/a".into(), |r| format!("{r:.1} MiB")),
        midway.map_or("n/a".into(), |r| format!("{r:.1} MiB")),
        last_rss.map_or("n/a".into(), |r| format!("{r:.1} MiB")),
    );
    if let Some(path) = &args.json {
        let report = json!({"workload": "soak", "url": url, "clients": args.clients,
            "duration_s": started.elapsed().as_secs_f64(), "round_s": args.round_s,
            "ok": t.ok, "provoked": t.provoked, "unexpected": t.unexpected, "preemptions": preempted,
            "rss_mib": {"start": first.rss_mib, "midway": midway, "end": last_rss},
            "rounds": rounds, "failures": failures});
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if KINDS.iter().any(|k| t.ok.get(k).or(t.provoked.get(k)).is_none()) {
        failures
            .push(format!("not every kind of request completed once: {:?} {:?}", t.ok, t.provoked));
    }
    if !failures.is_empty() {
        bail!("soak failed:\n  {}", failures.join("\n  "));
    }
    println!(
        "soak passed: {} rounds, no KV block leaked, no invariant violated, no unexpected answer",
        rounds.len()
    );
    Ok(())
}
