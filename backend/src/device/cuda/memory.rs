//! What the CUDA device keeps in GPU memory: weights ([`CudaWeight`], checkpoint dtype),
//! activations ([`CudaMat`], row-major f32), the paged KV cache ([`CudaKvCache`], f32
//! NHD blocks, as on the CPU) and one step's metadata ([`CudaPlan`]).
//! See `budget.rs` for how much of the GPU the KV cache takes.
//!
//! The layouts are the CPU device's, so the two engines can be compared op by op. Every
//! buffer lives on the device's one stream: allocation and freeing are stream-ordered
//! (`cuMemAllocAsync`), which is what lets ops replace an output buffer of the wrong
//! size without synchronising. A per-step arena (one allocation carved into all the
//! step's activations, fixed addresses for CUDA-graph capture) is a later optimisation.

use cudarc::driver::{CudaSlice, CudaStream, DriverError};
use half::{bf16, f16};
use rill_kernels::WeightRef;

use crate::device::StepPlan;

/// A parameter on the GPU, in its checkpoint dtype.
#[derive(Debug)]
pub struct CudaWeight {
    pub shape: Vec<usize>,
    pub data: WeightData,
}

/// The typed storage of a [`CudaWeight`].
#[derive(Debug)]
pub enum WeightData {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<bf16>),
    F16(CudaSlice<f16>),
}

impl CudaWeight {
    /// The form the kernel launchers take.
    pub fn as_ref(&self) -> WeightRef<'_> {
        match &self.data {
            WeightData::F32(s) => WeightRef::F32(s),
            WeightData::Bf16(s) => WeightRef::Bf16(s),
            WeightData::F16(s) => WeightRef::F16(s),
        }
    }

    pub fn bytes(&self) -> usize {
        match &self.data {
            WeightData::F32(s) => s.len() * 4,
            WeightData::Bf16(s) => s.len() * 2,
            WeightData::F16(s) => s.len() * 2,
        }
    }
}

/// A row-major f32 matrix on the GPU. `data` is `None` for the empty matrix (nothing
/// to allocate) and after a failed allocation (the device has recorded the failure).
#[derive(Debug)]
pub struct CudaMat {
    pub(super) data: Option<CudaSlice<f32>>,
    pub rows: usize,
    pub cols: usize,
}

impl CudaMat {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per layer, K and V as `[num_blocks, BLOCK_SIZE, kv_heads, head_dim]` f32.
#[derive(Debug)]
pub struct CudaKvCache {
    pub(super) k: Vec<CudaSlice<f32>>,
    pub(super) v: Vec<CudaSlice<f32>>,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
}

/// A [`StepPlan`]'s arrays in GPU memory, and the few per-step values the launchers
/// need on the host (grid sizes, the decode/prefill choice).
#[derive(Debug)]
pub struct CudaPlan {
    /// `None` if the upload failed (the device has recorded why).
    pub(super) arrays: Option<PlanArrays>,
    pub rows: usize,
    pub num_seqs: usize,
    pub num_sample_rows: usize,
    /// Longest run of query rows of one sequence in this step.
    pub max_rows_per_seq: usize,
    /// Longest context (`start_pos + len`) of one sequence in this step.
    pub max_context: usize,
    /// Every sequence runs exactly one row (a pure decode step).
    pub all_decode: bool,
}

/// The device copies of a [`StepPlan`]'s arrays, named as in [`StepPlan`]; the
/// per-sequence [`crate::device::SeqPlan`] fields are split into one array each.
#[derive(Debug)]
pub(super) struct PlanArrays {
    pub tokens: CudaSlice<u32>,
    pub slots: CudaSlice<u32>,
    pub seq_row: CudaSlice<u32>,
    pub seq_len: CudaSlice<u32>,
    pub seq_start_pos: CudaSlice<u32>,
    pub seq_block_off: CudaSlice<u32>,
    pub block_tables: CudaSlice<u32>,
    pub sample_rows: CudaSlice<u32>,
    pub rope_cos: CudaSlice<f32>,
    pub rope_sin: CudaSlice<f32>,
}

impl CudaPlan {
    pub(super) fn host_values(plan: &StepPlan) -> CudaPlan {
        CudaPlan {
            arrays: None,
            rows: plan.rows(),
            num_seqs: plan.seqs.len(),
            num_sample_rows: plan.sample_rows.len(),
            max_rows_per_seq: plan.seqs.iter().map(|s| s.len).max().unwrap_or(0),
            max_context: plan.seqs.iter().map(|s| s.start_pos + s.len).max().unwrap_or(0),
            all_decode: plan.seqs.iter().all(|s| s.len == 1),
        }
    }
}

impl PlanArrays {
    /// Upload `plan`'s arrays: ten small copies from pageable memory (one packed,
    /// pinned upload is a later optimisation).
    pub(super) fn upload(
        stream: &std::sync::Arc<CudaStream>,
        plan: &StepPlan,
    ) -> Result<Self, DriverError> {
        let u32s = |f: fn(&crate::device::SeqPlan) -> usize| -> Vec<u32> {
            plan.seqs.iter().map(|s| f(s) as u32).collect()
        };
        let up = |v: &[u32]| upload(stream, v);
        Ok(PlanArrays {
            tokens: up(&plan.tokens)?,
            slots: up(&plan.slots)?,
            seq_row: up(&u32s(|s| s.row))?,
            seq_len: up(&u32s(|s| s.len))?,
            seq_start_pos: up(&u32s(|s| s.start_pos))?,
            seq_block_off: up(&u32s(|s| s.blocks.start))?,
            block_tables: up(&plan.block_tables)?,
            sample_rows: up(&plan.sample_rows)?,
            rope_cos: upload(stream, &plan.rope_cos)?,
            rope_sin: upload(stream, &plan.rope_sin)?,
        })
    }
}

/// `clone_htod`, also for an empty slice (a zero-byte `cuMemAllocAsync` is refused on
/// some drivers; `null` is cudarc's empty allocation).
pub(super) fn upload<T: cudarc::driver::DeviceRepr>(
    stream: &std::sync::Arc<CudaStream>,
    v: &[T],
) -> Result<CudaSlice<T>, DriverError> {
    if v.is_empty() { stream.null() } else { stream.clone_htod(v) }
}
