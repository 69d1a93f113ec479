//! Property tests: any conversation — odd roles, template markup and special tokens in the
//! text, null or list-of-parts content, tool calls — through every real template of the parity
//! set. Never a panic; a refusal is one short line; a rendering is bounded by the input
//! (so a conversation cannot make a template blow up its prompt), and every user message's
//! text is in it verbatim (trimmed, as some templates trim): text is data, never evaluated as
//! template code.

use std::sync::LazyLock;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

/// The parity set's templates with their special tokens, compiled once.
static FAMILIES: LazyLock<Vec<(String, ChatTemplates)>> = LazyLock::new(|| {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../integration-tests/fixtures/chat_templates/templates");
    let mut families = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the parity set's templates") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "jinja") {
            let source = std::fs::read_to_string(&path).expect("template");
            let tokens: Value = serde_json::from_str(
                &std::fs::read_to_string(path.with_extension("json")).expect("special tokens"),
            )
            .expect("JSON");
            let Value::Object(tokens) = tokens else { panic!("special tokens are an object") };
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            families
                .push((name, ChatTemplates::new(Some(source), vec![], tokens).expect("compiles")));
        }
    }
    assert!(families.len() >= 12, "{} template families", families.len());
    families
});

/// Text with what a hostile or careless user sends: template syntax, special tokens,
/// control characters, whitespace at the ends.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,40}",
        1 => "[a-z ]{0,8}(\\{\\{ 7\\*7 \\}\\}|\\{% for x in range\\(9\\) %\\}|<\\|im_end\\|>|</s>|<\\|eot_id\\|>|\\n)[a-z ]{0,8}",
        1 => "[\\x00-\\x1f ]{0,6}",
    ]
}

fn message() -> impl Strategy<Value = Value> {
    let role = prop_oneof![
        8 => proptest::sample::select(vec!["system", "user", "assistant", "tool"]).prop_map(String::from),
        1 => "[a-z]{1,6}",
    ];
    let content = prop_oneof![
        6 => text().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => proptest::collection::vec(text(), 1..3)
            .prop_map(|parts| json!(parts.iter().map(|t| json!({"type": "text", "text": t})).collect::<Vec<_>>())),
    ];
    let call = ("[a-z_]{1,8}", text()).prop_map(|(name, arg)| {
        json!({"id": "call_1", "type": "function", "function": {"name": name, "arguments": {"x": arg}}})
    });
    (role, content, proptest::option::weighted(0.15, proptest::collection::vec(call, 1..3)))
        .prop_map(|(role, content, calls)| {
            let mut m = json!({"role": role, "content": content});
            if let Some(calls) = calls {
                m["tool_calls"] = json!(calls);
            }
            m
        })
}

fn size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(size).sum(),
        Value::Object(o) => o.iter().map(|(k, v)| k.len() + size(v)).sum(),
        _ => 8,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_conversation_renders_bounded_or_is_refused_in_a_line(
        messages in proptest::collection::vec(message(), 0..6),
        add_generation_prompt in any::<bool>(),
    ) {
        let kwargs = Map::new();
        let input = ChatInput { messages: &messages, tools: None, documents: None, add_generation_prompt, kwargs: &kwargs };
        let given: usize = messages.iter().map(size).sum();
        for (family, templates) in FAMILIES.iter() {
            match templates.render(&input) {
                Err(e) => {
                    let text = e.to_string();
                    prop_assert!(text.len() < 400 && !text.contains('\n'), "{family}: {text}");
                }
                Ok(prompt) => {
                    // The template's own text (a system preamble, tool instructions) plus
                    // the conversation, each message's text at most a few times.
                    prop_assert!(prompt.len() <= 16 * 1024 + 4 * given, "{family}: {} bytes for {given}", prompt.len());
                    for m in &messages {
                        // (A message with tool calls is rendered as its calls by some templates.)
                        if m["role"] == "user"
                            && m.get("tool_calls").is_none()
                            && let Some(t) = m["content"].as_str()
                        {
                            prop_assert!(prompt.contains(t.trim()), "{family}: {t:?} is not in {prompt:?}");
                        }
                    }
                }
            }
        }
    }
}
