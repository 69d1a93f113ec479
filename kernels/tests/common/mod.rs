//! What every GPU test needs: the device and its loaded kernels (or the reason to
//! skip), deterministic random inputs, and upload/download shorthands.
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::{Arc, OnceLock};

use rill_kernels::cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr};
use rill_kernels::{Kernels, Toolkit};

pub struct Gpu {
    pub stream: Arc<CudaStream>,
    pub kernels: Kernels,
}

/// The device and loaded kernels, shared by every test (loading compiles every source).
pub fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    let gpu = GPU.get_or_init(|| {
        rill_kernels::cuda_available().map_err(|why| format!("no CUDA device ({why})"))?;
        let toolkit = match Toolkit::find() {
            Ok(toolkit) => toolkit,
            Err(e) if std::env::var("RILL_REQUIRE_NVRTC").is_ok_and(|v| v == "1") => {
                panic!("RILL_REQUIRE_NVRTC=1 but: {e}")
            }
            Err(e) => return Err(e.to_string()),
        };
        let ctx = CudaContext::new(0).expect("CUDA context");
        let stream = ctx.new_stream().expect("CUDA stream");
        let kernels = Kernels::load(&ctx, &toolkit).expect("load kernels");
        Ok(Gpu { stream, kernels })
    });
    match gpu {
        Ok(gpu) => Some(gpu),
        Err(why) => {
            println!("SKIP: {why}");
            None
        }
    }
}

/// Deterministic values in [-2, 2) (an LCG: tests need no `rand`).
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

pub fn up<T: DeviceRepr>(gpu: &Gpu, host: &[T]) -> CudaSlice<T> {
    gpu.stream.clone_htod(host).expect("upload")
}

pub fn down<T: DeviceRepr + Default + Clone>(gpu: &Gpu, dev: &CudaSlice<T>) -> Vec<T> {
    gpu.stream.clone_dtoh(dev).expect("download")
}

pub fn zeros(gpu: &Gpu, n: usize) -> CudaSlice<f32> {
    gpu.stream.alloc_zeros(n).expect("alloc")
}
