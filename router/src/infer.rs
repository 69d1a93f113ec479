//! [`Infer`]: from a validated request to a response or a stream of tokens.
//!
//! It holds the concurrency limit (a full server answers 429 at once, TGI's
//! behaviour), submits to the engine, and turns engine events into TGI tokens:
//! incremental detokenization, stop strings on the text, `return_full_text`,
//! `details`. Dropping an in-flight generation (client gone, stop string matched)
//! drops the engine receiver, which frees the sequence's blocks within one step.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use rill_backend::grammar::GrammarCompiler;
use rill_proto::api::{
    BestOfSequence, Details, GenerateResponse, PrefillToken, StreamDetails, StreamResponse, Token,
};
use tokenizers::Tokenizer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::detokenizer::{Detokenizer, StopMatcher};
use rill_proto::SeqId;

use crate::engine::{EngineEvent, EngineHandle, GenerationRequest};
use crate::metrics as m;
use crate::sequence::FinishReason;
use crate::validation::{Limits, ValidRequest, ValidationError};

/// Everything that can go wrong with a request, mapped to HTTP in one place
/// (`server::error_response`).
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("Input validation error: {0}")]
    Validation(#[from] ValidationError),
    #[error("Model is overloaded")]
    Overloaded,
    #[error("Request failed during generation: {0}")]
    Generation(String),
}

impl InferError {
    pub fn error_type(&self) -> &'static str {
        match self {
            InferError::Validation(_) => "validation",
            InferError::Overloaded => "overloaded",
            InferError::Generation(_) => "generation",
        }
    }
}

#[derive(Debug)]
pub struct Infer {
    engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    /// Ids of the tokenizer's special tokens (`token.special`).
    special: Arc<HashSet<u32>>,
    pub limits: Limits,
    /// Compiles `grammar` parameters; `None` with `--disable-grammar-support`.
    pub grammar: Option<Arc<GrammarCompiler>>,
    permits: Arc<Semaphore>,
}

/// One request's output so far.
#[derive(Debug)]
struct Progress {
    request: ValidRequest,
    ids: Vec<u32>,
    detok: Detokenizer,
    stop: StopMatcher,
    text: String,
    tokens: Vec<Token>,
    /// Per token, its `top_n_tokens` alternatives (empty lists when not asked).
    top_tokens: Vec<Vec<Token>>,
    /// The prompt's tokens with their logprobs (`decoder_input_details`).
    prefill: Vec<PrefillToken>,
    finish: Option<FinishReason>,
}

/// A generation in flight: the engine's events and the permit that counts it.
#[derive(Debug)]
pub struct Generation {
    /// The engine's id for this request, used as the request id in logs.
    pub id: SeqId,
    arrived: Instant,
    submitted: Instant,
    last_token: Option<Instant>,
    progress: Progress,
    events: mpsc::UnboundedReceiver<EngineEvent>,
    tokenizer: Arc<Tokenizer>,
    special: Arc<HashSet<u32>>,
    _permit: OwnedSemaphorePermit,
}

impl Infer {
    pub fn new(
        engine: EngineHandle,
        tokenizer: Arc<Tokenizer>,
        limits: Limits,
        grammar: Option<Arc<GrammarCompiler>>,
        max_concurrent: usize,
    ) -> Self {
        let special: HashSet<u32> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        let special = Arc::new(special);
        Infer {
            engine,
            tokenizer,
            special,
            limits,
            grammar,
            permits: Arc::new(Semaphore::new(max_concurrent)),
        }
    }

    /// Start generating (429 when the server is full). `arrived` is when the
    /// request came in (validation happened since).
    pub fn start(&self, request: ValidRequest, arrived: Instant) -> Result<Generation, InferError> {
        let permit =
            Arc::clone(&self.permits).try_acquire_owned().map_err(|_| InferError::Overloaded)?;
        let (id, events) = self.engine.submit(GenerationRequest {
            prompt: request.prompt.clone(),
            max_new_tokens: request.max_new_tokens,
            ignore_eos: request.ignore_eos,
            top_n_tokens: request.top_n_tokens,
            prompt_logprobs: request.decoder_input_details,
            sampling: request.sampling.clone(),
        });
        let prompt_len = request.prompt.len();
        let now = Instant::now();
        metrics::histogram!(m::REQUEST_VALIDATION_DURATION).record(now - arrived);
        metrics::histogram!(m::REQUEST_INPUT_LENGTH).record(prompt_len as f64);
        metrics::histogram!(m::REQUEST_MAX_NEW_TOKENS).record(request.max_new_tokens as f64);
        tracing::debug!(
            request_id = id.0,
            prompt_tokens = prompt_len,
            max_new_tokens = request.max_new_tokens,
            "queued"
        );
        Ok(Generation {
            id,
            arrived,
            submitted: now,
            last_token: None,
            progress: Progress {
                ids: request.prompt.clone(),
                detok: Detokenizer::new(prompt_len, true),
                stop: StopMatcher::new(request.stop.clone()),
                text: String::new(),
                tokens: Vec::new(),
                top_tokens: Vec::new(),
                prefill: Vec::new(),
                finish: None,
                request,
            },
            events,
            tokenizer: Arc::clone(&self.tokenizer),
            special: Arc::clone(&self.special),
            _permit: permit,
        })
    }
}

impl Infer {
    /// Generate to the end (`/generate`). With `best_of` = n > 1, n samples run side
    /// by side (each with its own seed and concurrency permit); the one with the
    /// highest mean token logprob is the answer, the others go to
    /// `details.best_of_sequences` (TGI's rule).
    pub async fn generate(
        &self,
        request: ValidRequest,
        arrived: Instant,
    ) -> Result<GenerateResponse, InferError> {
        let n = request.best_of.max(1);
        let mut generations = Vec::with_capacity(n);
        for i in 0..n {
            let r = if i == 0 { request.clone() } else { request.reseeded() };
            generations.push(self.start(r, arrived)?);
        }
        let done = futures::future::try_join_all(generations.into_iter().map(Generation::finish));
        let mut done = done.await?;
        let mean = |f: &Finished| {
            let t = &f.tokens;
            t.iter().map(|t| t.logprob).sum::<f32>() / t.len().max(1) as f32
        };
        let best = (0..done.len())
            .max_by(|&a, &b| mean(&done[a]).total_cmp(&mean(&done[b])).then(b.cmp(&a)))
            .unwrap_or(0);
        let chosen = done.remove(best);
        let others = (n > 1).then(|| done.into_iter().map(Finished::into_best_of).collect());
        Ok(chosen.into_response(others))
    }
}

/// A generation that has ended, before it becomes an answer.
#[derive(Debug)]
struct Finished {
    text: String,
    finish_reason: &'static str,
    details: bool,
    seed: Option<u64>,
    prefill: Vec<PrefillToken>,
    tokens: Vec<Token>,
    top_tokens: Vec<Vec<Token>>,
}

impl Finished {
    fn into_response(self, best_of_sequences: Option<Vec<BestOfSequence>>) -> GenerateResponse {
        let details = self.details.then(|| Details {
            finish_reason: self.finish_reason.into(),
            generated_tokens: self.tokens.len() as u32,
            seed: self.seed,
            prefill: self.prefill,
            tokens: self.tokens,
            top_tokens: self.top_tokens,
            best_of_sequences,
        });
        GenerateResponse { generated_text: self.text, details }
    }

    fn into_best_of(self) -> BestOfSequence {
        BestOfSequence {
            generated_text: self.text,
            finish_reason: self.finish_reason.into(),
            generated_tokens: self.tokens.len() as u32,
            seed: self.seed,
            prefill: self.prefill,
            tokens: self.tokens,
            top_tokens: self.top_tokens,
        }
    }
}

impl Generation {
    /// The next token, or `None` once the generation has finished.
    pub async fn next_token(&mut self) -> Option<Result<Token, InferError>> {
        if self.progress.finish.is_some() {
            return None;
        }
        let mut event = self.events.recv().await;
        if let Some(EngineEvent::Prefill(lps)) = &event {
            let prompt = &self.progress.request.prompt;
            let token = |id: u32, logprob| PrefillToken {
                id,
                text: self.tokenizer.decode(&[id], false).unwrap_or_default(),
                logprob,
            };
            // TGI's shape: the first prompt token has no logprob.
            self.progress.prefill = std::iter::once(token(prompt[0], None))
                .chain(prompt[1..].iter().zip(lps).map(|(&id, &lp)| token(id, Some(lp))))
                .collect();
            event = self.events.recv().await;
        }
        let event = match event {
            Some(e) => e,
            None => {
                return Some(Err(InferError::Generation("the engine dropped the request".into())));
            }
        };
        let (token, logprob, finish) = match event {
            EngineEvent::Token { token, logprob, top, finish } => {
                let top = top
                    .into_iter()
                    .map(|(id, logprob)| Token {
                        id: id.0,
                        text: self.tokenizer.decode(&[id.0], false).unwrap_or_default(),
                        logprob,
                        special: self.special.contains(&id.0),
                    })
                    .collect();
                self.progress.top_tokens.push(top);
                (token.0, logprob, finish)
            }
            EngineEvent::Error(e) => return Some(Err(InferError::Generation(e))),
            EngineEvent::Prefill(_) => {
                return Some(Err(InferError::Generation("prompt logprobs sent twice".into())));
            }
        };
        let now = Instant::now();
        match self.last_token.replace(now) {
            None => metrics::histogram!(m::REQUEST_TIME_TO_FIRST_TOKEN_DURATION)
                .record(now - self.arrived),
            Some(prev) => {
                metrics::histogram!(m::REQUEST_INTER_TOKEN_LATENCY_DURATION).record(now - prev)
            }
        }
        let p = &mut self.progress;
        p.ids.push(token);
        let mut text = match p.detok.next(&self.tokenizer, &p.ids) {
            Ok(t) => t.unwrap_or_default(),
            Err(e) => return Some(Err(InferError::Generation(e))),
        };
        p.finish = finish;
        if let Some(keep) = p.stop.push(&text) {
            text.truncate(keep);
            p.finish = Some(FinishReason::StopSequence);
            // Dropping the receiver tells the engine to free the sequence.
            self.events.close();
        }
        p.text.push_str(&text);
        let token = Token { id: token, text, logprob, special: self.special.contains(&token) };
        p.tokens.push(token.clone());
        if p.finish.is_some() {
            self.record_success(now);
        }
        Some(Ok(token))
    }

    fn record_success(&self, now: Instant) {
        let generated = self.progress.tokens.len();
        let inference = now - self.submitted;
        metrics::counter!(m::REQUEST_SUCCESS).increment(1);
        metrics::histogram!(m::REQUEST_DURATION).record(now - self.arrived);
        metrics::histogram!(m::REQUEST_INFERENCE_DURATION).record(inference);
        metrics::histogram!(m::REQUEST_GENERATED_TOKENS).record(generated as f64);
        let per_token = inference / generated.max(1) as u32;
        metrics::histogram!(m::REQUEST_MEAN_TIME_PER_TOKEN_DURATION).record(per_token);
        tracing::info!(
            request_id = self.id.0,
            prompt_tokens = self.progress.request.prompt.len(),
            generated_tokens = generated,
            finish_reason = self.finish_reason(),
            total_ms = (now - self.arrived).as_millis() as u64,
            validation_ms = (self.submitted - self.arrived).as_millis() as u64,
            inference_ms = inference.as_millis() as u64,
            time_per_token_ms = per_token.as_secs_f64() * 1e3,
            "success"
        );
    }

    /// The text to return at the end (with the prompt when `return_full_text`).
    fn final_text(&self) -> String {
        let p = &self.progress;
        if p.request.return_full_text {
            format!("{}{}", p.request.inputs, p.text)
        } else {
            p.text.clone()
        }
    }

    fn finish_reason(&self) -> &'static str {
        self.progress.finish.unwrap_or(FinishReason::Length).as_str()
    }

    /// Run to the end and build `/generate`'s answer (one sample; see
    /// [`Infer::generate`] for `best_of`).
    pub async fn complete(self) -> Result<GenerateResponse, InferError> {
        Ok(self.finish().await?.into_response(None))
    }

    async fn finish(mut self) -> Result<Finished, InferError> {
        while let Some(t) = self.next_token().await {
            t?;
        }
        let text = self.final_text();
        let finish_reason = self.finish_reason();
        let p = self.progress;
        let top_tokens = if p.request.top_n_tokens > 0 { p.top_tokens } else { Vec::new() };
        Ok(Finished {
            text,
            finish_reason,
            details: p.request.details,
            seed: p.request.seed,
            prefill: p.prefill,
            tokens: p.tokens,
            top_tokens,
        })
    }

    /// The `/generate_stream` event for a token just produced (index from 1; the
    /// last one carries `generated_text` and `details`).
    pub fn stream_event(&self, token: Token) -> StreamResponse {
        let p = &self.progress;
        let last = p.finish.is_some();
        StreamResponse {
            index: p.tokens.len() as u32,
            token,
            top_tokens: p.top_tokens.last().cloned().unwrap_or_default(),
            generated_text: last.then(|| self.final_text()),
            details: (last && p.request.details).then(|| StreamDetails {
                finish_reason: self.finish_reason().into(),
                generated_tokens: p.tokens.len() as u32,
                seed: p.request.seed,
                input_length: p.request.prompt.len() as u32,
            }),
        }
    }
}
