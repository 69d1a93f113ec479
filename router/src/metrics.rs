//! Prometheus metrics: TGI's set under a `rill_` prefix, plus what TGI lacks (time
//! to first token, inter-token latency, KV blocks used/total, preemptions).
//!
//! Names live here as constants so the engine, the request path and the tests agree.
//! Histograms get buckets chosen for LLM serving (milliseconds to minutes; token
//! counts by powers of two) so they render as real Prometheus histograms.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUEST_COUNT: &str = "rill_request_count";
pub const REQUEST_SUCCESS: &str = "rill_request_success";
/// Label `err`: validation, overloaded, generation, loading, ...
pub const REQUEST_FAILURE: &str = "rill_request_failure";
pub const REQUEST_DURATION: &str = "rill_request_duration";
pub const REQUEST_VALIDATION_DURATION: &str = "rill_request_validation_duration";
pub const REQUEST_QUEUE_DURATION: &str = "rill_request_queue_duration";
pub const REQUEST_INFERENCE_DURATION: &str = "rill_request_inference_duration";
pub const REQUEST_MEAN_TIME_PER_TOKEN_DURATION: &str = "rill_request_mean_time_per_token_duration";
pub const REQUEST_TIME_TO_FIRST_TOKEN_DURATION: &str = "rill_request_time_to_first_token_duration";
pub const REQUEST_INTER_TOKEN_LATENCY_DURATION: &str = "rill_request_inter_token_latency_duration";
pub const REQUEST_INPUT_LENGTH: &str = "rill_request_input_length";
pub const REQUEST_GENERATED_TOKENS: &str = "rill_request_generated_tokens";
pub const REQUEST_MAX_NEW_TOKENS: &str = "rill_request_max_new_tokens";
/// Embedding (prefill-only) requests that succeeded; they are counted in the request
/// metrics above too (success, durations, input length), their steps as `prefill`.
pub const REQUEST_EMBEDDING_SUCCESS: &str = "rill_request_embedding_success";
pub const QUEUE_SIZE: &str = "rill_queue_size";
pub const BATCH_CURRENT_SIZE: &str = "rill_batch_current_size";
pub const BATCH_NEXT_SIZE: &str = "rill_batch_next_size";
pub const BATCH_NEXT_TOKENS: &str = "rill_batch_next_tokens";
/// Label `method`: prefill (the step ran any prefill chunk) or decode.
pub const BATCH_FORWARD_DURATION: &str = "rill_batch_forward_duration";
pub const BATCH_INFERENCE_COUNT: &str = "rill_batch_inference_count";
pub const BATCH_INFERENCE_FAILURE: &str = "rill_batch_inference_failure";
pub const KV_BLOCKS_USED: &str = "rill_kv_blocks_used";
pub const KV_BLOCKS_TOTAL: &str = "rill_kv_blocks_total";
/// `rill_kv_blocks_used / rill_kv_blocks_total` (0–1), what load-aware routers scrape
/// (vLLM's `kv_cache_usage_perc`).
pub const KV_CACHE_USAGE: &str = "rill_kv_cache_usage";
/// Always 1; the labels `block_size` (tokens per KV block) and `num_blocks` describe
/// the cache, for routers that read them (the inference extension's `--cache-info-metric`).
pub const CACHE_CONFIG_INFO: &str = "rill_cache_config_info";
pub const PREEMPTIONS: &str = "rill_preemptions";
/// Times the engine, going idle, found the block manager inconsistent or a block still
/// held with nothing running (a leak); each is logged with what was wrong. Always 0.
pub const KV_CACHE_INVARIANT_VIOLATIONS: &str = "rill_kv_cache_invariant_violations";
/// Blocks that hold no request but keep a prefix's K/V for later ones (evictable).
pub const KV_BLOCKS_CACHED: &str = "rill_kv_blocks_cached";
/// Prefix caching, in tokens: looked up (each admission of a sequence that may use the
/// cache) and found cached; and cached blocks evicted to make room.
pub const PREFIX_CACHE_QUERIES: &str = "rill_prefix_cache_queries";
pub const PREFIX_CACHE_HITS: &str = "rill_prefix_cache_hits";
pub const PREFIX_CACHE_EVICTIONS: &str = "rill_prefix_cache_evictions";
/// The Inference API's response cache: lookups answered from it, lookups that were not,
/// and what it holds.
pub const RESPONSE_CACHE_HITS: &str = "rill_response_cache_hits";
pub const RESPONSE_CACHE_MISSES: &str = "rill_response_cache_misses";
pub const RESPONSE_CACHE_ENTRIES: &str = "rill_response_cache_entries";
pub const RESPONSE_CACHE_BYTES: &str = "rill_response_cache_bytes";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every series Rill exports, its kind and its HELP text (registered by [`install`],
/// so `/metrics` describes each; the README's metrics table says the same).
pub const SERIES: &[(&str, Kind, &str)] = &[
    (
        REQUEST_COUNT,
        Kind::Counter,
        "Generation and embedding requests received, on every route family",
    ),
    (REQUEST_SUCCESS, Kind::Counter, "Requests that finished successfully"),
    (REQUEST_FAILURE, Kind::Counter, "Requests that failed, by error type (label err)"),
    (REQUEST_DURATION, Kind::Histogram, "Seconds from a request's arrival to its last token"),
    (
        REQUEST_VALIDATION_DURATION,
        Kind::Histogram,
        "Seconds spent parsing, validating and tokenizing a request",
    ),
    (
        REQUEST_QUEUE_DURATION,
        Kind::Histogram,
        "Seconds from submission to the first engine step that runs the request",
    ),
    (REQUEST_INFERENCE_DURATION, Kind::Histogram, "Seconds from submission to the last token"),
    (
        REQUEST_MEAN_TIME_PER_TOKEN_DURATION,
        Kind::Histogram,
        "Inference seconds per generated token, per request",
    ),
    (
        REQUEST_TIME_TO_FIRST_TOKEN_DURATION,
        Kind::Histogram,
        "Seconds from a request's arrival to its first token",
    ),
    (
        REQUEST_INTER_TOKEN_LATENCY_DURATION,
        Kind::Histogram,
        "Seconds between consecutive tokens of a request",
    ),
    (REQUEST_INPUT_LENGTH, Kind::Histogram, "Prompt tokens per request"),
    (REQUEST_GENERATED_TOKENS, Kind::Histogram, "Tokens generated per finished request"),
    (REQUEST_MAX_NEW_TOKENS, Kind::Histogram, "max_new_tokens asked for per request"),
    (REQUEST_EMBEDDING_SUCCESS, Kind::Counter, "Embedding (prefill-only) requests answered"),
    (QUEUE_SIZE, Kind::Gauge, "Requests waiting for admission"),
    (BATCH_CURRENT_SIZE, Kind::Gauge, "Requests admitted and running"),
    (BATCH_NEXT_SIZE, Kind::Histogram, "Sequences per engine step"),
    (BATCH_NEXT_TOKENS, Kind::Histogram, "Tokens per engine step"),
    (
        BATCH_FORWARD_DURATION,
        Kind::Histogram,
        "Seconds per engine step, by method (prefill if it ran any prefill chunk, else decode)",
    ),
    (BATCH_INFERENCE_COUNT, Kind::Counter, "Engine steps, by method"),
    (BATCH_INFERENCE_FAILURE, Kind::Counter, "Engine steps that failed, by method"),
    (KV_BLOCKS_USED, Kind::Gauge, "KV-cache blocks held by requests"),
    (KV_BLOCKS_TOTAL, Kind::Gauge, "KV-cache blocks in all"),
    (KV_CACHE_USAGE, Kind::Gauge, "Fraction of the KV cache held by requests (0-1)"),
    (
        CACHE_CONFIG_INFO,
        Kind::Gauge,
        "Always 1; labels block_size (tokens per KV block) and num_blocks describe the KV cache",
    ),
    (
        KV_BLOCKS_CACHED,
        Kind::Gauge,
        "KV-cache blocks no request holds that keep a prefix for later requests (evictable)",
    ),
    (PREEMPTIONS, Kind::Counter, "Sequences preempted for KV memory and recomputed"),
    (
        KV_CACHE_INVARIANT_VIOLATIONS,
        Kind::Counter,
        "Idle moments at which the KV block manager was inconsistent or still held blocks (a bug)",
    ),
    (PREFIX_CACHE_QUERIES, Kind::Counter, "Prompt tokens looked up in the prefix cache"),
    (PREFIX_CACHE_HITS, Kind::Counter, "Prompt tokens found in the prefix cache"),
    (PREFIX_CACHE_EVICTIONS, Kind::Counter, "Cached KV blocks evicted to make room"),
    (RESPONSE_CACHE_HITS, Kind::Counter, "Inference API requests answered from the response cache"),
    (
        RESPONSE_CACHE_MISSES,
        Kind::Counter,
        "Cacheable Inference API requests not found in the response cache",
    ),
    (RESPONSE_CACHE_ENTRIES, Kind::Gauge, "Answers held by the response cache"),
    (RESPONSE_CACHE_BYTES, Kind::Gauge, "Bytes held by the response cache"),
];

/// Register every series' HELP text with the installed recorder.
fn describe() {
    for &(name, kind, help) in SERIES {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

fn powers_of_two(max: f64) -> Vec<f64> {
    std::iter::successors(Some(1.0), |x| Some(x * 2.0)).take_while(|x| *x <= max).collect()
}

/// What `/metrics` renders: Rill's series and the process's own (`process_*`: resident
/// and virtual memory, CPU seconds, open files, threads, start time), read at each scrape.
#[derive(Clone, Debug)]
pub struct Exporter {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

impl Exporter {
    pub fn render(&self) -> String {
        self.process.collect();
        self.handle.render()
    }

    /// Histograms are summarised over a window; upkeep keeps that window moving.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// Install the process-wide recorder.
pub fn install() -> Result<Exporter, BuildError> {
    let tokens = powers_of_two(262_144.0);
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_duration".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Full(REQUEST_INPUT_LENGTH.into()), &tokens)?
        .set_buckets_for_metric(Matcher::Full(REQUEST_GENERATED_TOKENS.into()), &tokens)?
        .set_buckets_for_metric(Matcher::Full(REQUEST_MAX_NEW_TOKENS.into()), &tokens)?
        .set_buckets_for_metric(Matcher::Full(BATCH_NEXT_SIZE.into()), &powers_of_two(4096.0))?
        .set_buckets_for_metric(Matcher::Full(BATCH_NEXT_TOKENS.into()), &tokens)?
        .install_recorder()?;
    describe();
    let process = metrics_process::Collector::default();
    process.describe();
    Ok(Exporter { handle, process })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's metrics table names every series, and none twice here.
    #[test]
    fn every_series_is_documented_once() {
        let readme = include_str!("../../README.md");
        let mut seen = std::collections::HashSet::new();
        for &(name, _, help) in SERIES {
            assert!(seen.insert(name), "{name} listed twice");
            assert!(!help.is_empty());
            assert!(readme.contains(&format!("`{name}")), "README does not document {name}");
        }
    }
}
