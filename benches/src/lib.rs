//! Rill's benchmarks. Speed targets are ratios against references measured in the
//! same run (these machines are noisy); [`machine`] measures those references.
//!
//! - `engine-bench` (`src/bin/engine_bench.rs`): the CPU engine on a ~1.1B Llama with
//!   dummy weights: batch-1 and batch-16 decode, 512-token prefill, against the
//!   machine's memory bandwidth and FMA peak.

pub mod machine;
