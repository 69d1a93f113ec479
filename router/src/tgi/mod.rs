//! TGI's API family: `/generate`, `/generate_stream`, `/` (compat), `/tokenize`,
//! `/info`, with TGI's wire types (`rill_proto::api`) and error shape
//! `{"error", "error_type"}`.
//!
//! A handler maps the request onto the core (`params.rs`), validates it on a worker,
//! starts the generation(s) and shapes the answer: `details`, `return_full_text`,
//! `best_of` (n samples, the best mean logprob wins, TGI's rule). A stream that
//! fails before its first token answers with the real status (TGI sends 200 and an
//! error event); one that fails later ends with an SSE error event.

mod params;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rill_proto::api::{
    BestOfSequence, CompatGenerateRequest, Details, ErrorResponse, GenerateParameters,
    GenerateRequest, GenerateResponse, Info, PrefillToken, StreamDetails, StreamResponse, Token,
};
use serde_json::json;
use utoipa::{OpenApi, ToSchema};

use crate::infer::{Finished, Generation, InferError, TokenEvent};
use crate::server::{AppState, Guarded, json_event, record_failure, stream_tokens, tgi_error};
use crate::validation::ValidationError;

pub use params::{Options, check_parameters, to_spec, zero_temperature_is_greedy};

/// TGI's paths and schemas in the OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(compat_generate, generate, generate_stream, tokenize, info),
    components(schemas(
        GenerateRequest,
        CompatGenerateRequest,
        GenerateParameters,
        GenerateResponse,
        Details,
        Token,
        PrefillToken,
        StreamResponse,
        StreamDetails,
        ErrorResponse,
        Info,
        SimpleToken
    ))
)]
pub struct TgiApi;

/// The errors every generation route can answer (documentation only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum GenerationErrors {
    /// Malformed body: not JSON, or sent without `Content-Type: application/json`
    #[response(status = 400, example = json!({"error": "Expected request with `Content-Type: application/json`", "error_type": "malformed_json"}))]
    Malformed(ErrorResponse),
    /// Missing or unknown API key (with `--api-key`)
    #[response(status = 401)]
    Unauthorized(ErrorResponse),
    /// The API key is not scoped to this model
    #[response(status = 403)]
    Forbidden(ErrorResponse),
    /// The body is larger than `--payload-limit`
    #[response(status = 413)]
    TooLarge(ErrorResponse),
    /// Input validation error
    #[response(status = 422, example = json!({"error": "Input validation error: `temperature` must be strictly positive", "error_type": "validation"}))]
    Validation(ErrorResponse),
    /// Generation error
    #[response(status = 424)]
    Generation(ErrorResponse),
    /// Model is overloaded
    #[response(status = 429)]
    Overloaded(ErrorResponse),
    /// Model is loading
    #[response(status = 503)]
    Loading(ErrorResponse),
}

/// Routes anyone may call.
pub fn open_routes() -> Router<Arc<AppState>> {
    Router::new().route("/tokenize", post(tokenize)).route("/info", get(info))
}

/// Routes behind `--api-key`.
pub fn generation_routes() -> Guarded {
    let routes = Router::new()
        .route("/", post(compat_generate))
        .route("/generate", post(generate))
        .route("/generate_stream", post(generate_stream));
    Guarded {
        routes,
        refuse: |status, message| {
            record_failure("authentication");
            tgi_error(status, message, "authentication")
        },
    }
}

/// One `/tokenize` entry.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct SimpleToken {
    id: u32,
    text: String,
    start: usize,
    stop: usize,
}

/// Every way a TGI request can fail.
#[derive(Debug)]
pub(crate) enum TgiError {
    Infer(InferError),
    /// The body could not be read as the route's JSON.
    Body(JsonRejection),
}

impl From<InferError> for TgiError {
    fn from(e: InferError) -> Self {
        TgiError::Infer(e)
    }
}

impl From<ValidationError> for TgiError {
    fn from(e: ValidationError) -> Self {
        TgiError::Infer(e.into())
    }
}

/// TGI's one mapping from errors to status and `error_type`.
impl IntoResponse for TgiError {
    fn into_response(self) -> Response {
        let kind = match &self {
            TgiError::Infer(e) => e.error_type(),
            TgiError::Body(_) => "validation",
        };
        record_failure(kind);
        match self {
            TgiError::Infer(e) => {
                tracing::info!(error_type = kind, "request refused: {e}");
                let status = match e {
                    InferError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    InferError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
                    InferError::Generation(_) => StatusCode::FAILED_DEPENDENCY,
                    InferError::Loading { estimated_time } => {
                        let body = json!({"error": "Model is loading", "error_type": "loading", "estimated_time": estimated_time});
                        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
                    }
                    InferError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                };
                tgi_error(status, e.to_string(), kind)
            }
            TgiError::Body(r) => match r {
                JsonRejection::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    tgi_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload too large",
                        "payload_too_large",
                    )
                }
                JsonRejection::JsonDataError(e) => {
                    tgi_error(StatusCode::UNPROCESSABLE_ENTITY, e.body_text(), "validation")
                }
                other => tgi_error(StatusCode::BAD_REQUEST, other.body_text(), "malformed_json"),
            },
        }
    }
}

/// Validate and start `options.best_of` generations (one when streaming).
async fn start(
    state: &Arc<AppState>,
    request: GenerateRequest,
    stream: bool,
) -> Result<(Vec<Generation>, Options), TgiError> {
    let arrived = Instant::now();
    let (spec, options) = {
        let limits = &state.infer()?.limits;
        params::to_spec(request, stream, limits)?
    };
    let valid = state.prepare(spec).await?;
    let samples = (1..options.best_of).map(|_| valid.reseeded(None));
    let requests = std::iter::once(valid.clone()).chain(samples).collect();
    Ok((state.infer()?.start_all(requests, arrived)?, options))
}

/// `/generate`'s answer. With `best_of` = n > 1, n samples run side by side (each
/// with its own seed and concurrency permit); the one with the highest mean token
/// logprob is the answer, the others go to `details.best_of_sequences`.
async fn generate_response(
    state: &Arc<AppState>,
    request: GenerateRequest,
) -> Result<GenerateResponse, TgiError> {
    let (generations, options) = start(state, request, false).await?;
    let inputs = generations[0].request().inputs.clone();
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
    let text = |f: &Finished| {
        if options.return_full_text { format!("{inputs}{}", f.text) } else { f.text.clone() }
    };
    let others = (options.best_of > 1).then(|| {
        done.into_iter()
            .map(|f| BestOfSequence {
                generated_text: text(&f),
                finish_reason: f.finish_reason.as_str().into(),
                generated_tokens: f.tokens.len() as u32,
                seed: f.seed,
                prefill: f.prefill,
                tokens: f.tokens,
                top_tokens: f.top_tokens,
            })
            .collect()
    });
    let generated_text = text(&chosen);
    let details = options.details.then(|| details(chosen, others));
    Ok(GenerateResponse { generated_text, details })
}

/// TGI's `details` of a finished generation.
pub(crate) fn details(f: Finished, best_of_sequences: Option<Vec<BestOfSequence>>) -> Details {
    Details {
        finish_reason: f.finish_reason.as_str().into(),
        generated_tokens: f.tokens.len() as u32,
        seed: f.seed,
        prefill: f.prefill,
        tokens: f.tokens,
        top_tokens: f.top_tokens,
        best_of_sequences,
        cached_tokens: f.cached_tokens as u32,
    }
}

/// Generate tokens.
#[utoipa::path(post, path = "/generate", tag = "Text Generation Inference",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "Generated text", body = GenerateResponse),
        GenerationErrors,
    ))]
async fn generate(
    State(state): State<Arc<AppState>>,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Result<Json<GenerateResponse>, TgiError> {
    let Json(request) = body.map_err(TgiError::Body)?;
    Ok(Json(generate_response(&state, request).await?))
}

/// Generate a stream of tokens as server-sent events.
#[utoipa::path(post, path = "/generate_stream", tag = "Text Generation Inference",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "Generated tokens, one `data:` event each", body = StreamResponse,
            content_type = "text/event-stream"),
        GenerationErrors,
    ))]
async fn generate_stream(
    State(state): State<Arc<AppState>>,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Result<Response, TgiError> {
    let Json(request) = body.map_err(TgiError::Body)?;
    stream_response(&state, request).await
}

/// The `/generate_stream` event for a token just produced (index from 1; the last
/// one carries `generated_text` and `details`).
fn stream_event(generation: &Generation, event: TokenEvent, options: Options) -> StreamResponse {
    let last = event.finish.is_some();
    let request = generation.request();
    StreamResponse {
        index: generation.generated_tokens() as u32,
        token: event.token,
        top_tokens: event.top,
        generated_text: last.then(|| {
            let text = generation.text();
            if options.return_full_text { format!("{}{text}", request.inputs) } else { text.into() }
        }),
        details: (last && options.details).then(|| StreamDetails {
            finish_reason: generation.finish_reason().as_str().into(),
            generated_tokens: generation.generated_tokens() as u32,
            seed: request.seed,
            input_length: request.prompt.len() as u32,
        }),
    }
}

/// `/generate_stream`'s answer (also the Inference API's `stream: true`).
pub(crate) async fn stream_response(
    state: &Arc<AppState>,
    request: GenerateRequest,
) -> Result<Response, TgiError> {
    let (mut generations, options) = start(state, request, true).await?;
    let event = move |g: &Generation, token| json_event(&stream_event(g, token, options));
    let error = |e: &InferError| {
        json_event(&ErrorResponse { error: e.to_string(), error_type: e.error_type().into() })
    };
    Ok(stream_tokens(generations.remove(0), event, error).await?)
}

/// Generate tokens if `stream == false` (answering a list), or a stream of tokens.
#[utoipa::path(post, path = "/", tag = "Text Generation Inference",
    request_body = CompatGenerateRequest,
    responses(
        (status = 200, description = "Generated text; with `stream: true`, tokens as `/generate_stream` sends them",
            content(
                (Vec<GenerateResponse> = "application/json"),
                (StreamResponse = "text/event-stream"),
            )),
        GenerationErrors,
    ))]
async fn compat_generate(
    State(state): State<Arc<AppState>>,
    body: Result<Json<CompatGenerateRequest>, JsonRejection>,
) -> Result<Response, TgiError> {
    let Json(request) = body.map_err(TgiError::Body)?;
    let inner = GenerateRequest { inputs: request.inputs, parameters: request.parameters };
    if request.stream {
        stream_response(&state, inner).await
    } else {
        let response = generate_response(&state, inner).await?;
        Ok(Json(vec![response]).into_response())
    }
}

/// Tokenize the inputs.
#[utoipa::path(post, path = "/tokenize", tag = "Text Generation Inference",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "Tokens with character offsets", body = Vec<SimpleToken>),
        (status = 400, description = "Malformed body: not JSON, or without `Content-Type: application/json`", body = ErrorResponse),
        (status = 413, description = "The body is larger than `--payload-limit`", body = ErrorResponse),
        (status = 422, description = "Tokenization error", body = ErrorResponse),
        (status = 503, description = "Model is loading", body = ErrorResponse),
    ))]
async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Result<Response, TgiError> {
    let Json(request) = body.map_err(TgiError::Body)?;
    let tokens = tokenize_text(&state, request.inputs, true).await?;
    Ok(Json(tokens).into_response())
}

/// `text`'s tokens with the text under each and character offsets (TGI's shape; also
/// `/chat_tokenize`'s), tokenized on a blocking thread.
pub(crate) async fn tokenize_text(
    state: &AppState,
    text: String,
    add_special_tokens: bool,
) -> Result<Vec<SimpleToken>, InferError> {
    let tokenizer = Arc::clone(&state.infer()?.tokenizer);
    let (encoding, text) = tokio::task::spawn_blocking(move || {
        (tokenizer.encode_char_offsets(text.as_str(), add_special_tokens), text)
    })
    .await
    .map_err(|_| InferError::Unavailable("tokenizer worker failed".into()))?;
    let encoding =
        encoding.map_err(|e| InferError::Validation(ValidationError::Tokenizer(e.to_string())))?;
    let chars: Vec<char> = text.chars().collect();
    Ok(encoding
        .get_ids()
        .iter()
        .zip(encoding.get_offsets())
        .map(|(id, &(start, stop))| {
            let text: String =
                chars[start.min(chars.len())..stop.min(chars.len())].iter().collect();
            SimpleToken { id: *id, text, start, stop }
        })
        .collect())
}

/// The model and the server's limits.
#[utoipa::path(get, path = "/info", tag = "Text Generation Inference",
    responses((status = 200, description = "Served model info", body = Info)))]
async fn info(State(state): State<Arc<AppState>>) -> Json<Info> {
    let mut info = state.info.clone();
    if let Some(infer) = state.ready.get() {
        info.max_input_tokens = infer.limits.max_input_tokens;
        info.max_total_tokens = infer.limits.max_total_tokens;
    }
    Json(info)
}
