//! `rill-bench`: drive a running server over HTTP + SSE and report throughput and
//! latency percentiles.
//!
//! Closed loop (`--clients N`: N clients, each sending its next request when the
//! last one ends) or open loop (`--rate R`: Poisson arrivals at R requests/s).
//! Every request streams with `ignore_eos` so it generates exactly `--max-new-tokens`:
//! from TGI's `/generate_stream` (`--api tgi`, the default) or, greedy, from OpenAI's
//! `/v1/completions` (`--api openai`, which any OpenAI-compatible server such as
//! llama.cpp's or vLLM's answers: the peer harness drives both engines with it). Reports requests/s, generated tokens/s, time to first
//! token and inter-token latency (p50/p90/p99), end-to-end latency, errors and (from the
//! server's `/metrics`, where it has them) the prefix cache's hit rate; `--json` writes
//! the same for scripts.
//!
//! `--workload` chooses the prompts: each request its own (`unique`, the default), one
//! shared system prompt before each request's own question (`shared-prefix`), or
//! conversations that resend everything so far every turn (`multi-turn`). With
//! `--baseline-url` the same workload then runs against a second server (say, the same
//! model with `--prefix-caching false`) and the report gives the ratios. `soak` is a
//! bounded reliability run rather than a measurement (see `soak.rs`).
//!
//! ```text
//! cargo run --release -p rill-benches --bin rill-bench -- --url http://127.0.0.1:3000 --clients 8
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Mutex;

mod api;
mod soak;

use api::{Target, request_for};

/// What the prompts look like.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    /// Every request a prompt of its own, of about --prompt-tokens.
    Unique,
    /// One system prompt of about --prefix-tokens shared by every request, then a
    /// question of its own of about --prompt-tokens.
    SharedPrefix,
    /// Each client holds a conversation of --turns turns; every turn resends the whole
    /// conversation (earlier questions and the server's answers) and a new question of
    /// about --prompt-tokens. --requests is ignored.
    MultiTurn,
    /// A mixed workload for --duration-s (long prompts, dropped streams, grammars,
    /// best_of, n, stop strings, refused requests) checking, at each idle point between
    /// rounds, that no KV block leaked, the block manager stayed consistent and resident
    /// memory stays flat; fails if anything does not hold.
    Soak,
}

/// Which API the requests use.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    /// TGI's `/generate_stream` and `/tokenize`.
    Tgi,
    /// OpenAI's streaming `/v1/completions` (greedy, `ignore_eos`, usage in the last
    /// chunk); prompt lengths from its `usage.prompt_tokens`.
    Openai,
}

#[derive(Parser, Debug, Clone)]
#[command(name = "rill-bench", about = "Load generator for Rill (and any TGI-compatible server)")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// Run the same workload against this server too, after --url, and compare.
    #[arg(long)]
    baseline_url: Option<String>,
    #[arg(long, value_enum, default_value_t = Workload::Unique)]
    workload: Workload,
    /// The API to drive (the soak always uses TGI's).
    #[arg(long, value_enum, default_value_t = Api::Tgi)]
    api: Api,
    /// The `model` of OpenAI requests (default: the first of the server's `/v1/models`).
    #[arg(long)]
    model: Option<String>,
    /// The shared system prompt's length (`shared-prefix`).
    #[arg(long, default_value_t = 1500)]
    prefix_tokens: usize,
    /// Turns per conversation (`multi-turn`).
    #[arg(long, default_value_t = 4)]
    turns: usize,
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
    /// How long the soak runs, in seconds (`soak`).
    #[arg(long, default_value_t = 60.0)]
    duration_s: f64,
    /// Seconds per soak round; the server is let go idle and checked after each.
    #[arg(long, default_value_t = 5.0)]
    round_s: f64,
    /// The soak's long prompts, in tokens.
    #[arg(long, default_value_t = 1000)]
    long_prompt_tokens: usize,
    /// How much the server's resident memory may grow over the second half of the soak
    /// (the first is warm-up), in MiB.
    #[arg(long, default_value_t = 64.0)]
    max_rss_growth_mib: f64,
}

/// What one request measured.
#[derive(Debug, Default, Clone)]
struct Sample {
    ttft: Option<Duration>,
    itls: Vec<Duration>,
    latency: Duration,
    tokens: usize,
    /// The generated text (the stream's last event).
    text: String,
    error: Option<String>,
}

async fn one_request(
    client: &reqwest::Client,
    target: &Target,
    args: &Args,
    prompt: &str,
) -> Sample {
    let (endpoint, body) = request_for(target, args, prompt);
    let start = Instant::now();
    let mut sample = Sample::default();
    let mut usage_tokens = None;
    let response = match client.post(endpoint).json(&body).send().await {
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
        for data in take_sse_data(&mut buffer) {
            let now = Instant::now();
            if data == "[DONE]" {
                continue;
            }
            let parsed: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            if parsed.get("error").is_some() {
                sample.error = Some(parsed["error"].to_string());
                continue;
            }
            if let Some(n) = parsed["usage"]["completion_tokens"].as_u64() {
                usage_tokens = Some(n as usize);
            }
            // An OpenAI chunk with no choice carries only the usage.
            let openai_text = parsed["choices"][0]["text"].as_str();
            if target.model.is_some() && openai_text.is_none() {
                continue;
            }
            match sample.ttft {
                None => sample.ttft = Some(now - start),
                Some(_) => sample.itls.push(now - last),
            }
            match openai_text {
                Some(text) => sample.text.push_str(text),
                None => {
                    if let Some(text) = parsed["generated_text"].as_str() {
                        sample.text = text.to_string();
                    }
                }
            }
            last = now;
            sample.tokens += 1;
        }
    }
    // A server may send a token's text in the next chunk (an incomplete UTF-8 sequence):
    // the usage, where it comes, counts every token.
    sample.tokens = usage_tokens.unwrap_or(sample.tokens);
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

/// Text of about `tokens` tokens on this server's tokenizer, measured through its
/// `/tokenize`; and this run's tag, which opens every prompt so that no prompt of an
/// earlier run (kept in a server's prefix cache) shares even its first block.
struct Words {
    per_word: f64,
    run: String,
}

impl Words {
    async fn measure(client: &reqwest::Client, target: &Target) -> Result<Words> {
        let n = target.count(client, &text(200)).await?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        Ok(Words { per_word: n as f64 / 200.0, run: format!("Run {:x}.", nanos.as_nanos()) })
    }

    fn about(&self, tokens: usize) -> String {
        text(((tokens as f64 / self.per_word).round() as usize).max(1))
    }
}

fn text(words: usize) -> String {
    let text = "the river sang to the stones ".repeat(words.div_ceil(6));
    text.split(' ').take(words).collect::<Vec<_>>().join(" ")
}

async fn count(client: &reqwest::Client, url: &str, text: &str) -> Result<usize> {
    let r: Value = client
        .post(format!("{url}/tokenize"))
        .json(&json!({"inputs": text}))
        .send()
        .await?
        .json()
        .await?;
    Ok(r.as_array().context("/tokenize did not answer a list")?.len())
}

/// One server's run of the workload.
struct Report {
    url: String,
    elapsed: f64,
    samples: Vec<Sample>,
    /// The server's prefix-cache counters over the run (tokens queried, hit).
    cache: Option<(f64, f64)>,
}

/// Every series on the server's `/metrics`, by name with its labels, and its value.
async fn scrape(client: &reqwest::Client, url: &str) -> Result<BTreeMap<String, f64>> {
    let text = client.get(format!("{url}/metrics")).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect())
}

/// The prefix cache's token counters, if the server exports them.
async fn cache_counters(client: &reqwest::Client, url: &str) -> Option<(f64, f64)> {
    let m = scrape(client, url).await.ok()?;
    Some((*m.get("rill_prefix_cache_queries")?, *m.get("rill_prefix_cache_hits")?))
}

/// Take every complete server-sent event out of `buffer` (what has arrived so far),
/// returning the `data:` payloads.
fn take_sse_data(buffer: &mut String) -> Vec<String> {
    let mut data = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let event: String = buffer.drain(..end + 2).collect();
        if let Some(d) = event.trim().strip_prefix("data:") {
            data.push(d.trim().to_string());
        }
    }
    data
}

/// The prompt of request `i` (unique and shared-prefix workloads).
fn prompt_for(args: &Args, words: &Words, i: usize) -> String {
    match args.workload {
        // A number first: no two prompts share even their first block.
        Workload::Unique => format!("{i}: {} {}", words.run, words.about(args.prompt_tokens)),
        Workload::SharedPrefix => format!(
            "{} System: {}\nQuestion {i}: {}",
            words.run,
            words.about(args.prefix_tokens),
            words.about(args.prompt_tokens)
        ),
        Workload::MultiTurn => unreachable!("conversations build their own prompts"),
        Workload::Soak => unreachable!("the soak builds its own requests"),
    }
}

async fn run(client: &reqwest::Client, url: &str, args: &Args) -> Result<Report> {
    let target = Arc::new(Target::new(client, url, args).await?);
    let words = Arc::new(Words::measure(client, &target).await?);
    let total = args.requests.unwrap_or(if args.rate.is_some() { 32 } else { 4 * args.clients });
    let samples = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let before = cache_counters(client, url).await;
    let started = Instant::now();

    if args.workload == Workload::MultiTurn {
        let tasks: Vec<_> = (0..args.clients)
            .map(|c| {
                let (client, target, args, words, samples) = (
                    client.clone(),
                    Arc::clone(&target),
                    args.clone(),
                    Arc::clone(&words),
                    Arc::clone(&samples),
                );
                tokio::spawn(async move {
                    let mut conversation = format!("Conversation {c}. {}\n", words.run);
                    for turn in 0..args.turns {
                        conversation.push_str(&format!(
                            "User {turn}: {}\nAssistant:",
                            words.about(args.prompt_tokens)
                        ));
                        let s = one_request(&client, &target, &args, &conversation).await;
                        conversation.push_str(&s.text);
                        conversation.push('\n');
                        samples.lock().await.push(s);
                    }
                })
            })
            .collect();
        futures::future::join_all(tasks).await;
    } else if let Some(rate) = args.rate {
        // Open loop: exponential gaps, every request on its own task.
        let mut tasks = Vec::with_capacity(total);
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..total {
            let prompt = prompt_for(args, &words, i);
            let (client, target, args, samples) =
                (client.clone(), Arc::clone(&target), args.clone(), Arc::clone(&samples));
            tasks.push(tokio::spawn(async move {
                let s = one_request(&client, &target, &args, &prompt).await;
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
                let (client, target, args, words, samples, next) = (
                    client.clone(),
                    Arc::clone(&target),
                    args.clone(),
                    Arc::clone(&words),
                    Arc::clone(&samples),
                    Arc::clone(&next),
                );
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        let prompt = prompt_for(&args, &words, i);
                        let s = one_request(&client, &target, &args, &prompt).await;
                        samples.lock().await.push(s);
                    }
                })
            })
            .collect();
        futures::future::join_all(tasks).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = cache_counters(client, url).await;
    let cache = before.zip(after).map(|((q0, h0), (q1, h1))| (q1 - q0, h1 - h0));
    let samples = std::mem::take(&mut *samples.lock().await);
    Ok(Report { url: url.to_string(), elapsed, samples, cache })
}

/// A report's figures.
struct Figures {
    ok: usize,
    errors: usize,
    tokens: usize,
    ttft: Vec<Duration>,
    itl: Vec<Duration>,
    latency: Vec<Duration>,
}

impl Report {
    fn figures(&self) -> Figures {
        let ok: Vec<&Sample> = self.samples.iter().filter(|s| s.error.is_none()).collect();
        let mut f = Figures {
            ok: ok.len(),
            errors: self.samples.len() - ok.len(),
            tokens: ok.iter().map(|s| s.tokens).sum(),
            ttft: ok.iter().filter_map(|s| s.ttft).collect(),
            itl: ok.iter().flat_map(|s| s.itls.iter().copied()).collect(),
            latency: ok.iter().map(|s| s.latency).collect(),
        };
        f.ttft.sort();
        f.itl.sort();
        f.latency.sort();
        f
    }

    fn tokens_per_s(&self) -> f64 {
        self.figures().tokens as f64 / self.elapsed
    }

    fn print(&self, args: &Args) {
        let f = self.figures();
        let mode = match (args.workload, args.rate) {
            (Workload::MultiTurn, _) => {
                format!("{} conversations of {} turns", args.clients, args.turns)
            }
            (_, Some(r)) => format!("open loop, {r} req/s"),
            (_, None) => format!("closed loop, {} clients", args.clients),
        };
        println!(
            "{}: {:?} workload, {mode}: {} requests, {} new tokens each",
            self.url,
            args.workload,
            self.samples.len(),
            args.max_new_tokens
        );
        println!(
            "  throughput  {:.2} req/s, {:.1} generated tok/s ({:.1} s)",
            f.ok as f64 / self.elapsed,
            f.tokens as f64 / self.elapsed,
            self.elapsed
        );
        let line = |name: &str, v: &[Duration]| {
            println!(
                "  {name:<11} p50 {:8.1} ms   p90 {:8.1} ms   p99 {:8.1} ms",
                percentile(v, 0.5),
                percentile(v, 0.9),
                percentile(v, 0.99)
            )
        };
        line("TTFT", &f.ttft);
        line("ITL", &f.itl);
        line("latency", &f.latency);
        if let Some((queried, hit)) = self.cache {
            println!(
                "  prefix cache {hit:.0} of {queried:.0} looked-up tokens hit ({:.0}%)",
                100.0 * hit / queried.max(1.0)
            );
        }
        println!("  errors      {}", f.errors);
        if let Some(first) = self.samples.iter().find_map(|s| s.error.as_ref()) {
            println!("  first error: {first}");
        }
    }

    fn json(&self, args: &Args) -> Value {
        let f = self.figures();
        let pct = |v: &[Duration]| json!({"p50_ms": percentile(v, 0.5), "p90_ms": percentile(v, 0.9), "p99_ms": percentile(v, 0.99)});
        json!({
            "url": self.url,
            "workload": format!("{:?}", args.workload),
            "clients": args.clients,
            "rate": args.rate,
            "turns": (args.workload == Workload::MultiTurn).then_some(args.turns),
            "prefix_tokens": (args.workload == Workload::SharedPrefix).then_some(args.prefix_tokens),
            "prompt_tokens": args.prompt_tokens,
            "requests": self.samples.len(),
            "errors": f.errors,
            "max_new_tokens": args.max_new_tokens,
            "elapsed_s": self.elapsed,
            "requests_per_s": f.ok as f64 / self.elapsed,
            "generated_tokens_per_s": f.tokens as f64 / self.elapsed,
            "ttft": pct(&f.ttft),
            "itl": pct(&f.itl),
            "latency": pct(&f.latency),
            "prefix_cache": self.cache.map(|(q, h)| json!({"queried_tokens": q, "hit_tokens": h})),
        })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.max_new_tokens == 0 || args.turns == 0 {
        bail!("--clients, --turns and --max-new-tokens must be positive");
    }
    // A new connection per request: some servers (llama.cpp's) close a connection after a
    // stream, and a request sent on a pooled connection the server has just closed fails.
    // On loopback a connect costs well under a millisecond.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    if args.workload == Workload::Soak {
        return soak::run(&client, &args).await;
    }
    let report = run(&client, &args.url, &args).await?;
    report.print(&args);
    let baseline = match &args.baseline_url {
        Some(url) => {
            let b = run(&client, url, &args).await?;
            b.print(&args);
            Some(b)
        }
        None => None,
    };
    let mut comparison = Value::Null;
    if let Some(b) = &baseline {
        let (f, g) = (report.figures(), b.figures());
        let ratio = |p: f64| percentile(&g.ttft, p) / percentile(&f.ttft, p);
        let speedup = report.tokens_per_s() / b.tokens_per_s();
        println!(
            "{} vs {}: TTFT p50 {:.1}× lower, p90 {:.1}× lower; throughput {:.2}×",
            report.url,
            b.url,
            ratio(0.5),
            ratio(0.9),
            speedup
        );
        comparison = json!({"ttft_p50_ratio": ratio(0.5), "ttft_p90_ratio": ratio(0.9),
                            "throughput_ratio": speedup});
    }
    if let Some(path) = &args.json {
        let out = match &baseline {
            None => report.json(&args),
            Some(b) => json!({"run": report.json(&args), "baseline": b.json(&args),
                              "comparison": comparison}),
        };
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    for r in std::iter::once(&report).chain(&baseline) {
        if r.figures().ok == 0 {
            bail!("every request to {} failed", r.url);
        }
    }
    Ok(())
}
