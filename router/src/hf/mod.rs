//! The Hugging Face Inference API family: `POST /models/{model_id}` (the model's task),
//! `POST /models/{model_id}/{task}`, `POST /models/{model_id}/pipeline/{task}` (what
//! `huggingface_hub` sends for embeddings) and `POST /pipeline/{task}`, with the API's
//! body `{"inputs", "parameters", "options"}` and error shape `{"error",
//! "estimated_time"?}`.
//!
//! Model ids contain slashes, so the path is matched against the served names, with a
//! known task name as the last segment. Tasks served: `text-generation` (TGI's
//! parameters under the API's bounds, `params.rs`; a list of inputs is batched through
//! the engine; `stream: true` answers TGI's stream), `conversational` (the past turns
//! rendered through the chat template), and `feature-extraction` /
//! `sentence-similarity` (`embeddings.rs`). Every other task of the API is a 400 naming
//! the served ones.
//!
//! `options.wait_for_model` (or `x-wait-for-model`) holds a request while the model
//! loads, up to `--wait-for-model-timeout`; without it a loading model is 503 with
//! `estimated_time` at once. `options.use_cache` (or `x-use-cache`, default on) answers
//! deterministic requests from the response cache, with `x-cache: HIT` or `MISS`.

mod embeddings;
mod params;
mod text;

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rill_proto::api::GenerateParameters;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};

use crate::infer::{Infer, InferError};
use crate::server::{AppState, Guarded, record_failure};
use crate::validation::ValidationError;

pub use params::TextGenerationParameters;

/// The Inference API's paths and schemas in the OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(model_task, model_named_task, pipeline),
    components(schemas(
        InferenceRequest,
        InferenceOptions,
        TextGenerationParameters,
        text::Conversation,
        text::GeneratedText,
        text::ConversationalAnswer,
        embeddings::EmbeddingParameters,
        embeddings::Direction,
        embeddings::SimilarityInputs,
        HfErrorBody
    ))
)]
pub struct HfApi;

/// The tasks this server answers.
pub const SERVED_TASKS: [&str; 4] =
    ["text-generation", "conversational", "feature-extraction", "sentence-similarity"];

/// The Inference API's other tasks: named in a 400, not a 404.
const OTHER_TASKS: &[&str] = &[
    "audio-classification",
    "audio-to-audio",
    "automatic-speech-recognition",
    "depth-estimation",
    "document-question-answering",
    "fill-mask",
    "image-classification",
    "image-segmentation",
    "image-text-to-text",
    "image-to-image",
    "image-to-text",
    "object-detection",
    "question-answering",
    "summarization",
    "table-question-answering",
    "tabular-classification",
    "tabular-regression",
    "text-classification",
    "text-ranking",
    "text-to-audio",
    "text-to-image",
    "text-to-speech",
    "text-to-video",
    "text2text-generation",
    "token-classification",
    "translation",
    "video-classification",
    "visual-question-answering",
    "zero-shot-classification",
    "zero-shot-image-classification",
    "zero-shot-object-detection",
];

fn is_task(name: &str) -> bool {
    SERVED_TASKS.contains(&name) || OTHER_TASKS.contains(&name)
}

/// Routes behind `--api-key`.
pub fn generation_routes() -> Guarded {
    let routes = Router::new()
        .route("/models/{*path}", post(models))
        .route("/pipeline/{task}", post(pipeline));
    Guarded { routes, refuse: |status, message| HfError::new(status, message).into_response() }
}

/// An error in the Inference API's shape.
#[derive(Debug)]
pub struct HfError {
    pub status: StatusCode,
    pub message: String,
    pub estimated_time: Option<f64>,
}

/// The Inference API's error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct HfErrorBody {
    error: String,
    /// Seconds until the request may succeed (503 loading, 429 overloaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    estimated_time: Option<f64>,
}

impl HfError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        HfError { status, message: message.into(), estimated_time: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        HfError::new(StatusCode::BAD_REQUEST, message)
    }

    /// The core's error; `model` names the model in a loading message.
    fn from_infer(e: InferError, model: &str, infer: Option<&Infer>) -> Self {
        match e {
            InferError::Validation(v) => {
                HfError::bad_request(InferError::Validation(v).to_string())
            }
            InferError::Overloaded => HfError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: "Model is overloaded".into(),
                estimated_time: infer.map(Infer::estimated_wait),
            },
            InferError::Generation(m) => HfError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Request failed during generation: {m}"),
            ),
            InferError::Loading { estimated_time } => HfError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!("Model {model} is currently loading"),
                estimated_time: Some(estimated_time),
            },
            InferError::Unavailable(m) => HfError::new(StatusCode::SERVICE_UNAVAILABLE, m),
        }
    }

    fn error_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 404 | 413 | 422 => "validation",
            401 | 403 => "authentication",
            429 => "overloaded",
            503 if self.estimated_time.is_some() => "loading",
            _ => "generation",
        }
    }
}

impl From<ValidationError> for HfError {
    fn from(e: ValidationError) -> Self {
        HfError::bad_request(InferError::Validation(e).to_string())
    }
}

impl IntoResponse for HfError {
    fn into_response(self) -> Response {
        record_failure(self.error_type());
        tracing::info!(status = self.status.as_u16(), "request refused: {}", self.message);
        let body = HfErrorBody { error: self.message, estimated_time: self.estimated_time };
        (self.status, Json(body)).into_response()
    }
}

/// A request's model context: the served name and the core's errors in this family.
#[derive(Clone)]
struct Ctx {
    state: Arc<AppState>,
    model: String,
}

impl Ctx {
    fn err(&self, e: InferError) -> HfError {
        HfError::from_infer(e, &self.model, self.state.ready.get())
    }

    fn infer(&self) -> Result<&Infer, HfError> {
        self.state.infer().map_err(|e| self.err(e))
    }
}

/// `options`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct InferenceOptions {
    /// Answer deterministic requests from the response cache (default true).
    #[serde(default)]
    pub use_cache: Option<bool>,
    /// Hold the request while the model loads instead of answering 503 (default false).
    #[serde(default)]
    pub wait_for_model: Option<bool>,
}

/// The Inference API's request body.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct InferenceRequest {
    /// A string, a list of strings, a conversation, or `{"source_sentence", "sentences"}`,
    /// by task.
    #[schema(value_type = Object)]
    pub inputs: Value,
    /// The task's parameters.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Option<Value>,
    #[serde(default)]
    pub options: InferenceOptions,
    /// `text-generation` only: answer TGI's event stream.
    #[serde(default)]
    pub stream: bool,
}

/// What the request's options and headers ask for.
#[derive(Clone, Copy, Debug)]
struct Wanted {
    use_cache: bool,
    wait_for_model: bool,
}

fn header_flag(headers: &HeaderMap, name: &str) -> Option<bool> {
    let v = headers.get(name)?.to_str().ok()?.trim().to_ascii_lowercase();
    Some(matches!(v.as_str(), "1" | "true" | "yes"))
}

fn wanted(options: &InferenceOptions, headers: &HeaderMap) -> Wanted {
    Wanted {
        use_cache: options.use_cache.or(header_flag(headers, "x-use-cache")).unwrap_or(true),
        wait_for_model: options
            .wait_for_model
            .or(header_flag(headers, "x-wait-for-model"))
            .unwrap_or(false),
    }
}

fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<InferenceRequest, HfError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HfError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request body is too large")
        } else {
            HfError::bad_request(r.body_text())
        }
    })?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| HfError::bad_request(format!("The request body is not valid JSON: {e}")))?;
    serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        HfError::bad_request(format!("Invalid value for `{path}`: {}", e.into_inner()))
    })
}

/// `parameters` as the task's type, naming the field that is wrong.
fn task_parameters<T: serde::de::DeserializeOwned + Default>(
    parameters: Option<Value>,
) -> Result<T, HfError> {
    match parameters {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_path_to_error::deserialize(&v).map_err(|e| {
            let mut path = e.path().to_string();
            let mut inner = e.into_inner().to_string();
            // TGI's fields are flattened into `text-generation`'s and lose their path:
            // find it by reading them alone.
            if path == "."
                && let Err(e) = serde_path_to_error::deserialize::<_, GenerateParameters>(&v)
            {
                path = e.path().to_string();
                inner = e.into_inner().to_string();
            }
            let field =
                if path == "." { "parameters".into() } else { format!("parameters.{path}") };
            HfError::bad_request(format!("Invalid value for `{field}`: {inner}"))
        }),
    }
}

/// The served model and the task a `/models/...` path asks for.
fn resolve(state: &AppState, path: &str) -> Result<(String, Option<String>), HfError> {
    let served = &state.served_model_names;
    let canonical = served[0].clone();
    if served.iter().any(|n| n == path) {
        return Ok((canonical, None));
    }
    if let Some((model, task)) = path.rsplit_once('/')
        && is_task(task)
    {
        let model = model.strip_suffix("/pipeline").unwrap_or(model);
        if served.iter().any(|n| n == model) {
            return Ok((canonical, Some(task.to_string())));
        }
    }
    Err(HfError::new(StatusCode::NOT_FOUND, format!("Model {path} does not exist")))
}

/// Answer `model`'s task `task` (the model's own without one).
#[utoipa::path(post, path = "/models/{model_id}", tag = "Inference API",
    params(("model_id" = String, Path, description = "A served model name (may contain `/`)")),
    request_body = InferenceRequest,
    responses(
        (status = 200, description = "The task's answer: `text-generation` answers a list of `GeneratedText` (a list of lists for a list of inputs)", body = Vec<text::GeneratedText>),
        (status = 400, description = "Bad input or an unserved task", body = HfErrorBody),
        (status = 401, description = "Missing or unknown API key", body = HfErrorBody),
        (status = 403, description = "The API key is not scoped to this model", body = HfErrorBody),
        (status = 404, description = "Unknown model", body = HfErrorBody),
        (status = 429, description = "Overloaded, with `estimated_time`", body = HfErrorBody),
        (status = 503, description = "Loading, with `estimated_time`", body = HfErrorBody),
    ))]
#[allow(dead_code)] // documents the `/models/{*path}` route
async fn model_task() {}

/// Answer `model`'s task `task` (also `/models/{model_id}/pipeline/{task}`).
#[utoipa::path(post, path = "/models/{model_id}/{task}", tag = "Inference API",
    params(
        ("model_id" = String, Path, description = "A served model name (may contain `/`)"),
        ("task" = String, Path, description = "text-generation, conversational, feature-extraction or sentence-similarity"),
    ),
    request_body = InferenceRequest,
    responses(
        (status = 200, description = "The task's answer", body = Object),
        (status = 400, description = "Bad input or an unserved task", body = HfErrorBody),
        (status = 404, description = "Unknown model", body = HfErrorBody),
        (status = 429, description = "Overloaded", body = HfErrorBody),
        (status = 503, description = "Loading", body = HfErrorBody),
    ))]
#[allow(dead_code)] // documents the `/models/{*path}` route
async fn model_named_task() {}

async fn models(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HfError> {
    let (model, task) = resolve(&state, &path)?;
    // The model's own task: what /info reports as its pipeline tag.
    let task = task
        .or_else(|| state.info.model_pipeline_tag.clone())
        .unwrap_or_else(|| "text-generation".into());
    dispatch(Ctx { state, model }, &task, &headers, body).await
}

/// Answer the served model's task `task`.
#[utoipa::path(post, path = "/pipeline/{task}", tag = "Inference API",
    params(("task" = String, Path, description = "text-generation, conversational, feature-extraction or sentence-similarity")),
    request_body = InferenceRequest,
    responses(
        (status = 200, description = "The task's answer", body = Object),
        (status = 400, description = "Bad input or an unserved task", body = HfErrorBody),
        (status = 429, description = "Overloaded", body = HfErrorBody),
        (status = 503, description = "Loading", body = HfErrorBody),
    ))]
async fn pipeline(
    State(state): State<Arc<AppState>>,
    Path(task): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HfError> {
    let model = state.served_model_names[0].clone();
    dispatch(Ctx { state, model }, &task, &headers, body).await
}

async fn dispatch(
    ctx: Ctx,
    task: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HfError> {
    if !SERVED_TASKS.contains(&task) {
        let what = if is_task(task) { "is not served by this model" } else { "is unknown" };
        return Err(HfError::bad_request(format!(
            "Task `{task}` {what}. Served tasks: {}",
            SERVED_TASKS.join(", ")
        )));
    }
    let request = parse_body(body)?;
    let wanted = wanted(&request.options, headers);
    if wanted.wait_for_model {
        ctx.state.wait_ready().await.map_err(|e| ctx.err(e))?;
    } else {
        ctx.infer()?;
    }
    match task {
        "text-generation" => text::text_generation(ctx, request, wanted).await,
        "conversational" => text::conversational(ctx, request, wanted).await,
        "feature-extraction" => embeddings::feature_extraction(ctx, request, wanted).await,
        _ => embeddings::sentence_similarity(ctx, request, wanted).await,
    }
}

/// The cache key of a request: the model, the task, the inputs and the parameters as
/// the task understood them (defaults filled in, so equivalent requests share it).
fn cache_key(model: &str, task: &str, inputs: &Value, parameters: &impl Serialize) -> String {
    let parameters = serde_json::to_string(parameters).unwrap_or_default();
    format!("{model}\n{task}\n{inputs}\n{parameters}")
}

/// The answer `work` computes, or the cached bytes of an earlier one. `key` is `None`
/// for requests whose answer may change (sampled without a seed, time-limited).
async fn answer<F>(
    ctx: &Ctx,
    key: Option<String>,
    wanted: Wanted,
    work: F,
) -> Result<Response, HfError>
where
    F: Future<Output = Result<Value, HfError>>,
{
    let key = key.filter(|_| wanted.use_cache);
    let cache = &ctx.state.response_cache;
    if let Some(k) = &key
        && let Some(bytes) = cache.get(k)
    {
        return Ok(json_bytes(bytes, "HIT"));
    }
    let value = work.await?;
    let bytes = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
    if let Some(k) = key {
        cache.put(k, bytes.clone());
    }
    Ok(json_bytes(bytes, "MISS"))
}

fn json_bytes(bytes: Bytes, cache: &'static str) -> Response {
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-cache", HeaderValue::from_static(cache));
    response
}

/// `inputs` as the list of texts it holds, and whether it was a list.
fn texts(inputs: &Value) -> Result<(Vec<String>, bool), HfError> {
    let bad = || HfError::bad_request("`inputs` must be a string or a list of strings");
    match inputs {
        Value::String(s) => Ok((vec![s.clone()], false)),
        Value::Array(items) if !items.is_empty() => {
            let texts = items.iter().map(|v| v.as_str().map(String::from).ok_or_else(bad));
            Ok((texts.collect::<Result<_, _>>()?, true))
        }
        _ => Err(bad()),
    }
}
