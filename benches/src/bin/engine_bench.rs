//! The CPU engine against this machine's rooflines, measured in the same run.
//!
//! Loads a Llama-shaped model from a `config.json` with dummy weights (default: the
//! ~1.1B model in `benches/models/llama-1.1b`), then for each dtype measures
//! batch-1 decode, batch-16 decode and a 512-token prefill, and reports them against
//! the memory-bandwidth roofline (batch 1 streams every weight once per token) and
//! the measured FMA peak (batch 16 and prefill are compute-bound).
//!
//! ```text
//! cargo run --release -p rill-benches --bin engine-bench -- [--dtype bf16,f32] [--json out.json]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rill_backend::{Cpu, DType, LoadFormat, ModelConfig, Runner, RunnerOptions};
use rill_benches::machine;
use rill_proto::{BLOCK_SIZE, BlockId, ForwardBatch, SeqId, SeqStep, TokenId};

#[derive(Parser, Debug)]
struct Args {
    /// A model's config.json (weights are random: `--load-format dummy`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/models/llama-1.1b/config.json"))]
    config: PathBuf,
    /// Weight dtypes to measure, comma-separated (bf16, f16, f32).
    #[arg(long, default_value = "bf16,f32", value_delimiter = ',')]
    dtype: Vec<String>,
    /// Timed decode steps per measurement.
    #[arg(long, default_value_t = 24)]
    steps: usize,
    /// Sequences in the batched decode measurement.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Prompt length of the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prompt: usize,
    /// Timed repetitions of each measurement; the best is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Drives sequences with contiguous block ranges through the runner.
struct Bench {
    runner: Runner<Cpu>,
    blocks_per_seq: usize,
    vocab: u32,
}

impl Bench {
    fn seq(&self, id: usize, tokens: Vec<u32>, start_pos: usize) -> SeqStep {
        let end = start_pos + tokens.len();
        let first = id * self.blocks_per_seq;
        SeqStep {
            id: SeqId(id as u64),
            tokens: tokens.into_iter().map(|t| TokenId(t % self.vocab)).collect(),
            start_pos,
            block_table: (first..first + end.div_ceil(BLOCK_SIZE))
                .map(|b| BlockId(b as u32))
                .collect(),
            sample: true,
            top_n: 0,
            logprob_targets: Vec::new(),
            sampling: None,
        }
    }

    fn step(&mut self, seqs: Vec<SeqStep>) -> Result<Vec<u32>> {
        let out = self.runner.step(&ForwardBatch { seqs, ..Default::default() })?;
        Ok(out.sampled.iter().map(|s| s.token.0).collect())
    }

    /// Prefill `n` sequences with 8-token prompts and run one untimed decode step,
    /// then time `reps` windows of `steps` decode steps of all of them together;
    /// returns the best window's generated tokens per second (this machine is
    /// shared and noisy: the best window is the one least disturbed).
    fn decode(&mut self, n: usize, steps: usize, reps: usize) -> Result<f64> {
        let prompt = 8;
        let seqs = (0..n)
            .map(|i| self.seq(i, (0..prompt as u32).map(|t| t * 97 + i as u32).collect(), 0))
            .collect();
        let mut last = self.step(seqs)?;
        let mut pos = prompt;
        let mut best = 0.0f64;
        for rep in 0..=reps {
            let t = Instant::now();
            let window = if rep == 0 { 1 } else { steps };
            for _ in 0..window {
                let seqs = (0..n).map(|i| self.seq(i, vec![last[i]], pos)).collect();
                last = self.step(seqs)?;
                pos += 1;
            }
            if rep > 0 {
                best = best.max((n * steps) as f64 / t.elapsed().as_secs_f64());
            }
        }
        Ok(best)
    }

    /// Best of `reps` single-chunk prefills of `len` tokens; prompt tokens per second.
    fn prefill(&mut self, len: usize, reps: usize) -> Result<f64> {
        let mut best = f64::MAX;
        for rep in 0..reps as u32 {
            let tokens = (0..len as u32).map(|t| t * 31 + rep).collect();
            let t = Instant::now();
            self.step(vec![self.seq(0, tokens, 0)])?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(len as f64 / best)
    }
}

fn parse_dtype(s: &str) -> Result<DType> {
    DType::parse(s).with_context(|| format!("unknown dtype `{s}` (bf16, f16, f32)"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = ModelConfig::from_file(&args.config)?;
    let threads = rayon::current_num_threads();
    if args.batch == 0 || args.prompt == 0 || args.steps == 0 || args.reps == 0 {
        bail!("--batch, --prompt, --steps and --reps must be positive");
    }

    eprintln!("measuring memory bandwidth and FMA peak on {threads} threads...");
    let bandwidth = machine::read_bandwidth(1 << 30, 8);
    let peak = machine::peak_fma_flops();
    eprintln!(
        "  read bandwidth {:.1} GB/s, f32 FMA peak {}",
        bandwidth / 1e9,
        peak.map_or("n/a".into(), |p| format!("{:.0} GFLOP/s", p / 1e9))
    );

    // Weights streamed per decoded token: every matrix but the embedding table
    // (one row of it is read), plus the LM head.
    let h = config.hidden_size;
    let embed = config.vocab_size * h;
    let streamed =
        config.num_parameters() - embed + if config.tie_word_embeddings { embed } else { 0 };
    let flops_per_token = 2.0 * streamed as f64;

    let mut results = Vec::new();
    for name in &args.dtype {
        let dtype = parse_dtype(name)?;
        let weight_bytes = (streamed * dtype.size()) as f64;
        eprintln!("loading {} parameters as {name} (dummy weights)...", config.num_parameters());
        let t = Instant::now();
        let blocks_per_seq = (args.prompt.max(8 + args.steps * args.reps + 1)).div_ceil(BLOCK_SIZE);
        let kv_per_block =
            2 * config.num_layers * BLOCK_SIZE * config.num_kv_heads * config.head_dim * 4;
        let opts = RunnerOptions {
            kv_cache_bytes: blocks_per_seq * args.batch.max(1) * kv_per_block,
            load_format: LoadFormat::Dummy(dtype),
        };
        let runner =
            Runner::load(args.config.parent().unwrap_or(&args.config), &config, Cpu::new(), &opts)?;
        eprintln!("  loaded in {:.1} s", t.elapsed().as_secs_f64());
        let mut bench = Bench { runner, blocks_per_seq, vocab: config.vocab_size as u32 };

        let b1 = bench.decode(1, args.steps, args.reps)?;
        let roofline = bandwidth / weight_bytes;
        let bn = bench.decode(args.batch, args.steps, args.reps)?;
        let prefill = bench.prefill(args.prompt, args.reps)?;
        let gflops = |tps: f64| tps * flops_per_token / 1e9;
        println!("dtype {name}: weights streamed per token {:.2} GB", weight_bytes / 1e9);
        println!(
            "  decode batch 1:   {b1:7.2} tok/s   roofline {roofline:.2} tok/s ({:.0}% of bandwidth)",
            100.0 * b1 / roofline
        );
        println!(
            "  decode batch {}:  {bn:7.2} tok/s   {:.1}x batch 1, {:.0} GFLOP/s{}",
            args.batch,
            bn / b1,
            gflops(bn),
            peak.map_or(String::new(), |p| format!(
                " ({:.0}% of FMA peak)",
                100.0 * gflops(bn) * 1e9 / p
            ))
        );
        println!(
            "  prefill {} tok:  {prefill:7.1} tok/s   {:.0} GFLOP/s",
            args.prompt,
            gflops(prefill)
        );
        results.push(serde_json::json!({
            "dtype": name,
            "weight_bytes_per_token": weight_bytes,
            "decode_b1_tok_s": b1,
            "roofline_b1_tok_s": roofline,
            "roofline_ratio": b1 / roofline,
            "batch": args.batch,
            "decode_batch_tok_s": bn,
            "decode_batch_speedup": bn / b1,
            "decode_batch_gflop_s": gflops(bn),
            "prefill_tokens": args.prompt,
            "prefill_tok_s": prefill,
            "prefill_gflop_s": gflops(prefill),
        }));
    }
    if let Some(path) = args.json {
        let report = serde_json::json!({
            "config": args.config,
            "threads": threads,
            "read_bandwidth_bytes_s": bandwidth,
            "fma_peak_flop_s": peak,
            "results": results,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
