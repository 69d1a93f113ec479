//! `POST /v1/completions`: OpenAI's legacy text completions. `prompt` is a string, a
//! list of strings, token ids or a list of token-id lists; each prompt gets `n`
//! choices, numbered prompt by prompt (`index = prompt * n + choice`), as OpenAI
//! numbers them. `logprobs` (0–5) gives the legacy `tokens` / `token_logprobs` /
//! `top_logprobs` / `text_offset` lists. `echo` and `suffix` are refused with a 400.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use rill_proto::api::Token;

use super::params::{self, MAX_COMPLETION_LOGPROBS};
use super::types::*;
use super::{
    ChunkShaper, Envelope, GenerationErrors, OpenAiError, SseEvent, Step, check_model,
    finish_reason, merged_steps, parse_body, shaped_stream, start,
};
use crate::infer::{TokenBytes, TokenEvent};
use crate::request_id::RequestId;
use crate::server::{AppState, sse, sse_json};
use crate::validation::Prompt;

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: u32 = 16;

/// The prompts `input` holds (also `/v1/embeddings`' `input`); `param` names the field.
pub(super) fn prompts(input: PromptInput, param: &str) -> Result<Vec<Prompt>, OpenAiError> {
    let text = |text| Prompt::Text { text, add_special_tokens: true };
    let prompts: Vec<Prompt> = match input {
        PromptInput::Text(s) => vec![text(s)],
        PromptInput::Texts(v) => v.into_iter().map(text).collect(),
        PromptInput::Tokens(ids) => vec![Prompt::Tokens(ids)],
        PromptInput::TokenLists(v) => v.into_iter().map(Prompt::Tokens).collect(),
    };
    if prompts.is_empty() {
        return Err(OpenAiError::invalid(param, format!("`{param}` must not be empty")));
    }
    Ok(prompts)
}

/// Text completions (stream with `"stream": true`).
#[utoipa::path(post, path = "/v1/completions", tag = "OpenAI",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "A text completion, or with `stream` its chunks as server-sent events", body = Completion),
        GenerationErrors,
    ))]
pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let arrived = Instant::now();
    let request: CompletionRequest = parse_body(body)?;
    let model = check_model(&state, request.model.as_deref())?;
    if request.echo == Some(true) {
        return Err(OpenAiError::invalid("echo", "`echo` is not supported"));
    }
    if request.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(OpenAiError::invalid("suffix", "`suffix` is not supported"));
    }
    let logprobs = request.logprobs;
    if let Some(k) = logprobs
        && k > MAX_COMPLETION_LOGPROBS
    {
        return Err(OpenAiError::invalid(
            "logprobs",
            format!("`logprobs` must be between 0 and {MAX_COMPLETION_LOGPROBS}. Given: {k}"),
        ));
    }
    let n = request.sampling.n.unwrap_or(1);
    if request.best_of.is_some_and(|b| b != n) {
        return Err(OpenAiError::invalid("best_of", "only `best_of` equal to `n` is supported"));
    }
    let prompts = prompts(request.prompt, "prompt")?;
    let limits = state.infer().map_err(|e| OpenAiError::from_infer(e, "prompt"))?.limits.clone();
    let max_tokens = Some(request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS));
    let mut requests = Vec::new();
    let (mut stream, mut include_usage, mut per_prompt) = (false, false, 1);
    for prompt in prompts {
        let mut s = params::sampling(request.sampling.clone(), prompt, max_tokens, &limits)?;
        s.spec.top_n_tokens = logprobs.unwrap_or(0);
        (stream, include_usage, per_prompt) = (s.stream, s.include_usage, s.n);
        let seed = s.spec.seed;
        let valid =
            state.prepare(s.spec).await.map_err(|e| OpenAiError::from_infer(e, "prompt"))?;
        requests.extend(valid.choices(s.n, seed));
    }
    let prompt_tokens: usize = requests.iter().step_by(per_prompt).map(|r| r.prompt.len()).sum();
    let generations =
        start(&state, requests, arrived).map_err(|e| OpenAiError::from_infer(e, "prompt"))?;
    let envelope = Envelope::new("cmpl", &request_id, model);
    if stream {
        let steps =
            merged_steps(generations).await.map_err(|e| OpenAiError::from_infer(e, "prompt"))?;
        let s = CompletionStream {
            state: Arc::clone(&state),
            envelope,
            logprobs: logprobs.is_some(),
            include_usage,
            offsets: Vec::new(),
            per_prompt,
            usage: Usage { prompt_tokens: prompt_tokens as u32, ..Default::default() },
        };
        return Ok(sse(shaped_stream(steps, s)));
    }
    let done = futures::future::try_join_all(generations.into_iter().map(|g| g.finish()))
        .await
        .map_err(|e| OpenAiError::from_infer(e, "prompt"))?;
    let bytes = &state.infer().map_err(|e| OpenAiError::from_infer(e, "prompt"))?.token_bytes;
    let mut usage = Usage { prompt_tokens: prompt_tokens as u32, ..Default::default() };
    let choices = done
        .into_iter()
        .enumerate()
        .map(|(index, f)| {
            usage.completion_tokens += f.tokens.len() as u32;
            // Each prompt is counted once: as its first choice read it.
            if index % per_prompt == 0 {
                usage.prompt_tokens_details.cached_tokens += f.cached_tokens as u32;
            }
            let logprobs = logprobs.map(|_| {
                let mut lp = CompletionLogprobs::default();
                let mut offset = 0;
                for (i, t) in f.tokens.iter().enumerate() {
                    push_logprob(&mut lp, bytes, &mut offset, t, f.top_tokens.get(i));
                }
                lp
            });
            CompletionChoice {
                index: index as u32,
                text: f.text,
                logprobs,
                finish_reason: Some(finish_reason(f.finish_reason)),
            }
        })
        .collect();
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    Ok(Json(Completion {
        id: envelope.id,
        object: "text_completion",
        created: envelope.created,
        model: envelope.model,
        system_fingerprint: envelope.system_fingerprint,
        choices,
        usage: Some(usage),
    })
    .into_response())
}

/// Append one token to the legacy `logprobs` lists: each token as its bytes read as
/// text, offsets into the completion's text.
fn push_logprob(
    lp: &mut CompletionLogprobs,
    bytes: &TokenBytes,
    offset: &mut u32,
    token: &Token,
    top: Option<&Vec<Token>>,
) {
    let text = |t: &Token| String::from_utf8_lossy(bytes.of(t)).into_owned();
    lp.tokens.push(text(token));
    lp.token_logprobs.push(token.logprob);
    let top: BTreeMap<String, f32> =
        top.into_iter().flatten().map(|t| (text(t), t.logprob)).collect();
    lp.top_logprobs.push(top);
    lp.text_offset.push(*offset);
    *offset += token.text.len() as u32;
}

struct CompletionStream {
    /// For the tokens' bytes.
    state: Arc<AppState>,
    envelope: Envelope,
    logprobs: bool,
    include_usage: bool,
    /// Per choice, the text offset of its next token.
    offsets: Vec<u32>,
    /// Choices per prompt (`n`).
    per_prompt: usize,
    usage: Usage,
}

impl CompletionStream {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> SseEvent {
        let e = &self.envelope;
        sse_json(&Completion {
            id: e.id.clone(),
            object: "text_completion",
            created: e.created,
            model: e.model.clone(),
            system_fingerprint: e.system_fingerprint.clone(),
            choices,
            usage,
        })
    }
}

impl ChunkShaper for CompletionStream {
    fn on_token(&mut self, step: &Step, event: TokenEvent) -> Vec<SseEvent> {
        if step.index >= self.offsets.len() {
            self.offsets.resize(step.index + 1, 0);
        }
        if event.text.is_empty() && !self.logprobs && event.finish.is_none() {
            return Vec::new();
        }
        let logprobs = self.logprobs.then(|| {
            let mut lp = CompletionLogprobs::default();
            let empty = TokenBytes::default();
            let bytes = self.state.ready.get().map_or(&empty, |i| &i.token_bytes);
            let offset = &mut self.offsets[step.index];
            push_logprob(&mut lp, bytes, offset, &event.token, Some(&event.top));
            lp
        });
        if event.finish.is_some() {
            self.usage.completion_tokens += step.generated as u32;
            if step.index.is_multiple_of(self.per_prompt) {
                self.usage.prompt_tokens_details.cached_tokens += step.cached_tokens as u32;
            }
        }
        let choice = CompletionChoice {
            index: step.index as u32,
            text: event.text,
            logprobs,
            finish_reason: event.finish.map(finish_reason),
        };
        vec![self.chunk(vec![choice], None)]
    }

    fn closing(&mut self) -> Vec<SseEvent> {
        let mut usage = self.usage.clone();
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
        if self.include_usage { vec![self.chunk(Vec::new(), Some(usage))] } else { Vec::new() }
    }

    fn prompt_param(&self) -> &'static str {
        "prompt"
    }
}
