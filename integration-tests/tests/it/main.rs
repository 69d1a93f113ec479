//! Rill's end-to-end tests, one module per area:
//!
//! - `batching`: the scheduler on the real engine, under memory pressure.
//! - `cuda_parity`: the CUDA device against the CPU device, op by op and on the fixture
//!   models (each body also runs CPU against CPU; without a GPU the CUDA runs SKIP).
//! - `decode_buckets`: decode steps padded to a bucket (as for CUDA graphs) give exactly
//!   the unpadded steps' results.
//! - `oracle`: the CPU engine against Hugging Face transformers on the fixture models
//!   (logits, greedy continuations, chunking and batching invariance, 16-bit weights).
//! - `prefix_cache`: prefix-cached blocks change nothing, to the bit, on every fixture
//!   (finished, disconnected, preempted, same-step and evicted prefixes; chunked prefill;
//!   seeded sampling with penalties).
//! - `loading`: broken model directories give errors that name the file and field.
//! - `step_errors`: bad batches are refused whole and change nothing; device faults
//!   fail a step, not the runner.
//! - `device_sampling`: the runner's and sampler's path for devices that choose tokens
//!   themselves, against the host sampler (on a CPU device wrapped by `wrapped`).

mod batching;
mod cuda_parity;
mod decode_buckets;
mod device_sampling;
mod harness;
mod loading;
mod oracle;
mod prefix_cache;
mod step_errors;
mod wrapped;
