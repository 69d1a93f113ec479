//! `POST /v1/chat/completions` and `POST /chat_tokenize`: OpenAI's messages rendered
//! through the model's chat template (`chat_template.rs`), tools and
//! `response_format` turned into grammars, and the answer shaped as OpenAI's
//! `chat.completion` or a stream of `chat.completion.chunk`s.
//!
//! Messages reach the template as transformers would give them: `developer` becomes
//! `system`, text parts are joined into one string, and assistant
//! `tool_calls[].function.arguments` (a JSON string on the wire) become objects,
//! since templates iterate over them. The rendered text is tokenized without adding
//! special tokens (the template wrote the BOS). With tools, the output goes through
//! a `ToolCallParser`, so calls come back as `tool_calls` (in streams, OpenAI's
//! per-call deltas) and never as raw syntax in `content`.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};
use rill_backend::grammar::GrammarSpec;
use rill_proto::api::Token;
use serde_json::{Value, json};

use super::params::{self, MAX_TOP_LOGPROBS};
use super::tools::{self, ParserEvent, ToolCallParser, ToolChoice, ToolParseMode};
use super::types::*;
use super::{
    ChunkShaper, Envelope, GenerationErrors, OpenAiError, SseEvent, Step, check_model,
    finish_reason, merged_steps, parse_body, shaped_stream, start,
};
use crate::chat_template::ChatInput;
use crate::infer::{Finished, TokenBytes, TokenEvent};
use crate::request_id::RequestId;
use crate::sequence::FinishReason;
use crate::server::{AppState, sse, sse_json};
use crate::validation::{Prompt, ValidRequest};

/// What validating a chat request yields, besides the core's request.
struct Prepared {
    valid: ValidRequest,
    n: usize,
    seed: Option<u64>,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
    /// How to read tool calls out of the output, when tools may be called.
    tool_mode: Option<ToolParseMode>,
    /// The rendered prompt (`/chat_tokenize`).
    templated: String,
}

/// The messages as templates expect them.
fn template_messages(messages: &[ChatMessage]) -> Result<Vec<Value>, OpenAiError> {
    if messages.is_empty() {
        return Err(OpenAiError::invalid("messages", "`messages` must not be empty"));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = |field: &str| format!("messages[{i}].{field}");
            let role = match m.role.as_str() {
                "developer" => "system",
                r @ ("system" | "user" | "assistant" | "tool") => r,
                other => {
                    return Err(OpenAiError::invalid(
                        &at("role"),
                        format!(
                            "Unknown role {other:?}: expected system, developer, user, assistant or tool"
                        ),
                    ));
                }
            };
            let content = match &m.content {
                Some(MessageContent::Text(s)) => s.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => texts.push(t.as_str()),
                            ("text", None) => {
                                return Err(OpenAiError::invalid(
                                    &at(&format!("content[{j}].text")),
                                    "A text part needs `text`",
                                ));
                            }
                            (kind, _) => {
                                return Err(OpenAiError::invalid(
                                    &at(&format!("content[{j}].type")),
                                    format!("Content parts of type {kind:?} are not supported: this model takes text"),
                                ));
                            }
                        }
                    }
                    texts.join("\n")
                }
                None if role == "assistant" => String::new(),
                None => {
                    return Err(OpenAiError::invalid(
                        &at("content"),
                        format!("A {role} message needs `content`"),
                    ));
                }
            };
            let mut out = json!({"role": role, "content": content});
            if let Some(name) = &m.name {
                out["name"] = name.clone().into();
            }
            if role == "tool" {
                let Some(id) = &m.tool_call_id else {
                    return Err(OpenAiError::invalid(
                        &at("tool_call_id"),
                        "A tool message needs the `tool_call_id` it answers",
                    ));
                };
                out["tool_call_id"] = id.clone().into();
            }
            if let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_empty()) {
                let calls = calls
                    .iter()
                    .enumerate()
                    .map(|(j, call)| {
                        let mut v = serde_json::to_value(call).unwrap_or_default();
                        let arguments = &call.function.arguments;
                        let parsed: Value = serde_json::from_str(arguments).map_err(|e| {
                            OpenAiError::invalid(
                                &at(&format!("tool_calls[{j}].function.arguments")),
                                format!("`arguments` must be a JSON string of an object: {e}"),
                            )
                        })?;
                        v["function"]["arguments"] = parsed;
                        Ok(v)
                    })
                    .collect::<Result<Vec<_>, OpenAiError>>()?;
                out["tool_calls"] = Value::Array(calls);
            }
            Ok(out)
        })
        .collect()
}

/// The grammar `response_format` asks for.
fn response_grammar(format: Option<&ResponseFormat>) -> Option<GrammarSpec> {
    match format? {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject { value: None } => {
            Some(GrammarSpec::JsonSchema(json!({"type": "object"})))
        }
        ResponseFormat::JsonObject { value: Some(schema) } => {
            Some(GrammarSpec::JsonSchema(schema.clone()))
        }
        ResponseFormat::Regex { value } => Some(GrammarSpec::Regex(value.clone())),
        ResponseFormat::JsonSchema { json_schema } => {
            Some(GrammarSpec::JsonSchema(json_schema.schema.clone().unwrap_or_else(|| json!({}))))
        }
    }
}

/// Check a chat request, render its prompt and validate it (on a validation worker).
async fn prepare(
    state: &Arc<AppState>,
    request: ChatCompletionRequest,
) -> Result<Prepared, OpenAiError> {
    let templates = state.chat_templates.clone().ok_or_else(|| {
        OpenAiError::invalid(
            "messages",
            "This model has no chat template: give one with --chat-template, or use /v1/completions",
        )
    })?;
    let limits = state.infer().map_err(|e| OpenAiError::from_infer(e, "messages"))?.limits.clone();
    let messages = template_messages(&request.messages)?;
    let logprobs = request.logprobs.unwrap_or(false);
    let top_logprobs = request.top_logprobs.unwrap_or(0);
    if top_logprobs > MAX_TOP_LOGPROBS {
        return Err(OpenAiError::invalid(
            "top_logprobs",
            format!(
                "`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}. Given: {top_logprobs}"
            ),
        ));
    }
    if top_logprobs > 0 && !logprobs {
        return Err(OpenAiError::invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`"));
    }
    let tool_list = request.tools.clone().unwrap_or_default();
    let choice = match (&request.tool_choice, tool_list.is_empty()) {
        (Some(c), _) => c.clone(),
        (None, true) => ToolChoice::None,
        (None, false) => ToolChoice::Auto,
    };
    tools::validate_tools(&tool_list, &choice)
        .map_err(|e| OpenAiError::invalid(e.param(), e.to_string()))?;
    let parallel = request.parallel_tool_calls.unwrap_or(true);
    // Markers the vocabulary has as special tokens are allowed (and kept in the text)
    // as those tokens.
    let compiler = state.infer().ok().and_then(|i| i.grammar.clone());
    let syntax = state.tool_call_syntax.map(|s| match &compiler {
        Some(c) => s.with_vocabulary(|t| c.special_token(t)),
        None => s,
    });
    let tool_grammar = tools::grammar_for(&tool_list, &choice, parallel, syntax);
    let tool_mode = tools::parse_mode(&tool_list, &choice, syntax);
    let format_grammar = response_grammar(request.response_format.as_ref());
    if tool_grammar.is_some() && format_grammar.is_some() {
        return Err(OpenAiError::invalid(
            "response_format",
            "`response_format` cannot be combined with a `tool_choice` that forces a call",
        ));
    }
    let max_tokens = request.max_completion_tokens.or(request.max_tokens);
    let mut sampling =
        params::sampling(request.sampling, Prompt::Tokens(Vec::new()), max_tokens, &limits)?;
    sampling.spec.top_n_tokens = if logprobs { top_logprobs } else { 0 };
    sampling.spec.grammar = tool_grammar.or(format_grammar);
    if let Some(ToolParseMode::Syntax(s)) = tool_mode
        && (s.trigger_token.is_some() || s.close_token.is_some() || s.args_token.is_some())
    {
        sampling.spec.skip_special_tokens = false;
    }
    let seed = sampling.spec.seed;
    let kwargs = request.chat_template_kwargs.unwrap_or_default();
    let add_generation_prompt = request.add_generation_prompt.unwrap_or(true);
    let tool_values: Vec<Value> =
        tool_list.iter().map(|t| serde_json::to_value(t).unwrap_or_default()).collect();
    let mut spec = sampling.spec;
    let (valid, templated) = state
        .on_validation_worker(move |infer| {
            let input = ChatInput {
                messages: &messages,
                tools: (!tool_values.is_empty()).then_some(&tool_values[..]),
                documents: None,
                add_generation_prompt,
                kwargs: &kwargs,
            };
            let text = templates.render(&input).map_err(Rendering)?;
            spec.prompt = Prompt::Text { text: text.clone(), add_special_tokens: false };
            Ok((infer.prepare(spec).map_err(|e| Core(e.into()))?, text))
        })
        .await
        .map_err(|e| match e {
            Core(e) => OpenAiError::from_infer(e, "messages"),
            Rendering(e) => OpenAiError::invalid("messages", e.to_string()),
        })?;
    Ok(Prepared {
        valid,
        n: sampling.n,
        seed,
        stream: sampling.stream,
        include_usage: sampling.include_usage,
        logprobs,
        tool_mode,
        templated,
    })
}

/// Chat completions (stream with `"stream": true`).
#[utoipa::path(post, path = "/v1/chat/completions", tag = "OpenAI",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A chat completion, or with `stream` its chunks as server-sent events", body = ChatCompletion),
        GenerationErrors,
    ))]
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let arrived = Instant::now();
    let request: ChatCompletionRequest = parse_body(body)?;
    let model = check_model(&state, request.model.as_deref())?;
    let p = prepare(&state, request).await?;
    let requests = p.valid.choices(p.n, p.seed);
    let generations =
        start(&state, requests, arrived).map_err(|e| OpenAiError::from_infer(e, "messages"))?;
    let envelope = Envelope::new("chatcmpl", &request_id, model);
    if p.stream {
        let steps =
            merged_steps(generations).await.map_err(|e| OpenAiError::from_infer(e, "messages"))?;
        let stream = ChatStream::new(
            Arc::clone(&state),
            envelope,
            p.n,
            p.logprobs,
            p.include_usage,
            p.tool_mode,
        );
        let opening = stream.opening();
        return Ok(sse(stream::iter(opening).chain(shaped_stream(steps, stream))));
    }
    let done = futures::future::try_join_all(generations.into_iter().map(|g| g.finish()))
        .await
        .map_err(|e| OpenAiError::from_infer(e, "messages"))?;
    let bytes = &state.infer().map_err(|e| OpenAiError::from_infer(e, "messages"))?.token_bytes;
    let mut usage = Usage::default();
    let choices = done
        .into_iter()
        .enumerate()
        .map(|(index, f)| {
            usage.prompt_tokens = f.prompt_tokens as u32;
            usage.completion_tokens += f.tokens.len() as u32;
            // The prompt is counted once: as the first choice read it.
            if index == 0 {
                usage.prompt_tokens_details.cached_tokens = f.cached_tokens as u32;
            }
            chat_choice(bytes, index as u32, f, p.logprobs, p.tool_mode)
        })
        .collect();
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    Ok(Json(ChatCompletion {
        id: envelope.id,
        object: "chat.completion",
        created: envelope.created,
        model: envelope.model,
        system_fingerprint: envelope.system_fingerprint,
        choices,
        usage,
    })
    .into_response())
}

/// Why a chat request failed on its validation worker.
enum WorkerError {
    Core(crate::infer::InferError),
    Rendering(crate::chat_template::TemplateError),
}
use WorkerError::{Core, Rendering};

impl From<crate::infer::InferError> for WorkerError {
    fn from(e: crate::infer::InferError) -> Self {
        Core(e)
    }
}

/// One token's chat `logprobs` entry: its raw bytes, and as `token` those bytes as
/// text (a token holding part of a character shows U+FFFD, as OpenAI's do).
fn token_logprob(bytes: &TokenBytes, token: &Token, top: &[Token]) -> TokenLogprob {
    let entry = |t: &Token| {
        let b = bytes.of(t);
        (String::from_utf8_lossy(b).into_owned(), b.to_vec())
    };
    let (text, raw) = entry(token);
    TokenLogprob {
        token: text,
        logprob: token.logprob,
        bytes: raw,
        top_logprobs: top
            .iter()
            .map(|t| {
                let (token, bytes) = entry(t);
                TopLogprob { token, logprob: t.logprob, bytes }
            })
            .collect(),
    }
}

/// A finished choice as `chat.completion` shapes it.
fn chat_choice(
    bytes: &TokenBytes,
    index: u32,
    f: Finished,
    logprobs: bool,
    mode: Option<ToolParseMode>,
) -> ChatChoice {
    let logprobs = logprobs.then(|| ChatLogprobs {
        content: f
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| token_logprob(bytes, t, f.top_tokens.get(i).map_or(&[][..], |v| &v[..])))
            .collect(),
    });
    let (content, tool_calls) = match mode {
        None => (Some(f.text), Vec::new()),
        Some(mode) => {
            let mut parser = ToolCallParser::new(mode);
            parser.push(&f.text);
            let parsed = parser.finish();
            (parsed.content, parsed.calls)
        }
    };
    let finish = match f.finish_reason {
        // Cut off: whatever was called is incomplete.
        FinishReason::Length => "length",
        _ if !tool_calls.is_empty() => "tool_calls",
        other => finish_reason(other),
    };
    ChatChoice {
        index,
        message: AssistantMessage { role: "assistant", content, tool_calls },
        logprobs,
        finish_reason: finish,
    }
}

/// A chat stream's state: per choice, its tool-call parser and whether it called.
struct ChatStream {
    /// For the tokens' bytes.
    state: Arc<AppState>,
    envelope: Envelope,
    n: usize,
    logprobs: bool,
    include_usage: bool,
    parsers: Vec<Option<ToolCallParser>>,
    called: Vec<bool>,
    usage: Usage,
}

impl ChatStream {
    fn new(
        state: Arc<AppState>,
        envelope: Envelope,
        n: usize,
        logprobs: bool,
        include_usage: bool,
        mode: Option<ToolParseMode>,
    ) -> Self {
        ChatStream {
            state,
            envelope,
            n,
            logprobs,
            include_usage,
            parsers: (0..n).map(|_| mode.map(ToolCallParser::new)).collect(),
            called: vec![false; n],
            usage: Usage::default(),
        }
    }

    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> SseEvent {
        let e = &self.envelope;
        sse_json(&ChatCompletionChunk {
            id: e.id.clone(),
            object: "chat.completion.chunk",
            created: e.created,
            model: e.model.clone(),
            system_fingerprint: e.system_fingerprint.clone(),
            choices,
            usage,
        })
    }

    fn choice(&self, index: usize, delta: ChatDelta) -> ChatChunkChoice {
        ChatChunkChoice { index: index as u32, delta, logprobs: None, finish_reason: None }
    }

    /// Each choice's first chunk: the assistant's role.
    fn opening(&self) -> Vec<SseEvent> {
        (0..self.n)
            .map(|i| {
                let delta = ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    ..Default::default()
                };
                self.chunk(vec![self.choice(i, delta)], None)
            })
            .collect()
    }

    /// The deltas a parser's events become.
    fn deltas(&mut self, index: usize, events: Vec<ParserEvent>) -> Vec<ChatDelta> {
        events
            .into_iter()
            .filter_map(|e| match e {
                ParserEvent::Content(text) if text.is_empty() => None,
                ParserEvent::Content(text) => {
                    Some(ChatDelta { content: Some(text), ..Default::default() })
                }
                ParserEvent::Call(call) => {
                    self.called[index] = true;
                    Some(ChatDelta { tool_calls: vec![call], ..Default::default() })
                }
            })
            .collect()
    }
}

impl ChunkShaper for ChatStream {
    fn on_token(&mut self, step: &Step, event: TokenEvent) -> Vec<SseEvent> {
        let i = step.index;
        let mut deltas = match self.parsers[i].as_mut() {
            Some(parser) => {
                let mut events = parser.push(&event.text);
                if event.finish.is_some() {
                    events.extend(parser.flush());
                }
                self.deltas(i, events)
            }
            None if event.text.is_empty() => Vec::new(),
            None => vec![ChatDelta { content: Some(event.text.clone()), ..Default::default() }],
        };
        if self.logprobs && deltas.is_empty() {
            deltas.push(ChatDelta::default());
        }
        let mut out = Vec::with_capacity(deltas.len() + 1);
        for (k, delta) in deltas.into_iter().enumerate() {
            let mut choice = self.choice(i, delta);
            if self.logprobs && k == 0 {
                let empty = TokenBytes::default();
                let bytes = self.state.ready.get().map_or(&empty, |i| &i.token_bytes);
                let entry = token_logprob(bytes, &event.token, &event.top);
                choice.logprobs = Some(ChatLogprobs { content: vec![entry] });
            }
            out.push(self.chunk(vec![choice], None));
        }
        if let Some(reason) = event.finish {
            self.usage.prompt_tokens = step.prompt_tokens as u32;
            self.usage.completion_tokens += step.generated as u32;
            if i == 0 {
                self.usage.prompt_tokens_details.cached_tokens = step.cached_tokens as u32;
            }
            let reason = match reason {
                FinishReason::Length => "length",
                _ if self.called[i] => "tool_calls",
                other => finish_reason(other),
            };
            let mut choice = self.choice(i, ChatDelta::default());
            choice.finish_reason = Some(reason);
            out.push(self.chunk(vec![choice], None));
        }
        out
    }

    fn closing(&mut self) -> Vec<SseEvent> {
        let mut usage = self.usage.clone();
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
        if self.include_usage { vec![self.chunk(Vec::new(), Some(usage))] } else { Vec::new() }
    }

    fn prompt_param(&self) -> &'static str {
        "messages"
    }
}

/// TGI's `/chat_tokenize`: the prompt a chat request renders to, and its tokens.
#[utoipa::path(post, path = "/chat_tokenize", tag = "OpenAI",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The rendered prompt and its tokens", body = ChatTokenizeResponse),
        (status = 400, description = "Invalid request or template error", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 503, description = "Model is loading", body = ErrorBody),
    ))]
pub async fn chat_tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ChatTokenizeResponse>, OpenAiError> {
    let request: ChatCompletionRequest = parse_body(body)?;
    check_model(&state, request.model.as_deref())?;
    let p = prepare(&state, request).await?;
    let tokens = crate::tgi::tokenize_text(&state, p.templated.clone(), false)
        .await
        .map_err(|e| OpenAiError::from_infer(e, "messages"))?;
    Ok(Json(ChatTokenizeResponse { tokenize_response: tokens, templated_text: p.templated }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(v: Value) -> Result<Vec<Value>, OpenAiError> {
        let m: Vec<ChatMessage> = serde_json::from_value(v).unwrap();
        template_messages(&m)
    }

    #[test]
    fn messages_reach_the_template_as_transformers_gives_them() {
        let out = messages(json!([
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "2"},
        ]))
        .unwrap();
        assert_eq!(out[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(out[1]["content"], "a\nb");
        assert_eq!(out[2]["content"], "");
        assert_eq!(out[2]["tool_calls"][0]["function"]["arguments"], json!({"x": 1}));
        assert_eq!(out[3]["tool_call_id"], "call_1");
    }

    #[test]
    fn bad_messages_name_the_field() {
        let cases = [
            (json!([]), "messages"),
            (json!([{"role": "robot", "content": "x"}]), "messages[0].role"),
            (json!([{"role": "user"}]), "messages[0].content"),
            (
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
                "messages[0].content[0].type",
            ),
            (json!([{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
            (
                json!([{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                    "function": {"name": "f", "arguments": "{nope"}}]}]),
                "messages[0].tool_calls[0].function.arguments",
            ),
        ];
        for (v, param) in cases {
            let e = messages(v.clone()).unwrap_err();
            assert_eq!(e.detail.param.as_deref(), Some(param), "{v}");
        }
    }
}
