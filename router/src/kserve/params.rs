//! Generation parameters as this family takes them — in a request's `parameters`, as
//! top-level keys of a `generate` body, or as one-element input tensors (as Triton's
//! TensorRT-LLM models take `max_tokens`) — mapped onto TGI's, whose checks and
//! mapping onto the core they then go through: `max_tokens` is `max_new_tokens`, a
//! `temperature` of 0 is greedy, `stop` may be one string, `exclude_input_in_output`
//! is the opposite of `return_full_text` (default: the generated text only). Without
//! sampling parameters a request is greedy. Every other key is the protocol's own
//! (`binary_data_output`, `priority`, `timeout`, ...) or a client's, and is left alone.

use rill_proto::api::{GenerateParameters, GenerateRequest};
use serde_json::{Map, Value};

use crate::tgi::{self, Options};
use crate::validation::{GenerationSpec, Limits, ValidationError};

/// The parameters read here, their datatype and meaning (the model metadata lists them).
pub const PARAMETERS: &[(&str, &str, &str)] = &[
    ("max_tokens", "INT64", "Most tokens to generate (also `max_new_tokens`)"),
    ("temperature", "FP64", "Sampling temperature, > 0; 0 means greedy"),
    ("top_k", "INT64", "Sample from the k most likely tokens"),
    ("top_p", "FP64", "Nucleus sampling, in (0, 1)"),
    ("typical_p", "FP64", "Typical sampling, in (0, 1)"),
    ("do_sample", "BOOL", "Sample (default: greedy unless a sampling parameter is given)"),
    ("repetition_penalty", "FP64", "Penalty on repeated tokens, > 0"),
    ("frequency_penalty", "FP64", "OpenAI's frequency penalty, in [-2, 2]"),
    ("seed", "UINT64", "Seed of a sampled request"),
    ("stop", "BYTES", "A stop string, or a list of them"),
    ("truncate", "INT64", "Keep only the last n prompt tokens"),
    ("return_full_text", "BOOL", "Prefix the prompt to the output (default false)"),
    ("exclude_input_in_output", "BOOL", "Triton's opposite of `return_full_text`"),
    ("ignore_eos", "BOOL", "Generate exactly `max_tokens`"),
    ("watermark", "BOOL", "Watermark the output (Kirchenbauer et al.)"),
    ("details", "BOOL", "`generate` / `generate_stream`: add the finish reason and tokens"),
    ("decoder_input_details", "BOOL", "`generate`: add the prompt's logprobs to `details`"),
    ("top_n_tokens", "INT64", "`generate`: the n most likely alternatives of each token"),
    ("grammar", "JSON", "TGI's grammar: `{\"type\": \"json\" | \"regex\", \"value\": ...}`"),
];

/// TGI's other names, read too.
const ALIASES: &[&str] = &["max_new_tokens", "best_of", "adapter_id"];

/// Whether `key` is a generation parameter.
pub fn is_parameter(key: &str) -> bool {
    PARAMETERS.iter().any(|(name, ..)| *name == key) || ALIASES.contains(&key)
}

/// The generation parameters among `given`, as TGI's.
pub fn generate_parameters(given: &Map<String, Value>) -> Result<GenerateParameters, String> {
    let mut p: Map<String, Value> = given
        .iter()
        .filter(|(k, _)| is_parameter(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(max) = p.remove("max_tokens") {
        if p.get("max_new_tokens").is_some_and(|m| *m != max) {
            return Err("`max_tokens` and `max_new_tokens` disagree".into());
        }
        p.insert("max_new_tokens".into(), max);
    }
    if let Some(exclude) = p.remove("exclude_input_in_output") {
        let exclude = exclude.as_bool().ok_or("`exclude_input_in_output` must be a boolean")?;
        if p.get("return_full_text").is_some_and(|f| *f == Value::Bool(exclude)) {
            return Err("`exclude_input_in_output` and `return_full_text` disagree".into());
        }
        p.insert("return_full_text".into(), Value::Bool(!exclude));
    }
    if let Some(Value::String(stop)) = p.get("stop") {
        let one = vec![Value::String(stop.clone())];
        p.insert("stop".into(), Value::Array(one));
    }
    let mut parameters: GenerateParameters = serde_path_to_error::deserialize(Value::Object(p))
        .map_err(|e| {
            let path = e.path().to_string();
            format!("Invalid value for parameter `{path}`: {}", e.into_inner())
        })?;
    if parameters.best_of.is_some_and(|b| b > 1) {
        return Err("`best_of` > 1 is not supported here: use TGI's `/generate`".into());
    }
    tgi::zero_temperature_is_greedy(&mut parameters);
    Ok(parameters)
}

/// One prompt with checked parameters in the core's terms.
pub fn to_spec(
    text: String,
    parameters: GenerateParameters,
    stream: bool,
    limits: &Limits,
) -> Result<(GenerationSpec, Options), ValidationError> {
    tgi::to_spec(GenerateRequest { inputs: text, parameters: Some(parameters) }, stream, limits)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::validation::tests::Kind::{self, *};
        use crate::validation::tests::{limits, params_object};

        /// The protocol's names beside TGI's.
        const NAMES: &[(&str, Kind)] = &[
            ("max_tokens", Int),
            ("max_new_tokens", Int),
            ("temperature", Float),
            ("top_p", Float),
            ("top_k", Int),
            ("stop", Strings),
            ("seed", Int),
            ("exclude_input_in_output", Bool),
            ("return_full_text", Bool),
            ("best_of", Int),
            ("repetition_penalty", Float),
            ("do_sample", Bool),
            ("details", Bool),
        ];

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

            /// Any parameters: never a panic; what maps onto TGI's parameters then passes
            /// or fails TGI's own checks, and a temperature of 0 always means greedy.
            #[test]
            fn any_parameters_map_or_are_refused(given in params_object(NAMES)) {
                let zero = given.get("temperature").and_then(Value::as_f64) == Some(0.0);
                if let Ok(p) = generate_parameters(given.as_object().unwrap()) {
                    if zero {
                        prop_assert!(!p.do_sample && p.temperature.is_none());
                    }
                    let _ = tgi::check_parameters(&p, false, &limits());
                }
            }
        }
    }

    fn params(v: Value) -> Result<GenerateParameters, String> {
        generate_parameters(v.as_object().unwrap())
    }

    #[test]
    fn protocol_names_map_onto_tgi_parameters() {
        let p = params(json!({"max_tokens": 5, "temperature": 0, "top_k": 3, "stop": "\n",
            "binary_data_output": true, "priority": 1}))
        .unwrap();
        assert_eq!(p.max_new_tokens, Some(5));
        assert_eq!((p.temperature, p.top_k, p.do_sample), (None, None, false), "0 is greedy");
        assert_eq!(p.stop, ["\n"]);
        assert_eq!(p.return_full_text, None, "the generated text only by default");
        let p = params(json!({"exclude_input_in_output": false, "temperature": 0.7})).unwrap();
        assert_eq!((p.return_full_text, p.temperature), (Some(true), Some(0.7)));
        let p = params(json!({"stop": ["a", "b"], "seed": 4, "do_sample": true})).unwrap();
        assert_eq!((p.stop.len(), p.seed, p.do_sample), (2, Some(4), true));
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = params(json!({"max_tokens": "ten"})).unwrap_err();
        assert!(err.starts_with("Invalid value for parameter `max_new_tokens`"), "{err}");
        let err = params(json!({"max_tokens": 3, "max_new_tokens": 4})).unwrap_err();
        assert_eq!(err, "`max_tokens` and `max_new_tokens` disagree");
        let err = params(json!({"exclude_input_in_output": "yes"})).unwrap_err();
        assert_eq!(err, "`exclude_input_in_output` must be a boolean");
        assert!(params(json!({"best_of": 2})).unwrap_err().contains("best_of"));
    }
}
