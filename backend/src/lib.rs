//! Rill's backend: load a Hugging Face model directory and run it.
//!
//! - [`model_dir::ModelDir`] reads `config.json` ([`config::ModelConfig`], both
//!   transformers 4.x and 5.x forms), `generation_config.json`, the tokenizer files.
//! - [`weights`] memory-maps safetensors (single or sharded) or makes dummy weights.
//! - [`models::Llama`] is the transformer, written once against the
//!   [`device::Device`] op set; [`device::cpu::Cpu`] implements every op and is the
//!   reference; [`device::cuda::Cuda`] implements the same ops on an NVIDIA GPU.
//! - [`runner::Runner`] owns device, model and paged KV cache and executes one
//!   [`rill_proto::ForwardBatch`] per [`runner::Runner::step`].
//!
//! Nothing here knows about HTTP; the router drives the runner from one thread.

pub mod config;
pub mod device;
pub mod error;
pub mod grammar;
pub mod model_dir;
pub mod models;
pub mod rope;
pub mod runner;
pub mod sampler;
pub mod sampling;
pub mod weights;

pub use config::{Architecture, DType, ModelConfig};
pub use device::Precision;
pub use device::cpu::Cpu;
pub use device::cuda::Cuda;
pub use error::{LoadError, StepError};
pub use model_dir::ModelDir;
pub use runner::{
    AnyRunner, DeviceChoice, FIXED_RESERVE_BYTES, HOST_KV_CACHE_BYTES, KvCacheSize, LoadFormat,
    Runner, RunnerOptions, StepStats, step_bytes,
};
