//! Embedding requests: a prompt prefilled through the same scheduler and KV cache as
//! generations (chunked, batched beside them), answered with its hidden states; no token
//! is sampled. Pooling them is `embeddings.rs`'s.

use std::time::Instant;

use super::{Infer, InferError};
use crate::engine::{EngineEvent, EngineHandle};
use crate::metrics as m;
use crate::validation::{self, ValidationError};

/// Final-norm hidden states of every prompt token.
#[derive(Clone, Debug)]
pub struct Hidden {
    /// `[prompt_tokens, dim]`, row-major.
    pub states: Vec<f32>,
    pub dim: usize,
}

impl Hidden {
    /// Rows: the prompt's tokens.
    pub fn tokens(&self) -> usize {
        self.states.len().checked_div(self.dim).unwrap_or(0)
    }

    /// The hidden state of prompt token `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.states[i * self.dim..(i + 1) * self.dim]
    }
}

impl Infer {
    /// The engine this core submits to (its live counts, for tests and health checks).
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// Validate an embedding prompt (CPU work: call on a validation worker): tokenize
    /// text (add_special_tokens as given) or check token ids, `truncate` keeps the last
    /// tokens, the length is checked against `max_input_tokens` (no new tokens).
    pub fn prepare_embedding(
        &self,
        prompt: validation::Prompt,
        truncate: Option<usize>,
    ) -> Result<Vec<u32>, ValidationError> {
        validation::prepare_prompt(prompt, truncate, &self.limits, &self.tokenizer)
            .map(|(_, ids)| ids)
    }

    /// Run a prefill-only request; holds a concurrency permit like `start` (429
    /// `InferError::Overloaded` when full). `prompt` should come from
    /// [`Infer::prepare_embedding`]; it is checked again (cheaply) so that a bad one fails
    /// alone instead of the engine's step. Dropping the future cancels the request and
    /// frees its KV blocks within one step.
    pub async fn embed(&self, prompt: Vec<u32>, arrived: Instant) -> Result<Hidden, InferError> {
        let limits = &self.limits;
        if prompt.is_empty() {
            return Err(ValidationError::EmptyInput.into());
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= limits.vocab_size) {
            return Err(ValidationError::TokenId(bad, limits.vocab_size).into());
        }
        if prompt.len() > limits.max_input_tokens {
            return Err(ValidationError::InputLength(limits.max_input_tokens, prompt.len()).into());
        }
        let _permit = self.admit()?;
        let tokens = prompt.len();
        let (id, mut events) = self.engine.embed(prompt);
        let submitted = Instant::now();
        metrics::histogram!(m::REQUEST_VALIDATION_DURATION).record(submitted - arrived);
        metrics::histogram!(m::REQUEST_INPUT_LENGTH).record(tokens as f64);
        tracing::debug!(seq_id = id.0, prompt_tokens = tokens, "embedding queued");
        let (states, dim) = match events.recv().await {
            Some(EngineEvent::Hidden { states, dim }) => (states, dim),
            Some(EngineEvent::Error(e)) => return Err(e.into()),
            Some(other) => {
                return Err(InferError::Generation(format!("unexpected engine event {other:?}")));
            }
            None => {
                return Err(InferError::Generation("the engine dropped the request".into()));
            }
        };
        if dim == 0 || states.len() != tokens * dim {
            let got = states.len();
            let message = format!("{got} hidden values for {tokens} tokens of width {dim}");
            return Err(InferError::Generation(message));
        }
        let now = Instant::now();
        metrics::counter!(m::REQUEST_SUCCESS).increment(1);
        metrics::counter!(m::REQUEST_EMBEDDING_SUCCESS).increment(1);
        metrics::histogram!(m::REQUEST_DURATION).record(now - arrived);
        metrics::histogram!(m::REQUEST_INFERENCE_DURATION).record(now - submitted);
        tracing::info!(
            seq_id = id.0,
            prompt_tokens = tokens,
            total_ms = (now - arrived).as_millis() as u64,
            inference_ms = (now - submitted).as_millis() as u64,
            "embedding success"
        );
        Ok(Hidden { states, dim })
    }
}
