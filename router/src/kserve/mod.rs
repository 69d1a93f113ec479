//! The KServe v2 / Open Inference Protocol family, as KServe, MLServer and Triton
//! serve it: `GET /v2` (server metadata), `/v2/health/live`, `/v2/health/ready`,
//! `GET /v2/models/{name}[/versions/{v}]` (model metadata), `.../ready`, Triton's
//! `.../config`, and `POST .../infer` (BYTES tensors, `tensor.rs`), Triton's
//! `.../generate` and `.../generate_stream` (`generate.rs`), with the error shape
//! `{"error"}`.
//!
//! The model is `text_input` BYTES [-1] → `text_output` BYTES [-1] at version `1`.
//! Served names contain slashes, so `/v2/models/...` is matched against them with the
//! action as the last segment. Metadata and readiness stay open; `infer` and
//! `generate` are behind `--api-key`. `infer`'s errors are 400 (the protocol's
//! rule); `generate`'s are KServe's 422 validation, 424 generation, 429 overloaded.

mod generate;
mod params;
mod tensor;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::{OpenApi, ToSchema};

use crate::infer::{Infer, InferError};
use crate::server::{AppState, Guarded, record_failure};
use crate::validation::ValidationError;

/// The one version served.
pub const VERSION: &str = "1";
/// The text tensor's name (any single BYTES input is taken too).
pub const TEXT_INPUT: &str = "text_input";
/// The generated text's name.
pub const TEXT_OUTPUT: &str = "text_output";

/// The protocol's paths and schemas in the OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(
        server_metadata,
        live,
        ready,
        model_metadata,
        model_ready,
        generate::infer_doc,
        generate::versioned_infer_doc,
        generate::generate_doc,
        generate::generate_stream_doc
    ),
    components(schemas(
        ServerMetadata,
        ModelMetadata,
        TensorMetadata,
        KsErrorBody,
        tensor::InferRequest,
        tensor::InputTensor,
        tensor::RequestedOutput,
        tensor::InferResponse,
        tensor::OutputTensor,
        generate::GenerateBody,
        generate::GenerateAnswer
    ))
)]
pub struct KServeApi;

/// Routes anyone may call: health, metadata, readiness.
pub fn open_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{*path}", get(model_get).fallback(model_other_method))
}

/// Routes behind `--api-key`.
pub fn generation_routes() -> Guarded {
    let routes = Router::new().route("/v2/models/{*path}", post(model_post));
    Guarded { routes, refuse: |status, message| KsError::new(status, message).into_response() }
}

/// Which kind of route answers, for its error statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    /// `infer`, metadata: 400 for bad input.
    Infer,
    /// `generate`, `generate_stream`: 422, 424.
    Generate,
}

/// An error in the protocol's shape `{"error": "..."}`.
#[derive(Debug)]
pub struct KsError {
    status: StatusCode,
    message: String,
}

/// The protocol's error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct KsErrorBody {
    error: String,
}

impl KsError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        KsError { status, message: message.into() }
    }

    fn not_found(message: impl Into<String>) -> Self {
        KsError::new(StatusCode::NOT_FOUND, message)
    }

    fn error_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 404 | 413 | 422 => "validation",
            401 | 403 => "authentication",
            429 => "overloaded",
            503 => "loading",
            _ => "generation",
        }
    }
}

impl IntoResponse for KsError {
    fn into_response(self) -> Response {
        record_failure(self.error_type());
        tracing::info!(status = self.status.as_u16(), "request refused: {}", self.message);
        (self.status, Json(KsErrorBody { error: self.message })).into_response()
    }
}

/// A request's model: the served name, and how its route answers errors.
#[derive(Clone, Debug)]
struct Ctx {
    state: Arc<AppState>,
    model: String,
    api: Api,
}

impl Ctx {
    /// Bad input, with the route's status.
    fn bad(&self, message: impl Into<String>) -> KsError {
        let status = match self.api {
            Api::Infer => StatusCode::BAD_REQUEST,
            Api::Generate => StatusCode::UNPROCESSABLE_ENTITY,
        };
        KsError::new(status, message)
    }

    /// The core's error, with the route's status.
    fn err(&self, e: InferError) -> KsError {
        let status = match (&e, self.api) {
            (InferError::Validation(_), _) => return self.bad(e.to_string()),
            (InferError::Overloaded, _) => StatusCode::TOO_MANY_REQUESTS,
            (InferError::Generation(_), Api::Infer) => StatusCode::INTERNAL_SERVER_ERROR,
            (InferError::Generation(_), Api::Generate) => StatusCode::FAILED_DEPENDENCY,
            (InferError::Loading { .. }, _) => {
                let message = format!("Model {} is loading", self.model);
                return KsError::new(StatusCode::SERVICE_UNAVAILABLE, message);
            }
            (InferError::Unavailable(_), _) => StatusCode::SERVICE_UNAVAILABLE,
        };
        KsError::new(status, e.to_string())
    }

    fn validation(&self, e: ValidationError) -> KsError {
        self.err(InferError::Validation(e))
    }

    fn infer(&self) -> Result<&Infer, KsError> {
        self.state.infer().map_err(|e| self.err(e))
    }
}

/// What a `/v2/models/...` path asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Metadata,
    Ready,
    Config,
    Infer,
    Generate,
    GenerateStream,
}

/// The served model and the action of a `/v2/models/{path}`; unknown models and
/// versions are 404.
fn resolve(served: &[String], path: &str, post: bool) -> Result<(String, Action), KsError> {
    let (rest, action) = match (post, path.rsplit_once('/')) {
        (false, Some((r, "ready"))) => (r, Action::Ready),
        (false, Some((r, "config"))) => (r, Action::Config),
        (false, _) => (path, Action::Metadata),
        (true, Some((r, "infer"))) => (r, Action::Infer),
        (true, Some((r, "generate"))) => (r, Action::Generate),
        (true, Some((r, "generate_stream"))) => (r, Action::GenerateStream),
        (true, _) => {
            return Err(KsError::not_found(format!(
                "POST /v2/models/{path}: expected .../infer, .../generate or .../generate_stream"
            )));
        }
    };
    let (model, version) = match rest.rsplit_once("/versions/") {
        Some((m, v)) if !v.contains('/') && !served.iter().any(|n| n == rest) => (m, Some(v)),
        _ => (rest, None),
    };
    if !served.iter().any(|n| n == model) {
        return Err(KsError::not_found(format!(
            "Request for unknown model: '{model}' is not found"
        )));
    }
    if let Some(v) = version
        && v != VERSION
    {
        return Err(KsError::not_found(format!(
            "Request for unknown model: '{model}' version {v} is not found"
        )));
    }
    Ok((served[0].clone(), action))
}

/// Server metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerMetadata {
    name: &'static str,
    version: &'static str,
    extensions: Vec<&'static str>,
}

/// A tensor's name, datatype and shape (-1: any length).
#[derive(Debug, Serialize, ToSchema)]
pub struct TensorMetadata {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<i64>,
}

/// Model metadata, with the generation parameters it reads.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelMetadata {
    name: String,
    versions: Vec<&'static str>,
    platform: &'static str,
    inputs: Vec<TensorMetadata>,
    outputs: Vec<TensorMetadata>,
    /// Request parameters read for generation: name → `{"datatype", "description"}`.
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
}

/// The server's name, version and protocol extensions.
#[utoipa::path(get, path = "/v2", tag = "KServe v2",
    responses((status = 200, description = "Server metadata", body = ServerMetadata)))]
async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "rill",
        version: env!("CARGO_PKG_VERSION"),
        extensions: vec!["binary_tensor_data", "generate", "model_configuration"],
    })
}

/// Liveness: 200 while the process serves HTTP, loading or not.
#[utoipa::path(get, path = "/v2/health/live", tag = "KServe v2",
    responses((status = 200, description = "Live", body = Object, example = json!({"live": true}))))]
async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

/// Readiness: 200 once the model is loaded, 503 before.
#[utoipa::path(get, path = "/v2/health/ready", tag = "KServe v2",
    responses(
        (status = 200, description = "Ready", body = Object, example = json!({"ready": true})),
        (status = 503, description = "Not ready", body = Object, example = json!({"ready": false})),
    ))]
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    readiness(&state, json!({}))
}

fn readiness(state: &AppState, mut body: Value) -> Response {
    let ready = state.serving();
    body["ready"] = json!(ready);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// A model's metadata (also `/v2/models/{model_name}/versions/1`).
#[utoipa::path(get, path = "/v2/models/{model_name}", tag = "KServe v2",
    params(("model_name" = String, Path, description = "A served model name (may contain `/`)")),
    responses(
        (status = 200, description = "Model metadata", body = ModelMetadata),
        (status = 404, description = "Unknown model or version", body = KsErrorBody),
    ))]
#[allow(dead_code)] // documents the `/v2/models/{*path}` route
async fn model_metadata() {}

/// A model's readiness (also `/v2/models/{model_name}/versions/1/ready`).
#[utoipa::path(get, path = "/v2/models/{model_name}/ready", tag = "KServe v2",
    params(("model_name" = String, Path, description = "A served model name (may contain `/`)")),
    responses(
        (status = 200, description = "Ready", body = Object, example = json!({"name": "llama", "ready": true})),
        (status = 404, description = "Unknown model or version", body = KsErrorBody),
        (status = 503, description = "Loading", body = Object, example = json!({"name": "llama", "ready": false})),
    ))]
#[allow(dead_code)] // documents the `/v2/models/{*path}` route
async fn model_ready() {}

async fn model_get(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
) -> Result<Response, KsError> {
    let (model, action) = resolve(&state.served_model_names, &path, false)?;
    let text = |name| TensorMetadata { name, datatype: "BYTES", shape: vec![-1] };
    Ok(match action {
        Action::Ready => readiness(&state, json!({"name": model})),
        Action::Config => Json(json!({
            "name": model,
            "platform": "rill",
            "backend": "rill",
            "max_batch_size": 0,
            "input": [{"name": TEXT_INPUT, "data_type": "TYPE_STRING", "dims": [-1]}],
            "output": [{"name": TEXT_OUTPUT, "data_type": "TYPE_STRING", "dims": [-1]}],
        }))
        .into_response(),
        _ => {
            let parameters = params::PARAMETERS
                .iter()
                .map(|(name, datatype, description)| {
                    (name.to_string(), json!({"datatype": datatype, "description": description}))
                })
                .collect();
            Json(ModelMetadata {
                name: model,
                versions: vec![VERSION],
                platform: "rill",
                inputs: vec![text(TEXT_INPUT)],
                outputs: vec![text(TEXT_OUTPUT)],
                parameters,
            })
            .into_response()
        }
    })
}

/// Any method but GET, HEAD and POST on `/v2/models/...`: 405 with the methods that path
/// takes (a single catch-all route serves them all, so axum's own `Allow` would list both).
async fn model_other_method(Path(path): Path<String>) -> Response {
    let post = ["infer", "generate", "generate_stream"]
        .iter()
        .any(|action| path.rsplit_once('/').is_some_and(|(_, last)| last == *action));
    let allow = if post { "POST" } else { "GET,HEAD" };
    let mut response =
        KsError::new(StatusCode::METHOD_NOT_ALLOWED, format!("allowed: {allow}")).into_response();
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

async fn model_post(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, KsError> {
    let (model, action) = resolve(&state.served_model_names, &path, true)?;
    let api = if action == Action::Infer { Api::Infer } else { Api::Generate };
    let ctx = Ctx { state, model, api };
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            KsError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request body is too large")
        } else {
            ctx.bad(r.body_text())
        }
    })?;
    ctx.infer()?;
    match action {
        Action::Infer => generate::infer(ctx, &headers, body).await,
        Action::Generate => generate::generate(ctx, body, false).await,
        _ => generate::generate(ctx, body, true).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_on_served_names_versions_and_actions() {
        let served = ["org/tiny-llama".to_string(), "tiny-llama".to_string()];
        let ok = |p: &str, post| resolve(&served, p, post).map_err(|e| e.message);
        let canonical = "org/tiny-llama".to_string();
        assert_eq!(ok("org/tiny-llama", false), Ok((canonical.clone(), Action::Metadata)));
        assert_eq!(ok("tiny-llama/versions/1", false), Ok((canonical.clone(), Action::Metadata)));
        assert_eq!(
            ok("org/tiny-llama/versions/1/ready", false),
            Ok((canonical.clone(), Action::Ready))
        );
        assert_eq!(ok("org/tiny-llama/config", false), Ok((canonical.clone(), Action::Config)));
        assert_eq!(ok("org/tiny-llama/infer", true), Ok((canonical.clone(), Action::Infer)));
        assert_eq!(
            ok("tiny-llama/versions/1/generate_stream", true),
            Ok((canonical, Action::GenerateStream))
        );
        assert_eq!(
            ok("other/infer", true),
            Err("Request for unknown model: 'other' is not found".into())
        );
        assert_eq!(
            ok("tiny-llama/versions/2/infer", true),
            Err("Request for unknown model: 'tiny-llama' version 2 is not found".into())
        );
        assert!(ok("tiny-llama", true).unwrap_err().contains("expected .../infer"));
    }
}
