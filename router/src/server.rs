//! The HTTP server: one axum app that mounts every API family on one port, and
//! what the families share — [`AppState`], the blocking validation pool, bearer
//! auth, CORS, the body limit, `/health`, `/metrics`, SSE framing and the OpenAPI
//! document.
//!
//! Each family is a module with its own wire types and error shape over the one
//! generation core (`infer.rs`): TGI's routes in `tgi/`, OpenAI's in `openai/`, the
//! Hugging Face Inference API's in `hf/`, the Open Inference Protocol's in `kserve/`.
//! The port opens before the model is loaded; until [`AppState::ready`] is set,
//! `/health` answers 503 and generation routes answer 503 `loading`.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use rill_proto::api::{ErrorResponse, Info};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::{ApiKeys, KeyGuard, Refuse, require_api_key};
use crate::chat_template::ChatTemplates;
use crate::embeddings::PoolingConfig;
use crate::infer::{Finished, Generation, Hidden, Infer, InferError, TokenEvent};
use crate::metrics as m;
use crate::response_cache::ResponseCache;
use crate::validation::{GenerationSpec, Prompt, ValidRequest, ValidationError};
use crate::{hf, kserve, openai, tgi};

/// Shared by every handler.
#[derive(Debug)]
pub struct AppState {
    /// Renders `/metrics` (absent in tests that install no recorder).
    pub metrics: Option<m::Exporter>,
    /// `/info`'s answer; the token limits are filled in once the model is loaded.
    pub info: Info,
    /// The names a request's `model` may give (`--served-model-name`, else the
    /// `--model-id` as given and the directory's base name); the first is reported.
    pub served_model_names: Vec<String>,
    /// The model's chat template(s), if it has one (`--chat-template` overrides).
    pub chat_templates: Option<Arc<ChatTemplates>>,
    /// How the model writes tool calls by itself (`tool_choice: "auto"`), if known.
    pub tool_call_syntax: Option<openai::tools::ToolSyntax>,
    /// Set once the model has loaded ([`AppState::set_ready`]).
    pub ready: OnceLock<Infer>,
    /// Wakes requests waiting for the model ([`AppState::wait_ready`]).
    pub loaded: tokio::sync::Notify,
    /// Longest a request may wait for the model to load (`wait_for_model`).
    pub wait_for_model_timeout: std::time::Duration,
    /// The Inference API's answers to deterministic requests.
    pub response_cache: ResponseCache,
    /// How embeddings are pooled (the model directory's sentence-transformers config).
    pub pooling: PoolingConfig,
    pub started: Instant,
    /// Seconds a load is expected to take (for `estimated_time`).
    pub estimated_load_secs: f64,
    /// Bounds concurrent tokenization jobs (`--validation-workers`).
    pub validation_workers: Arc<tokio::sync::Semaphore>,
    /// Set on SIGTERM/SIGINT: readiness answers 503 and new requests are refused (at
    /// validation, which every request passes through) while those in flight finish.
    pub draining: std::sync::atomic::AtomicBool,
}

impl AppState {
    /// The generation core, or 503 while the model loads.
    pub fn infer(&self) -> Result<&Infer, InferError> {
        self.ready.get().ok_or_else(|| InferError::Loading {
            estimated_time: (self.estimated_load_secs - self.started.elapsed().as_secs_f64())
                .max(1.0),
        })
    }

    /// Whether to take traffic (readiness: `/health`, `/v2/health/ready`): the model is
    /// loaded, its engine thread alive and the server not draining.
    pub fn serving(&self) -> bool {
        !self.draining.load(std::sync::atomic::Ordering::Relaxed)
            && self.ready.get().is_some_and(|infer| infer.engine_failure().is_none())
    }

    /// Stop taking requests (503) and go unready; those in flight go on.
    pub fn drain(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The model has loaded: serve it, and wake the requests waiting for it.
    pub fn set_ready(&self, infer: Infer) {
        let _ = self.ready.set(infer);
        self.loaded.notify_waiters();
    }

    /// The generation core, waiting up to `wait_for_model_timeout` for it to load (503
    /// `Loading` after).
    pub async fn wait_ready(&self) -> Result<&Infer, InferError> {
        let deadline = tokio::time::Instant::now() + self.wait_for_model_timeout;
        loop {
            let loaded = self.loaded.notified();
            tokio::pin!(loaded);
            // Registered before the check: a load finishing in between still wakes us.
            loaded.as_mut().enable();
            if let Some(infer) = self.ready.get() {
                return Ok(infer);
            }
            if tokio::time::timeout_at(deadline, loaded).await.is_err() {
                return self.infer();
            }
        }
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
        // Refused (503 draining or dead, 429 full) before any tokenizing or compiling.
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(InferError::Unavailable("the server is shutting down".into()).into());
        }
        let _admission = self.infer()?.admit()?;
        // Closed only if the server is shutting down.
        let _worker = self
            .validation_workers
            .acquire()
            .await
            .map_err(|_| InferError::Unavailable("shutting down".into()))?;
        let state = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(state.infer()?))
            .await
            .map_err(|_| InferError::Unavailable("validation worker failed".into()))?
    }

    /// Validate one request in the core's terms.
    pub async fn prepare(
        self: &Arc<Self>,
        spec: GenerationSpec,
    ) -> Result<ValidRequest, InferError> {
        self.on_validation_worker(move |infer| Ok::<_, InferError>(infer.prepare(spec)?)).await
    }
}

/// One prompt of a batch ([`AppState::generate_all`]).
#[derive(Clone, Debug)]
pub struct Ask {
    pub spec: GenerationSpec,
    /// Answers wanted: n samples seeded `seed`, `seed + 1`, ... when a seed is given
    /// ([`ValidRequest::choices`]).
    pub n: usize,
    /// A soft limit: generation stops with what it has ([`Generation::finish_by`]).
    pub max_time: Option<Duration>,
}

/// One prompt's answers, with its text (for `return_full_text`).
#[derive(Debug)]
pub struct Answers {
    pub inputs: String,
    pub finished: Vec<Finished>,
}

impl AppState {
    /// Answer every prompt of a batch: validate each, start all their generations at
    /// once (a full server refuses the whole batch with 429, nothing half-run), and run
    /// them side by side to the end or their `max_time`.
    pub async fn generate_all(
        self: &Arc<Self>,
        asks: Vec<Ask>,
    ) -> Result<Vec<Answers>, InferError> {
        let arrived = Instant::now();
        let mut valid = Vec::new();
        let mut shapes = Vec::with_capacity(asks.len());
        for ask in asks {
            let deadline = ask.max_time.map(|t| tokio::time::Instant::from_std(arrived + t));
            let seed = ask.spec.seed;
            let request = self.prepare(ask.spec).await?;
            shapes.push((ask.n, deadline, request.inputs.clone()));
            valid.extend(request.choices(ask.n, seed));
        }
        let mut generations = self.infer()?.start_all(valid, arrived)?.into_iter();
        let mut runs = Vec::new();
        for (n, deadline, _) in &shapes {
            runs.extend(generations.by_ref().take(*n).map(|g| g.finish_by(*deadline)));
        }
        let mut done = futures::future::try_join_all(runs).await?.into_iter();
        Ok(shapes
            .into_iter()
            .map(|(n, _, inputs)| Answers { inputs, finished: done.by_ref().take(n).collect() })
            .collect())
    }
}

/// How an embedding prompt longer than `max_input_tokens` is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// It is refused (400/422).
    Refuse,
    /// Its first tokens are kept (TEI's `truncation_direction: right`).
    KeepFirst,
    /// Its last tokens are kept.
    KeepLast,
}

impl AppState {
    /// Embed every prompt: validate them all (on a validation worker), then run them side
    /// by side through the engine.
    pub async fn embed_all(
        self: &Arc<Self>,
        prompts: Vec<Prompt>,
        cut: Cut,
    ) -> Result<Vec<Hidden>, InferError> {
        let arrived = Instant::now();
        let ids = self
            .on_validation_worker(move |infer| {
                let max = infer.limits.max_input_tokens;
                prompts
                    .into_iter()
                    .map(|prompt| {
                        let ids = match (cut, prompt) {
                            (Cut::KeepFirst, Prompt::Text { text, add_special_tokens }) => {
                                let encoding = infer
                                    .tokenizer
                                    .encode(text.as_str(), add_special_tokens)
                                    .map_err(|e| ValidationError::Tokenizer(e.to_string()))?;
                                let mut ids = encoding.get_ids().to_vec();
                                ids.truncate(max);
                                infer.prepare_embedding(Prompt::Tokens(ids), None)
                            }
                            (Cut::KeepFirst, Prompt::Tokens(mut ids)) => {
                                ids.truncate(max);
                                infer.prepare_embedding(Prompt::Tokens(ids), None)
                            }
                            (Cut::KeepLast, prompt) => infer.prepare_embedding(prompt, Some(max)),
                            (Cut::Refuse, prompt) => infer.prepare_embedding(prompt, None),
                        };
                        Ok::<_, InferError>(ids?)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        let infer = self.infer()?;
        futures::future::try_join_all(ids.into_iter().map(|p| infer.embed(p, arrived))).await
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
        (name = "Inference API", description = "Hugging Face Inference API tasks"),
        (name = "KServe v2", description = "The Open Inference Protocol (KServe, MLServer, Triton)"),
    ),
    info(title = "Rill", description = "A streaming text-generation server with TGI's, OpenAI's, the Hugging Face Inference API and the Open Inference Protocol (KServe v2)", license(name = "Apache-2.0"))
)]
pub struct ApiDoc;

/// HTTP-level settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest request body in bytes (413 beyond).
    pub payload_limit: usize,
    /// When set, inference routes need `Authorization: Bearer <key>` of one of these keys
    /// (401 otherwise), scoped to this model (403 otherwise).
    pub api_keys: Option<Arc<ApiKeys>>,
    /// Origins allowed to call from a browser; none = no CORS headers.
    pub cors_allow_origin: Vec<String>,
}

/// A family's inference routes, and how it refuses a request without a valid key.
#[derive(Debug)]
pub struct Guarded {
    pub routes: Router<Arc<AppState>>,
    pub refuse: Refuse,
}

pub fn router(state: Arc<AppState>, config: &ServerConfig) -> Router {
    let mut app = Router::new()
        .merge(SwaggerUi::new("/docs").external_url_unchecked(
            "/api-doc/openapi.json",
            crate::api_doc::document(&state.served_model_names),
        ))
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .merge(tgi::open_routes())
        .merge(openai::open_routes())
        .merge(kserve::open_routes());
    let served: Arc<[String]> = state.served_model_names.clone().into();
    for family in [
        tgi::generation_routes(),
        openai::generation_routes(),
        hf::generation_routes(),
        kserve::generation_routes(),
    ] {
        let mut routes = family.routes;
        if let Some(keys) = &config.api_keys {
            let guard = KeyGuard {
                keys: Arc::clone(keys),
                served: Arc::clone(&served),
                refuse: family.refuse,
            };
            routes = routes
                .route_layer(middleware::from_fn_with_state(Arc::new(guard), require_api_key));
        }
        app = app.merge(routes);
    }
    let mut app = app
        .layer(DefaultBodyLimit::max(config.payload_limit))
        .layer(middleware::from_fn(crate::request_id::layer))
        .with_state(state);
    if !config.cors_allow_origin.is_empty() {
        let origins: Vec<HeaderValue> =
            config.cors_allow_origin.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        app = app.layer(
            CorsLayer::new()
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([
                    header::CONTENT_TYPE,
                    header::AUTHORIZATION,
                    crate::request_id::HEADER,
                ])
                .expose_headers([crate::request_id::HEADER])
                .allow_origin(AllowOrigin::list(origins)),
        );
    }
    app
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
    Ok(json_event(value))
}

/// An SSE `data:` event holding `value` as JSON.
pub fn json_event<T: serde::Serialize>(value: &T) -> Event {
    // Serializing our own plain structs cannot fail.
    Event::default().data(serde_json::to_string(value).unwrap_or_default())
}

/// One generation's tokens as an SSE response, an `event` per token. It waits for the
/// first token, so that a failure before it is answered with its real status (`Err`);
/// a failure after it ends the stream with `error`'s event (and is counted).
pub async fn stream_tokens<F, G>(
    mut generation: Generation,
    mut event: F,
    error: G,
) -> Result<Response, InferError>
where
    F: FnMut(&Generation, TokenEvent) -> Event + Send + 'static,
    G: Fn(&InferError) -> Event + Send + 'static,
{
    let first = match generation.next().await {
        Some(token) => event(&generation, token?),
        None => return Err(InferError::Generation("no token generated".into())),
    };
    let first = stream::once(async move { Ok(first) });
    let rest = stream::unfold(Some((generation, event, error)), |state| async move {
        let (mut generation, mut event, error) = state?;
        match generation.next().await? {
            Ok(token) => {
                let e = event(&generation, token);
                Some((Ok(e), Some((generation, event, error))))
            }
            Err(e) => {
                tracing::warn!(parent: &generation.span, seq_id = generation.id.0, error = %e, "stream failed");
                record_failure(e.error_type());
                Some((Ok(error(&e)), None))
            }
        }
    });
    Ok(sse(first.chain(rest)))
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
    if state.serving() {
        StatusCode::OK.into_response()
    } else {
        tgi_error(StatusCode::SERVICE_UNAVAILABLE, "unhealthy", "healthcheck")
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "Text Generation Inference",
    responses((status = 200, description = "Prometheus text", body = String)))]
async fn render_metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}
