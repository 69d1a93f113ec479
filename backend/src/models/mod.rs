//! Model implementations, written once against the [`crate::device::Device`] op set.
//!
//! Llama, Mistral and Qwen2 are the same decoder with different switches (q/k/v
//! biases, per-layer sliding windows, tied embeddings, rope scaling), all carried by
//! [`crate::config::ModelConfig`]; [`llama::Llama`] implements all three.

pub mod llama;

pub use llama::Llama;
