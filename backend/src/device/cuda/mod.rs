//! The CUDA device: the model's op set on an NVIDIA GPU, with Rill's own kernels
//! (`rill_kernels`, compiled by NVRTC at start-up) and cuBLAS GEMMs.
//!
//! [`Cuda`] owns a context, one non-default stream (capturable for CUDA graphs: the
//! legacy stream is not), a cuBLAS handle on it with its own workspace ([`gemm`]), the
//! loaded kernels, and the decode steps recorded as CUDA graphs ([`graphs`]): a plain
//! decode step replays the graph of its batch-size bucket, every other step runs eagerly.
//! Weights keep their checkpoint dtype ([`CudaWeight`]); activations are row-major f32
//! ([`CudaMat`]); the paged KV cache stores f32 in the CPU device's NHD layout
//! ([`CudaKvCache`]), so every op can be checked against the CPU reference
//! (`integration-tests/tests/it/cuda_parity.rs`). Every op is enqueued on the one stream,
//! which orders the whole step; only [`Device::to_host`] waits for the GPU.
//!
//! Ops map one to one onto kernel launchers: embedding gather, RMSNorm, RoPE, K/V write
//! by slot, paged attention (the decode kernel when every sequence runs one row, else the
//! prefill kernel; prefill is exact f32 at `Precision::Exact` and for an f32 model, and
//! bf16 tensor cores for a 16-bit model at `Precision::Fast`), SiLU-and-mul, column
//! split, residual add, row gather; linear layers are cuBLAS ([`gemm`]) with the bias added by a kernel.
//!
//! Every [`Device`] op returns its failure (a failed launch or allocation, named with
//! what was being done and the GPU), `Llama::forward` stops the step there with `?`,
//! and a fault in work already queued surfaces at the step's synchronisation in
//! [`Device::to_host`]: either way the runner fails the step's sequences (424) instead
//! of sampling wrong logits. A device fault leaves the context unusable, so later steps
//! fail the same way.
//! Nothing before the first step panics: [`Cuda::new`] checks the driver, a device, cuBLAS
//! and the NVRTC toolkit and returns an error naming what is missing.

mod gemm;
mod graphs;
mod library;
mod meminfo;
mod memory;
mod open;
mod sampling;

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaStream, DriverError};
use rill_kernels::{AttentionMeta, KernelError, Kernels};

pub use graphs::{DEFAULT_BUCKETS, bucket_for, parse_buckets};
pub use memory::{CudaKvCache, CudaMat, CudaPlan, CudaWeight, WeightData};
pub use sampling::{kernel_params, row_choices};

use self::gemm::{Blas, LinearShape};
use self::graphs::Graphs;
use self::memory::{PlanArrays, Scratch, grow, upload_weight};
use super::{
    AttentionShape, Device, DeviceError, Forward, ForwardOutput, KvLayout, Precision, StepPlan,
};
use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::sampling::{DeviceSampling, RowChoice};
use crate::weights::HostTensor;

/// Why an op could not be enqueued.
#[derive(Debug, thiserror::Error)]
enum OpError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    #[error("cuBLAS: {0}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
    #[error("an input of this op holds no data (it was never computed)")]
    Missing,
    #[error("{0}")]
    Shape(String),
}

/// An NVIDIA GPU: context, stream, cuBLAS handle and compiled kernels.
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: Blas,
    kernels: Kernels,
    scratch: Mutex<Scratch>,
    graphs: Mutex<Graphs>,
    gpu_name: String,
    compute_capability: (i32, i32),
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("ordinal", &self.ctx.ordinal())
            .field("gpu", &self.gpu_name)
            .field("compute_capability", &self.compute_capability)
            .finish_non_exhaustive()
    }
}

impl Cuda {
    /// The GPU's name (`NVIDIA H200`).
    pub fn gpu_name(&self) -> &str {
        &self.gpu_name
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// Run one op, naming it in its failure.
    fn op(&self, what: &str, op: impl FnOnce() -> Result<(), OpError>) -> Result<(), DeviceError> {
        op().map_err(|e| self.error(format!("{what}: {e}")))
    }

    /// A failure of this device, naming the GPU.
    fn error(&self, message: String) -> DeviceError {
        DeviceError { device: "cuda", message: format!("{}: {message}", self.gpu_name) }
    }

    /// Make `out` an uninitialised-by-contract `[rows, cols]` matrix, reusing its
    /// buffer when the size already matches (ops overwrite every element). An empty
    /// matrix has no buffer; a graph's pass takes its buffers from the arena.
    fn ensure(&self, out: &mut CudaMat, rows: usize, cols: usize) -> Result<(), OpError> {
        let n = rows * cols;
        if n == 0 {
            out.set_data(None, false);
        } else if out.data.as_ref().map(|d| d.len()) != Some(n) {
            out.set_data(None, false);
            let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
            match scratch.arena.as_mut() {
                Some(arena) => out.set_data(Some(arena.take(&self.stream, n)?), true),
                None => out.set_data(Some(self.stream.alloc_zeros(n)?), false),
            }
        }
        out.rows = rows;
        out.cols = cols;
        Ok(())
    }

    fn arrays<'p>(&self, plan: &'p CudaPlan) -> Result<&'p PlanArrays, OpError> {
        plan.arrays.as_ref().ok_or(OpError::Missing)
    }

    /// `x` on the host, once the work queued before it has run.
    fn copy_to_host(&self, x: &CudaMat) -> Result<Vec<f32>, DeviceError> {
        let data = match &x.data {
            Some(d) if !x.is_empty() => d,
            _ => return Ok(Vec::new()),
        };
        let host = self
            .stream
            .clone_dtoh(data)
            .map_err(|e| self.error(format!("copying to the host: {e}")))?;
        // Kernel faults surface at the next synchronisation: this one.
        self.stream.synchronize().map_err(|e| self.error(format!("running the step: {e}")))?;
        Ok(host)
    }

    /// `out[i] = x[idx[i]]` for the first `n` entries of `idx` (a plan's row list).
    fn gather(
        &self,
        x: &CudaMat,
        idx: Result<&cudarc::driver::CudaSlice<u32>, OpError>,
        n: usize,
        out: &mut CudaMat,
    ) -> Result<(), OpError> {
        self.ensure(out, n, x.cols)?;
        if out.is_empty() {
            return Ok(());
        }
        let idx = idx?;
        let xd = x.data.as_ref().ok_or(OpError::Missing)?;
        let od = out.data.as_mut().ok_or(OpError::Missing)?;
        Ok(self.kernels.gather_rows(&self.stream, xd, x.cols, idx, n, od)?)
    }

    /// `out = x · wᵀ` by dtype; `x` and `out` are non-empty and `out` is sized.
    fn gemm(&self, x: &CudaMat, w: &CudaWeight, out: &mut CudaMat) -> Result<(), OpError> {
        let s = LinearShape { rows: x.rows, inp: w.shape[1], out: w.shape[0] };
        let xd = x.data.as_ref().ok_or(OpError::Missing)?;
        let od = out.data.as_mut().ok_or(OpError::Missing)?;
        let n = x.len();
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let frozen = scratch.frozen();
        match &w.data {
            WeightData::F32(wd) => self.blas.linear_f32(xd, wd, s, od)?,
            WeightData::Bf16(wd) => {
                let x16 = grow(&self.stream, frozen, &mut scratch.x_bf16, n)?;
                self.kernels.cast_f32_to_bf16(&self.stream, xd, n, x16)?;
                self.blas.linear_half(x16, wd, s, od)?;
            }
            WeightData::F16(wd) => {
                let x16 = grow(&self.stream, frozen, &mut scratch.x_f16, n)?;
                self.kernels.cast_f32_to_f16(&self.stream, xd, n, x16)?;
                self.blas.linear_half(x16, wd, s, od)?;
            }
        }
        Ok(())
    }
}

impl Device for Cuda {
    type Weight = CudaWeight;
    type Activation = CudaMat;
    type Cache = CudaKvCache;
    type Plan = CudaPlan;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn run<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        // Steps run on the engine thread, not the one that created the context. If this
        // fails, the step's first op fails with the driver's reason.
        if let Err(e) = self.ctx.bind_to_thread() {
            tracing::error!(error = %e, gpu = %self.gpu_name, "binding the CUDA context failed");
        }
        work()
    }

    fn weight(&self, tensor: HostTensor) -> Result<CudaWeight, LoadError> {
        let data = upload_weight(&self.stream, &tensor).map_err(|e| {
            let bytes = tensor.shape.iter().product::<usize>() * tensor.data.dtype().size();
            LoadError::Other(format!(
                "cannot copy `{}` ({bytes} bytes) to {}: {e}",
                tensor.name, self.gpu_name
            ))
        })?;
        Ok(CudaWeight { shape: tensor.shape, data })
    }

    /// No memory yet: every op sizes its output itself (`ensure`, which reuses a buffer
    /// of the right size), so an allocation fails in the op that needs it, with its name.
    fn activation(&self, _rows: usize, _cols: usize) -> CudaMat {
        CudaMat::empty()
    }

    fn kv_cache(&self, layout: KvLayout) -> Result<CudaKvCache, LoadError> {
        let layer = || {
            self.stream.alloc_zeros::<f32>(layout.layer_len()).map_err(|e| {
                LoadError::Other(format!(
                    "cannot allocate the KV cache ({} blocks, {} MiB per layer for K and for V) on {}: {e}",
                    layout.num_blocks,
                    layout.layer_bytes() >> 20,
                    self.gpu_name
                ))
            })
        };
        let k = (0..layout.num_layers).map(|_| layer()).collect::<Result<_, _>>()?;
        let v = (0..layout.num_layers).map(|_| layer()).collect::<Result<_, _>>()?;
        Ok(CudaKvCache { k, v, kv_heads: layout.kv_heads, head_dim: layout.head_dim })
    }

    fn plan(&self, plan: &StepPlan) -> Result<CudaPlan, DeviceError> {
        let mut out = CudaPlan::host_values(plan);
        self.op("uploading the step plan", || {
            out.arrays = Some(PlanArrays::upload(&self.stream, plan)?);
            Ok(())
        })?;
        Ok(out)
    }

    fn forward(
        &self,
        cache: &mut CudaKvCache,
        host: &StepPlan,
        forward: &mut Forward<'_, Cuda>,
    ) -> Result<ForwardOutput<CudaMat>, DeviceError> {
        if let Some(logits) = self.replay_decode(host) {
            return Ok(ForwardOutput { logits: logits?, hidden: CudaMat::empty() });
        }
        let plan = self.plan(host)?;
        forward(cache, host, &plan)
    }

    fn prepare_replay(
        &self,
        cache: &mut CudaKvCache,
        config: &ModelConfig,
        batch_sizes: &[usize],
        forward: &mut Forward<'_, Cuda>,
    ) -> Option<String> {
        self.record_graphs(cache, config, batch_sizes, forward)
    }

    /// TGI's default: a GPU runs 4096 prefill tokens in about the time of a decode step's
    /// weight reads, so larger chunks cost running streams little.
    const DEFAULT_STEP_TOKENS: usize = 4096;

    fn memory_info(&self) -> Result<Option<(usize, usize)>, DeviceError> {
        self.mem_get_info().map(Some)
    }

    fn embed(
        &self,
        table: &CudaWeight,
        plan: &CudaPlan,
        out: &mut CudaMat,
    ) -> Result<(), DeviceError> {
        self.op("embed", || {
            let hidden = table.shape[1];
            self.ensure(out, plan.rows, hidden)?;
            if plan.rows == 0 {
                return Ok(());
            }
            let od = out.data.as_mut().ok_or(OpError::Missing)?;
            let tokens = &self.arrays(plan)?.tokens;
            Ok(self.kernels.embed(&self.stream, table.as_ref(), hidden, tokens, plan.rows, od)?)
        })
    }

    fn linear(
        &self,
        x: &CudaMat,
        w: &CudaWeight,
        bias: Option<&CudaWeight>,
        out: &mut CudaMat,
    ) -> Result<(), DeviceError> {
        self.op("linear", || {
            let n = w.shape[0];
            self.ensure(out, x.rows, n)?;
            if x.rows == 0 {
                return Ok(());
            }
            self.gemm(x, w, out)?;
            if let Some(b) = bias {
                let od = out.data.as_mut().ok_or(OpError::Missing)?;
                self.kernels.add_bias(&self.stream, od, x.rows, n, b.as_ref())?;
            }
            Ok(())
        })
    }

    fn rms_norm(
        &self,
        x: &CudaMat,
        weight: &CudaWeight,
        eps: f32,
        out: &mut CudaMat,
    ) -> Result<(), DeviceError> {
        self.op("rms_norm", || {
            self.ensure(out, x.rows, x.cols)?;
            if x.is_empty() {
                return Ok(());
            }
            let (xd, od) = (x.data.as_ref().ok_or(OpError::Missing)?, out.data.as_mut());
            let od = od.ok_or(OpError::Missing)?;
            let w = weight.as_ref();
            Ok(self.kernels.rms_norm(&self.stream, xd, w, x.rows, x.cols, eps, od)?)
        })
    }

    fn add_rms_norm(
        &self,
        x: &mut CudaMat,
        y: &CudaMat,
        weight: &CudaWeight,
        eps: f32,
        out: &mut CudaMat,
    ) -> Result<(), DeviceError> {
        self.op("add_rms_norm", || {
            self.ensure(out, x.rows, x.cols)?;
            if x.is_empty() {
                return Ok(());
            }
            let (rows, cols) = (x.rows, x.cols);
            let yd = y.data.as_ref().ok_or(OpError::Missing)?;
            let xd = x.data.as_mut().ok_or(OpError::Missing)?;
            let od = out.data.as_mut().ok_or(OpError::Missing)?;
            let w = weight.as_ref();
            Ok(self.kernels.add_rms_norm(&self.stream, xd, yd, w, rows, cols, eps, od)?)
        })
    }

    fn rope(&self, x: &mut CudaMat, head_dim: usize, plan: &CudaPlan) -> Result<(), DeviceError> {
        self.op("rope", || {
            if x.is_empty() {
                return Ok(());
            }
            let a = self.arrays(plan)?;
            let (rows, heads) = (x.rows, x.cols / head_dim);
            let xd = x.data.as_mut().ok_or(OpError::Missing)?;
            let (cos, sin) = (&a.rope_cos, &a.rope_sin);
            Ok(self.kernels.rope(&self.stream, xd, rows, heads, head_dim, cos, sin)?)
        })
    }

    fn write_kv(
        &self,
        cache: &mut CudaKvCache,
        layer: usize,
        k: &CudaMat,
        v: &CudaMat,
        plan: &CudaPlan,
    ) -> Result<(), DeviceError> {
        self.op("write_kv", || {
            if k.rows == 0 {
                return Ok(());
            }
            let slots = &self.arrays(plan)?.slots;
            let (kd, vd) = (k.data.as_ref(), v.data.as_ref());
            let (kd, vd) = (kd.ok_or(OpError::Missing)?, vd.ok_or(OpError::Missing)?);
            let (kc, vc) = (&mut cache.k[layer], &mut cache.v[layer]);
            let (kv_heads, head_dim) = (cache.kv_heads, cache.head_dim);
            Ok(self.kernels.write_kv(
                &self.stream,
                kc,
                vc,
                kd,
                vd,
                slots,
                k.rows,
                kv_heads,
                head_dim,
            )?)
        })
    }

    fn attention(
        &self,
        q: &CudaMat,
        cache: &CudaKvCache,
        layer: usize,
        shape: AttentionShape,
        plan: &CudaPlan,
        out: &mut CudaMat,
    ) -> Result<(), DeviceError> {
        self.op("attention", || {
            self.ensure(out, q.rows, shape.heads * shape.head_dim)?;
            if q.rows == 0 {
                return Ok(());
            }
            let a = self.arrays(plan)?;
            let qd = q.data.as_ref().ok_or(OpError::Missing)?;
            let od = out.data.as_mut().ok_or(OpError::Missing)?;
            let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
            let len = Kernels::attention_workspace_len(
                plan.num_seqs,
                shape.heads,
                shape.head_dim,
                plan.max_context,
            );
            let frozen = scratch.frozen();
            let workspace = grow(&self.stream, frozen, &mut scratch.attention, len)?;
            let mut meta = AttentionMeta {
                num_seqs: plan.num_seqs,
                rows: plan.rows,
                heads: shape.heads,
                kv_heads: shape.kv_heads,
                head_dim: shape.head_dim,
                window: shape.window,
                scale: 1.0 / (shape.head_dim as f32).sqrt(),
                seq_row: &a.seq_row,
                seq_len: &a.seq_len,
                seq_start_pos: &a.seq_start_pos,
                seq_block_off: &a.seq_block_off,
                block_tables: &a.block_tables,
                max_rows_per_seq: plan.max_rows_per_seq,
                max_context: plan.max_context,
                all_decode: plan.all_decode,
                exact: shape.precision == Precision::Exact,
                workspace,
            };
            let (kc, vc) = (&cache.k[layer], &cache.v[layer]);
            Ok(self.kernels.attention(&self.stream, qd, kc, vc, &mut meta, od)?)
        })
    }

    fn silu_mul(&self, gate_up: &CudaMat, out: &mut CudaMat) -> Result<(), DeviceError> {
        self.op("silu_mul", || {
            let half = gate_up.cols / 2;
            self.ensure(out, gate_up.rows, half)?;
            if out.is_empty() {
                return Ok(());
            }
            let gd = gate_up.data.as_ref().ok_or(OpError::Missing)?;
            let od = out.data.as_mut().ok_or(OpError::Missing)?;
            Ok(self.kernels.silu_mul(&self.stream, gd, gate_up.rows, half, od)?)
        })
    }

    fn split_cols(
        &self,
        x: &CudaMat,
        widths: &[usize],
        outs: &mut [&mut CudaMat],
    ) -> Result<(), DeviceError> {
        self.op("split_cols", || {
            let mut col0 = 0;
            for (out, &width) in outs.iter_mut().zip(widths) {
                self.ensure(out, x.rows, width)?;
                if !out.is_empty() {
                    let xd = x.data.as_ref().ok_or(OpError::Missing)?;
                    let od = out.data.as_mut().ok_or(OpError::Missing)?;
                    self.kernels.split_cols(&self.stream, xd, x.rows, x.cols, col0, width, od)?;
                }
                col0 += width;
            }
            Ok(())
        })
    }

    fn add_assign(&self, x: &mut CudaMat, y: &CudaMat) -> Result<(), DeviceError> {
        self.op("add_assign", || {
            let n = x.len();
            if n == 0 {
                return Ok(());
            }
            let yd = y.data.as_ref().ok_or(OpError::Missing)?;
            let xd = x.data.as_mut().ok_or(OpError::Missing)?;
            Ok(self.kernels.add_assign(&self.stream, xd, yd, n)?)
        })
    }

    fn gather_sample_rows(
        &self,
        x: &CudaMat,
        plan: &CudaPlan,
        out: &mut CudaMat,
    ) -> Result<(), DeviceError> {
        self.op("gather_sample_rows", || {
            let idx = self.arrays(plan).map(|a| &a.sample_rows);
            self.gather(x, idx, plan.num_sample_rows, out)
        })
    }

    fn gather_hidden_rows(
        &self,
        x: &CudaMat,
        plan: &CudaPlan,
        out: &mut CudaMat,
    ) -> Result<(), DeviceError> {
        self.op("gather_hidden_rows", || {
            let idx = self.arrays(plan).map(|a| &a.hidden_rows);
            self.gather(x, idx, plan.num_hidden_rows, out)
        })
    }

    fn samples_tokens(&self) -> bool {
        true
    }

    fn sample(
        &self,
        logits: &CudaMat,
        sampling: &DeviceSampling,
    ) -> Result<Vec<RowChoice>, DeviceError> {
        self.sample_rows(logits, sampling).map_err(|e| self.error(format!("sampling: {e}")))
    }

    fn to_host(&self, x: &CudaMat) -> Result<Vec<f32>, DeviceError> {
        self.copy_to_host(x)
    }
}
