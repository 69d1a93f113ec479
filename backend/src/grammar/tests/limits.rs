//! The grammars' bounds: hostile schemas and regexes end within llguidance's limits
//! or fail alone, `$ref` chains are refused before they could overflow the stack, and
//! JSON whitespace between tokens is bounded.

use super::*;

/// Drives `grammar` for up to `steps` tokens; every call must return (limits end the
/// work), and an error ends the walk like it ends a sequence.
fn drive(fx: &Fixture, grammar: &Grammar, steps: usize, rng: &mut Rng) -> Result<usize, String> {
    let mut state = grammar.0.start();
    let mut mask = vec![0u32; fx.vocab_size.div_ceil(32)];
    for step in 0..steps {
        state.fill_mask(&mut mask)?;
        let other: Vec<u32> = allowed(&mask).into_iter().filter(|t| !fx.eos.contains(t)).collect();
        if other.is_empty() {
            return Ok(step);
        }
        state.commit(TokenId(other[rng.below(other.len())]))?;
        state.take_forced()?;
    }
    Ok(steps)
}

/// `d0 → d1 → … → d(n-1)`, each an object whose one property refers to the next.
fn ref_chain(n: usize) -> Value {
    let defs: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            let def = if i + 1 == n {
                json!({"type": "string", "maxLength": 3})
            } else {
                json!({
                    "type": "object",
                    "properties": {"n": {"$ref": format!("#/$defs/d{}", i + 1)}},
                    "required": ["n"],
                    "additionalProperties": false
                })
            };
            (format!("d{i}"), def)
        })
        .collect();
    json!({"$ref": "#/$defs/d0", "$defs": defs})
}

/// Regression: a flat chain of 3,000 `$defs` overflowed the stack inside llguidance's
/// schema compiler (which follows each `$ref` recursively) and aborted the process.
#[test]
fn ref_chains_are_bounded_before_they_overflow_the_stack() {
    let fx = fixture();
    let compiler = fx.compiler();
    let e = compiler.compile(&GrammarSpec::JsonSchema(ref_chain(3000))).unwrap_err();
    assert!(e.to_string().contains("nests too deeply through $ref"), "{e}");

    // Just under the bound: compiles on its own thread's stack, whatever the caller's.
    let near = ref_chain((nesting::MAX_RECURSION - 20) / 3);
    let grammar = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || compiler.compile(&GrammarSpec::JsonSchema(near)).map(|_| ()))
        .unwrap()
        .join()
        .unwrap();
    grammar.unwrap();

    let mut deep = json!({"type": "string"});
    for _ in 0..200 {
        deep = json!({"type": "array", "items": deep});
    }
    let e = fx.compiler().compile(&GrammarSpec::JsonSchema(deep)).unwrap_err();
    assert!(e.to_string().contains("nested deeper than 128 levels"), "{e}");

    // Recursive schemas (each ref followed once) are fine, and generate valid trees.
    let tree = json!({
        "$defs": {"node": {
            "type": "object",
            "properties": {
                "v": {"type": "integer", "minimum": 0, "maximum": 9},
                "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}
            },
            "required": ["v"],
            "additionalProperties": false
        }},
        "$ref": "#/$defs/node"
    });
    let grammar = fx.compiler().compile(&GrammarSpec::JsonSchema(tree.clone())).unwrap();
    for seed in 0..20 {
        let text = fx.decode(&walk(&fx, &grammar, fx.vocab_size, &mut Rng::new(seed)));
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(jsonschema::is_valid(&tree, &value), "{text}");
    }
}

#[test]
fn hostile_grammars_compile_within_limits_or_fail() {
    let fx = fixture();
    let compiler = fx.compiler();
    let mut rng = Rng::new(7);

    let wide: serde_json::Map<String, Value> =
        (0..5000).map(|i| (format!("p{i}"), json!({"type": "integer"}))).collect();
    let huge_enum: Vec<Value> =
        (0..20_000).map(|i| json!(format!("value-{i}-{}", i * 7919))).collect();
    let mut nested = json!({"type": "string"});
    for _ in 0..60 {
        nested = json!({"type": "array", "items": nested});
    }
    let specs = [
        GrammarSpec::Regex("a{100000}".to_string()),
        GrammarSpec::Regex("(a|aa)*b{1,5000}(a|aa)*".to_string()),
        // The classic exponential DFA: 2^20 lexer states if explored fully.
        GrammarSpec::Regex("(a|b)*a(a|b){20}".to_string()),
        GrammarSpec::Regex("((x+x+)+y){1,1000}".to_string()),
        GrammarSpec::Regex(format!("{}a{}", "(".repeat(5000), ")".repeat(5000))),
        GrammarSpec::JsonSchema(ref_chain(3000)),
        GrammarSpec::JsonSchema(
            json!({"type": "object", "properties": wide, "required": ["p0", "p4999"]}),
        ),
        GrammarSpec::JsonSchema(json!({"enum": huge_enum})),
        GrammarSpec::JsonSchema(nested),
        GrammarSpec::JsonSchema(json!({"type": "string", "pattern": "^(a|b)*a(a|b){25}$"})),
    ];
    let mut outcomes = Vec::new();
    for spec in &specs {
        let outcome = match compiler.compile(spec) {
            Err(e) => Err(e.to_string()),
            Ok(grammar) => drive(&fx, &grammar, 200, &mut rng).map_err(|e| e.to_string()),
        };
        outcomes.push(outcome);
    }
    // Reaching here is the main assertion: every compile, mask and commit returned.
    for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert!(e.len() < 1_100 && !e.contains("<non-verbose/>"), "{e}");
    }
    let refused = |i: usize| outcomes[i].as_ref().is_err_and(|e| e.starts_with("invalid"));
    assert!(refused(4) && refused(5), "nested groups and $ref chain refused: {outcomes:#?}");
    // 5,000 optional properties: compiles, then the first token exceeds the items limit.
    assert!(outcomes[6].as_ref().is_err_and(|e| e.contains("max is 2000")), "{outcomes:#?}");
}

#[test]
fn json_whitespace_between_tokens_is_bounded_unless_the_schema_says_otherwise() {
    let f = fixture();
    let compiler = f.compiler();
    let space = f.bytes.iter().position(|b| b == b" ").expect("a single-space token") as u32;
    let brace = f.bytes.iter().position(|b| b == b"{").expect("a `{` token") as u32;
    // How many spaces in a row the grammar accepts after `{`.
    let spaces = |schema: Value| {
        let grammar = compiler.compile(&GrammarSpec::JsonSchema(schema)).unwrap();
        let mut state = grammar.0.start();
        let mut mask = vec![0u32; f.vocab_size.div_ceil(32)];
        state.commit(TokenId(brace)).unwrap();
        let mut n = 0;
        while n < 500 {
            state.fill_mask(&mut mask).unwrap();
            if mask[space as usize / 32] >> (space % 32) & 1 == 0 {
                break;
            }
            state.commit(TokenId(space)).unwrap();
            n += 1;
        }
        n
    };
    let object = json!({"type": "object"});
    assert_eq!(spaces(object), 64);
    let flexible = json!({"type": "object", "x-guidance": {"whitespace_flexible": true}});
    assert_eq!(spaces(flexible), 500, "llguidance's own default is unbounded");
}
