//! `rill`: load a Hugging Face model directory and run it.
//!
//! Until the HTTP router lands (it is the next piece of work), the binary loads the
//! model — the bundled fixture when no `--model-id` is given — onto the chosen
//! device, runs a greedy generation of `--prompt` as a smoke test, and reports what
//! it loaded and how fast it ran.

mod model_id;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use rill_backend::{Cpu, DType, LoadFormat, ModelDir, Runner, RunnerOptions};
use rill_proto::{BLOCK_SIZE, BlockId, ForwardBatch, SeqId, SeqStep, TokenId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    /// CUDA when a GPU is usable, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LoadFormatArg {
    /// The directory's safetensors files.
    Safetensors,
    /// Random weights for the model config.json describes (benchmarks).
    Dummy,
}

#[derive(Parser, Debug)]
#[command(
    name = "rill",
    version,
    about = "Rill: a streaming text-generation server"
)]
struct Args {
    /// A model directory, or a Hugging Face id found in the local hub cache.
    /// Default: the small model bundled with the repository.
    #[arg(long, env = "MODEL_ID")]
    model_id: Option<String>,
    /// Where to run the model.
    #[arg(long, env = "DEVICE", value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Weight source (`dummy` fills the model with random weights of `--dtype`).
    #[arg(long, env = "LOAD_FORMAT", value_enum, default_value_t = LoadFormatArg::Safetensors)]
    load_format: LoadFormatArg,
    /// Weight dtype for `--load-format dummy` (bfloat16, float16, float32).
    #[arg(long, env = "DTYPE", default_value = "bfloat16")]
    dtype: String,
    /// Memory for the paged KV cache, in MiB.
    #[arg(long, env = "KV_CACHE_MEMORY_MIB", default_value_t = 1024)]
    kv_cache_memory_mib: usize,
    /// CPU threads (default: one per core).
    #[arg(long, env = "NUM_THREADS")]
    num_threads: Option<usize>,
    /// Prompt of the start-up smoke generation.
    #[arg(long, default_value = "The quick brown fox")]
    prompt: String,
    /// Tokens to generate for the smoke generation.
    #[arg(long, default_value_t = 16)]
    max_new_tokens: usize,
    /// Log as JSON lines.
    #[arg(long, env = "JSON_OUTPUT")]
    json_output: bool,
}

fn bundled_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../integration-tests/fixtures/models/llama")
}

fn main() -> Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr; stdout carries only the generated text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.json_output {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }

    let dir = match &args.model_id {
        None => bundled_model(),
        Some(id) => model_id::resolve(id)?,
    };
    if args.device == DeviceArg::Cuda {
        bail!("--device cuda: this build has no CUDA engine yet; use --device cpu");
    }
    let device = match args.num_threads {
        Some(n) => Cpu::with_threads(n),
        None => Cpu::new(),
    };
    let load_format = match args.load_format {
        LoadFormatArg::Safetensors => LoadFormat::Safetensors,
        LoadFormatArg::Dummy => LoadFormat::Dummy(
            DType::parse(&args.dtype)
                .with_context(|| format!("unknown --dtype `{}`", args.dtype))?,
        ),
    };

    let t = Instant::now();
    let model = ModelDir::open(&dir)?;
    let opts = RunnerOptions {
        kv_cache_bytes: args.kv_cache_memory_mib << 20,
        load_format,
    };
    let threads = device.threads();
    let mut runner = Runner::load(&dir, &model.config, device, &opts)?;
    let c = &model.config;
    tracing::info!(
        model = %dir.display(),
        architecture = c.architecture.hf_name(),
        parameters = c.num_parameters(),
        layers = c.num_layers,
        hidden = c.hidden_size,
        vocab = c.vocab_size,
        device = runner.device_name(),
        threads,
        kv_blocks = runner.num_blocks(),
        kv_tokens = runner.num_blocks() * BLOCK_SIZE,
        load_ms = t.elapsed().as_millis() as u64,
        "model loaded"
    );

    let prompt: Vec<u32> = model
        .tokenizer
        .encode(args.prompt.as_str(), true)
        .map_err(|e| anyhow::anyhow!("cannot tokenize the prompt: {e}"))?
        .get_ids()
        .to_vec();
    let total = prompt.len() + args.max_new_tokens;
    if prompt.is_empty()
        || total > c.max_position_embeddings
        || total.div_ceil(BLOCK_SIZE) > runner.num_blocks()
    {
        bail!(
            "prompt of {} tokens + {} new tokens does not fit this model and KV cache",
            prompt.len(),
            args.max_new_tokens
        );
    }
    let blocks: Vec<BlockId> = (0..total.div_ceil(BLOCK_SIZE) as u32)
        .map(BlockId)
        .collect();
    let t = Instant::now();
    let (mut tokens, mut pos, mut generated) = (prompt.clone(), 0, Vec::new());
    while generated.len() < args.max_new_tokens {
        let new: Vec<TokenId> = tokens[pos..].iter().copied().map(TokenId).collect();
        let end = pos + new.len();
        let step = SeqStep {
            id: SeqId(0),
            tokens: new,
            start_pos: pos,
            block_table: blocks[..end.div_ceil(BLOCK_SIZE)].to_vec(),
            sample: true,
        };
        let out = runner.step(&ForwardBatch {
            seqs: vec![step],
            ..Default::default()
        })?;
        let token = out.sampled[0].token.0;
        pos = end;
        tokens.push(token);
        generated.push(token);
        if model.eos_token_ids.contains(&token) {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let text = model
        .tokenizer
        .decode(&generated, true)
        .map_err(|e| anyhow::anyhow!("cannot decode: {e}"))?;
    tracing::info!(
        prompt_tokens = prompt.len(),
        generated_tokens = generated.len(),
        tokens_per_s = format!("{:.1}", generated.len() as f64 / secs),
        "smoke generation: {:?} -> {:?}",
        args.prompt,
        text
    );
    println!("{}{}", args.prompt, text);
    Ok(())
}
