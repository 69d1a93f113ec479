//! `feature-extraction` and `sentence-similarity` from the served model's final hidden
//! states (`Infer::embed`, a prefill-only request through the same scheduler).
//!
//! `feature-extraction` answers what transformers' feature-extraction pipeline returns
//! for a decoder: per input, `[1][tokens][hidden]` (special tokens included); a list of
//! inputs answers a list of those. `sentence-similarity` pools each sentence as the model
//! directory says (`crate::embeddings`) and answers the cosine similarity of the source
//! sentence with each sentence. Parameters are TEI's, as `huggingface_hub` sends them:
//! `normalize` (L2 per vector), `truncate` with `truncation_direction`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::embeddings::cosine_similarity;
use crate::server::Cut;
use crate::validation::Prompt;

use super::{Ctx, HfError, InferenceRequest, Wanted, answer, cache_key, task_parameters, texts};

/// `parameters` of `feature-extraction` and `sentence-similarity`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingParameters {
    /// L2-normalize every vector returned (default false; sentence-similarity's cosine does
    /// not depend on it).
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Cut inputs longer than the server's `max_input_tokens` instead of refusing them.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Which end a cut input keeps: `right` (default) drops the end, `left` the start.
    #[serde(default)]
    pub truncation_direction: Option<Direction>,
    /// Named prompts are a sentence-transformers feature this server does not serve.
    #[serde(default)]
    pub prompt_name: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[serde(alias = "Left")]
    Left,
    #[serde(alias = "Right")]
    Right,
}

impl EmbeddingParameters {
    fn cut(&self) -> Result<Cut, HfError> {
        if let Some(name) = &self.prompt_name {
            return Err(HfError::bad_request(format!(
                "`prompt_name` is not supported (given `{name}`): put the prompt in `inputs`"
            )));
        }
        Ok(match (self.truncate.unwrap_or(false), self.truncation_direction) {
            (false, _) => Cut::Refuse,
            (true, Some(Direction::Left)) => Cut::KeepLast,
            (true, _) => Cut::KeepFirst,
        })
    }
}

/// `sentence-similarity`'s inputs.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimilarityInputs {
    pub source_sentence: String,
    pub sentences: Vec<String>,
}

fn normalized(mut v: Vec<f32>, normalize: bool) -> Vec<f32> {
    if normalize {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
    v
}

fn text_prompts(texts: Vec<String>) -> Vec<Prompt> {
    texts.into_iter().map(|text| Prompt::Text { text, add_special_tokens: true }).collect()
}

pub(super) async fn feature_extraction(
    ctx: Ctx,
    request: InferenceRequest,
    wanted: Wanted,
) -> Result<axum::response::Response, HfError> {
    let params: EmbeddingParameters = task_parameters(request.parameters)?;
    let cut = params.cut()?;
    let (inputs, listed) = texts(&request.inputs)?;
    let normalize = params.normalize.unwrap_or(false);
    let key = Some(cache_key(&ctx.model, "feature-extraction", &request.inputs, &params));
    answer(&ctx, key, wanted, async {
        let hidden =
            ctx.state.embed_all(text_prompts(inputs), cut).await.map_err(|e| ctx.err(e))?;
        let per_input: Vec<Value> = hidden
            .iter()
            .map(|h| {
                let rows: Vec<Vec<f32>> =
                    (0..h.tokens()).map(|i| normalized(h.row(i).to_vec(), normalize)).collect();
                json!([rows])
            })
            .collect();
        Ok(if listed {
            Value::Array(per_input)
        } else {
            per_input.into_iter().next().unwrap_or_default()
        })
    })
    .await
}

pub(super) async fn sentence_similarity(
    ctx: Ctx,
    request: InferenceRequest,
    wanted: Wanted,
) -> Result<axum::response::Response, HfError> {
    let params: EmbeddingParameters = task_parameters(request.parameters)?;
    let cut = params.cut()?;
    let inputs: SimilarityInputs = serde_json::from_value(request.inputs.clone()).map_err(|e| {
        HfError::bad_request(format!(
            "`inputs` must be {{\"source_sentence\": string, \"sentences\": [string]}}: {e}"
        ))
    })?;
    if inputs.sentences.is_empty() {
        return Err(HfError::bad_request("`inputs.sentences` cannot be empty"));
    }
    let key = Some(cache_key(&ctx.model, "sentence-similarity", &request.inputs, &params));
    let pooling = ctx.state.pooling;
    answer(&ctx, key, wanted, async {
        let all = std::iter::once(inputs.source_sentence).chain(inputs.sentences).collect();
        let hidden = ctx.state.embed_all(text_prompts(all), cut).await.map_err(|e| ctx.err(e))?;
        let pooled: Vec<Vec<f32>> = hidden.iter().map(|h| pooling.pool(h)).collect();
        let scores: Vec<f32> =
            pooled[1..].iter().map(|v| cosine_similarity(&pooled[0], v)).collect();
        Ok(json!(scores))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_follows_tei() {
        let p = |v: Value| serde_json::from_value::<EmbeddingParameters>(v).unwrap().cut();
        assert_eq!(p(json!({})).unwrap(), Cut::Refuse);
        assert_eq!(p(json!({"truncate": true})).unwrap(), Cut::KeepFirst);
        assert_eq!(
            p(json!({"truncate": true, "truncation_direction": "Left"})).unwrap(),
            Cut::KeepLast
        );
        assert_eq!(
            p(json!({"truncate": true, "truncation_direction": "right"})).unwrap(),
            Cut::KeepFirst
        );
        assert!(p(json!({"prompt_name": "query"})).is_err());
        assert!(serde_json::from_value::<EmbeddingParameters>(json!({"pooling": "cls"})).is_err());
    }

    #[test]
    fn normalizing_makes_unit_vectors() {
        let v = normalized(vec![3.0, 4.0], true);
        assert_eq!(v, [0.6, 0.8]);
        assert_eq!(normalized(vec![0.0, 0.0], true), [0.0, 0.0]);
        assert_eq!(normalized(vec![3.0, 4.0], false), [3.0, 4.0]);
    }
}
