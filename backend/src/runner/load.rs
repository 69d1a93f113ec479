//! The one start-up path, for the server, the benchmarks and the tests alike: choose the
//! device, then (nano-vllm's `ModelRunner.__init__` order) load the weights, warm up,
//! size the KV cache, record what the device replays.
//!
//! [`AnyRunner::load`] chooses the device ([`DeviceChoice`]: `--device auto` falls back
//! to the CPU with one log line saying why) and calls [`Runner::load`], which does the
//! rest on whatever device it is given (a test's wrapped device too):
//!
//! 1. the weights ([`LoadFormat`]) onto the device, to compute at [`Precision`];
//! 2. on a device with its own memory ([`Device::memory_info`]), a warm-up step as large
//!    as the scheduler will run ([`RunnerOptions::max_step_tokens`]) on a throwaway
//!    cache: a device that cannot hold it fails here, at start-up, and what the step
//!    loads lazily (cuBLAS, kernels) is no longer counted as free;
//! 3. the KV cache, from [`KvCacheSize`]: bytes, tokens, or a share of the memory left
//!    free after a reserve for the largest step's and the largest replayed step's
//!    activations ([`KvBudget`], vLLM's and TGI's recipe);
//! 4. what the device replays (the CUDA device's decode graphs,
//!    [`RunnerOptions::replay_batch_sizes`]), recorded over the real cache.

use std::path::Path;

use rill_proto::{BLOCK_SIZE, BlockId, ForwardBatch, SeqId, SeqStep, StepOutput, TokenId};

use super::{LoadFormat, Runner};
use crate::config::ModelConfig;
use crate::device::cuda::DEFAULT_BUCKETS;
use crate::device::{Device, KvLayout, Precision, StepPlan};
use crate::error::{LoadError, StepError};
use crate::models::Llama;
use crate::{Cpu, Cuda};

/// How much memory the KV cache gets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KvCacheSize {
    /// This many bytes (`--kv-cache-memory-mib`).
    Bytes(usize),
    /// Room for this many tokens, in whole blocks (`--max-batch-total-tokens`).
    Tokens(usize),
    /// This share, in (0, 1], of the device memory left free after the weights, a
    /// warm-up step and the activations' reserve (`--cuda-memory-fraction`); a device
    /// without memory of its own (the CPU) takes [`HOST_KV_CACHE_BYTES`].
    FreeMemory(f64),
}

/// The KV cache of a device that shares the host's memory, when no size is given.
pub const HOST_KV_CACHE_BYTES: usize = 1 << 30;

#[derive(Clone, Debug)]
pub struct RunnerOptions {
    pub load_format: LoadFormat,
    pub kv_cache: KvCacheSize,
    pub precision: Precision,
    /// The most rows one step runs (the scheduler's token budget,
    /// `--max-batch-prefill-tokens`): the warm-up step's size. `None`: the device's
    /// [`Device::DEFAULT_STEP_TOKENS`].
    pub max_step_tokens: Option<usize>,
    /// Decode batch sizes the device records for replay (`--cuda-graphs`), ascending;
    /// empty: none.
    pub replay_batch_sizes: Vec<usize>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            load_format: LoadFormat::Safetensors(None),
            kv_cache: KvCacheSize::Bytes(1 << 30),
            precision: Precision::default(),
            max_step_tokens: None,
            replay_batch_sizes: DEFAULT_BUCKETS.to_vec(),
        }
    }
}

/// GPU memory one forward step of `rows` rows needs on top of the weights and the KV
/// cache, in bytes: the f32 activations `Llama::forward` keeps alive at once, the
/// 16-bit copy of a GEMM input, logits for every row (prompt logprobs can ask for all
/// of them), the step's metadata and the attention kernels' split-K partials; doubled,
/// because an op that resizes its output allocates the new buffer before the old one
/// is freed, and the stream-ordered pool fragments. (Estimated from the model's shape:
/// the pool returns a step's buffers to the driver when the stream synchronises, so the
/// warm-up's own peak cannot be read off free memory afterwards.)
pub fn step_bytes(c: &ModelConfig, rows: usize) -> usize {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    // x, normed, proj; qkv and its split q, k, v; attn; gate_up and act.
    let activations = 3 * h + 2 * (q + 2 * kv) + q + 3 * i;
    // The gathered rows, their norm, and the logits (a row whose hidden state an
    // embedding returns is gathered and normed instead, never both).
    let logits = 2 * h + v;
    // tokens, slots, sample_rows, the four per-sequence arrays (a sequence per row at
    // most) and the row's rope cos/sin.
    let plan = 7 + c.head_dim;
    // Split-K partials (`AttentionMeta::workspace_len`): up to 16 partitions of
    // (head_dim + 2) floats per query head of each sequence (a sequence per row at most).
    let attention = 16 * c.num_heads * (c.head_dim + 2);
    let per_row = 4 * (activations + logits + plan + attention) + 2 * h.max(i).max(q);
    2 * rows * per_row
}

/// Memory kept back from the KV cache besides the activations of the largest step and
/// of the largest replayed step: what later steps may load lazily (kernels cuBLAS picks
/// for shapes the warm-up did not use) and the graphs' own driver memory.
pub const FIXED_RESERVE_BYTES: usize = 512 << 20;

/// How the KV cache was sized from free device memory (logged at start-up).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KvBudget {
    /// Free and total device memory after the weights were loaded and a warm-up step ran.
    pub free: usize,
    pub total: usize,
    /// Kept back for activations of the largest steps and [`FIXED_RESERVE_BYTES`].
    pub reserved: usize,
    pub fraction: f64,
    /// `(free - reserved) * fraction`
    pub kv_bytes: usize,
}

impl KvBudget {
    pub fn new(free: usize, total: usize, reserved: usize, fraction: f64) -> Self {
        let kv_bytes = (free.saturating_sub(reserved) as f64 * fraction.clamp(0.0, 1.0)) as usize;
        KvBudget { free, total, reserved, fraction, kv_bytes }
    }
}

impl<D: Device> Runner<D> {
    /// Load the model at `dir` onto `device` and make it ready to step (the module's four
    /// steps). Only `config.json` is read for dummy weights.
    pub fn load(
        dir: &Path,
        config: &ModelConfig,
        device: D,
        opts: &RunnerOptions,
    ) -> Result<Self, LoadError> {
        if let KvCacheSize::FreeMemory(f) = opts.kv_cache
            && !(f > 0.0 && f <= 1.0)
        {
            return Err(LoadError::Other(format!(
                "the KV cache's share of free memory ({f}) must be in (0, 1]"
            )));
        }
        let max_step_tokens = opts.max_step_tokens.unwrap_or(D::DEFAULT_STEP_TOKENS);
        if max_step_tokens == 0 {
            return Err(LoadError::Other("a step must be allowed at least one token".into()));
        }
        let source = opts.load_format.open(dir, config)?;
        let model = Llama::load(config, source.as_ref(), &device, opts.precision)?;
        let own_memory = device.memory_info().map_err(|e| LoadError::Other(e.to_string()))?;
        if own_memory.is_some() {
            warm_up(&device, &model, max_step_tokens)?;
        }
        let kv_cache_bytes = match opts.kv_cache {
            KvCacheSize::Bytes(bytes) => bytes,
            KvCacheSize::Tokens(tokens) => {
                tokens.div_ceil(BLOCK_SIZE) * KvLayout::block_bytes(config)
            }
            KvCacheSize::FreeMemory(fraction) => match own_memory {
                None => HOST_KV_CACHE_BYTES,
                Some(_) => {
                    let budget = kv_budget(&device, config, max_step_tokens, opts, fraction)?;
                    let mib = |b: usize| b >> 20;
                    tracing::info!(
                        device = device.name(),
                        free_mib = mib(budget.free),
                        total_mib = mib(budget.total),
                        reserved_mib = mib(budget.reserved),
                        fraction,
                        kv_cache_mib = mib(budget.kv_bytes),
                        "KV cache sized from free memory after the weights and a \
                         {max_step_tokens}-row warm-up step"
                    );
                    budget.kv_bytes
                }
            },
        };
        Self::assemble(device, model, kv_cache_bytes, max_step_tokens, &opts.replay_batch_sizes)
    }
}

/// Free memory after the warm-up, less the reserve, times `fraction`.
fn kv_budget<D: Device>(
    device: &D,
    config: &ModelConfig,
    max_step_tokens: usize,
    opts: &RunnerOptions,
    fraction: f64,
) -> Result<KvBudget, LoadError> {
    let memory = device.memory_info().map_err(|e| LoadError::Other(e.to_string()))?;
    let (free, total) = memory.unwrap_or_default();
    // A replayed step's activations are kept for good (the CUDA graphs' arena).
    let replayed = opts.replay_batch_sizes.iter().max().map_or(0, |&b| step_bytes(config, b));
    let reserved = step_bytes(config, max_step_tokens) + replayed + FIXED_RESERVE_BYTES;
    Ok(KvBudget::new(free, total, reserved, fraction))
}

/// One forward step of `rows` prompt rows, every row's logits computed, on a throwaway
/// KV cache: the largest step the scheduler may run.
fn warm_up<D: Device>(device: &D, model: &Llama<D>, rows: usize) -> Result<(), LoadError> {
    let c = model.config();
    let rows = rows.clamp(1, c.max_position_embeddings.max(1));
    let blocks = rows.div_ceil(BLOCK_SIZE);
    let seq = SeqStep {
        id: SeqId(0),
        tokens: vec![TokenId(0); rows],
        start_pos: 0,
        block_table: (0..blocks as u32).map(BlockId).collect(),
        sample: true,
        top_n: 0,
        logprob_targets: vec![TokenId(0); rows - 1],
        sampling: None,
        prefix: Vec::new(),
        hidden: false,
    };
    let batch = ForwardBatch { seqs: vec![seq], ..Default::default() };
    let host = StepPlan::new(&batch, model.inv_freq());
    let layout = KvLayout {
        num_layers: c.num_layers,
        num_blocks: blocks,
        kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
    };
    let mut cache = device.kv_cache(layout)?;
    let logits = device.run(|| {
        let plan = device.plan(&host)?;
        let logits = model.forward(device, &mut cache, &host, &plan)?.logits;
        device.to_host(&logits)
    });
    logits.map(drop).map_err(|e| LoadError::Other(format!("warm-up step of {rows} rows: {e}")))
}

/// Which device to run on (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// GPU `cuda_ordinal` when [`Cuda::new`] succeeds, else the CPU (one log line says
    /// why).
    Auto { cuda_ordinal: usize, cpu_threads: Option<usize> },
    /// The CPU with this many threads (default: one per core).
    Cpu { threads: Option<usize> },
    /// This GPU, or an error saying why not.
    Cuda { ordinal: usize },
}

/// A [`Runner`] on whichever device [`DeviceChoice`] chose: what the server's engine
/// thread and the benchmarks drive.
#[derive(Debug)]
pub enum AnyRunner {
    Cpu(Box<Runner<Cpu>>),
    Cuda(Box<Runner<Cuda>>),
}

impl From<Runner<Cpu>> for AnyRunner {
    fn from(r: Runner<Cpu>) -> Self {
        AnyRunner::Cpu(Box::new(r))
    }
}

impl From<Runner<Cuda>> for AnyRunner {
    fn from(r: Runner<Cuda>) -> Self {
        AnyRunner::Cuda(Box::new(r))
    }
}

/// `$body` with `$r` bound to the runner, whichever its device.
macro_rules! each {
    ($self:expr, $r:ident => $body:expr) => {
        match $self {
            AnyRunner::Cpu($r) => $body,
            AnyRunner::Cuda($r) => $body,
        }
    };
}

impl AnyRunner {
    /// Choose the device and [`Runner::load`] the model there.
    pub fn load(
        dir: &Path,
        config: &ModelConfig,
        choice: DeviceChoice,
        opts: &RunnerOptions,
    ) -> Result<Self, LoadError> {
        let cpu = |threads: Option<usize>| threads.map_or_else(Cpu::new, Cpu::with_threads);
        Ok(match choice {
            DeviceChoice::Cpu { threads } => Runner::load(dir, config, cpu(threads), opts)?.into(),
            DeviceChoice::Cuda { ordinal } => {
                Runner::load(dir, config, Cuda::new(ordinal)?, opts)?.into()
            }
            DeviceChoice::Auto { cuda_ordinal, cpu_threads } => match Cuda::new(cuda_ordinal) {
                Ok(cuda) => Runner::load(dir, config, cuda, opts)?.into(),
                Err(e) => {
                    tracing::info!("--device auto: running on the CPU ({e})");
                    Runner::load(dir, config, cpu(cpu_threads), opts)?.into()
                }
            },
        })
    }

    pub fn step(&mut self, batch: &ForwardBatch) -> Result<StepOutput, StepError> {
        each!(self, r => r.step(batch))
    }

    pub fn config(&self) -> &ModelConfig {
        each!(self, r => r.config())
    }

    pub fn num_blocks(&self) -> usize {
        each!(self, r => r.num_blocks())
    }

    pub fn max_step_tokens(&self) -> usize {
        each!(self, r => r.max_step_tokens())
    }

    pub fn device_name(&self) -> &'static str {
        each!(self, r => r.device_name())
    }

    /// The device in words, for the start-up log (`2 threads, Avx2 kernels`,
    /// `NVIDIA H200 (sm_90)`).
    pub fn device_detail(&self) -> String {
        match self {
            AnyRunner::Cpu(r) => {
                let isa = crate::device::cpu::simd::isa();
                format!("{} threads, {isa:?} kernels", r.device().threads())
            }
            AnyRunner::Cuda(r) => {
                let (major, minor) = r.device().compute_capability();
                format!("{} (sm_{major}{minor})", r.device().gpu_name())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama3_8b() -> ModelConfig {
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 8192, "rope_theta": 500000.0,
        });
        ModelConfig::from_json(std::path::Path::new("config.json"), &json).unwrap()
    }

    #[test]
    fn step_memory_is_linear_in_rows_and_plausible_for_llama3_8b() {
        let c = llama3_8b();
        assert_eq!(step_bytes(&c, 0), 0);
        assert_eq!(step_bytes(&c, 2048), 2 * step_bytes(&c, 1024));
        // A 4096-row prefill: a few GiB (logits dominate: 128k floats a row), far from
        // the H200's 139 GiB, but more than its activations alone (~0.9 GiB).
        let gib = step_bytes(&c, 4096) as f64 / (1u64 << 30) as f64;
        assert!((2.0..12.0).contains(&gib), "{gib} GiB");
    }

    #[test]
    fn budget_keeps_the_reserve_and_applies_the_fraction() {
        let b = KvBudget::new(100 << 30, 140 << 30, 10 << 30, 0.9);
        assert_eq!(b.kv_bytes, ((90u64 << 30) as f64 * 0.9) as usize);
        // Less free memory than the reserve: no KV cache (the runner then refuses to start).
        assert_eq!(KvBudget::new(1 << 30, 140 << 30, 2 << 30, 0.9).kv_bytes, 0);
    }
}
