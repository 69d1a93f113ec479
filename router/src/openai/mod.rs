//! OpenAI's API family: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models[/{model}]`, and TGI's `POST /chat_tokenize`, with OpenAI's wire
//! types (`types.rs`) and error shape `{"error": {"message", "type", "param",
//! "code"}}`.
//!
//! Both completion routes map their request onto the core's `GenerationSpec`
//! (`params.rs`: OpenAI's bounds and defaults — temperature 0 is greedy, stop strings
//! are cut from the text), start `n` generations (seeds `seed`, `seed + 1`, … when a
//! seed is given), and shape the answer: `chat.rs` renders the messages through the
//! model's chat template and handles tools and `response_format`; `completions.rs`
//! takes text or token-id prompts. Streams wait for every choice's first token, so a
//! request that fails early gets its real status; a failure later ends the stream with
//! an error event in OpenAI's shape.

mod chat;
mod completions;
mod embeddings;
mod params;
pub mod tools;
mod types;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, BoxStream, StreamExt};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use crate::infer::{Generation, InferError, TokenEvent};
use crate::request_id::RequestId;
use crate::sequence::FinishReason;
use crate::server::{AppState, Guarded, record_failure, sse_json};
use crate::validation::{ValidRequest, ValidationError};

pub use params::{MAX_COMPLETION_LOGPROBS, MAX_TOP_LOGPROBS};
pub use types::*;

/// OpenAI's paths and schemas in the OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(
        chat::chat_completions,
        chat::chat_tokenize,
        completions::completions,
        embeddings::embeddings,
        models,
        model
    ),
    components(schemas(
        ChatCompletionRequest,
        ChatMessage,
        MessageContent,
        ContentPart,
        ResponseFormat,
        JsonSchemaFormat,
        SamplingFields,
        StreamOptions,
        StopList,
        CompletionRequest,
        PromptInput,
        ChatCompletion,
        ChatChoice,
        AssistantMessage,
        ChatLogprobs,
        TokenLogprob,
        TopLogprob,
        ChatCompletionChunk,
        ChatChunkChoice,
        ChatDelta,
        Completion,
        CompletionChoice,
        CompletionLogprobs,
        Usage,
        PromptTokensDetails,
        Model,
        ModelList,
        ErrorBody,
        ErrorDetail,
        ChatTokenizeResponse,
        embeddings::EmbeddingRequest,
        embeddings::EncodingFormat,
        embeddings::EmbeddingList,
        embeddings::Embedding,
        embeddings::EmbeddingUsage
    ))
)]
pub struct OpenAiApi;

/// Routes anyone may call.
pub fn open_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{*model}", get(model))
        .route("/chat_tokenize", post(chat::chat_tokenize))
}

/// Routes behind `--api-key`.
pub fn generation_routes() -> Guarded {
    let routes = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/embeddings", post(embeddings::embeddings));
    Guarded {
        routes,
        refuse: |status, message| {
            let error = OpenAiError::new(status, message);
            match status {
                StatusCode::FORBIDDEN => error.kind("permission_error").code("model_not_allowed"),
                _ => error.kind("authentication_error").code("invalid_api_key"),
            }
            .into_response()
        },
    }
}

/// An error in OpenAI's shape, with the status it is answered with.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    detail: ErrorDetail,
    /// For 503 while loading (as TGI and the Inference API report it).
    estimated_time: Option<f64>,
}

impl OpenAiError {
    /// A 400-class error of type `invalid_request_error`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let detail = ErrorDetail {
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        };
        OpenAiError { status, detail, estimated_time: None }
    }

    /// 400 naming the offending field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        OpenAiError::new(StatusCode::BAD_REQUEST, message).param(param)
    }

    pub fn param(mut self, param: &str) -> Self {
        self.detail.param = Some(param.to_string());
        self
    }

    pub fn kind(mut self, kind: &'static str) -> Self {
        self.detail.kind = kind;
        self
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.detail.code = Some(code);
        self
    }

    /// The core's error, on a route whose prompt field is `prompt_param`.
    pub fn from_infer(e: InferError, prompt_param: &str) -> Self {
        use ValidationError as V;
        match e {
            InferError::Validation(v) => {
                let message = match &v {
                    V::InputLength(max, given) => format!(
                        "This model's maximum context length is {max} tokens for the prompt. \
                         However, your request has {given} prompt tokens."
                    ),
                    V::MaxTotalTokens(max, input, new) => format!(
                        "This model's maximum context length is {max} tokens. However, you \
                         requested {} tokens ({input} in the prompt, {new} for the completion). \
                         Reduce the prompt or the completion length.",
                        input + new
                    ),
                    other => other.to_string(),
                };
                let (param, code) = match &v {
                    V::InputLength(..) => (prompt_param, Some("context_length_exceeded")),
                    V::MaxTotalTokens(..) => ("max_tokens", Some("context_length_exceeded")),
                    V::NegativeMaxNewTokens => ("max_tokens", None),
                    V::Grammar | V::InvalidGrammar(_) => ("response_format", None),
                    _ => (prompt_param, None),
                };
                let e = OpenAiError::invalid(param, message);
                match code {
                    Some(c) => e.code(c),
                    None => e,
                }
            }
            InferError::Overloaded => {
                OpenAiError::new(StatusCode::TOO_MANY_REQUESTS, "Model is overloaded")
                    .kind("rate_limit_error")
                    .code("rate_limit_exceeded")
            }
            InferError::Generation(m) => OpenAiError::new(
                StatusCode::FAILED_DEPENDENCY,
                format!("Request failed during generation: {m}"),
            )
            .kind("server_error"),
            InferError::Loading { estimated_time } => {
                let mut e = OpenAiError::new(StatusCode::SERVICE_UNAVAILABLE, "Model is loading")
                    .kind("service_unavailable")
                    .code("model_loading");
                e.estimated_time = Some(estimated_time);
                e
            }
            InferError::Unavailable(m) => {
                OpenAiError::new(StatusCode::SERVICE_UNAVAILABLE, m).kind("service_unavailable")
            }
        }
    }

    /// The metric label (TGI's `error_type` names).
    fn error_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 404 | 413 | 422 => "validation",
            401 | 403 => "authentication",
            429 => "overloaded",
            424 => "generation",
            503 if self.estimated_time.is_some() => "loading",
            _ => "internal",
        }
    }

    fn body(&self) -> serde_json::Value {
        let mut body =
            serde_json::to_value(ErrorBody { error: self.detail.clone() }).unwrap_or_default();
        if let Some(t) = self.estimated_time {
            body["estimated_time"] = t.into();
        }
        body
    }

    /// The error as the SSE event that ends a stream.
    fn event(&self) -> Result<Event, std::convert::Infallible> {
        sse_json(&self.body())
    }
}

/// OpenAI's one mapping from errors to HTTP.
impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        record_failure(self.error_type());
        tracing::info!(status = self.status.as_u16(), "request refused: {}", self.detail.message);
        (self.status, Json(self.body())).into_response()
    }
}

/// Parse a JSON body, naming the field that is wrong (`messages[0].role`) in `param`.
fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, OpenAiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            OpenAiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request body is too large")
                .code("payload_too_large")
        } else {
            OpenAiError::new(StatusCode::BAD_REQUEST, r.body_text())
        }
    })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        OpenAiError::new(
            StatusCode::BAD_REQUEST,
            format!("The request body is not valid JSON: {e}"),
        )
    })?;
    serde_path_to_error::deserialize::<_, T>(&value).map_err(|e| {
        let mut path = e.path().to_string();
        let mut inner = e.into_inner().to_string();
        // Fields flattened into the request (the shared sampling fields) lose their
        // path: find it by reading them alone.
        if path == "."
            && let Err(e) = serde_path_to_error::deserialize::<_, SamplingFields>(&value)
        {
            path = e.path().to_string();
            inner = e.into_inner().to_string();
        }
        let error = OpenAiError::new(
            StatusCode::BAD_REQUEST,
            format!("Invalid value for `{path}`: {inner}"),
        );
        if path == "." { error } else { error.param(&path) }
    })
}

/// Placeholders clients send for "whatever is served": TGI's examples send `tgi`;
/// huggingface_hub's `InferenceClient(base_url=...)` sends `dummy`.
const ANY_MODEL: [&str; 3] = ["", "tgi", "dummy"];

/// The request's `model`: absent, a placeholder, or a served name; else OpenAI's 404.
fn check_model(state: &AppState, model: Option<&str>) -> Result<String, OpenAiError> {
    let served = &state.served_model_names[0];
    match model {
        None => Ok(served.clone()),
        Some(m) if ANY_MODEL.contains(&m) => Ok(served.clone()),
        Some(m) if state.served_model_names.iter().any(|n| n == m) => Ok(m.to_string()),
        Some(m) => Err(OpenAiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "The model `{m}` does not exist. Served: {}.",
                state.served_model_names.join(", ")
            ),
        )
        .param("model")
        .code("model_not_found")),
    }
}

/// What every answer of one request carries.
#[derive(Clone, Debug)]
struct Envelope {
    id: String,
    created: u64,
    model: String,
    system_fingerprint: String,
}

impl Envelope {
    /// The response id is `{prefix}-{x-request-id}` (vLLM's rule).
    fn new(prefix: &str, request_id: &RequestId, model: String) -> Self {
        Envelope {
            id: format!("{prefix}-{}", request_id.as_str()),
            created: unix_now(),
            model,
            system_fingerprint: format!("fp_rill_{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// OpenAI's `finish_reason` for how the core ended.
fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::EosToken | FinishReason::StopSequence => "stop",
    }
}

/// Start every choice's generation.
fn start(
    state: &AppState,
    requests: Vec<ValidRequest>,
    arrived: Instant,
) -> Result<Vec<Generation>, InferError> {
    state.infer()?.start_all(requests, arrived)
}

/// One event of one choice in a merged stream.
struct Step {
    index: usize,
    event: Result<TokenEvent, InferError>,
    prompt_tokens: usize,
    /// Of those, supplied by the prefix cache.
    cached_tokens: usize,
    generated: usize,
}

/// Every choice's events merged as they come, after waiting for each one's first
/// token (so an early failure is an HTTP error, not a stream event).
async fn merged_steps(
    mut generations: Vec<Generation>,
) -> Result<BoxStream<'static, Step>, InferError> {
    let mut firsts = Vec::with_capacity(generations.len());
    for g in &mut generations {
        match g.next().await {
            Some(first) => firsts.push(first?),
            None => return Err(InferError::Generation("no token generated".into())),
        }
    }
    let streams = generations.into_iter().zip(firsts).enumerate().map(|(index, (g, first))| {
        stream::unfold((Some(first), Some(g)), move |(first, g)| async move {
            let mut g = g?;
            let event = match first {
                Some(e) => Ok(e),
                None => g.next().await?,
            };
            let step = Step {
                index,
                prompt_tokens: g.request().prompt.len(),
                cached_tokens: g.cached_tokens(),
                generated: g.generated_tokens(),
                event,
            };
            let more = step.event.as_ref().is_ok_and(|e| e.finish.is_none());
            Some((step, (None, more.then_some(g))))
        })
        .boxed()
    });
    Ok(stream::select_all(streams).boxed())
}

/// The end of every stream.
fn done() -> SseEvent {
    Ok(Event::default().data("[DONE]"))
}

type SseEvent = Result<Event, std::convert::Infallible>;

/// How a route turns the merged choices' steps into its chunks.
trait ChunkShaper: Send + 'static {
    /// The chunks one token of one choice becomes.
    fn on_token(&mut self, step: &Step, event: TokenEvent) -> Vec<SseEvent>;
    /// After every choice finished: the usage chunk (when asked).
    fn closing(&mut self) -> Vec<SseEvent>;
    /// The prompt field that errors name.
    fn prompt_param(&self) -> &'static str;
}

/// The SSE body of a stream: each step shaped, an error event in OpenAI's shape if a
/// choice fails (which ends the stream), then the closing chunks and `[DONE]`.
fn shaped_stream(
    steps: BoxStream<'static, Step>,
    shaper: impl ChunkShaper,
) -> impl futures::Stream<Item = SseEvent> + Send + 'static {
    stream::unfold(Some((steps, shaper)), |s| async move {
        let (mut steps, mut shaper) = s?;
        let Some(mut step) = steps.next().await else {
            let mut events = shaper.closing();
            events.push(done());
            return Some((events, None));
        };
        match std::mem::replace(&mut step.event, Err(InferError::Unavailable("taken".into()))) {
            Ok(event) => {
                let events = shaper.on_token(&step, event);
                Some((events, Some((steps, shaper))))
            }
            Err(e) => {
                tracing::warn!(error = %e, "stream failed");
                let error = OpenAiError::from_infer(e, shaper.prompt_param());
                record_failure(error.error_type());
                Some((vec![error.event(), done()], None))
            }
        }
    })
    .flat_map(stream::iter)
}

/// The failures every generation route documents (OpenAPI only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum GenerationErrors {
    /// Invalid request (`param` names the field)
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// Unknown model
    #[response(status = 404)]
    UnknownModel(ErrorBody),
    /// Generation failed
    #[response(status = 424)]
    Generation(ErrorBody),
    /// Model is overloaded
    #[response(status = 429)]
    Overloaded(ErrorBody),
    /// Model is loading
    #[response(status = 503)]
    Loading(ErrorBody),
}

/// The served models.
#[utoipa::path(get, path = "/v1/models", tag = "OpenAI",
    responses((status = 200, description = "The served model under each of its names", body = ModelList)))]
async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let data = state.served_model_names.iter().map(|name| describe(&state, name)).collect();
    Json(ModelList { object: "list", data })
}

/// One served model.
#[utoipa::path(get, path = "/v1/models/{model}", tag = "OpenAI",
    params(("model" = String, Path, description = "A served model name")),
    responses(
        (status = 200, description = "The model", body = Model),
        (status = 404, description = "No such model", body = ErrorBody),
    ))]
async fn model(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<Model>, OpenAiError> {
    let name = check_model(&state, Some(&model))?;
    Ok(Json(describe(&state, &name)))
}

fn describe(state: &AppState, name: &str) -> Model {
    let created = unix_now().saturating_sub(state.started.elapsed().as_secs());
    let max_model_len = state.ready.get().map(|i| i.limits.max_total_tokens).unwrap_or(0);
    Model { id: name.to_string(), object: "model", created, owned_by: "rill", max_model_len }
}
