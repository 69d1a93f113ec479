//! The engine loop: one dedicated thread that owns the [`Scheduler`] and the
//! backend's runner (`AnyRunner`), and talks to the async HTTP side over channels.
//!
//! Its step is the table of contents of the system (nano-vllm's shape):
//! `intake()` → `scheduler.schedule()` → `runner.step(&batch)` → `postprocess()`.
//! Requests arrive as [`Submission`]s — a generation, or an embedding (a prompt
//! prefilled for its hidden states: [`EngineHandle::embed`]); each gets an unbounded
//! channel of [`EngineEvent`]s back. A receiver that is dropped (client gone, stop string
//! matched) is noticed before the next step and its sequence removed, so its blocks
//! come back within one step; queued requests whose receiver is gone are dropped
//! before they cost anything.
//!
//! A panic on the engine thread (a bug, or a device fault that panics) is caught: every
//! admitted and queued request gets an error, [`EngineHandle::failure`] says why, and
//! [`EngineHandle::died`] wakes whoever supervises the process (the server goes
//! unready and exits non-zero so that the orchestrator restarts it).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rill_backend::AnyRunner;
use rill_proto::{SamplingParams, SeqId, TokenId};
use tokio::sync::mpsc as async_mpsc;

use crate::kv_events::{self, KvEventBatch};
use crate::metrics as m;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::sequence::{FinishReason, Sequence, StopCriteria};

/// What one request asks the engine for.
#[derive(Clone, Debug)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    /// Generate exactly `max_new_tokens` (benchmarks).
    pub ignore_eos: bool,
    /// Alternatives to report with each token.
    pub top_n_tokens: u32,
    /// Report the prompt tokens' logprobs (`decoder_input_details`).
    pub prompt_logprobs: bool,
    pub sampling: SamplingParams,
    /// Share prefix-cached blocks only with requests of the same salt (`cache_salt`).
    pub cache_salt: Option<String>,
}

/// What the engine says about a request, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    Token {
        token: TokenId,
        logprob: f32,
        /// The most likely alternatives (`top_n_tokens`), most likely first.
        top: Vec<(TokenId, f32)>,
        finish: Option<FinishReason>,
    },
    /// Just before the first token: the logprobs of prompt tokens 1.. (when asked), and
    /// how many prompt tokens the prefix cache supplied.
    Prefill { logprobs: Option<Vec<f32>>, cached_tokens: usize },
    /// An embedding request's answer, its only event: the final-norm hidden states of
    /// every prompt token, `[prompt_len, dim]` row-major.
    Hidden { states: Vec<f32>, dim: usize },
    /// The request failed in the engine; nothing follows.
    Error(EngineError),
}

/// Why the engine failed a request: each family answers the kinds differently (a
/// stopped engine is the server's condition, 503; a failed step is this request's, 424).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The engine thread has stopped (a panic, a fatal device error); nothing more runs
    /// and the process is on its way out.
    #[error("{0}")]
    Stopped(String),
    /// The step that ran this request failed, or its sampling did; other requests go on.
    #[error("generation failed: {0}")]
    Step(String),
    /// The engine could not take the request (the checks before it should have caught it).
    #[error("{0}")]
    Refused(String),
}

/// What a submission asks for.
#[derive(Debug)]
enum Work {
    Generate(GenerationRequest),
    /// Prefill this (non-empty) prompt and answer its hidden states.
    Embed(Vec<u32>),
}

struct Submission {
    id: SeqId,
    work: Work,
    events: async_mpsc::UnboundedSender<EngineEvent>,
    submitted: Instant,
}

/// Where a live request's events go, and (until its first step) when it arrived.
struct Reply {
    events: async_mpsc::UnboundedSender<EngineEvent>,
    queued_since: Option<Instant>,
}

/// The async side's handle on the engine thread. Dropping every handle stops it.
#[derive(Debug)]
pub struct EngineHandle {
    tx: mpsc::Sender<Submission>,
    next_id: AtomicU64,
    stats: Arc<EngineStats>,
}

/// What the engine thread last published about itself (also in the metrics gauges,
/// which are process-wide; these are this engine's).
#[derive(Debug, Default)]
struct EngineStats {
    kv_blocks_used: AtomicUsize,
    running: AtomicUsize,
    waiting: AtomicUsize,
    /// Why the engine thread died, once it has.
    failure: OnceLock<String>,
    died: tokio::sync::Notify,
}

impl EngineHandle {
    /// Queue a request; its events arrive on the returned receiver. Dropping the
    /// receiver cancels the request.
    pub fn submit(
        &self,
        request: GenerationRequest,
    ) -> (SeqId, async_mpsc::UnboundedReceiver<EngineEvent>) {
        self.send(Work::Generate(request))
    }

    /// Queue an embedding request: `prompt` (non-empty, token ids in the vocabulary) is
    /// prefilled like any prompt, and its one event is [`EngineEvent::Hidden`] (or an
    /// error). Dropping the receiver cancels it.
    pub fn embed(&self, prompt: Vec<u32>) -> (SeqId, async_mpsc::UnboundedReceiver<EngineEvent>) {
        self.send(Work::Embed(prompt))
    }

    /// KV blocks held by sequences, as of the engine's last step (or idle moment).
    pub fn kv_blocks_used(&self) -> usize {
        self.stats.kv_blocks_used.load(Ordering::Relaxed)
    }

    /// Sequences admitted and queued, as of the engine's last step (or idle moment).
    pub fn num_sequences(&self) -> usize {
        self.stats.running.load(Ordering::Relaxed) + self.stats.waiting.load(Ordering::Relaxed)
    }

    /// Why the engine thread died (it panicked), or `None` while it runs.
    pub fn failure(&self) -> Option<&str> {
        self.stats.failure.get().map(String::as_str)
    }

    /// Wait until the engine thread dies; why.
    pub async fn died(&self) -> String {
        loop {
            let died = self.stats.died.notified();
            tokio::pin!(died);
            died.as_mut().enable();
            if let Some(cause) = self.failure() {
                return cause.to_string();
            }
            died.await;
        }
    }

    fn send(&self, work: Work) -> (SeqId, async_mpsc::UnboundedReceiver<EngineEvent>) {
        let (events, rx) = async_mpsc::unbounded_channel();
        let id = SeqId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let submission = Submission { id, work, events, submitted: Instant::now() };
        if let Err(mpsc::SendError(s)) = self.tx.send(submission) {
            let stopped = EngineError::Stopped("the engine has stopped".into());
            let _ = s.events.send(EngineEvent::Error(stopped));
        }
        (id, rx)
    }
}

/// Start the engine thread.
pub fn spawn(
    runner: impl Into<AnyRunner>,
    config: SchedulerConfig,
    eos_token_ids: Vec<u32>,
) -> EngineHandle {
    spawn_with_kv_events(runner, config, eos_token_ids, None)
}

/// Start the engine thread; with `kv_events`, it sends the prefix cache's changes there
/// once per step that made any ([`crate::kv_events`]).
pub fn spawn_with_kv_events(
    runner: impl Into<AnyRunner>,
    config: SchedulerConfig,
    eos_token_ids: Vec<u32>,
    kv_events: Option<async_mpsc::UnboundedSender<KvEventBatch>>,
) -> EngineHandle {
    let runner = runner.into();
    let (tx, rx) = mpsc::channel();
    let stats = Arc::new(EngineStats::default());
    let published = Arc::clone(&stats);
    std::thread::Builder::new()
        .name("rill-engine".into())
        .spawn(move || {
            // Everything besides the tokens that decides what a block's K/V is.
            let model = format!("{:?} on {}", runner.config(), runner.device_name());
            let mut scheduler = Scheduler::for_model(config, runner.num_blocks(), &model);
            if kv_events.is_some() {
                scheduler.record_kv_events();
            }
            let replies = HashMap::new();
            let stats = Arc::clone(&published);
            let mut engine = EngineLoop {
                runner,
                scheduler,
                rx,
                replies,
                eos_token_ids,
                stats,
                steps: 0,
                panic_at_step: injected_panic_step(),
                kv_events,
            };
            // The panic itself is printed by the panic hook, with its location.
            if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| engine.run())) {
                let cause = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                tracing::error!(cause, "the engine thread panicked: failing every request");
                // Dead before anyone hears of it: a client told of the failure finds the
                // server unready.
                let message = format!("the engine failed: {cause}");
                let _ = published.failure.set(cause);
                engine.fail_all(&message);
                published.died.notify_waiters();
            }
        })
        // Only fails if the OS cannot create a thread at start-up.
        .expect("cannot start the engine thread");
    EngineHandle { tx, next_id: AtomicU64::new(0), stats }
}

/// Fault injection for the tests, in debug builds only:
/// `RILL_TEST_ENGINE_PANIC_AT_STEP=N` panics the engine thread at its `N`th step, as a
/// bug would.
fn injected_panic_step() -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var("RILL_TEST_ENGINE_PANIC_AT_STEP").ok()?.parse().ok()
}

struct EngineLoop {
    runner: AnyRunner,
    scheduler: Scheduler,
    rx: mpsc::Receiver<Submission>,
    replies: HashMap<SeqId, Reply>,
    eos_token_ids: Vec<u32>,
    stats: Arc<EngineStats>,
    /// Steps run so far, and the one the tests' fault injection panics at.
    steps: u64,
    panic_at_step: Option<u64>,
    /// Where the prefix cache's changes go (`--kv-events-endpoint`).
    kv_events: Option<async_mpsc::UnboundedSender<KvEventBatch>>,
}

impl EngineLoop {
    fn run(&mut self) {
        // Constant for the process: what a prefix-aware router needs to hash prompts
        // the way this cache does (vLLM's `cache_config_info`).
        metrics::gauge!(
            m::CACHE_CONFIG_INFO,
            "block_size" => rill_proto::BLOCK_SIZE.to_string(),
            "num_blocks" => self.scheduler.blocks().num_blocks().to_string(),
        )
        .set(1.0);
        metrics::counter!(m::KV_CACHE_INVARIANT_VIOLATIONS).increment(0);
        while self.intake() {
            let batch = self.scheduler.schedule();
            self.publish_stats();
            if batch.seqs.is_empty() {
                continue;
            }
            self.steps += 1;
            if self.panic_at_step == Some(self.steps) {
                panic!("injected by RILL_TEST_ENGINE_PANIC_AT_STEP at step {}", self.steps);
            }
            self.record_batch(&batch);
            let method = if batch.seqs.iter().any(|s| s.tokens.len() > 1 || !s.sample) {
                "prefill"
            } else {
                "decode"
            };
            metrics::counter!(m::BATCH_INFERENCE_COUNT, "method" => method).increment(1);
            let started = Instant::now();
            let result = self.runner.step(&batch);
            metrics::histogram!(m::BATCH_FORWARD_DURATION, "method" => method)
                .record(started.elapsed());
            match result {
                Ok(output) => self.postprocess(&output),
                Err(e) => {
                    metrics::counter!(m::BATCH_INFERENCE_FAILURE, "method" => method).increment(1);
                    tracing::error!(error = %e, "step failed; failing its requests");
                    let failed = self.scheduler.fail_step();
                    self.publish_stats();
                    for id in failed {
                        self.reply(id, EngineEvent::Error(EngineError::Step(e.to_string())));
                        self.replies.remove(&id);
                    }
                }
            }
        }
    }

    /// After a panic: an error to every admitted request and to every submission still
    /// queued in the channel (later ones find it closed and fail at once).
    fn fail_all(&mut self, message: &str) {
        let stopped = || EngineEvent::Error(EngineError::Stopped(message.to_string()));
        for (_, reply) in self.replies.drain() {
            let _ = reply.events.send(stopped());
        }
        while let Ok(s) = self.rx.try_recv() {
            let _ = s.events.send(stopped());
        }
    }

    /// Per-step histograms, and each request's queue time when it first runs.
    fn record_batch(&mut self, batch: &rill_proto::ForwardBatch) {
        metrics::histogram!(m::BATCH_NEXT_SIZE).record(batch.seqs.len() as f64);
        metrics::histogram!(m::BATCH_NEXT_TOKENS).record(batch.num_tokens() as f64);
        for s in &batch.seqs {
            if let Some(since) = self.replies.get_mut(&s.id).and_then(|r| r.queued_since.take()) {
                metrics::histogram!(m::REQUEST_QUEUE_DURATION).record(since.elapsed());
            }
        }
    }

    /// Take new requests (blocking while there is nothing to do) and drop the
    /// ones whose receiver is gone. False when the engine should stop.
    fn intake(&mut self) -> bool {
        if self.scheduler.is_idle() {
            self.check_idle();
            self.publish_stats();
            match self.rx.recv() {
                Ok(s) => self.admit(s),
                Err(_) => return false,
            }
        }
        while let Ok(s) = self.rx.try_recv() {
            self.admit(s);
        }
        let gone: Vec<SeqId> =
            self.replies.iter().filter(|(_, r)| r.events.is_closed()).map(|(id, _)| *id).collect();
        for id in gone {
            self.scheduler.remove(id);
            self.replies.remove(&id);
        }
        true
    }

    /// With nothing running or waiting, every block must be free or cached and the block
    /// manager consistent; a violation (a bug) is logged and counted, never fatal. One
    /// pass over the block table each time the engine goes idle.
    fn check_idle(&self) {
        let blocks = self.scheduler.blocks();
        let held = blocks.num_used();
        let fault = blocks.check_invariants().err().or_else(|| {
            (held > 0).then(|| format!("{held} KV blocks held with no request running"))
        });
        if let Some(fault) = fault {
            tracing::error!(%fault, "KV cache invariant violated");
            metrics::counter!(m::KV_CACHE_INVARIANT_VIOLATIONS).increment(1);
        }
    }

    fn admit(&mut self, s: Submission) {
        let seq = match s.work {
            Work::Generate(request) => {
                let stop = StopCriteria {
                    max_new_tokens: request.max_new_tokens,
                    eos_token_ids: self.eos_token_ids.clone(),
                    ignore_eos: request.ignore_eos,
                };
                let prompt = request.prompt.into_iter().map(TokenId).collect();
                let seq = Sequence::new(s.id, prompt, stop)
                    .with_top_n(request.top_n_tokens)
                    .with_sampling(request.sampling)
                    .with_cache_salt(request.cache_salt);
                if request.prompt_logprobs { seq.with_prompt_logprobs() } else { seq }
            }
            // `Sequence` requires a prompt; the async side validates, this guards.
            Work::Embed(prompt) if prompt.is_empty() => {
                let _ =
                    s.events.send(EngineEvent::Error(EngineError::Refused("empty prompt".into())));
                return;
            }
            Work::Embed(prompt) => {
                Sequence::embedding(s.id, prompt.into_iter().map(TokenId).collect())
            }
        };
        match self.scheduler.add(seq) {
            Ok(()) => {
                self.replies
                    .insert(s.id, Reply { events: s.events, queued_since: Some(s.submitted) });
            }
            Err(e) => {
                let _ = s.events.send(EngineEvent::Error(EngineError::Refused(e.to_string())));
            }
        }
    }

    fn postprocess(&mut self, output: &rill_proto::StepOutput) {
        let updates = self.scheduler.update(output);
        // Finished and failed sequences freed their blocks in `update`: publish that before
        // the client hears of it, so /metrics read after a response agrees.
        self.publish_stats();
        for (id, e) in &output.failed {
            tracing::warn!(seq_id = id.0, error = %e, "sampling failed");
            self.reply(*id, EngineEvent::Error(EngineError::Step(e.to_string())));
            self.replies.remove(id);
        }
        // Finished embeddings: their blocks are free already; the answer is one event.
        let dim = self.runner.config().hidden_size;
        for (id, states) in self.scheduler.take_embedded() {
            self.reply(id, EngineEvent::Hidden { states, dim });
            self.replies.remove(&id);
        }
        for u in updates {
            if let Some(cached_tokens) = u.cached_prompt_tokens {
                let logprobs = u.prompt_logprobs;
                self.reply(u.id, EngineEvent::Prefill { logprobs, cached_tokens });
            }
            // Forced tokens had no choice: probability 1 under the grammar.
            let n = 1 + u.forced.len();
            let tokens = std::iter::once((u.token, u.logprob, u.top))
                .chain(u.forced.into_iter().map(|t| (t, 0.0, Vec::new())));
            let mut delivered = true;
            for (i, (token, logprob, top)) in tokens.enumerate() {
                let finish = if i + 1 == n { u.finish } else { None };
                delivered &= self.reply(u.id, EngineEvent::Token { token, logprob, top, finish });
            }
            if u.finish.is_some() {
                self.replies.remove(&u.id);
            } else if !delivered {
                self.scheduler.remove(u.id);
                self.replies.remove(&u.id);
            }
        }
    }

    fn reply(&self, id: SeqId, event: EngineEvent) -> bool {
        self.replies.get(&id).is_some_and(|r| r.events.send(event).is_ok())
    }

    fn publish_stats(&mut self) {
        if let Some(tx) = &self.kv_events {
            let events = self.scheduler.take_kv_events();
            if !events.is_empty() {
                let medium = kv_events::medium(self.runner.device_name());
                let _ = tx.send(KvEventBatch { medium, events });
            }
        }
        let blocks = self.scheduler.blocks();
        let s = &self.stats;
        s.kv_blocks_used.store(blocks.num_used(), Ordering::Relaxed);
        s.running.store(self.scheduler.num_running(), Ordering::Relaxed);
        s.waiting.store(self.scheduler.num_waiting(), Ordering::Relaxed);
        metrics::gauge!(m::QUEUE_SIZE).set(self.scheduler.num_waiting() as f64);
        metrics::gauge!(m::BATCH_CURRENT_SIZE).set(self.scheduler.num_running() as f64);
        metrics::gauge!(m::KV_BLOCKS_USED).set(blocks.num_used() as f64);
        metrics::gauge!(m::KV_BLOCKS_TOTAL).set(blocks.num_blocks() as f64);
        let usage = blocks.num_used() as f64 / blocks.num_blocks().max(1) as f64;
        metrics::gauge!(m::KV_CACHE_USAGE).set(usage);
        metrics::counter!(m::PREEMPTIONS).absolute(self.scheduler.preemptions());
        let cache = blocks.stats();
        metrics::gauge!(m::KV_BLOCKS_CACHED).set(blocks.num_cached() as f64);
        metrics::counter!(m::PREFIX_CACHE_QUERIES).absolute(cache.queried_tokens);
        metrics::counter!(m::PREFIX_CACHE_HITS).absolute(cache.hit_tokens);
        metrics::counter!(m::PREFIX_CACHE_EVICTIONS).absolute(cache.evictions);
    }
}
