//! `rill-bench`: drive a running server over HTTP + SSE and report throughput and
//! latency percentiles.
//!
//! Closed loop (`--clients N`: N clients, each sending its next request when the
//! last one ends) or open loop (`--rate R`: Poisson arrivals at R requests/s).
//! Every request streams from `/generate_stream` with `ignore_eos` so it generates
//! exactly `--max-new-tokens`. Reports requests/s, generated tokens/s, time to first
//! token and inter-token latency (p50/p90/p99), end-to-end latency and errors;
//! `--json` writes the same for scripts.
//!
//! ```text
//! cargo run --release -p rill-benches --bin rill-bench -- --url http://127.0.0.1:3000 --clients 8
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[derive(Parser, Debug, Clone)]
#[command(name = "rill-bench", about = "Load generator for Rill (and any TGI-compatible server)")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// Concurrent clients (closed loop).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Requests per second with Poisson arrivals (open loop; overrides --clients).
    #[arg(long)]
    rate: Option<f64>,
    /// Requests to send in all (default: 4 per client, or 32 in open loop).
    #[arg(long)]
    requests: Option<usize>,
    /// Approximate prompt length in tokens.
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Tokens generated per request (EOS ignored).
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// What one request measured.
#[derive(Debug, Default, Clone)]
struct Sample {
    ttft: Option<Duration>,
    itls: Vec<Duration>,
    latency: Duration,
    tokens: usize,
    error: Option<String>,
}

async fn one_request(client: &reqwest::Client, args: &Args, prompt: &str) -> Sample {
    let body = json!({
        "inputs": prompt,
        "parameters": {"max_new_tokens": args.max_new_tokens, "ignore_eos": true},
    });
    let start = Instant::now();
    let mut sample = Sample::default();
    let response =
        match client.post(format!("{}/generate_stream", args.url)).json(&body).send().await {
            Ok(r) => r,
            Err(e) => {
                sample.error = Some(e.to_string());
                return sample;
            }
        };
    if !response.status().is_success() {
        sample.error = Some(format!("HTTP {}", response.status()));
        sample.latency = start.elapsed();
        return sample;
    }
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut last = start;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                sample.error = Some(e.to_string());
                break;
            }
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data:") else { continue };
            let now = Instant::now();
            let parsed: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
            if parsed.get("error").is_some() {
                sample.error = Some(parsed["error"].to_string());
                continue;
            }
            match sample.ttft {
                None => sample.ttft = Some(now - start),
                Some(_) => sample.itls.push(now - last),
            }
            last = now;
            sample.tokens += 1;
        }
    }
    sample.latency = start.elapsed();
    sample
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// A prompt of about `tokens` tokens on this server's tokenizer.
async fn make_prompt(
    client: &reqwest::Client,
    url: &str,
    tokens: usize,
) -> Result<(String, usize)> {
    let words = |n: usize| {
        "the river sang to the stones "
            .repeat(n.div_ceil(6))
            .split(' ')
            .take(n)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let count = |text: String| async move {
        let r: Value = client
            .post(format!("{url}/tokenize"))
            .json(&json!({"inputs": text}))
            .send()
            .await?
            .json()
            .await?;
        Ok::<usize, anyhow::Error>(r.as_array().context("/tokenize did not answer a list")?.len())
    };
    let per_word = count(words(200)).await? as f64 / 200.0;
    let text = words(((tokens as f64 / per_word).round() as usize).max(1));
    let actual = count(text.clone()).await?;
    Ok((text, actual))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.max_new_tokens == 0 {
        bail!("--clients and --max-new-tokens must be positive");
    }
    let client = reqwest::Client::new();
    let (prompt, input_tokens) = make_prompt(&client, &args.url, args.prompt_tokens).await?;
    let total = args.requests.unwrap_or(if args.rate.is_some() { 32 } else { 4 * args.clients });
    let prompt = Arc::new(prompt);
    let samples = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let started = Instant::now();

    if let Some(rate) = args.rate {
        // Open loop: exponential gaps, every request on its own task.
        let mut tasks = Vec::with_capacity(total);
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..total {
            let (client, args, prompt, samples) =
                (client.clone(), args.clone(), Arc::clone(&prompt), Arc::clone(&samples));
            tasks.push(tokio::spawn(async move {
                let s = one_request(&client, &args, &prompt).await;
                samples.lock().await.push(s);
            }));
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let u = ((seed >> 11) as f64 / (1u64 << 53) as f64).max(1e-12);
            tokio::time::sleep(Duration::from_secs_f64(-u.ln() / rate)).await;
        }
        futures::future::join_all(tasks).await;
    } else {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..args.clients)
            .map(|_| {
                let (client, args, prompt, samples, next) = (
                    client.clone(),
                    args.clone(),
                    Arc::clone(&prompt),
                    Arc::clone(&samples),
                    Arc::clone(&next),
                );
                tokio::spawn(async move {
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                        let s = one_request(&client, &args, &prompt).await;
                        samples.lock().await.push(s);
                    }
                })
            })
            .collect();
        futures::future::join_all(tasks).await;
    }
    let elapsed = started.elapsed().as_secs_f64();

    let samples = samples.lock().await;
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.error.is_none()).collect();
    let errors = samples.len() - ok.len();
    let tokens: usize = ok.iter().map(|s| s.tokens).sum();
    let mut ttft: Vec<Duration> = ok.iter().filter_map(|s| s.ttft).collect();
    let mut itl: Vec<Duration> = ok.iter().flat_map(|s| s.itls.iter().copied()).collect();
    let mut latency: Vec<Duration> = ok.iter().map(|s| s.latency).collect();
    ttft.sort();
    itl.sort();
    latency.sort();
    let mode = match args.rate {
        Some(r) => format!("open loop, {r} req/s"),
        None => format!("closed loop, {} clients", args.clients),
    };
    println!(
        "{mode}: {} requests, {input_tokens} prompt tokens, {} new tokens each",
        samples.len(),
        args.max_new_tokens
    );
    println!(
        "  throughput  {:.2} req/s, {:.1} generated tok/s ({elapsed:.1} s)",
        ok.len() as f64 / elapsed,
        tokens as f64 / elapsed
    );
    let line = |name: &str, v: &[Duration]| {
        println!(
            "  {name:<11} p50 {:8.1} ms   p90 {:8.1} ms   p99 {:8.1} ms",
            percentile(v, 0.5),
            percentile(v, 0.9),
            percentile(v, 0.99)
        )
    };
    line("TTFT", &ttft);
    line("ITL", &itl);
    line("latency", &latency);
    println!("  errors      {errors}");
    if let Some(first) = samples.iter().find_map(|s| s.error.as_ref()) {
        println!("  first error: {first}");
    }
    if let Some(path) = &args.json {
        let pct = |v: &[Duration]| json!({"p50_ms": percentile(v, 0.5), "p90_ms": percentile(v, 0.9), "p99_ms": percentile(v, 0.99)});
        let report = json!({
            "url": args.url,
            "clients": args.clients,
            "rate": args.rate,
            "requests": samples.len(),
            "errors": errors,
            "input_tokens": input_tokens,
            "max_new_tokens": args.max_new_tokens,
            "elapsed_s": elapsed,
            "requests_per_s": ok.len() as f64 / elapsed,
            "generated_tokens_per_s": tokens as f64 / elapsed,
            "ttft": pct(&ttft),
            "itl": pct(&itl),
            "latency": pct(&latency),
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if errors > 0 && ok.is_empty() {
        bail!("every request failed");
    }
    Ok(())
}
