//! The Inference API's `text-generation` parameters and how they map onto TGI's (whose
//! checks and mapping onto the core they then go through): `temperature` and
//! `repetition_penalty` range over 0–100 and a temperature of 0 is greedy,
//! `return_full_text` defaults to true, `num_return_sequences` asks for n answers and
//! `max_time` is a soft deadline. Every other TGI parameter keeps its meaning.

use rill_proto::api::{GenerateParameters, GenerateRequest};
use serde::{Deserialize, Serialize};

use crate::server::Ask;
use crate::tgi::{self, Options};
use crate::validation::{Limits, Prompt};

use super::HfError;

/// `parameters` of `text-generation` and `conversational`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TextGenerationParameters {
    /// TGI's parameters (`top_k`, `top_p`, `temperature`, `repetition_penalty`,
    /// `max_new_tokens`, `return_full_text`, `do_sample`, `stop`, `seed`, ...).
    #[serde(flatten)]
    pub tgi: GenerateParameters,
    /// Answers per input (default 1): n samples, seeds `seed`, `seed + 1`, ... when given.
    #[serde(default)]
    pub num_return_sequences: Option<usize>,
    /// A soft limit in seconds: generation stops with what it has.
    #[serde(default)]
    pub max_time: Option<f64>,
}

/// A checked request in the core's terms, and how to answer it.
#[derive(Clone, Debug)]
pub struct TextRequest {
    /// The prompt, its `num_return_sequences` and `max_time`.
    pub ask: Ask,
    pub options: Options,
    /// The same answer every time: greedy, or sampled with a seed, and no time limit.
    pub deterministic: bool,
}

/// The bad parameter, said the Inference API's way.
fn bad(message: impl Into<String>) -> HfError {
    HfError::bad_request(message)
}

impl TextGenerationParameters {
    /// Check the Inference API's own bounds and translate into TGI's parameters.
    pub fn to_tgi(&self, limits: &Limits) -> Result<(GenerateParameters, usize), HfError> {
        let mut p = self.tgi.clone();
        let in_range = |v: Option<f32>| v.is_none_or(|v| (0.0..=100.0).contains(&v));
        if !in_range(p.temperature) {
            return Err(bad("`temperature` must be >= 0.0 and <= 100.0"));
        }
        if !in_range(p.repetition_penalty) {
            return Err(bad("`repetition_penalty` must be >= 0.0 and <= 100.0"));
        }
        tgi::zero_temperature_is_greedy(&mut p);
        if p.return_full_text.is_none() {
            p.return_full_text = Some(true);
        }
        let n = self.num_return_sequences.unwrap_or(1);
        if n == 0 || n > limits.max_n {
            return Err(bad(format!(
                "`num_return_sequences` must be > 0 and <= {}. Given: {n}",
                limits.max_n
            )));
        }
        if n > 1 && p.best_of.is_some_and(|b| b > 1) {
            return Err(bad("`best_of` > 1 cannot be combined with `num_return_sequences` > 1"));
        }
        Ok((p, n))
    }

    /// `inputs` (text to tokenize with the tokenizer's special tokens, or a rendered
    /// chat prompt without them) as a checked request.
    pub fn text_request(
        &self,
        inputs: String,
        add_special_tokens: bool,
        stream: bool,
        limits: &Limits,
    ) -> Result<TextRequest, HfError> {
        let max_time = match self.max_time {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 => Some(std::time::Duration::from_secs_f64(t)),
            Some(_) => return Err(bad("`max_time` must be a positive number of seconds")),
        };
        if stream && max_time.is_some() {
            return Err(bad("`max_time` is not supported when streaming"));
        }
        let (parameters, n) = self.to_tgi(limits)?;
        if stream && n > 1 {
            return Err(bad("`num_return_sequences` > 1 is not supported when streaming"));
        }
        let request = GenerateRequest { inputs, parameters: Some(parameters) };
        let (mut spec, options) = tgi::to_spec(request, stream, limits)?;
        if let Prompt::Text { add_special_tokens: add, .. } = &mut spec.prompt {
            *add = add_special_tokens;
        }
        let deterministic = max_time.is_none()
            && (spec.seed.is_some() || !spec.sampling.samples())
            && options.best_of == 1;
        Ok(TextRequest { ask: Ask { spec, n, max_time }, options, deterministic })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validation::tests::limits;

    fn request(parameters: serde_json::Value) -> Result<TextRequest, HfError> {
        let p: TextGenerationParameters = serde_json::from_value(parameters).unwrap();
        p.text_request("Hi".into(), true, false, &limits())
    }

    #[test]
    fn temperature_zero_is_greedy_and_full_text_is_the_default() {
        let r = request(json!({"temperature": 0.0, "top_k": 5})).unwrap();
        assert!(!r.ask.spec.sampling.samples() && r.deterministic);
        assert!(r.options.return_full_text);
        let r = request(json!({"return_full_text": false, "temperature": 0.5})).unwrap();
        assert!(!r.options.return_full_text && r.ask.spec.sampling.samples() && !r.deterministic);
        let r = request(json!({"do_sample": true, "seed": 3})).unwrap();
        assert!(r.deterministic, "seeded sampling repeats");
        let r = request(json!({"max_time": 1.5})).unwrap();
        assert!(!r.deterministic && r.ask.max_time.is_some());
    }

    #[test]
    fn the_api_bounds_are_checked() {
        let cases = [
            (json!({"temperature": 101.0}), "`temperature` must be >= 0.0 and <= 100.0"),
            (
                json!({"repetition_penalty": -1.0}),
                "`repetition_penalty` must be >= 0.0 and <= 100.0",
            ),
            (
                json!({"num_return_sequences": 0}),
                "`num_return_sequences` must be > 0 and <= 4. Given: 0",
            ),
            (
                json!({"num_return_sequences": 5}),
                "`num_return_sequences` must be > 0 and <= 4. Given: 5",
            ),
            (json!({"max_time": -1.0}), "`max_time` must be a positive number of seconds"),
            (json!({"top_p": 1.5}), "Input validation error: `top_p` must be > 0.0 and < 1.0"),
        ];
        for (parameters, message) in cases {
            let err = request(parameters.clone()).unwrap_err();
            assert_eq!(err.message, message, "{parameters}");
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        }
    }
}
