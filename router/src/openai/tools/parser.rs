//! [`ToolCallParser`]: a generation's text, as it streams, into content and tool calls.
//!
//! The parser reads text in whatever pieces the detokenizer hands it and emits
//! [`ParserEvent`]s: content, a call's start (`id`, name) and fragments of its
//! arguments, already shaped as OpenAI's stream deltas. The fragments of a call,
//! concatenated, are the arguments exactly as the model wrote them (compact JSON under
//! the grammar): clients accumulate them, so nothing is re-serialized. [`finish`]
//! gives the same result whole, for non-stream responses.
//!
//! Content never holds call syntax. Text that may be the start of a trigger
//! (`<tool` at the end of a piece) is held back until the next piece settles it, and a
//! call is only reported once its object has shown a complete `"name"`: until then its
//! text is held too, and given back as content if it turns out not to be a call
//! (`<tool_call>not json`, or an output cut off before the name). Once started, a call
//! stands: a cut-off or malformed remainder ends it with the arguments so far (`{}` if
//! none came), as OpenAI's truncated calls do. Whitespace around calls is dropped
//! (what separates text before a call from text after it is kept once), and so is
//! trailing whitespace of an output with calls.
//!
//! The envelope is read as JSON structure only (strings, escapes, nesting): `"name"`
//! must be a string; the arguments (`"arguments"` or Llama's `"parameters"`, before or
//! after the name) are streamed raw; other keys are skipped. A string-valued
//! `"arguments"` (some models encode the object twice) is decoded and sent whole.
//!
//! [`finish`]: ToolCallParser::finish

use super::scan::{Extent, Scan, Str};
use super::{
    FunctionCall, MISTRAL_ARGS, ToolCall, ToolCallDelta, ToolFormat, ToolKind, ToolParseMode,
    new_call_id,
};

/// What a piece of text became.
#[derive(Clone, Debug, PartialEq)]
pub enum ParserEvent {
    /// Text for `content`.
    Content(String),
    /// A call's start (`id`, `type` and `function.name` set, `arguments` empty) or more
    /// of its arguments (`function.arguments` only).
    Call(ToolCallDelta),
}

/// A whole generation, parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    /// The text outside calls; `None` when there was none.
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

/// One generation's parser. Feed it with [`push`](Self::push), end it with
/// [`flush`](Self::flush) (streams) or [`finish`](Self::finish) (whole outputs).
#[derive(Debug)]
pub struct ToolCallParser {
    mode: ToolParseMode,
    state: State,
    /// Content's trailing whitespace, held until more content shows it is inside text.
    held: String,
    /// No content since the last call ended: the next content's leading whitespace goes.
    after_call: bool,
    content: String,
    calls: Vec<ToolCall>,
    events: Vec<ParserEvent>,
    ended: bool,
}

#[derive(Debug)]
enum State {
    /// Free text; `pending` may be the start of the trigger.
    Text { pending: String },
    /// JSON and Llama 3: nothing but whitespace (and Llama's optional tag) yet.
    Start { seen: String },
    /// Content to the end: nothing can start a call any more.
    Plain,
    /// Inside call syntax. `raw` is what it consumed since the last call started or
    /// ended: the content it gives back if no call comes of it.
    Calls { phase: Phase, raw: String },
}

#[derive(Debug)]
enum Phase {
    /// Whitespace, then a call object's `{`.
    Open(Then),
    /// Inside a call object.
    Object(Object, Then),
    /// After a call object.
    After(Then),
    /// After Mistral's trigger: an array, or v11's `name[ARGS]`.
    MistralOpen,
    /// After `[`: whitespace, then the first call's `{`.
    ArrayFirst,
    /// v11: the name so far, then `[ARGS]`.
    Named(String),
    /// v11: call `index`'s arguments.
    NamedArgs(u32, Extent),
    /// Hermes: what has come of `</tool_call>`.
    Close(String),
}

/// What follows a call object.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Hermes' closing tag.
    Close,
    /// `,` and another call, or `]`.
    Array,
    /// Llama 3: `;` and another call.
    Semicolon,
    /// Nothing: JSON mode's single object.
    End,
}

/// A call object, `{"name": ..., "arguments": ...}`, read so far.
#[derive(Debug, Default)]
struct Object {
    step: Step,
    /// The call, once its name came.
    call: Option<u32>,
    /// Arguments seen before the name.
    early: String,
    has_arguments: bool,
}

#[derive(Debug, Default)]
enum Step {
    /// After `{`: a key, or `}`.
    #[default]
    KeyStart,
    /// After `,`: a key.
    NextKey,
    Key(Str),
    Colon(Field),
    ValueStart(Field),
    Name(Str),
    /// The arguments so far; a string value is kept whole (`quoted`) to decode.
    Arguments(Extent, String),
    Skip(Extent),
    /// After a value: `,` or `}`.
    Next,
}

#[derive(Clone, Copy, Debug)]
enum Field {
    Name,
    Arguments,
    Other,
}

/// How a call object's character went.
enum ObjectStep {
    Continue,
    /// The call's name came: it started.
    Started,
    /// The object closed.
    Closed,
    /// Not a call object (any more).
    Reject,
}

/// Llama 3's optional prefix.
const PYTHON_TAG: &str = "<|python_tag|>";

impl ToolCallParser {
    pub fn new(mode: ToolParseMode) -> Self {
        let state = match mode {
            ToolParseMode::Json => State::Start { seen: String::new() },
            ToolParseMode::Syntax(s) if s.format == ToolFormat::Llama3Json => {
                State::Start { seen: String::new() }
            }
            ToolParseMode::Syntax(_) => State::Text { pending: String::new() },
        };
        ToolCallParser {
            mode,
            state,
            held: String::new(),
            after_call: false,
            content: String::new(),
            calls: Vec::new(),
            events: Vec::new(),
            ended: false,
        }
    }

    /// The events `text` (the next piece of the output) settles.
    pub fn push(&mut self, text: &str) -> Vec<ParserEvent> {
        if !self.ended {
            self.feed(text);
        }
        std::mem::take(&mut self.events)
    }

    /// The end of the output: what was held back, settled. Later pushes are ignored.
    pub fn flush(&mut self) -> Vec<ParserEvent> {
        if !self.ended {
            self.ended = true;
            match std::mem::replace(&mut self.state, State::Plain) {
                State::Text { pending } => self.content(&pending),
                State::Start { seen } => self.content(&seen),
                State::Plain => {}
                State::Calls { phase, raw } => match phase {
                    Phase::Object(Object { call: Some(index), .. }, _)
                    | Phase::NamedArgs(index, _) => self.end_call(index),
                    Phase::After(_) | Phase::Close(_) => {}
                    _ => self.content(&raw),
                },
            }
            if self.calls.is_empty() {
                let held = std::mem::take(&mut self.held);
                self.emit_content(held);
            }
            self.held.clear();
        }
        std::mem::take(&mut self.events)
    }

    /// The whole output's content and calls (flushing first).
    pub fn finish(mut self) -> Parsed {
        self.flush();
        Parsed { content: (!self.content.is_empty()).then_some(self.content), calls: self.calls }
    }

    fn format(&self) -> Option<ToolFormat> {
        match self.mode {
            ToolParseMode::Json => None,
            ToolParseMode::Syntax(s) => Some(s.format),
        }
    }

    /// Where text goes once a stretch of call syntax is over.
    fn after_calls(&self) -> State {
        match self.format() {
            Some(ToolFormat::Hermes | ToolFormat::Mistral) => {
                State::Text { pending: String::new() }
            }
            _ => State::Plain,
        }
    }

    fn feed(&mut self, mut rest: &str) {
        while !rest.is_empty() {
            rest = match std::mem::replace(&mut self.state, State::Plain) {
                State::Plain => {
                    self.content(rest);
                    ""
                }
                State::Text { pending } => self.text(pending, rest),
                state => {
                    self.state = state;
                    let Some(c) = rest.chars().next() else { break };
                    self.char(c);
                    &rest[c.len_utf8()..]
                }
            };
        }
    }

    /// Free text: content up to the trigger, then call syntax; a possible start of the
    /// trigger at the end is held.
    fn text<'a>(&mut self, mut pending: String, rest: &'a str) -> &'a str {
        let Some(format) = self.format() else {
            self.content(&pending);
            self.content(rest);
            return "";
        };
        let trigger = format.trigger();
        let joined = pending.len();
        pending.push_str(rest);
        if let Some(at) = pending.find(trigger) {
            self.content(&pending[..at]);
            let phase = match format {
                ToolFormat::Mistral => Phase::MistralOpen,
                _ => Phase::Open(Then::Close),
            };
            self.state = State::Calls { phase, raw: trigger.to_string() };
            // What followed the trigger, in `rest`'s terms.
            return &rest[at + trigger.len() - joined..];
        }
        let keep = (pending.len().saturating_sub(trigger.len())..=pending.len())
            .filter(|&k| pending.is_char_boundary(k))
            .find(|&k| trigger.starts_with(&pending[k..]))
            .unwrap_or(pending.len());
        self.content(&pending[..keep]);
        pending.drain(..keep);
        self.state = State::Text { pending };
        ""
    }

    fn char(&mut self, c: char) {
        match std::mem::replace(&mut self.state, State::Plain) {
            State::Start { mut seen } => self.start(&mut seen, c),
            State::Calls { phase, mut raw } => {
                raw.push(c);
                self.syntax(phase, raw, c);
            }
            other => self.state = other,
        }
    }

    /// JSON and Llama 3 before anything but whitespace: a call's `{` (or `[`, JSON),
    /// Llama's tag, or content for good.
    fn start(&mut self, seen: &mut String, c: char) {
        let llama = self.format() == Some(ToolFormat::Llama3Json);
        seen.push(c);
        let tail = seen.trim_start();
        let after_tag = tail.strip_prefix(PYTHON_TAG).filter(|_| llama);
        let head = after_tag.map_or(tail, str::trim_start);
        let phase = match head {
            "" => None,
            "{" => Some(Phase::Object(
                Object::default(),
                if llama { Then::Semicolon } else { Then::End },
            )),
            "[" if !llama => Some(Phase::ArrayFirst),
            t if llama && after_tag.is_none() && PYTHON_TAG.starts_with(t) => None,
            _ => {
                let seen = std::mem::take(seen);
                self.state = State::Plain;
                self.content(&seen);
                return;
            }
        };
        self.state = match phase {
            None => State::Start { seen: std::mem::take(seen) },
            Some(phase) => State::Calls { phase, raw: std::mem::take(seen) },
        };
    }

    /// One character of call syntax (already in `raw`).
    fn syntax(&mut self, phase: Phase, mut raw: String, c: char) {
        let ws = c.is_whitespace();
        let next = match phase {
            Phase::Open(then) if ws => Phase::Open(then),
            Phase::Open(then) if c == '{' => Phase::Object(Object::default(), then),
            Phase::ArrayFirst if ws => Phase::ArrayFirst,
            Phase::ArrayFirst if c == '{' => Phase::Object(Object::default(), Then::Array),
            Phase::MistralOpen if ws => Phase::MistralOpen,
            Phase::MistralOpen if c == '[' => Phase::ArrayFirst,
            Phase::MistralOpen if is_name_char(c) => Phase::Named(c.to_string()),
            Phase::Object(mut object, then) => match self.object(&mut object, c) {
                ObjectStep::Continue => Phase::Object(object, then),
                ObjectStep::Started => {
                    raw.clear();
                    Phase::Object(object, then)
                }
                ObjectStep::Closed => match object.call {
                    Some(index) => {
                        self.end_call(index);
                        raw.clear();
                        Phase::After(then)
                    }
                    None => return self.reject(None, raw, c),
                },
                ObjectStep::Reject => return self.reject(object.call, raw, c),
            },
            Phase::After(then) => match (then, c) {
                (_, c) if c.is_whitespace() => Phase::After(then),
                (Then::Close, c) => return self.syntax(Phase::Close(String::new()), raw, c),
                (Then::Array, ',') => Phase::Open(Then::Array),
                (Then::Array, ']') => {
                    self.state = self.after_calls();
                    return;
                }
                (Then::Semicolon, ';') => Phase::Open(Then::Semicolon),
                _ => return self.done_then(&c.to_string()),
            },
            Phase::Close(mut matched) => {
                let close = self.format().and_then(ToolFormat::close).unwrap_or_default();
                if matched.is_empty() && ws {
                    Phase::Close(matched)
                } else {
                    matched.push(c);
                    if matched == close {
                        self.state = self.after_calls();
                        return;
                    }
                    if !close.starts_with(&matched) {
                        return self.done_then(&matched);
                    }
                    Phase::Close(matched)
                }
            }
            Phase::Named(mut name) => {
                name.push(c);
                if let Some(n) =
                    name.strip_suffix(MISTRAL_ARGS).filter(|n| n.chars().all(is_name_char))
                {
                    let index = self.start_call(n.to_string());
                    raw.clear();
                    Phase::NamedArgs(index, Extent::default())
                } else if named_prefix(&name) {
                    Phase::Named(name)
                } else {
                    return self.reject(None, raw, c);
                }
            }
            Phase::NamedArgs(index, mut value) => match value.scan(c) {
                Scan::Skip => Phase::NamedArgs(index, value),
                Scan::Take => {
                    self.arguments(index, &c.to_string());
                    Phase::NamedArgs(index, value)
                }
                Scan::Last => {
                    self.arguments(index, &c.to_string());
                    self.end_call(index);
                    self.state = self.after_calls();
                    return;
                }
                Scan::Ended | Scan::Invalid => return self.reject(Some(index), raw, c),
            },
            _ => return self.reject(None, raw, c),
        };
        self.state = State::Calls { phase: next, raw };
    }

    /// One character inside a call object.
    fn object(&mut self, object: &mut Object, c: char) -> ObjectStep {
        let ws = c.is_whitespace();
        let step = std::mem::take(&mut object.step);
        object.step = match step {
            Step::KeyStart | Step::NextKey if ws => step,
            Step::KeyStart | Step::NextKey if c == '"' => Step::Key(Str::opened()),
            Step::KeyStart if c == '}' => return ObjectStep::Closed,
            Step::Key(mut key) => {
                if !key.take(c) {
                    object.step = Step::Key(key);
                    return ObjectStep::Continue;
                }
                let field = match key.decode().as_deref() {
                    Some("name") if object.call.is_none() => Field::Name,
                    Some("arguments" | "parameters") if !object.has_arguments => Field::Arguments,
                    Some(_) => Field::Other,
                    None => return ObjectStep::Reject,
                };
                Step::Colon(field)
            }
            Step::Colon(field) if ws => Step::Colon(field),
            Step::Colon(field) if c == ':' => Step::ValueStart(field),
            Step::ValueStart(field) if ws => Step::ValueStart(field),
            Step::ValueStart(Field::Name) if c == '"' => Step::Name(Str::opened()),
            Step::ValueStart(Field::Arguments) => {
                object.has_arguments = true;
                object.step = Step::Arguments(Extent::default(), String::new());
                return self.object(object, c);
            }
            Step::ValueStart(Field::Other) => {
                object.step = Step::Skip(Extent::default());
                return self.object(object, c);
            }
            Step::Name(mut name) => {
                if !name.take(c) {
                    object.step = Step::Name(name);
                    return ObjectStep::Continue;
                }
                let Some(name) = name.decode() else { return ObjectStep::Reject };
                let index = self.start_call(name);
                object.call = Some(index);
                let early = std::mem::take(&mut object.early);
                self.arguments(index, &early);
                object.step = Step::Next;
                return ObjectStep::Started;
            }
            Step::Arguments(mut value, mut quoted) => {
                let scan = value.scan(c);
                if matches!(scan, Scan::Take | Scan::Last) {
                    if value.string {
                        quoted.push(c);
                    } else {
                        self.object_arguments(object, &c.to_string());
                    }
                }
                match scan {
                    Scan::Skip | Scan::Take => Step::Arguments(value, quoted),
                    Scan::Last => {
                        if value.string {
                            // `"{\"a\": 1}"`: the object, encoded twice; send it once.
                            let text: String = serde_json::from_str(&quoted).unwrap_or(quoted);
                            self.object_arguments(object, &text);
                        }
                        Step::Next
                    }
                    Scan::Ended => {
                        object.step = Step::Next;
                        return self.object(object, c);
                    }
                    Scan::Invalid => return ObjectStep::Reject,
                }
            }
            Step::Skip(mut value) => match value.scan(c) {
                Scan::Skip | Scan::Take => Step::Skip(value),
                Scan::Last => Step::Next,
                Scan::Ended => {
                    object.step = Step::Next;
                    return self.object(object, c);
                }
                Scan::Invalid => return ObjectStep::Reject,
            },
            Step::Next if ws => Step::Next,
            Step::Next if c == ',' => Step::NextKey,
            Step::Next if c == '}' => return ObjectStep::Closed,
            _ => return ObjectStep::Reject,
        };
        ObjectStep::Continue
    }

    /// Arguments text of `object`'s call, or kept until its name comes.
    fn object_arguments(&mut self, object: &mut Object, text: &str) {
        match object.call {
            Some(index) => self.arguments(index, text),
            None => object.early.push_str(text),
        }
    }

    /// The syntax was not a call after all (`call: None`: give its text back as
    /// content), or a started call broke off (end it). Either way `c` is text again.
    fn reject(&mut self, call: Option<u32>, mut raw: String, c: char) {
        match call {
            Some(index) => self.end_call(index),
            None => {
                raw.pop();
                self.content(&raw);
            }
        }
        self.done_then(&c.to_string());
    }

    /// Call syntax is over; `text` is what comes after it.
    fn done_then(&mut self, text: &str) {
        self.state = self.after_calls();
        self.feed(text);
    }

    fn start_call(&mut self, name: String) -> u32 {
        let index = self.calls.len() as u32;
        let id = new_call_id();
        self.calls.push(ToolCall {
            id: id.clone(),
            kind: ToolKind::Function,
            function: FunctionCall { name: name.clone(), arguments: String::new() },
        });
        self.events.push(ParserEvent::Call(ToolCallDelta::start(index, id, name)));
        index
    }

    fn arguments(&mut self, index: u32, text: &str) {
        if text.is_empty() {
            return;
        }
        self.calls[index as usize].function.arguments.push_str(text);
        if let Some(ParserEvent::Call(last)) = self.events.last_mut()
            && last.index == index
            && last.id.is_none()
            && let Some(args) = &mut last.function.arguments
        {
            args.push_str(text);
            return;
        }
        self.events.push(ParserEvent::Call(ToolCallDelta::arguments(index, text.to_string())));
    }

    fn end_call(&mut self, index: u32) {
        if self.calls[index as usize].function.arguments.is_empty() {
            self.arguments(index, "{}");
        }
        self.after_call = true;
    }

    /// Text for content. Trailing whitespace is held: it only shows if more text
    /// follows. Whitespace right after a call goes, and so does the held whitespace
    /// before content that follows calls the output started with.
    fn content(&mut self, text: &str) {
        let text = if self.after_call { text.trim_start() } else { text };
        if text.is_empty() {
            return;
        }
        self.after_call = false;
        self.held.push_str(text);
        let body = self.held.trim_end().len();
        if body == 0 {
            return;
        }
        let tail = self.held.split_off(body);
        let mut text = std::mem::replace(&mut self.held, tail);
        if self.content.is_empty() && !self.calls.is_empty() {
            text = text.trim_start().to_string();
        }
        self.emit_content(text);
    }

    fn emit_content(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        self.content.push_str(&text);
        if let Some(ParserEvent::Content(last)) = self.events.last_mut() {
            last.push_str(&text);
        } else {
            self.events.push(ParserEvent::Content(text));
        }
    }
}

/// A character of a v11 call's name.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// `name` is name characters, then perhaps the start of `[ARGS]`.
fn named_prefix(name: &str) -> bool {
    let cut = name.find('[').unwrap_or(name.len());
    let (n, marker) = name.split_at(cut);
    !n.is_empty() && n.chars().all(is_name_char) && MISTRAL_ARGS.starts_with(marker)
}
