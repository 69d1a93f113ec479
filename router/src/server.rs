//! The HTTP server: TGI's routes on axum, and the one place errors become HTTP.
//!
//! The port opens before the model is loaded; until [`AppState::ready`] is set,
//! `/health` answers 503 and generation routes answer 503 `loading`. A stream that
//! fails before its first token answers with the real status (TGI sends 200 and an
//! error event); one that fails later ends with an SSE error event.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::Request;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use rill_proto::api::{
    CompatGenerateRequest, Details, ErrorResponse, GenerateParameters, GenerateRequest,
    GenerateResponse, Info, PrefillToken, StreamDetails, StreamResponse, Token,
};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::{OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use crate::infer::{Infer, InferError};
use crate::metrics as m;
use crate::validation::{self, ValidRequest, ValidationError};

/// Shared by every handler.
#[derive(Debug)]
pub struct AppState {
    /// Renders `/metrics` (absent in tests that install no recorder).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// `/info`'s answer; the token limits are filled in once the model is loaded.
    pub info: Info,
    /// Set once the model has loaded.
    pub ready: OnceLock<Infer>,
    pub started: Instant,
    /// Seconds a load is expected to take (for `estimated_time`).
    pub estimated_load_secs: f64,
    /// Bounds concurrent tokenization jobs (`--validation-workers`).
    pub validation_workers: Arc<tokio::sync::Semaphore>,
}

/// The OpenAPI document of every route (served at `/api-doc/openapi.json`, browsable
/// at `/docs`).
#[derive(Debug, OpenApi)]
#[openapi(
    paths(compat_generate, generate, generate_stream, tokenize, health, info, render_metrics),
    components(schemas(
        GenerateRequest, CompatGenerateRequest, GenerateParameters, GenerateResponse, Details,
        Token, PrefillToken, StreamResponse, StreamDetails, ErrorResponse, Info, SimpleToken
    )),
    tags((name = "Text Generation Inference", description = "TGI-compatible text generation")),
    info(title = "Rill", description = "A streaming text-generation server with TGI's API", license(name = "Apache-2.0"))
)]
pub struct ApiDoc;

/// The errors every generation route can answer (documentation only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum GenerationErrors {
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

/// One `/tokenize` entry.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct SimpleToken {
    id: u32,
    text: String,
    start: usize,
    stop: usize,
}

/// HTTP-level settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest request body in bytes (413 beyond).
    pub payload_limit: usize,
    /// When set, generation routes need `Authorization: Bearer <key>` (401 otherwise).
    pub api_key: Option<String>,
    /// Origins allowed to call from a browser; none = no CORS headers.
    pub cors_allow_origin: Vec<String>,
}

pub fn router(state: Arc<AppState>, config: &ServerConfig) -> Router {
    let mut generation = Router::new()
        .route("/", post(compat_generate))
        .route("/generate", post(generate))
        .route("/generate_stream", post(generate_stream));
    if let Some(key) = &config.api_key {
        let key: Arc<str> = key.as_str().into();
        generation = generation.route_layer(middleware::from_fn_with_state(key, require_api_key));
    }
    let mut app = Router::new()
        .merge(SwaggerUi::new("/docs").url("/api-doc/openapi.json", ApiDoc::openapi()))
        .merge(generation)
        .route("/tokenize", post(tokenize))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(render_metrics))
        .layer(DefaultBodyLimit::max(config.payload_limit))
        .with_state(state);
    if !config.cors_allow_origin.is_empty() {
        let origins: Vec<HeaderValue> =
            config.cors_allow_origin.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        app = app.layer(
            CorsLayer::new()
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
                .allow_origin(AllowOrigin::list(origins)),
        );
    }
    app
}

/// `Authorization: Bearer <key>`, compared in constant time.
async fn require_api_key(State(key): State<Arc<str>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same = given.len() == key.len()
        && given.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same { next.run(request).await } else { ApiError::Unauthorized.into_response() }
}

fn error(status: StatusCode, message: impl Into<String>, error_type: &str) -> Response {
    let body = ErrorResponse { error: message.into(), error_type: error_type.into() };
    (status, Json(body)).into_response()
}

/// Every way a request can fail before or outside generation.
#[derive(Debug)]
enum ApiError {
    Infer(InferError),
    /// The model is still loading.
    Loading {
        estimated_time: f64,
    },
    /// The body could not be read as the route's JSON.
    Body(JsonRejection),
    /// Missing or wrong API key.
    Unauthorized,
    Internal(&'static str),
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        ApiError::Infer(e)
    }
}

/// The single mapping from errors to status and `error_type`.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match &self {
            ApiError::Infer(e) => e.error_type(),
            ApiError::Loading { .. } => "loading",
            ApiError::Body(_) => "validation",
            ApiError::Unauthorized => "authentication",
            ApiError::Internal(_) => "internal",
        };
        metrics::counter!(m::REQUEST_FAILURE, "err" => kind).increment(1);
        if let ApiError::Infer(e) = &self {
            tracing::info!(error_type = kind, "request refused: {e}");
        }
        match self {
            ApiError::Infer(e) => {
                let status = match e {
                    InferError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    InferError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
                    InferError::Generation(_) => StatusCode::FAILED_DEPENDENCY,
                };
                error(status, e.to_string(), e.error_type())
            }
            ApiError::Loading { estimated_time } => {
                let body = json!({"error": "Model is loading", "error_type": "loading", "estimated_time": estimated_time});
                (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
            }
            ApiError::Body(r) => match r {
                JsonRejection::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    error(StatusCode::PAYLOAD_TOO_LARGE, "payload too large", "payload_too_large")
                }
                JsonRejection::JsonDataError(e) => {
                    error(StatusCode::UNPROCESSABLE_ENTITY, e.body_text(), "validation")
                }
                other => error(StatusCode::BAD_REQUEST, other.body_text(), "malformed_json"),
            },
            ApiError::Unauthorized => {
                error(StatusCode::UNAUTHORIZED, "Unauthorized", "authentication")
            }
            ApiError::Internal(what) => error(StatusCode::INTERNAL_SERVER_ERROR, what, "internal"),
        }
    }
}

impl AppState {
    fn infer(&self) -> Result<&Infer, ApiError> {
        self.ready.get().ok_or_else(|| ApiError::Loading {
            estimated_time: (self.estimated_load_secs - self.started.elapsed().as_secs_f64())
                .max(1.0),
        })
    }
}

/// Validate (tokenizing and compiling the grammar on a blocking thread).
async fn validate(
    state: &AppState,
    request: GenerateRequest,
    stream: bool,
) -> Result<(&Infer, ValidRequest, Instant), ApiError> {
    let arrived = Instant::now();
    metrics::counter!(m::REQUEST_COUNT).increment(1);
    let infer = state.infer()?;
    let tokenizer = Arc::clone(&infer.tokenizer);
    let limits = infer.limits.clone();
    let grammar = infer.grammar.clone();
    // Closed only if the server is shutting down.
    let _worker = state
        .validation_workers
        .acquire()
        .await
        .map_err(|_| ApiError::Internal("shutting down"))?;
    let valid = tokio::task::spawn_blocking(move || {
        validation::validate(request, stream, &limits, &tokenizer, grammar.as_deref())
    })
    .await
    .map_err(|_| ApiError::Internal("validation worker failed"))?
    .map_err(InferError::from)?;
    Ok((infer, valid, arrived))
}

/// `/generate`'s answer (with `best_of`).
async fn generate_response(
    state: &AppState,
    request: GenerateRequest,
) -> Result<GenerateResponse, ApiError> {
    let (infer, valid, arrived) = validate(state, request, false).await?;
    Ok(infer.generate(valid, arrived).await?)
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
) -> Result<Json<GenerateResponse>, ApiError> {
    let Json(request) = body.map_err(ApiError::Body)?;
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
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(ApiError::Body)?;
    stream_response(&state, request).await
}

async fn stream_response(state: &AppState, request: GenerateRequest) -> Result<Response, ApiError> {
    let (infer, valid, arrived) = validate(state, request, true).await?;
    let mut generation = infer.start(valid, arrived)?;
    // Wait for the first token so that an early failure gets its real status.
    let first = match generation.next_token().await {
        Some(token) => generation.stream_event(token?),
        None => return Err(InferError::Generation("no token generated".into()).into()),
    };
    let first = stream::once(async move { sse_json(&first) });
    let rest = stream::unfold(Some(generation), |state| async move {
        let mut generation = state?;
        match generation.next_token().await? {
            Ok(token) => {
                let event = sse_json(&generation.stream_event(token));
                Some((event, Some(generation)))
            }
            Err(e) => {
                tracing::warn!(request_id = generation.id.0, error = %e, "stream failed");
                metrics::counter!(m::REQUEST_FAILURE, "err" => e.error_type()).increment(1);
                let body =
                    ErrorResponse { error: e.to_string(), error_type: e.error_type().into() };
                Some((sse_json(&body), None))
            }
        }
    });
    Ok(sse(first.chain(rest)))
}

fn sse_json<T: serde::Serialize>(value: &T) -> Result<Event, Infallible> {
    // Serializing our own plain structs cannot fail.
    Ok(Event::default().data(serde_json::to_string(value).unwrap_or_default()))
}

fn sse(events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    let mut response = Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    response.headers_mut().insert("X-Accel-Buffering", HeaderValue::from_static("no"));
    response
}

/// Generate tokens if `stream == false` (answering a list), or a stream of tokens.
#[utoipa::path(post, path = "/", tag = "Text Generation Inference",
    request_body = CompatGenerateRequest,
    responses(
        (status = 200, description = "Generated text", body = Vec<GenerateResponse>),
        GenerationErrors,
    ))]
async fn compat_generate(
    State(state): State<Arc<AppState>>,
    body: Result<Json<CompatGenerateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(ApiError::Body)?;
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
        (status = 422, description = "Tokenization error", body = ErrorResponse),
        (status = 503, description = "Model is loading", body = ErrorResponse),
    ))]
async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(ApiError::Body)?;
    let tokenizer = Arc::clone(&state.infer()?.tokenizer);
    let inputs = request.inputs.clone();
    let encoding =
        tokio::task::spawn_blocking(move || tokenizer.encode_char_offsets(inputs.as_str(), true))
            .await
            .map_err(|_| ApiError::Internal("tokenizer worker failed"))?
            .map_err(|e| InferError::Validation(ValidationError::Tokenizer(e.to_string())))?;
    // TGI's shape: the input's text under each token, with character offsets.
    let chars: Vec<char> = request.inputs.chars().collect();
    let tokens: Vec<_> = encoding
        .get_ids()
        .iter()
        .zip(encoding.get_offsets())
        .map(|(id, &(start, stop))| {
            let text: String =
                chars[start.min(chars.len())..stop.min(chars.len())].iter().collect();
            SimpleToken { id: *id, text, start, stop }
        })
        .collect();
    Ok(Json(tokens).into_response())
}

/// Health check: 200 once the model is loaded.
#[utoipa::path(get, path = "/health", tag = "Text Generation Inference",
    responses(
        (status = 200, description = "Ready"),
        (status = 503, description = "Unhealthy", body = ErrorResponse),
    ))]
async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.ready.get() {
        Some(_) => StatusCode::OK.into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "unhealthy", "healthcheck"),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "Text Generation Inference",
    responses((status = 200, description = "Prometheus text", body = String)))]
async fn render_metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
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
