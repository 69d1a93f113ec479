//! The sampler's cost per step at batch 64 × a 128k vocabulary, against reading
//! the same logits once, measured in the same run.
//!
//! Logits are Gaussian with σ = 4 (a softmax entropy of about 3.8 nats, flatter than
//! most real next-token distributions, so top-p and typical keep more than they
//! usually would). Each configuration runs `Sampler::sample` over all rows, as
//! `Runner::step` does, on fresh copies of the logits (the copy is not timed);
//! every sequence has a history (prompt + output) for the penalties to look at.
//!
//! ```text
//! cargo run --release -p rill-benches --bin sampling-bench -- [--json out.json]
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use rayon::prelude::*;
use rill_backend::sampler::Sampler;
use rill_proto::{ForwardBatch, SamplingParams, SeqId, SeqStep, TokenId};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 128_256)]
    vocab: usize,
    /// Tokens of history (prompt and output) per sequence.
    #[arg(long, default_value_t = 1024)]
    history: usize,
    /// Timed steps per configuration; the median is reported.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Only configurations whose name contains this.
    #[arg(long)]
    only: Option<String>,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Sum a row with 16 independent lanes (vectorises: a pure read of memory).
fn lane_sum(row: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for c in row.chunks_exact(16) {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum()
}

/// A deterministic N(0, σ²) sample (Box–Muller over splitmix64).
fn gaussian(seed: u64, sigma: f32) -> f32 {
    let u = |k: u64| rill_backend::sampling::uniform(seed, k as usize).max(1e-300);
    let (a, b) = (u(1), u(2));
    ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32 * sigma
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Config {
    name: &'static str,
    params: SamplingParams,
    /// Alternatives reported with each token (`top_n_tokens`).
    top_n: u32,
}

fn configs() -> Vec<Config> {
    let all = SamplingParams {
        do_sample: true,
        temperature: 0.7,
        top_k: 50,
        top_p: 0.95,
        typical_p: 0.95,
        repetition_penalty: 1.2,
        frequency_penalty: 0.5,
        presence_penalty: 0.3,
        count_penalty: 0.2,
        watermark: true,
        ..Default::default()
    };
    let greedy = SamplingParams::default();
    let sample = SamplingParams { do_sample: true, ..Default::default() };
    vec![
        Config { name: "greedy", params: greedy.clone(), top_n: 0 },
        Config { name: "greedy + top_n_tokens 5", params: greedy, top_n: 5 },
        Config { name: "sample (temperature 1)", params: sample, top_n: 0 },
        Config {
            name: "all processors (top_k 50) + top_n_tokens 5",
            params: all.clone(),
            top_n: 5,
        },
        Config {
            name: "all processors, top_p and typical over the full row (no top_k)",
            params: SamplingParams { top_k: 0, ..all },
            top_n: 5,
        },
    ]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (batch, vocab) = (args.batch, args.vocab);
    eprintln!("building {batch} x {vocab} logits (sigma 4)");
    let pristine: Vec<f32> =
        (0..batch * vocab).into_par_iter().map(|i| gaussian(i as u64 ^ 0xabcd_ef01, 4.0)).collect();

    // The reference: reading the logits once, in parallel, as the sampler's rows do.
    let mut reads = Vec::new();
    for _ in 0..args.steps {
        let t = Instant::now();
        let s: f32 = pristine.par_chunks(vocab).map(lane_sum).sum();
        reads.push(t.elapsed());
        std::hint::black_box(s);
    }
    let read = median(reads);
    eprintln!("read 64x128k f32 once: {:.3} ms", read.as_secs_f64() * 1e3);

    let mut results = Vec::new();
    for c in configs() {
        if args.only.as_ref().is_some_and(|o| !c.name.contains(o.as_str())) {
            continue;
        }
        let mut sampler = Sampler::new(vocab);
        let history = |seq: usize| -> Vec<TokenId> {
            (0..args.history)
                .map(|j| TokenId(((seq * 7919 + j * 104_729) % vocab) as u32))
                .collect()
        };
        // First step: the history as one prefill chunk, parameters attached.
        let steps: Vec<SeqStep> = (0..batch)
            .map(|i| SeqStep {
                top_n: c.top_n,
                sampling: Some(Box::new(SamplingParams { seed: i as u64, ..c.params.clone() })),
                ..SeqStep::new(SeqId(i as u64), history(i), 0, Vec::new())
            })
            .collect();
        sampler.prepare(&ForwardBatch { seqs: steps.clone(), ..Default::default() });
        let mut logits = pristine.clone();
        let mut times = Vec::new();
        for step in 0..args.steps {
            logits.copy_from_slice(&pristine);
            let decode: Vec<SeqStep> = steps
                .iter()
                .map(|s| SeqStep {
                    tokens: vec![TokenId((step * 31 % vocab) as u32)],
                    start_pos: args.history + step,
                    sampling: None,
                    prefix: Vec::new(),
                    ..s.clone()
                })
                .collect();
            let fb = ForwardBatch { seqs: decode, ..Default::default() };
            sampler.prepare(&fb);
            let rows: Vec<_> = fb.seqs.iter().zip(logits.chunks_exact_mut(vocab)).collect();
            let t = Instant::now();
            let out = sampler.sample(rows, Vec::new());
            times.push(t.elapsed());
            assert!(out.iter().all(|(_, r)| r.is_ok()));
        }
        times.sort();
        let m = median(times.clone());
        let ratio = m.as_secs_f64() / read.as_secs_f64();
        eprintln!(
            "{:<66} median {:>7.3} ms  p90 {:>7.3} ms  ({ratio:.1}x one read)",
            c.name,
            m.as_secs_f64() * 1e3,
            times[times.len() * 9 / 10].as_secs_f64() * 1e3
        );
        results.push(serde_json::json!({
            "config": c.name,
            "median_ms": m.as_secs_f64() * 1e3,
            "p90_ms": times[times.len() * 9 / 10].as_secs_f64() * 1e3,
            "ratio_to_one_read": ratio,
        }));
    }
    if let Some(path) = args.json {
        let out = serde_json::json!({
            "bench": "sampling-bench",
            "machine": rill_benches::machine::describe(),
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "batch": batch,
            "vocab": vocab,
            "history": args.history,
            "threads": rayon::current_num_threads(),
            "read_once_ms": read.as_secs_f64() * 1e3,
            "results": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
