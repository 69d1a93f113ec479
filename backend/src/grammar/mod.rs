//! Grammar-constrained decoding: a request's JSON schema, regex or Lark grammar becomes
//! a [`rill_proto::Grammar`] whose per-sequence state masks the tokens the grammar allows.
//!
//! - [`GrammarCompiler`] is built once per model from its tokenizer: the bytes of every
//!   token in a token trie (`vocab.rs`) and llguidance's `ParserFactory`, which slices
//!   the trie ahead of time for JSON string contents. It is shared by the router's
//!   validation workers.
//! - [`GrammarCompiler::compile`] turns a [`GrammarSpec`] into a grammar
//!   (`constraint.rs`: `LlgConstraint`), which hands each sequence its own state
//!   (`LlgState`: `fill_mask`, `commit`, `take_forced`). All states of a grammar share
//!   its lexer.
//!
//! The design is llguidance's (the engine behind llama.cpp's and vLLM's structured
//! output): an Earley parser over lexemes, a lexer whose DFA is built lazily from
//! regex derivatives, and a token trie walked once per mask so that a whole subtree of
//! tokens is dropped as soon as its prefix is refused. Nothing is precompiled per
//! grammar (regex-to-DFA compilers take seconds on large schemas): compiling costs a
//! couple of milliseconds, a mask a few microseconds to a trie walk (~1 ms at 128k
//! tokens) where the grammar cannot use the precomputed slices.
//!
//! JSON comes out compact unless a schema's `x-guidance` says otherwise
//! ([`json_options`]): no newlines, at most one space after `:` and `,`, as OpenAI
//! returns it. llguidance's default (any whitespace, unbounded) lets a model spend its
//! whole length budget on indentation.
//!
//! Cost is bounded: masks and commits by llguidance's fuel and size [`limits`] (over
//! budget, that sequence alone fails, the engine loop never stalls); compile recursion
//! by `nesting.rs`, checked before llguidance runs, since a stack overflow would abort
//! the process. llguidance catches its own panics and is kept silent (log level 0);
//! every failure surfaces as an `Err`.

mod constraint;
mod nesting;
mod vocab;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::earley::SlicedBiasComputer;
use llguidance::{Matcher, ParserFactory};
use rill_proto::Grammar;
use serde_json::Value;
use tokenizers::Tokenizer;
use toktrie::{InferenceCapabilities, TokEnv, TokenId};

use constraint::{LlgConstraint, MaskShape};
use vocab::{GreedyTokEnv, HfTokEnv};

/// What a request asked its output to match (the router maps TGI's
/// `{"type": "json" | "json_object" | "json_schema" | "regex", "value": ...}` to it).
#[derive(Clone, Debug, PartialEq)]
pub enum GrammarSpec {
    /// A JSON schema; `{}`, `true` or `null` mean any JSON value.
    JsonSchema(Value),
    /// A regex (Rust `regex` syntax) the whole output must match.
    Regex(String),
    /// A context-free grammar in llguidance's Lark syntax: terminals, rules, `%json {...}`
    /// schemas inside rules, special tokens as `<[id]>`, lazy lexemes. Embedded schemas
    /// take llguidance's JSON defaults (flexible whitespace) unless they carry their own
    /// `x-guidance`: put [`json_options`] there for compact JSON.
    Lark(String),
}

/// Why a grammar could not be built. The message includes llguidance's own and is
/// meant for the user (a 422).
#[derive(Debug, thiserror::Error)]
pub enum GrammarError {
    /// The tokenizer cannot be turned into a token trie (unknown piece encoding,
    /// corrupt `tokenizer.json`, no EOS).
    #[error("cannot use this tokenizer for grammars: {0}")]
    Vocabulary(String),
    /// The JSON schema is invalid or unsupported, or exceeds the grammar's limits.
    #[error("invalid JSON schema: {0}")]
    Schema(String),
    /// The regex is invalid, or exceeds the grammar's limits.
    #[error("invalid regex: {0}")]
    Regex(String),
    /// The Lark grammar (or a schema inside it) is invalid, or exceeds the limits.
    #[error("invalid grammar: {0}")]
    Lark(String),
}

/// Limits on what one grammar may cost; llguidance's defaults except where noted. Each
/// "fuel" unit is a step of regex-derivative work; rates are llguidance's measurements.
pub mod limits {
    /// Earley items in one parser row: the grammar's branching factor. 2,000.
    pub const MAX_ITEMS_IN_ROW: usize = 2_000;
    /// Lexer fuel to build a grammar's lexemes at compile (~50k/ms, so ≤ ~20 ms); real
    /// schemas (FHIR's) need ~500k.
    pub const INITIAL_LEXER_FUEL: u64 = 1_000_000;
    /// Lexer fuel for one mask (~14k/ms, so ≤ ~15 ms even on a cold lexer; a warm one
    /// spends almost none).
    pub const STEP_LEXER_FUEL: u64 = 200_000;
    /// Earley items created for one mask (~20k/ms, so ≤ ~2.5 ms).
    pub const STEP_MAX_ITEMS: usize = 50_000;
    /// Lexer DFA states a grammar may build over its lifetime, shared by its sequences
    /// (~1–2 kB each, so ≤ ~100 MB). llguidance's default is 250,000 (≤ ~500 MB).
    pub const MAX_LEXER_STATES: usize = 50_000;
    /// Symbols in the grammar's productions (a few MB of schema). 500,000.
    pub const MAX_GRAMMAR_SIZE: usize = 500_000;
    /// Whether compiling walks the whole trie for very large lexemes, within
    /// [`INITIAL_LEXER_FUEL`]. Off: it moves work from masks to compile for grammars
    /// that rarely need it, and a schema that exceeds the fuel would then fail to
    /// compile instead of working with slightly slower first masks.
    pub const PRECOMPUTE_LARGE_LEXEMES: bool = false;

    /// The limits as llguidance takes them. Errors carry no parser-state dump (it
    /// would show the user tokens and internals).
    pub fn parser_limits() -> llguidance::api::ParserLimits {
        llguidance::api::ParserLimits {
            max_items_in_row: MAX_ITEMS_IN_ROW,
            initial_lexer_fuel: INITIAL_LEXER_FUEL,
            step_lexer_fuel: STEP_LEXER_FUEL,
            step_max_items: STEP_MAX_ITEMS,
            max_lexer_states: MAX_LEXER_STATES,
            max_grammar_size: MAX_GRAMMAR_SIZE,
            precompute_large_lexemes: PRECOMPUTE_LARGE_LEXEMES,
            verbose_errors: false,
        }
    }
}

/// Compiles grammars for one model's vocabulary. Build it once at load; `compile` is
/// cheap and may run on any thread.
pub struct GrammarCompiler {
    factory: ParserFactory,
    masks: MaskShape,
    eos: Vec<TokenId>,
}

impl fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field("vocab_size", &self.masks.vocab_size)
            .field("tokenizer_vocab", &self.factory.tok_env().tok_trie().vocab_size())
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    /// From a model's `tokenizer.json` (already parsed) and its loaded tokenizer.
    /// `eos_token_ids` are all the ids that end a sequence (generation_config may list
    /// several: Llama 3 has three); each is allowed wherever the grammar accepts.
    /// `vocab_size` is the model's embedding rows, which may exceed the tokenizer's.
    pub fn new(
        tokenizer_json: &Value,
        tokenizer: Arc<Tokenizer>,
        eos_token_ids: &[u32],
        vocab_size: usize,
    ) -> Result<Self, GrammarError> {
        let mut tokens = vocab::token_bytes(tokenizer_json).map_err(GrammarError::Vocabulary)?;
        // The loaded tokenizer may know ids tokenizer.json's vocab does not list.
        let known = tokenizer.get_vocab_size(true);
        if tokens.len() < known {
            tokens.resize(known, Vec::new());
        }
        let trie = vocab::build_trie(tokens, eos_token_ids).map_err(GrammarError::Vocabulary)?;
        let env = HfTokEnv::new(trie, tokenizer);
        Self::from_env(Arc::new(env), eos_token_ids, vocab_size)
    }

    /// From raw token byte strings (synthetic vocabularies for benchmarks and tests):
    /// token `i` is `tokens[i]`, tokenization is greedy longest-match over them, and
    /// the model's vocabulary is theirs. The EOS token's bytes are ignored: it is never
    /// text.
    pub fn from_token_bytes(tokens: Vec<Vec<u8>>, eos_token_id: u32) -> Result<Self, GrammarError> {
        let vocab_size = tokens.len();
        if eos_token_id as usize >= vocab_size {
            return Err(GrammarError::Vocabulary(format!(
                "EOS id {eos_token_id} is outside the {vocab_size}-token vocabulary"
            )));
        }
        let trie = vocab::build_trie(tokens, &[eos_token_id]).map_err(GrammarError::Vocabulary)?;
        Self::from_env(Arc::new(GreedyTokEnv { trie }), &[eos_token_id], vocab_size)
    }

    fn from_env(env: TokEnv, eos: &[TokenId], vocab_size: usize) -> Result<Self, GrammarError> {
        // Forced tokens need a canonical tokenizer (both of ours are); never backtrack:
        // the engine cannot take back a token it has sent.
        let caps = InferenceCapabilities { ff_tokens: true, ..Default::default() };
        let mut factory = ParserFactory::new(&env, caps, &SlicedBiasComputer::general_slices())
            .map_err(|e| GrammarError::Vocabulary(e.to_string()))?;
        factory.quiet();
        *factory.limits_mut() = limits::parser_limits();
        let masks = MaskShape::new(vocab_size, env.tok_trie().vocab_size());
        Ok(GrammarCompiler { factory, masks, eos: eos.to_vec() })
    }

    /// The id of `name` if the vocabulary has it as a special token (an added token
    /// marked special, spelled as in `tokenizer.json`: `<|python_tag|>`,
    /// `[TOOL_CALLS]`), for grammars that refer to it as `<[id]>`. Such a token is never
    /// text: a grammar allows it only where it names it.
    pub fn special_token(&self, name: &str) -> Option<u32> {
        let id = self.factory.tok_env().tok_trie().get_special_token(name)?;
        ((id as usize) < self.masks.limit).then_some(id)
    }

    /// Compiles `spec`. Errors carry llguidance's message (an invalid schema or regex,
    /// or one past the [`limits`]). The first mask is computed here, off the engine
    /// loop, within the per-mask limits; every sequence then starts with it cached.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Grammar, GrammarError> {
        let (top, kind, error): (_, _, fn(String) -> GrammarError) = match spec {
            GrammarSpec::JsonSchema(schema) => {
                nesting::check(schema).map_err(GrammarError::Schema)?;
                let mut schema = match schema {
                    Value::Null | Value::Bool(true) => Value::Object(Default::default()),
                    s => s.clone(),
                };
                if let Value::Object(o) = &mut schema
                    && !o.contains_key("x-guidance")
                {
                    o.insert("x-guidance".into(), json_options());
                }
                (TopLevelGrammar::from_json_schema(schema), "json schema", GrammarError::Schema)
            }
            GrammarSpec::Regex(rx) => {
                (TopLevelGrammar::from_regex(rx), "regex", GrammarError::Regex)
            }
            GrammarSpec::Lark(lark) => {
                // Embedded schemas go through the same recursive compiler.
                for schema in embedded_schemas(lark) {
                    nesting::check(&schema).map_err(GrammarError::Lark)?;
                }
                (TopLevelGrammar::from_lark(lark.clone()), "lark", GrammarError::Lark)
            }
        };
        let matcher = on_compile_thread(|| {
            let mut matcher = Matcher::new(self.factory.create_parser(top));
            if let Some(e) = matcher.get_error() {
                return Err(e);
            }
            matcher.compute_mask().map_err(constraint::message)?;
            Ok(matcher)
        })
        .and_then(|r| r)
        .map_err(|e| error(user_message(&e)))?;
        let constraint = LlgConstraint { matcher, masks: self.masks, eos: self.eos.clone(), kind };
        Ok(Grammar(Arc::new(constraint)))
    }
}

/// The raw bytes of every token id in a parsed `tokenizer.json` (byte-level or
/// SentencePiece-style vocabularies), as a grammar sees them: what OpenAI's logprobs
/// report as `bytes`. Special tokens start with toktrie's 0xFF marker.
pub fn token_bytes(tokenizer_json: &Value) -> Result<Vec<Vec<u8>>, GrammarError> {
    vocab::token_bytes(tokenizer_json).map_err(GrammarError::Vocabulary)
}

/// llguidance's message, trimmed, and cut at [`MAX_MESSAGE`] bytes: it quotes the
/// user's regex, which may be huge.
fn user_message(e: &str) -> String {
    let mut e = constraint::message(e);
    if e.len() > MAX_MESSAGE {
        let cut = (0..=MAX_MESSAGE).rev().find(|&i| e.is_char_boundary(i)).unwrap_or(0);
        e.truncate(cut);
        e.push_str(" …");
    }
    e
}

/// The `x-guidance` options every JSON schema gets unless it has its own: compact JSON
/// as OpenAI returns it, with room for the habits of models trained on Python's
/// `json.dumps` (`", "` and `": "`). The separators are regexes: `,` or `:` followed by
/// at most one space; nothing else between tokens (no newlines, no space inside
/// brackets), so every byte a model spends outside strings moves the document on.
pub fn json_options() -> Value {
    serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ?",
        "key_separator": ": ?",
    })
}

/// The JSON value after every `%json` in a Lark grammar. A `%json` inside a comment or
/// string is checked too, harmlessly; one the parser would reject is left to it.
fn embedded_schemas(lark: &str) -> impl Iterator<Item = Value> + '_ {
    lark.match_indices("%json").filter_map(|(at, keyword)| {
        let rest = &lark[at + keyword.len()..];
        serde_json::Deserializer::from_str(rest).into_iter::<Value>().next()?.ok()
    })
}

/// Longest error message passed on to the user.
const MAX_MESSAGE: usize = 1_000;

/// Runs `f` on a thread with a stack for the deepest recursion [`nesting`] lets
/// through (the caller's may be a 2 MiB worker stack).
fn on_compile_thread<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("rill-grammar".to_string())
            .stack_size(nesting::COMPILE_STACK)
            .spawn_scoped(scope, f)
            .map_err(|e| format!("cannot start the grammar compiler thread: {e}"))?
            .join()
            .map_err(|_| "the grammar compiler failed".to_string())
    })
}
