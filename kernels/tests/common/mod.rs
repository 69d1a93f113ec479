//! What every GPU test needs: the device and its loaded kernels (or the reason to
//! skip), upload/download shorthands, and what the emulated tests of `kernels/emu` share
//! (they include these files by path): deterministic inputs and the host references
//! (`reference`), and the tests themselves, written against a runner per kernel family
//! that each side implements (`sampling`, `elementwise`, `attention`).
#![allow(dead_code)] // each test binary uses its own subset

pub mod attention;
pub mod elementwise;
pub mod reference;
pub mod sampling;

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

/// Run a shared test with the GPU as its runner; without one, print why and pass.
pub fn on_gpu(test: impl FnOnce(&'static Gpu)) {
    if let Some(gpu) = gpu() {
        test(gpu);
    }
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
