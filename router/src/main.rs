//! `rill`: serve a Hugging Face model directory over TGI's and OpenAI's HTTP APIs.
//!
//! The port opens at once; the model loads in the background (`/health` says 503
//! until it is ready). Defaults that depend on the model (`--max-total-tokens`,
//! `--max-input-tokens`) are derived from it and the KV cache, printed at start-up,
//! and inconsistent settings are refused with a message saying what to change.
//!
//! `--device auto` runs on the GPU when [`Cuda::new`] succeeds and on the CPU otherwise
//! (one log line says why); `--device cuda` without a usable GPU exits with the reason.
//! On the GPU the KV cache takes what free memory allows after the weights and a
//! warm-up step (`--cuda-memory-fraction`), unless its size is given explicitly.

mod args;
mod model_id;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::serve::ListenerExt;
use clap::Parser;
use rill_backend::grammar::GrammarCompiler;
use rill_backend::{
    AnyRunner, Cuda, DType, DeviceChoice, KvCacheSize, LoadFormat, ModelDir, RunnerOptions,
};
use rill_proto::BLOCK_SIZE;
use rill_proto::api::Info;
use rill_router::auth::ApiKeys;
use rill_router::chat_template::ChatTemplates;
use rill_router::embeddings::PoolingConfig;
use rill_router::engine;
use rill_router::infer::{Infer, TokenBytes};
use rill_router::kv_events::{KvEventBatch, Publisher};
use rill_router::openai::tools::ToolSyntax;
use rill_router::response_cache::ResponseCache;
use rill_router::scheduler::SchedulerConfig;
use rill_router::server::{self, AppState, ServerConfig};
use rill_router::validation::Limits;

use crate::args::{Args, DeviceArg, LoadFormatArg};

/// The demo model the repository ships (`models/demo`, trained by
/// `scripts/make_demo_model.py`), served when no `--model-id` is given.
fn bundled_model() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/demo");
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Sequences one step may hold (`--max-batch-size`, else `--max-concurrent-requests`).
fn max_batch_size(args: &Args) -> usize {
    args.max_batch_size.unwrap_or(args.max_concurrent_requests).max(1)
}

/// The backend's load options the flags give.
fn runner_options(args: &Args) -> Result<RunnerOptions> {
    let dtype = args.dtype.map(DType::from);
    let load_format = match args.load_format {
        LoadFormatArg::Safetensors => LoadFormat::Safetensors(dtype),
        LoadFormatArg::Dummy => LoadFormat::Dummy(dtype.unwrap_or(DType::Bf16)),
    };
    if args.max_batch_prefill_tokens == Some(0) {
        bail!("--max-batch-prefill-tokens must be positive");
    }
    let fraction = args.cuda_memory_fraction;
    if !(fraction > 0.0 && fraction <= 1.0) {
        bail!("--cuda-memory-fraction ({fraction}) must be in (0, 1]");
    }
    let kv_cache = match (args.max_batch_total_tokens, args.kv_cache_memory_mib) {
        (Some(tokens), _) => KvCacheSize::Tokens(tokens),
        (None, Some(mib)) => KvCacheSize::Bytes(mib << 20),
        (None, None) => KvCacheSize::FreeMemory(fraction),
    };
    Ok(RunnerOptions {
        load_format,
        kv_cache,
        precision: args.precision.into(),
        max_step_tokens: args.max_batch_prefill_tokens,
        replay_batch_sizes: args.cuda_graphs.up_to(max_batch_size(args)),
    })
}

fn device_choice(args: &Args) -> DeviceChoice {
    let cpu_threads = args.num_threads;
    match args.device {
        DeviceArg::Auto => DeviceChoice::Auto { cuda_ordinal: 0, cpu_threads },
        DeviceArg::Cpu => DeviceChoice::Cpu { threads: cpu_threads },
        DeviceArg::Cuda => DeviceChoice::Cuda { ordinal: 0 },
    }
}

/// Load the model and start the engine; runs on a blocking thread. Flags → options →
/// [`AnyRunner::load`] → the engine and the request front.
fn load(
    args: &Args,
    dir: &std::path::Path,
    kv_events: Option<tokio::sync::mpsc::UnboundedSender<KvEventBatch>>,
) -> Result<Infer> {
    let t = Instant::now();
    let model = ModelDir::open(dir)?;
    let opts = runner_options(args)?;
    let runner = AnyRunner::load(dir, &model.config, device_choice(args), &opts)?;
    start(args, kv_events, model, runner, t)
}

/// Check the limits against the loaded model and its KV cache, and start the engine.
fn start(
    args: &Args,
    kv_events: Option<tokio::sync::mpsc::UnboundedSender<KvEventBatch>>,
    model: ModelDir,
    runner: AnyRunner,
    t: Instant,
) -> Result<Infer> {
    let c = &model.config;
    let max_batch_prefill_tokens = runner.max_step_tokens();
    let capacity = runner.num_blocks() * BLOCK_SIZE;

    let max_total = args.max_total_tokens.unwrap_or(c.max_position_embeddings.min(capacity));
    let max_input = args.max_input_tokens.unwrap_or(max_total.saturating_sub(1));
    if max_input == 0 || max_input >= max_total {
        bail!(
            "--max-input-tokens ({max_input}) must be positive and less than --max-total-tokens ({max_total})"
        );
    }
    if max_total > capacity {
        bail!(
            "--max-total-tokens ({max_total}) exceeds the KV cache's {capacity} tokens: \
             raise --kv-cache-memory-mib or lower --max-total-tokens"
        );
    }
    if max_total > c.max_position_embeddings {
        bail!(
            "--max-total-tokens ({max_total}) exceeds the model's max_position_embeddings ({})",
            c.max_position_embeddings
        );
    }
    let max_batch_size = max_batch_size(args);
    tracing::info!(
        model = %model.path.display(),
        architecture = c.architecture.hf_name(),
        parameters = c.num_parameters(),
        device = runner.device_name(),
        device_detail = runner.device_detail(),
        kv_blocks = runner.num_blocks(),
        kv_tokens = capacity,
        max_input_tokens = max_input,
        max_total_tokens = max_total,
        max_batch_prefill_tokens,
        max_batch_size,
        load_ms = t.elapsed().as_millis() as u64,
        "model loaded"
    );
    let config = SchedulerConfig {
        max_batch_tokens: max_batch_prefill_tokens,
        max_batch_size,
        prefix_caching: args.prefix_caching,
    };
    let engine =
        engine::spawn_with_kv_events(runner, config, model.eos_token_ids.clone(), kv_events);
    let limits = Limits {
        max_input_tokens: max_input,
        max_total_tokens: max_total,
        max_stop_sequences: args.max_stop_sequences,
        max_top_n_tokens: args.max_top_n_tokens,
        max_best_of: args.max_best_of,
        max_n: args.max_n.max(1),
        vocab_size: c.vocab_size,
    };
    let tokenizer = Arc::new(model.tokenizer);
    let json = model.tokenizer_json;
    let token_bytes = match rill_backend::grammar::token_bytes(&json) {
        Ok(bytes) => TokenBytes::new(bytes),
        Err(e) => {
            tracing::warn!("logprobs report decoded text as token bytes: {e}");
            TokenBytes::default()
        }
    };
    let grammar = if args.disable_grammar_support {
        None
    } else {
        let compiler = GrammarCompiler::new(
            &json,
            Arc::clone(&tokenizer),
            &model.eos_token_ids,
            model.config.vocab_size,
        )
        .context("preparing grammar support (--disable-grammar-support turns it off)")?;
        Some(Arc::new(compiler))
    };
    Ok(Infer::new(engine, tokenizer, limits, grammar, token_bytes, args.max_concurrent_requests))
}

/// A rough load-time estimate for `estimated_time` while loading: memory-mapped
/// weights are read (and the fused matrices copied) at ~1 GB/s here; dummy weights
/// are generated at ~0.5 GB/s.
fn estimate_load_secs(dir: &std::path::Path, format: LoadFormatArg) -> f64 {
    let bytes: u64 = match format {
        LoadFormatArg::Safetensors => std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0),
        LoadFormatArg::Dummy => rill_backend::ModelConfig::from_file(&dir.join("config.json"))
            .map(|c| 2 * 2 * c.num_parameters() as u64)
            .unwrap_or(0),
    };
    1.0 + bytes as f64 / 1e9
}

/// How long a server whose engine died keeps answering (errors, readiness 503) before
/// it exits, so that in-flight clients hear why.
const ENGINE_DEATH_GRACE: Duration = Duration::from_secs(2);

/// Exit non-zero once the engine thread has died, for the orchestrator to restart us.
async fn exit_when_the_engine_dies(state: Arc<AppState>) {
    let Some(infer) = state.ready.get() else { return };
    let cause = infer.engine_died().await;
    tracing::error!(
        cause,
        "the engine is dead: exiting with status 1 in {ENGINE_DEATH_GRACE:?} so that the \
         server is restarted"
    );
    tokio::time::sleep(ENGINE_DEATH_GRACE).await;
    std::process::exit(1);
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: unready, refusing new requests, finishing those in flight");
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_logs(args.json_output);
    if args.device == DeviceArg::Cuda {
        // Before the port opens: the cheap checks (driver, GPU, cuBLAS); the kernels are
        // compiled while loading.
        Cuda::probe(0).context("--device cuda")?;
    }
    let dir = match &args.model_id {
        None => bundled_model(),
        Some(id) => model_id::resolve(id)?,
    };
    let model_name = args.model_id.clone().unwrap_or_else(|| dir.display().to_string());
    let served_model_names = model_id::served_names(
        &args.served_model_names,
        args.model_id.is_some(),
        &model_name,
        &dir,
    );
    let chat_templates = ChatTemplates::from_model_dir(&dir, args.chat_template.as_deref())
        .context("reading the chat template")?
        .map(Arc::new);
    let tool_call_syntax = args
        .tool_call_syntax
        .or_else(|| chat_templates.as_ref().and_then(|t| ToolSyntax::detect(t.source(true))));
    match (&chat_templates, tool_call_syntax) {
        (None, _) => {
            tracing::info!("the model has no chat template: /v1/chat/completions answers 400")
        }
        (Some(_), None) => tracing::info!(
            "no tool-call syntax found in the chat template: tool_choice \"auto\" returns text \
             (--tool-call-syntax names one)"
        ),
        (Some(_), Some(s)) => tracing::info!(syntax = ?s, "tool calls"),
    }

    let pooling = PoolingConfig::from_model_dir(&dir)
        .map_err(anyhow::Error::msg)
        .context("reading the embedding pooling (sentence-transformers modules.json)")?;

    let addr = format!("{}:{}", args.hostname, args.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!("listening on {}", listener.local_addr()?);

    let metrics = rill_router::metrics::install().context("cannot install the metrics recorder")?;
    {
        // Histograms are summarised over a window; upkeep keeps that window moving.
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                metrics.run_upkeep();
            }
        });
    }
    let state = Arc::new(AppState {
        metrics: Some(metrics),
        info: Info {
            model_id: model_name,
            model_sha: None,
            model_pipeline_tag: Some("text-generation".into()),
            max_concurrent_requests: args.max_concurrent_requests,
            max_best_of: args.max_best_of,
            max_stop_sequences: args.max_stop_sequences,
            max_input_tokens: 0,
            max_total_tokens: 0,
            validation_workers: args.validation_workers,
            max_client_batch_size: 1,
            router: "rill".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            sha: None,
            docker_label: None,
        },
        served_model_names,
        chat_templates,
        tool_call_syntax,
        ready: OnceLock::new(),
        loaded: tokio::sync::Notify::new(),
        wait_for_model_timeout: Duration::from_secs(args.wait_for_model_timeout),
        response_cache: ResponseCache::new(
            args.response_cache_entries,
            args.response_cache_mib << 20,
        ),
        pooling,
        started: Instant::now(),
        estimated_load_secs: estimate_load_secs(&dir, args.load_format),
        validation_workers: Arc::new(tokio::sync::Semaphore::new(args.validation_workers.max(1))),
        draining: Default::default(),
    });
    if args.max_waiting_tokens.is_some() || args.waiting_served_ratio.is_some() {
        tracing::warn!(
            "--max-waiting-tokens and --waiting-served-ratio have no effect: Rill's chunked-prefill \
             scheduler adds waiting requests to every step"
        );
    }
    let mut key_specs = args.api_keys.clone();
    if let Some(path) = &args.api_key_file {
        key_specs.extend(ApiKeys::read_file(path).map_err(anyhow::Error::msg)?);
    }
    let api_keys = match key_specs.is_empty() {
        true => None,
        false => Some(Arc::new(
            ApiKeys::parse(&key_specs).map_err(anyhow::Error::msg).context("--api-key")?,
        )),
    };
    let server_config = ServerConfig {
        payload_limit: args.payload_limit,
        api_keys,
        cors_allow_origin: args.cors_allow_origin.clone(),
    };
    let app = server::router(Arc::clone(&state), &server_config);

    let timeout = Duration::from_secs(args.graceful_termination_timeout);
    // Bound before the model loads, so that a bad endpoint fails at once.
    let kv_events = match &args.kv_events_endpoint {
        None => None,
        Some(endpoint) => {
            let publisher = Publisher::bind(endpoint, args.kv_events_topic.clone())
                .await
                .map_err(anyhow::Error::msg)?;
            tracing::info!(endpoint, topic = args.kv_events_topic, "publishing KV events");
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(publisher.run(rx));
            Some(tx)
        }
    };
    {
        let state = Arc::clone(&state);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || match load(&args, &dir, kv_events) {
            Ok(infer) => {
                state.set_ready(infer);
                runtime.spawn(exit_when_the_engine_dies(state));
            }
            Err(e) => {
                tracing::error!("cannot load the model: {e:#}");
                std::process::exit(1);
            }
        });
    }

    // SIGINT/SIGTERM: stop accepting, let in-flight requests finish, but no longer
    // than the termination timeout.
    let (signalled, mut on_signal) = tokio::sync::watch::channel(false);
    // Tokens are small writes that must leave at once: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY: {e}");
        }
    });
    let state = Arc::clone(&state);
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        // Unready and refusing new requests (503) at once; still accepting connections,
        // so that probes and late clients hear it, until the in-flight requests end.
        state.drain();
        let _ = signalled.send(true);
        while state.ready.get().is_some_and(|infer| infer.in_flight() > 0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let deadline = async move {
        let _ = on_signal.wait_for(|s| *s).await;
        tokio::time::sleep(timeout).await;
    };
    tokio::select! {
        served = serve => served?,
        _ = deadline => tracing::warn!("graceful termination timeout: exiting with requests in flight"),
    }
    tracing::info!("stopped");
    Ok(())
}
