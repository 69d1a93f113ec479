//! [`Runner::step`]: execute one [`ForwardBatch`] and choose the next tokens.
//!
//! The runner owns the device, the model and the paged KV cache. It does not
//! allocate blocks — the router's block manager does, and hands them over in each
//! sequence's block table — but it checks every batch against the cache before
//! touching it, so a bad batch is refused whole and changes nothing.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use rill_proto::{BLOCK_SIZE, ForwardBatch, SampledToken, StepOutput, TokenId};

use crate::config::{DType, ModelConfig};
use crate::device::{Device, ForwardOutput, KvLayout, StepPlan};
use crate::error::{LoadError, StepError};
use crate::models::Llama;
use crate::sampler::{self, Sampler};
use crate::weights::{CastWeights, DummyWeights, SafetensorsWeights, WeightSource};

/// Where the weights come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadFormat {
    /// The directory's safetensors files; `Some(dtype)` converts every weight to
    /// it at load (`--dtype`), `None` keeps each tensor's own dtype.
    Safetensors(Option<DType>),
    /// Random weights of this dtype for the model `config.json` describes
    /// (vLLM's `--load-format dummy`; for benchmarks).
    Dummy(DType),
}

impl LoadFormat {
    /// The weight source this format reads from the model directory `dir`.
    pub fn open(
        self,
        dir: &Path,
        config: &ModelConfig,
    ) -> Result<Box<dyn WeightSource>, LoadError> {
        Ok(match self {
            LoadFormat::Safetensors(None) => Box::new(SafetensorsWeights::open(dir)?),
            LoadFormat::Safetensors(Some(dtype)) => {
                Box::new(CastWeights { inner: SafetensorsWeights::open(dir)?, dtype })
            }
            LoadFormat::Dummy(dtype) => Box::new(DummyWeights {
                dtype,
                seed: 0x5eed,
                has_lm_head: !config.tie_word_embeddings,
            }),
        })
    }
}

/// A model ready to step, with its KV cache.
pub struct Runner<D: Device> {
    device: D,
    model: Llama<D>,
    cache: D::Cache,
    layout: KvLayout,
    sampler: Sampler,
    stats: StepStats,
    max_step_tokens: usize,
}

/// Where the last step's time went (benchmarks, logs).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// The forward pass, logits on the host.
    pub forward: Duration,
    /// Computing grammar masks (on their own thread, during the forward pass).
    pub masks: Duration,
    /// How long sampling waited for masks after the forward pass ended.
    pub mask_wait: Duration,
    /// Logits processors and the choice, every row.
    pub sampling: Duration,
}

impl<D: Device> std::fmt::Debug for Runner<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("device", &self.device.name())
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl<D: Device> Runner<D> {
    /// The last two steps of [`Runner::load`]: the KV cache, then what the device replays.
    fn assemble(
        device: D,
        model: Llama<D>,
        kv_cache_bytes: usize,
        max_step_tokens: usize,
        replay_batch_sizes: &[usize],
    ) -> Result<Self, LoadError> {
        let c = model.config();
        let block_bytes = KvLayout::block_bytes(c);
        let num_blocks = kv_cache_bytes / block_bytes;
        if num_blocks == 0 {
            return Err(LoadError::Other(format!(
                "a KV cache of {kv_cache_bytes} bytes holds no block; one block of {BLOCK_SIZE} tokens takes {block_bytes} bytes"
            )));
        }
        let layout = KvLayout {
            num_layers: c.num_layers,
            num_blocks,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        let mut cache = device.kv_cache(layout)?;
        let recorded = device.run(|| {
            let forward = &mut |cache: &mut D::Cache, host: &StepPlan, plan: &D::Plan| {
                model.forward(&device, cache, host, plan)
            };
            device.prepare_replay(&mut cache, model.config(), replay_batch_sizes, forward)
        });
        if let Some(recorded) = recorded {
            tracing::info!("{}: {recorded}", device.name());
        }
        let sampler = Sampler::new(c.vocab_size);
        let stats = StepStats::default();
        Ok(Runner { device, model, cache, layout, sampler, stats, max_step_tokens })
    }

    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// KV-cache blocks available to the block manager.
    pub fn num_blocks(&self) -> usize {
        self.layout.num_blocks
    }

    /// The most rows one step may run (the warm-up's size; the scheduler's token budget).
    pub fn max_step_tokens(&self) -> usize {
        self.max_step_tokens
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_name(&self) -> &'static str {
        self.device.name()
    }

    /// The last step's timings.
    pub fn last_step_stats(&self) -> StepStats {
        self.stats
    }

    /// Sequences the sampler holds state for (their parameters, counts, grammar).
    pub fn num_sampling_states(&self) -> usize {
        self.sampler.num_sequences()
    }

    /// Run one forward pass over `batch` and pick the next token of every
    /// sequence that samples, and return the hidden states of those that ask
    /// (`SeqStep::hidden`). Grammar masks for this step are computed on their own
    /// thread while the forward pass runs: they depend only on tokens already chosen.
    pub fn step(&mut self, batch: &ForwardBatch) -> Result<StepOutput, StepError> {
        // Released sequences are gone whatever happens to the rest of the batch.
        self.sampler.release(&batch.released);
        self.validate(batch)?;
        self.sampler.prepare(batch);
        if batch.seqs.is_empty() {
            return Ok(StepOutput::default());
        }
        let host = StepPlan::new(batch, self.model.inv_freq());
        let mut jobs = self.sampler.take_mask_jobs(batch);
        let Runner { device, model, cache, stats, .. } = self;
        let started = Instant::now();
        let forwarded = std::thread::scope(|s| {
            let masks = (!jobs.is_empty()).then(|| {
                s.spawn(|| {
                    let t = Instant::now();
                    sampler::compute_masks(&mut jobs);
                    t.elapsed()
                })
            });
            let logits = device.run(|| {
                let forward = &mut |cache: &mut D::Cache, host: &StepPlan, plan: &D::Plan| {
                    model.forward(device, cache, host, plan)
                };
                device.forward(cache, &host, forward)
            });
            stats.forward = started.elapsed();
            let waited = Instant::now();
            // A panic in a matcher is a bug in it; sampling reports the lost state.
            stats.masks = masks.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
            stats.mask_wait = waited.elapsed();
            logits
        });
        let ForwardOutput { logits: activation, hidden } = match forwarded {
            Ok(out) => out,
            Err(e) => {
                // The matchers go back as they were; the router fails these sequences.
                self.sampler.sample(Vec::new(), jobs);
                return Err(e.into());
            }
        };
        let hidden = match self.hidden_states(batch, &host, hidden) {
            Ok(h) => h,
            Err(e) => {
                // The matchers go back as they were; the router fails these sequences.
                self.sampler.sample(Vec::new(), jobs);
                return Err(e);
            }
        };
        let mut out = StepOutput { hidden, ..StepOutput::default() };
        self.choose(batch, activation, jobs, &mut out)?;
        Ok(out)
    }

    /// Choose the step's tokens from its logits (per sequence: its logprob targets' rows,
    /// then its sampled row) and compute the prompt logprobs. A device that samples
    /// chooses every row but those whose processors only the host has; the logits come
    /// to the host only for those rows, prompt logprobs and `return_logits`. Each row is
    /// sampled where its own parameters say, whatever its neighbours need.
    fn choose(
        &mut self,
        batch: &ForwardBatch,
        logits: D::Activation,
        mut jobs: Vec<sampler::MaskJob>,
        out: &mut StepOutput,
    ) -> Result<(), StepError> {
        let started = Instant::now();
        let on_device = self.device.samples_tokens();
        // (sequence, its first logits row) in batch order.
        let mut first_row = Vec::with_capacity(batch.seqs.len());
        let mut rows = 0;
        for seq in &batch.seqs {
            first_row.push(rows);
            rows += seq.logprob_targets.len() + usize::from(seq.sample);
        }
        // Every sampling sequence with its sampled row, in batch order.
        let sampling: Vec<(&rill_proto::SeqStep, usize)> = batch
            .seqs
            .iter()
            .zip(&first_row)
            .filter(|(s, _)| s.sample)
            .map(|(s, &r)| (s, r + s.logprob_targets.len()))
            .collect();
        let (device_rows, host_rows): (Vec<_>, Vec<_>) =
            sampling.iter().copied().partition(|(s, _)| on_device && !self.sampler.needs_host(s));
        let host_needs_logits = batch.return_logits
            || !host_rows.is_empty()
            || batch.seqs.iter().any(|s| !s.logprob_targets.is_empty());
        let host_logits = if host_needs_logits {
            let device = &self.device;
            let activation = &logits;
            match device.run(move || device.to_host(activation)) {
                Ok(l) => Some(l),
                Err(e) => {
                    // The matchers go back as they were; the router fails these sequences.
                    self.sampler.sample(Vec::new(), jobs);
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        let mut choices: std::collections::HashMap<rill_proto::SeqId, _> =
            std::collections::HashMap::with_capacity(device_rows.len() + host_rows.len());
        if !device_rows.is_empty() {
            let ids: HashSet<_> = device_rows.iter().map(|(s, _)| s.id).collect();
            let (mine, rest) = jobs.into_iter().partition(|j| ids.contains(&j.id()));
            jobs = rest;
            let (sampling, pending) = self.sampler.device_sampling(&device_rows, mine);
            let device = &self.device;
            let (activation, sampling_ref) = (&logits, &sampling);
            match device.run(move || device.sample(activation, sampling_ref)) {
                Ok(c) => choices.extend(self.sampler.apply_device(pending, Some(c))),
                Err(e) => {
                    self.sampler.apply_device(pending, None);
                    self.sampler.sample(Vec::new(), jobs);
                    return Err(e.into());
                }
            }
        }
        let vocab = self.config().vocab_size;
        let mut host_logits = host_logits.unwrap_or_default();
        let raw = |r: usize, l: &[f32]| {
            batch.return_logits.then(|| l[r * vocab..(r + 1) * vocab].to_vec())
        };
        let raw_logits: Vec<_> = sampling.iter().map(|&(_, r)| raw(r, &host_logits)).collect();
        for (seq, &r) in batch.seqs.iter().zip(&first_row) {
            if !seq.logprob_targets.is_empty() {
                let row = |j: usize| &host_logits[(r + j) * vocab..(r + j + 1) * vocab];
                let lps = seq
                    .logprob_targets
                    .iter()
                    .enumerate()
                    .map(|(j, t)| sampler::logprob(row(j), *t));
                out.prompt_logprobs.push((seq.id, lps.collect()));
            }
        }
        // Host rows are processed in place, each its own slice of the host copy (their
        // rows ascend, so one walk over the copy finds them all).
        let mut rows = host_logits.chunks_exact_mut(vocab).enumerate();
        let to_sample: Vec<_> = host_rows
            .iter()
            .map(|&(s, r)| {
                let row = rows.find(|(i, _)| *i == r).map(|(_, row)| row);
                (s, row.expect("one logits row per sampling sequence"))
            })
            .collect();
        let (device, sampler) = (&self.device, &mut self.sampler);
        choices.extend(device.run(|| sampler.sample(to_sample, jobs)));
        for (&(seq, _), logits) in sampling.iter().zip(raw_logits) {
            if let Some(choice) = choices.remove(&seq.id) {
                record(out, seq.id, choice, logits);
            }
        }
        self.stats.sampling = started.elapsed();
        Ok(())
    }

    /// The hidden rows of the step on the host, split per sequence that asked for them
    /// (its rows are contiguous in `host.hidden_rows`, in batch order).
    fn hidden_states(
        &self,
        batch: &ForwardBatch,
        host: &StepPlan,
        hidden: D::Activation,
    ) -> Result<Vec<(rill_proto::SeqId, Vec<f32>)>, StepError> {
        if host.hidden_rows.is_empty() {
            return Ok(Vec::new());
        }
        let device = &self.device;
        let values = device.run(move || device.to_host(&hidden))?;
        let width = self.config().hidden_size;
        if values.len() != host.hidden_rows.len() * width {
            let message = format!(
                "{} hidden values for {} rows of {width}",
                values.len(),
                host.hidden_rows.len()
            );
            return Err(crate::device::DeviceError { device: device.name(), message }.into());
        }
        let mut values = values.into_iter();
        let per_seq = batch.seqs.iter().filter(|s| s.hidden);
        let mut split =
            |s: &rill_proto::SeqStep| values.by_ref().take(s.tokens.len() * width).collect();
        Ok(per_seq.map(|s| (s.id, split(s))).collect())
    }

    fn validate(&self, batch: &ForwardBatch) -> Result<(), StepError> {
        let vocab = self.config().vocab_size;
        let max = self.config().max_position_embeddings;
        let mut seen = HashSet::with_capacity(batch.seqs.len());
        for s in &batch.seqs {
            let seq = s.id;
            if !seen.insert(seq) {
                return Err(StepError::DuplicateSequence { seq });
            }
            if s.tokens.is_empty() {
                return Err(StepError::EmptySequence { seq });
            }
            if s.hidden && (s.sample || !s.logprob_targets.is_empty() || s.sampling.is_some()) {
                return Err(StepError::HiddenWithSampling { seq });
            }
            if !s.prefix.is_empty() && (s.prefix.len() != s.start_pos || s.sampling.is_none()) {
                return Err(StepError::PrefixLength {
                    seq,
                    len: s.prefix.len(),
                    start_pos: s.start_pos,
                });
            }
            if s.logprob_targets.len() > s.tokens.len() {
                return Err(StepError::TooManyTargets {
                    seq,
                    targets: s.logprob_targets.len(),
                    tokens: s.tokens.len(),
                });
            }
            if let Some(&TokenId(token)) = s
                .tokens
                .iter()
                .chain(&s.logprob_targets)
                .chain(&s.prefix)
                .find(|t| t.index() >= vocab)
            {
                return Err(StepError::TokenOutOfRange { seq, token, vocab });
            }
            let end = s.end_pos();
            if end > max {
                return Err(StepError::TooLong { seq, end, max });
            }
            let needed = rill_proto::blocks_for(end);
            if s.block_table.len() < needed {
                return Err(StepError::BlockTableTooShort {
                    seq,
                    end,
                    needed,
                    have: s.block_table.len(),
                });
            }
            if let Some(b) =
                s.block_table[..needed].iter().find(|b| b.index() >= self.layout.num_blocks)
            {
                return Err(StepError::BlockOutOfRange {
                    seq,
                    block: b.0,
                    num_blocks: self.layout.num_blocks,
                });
            }
        }
        Ok(())
    }
}

/// A sequence's outcome of the step: its token, or why it has none.
fn record(
    out: &mut StepOutput,
    id: rill_proto::SeqId,
    choice: Result<sampler::Choice, String>,
    logits: Option<Vec<f32>>,
) {
    match choice {
        Ok(c) => out.sampled.push(SampledToken {
            id,
            token: c.token,
            logprob: c.logprob,
            top: c.top,
            forced: c.forced,
            logits,
        }),
        Err(e) => out.failed.push((id, e)),
    }
}

mod load;

pub use load::{
    AnyRunner, DeviceChoice, FIXED_RESERVE_BYTES, HOST_KV_CACHE_BYTES, KvBudget, KvCacheSize,
    RunnerOptions, step_bytes,
};

#[cfg(test)]
mod tests;
