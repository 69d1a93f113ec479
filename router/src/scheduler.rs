//! [`Scheduler`]: continuous batching with chunked prefill and recompute preemption
//! (vLLM's design: one token budget per step, decodes first, prefill chunks after).
//!
//! With prefix caching on, a sequence being admitted first takes the blocks the
//! [`BlockManager`] holds for the longest run of its full blocks (matched by hash,
//! shared, never its last token's block), and only the tokens after them are scheduled
//! and counted in the budget; every block a step fills is registered under its hash as
//! the step is scheduled, so later sequences — of the same step too — can share it.
//!
//! Each [`Scheduler::schedule`] builds one [`ForwardBatch`]:
//! 1. every running sequence that is decoding gets its next token, in admission
//!    order; when its next token needs a block and none is free, the most recently
//!    admitted sequence is preempted (its blocks freed, its tokens kept, and it goes
//!    back to the front of the queue to be recomputed) — a request never fails for
//!    lack of memory;
//! 2. the rest of the token budget goes to prefill chunks: running sequences still
//!    reading their prompt first, then waiting sequences in FIFO order, admitted only
//!    when blocks for their chunk are free (head-of-line: a sequence that does not
//!    fit is not skipped).
//!
//! [`Scheduler::update`] applies the step's output: cached-token counts advance,
//! sampled tokens are appended, finished sequences free their blocks at once and are
//! listed in the next batch's `released`. Plain synchronous data: the engine loop
//! owns it, tests drive it directly.
//!
//! Embedding sequences ([`Sequence::embedding`]) are prompts like any other here:
//! chunked, counted in the budget, preempted; each of their steps asks for hidden states
//! instead of a sample, and after the last chunk they finish, free their blocks and wait
//! in [`Scheduler::take_embedded`] with all their rows.

use std::collections::VecDeque;

use rill_proto::{BLOCK_SIZE, BlockId, ForwardBatch, SeqId, SeqStep, StepOutput, TokenId};

use crate::block_manager::{self, BlockManager};
use crate::sequence::{FinishReason, Sequence};

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Tokens one step may run, decodes and prefill chunks together
    /// (`--max-batch-prefill-tokens`).
    pub max_batch_tokens: usize,
    /// Sequences one step may hold (`--max-batch-size`).
    pub max_batch_size: usize,
    /// Keep the blocks of finished sequences for later ones with the same prefix
    /// (`--prefix-caching`).
    pub prefix_caching: bool,
}

/// What a step did to one sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub id: SeqId,
    pub token: TokenId,
    pub logprob: f32,
    /// The most likely alternatives, when the sequence asked for them.
    pub top: Vec<(TokenId, f32)>,
    /// Tokens the grammar forced after `token`, appended too (up to the length
    /// limit).
    pub forced: Vec<TokenId>,
    /// With the first generated token of a sequence that asked for them: the
    /// logprobs of prompt tokens 1.. .
    pub prompt_logprobs: Option<Vec<f32>>,
    /// Set when this token ended the sequence (its blocks are already free).
    pub finish: Option<FinishReason>,
    /// With the first generated token: how many prompt tokens the prefix cache supplied.
    pub cached_prompt_tokens: Option<usize>,
}

/// Why a sequence cannot be queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    #[error("{tokens} tokens (prompt + max_new_tokens) exceed the KV cache's {capacity}")]
    TooLong { tokens: usize, capacity: usize },
    #[error("{0} is already scheduled")]
    Duplicate(SeqId),
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    blocks: BlockManager,
    waiting: VecDeque<Sequence>,
    /// Admitted sequences, oldest first.
    running: Vec<Sequence>,
    /// Sequences finished or aborted since the last batch.
    released: Vec<SeqId>,
    /// The last batch: each sequence and the tokens it ran.
    in_flight: Vec<(SeqId, usize)>,
    /// Embedding sequences that finished, with their hidden states, until taken.
    embedded: Vec<(SeqId, Vec<f32>)>,
    preemptions: u64,
}

impl Scheduler {
    /// A scheduler for a cache of `num_blocks` blocks.
    pub fn new(config: SchedulerConfig, num_blocks: usize) -> Self {
        Scheduler::for_model(config, num_blocks, "")
    }

    /// A scheduler whose prefix cache (when on) is keyed by `model` too: a description of
    /// everything besides the tokens that changes K/V (the model, its dtype, the device).
    pub fn for_model(config: SchedulerConfig, num_blocks: usize, model: &str) -> Self {
        assert!(config.max_batch_tokens > 0 && config.max_batch_size > 0, "empty step budget");
        let blocks = if config.prefix_caching {
            BlockManager::with_prefix_caching(num_blocks, block_manager::random_key(), model)
        } else {
            BlockManager::new(num_blocks)
        };
        Scheduler {
            config,
            blocks,
            waiting: VecDeque::new(),
            running: Vec::new(),
            released: Vec::new(),
            in_flight: Vec::new(),
            embedded: Vec::new(),
            preemptions: 0,
        }
    }

    /// Queue a sequence. It must fit the whole cache on its own, or it could
    /// never finish.
    pub fn add(&mut self, seq: Sequence) -> Result<(), AddError> {
        let tokens = seq.prompt_len() + seq.stop.max_new_tokens;
        let capacity = self.blocks.num_blocks() * BLOCK_SIZE;
        if tokens > capacity {
            return Err(AddError::TooLong { tokens, capacity });
        }
        if self.get(seq.id).is_some() {
            return Err(AddError::Duplicate(seq.id));
        }
        self.waiting.push_back(seq);
        Ok(())
    }

    pub fn blocks(&self) -> &BlockManager {
        &self.blocks
    }

    /// Log the prefix cache's changes from now on ([`BlockManager::record_events`]).
    pub fn record_kv_events(&mut self) {
        self.blocks.record_events();
    }

    /// The prefix cache's changes since the last call.
    pub fn take_kv_events(&mut self) -> Vec<crate::block_manager::KvEvent> {
        self.blocks.take_events()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Preemptions so far.
    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn get(&self, id: SeqId) -> Option<&Sequence> {
        self.running.iter().chain(&self.waiting).find(|s| s.id == id)
    }

    /// Build the next step's batch (empty when there is nothing to run).
    pub fn schedule(&mut self) -> ForwardBatch {
        let mut batch =
            ForwardBatch { released: std::mem::take(&mut self.released), ..Default::default() };
        self.in_flight.clear();
        let mut budget = self.config.max_batch_tokens;

        // Decodes, oldest first; a sequence may be preempted while we walk.
        let mut i = 0;
        while i < self.running.len() && budget > 0 && batch.seqs.len() < self.config.max_batch_size
        {
            if !self.running[i].is_decoding() {
                i += 1;
                continue;
            }
            let need = self.running[i].blocks_needed(self.running[i].len());
            if !self.grow_or_preempt(i, need) {
                continue; // `i` itself was preempted; the next one moved into its place
            }
            self.push_step(&mut batch, i, 1);
            budget -= 1;
            i += 1;
        }

        // Prefill chunks: admitted sequences still reading their prompt, then the queue.
        for i in 0..self.running.len() {
            if budget == 0 || batch.seqs.len() >= self.config.max_batch_size {
                break;
            }
            if self.running[i].is_decoding()
                || self.in_flight.iter().any(|(id, _)| *id == self.running[i].id)
            {
                continue;
            }
            if let Some(chunk) = self.reserve_chunk(i, budget) {
                self.push_step(&mut batch, i, chunk);
                budget -= chunk;
            }
        }
        while budget > 0
            && batch.seqs.len() < self.config.max_batch_size
            && self.running.len() < self.config.max_batch_size
        {
            let Some(seq) = self.waiting.pop_front() else {
                break;
            };
            self.running.push(seq);
            let i = self.running.len() - 1;
            self.match_cached_prefix(i);
            match self.reserve_chunk(i, budget) {
                Some(chunk) => {
                    self.push_step(&mut batch, i, chunk);
                    budget -= chunk;
                }
                None => {
                    // Head-of-line: it waits (in front) until blocks free up; the cached
                    // blocks it matched go back (still cached).
                    let mut seq = self.running.pop().expect("just pushed");
                    self.blocks.free(seq.take_blocks().into_iter().rev());
                    self.waiting.push_front(seq);
                    break;
                }
            }
        }

        // Every admitted sequence is stuck waiting for blocks another holds: free the
        // youngest so the others can move (it is recomputed later).
        if batch.seqs.is_empty() && !self.running.is_empty() {
            self.preempt_youngest();
            let released = std::mem::take(&mut batch.released);
            let mut retry = self.schedule();
            retry.released.splice(0..0, released);
            return retry;
        }
        debug_assert!(self.check_invariants().is_ok(), "{:?}", self.check_invariants());
        batch
    }

    /// Apply a successful step's output. Sequences the runner could not sample
    /// for (`output.failed`) are removed; the caller fails their requests. Embedding
    /// sequences whose last chunk ran are removed too (their blocks freed) and wait in
    /// [`Scheduler::take_embedded`].
    pub fn update(&mut self, output: &StepOutput) -> Vec<Update> {
        for (id, _) in &output.failed {
            self.remove(*id);
        }
        let mut updates = Vec::with_capacity(output.sampled.len());
        for (id, n) in std::mem::take(&mut self.in_flight) {
            let Some(i) = self.running.iter().position(|s| s.id == id) else {
                continue;
            };
            self.running[i].advance(n);
            if let Some((_, lps)) = output.prompt_logprobs.iter().find(|(s, _)| *s == id) {
                self.running[i].add_prompt_logprobs(lps);
            }
            if self.running[i].is_embedding() {
                if let Some((_, rows)) = output.hidden.iter().find(|(s, _)| *s == id) {
                    self.running[i].add_hidden(rows);
                }
                if self.running[i].num_uncomputed() == 0 {
                    let hidden = self.running[i].take_hidden();
                    self.remove(id);
                    self.embedded.push((id, hidden));
                }
                continue;
            }
            let Some(sampled) = output.sampled.iter().find(|s| s.id == id) else {
                continue;
            };
            let seq = &mut self.running[i];
            seq.push(sampled.token);
            let mut finish = seq.finish_reason();
            let mut forced = Vec::new();
            for &t in &sampled.forced {
                if finish.is_some() {
                    break;
                }
                seq.push(t);
                forced.push(t);
                finish = seq.finish_reason();
            }
            updates.push(Update {
                id,
                token: sampled.token,
                logprob: sampled.logprob,
                top: sampled.top.clone(),
                forced,
                prompt_logprobs: (seq.generated().len() == 1)
                    .then(|| seq.prompt_logprobs().map(<[f32]>::to_vec))
                    .flatten(),
                finish,
                cached_prompt_tokens: (seq.generated().len() == 1)
                    .then(|| seq.cached_prompt_tokens()),
            });
            if finish.is_some() {
                self.remove(id);
            }
        }
        debug_assert!(self.check_invariants().is_ok(), "{:?}", self.check_invariants());
        updates
    }

    /// Embedding sequences finished since the last call, each with the hidden states of
    /// every prompt token (`[prompt_len, hidden]` row-major), in the order they finished.
    pub fn take_embedded(&mut self) -> Vec<(SeqId, Vec<f32>)> {
        std::mem::take(&mut self.embedded)
    }

    /// The step failed: every sequence in it is dropped (its blocks freed) and
    /// returned so the router can fail those requests.
    pub fn fail_step(&mut self) -> Vec<SeqId> {
        let ids: Vec<SeqId> =
            std::mem::take(&mut self.in_flight).into_iter().map(|(id, _)| id).collect();
        for id in &ids {
            // The blocks this step was to fill were registered when it was scheduled; what
            // they hold now is not what their hashes say.
            if let Some(seq) = self.running.iter().find(|s| s.id == *id) {
                for &b in &seq.blocks()[seq.num_computed() / BLOCK_SIZE..] {
                    self.blocks.forget(b);
                }
            }
            self.remove(*id);
        }
        ids
    }

    /// End a sequence early (stop sequence matched, client gone): its blocks are
    /// freed now. Returns it, or `None` if it is unknown (already finished).
    pub fn remove(&mut self, id: SeqId) -> Option<Sequence> {
        let mut seq = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i)
        } else {
            let i = self.waiting.iter().position(|s| s.id == id)?;
            self.waiting.remove(i).expect("index from position")
        };
        self.blocks.free(seq.take_blocks().into_iter().rev());
        self.in_flight.retain(|(f, _)| *f != id);
        self.released.push(id);
        Some(seq)
    }

    /// Make room for `need` more blocks for running sequence `i`, preempting the
    /// youngest sequences if needed. False if `i` itself had to be preempted.
    fn grow_or_preempt(&mut self, i: usize, need: usize) -> bool {
        loop {
            if let Some(blocks) = self.blocks.allocate(need) {
                self.running[i].add_blocks(blocks);
                return true;
            }
            let youngest = self.running.len() - 1;
            self.preempt_youngest();
            if youngest == i {
                return false;
            }
        }
    }

    fn preempt_youngest(&mut self) {
        let mut seq = self.running.pop().expect("something to preempt");
        self.in_flight.retain(|(id, _)| *id != seq.id);
        // Tail first, so a prefix other sequences share is evicted last; its hashed
        // blocks stay cached, so its recompute finds them.
        self.blocks.free(seq.take_blocks().into_iter().rev());
        self.waiting.push_front(seq);
        self.preemptions += 1;
    }

    /// Running sequence `i`, just admitted with no blocks: take the cached blocks of
    /// the longest run of its full blocks, up to but never including the block of its
    /// last token (which must be computed for its logits). Sequences that need every
    /// prompt row computed take none.
    fn match_cached_prefix(&mut self, i: usize) {
        let seq = &mut self.running[i];
        if !self.blocks.caching() || !seq.may_use_cached_prefix() {
            return;
        }
        let full = (seq.len() - 1) / BLOCK_SIZE;
        let tokens = seq.len();
        let matched = self.blocks.match_prefix(seq.block_hashes(full, &self.blocks), tokens);
        seq.add_cached_blocks(matched);
    }

    /// Register the blocks that running sequence `i`'s step over `start..start + n`
    /// fills, under their hashes (a no-op without prefix caching).
    fn register_filled_blocks(&mut self, i: usize, start: usize, n: usize) {
        let (first, full) = (start / BLOCK_SIZE, (start + n) / BLOCK_SIZE);
        if !self.blocks.caching() || full <= first {
            return;
        }
        let seq = &mut self.running[i];
        // The new blocks' hashes, and their first one's parent.
        let from = first.saturating_sub(1);
        let hashes = seq.block_hashes(full, &self.blocks)[from..].to_vec();
        for k in first..full {
            let parent = k.checked_sub(1).map(|p| hashes[p - from]);
            let tokens = &seq.tokens()[k * BLOCK_SIZE..(k + 1) * BLOCK_SIZE];
            self.blocks.register(seq.blocks()[k], hashes[k - from], parent, tokens);
        }
    }

    /// Blocks for the next chunk of running sequence `i` (at most `budget` tokens,
    /// fewer if fewer blocks are available); the chunk size, or `None` if nothing fits.
    fn reserve_chunk(&mut self, i: usize, budget: usize) -> Option<usize> {
        let seq = &self.running[i];
        let start = seq.num_computed();
        let room = (seq.blocks().len() + self.blocks.num_available()) * BLOCK_SIZE - start;
        let chunk = seq.num_uncomputed().min(budget).min(room);
        if chunk == 0 {
            return None;
        }
        let need = seq.blocks_needed(start + chunk);
        let blocks = self.blocks.allocate(need).expect("room was counted from available blocks");
        self.running[i].add_blocks(blocks);
        Some(chunk)
    }

    fn push_step(&mut self, batch: &mut ForwardBatch, i: usize, n: usize) {
        let seq = &mut self.running[i];
        let start = seq.num_computed();
        let sampling = seq.take_sampling();
        let hidden = seq.is_embedding();
        // A first step after a cached prefix: the sampler's penalties count those tokens.
        let prefix = match &sampling {
            Some(p) if start > 0 && p.counts_prompt_tokens() => seq.tokens()[..start].to_vec(),
            _ => Vec::new(),
        };
        batch.seqs.push(SeqStep {
            id: seq.id,
            tokens: seq.tokens()[start..start + n].to_vec(),
            start_pos: start,
            block_table: seq.blocks().to_vec(),
            sample: !hidden && start + n == seq.len(),
            top_n: seq.top_n,
            logprob_targets: seq.logprob_targets(start, n),
            sampling,
            prefix,
            hidden,
        });
        self.in_flight.push((seq.id, n));
        self.register_filled_blocks(i, start, n);
    }

    /// The block manager's invariants hold; each block's reference count is the number
    /// of sequences holding it, a block more than one holds is a registered full block,
    /// and every sequence holds the blocks its cached tokens need.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.blocks.check_invariants()?;
        let mut holders = vec![Vec::new(); self.blocks.num_blocks()];
        for seq in self.running.iter().chain(&self.waiting) {
            if seq.blocks().len() * BLOCK_SIZE < seq.num_computed() {
                return Err(format!(
                    "{} caches {} tokens in {} blocks",
                    seq.id,
                    seq.num_computed(),
                    seq.blocks().len()
                ));
            }
            for b in seq.blocks() {
                if holders[b.index()].contains(&seq.id) {
                    return Err(format!("{} holds {b:?} twice", seq.id));
                }
                holders[b.index()].push(seq.id);
            }
        }
        for (i, ids) in holders.iter().enumerate() {
            let b = BlockId(i as u32);
            if ids.len() != self.blocks.ref_count(b) as usize {
                return Err(format!(
                    "{b:?} is held by {ids:?} but counts {} owners",
                    self.blocks.ref_count(b)
                ));
            }
            if ids.len() > 1 && !self.blocks.is_registered(b) {
                return Err(format!("{b:?} is shared by {ids:?} but is not a cached block"));
            }
        }
        if let Some(seq) = self.waiting.iter().find(|s| !s.blocks().is_empty()) {
            return Err(format!("{} waits while holding blocks", seq.id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
