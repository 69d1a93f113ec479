//! `infer`, `generate` and `generate_stream`: the protocol's requests onto the one
//! generation core.
//!
//! `infer` takes the text tensor (`text_input`, or the one BYTES input whatever its
//! name: MLServer's examples say `text` or `args`) and answers `text_output` in its
//! shape, one generation per string, all started together; other inputs must be
//! one-element parameter tensors. Outputs are binary when asked (an output's
//! `binary_data`, else the request's `binary_data_output`), JSON otherwise.
//! `generate` takes `{"text_input", "parameters", ...}` and answers `text_output`;
//! `generate_stream` sends one SSE event per token whose `text_output`s concatenate to
//! the answer.

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use rill_proto::api::{Details, StreamDetails};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::params::{self, is_parameter};
use super::tensor::{
    self, Elements, InferRequest, InferResponse, OutputTensor, RequestedOutput, Tensor,
};
use super::{Ctx, KsError, KsErrorBody, TEXT_INPUT, TEXT_OUTPUT, VERSION};
use crate::infer::{Generation, InferError, TokenEvent};
use crate::server::{Answers, Ask, json_event, stream_tokens};
use crate::tgi::{self, Options};

/// The errors every model route answers, `infer` and `generate` alike (documentation only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum ModelRouteErrors {
    /// Missing or unknown API key (with `--api-key`)
    #[response(status = 401)]
    Unauthorized(KsErrorBody),
    /// The API key is not scoped to this model
    #[response(status = 403)]
    Forbidden(KsErrorBody),
    /// Unknown model or version
    #[response(status = 404)]
    NotFound(KsErrorBody),
    /// The body is larger than `--payload-limit`
    #[response(status = 413)]
    TooLarge(KsErrorBody),
    /// Overloaded
    #[response(status = 429)]
    Overloaded(KsErrorBody),
    /// Loading, or shutting down
    #[response(status = 503)]
    Unavailable(KsErrorBody),
}

/// Run an inference request (also `/v2/models/{model_name}/versions/1/infer`).
#[utoipa::path(post, path = "/v2/models/{model_name}/infer", tag = "KServe v2",
    params(("model_name" = String, Path, description = "A served model name (may contain `/`)")),
    request_body(content = tensor::InferRequest, description = "JSON, or Triton's binary tensor data extension: this JSON (its length in `Inference-Header-Content-Length`) followed by the tensors' bytes"),
    responses(
        (status = 200, description = "`text_output`, in the input's shape (binary outputs follow the JSON, its length in `Inference-Header-Content-Length`)", body = tensor::InferResponse),
        (status = 400, description = "Bad tensors or parameters, or a body that is not the protocol's JSON", body = KsErrorBody),
        (status = 500, description = "Generation failed (the protocol's status for it)", body = KsErrorBody),
        ModelRouteErrors,
    ))]
#[allow(dead_code)] // documents the `/v2/models/{*path}` route
pub(super) async fn infer_doc() {}

/// Run an inference request on a version (`1`).
#[utoipa::path(post, path = "/v2/models/{model_name}/versions/{model_version}/infer", tag = "KServe v2",
    params(
        ("model_name" = String, Path, description = "A served model name (may contain `/`)"),
        ("model_version" = String, Path, description = "`1`, the one version served"),
    ),
    request_body = tensor::InferRequest,
    responses(
        (status = 200, description = "`text_output`", body = tensor::InferResponse),
        (status = 400, description = "Bad tensors or parameters, or a body that is not the protocol's JSON", body = KsErrorBody),
        (status = 500, description = "Generation failed (the protocol's status for it)", body = KsErrorBody),
        ModelRouteErrors,
    ))]
#[allow(dead_code)] // documents the `/v2/models/{*path}` route
pub(super) async fn versioned_infer_doc() {}

/// Generate text (Triton's generate extension; also under `/versions/1`).
#[utoipa::path(post, path = "/v2/models/{model_name}/generate", tag = "KServe v2",
    params(("model_name" = String, Path, description = "A served model name (may contain `/`)")),
    request_body = GenerateBody,
    responses(
        (status = 200, description = "The generated text", body = GenerateAnswer),
        (status = 422, description = "Bad input or parameters, or a body that is not JSON", body = KsErrorBody),
        (status = 424, description = "Generation failed", body = KsErrorBody),
        ModelRouteErrors,
    ))]
#[allow(dead_code)] // documents the `/v2/models/{*path}` route
pub(super) async fn generate_doc() {}

/// Generate text as server-sent events, one per token (also under `/versions/1`).
#[utoipa::path(post, path = "/v2/models/{model_name}/generate_stream", tag = "KServe v2",
    params(("model_name" = String, Path, description = "A served model name (may contain `/`)")),
    request_body = GenerateBody,
    responses(
        (status = 200, description = "One `data:` event per token, its `text_output` the new text; the last carries `details` when asked; a failure mid-stream is an event `{\"error\"}`", body = GenerateChunk, content_type = "text/event-stream"),
        (status = 422, description = "Bad input or parameters, or a body that is not JSON", body = KsErrorBody),
        (status = 424, description = "Generation failed", body = KsErrorBody),
        ModelRouteErrors,
    ))]
#[allow(dead_code)] // documents the `/v2/models/{*path}` route
pub(super) async fn generate_stream_doc() {}

/// `generate`'s body: the text, `parameters`, and generation parameters as top-level
/// keys too (as Triton's TensorRT-LLM models take them).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // documents the body, which is read as a map (any key may be a parameter)
pub struct GenerateBody {
    pub text_input: String,
    /// `max_tokens`, `temperature` (0: greedy), `stop`, `seed`, TGI's names, ...
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

/// `generate`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct GenerateAnswer {
    model_name: String,
    model_version: &'static str,
    text_output: String,
    /// TGI's details, when `details` was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    details: Option<Details>,
}

/// One `generate_stream` event.
#[derive(Debug, Serialize, ToSchema)]
pub struct GenerateChunk {
    model_name: String,
    model_version: &'static str,
    text_output: String,
    /// On the last event, when `details` was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    details: Option<StreamDetails>,
}

/// An answer's text: the generated text, after the prompt with `return_full_text`.
fn output_text(options: Options, inputs: &str, generated: &str) -> String {
    if options.return_full_text { format!("{inputs}{generated}") } else { generated.to_string() }
}

pub(super) async fn infer(ctx: Ctx, headers: &HeaderMap, body: Bytes) -> Result<Response, KsError> {
    let (json, binary) = tensor::split_body(headers, &body).map_err(|m| ctx.bad(m))?;
    let request: InferRequest =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&json))
            .map_err(|e| {
                let path = e.path().to_string();
                ctx.bad(format!("Invalid request at `{path}`: {}", e.into_inner()))
            })?;
    let tensors = tensor::decode_inputs(request.inputs, &binary).map_err(|m| ctx.bad(m))?;
    let binary_out = binary_output(&ctx, request.outputs.as_deref(), &request.parameters)?;
    let (text, parameters) = text_and_parameters(&ctx, tensors, request.parameters)?;
    let parameters = params::generate_parameters(&parameters).map_err(|m| ctx.bad(m))?;
    let Elements::Bytes(strings) = text.elements else { unreachable!("checked BYTES") };
    let limits = ctx.infer()?.limits.clone();
    let mut asks = Vec::with_capacity(strings.len());
    let mut options = None;
    for s in strings {
        let s = String::from_utf8(s)
            .map_err(|_| ctx.bad(format!("input `{}` is not UTF-8 text", text.name)))?;
        let (spec, o) = params::to_spec(s, parameters.clone(), false, &limits)
            .map_err(|e| ctx.validation(e))?;
        asks.push(Ask { spec, n: 1, max_time: None });
        options = Some(o);
    }
    let answers = ctx.state.generate_all(asks).await.map_err(|e| ctx.err(e))?;
    let texts = answers.into_iter().map(|Answers { inputs, finished }| {
        let generated = finished.first().map(|f| f.text.as_str()).unwrap_or_default();
        options.map(|o| output_text(o, &inputs, generated)).unwrap_or_default()
    });
    let texts: Vec<String> = texts.collect();
    let mut out_parameters = Map::new();
    out_parameters.insert("content_type".into(), "str".into());
    let (data, raw) = if binary_out {
        let raw = tensor::encode_bytes(texts.iter().map(|t| t.as_bytes()));
        out_parameters.insert("binary_data_size".into(), raw.len().into());
        (None, raw)
    } else {
        (Some(texts), Vec::new())
    };
    let response = InferResponse {
        model_name: ctx.model.clone(),
        model_version: VERSION.into(),
        id: request.id,
        outputs: vec![OutputTensor {
            name: TEXT_OUTPUT.into(),
            shape: text.shape,
            datatype: "BYTES",
            parameters: out_parameters,
            data,
        }],
    };
    Ok(tensor::respond(&response, raw))
}

/// Whether `text_output` goes in binary: its own `binary_data`, else the request's
/// `binary_data_output`. Only `text_output` may be asked for.
fn binary_output(
    ctx: &Ctx,
    outputs: Option<&[RequestedOutput]>,
    parameters: &Map<String, Value>,
) -> Result<bool, KsError> {
    let flag = |v: Option<&Value>, name: &str, default: bool| match v {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ctx.bad(format!("`{name}` must be a boolean"))),
    };
    let mut binary = flag(parameters.get("binary_data_output"), "binary_data_output", false)?;
    for o in outputs.unwrap_or_default() {
        if o.name != TEXT_OUTPUT {
            return Err(ctx.bad(format!(
                "unexpected inference output `{}` for model `{}`: it has `{TEXT_OUTPUT}`",
                o.name, ctx.model
            )));
        }
        if o.parameters.contains_key("classification") {
            return Err(ctx.bad("the classification extension is not supported"));
        }
        binary = flag(o.parameters.get("binary_data"), "binary_data", binary)?;
    }
    Ok(binary)
}

/// The text tensor, and the request's parameters with the parameter tensors' values.
fn text_and_parameters(
    ctx: &Ctx,
    mut tensors: Vec<Tensor>,
    mut parameters: Map<String, Value>,
) -> Result<(Tensor, Map<String, Value>), KsError> {
    let at = match tensors.iter().position(|t| t.name == TEXT_INPUT) {
        Some(i) => i,
        None => {
            let texts: Vec<usize> = (0..tensors.len())
                .filter(|&i| tensors[i].datatype == "BYTES" && !is_parameter(&tensors[i].name))
                .collect();
            match texts[..] {
                [i] => i,
                [] => {
                    return Err(ctx.bad(format!(
                        "missing input `{TEXT_INPUT}`: the text to generate from, a BYTES tensor"
                    )));
                }
                _ => {
                    return Err(ctx.bad(format!(
                        "several BYTES inputs and none named `{TEXT_INPUT}`: which is the text?"
                    )));
                }
            }
        }
    };
    let text = tensors.remove(at);
    if text.datatype != "BYTES" {
        return Err(ctx.bad(format!("input `{}` must be BYTES, not {}", text.name, text.datatype)));
    }
    if let Some(ct) = text.content_type.as_deref().filter(|ct| !matches!(*ct, "str" | "base64")) {
        return Err(ctx.bad(format!(
            "input `{}` has content_type `{ct}`: text takes `str` or `base64`",
            text.name
        )));
    }
    if text.elements.len() == 0 {
        return Err(ctx.bad(format!("input `{}` holds no text", text.name)));
    }
    for t in tensors {
        if !is_parameter(&t.name) {
            return Err(ctx.bad(format!(
                "unexpected inference input `{}` for model `{}`: it takes `{TEXT_INPUT}` and generation parameters",
                t.name, ctx.model
            )));
        }
        let value = match t.elements {
            Elements::Scalars(mut v) if v.len() == 1 => v.remove(0),
            Elements::Bytes(mut b) if b.len() == 1 => match String::from_utf8(b.remove(0)) {
                Ok(s) => Value::String(s),
                Err(_) => return Err(ctx.bad(format!("input `{}` is not UTF-8 text", t.name))),
            },
            _ => return Err(ctx.bad(format!("parameter input `{}` must hold one element", t.name))),
        };
        parameters.insert(t.name, value);
    }
    Ok((text, parameters))
}

pub(super) async fn generate(ctx: Ctx, body: Bytes, stream: bool) -> Result<Response, KsError> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ctx.bad(format!("The request body is not valid JSON: {e}")))?;
    let Value::Object(mut body) = value else {
        return Err(ctx.bad("The request body must be a JSON object"));
    };
    let text = match body.remove(TEXT_INPUT) {
        Some(Value::String(s)) => s,
        Some(_) => return Err(ctx.bad(format!("`{TEXT_INPUT}` must be a string"))),
        None => return Err(ctx.bad(format!("missing `{TEXT_INPUT}`"))),
    };
    let mut parameters = match body.remove("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ctx.bad("`parameters` must be an object")),
    };
    for (key, value) in body {
        if is_parameter(&key) {
            parameters.entry(key).or_insert(value);
        } else if key != "stream" {
            return Err(ctx.bad(format!(
                "unexpected input `{key}`: the body takes `{TEXT_INPUT}`, `parameters` and generation parameters"
            )));
        }
    }
    let parameters = params::generate_parameters(&parameters).map_err(|m| ctx.bad(m))?;
    let limits = ctx.infer()?.limits.clone();
    let (spec, options) =
        params::to_spec(text, parameters, stream, &limits).map_err(|e| ctx.validation(e))?;
    if stream {
        return generate_stream(ctx, spec, options).await;
    }
    let ask = Ask { spec, n: 1, max_time: None };
    let mut answers = ctx.state.generate_all(vec![ask]).await.map_err(|e| ctx.err(e))?;
    let Answers { inputs, mut finished } = answers.remove(0);
    let f = finished.remove(0);
    let text_output = output_text(options, &inputs, &f.text);
    let details = options.details.then(|| tgi::details(f, None));
    let answer = GenerateAnswer {
        model_name: ctx.model.clone(),
        model_version: VERSION,
        text_output,
        details,
    };
    Ok(Json(answer).into_response())
}

async fn generate_stream(
    ctx: Ctx,
    spec: crate::validation::GenerationSpec,
    options: Options,
) -> Result<Response, KsError> {
    let arrived = Instant::now();
    let request = ctx.state.prepare(spec).await.map_err(|e| ctx.err(e))?;
    let generation = ctx.infer()?.start(request, arrived).map_err(|e| ctx.err(e))?;
    // With `return_full_text` the prompt comes first, so the events still add up.
    let mut prefix = options.return_full_text.then(|| generation.request().inputs.clone());
    let model = ctx.model.clone();
    let event = move |g: &Generation, token: TokenEvent| {
        let details = (token.finish.is_some() && options.details).then(|| StreamDetails {
            finish_reason: g.finish_reason().as_str().into(),
            generated_tokens: g.generated_tokens() as u32,
            seed: g.request().seed,
            input_length: g.request().prompt.len() as u32,
        });
        let text_output = match prefix.take() {
            Some(p) => p + &token.text,
            None => token.text,
        };
        json_event(&GenerateChunk {
            model_name: model.clone(),
            model_version: VERSION,
            text_output,
            details,
        })
    };
    let error = |e: &InferError| json_event(&KsErrorBody { error: e.to_string() });
    stream_tokens(generation, event, error).await.map_err(|e| ctx.err(e))
}
