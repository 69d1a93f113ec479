//! Tool grammars compiled for the fixture Llama tokenizer (byte-level BPE, no tool
//! tokens, so every marker is text) and walked with seeded random choices over their
//! masks, the way the engine samples: every output must parse as calls of the given
//! tools whose arguments validate against their schemas. A synthetic vocabulary with
//! Mistral's special tokens covers markers that are tokens.

use std::sync::Arc;

use rill_backend::grammar::{GrammarCompiler, GrammarSpec};
use rill_proto::{Grammar, TokenId};
use tokenizers::Tokenizer;

use super::*;

const FIXTURE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../integration-tests/fixtures/models/llama");

/// A vocabulary to walk: the compiler, each token's text (special tokens by name, as a
/// detokenizer that keeps them spells them) for steering, a decoder, and the EOS ids.
struct Vocab {
    compiler: GrammarCompiler,
    text: Vec<String>,
    decode: Decoder,
    eos: Vec<u32>,
}

type Decoder = Box<dyn Fn(&[u32]) -> String>;

fn fixture() -> Vocab {
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURE}/{name}")).unwrap())
            .unwrap()
    };
    let json = read("tokenizer.json");
    let tokenizer = Arc::new(Tokenizer::from_file(format!("{FIXTURE}/tokenizer.json")).unwrap());
    let eos: Vec<u32> = read("generation_config.json")["eos_token_id"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let vocab_size = read("config.json")["vocab_size"].as_u64().unwrap() as usize;
    let text = (0..vocab_size as u32).map(|t| tokenizer.decode(&[t], false).unwrap()).collect();
    let compiler = GrammarCompiler::new(&json, tokenizer.clone(), &eos, vocab_size).unwrap();
    let decode = Box::new(move |ids: &[u32]| tokenizer.decode(ids, false).unwrap());
    Vocab { compiler, text, decode, eos }
}

/// xorshift64*, as the backend's grammar tests.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const MAX_WALK: usize = 800;
/// Tokens chosen uniformly before the walk prefers closing tokens.
const FREE_STEPS: usize = 40;

/// Tokens to commit before the next sampled one, given the text so far.
type Inject<'a> = &'a dyn Fn(&str, &mut Rng) -> Option<Vec<u32>>;

impl Vocab {
    /// `text`, one token per character.
    fn spell(&self, text: &str) -> Vec<u32> {
        text.chars()
            .map(|c| {
                let c = c.to_string();
                self.text.iter().position(|t| *t == c).expect("a token per character") as u32
            })
            .collect()
    }

    /// One seeded generation. `inject` may commit tokens of its own (the grammar must
    /// allow them). EOS is taken when allowed, rarely at first, often after
    /// `FREE_STEPS`, when closing tokens are also preferred. Every other token comes
    /// from the mask.
    fn walk(&self, grammar: &Grammar, seed: u64, inject: Inject<'_>) -> String {
        let mut rng = Rng::new(seed);
        let mut state = grammar.0.start();
        let mut mask = vec![0u32; self.text.len().div_ceil(32)];
        let mut out: Vec<u32> = Vec::new();
        for step in 0.. {
            assert!(step < MAX_WALK, "walk did not end: {:?}", (self.decode)(&out));
            if let Some(tokens) = inject(&(self.decode)(&out), &mut rng) {
                for t in tokens {
                    state
                        .commit(TokenId(t))
                        .unwrap_or_else(|e| panic!("{e}: {:?}", (self.decode)(&out)));
                    out.push(t);
                }
                continue;
            }
            state.fill_mask(&mut mask).unwrap();
            let ok: Vec<u32> = rill_proto::allowed_tokens(&mask).collect();
            let (eos, other): (Vec<u32>, Vec<u32>) = ok.iter().partition(|t| self.eos.contains(t));
            let late = step > FREE_STEPS;
            if !eos.is_empty() && (other.is_empty() || rng.chance(if late { 60 } else { 5 })) {
                state.commit(TokenId(eos[0])).unwrap();
                state.fill_mask(&mut mask).unwrap();
                let after: Vec<u32> = rill_proto::allowed_tokens(&mask).collect();
                assert!(after.iter().all(|t| self.eos.contains(t)), "only EOS after EOS");
                break;
            }
            let closing: Vec<u32> = other
                .iter()
                .copied()
                .filter(|&t| self.text[t as usize].contains(['"', '}', ']']))
                .collect();
            let pick = if late && !closing.is_empty() && rng.chance(70) {
                closing[rng.below(closing.len())]
            } else {
                other[rng.below(other.len())]
            };
            state.commit(TokenId(pick)).unwrap();
            out.push(pick);
            out.extend(state.take_forced().unwrap().into_iter().map(|t| t.0));
        }
        (self.decode)(&out)
    }
}

fn weather() -> Tool {
    tool(
        "get_weather",
        Some(json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7}
            },
            "required": ["city", "unit"],
            "additionalProperties": false
        })),
    )
}

/// A Pydantic-style schema: the arguments refer to their own `$defs`.
fn booking() -> Tool {
    tool(
        "book",
        Some(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": {
                "Seat": {"type": "object", "properties": {"row": {"type": "integer", "minimum": 1, "maximum": 30},
                         "side": {"$ref": "#/$defs/Side"}}, "required": ["row", "side"], "additionalProperties": false},
                "Side": {"enum": ["aisle", "window"]}
            },
            "type": "object",
            "properties": {"seat": {"$ref": "#/$defs/Seat"}},
            "required": ["seat"],
            "additionalProperties": false
        })),
    )
}

/// No parameters: an empty arguments object.
fn now() -> Tool {
    tool("now", None)
}

/// Checks each call names one of `tools` and its arguments (a JSON string) validate
/// against that tool's schema.
fn check_calls(tools: &[Tool], calls: &[ToolCall], text: &str) {
    for call in calls {
        let tool = tools
            .iter()
            .find(|t| t.function.name == call.function.name)
            .unwrap_or_else(|| panic!("unknown tool {:?}: {text:?}", call.function.name));
        let args: Value = serde_json::from_str(&call.function.arguments)
            .unwrap_or_else(|e| panic!("{e}: {text:?}"));
        let schema = tool.function.parameters.clone().unwrap_or(json!({"maxProperties": 0}));
        if let Err(e) = jsonschema::validate(&schema, &args) {
            panic!("{e}: {text:?}");
        }
    }
}

fn compile(vocab: &Vocab, spec: Option<GrammarSpec>) -> Grammar {
    let spec = spec.expect("a grammar");
    vocab.compiler.compile(&spec).unwrap_or_else(|e| panic!("{e}: {spec:?}"))
}

#[test]
fn required_and_named_choices_constrain_the_whole_output_to_calls() {
    let vocab = fixture();
    let tools = [weather(), booking(), now()];
    let none = |_: &str, _: &mut Rng| None;
    let mut seen = HashSet::new();
    for (choice, parallel) in [
        (ToolChoice::Required, false),
        (ToolChoice::Required, true),
        (ToolChoice::Function("book".into()), false),
        (ToolChoice::Function("get_weather".into()), true),
    ] {
        let grammar = compile(&vocab, grammar_for(&tools, &choice, parallel, None));
        let mut arrays = 0;
        for seed in 0..25 {
            let text = vocab.walk(&grammar, seed, &none);
            let parsed = parse(ToolParseMode::Json, &text);
            assert_eq!(parsed.content, None, "{text:?}");
            assert!(!parsed.calls.is_empty(), "{text:?}");
            check_calls(&tools, &parsed.calls, &text);
            if let ToolChoice::Function(name) = &choice {
                assert!(parsed.calls.iter().all(|c| &c.function.name == name), "{text:?}");
            }
            if !parallel {
                assert_eq!(parsed.calls.len(), 1, "{text:?}");
                assert!(text.starts_with('{'), "{text:?}");
            }
            arrays += usize::from(text.starts_with('['));
            seen.extend(parsed.calls.iter().map(|c| c.function.name.clone()));
        }
        if parallel {
            assert!(arrays > 0, "{choice:?}: an array now and then");
        }
    }
    assert_eq!(seen.len(), 3, "every tool called at least once: {seen:?}");
}

fn parse(mode: ToolParseMode, text: &str) -> Parsed {
    let mut parser = ToolCallParser::new(mode);
    parser.push(text);
    parser.finish()
}

/// `auto` in a model's syntax: text, and whenever the walk writes the trigger, a call
/// that is valid however the walk goes on.
/// `close` ends a stretch of calls; `calls_per_trigger`: a trigger opens one call
/// (Hermes) or a list of them (Mistral's array).
fn auto_walks(
    format: ToolFormat,
    parallel: bool,
    trigger: &str,
    close: &str,
    calls_per_trigger: bool,
) {
    let vocab = fixture();
    let tools = [weather(), booking(), now()];
    let syntax = ToolSyntax::new(format).with_vocabulary(|t| vocab.compiler.special_token(t));
    assert_eq!(syntax, ToolSyntax::new(format), "the fixture has no tool tokens");
    let grammar = compile(&vocab, grammar_for(&tools, &ToolChoice::Auto, parallel, Some(syntax)));
    let mode = ToolParseMode::Syntax(syntax);
    let (mut with_calls, mut without) = (0, 0);
    for seed in 0..30 {
        // Write the trigger in text, now and then: first anywhere (text never holds
        // it), then after a complete call.
        let inject = |out: &str, rng: &mut Rng| {
            let calls = out.matches(trigger).count();
            let complete = || {
                let p = parse(mode, out);
                out.trim_end().ends_with(close)
                    && p.calls.len() == calls
                    && p.calls
                        .iter()
                        .all(|c| serde_json::from_str::<Value>(&c.function.arguments).is_ok())
            };
            let again = parallel && calls == 1 && complete();
            // Not inside a character the walk has only half written.
            let whole = !out.ends_with('\u{FFFD}');
            (seed % 3 != 0 && whole && (calls == 0 || again) && rng.chance(25))
                .then(|| vocab.spell(trigger))
        };
        let text = vocab.walk(&grammar, seed, &inject);
        let parsed = parse(mode, &text);
        let triggers = text.matches(trigger).count();
        let args_triggers: usize =
            parsed.calls.iter().map(|c| c.function.arguments.matches(trigger).count()).sum();
        let opened = triggers - args_triggers;
        if calls_per_trigger {
            assert_eq!(parsed.calls.len(), opened, "every trigger a call: {text:?}");
        } else {
            assert!(parsed.calls.len() >= opened, "every trigger calls: {text:?}");
        }
        check_calls(&tools, &parsed.calls, &text);
        if let Some(content) = &parsed.content {
            assert!(!content.contains(trigger), "{content:?} from {text:?}");
        }
        if !parallel {
            assert!(parsed.calls.len() <= 1, "{text:?}");
        }
        if parsed.calls.is_empty() {
            without += 1;
        } else {
            with_calls += 1;
        }
    }
    assert!(with_calls > 10 && without > 3, "{with_calls} with calls, {without} without");
}

#[test]
fn auto_hermes_constrains_a_call_once_the_text_starts_one() {
    auto_walks(ToolFormat::Hermes, true, "<tool_call>", "</tool_call>", true);
    auto_walks(ToolFormat::Hermes, false, "<tool_call>", "</tool_call>", true);
}

#[test]
fn auto_mistral_with_text_markers() {
    auto_walks(ToolFormat::Mistral, true, "[TOOL_CALLS]", "]", false);
    auto_walks(ToolFormat::Mistral, false, "[TOOL_CALLS]", "]", true);
}

#[test]
fn auto_llama3_json_is_a_call_or_text_that_does_not_start_like_one() {
    let vocab = fixture();
    let tools = [weather(), now()];
    let syntax = ToolSyntax::new(ToolFormat::Llama3Json);
    let mode = ToolParseMode::Syntax(syntax);
    let grammar = compile(&vocab, grammar_for(&tools, &ToolChoice::Auto, true, Some(syntax)));
    let mut calls = 0;
    for seed in 0..30 {
        let inject =
            |out: &str, _: &mut Rng| (out.is_empty() && seed % 4 != 0).then(|| vocab.spell("{"));
        let text = vocab.walk(&grammar, seed, &inject);
        let parsed = parse(mode, &text);
        if text.starts_with('{') {
            assert!(!parsed.calls.is_empty() && parsed.content.is_none(), "{text:?}");
            assert!(text.contains("\"parameters\":"), "Llama's own key: {text:?}");
            check_calls(&tools, &parsed.calls, &text);
            calls += 1;
        } else {
            assert!(parsed.calls.is_empty(), "{text:?}");
        }
    }
    assert!(calls > 10);
}

#[test]
fn nothing_to_constrain() {
    let tools = [weather()];
    let hermes = Some(ToolSyntax::new(ToolFormat::Hermes));
    assert_eq!(grammar_for(&tools, &ToolChoice::None, true, hermes), None);
    assert_eq!(grammar_for(&[], &ToolChoice::Required, true, hermes), None);
    assert_eq!(grammar_for(&tools, &ToolChoice::Auto, true, None), None, "syntax unknown");
    assert_eq!(grammar_for(&tools, &ToolChoice::Function("other".into()), true, hermes), None);
}

/// Schema keywords llguidance cannot enforce are ignored unless every tool is strict.
#[test]
fn strict_tools_refuse_what_the_grammar_cannot_enforce() {
    let vocab = fixture();
    let mut odd = tool(
        "odd",
        Some(
            json!({"type": "object", "properties": {"x": {"type": "string", "format": "hostname-ish"}}}),
        ),
    );
    let spec = grammar_for(std::slice::from_ref(&odd), &ToolChoice::Required, false, None).unwrap();
    vocab.compiler.compile(&spec).unwrap();
    odd.function.strict = Some(true);
    let spec = grammar_for(&[odd], &ToolChoice::Required, false, None).unwrap();
    let e = vocab.compiler.compile(&spec).unwrap_err();
    assert!(e.to_string().contains("hostname-ish"), "{e}");
}

/// Bytes 0–255 as tokens, then `specials` as special tokens, then EOS: (vocabulary,
/// the specials' ids).
fn synthetic(specials: &[&str]) -> (Vocab, Vec<u32>) {
    let mut bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut ids = Vec::new();
    for name in specials.iter().chain(&["</s>"]) {
        ids.push(bytes.len() as u32);
        let mut b = vec![0xFF];
        b.extend_from_slice(name.as_bytes());
        bytes.push(b);
    }
    let eos = ids.pop().unwrap();
    let compiler = GrammarCompiler::from_token_bytes(bytes.clone(), eos).unwrap();
    let text: Vec<String> = bytes
        .iter()
        .map(|b| String::from_utf8_lossy(b.strip_prefix(&[0xFF]).unwrap_or(b)).into_owned())
        .collect();
    let decode = Box::new(move |ids: &[u32]| {
        let raw: Vec<u8> = ids
            .iter()
            .flat_map(|&t| {
                let b = &bytes[t as usize];
                b.strip_prefix(&[0xFF]).unwrap_or(b).to_vec()
            })
            .collect();
        String::from_utf8_lossy(&raw).into_owned()
    });
    (Vocab { compiler, text, decode, eos: vec![eos] }, ids)
}

fn allowed(grammar: &Grammar, prefix: &[u32]) -> Vec<u32> {
    let mut state = grammar.0.start();
    for &t in prefix {
        state.commit(TokenId(t)).unwrap();
    }
    let mut mask = vec![0u32; 512usize.div_ceil(32)];
    state.fill_mask(&mut mask).unwrap();
    rill_proto::allowed_tokens(&mask).collect()
}

/// Walks where the trigger comes as its special token (even seeds) or as text (odd);
/// every output's calls are valid, one list of calls per trigger. Returns how many
/// walks called.
fn special_walks(
    vocab: &Vocab,
    syntax: ToolSyntax,
    tools: &[Tool],
    trigger: &str,
    token: u32,
) -> usize {
    let grammar = compile(vocab, grammar_for(tools, &ToolChoice::Auto, true, Some(syntax)));
    let mode = ToolParseMode::Syntax(syntax);
    let mut called = 0;
    for seed in 0..20 {
        let inject = |out: &str, rng: &mut Rng| {
            // Llama's grammar takes its tag as the token only: as text it is just text.
            let llama = syntax.format == ToolFormat::Llama3Json;
            let spelled = if seed % 2 == 0 || llama { vec![token] } else { vocab.spell(trigger) };
            let whole = !out.ends_with('\u{FFFD}');
            let start = out.is_empty() || !llama;
            (whole && start && !out.contains(trigger) && rng.chance(30)).then_some(spelled)
        };
        let walked = vocab.walk(&grammar, seed, &inject);
        let parsed = parse(mode, &walked);
        check_calls(tools, &parsed.calls, &walked);
        assert!(parsed.calls.len() >= walked.matches(trigger).count(), "{walked:?}");
        called += usize::from(!parsed.calls.is_empty());
    }
    called
}

/// Mistral v11's vocabulary: `[TOOL_CALLS]` and `[ARGS]` are special tokens, allowed
/// as tokens (what the model emits), the trigger as text too.
#[test]
fn special_token_markers_mistral_v11() {
    let (vocab, ids) = synthetic(&["[TOOL_CALLS]", "[ARGS]"]);
    let (calls_id, args_id, eos) = (ids[0], ids[1], vocab.eos[0]);
    let syntax =
        ToolSyntax::new(ToolFormat::Mistral).with_vocabulary(|t| vocab.compiler.special_token(t));
    assert_eq!((syntax.trigger_token, syntax.args_token), (Some(calls_id), Some(args_id)));
    let tools = [weather(), now()];
    let spec = grammar_for(&tools, &ToolChoice::Auto, true, Some(syntax));
    let Some(GrammarSpec::Lark(lark)) = &spec else { panic!("{spec:?}") };
    assert!(
        lark.contains(&format!("<[{calls_id}]>")) && lark.contains(&format!("<[{args_id}]>")),
        "{lark}"
    );
    let grammar = compile(&vocab, spec);
    let ok = allowed(&grammar, &[]);
    assert!(ok.contains(&calls_id) && ok.contains(&eos) && !ok.contains(&args_id));
    assert_eq!(allowed(&grammar, &[calls_id]), [u32::from(b'g'), u32::from(b'n')], "a name, only");
    assert_eq!(allowed(&grammar, &vocab.spell("[TOOL_CALLS]n")), [u32::from(b'o')]);
    assert_eq!(allowed(&grammar, &vocab.spell("[TOOL_CALLS]now")), [args_id]);
    assert!(special_walks(&vocab, syntax, &tools, "[TOOL_CALLS]", calls_id) > 10);
}

/// A Hermes model whose tags are special tokens, and Llama 3's `<|python_tag|>`.
#[test]
fn special_token_markers_hermes_and_llama() {
    let (vocab, ids) = synthetic(&["<tool_call>", "</tool_call>", "<|python_tag|>"]);
    let tools = [weather(), booking()];
    let hermes =
        ToolSyntax::new(ToolFormat::Hermes).with_vocabulary(|t| vocab.compiler.special_token(t));
    assert_eq!((hermes.trigger_token, hermes.close_token), (Some(ids[0]), Some(ids[1])));
    let grammar = compile(&vocab, grammar_for(&tools, &ToolChoice::Auto, true, Some(hermes)));
    assert!(allowed(&grammar, &[]).contains(&ids[0]));
    assert_eq!(allowed(&grammar, &[ids[0]]), [u32::from(b'\n'), u32::from(b'{')]);
    let mut call = vec![ids[0]];
    call.extend(vocab.spell(r#"{"name":"book","arguments":{"seat":{"row":1,"side":"aisle"}}}"#));
    let close = allowed(&grammar, &call);
    assert!(
        close.contains(&ids[1])
            && close.contains(&u32::from(b'<'))
            && !close.contains(&vocab.eos[0])
    );
    assert!(special_walks(&vocab, hermes, &tools, "<tool_call>", ids[0]) > 10);

    let llama = ToolSyntax::new(ToolFormat::Llama3Json)
        .with_vocabulary(|t| vocab.compiler.special_token(t));
    assert_eq!(llama.trigger_token, Some(ids[2]));
    let grammar = compile(&vocab, grammar_for(&tools, &ToolChoice::Auto, false, Some(llama)));
    assert_eq!(allowed(&grammar, &[ids[2]]), [u32::from(b'{')]);
    assert!(special_walks(&vocab, llama, &tools, "<|python_tag|>", ids[2]) > 5);
}
