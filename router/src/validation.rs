//! The generation core's validation, shared by every API family: a [`GenerationSpec`]
//! (the request in neutral terms, built by each family from its own wire type after
//! checking its own parameter bounds) becomes a [`ValidRequest`] — the prompt
//! tokenized (on a blocking thread, by the caller) or taken as token ids, `truncate`
//! applied, the lengths checked against the server's [`Limits`], `max_new_tokens`
//! defaulted from `max_total_tokens`, the grammar compiled, and a seed drawn when a
//! sampling request gave none.
//!
//! Messages are TGI's (its clients match on them); families with another error shape
//! (OpenAI's names the offending `param`) map these variants onto theirs.

use std::sync::atomic::{AtomicU64, Ordering};

use rill_backend::grammar::{GrammarCompiler, GrammarSpec};
use rill_proto::SamplingParams;
use tokenizers::Tokenizer;

/// Server-wide bounds (from the CLI, checked against the model at start-up).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_input_tokens: usize,
    pub max_total_tokens: usize,
    pub max_stop_sequences: usize,
    pub max_top_n_tokens: u32,
    pub max_best_of: usize,
    /// Most choices one OpenAI request may ask for (`n`).
    pub max_n: usize,
    /// The model's vocabulary (embedding rows): token ids given as a prompt must be below.
    pub vocab_size: usize,
}

/// What the model reads first.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Text to tokenize; `add_special_tokens` is false for text a chat template
    /// rendered (it wrote the BOS itself, as transformers' `apply_chat_template`
    /// assumes).
    Text { text: String, add_special_tokens: bool },
    /// Token ids as given (OpenAI's `prompt` may be token ids).
    Tokens(Vec<u32>),
}

/// How a matched stop string ends the output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StopInclusion {
    /// TGI: the text ends right after the stop string.
    #[default]
    Include,
    /// OpenAI: the text ends right before it, and a stream holds back text that
    /// might be the start of one until it is sure.
    Exclude,
}

/// A request in the core's terms, before the prompt is tokenized.
#[derive(Clone, Debug)]
pub struct GenerationSpec {
    pub prompt: Prompt,
    /// `None`: as many as `max_total_tokens` leaves.
    pub max_new_tokens: Option<u32>,
    /// Keep only the prompt's last tokens.
    pub truncate: Option<usize>,
    pub stop: Vec<String>,
    pub stop_inclusion: StopInclusion,
    /// Leave special tokens out of the text (false where the output's syntax uses
    /// them, e.g. tool-call markers; EOS never shows).
    pub skip_special_tokens: bool,
    /// Alternatives to report with each token.
    pub top_n_tokens: u32,
    /// Report the prompt tokens' logprobs.
    pub prompt_logprobs: bool,
    /// Generate exactly `max_new_tokens` (benchmarks, `ignore_eos`).
    pub ignore_eos: bool,
    /// The RNG seed; drawn at random for a sampling request without one.
    pub seed: Option<u64>,
    pub grammar: Option<GrammarSpec>,
    /// Every processor's parameters (`seed` and `grammar` are filled in here).
    pub sampling: SamplingParams,
    /// Prefix-cached blocks are shared only among requests with the same salt.
    pub cache_salt: Option<String>,
}

impl GenerationSpec {
    /// A greedy request for `prompt` with every option off.
    pub fn new(prompt: Prompt) -> Self {
        GenerationSpec {
            prompt,
            max_new_tokens: None,
            truncate: None,
            stop: Vec::new(),
            stop_inclusion: StopInclusion::Include,
            skip_special_tokens: true,
            top_n_tokens: 0,
            prompt_logprobs: false,
            ignore_eos: false,
            seed: None,
            grammar: None,
            sampling: SamplingParams::default(),
            cache_salt: None,
        }
    }
}

/// A request that passed validation: what the engine runs and what the
/// post-processing needs.
#[derive(Clone, Debug)]
pub struct ValidRequest {
    /// The prompt's text as given (empty for token ids).
    pub inputs: String,
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    pub stop_inclusion: StopInclusion,
    pub skip_special_tokens: bool,
    pub prompt_logprobs: bool,
    pub ignore_eos: bool,
    /// The seed reported back (sampling requests only).
    pub seed: Option<u64>,
    pub top_n_tokens: u32,
    pub sampling: SamplingParams,
    pub cache_salt: Option<String>,
}

impl ValidRequest {
    /// The same request with another seed: `seed` if given, else a random one (the
    /// other `best_of` samples, OpenAI's `n` choices).
    pub fn reseeded(&self, seed: Option<u64>) -> ValidRequest {
        let mut r = self.clone();
        r.sampling.seed = seed.unwrap_or_else(random_seed);
        r.seed = Some(r.sampling.seed);
        r
    }
}

impl ValidRequest {
    /// `n` copies of the request for `n` answers (OpenAI's `n`, the Inference API's
    /// `num_return_sequences`): with a seed, answer i draws from seed + i, so a seeded
    /// request repeats exactly; without one, each sampled answer draws its own.
    pub fn choices(self, n: usize, seed: Option<u64>) -> Vec<ValidRequest> {
        (0..n)
            .map(|i| match (i, seed) {
                (0, _) => self.clone(),
                (_, Some(s)) => self.reseeded(Some(s.wrapping_add(i as u64))),
                (_, None) if self.seed.is_none() => self.clone(),
                (_, None) => self.reseeded(None),
            })
            .collect()
    }
}

/// A seed for a request that gave none: distinct per call, unpredictable across
/// runs (time and a counter through splitmix64).
pub fn random_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = nanos ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Why a request was refused before it reached the engine (HTTP 422 on TGI's
/// routes; each family maps these to its own shape).
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("`inputs` cannot be empty")]
    EmptyInput,
    #[error("`temperature` must be strictly positive")]
    Temperature,
    #[error("`repetition_penalty` must be strictly positive")]
    RepetitionPenalty,
    #[error("`frequency_penalty` must be >= -2.0 and <= 2.0")]
    FrequencyPenalty,
    #[error("`top_p` must be > 0.0 and < 1.0")]
    TopP,
    #[error("`typical_p` must be > 0.0 and < 1.0")]
    TypicalP,
    #[error("`top_k` must be strictly positive")]
    TopK,
    #[error("`max_new_tokens` must be strictly positive")]
    NegativeMaxNewTokens,
    #[error("`stop` supports up to {0} stop sequences. Given: {1}")]
    StopSequence(usize, usize),
    #[error("`top_n_tokens` must be >= 0 and <= {0}. Given: {1}")]
    TopNTokens(u32, u32),
    #[error("`best_of` must be > 0 and <= {0}. Given: {1}")]
    BestOf(usize, usize),
    #[error("you must use sampling when `best_of` is > 1")]
    BestOfSampling,
    #[error("`seed` must not be set when `best_of` > 1")]
    BestOfSeed,
    #[error("`best_of` != 1 is not allowed for this endpoint")]
    BestOfStream,
    #[error("`decoder_input_details` == true is not supported when streaming tokens")]
    PrefillDetailsStream,
    #[error("`adapter_id` is not supported: this server serves no LoRA adapters")]
    AdapterId,
    #[error("`truncate` must be strictly positive and less than {0}. Given: {1}")]
    Truncate(usize, usize),
    #[error("`inputs` must have less than {0} tokens. Given: {1}")]
    InputLength(usize, usize),
    #[error(
        "`inputs` tokens + `max_new_tokens` must be <= {0}. Given: {1} `inputs` tokens and {2} `max_new_tokens`"
    )]
    MaxTotalTokens(usize, usize, usize),
    #[error("token id {0} is outside the model's vocabulary of {1} tokens")]
    TokenId(u32, usize),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("grammar is not supported")]
    Grammar,
    #[error("grammar is not valid: {0}")]
    InvalidGrammar(String),
}

/// Validate a request in the core's terms: the prompt ([`prepare_prompt`]), its
/// length with `max_new_tokens` against the limits, then its grammar (`grammar` is
/// `None` when grammars are disabled). Tokenizing and compiling are CPU work: call
/// this on a blocking thread.
pub fn prepare(
    spec: GenerationSpec,
    limits: &Limits,
    tokenizer: &Tokenizer,
    grammar: Option<&GrammarCompiler>,
) -> Result<ValidRequest, ValidationError> {
    use ValidationError::*;
    let (inputs, prompt) = prepare_prompt(spec.prompt, spec.truncate, limits, tokenizer)?;
    let input = prompt.len();
    let max_new_tokens = match spec.max_new_tokens {
        Some(0) => return Err(NegativeMaxNewTokens),
        Some(n) => n as usize,
        None => limits.max_total_tokens.saturating_sub(input).max(1),
    };
    if input + max_new_tokens > limits.max_total_tokens {
        return Err(MaxTotalTokens(limits.max_total_tokens, input, max_new_tokens));
    }
    let mut sampling = spec.sampling;
    sampling.grammar = match &spec.grammar {
        None => None,
        Some(g) => {
            let compiler = grammar.ok_or(Grammar)?;
            Some(compiler.compile(g).map_err(|e| InvalidGrammar(e.to_string()))?)
        }
    };
    let seed = sampling.samples().then(|| spec.seed.unwrap_or_else(random_seed));
    sampling.seed = seed.unwrap_or(0);
    Ok(ValidRequest {
        inputs,
        prompt,
        max_new_tokens,
        stop: spec.stop,
        stop_inclusion: spec.stop_inclusion,
        skip_special_tokens: spec.skip_special_tokens,
        prompt_logprobs: spec.prompt_logprobs,
        ignore_eos: spec.ignore_eos,
        seed,
        top_n_tokens: spec.top_n_tokens,
        sampling,
        cache_salt: spec.cache_salt,
    })
}

/// The prompt part of validation, the same for generation and embedding requests:
/// text tokenized (`add_special_tokens` as given) or token ids checked against the
/// vocabulary, `truncate` keeping the last tokens, the length checked against
/// `max_input_tokens`. Returns the text as given (empty for token ids) and the ids.
pub fn prepare_prompt(
    prompt: Prompt,
    truncate: Option<usize>,
    limits: &Limits,
    tokenizer: &Tokenizer,
) -> Result<(String, Vec<u32>), ValidationError> {
    use ValidationError::*;
    let (inputs, mut ids) = match prompt {
        Prompt::Text { text, add_special_tokens } => {
            if text.is_empty() {
                return Err(EmptyInput);
            }
            let encoding = tokenizer
                .encode(text.as_str(), add_special_tokens)
                .map_err(|e| Tokenizer(e.to_string()))?;
            (text, encoding.get_ids().to_vec())
        }
        Prompt::Tokens(ids) => {
            if let Some(&bad) = ids.iter().find(|&&t| t as usize >= limits.vocab_size) {
                return Err(TokenId(bad, limits.vocab_size));
            }
            (String::new(), ids)
        }
    };
    if ids.is_empty() {
        return Err(EmptyInput);
    }
    if let Some(t) = truncate
        && ids.len() > t
    {
        ids.drain(..ids.len() - t);
    }
    if ids.len() > limits.max_input_tokens {
        return Err(InputLength(limits.max_input_tokens, ids.len()));
    }
    Ok((inputs, ids))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn limits() -> Limits {
        Limits {
            max_input_tokens: 30,
            max_total_tokens: 40,
            max_stop_sequences: 2,
            max_top_n_tokens: 5,
            max_best_of: 2,
            max_n: 4,
            vocab_size: 256,
        }
    }

    /// Any JSON value a client could send: leaves of every type (integers near the
    /// edges of i64/u64, floats up to 1e300, strings with markup and odd characters),
    /// nested arrays and objects up to a few levels.
    pub(crate) fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            prop_oneof![Just(u64::MAX), Just(1u64 << 53), 0u64..10].prop_map(Value::from),
            prop_oneof![-1e300f64..1e300, -3.0f64..3.0, Just(0.0), Just(1.0), Just(1e39)]
                .prop_map(Value::from),
            "[ -~]{0,12}|\\PC{0,8}|\\{\\{ x \\}\\}|<\\|[a-z_]{1,9}\\|>".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The JSON type a route's parameter takes, for [`params_object`].
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Kind {
        Float,
        Int,
        Bool,
        Strings,
        /// Anything (objects such as `grammar`).
        Any,
    }

    /// A JSON object whose keys are mostly a route's real parameter names, each usually
    /// with a value of its type near and beyond its bounds (floats up to ±1e39, which
    /// parse as ±infinity into an f32), sometimes anything at all, plus made-up keys —
    /// so that validation sees both nonsense and near-misses.
    pub(crate) fn params_object(
        known: &'static [(&'static str, Kind)],
    ) -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let typed = |kind: Kind| -> BoxedStrategy<Value> {
            match kind {
                Kind::Float => prop_oneof![
                    4 => (-2.5f64..3.0).prop_map(Value::from),
                    1 => prop_oneof![Just(0.0), Just(1.0), Just(2.0), Just(1e39), Just(-1e39), Just(1e300)]
                        .prop_map(Value::from),
                ]
                .boxed(),
                Kind::Int => prop_oneof![
                    4 => (-2i64..45).prop_map(Value::from),
                    1 => prop_oneof![Just(u64::MAX), Just(1u64 << 32), Just(1u64 << 53)].prop_map(Value::from),
                ]
                .boxed(),
                Kind::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
                Kind::Strings => proptest::collection::vec("[a-z ]{0,4}", 0..4).prop_map(Value::from).boxed(),
                Kind::Any => any_json().boxed(),
            }
        };
        let entry = prop_oneof![
            18 => proptest::sample::select(known)
                .prop_flat_map(move |(k, kind)| (Just(k.to_string()), typed(kind))),
            1 => proptest::sample::select(known).prop_flat_map(|(k, _)| (Just(k.to_string()), any_json())),
            1 => ("[a-z_]{1,10}", any_json()),
        ];
        proptest::collection::vec(entry, 0..6)
            .prop_map(|entries| Value::Object(entries.into_iter().collect()))
    }

    pub(crate) fn tokenizer() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../integration-tests/fixtures/models/llama/tokenizer.json"
        );
        Tokenizer::from_file(path).unwrap()
    }

    fn text(s: &str) -> GenerationSpec {
        GenerationSpec::new(Prompt::Text { text: s.into(), add_special_tokens: true })
    }

    #[test]
    fn truncate_keeps_the_last_tokens_and_max_new_tokens_defaults() {
        let long = "the quick brown fox jumps over the lazy dog ".repeat(8);
        let err = prepare(text(&long), &limits(), &tokenizer(), None).unwrap_err();
        assert!(matches!(err, ValidationError::InputLength(30, _)), "{err}");
        let full = tokenizer().encode(long.as_str(), true).unwrap().get_ids().to_vec();
        let spec = GenerationSpec { truncate: Some(10), ..text(&long) };
        let ok = prepare(spec, &limits(), &tokenizer(), None).unwrap();
        assert_eq!(ok.prompt, full[full.len() - 10..]);
        assert_eq!(ok.max_new_tokens, 30);
    }

    #[test]
    fn rendered_text_gets_no_second_bos_and_token_ids_are_checked() {
        let with = prepare(text("Hi"), &limits(), &tokenizer(), None).unwrap();
        let spec =
            GenerationSpec::new(Prompt::Text { text: "Hi".into(), add_special_tokens: false });
        let without = prepare(spec, &limits(), &tokenizer(), None).unwrap();
        assert_eq!(with.prompt[0], 1, "BOS");
        assert_eq!(with.prompt[1..], without.prompt[..]);

        let ids = GenerationSpec::new(Prompt::Tokens(vec![1, 5, 255]));
        assert_eq!(prepare(ids, &limits(), &tokenizer(), None).unwrap().prompt, [1, 5, 255]);
        let bad = GenerationSpec::new(Prompt::Tokens(vec![1, 256]));
        let err = prepare(bad, &limits(), &tokenizer(), None).unwrap_err();
        assert_eq!(err, ValidationError::TokenId(256, 256));
        let empty = GenerationSpec::new(Prompt::Tokens(vec![]));
        let err = prepare(empty, &limits(), &tokenizer(), None).unwrap_err();
        assert_eq!(err, ValidationError::EmptyInput);
    }

    #[test]
    fn seeds_are_drawn_only_for_sampling_requests() {
        let greedy = prepare(text("Hi"), &limits(), &tokenizer(), None).unwrap();
        assert_eq!(greedy.seed, None);
        let mut spec = text("Hi");
        spec.sampling.do_sample = true;
        let drawn = prepare(spec.clone(), &limits(), &tokenizer(), None).unwrap();
        assert!(drawn.seed.is_some());
        spec.seed = Some(7);
        let given = prepare(spec, &limits(), &tokenizer(), None).unwrap();
        assert_eq!((given.seed, given.sampling.seed), (Some(7), 7));
        assert_eq!(given.reseeded(Some(8)).sampling.seed, 8);
    }
}
