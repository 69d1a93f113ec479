//! Typed errors: [`LoadError`] for a model directory that cannot be served,
//! [`StepError`] for a [`rill_proto::ForwardBatch`] the runner refuses.
//!
//! Every load error names the file and the field or tensor at fault, so a user
//! with a broken checkout knows what to fix without reading our code.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: missing required field `{field}`")]
    MissingField { path: PathBuf, field: &'static str },
    #[error("{path}: field `{field}`: {message}")]
    InvalidField { path: PathBuf, field: String, message: String },
    #[error(
        "{path}: unsupported architecture `{found}`; supported architectures: {}",
        supported.join(", ")
    )]
    UnsupportedArchitecture { path: PathBuf, found: String, supported: Vec<&'static str> },
    #[error("{path}: not a safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype} (supported: F32, BF16, F16)")]
    Dtype { path: PathBuf, name: String, dtype: String },
    #[error("{path}: cannot load tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("{0}")]
    Other(String),
}

impl LoadError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LoadError::Io { path: path.into(), source }
    }

    pub(crate) fn invalid(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        LoadError::InvalidField { path: path.into(), field: field.into(), message: message.into() }
    }
}

/// A batch the runner cannot execute. The runner checks the whole batch before
/// touching the KV cache, so a refused batch changes nothing; a device failure
/// (the last variant) happens after, and its sequences' cache contents are lost.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StepError {
    #[error("{seq}: no tokens to run")]
    EmptySequence { seq: rill_proto::SeqId },
    #[error("{seq}: token id {token} is outside the vocabulary ({vocab})")]
    TokenOutOfRange { seq: rill_proto::SeqId, token: u32, vocab: usize },
    #[error("{seq}: positions up to {end} need {needed} blocks, block table has {have}")]
    BlockTableTooShort { seq: rill_proto::SeqId, end: usize, needed: usize, have: usize },
    #[error("{seq}: block {block} is outside the cache ({num_blocks} blocks)")]
    BlockOutOfRange { seq: rill_proto::SeqId, block: u32, num_blocks: usize },
    #[error("{seq}: position {end} exceeds the model's maximum ({max})")]
    TooLong { seq: rill_proto::SeqId, end: usize, max: usize },
    #[error("{seq}: {targets} logprob targets for {tokens} tokens")]
    TooManyTargets { seq: rill_proto::SeqId, targets: usize, tokens: usize },
    #[error("{seq}: a prefix of {len} tokens for a step at position {start_pos}")]
    PrefixLength { seq: rill_proto::SeqId, len: usize, start_pos: usize },
    #[error(
        "{seq}: a step that returns hidden states cannot sample, return prompt logprobs or carry sampling parameters"
    )]
    HiddenWithSampling { seq: rill_proto::SeqId },
    #[error("{seq}: appears twice in one batch")]
    DuplicateSequence { seq: rill_proto::SeqId },
    /// The device failed while running the step (the batch was valid).
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
}
