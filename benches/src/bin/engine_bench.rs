//! The engine against this machine's rooflines, measured in the same run, on the CPU or
//! a GPU.
//!
//! Loads a Llama-shaped model from a `config.json` with dummy weights (default: the
//! ~1.1B model in `benches/models/llama-1.1b`; `benches/models/llama-3-8b` for a GPU),
//! then for each dtype measures batch-1 decode, decode at each `--batch` size and a
//! `--prompt`-token prefill (its time is the engine's time to first token), and reports
//! them against the memory-bandwidth roofline (a batch-1 step streams every weight and
//! the sequence's K/V once) and, on the CPU, the measured FMA peak. The bandwidth is
//! measured in the same run: on the CPU as the best of several ways of reading a buffer on
//! every core (`machine::read_bandwidth`; each is printed), on a GPU by a device-to-device
//! copy. On a GPU every decode measurement is repeated with the CUDA
//! graphs off, so their gain is measured too.
//!
//! ```text
//! cargo run --release -p rill-benches --bin engine-bench -- [--dtype bf16,f32] \
//!     [--precision fast|exact] [--json out.json]
//! engine-bench --device cuda --config benches/models/llama-3-8b/config.json --dtype bf16 \
//!     --batch 64,256 --prompt 2048 --json out.json
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use rill_backend::device::KvLayout;
use rill_backend::{
    AnyRunner, Cuda, DType, DeviceChoice, KvCacheSize, LoadFormat, ModelConfig, Precision,
    RunnerOptions,
};
use rill_benches::machine;
use rill_proto::{BLOCK_SIZE, BlockId, ForwardBatch, SeqId, SeqStep, TokenId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

/// The server's `--precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PrecisionArg {
    Fast,
    Exact,
}

#[derive(Parser, Debug)]
struct Args {
    /// A model's config.json (weights are random: `--load-format dummy`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/models/llama-1.1b/config.json"))]
    config: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// How a 16-bit model computes (the server's `--precision`; an f32 model is exact).
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fast)]
    precision: PrecisionArg,
    /// Weight dtypes to measure, comma-separated (bf16, f16, f32).
    #[arg(long, default_value = "bf16,f32", value_delimiter = ',')]
    dtype: Vec<String>,
    /// Timed decode steps per measurement.
    #[arg(long, default_value_t = 24)]
    steps: usize,
    /// Sequences in the batched decode measurements, comma-separated.
    #[arg(long, default_value = "16", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Prompt tokens each decoding sequence is prefilled with first.
    #[arg(long, default_value_t = 8)]
    context: usize,
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
    runner: AnyRunner,
    blocks_per_seq: usize,
    vocab: u32,
    context: usize,
}

impl Bench {
    fn seq(&self, id: usize, tokens: Vec<u32>, start_pos: usize) -> SeqStep {
        let end = start_pos + tokens.len();
        let first = id * self.blocks_per_seq;
        SeqStep::new(
            SeqId(id as u64),
            tokens.into_iter().map(|t| TokenId(t % self.vocab)).collect(),
            start_pos,
            (first..first + end.div_ceil(BLOCK_SIZE)).map(|b| BlockId(b as u32)).collect(),
        )
    }

    fn step(&mut self, seqs: Vec<SeqStep>) -> Result<Vec<u32>> {
        let out = self.runner.step(&ForwardBatch { seqs, ..Default::default() })?;
        Ok(out.sampled.iter().map(|s| s.token.0).collect())
    }

    /// Prefill `n` sequences with `context`-token prompts (in chunks of at most 4096
    /// tokens, as the scheduler would) and run one untimed decode step, then time `reps`
    /// windows of `steps` decode steps of all of them together; returns the best window's
    /// generated tokens per second (the best window is the one least disturbed).
    fn decode(&mut self, n: usize, steps: usize, reps: usize) -> Result<f64> {
        let prompt = self.context;
        let per_step = (4096 / prompt).max(1);
        let mut last = Vec::with_capacity(n);
        for first in (0..n).step_by(per_step) {
            let seqs = (first..n.min(first + per_step))
                .map(|i| self.seq(i, (0..prompt as u32).map(|t| t * 97 + i as u32).collect(), 0))
                .collect();
            last.extend(self.step(seqs)?);
        }
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

    /// Best of `reps` single-chunk prefills of `len` tokens (after one untimed); seconds.
    fn prefill(&mut self, len: usize, reps: usize) -> Result<f64> {
        let mut best = f64::MAX;
        for rep in 0..=reps as u32 {
            let tokens = (0..len as u32).map(|t| t * 31 + rep).collect();
            let t = Instant::now();
            self.step(vec![self.seq(0, tokens, 0)])?;
            if rep > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        Ok(best)
    }
}

fn parse_dtype(s: &str) -> Result<DType> {
    DType::parse(s).with_context(|| format!("unknown dtype `{s}` (bf16, f16, f32)"))
}

/// What the device can do at best, measured now.
struct Roofs {
    /// Bytes per second the engine's weight and K/V reads can reach.
    bandwidth: f64,
    /// f32 FMA peak (CPU only).
    peak: Option<f64>,
    /// Each way the CPU's bandwidth was read (the best is `bandwidth`).
    probes: Vec<serde_json::Value>,
}

/// Everything one dtype's measurement needs besides the device.
struct Setup<'a> {
    args: &'a Args,
    config: &'a ModelConfig,
    dtype: DType,
    name: &'a str,
    roofs: &'a Roofs,
}

/// Weights streamed per decoded token: every matrix but the embedding table (one row of
/// it is read), plus the LM head.
fn streamed_params(c: &ModelConfig) -> usize {
    let embed = c.vocab_size * c.hidden_size;
    c.num_parameters() - embed + if c.tie_word_embeddings { embed } else { 0 }
}

/// Replay the CUDA graphs or not; `false` for a device that has none.
fn replay_graphs(runner: &AnyRunner, replay: bool) -> bool {
    match runner {
        AnyRunner::Cuda(r) => {
            r.device().replay_graphs(replay);
            true
        }
        AnyRunner::Cpu(_) => false,
    }
}

/// Load the model on the chosen device (the server's load path) and run every
/// measurement; on a device with CUDA graphs the decodes are repeated with them off.
fn measure(s: &Setup, device: DeviceChoice) -> Result<serde_json::Value> {
    let (args, config) = (s.args, s.config);
    let streamed = streamed_params(config);
    let weight_bytes = (streamed * s.dtype.size()) as f64;
    // The batch-1 roofline counts the K/V the step reads too, at the mean context of the
    // timed windows.
    let kv_per_token = (KvLayout::block_bytes(config) / BLOCK_SIZE) as f64;
    let mean_context = (args.context + args.steps * args.reps / 2) as f64;
    let step_bytes = weight_bytes + kv_per_token * mean_context;
    let flops_per_token = 2.0 * streamed as f64;
    eprintln!("loading {} parameters as {} (dummy weights)...", config.num_parameters(), s.name);
    let t = Instant::now();
    let tokens_per_seq = args.prompt.max(args.context + args.steps * args.reps + 1);
    let blocks_per_seq = tokens_per_seq.div_ceil(BLOCK_SIZE);
    let max_batch = args.batch.iter().copied().max().unwrap_or(1);
    let opts = RunnerOptions {
        kv_cache: KvCacheSize::Tokens(blocks_per_seq * max_batch * BLOCK_SIZE),
        load_format: LoadFormat::Dummy(s.dtype),
        // The largest step it runs: the prefill measurement (one chunk) or a 4096-token
        // chunk of the decodes' prompts.
        max_step_tokens: Some(args.prompt.max(4096)),
        precision: match args.precision {
            PrecisionArg::Fast => Precision::Fast,
            PrecisionArg::Exact => Precision::Exact,
        },
        ..RunnerOptions::default()
    };
    let dir = args.config.parent().unwrap_or(&args.config);
    let runner = AnyRunner::load(dir, config, device, &opts)?;
    eprintln!("  loaded in {:.1} s", t.elapsed().as_secs_f64());
    let mut bench =
        Bench { runner, blocks_per_seq, vocab: config.vocab_size as u32, context: args.context };

    let roofline = s.roofs.bandwidth / step_bytes;
    let gflops = |tps: f64| tps * flops_per_token / 1e9;
    let mut decodes = Vec::new();
    let eager_too = replay_graphs(&bench.runner, true);
    for replay in [true, false].into_iter().take(1 + eager_too as usize) {
        replay_graphs(&bench.runner, replay);
        let label = if !eager_too {
            ""
        } else if replay {
            " (graphs)"
        } else {
            " (eager)"
        };
        for &n in std::iter::once(&1).chain(&args.batch) {
            let tps = bench.decode(n, args.steps, args.reps)?;
            print!("  decode batch {n:>3}{label}: {tps:9.1} tok/s");
            if n == 1 {
                println!("   roofline {roofline:.1} tok/s ({:.0}%)", 100.0 * tps / roofline);
            } else {
                println!("   {:.0} GFLOP/s", gflops(tps));
            }
            decodes.push(serde_json::json!({
                "batch": n,
                "graphs": eager_too.then_some(replay),
                "tok_s": tps,
                "gflop_s": gflops(tps),
                "roofline_ratio": (n == 1).then(|| tps / roofline),
            }));
        }
    }
    replay_graphs(&bench.runner, true);
    let prefill = bench.prefill(args.prompt, args.reps)?;
    let prefill_tps = args.prompt as f64 / prefill;
    println!(
        "  prefill {} tok: {:.1} ms, {prefill_tps:.0} tok/s, {:.0} GFLOP/s{}",
        args.prompt,
        prefill * 1e3,
        gflops(prefill_tps),
        s.roofs.peak.map_or(String::new(), |p| format!(
            " ({:.0}% of FMA peak)",
            100.0 * gflops(prefill_tps) * 1e9 / p
        ))
    );
    Ok(serde_json::json!({
        "dtype": s.name,
        "weight_bytes_per_token": weight_bytes,
        "step_bytes_b1": step_bytes,
        "roofline_b1_tok_s": roofline,
        "decode": decodes,
        "prefill_tokens": args.prompt,
        "prefill_s": prefill,
        "prefill_tok_s": prefill_tps,
        "prefill_gflop_s": gflops(prefill_tps),
    }))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = ModelConfig::from_file(&args.config)?;
    if args.batch.contains(&0) || args.prompt == 0 || args.steps == 0 || args.reps == 0 {
        bail!("--batch, --prompt, --steps and --reps must be positive");
    }
    if args.context == 0 || args.context + args.steps * args.reps >= config.max_position_embeddings
    {
        bail!("--context must be positive and leave room for the timed decode steps");
    }
    let (roofs, machine) = match args.device {
        DeviceArg::Cpu => {
            eprintln!("measuring memory bandwidth and FMA peak...");
            let bandwidth = machine::read_bandwidth(1 << 30, 8);
            for p in &bandwidth.probes {
                eprintln!("  read {:.1} GB/s: {}", p.bytes_per_s / 1e9, p.name);
            }
            let probes = bandwidth
                .probes
                .iter()
                .map(|p| serde_json::json!({"probe": p.name, "bytes_s": p.bytes_per_s}))
                .collect();
            let roofs =
                Roofs { bandwidth: bandwidth.best, peak: machine::peak_fma_flops(), probes };
            (roofs, machine::describe())
        }
        DeviceArg::Cuda => {
            let cuda = Cuda::new(0)?;
            eprintln!("measuring device memory bandwidth...");
            let roofs = Roofs {
                bandwidth: cuda.copy_bandwidth(4 << 30, 10)?,
                peak: None,
                probes: Vec::new(),
            };
            (roofs, format!("{} (CUDA device 0); host: {}", cuda.gpu_name(), machine::describe()))
        }
    };
    eprintln!(
        "  bandwidth {:.1} GB/s{}",
        roofs.bandwidth / 1e9,
        roofs.peak.map_or(String::new(), |p| format!(", f32 FMA peak {:.0} GFLOP/s", p / 1e9))
    );

    let mut results = Vec::new();
    for name in &args.dtype {
        let dtype = parse_dtype(name)?;
        let s = Setup { args: &args, config: &config, dtype, name, roofs: &roofs };
        println!(
            "dtype {name} on {machine}: weights streamed per token {:.2} GB",
            (streamed_params(&config) * dtype.size()) as f64 / 1e9
        );
        results.push(match args.device {
            DeviceArg::Cpu => measure(&s, DeviceChoice::Cpu { threads: None })?,
            DeviceArg::Cuda => measure(&s, DeviceChoice::Cuda { ordinal: 0 })?,
        });
    }
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "machine": machine,
            "config": args.config,
            "device": format!("{:?}", args.device).to_lowercase(),
            "precision": format!("{:?}", args.precision).to_lowercase(),
            "threads": rayon::current_num_threads(),
            "bandwidth_bytes_s": roofs.bandwidth,
            "bandwidth_probes": roofs.probes,
            "fma_peak_flop_s": roofs.peak,
            "context": args.context,
            "steps": args.steps,
            "reps": args.reps,
            "results": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
