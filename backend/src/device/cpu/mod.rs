//! The CPU device: the reference implementation of every op, and the default
//! engine where no GPU is present.
//!
//! [`Cpu`] owns a rayon pool (one thread per core) and runs each whole step inside
//! it, so the dozens of parallel ops of a step hand work between pool threads
//! instead of waking a caller thread for every op. Weights are the
//! loader's [`HostTensor`]s: matrices as they are (memory-mapped, 16-bit kept 16-bit),
//! vectors (norms, biases) widened to f32 once at load;
//! activations are [`Mat`]s; the KV cache is [`CpuKvCache`], f32 so that cached
//! keys are exactly the keys just computed (chunked prefill and whole-prompt
//! prefill then agree to the bit). Linear layers go through [`gemm`] (the exact
//! precision, and f32 models) or [`panels`] (the fast precision on a 16-bit model, whose
//! linear weights are laid out in panels at load), attention through [`attention`];
//! everything here is deterministic and batch-invariant.

mod attention;
pub mod gemm;
pub mod panels;
pub mod simd;

use half::{bf16, f16};
use rayon::prelude::*;

use self::panels::Panels;
use super::{AttentionShape, Device, DeviceError, KvLayout, Precision, StepPlan};
use crate::error::LoadError;
use crate::weights::{HostTensor, TensorData};

/// A weight on the CPU: the loader's tensor as it is (vectors widened to f32), or, for
/// the fast precision, a 16-bit linear weight laid out in [`Panels`].
#[derive(Debug)]
pub enum CpuWeight {
    Tensor(HostTensor),
    Bf16(Panels<bf16>),
    F16(Panels<f16>),
}

impl CpuWeight {
    /// The tensor as loaded (a vector, or an exact-precision or f32 matrix).
    fn tensor(&self) -> &HostTensor {
        match self {
            CpuWeight::Tensor(t) => t,
            // The model hands panels only to `linear` and `embed`.
            CpuWeight::Bf16(_) | CpuWeight::F16(_) => panic!("a linear weight used as a vector"),
        }
    }
}

thread_local! {
    /// The fast precision's rounded activations (reused: a prefill's are megabytes).
    static ROUNDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out` as a `[rows, cols]` matrix, reusing its allocation.
fn resized(out: &mut Mat, rows: usize, cols: usize) -> &mut [f32] {
    *out = Mat { data: std::mem::take(&mut out.data), rows, cols };
    out.data.resize(rows * cols, 0.0);
    &mut out.data
}

/// `out = round(x) · wᵀ (+ bias)` on panels (see [`panels`]).
fn panel_linear<E: simd::Elem>(
    x: &Mat,
    w: &Panels<E>,
    bias: Option<&[f32]>,
    out: &mut Mat,
) -> Result<(), DeviceError> {
    let out = resized(out, x.rows, w.n());
    ROUNDED.with(|cell| {
        // Reentrant only if a pool thread ran another linear inside this one's; then
        // round into a fresh buffer.
        let mut fresh = Vec::new();
        let mut held = cell.try_borrow_mut();
        let buf = held.as_deref_mut().unwrap_or(&mut fresh);
        panels::round_into::<E>(&x.data, buf);
        panels::linear(buf, x.rows, w, bias, out);
    });
    Ok(())
}

/// A row-major f32 matrix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mat {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat { data: vec![0.0; rows * cols], rows, cols }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// Per layer, K and V as `[num_blocks, BLOCK_SIZE, kv_heads, head_dim]` f32.
#[derive(Debug)]
pub struct CpuKvCache {
    pub layout: KvLayout,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl CpuKvCache {
    fn new(layout: KvLayout) -> Self {
        // `vec![0.0; n]` is a calloc: pages are committed only when first written.
        let layer = || vec![0.0f32; layout.layer_len()];
        CpuKvCache {
            layout,
            k: (0..layout.num_layers).map(|_| layer()).collect(),
            v: (0..layout.num_layers).map(|_| layer()).collect(),
        }
    }
}

/// The CPU device: a thread pool.
#[derive(Clone, Debug)]
pub struct Cpu {
    pool: std::sync::Arc<rayon::ThreadPool>,
}

impl Cpu {
    /// A device with one thread per available core.
    pub fn new() -> Self {
        Self::with_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub fn with_threads(threads: usize) -> Self {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("rill-cpu-{i}"))
            .build()
            // Only fails if the OS refuses to spawn threads; nothing can run then.
            .expect("cannot start the CPU device's threads");
        Cpu { pool: std::sync::Arc::new(pool) }
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

impl Default for Cpu {
    fn default() -> Self {
        Self::new()
    }
}

/// `out = r / rms(r) * w` for one row (RMSNorm, in f32, summing in order).
fn rms_norm_row(r: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mean_sq = r.iter().map(|v| v * v).sum::<f32>() / r.len() as f32;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(r).zip(w) {
        *o = w * (v * inv);
    }
}

/// `out[r] = table[plan.tokens[r]]` from a tied LM head's panels.
fn panel_rows<E: simd::Elem>(
    table: &Panels<E>,
    plan: &StepPlan,
    out: &mut Mat,
) -> Result<(), DeviceError> {
    let h = table.k();
    debug_assert_eq!((out.rows, out.cols), (plan.rows(), h));
    for (row, &tok) in out.data.chunks_exact_mut(h).zip(&plan.tokens) {
        table.row_into(tok as usize, row);
    }
    Ok(())
}

/// `out[i] = x[rows[i]]`
fn gather_rows(x: &Mat, rows: &[u32], out: &mut Mat) {
    *out = Mat::zeros(rows.len(), x.cols);
    for (o, &r) in out.data.chunks_exact_mut(x.cols.max(1)).zip(rows) {
        o.copy_from_slice(x.row(r as usize));
    }
}

/// A vector parameter (norm weight, bias) as f32. [`Cpu::weight`] widens these once
/// at load, so on the per-token path this borrows.
fn vector_f32(w: &CpuWeight) -> std::borrow::Cow<'_, [f32]> {
    match &w.tensor().data {
        TensorData::F32(s) => std::borrow::Cow::Borrowed(s.as_slice()),
        other => std::borrow::Cow::Owned(other.to_f32()),
    }
}

impl Device for Cpu {
    type Weight = CpuWeight;
    type Activation = Mat;
    type Cache = CpuKvCache;
    type Plan = StepPlan;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn run<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        self.pool.install(work)
    }

    fn weight(&self, tensor: HostTensor) -> Result<CpuWeight, LoadError> {
        // Matrices stay in their dtype (widened inside the kernels); vectors are tiny
        // and read whole on every op, so widen them once here.
        if tensor.shape.len() == 1 && tensor.data.dtype() != crate::config::DType::F32 {
            let data = TensorData::F32(crate::weights::Storage::Owned(tensor.data.to_f32()));
            return Ok(CpuWeight::Tensor(HostTensor { data, ..tensor }));
        }
        Ok(CpuWeight::Tensor(tensor))
    }

    fn linear_weight(
        &self,
        tensor: HostTensor,
        precision: Precision,
    ) -> Result<CpuWeight, LoadError> {
        if precision == Precision::Exact || tensor.shape.len() != 2 {
            return self.weight(tensor);
        }
        let (n, k) = (tensor.shape[0], tensor.shape[1]);
        self.pool.install(|| match &tensor.data {
            TensorData::F32(_) => self.weight(tensor),
            TensorData::Bf16(s) => Ok(CpuWeight::Bf16(Panels::pack(s.as_slice(), n, k))),
            TensorData::F16(s) => Ok(CpuWeight::F16(Panels::pack(s.as_slice(), n, k))),
        })
    }

    fn activation(&self, rows: usize, cols: usize) -> Mat {
        Mat::zeros(rows, cols)
    }

    fn kv_cache(&self, layout: KvLayout) -> Result<CpuKvCache, LoadError> {
        Ok(CpuKvCache::new(layout))
    }

    fn plan(&self, plan: &StepPlan) -> Result<StepPlan, DeviceError> {
        Ok(plan.clone())
    }

    fn embed(&self, table: &CpuWeight, plan: &StepPlan, out: &mut Mat) -> Result<(), DeviceError> {
        let table = match table {
            CpuWeight::Tensor(t) => t,
            CpuWeight::Bf16(p) => return panel_rows(p, plan, out),
            CpuWeight::F16(p) => return panel_rows(p, plan, out),
        };
        let h = table.shape[1];
        debug_assert_eq!((out.rows, out.cols), (plan.rows(), h));
        for (row, &tok) in out.data.chunks_exact_mut(h).zip(&plan.tokens) {
            let range = tok as usize * h..(tok as usize + 1) * h;
            match &table.data {
                TensorData::F32(s) => row.copy_from_slice(&s.as_slice()[range]),
                TensorData::Bf16(s) => simd::widen_into::<bf16>(&s.as_slice()[range], row),
                TensorData::F16(s) => simd::widen_into::<f16>(&s.as_slice()[range], row),
            }
        }
        Ok(())
    }

    fn linear(
        &self,
        x: &Mat,
        w: &CpuWeight,
        bias: Option<&CpuWeight>,
        out: &mut Mat,
    ) -> Result<(), DeviceError> {
        let bias = bias.map(vector_f32);
        let b = bias.as_deref();
        let w = match w {
            CpuWeight::Tensor(t) => t,
            CpuWeight::Bf16(p) => return panel_linear(x, p, b, out),
            CpuWeight::F16(p) => return panel_linear(x, p, b, out),
        };
        let (n, k) = (w.shape[0], w.shape[1]);
        debug_assert_eq!(x.cols, k);
        let out = resized(out, x.rows, n);
        match &w.data {
            TensorData::F32(s) => gemm::linear(&x.data, x.rows, k, s.as_slice(), n, b, out),
            TensorData::Bf16(s) => gemm::linear(&x.data, x.rows, k, s.as_slice(), n, b, out),
            TensorData::F16(s) => gemm::linear(&x.data, x.rows, k, s.as_slice(), n, b, out),
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &Mat,
        weight: &CpuWeight,
        eps: f32,
        out: &mut Mat,
    ) -> Result<(), DeviceError> {
        let w = vector_f32(weight);
        *out = Mat::zeros(x.rows, x.cols);
        out.data
            .par_chunks_mut(x.cols)
            .zip(x.data.par_chunks(x.cols))
            .for_each(|(o, r)| rms_norm_row(r, &w, eps, o));
        Ok(())
    }

    fn add_rms_norm(
        &self,
        x: &mut Mat,
        y: &Mat,
        weight: &CpuWeight,
        eps: f32,
        out: &mut Mat,
    ) -> Result<(), DeviceError> {
        debug_assert_eq!(x.data.len(), y.data.len());
        let w = vector_f32(weight);
        let cols = x.cols;
        *out = Mat::zeros(x.rows, cols);
        let rows = x.data.par_chunks_mut(cols).zip(y.data.par_chunks(cols));
        rows.zip(out.data.par_chunks_mut(cols)).for_each(|((r, y), o)| {
            // The same operations, in the same order, as add_assign then rms_norm.
            for (a, b) in r.iter_mut().zip(y) {
                *a += b;
            }
            rms_norm_row(r, &w, eps, o);
        });
        Ok(())
    }

    fn rope(&self, x: &mut Mat, head_dim: usize, plan: &StepPlan) -> Result<(), DeviceError> {
        let half = head_dim / 2;
        let cols = x.cols;
        x.data.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
            let cos = &plan.rope_cos[r * half..(r + 1) * half];
            let sin = &plan.rope_sin[r * half..(r + 1) * half];
            for head in row.chunks_exact_mut(head_dim) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x0, x1) = (a[i], b[i]);
                    a[i] = x0 * cos[i] - x1 * sin[i];
                    b[i] = x1 * cos[i] + x0 * sin[i];
                }
            }
        });
        Ok(())
    }

    fn write_kv(
        &self,
        cache: &mut CpuKvCache,
        layer: usize,
        k: &Mat,
        v: &Mat,
        plan: &StepPlan,
    ) -> Result<(), DeviceError> {
        let width = cache.layout.kv_heads * cache.layout.head_dim;
        debug_assert_eq!(k.cols, width);
        for (r, &slot) in plan.slots.iter().enumerate() {
            if slot == super::NO_SLOT {
                continue;
            }
            let at = slot as usize * width;
            cache.k[layer][at..at + width].copy_from_slice(k.row(r));
            cache.v[layer][at..at + width].copy_from_slice(v.row(r));
        }
        Ok(())
    }

    fn attention(
        &self,
        q: &Mat,
        cache: &CpuKvCache,
        layer: usize,
        shape: AttentionShape,
        plan: &StepPlan,
        out: &mut Mat,
    ) -> Result<(), DeviceError> {
        *out = Mat::zeros(q.rows, shape.heads * shape.head_dim);
        attention::paged(q, &cache.k[layer], &cache.v[layer], shape, plan, out);
        Ok(())
    }

    fn silu_mul(&self, gate_up: &Mat, out: &mut Mat) -> Result<(), DeviceError> {
        let half = gate_up.cols / 2;
        *out = Mat::zeros(gate_up.rows, half);
        out.data.par_chunks_mut(half).zip(gate_up.data.par_chunks(gate_up.cols)).for_each(
            |(o, gu)| {
                let (g, u) = gu.split_at(half);
                for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                    *o = g / (1.0 + (-g).exp()) * u;
                }
            },
        );
        Ok(())
    }

    fn split_cols(
        &self,
        x: &Mat,
        widths: &[usize],
        outs: &mut [&mut Mat],
    ) -> Result<(), DeviceError> {
        debug_assert_eq!(widths.iter().sum::<usize>(), x.cols);
        for (out, &w) in outs.iter_mut().zip(widths) {
            **out = Mat { data: Vec::with_capacity(x.rows * w), rows: x.rows, cols: w };
        }
        for row in x.data.chunks_exact(x.cols) {
            let mut at = 0;
            for (out, &w) in outs.iter_mut().zip(widths) {
                out.data.extend_from_slice(&row[at..at + w]);
                at += w;
            }
        }
        Ok(())
    }

    fn add_assign(&self, x: &mut Mat, y: &Mat) -> Result<(), DeviceError> {
        debug_assert_eq!(x.data.len(), y.data.len());
        for (a, b) in x.data.iter_mut().zip(&y.data) {
            *a += b;
        }
        Ok(())
    }

    fn gather_sample_rows(
        &self,
        x: &Mat,
        plan: &StepPlan,
        out: &mut Mat,
    ) -> Result<(), DeviceError> {
        gather_rows(x, &plan.sample_rows, out);
        Ok(())
    }

    fn gather_hidden_rows(
        &self,
        x: &Mat,
        plan: &StepPlan,
        out: &mut Mat,
    ) -> Result<(), DeviceError> {
        gather_rows(x, &plan.hidden_rows, out);
        Ok(())
    }

    fn to_host(&self, x: &Mat) -> Result<Vec<f32>, DeviceError> {
        Ok(x.data.clone())
    }
}
