//! Rill's benchmarks. Speed targets are ratios against references measured in the
//! same run (these machines are noisy); [`machine`] measures those references.
//!
//! - `engine-bench` (`src/bin/engine_bench.rs`): the engine on a Llama-shaped model with
//!   dummy weights (~1.1B on the CPU, Llama-3-8B's shape on a GPU): batch-1 and batched
//!   decode, a prefill, against the memory bandwidth (and on the CPU the FMA peak)
//!   measured in the same run; on a GPU with CUDA graphs on and off. Its peer under
//!   transformers is `peer/transformers_bench.py`.
//! - `sampling-bench`: the sampler at batch 64 × a 128k vocabulary (greedy, plain
//!   sampling, every processor) against reading the same logits once.
//! - `grammar-bench`: llguidance grammars on a synthetic 128k vocabulary — compile
//!   time, mask and commit percentiles — and, with `--engine-config`, how long
//!   sampling waits for masks computed during real forward passes.
//! - `rill-bench`: the load generator, against a running server over HTTP + SSE.

pub mod machine;
