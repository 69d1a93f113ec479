//! Shared helpers for Rill's end-to-end tests (the tests themselves are in `tests/it`).
//!
//! The fixture models under `fixtures/models` are tiny random checkpoints written by
//! `scripts/make_fixtures.py` with Hugging Face transformers, each with the reference
//! logits and greedy continuation transformers computed (`reference.json`,
//! `reference.safetensors`).

use std::path::PathBuf;

/// The bundled demo model, `models/demo` (trained by `scripts/make_demo_model.py`; its
/// transformers reference is in `fixtures/demo`).
pub fn demo_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/demo")
}

/// What transformers said about the demo model: `fixtures/demo/reference.*`.
pub fn demo_reference() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo")
}

/// `integration-tests/fixtures/models/<name>`.
pub fn fixture_model(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models").join(name)
}
