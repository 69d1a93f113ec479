//! CUDA kernels for Rill's GPU engine — **a stub for now**.
//!
//! This crate will hold one `.cu` file per op family (RMSNorm, rotary embedding,
//! KV-cache write, paged attention, SiLU-and-mul, sampling), their NVRTC build
//! and on-disk cache, and one typed Rust launcher per kernel. The CUDA engine
//! issue fills it in; until then the backend's CPU device is the only device and
//! defines the op set these kernels must match (see `rill_backend::device`).

/// Whether this build carries any CUDA kernels (none yet).
pub const HAS_KERNELS: bool = false;
