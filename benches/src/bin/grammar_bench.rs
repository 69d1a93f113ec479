//! Grammar-constrained decoding at a Llama-3-sized vocabulary: compile time of a
//! realistic JSON schema and the time of every token mask and commit along walks
//! that write random documents, against the target of a p50 mask ≤ 100 µs at 128k tokens.
//!
//! There is no 128k tokenizer in the repository (and no hub access), so the vocabulary
//! is built deterministically, in this order, until exactly `--vocab` distinct tokens
//! (the last one EOS):
//! 1. the 256 single bytes;
//! 2. JSON fragments (`":`, `{"`, `},` …), digit groups `0`–`999` with and without a
//!    leading space, and whitespace runs (newlines then up to 16 spaces);
//! 3. pieces of the repository's own text (`*.md`, `*.rs`, `*.toml`, `*.py`, `*.sh`
//!    outside `target/` and fixtures), split like a GPT-style pre-tokenizer (an
//!    optional leading space, then a run of letters, of ≤ 3 digits or of
//!    punctuation), with their prefixes and suffixes, most frequent first;
//! 4. generated English-like words (1–4 syllables; plain, leading space, capitalised).
//!
//! Each walk writes a random order document (random values, optional fields present
//! or not) the way a model would: at every step the longest allowed token that spells
//! the document's next bytes, then the tokens the grammar forces, then EOS. Steps
//! where the grammar disallows the document are counted (none are expected) and fall
//! back to a random allowed token. Set `GRAMMAR_BENCH_SHOW=1` to print the outputs.
//!
//! Then the same documents as the arguments of a tool call under `tool_choice:
//! "auto"` (the OpenAI route's Lark grammar for a Hermes-style model): a sentence of
//! free text, where every token still needs a mask, then `<tool_call>` and the call.
//!
//! ```text
//! cargo run --release -p rill-benches --bin grammar-bench -- [--walks 20] [--engine-config benches/models/llama-1.1b/config.json] [--json out.json]
//! ```

#[path = "grammar_bench/engine.rs"]
mod engine;
#[path = "grammar_bench/order.rs"]
mod order;
#[path = "grammar_bench/vocab.rs"]
mod vocab;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use rill_backend::grammar::{GrammarCompiler, GrammarSpec, limits};
use rill_proto::{Grammar, TokenId};
use serde_json::{Value, json};

use order::{order_document, order_schema};
use vocab::Vocab;

#[derive(Parser, Debug)]
struct Args {
    /// Tokens in the synthetic vocabulary (EOS included).
    #[arg(long, default_value_t = 128_000)]
    vocab: usize,
    /// Random walks through the schema.
    #[arg(long, default_value_t = 20)]
    walks: usize,
    /// Longest walk, in tokens.
    #[arg(long, default_value_t = 300)]
    max_tokens: usize,
    /// Timed compilations of the schema (after one cold one).
    #[arg(long, default_value_t = 20)]
    compiles: usize,
    /// Seed of the walks.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also decode with the grammar on this model (a config.json; dummy bf16
    /// weights, vocabulary resized to `--vocab`) and report how long sampling waited
    /// for masks computed during the forward pass.
    #[arg(long)]
    engine_config: Option<PathBuf>,
    /// Sequences in the engine measurement.
    #[arg(long, default_value_t = 8)]
    engine_batch: usize,
    /// Decode steps in the engine measurement.
    #[arg(long, default_value_t = 24)]
    engine_steps: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Target from the design: llguidance's ~50 µs, with room for our copy.
const TARGET_MASK_P50_US: f64 = 100.0;

fn main() -> Result<()> {
    let args = Args::parse();
    if args.vocab < 2_000 || args.walks == 0 || args.max_tokens == 0 || args.compiles == 0 {
        bail!("--vocab must be at least 2000; --walks, --max-tokens, --compiles positive");
    }
    let machine = rill_benches::machine::describe();
    eprintln!("{machine}");

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let t = Instant::now();
    let vocab = Vocab::build(args.vocab, &repo)?;
    eprintln!(
        "vocabulary: {} tokens ({} bytes, {} JSON/digit/space, {} from {} repository files, \
         {} generated), mean length {:.2} bytes, built in {:.1} s",
        vocab.tokens.len(),
        vocab.counts[0],
        vocab.counts[1],
        vocab.counts[2],
        vocab.files,
        vocab.counts[3],
        vocab.mean_len(),
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let eos = vocab.tokens.len() as u32 - 1;
    let compiler = GrammarCompiler::from_token_bytes(vocab.tokens.clone(), eos)?;
    let compiler_ms = ms(t.elapsed());
    eprintln!("GrammarCompiler (trie + llguidance slices): {compiler_ms:.1} ms");

    let schema = order_schema();
    let spec = GrammarSpec::JsonSchema(schema.clone());
    let t = Instant::now();
    let grammar = compiler.compile(&spec)?;
    let cold_ms = ms(t.elapsed());
    let mut compiles = Vec::with_capacity(args.compiles);
    for _ in 0..args.compiles {
        let t = Instant::now();
        std::hint::black_box(compiler.compile(&spec)?);
        compiles.push(ms(t.elapsed()));
    }
    compiles.sort_by(f64::total_cmp);
    let compile_ms = percentile(&compiles, 50.0);
    println!(
        "compile ({} properties, nested): first {cold_ms:.2} ms, median of {} {compile_ms:.2} ms",
        schema["properties"].as_object().map_or(0, |p| p.len()),
        args.compiles
    );

    let mut walks = Walks::new(&vocab.tokens);
    let mut rng = Rng::new(args.seed);
    for _ in 0..args.walks {
        let document = order_document(&mut rng);
        walks.walk(&grammar, document.as_bytes(), args.max_tokens, &mut rng)?;
    }
    let Walks {
        mut masks,
        mut commits,
        forced_steps,
        forced_tokens,
        finished,
        exact,
        valid,
        off_document,
        ..
    } = walks;

    masks.sort_by(f64::total_cmp);
    commits.sort_by(f64::total_cmp);
    let p = |v: &[f64], q| percentile(v, q);
    let mean = masks.iter().sum::<f64>() / masks.len() as f64;
    let forced_fraction = forced_steps as f64 / commits.len().max(1) as f64;
    println!(
        "fill_mask ({} calls, {} tokens): p50 {:.1} µs  p90 {:.1}  p99 {:.1}  max {:.1}  mean {mean:.1}",
        masks.len(),
        vocab.tokens.len(),
        p(&masks, 50.0),
        p(&masks, 90.0),
        p(&masks, 99.0),
        p(&masks, 100.0)
    );
    println!(
        "commit + take_forced ({} calls): p50 {:.1} µs  p99 {:.1}  max {:.1}; \
         {:.0}% of steps forced tokens ({forced_tokens} forced in all)",
        commits.len(),
        p(&commits, 50.0),
        p(&commits, 99.0),
        p(&commits, 100.0),
        100.0 * forced_fraction
    );
    println!(
        "walks: {finished} of {} reached EOS, {exact} wrote their document exactly, {valid} parse \
         as JSON, {off_document} steps off the document; target mask p50 ≤ \
         {TARGET_MASK_P50_US} µs: {}",
        args.walks,
        if p(&masks, 50.0) <= TARGET_MASK_P50_US { "met" } else { "MISSED" }
    );

    let tool = tool_call_auto(&compiler, &vocab.tokens, &schema, &args, &mut rng)?;

    let engine = match &args.engine_config {
        Some(config) => Some(engine::overlap(
            config,
            vocab.tokens.len(),
            &grammar,
            args.engine_batch,
            args.engine_steps,
        )?),
        None => None,
    };

    if let Some(path) = args.json {
        let l = limits::parser_limits();
        let report = json!({
            "engine": engine,
            "machine": machine,
            "tool_call_auto": tool,
            "vocab": {
                "size": vocab.tokens.len(),
                "built_from": "256 bytes; JSON fragments, digit groups, whitespace runs; \
                               pre-tokenized pieces of the repository's text with their \
                               prefixes and suffixes, most frequent first; generated words",
                "single_bytes": vocab.counts[0],
                "json_digits_whitespace": vocab.counts[1],
                "repository_pieces": vocab.counts[2],
                "repository_files": vocab.files,
                "generated_words": vocab.counts[3],
                "mean_token_bytes": vocab.mean_len(),
            },
            "schema": schema,
            "compiler_build_ms": compiler_ms,
            "compile_first_ms": cold_ms,
            "compile_median_ms": compile_ms,
            "mask_us": summary(&masks),
            "commit_and_forced_us": summary(&commits),
            "forced_step_fraction": forced_fraction,
            "forced_tokens": forced_tokens,
            "walks": args.walks,
            "walks_reaching_eos": finished,
            "walks_valid_json": valid,
            "walks_exact_document": exact,
            "steps_off_document": off_document,
            "max_tokens": args.max_tokens,
            "target_mask_p50_us": TARGET_MASK_P50_US,
            "target_met": p(&masks, 50.0) <= TARGET_MASK_P50_US,
            "limits": {
                "max_items_in_row": l.max_items_in_row,
                "initial_lexer_fuel": l.initial_lexer_fuel,
                "step_lexer_fuel": l.step_lexer_fuel,
                "step_max_items": l.step_max_items,
                "max_lexer_states": l.max_lexer_states,
                "max_grammar_size": l.max_grammar_size,
                "precompute_large_lexemes": l.precompute_large_lexemes,
            },
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// Mask costs of `tool_choice: "auto"`: free text (which the grammar must keep free of
/// the call marker), then a Hermes-style call of a tool whose parameters are the order
/// schema.
fn tool_call_auto(
    compiler: &GrammarCompiler,
    tokens: &[Vec<u8>],
    schema: &Value,
    args: &Args,
    rng: &mut Rng,
) -> Result<Value> {
    use rill_router::openai::tools::{Tool, ToolChoice, ToolFormat, ToolSyntax, grammar_for};
    let tool: Tool = serde_json::from_value(json!({
        "type": "function", "function": {"name": "place_order", "parameters": schema}}))?;
    let syntax = ToolSyntax::new(ToolFormat::Hermes);
    let Some(spec) = grammar_for(&[tool], &ToolChoice::Auto, false, Some(syntax)) else {
        bail!("no grammar for tool_choice auto");
    };
    let t = Instant::now();
    let grammar = compiler.compile(&spec)?;
    let compile_ms = ms(t.elapsed());
    let mut walks = Walks::new(tokens);
    let text = "Sure, I will place that order for you now.\n";
    for _ in 0..args.walks {
        let call = format!(
            "{text}<tool_call>\n{{\"name\": \"place_order\", \"arguments\": {}}}\n</tool_call>",
            order_document(rng)
        );
        walks.walk(&grammar, call.as_bytes(), args.max_tokens + 100, rng)?;
    }
    let mut masks = walks.masks;
    masks.sort_by(f64::total_cmp);
    // Free text alone (an answer that calls nothing): what every token of a plain
    // reply costs under `auto`.
    let prose = "The order has been placed. It will be shipped to the address you gave, \
                 and you will get an email once it leaves the warehouse; tell me if you \
                 want to change anything before then.";
    let mut text_walks = Walks::new(tokens);
    for _ in 0..args.walks {
        text_walks.walk(&grammar, prose.as_bytes(), args.max_tokens, rng)?;
    }
    let mut text_masks = text_walks.masks;
    text_masks.sort_by(f64::total_cmp);
    let p = |v: &[f64], q| percentile(v, q);
    println!(
        "tool_choice auto (Hermes, order schema as parameters): compile {compile_ms:.2} ms; \
         text + call: fill_mask ({} calls) p50 {:.1} µs  p90 {:.1}  p99 {:.1}  max {:.1}, {} of \
         {} walks exact; text only: p50 {:.1} µs  p90 {:.1}  p99 {:.1}, {} of {} exact",
        masks.len(),
        p(&masks, 50.0),
        p(&masks, 90.0),
        p(&masks, 99.0),
        p(&masks, 100.0),
        walks.exact,
        args.walks,
        p(&text_masks, 50.0),
        p(&text_masks, 90.0),
        p(&text_masks, 99.0),
        text_walks.exact,
        args.walks
    );
    Ok(json!({
        "compile_ms": compile_ms,
        "text_and_call_mask_us": summary(&masks),
        "text_and_call_walks_exact": walks.exact,
        "text_only_mask_us": summary(&text_masks),
        "text_only_walks_exact": text_walks.exact,
        "walks": args.walks,
    }))
}

/// Random orders written token by token the way a model would write them, every
/// `fill_mask` and `commit` + `take_forced` timed.
struct Walks<'v> {
    tokens: &'v [Vec<u8>],
    /// Token ids by bytes, to find the tokens that spell a document.
    index: HashMap<&'v [u8], u32>,
    max_len: usize,
    mask: Vec<u32>,
    masks: Vec<f64>,
    commits: Vec<f64>,
    forced_steps: usize,
    forced_tokens: usize,
    finished: usize,
    exact: usize,
    valid: usize,
    off_document: usize,
}

impl<'v> Walks<'v> {
    fn new(tokens: &'v [Vec<u8>]) -> Self {
        Walks {
            tokens,
            index: tokens.iter().enumerate().map(|(i, t)| (t.as_slice(), i as u32)).collect(),
            max_len: tokens.iter().map(Vec::len).max().unwrap_or(1),
            mask: vec![0; tokens.len().div_ceil(32)],
            masks: Vec::new(),
            commits: Vec::new(),
            forced_steps: 0,
            forced_tokens: 0,
            finished: 0,
            exact: 0,
            valid: 0,
            off_document: 0,
        }
    }

    /// Writes `target` (EOS is the last token): each step the longest allowed token
    /// that spells the document's next bytes, as a model writing it would pick, then
    /// whatever the grammar forces.
    fn walk(&mut self, grammar: &Grammar, target: &[u8], max: usize, rng: &mut Rng) -> Result<()> {
        let eos = self.tokens.len() as u32 - 1;
        let mut state = grammar.0.start();
        let mut text = Vec::new();
        let mut steps = 0;
        while steps < max {
            let t = Instant::now();
            state.fill_mask(&mut self.mask).map_err(anyhow::Error::msg)?;
            self.masks.push(us(t.elapsed()));
            let allowed = set_bits(&self.mask);
            let eos_ok = allowed.last() == Some(&eos);
            let other = if eos_ok { &allowed[..allowed.len() - 1] } else { &allowed[..] };
            let rest = target.strip_prefix(&text[..]);
            if eos_ok && (other.is_empty() || rest.is_none_or(|r| r.is_empty())) {
                state.commit(TokenId(eos)).map_err(anyhow::Error::msg)?;
                self.finished += 1;
                break;
            }
            let follow = rest.and_then(|rest| {
                (1..=rest.len().min(self.max_len))
                    .rev()
                    .filter_map(|n| self.index.get(&rest[..n]).copied())
                    .find(|&t| self.mask[t as usize / 32] >> (t % 32) & 1 == 1)
            });
            let pick = follow.unwrap_or_else(|| {
                self.off_document += 1;
                choose(self.tokens, other, rng)
            });
            let t = Instant::now();
            state.commit(TokenId(pick)).map_err(anyhow::Error::msg)?;
            let forced = state.take_forced().map_err(anyhow::Error::msg)?;
            self.commits.push(us(t.elapsed()));
            text.extend_from_slice(&self.tokens[pick as usize]);
            if !forced.is_empty() {
                self.forced_steps += 1;
                self.forced_tokens += forced.len();
            }
            for f in &forced {
                text.extend_from_slice(&self.tokens[f.index()]);
            }
            steps += 1 + forced.len();
        }
        if std::env::var_os("GRAMMAR_BENCH_SHOW").is_some() {
            eprintln!("{}", String::from_utf8_lossy(&text));
        }
        self.exact += usize::from(text == target);
        self.valid += usize::from(serde_json::from_slice::<Value>(&text).is_ok());
        Ok(())
    }
}

/// Off the document (the grammar disagrees with it, which the summary counts): a
/// closing token (`"`, `,`, `]`, `}`) seven times in ten so the walk still ends, else
/// the longest of 8 random allowed tokens, whitespace only one time in ten (flexible
/// JSON whitespace is unbounded, and long tokens would otherwise indent forever).
fn choose(tokens: &[Vec<u8>], allowed: &[u32], rng: &mut Rng) -> u32 {
    let pool = |keep: &dyn Fn(&[u8]) -> bool| -> Vec<u32> {
        allowed.iter().copied().filter(|&t| keep(&tokens[t as usize])).collect()
    };
    if rng.below(10) < 7 {
        let closing = pool(&|b| b.iter().any(|c| b"\",]}".contains(c)));
        if !closing.is_empty() {
            return closing[rng.below(closing.len())];
        }
    }
    let solid;
    let candidates = if rng.below(10) == 0 {
        allowed
    } else {
        solid = pool(&|b| !b.iter().all(u8::is_ascii_whitespace));
        if solid.is_empty() { allowed } else { &solid[..] }
    };
    (0..8)
        .map(|_| candidates[rng.below(candidates.len())])
        .max_by_key(|&t| tokens[t as usize].len())
        .unwrap_or(allowed[0])
}

fn set_bits(mask: &[u32]) -> Vec<u32> {
    rill_proto::allowed_tokens(mask).collect()
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(sorted: &[f64]) -> Value {
    json!({
        "count": sorted.len(),
        "p50": percentile(sorted, 50.0),
        "p90": percentile(sorted, 90.0),
        "p99": percentile(sorted, 99.0),
        "max": percentile(sorted, 100.0),
        "mean": sorted.iter().sum::<f64>() / sorted.len().max(1) as f64,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
