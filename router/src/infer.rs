//! The generation core every API family shares: [`Infer`] takes a validated request
//! to the engine and [`Generation`] turns the engine's events into tokens with text.
//!
//! `Infer::start` holds the concurrency limit (a full server answers 429 at once,
//! TGI's behaviour) and submits to the engine thread. A [`Generation`] then yields one
//! [`TokenEvent`] per token: the token (id, its own text, logprob, special), the top-n
//! alternatives, and the text it adds to the output — detokenized incrementally
//! (never splitting a character) and cut by stop strings matched on the text across
//! tokens, with the stop string kept (TGI) or removed and held back while unsure
//! (OpenAI). [`Generation::finish`] runs to the end for non-streaming answers. What a
//! family does with these (TGI's `details`, OpenAI's choices and logprobs, `best_of`,
//! `n`) lives in its module. Dropping a generation (client gone, stop string matched)
//! drops the engine receiver, which frees the sequence's blocks within one step.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rill_backend::grammar::GrammarCompiler;
use rill_proto::SeqId;
use rill_proto::api::{PrefillToken, Token};
use tokenizers::Tokenizer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::detokenizer::{Detokenizer, StopMatcher};
use crate::engine::{EngineError, EngineEvent, EngineHandle, GenerationRequest};
use crate::metrics as m;
use crate::sequence::FinishReason;
use crate::validation::{
    self, GenerationSpec, Limits, StopInclusion, ValidRequest, ValidationError,
};

mod embed;
pub use embed::Hidden;

/// Everything that can go wrong with a request in the core. Each API family maps it
/// to its own status and error shape in one place.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("Input validation error: {0}")]
    Validation(#[from] ValidationError),
    #[error("Model is overloaded")]
    Overloaded,
    #[error("Request failed during generation: {0}")]
    Generation(String),
    /// The model is still loading; `estimated_time` is seconds until it should be ready.
    #[error("Model is loading")]
    Loading { estimated_time: f64 },
    /// The server cannot take the request (shutting down, a worker died, the engine
    /// stopped).
    #[error("{0}")]
    Unavailable(Cow<'static, str>),
}

impl From<EngineError> for InferError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Stopped(why) => InferError::Unavailable(why.into()),
            step @ (EngineError::Step(_) | EngineError::Refused(_)) => {
                InferError::Generation(step.to_string())
            }
        }
    }
}

impl InferError {
    /// TGI's `error_type` (also the label of the failure metric).
    pub fn error_type(&self) -> &'static str {
        match self {
            InferError::Validation(_) => "validation",
            InferError::Overloaded => "overloaded",
            InferError::Generation(_) => "generation",
            InferError::Loading { .. } => "loading",
            InferError::Unavailable(_) => "unavailable",
        }
    }
}

/// The raw bytes of every token (OpenAI's logprobs report them: a token may hold part
/// of a character).
#[derive(Debug, Default)]
pub struct TokenBytes(Vec<Vec<u8>>);

impl TokenBytes {
    /// From `rill_backend::grammar::token_bytes`; empty when the vocabulary's byte
    /// mapping is unknown (then a token's decoded text stands in).
    pub fn new(bytes: Vec<Vec<u8>>) -> Self {
        TokenBytes(bytes)
    }

    /// `token`'s bytes: its vocabulary bytes, or its decoded text for special tokens and
    /// unknown vocabularies.
    pub fn of<'a>(&'a self, token: &'a Token) -> &'a [u8] {
        match self.0.get(token.id as usize) {
            Some(b) if !b.is_empty() && b[0] != 0xFF => b,
            _ => token.text.as_bytes(),
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
    pub token_bytes: TokenBytes,
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    /// Mean duration of recent requests in seconds (an exponential moving average, as
    /// f64 bits), for the time a refused request is told to wait.
    recent_duration: Arc<AtomicU64>,
}

/// One generated token, as every family needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    /// The token with its own text (cut at the end of a stop string under
    /// [`StopInclusion::Include`]).
    pub token: Token,
    /// Its `top_n_tokens` most likely alternatives (empty when not asked).
    pub top: Vec<Token>,
    /// The text this token lets out: what a stream shows now.
    pub text: String,
    /// Set on the last token.
    pub finish: Option<FinishReason>,
}

/// A generation that has ended.
#[derive(Debug)]
pub struct Finished {
    /// The generated text (stop strings handled as the request asked).
    pub text: String,
    pub finish_reason: FinishReason,
    pub seed: Option<u64>,
    /// The prompt's tokens with their logprobs (when asked).
    pub prefill: Vec<PrefillToken>,
    pub tokens: Vec<Token>,
    /// Per token, its alternatives (empty lists when not asked).
    pub top_tokens: Vec<Vec<Token>>,
    pub prompt_tokens: usize,
    /// Of the prompt's tokens, those whose K/V the prefix cache supplied.
    pub cached_tokens: usize,
}

/// One request's output so far.
#[derive(Debug)]
struct Progress {
    ids: Vec<u32>,
    detok: Detokenizer,
    stop: StopMatcher,
    text: String,
    tokens: Vec<Token>,
    top_tokens: Vec<Vec<Token>>,
    prefill: Vec<PrefillToken>,
    cached_tokens: usize,
    finish: Option<FinishReason>,
}

/// A generation in flight: the engine's events and the permit that counts it.
#[derive(Debug)]
pub struct Generation {
    /// The engine's id for this request (`seq_id` in logs).
    pub id: SeqId,
    /// The request's span (its `x-request-id`), which the lines logged after the
    /// handler returned (a stream's end) belong to.
    pub span: tracing::Span,
    arrived: Instant,
    submitted: Instant,
    last_token: Option<Instant>,
    request: ValidRequest,
    progress: Progress,
    events: mpsc::UnboundedReceiver<EngineEvent>,
    tokenizer: Arc<Tokenizer>,
    special: Arc<HashSet<u32>>,
    recent_duration: Arc<AtomicU64>,
    _permit: OwnedSemaphorePermit,
}

impl Infer {
    pub fn new(
        engine: EngineHandle,
        tokenizer: Arc<Tokenizer>,
        limits: Limits,
        grammar: Option<Arc<GrammarCompiler>>,
        token_bytes: TokenBytes,
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
            token_bytes,
            permits: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            recent_duration: Arc::new(AtomicU64::new(0f64.to_bits())),
        }
    }

    /// Requests holding a concurrency permit (validated and submitted, not finished).
    pub fn in_flight(&self) -> usize {
        self.max_concurrent - self.permits.available_permits().min(self.max_concurrent)
    }

    /// Why the engine thread died, if it has.
    pub fn engine_failure(&self) -> Option<&str> {
        self.engine.failure()
    }

    /// Wait until the engine thread dies; why.
    pub async fn engine_died(&self) -> String {
        self.engine.died().await
    }

    /// A concurrency permit for one new request: 503 when the engine is dead, 429 when
    /// the server is full. Validation holds one while it tokenizes and compiles (TGI's
    /// rule: a full server refuses before doing that work), each generation one while it
    /// runs.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, InferError> {
        if self.engine.failure().is_some() {
            return Err(InferError::Unavailable(
                "the engine has failed; the server is restarting".into(),
            ));
        }
        Arc::clone(&self.permits).try_acquire_owned().map_err(|_| InferError::Overloaded)
    }

    /// Seconds until the server should take another request: with `in_flight` requests
    /// running, one ends every `mean duration / in_flight` on average. At least 0.1 s (an
    /// idle or fresh server has no history).
    pub fn estimated_wait(&self) -> f64 {
        let in_flight = self.in_flight();
        let mean = f64::from_bits(self.recent_duration.load(Ordering::Relaxed));
        (mean / in_flight.max(1) as f64).max(0.1)
    }

    /// Start generating (429 when the server is full). `arrived` is when the
    /// request came in (validation happened since).
    pub fn start(&self, request: ValidRequest, arrived: Instant) -> Result<Generation, InferError> {
        let permit = self.admit()?;
        let (id, events) = self.engine.submit(GenerationRequest {
            prompt: request.prompt.clone(),
            max_new_tokens: request.max_new_tokens,
            ignore_eos: request.ignore_eos,
            top_n_tokens: request.top_n_tokens,
            prompt_logprobs: request.prompt_logprobs,
            sampling: request.sampling.clone(),
            cache_salt: request.cache_salt.clone(),
        });
        let prompt_len = request.prompt.len();
        let now = Instant::now();
        metrics::histogram!(m::REQUEST_VALIDATION_DURATION).record(now - arrived);
        metrics::histogram!(m::REQUEST_INPUT_LENGTH).record(prompt_len as f64);
        metrics::histogram!(m::REQUEST_MAX_NEW_TOKENS).record(request.max_new_tokens as f64);
        tracing::debug!(
            seq_id = id.0,
            prompt_tokens = prompt_len,
            max_new_tokens = request.max_new_tokens,
            "queued"
        );
        Ok(Generation {
            id,
            span: tracing::Span::current(),
            arrived,
            submitted: now,
            last_token: None,
            progress: Progress {
                ids: request.prompt.clone(),
                detok: Detokenizer::new(prompt_len, request.skip_special_tokens),
                stop: StopMatcher::new(request.stop.clone(), request.stop_inclusion),
                text: String::new(),
                tokens: Vec::new(),
                top_tokens: Vec::new(),
                prefill: Vec::new(),
                cached_tokens: 0,
                finish: None,
            },
            request,
            events,
            tokenizer: Arc::clone(&self.tokenizer),
            special: Arc::clone(&self.special),
            recent_duration: Arc::clone(&self.recent_duration),
            _permit: permit,
        })
    }

    /// Validate a request in the core's terms (CPU work: call on a validation worker).
    pub fn prepare(&self, spec: GenerationSpec) -> Result<ValidRequest, ValidationError> {
        validation::prepare(spec, &self.limits, &self.tokenizer, self.grammar.as_deref())
    }

    /// Start every request, or none: a refusal (429) drops those already started.
    pub fn start_all(
        &self,
        requests: Vec<ValidRequest>,
        arrived: Instant,
    ) -> Result<Vec<Generation>, InferError> {
        requests.into_iter().map(|r| self.start(r, arrived)).collect()
    }
}

impl Generation {
    /// The request being served.
    pub fn request(&self) -> &ValidRequest {
        &self.request
    }

    /// The prompt's tokens with logprobs (after the first token, when asked).
    pub fn prefill(&self) -> &[PrefillToken] {
        &self.progress.prefill
    }

    /// Tokens generated so far.
    pub fn generated_tokens(&self) -> usize {
        self.progress.tokens.len()
    }

    /// Prompt tokens the prefix cache supplied (known from the first token on).
    pub fn cached_tokens(&self) -> usize {
        self.progress.cached_tokens
    }

    /// Why it ended so far (`Length` until it has).
    pub fn finish_reason(&self) -> FinishReason {
        self.progress.finish.unwrap_or(FinishReason::Length)
    }

    /// The text generated so far.
    pub fn text(&self) -> &str {
        &self.progress.text
    }

    fn token(&self, id: u32, logprob: f32) -> Token {
        Token {
            id,
            text: self.tokenizer.decode(&[id], false).unwrap_or_default(),
            logprob,
            special: self.special.contains(&id),
        }
    }

    /// The next token, or `None` once the generation has finished.
    pub async fn next(&mut self) -> Option<Result<TokenEvent, InferError>> {
        if self.progress.finish.is_some() {
            return None;
        }
        let mut event = self.events.recv().await;
        if let Some(EngineEvent::Prefill { logprobs, cached_tokens }) = &event {
            self.progress.cached_tokens = *cached_tokens;
            if let Some(lps) = logprobs {
                let prompt = &self.request.prompt;
                let token = |id: u32, logprob| PrefillToken {
                    id,
                    text: self.tokenizer.decode(&[id], false).unwrap_or_default(),
                    logprob,
                };
                // TGI's shape: the first prompt token has no logprob.
                self.progress.prefill = std::iter::once(token(prompt[0], None))
                    .chain(prompt[1..].iter().zip(lps).map(|(&id, &lp)| token(id, Some(lp))))
                    .collect();
            }
            event = self.events.recv().await;
        }
        let event = match event {
            Some(e) => e,
            None => {
                return Some(Err(InferError::Generation("the engine dropped the request".into())));
            }
        };
        let (token, logprob, top, finish) = match event {
            EngineEvent::Token { token, logprob, top, finish } => {
                let top: Vec<Token> =
                    top.into_iter().map(|(id, lp)| self.token(id.0, lp)).collect();
                (token.0, logprob, top, finish)
            }
            EngineEvent::Error(e) => return Some(Err(e.into())),
            EngineEvent::Prefill { .. } => {
                return Some(Err(InferError::Generation("prompt logprobs sent twice".into())));
            }
            EngineEvent::Hidden { .. } => {
                return Some(Err(InferError::Generation("hidden states for a generation".into())));
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
        let decoded = if finish == Some(FinishReason::EosToken) {
            // The end is not text, even when special tokens are kept.
            String::new()
        } else {
            match p.detok.next(&self.tokenizer, &p.ids) {
                Ok(t) => t.unwrap_or_default(),
                Err(e) => return Some(Err(InferError::Generation(e))),
            }
        };
        p.finish = finish;
        let pushed = p.stop.push(&decoded);
        let mut text = pushed.text;
        if pushed.stopped {
            p.finish = Some(FinishReason::StopSequence);
            // Dropping the receiver tells the engine to free the sequence.
            self.events.close();
        } else if p.finish.is_some() {
            text.push_str(&p.stop.flush());
        }
        p.text.push_str(&text);
        let own_text = match self.request.stop_inclusion {
            StopInclusion::Include => text.clone(),
            StopInclusion::Exclude => decoded,
        };
        let token =
            Token { id: token, text: own_text, logprob, special: self.special.contains(&token) };
        p.tokens.push(token.clone());
        p.top_tokens.push(top.clone());
        let finish = p.finish;
        if finish.is_some() {
            self.record_success(now);
        }
        Some(Ok(TokenEvent { token, top, text, finish }))
    }

    fn record_success(&self, now: Instant) {
        let generated = self.progress.tokens.len();
        let inference = now - self.submitted;
        metrics::counter!(m::REQUEST_SUCCESS).increment(1);
        metrics::histogram!(m::REQUEST_DURATION).record(now - self.arrived);
        let seconds = (now - self.arrived).as_secs_f64();
        let _ = self.recent_duration.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            let old = f64::from_bits(old);
            let mean = if old == 0.0 { seconds } else { 0.8 * old + 0.2 * seconds };
            Some(mean.to_bits())
        });
        metrics::histogram!(m::REQUEST_INFERENCE_DURATION).record(inference);
        metrics::histogram!(m::REQUEST_GENERATED_TOKENS).record(generated as f64);
        let per_token = inference / generated.max(1) as u32;
        metrics::histogram!(m::REQUEST_MEAN_TIME_PER_TOKEN_DURATION).record(per_token);
        tracing::info!(
            parent: &self.span,
            seq_id = self.id.0,
            prompt_tokens = self.request.prompt.len(),
            generated_tokens = generated,
            finish_reason = self.finish_reason().as_str(),
            total_ms = (now - self.arrived).as_millis() as u64,
            validation_ms = (self.submitted - self.arrived).as_millis() as u64,
            inference_ms = inference.as_millis() as u64,
            time_per_token_ms = per_token.as_secs_f64() * 1e3,
            "success"
        );
    }

    /// Run to the end.
    pub async fn finish(self) -> Result<Finished, InferError> {
        self.finish_by(None).await
    }

    /// Run to the end, or stop at `deadline` with what it has (the Inference API's
    /// `max_time`: a soft limit; the answer ends as if `max_new_tokens` were reached, and
    /// dropping the engine's receiver frees the sequence).
    pub async fn finish_by(
        mut self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Finished, InferError> {
        loop {
            let next = match deadline {
                None => self.next().await,
                Some(d) => match tokio::time::timeout_at(d, self.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.progress.text.push_str(&self.progress.stop.flush());
                        break;
                    }
                },
            };
            match next {
                Some(t) => {
                    t?;
                }
                None => break,
            }
        }
        let finish_reason = self.finish_reason();
        let p = self.progress;
        let top_tokens = if self.request.top_n_tokens > 0 { p.top_tokens } else { Vec::new() };
        Ok(Finished {
            text: p.text,
            finish_reason,
            seed: self.request.seed,
            prefill: p.prefill,
            tokens: p.tokens,
            top_tokens,
            prompt_tokens: self.request.prompt.len(),
            cached_tokens: p.cached_tokens,
        })
    }
}
