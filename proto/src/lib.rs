//! Contract types shared by the router and the backend.
//!
//! The router's scheduler decides *what* runs each step and describes it as a
//! [`ForwardBatch`]; the backend's `Runner::step` executes it and answers with a
//! [`StepOutput`]. Both are plain data: no globals, no hidden context, so either
//! side can be tested alone.
//!
//! Newtypes ([`SeqId`], [`TokenId`], [`BlockId`]) keep units from mixing; the KV
//! cache geometry ([`BLOCK_SIZE`]) is part of the contract because the router's
//! block manager and the backend's cache must agree on it.

pub mod api;
mod batch;
mod ids;
mod sampling;

pub use batch::{ForwardBatch, SampledToken, SeqStep, StepOutput};
pub use ids::{BlockId, SeqId, TokenId};
pub use sampling::{Constraint, ConstraintState, Grammar, SamplingParams, allowed_tokens};

/// Tokens per KV-cache block (vLLM's choice; the CUDA kernels assume it too).
pub const BLOCK_SIZE: usize = 16;

/// Number of blocks needed to hold `tokens` tokens.
pub const fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(BLOCK_SIZE)
}
