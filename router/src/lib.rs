//! Rill's router: everything between HTTP and the backend's `Runner`.
//!
//! Today: the continuous-batching core — [`scheduler::Scheduler`] builds each
//! step's `ForwardBatch` from [`sequence::Sequence`]s whose KV blocks come from the
//! [`block_manager::BlockManager`]. Plain synchronous structs, owned by one
//! engine-loop thread. The HTTP server, validation and metrics build on them.

pub mod block_manager;
pub mod detokenizer;
pub mod engine;
pub mod infer;
pub mod metrics;
pub mod scheduler;
pub mod sequence;
pub mod server;
pub mod validation;
