//! [`grammar_for`]: the grammar that keeps a request's tool calls valid.
//!
//! One JSON schema describes a call of any of the request's tools: an object whose
//! `name` is one tool's name (a `const`) and whose arguments follow that tool's
//! `parameters`, hoisted into `$defs` (their own `#/...` refs moved along) so they sit
//! at the same place whatever wraps them. `required` and named choices constrain the
//! whole output to that schema (or, with `parallel_tool_calls`, to it or an array of
//! one or more calls); EOS comes right after. `auto` is a Lark grammar in llguidance's
//! syntax: free text that can never contain the call trigger, so the trigger is the
//! one way out of it, and after the trigger the same schema as a `%json` rule. That is
//! llguidance's documented tool-calling pattern, without `lazy` (a text terminal that
//! excludes the trigger ends exactly where the trigger does) and without `stop` (which
//! would need backtracking). A marker the vocabulary has as a special token is allowed
//! both ways: its token (`<[id]>`), and its text.
//!
//! JSON is compact ([`json_options`]: at most one space after `:` and `,`), and lenient
//! about schema keywords llguidance cannot enforce unless every tool is `strict`.

use rill_backend::grammar::{GrammarSpec, json_options};
use serde_json::{Map, Value, json};

use super::{Tool, ToolChoice, ToolFormat, ToolSyntax};

/// The grammar for `tools` under `choice`, or `None` when nothing is constrained: no
/// tools, `none`, or `auto` for a model whose syntax is unknown (its calls cannot be
/// told from text, so it is left free and parsed as text).
pub fn grammar_for(
    tools: &[Tool],
    choice: &ToolChoice,
    parallel: bool,
    syntax: Option<ToolSyntax>,
) -> Option<GrammarSpec> {
    let chosen: Vec<&Tool> = match choice {
        ToolChoice::None => return None,
        ToolChoice::Function(name) => tools.iter().filter(|t| &t.function.name == name).collect(),
        ToolChoice::Auto | ToolChoice::Required => tools.iter().collect(),
    };
    if chosen.is_empty() {
        return None;
    }
    if *choice == ToolChoice::Auto {
        return syntax.map(|s| GrammarSpec::Lark(auto_lark(&chosen, parallel, s)));
    }
    // A model that writes Llama 3's `parameters` keeps its habit; the parser takes both.
    let key = syntax.map_or("arguments", |s| s.format.arguments_key());
    let calls = CallSchema::new(&chosen, key);
    let root = if parallel {
        json!({"anyOf": [calls.one(), {"type": "array", "items": calls.one(), "minItems": 1}]})
    } else {
        calls.one()
    };
    Some(GrammarSpec::JsonSchema(calls.document(root)))
}

/// A call of any of the tools, as JSON schema parts.
struct CallSchema {
    /// `rill_call` (the call) and `rill_args_<i>` (tool i's parameters).
    defs: Map<String, Value>,
    lenient: bool,
}

impl CallSchema {
    fn new(tools: &[&Tool], key: &str) -> Self {
        let mut defs = Map::new();
        let mut variants = Vec::with_capacity(tools.len());
        for (i, tool) in tools.iter().enumerate() {
            let def = format!("rill_args_{i}");
            defs.insert(def.clone(), arguments_schema(tool, &format!("#/$defs/{def}")));
            variants.push(json!({
                "type": "object",
                "properties": {
                    "name": {"const": tool.function.name},
                    key: {"$ref": format!("#/$defs/{def}")}
                },
                "required": ["name", key],
                "additionalProperties": false
            }));
        }
        let call = match <[Value; 1]>::try_from(variants) {
            Ok([one]) => one,
            Err(variants) => json!({"anyOf": variants}),
        };
        defs.insert("rill_call".into(), call);
        let lenient = !tools.iter().all(|t| t.function.strict == Some(true));
        CallSchema { defs, lenient }
    }

    /// A reference to one call.
    fn one(&self) -> Value {
        json!({"$ref": "#/$defs/rill_call"})
    }

    /// A whole schema document whose root is `root`.
    fn document(&self, root: Value) -> Value {
        let mut doc = match root {
            Value::Object(map) => map,
            other => Map::from_iter([("allOf".to_string(), json!([other]))]),
        };
        doc.insert("$defs".into(), Value::Object(self.defs.clone()));
        doc.insert("x-guidance".into(), guidance(self.lenient));
        Value::Object(doc)
    }
}

/// Compact JSON; lenient unless strict.
fn guidance(lenient: bool) -> Value {
    let mut options = json_options();
    if lenient {
        options["lenient"] = json!(true);
    }
    options
}

/// A tool's arguments schema, to be placed at `location` (a `#/...` pointer): no
/// parameters means an empty object; an object is what OpenAI calls take, so a schema
/// without a `type` gets `object`.
fn arguments_schema(tool: &Tool, location: &str) -> Value {
    let Some(Value::Object(params)) = &tool.function.parameters else {
        return json!({"type": "object", "properties": {}, "additionalProperties": false});
    };
    let mut params = params.clone();
    params.shift_remove("$schema");
    params.entry("type").or_insert_with(|| json!("object"));
    let mut schema = Value::Object(params);
    if schema.get("$id").is_none() {
        relocate_refs(&mut schema, location);
    }
    schema
}

/// Keywords whose values are data, not schemas: refs inside them are not refs.
const DATA_KEYWORDS: &[&str] = &["const", "enum", "default", "examples"];

/// Rewrites `#` and `#/...` refs of a schema moved to `location`. A subschema with its
/// own `$id` is a resource whose refs are relative to itself: left alone.
fn relocate_refs(schema: &mut Value, location: &str) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref") {
                if r == "#" {
                    *r = location.to_string();
                } else if let Some(pointer) = r.strip_prefix('#').filter(|p| p.starts_with('/')) {
                    *r = format!("{location}{pointer}");
                }
            }
            for (key, value) in map.iter_mut() {
                if DATA_KEYWORDS.contains(&key.as_str()) || value.get("$id").is_some() {
                    continue;
                }
                relocate_refs(value, location);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| relocate_refs(v, location)),
        _ => {}
    }
}

/// `auto` in the model's own syntax, as Lark.
fn auto_lark(tools: &[&Tool], parallel: bool, syntax: ToolSyntax) -> String {
    let format = syntax.format;
    let calls = CallSchema::new(tools, format.arguments_key());
    let call = format!("%json {}", calls.document(calls.one()));
    let mut g = String::new();
    match format {
        ToolFormat::Llama3Json => {
            // The whole answer is a call, or text that does not start like one.
            let calls = if parallel { "call (SEP call)*\nSEP: /; ?/" } else { "call" };
            let tagged = match syntax.trigger_token {
                Some(id) => format!(" | <[{id}]> calls"),
                None => String::new(),
            };
            g.push_str(&format!("start: TEXT | calls{tagged}\n"));
            g.push_str(&format!("calls: {calls}\n"));
            g.push_str(&format!("call: {call}\n"));
            g.push_str("TEXT: /(?s:([^{].*)?)/\n");
        }
        ToolFormat::Hermes | ToolFormat::Mistral => {
            let trigger = format.trigger();
            if parallel {
                g.push_str("start: (head body)* TEXT\n");
            } else {
                g.push_str("start: TEXT | head body TEXT\n");
            }
            // Free text never holds the trigger: writing it commits to a call.
            g.push_str(&format!("TEXT: /(?s:.*)/ & ~/(?s:.*){}(?s:.*)/\n", regex_escape(trigger)));
            g.push_str(&format!("HEAD: TEXT {}\n", lark_string(trigger)));
            g.push_str(&marker_rule("head", "HEAD", "TEXT ", syntax.trigger_token));
            match (format, syntax.args_token) {
                (ToolFormat::Hermes, _) => {
                    let close = format.close().unwrap_or_default();
                    g.push_str("body: NL? call NL? close\n");
                    g.push_str(&marker_rule("close", &lark_string(close), "", syntax.close_token));
                    g.push_str("NL: \"\\n\"\n");
                    g.push_str(&format!("call: {call}\n"));
                }
                (_, Some(args)) => {
                    // v11: `name[ARGS]{...}`, one alternative per tool.
                    let alternatives: Vec<String> =
                        (0..tools.len()).map(|i| format!("call_{i}")).collect();
                    g.push_str(&format!("body: {}\n", alternatives.join(" | ")));
                    for (i, tool) in tools.iter().enumerate() {
                        let mut schema = arguments_schema(tool, "#");
                        schema["x-guidance"] = guidance(calls.lenient);
                        g.push_str(&format!(
                            "call_{i}: {} <[{args}]> %json {}\n",
                            lark_string(&tool.function.name),
                            schema
                        ));
                    }
                }
                (_, None) => {
                    // `[{...}, ...]`: one array, of one call unless parallel.
                    let mut array = json!({"type": "array", "items": calls.one(), "minItems": 1});
                    if !parallel {
                        array["maxItems"] = json!(1);
                    }
                    g.push_str(&format!("body: %json {}\n", calls.document(array)));
                }
            }
        }
    }
    g
}

/// `name: text | <[id]>`-style rule: a marker as text, or as its special token after
/// `prefix` where the vocabulary has one.
fn marker_rule(name: &str, text: &str, prefix: &str, token: Option<u32>) -> String {
    match token {
        Some(id) => format!("{name}: {text} | {prefix}<[{id}]>\n"),
        None => format!("{name}: {text}\n"),
    }
}

/// A Lark string literal (JSON string syntax; DEL is not allowed raw).
fn lark_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default().replace('\u{7f}', "\\u007f")
}

/// `s` as literal text inside a Lark `/regex/`.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if r"\.+*?()|[]{}^$#&-~/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
