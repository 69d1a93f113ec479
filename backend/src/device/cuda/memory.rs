//! What the CUDA device keeps in GPU memory: weights ([`CudaWeight`], checkpoint dtype),
//! activations ([`CudaMat`], row-major f32), the paged KV cache ([`CudaKvCache`], f32
//! NHD blocks, as on the CPU) and one step's metadata ([`CudaPlan`]).
//! See `runner/load.rs` for how much of the GPU the KV cache takes.
//!
//! The layouts are the CPU device's, so the two engines can be compared op by op. Every
//! buffer lives on the device's one stream: allocation and freeing are stream-ordered
//! (`cuMemAllocAsync`), which is what lets ops replace an output buffer of the wrong
//! size without synchronising. Steps recorded as CUDA graphs take their activations from
//! an arena instead (`graphs.rs`): such a matrix borrows its buffer and never frees it.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DriverError};
use half::{bf16, f16};
use rill_kernels::WeightRef;

use super::OpError;
use super::graphs::Arena;
use crate::device::StepPlan;
use crate::weights::{HostTensor, TensorData};

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
    /// `data` aliases a buffer a graph arena owns: dropping the matrix must not free it.
    pub(super) borrowed: bool,
    pub rows: usize,
    pub cols: usize,
}

impl Drop for CudaMat {
    fn drop(&mut self) {
        self.set_data(None, false);
    }
}

impl CudaMat {
    pub(super) fn empty() -> CudaMat {
        CudaMat { data: None, borrowed: false, rows: 0, cols: 0 }
    }

    /// Replace the buffer; a borrowed one is let go without freeing it (its arena does).
    pub(super) fn set_data(&mut self, data: Option<CudaSlice<f32>>, borrowed: bool) {
        let old = std::mem::replace(&mut self.data, data);
        if std::mem::replace(&mut self.borrowed, borrowed) {
            // The device pointer goes back to nobody: the arena that owns it frees it.
            old.map(CudaSlice::leak);
        }
    }

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
    pub num_hidden_rows: usize,
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
    pub hidden_rows: CudaSlice<u32>,
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
            num_hidden_rows: plan.hidden_rows.len(),
            max_rows_per_seq: plan.seqs.iter().map(|s| s.len).max().unwrap_or(0),
            max_context: plan.seqs.iter().map(|s| s.start_pos + s.len).max().unwrap_or(0),
            all_decode: plan.seqs.iter().all(|s| s.len == 1),
        }
    }
}

/// A plan's per-sequence columns (row, len, start_pos, first block-table entry).
fn seq_columns(plan: &StepPlan) -> [Vec<u32>; 4] {
    let col = |f: fn(&crate::device::SeqPlan) -> usize| -> Vec<u32> {
        plan.seqs.iter().map(|s| f(s) as u32).collect()
    };
    [col(|s| s.row), col(|s| s.len), col(|s| s.start_pos), col(|s| s.blocks.start)]
}

impl PlanArrays {
    /// Upload `plan`'s arrays: eleven small copies from pageable memory (one packed,
    /// pinned upload is a later optimisation).
    pub(super) fn upload(stream: &Arc<CudaStream>, plan: &StepPlan) -> Result<Self, DriverError> {
        let [row, len, start, block_off] = seq_columns(plan);
        let up = |v: &[u32]| upload(stream, v);
        Ok(PlanArrays {
            tokens: up(&plan.tokens)?,
            slots: up(&plan.slots)?,
            seq_row: up(&row)?,
            seq_len: up(&len)?,
            seq_start_pos: up(&start)?,
            seq_block_off: up(&block_off)?,
            block_tables: up(&plan.block_tables)?,
            sample_rows: up(&plan.sample_rows)?,
            hidden_rows: up(&plan.hidden_rows)?,
            rope_cos: upload(stream, &plan.rope_cos)?,
            rope_sin: upload(stream, &plan.rope_sin)?,
        })
    }

    /// Zeroed buffers that [`PlanArrays::write`] can fill with any plan of at most `rows`
    /// rows, `rows` sequences, sample rows and hidden rows, and `blocks` block-table
    /// entries: a CUDA
    /// graph's inputs, at addresses fixed for the graph's life.
    pub(super) fn with_capacity(
        stream: &Arc<CudaStream>,
        rows: usize,
        blocks: usize,
        rope_half: usize,
    ) -> Result<Self, DriverError> {
        let u32s = |n: usize| stream.alloc_zeros::<u32>(n.max(1));
        let f32s = |n: usize| stream.alloc_zeros::<f32>(n.max(1));
        Ok(PlanArrays {
            tokens: u32s(rows)?,
            slots: u32s(rows)?,
            seq_row: u32s(rows)?,
            seq_len: u32s(rows)?,
            seq_start_pos: u32s(rows)?,
            seq_block_off: u32s(rows)?,
            block_tables: u32s(blocks)?,
            sample_rows: u32s(rows)?,
            hidden_rows: u32s(rows)?,
            rope_cos: f32s(rows * rope_half)?,
            rope_sin: f32s(rows * rope_half)?,
        })
    }

    /// Copy `plan`'s arrays into the front of these buffers, in stream order (so after
    /// the work that read the previous contents). Fails, copying nothing, if one does
    /// not fit.
    pub(super) fn write(
        &mut self,
        stream: &Arc<CudaStream>,
        plan: &StepPlan,
    ) -> Result<(), String> {
        let [row, len, start, block_off] = seq_columns(plan);
        let u32s: [(&[u32], &mut CudaSlice<u32>, &str); 9] = [
            (&plan.tokens, &mut self.tokens, "tokens"),
            (&plan.slots, &mut self.slots, "slots"),
            (&row, &mut self.seq_row, "sequence rows"),
            (&len, &mut self.seq_len, "sequence lengths"),
            (&start, &mut self.seq_start_pos, "start positions"),
            (&block_off, &mut self.seq_block_off, "block-table offsets"),
            (&plan.block_tables, &mut self.block_tables, "block tables"),
            (&plan.sample_rows, &mut self.sample_rows, "sample rows"),
            (&plan.hidden_rows, &mut self.hidden_rows, "hidden rows"),
        ];
        let f32s = [(&plan.rope_cos, &mut self.rope_cos), (&plan.rope_sin, &mut self.rope_sin)];
        let too_long = u32s.iter().map(|(h, d, what)| (h.len(), d.len(), *what));
        let too_long = too_long.chain(f32s.iter().map(|(h, d)| (h.len(), d.len(), "rope")));
        for (have, room, what) in too_long {
            if have > room {
                return Err(format!("{what}: {have} values for a buffer of {room}"));
            }
        }
        let copy = |e: DriverError| format!("copying the step plan: {e}");
        for (host, dev, _) in u32s {
            if !host.is_empty() {
                stream.memcpy_htod(host, &mut dev.slice_mut(..host.len())).map_err(copy)?;
            }
        }
        for (host, dev) in f32s {
            if !host.is_empty() {
                stream
                    .memcpy_htod(host.as_slice(), &mut dev.slice_mut(..host.len()))
                    .map_err(copy)?;
            }
        }
        Ok(())
    }
}

/// `clone_htod`, also for an empty slice (a zero-byte `cuMemAllocAsync` is refused on
/// some drivers; `null` is cudarc's empty allocation).
pub(super) fn upload<T: cudarc::driver::DeviceRepr>(
    stream: &Arc<CudaStream>,
    v: &[T],
) -> Result<CudaSlice<T>, DriverError> {
    if v.is_empty() { stream.null() } else { stream.clone_htod(v) }
}

/// Buffers reused across ops, grown on demand; while a CUDA graph is recorded, the
/// graphs' own (see `graphs.rs`), with the arena activations come from.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// The activation cast to 16 bits for a bf16/f16 GEMM.
    pub x_bf16: Option<CudaSlice<bf16>>,
    pub x_f16: Option<CudaSlice<f16>>,
    /// The attention kernels' split-K partials.
    pub attention: Option<CudaSlice<f32>>,
    pub arena: Option<Arena>,
}

impl Scratch {
    /// The stream is being captured: buffers may not be allocated or replaced.
    pub fn frozen(&self) -> bool {
        self.arena.as_ref().is_some_and(|a| a.capturing)
    }
}

/// A scratch buffer of at least `n` elements (replaced, not resized, when too small:
/// the old one is freed in stream order after the ops that used it); `frozen` while a
/// graph is captured, when it must already be large enough.
pub(super) fn grow<'s, T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    frozen: bool,
    slot: &'s mut Option<CudaSlice<T>>,
    n: usize,
) -> Result<&'s mut CudaSlice<T>, OpError> {
    if slot.as_ref().is_none_or(|s| s.len() < n) {
        if frozen {
            return Err(OpError::Shape(format!(
                "a scratch buffer of {n} elements would be allocated while capturing a CUDA graph"
            )));
        }
        *slot = None;
        *slot = Some(stream.alloc_zeros(n.max(1))?);
    }
    // Just filled if it was empty or too small.
    Ok(slot.as_mut().expect("scratch buffer allocated above"))
}

pub(super) fn upload_weight(
    stream: &Arc<CudaStream>,
    t: &HostTensor,
) -> Result<WeightData, DriverError> {
    Ok(match &t.data {
        TensorData::F32(s) => WeightData::F32(upload(stream, s.as_slice())?),
        TensorData::Bf16(s) => WeightData::Bf16(upload(stream, s.as_slice())?),
        TensorData::F16(s) => WeightData::F16(upload(stream, s.as_slice())?),
    })
}
