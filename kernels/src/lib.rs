//! Rill's CUDA kernels: CUDA C sources, their NVRTC build and cache, and typed launchers.
//!
//! The sources (`kernels/cuda/*.cu`, one per op family, each opening with a comment on its
//! design, plus the shared `common.cuh`) are embedded in the crate ([`SOURCES`]) and
//! compiled at start-up by NVRTC for the device's compute capability ([`compile`]), with
//! an on-disk PTX cache. NVRTC and the CUDA headers are found at run time ([`toolkit`]);
//! nothing CUDA is needed to *build* this crate, and nothing here panics when CUDA is
//! absent: [`cuda_available`] and [`toolkit::Toolkit::find`] say why instead.
//!
//! [`Kernels::load`] compiles and loads every source into a CUDA context and holds one
//! `CudaFunction` per entry point; its launchers (one per kernel, in [`norm`],
//! [`elementwise`] and [`kv`]; attention in `attention`) check shapes against the buffers'
//! lengths, pick the grid, and launch on the caller's stream. The data layout is the CPU
//! device's (`rill_backend::device::cpu`), which stays the reference: row-major f32
//! activations, weights in their checkpoint dtype ([`WeightRef`]), an f32 paged KV cache
//! `[num_blocks, 16, kv_heads, head_dim]` per layer for K and for V.
//!
//! The design follows candle's and llm.c's kernel crates: plain CUDA C, `extern "C"` entry
//! points (dtype templates instantiated with `_f32`/`_bf16`/`_f16` suffixes), and a thin
//! Rust launcher with a `// SAFETY:` argument on every launch.

pub mod attention;
pub mod compile;
pub mod elementwise;
pub mod kv;
mod launch;
pub mod norm;
pub mod sampling;
pub mod toolkit;

pub use cudarc;

pub use attention::AttentionMeta;
pub use compile::{KernelCache, compile_ptx, ptxas_report};
pub use launch::{Kernels, WeightRef, flat_config};
pub use toolkit::Toolkit;

/// `(file name, source text)` of one kernel source, from `kernels/cuda/`.
macro_rules! source {
    ($name:literal) => {
        ($name, include_str!(concat!("../cuda/", $name)))
    };
}

/// Every kernel source, `(file name, text)`. All are compiled and loaded by
/// [`Kernels::load`] and checked for compile errors and spills by `tests/nvrtc.rs`.
pub const SOURCES: &[(&str, &str)] = &[
    source!("norm.cu"),
    source!("rope.cu"),
    source!("activation.cu"),
    source!("embedding.cu"),
    source!("elementwise.cu"),
    source!("kv_cache.cu"),
    source!("sampling.cu"),
    source!("attention_decode.cu"),
    source!("attention_prefill.cu"),
];

/// `kernels/cuda/common.cuh`, which every source includes.
pub const COMMON_HEADER: &str = include_str!("../cuda/common.cuh");

/// What can go wrong finding the toolkit, compiling, loading or launching a kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// NVRTC, the headers or ptxas are missing; the message says how to supply them.
    #[error("CUDA toolkit: {0}")]
    Toolkit(String),
    /// An NVRTC API call failed (not a compile error).
    #[error("NVRTC {call} failed: {message}")]
    Nvrtc { call: &'static str, message: String },
    /// A source did not compile; `log` is NVRTC's.
    #[error("NVRTC could not compile {source_name} for compute_{arch}:\n{log}")]
    Compile { source_name: String, arch: u32, log: String },
    #[error("no kernel source named {0}")]
    MissingSource(String),
    #[error("ptxas: {0}")]
    Ptxas(String),
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// No loaded module defines this entry point.
    #[error("no kernel entry point named {0}")]
    MissingFunction(String),
    /// A launcher's arguments do not fit its buffers.
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },
}

/// `Ok` when the CUDA driver library is present and reports at least one device; else
/// why not. Never panics (cudarc panics on first use of a missing library, so this checks
/// for the library first, and catches any panic from a driver too old for cudarc).
pub fn cuda_available() -> Result<(), String> {
    // SAFETY: `is_culib_present` only tries to dlopen the driver library's known names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so.1) found".to_string());
    }
    match std::panic::catch_unwind(cudarc::driver::CudaContext::device_count) {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("the CUDA driver reports no devices".to_string()),
        Ok(Err(e)) => Err(format!("the CUDA driver failed to start: {e}")),
        Err(_) => Err("the CUDA driver library could not be used".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_includes_common_and_has_a_header_comment() {
        for (name, text) in SOURCES {
            assert!(text.starts_with(&format!("// {name} — ")), "{name} opens with its design");
            assert!(text.contains("#include \"common.cuh\""), "{name} includes common.cuh");
        }
    }

    #[test]
    fn cuda_available_does_not_panic() {
        // On a machine without a GPU this is an Err with a reason; either way, no panic.
        if let Err(why) = cuda_available() {
            assert!(!why.is_empty());
        }
    }
}
