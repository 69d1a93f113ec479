//! [`Sequence`]: one generation stream (or one embedding request) as the scheduler
//! sees it.
//!
//! A sequence is its tokens (prompt, then what was generated), how many of them
//! have K/V in the cache (`num_computed`), the blocks holding them, and when to stop.
//! The next step always runs tokens `num_computed..len()`: a prefill chunk while the
//! prompt is being read, a single decode token afterwards, or the whole sequence
//! again after a preemption (recompute keeps every generated token).
//!
//! An embedding sequence ([`Sequence::embedding`]) only prefills: each chunk returns the
//! final-norm hidden states of its rows, collected here, and it ends after its last
//! chunk without ever sampling (or handing sampling parameters to the runner).

use rill_proto::{BLOCK_SIZE, BlockId, SamplingParams, SeqId, TokenId, blocks_for};

use crate::block_manager::{BlockHash, BlockManager};

/// Why a sequence stopped (TGI's `finish_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// An EOS token was generated.
    EosToken,
    /// A stop sequence matched (decided by the router on the text).
    StopSequence,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::EosToken => "eos_token",
            FinishReason::StopSequence => "stop_sequence",
        }
    }
}

/// When the engine itself ends a sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopCriteria {
    pub max_new_tokens: usize,
    pub eos_token_ids: Vec<u32>,
    /// Keep going past EOS (fixed-length benchmarks).
    pub ignore_eos: bool,
}

#[derive(Clone, Debug)]
pub struct Sequence {
    pub id: SeqId,
    tokens: Vec<TokenId>,
    prompt_len: usize,
    num_computed: usize,
    blocks: Vec<BlockId>,
    pub stop: StopCriteria,
    /// Alternatives to report with each token (`top_n_tokens`).
    pub top_n: u32,
    /// With `decoder_input_details`: the logprobs of prompt tokens 1.. computed so far.
    prompt_logprobs: Option<Vec<f32>>,
    /// Sampling parameters, until the first step hands them to the runner (which
    /// keeps them, and the state they imply, until the sequence is released).
    sampling: Option<Box<SamplingParams>>,
    /// An embedding request: the hidden states of its prompt's computed rows,
    /// `[num_computed, hidden]` row-major, once each chunk's step is applied.
    hidden: Option<Vec<f32>>,
    /// Prefix caching: the request's `cache_salt` (only requests with the same salt
    /// share blocks), and the hashes of its full blocks so far, first block first.
    cache_salt: Option<String>,
    block_hashes: Vec<BlockHash>,
    /// Prompt tokens whose K/V the prefix cache supplied when it was first admitted.
    cached_prompt_tokens: Option<usize>,
}

impl Sequence {
    /// A new sequence; `prompt` must not be empty (validation guarantees it).
    pub fn new(id: SeqId, prompt: Vec<TokenId>, stop: StopCriteria) -> Self {
        assert!(!prompt.is_empty(), "{id}: empty prompt");
        Sequence {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            num_computed: 0,
            blocks: Vec::new(),
            stop,
            top_n: 0,
            prompt_logprobs: None,
            sampling: None,
            hidden: None,
            cache_salt: None,
            block_hashes: Vec::new(),
            cached_prompt_tokens: None,
        }
    }

    /// A prefill-only sequence that returns its prompt's hidden states and generates
    /// nothing; `prompt` must not be empty.
    pub fn embedding(id: SeqId, prompt: Vec<TokenId>) -> Self {
        let stop = StopCriteria { max_new_tokens: 0, eos_token_ids: Vec::new(), ignore_eos: true };
        Sequence { hidden: Some(Vec::new()), ..Sequence::new(id, prompt, stop) }
    }

    /// Whether this is an embedding request (see [`Sequence::embedding`]).
    pub fn is_embedding(&self) -> bool {
        self.hidden.is_some()
    }

    /// Append the hidden states a step returned for this sequence's chunk.
    pub(crate) fn add_hidden(&mut self, rows: &[f32]) {
        if let Some(h) = &mut self.hidden {
            h.extend_from_slice(rows);
        }
    }

    /// An embedding's collected hidden states (empty for a generation).
    pub(crate) fn take_hidden(&mut self) -> Vec<f32> {
        self.hidden.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Choose tokens with `params` (default: greedy).
    pub fn with_sampling(mut self, params: SamplingParams) -> Self {
        self.sampling = Some(Box::new(params));
        self
    }

    /// The parameters for the runner, on the sequence's first step only.
    pub(crate) fn take_sampling(&mut self) -> Option<Box<SamplingParams>> {
        self.sampling.take()
    }

    /// Compute the prompt tokens' logprobs (`decoder_input_details`).
    pub fn with_prompt_logprobs(mut self) -> Self {
        self.prompt_logprobs = Some(Vec::new());
        self
    }

    /// The prompt logprobs, once all are known.
    pub fn prompt_logprobs(&self) -> Option<&[f32]> {
        self.prompt_logprobs.as_deref().filter(|v| v.len() + 1 == self.prompt_len)
    }

    /// The tokens whose logprobs a step running `start..start + n` should return:
    /// the prompt tokens that follow those positions, until all are known.
    pub fn logprob_targets(&self, start: usize, n: usize) -> Vec<TokenId> {
        match &self.prompt_logprobs {
            Some(v) if v.len() + 1 < self.prompt_len && start == v.len() => {
                self.tokens[start + 1..(start + n + 1).min(self.prompt_len)].to_vec()
            }
            _ => Vec::new(),
        }
    }

    pub(crate) fn add_prompt_logprobs(&mut self, lps: &[f32]) {
        if let Some(v) = &mut self.prompt_logprobs {
            v.extend_from_slice(lps);
        }
    }

    /// Share cached blocks only with requests that give the same `salt` (vLLM's
    /// `cache_salt`: a tenant's prefixes stay its own).
    pub fn with_cache_salt(mut self, salt: Option<String>) -> Self {
        self.cache_salt = salt.filter(|s| !s.is_empty());
        self
    }

    /// Whether the prefix cache may supply this sequence's first tokens: not when every
    /// prompt row must be computed for what it returns (an embedding's hidden states,
    /// prompt logprobs not yet complete).
    pub fn may_use_cached_prefix(&self) -> bool {
        !self.is_embedding()
            && self.prompt_logprobs.as_ref().is_none_or(|v| v.len() + 1 >= self.prompt_len)
    }

    /// The hashes of the first `n` full blocks of its tokens (`n * BLOCK_SIZE <= len`),
    /// chained by `blocks` and computed once.
    pub(crate) fn block_hashes(&mut self, n: usize, blocks: &BlockManager) -> &[BlockHash] {
        debug_assert!(n * BLOCK_SIZE <= self.len());
        while self.block_hashes.len() < n {
            let i = self.block_hashes.len();
            let parent = match i {
                0 => blocks.root(self.cache_salt.as_deref()),
                _ => self.block_hashes[i - 1],
            };
            let tokens = &self.tokens[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE];
            self.block_hashes.push(blocks.chain(&parent, tokens));
        }
        &self.block_hashes[..n]
    }

    /// Take `blocks`, matched in the prefix cache, as its first blocks: their tokens count
    /// as computed. The first time, they are the cached prompt tokens it reports.
    pub(crate) fn add_cached_blocks(&mut self, blocks: Vec<BlockId>) {
        debug_assert!(self.blocks.is_empty() && self.num_computed == 0);
        self.num_computed = blocks.len() * BLOCK_SIZE;
        debug_assert!(self.num_computed < self.len());
        self.cached_prompt_tokens.get_or_insert(self.num_computed.min(self.prompt_len));
        self.blocks = blocks;
    }

    /// Prompt tokens the prefix cache supplied when it was first admitted (0 before).
    pub fn cached_prompt_tokens(&self) -> usize {
        self.cached_prompt_tokens.unwrap_or(0)
    }

    /// Report the `n` most likely alternatives with each token.
    pub fn with_top_n(mut self, n: u32) -> Self {
        self.top_n = n;
        self
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    pub fn tokens(&self) -> &[TokenId] {
        &self.tokens
    }

    pub fn generated(&self) -> &[TokenId] {
        &self.tokens[self.prompt_len..]
    }

    pub fn num_computed(&self) -> usize {
        self.num_computed
    }

    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Tokens the next step(s) must still run.
    pub fn num_uncomputed(&self) -> usize {
        self.len() - self.num_computed
    }

    /// Whether only the last sampled token is left to run.
    pub fn is_decoding(&self) -> bool {
        self.num_uncomputed() == 1 && self.len() > self.prompt_len
    }

    /// Blocks missing to hold the first `tokens` tokens.
    pub fn blocks_needed(&self, tokens: usize) -> usize {
        blocks_for(tokens).saturating_sub(self.blocks.len())
    }

    pub(crate) fn add_blocks(&mut self, blocks: Vec<BlockId>) {
        self.blocks.extend(blocks);
        debug_assert!(self.blocks.len() * BLOCK_SIZE >= self.num_computed);
    }

    /// Mark `n` more tokens as cached (after a successful step).
    pub(crate) fn advance(&mut self, n: usize) {
        self.num_computed += n;
        debug_assert!(self.num_computed <= self.len());
    }

    pub(crate) fn push(&mut self, token: TokenId) {
        self.tokens.push(token);
    }

    /// Drop the cache: the blocks go back, everything will be recomputed.
    pub(crate) fn take_blocks(&mut self) -> Vec<BlockId> {
        self.num_computed = 0;
        // Incomplete prompt logprobs are recomputed from the start with the cache, and
        // so are an embedding's hidden states.
        if let Some(v) = &mut self.prompt_logprobs
            && v.len() + 1 < self.prompt_len
        {
            v.clear();
        }
        if let Some(h) = &mut self.hidden {
            h.clear();
        }
        std::mem::take(&mut self.blocks)
    }

    /// Whether the last token ends the sequence, and why.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        let last = self.generated().last()?;
        if !self.stop.ignore_eos && self.stop.eos_token_ids.contains(&last.0) {
            Some(FinishReason::EosToken)
        } else if self.generated().len() >= self.stop.max_new_tokens {
            Some(FinishReason::Length)
        } else {
            None
        }
    }
}
