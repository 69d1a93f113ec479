//! TGI's HTTP wire types, field for field (`/generate`, `/generate_stream`, `/info`,
//! errors), so TGI clients work unchanged.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct GenerateParameters {
    #[serde(default)]
    pub best_of: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub top_k: Option<i32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub typical_p: Option<f32>,
    #[serde(default)]
    pub do_sample: bool,
    #[serde(default)]
    pub max_new_tokens: Option<u32>,
    #[serde(default)]
    pub return_full_text: Option<bool>,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub truncate: Option<usize>,
    #[serde(default)]
    pub watermark: bool,
    #[serde(default)]
    pub details: bool,
    #[serde(default)]
    pub decoder_input_details: bool,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub top_n_tokens: Option<u32>,
    /// Constrain the output to a JSON schema or a regular expression.
    #[serde(default)]
    pub grammar: Option<GrammarType>,
    /// A LoRA adapter: none is served, so any non-empty value is refused (422).
    #[serde(default)]
    pub adapter_id: Option<String>,
    /// Rill extension for benchmarks: generate exactly `max_new_tokens`, ignoring EOS.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Rill extension (vLLM's `cache_salt`): prefix-cached KV blocks are shared only
    /// among requests that give the same salt.
    #[serde(default)]
    pub cache_salt: Option<String>,
}

/// TGI's `grammar` parameter.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
#[serde(tag = "type", content = "value")]
pub enum GrammarType {
    /// A JSON schema the output must satisfy (`{}` or `true`: any JSON value).
    #[serde(rename = "json", alias = "json_object")]
    #[schema(value_type = Object)]
    Json(serde_json::Value),
    /// OpenAI's form: `{"name": ..., "schema": {...}}`.
    #[serde(rename = "json_schema")]
    JsonSchema(JsonSchemaConfig),
    /// A regular expression the whole output must match.
    #[serde(rename = "regex")]
    Regex(String),
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct JsonSchemaConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct GenerateRequest {
    pub inputs: String,
    #[serde(default, deserialize_with = "object_or_null")]
    pub parameters: Option<GenerateParameters>,
}

/// `parameters` as a JSON object (or null): serde's derive would also take a struct from
/// an array, field by field in order, and `[null, null]` is no set of parameters.
fn object_or_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    match Option::<serde_json::Map<String, serde_json::Value>>::deserialize(deserializer)? {
        None => Ok(None),
        Some(map) => {
            T::deserialize(serde_json::Value::Object(map)).map(Some).map_err(D::Error::custom)
        }
    }
}

/// `POST /` (TGI compat): `stream` picks `/generate_stream` or `/generate`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct CompatGenerateRequest {
    pub inputs: String,
    #[serde(default, deserialize_with = "object_or_null")]
    pub parameters: Option<GenerateParameters>,
    #[serde(default)]
    pub stream: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct Token {
    pub id: u32,
    pub text: String,
    pub logprob: f32,
    pub special: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct PrefillToken {
    pub id: u32,
    pub text: String,
    pub logprob: Option<f32>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct Details {
    pub finish_reason: String,
    pub generated_tokens: u32,
    pub seed: Option<u64>,
    pub prefill: Vec<PrefillToken>,
    pub tokens: Vec<Token>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_tokens: Vec<Vec<Token>>,
    /// With `best_of` > 1: the sequences that were not chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of_sequences: Option<Vec<BestOfSequence>>,
    /// Rill extension: prompt tokens whose K/V the prefix cache supplied.
    #[serde(default)]
    pub cached_tokens: u32,
}

/// One of the other `best_of` candidates.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct BestOfSequence {
    pub generated_text: String,
    pub finish_reason: String,
    pub generated_tokens: u32,
    pub seed: Option<u64>,
    pub prefill: Vec<PrefillToken>,
    pub tokens: Vec<Token>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_tokens: Vec<Vec<Token>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct GenerateResponse {
    pub generated_text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct StreamDetails {
    pub finish_reason: String,
    pub generated_tokens: u32,
    pub seed: Option<u64>,
    pub input_length: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct StreamResponse {
    pub index: u32,
    pub token: Token,
    pub top_tokens: Vec<Token>,
    pub generated_text: Option<String>,
    pub details: Option<StreamDetails>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct ErrorResponse {
    pub error: String,
    pub error_type: String,
}

/// `GET /info`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct Info {
    pub model_id: String,
    pub model_sha: Option<String>,
    pub model_pipeline_tag: Option<String>,
    pub max_concurrent_requests: usize,
    pub max_best_of: usize,
    pub max_stop_sequences: usize,
    pub max_input_tokens: usize,
    pub max_total_tokens: usize,
    pub validation_workers: usize,
    pub max_client_batch_size: usize,
    pub router: String,
    pub version: String,
    pub sha: Option<String>,
    pub docker_label: Option<String>,
}
