//! Rill's benchmarks. Speed targets are ratios against references measured in the
//! same run (these machines are noisy); [`machine`] measures those references.
//!
//! - `engine-bench` (`src/bin/engine_bench.rs`): the CPU engine on a ~1.1B Llama with
//!   dummy weights: batch-1 and batch-16 decode, 512-token prefill, against the
//!   machine's memory bandwidth and FMA peak.
//! - `sampling-bench`: the sampler at batch 64 × a 128k vocabulary (greedy, plain
//!   sampling, every processor) against reading the same logits once.
//! - `grammar-bench`: llguidance grammars on a synthetic 128k vocabulary — compile
//!   time, mask and commit percentiles — and, with `--engine-config`, how long
//!   sampling waits for masks computed during real forward passes.
//! - `rill-bench`: the load generator, against a running server over HTTP + SSE.

pub mod machine;
