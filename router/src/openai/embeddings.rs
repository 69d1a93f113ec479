//! `POST /v1/embeddings`: OpenAI's embeddings from the served model — each input's final
//! hidden states pooled as the model directory says (sentence-transformers'
//! `modules.json`; mean pooling when it says nothing), as vLLM serves decoder embedding
//! models (gte-Qwen2, e5-mistral). `input` is a string, a list of strings, token ids or
//! a list of token-id lists; `encoding_format` is `float` or `base64` (little-endian f32,
//! OpenAI's); `user` is ignored. `dimensions` other than the model's is refused: the model was not trained
//! to be cut (Matryoshka).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::completions::prompts;
use super::types::PromptInput;
use super::{GenerationErrors, OpenAiError, check_model, parse_body};
use crate::server::{AppState, Cut};

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// A string, a list of strings, token ids or a list of token-id lists.
    #[schema(value_type = Object)]
    pub input: PromptInput,
    /// `float` (default) or `base64`.
    #[serde(default)]
    pub encoding_format: Option<EncodingFormat>,
    /// Must be the model's width when given.
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// vLLM's extension: keep the last `truncate_prompt_tokens` tokens of each input.
    #[serde(default)]
    pub truncate_prompt_tokens: Option<usize>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingList {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    /// A list of floats, or with `encoding_format: "base64"` their little-endian f32 bytes
    /// in base64.
    #[schema(value_type = Object)]
    pub embedding: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
}

/// Embeddings of the inputs.
#[utoipa::path(post, path = "/v1/embeddings", tag = "OpenAI",
    request_body = EmbeddingRequest,
    responses(
        (status = 200, description = "One pooled vector per input", body = EmbeddingList),
        GenerationErrors,
    ))]
pub(super) async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EmbeddingList>, OpenAiError> {
    let request: EmbeddingRequest = parse_body(body)?;
    let model = check_model(&state, request.model.as_deref())?;
    let mut inputs = prompts(request.input, "input")?;
    let cut = match request.truncate_prompt_tokens {
        None => Cut::Refuse,
        Some(0) => {
            return Err(OpenAiError::invalid(
                "truncate_prompt_tokens",
                "`truncate_prompt_tokens` must be positive",
            ));
        }
        Some(n) => {
            // Keep the last n tokens of each input (vLLM's meaning), then refuse what is
            // still too long.
            let infer = state.infer().map_err(|e| OpenAiError::from_infer(e, "input"))?;
            let tokenizer = Arc::clone(&infer.tokenizer);
            for p in &mut inputs {
                if let crate::validation::Prompt::Text { text, add_special_tokens } = p {
                    let ids = tokenizer
                        .encode(text.as_str(), *add_special_tokens)
                        .map_err(|e| OpenAiError::invalid("input", e.to_string()))?;
                    *p = crate::validation::Prompt::Tokens(ids.get_ids().to_vec());
                }
                if let crate::validation::Prompt::Tokens(ids) = p {
                    let drop = ids.len().saturating_sub(n);
                    ids.drain(..drop);
                }
            }
            Cut::Refuse
        }
    };
    let hidden =
        state.embed_all(inputs, cut).await.map_err(|e| OpenAiError::from_infer(e, "input"))?;
    let dim = hidden.first().map(|h| h.dim).unwrap_or(0);
    if let Some(d) = request.dimensions
        && d != dim
    {
        return Err(OpenAiError::invalid(
            "dimensions",
            format!("This model's embeddings have {dim} dimensions and cannot be cut. Given: {d}"),
        ));
    }
    let format = request.encoding_format.unwrap_or_default();
    let pooling = state.pooling;
    let mut prompt_tokens = 0;
    let data = hidden
        .iter()
        .enumerate()
        .map(|(index, h)| {
            prompt_tokens += h.tokens() as u32;
            let vector = pooling.pool(h);
            let embedding = match format {
                EncodingFormat::Float => serde_json::json!(vector),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            Embedding { object: "embedding", index, embedding }
        })
        .collect();
    let usage = EmbeddingUsage { prompt_tokens, total_tokens: prompt_tokens };
    Ok(Json(EmbeddingList { object: "list", data, model, usage }))
}
