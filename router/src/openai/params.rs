//! OpenAI's parameters: its bounds (each refusal names its `param`) and defaults, and
//! the mapping onto the core's [`GenerationSpec`].
//!
//! Differences from TGI's route that clients rely on: no `temperature` samples at 1.0
//! and `temperature: 0` is greedy; `top_p` may be 1; `presence_penalty` and
//! `frequency_penalty` are OpenAI's (subtracted once per token seen / per occurrence
//! in the output); stop strings are not part of the text.

use rill_proto::SamplingParams;

use super::OpenAiError;
use super::types::SamplingFields;
use crate::validation::{GenerationSpec, Limits, Prompt, StopInclusion};

/// Most alternatives per token OpenAI allows on chat (`top_logprobs`).
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Most alternatives per token of the legacy completions `logprobs`.
pub const MAX_COMPLETION_LOGPROBS: u32 = 5;

/// A request's sampling in the core's terms, and how many choices it wants.
#[derive(Debug)]
pub struct Sampling {
    pub spec: GenerationSpec,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
}

fn in_range(param: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<(), OpenAiError> {
    match v {
        Some(v) if !(lo..=hi).contains(&v) => Err(OpenAiError::invalid(
            param,
            format!("`{param}` must be between {lo} and {hi}. Given: {v}"),
        )),
        _ => Ok(()),
    }
}

/// Check the shared fields and build the spec for `prompt`.
pub fn sampling(
    f: SamplingFields,
    prompt: Prompt,
    max_tokens: Option<u32>,
    limits: &Limits,
) -> Result<Sampling, OpenAiError> {
    in_range("temperature", f.temperature, 0.0, 2.0)?;
    in_range("presence_penalty", f.presence_penalty, -2.0, 2.0)?;
    in_range("frequency_penalty", f.frequency_penalty, -2.0, 2.0)?;
    if let Some(p) = f.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(OpenAiError::invalid(
            "top_p",
            format!("`top_p` must be in (0, 1]. Given: {p}"),
        ));
    }
    if let Some(r) = f.repetition_penalty
        && !(r > 0.0 && r.is_finite())
    {
        return Err(OpenAiError::invalid(
            "repetition_penalty",
            format!("`repetition_penalty` must be strictly positive. Given: {r}"),
        ));
    }
    if let Some(k) = f.top_k
        && k < -1
    {
        return Err(OpenAiError::invalid(
            "top_k",
            format!("`top_k` must be -1 (off), 0 (off) or positive. Given: {k}"),
        ));
    }
    let n = f.n.unwrap_or(1) as usize;
    if n == 0 || n > limits.max_n {
        return Err(OpenAiError::invalid(
            "n",
            format!("`n` must be between 1 and {} (--max-n). Given: {n}", limits.max_n),
        ));
    }
    if max_tokens == Some(0) {
        return Err(OpenAiError::invalid("max_tokens", "`max_tokens` must be at least 1"));
    }
    let stop = f.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > limits.max_stop_sequences {
        return Err(OpenAiError::invalid(
            "stop",
            format!(
                "`stop` supports up to {} sequences. Given: {}",
                limits.max_stop_sequences,
                stop.len()
            ),
        ));
    }
    let mut logit_bias = Vec::new();
    for (key, &bias) in f.logit_bias.iter().flatten() {
        let token = key.trim().parse::<u32>().ok().filter(|&t| (t as usize) < limits.vocab_size);
        let Some(token) = token else {
            return Err(OpenAiError::invalid(
                "logit_bias",
                format!(
                    "`logit_bias` keys must be token ids below {}. Given: {key:?}",
                    limits.vocab_size
                ),
            ));
        };
        if !(-100.0..=100.0).contains(&bias) {
            return Err(OpenAiError::invalid(
                "logit_bias",
                format!("`logit_bias` values must be between -100 and 100. Given: {bias}"),
            ));
        }
        logit_bias.push((token, bias));
    }
    let temperature = f.temperature.unwrap_or(1.0);
    let greedy = temperature == 0.0;
    let sampling = SamplingParams {
        do_sample: !greedy,
        temperature: if greedy { 1.0 } else { temperature },
        top_k: if greedy { 0 } else { f.top_k.unwrap_or(0).max(0) as u32 },
        top_p: if greedy { 1.0 } else { f.top_p.unwrap_or(1.0) },
        repetition_penalty: f.repetition_penalty.unwrap_or(1.0),
        presence_penalty: f.presence_penalty.unwrap_or(0.0),
        count_penalty: f.frequency_penalty.unwrap_or(0.0),
        logit_bias,
        ..SamplingParams::default()
    };
    let spec = GenerationSpec {
        max_new_tokens: max_tokens,
        stop,
        stop_inclusion: StopInclusion::Exclude,
        ignore_eos: f.ignore_eos.unwrap_or(false),
        // OpenAI's seeds are signed 64-bit; keep their bits.
        seed: f.seed.map(|s| s as u64),
        sampling,
        cache_salt: f.cache_salt,
        ..GenerationSpec::new(prompt)
    };
    let stream = f.stream.unwrap_or(false);
    let include_usage = f.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
    Ok(Sampling { spec, n, stream, include_usage })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validation::tests::limits;

    fn parse(v: serde_json::Value) -> Result<Sampling, OpenAiError> {
        let f: SamplingFields = serde_json::from_value(v).unwrap();
        sampling(f, Prompt::Tokens(vec![1]), None, &limits())
    }

    #[test]
    fn each_bound_names_its_param() {
        let cases = [
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"temperature": -0.1}), "temperature"),
            (json!({"top_p": 0.0}), "top_p"),
            (json!({"top_p": 1.5}), "top_p"),
            (json!({"presence_penalty": 3}), "presence_penalty"),
            (json!({"frequency_penalty": -2.5}), "frequency_penalty"),
            (json!({"n": 0}), "n"),
            (json!({"n": 5}), "n"),
            (json!({"stop": ["a", "b", "c"]}), "stop"),
            (json!({"logit_bias": {"x": 1}}), "logit_bias"),
            (json!({"logit_bias": {"256": 1}}), "logit_bias"),
            (json!({"logit_bias": {"5": 101}}), "logit_bias"),
            (json!({"repetition_penalty": 0}), "repetition_penalty"),
            (json!({"top_k": -2}), "top_k"),
        ];
        for (body, param) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.detail.param.as_deref(), Some(param), "{body}: {}", e.detail.message);
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::validation::tests::Kind::{self, *};
        use crate::validation::tests::{any_json, params_object};

        /// The sampling fields of OpenAI's chat and completions requests.
        const FIELDS: &[(&str, Kind)] = &[
            ("temperature", Float),
            ("top_p", Float),
            ("n", Int),
            ("stop", Strings),
            ("seed", Int),
            ("presence_penalty", Float),
            ("frequency_penalty", Float),
            ("logit_bias", Any),
            ("stream", Bool),
            ("stream_options", Any),
            ("top_k", Int),
            ("repetition_penalty", Float),
            ("ignore_eos", Bool),
            ("user", Any),
        ];

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

            /// Any fields: never a panic; a refusal is a 400 naming a parameter, and what
            /// passes is in every range (finite), within the limits.
            #[test]
            fn any_fields_are_refused_by_name_or_valid(
                fields in prop_oneof![9 => params_object(FIELDS), 1 => any_json()],
                max_tokens in proptest::option::of(0u32..50),
            ) {
                let Ok(f) = serde_json::from_value::<SamplingFields>(fields) else { return Ok(()) };
                match sampling(f, Prompt::Tokens(vec![1]), max_tokens, &limits()) {
                    Err(e) => {
                        prop_assert_eq!(e.status, 400);
                        prop_assert!(e.detail.param.is_some(), "{}", e.detail.message);
                    }
                    Ok(ok) => {
                        let s = &ok.spec.sampling;
                        prop_assert!((1..=limits().max_n).contains(&ok.n));
                        prop_assert!(ok.spec.stop.len() <= limits().max_stop_sequences);
                        prop_assert!(s.temperature.is_finite() && s.temperature > 0.0, "{s:?}");
                        prop_assert!(s.top_p > 0.0 && s.top_p <= 1.0, "{s:?}");
                        prop_assert!(s.repetition_penalty.is_finite() && s.repetition_penalty > 0.0);
                        prop_assert!((-2.0..=2.0).contains(&s.presence_penalty));
                        prop_assert!((-2.0..=2.0).contains(&s.count_penalty));
                        prop_assert!(s.logit_bias.iter().all(|&(t, b)| (t as usize) < limits().vocab_size
                            && (-100.0..=100.0).contains(&b)));
                    }
                }
            }
        }
    }

    #[test]
    fn temperature_zero_is_greedy_and_absent_samples() {
        let greedy = parse(json!({"temperature": 0, "top_p": 0.5, "top_k": 3})).unwrap();
        assert!(greedy.spec.sampling.is_greedy(), "{:?}", greedy.spec.sampling);
        let default = parse(json!({})).unwrap();
        assert!(default.spec.sampling.samples());
        let s = parse(json!({"stop": "x", "seed": -1, "frequency_penalty": 0.5,
            "logit_bias": {"5": -100}, "stream": true, "stream_options": {"include_usage": true}}))
        .unwrap();
        assert_eq!(s.spec.stop, ["x"]);
        assert_eq!(s.spec.stop_inclusion, StopInclusion::Exclude);
        assert_eq!(s.spec.seed, Some(u64::MAX));
        assert_eq!(s.spec.sampling.count_penalty, 0.5);
        assert_eq!(s.spec.sampling.logit_bias, [(5, -100.0)]);
        assert!(s.stream && s.include_usage);
    }
}
