//! Launcher for paged attention over a ragged batch: `attention_decode.cu` (one query row
//! per sequence, flash-decoding with split-K partitions and a reduce) and
//! `attention_prefill.cu` (FlashAttention-2-style tiles of query rows, with a bf16
//! tensor-core path and an exact f32 path). Both read one layer's f32 NHD cache
//! `[num_blocks, 16, kv_heads, head_dim]` through the sequences' block tables and compute
//! what the CPU device's `cpu/attention.rs` does; the sources' header comments give the
//! designs.
//!
//! [`AttentionMeta`] carries the step's shape and its per-sequence arrays (on the device);
//! [`Kernels::attention`] checks every length it can see, [`plan`] picks the kernel (decode
//! when `all_decode`, else prefill; `exact`, or a GPU before sm_80, selects the f32 prefill
//! path), the head-dim bucket and the grid. The arrays' *values* live on the device and are
//! not checked here; the kernels bound every index they derive from them (rows, block-table
//! entries, block ids) by the lengths passed in, so bad metadata gives wrong numbers, never
//! a stray access. `max_rows_per_seq` and `max_context` must be upper bounds (a CUDA graph
//! may pass its bucket's bounds): they size the grid, and work past them is not done.
//!
//! Numerics: decode and the exact prefill path are f32 throughout and agree with the f32
//! reference to ~1e-6; the bf16 path rounds Q, K, V and P to bf16 (f32 accumulation), ~1e-2
//! relative. A decode row batched with prefill rows takes the prefill kernel, so with the
//! bf16 path its result can differ (by that rounding) from the same row in a decode-only
//! step; within one kernel, a sequence's result does not depend on the rest of the batch.

use cudarc::driver::{
    CudaStream, DevicePtr, DevicePtrMut, LaunchArgs, LaunchConfig, PushKernelArg, sys,
};

use crate::launch::{bind, check_len, product, to_i32, to_u32};
use crate::{KernelError, Kernels};

const OP: &str = "attention";
/// Positions per KV-cache block: the contract's (`rill_proto::BLOCK_SIZE`), which the
/// sources see as `RILL_BLOCK_SIZE` (an NVRTC `-D` option, [`crate::compile::options`]).
pub use rill_proto::BLOCK_SIZE;
/// Largest supported head_dim (the biggest template bucket).
pub const MAX_HEAD_DIM: usize = 256;
/// Decode: threads per CTA, and keys per partition before a sequence is split further
/// (RILL_DECODE_THREADS, RILL_DECODE_PARTITION, RILL_DECODE_MAX_PARTITIONS in the source).
const DECODE_THREADS: u32 = 128;
const DECODE_PARTITION: usize = 256;
const DECODE_MAX_PARTITIONS: usize = 16;
/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_SMEM: usize = 48 * 1024;

/// One attention call's shape and per-sequence metadata (device arrays of `num_seqs`
/// entries, as in the backend's `StepPlan`), plus the split-K scratch.
pub struct AttentionMeta<'a> {
    pub num_seqs: usize,
    pub rows: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Keys visible from position p: `(p - window, p]`; `None` = all of `[0, p]`.
    pub window: Option<usize>,
    pub scale: f32,
    /// First query row of each sequence.
    pub seq_row: &'a dyn DevicePtr<u32>,
    /// Query rows of each sequence (0 = padding: nothing is written).
    pub seq_len: &'a dyn DevicePtr<u32>,
    /// Position of each sequence's first query row.
    pub seq_start_pos: &'a dyn DevicePtr<u32>,
    /// Offset of each sequence's block table in `block_tables`.
    pub seq_block_off: &'a dyn DevicePtr<u32>,
    /// Every sequence's block table, concatenated.
    pub block_tables: &'a dyn DevicePtr<u32>,
    /// Upper bound on any `seq_len` (sizes the prefill grid).
    pub max_rows_per_seq: usize,
    /// Upper bound on any `start_pos + len` (sizes the decode partitions).
    pub max_context: usize,
    /// Every sequence has at most one row: use the decode kernel.
    pub all_decode: bool,
    /// Exact f32 prefill (parity with the f32 CPU device, f32 models) instead of bf16 tensor
    /// cores (~1e-2 relative; for bf16/f16 models). Decode is always f32.
    pub exact: bool,
    /// Split-K partials of the decode kernel, at least [`AttentionMeta::workspace_len`].
    pub workspace: &'a mut dyn DevicePtrMut<f32>,
}

impl std::fmt::Debug for AttentionMeta<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttentionMeta").field("dims", &self.dims()).finish_non_exhaustive()
    }
}

impl AttentionMeta<'_> {
    /// f32 elements of workspace a step of `num_seqs` sequences with contexts up to
    /// `max_context` needs (0 when no sequence is split): up to 16 partitions of
    /// `head_dim + 2` floats per (sequence, query head). Also an upper bound with a window.
    pub fn workspace_len(
        num_seqs: usize,
        heads: usize,
        head_dim: usize,
        max_context: usize,
    ) -> usize {
        match decode_partitions(max_context) {
            0 | 1 => 0,
            p => num_seqs.saturating_mul(heads).saturating_mul(p).saturating_mul(head_dim + 2),
        }
    }
}

impl Kernels {
    /// [`AttentionMeta::workspace_len`].
    pub fn attention_workspace_len(
        num_seqs: usize,
        heads: usize,
        head_dim: usize,
        max_context: usize,
    ) -> usize {
        AttentionMeta::workspace_len(num_seqs, heads, head_dim, max_context)
    }
}

/// `gridDim.z` of the decode kernel: partitions of the longest context, at most 16.
fn decode_partitions(max_context: usize) -> usize {
    max_context.div_ceil(DECODE_PARTITION).min(DECODE_MAX_PARTITIONS)
}

/// The smallest template bucket holding `head_dim`.
fn bucket(head_dim: usize) -> usize {
    [16, 32, 64, 128, 256].into_iter().find(|&b| head_dim <= b).unwrap_or(MAX_HEAD_DIM)
}

/// Dynamic shared memory of a prefill kernel, mirroring `Bf16Shape::SMEM` and
/// `F32Shape::SMEM` (the kernels trap if given less).
fn prefill_smem(hd: usize, exact: bool) -> usize {
    if exact {
        let (bm, bn, warps) = (32, 32, 4);
        4 * (bm * hd + bn * (hd + 4) + bn * hd + warps * 8 * bn)
    } else {
        let (bm, bn) = (prefill_bm(hd, false), 32);
        2 * (bm * (hd + 8) + bn * (hd + 8) + hd * (bn + 8))
    }
}

/// Items (row × query head pairs) per prefill CTA; threads are 2 × BM for bf16, 128 for f32.
fn prefill_bm(hd: usize, exact: bool) -> usize {
    match (exact, hd > 128) {
        (true, _) => 32,
        (false, false) => 128,
        (false, true) => 64,
    }
}

/// What one attention call launches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Decode {
        function: String,
        grid: (u32, u32, u32),
        head_chunks: i32,
        /// gridDim.z; more than 1 means partials in the workspace and a reduce launch.
        partitions: usize,
    },
    Prefill {
        function: String,
        grid: (u32, u32, u32),
        threads: u32,
        smem: usize,
    },
}

impl Plan {
    /// The launch configuration of the planned kernel.
    pub fn config(&self) -> LaunchConfig {
        let (grid_dim, threads, smem) = match self {
            Plan::Decode { grid, .. } => (*grid, DECODE_THREADS, 0),
            Plan::Prefill { grid, threads, smem, .. } => (*grid, *threads, *smem as u32),
        };
        LaunchConfig { grid_dim, block_dim: (threads, 1, 1), shared_mem_bytes: smem }
    }

    /// The launch of `attention_decode_reduce` after a decode that splits sequences (one
    /// CTA per sequence and query head), else `None`. `heads` as given to [`plan`].
    pub fn reduce_config(&self, heads: usize) -> Option<LaunchConfig> {
        match self {
            Plan::Decode { grid, partitions, .. } if *partitions > 1 => Some(LaunchConfig {
                grid_dim: (grid.0, heads as u32, 1),
                block_dim: (DECODE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            }),
            _ => None,
        }
    }
}

/// Where the decode workspace's (m, l) pairs start, in f32 elements: after the acc partials
/// `[num_seqs, heads, partitions, head_dim]` (the pairs are `[num_seqs, heads, partitions,
/// 2]`).
pub fn decode_ml_offset(
    num_seqs: usize,
    heads: usize,
    partitions: usize,
    head_dim: usize,
) -> usize {
    num_seqs * heads * partitions * head_dim
}

/// The scalar part of [`AttentionMeta`]: all [`plan`] needs.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub num_seqs: usize,
    pub rows: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub window: Option<usize>,
    pub scale: f32,
    pub max_rows_per_seq: usize,
    pub max_context: usize,
    pub all_decode: bool,
    pub exact: bool,
}

impl AttentionMeta<'_> {
    pub fn dims(&self) -> Dims {
        Dims {
            num_seqs: self.num_seqs,
            rows: self.rows,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            window: self.window,
            scale: self.scale,
            max_rows_per_seq: self.max_rows_per_seq,
            max_context: self.max_context,
            all_decode: self.all_decode,
            exact: self.exact,
        }
    }
}

/// Check a call's shape and pick the kernel and grid (no device access).
pub fn plan(meta: &Dims) -> Result<Plan, KernelError> {
    let shape = |detail: String| KernelError::Shape { op: OP, detail };
    let (heads, kv_heads, d) = (meta.heads, meta.kv_heads, meta.head_dim);
    if kv_heads == 0 || heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(shape(format!("{heads} query heads do not group over {kv_heads} kv heads")));
    }
    if d == 0 || d > MAX_HEAD_DIM || !d.is_multiple_of(4) {
        return Err(shape(format!("head_dim {d} is not a multiple of 4 in 4..={MAX_HEAD_DIM}")));
    }
    if meta.window == Some(0) {
        return Err(shape("a window of 0 sees no key".into()));
    }
    if !meta.scale.is_finite() {
        return Err(shape(format!("scale {} is not finite", meta.scale)));
    }
    let group = heads / kv_heads;
    let hd = bucket(d);
    let seqs = to_u32(OP, "num_seqs", meta.num_seqs)?;
    if meta.all_decode {
        if meta.max_rows_per_seq > 1 {
            return Err(shape(format!("all_decode with {} rows", meta.max_rows_per_seq)));
        }
        let gmax = if group <= 4 || hd > 128 { 4 } else { 8 };
        let head_chunks = group.div_ceil(gmax);
        let span = meta.window.map_or(meta.max_context, |w| w.min(meta.max_context));
        let partitions = decode_partitions(span).max(1);
        let y = product(OP, kv_heads, head_chunks)?;
        if y > 65535 || heads > 65535 {
            return Err(shape(format!("{heads} heads exceed the grid")));
        }
        return Ok(Plan::Decode {
            function: format!("attention_decode_d{hd}_g{gmax}"),
            grid: (seqs, y as u32, partitions as u32),
            head_chunks: head_chunks as i32,
            partitions,
        });
    }
    if meta.max_rows_per_seq == 0 {
        return Err(shape("max_rows_per_seq is 0 with rows to compute".into()));
    }
    let bm = prefill_bm(hd, meta.exact);
    // Tiles of every sequence: at most one partial tile per sequence beyond the full ones.
    let by_rows = product(OP, meta.rows, group)?.div_ceil(bm).saturating_add(meta.num_seqs);
    let by_seqs =
        meta.num_seqs.saturating_mul(product(OP, meta.max_rows_per_seq, group)?.div_ceil(bm));
    let tiles = to_i32(OP, "prefill tiles", by_rows.min(by_seqs))? as u32;
    if kv_heads > 65535 {
        return Err(shape(format!("{kv_heads} kv heads exceed the grid")));
    }
    let path = if meta.exact { "f32" } else { "bf16" };
    Ok(Plan::Prefill {
        function: format!("attention_prefill_{path}_d{hd}"),
        grid: (tiles, kv_heads as u32, 1),
        threads: if meta.exact { 128 } else { 2 * bm as u32 },
        smem: prefill_smem(hd, meta.exact),
    })
}

/// The metadata arguments every attention kernel takes, in the sources'
/// `RILL_ATTN_META_PARAMS` order.
struct MetaArgs {
    ptrs: [sys::CUdeviceptr; 5],
    tables_len: u32,
    num_blocks: u32,
    dims: [i32; 6], // num_seqs, rows, heads, kv_heads, head_dim, window (0 = none)
}

impl MetaArgs {
    fn push<'a>(&'a self, launch: &mut LaunchArgs<'a>) {
        for p in &self.ptrs {
            launch.arg(p);
        }
        launch.arg(&self.tables_len).arg(&self.num_blocks);
        for d in &self.dims {
            launch.arg(d);
        }
    }
}

impl Kernels {
    /// Causal paged attention: `out[r, h]` for every row r and query head h of `meta`'s
    /// sequences, from `q` `[rows, heads * head_dim]` and one layer's caches. Launches the
    /// decode kernel (and its reduce when a sequence is split) when `meta.all_decode`, else
    /// the prefill kernel. `meta` is `&mut` because the decode kernel writes its workspace.
    pub fn attention(
        &self,
        s: &CudaStream,
        q: &impl DevicePtr<f32>,
        k_cache: &impl DevicePtr<f32>,
        v_cache: &impl DevicePtr<f32>,
        meta: &mut AttentionMeta<'_>,
        out: &mut impl DevicePtrMut<f32>,
    ) -> Result<(), KernelError> {
        let mut dims = meta.dims();
        // No bf16 tensor cores before sm_80 (the bf16 kernels trap there).
        dims.exact |= self.arch() < 80;
        let plan = plan(&dims)?;
        let n = product(OP, product(OP, meta.rows, meta.heads)?, meta.head_dim)?;
        check_len(OP, "q", q.len(), n)?;
        check_len(OP, "out", out.len(), n)?;
        let block = product(OP, BLOCK_SIZE, product(OP, meta.kv_heads, meta.head_dim)?)?;
        if k_cache.len() != v_cache.len() || !k_cache.len().is_multiple_of(block) {
            let detail = format!(
                "caches of {} and {} values are not [blocks, 16, {} x {}]",
                k_cache.len(),
                v_cache.len(),
                meta.kv_heads,
                meta.head_dim
            );
            return Err(KernelError::Shape { op: OP, detail });
        }
        let arrays = [meta.seq_row, meta.seq_len, meta.seq_start_pos, meta.seq_block_off];
        for (what, a) in ["seq_row", "seq_len", "seq_start_pos", "seq_block_off"].iter().zip(arrays)
        {
            check_len(OP, what, a.len(), meta.num_seqs)?;
        }
        if let Plan::Decode { partitions, .. } = plan {
            let ws = meta.num_seqs * meta.heads * partitions * (meta.head_dim + 2);
            check_len(OP, "workspace", meta.workspace.len(), if partitions > 1 { ws } else { 0 })?;
        }
        if meta.rows == 0 || meta.num_seqs == 0 {
            return Ok(());
        }
        let window = meta.window.map_or(0, |w| w.min(i32::MAX as usize) as i32);
        let tables_len = to_u32(OP, "block_tables", meta.block_tables.len())?;
        let num_blocks = to_u32(OP, "cache blocks", k_cache.len() / block)?;
        let dims = [
            to_i32(OP, "num_seqs", meta.num_seqs)?,
            to_i32(OP, "rows", meta.rows)?,
            to_i32(OP, "heads", meta.heads)?,
            to_i32(OP, "kv_heads", meta.kv_heads)?,
            meta.head_dim as i32,
            window,
        ];

        bind(s)?;
        let (q, _q) = q.device_ptr(s);
        let (k, _k) = k_cache.device_ptr(s);
        let (v, _v) = v_cache.device_ptr(s);
        let [seq_row, seq_len, seq_start_pos, seq_block_off] = arrays;
        let (a0, _a0) = seq_row.device_ptr(s);
        let (a1, _a1) = seq_len.device_ptr(s);
        let (a2, _a2) = seq_start_pos.device_ptr(s);
        let (a3, _a3) = seq_block_off.device_ptr(s);
        let (a4, _a4) = meta.block_tables.device_ptr(s);
        let args = MetaArgs { ptrs: [a0, a1, a2, a3, a4], tables_len, num_blocks, dims };
        let (out, _out) = out.device_ptr_mut(s);
        // The kernels move q, the caches and out in float4 / float2 units.
        if [q, k, v, out].iter().any(|p| p % 16 != 0) {
            let detail = "q, the caches and out must be 16-byte aligned".to_string();
            return Err(KernelError::Shape { op: OP, detail });
        }
        let scale = meta.scale;
        let cfg = plan.config();
        let reduce_cfg = plan.reduce_config(meta.heads);
        match plan {
            Plan::Decode { function, head_chunks, partitions, .. } => {
                let f = self.function(&function)?;
                let (ws, _ws) = meta.workspace.device_ptr_mut(s);
                let acc_len =
                    decode_ml_offset(meta.num_seqs, meta.heads, partitions, meta.head_dim);
                let ws_ml = ws + (acc_len * std::mem::size_of::<f32>()) as u64;
                let mut launch = s.launch_builder(f);
                launch.arg(&q).arg(&k).arg(&v);
                args.push(&mut launch);
                launch.arg(&scale).arg(&head_chunks).arg(&out).arg(&ws).arg(&ws_ml);
                // SAFETY: the arguments match `attention_decode_dHD_gG(const float* q, k, v,
                // RILL_ATTN_META_PARAMS, float scale, int head_chunks, float* out, float*
                // ws_acc, float* ws_ml)` in order and type. The kernel reads seq_* entries
                // below num_seqs (each checked >= num_seqs long), block_tables entries below
                // tables_len (its length), cache rows only of blocks below num_blocks (the
                // caches' length / block), and q and out rows only below `rows` (both checked
                // >= rows * heads * head_dim), dims below head_dim <= the bucket, heads below
                // the group's end. Workspace slots are (seq * heads + head) * partitions + p
                // with p < gridDim.z = partitions: acc_len floats, then two per slot, which is
                // the length checked when partitions > 1 (with one partition the kernel
                // writes out directly and never touches the workspace). out and the workspace
                // are exclusive borrows, distinct from the inputs and from each other.
                unsafe { launch.launch(cfg) }?;
                if let Some(cfg) = reduce_cfg {
                    let reduce = self.function("attention_decode_reduce")?;
                    let partitions = partitions as i32;
                    let mut launch = s.launch_builder(reduce);
                    args.push(&mut launch);
                    launch.arg(&partitions).arg(&ws).arg(&ws_ml).arg(&out);
                    // SAFETY: the arguments match `attention_decode_reduce(
                    // RILL_ATTN_META_PARAMS, int partitions, const float* ws_acc, const
                    // float* ws_ml, float* out)`; block (seq, head) reads the metadata as
                    // above and the workspace slots (seq * heads + head) * partitions + i
                    // for i below its partition count (<= partitions), written by the
                    // launch above on this stream, and writes head `head` of its sequence's
                    // row when that row is below `rows`.
                    unsafe { launch.launch(cfg) }?;
                }
            }
            Plan::Prefill { function, smem, .. } => {
                let f = self.function(&function)?;
                if smem > DEFAULT_SMEM {
                    let attr =
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
                    f.set_attribute(attr, smem as i32)?;
                }
                let mut launch = s.launch_builder(f);
                launch.arg(&q).arg(&k).arg(&v);
                args.push(&mut launch);
                launch.arg(&scale).arg(&out);
                // SAFETY: the arguments match `attention_prefill_{bf16,f32}_dHD(const float*
                // q, k, v, RILL_ATTN_META_PARAMS, float scale, float* out)` in order and type.
                // Metadata, cache, q and out accesses are bounded as for decode (a sequence
                // whose rows do not lie inside `rows` is skipped whole). The dynamic shared
                // memory is `smem`, the kernel's own formula (it traps if given less),
                // opted in above 48 KB. out is an exclusive borrow, aliasing no input.
                unsafe { launch.launch(cfg) }?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(heads: usize, kv_heads: usize, head_dim: usize, all_decode: bool) -> Dims {
        Dims {
            num_seqs: 3,
            rows: if all_decode { 3 } else { 40 },
            heads,
            kv_heads,
            head_dim,
            window: None,
            scale: 0.125,
            max_rows_per_seq: if all_decode { 1 } else { 30 },
            max_context: 600,
            all_decode,
            exact: false,
        }
    }

    #[test]
    fn plan_picks_the_kernel_bucket_and_grid() {
        // Llama-3-8B decode: 32 heads over 8 kv heads, head_dim 128, contexts up to 600.
        let plan = plan(&dims(32, 8, 128, true)).unwrap();
        let want = Plan::Decode {
            function: "attention_decode_d128_g4".into(),
            grid: (3, 8, 3),
            head_chunks: 1,
            partitions: 3,
        };
        assert_eq!(plan, want);
        assert_eq!(plan.config().block_dim, (128, 1, 1));
        let reduce = plan.reduce_config(32).expect("three partitions need the reduce");
        assert_eq!((reduce.grid_dim, reduce.block_dim), ((3, 32, 1), (128, 1, 1)));
        // G = 12 takes g8 in two chunks; a window bounds the partitions.
        let d = Dims { window: Some(200), ..dims(12, 1, 64, true) };
        let Plan::Decode { function, grid, head_chunks, partitions } = super::plan(&d).unwrap()
        else {
            panic!("decode")
        };
        assert_eq!(
            (function.as_str(), grid, head_chunks),
            ("attention_decode_d64_g8", (3, 2, 1), 2)
        );
        assert_eq!(partitions, 1);
        assert!(super::plan(&d).unwrap().reduce_config(12).is_none(), "one partition: no reduce");
        // Prefill: d80 pads to the 128 bucket; the grid is bounded by both estimates.
        let Plan::Prefill { function, grid, threads, smem } =
            super::plan(&dims(4, 2, 80, false)).unwrap()
        else {
            panic!("prefill")
        };
        assert_eq!((function.as_str(), threads, smem), ("attention_prefill_bf16_d128", 256, 53760));
        assert_eq!(grid, (3 * 60usize.div_ceil(128) as u32, 2, 1));
        let exact = Dims { exact: true, ..dims(4, 2, 256, false) };
        let Plan::Prefill { function, threads, smem, .. } = super::plan(&exact).unwrap() else {
            panic!("prefill")
        };
        assert_eq!((function.as_str(), threads, smem), ("attention_prefill_f32_d256", 128, 102912));
    }

    #[test]
    fn plan_rejects_shapes_the_kernels_cannot_take() {
        for bad in [
            dims(6, 4, 64, false),  // heads not a multiple of kv_heads
            dims(4, 2, 18, false),  // head_dim % 4
            dims(4, 2, 512, false), // head_dim > 256
            Dims { window: Some(0), ..dims(4, 2, 64, false) },
            Dims { max_rows_per_seq: 2, ..dims(4, 2, 64, true) },
            Dims { max_rows_per_seq: 0, ..dims(4, 2, 64, false) },
            Dims { scale: f32::NAN, ..dims(4, 2, 64, false) },
        ] {
            assert!(plan(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn workspace_is_bounded_by_sixteen_partitions() {
        assert_eq!(AttentionMeta::workspace_len(4, 32, 128, 256), 0);
        assert_eq!(AttentionMeta::workspace_len(4, 32, 128, 257), 4 * 32 * 2 * 130);
        assert_eq!(AttentionMeta::workspace_len(4, 32, 128, 1 << 20), 4 * 32 * 16 * 130);
    }
}
