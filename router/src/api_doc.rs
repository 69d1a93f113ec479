//! The OpenAPI document served at `/api-doc/openapi.json`: utoipa's, from every family's
//! derives, then what those derives cannot say, written once here:
//!
//! - server-sent events as OpenAPI 3.2 describes them — each event an object whose
//!   `data` is JSON of the documented schema (or, mid-stream, an error object);
//! - the bounds each family's validation enforces (TGI's exclusive minimums, OpenAI's
//!   ranges, the Inference API's 0–100 temperature), so that a generated request is
//!   refused exactly when the document says it is invalid;
//! - the shapes that are unions in JSON (`inputs`, `prompt`, `input`: a string, a list of
//!   strings or token ids...), which the Rust types hold as raw values.
//!
//! Limits set by flags (`--max-stop-sequences`, `--max-best-of`, token counts) are not in
//! the document: a request within every bound here may still be refused for them.
//! `integration-tests/python/test_openapi_fuzz.py` holds the server to this document.

use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use crate::{hf, kserve, openai, server, tgi};

/// The whole document, as served by a server serving `models` (the names requests may
/// give).
pub fn document(models: &[String]) -> Value {
    let mut doc = server::ApiDoc::openapi();
    doc.merge(tgi::TgiApi::openapi());
    doc.merge(openai::OpenAiApi::openapi());
    doc.merge(hf::HfApi::openapi());
    doc.merge(kserve::KServeApi::openapi());
    let mut doc = serde_json::to_value(doc).expect("the OpenAPI document serializes");
    bounds(&mut doc);
    unions(&mut doc);
    stream_events(&mut doc);
    path_values(&mut doc, models);
    doc
}

/// The values a path parameter may take here: the served model names, version `1`, the
/// Inference API's served tasks. Any other is a 404.
fn path_values(doc: &mut Value, models: &[String]) {
    for operation in operations(doc) {
        let Some(Value::Array(parameters)) = operation.get_mut("parameters") else { continue };
        for parameter in parameters.iter_mut().filter(|p| p["in"] == "path") {
            let values = match parameter["name"].as_str() {
                Some("model_id" | "model" | "model_name") => json!(models),
                Some("model_version") => json!([kserve::VERSION]),
                Some("task") => json!(hf::SERVED_TASKS),
                _ => continue,
            };
            parameter["schema"]["enum"] = values;
        }
    }
}

/// Every operation of every path.
fn operations(doc: &mut Value) -> impl Iterator<Item = &mut Value> {
    let paths = doc["paths"].as_object_mut().expect("paths");
    paths.values_mut().filter_map(Value::as_object_mut).flat_map(|p| p.values_mut())
}

fn schemas(doc: &mut Value) -> &mut Map<String, Value> {
    doc["components"]["schemas"].as_object_mut().expect("components.schemas")
}

/// Property `field` of component `schema`, looked for through `allOf` too.
fn property<'a>(doc: &'a mut Value, schema: &str, field: &str) -> &'a mut Value {
    let pointer = format!("/properties/{field}");
    let mut parts = vec![&mut schemas(doc)[schema]];
    while let Some(part) = parts.pop() {
        if part.pointer(&pointer).is_some() {
            return part.pointer_mut(&pointer).expect("just found");
        }
        if let Some(Value::Array(all)) = part.get_mut("allOf") {
            parts.extend(all.iter_mut());
        }
    }
    panic!("{schema} has no property {field}")
}

/// Merge `constraints` into property `field` of component `schema`.
fn constrain(doc: &mut Value, schema: &str, field: &str, constraints: Value) {
    let property = property(doc, schema, field).as_object_mut().expect("a property schema");
    property.extend(constraints.as_object().expect("constraints").clone());
}

/// The bounds validation enforces, family by family.
fn bounds(doc: &mut Value) {
    let positive = || json!({"exclusiveMinimum": 0});
    let open_unit = || json!({"exclusiveMinimum": 0, "exclusiveMaximum": 1});
    // TGI (rill_proto::api::GenerateParameters; router/src/tgi/params.rs).
    for (field, c) in [
        ("best_of", json!({"minimum": 1})),
        ("temperature", positive()),
        ("repetition_penalty", positive()),
        ("frequency_penalty", json!({"minimum": -2, "maximum": 2})),
        ("top_k", positive()),
        ("top_p", open_unit()),
        ("typical_p", open_unit()),
        ("max_new_tokens", json!({"minimum": 1})),
        ("truncate", json!({"minimum": 1})),
    ] {
        constrain(doc, "GenerateParameters", field, c);
    }
    for schema in ["GenerateRequest", "CompatGenerateRequest"] {
        constrain(doc, schema, "inputs", json!({"minLength": 1}));
    }
    // The Inference API: TGI's parameters, but a temperature and repetition penalty of
    // 0–100, 0 meaning greedy (router/src/hf/params.rs).
    let mut hf = schemas(doc)["GenerateParameters"].clone();
    hf["description"] = json!("TGI's parameters with the Inference API's ranges.");
    for field in ["temperature", "repetition_penalty"] {
        let p = hf["properties"][field].as_object_mut().expect("a property");
        p.remove("exclusiveMinimum");
        p.extend([("minimum".into(), json!(0)), ("maximum".into(), json!(100))]);
    }
    schemas(doc).insert("InferenceApiGenerateParameters".into(), hf);
    let text = &mut schemas(doc)["TextGenerationParameters"]["allOf"][0]["$ref"];
    *text = json!("#/components/schemas/InferenceApiGenerateParameters");
    // OpenAI (router/src/openai/params.rs).
    for (field, c) in [
        ("temperature", json!({"minimum": 0, "maximum": 2})),
        ("top_p", json!({"exclusiveMinimum": 0, "maximum": 1})),
        ("n", json!({"minimum": 1})),
        ("presence_penalty", json!({"minimum": -2, "maximum": 2})),
        ("frequency_penalty", json!({"minimum": -2, "maximum": 2})),
        ("repetition_penalty", positive()),
        ("top_k", json!({"minimum": -1})),
    ] {
        constrain(doc, "SamplingFields", field, c);
    }
    let bias =
        schemas(doc)["SamplingFields"].pointer_mut("/properties/logit_bias/additionalProperties");
    bias.expect("logit_bias values")
        .as_object_mut()
        .expect("a schema")
        .extend([("minimum".into(), json!(-100)), ("maximum".into(), json!(100))]);
    for (field, c) in [
        ("max_tokens", json!({"minimum": 1})),
        ("max_completion_tokens", json!({"minimum": 1})),
        ("top_logprobs", json!({"minimum": 0, "maximum": openai::MAX_TOP_LOGPROBS})),
        ("messages", json!({"minItems": 1})),
    ] {
        constrain(doc, "ChatCompletionRequest", field, c);
    }
    for (field, c) in [
        ("max_tokens", json!({"minimum": 1})),
        ("logprobs", json!({"minimum": 0, "maximum": openai::MAX_COMPLETION_LOGPROBS})),
    ] {
        constrain(doc, "CompletionRequest", field, c);
    }
    constrain(doc, "EmbeddingRequest", "truncate_prompt_tokens", json!({"minimum": 1}));
    // /tokenize reads only `inputs`: its own schema, so that
    // a sampling parameter out of range is not called invalid there.
    schemas(doc).insert(
        "TokenizeRequest".into(),
        json!({"type": "object", "required": ["inputs"], "properties": {
            "inputs": {"type": "string"},
            "parameters": {"type": ["object", "null"], "description": "Accepted and ignored."},
        }}),
    );
    let tokenize =
        doc.pointer_mut("/paths/~1tokenize/post/requestBody/content/application~1json/schema");
    *tokenize.expect("/tokenize's body") = json!({"$ref": "#/components/schemas/TokenizeRequest"});
}

/// The unions the Rust types keep as raw JSON.
fn unions(doc: &mut Value) {
    let text = json!({"type": "string", "minLength": 1});
    let texts = json!({"type": "array", "minItems": 1, "items": {"type": "string"}});
    let ids = json!({"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}});
    let id_lists = json!({"type": "array", "minItems": 1, "items": ids});
    let prompt = json!({"anyOf": [text, texts, ids, id_lists],
        "description": "A string, a list of strings, token ids or a list of token-id lists."});
    *property(doc, "EmbeddingRequest", "input") = prompt.clone();
    *property(doc, "CompletionRequest", "prompt") = prompt;
    let inputs = json!({"anyOf": [text, texts, {"type": "object"}, {"type": "array", "minItems": 1}],
        "description": "By task: a string or a list of strings (text-generation, \
                        feature-extraction), a conversation (conversational), or \
                        `{\"source_sentence\", \"sentences\"}` (sentence-similarity)."});
    *property(doc, "InferenceRequest", "inputs") = inputs;
    let embedding = json!({"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}],
        "description": "The vector, or with `encoding_format: \"base64\"` its little-endian f32 bytes in base64."});
    *property(doc, "Embedding", "embedding") = embedding;
    property(doc, "GenerateBody", "parameters")["type"] = json!(["object", "null"]);
    // The Inference API answers by task.
    let numbers = json!({"type": "array", "items": {"type": "number"}});
    let answer = json!({"anyOf": [
        {"type": "array", "items": {"$ref": "#/components/schemas/GeneratedText"}},
        {"type": "array", "items": {"type": "array", "items": {"$ref": "#/components/schemas/GeneratedText"}}},
        {"$ref": "#/components/schemas/ConversationalAnswer"},
        numbers,
        {"type": "array", "items": numbers},
        {"type": "array", "items": {"type": "array", "items": numbers}},
    ], "description": "By task: `text-generation` a list of `GeneratedText` (a list of lists for a \
        list of inputs), `conversational` a `ConversationalAnswer`, `sentence-similarity` one \
        score per sentence, `feature-extraction` the pooled vector or one per token (per input)."});
    for path in ["/models/{model_id}", "/models/{model_id}/{task}", "/pipeline/{task}"] {
        let pointer = format!(
            "/paths/{}/post/responses/200/content/application~1json/schema",
            path.replace('/', "~1")
        );
        *doc.pointer_mut(&pointer).unwrap_or_else(|| panic!("{path}'s answer")) = answer.clone();
        // `text-generation` with `stream: true` answers TGI's event stream.
        let content = format!("/paths/{}/post/responses/200/content", path.replace('/', "~1"));
        doc.pointer_mut(&content).and_then(Value::as_object_mut).expect("content").insert(
            "text/event-stream".into(),
            json!({"schema": {"$ref": "#/components/schemas/StreamResponse"}}),
        );
    }
}

/// Describe every `text/event-stream` answer as its events: an object whose `data` is
/// the documented schema's JSON, or an error object mid-stream.
fn stream_events(doc: &mut Value) {
    schemas(doc).insert(
        "StreamError".into(),
        json!({"type": "object", "required": ["error"], "description": "A failure mid-stream.",
               "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}}}),
    );
    for operation in operations(doc) {
        let Some(Value::Object(responses)) = operation.get_mut("responses") else { continue };
        for response in responses.values_mut() {
            let Some(events) = response.pointer_mut("/content/text~1event-stream") else {
                continue;
            };
            let Some(schema) = events.get("schema").cloned() else { continue };
            events["schema"] = json!({
                "type": "object",
                "required": ["data"],
                "properties": {
                    "event": {"type": "string"},
                    "id": {"type": "string"},
                    "retry": {"type": "integer"},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [schema, {"$ref": "#/components/schemas/StreamError"}]},
                    },
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rewrite found what it rewrites (each panics otherwise), and the result is
    /// still an OpenAPI document utoipa reads.
    #[test]
    fn the_document_is_complete_and_valid() {
        let doc = document(&["llama".to_string()]);
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["GenerateParameters"]["properties"]["temperature"]["exclusiveMinimum"],
            0
        );
        assert_eq!(
            schemas["InferenceApiGenerateParameters"]["properties"]["temperature"]["maximum"],
            100
        );
        let stream = &doc["paths"]["/generate_stream"]["post"]["responses"]["200"]["content"];
        assert_eq!(
            stream["text/event-stream"]["schema"]["properties"]["data"]["contentMediaType"],
            "application/json"
        );
        let model = &doc["paths"]["/v2/models/{model_name}"]["get"]["parameters"][0]["schema"];
        assert_eq!(model["enum"], json!(["llama"]));
        serde_json::from_value::<utoipa::openapi::OpenApi>(doc).expect("an OpenAPI document");
    }
}
