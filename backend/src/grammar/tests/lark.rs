//! Lark grammars: rules and terminals, `%json` schemas inside them (compact with
//! [`json_options`], `$ref`-checked like plain schemas), and the two shapes tool calling
//! builds on: free text that ends at a trigger string, then a constrained call; and a
//! special token named `<[id]>` as the trigger.

use super::limits::accepts;
use super::*;

fn lark(text: &str) -> GrammarSpec {
    GrammarSpec::Lark(text.to_string())
}

/// The tokens of `text`, one per byte.
fn byte_tokens(fx: &Fixture, text: &str) -> Vec<u32> {
    text.bytes()
        .map(|b| fx.bytes.iter().position(|t| t == &[b]).expect("a token per byte") as u32)
        .collect()
}

#[test]
fn lark_rules_constrain_and_errors_carry_the_parsers_message() {
    let fx = fixture();
    let compiler = fx.compiler();
    let grammar = compiler.compile(&lark("start: (\"yes\" | \"no\") \"!\"?\n")).unwrap();
    for seed in 0..20 {
        let text = fx.decode(&walk(&fx, &grammar, fx.vocab_size, &mut Rng::new(seed)));
        assert!(["yes", "no", "yes!", "no!"].contains(&text.as_str()), "{text:?}");
    }

    let e = compiler.compile(&lark("start: missing\n")).unwrap_err();
    assert!(matches!(e, GrammarError::Lark(_)), "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with("invalid grammar: ") && msg.contains("missing"), "{msg}");
    let e = compiler.compile(&lark("start: %json {\"type\": \"nonsense\"}\n")).unwrap_err();
    assert!(e.to_string().contains("nonsense"), "{e}");

    // An embedded schema is checked for `$ref` depth before llguidance recurses into it.
    let chain = limits::ref_chain(3000);
    let e = compiler.compile(&lark(&format!("start: \"x\" %json {chain}\n"))).unwrap_err();
    assert!(e.to_string().contains("nests too deeply through $ref"), "{e}");

    // Deeply nested rules fail or compile; they never take the process down.
    let deep = format!("start: {}\"a\"{}\n", "(".repeat(5000), ")".repeat(5000));
    let _ = compiler.compile(&lark(&deep));
}

#[test]
fn embedded_json_is_compact_with_json_options() {
    let fx = fixture();
    let compiler = fx.compiler();
    let mut schema = json!({
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}},
        "required": ["a", "b"],
        "additionalProperties": false
    });
    let flexible = compiler.compile(&lark(&format!("start: \"=\" %json {schema}\n"))).unwrap();
    assert!(accepts(&fx, &flexible, "={\n  \"a\": 1,\n  \"b\": true\n}"), "llguidance's default");

    schema["x-guidance"] = json_options();
    let compact = compiler.compile(&lark(&format!("start: \"=\" %json {schema}\n"))).unwrap();
    assert!(accepts(&fx, &compact, r#"={"a":1,"b":true}"#));
    assert!(accepts(&fx, &compact, r#"={"a": 1, "b": true}"#));
    assert!(!accepts(&fx, &compact, "={\n\"a\":1,\"b\":true}"));
    assert!(!accepts(&fx, &compact, r#"={"a":1,"b":true} "#));
}

/// Free text up to a trigger, then a call the grammar constrains, then more text: the
/// shape of tool calling in a model's own syntax. The text terminal excludes the
/// trigger, so once it appears the only way on is the call.
#[test]
fn text_until_a_trigger_then_a_constrained_call() {
    let fx = fixture();
    let compiler = fx.compiler();
    let schema = json!({
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["n"],
        "additionalProperties": false,
        "x-guidance": json_options()
    });
    let grammar = compiler
        .compile(&lark(&format!(
            "start: (HEAD call)* TEXT\n\
             call: %json {schema} \"</c>\"\n\
             HEAD: TEXT \"<c>\"\n\
             TEXT: /(?s:.*)/ & ~/(?s:.*)<c>(?s:.*)/\n"
        )))
        .unwrap();

    let check =
        regex::Regex::new(r#"^(?s:(?:(?:[^<]|<[^c]|<c[^>])*<c>\{"n": ?\d{1,2}\}</c>)*)"#).unwrap();
    let mut calls = 0;
    for seed in 0..40 {
        // Some text, the trigger, then whatever the grammar allows.
        let mut rng = Rng::new(seed);
        let mut state = grammar.0.start();
        let mut out = byte_tokens(&fx, ["", "hi ", "a<b "][seed as usize % 3]);
        out.extend(byte_tokens(&fx, "<c>"));
        for &t in &out {
            state.commit(TokenId(t)).unwrap();
        }
        let mut mask = vec![0u32; fx.vocab_size.div_ceil(32)];
        loop {
            assert!(out.len() < MAX_WALK, "{:?}", fx.decode(&out));
            state.fill_mask(&mut mask).unwrap();
            let ok = allowed(&mask);
            let (eos, other): (Vec<u32>, Vec<u32>) = ok.iter().partition(|t| fx.eos.contains(t));
            if !eos.is_empty() && (other.is_empty() || rng.chance(40)) {
                state.commit(TokenId(eos[0])).unwrap();
                break;
            }
            let t = other[rng.below(other.len())];
            state.commit(TokenId(t)).unwrap();
            out.push(t);
            out.extend(state.take_forced().unwrap().into_iter().map(|t| t.0));
        }
        let text = fx.decode(&out);
        let m = check.find(&text).unwrap_or_else(|| panic!("{text:?}"));
        assert!(m.end() > 0, "a started call is always a valid call: {text:?}");
        assert!(!text[m.end()..].contains("<c>"), "{text:?}");
        calls += text.matches("<c>").count();
    }
    assert!(calls >= 40);

    // Text alone is a complete output; a started call is not.
    assert!(accepts(&fx, &grammar, "no call here"));
    assert!(accepts(&fx, &grammar, r#"x<c>{"n":5}</c> done"#));
    assert!(!accepts(&fx, &grammar, "x<c>"));
    assert!(!accepts(&fx, &grammar, "x<c>hello</c>"));
}

/// A special token as the trigger: allowed wherever the text may stop, never spelled
/// by text, and followed only by the call.
#[test]
fn special_token_triggers_by_id() {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let call = tokens.len() as u32;
    tokens.push(b"\xff[CALL]".to_vec());
    let eos = tokens.len() as u32;
    tokens.push(b"\xff</s>".to_vec());
    let compiler = GrammarCompiler::from_token_bytes(tokens.clone(), eos).unwrap();
    assert_eq!(compiler.special_token("[CALL]"), Some(call));
    assert_eq!(compiler.special_token("[NOPE]"), None);
    assert_eq!(compiler.special_token("a"), None, "text is not a special token");

    let grammar = compiler
        .compile(&lark(&format!(
            "start: TEXT | TEXT <[{call}]> %json {{\"type\": \"boolean\"}}\n\
             TEXT: /[a-z ]*/\n"
        )))
        .unwrap();
    let mut mask = vec![0u32; tokens.len().div_ceil(32)];
    let bit = |mask: &[u32], t: u32| mask[t as usize / 32] >> (t % 32) & 1 == 1;
    let mut state = grammar.0.start();
    for &b in b"hi " {
        state.fill_mask(&mut mask).unwrap();
        assert!(bit(&mask, call) && bit(&mask, eos));
        state.commit(TokenId(u32::from(b))).unwrap();
    }
    state.commit(TokenId(call)).unwrap();
    state.fill_mask(&mut mask).unwrap();
    assert_eq!(allowed(&mask), [u32::from(b'f'), u32::from(b't')]);
}
