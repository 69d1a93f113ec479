//! Tool calling for the chat route: OpenAI's wire types, their validation, the grammar
//! that keeps a model's calls valid, and the parser that turns its text back into calls.
//! Pure logic: no HTTP, no engine.
//!
//! - Wire types: [`Tool`] / [`FunctionDefinition`] (a request's `tools`), [`ToolChoice`]
//!   (`"none" | "auto" | "required" | {"type": "function", "function": {"name"}}`),
//!   [`ToolCall`] (a response's `message.tool_calls`, `arguments` a JSON *string*) and
//!   [`ToolCallDelta`] (a stream's per-call deltas, fields left out exactly as OpenAI
//!   leaves them out). [`validate_tools`] answers with OpenAI's messages and the
//!   offending `param`.
//! - [`ToolSyntax`]: how a model writes calls when it chooses to (`auto`): Hermes/Qwen
//!   `<tool_call>{...}</tool_call>`, Llama 3 JSON `{"name", "parameters"}`, Mistral
//!   `[TOOL_CALLS][{...}]` (or v11's `[TOOL_CALLS]name[ARGS]{...}`); detected from the
//!   chat template or named by `--tool-call-syntax`, then told which of its markers the
//!   vocabulary has as special tokens ([`ToolSyntax::with_vocabulary`]).
//! - [`grammar_for`] (`grammar.rs`): `required` or a named tool constrains the whole
//!   output to a call (or, with `parallel_tool_calls`, an array of calls) from its
//!   first token; `auto` lets the model write text, and constrains a call from the
//!   moment it starts one, so a started call is always valid.
//! - [`ToolCallParser`] (`parser.rs`, with `scan.rs` for JSON structure): the model's
//!   text, as it streams, into content and calls, never letting raw call syntax into
//!   `content`.
//!
//! The competitors' mistakes this avoids: TGI sent `arguments` as an object and its
//! `auto` acted like `required`; vLLM needs a parser flag per model and its streaming
//! parsers lose or duplicate fragments. Here the grammar and the parser come from one
//! syntax description, and streams are parsed by the same code as whole outputs.

mod grammar;
mod parser;
mod scan;

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

pub use grammar::grammar_for;
pub use parser::{Parsed, ParserEvent, ToolCallParser};

/// The only kind of tool: OpenAI's `"type": "function"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolKind {
    #[default]
    Function,
}

/// One entry of a request's `tools`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: ToolKind,
    pub function: FunctionDefinition,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct FunctionDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON schema for the arguments object; absent means no arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// OpenAI's strict mode. Calls are always constrained here; `strict` only decides
    /// whether schema keywords the grammar cannot enforce are an error (strict) or
    /// ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A request's `tool_choice`. Absent, it is `none` without tools and `auto` with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// Never call: answer with text.
    None,
    /// Call or answer with text, as the model decides.
    Auto,
    /// Call one or more tools.
    Required,
    /// Call this tool.
    Function(String),
}

impl ToolChoice {
    const MODES: &'static [&'static str] = &["none", "auto", "required"];
}

impl Serialize for ToolChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ToolChoice::None => s.serialize_str("none"),
            ToolChoice::Auto => s.serialize_str("auto"),
            ToolChoice::Required => s.serialize_str("required"),
            ToolChoice::Function(name) => NamedChoice {
                kind: ToolKind::Function,
                function: NamedFunction { name: name.clone() },
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ChoiceVisitor;
        impl<'de> Visitor<'de> for ChoiceVisitor {
            type Value = ToolChoice;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""none", "auto", "required" or {"type": "function", "function": {"name": ...}}"#)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ToolChoice, E> {
                match v {
                    "none" => Ok(ToolChoice::None),
                    "auto" => Ok(ToolChoice::Auto),
                    "required" => Ok(ToolChoice::Required),
                    other => Err(E::unknown_variant(other, ToolChoice::MODES)),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ToolChoice, A::Error> {
                let named = NamedChoice::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ToolChoice::Function(named.function.name))
            }
        }
        d.deserialize_any(ChoiceVisitor)
    }
}

/// `{"type": "function", "function": {"name": ...}}`.
#[derive(Deserialize, Serialize)]
struct NamedChoice {
    #[serde(rename = "type")]
    kind: ToolKind,
    function: NamedFunction,
}

#[derive(Deserialize, Serialize)]
struct NamedFunction {
    name: String,
}

/// One call in a response's `message.tool_calls` (and in an assistant message of a
/// request's history).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: ToolKind,
    pub function: FunctionCall,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments object as JSON text, as the model wrote it.
    pub arguments: String,
}

/// One element of a stream chunk's `delta.tool_calls`: a call's start (`id`, `type`,
/// `function.name` and empty `arguments`), then fragments of its arguments.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ToolKind>,
    pub function: FunctionCallDelta,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FunctionCallDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

impl ToolCallDelta {
    /// A call's first delta.
    pub fn start(index: u32, id: String, name: String) -> Self {
        ToolCallDelta {
            index,
            id: Some(id),
            kind: Some(ToolKind::Function),
            function: FunctionCallDelta { name: Some(name), arguments: Some(String::new()) },
        }
    }

    /// More of call `index`'s arguments.
    pub fn arguments(index: u32, fragment: String) -> Self {
        ToolCallDelta {
            index,
            id: None,
            kind: None,
            function: FunctionCallDelta { name: None, arguments: Some(fragment) },
        }
    }
}

/// A fresh call id: `call_` and 24 random alphanumerics, like OpenAI's.
pub fn new_call_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // std's RandomState is SipHash under keys drawn from the OS once per thread (then
    // stepped): unpredictable enough for ids, without a dependency.
    let keys = std::collections::hash_map::RandomState::new();
    let mut id = String::with_capacity(29);
    id.push_str("call_");
    let mut word = 0u64;
    for i in 0..24u64 {
        // 62^10 < 2^64: ten characters per hash.
        if i % 10 == 0 {
            let mut h = keys.build_hasher();
            h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
            h.write_u64(i);
            word = h.finish();
        }
        id.push(char::from(ALPHABET[(word % 62) as usize]));
        word /= 62;
    }
    id
}

/// Most tools a request may give (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;
/// Longest tool name (OpenAI's limit).
pub const MAX_NAME_LEN: usize = 64;

/// Why a request's tools or tool choice are refused: OpenAI's message, and the request
/// field it names (`tools[1].function.name`, `tool_choice`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ToolError {
    param: String,
    message: String,
}

impl ToolError {
    fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        ToolError { param: param.into(), message: message.into() }
    }

    /// The request field at fault, as OpenAI's error `param`.
    pub fn param(&self) -> &str {
        &self.param
    }
}

/// Checks `tools` and `choice` as OpenAI does: names unique, non-empty, at most 64 of
/// `[a-zA-Z0-9_-]`; `parameters` an object; a named choice names a given tool; a
/// choice other than `none` needs tools.
pub fn validate_tools(tools: &[Tool], choice: &ToolChoice) -> Result<(), ToolError> {
    if tools.len() > MAX_TOOLS {
        return Err(ToolError::new(
            "tools",
            format!(
                "Invalid 'tools': array too long. Expected an array with maximum length \
                 {MAX_TOOLS}, but got an array with length {} instead.",
                tools.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for (i, tool) in tools.iter().enumerate() {
        let name = &tool.function.name;
        let param = format!("tools[{i}].function.name");
        if name.is_empty() {
            return Err(ToolError::new(
                &param,
                format!(
                    "Invalid '{param}': empty string. Expected a string with minimum length 1, \
                     but got an empty string instead."
                ),
            ));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(ToolError::new(
                &param,
                format!(
                    "Invalid '{param}': string too long. Expected a string with maximum length \
                     {MAX_NAME_LEN}, but got a string with length {} instead.",
                    name.len()
                ),
            ));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(ToolError::new(
                &param,
                format!(
                    "Invalid '{param}': string does not match pattern. Expected a string that \
                     matches the pattern '^[a-zA-Z0-9_-]+$'."
                ),
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err(ToolError::new(
                &param,
                format!(
                    "Invalid '{param}': duplicate function name '{name}'. Tool names must be unique."
                ),
            ));
        }
        if let Some(p) = &tool.function.parameters
            && !p.is_object()
        {
            let param = format!("tools[{i}].function.parameters");
            return Err(ToolError::new(
                &param,
                format!(
                    "Invalid type for '{param}': expected an object, but got {} instead.",
                    kind_of(p)
                ),
            ));
        }
    }
    match choice {
        ToolChoice::None => Ok(()),
        _ if tools.is_empty() => Err(ToolError::new(
            "tool_choice",
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
        )),
        ToolChoice::Function(name) if !seen.contains(name.as_str()) => Err(ToolError::new(
            "tool_choice",
            format!(
                "Invalid value for 'tool_choice': no function named '{name}' was specified in \
                 the 'tools' parameter."
            ),
        )),
        _ => Ok(()),
    }
}

/// A JSON value's kind as OpenAI's messages name it.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The call formats models are trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ToolFormat {
    /// Hermes 2 Pro / Qwen 2.5+: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
    /// one block per call, text before.
    Hermes,
    /// Llama 3.1+ custom tools: the whole answer is `{"name": ..., "parameters": {...}}`,
    /// optionally after `<|python_tag|>`; parallel calls separated by `;`.
    Llama3Json,
    /// Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`, or from v11
    /// (tokenizers with an `[ARGS]` token) `[TOOL_CALLS]name[ARGS]{...}` per call.
    Mistral,
}

impl ToolFormat {
    /// The names `--tool-call-syntax` takes.
    pub const NAMES: &'static [&'static str] = &["hermes", "llama3_json", "mistral"];

    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::Llama3Json => "llama3_json",
            ToolFormat::Mistral => "mistral",
        }
    }

    /// The text that starts a call (for Llama 3, an optional prefix of one).
    pub(crate) fn trigger(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "<tool_call>",
            ToolFormat::Llama3Json => "<|python_tag|>",
            ToolFormat::Mistral => "[TOOL_CALLS]",
        }
    }

    /// The text that ends a call, where the format has one.
    pub(crate) fn close(self) -> Option<&'static str> {
        match self {
            ToolFormat::Hermes => Some("</tool_call>"),
            _ => None,
        }
    }

    /// The key that holds the arguments.
    pub(crate) fn arguments_key(self) -> &'static str {
        match self {
            ToolFormat::Llama3Json => "parameters",
            _ => "arguments",
        }
    }
}

/// Mistral v11's marker between a call's name and its arguments.
pub(crate) const MISTRAL_ARGS: &str = "[ARGS]";

/// How a model writes tool calls by itself: its [`ToolFormat`], and the ids of the
/// format's markers where its vocabulary has them as special tokens (Mistral's
/// `[TOOL_CALLS]`, Llama's `<|python_tag|>`; Qwen's `<tool_call>` is not special and
/// stays text). A syntax from [`detect`](Self::detect) or a flag knows no ids: the
/// grammar then allows the markers as text only, which a model whose marker is a
/// special token will rarely spell. Resolve them with
/// [`with_vocabulary`](Self::with_vocabulary) once the model's tokenizer is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ToolSyntax {
    pub format: ToolFormat,
    /// The special token that starts a call.
    pub trigger_token: Option<u32>,
    /// The special token that ends a call (Hermes' `</tool_call>`).
    pub close_token: Option<u32>,
    /// Mistral v11's `[ARGS]`: its presence selects the `name[ARGS]{...}` form.
    pub args_token: Option<u32>,
}

impl ToolSyntax {
    pub const fn new(format: ToolFormat) -> Self {
        ToolSyntax { format, trigger_token: None, close_token: None, args_token: None }
    }

    /// The syntax a chat template teaches its model, from the markers it writes.
    pub fn detect(template_source: &str) -> Option<Self> {
        let has = |s: &str| template_source.contains(s);
        let format = if has("<tool_call>") {
            ToolFormat::Hermes
        } else if has("[TOOL_CALLS]") {
            ToolFormat::Mistral
        } else if has("<|python_tag|>") || (has("<|start_header_id|>") && has("ipython")) {
            ToolFormat::Llama3Json
        } else {
            return None;
        };
        Some(Self::new(format))
    }

    /// The same syntax with its markers' special-token ids, as `special_token` (e.g.
    /// `GrammarCompiler::special_token`) finds them in the model's vocabulary.
    pub fn with_vocabulary(self, special_token: impl Fn(&str) -> Option<u32>) -> Self {
        let format = self.format;
        ToolSyntax {
            format,
            trigger_token: special_token(format.trigger()),
            close_token: format.close().and_then(&special_token),
            args_token: match format {
                ToolFormat::Mistral => special_token(MISTRAL_ARGS),
                _ => None,
            },
        }
    }
}

impl fmt::Display for ToolSyntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.format.name())
    }
}

impl FromStr for ToolSyntax {
    type Err = String;

    /// `hermes`, `llama3_json` or `mistral` (`--tool-call-syntax`).
    fn from_str(s: &str) -> Result<Self, String> {
        let format = match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "hermes" => ToolFormat::Hermes,
            "llama3_json" => ToolFormat::Llama3Json,
            "mistral" => ToolFormat::Mistral,
            _ => {
                return Err(format!(
                    "unknown tool-call syntax {s:?}: expected one of {}",
                    ToolFormat::NAMES.join(", ")
                ));
            }
        };
        Ok(Self::new(format))
    }
}

/// What a generation's text holds when tools are in play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolParseMode {
    /// `required` or a named tool: the text is `{"name", "arguments"}` or an array of
    /// them (the grammar saw to it).
    Json,
    /// `auto`: text, and calls in the model's own syntax.
    Syntax(ToolSyntax),
}

/// How to parse a generation for these tools and choice; `None`: the text is content
/// (no tools, `none`, or `auto` for a model whose syntax is unknown).
pub fn parse_mode(
    tools: &[Tool],
    choice: &ToolChoice,
    syntax: Option<ToolSyntax>,
) -> Option<ToolParseMode> {
    if tools.is_empty() {
        return None;
    }
    match choice {
        ToolChoice::None => None,
        ToolChoice::Required | ToolChoice::Function(_) => Some(ToolParseMode::Json),
        ToolChoice::Auto => syntax.map(ToolParseMode::Syntax),
    }
}

#[cfg(test)]
mod tests;
