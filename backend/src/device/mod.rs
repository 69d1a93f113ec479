//! The device op set: the small set of operations the model is written against.
//!
//! [`Device`] is the seam between the model (written once, in `models::llama`) and
//! the hardware. The CPU device ([`cpu::Cpu`]) implements every op and is the
//! reference; the CUDA device ([`cuda::Cuda`]) implements the same ops with Rill's own
//! kernels and cuBLAS. Activations are row-major f32 matrices `[tokens, features]`;
//! weights stay in their checkpoint dtype; the KV cache is paged (`[num_blocks,
//! BLOCK_SIZE, kv_heads, head_dim]` per layer for K and for V, NHD) and addressed through
//! the step's [`StepPlan`].
//!
//! The ops:
//! embedding gather · linear (optional bias) · column split · RMSNorm · rotary
//! embedding · KV-cache write · attention over a ragged batch from the paged cache
//! (causal, GQA, sliding window) · SiLU-and-mul · residual add (alone, or fused with the
//! next RMSNorm) · row gathers (for the
//! LM head on sampled positions only, and for the hidden states an embedding request
//! returns).

pub mod cpu;
pub mod cuda;

use rill_proto::{BLOCK_SIZE, ForwardBatch};

use crate::config::{DType, ModelConfig};
use crate::error::LoadError;
use crate::sampling::{DeviceSampling, RowChoice};
use crate::weights::HostTensor;

/// A step the device could not run (a failed launch or allocation, a device fault).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {device} device failed: {message}")]
pub struct DeviceError {
    pub device: &'static str,
    pub message: String,
}

/// What the KV cache holds, on every device (f32 today; the element size of every
/// cache-size computation comes from here).
pub const KV_CACHE_DTYPE: DType = DType::F32;

/// Geometry of the paged KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvLayout {
    /// Bytes one block of model `c`'s cache takes across all layers, K and V.
    pub fn block_bytes(c: &ModelConfig) -> usize {
        2 * c.num_layers * BLOCK_SIZE * c.num_kv_heads * c.head_dim * KV_CACHE_DTYPE.size()
    }

    /// Bytes one layer's K (or V) cache takes.
    pub fn layer_bytes(&self) -> usize {
        self.layer_len() * KV_CACHE_DTYPE.size()
    }

    /// Values in one layer's K (or V) cache.
    pub fn layer_len(&self) -> usize {
        self.num_blocks * BLOCK_SIZE * self.kv_heads * self.head_dim
    }
}

/// Where one sequence's rows sit in the step.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqPlan {
    /// First row of this sequence in the step's activations.
    pub row: usize,
    pub len: usize,
    /// Position of the first row.
    pub start_pos: usize,
    /// Range of this sequence's entries in [`StepPlan::block_tables`].
    pub blocks: std::ops::Range<usize>,
}

/// Per-step metadata every op may need, built once on the host from a
/// [`ForwardBatch`] (devices copy what they need to their own memory).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepPlan {
    /// Token id of each row.
    pub tokens: Vec<u32>,
    /// Position of each row in its sequence.
    pub positions: Vec<u32>,
    /// Cache slot (`block * BLOCK_SIZE + offset`) each row's K/V goes to.
    pub slots: Vec<u32>,
    /// Index into `seqs` of each row.
    pub row_seq: Vec<u32>,
    pub seqs: Vec<SeqPlan>,
    /// All sequences' block tables, concatenated.
    pub block_tables: Vec<u32>,
    /// Rows whose logits are computed: per sequence, the rows of its
    /// `logprob_targets`, then its last row if it samples.
    pub sample_rows: Vec<u32>,
    /// Rows whose final-norm hidden states are returned (every row of each sequence
    /// with `hidden`, in batch order); never a sample row.
    pub hidden_rows: Vec<u32>,
    /// `cos`/`sin` of each row's rotary angles, `[rows, rope_half]`.
    pub rope_cos: Vec<f32>,
    pub rope_sin: Vec<f32>,
    /// `head_dim / 2`: rotary angles per row.
    pub rope_half: usize,
}

/// The cache slot of a row whose K and V must not be stored (a padding row of a CUDA
/// graph's batch): `write_kv` skips it on every device.
pub const NO_SLOT: u32 = rill_kernels::kv::NO_SLOT;

impl StepPlan {
    /// Lay out a (validated) batch. `inv_freq` is the model's rotary table.
    pub fn new(batch: &ForwardBatch, inv_freq: &[f32]) -> Self {
        let mut plan = StepPlan::default();
        for (i, seq) in batch.seqs.iter().enumerate() {
            let first_block = plan.block_tables.len();
            plan.block_tables.extend(seq.block_table.iter().map(|b| b.0));
            plan.seqs.push(SeqPlan {
                row: plan.tokens.len(),
                len: seq.tokens.len(),
                start_pos: seq.start_pos,
                blocks: first_block..plan.block_tables.len(),
            });
            for (j, token) in seq.tokens.iter().enumerate() {
                let pos = seq.start_pos + j;
                let block = seq.block_table[pos / BLOCK_SIZE].0 as usize;
                plan.tokens.push(token.0);
                plan.positions.push(pos as u32);
                plan.slots.push((block * BLOCK_SIZE + pos % BLOCK_SIZE) as u32);
                plan.row_seq.push(i as u32);
            }
            let first_row = plan.seqs[i].row;
            plan.sample_rows.extend((0..seq.logprob_targets.len()).map(|j| (first_row + j) as u32));
            if seq.sample {
                plan.sample_rows.push((plan.tokens.len() - 1) as u32);
            }
            if seq.hidden {
                plan.hidden_rows.extend(first_row as u32..plan.tokens.len() as u32);
            }
        }
        (plan.rope_cos, plan.rope_sin) = crate::rope::cos_sin(inv_freq, &plan.positions);
        plan.rope_half = inv_freq.len();
        plan
    }

    /// Every sequence decodes one token and samples it, and nothing else is computed:
    /// the step a CUDA graph replays (`sample_rows` is exactly `0..rows`, no hidden rows).
    pub fn is_plain_decode(&self) -> bool {
        self.seqs.iter().all(|s| s.len == 1)
            && self.sample_rows.iter().copied().eq(0..self.rows() as u32)
            && self.hidden_rows.is_empty()
    }

    /// Pad a plain decode step to `seqs` sequences. A padding sequence decodes token 0 at
    /// position 0, attends to slot 0 of block 0 (any block: it only reads it), stores no
    /// K/V ([`NO_SLOT`]) and samples; the real rows' results do not depend on it, and
    /// they keep their rows, so the first logits rows are the real ones.
    pub fn pad_decode(&mut self, seqs: usize) {
        debug_assert!(self.is_plain_decode());
        for i in self.seqs.len()..seqs {
            let row = self.rows();
            let block = self.block_tables.len();
            self.block_tables.push(0);
            self.seqs.push(SeqPlan { row, len: 1, start_pos: 0, blocks: block..block + 1 });
            self.tokens.push(0);
            self.positions.push(0);
            self.slots.push(NO_SLOT);
            self.row_seq.push(i as u32);
            self.sample_rows.push(row as u32);
            // cos 0 and sin 0 of every angle of position 0.
            self.rope_cos.extend(std::iter::repeat_n(1.0, self.rope_half));
            self.rope_sin.extend(std::iter::repeat_n(0.0, self.rope_half));
        }
    }

    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// The block table of sequence `seq`.
    pub fn block_table(&self, seq: usize) -> &[u32] {
        &self.block_tables[self.seqs[seq].blocks.clone()]
    }
}

/// Attention geometry of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Keys visible to a query at position p: `(p - window, p]`; `None` = all of `[0, p]`.
    pub window: Option<usize>,
    /// How this model's attention computes (resolved at load: an f32 model is always
    /// [`Precision::Exact`]).
    pub precision: Precision,
}

/// How a model computes, chosen at load ([`crate::RunnerOptions::precision`],
/// `--precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 activations, products and sums everywhere, 16-bit weights widened as they are
    /// read: transformers in f32, bit for bit on the CPU. The CUDA device keeps attention
    /// in f32 too (its GEMMs over 16-bit weights still round their input to the weights'
    /// dtype, as cuBLAS has no bf16 × f32 product).
    Exact,
    /// A 16-bit model computes as PyTorch computes it in its checkpoint's dtype, where the
    /// device has the instructions: the CUDA device's prefill attention rounds its operands
    /// to bf16 for the tensor cores, as its GEMMs do. The CPU's linear layers round their
    /// input to the weights' dtype and sum each output as one FMA chain over weights laid
    /// out in panels (`cpu::panels`: 1.6× the exact prefill on AVX2); its attention, norms
    /// and residual stream stay f32. Either way every row's arithmetic is the same
    /// whatever its batch or chunking. An f32 model is computed exactly in either mode.
    #[default]
    Fast,
}

/// What one forward pass computes: the logits of the plan's `sample_rows`
/// (`[sample_rows, vocab]`) and the final-norm hidden states of its `hidden_rows`
/// (`[hidden_rows, hidden_size]`; an empty activation when the plan has none).
#[derive(Debug)]
pub struct ForwardOutput<A> {
    pub logits: A,
    pub hidden: A,
}

/// The model's forward pass as a device drives it: enqueue one step's ops over the host
/// plan and its device copy, and return what the plan asks for. It takes its row count
/// from the plan it is given, which may be a padded copy of the step's.
pub type Forward<'a, D> = dyn FnMut(
        &mut <D as Device>::Cache,
        &StepPlan,
        &<D as Device>::Plan,
    ) -> Result<ForwardOutput<<D as Device>::Activation>, DeviceError>
    + 'a;

/// A compute device: where weights live and ops run.
///
/// Shapes are checked by the model that calls these ops; implementations may
/// assume consistent inputs (and `debug_assert!` them).
pub trait Device: Send + Sync + Sized + 'static {
    /// A parameter tensor in its checkpoint dtype.
    type Weight: Send + Sync;
    /// An f32 activation matrix `[rows, cols]`.
    type Activation: Send + Sync;
    /// The paged K/V cache of every layer.
    type Cache: Send;
    /// A [`StepPlan`] in device memory.
    type Plan;

    fn name(&self) -> &'static str;
    /// Run one step's work in the device's execution context (the CPU device's
    /// thread pool); every op of a step is called from inside `work`.
    fn run<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        work()
    }
    /// Move a host tensor onto the device, keeping its dtype.
    fn weight(&self, tensor: HostTensor) -> Result<Self::Weight, LoadError>;
    /// Move a linear layer's `[out_features, in_features]` weight onto the device for
    /// [`Device::linear`] at `precision` (and [`Device::embed`], for a tied LM head's
    /// table): a device may lay it out for its kernels. The default is [`Device::weight`].
    fn linear_weight(
        &self,
        tensor: HostTensor,
        precision: Precision,
    ) -> Result<Self::Weight, LoadError> {
        let _ = precision;
        self.weight(tensor)
    }
    fn activation(&self, rows: usize, cols: usize) -> Self::Activation;
    fn kv_cache(&self, layout: KvLayout) -> Result<Self::Cache, LoadError>;
    fn plan(&self, plan: &StepPlan) -> Result<Self::Plan, DeviceError>;

    /// Run one step: `forward` over `host`. The default copies the plan to the device and
    /// calls `forward`; a device may instead replay what it recorded of an earlier call
    /// (the CUDA device's decode graphs, see [`Device::prepare_replay`]). Either way the
    /// result is the logits of `host.sample_rows` and the hidden states of
    /// `host.hidden_rows`.
    fn forward(
        &self,
        cache: &mut Self::Cache,
        host: &StepPlan,
        forward: &mut Forward<'_, Self>,
    ) -> Result<ForwardOutput<Self::Activation>, DeviceError> {
        let plan = self.plan(host)?;
        forward(cache, host, &plan)
    }
    /// Record whatever [`Device::forward`] will replay for plain decode steps of up to
    /// each of `batch_sizes` sequences (ascending), once `cache` exists (its addresses may
    /// be recorded). Returns what was recorded, for the log; a device that fails to record
    /// logs why and runs every step eagerly. Nothing by default.
    fn prepare_replay(
        &self,
        cache: &mut Self::Cache,
        config: &ModelConfig,
        batch_sizes: &[usize],
        forward: &mut Forward<'_, Self>,
    ) -> Option<String> {
        let _ = (cache, config, batch_sizes, forward);
        None
    }

    /// Rows a step runs when the user does not say (`--max-batch-prefill-tokens`): what
    /// costs a running decode little on this device.
    const DEFAULT_STEP_TOKENS: usize = 128;

    /// `(free, total)` bytes of the device's own memory, once queued work is done; `None`
    /// for a device that shares the host's memory with everything else (the CPU), whose
    /// KV cache is sized explicitly.
    fn memory_info(&self) -> Result<Option<(usize, usize)>, DeviceError> {
        Ok(None)
    }

    /// `out[r] = table[plan.tokens[r]]`
    fn embed(
        &self,
        table: &Self::Weight,
        plan: &Self::Plan,
        out: &mut Self::Activation,
    ) -> Result<(), DeviceError>;
    /// `out = x · wᵀ (+ bias)`, with `w` of shape `[out_features, in_features]`.
    fn linear(
        &self,
        x: &Self::Activation,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        out: &mut Self::Activation,
    ) -> Result<(), DeviceError>;
    /// `out = x / rms(x) * weight`, per row.
    fn rms_norm(
        &self,
        x: &Self::Activation,
        weight: &Self::Weight,
        eps: f32,
        out: &mut Self::Activation,
    ) -> Result<(), DeviceError>;
    /// Rotate each head of each row in place by the row's rotary angles.
    fn rope(
        &self,
        x: &mut Self::Activation,
        head_dim: usize,
        plan: &Self::Plan,
    ) -> Result<(), DeviceError>;
    /// Store each row's K and V at its cache slot in `layer`.
    fn write_kv(
        &self,
        cache: &mut Self::Cache,
        layer: usize,
        k: &Self::Activation,
        v: &Self::Activation,
        plan: &Self::Plan,
    ) -> Result<(), DeviceError>;
    /// Causal attention of each row's query heads over its sequence's cached keys.
    fn attention(
        &self,
        q: &Self::Activation,
        cache: &Self::Cache,
        layer: usize,
        shape: AttentionShape,
        plan: &Self::Plan,
        out: &mut Self::Activation,
    ) -> Result<(), DeviceError>;
    /// `out = silu(gate) * up` where `gate_up = [gate | up]` column-wise (the fused
    /// gate/up projection), so `out` has half the columns.
    fn silu_mul(
        &self,
        gate_up: &Self::Activation,
        out: &mut Self::Activation,
    ) -> Result<(), DeviceError>;
    /// Split `x` column-wise into `outs`, `widths[i]` columns each (the fused q/k/v
    /// projection into q, k and v).
    fn split_cols(
        &self,
        x: &Self::Activation,
        widths: &[usize],
        outs: &mut [&mut Self::Activation],
    ) -> Result<(), DeviceError>;
    /// `x += y`
    fn add_assign(&self, x: &mut Self::Activation, y: &Self::Activation)
    -> Result<(), DeviceError>;
    /// The residual update of a pre-norm layer in one pass over the hidden state:
    /// `x += y`, then `out = x / rms(x) * weight` per row — the same values, bit for bit,
    /// as `add_assign` then `rms_norm`.
    fn add_rms_norm(
        &self,
        x: &mut Self::Activation,
        y: &Self::Activation,
        weight: &Self::Weight,
        eps: f32,
        out: &mut Self::Activation,
    ) -> Result<(), DeviceError>;
    /// `out[i] = x[plan.sample_rows[i]]`
    fn gather_sample_rows(
        &self,
        x: &Self::Activation,
        plan: &Self::Plan,
        out: &mut Self::Activation,
    ) -> Result<(), DeviceError>;
    /// `out[i] = x[plan.hidden_rows[i]]`
    fn gather_hidden_rows(
        &self,
        x: &Self::Activation,
        plan: &Self::Plan,
        out: &mut Self::Activation,
    ) -> Result<(), DeviceError>;
    /// Whether this device chooses tokens itself ([`Device::sample`]); the CPU leaves it
    /// to the runner's host sampler.
    fn samples_tokens(&self) -> bool {
        false
    }
    /// Choose a token for each row `sampling` describes, from rows of `logits`, one
    /// answer per row in order. Only called when [`Device::samples_tokens`] says so;
    /// this is also where such a device reports a failed step.
    fn sample(
        &self,
        logits: &Self::Activation,
        sampling: &DeviceSampling,
    ) -> Result<Vec<RowChoice>, DeviceError> {
        let _ = (logits, sampling);
        Err(DeviceError { device: self.name(), message: "this device does not sample".into() })
    }
    /// Copy an activation back to the host. Every op returns its own failure (a failed
    /// launch or allocation), so the step stops where it failed and says why; a device
    /// whose work is asynchronous reports a fault of work already queued here.
    fn to_host(&self, x: &Self::Activation) -> Result<Vec<f32>, DeviceError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_proto::{BlockId, SeqId, SeqStep, TokenId};

    fn step(id: u64, tokens: &[u32], start_pos: usize, sample: bool, targets: usize) -> SeqStep {
        SeqStep {
            id: SeqId(id),
            tokens: tokens.iter().copied().map(TokenId).collect(),
            start_pos,
            block_table: vec![BlockId(id as u32 + 1), BlockId(id as u32 + 5)],
            sample,
            top_n: 0,
            logprob_targets: vec![TokenId(0); targets],
            sampling: None,
            prefix: Vec::new(),
            hidden: false,
        }
    }

    fn plan(seqs: Vec<SeqStep>) -> StepPlan {
        StepPlan::new(&ForwardBatch { seqs, ..Default::default() }, &[1.0, 0.5])
    }

    #[test]
    fn a_plain_decode_step_is_one_sampled_row_per_sequence() {
        assert!(
            plan(vec![step(0, &[5], 20, true, 0), step(1, &[6], 3, true, 0)]).is_plain_decode()
        );
        assert!(plan(vec![]).is_plain_decode());
        // A prefill chunk, a row that does not sample, a prompt logprob.
        assert!(
            !plan(vec![step(0, &[5], 20, true, 0), step(1, &[6, 7], 3, true, 0)]).is_plain_decode()
        );
        assert!(
            !plan(vec![step(0, &[5], 20, false, 0), step(1, &[6], 3, true, 0)]).is_plain_decode()
        );
        assert!(!plan(vec![step(0, &[5], 20, true, 1)]).is_plain_decode());
    }

    #[test]
    fn hidden_rows_are_every_row_of_each_sequence_that_asks() {
        let embedding =
            |id, tokens: &[u32]| SeqStep { hidden: true, ..step(id, tokens, 0, false, 0) };
        let p = plan(vec![
            step(0, &[5], 20, true, 0),
            embedding(1, &[6, 7, 8]),
            step(2, &[1, 2], 3, true, 1),
            embedding(3, &[9]),
        ]);
        assert_eq!(p.hidden_rows, [1, 2, 3, 6]);
        assert_eq!(p.sample_rows, [0, 4, 5]);
        assert!(!p.is_plain_decode());
        assert!(!plan(vec![step(0, &[5], 20, true, 0), embedding(1, &[6])]).is_plain_decode());
    }

    #[test]
    fn padding_appends_sequences_that_store_nothing_and_keeps_the_real_rows() {
        let real = plan(vec![step(0, &[5], 20, true, 0), step(1, &[6], 3, true, 0)]);
        let mut padded = real.clone();
        padded.pad_decode(4);
        assert!(padded.is_plain_decode());
        assert_eq!(padded.rows(), 4);
        assert_eq!(padded.seqs[..2], real.seqs[..]);
        assert_eq!(&padded.tokens[..2], &real.tokens[..]);
        assert_eq!(padded.slots, [real.slots[0], real.slots[1], NO_SLOT, NO_SLOT]);
        assert_eq!(padded.sample_rows, [0, 1, 2, 3]);
        assert_eq!(padded.row_seq, [0, 1, 2, 3]);
        assert_eq!(padded.positions[2..], [0, 0]);
        assert_eq!(padded.seqs[3], SeqPlan { row: 3, len: 1, start_pos: 0, blocks: 5..6 });
        assert_eq!(padded.block_table(3), [0]);
        // Position 0's rotation is the identity.
        assert_eq!(padded.rope_cos[4..], [1.0; 4]);
        assert_eq!(padded.rope_sin[4..], [0.0; 4]);
        assert_eq!(&padded.rope_cos[..4], &real.rope_cos[..]);
        // Padding to fewer sequences than the step has does nothing.
        let mut same = real.clone();
        same.pad_decode(1);
        assert_eq!(same, real);
    }
}
