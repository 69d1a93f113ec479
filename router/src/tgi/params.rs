//! TGI's parameters: its bounds and messages (`check_parameters`), and the mapping
//! of a `GenerateRequest` onto the core's [`GenerationSpec`] plus what only TGI's
//! answers need ([`Options`]).

use rill_backend::grammar::GrammarSpec;
use rill_proto::SamplingParams;
use rill_proto::api::{GenerateParameters, GenerateRequest, GrammarType};

use crate::validation::{GenerationSpec, Limits, Prompt, StopInclusion, ValidationError};

/// What TGI's answers need beyond the core's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub details: bool,
    pub return_full_text: bool,
    /// Samples to draw, returning the best (`best_of`).
    pub best_of: usize,
}

/// Check `request`'s parameters (everything but the prompt's length).
pub fn check_parameters(
    p: &GenerateParameters,
    stream: bool,
    limits: &Limits,
) -> Result<(), ValidationError> {
    use ValidationError::*;
    // Finite too: a JSON number beyond f32's range (1e39) parses as infinity.
    let positive = |v: Option<f32>| v.is_none_or(|v| v.is_finite() && v > 0.0);
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
    // Refused rather than ignored: a client asking for an adapter must not silently get
    // the base model's answer.
    if p.adapter_id.as_deref().is_some_and(|a| !a.is_empty()) {
        return Err(AdapterId);
    }
    if let Some(t) = p.truncate
        && (t == 0 || t > limits.max_input_tokens)
    {
        return Err(Truncate(limits.max_input_tokens, t));
    }
    Ok(())
}

/// A temperature of 0 means greedy (the Inference API's and KServe's rule; TGI's own
/// route refuses it): nothing else may then make it sample.
pub fn zero_temperature_is_greedy(p: &mut GenerateParameters) {
    if p.temperature == Some(0.0) {
        p.temperature = None;
        p.do_sample = false;
        (p.top_k, p.top_p, p.typical_p) = (None, None, None);
    }
}

/// A checked TGI request in the core's terms.
pub fn to_spec(
    request: GenerateRequest,
    stream: bool,
    limits: &Limits,
) -> Result<(GenerationSpec, Options), ValidationError> {
    // TGI: a request without `parameters` samples.
    let p =
        request.parameters.unwrap_or(GenerateParameters { do_sample: true, ..Default::default() });
    check_parameters(&p, stream, limits)?;
    let grammar = p.grammar.map(|g| match g {
        GrammarType::Json(schema) => GrammarSpec::JsonSchema(schema),
        GrammarType::JsonSchema(c) => GrammarSpec::JsonSchema(c.schema),
        GrammarType::Regex(r) => GrammarSpec::Regex(r),
    });
    let spec = GenerationSpec {
        prompt: Prompt::Text { text: request.inputs, add_special_tokens: true },
        max_new_tokens: p.max_new_tokens,
        truncate: p.truncate,
        stop: p.stop,
        stop_inclusion: StopInclusion::Include,
        skip_special_tokens: true,
        top_n_tokens: p.top_n_tokens.unwrap_or(0),
        prompt_logprobs: p.decoder_input_details,
        ignore_eos: p.ignore_eos,
        seed: p.seed,
        grammar,
        cache_salt: p.cache_salt,
        sampling: SamplingParams {
            do_sample: p.do_sample,
            temperature: p.temperature.unwrap_or(1.0),
            top_k: p.top_k.unwrap_or(0).max(0) as u32,
            top_p: p.top_p.unwrap_or(1.0),
            typical_p: p.typical_p.unwrap_or(1.0),
            repetition_penalty: p.repetition_penalty.unwrap_or(1.0),
            frequency_penalty: p.frequency_penalty.unwrap_or(0.0),
            watermark: p.watermark,
            ..SamplingParams::default()
        },
    };
    let options = Options {
        details: p.details || p.decoder_input_details,
        return_full_text: p.return_full_text.unwrap_or(false),
        best_of: p.best_of.unwrap_or(1),
    };
    Ok((spec, options))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validation::tests::{limits, tokenizer};
    use crate::validation::{ValidRequest, prepare};

    fn check(json: serde_json::Value, stream: bool) -> Result<ValidRequest, ValidationError> {
        let req: GenerateRequest = serde_json::from_value(json).unwrap();
        let (spec, _) = to_spec(req, stream, &limits())?;
        prepare(spec, &limits(), &tokenizer(), None)
    }

    #[test]
    fn every_bound_is_enforced_with_tgi_messages() {
        let cases = [
            (json!({"temperature": 0.0}), "`temperature` must be strictly positive"),
            (json!({"repetition_penalty": -1.0}), "`repetition_penalty` must be strictly positive"),
            // Beyond f32, so infinite (found by the property test below).
            (json!({"temperature": 1e39}), "`temperature` must be strictly positive"),
            (json!({"repetition_penalty": 1e39}), "`repetition_penalty` must be strictly positive"),
            (json!({"frequency_penalty": 2.5}), "`frequency_penalty` must be >= -2.0 and <= 2.0"),
            (json!({"top_p": 1.0}), "`top_p` must be > 0.0 and < 1.0"),
            (json!({"typical_p": 0.0}), "`typical_p` must be > 0.0 and < 1.0"),
            (json!({"top_k": 0}), "`top_k` must be strictly positive"),
            (
                json!({"adapter_id": "my-lora"}),
                "`adapter_id` is not supported: this server serves no LoRA adapters",
            ),
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
        let err =
            check(json!({"inputs": "Hi", "parameters": {"best_of": 2, "do_sample": true}}), true)
                .unwrap_err();
        assert_eq!(err, ValidationError::BestOfStream);
        let err =
            check(json!({"inputs": "Hi", "parameters": {"decoder_input_details": true}}), true)
                .unwrap_err();
        assert_eq!(err, ValidationError::PrefillDetailsStream);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::validation::tests::{any_json, params_object};

        use crate::validation::tests::Kind::{self, *};

        /// TGI's parameters (rill_proto::api::GenerateParameters) and their types.
        const NAMES: &[(&str, Kind)] = &[
            ("best_of", Int),
            ("temperature", Float),
            ("repetition_penalty", Float),
            ("frequency_penalty", Float),
            ("top_k", Int),
            ("top_p", Float),
            ("typical_p", Float),
            ("do_sample", Bool),
            ("max_new_tokens", Int),
            ("return_full_text", Bool),
            ("stop", Strings),
            ("truncate", Int),
            ("watermark", Bool),
            ("details", Bool),
            ("decoder_input_details", Bool),
            ("seed", Int),
            ("top_n_tokens", Int),
            ("grammar", Any),
            ("ignore_eos", Bool),
        ];

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

            /// Any body a client could send: never a panic; what passes every check is a
            /// request the engine can run as asked — within the limits, every sampling
            /// number finite and in its range, best_of only where TGI allows it.
            #[test]
            fn any_request_is_refused_or_valid(
                inputs in prop_oneof![1 => any_json(), 9 => "\\PC{0,60}".prop_map(serde_json::Value::from)],
                parameters in prop_oneof![9 => params_object(NAMES), 1 => any_json()],
                stream in any::<bool>(),
            ) {
                let body = json!({"inputs": inputs, "parameters": parameters});
                let Ok(req) = serde_json::from_value::<GenerateRequest>(body) else { return Ok(()) };
                let Ok((spec, options)) = to_spec(req, stream, &limits()) else { return Ok(()) };
                let Ok(valid) = prepare(spec, &limits(), &tokenizer(), None) else { return Ok(()) };
                let l = limits();
                prop_assert!(valid.max_new_tokens >= 1);
                prop_assert!(valid.prompt.len() <= l.max_input_tokens);
                prop_assert!(valid.prompt.len() + valid.max_new_tokens <= l.max_total_tokens);
                prop_assert!(valid.stop.len() <= l.max_stop_sequences);
                prop_assert!(valid.top_n_tokens <= l.max_top_n_tokens);
                prop_assert!((1..=l.max_best_of).contains(&options.best_of));
                prop_assert!(options.best_of == 1 || (!stream && valid.sampling.samples()));
                let s = &valid.sampling;
                prop_assert!(s.temperature.is_finite() && s.temperature > 0.0, "{s:?}");
                prop_assert!(s.repetition_penalty.is_finite() && s.repetition_penalty > 0.0, "{s:?}");
                prop_assert!((-2.0..=2.0).contains(&s.frequency_penalty), "{s:?}");
                prop_assert!(s.top_p > 0.0 && s.top_p <= 1.0, "{s:?}");
                prop_assert!(s.typical_p > 0.0 && s.typical_p <= 1.0, "{s:?}");
            }
        }
    }

    #[test]
    fn no_parameters_samples_and_details_follow_decoder_input_details() {
        let ok = check(json!({"inputs": "Hi"}), false).unwrap();
        assert!(ok.sampling.do_sample && ok.seed.is_some());
        let req = json!({"inputs": "Hi", "parameters": {"decoder_input_details": true}});
        let (_, options) = to_spec(serde_json::from_value(req).unwrap(), false, &limits()).unwrap();
        assert!(options.details);
    }
}
