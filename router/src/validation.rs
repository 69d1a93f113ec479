//! Request validation with TGI's bounds and messages: every parameter checked,
//! the prompt tokenized (on a blocking thread, by the caller), `truncate` applied,
//! `max_new_tokens` defaulted from `max_total_tokens`, the grammar compiled, and
//! the sampling parameters normalised into [`SamplingParams`] with a seed.

use std::sync::atomic::{AtomicU64, Ordering};

use rill_backend::grammar::{GrammarCompiler, GrammarSpec};
use rill_proto::SamplingParams;
use rill_proto::api::{GenerateParameters, GenerateRequest, GrammarType};
use tokenizers::Tokenizer;

/// Server-wide bounds (from the CLI, checked against the model at start-up).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_input_tokens: usize,
    pub max_total_tokens: usize,
    pub max_stop_sequences: usize,
    pub max_top_n_tokens: u32,
    pub max_best_of: usize,
}

/// A request that passed validation.
#[derive(Clone, Debug)]
pub struct ValidRequest {
    pub inputs: String,
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    pub details: bool,
    pub decoder_input_details: bool,
    pub return_full_text: bool,
    pub ignore_eos: bool,
    /// The seed reported in `details` (sampling requests only).
    pub seed: Option<u64>,
    pub top_n_tokens: u32,
    /// How many samples to draw, returning the best (`best_of`).
    pub best_of: usize,
    pub sampling: SamplingParams,
}

impl ValidRequest {
    /// The same request with another random seed (the other `best_of` samples).
    pub fn reseeded(&self) -> ValidRequest {
        let mut r = self.clone();
        r.sampling.seed = random_seed();
        r.seed = Some(r.sampling.seed);
        r
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
    #[error("`truncate` must be strictly positive and less than {0}. Given: {1}")]
    Truncate(usize, usize),
    #[error("`inputs` must have less than {0} tokens. Given: {1}")]
    InputLength(usize, usize),
    #[error(
        "`inputs` tokens + `max_new_tokens` must be <= {0}. Given: {1} `inputs` tokens and {2} `max_new_tokens`"
    )]
    MaxTotalTokens(usize, usize, usize),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("grammar is not supported")]
    Grammar,
    #[error("grammar is not valid: {0}")]
    InvalidGrammar(String),
}

/// Check `request`'s parameters (everything but the prompt's length).
pub fn check_parameters(
    p: &GenerateParameters,
    stream: bool,
    limits: &Limits,
) -> Result<(), ValidationError> {
    use ValidationError::*;
    let positive = |v: Option<f32>| v.is_none_or(|v| v > 0.0);
    if !positive(p.temperature) {
        return Err(Temperature);
    }
    if !positive(p.repetition_penalty) {
        return Err(RepetitionPenalty);
    }
    if p.frequency_penalty.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
        return Err(FrequencyPenalty);
    }
    if p.top_p.is_some_and(|v| v <= 0.0 || v >= 1.0) {
        return Err(TopP);
    }
    if p.typical_p.is_some_and(|v| v <= 0.0 || v >= 1.0) {
        return Err(TypicalP);
    }
    if p.top_k.is_some_and(|v| v <= 0) {
        return Err(TopK);
    }
    if p.max_new_tokens == Some(0) {
        return Err(NegativeMaxNewTokens);
    }
    if p.stop.len() > limits.max_stop_sequences {
        return Err(StopSequence(limits.max_stop_sequences, p.stop.len()));
    }
    let top_n = p.top_n_tokens.unwrap_or(0);
    if top_n > limits.max_top_n_tokens {
        return Err(TopNTokens(limits.max_top_n_tokens, top_n));
    }
    if let Some(best_of) = p.best_of {
        if best_of == 0 || best_of > limits.max_best_of {
            return Err(BestOf(limits.max_best_of, best_of));
        }
        if best_of > 1 {
            if stream {
                return Err(BestOfStream);
            }
            let sampling = p.do_sample
                || p.temperature.is_some_and(|t| t != 1.0)
                || p.top_k.is_some()
                || p.top_p.is_some()
                || p.typical_p.is_some();
            if !sampling {
                return Err(BestOfSampling);
            }
            if p.seed.is_some() {
                return Err(BestOfSeed);
            }
        }
    }
    if stream && p.decoder_input_details {
        return Err(PrefillDetailsStream);
    }
    if let Some(t) = p.truncate
        && (t == 0 || t > limits.max_input_tokens)
    {
        return Err(Truncate(limits.max_input_tokens, t));
    }
    Ok(())
}

/// Validate a whole request: parameters, then the tokenized prompt against the
/// length limits, then its grammar (`grammar` is `None` when grammars are
/// disabled). Tokenizing and compiling are CPU work: call this on a blocking thread.
pub fn validate(
    request: GenerateRequest,
    stream: bool,
    limits: &Limits,
    tokenizer: &Tokenizer,
    grammar: Option<&GrammarCompiler>,
) -> Result<ValidRequest, ValidationError> {
    use ValidationError::*;
    // TGI: a request without `parameters` samples.
    let p =
        request.parameters.unwrap_or(GenerateParameters { do_sample: true, ..Default::default() });
    check_parameters(&p, stream, limits)?;
    if request.inputs.is_empty() {
        return Err(EmptyInput);
    }
    let encoding =
        tokenizer.encode(request.inputs.as_str(), true).map_err(|e| Tokenizer(e.to_string()))?;
    let mut prompt = encoding.get_ids().to_vec();
    if prompt.is_empty() {
        return Err(EmptyInput);
    }
    if let Some(t) = p.truncate
        && prompt.len() > t
    {
        prompt.drain(..prompt.len() - t);
    }
    let input = prompt.len();
    if input > limits.max_input_tokens {
        return Err(InputLength(limits.max_input_tokens, input));
    }
    let max_new_tokens = match p.max_new_tokens {
        Some(n) => n as usize,
        None => limits.max_total_tokens.saturating_sub(input).max(1),
    };
    if input + max_new_tokens > limits.max_total_tokens {
        return Err(MaxTotalTokens(limits.max_total_tokens, input, max_new_tokens));
    }
    let grammar = match &p.grammar {
        None => None,
        Some(g) => {
            let compiler = grammar.ok_or(Grammar)?;
            let spec = match g {
                GrammarType::Json(schema) => GrammarSpec::JsonSchema(schema.clone()),
                GrammarType::JsonSchema(c) => GrammarSpec::JsonSchema(c.schema.clone()),
                GrammarType::Regex(r) => GrammarSpec::Regex(r.clone()),
            };
            Some(compiler.compile(&spec).map_err(|e| InvalidGrammar(e.to_string()))?)
        }
    };
    let mut sampling = SamplingParams {
        do_sample: p.do_sample,
        temperature: p.temperature.unwrap_or(1.0),
        top_k: p.top_k.unwrap_or(0).max(0) as u32,
        top_p: p.top_p.unwrap_or(1.0),
        typical_p: p.typical_p.unwrap_or(1.0),
        repetition_penalty: p.repetition_penalty.unwrap_or(1.0),
        frequency_penalty: p.frequency_penalty.unwrap_or(0.0),
        watermark: p.watermark,
        seed: 0,
        grammar,
        ..SamplingParams::default()
    };
    let seed = sampling.samples().then(|| p.seed.unwrap_or_else(random_seed));
    sampling.seed = seed.unwrap_or(0);
    Ok(ValidRequest {
        inputs: request.inputs,
        prompt,
        max_new_tokens,
        stop: p.stop.clone(),
        details: p.details || p.decoder_input_details,
        decoder_input_details: p.decoder_input_details,
        return_full_text: p.return_full_text.unwrap_or(false),
        ignore_eos: p.ignore_eos,
        seed,
        top_n_tokens: p.top_n_tokens.unwrap_or(0),
        best_of: p.best_of.unwrap_or(1),
        sampling,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_input_tokens: 30,
            max_total_tokens: 40,
            max_stop_sequences: 2,
            max_top_n_tokens: 5,
            max_best_of: 2,
        }
    }

    fn tokenizer() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../integration-tests/fixtures/models/llama/tokenizer.json"
        );
        Tokenizer::from_file(path).unwrap()
    }

    fn check(json: serde_json::Value, stream: bool) -> Result<ValidRequest, ValidationError> {
        let req: GenerateRequest = serde_json::from_value(json).unwrap();
        validate(req, stream, &limits(), &tokenizer(), None)
    }

    #[test]
    fn every_bound_is_enforced_with_tgi_messages() {
        use serde_json::json;
        let cases = [
            (json!({"temperature": 0.0}), "`temperature` must be strictly positive"),
            (json!({"repetition_penalty": -1.0}), "`repetition_penalty` must be strictly positive"),
            (json!({"frequency_penalty": 2.5}), "`frequency_penalty` must be >= -2.0 and <= 2.0"),
            (json!({"top_p": 1.0}), "`top_p` must be > 0.0 and < 1.0"),
            (json!({"typical_p": 0.0}), "`typical_p` must be > 0.0 and < 1.0"),
            (json!({"top_k": 0}), "`top_k` must be strictly positive"),
            (json!({"max_new_tokens": 0}), "`max_new_tokens` must be strictly positive"),
            (json!({"stop": ["a", "b", "c"]}), "`stop` supports up to 2 stop sequences. Given: 3"),
            (json!({"top_n_tokens": 6}), "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
            (json!({"best_of": 3}), "`best_of` must be > 0 and <= 2. Given: 3"),
            (json!({"best_of": 2}), "you must use sampling when `best_of` is > 1"),
            (
                json!({"best_of": 2, "do_sample": true, "seed": 1}),
                "`seed` must not be set when `best_of` > 1",
            ),
            (
                json!({"truncate": 31}),
                "`truncate` must be strictly positive and less than 30. Given: 31",
            ),
            (
                json!({"max_new_tokens": 39}),
                "`inputs` tokens + `max_new_tokens` must be <= 40. Given: 3 `inputs` tokens and 39 `max_new_tokens`",
            ),
        ];
        for (params, message) in cases {
            let err = check(json!({"inputs": "Hi", "parameters": params}), false).unwrap_err();
            assert_eq!(err.to_string(), message, "{params}");
        }
        let err = check(json!({"inputs": "", "parameters": {}}), false).unwrap_err();
        assert_eq!(err, ValidationError::EmptyInput);
    }

    #[test]
    fn streaming_forbids_best_of_and_prefill_details() {
        use serde_json::json;
        let err =
            check(json!({"inputs": "Hi", "parameters": {"best_of": 2, "do_sample": true}}), true)
                .unwrap_err();
        assert_eq!(err, ValidationError::BestOfStream);
        let err =
            check(json!({"inputs": "Hi", "parameters": {"decoder_input_details": true}}), true)
                .unwrap_err();
        assert_eq!(err, ValidationError::PrefillDetailsStream);
    }

    #[test]
    fn truncate_keeps_the_last_tokens_and_max_new_tokens_defaults() {
        use serde_json::json;
        let long = "the quick brown fox jumps over the lazy dog ".repeat(8);
        let err = check(json!({"inputs": long}), false).unwrap_err();
        assert!(matches!(err, ValidationError::InputLength(30, _)), "{err}");
        let full = tokenizer().encode(long.as_str(), true).unwrap().get_ids().to_vec();
        let ok = check(json!({"inputs": long, "parameters": {"truncate": 10}}), false).unwrap();
        assert_eq!(ok.prompt, full[full.len() - 10..]);
        assert_eq!(ok.max_new_tokens, 30);
    }
}
