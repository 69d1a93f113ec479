//! Rill's router: everything between HTTP and the backend's `Runner`.
//!
//! At the bottom, the continuous-batching core — [`scheduler::Scheduler`] builds each
//! step's `ForwardBatch` from [`sequence::Sequence`]s whose KV blocks come from the
//! [`block_manager::BlockManager`]: plain synchronous structs owned by one engine-loop
//! thread ([`engine`]). Above it, one generation core for every API family:
//! [`validation`] turns a request in neutral terms into what the engine runs, and
//! [`infer`] streams its tokens back with text, stop strings handled. On top, one
//! module per API family with its own wire types and error shape — [`tgi`],
//! [`openai`], [`hf`] (the Hugging Face Inference API) and [`kserve`] (the Open
//! Inference Protocol) — mounted on one port by [`server`], behind [`auth`]'s keys;
//! [`chat_template`] renders chat prompts as transformers does.

pub mod api_doc;
pub mod auth;
pub mod block_manager;
pub mod chat_template;
pub mod detokenizer;
pub mod embeddings;
pub mod engine;
pub mod hf;
pub mod infer;
pub mod kserve;
pub mod kv_events;
pub mod metrics;
pub mod openai;
pub mod request_id;
pub mod response_cache;
pub mod scheduler;
pub mod sequence;
pub mod server;
pub mod tgi;
pub mod validation;
