//! OpenAI's wire types for chat and text completions and the model list, field for
//! field, so the official SDKs and everything built on them work unchanged.
//! Requests ignore unknown fields; `null` means absent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::tools::{Tool, ToolCall, ToolCallDelta, ToolChoice};

/// `stop`: one string or a list.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopList {
    One(String),
    Many(Vec<String>),
}

impl StopList {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopList::One(s) => vec![s],
            StopList::Many(v) => v,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send one more chunk before `[DONE]` with the request's `usage` and no choices.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The sampling fields chat and text completions share (OpenAI's, then the
/// extensions vLLM and TGI users expect).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct SamplingFields {
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stop: Option<StopList>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string) → bias added to its logit, in [-100, 100].
    #[serde(default)]
    pub logit_bias: Option<BTreeMap<String, f32>>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// vLLM's extension: prefix-cached KV blocks are shared only among requests that
    /// give the same salt (one per tenant).
    #[serde(default)]
    pub cache_salt: Option<String>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Ignored (OpenAI's end-user id).
    #[serde(default)]
    pub user: Option<String>,
    /// Extension: keep the k most likely tokens (0 or -1: off).
    #[serde(default)]
    pub top_k: Option<i32>,
    /// Extension: TGI's repetition penalty (> 0; 1 is off).
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Extension: generate exactly the token limit.
    #[serde(default)]
    pub ignore_eos: Option<bool>,
}

/// One part of a message's `content` array.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// A message's `content`: a string or an array of parts.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// system, developer, user, assistant or tool.
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant's earlier calls (`arguments` a JSON string).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The call a tool message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `response_format`: OpenAI's three, and TGI's forms (`json` with a schema as
/// `value`, `regex`), which huggingface_hub sends.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(tag = "type")]
pub enum ResponseFormat {
    #[serde(rename = "text")]
    Text,
    /// Any JSON object, or with TGI's `value` that schema.
    #[serde(rename = "json_object", alias = "json")]
    JsonObject {
        #[serde(default)]
        #[schema(value_type = Option<Object>)]
        value: Option<Value>,
    },
    #[serde(rename = "json_schema")]
    JsonSchema { json_schema: JsonSchemaFormat },
    /// TGI's: the whole output matches this regular expression.
    #[serde(rename = "regex")]
    Regex { value: String },
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A served model name; absent or `tgi` means the served model.
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// Deprecated by OpenAI in favour of `max_completion_tokens`; either works.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Alternatives per token, 0–20 (needs `logprobs`).
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Tool>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Extension: extra variables for the chat template (e.g. `enable_thinking`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// Extension (vLLM): end the prompt with the assistant's header (default true).
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `prompt`: a string, a list of strings, token ids, or a list of token-id lists.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[schema(value_type = Object)]
    pub prompt: PromptInput,
    /// Default 16, as OpenAI's.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Alternatives per token, 0–5 (OpenAI's legacy `logprobs`).
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// Not supported (400 when true).
    #[serde(default)]
    pub echo: Option<bool>,
    /// Not supported (400 when given).
    #[serde(default)]
    pub suffix: Option<String>,
    /// Only `best_of` = `n` is supported.
    #[serde(default)]
    pub best_of: Option<u32>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose K/V the prefix cache supplied (not computed again).
    pub cached_tokens: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// One alternative in chat `logprobs`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub tool_calls: Vec<ToolCallDelta>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// One `data:` event of a chat stream.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// The legacy `logprobs` of text completions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    pub text_offset: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// A text completion, and also each chunk of its stream (OpenAI uses one shape).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Longest prompt + completion, in tokens.
    pub max_model_len: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<Model>,
}

/// OpenAI's error body.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

/// `/chat_tokenize`'s answer (TGI's): the rendered prompt and its tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatTokenizeResponse {
    pub tokenize_response: Vec<crate::tgi::SimpleToken>,
    pub templated_text: String,
}
