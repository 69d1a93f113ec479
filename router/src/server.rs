//! The HTTP server: one axum app that mounts every API family on one port, and
//! what the families share — [`AppState`], the blocking validation pool, bearer
//! auth, CORS, the body limit, `/health`, `/metrics`, SSE framing and the OpenAPI
//! document.
//!
//! Each family is a module with its own wire types and error shape over the one
//! generation core (`infer.rs`): TGI's routes in `tgi/`, OpenAI's in `openai/`.
//! The port opens before the model is loaded; until [`AppState::ready`] is set,
//! `/health` answers 503 and generation routes answer 503 `loading`.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::stream::Stream;
use rill_proto::api::{ErrorResponse, Info};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::chat_template::ChatTemplates;
use crate::infer::{Infer, InferError};
use crate::metrics as m;
use crate::validation::{GenerationSpec, ValidRequest};
use crate::{openai, tgi};

/// Shared by every handler.
#[derive(Debug)]
pub struct AppState {
    /// Renders `/metrics` (absent in tests that install no recorder).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// `/info`'s answer; the token limits are filled in once the model is loaded.
    pub info: Info,
    /// The names a request's `model` may give (`--served-model-name`, else the
    /// `--model-id` as given and the directory's base name); the first is reported.
    pub served_model_names: Vec<String>,
    /// The model's chat template(s), if it has one (`--chat-template` overrides).
    pub chat_templates: Option<Arc<ChatTemplates>>,
    /// How the model writes tool calls by itself (`tool_choice: "auto"`), if known.
    pub tool_call_syntax: Option<openai::tools::ToolSyntax>,
    /// Set once the model has loaded.
    pub ready: OnceLock<Infer>,
    pub started: Instant,
    /// Seconds a load is expected to take (for `estimated_time`).
    pub estimated_load_secs: f64,
    /// Bounds concurrent tokenization jobs (`--validation-workers`).
    pub validation_workers: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// The generation core, or 503 while the model loads.
    pub fn infer(&self) -> Result<&Infer, InferError> {
        self.ready.get().ok_or_else(|| InferError::Loading {
            estimated_time: (self.estimated_load_secs - self.started.elapsed().as_secs_f64())
                .max(1.0),
        })
    }

    /// Run `f` (tokenizing, rendering a template, compiling a grammar: CPU work) on a
    /// blocking thread, at most `--validation-workers` at once. Counts the request.
    pub async fn on_validation_worker<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        F: FnOnce(&Infer) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<InferError> + Send + 'static,
    {
        metrics::counter!(m::REQUEST_COUNT).increment(1);
        self.infer()?;
        // Closed only if the server is shutting down.
        let _worker = self
            .validation_workers
            .acquire()
            .await
            .map_err(|_| InferError::Unavailable("shutting down"))?;
        let state = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(state.infer()?))
            .await
            .map_err(|_| InferError::Unavailable("validation worker failed"))?
    }

    /// Validate one request in the core's terms.
    pub async fn prepare(
        self: &Arc<Self>,
        spec: GenerationSpec,
    ) -> Result<ValidRequest, InferError> {
        self.on_validation_worker(move |infer| Ok::<_, InferError>(infer.prepare(spec)?)).await
    }
}

/// The OpenAPI document of every route (served at `/api-doc/openapi.json`, browsable
/// at `/docs`): each family's paths and schemas, plus the shared routes.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(health, render_metrics),
    tags(
        (name = "Text Generation Inference", description = "TGI-compatible text generation"),
        (name = "OpenAI", description = "OpenAI-compatible chat and text completions"),
    ),
    info(title = "Rill", description = "A streaming text-generation server with TGI's and OpenAI's APIs", license(name = "Apache-2.0"))
)]
pub struct ApiDoc;

/// The whole document: the shared routes and every family's.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(tgi::TgiApi::openapi());
    doc.merge(openai::OpenAiApi::openapi());
    doc
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

/// A family's generation routes, and what it answers a request without the key.
#[derive(Debug)]
pub struct Guarded {
    pub routes: Router<Arc<AppState>>,
    pub unauthorized: fn() -> Response,
}

pub fn router(state: Arc<AppState>, config: &ServerConfig) -> Router {
    let mut app = Router::new()
        .merge(SwaggerUi::new("/docs").url("/api-doc/openapi.json", openapi()))
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .merge(tgi::open_routes())
        .merge(openai::open_routes());
    for family in [tgi::generation_routes(), openai::generation_routes()] {
        let mut routes = family.routes;
        if let Some(key) = &config.api_key {
            let guard = ApiKey { key: key.as_str().into(), unauthorized: family.unauthorized };
            routes = routes
                .route_layer(middleware::from_fn_with_state(Arc::new(guard), require_api_key));
        }
        app = app.merge(routes);
    }
    let mut app = app.layer(DefaultBodyLimit::max(config.payload_limit)).with_state(state);
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

#[derive(Debug)]
struct ApiKey {
    key: Box<str>,
    unauthorized: fn() -> Response,
}

/// `Authorization: Bearer <key>`, compared in constant time.
async fn require_api_key(
    State(guard): State<Arc<ApiKey>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let key = &guard.key;
    let same = given.len() == key.len()
        && given.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same {
        next.run(request).await
    } else {
        metrics::counter!(m::REQUEST_FAILURE, "err" => "authentication").increment(1);
        (guard.unauthorized)()
    }
}

/// Count a refused or failed request by its `error_type` (every family calls this
/// from its one error mapping).
pub fn record_failure(error_type: &'static str) {
    metrics::counter!(m::REQUEST_FAILURE, "err" => error_type).increment(1);
}

/// TGI's error body, also used by the shared routes.
pub fn tgi_error(status: StatusCode, message: impl Into<String>, error_type: &str) -> Response {
    let body = ErrorResponse { error: message.into(), error_type: error_type.into() };
    (status, Json(body)).into_response()
}

/// One SSE `data:` event holding `value` as JSON.
pub fn sse_json<T: serde::Serialize>(value: &T) -> Result<Event, Infallible> {
    // Serializing our own plain structs cannot fail.
    Ok(Event::default().data(serde_json::to_string(value).unwrap_or_default()))
}

/// An SSE response that proxies must not buffer.
pub fn sse(events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    let mut response = Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    response.headers_mut().insert("X-Accel-Buffering", HeaderValue::from_static("no"));
    response
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
        None => tgi_error(StatusCode::SERVICE_UNAVAILABLE, "unhealthy", "healthcheck"),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "Text Generation Inference",
    responses((status = 200, description = "Prometheus text", body = String)))]
async fn render_metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}
