//! Grammars driven the way the engine drives them: seeded random walks over the masks
//! of the fixture Llama tokenizer (400-token byte-level BPE, EOS ids 2 and 3), whose
//! decoded output must match the schema or regex; limits, EOS and padding at the edges;
//! Lark grammars (tests/lark.rs) and bounds (tests/limits.rs).

use std::sync::Arc;

use rill_proto::TokenId;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::*;

const FIXTURE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../integration-tests/fixtures/models/llama");

struct Fixture {
    json: Value,
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
    vocab_size: usize,
    /// Each token's bytes, for steering walks.
    bytes: Vec<Vec<u8>>,
}

fn read_json(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURE}/{name}")).expect("fixture present");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn fixture() -> Fixture {
    let json = read_json("tokenizer.json");
    let tokenizer = Arc::new(Tokenizer::from_file(format!("{FIXTURE}/tokenizer.json")).unwrap());
    let eos = read_json("generation_config.json")["eos_token_id"]
        .as_array()
        .expect("eos list")
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let vocab_size = read_json("config.json")["vocab_size"].as_u64().unwrap() as usize;
    let bytes = vocab::token_bytes(&json).unwrap();
    Fixture { json, tokenizer, eos, vocab_size, bytes }
}

impl Fixture {
    fn compiler(&self) -> GrammarCompiler {
        self.compiler_for_vocab(self.vocab_size)
    }

    fn compiler_for_vocab(&self, vocab_size: usize) -> GrammarCompiler {
        GrammarCompiler::new(&self.json, self.tokenizer.clone(), &self.eos, vocab_size).unwrap()
    }

    fn decode(&self, tokens: &[u32]) -> String {
        self.tokenizer.decode(tokens, true).unwrap()
    }
}

/// xorshift64*: deterministic, no dependency.
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

fn allowed(mask: &[u32]) -> Vec<u32> {
    rill_proto::allowed_tokens(mask).collect()
}

const MAX_WALK: usize = 400;
/// Tokens chosen uniformly before the walk starts steering towards an end.
const FREE_STEPS: usize = 30;

/// Samples like an engine would, with a bias that ends walks: EOS is taken when allowed
/// (always after `FREE_STEPS`), then closing tokens (`"`, `}`, `]`) are preferred and
/// whitespace avoided. The grammar is never bypassed: every token comes from the mask.
/// Returns the tokens without the final EOS.
fn walk(fx: &Fixture, grammar: &Grammar, vocab_size: usize, rng: &mut Rng) -> Vec<u32> {
    let mut state = grammar.0.start();
    let mut mask = vec![0u32; vocab_size.div_ceil(32)];
    let mut out: Vec<u32> = Vec::new();
    loop {
        assert!(out.len() < MAX_WALK, "walk did not end: {:?}", fx.decode(&out));
        state.fill_mask(&mut mask).unwrap();
        let ok = allowed(&mask);
        assert!(!ok.is_empty());
        let (eos, other): (Vec<u32>, Vec<u32>) = ok.iter().partition(|t| fx.eos.contains(t));
        if !eos.is_empty() && (other.is_empty() || out.len() >= FREE_STEPS || rng.chance(30)) {
            let e = eos[rng.below(eos.len())];
            state.commit(TokenId(e)).unwrap();
            // Finished: only EOS from now on.
            state.fill_mask(&mut mask).unwrap();
            assert!(allowed(&mask).iter().all(|t| fx.eos.contains(t)));
            return out;
        }
        let pick = if out.len() < FREE_STEPS {
            other[rng.below(other.len())]
        } else {
            let closing: Vec<u32> = other
                .iter()
                .copied()
                .filter(|&t| fx.bytes[t as usize].iter().any(|b| b"\"}]".contains(b)))
                .collect();
            let solid: Vec<u32> = other
                .iter()
                .copied()
                .filter(|&t| !fx.bytes[t as usize].iter().all(u8::is_ascii_whitespace))
                .collect();
            if !closing.is_empty() && rng.chance(70) {
                closing[rng.below(closing.len())]
            } else if !solid.is_empty() {
                solid[rng.below(solid.len())]
            } else {
                other[rng.below(other.len())]
            }
        };
        state.commit(TokenId(pick)).unwrap();
        out.push(pick);
        for t in state.take_forced().unwrap() {
            assert!(!fx.eos.contains(&t.0), "EOS forced");
            out.push(t.0);
        }
    }
}

fn product_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 0, "maximum": 99999},
            "name": {"type": "string", "maxLength": 12},
            "status": {"enum": ["active", "inactive", "pending"]},
            "price": {"type": "number", "minimum": 0, "maximum": 1000000},
            "in_stock": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
            "owner": {
                "type": "object",
                "properties": {
                    "email": {"type": "string", "maxLength": 20},
                    "level": {"type": "integer"}
                },
                "required": ["email"],
                "additionalProperties": false
            },
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "maxLength": 10},
                        "qty": {"type": "integer", "minimum": 1}
                    },
                    "required": ["sku", "qty"],
                    "additionalProperties": false
                },
                "minItems": 1,
                "maxItems": 3
            }
        },
        "required": ["id", "name", "status", "owner", "lines"],
        "additionalProperties": false
    })
}

#[test]
fn json_schema_walks_produce_valid_documents() {
    let fx = fixture();
    let compiler = fx.compiler();
    let schema = product_schema();
    let grammar = compiler.compile(&GrammarSpec::JsonSchema(schema.clone())).unwrap();
    for seed in 0..50 {
        let tokens = walk(&fx, &grammar, fx.vocab_size, &mut Rng::new(seed));
        let text = fx.decode(&tokens);
        // The tokenizer decodes exactly the bytes the grammar saw.
        let raw: Vec<u8> = tokens.iter().flat_map(|&t| fx.bytes[t as usize].clone()).collect();
        assert_eq!(text.as_bytes(), raw, "seed {seed}");
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
        if let Err(e) = jsonschema::validate(&schema, &value) {
            panic!("seed {seed}: {e}: {text}");
        }
    }
}

#[test]
fn any_json_schema_allows_any_value() {
    let fx = fixture();
    let compiler = fx.compiler();
    for schema in [json!({}), json!(true), Value::Null] {
        let grammar = compiler.compile(&GrammarSpec::JsonSchema(schema)).unwrap();
        for seed in 0..10 {
            let tokens = walk(&fx, &grammar, fx.vocab_size, &mut Rng::new(seed));
            let text = fx.decode(&tokens);
            // Syntax only: numbers are unbounded here and may overflow an f64.
            serde_json::from_str::<serde::de::IgnoredAny>(&text)
                .unwrap_or_else(|e| panic!("{e}: {text:?}"));
        }
    }
}

#[test]
fn regex_walks_match() {
    let fx = fixture();
    let compiler = fx.compiler();
    for rx in [r"[a-z]{2,5}-\d{2,3}", r"(cat|dog|bird)s?( [0-9]{1,2}| none)?", r"(ab|a)(bc|c)x*"] {
        let grammar = compiler.compile(&GrammarSpec::Regex(rx.to_string())).unwrap();
        let check = regex::Regex::new(&format!("^(?:{rx})$")).unwrap();
        let mut seen = std::collections::HashSet::new();
        for seed in 0..50 {
            let tokens = walk(&fx, &grammar, fx.vocab_size, &mut Rng::new(seed));
            let text = fx.decode(&tokens);
            assert!(check.is_match(&text), "{rx}: seed {seed}: {text:?}");
            seen.insert(text);
        }
        assert!(seen.len() > 5, "{rx}: walks should differ: {seen:?}");
    }
}

#[test]
fn invalid_grammars_carry_the_parsers_message() {
    let fx = fixture();
    let compiler = fx.compiler();
    let e = compiler.compile(&GrammarSpec::JsonSchema(json!({"type": "nonsense"}))).unwrap_err();
    assert!(matches!(e, GrammarError::Schema(_)));
    assert_eq!(e.to_string(), "invalid JSON schema: Invalid type: nonsense");

    let e = compiler.compile(&GrammarSpec::JsonSchema(json!(5))).unwrap_err();
    assert!(e.to_string().contains("schema must be an object or boolean"), "{e}");

    let e = compiler.compile(&GrammarSpec::Regex("(ab".to_string())).unwrap_err();
    assert!(matches!(e, GrammarError::Regex(_)));
    let msg = e.to_string();
    assert!(msg.starts_with("invalid regex: ") && msg.contains("unclosed group"), "{msg}");

    // A grammar with no string at all: refused at compile, not at the first mask.
    let e = compiler.compile(&GrammarSpec::JsonSchema(json!(false))).unwrap_err();
    assert!(matches!(e, GrammarError::Schema(_)), "{e}");
}

#[test]
fn eos_only_where_the_grammar_accepts() {
    let fx = fixture();
    let compiler = fx.compiler();
    let grammar = compiler.compile(&GrammarSpec::Regex("(yes|no)!?".to_string())).unwrap();
    let mut mask = vec![0u32; fx.vocab_size.div_ceil(32)];
    let eos_allowed = |mask: &[u32]| {
        fx.eos.iter().map(|&e| mask[e as usize / 32] >> (e % 32) & 1 == 1).collect::<Vec<_>>()
    };
    let id = |s: &str| fx.tokenizer.token_to_id(s).unwrap();

    let mut state = grammar.0.start();
    state.fill_mask(&mut mask).unwrap();
    assert_eq!(eos_allowed(&mask), [false, false], "nothing generated yet");
    assert!(state.commit(TokenId(fx.eos[0])).is_err(), "EOS refused before acceptance");

    let mut state = grammar.0.start();
    state.commit(TokenId(id("n"))).unwrap();
    let forced = state.take_forced().unwrap();
    assert_eq!(fx.decode(&forced.iter().map(|t| t.0).collect::<Vec<_>>()), "o");
    state.fill_mask(&mut mask).unwrap();
    assert_eq!(eos_allowed(&mask), [true, true], "accepting: every EOS id");
    assert_eq!(allowed(&mask).len(), 3, "'!' or either EOS: {:?}", allowed(&mask));
    state.commit(TokenId(id("!"))).unwrap();
    assert!(state.take_forced().unwrap().is_empty());
    state.fill_mask(&mut mask).unwrap();
    assert_eq!(allowed(&mask), fx.eos, "finished: only EOS");
    assert!(state.commit(TokenId(id("!"))).is_err());

    let mut state = grammar.0.start();
    state.commit(TokenId(id("n"))).unwrap();
    state.take_forced().unwrap();
    state.commit(TokenId(fx.eos[1])).unwrap();
    state.fill_mask(&mut mask).unwrap();
    assert_eq!(allowed(&mask), fx.eos, "after the second EOS id: only EOS");
    state.commit(TokenId(fx.eos[0])).unwrap();
}

#[test]
fn model_vocab_padding_is_never_allowed() {
    let fx = fixture();
    let any = GrammarSpec::Regex("(?s:.{0,50})".to_string());

    // Embedding padded past the tokenizer (not to a multiple of 32), mask longer still
    // and full of garbage.
    let compiler = fx.compiler_for_vocab(fx.vocab_size + 37);
    let grammar = compiler.compile(&any).unwrap();
    let mut state = grammar.0.start();
    let mut mask = vec![u32::MAX; (fx.vocab_size + 37).div_ceil(32) + 2];
    state.fill_mask(&mut mask).unwrap();
    let ok = allowed(&mask);
    assert!(ok.len() > 300, "almost every token: {}", ok.len());
    assert!(ok.iter().all(|&t| (t as usize) < fx.vocab_size), "padding allowed");
    assert!(state.commit(TokenId(fx.vocab_size as u32 + 1)).is_err());

    // Embedding smaller than the tokenizer: the tail is cut.
    let compiler = fx.compiler_for_vocab(390);
    let grammar = compiler.compile(&any).unwrap();
    let mut state = grammar.0.start();
    let mut mask = vec![u32::MAX; 390usize.div_ceil(32)];
    state.fill_mask(&mut mask).unwrap();
    assert!(allowed(&mask).iter().all(|&t| t < 390));

    // A mask too short is an error, not a panic.
    let mut short = vec![0u32; 3];
    assert!(state.fill_mask(&mut short).is_err());
}

#[test]
fn synthetic_vocabulary() {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for t in ["true", "false", "{\"", "\":", "ok", "\"ok\"", "}", " ", "name", "\"name\": \""] {
        tokens.push(t.as_bytes().to_vec());
    }
    let eos = tokens.len() as u32;
    tokens.push(b"<eos>".to_vec());
    let compiler = GrammarCompiler::from_token_bytes(tokens.clone(), eos).unwrap();
    let schema = json!({
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "name": {"type": "string", "maxLength": 5}},
        "required": ["ok", "name"],
        "additionalProperties": false
    });
    let grammar = compiler.compile(&GrammarSpec::JsonSchema(schema.clone())).unwrap();
    let mut rng = Rng::new(3);
    let mut mask = vec![0u32; tokens.len().div_ceil(32)];
    for _ in 0..20 {
        let mut state = grammar.0.start();
        let mut text = Vec::new();
        loop {
            assert!(text.len() < 2000);
            state.fill_mask(&mut mask).unwrap();
            let ok = allowed(&mask);
            if ok.contains(&eos) {
                state.commit(TokenId(eos)).unwrap();
                break;
            }
            // Prefer the multi-byte tokens so forcing and walking both get exercised.
            let long: Vec<u32> = ok.iter().copied().filter(|&t| t > 255).collect();
            let t = if !long.is_empty() && rng.chance(50) {
                long[rng.below(long.len())]
            } else {
                ok[rng.below(ok.len())]
            };
            state.commit(TokenId(t)).unwrap();
            text.extend_from_slice(&tokens[t as usize]);
            for f in state.take_forced().unwrap() {
                text.extend_from_slice(&tokens[f.0 as usize]);
            }
        }
        let text = String::from_utf8(text).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(jsonschema::is_valid(&schema, &value), "{text}");
    }

    // Forced text is tokenized greedily: "name" is one token, "=" another.
    let id = |s: &[u8]| tokens.iter().position(|t| t == s).unwrap() as u32;
    let grammar = compiler.compile(&GrammarSpec::Regex("name=[0-9]".to_string())).unwrap();
    let mut state = grammar.0.start();
    let forced: Vec<u32> = state.take_forced().unwrap().into_iter().map(|t| t.0).collect();
    assert_eq!(forced, [id(b"name"), id(b"=")]);
    state.fill_mask(&mut mask).unwrap();
    assert_eq!(allowed(&mask), (b'0'..=b'9').map(u32::from).collect::<Vec<_>>());

    assert!(GrammarCompiler::from_token_bytes(tokens, 10_000).is_err(), "EOS outside vocab");
}

#[test]
fn sentencepiece_tokenizer_pieces_and_forced_text() {
    // Llama 2 style: `▁` for spaces, `<0xNN>` byte fallback, a normalizer that prepends
    // `▁` to the input (which forced text must not get).
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), json!(i));
    }
    for b in 0..=255u32 {
        vocab.insert(format!("<0x{b:02X}>"), json!(3 + b));
    }
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "hell", "hello", "▁hello", "▁w", "or",
        "orl", "orld", "▁world",
    ];
    for (id, piece) in (259..).zip(pieces) {
        vocab.insert(piece.to_string(), json!(id));
    }
    let special = |id: u32, s: &str| json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    let json = json!({
        "version": "1.0",
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        ]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab, "merges": ["h e", "l l", "he ll", "hell o", "▁ hello", "▁ w", "o r", "or l", "orl d", "▁w orld"]}
    });
    let tokenizer: Tokenizer = json.to_string().parse().unwrap();
    let bytes = vocab::token_bytes(&json).unwrap();
    assert_eq!(bytes[3 + 0x41], b"A");
    assert_eq!(bytes[tokenizer.token_to_id("▁hello").unwrap() as usize], b" hello");
    assert_eq!(bytes[2], b"\xff</s>");

    let vocab_size = bytes.len();
    let compiler =
        GrammarCompiler::new(&json, Arc::new(tokenizer.clone()), &[2], vocab_size).unwrap();
    let grammar = compiler.compile(&GrammarSpec::Regex("hello world".to_string())).unwrap();
    let mut state = grammar.0.start();
    let forced: Vec<u32> = state.take_forced().unwrap().into_iter().map(|t| t.0).collect();
    let spelled: Vec<u8> = forced.iter().flat_map(|&t| bytes[t as usize].clone()).collect();
    // No `▁` prepended; the tail that a longer token could still absorb is left to sampling.
    assert!(b"hello world".starts_with(&spelled) && !spelled.is_empty(), "{spelled:?}");
    assert_eq!(forced[0], tokenizer.token_to_id("hello").unwrap());
}

/// Added tokens that are not special are text, as the tokenizer decodes them: Qwen's
/// `<tool_call>` (special: false) is what a grammar must allow where the text
/// `<tool_call>` goes, and forcing that text forces the token. Special ones, and
/// `<|...|>` control tokens whatever their flag, are only ever named by id.
#[test]
fn added_tokens_are_text_unless_special() {
    let fx = fixture();
    let mut json = fx.json.clone();
    let added = json["added_tokens"].as_array_mut().unwrap();
    for (id, content, special) in
        [(400, "<tool_call>", false), (401, "<|im_start|>", false), (402, "[TOOL_CALLS]", true)]
    {
        added.push(json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": special}));
    }
    let tokenizer: Tokenizer = json.to_string().parse().unwrap();
    let compiler = GrammarCompiler::new(&json, Arc::new(tokenizer), &fx.eos, 403).unwrap();
    assert_eq!(compiler.special_token("<tool_call>"), None);
    assert_eq!(compiler.special_token("<|im_start|>"), Some(401));
    assert_eq!(compiler.special_token("[TOOL_CALLS]"), Some(402));
    assert_eq!(compiler.special_token("<s>"), Some(1));

    let grammar = compiler.compile(&GrammarSpec::Regex("(?s:.{0,20})".to_string())).unwrap();
    let mut state = grammar.0.start();
    let mut mask = vec![0u32; 403usize.div_ceil(32)];
    state.fill_mask(&mut mask).unwrap();
    let ok = allowed(&mask);
    assert!(ok.contains(&400) && !ok.contains(&401) && !ok.contains(&402), "{ok:?}");

    let grammar = compiler.compile(&GrammarSpec::Regex("<tool_call>\\{".to_string())).unwrap();
    let mut state = grammar.0.start();
    let forced: Vec<u32> = state.take_forced().unwrap().into_iter().map(|t| t.0).collect();
    assert_eq!(forced.first(), Some(&400), "{forced:?}");
}

#[test]
fn compiler_and_states_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<GrammarCompiler>();
    send_sync::<Grammar>();
    let fx = fixture();
    let grammar = fx.compiler().compile(&GrammarSpec::Regex("[0-9]{3}".to_string())).unwrap();
    let state = grammar.0.start();
    std::thread::spawn(move || drop(state)).join().unwrap();
}

mod lark;
mod limits;
