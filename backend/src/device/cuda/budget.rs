//! How much of the GPU the KV cache gets, when the user does not say
//! (`--kv-cache-memory-mib`, `--max-batch-total-tokens`).
//!
//! vLLM's and TGI's recipe, simplified: load the weights, run one warm-up step as large as
//! the scheduler will ever run (`--max-batch-prefill-tokens` rows, every row's logits) on a
//! throwaway cache, so cuBLAS and the kernels have loaded what they load lazily; then the
//! KV cache takes `(free - reserve) × fraction` ([`KvBudget`]), where the reserve is the
//! activations of that largest step and of the largest decode graph's batch (kept for
//! good in the graphs' arena) ([`step_bytes`], estimated from the model's shape:
//! the pool returns a step's buffers to the driver when the stream synchronises, so the
//! warm-up's own peak cannot be read off free memory afterwards) plus a fixed margin.

use rill_proto::{BLOCK_SIZE, BlockId, ForwardBatch, SeqId, SeqStep, TokenId};

use super::Cuda;
use crate::config::ModelConfig;
use crate::device::{Device, KvLayout, StepPlan};
use crate::error::LoadError;
use crate::models::Llama;

/// GPU memory one forward step of `rows` rows needs on top of the weights and the KV
/// cache, in bytes: the f32 activations `Llama::forward` keeps alive at once, the
/// 16-bit copy of a GEMM input, logits for every row (prompt logprobs can ask for all
/// of them), the step's metadata and the attention kernels' split-K partials; doubled,
/// because an op that resizes its output allocates the new buffer before the old one
/// is freed, and the stream-ordered pool fragments.
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
/// of the largest decode graph: what later steps may load lazily (kernels cuBLAS picks
/// for shapes the warm-up did not use) and the graphs' own driver memory.
pub const FIXED_RESERVE_BYTES: usize = 512 << 20;

/// How the KV cache was sized from free GPU memory (logged at start-up).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KvBudget {
    /// Free and total device memory after the weights were loaded and a warm-up step ran.
    pub free: usize,
    pub total: usize,
    /// Kept back for activations of the largest step and [`FIXED_RESERVE_BYTES`].
    pub reserved: usize,
    /// `--cuda-memory-fraction`
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

impl Cuda {
    /// `(free, total)` device memory in bytes, once queued work is done (freed buffers
    /// return to the driver when the stream synchronises).
    pub fn mem_get_info(&self) -> Result<(usize, usize), LoadError> {
        let cuda = |e| LoadError::Other(format!("CUDA ({}): {e}", self.gpu_name));
        self.stream.synchronize().map_err(cuda)?;
        self.ctx.mem_get_info().map_err(cuda)
    }

    /// Device memory bandwidth in bytes per second, measured as the best of `reps`
    /// device-to-device copies of `bytes` (each reads and writes `bytes`): the roofline a
    /// decode step's weight and KV reads are held against.
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64, LoadError> {
        let cuda = |e| LoadError::Other(format!("measuring bandwidth on {}: {e}", self.gpu_name));
        let src = self.stream.alloc_zeros::<u8>(bytes).map_err(cuda)?;
        let mut dst = self.stream.alloc_zeros::<u8>(bytes).map_err(cuda)?;
        let mut best = f64::MAX;
        // One untimed copy first (clocks up, pages mapped).
        for rep in 0..=reps.max(1) {
            self.stream.synchronize().map_err(cuda)?;
            let t = std::time::Instant::now();
            self.stream.memcpy_dtod(&src, &mut dst).map_err(cuda)?;
            self.stream.synchronize().map_err(cuda)?;
            if rep > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        Ok(2.0 * bytes as f64 / best)
    }

    /// One forward step of `rows` prompt rows, every row's logits computed, on a
    /// throwaway KV cache: the largest step the scheduler may run, so a device that
    /// cannot hold it fails here, at start-up, with an error.
    pub fn warm_up(&self, model: &Llama<Cuda>, rows: usize) -> Result<(), LoadError> {
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
        let host = StepPlan::new(
            &ForwardBatch { seqs: vec![seq], ..Default::default() },
            model.inv_freq(),
        );
        let layout = KvLayout {
            num_layers: c.num_layers,
            num_blocks: blocks,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        let mut cache = self.kv_cache(layout)?;
        let logits = self.run(|| {
            let plan = self.plan(&host)?;
            let logits = model.forward(self, &mut cache, &host, &plan)?.logits;
            self.to_host(&logits)
        });
        logits.map(drop).map_err(|e| {
            LoadError::Other(format!("warm-up step of {rows} rows on {}: {e}", self.gpu_name))
        })
    }

    /// Size the KV cache from free memory; call after [`Cuda::warm_up`] with the same
    /// `max_rows`, with the share of free memory the user allows.
    pub fn kv_budget(
        &self,
        config: &ModelConfig,
        max_rows: usize,
        fraction: f64,
    ) -> Result<KvBudget, LoadError> {
        let (free, total) = self.mem_get_info()?;
        // The decode graphs' arena: the activations of the largest bucket, for good.
        let graphs = {
            let graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
            graphs.buckets.last().map_or(0, |&b| step_bytes(config, b))
        };
        let reserved = step_bytes(config, max_rows) + graphs + FIXED_RESERVE_BYTES;
        Ok(KvBudget::new(free, total, reserved, fraction))
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
