//! The parser over whole outputs and over streams cut at every character: the same
//! content and calls either way, no call syntax in content, malformed calls given back.

use super::*;

const HERMES: ToolParseMode = ToolParseMode::Syntax(ToolSyntax::new(ToolFormat::Hermes));
const MISTRAL: ToolParseMode = ToolParseMode::Syntax(ToolSyntax::new(ToolFormat::Mistral));
const LLAMA: ToolParseMode = ToolParseMode::Syntax(ToolSyntax::new(ToolFormat::Llama3Json));

/// (name, arguments) of each call.
fn calls(parsed: &Parsed) -> Vec<(&str, &str)> {
    parsed.calls.iter().map(|c| (c.function.name.as_str(), c.function.arguments.as_str())).collect()
}

fn parse(mode: ToolParseMode, text: &str) -> Parsed {
    let mut parser = ToolCallParser::new(mode);
    parser.push(text);
    parser.finish()
}

/// What a stream of `pieces` shows a client: content, and per call its id, name and
/// accumulated arguments. Checks the stream's shape on the way: a call starts before
/// its fragments, with its index in order.
fn stream(mode: ToolParseMode, pieces: &[&str]) -> (String, Vec<(String, String, String)>) {
    let mut parser = ToolCallParser::new(mode);
    let mut events = Vec::new();
    for piece in pieces {
        events.extend(parser.push(piece));
    }
    events.extend(parser.flush());
    assert!(parser.push("more").is_empty(), "nothing after the end");
    let mut content = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for e in events {
        match e {
            ParserEvent::Content(text) => {
                assert!(!text.is_empty());
                content.push_str(&text);
            }
            ParserEvent::Call(d) => match d.id {
                Some(id) => {
                    assert_eq!(d.index as usize, calls.len());
                    assert_eq!(d.kind, Some(ToolKind::Function));
                    assert_eq!(d.function.arguments.as_deref(), Some(""));
                    calls.push((id, d.function.name.unwrap(), String::new()));
                }
                None => {
                    assert!(d.function.name.is_none());
                    let fragment = d.function.arguments.unwrap();
                    assert!(!fragment.is_empty());
                    calls[d.index as usize].2.push_str(&fragment);
                }
            },
        }
    }
    (content, calls)
}

/// Every way of cutting `text` in two, and one character at a time, streams the same
/// as the whole; the whole's `finish` agrees. Returns the whole.
fn same_every_way(mode: ToolParseMode, text: &str) -> Parsed {
    let whole = parse(mode, text);
    let expect = |(content, streamed): (String, Vec<(String, String, String)>), how: &str| {
        assert_eq!(
            Some(content.as_str()).filter(|c| !c.is_empty()),
            whole.content.as_deref(),
            "{how}"
        );
        let got: Vec<(&str, &str)> =
            streamed.iter().map(|c| (c.1.as_str(), c.2.as_str())).collect();
        assert_eq!(got, calls(&whole), "{how}");
    };
    for (cut, _) in text.char_indices().skip(1) {
        expect(stream(mode, &[&text[..cut], &text[cut..]]), &format!("cut at {cut}"));
    }
    let chars: Vec<String> = text.chars().map(String::from).collect();
    let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
    expect(stream(mode, &pieces), "one character at a time");
    whole
}

#[test]
fn hermes_calls_after_text_streamed_every_way() {
    let text = "Let me check both.\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \
                {\"city\": \"Paris\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n{\"name\": \
                \"get_time\", \"arguments\": {\"tz\": \"CET <tool_call>\"}}\n</tool_call>";
    let parsed = same_every_way(HERMES, text);
    assert_eq!(parsed.content.as_deref(), Some("Let me check both."));
    assert_eq!(
        calls(&parsed),
        [
            ("get_weather", r#"{"city": "Paris", "days": [1, 2]}"#),
            ("get_time", r#"{"tz": "CET <tool_call>"}"#)
        ]
    );
    assert_ne!(parsed.calls[0].id, parsed.calls[1].id);
    // Text after the calls is content too, without the separating whitespace.
    let parsed = same_every_way(HERMES, &format!("{text}\n\nDone."));
    assert_eq!(parsed.content.as_deref(), Some("Let me check both.\n\nDone."));
}

#[test]
fn text_alone_is_content_exactly() {
    for text in [
        "Hello, world!\n",
        "  indented\n\n",
        "a < b and <tool> and <tool_call",
        "{\"not\": \"json mode\"}",
    ] {
        let parsed = same_every_way(HERMES, text);
        assert_eq!(parsed.content.as_deref(), Some(text));
        assert!(parsed.calls.is_empty());
    }
    assert_eq!(parse(HERMES, ""), Parsed::default());
}

#[test]
fn a_possible_trigger_is_held_until_settled() {
    let mut p = ToolCallParser::new(HERMES);
    assert_eq!(p.push("Hello <tool"), [ParserEvent::Content("Hello".into())]);
    assert_eq!(p.push("box> and"), [ParserEvent::Content(" <toolbox> and".into())]);
    assert_eq!(p.push(" <tool_call>{\"na"), []);
    let events = p.push("me\": \"f\"");
    assert!(
        matches!(&events[..], [ParserEvent::Call(d)] if d.function.name.as_deref() == Some("f"))
    );
    let events = p.push(", \"arguments\": {\"a\": 1}}</tool_call>");
    assert_eq!(events.len(), 1);
    let parsed = p.finish();
    assert_eq!(parsed.content.as_deref(), Some("Hello <toolbox> and"));
    assert_eq!(calls(&parsed), [("f", r#"{"a": 1}"#)]);
}

#[test]
fn malformed_calls_are_given_back_as_content() {
    for text in [
        "<tool_call>not json</tool_call>",
        "Sure: <tool_call>\n{\"arguments\": {}}\n</tool_call>",
        "<tool_call>{\"name\": 5}",
        "<tool_call>\n{\"name\": \"get_w",
        "<tool_call>[1, 2]",
    ] {
        let parsed = same_every_way(HERMES, text);
        assert!(parsed.calls.is_empty(), "{text}");
        assert_eq!(parsed.content.as_deref(), Some(text), "{text}");
    }
    // A started call stands: cut off, it keeps what came.
    let parsed = same_every_way(HERMES, "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": [1");
    assert_eq!(calls(&parsed), [("f", r#"{"a": [1"#)]);
    let parsed = same_every_way(HERMES, "<tool_call>{\"name\": \"f\"} oops");
    assert_eq!(calls(&parsed), [("f", "{}")]);
    assert_eq!(parsed.content.as_deref(), Some("oops"));
}

#[test]
fn arguments_in_any_order_or_encoded_twice() {
    let parsed = same_every_way(
        HERMES,
        r#"<tool_call>{"arguments": {"x": "}"}, "id": 7, "name": "f"}</tool_call>"#,
    );
    assert_eq!(calls(&parsed), [("f", r#"{"x": "}"}"#)]);
    let parsed = same_every_way(
        HERMES,
        r#"<tool_call>{"name": "f", "arguments": "{\"x\": \"\\\"q\\\"\"}"}</tool_call>"#,
    );
    assert_eq!(calls(&parsed), [("f", r#"{"x": "\"q\""}"#)]);
    let parsed =
        same_every_way(HERMES, r#"<tool_call>{"name": "now", "arguments": null}</tool_call>"#);
    assert_eq!(calls(&parsed), [("now", "null")]);
}

#[test]
fn required_mode_reads_an_object_or_an_array() {
    let parsed = same_every_way(ToolParseMode::Json, r#"{"name":"f","arguments":{"a":1}}"#);
    assert_eq!(calls(&parsed), [("f", r#"{"a":1}"#)]);
    assert_eq!(parsed.content, None);
    let parsed = same_every_way(
        ToolParseMode::Json,
        r#"[{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]"#,
    );
    assert_eq!(calls(&parsed), [("f", r#"{"a": 1}"#), ("g", "{}")]);
    assert_eq!(parsed.content, None);
    let parsed = same_every_way(ToolParseMode::Json, "I cannot");
    assert_eq!((parsed.content.as_deref(), parsed.calls.len()), (Some("I cannot"), 0));
    let parsed = same_every_way(ToolParseMode::Json, r#"{"name": "f", "arguments": {"a": tru"#);
    assert_eq!(calls(&parsed), [("f", r#"{"a": tru"#)]);
}

#[test]
fn mistral_array_and_v11_forms() {
    let parsed = same_every_way(
        MISTRAL,
        r#"[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {"b": "]"}}]"#,
    );
    assert_eq!(calls(&parsed), [("f", r#"{"a": 1}"#), ("g", r#"{"b": "]"}"#)]);
    assert_eq!(parsed.content, None);
    let parsed = same_every_way(
        MISTRAL,
        r#"Checking.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]now[ARGS]{}"#,
    );
    assert_eq!(calls(&parsed), [("get_weather", r#"{"city": "Paris"}"#), ("now", "{}")]);
    assert_eq!(parsed.content.as_deref(), Some("Checking."));
    let parsed = same_every_way(MISTRAL, "[TOOL_CALLS] what?");
    assert_eq!((parsed.content.as_deref(), parsed.calls.len()), (Some("[TOOL_CALLS] what?"), 0));
    let parsed = same_every_way(MISTRAL, "[TOOL_CALLS]get weather");
    assert_eq!(parsed.calls.len(), 0);
}

#[test]
fn llama3_json_with_or_without_the_tag() {
    let call = r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#;
    for text in [call.to_string(), format!("<|python_tag|>{call}"), format!("\n {call}\n")] {
        let parsed = same_every_way(LLAMA, &text);
        assert_eq!(calls(&parsed), [("get_weather", r#"{"city": "Paris"}"#)], "{text}");
        assert_eq!(parsed.content, None, "{text}");
    }
    let parsed =
        same_every_way(LLAMA, &format!("{call}; {{\"name\": \"now\", \"parameters\": {{}}}}"));
    assert_eq!(calls(&parsed), [("get_weather", r#"{"city": "Paris"}"#), ("now", "{}")]);
    for text in ["The weather is {fine}.", "<|python_ta", "{not json", "<|pythonic"] {
        let parsed = same_every_way(LLAMA, text);
        assert_eq!((parsed.content.as_deref(), parsed.calls.len()), (Some(text), 0), "{text}");
    }
}
