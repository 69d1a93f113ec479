//! Opening a GPU: [`Cuda::probe`] checks that the driver, the device and cuBLAS are there
//! without creating anything, [`Cuda::new`] creates the context, stream and cuBLAS handle
//! and loads every kernel for the GPU's architecture. Every failure is an error naming
//! what is missing; nothing panics.

use std::sync::{Arc, Mutex};

use cudarc::driver::CudaContext;
use rill_kernels::Kernels;

use super::gemm::Blas;
use super::graphs::Graphs;
use super::{Cuda, library};
use crate::error::LoadError;

fn unusable(what: impl std::fmt::Display) -> LoadError {
    LoadError::Other(format!("no usable CUDA device: {what}"))
}

impl Cuda {
    /// Whether GPU `ordinal` looks usable, without creating anything: the driver, the
    /// device, cuBLAS. Cheap (no kernel compilation); an error names what is missing.
    pub fn probe(ordinal: usize) -> Result<(), LoadError> {
        rill_kernels::cuda_available().map_err(unusable)?;
        let count = CudaContext::device_count().map_err(unusable)?;
        if ordinal >= count.max(0) as usize {
            return Err(unusable(format_args!("GPU {ordinal} requested, {count} present")));
        }
        if let Some(dir) = library::preload_cublas() {
            tracing::debug!("cuBLAS preloaded from {}", dir.display());
        }
        if !library::cublas_present() {
            return Err(unusable(library::CUBLAS_HELP));
        }
        Ok(())
    }

    /// Open GPU `ordinal`: [`Cuda::probe`] it, then create the context, stream and cuBLAS
    /// handle and compile (or load from the on-disk cache) every kernel for this GPU's
    /// architecture. Errors name what is missing; nothing panics.
    pub fn new(ordinal: usize) -> Result<Cuda, LoadError> {
        Cuda::probe(ordinal)?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| unusable(format_args!("cannot open GPU {ordinal}: {e}")))?;
        let stream = ctx.new_stream().map_err(|e| unusable(format_args!("new stream: {e}")))?;
        // SAFETY: every buffer of this device is allocated, used and freed on `stream`
        // alone, which orders all accesses; cudarc's per-buffer events (made to order
        // accesses across streams) would only add two event operations per launch argument.
        unsafe { ctx.disable_event_tracking() };
        let blas = Blas::new(Arc::clone(&stream))
            .map_err(|e| unusable(format_args!("cannot create a cuBLAS handle: {e}")))?;
        let toolkit = rill_kernels::toolkit::Toolkit::find().map_err(unusable)?;
        let kernels = Kernels::load(&ctx, &toolkit)
            .map_err(|e| unusable(format_args!("cannot build the kernels: {e}")))?;
        let gpu_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let compute_capability = ctx.compute_capability().unwrap_or((0, 0));
        Ok(Cuda {
            ctx,
            stream,
            blas,
            kernels,
            scratch: Mutex::default(),
            graphs: Mutex::new(Graphs::default()),
            gpu_name,
            compute_capability,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;

    #[test]
    fn a_missing_gpu_is_an_error_not_a_panic() {
        // Here (CI, no GPU) both fail with the reason; on a GPU machine both succeed.
        match (Cuda::probe(0), Cuda::new(0)) {
            (Ok(()), Ok(cuda)) => assert_eq!(cuda.name(), "cuda"),
            (Err(probe), Err(new)) => {
                assert!(probe.to_string().starts_with("no usable CUDA device: "), "{probe}");
                assert_eq!(probe.to_string(), new.to_string());
            }
            (probe, new) => panic!("probe {probe:?} disagrees with new {:?}", new.map(drop)),
        }
    }

    #[test]
    fn an_ordinal_past_the_last_gpu_is_an_error() {
        assert!(Cuda::probe(1 << 20).is_err());
    }
}
