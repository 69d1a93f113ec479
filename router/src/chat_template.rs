//! Chat templates: a conversation (OpenAI-shaped messages, tools, documents) → the prompt text
//! a chat model was trained on, rendered exactly as transformers'
//! `apply_chat_template(..., tokenize=False)` renders it.
//!
//! [`ChatTemplates`] holds a model's compiled templates (a default one and optional named ones
//! such as `tool_use`) and its special tokens; [`ChatTemplates::from_model_dir`] finds them the
//! way transformers does, [`ChatTemplates::render`] renders a [`ChatInput`], and every failure is
//! a [`TemplateError`] — a template's own `raise_exception("...")` keeps its message verbatim.
//!
//! The design follows transformers' sandbox (`utils/chat_template_utils.py`): Jinja2 with
//! `trim_blocks`/`lstrip_blocks`, `raise_exception`, `strftime_now`, `{% generation %}` and a
//! `tojson` that is Python's `json.dumps`, here on minijinja with minijinja-contrib's Python
//! methods ([`sandbox`], [`pyjson`]). Before rendering, messages get transformers' own
//! normalisation (keys whose value is null are dropped, a message's reasoning is offered under
//! `reasoning_content` and `thinking`), and the special tokens come first in the variables so
//! that `chat_template_kwargs` may override them. Parity is measured, not assumed: `tests.rs`
//! renders the conversations that `scripts/chat_templates/render.py` rendered with transformers
//! through real models' templates and requires the same bytes (or the same refusal).

#[cfg(test)]
mod properties;
mod pyjson;
mod sandbox;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;
use std::sync::LazyLock;

use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, Value as JinjaValue};
use serde_json::{Map, Value};

use sandbox::{BoundedWriter, Clock, LIMITS, Raised};

/// The variables a render always sets; `chat_template_kwargs` may not replace them.
const RESERVED: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

/// transformers' names for a message's reasoning, the first being the one templates read.
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// Why a chat template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A template file or tokenizer_config.json could not be read or has the wrong shape.
    #[error("chat template: {0}")]
    Load(String),
    /// A template does not compile.
    #[error("chat template syntax error: {0}")]
    Syntax(String),
    /// No template applies: the model has only named templates and none is `default`.
    #[error("the model has no default chat template")]
    NoTemplate,
    /// The input cannot be rendered at all (as transformers refuses it before rendering).
    #[error("{0}")]
    Input(String),
    /// The template refused the conversation with `raise_exception(message)`: the message.
    #[error("{0}")]
    Raised(String),
    /// Rendering failed: an undefined attribute, a type error, a recursion limit...
    #[error("chat template error: {0}")]
    Render(String),
    /// The rendered prompt would exceed the size limit.
    #[error("the rendered chat template exceeds {limit} bytes")]
    TooLarge { limit: usize },
    /// The template did more work than any real template does.
    #[error("the chat template ran out of fuel (too much work for one prompt)")]
    OutOfFuel,
}

/// One conversation to render.
#[derive(Debug, Clone, Copy)]
pub struct ChatInput<'a> {
    /// Messages in the shape templates expect (`role`, `content` as a string or a list of parts,
    /// `tool_calls` with `arguments` as objects, `tool_call_id`, `name`, ...), passed on as they
    /// are apart from transformers' normalisation (see the module documentation).
    pub messages: &'a [Value],
    /// OpenAI-shaped tool definitions, passed as `tools` (`none` when absent).
    pub tools: Option<&'a [Value]>,
    /// Retrieval documents, passed as `documents` (`none` when absent).
    pub documents: Option<&'a [Value]>,
    pub add_generation_prompt: bool,
    /// `chat_template_kwargs`: extra variables (e.g. `enable_thinking`); they override special
    /// tokens but may not set `messages`, `tools`, `documents` or `add_generation_prompt`.
    pub kwargs: &'a Map<String, Value>,
}

impl<'a> ChatInput<'a> {
    /// Just messages, with the generation prompt: no tools, documents or kwargs.
    pub fn new(messages: &'a [Value]) -> ChatInput<'a> {
        static NO_KWARGS: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);
        ChatInput {
            messages,
            tools: None,
            documents: None,
            add_generation_prompt: true,
            kwargs: &NO_KWARGS,
        }
    }
}

/// A model's compiled chat templates and the special tokens they read.
pub struct ChatTemplates {
    env: Environment<'static>,
    /// (name, source as written) in load order; each is in `env` under its name.
    templates: Vec<(String, String)>,
    special_tokens: Map<String, Value>,
}

impl fmt::Debug for ChatTemplates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplates")
            .field("templates", &self.templates.iter().map(|(name, _)| name).collect::<Vec<_>>())
            .field("special_tokens", &self.special_tokens)
            .finish()
    }
}

impl ChatTemplates {
    /// From a model directory, as transformers loads a tokenizer's templates: a
    /// `chat_template.jinja` file (the default) and `additional_chat_templates/*.jinja` (named)
    /// take priority; else tokenizer_config.json's `chat_template`, a string or a list of
    /// `{"name", "template"}`. `override_` is `--chat-template`: the path of a file if such a
    /// file exists, else the template text itself; it replaces the model's templates.
    /// `Ok(None)` when the model has no template. Special tokens (`bos_token`, `eos_token`,
    /// `unk_token`, `pad_token` and every other `*_token` string, or AddedToken object's
    /// `content`) come from tokenizer_config.json, with special_tokens_map.json filling gaps.
    pub fn from_model_dir(
        dir: &Path,
        override_: Option<&str>,
    ) -> Result<Option<ChatTemplates>, TemplateError> {
        let config = read_json_object(&dir.join("tokenizer_config.json"))?;
        let mut tokens = special_tokens(&config);
        for (key, value) in special_tokens(&read_json_object(&dir.join("special_tokens_map.json"))?)
        {
            tokens.entry(key).or_insert(value);
        }

        if let Some(text) = override_ {
            let path = Path::new(text);
            let source = if path.is_file() { read_text(path)? } else { text.to_owned() };
            return ChatTemplates::new(Some(source), Vec::new(), tokens).map(Some);
        }

        let default_file = dir.join("chat_template.jinja");
        let default = if default_file.is_file() { Some(read_text(&default_file)?) } else { None };
        let mut named = Vec::new();
        let extra_dir = dir.join("additional_chat_templates");
        if extra_dir.is_dir() {
            let entries = std::fs::read_dir(&extra_dir).map_err(|e| load_error(&extra_dir, e))?;
            for entry in entries {
                let path = entry.map_err(|e| load_error(&extra_dir, e))?.path();
                if let Some(name) =
                    path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".jinja"))
                {
                    named.push((name.to_owned(), read_text(&path)?));
                }
            }
            named.sort();
        }
        if default.is_some() || !named.is_empty() {
            return ChatTemplates::new(default, named, tokens).map(Some);
        }

        match config.get("chat_template") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(source)) => {
                ChatTemplates::new(Some(source.clone()), Vec::new(), tokens).map(Some)
            }
            Some(Value::Array(list)) => {
                let named = list
                    .iter()
                    .map(|entry| match (entry.get("name"), entry.get("template")) {
                        (Some(Value::String(name)), Some(Value::String(template))) => {
                            Ok((name.clone(), template.clone()))
                        }
                        _ => Err(TemplateError::Load(
                            "chat_template list entries need a \"name\" and a \"template\"".into(),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                ChatTemplates::new(None, named, tokens).map(Some)
            }
            Some(_) => Err(TemplateError::Load(
                "chat_template must be a string or a list of named templates".into(),
            )),
        }
    }

    /// From template texts: `default` (named `default`) and other named ones. Compiles them all.
    pub fn new(
        default: Option<String>,
        named: Vec<(String, String)>,
        special_tokens: Map<String, Value>,
    ) -> Result<ChatTemplates, TemplateError> {
        ChatTemplates::with_clock(default, named, special_tokens, sandbox::system_clock)
    }

    fn with_clock(
        default: Option<String>,
        named: Vec<(String, String)>,
        special_tokens: Map<String, Value>,
        clock: Clock,
    ) -> Result<ChatTemplates, TemplateError> {
        let templates: Vec<(String, String)> =
            default.map(|d| ("default".to_owned(), d)).into_iter().chain(named).collect();
        if templates.is_empty() {
            return Err(TemplateError::NoTemplate);
        }
        let mut env = sandbox::environment(clock);
        for (i, (name, source)) in templates.iter().enumerate() {
            if templates[..i].iter().any(|(other, _)| other == name) {
                return Err(TemplateError::Load(format!("two chat templates are named {name:?}")));
            }
            env.add_template_owned(name.clone(), sandbox::rewrite_generation_tags(source))
                .map_err(|e| {
                    let detail = e.detail().unwrap_or("invalid syntax");
                    TemplateError::Syntax(format!(
                        "`{name}`, line {}: {detail}",
                        e.line().unwrap_or(0)
                    ))
                })?;
        }
        Ok(ChatTemplates { env, templates, special_tokens })
    }

    /// transformers' choice: the only template; else `tool_use` when tools are given and it
    /// exists; else `default`.
    fn select(&self, with_tools: bool) -> Option<&(String, String)> {
        let named = |name: &str| self.templates.iter().find(|(n, _)| n == name);
        match self.templates.as_slice() {
            [only] => Some(only),
            _ if with_tools && named("tool_use").is_some() => named("tool_use"),
            _ => named("default"),
        }
    }

    /// The source text of the template [`render`](Self::render) would use (empty when none
    /// applies), for callers that inspect it, e.g. to detect a tool-call syntax.
    pub fn source(&self, with_tools: bool) -> &str {
        self.select(with_tools).map_or("", |(_, source)| source.as_str())
    }

    /// The names of the loaded templates (`default` for the unnamed one).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.templates.iter().map(|(name, _)| name.as_str())
    }

    /// The special tokens passed to every render.
    pub fn special_tokens(&self) -> &Map<String, Value> {
        &self.special_tokens
    }

    /// Renders one conversation with the template [`select`](Self::select)ed for it.
    pub fn render(&self, input: &ChatInput<'_>) -> Result<String, TemplateError> {
        let (name, _) = self.select(input.tools.is_some()).ok_or(TemplateError::NoTemplate)?;
        if input.messages.is_empty() {
            return Err(TemplateError::Input(
                "Cannot apply chat template to an empty conversation".into(),
            ));
        }
        if let Some(key) = RESERVED.iter().find(|key| input.kwargs.contains_key(**key)) {
            return Err(TemplateError::Input(format!("chat_template_kwargs may not set `{key}`")));
        }
        let messages =
            input.messages.iter().map(normalize_message).collect::<Result<Vec<_>, _>>()?;
        let optional = |list: Option<&[Value]>| list.map_or(JinjaValue::from(()), jinja);
        let variables = self
            .special_tokens
            .iter()
            .chain(input.kwargs)
            .map(|(key, value)| (key.as_str(), jinja(value)))
            .chain([
                ("messages", JinjaValue::from(messages)),
                ("tools", optional(input.tools)),
                ("documents", optional(input.documents)),
                ("add_generation_prompt", JinjaValue::from(input.add_generation_prompt)),
            ]);
        let context = JinjaValue::from_pairs(variables);

        let template =
            self.env.get_template(name).map_err(|e| TemplateError::Render(e.to_string()))?;
        let mut out = BoundedWriter::new(LIMITS.max_output_bytes);
        match template.render_captured_to(context, &mut out) {
            Ok(_) => String::from_utf8(out.buf)
                .map_err(|_| TemplateError::Render("the output is not UTF-8".into())),
            Err(_) if out.overflowed => {
                Err(TemplateError::TooLarge { limit: LIMITS.max_output_bytes })
            }
            Err(e) => Err(render_error(&e)),
        }
    }
}

/// transformers' normalisation of one message: keys whose value is null are dropped (many
/// templates handle a missing `content` but print `None` for a null one), and a reasoning text
/// under any of [`REASONING_FIELDS`] is also offered as `thinking` (first) and
/// `reasoning_content` (gpt-oss reads the one, Qwen the other).
fn normalize_message(message: &Value) -> Result<JinjaValue, TemplateError> {
    let Value::Object(fields) = message else {
        let kind = match message {
            Value::Array(_) => "a list",
            Value::String(_) => "a string",
            _ => "a scalar",
        };
        return Err(TemplateError::Input(format!("chat messages must be objects, not {kind}")));
    };
    let present = fields.iter().filter(|(_, value)| !value.is_null());
    let reasoning =
        REASONING_FIELDS.iter().find_map(|key| fields.get(*key).filter(|v| !v.is_null()));
    let Some(reasoning) = reasoning else {
        return Ok(JinjaValue::from_pairs(
            present.map(|(key, value)| (key.as_str(), jinja(value))),
        ));
    };
    // Python's {"thinking": r, **message, "reasoning_content": r}: a key keeps its first position.
    let mut aliased: Map<String, Value> = Map::new();
    aliased.insert("thinking".into(), reasoning.clone());
    for (key, value) in present {
        aliased.insert(key.clone(), value.clone());
    }
    aliased.insert("reasoning_content".into(), reasoning.clone());
    Ok(jinja(&aliased))
}

/// A JSON value as a template value (maps keep their order: minijinja's `preserve_order`).
fn jinja<T: serde::Serialize + ?Sized>(value: &T) -> JinjaValue {
    JinjaValue::from(Serde(value))
}

/// The template's own message for `raise_exception`; minijinja's short description otherwise.
fn render_error(error: &minijinja::Error) -> TemplateError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return TemplateError::Raised(raised.0.clone());
        }
        source = e.source();
    }
    match error.kind() {
        ErrorKind::OutOfFuel => TemplateError::OutOfFuel,
        _ => TemplateError::Render(error.to_string()),
    }
}

/// Special tokens: every `*_token` key whose value is a string or an AddedToken object.
fn special_tokens(config: &Map<String, Value>) -> Map<String, Value> {
    config
        .iter()
        .filter(|(key, _)| key.ends_with("_token"))
        .filter_map(|(key, value)| {
            let content = match value {
                Value::String(s) => s.clone(),
                Value::Object(token) => token.get("content")?.as_str()?.to_owned(),
                _ => return None,
            };
            Some((key.clone(), Value::String(content)))
        })
        .collect()
}

/// A JSON object from `path`; an empty one when the file does not exist.
fn read_json_object(path: &Path) -> Result<Map<String, Value>, TemplateError> {
    if !path.is_file() {
        return Ok(Map::new());
    }
    match serde_json::from_str(&read_text(path)?) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(TemplateError::Load(format!("{} is not a JSON object", path.display()))),
        Err(e) => Err(TemplateError::Load(format!("{}: {e}", path.display()))),
    }
}

fn read_text(path: &Path) -> Result<String, TemplateError> {
    std::fs::read_to_string(path).map_err(|e| load_error(path, e))
}

fn load_error(path: &Path, e: std::io::Error) -> TemplateError {
    TemplateError::Load(format!("{}: {e}", path.display()))
}
