//! Tool calling's pure parts: wire types against OpenAI's JSON, validation messages,
//! syntax detection; grammars walked over the fixture tokenizer (`tests/grammar.rs`)
//! and the parser over streams split every way (`tests/parser.rs`).

use serde_json::json;

use super::*;

mod grammar;
mod parser;

pub(super) fn tool(name: &str, parameters: Option<Value>) -> Tool {
    Tool {
        kind: ToolKind::Function,
        function: FunctionDefinition {
            name: name.to_string(),
            description: None,
            parameters,
            strict: None,
        },
    }
}

#[test]
fn tools_and_choices_read_openais_json() {
    let tools: Vec<Tool> = serde_json::from_value(json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            "strict": true}},
        {"type": "function", "function": {"name": "now"}}
    ]))
    .unwrap();
    assert_eq!(tools[0].function.strict, Some(true));
    assert_eq!(tools[1].function.parameters, None);
    // What the chat template sees: nothing invented.
    assert_eq!(
        serde_json::to_value(&tools[1]).unwrap(),
        json!({"type": "function", "function": {"name": "now"}})
    );
    let e = serde_json::from_value::<Tool>(json!({"type": "custom", "custom": {"name": "x"}}))
        .unwrap_err();
    assert!(e.to_string().contains("unknown variant `custom`"), "{e}");

    let choice = |v: Value| serde_json::from_value::<ToolChoice>(v);
    assert_eq!(choice(json!("none")).unwrap(), ToolChoice::None);
    assert_eq!(choice(json!("auto")).unwrap(), ToolChoice::Auto);
    assert_eq!(choice(json!("required")).unwrap(), ToolChoice::Required);
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    assert_eq!(choice(named.clone()).unwrap(), ToolChoice::Function("get_weather".into()));
    let e = choice(json!("any")).unwrap_err().to_string();
    assert!(e.contains("unknown variant `any`") && e.contains("required"), "{e}");
    assert!(choice(json!({"type": "function"})).is_err());
    assert!(choice(json!({"type": "other", "function": {"name": "f"}})).is_err());
    assert!(choice(json!(3)).is_err());
    for c in [ToolChoice::None, ToolChoice::Auto, ToolChoice::Required] {
        assert_eq!(choice(serde_json::to_value(&c).unwrap()).unwrap(), c);
    }
    assert_eq!(serde_json::to_value(ToolChoice::Function("get_weather".into())).unwrap(), named);
}

#[test]
fn calls_and_deltas_serialize_as_openai_sends_them() {
    let call = ToolCall {
        id: "call_abc".into(),
        kind: ToolKind::Function,
        function: FunctionCall { name: "f".into(), arguments: "{\"x\":1}".into() },
    };
    assert_eq!(
        serde_json::to_value(&call).unwrap(),
        json!({"id": "call_abc", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}})
    );
    // A history's call without `type` still reads.
    let read: ToolCall = serde_json::from_value(
        json!({"id": "call_abc", "function": {"name": "f", "arguments": "{\"x\":1}"}}),
    )
    .unwrap();
    assert_eq!(read, call);

    let start = ToolCallDelta::start(0, "call_abc".into(), "f".into());
    assert_eq!(
        serde_json::to_string(&start).unwrap(),
        r#"{"index":0,"id":"call_abc","type":"function","function":{"name":"f","arguments":""}}"#
    );
    let more = ToolCallDelta::arguments(1, "{\"x\"".into());
    assert_eq!(
        serde_json::to_string(&more).unwrap(),
        r#"{"index":1,"function":{"arguments":"{\"x\""}}"#
    );
}

#[test]
fn validation_names_the_field_with_openais_message() {
    let ok = [tool("get_weather", Some(json!({"type": "object"}))), tool("now-2", None)];
    for choice in [ToolChoice::None, ToolChoice::Auto, ToolChoice::Required] {
        validate_tools(&ok, &choice).unwrap();
    }
    validate_tools(&ok, &ToolChoice::Function("now-2".into())).unwrap();
    validate_tools(&[], &ToolChoice::None).unwrap();

    let long = "x".repeat(65);
    let cases: Vec<(Vec<Tool>, ToolChoice, &str, &str)> = vec![
        (vec![tool("", None)], ToolChoice::Auto, "tools[0].function.name", "empty string"),
        (
            vec![tool("a", None), tool("a b", None)],
            ToolChoice::Auto,
            "tools[1].function.name",
            "does not match pattern",
        ),
        (vec![tool(&long, None)], ToolChoice::Auto, "tools[0].function.name", "maximum length 64"),
        (
            vec![tool("a", None), tool("a", None)],
            ToolChoice::Auto,
            "tools[1].function.name",
            "duplicate function name 'a'",
        ),
        (
            vec![tool("a", Some(json!("object")))],
            ToolChoice::Auto,
            "tools[0].function.parameters",
            "expected an object, but got a string",
        ),
        (
            vec![tool("a", None)],
            ToolChoice::Function("b".into()),
            "tool_choice",
            "no function named 'b'",
        ),
        (vec![], ToolChoice::Auto, "tool_choice", "only allowed when 'tools' are specified"),
        (vec![], ToolChoice::Required, "tool_choice", "only allowed when 'tools' are specified"),
        (
            (0..129).map(|i| tool(&format!("t{i}"), None)).collect(),
            ToolChoice::Auto,
            "tools",
            "maximum length 128",
        ),
    ];
    for (tools, choice, param, message) in cases {
        let e = validate_tools(&tools, &choice).unwrap_err();
        assert_eq!(e.param(), param, "{e}");
        assert!(e.to_string().contains(message), "{e}");
    }
}

#[test]
fn syntax_is_detected_from_the_template_or_named() {
    let qwen = r#"{%- if tools %}...For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>"#;
    let mistral = r#"{%- if message.tool_calls %}{{- "[TOOL_CALLS][" }}{%- for tool_call in message.tool_calls %}"#;
    let llama31 = r#"{%- if builtin_tools is defined %}{{- "<|python_tag|>" + tool_call.name }}"#;
    let llama32 = r#"{{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}"#;
    let plain =
        r#"{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}"#;
    let detect = |t: &str| ToolSyntax::detect(t).map(|s| s.format);
    assert_eq!(detect(qwen), Some(ToolFormat::Hermes));
    assert_eq!(detect(mistral), Some(ToolFormat::Mistral));
    assert_eq!(detect(llama31), Some(ToolFormat::Llama3Json));
    assert_eq!(detect(llama32), Some(ToolFormat::Llama3Json));
    assert_eq!(detect(plain), None);
    assert_eq!(ToolSyntax::detect(qwen).unwrap().trigger_token, None);

    for (name, format) in [
        ("hermes", ToolFormat::Hermes),
        ("llama3_json", ToolFormat::Llama3Json),
        ("Llama3-JSON", ToolFormat::Llama3Json),
        ("mistral", ToolFormat::Mistral),
    ] {
        assert_eq!(name.parse::<ToolSyntax>().unwrap(), ToolSyntax::new(format));
    }
    let e = "pythonic".parse::<ToolSyntax>().unwrap_err();
    assert!(e.contains("hermes, llama3_json, mistral"), "{e}");
    assert_eq!(ToolSyntax::new(ToolFormat::Llama3Json).to_string(), "llama3_json");

    let vocab = |t: &str| match t {
        "[TOOL_CALLS]" => Some(5),
        "[ARGS]" => Some(32),
        "<|python_tag|>" => Some(128010),
        _ => None,
    };
    let mistral = ToolSyntax::new(ToolFormat::Mistral).with_vocabulary(vocab);
    assert_eq!((mistral.trigger_token, mistral.args_token), (Some(5), Some(32)));
    let hermes = ToolSyntax::new(ToolFormat::Hermes).with_vocabulary(vocab);
    assert_eq!(hermes, ToolSyntax::new(ToolFormat::Hermes), "Qwen's tags are text");
    let llama = ToolSyntax::new(ToolFormat::Llama3Json).with_vocabulary(vocab);
    assert_eq!((llama.trigger_token, llama.args_token), (Some(128010), None));
}

#[test]
fn parse_mode_follows_the_choice() {
    let tools = [tool("f", None)];
    let syntax = ToolSyntax::new(ToolFormat::Hermes);
    let hermes = Some(syntax);
    assert_eq!(parse_mode(&tools, &ToolChoice::None, hermes), None);
    assert_eq!(parse_mode(&[], &ToolChoice::Auto, hermes), None);
    assert_eq!(parse_mode(&tools, &ToolChoice::Auto, None), None);
    assert_eq!(parse_mode(&tools, &ToolChoice::Auto, hermes), Some(ToolParseMode::Syntax(syntax)));
    assert_eq!(parse_mode(&tools, &ToolChoice::Required, None), Some(ToolParseMode::Json));
    assert_eq!(
        parse_mode(&tools, &ToolChoice::Function("f".into()), hermes),
        Some(ToolParseMode::Json)
    );
}

#[test]
fn call_ids_look_like_openais_and_differ() {
    let ids: HashSet<String> = (0..1000).map(|_| new_call_id()).collect();
    assert_eq!(ids.len(), 1000);
    for id in ids.iter().take(20) {
        let tail = id.strip_prefix("call_").unwrap();
        assert_eq!(tail.len(), 24, "{id}");
        assert!(tail.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
    }
}
