//! [`Kernels`]: every entry point of every source, loaded into one CUDA context, and the
//! shared machinery of the launchers (shape checks, grid shapes, device pointers).
//!
//! Loading compiles all of [`crate::SOURCES`] in parallel (NVRTC programs are independent;
//! a cold start is bounded by the slowest source, a warm one reads the PTX cache), loads
//! each PTX as a module, and takes every `.entry` the PTX defines, so a new kernel needs no
//! registration beyond its source. Launchers look their function up by name.
//!
//! Launchers take buffers as `&impl DevicePtr<T>` / `&mut impl DevicePtrMut<T>`: a whole
//! `CudaSlice` or a view of one (a fixed CUDA-graph buffer, one layer of an arena). They
//! pass raw device pointers and keep the returned `SyncOnDrop` guards alive until after the
//! launch, which records the read/write events cudarc's multi-stream tracking needs, just
//! as `LaunchArgs::arg(&CudaSlice)` would. Activation buffers may be longer than the rows
//! they hold (fixed-size buffers); weights must have exactly the expected length.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, SyncOnDrop, sys,
};
use half::{bf16, f16};

use crate::compile::{KernelCache, compile_source, entry_points};
use crate::toolkit::Toolkit;
use crate::{KernelError, SOURCES};

/// Threads per block of the grid-stride kernels.
pub(crate) const FLAT_THREADS: u32 = 256;

/// A weight (norm scale, bias, embedding table) in its checkpoint dtype.
#[derive(Clone, Copy, Debug)]
pub enum WeightRef<'a> {
    F32(&'a CudaSlice<f32>),
    Bf16(&'a CudaSlice<bf16>),
    F16(&'a CudaSlice<f16>),
}

impl<'a> WeightRef<'a> {
    pub fn len(&self) -> usize {
        match self {
            WeightRef::F32(w) => w.len(),
            WeightRef::Bf16(w) => w.len(),
            WeightRef::F16(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry-point suffix of kernels instantiated for this dtype.
    pub fn suffix(&self) -> &'static str {
        match self {
            WeightRef::F32(_) => "f32",
            WeightRef::Bf16(_) => "bf16",
            WeightRef::F16(_) => "f16",
        }
    }

    /// The device pointer, for reading on `stream` (keep the guard until after the launch).
    pub(crate) fn ptr(&self, stream: &'a CudaStream) -> (sys::CUdeviceptr, SyncOnDrop<'a>) {
        match *self {
            WeightRef::F32(w) => w.device_ptr(stream),
            WeightRef::Bf16(w) => w.device_ptr(stream),
            WeightRef::F16(w) => w.device_ptr(stream),
        }
    }
}

impl<'a> From<&'a CudaSlice<f32>> for WeightRef<'a> {
    fn from(w: &'a CudaSlice<f32>) -> Self {
        WeightRef::F32(w)
    }
}

impl<'a> From<&'a CudaSlice<bf16>> for WeightRef<'a> {
    fn from(w: &'a CudaSlice<bf16>) -> Self {
        WeightRef::Bf16(w)
    }
}

impl<'a> From<&'a CudaSlice<f16>> for WeightRef<'a> {
    fn from(w: &'a CudaSlice<f16>) -> Self {
        WeightRef::F16(w)
    }
}

/// Every kernel entry point, loaded into one context.
#[derive(Debug)]
pub struct Kernels {
    functions: HashMap<String, CudaFunction>,
    arch: u32,
    /// Grid cap of the grid-stride kernels: one full wave of 256-thread blocks.
    max_flat_blocks: u32,
}

impl Kernels {
    /// Compile (or read from the cache in `RILL_KERNEL_CACHE` / `~/.cache/rill/kernels`)
    /// and load every source for `ctx`'s compute capability.
    pub fn load(ctx: &Arc<CudaContext>, toolkit: &Toolkit) -> Result<Self, KernelError> {
        Self::load_with_cache(ctx, toolkit, &KernelCache::from_env())
    }

    pub fn load_with_cache(
        ctx: &Arc<CudaContext>,
        toolkit: &Toolkit,
        cache: &KernelCache,
    ) -> Result<Self, KernelError> {
        let (major, minor) = ctx.compute_capability()?;
        let arch = u32::try_from(major * 10 + minor)
            .map_err(|_| KernelError::Toolkit(format!("odd compute capability {major}.{minor}")))?;
        let compiled: Vec<Result<String, KernelError>> = std::thread::scope(|scope| {
            let jobs: Vec<_> = SOURCES
                .iter()
                .map(|(name, src)| {
                    scope.spawn(move || compile_source(name, src, arch, toolkit, cache))
                })
                .collect();
            jobs.into_iter()
                .map(|job| {
                    job.join().unwrap_or_else(|_| {
                        Err(KernelError::Nvrtc { call: "compile", message: "panicked".into() })
                    })
                })
                .collect()
        });
        let mut functions = HashMap::new();
        for ptx in compiled {
            let ptx = ptx?;
            let names = entry_points(&ptx);
            let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))?;
            for name in names {
                let function = module.load_function(&name)?;
                functions.insert(name, function);
            }
        }
        let sms =
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let max_threads = ctx.attribute(
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR,
        )?;
        let per_sm = (max_threads.max(0) as u32 / FLAT_THREADS).max(1);
        let max_flat_blocks = (sms.max(1) as u32).saturating_mul(per_sm);
        Ok(Kernels { functions, arch, max_flat_blocks })
    }

    /// The architecture the kernels were compiled for (90 for sm_90).
    pub fn arch(&self) -> u32 {
        self.arch
    }

    /// The entry point `name` (e.g. `rms_norm_bf16`).
    pub fn function(&self, name: &str) -> Result<&CudaFunction, KernelError> {
        self.functions.get(name).ok_or_else(|| KernelError::MissingFunction(name.to_string()))
    }

    /// Names of every loaded entry point, sorted.
    pub fn entry_points(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.functions.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// [`flat_config`] capped at one full wave of this device.
    pub(crate) fn flat_grid(&self, n: usize) -> LaunchConfig {
        flat_config(n, self.max_flat_blocks)
    }
}

/// The launch of a grid-stride kernel (`embedding.cu` aside, every kernel of `activation.cu`
/// and `elementwise.cu`): `FLAT_THREADS`-thread blocks covering `n` elements, at most
/// `max_blocks` of them (the kernels loop with a grid stride). `n` must be nonzero.
pub fn flat_config(n: usize, max_blocks: u32) -> LaunchConfig {
    let blocks = n.div_ceil(FLAT_THREADS as usize).min(max_blocks as usize);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (FLAT_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Make `s`'s context current on this thread before touching its buffers' events (the
/// launch itself would bind it too, but only after the pointers were taken); this also
/// surfaces any error an earlier asynchronous call recorded on the context.
pub(crate) fn bind(s: &CudaStream) -> Result<(), KernelError> {
    Ok(s.context().bind_to_thread()?)
}

/// One block per row, `threads` per block (a multiple of 32, at most `max`), about one
/// thread per `per_thread` columns.
pub(crate) fn row_grid(
    op: &'static str,
    rows: usize,
    width: usize,
    per_thread: usize,
    max: u32,
) -> Result<LaunchConfig, KernelError> {
    // gridDim.x is at most 2^31 - 1.
    let rows = to_i32(op, "rows", rows)? as u32;
    let threads = width.div_ceil(per_thread).next_multiple_of(32).clamp(32, max as usize) as u32;
    Ok(LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
}

/// A buffer holds at least `need` elements.
pub(crate) fn check_len(
    op: &'static str,
    what: &str,
    len: usize,
    need: usize,
) -> Result<(), KernelError> {
    if len < need {
        return Err(KernelError::Shape {
            op,
            detail: format!("{what} has {len} elements, needs {need}"),
        });
    }
    Ok(())
}

/// A weight has exactly `need` elements.
pub(crate) fn check_exact(
    op: &'static str,
    what: &str,
    len: usize,
    need: usize,
) -> Result<(), KernelError> {
    if len != need {
        return Err(KernelError::Shape {
            op,
            detail: format!("{what} has {len} elements, expected {need}"),
        });
    }
    Ok(())
}

/// `a * b`, or a shape error if it overflows.
pub(crate) fn product(op: &'static str, a: usize, b: usize) -> Result<usize, KernelError> {
    a.checked_mul(b)
        .ok_or_else(|| KernelError::Shape { op, detail: format!("{a} x {b} overflows") })
}

/// A dimension as the kernels' `int`.
pub(crate) fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32, KernelError> {
    i32::try_from(v)
        .map_err(|_| KernelError::Shape { op, detail: format!("{what} = {v} exceeds i32") })
}

pub(crate) fn to_u32(op: &'static str, what: &str, v: usize) -> Result<u32, KernelError> {
    u32::try_from(v)
        .map_err(|_| KernelError::Shape { op, detail: format!("{what} = {v} exceeds u32") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_grid_rounds_threads_to_warps() {
        let cfg = row_grid("t", 3, 4096, 4, 1024).unwrap();
        assert_eq!((cfg.grid_dim, cfg.block_dim), ((3, 1, 1), (1024, 1, 1)));
        let cfg = row_grid("t", 1, 100, 4, 1024).unwrap();
        assert_eq!(cfg.block_dim, (32, 1, 1));
        let cfg = row_grid("t", 1, 520, 1, 256).unwrap();
        assert_eq!(cfg.block_dim, (256, 1, 1));
        assert!(row_grid("t", 1 << 31, 1, 1, 256).is_err());
    }

    #[test]
    fn shape_checks_name_the_op() {
        let err = check_len("rms_norm", "x", 3, 4).unwrap_err();
        assert_eq!(err.to_string(), "rms_norm: x has 3 elements, needs 4");
        assert!(check_exact("rms_norm", "w", 5, 4).is_err());
        assert!(product("op", usize::MAX, 2).is_err());
        assert!(to_i32("op", "cols", 1 << 31).is_err());
    }
}
