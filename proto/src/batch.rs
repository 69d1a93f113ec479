//! One engine step: what to run ([`ForwardBatch`]) and what came out ([`StepOutput`]).
//!
//! Within a step, each layer writes the K/V of every sequence's new tokens before any
//! sequence's attention reads that layer: a sequence may attend to positions that
//! another sequence of the same step writes (blocks shared through the prefix cache).

use crate::{BlockId, SamplingParams, SeqId, TokenId};

/// The work for one sequence in one step: a prefill chunk or a single decode token.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqStep {
    pub id: SeqId,
    /// The new tokens to run: a chunk of the prompt, or the last sampled token.
    pub tokens: Vec<TokenId>,
    /// Position of `tokens[0]`; everything before it is already in the KV cache.
    pub start_pos: usize,
    /// Blocks holding positions `0..start_pos + tokens.len()`, in order.
    pub block_table: Vec<BlockId>,
    /// Whether to compute logits after the last token and choose the next one.
    /// False for every prefill chunk but the last.
    pub sample: bool,
    /// Also return this many most likely tokens with their logprobs (TGI's
    /// `top_n_tokens`; 0 = none).
    pub top_n: u32,
    /// Prompt logprobs (`decoder_input_details`): the i-th entry is the token that
    /// follows `tokens[i]`, whose logprob given everything up to `tokens[i]` the
    /// step returns in [`StepOutput::prompt_logprobs`]. At most `tokens.len()`.
    pub logprob_targets: Vec<TokenId>,
    /// How to choose tokens: sent once, on the sequence's first step; the runner
    /// keeps it (and the state it implies) until the sequence is released. A
    /// sequence the runner has never seen parameters for is greedy.
    pub sampling: Option<Box<SamplingParams>>,
    /// With `sampling`, on a first step that starts after a prefix whose K/V another
    /// sequence computed (the prefix cache): the tokens at positions `0..start_pos`, when
    /// the parameters count prompt tokens ([`SamplingParams::counts_prompt_tokens`]), so the
    /// sampler counts them as if it had seen them run. Empty otherwise.
    pub prefix: Vec<TokenId>,
    /// Return the final-norm hidden states of every row of `tokens` in
    /// [`StepOutput::hidden`] (an embedding request: every chunk of its prompt sets it).
    /// Such a step never samples: `sample` is false, and it has no `logprob_targets` and
    /// no `sampling`.
    pub hidden: bool,
}

impl SeqStep {
    /// A step of `tokens` from `start_pos` over `block_table` that chooses the next token
    /// with the sequence's parameters (greedy when it has none) and asks for nothing
    /// else; other steps set their fields over it (`SeqStep { top_n: 2, ..base }`).
    pub fn new(
        id: SeqId,
        tokens: Vec<TokenId>,
        start_pos: usize,
        block_table: Vec<BlockId>,
    ) -> SeqStep {
        SeqStep {
            id,
            tokens,
            start_pos,
            block_table,
            sample: true,
            top_n: 0,
            logprob_targets: Vec::new(),
            sampling: None,
            prefix: Vec::new(),
            hidden: false,
        }
    }

    /// One past the last position written by this step.
    pub fn end_pos(&self) -> usize {
        self.start_pos + self.tokens.len()
    }
}

/// Everything one forward pass runs: prefill chunks and decode tokens of
/// different sequences, mixed freely.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ForwardBatch {
    pub seqs: Vec<SeqStep>,
    /// Sequences that finished or were cancelled since the last step; the
    /// runner drops any per-sequence state it holds for them.
    pub released: Vec<SeqId>,
    /// Return the full logits row of every sampling sequence (tests, logprob
    /// tooling). Costs a vocabulary-sized copy per sequence.
    pub return_logits: bool,
}

impl ForwardBatch {
    /// Total new tokens in the step (the budget the scheduler spends).
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }
}

/// The token chosen for one sampling sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledToken {
    pub id: SeqId,
    pub token: TokenId,
    /// Natural-log probability of `token` under the distribution it was drawn
    /// from: the model's, after the sequence's logits processors (TGI's report).
    pub logprob: f32,
    /// The `top_n` most likely tokens of that distribution with their logprobs,
    /// most likely first.
    pub top: Vec<(TokenId, f32)>,
    /// Tokens the sequence's grammar forces after `token`, already committed:
    /// they follow without sampling (probability 1 under the constraint).
    pub forced: Vec<TokenId>,
    /// The full logits row, when the batch asked for it.
    pub logits: Option<Vec<f32>>,
}

/// The answer to one [`ForwardBatch`]: one entry per sequence that had
/// `sample == true`, in batch order, and the hidden states of those with `hidden`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutput {
    pub sampled: Vec<SampledToken>,
    /// For each sequence with `logprob_targets`, their logprobs, in order.
    pub prompt_logprobs: Vec<(SeqId, Vec<f32>)>,
    /// Sequences that could not choose a token (their grammar failed); the rest of
    /// the step is valid. They should be ended and released.
    pub failed: Vec<(SeqId, String)>,
    /// For each sequence with `hidden`, in batch order: the final-norm hidden states of
    /// its rows, `[tokens.len(), hidden_size]` row-major.
    pub hidden: Vec<(SeqId, Vec<f32>)>,
}
