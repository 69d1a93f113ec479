//! How a sequence chooses its tokens: [`SamplingParams`] (TGI's parameters,
//! normalised so that every processor has one neutral value meaning "off") and the
//! [`Constraint`] a grammar compiles to.
//!
//! Parameters travel in a sequence's first [`crate::SeqStep`]; the backend keeps the
//! state they imply (RNG position, token counts, grammar matcher) per sequence until
//! the sequence is released, so preemption and recompute do not disturb it.

use std::fmt;
use std::sync::Arc;

use crate::TokenId;

/// One sequence's sampling parameters. `SamplingParams::default()` is greedy with
/// every processor off.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Draw from the distribution (false: take its most likely token). TGI samples
    /// when `do_sample` is set or any of temperature/top_k/top_p/typical_p is.
    pub do_sample: bool,
    /// Divides the logits; 1.0 = off.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: u32,
    /// Keep the smallest most-likely set with this much probability; 1.0 = off.
    pub top_p: f32,
    /// Typical sampling's mass (Meister et al.); 1.0 = off.
    pub typical_p: f32,
    /// Over prompt and generated tokens: positive logits divided by it, negative
    /// ones multiplied; 1.0 = off.
    pub repetition_penalty: f32,
    /// TGI's: subtract `count / length * penalty` for every token seen in prompt and
    /// output; 0.0 = off.
    pub frequency_penalty: f32,
    /// OpenAI's: subtract `penalty` from every token generated at least once; 0.0 = off.
    pub presence_penalty: f32,
    /// OpenAI's: subtract `count * penalty` for every generated token; 0.0 = off.
    pub count_penalty: f32,
    /// OpenAI's `logit_bias`: added to these tokens' logits before every other
    /// processor; empty = off.
    pub logit_bias: Vec<(u32, f32)>,
    /// Kirchenbauer et al.'s green-list watermark (γ = 0.5, δ = 2.0).
    pub watermark: bool,
    /// The sequence's RNG stream; the router picks one when the request has none.
    pub seed: u64,
    /// Only tokens this grammar allows; EOS only where it accepts.
    pub grammar: Option<Grammar>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            do_sample: false,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            typical_p: 1.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            count_penalty: 0.0,
            logit_bias: Vec::new(),
            watermark: false,
            seed: 0,
            grammar: None,
        }
    }
}

impl SamplingParams {
    /// Whether the next token is drawn at random (TGI: `do_sample` or any warper).
    pub fn samples(&self) -> bool {
        self.do_sample
            || self.temperature != 1.0
            || self.top_k != 0
            || self.top_p < 1.0
            || self.typical_p < 1.0
    }

    /// Whether any processor would change the logits (false: plain greedy).
    pub fn is_greedy(&self) -> bool {
        !self.samples()
            && self.repetition_penalty == 1.0
            && self.frequency_penalty == 0.0
            && self.presence_penalty == 0.0
            && self.count_penalty == 0.0
            && self.logit_bias.is_empty()
            && !self.watermark
            && self.grammar.is_none()
    }

    /// Whether a processor counts the prompt's tokens (TGI's repetition and frequency
    /// penalties), so the sampler must see every one of them.
    pub fn counts_prompt_tokens(&self) -> bool {
        self.repetition_penalty != 1.0 || self.frequency_penalty != 0.0
    }
}

/// A compiled grammar, shared by every sequence that uses it.
#[derive(Clone)]
pub struct Grammar(pub Arc<dyn Constraint>);

impl PartialEq for Grammar {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Grammar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A compiled constraint on which tokens may follow (a JSON schema or a regex).
/// Compiling happens before a request is queued; each sequence then runs its own
/// [`ConstraintState`].
pub trait Constraint: Send + Sync + fmt::Debug {
    /// A matcher at the start of the output.
    fn start(&self) -> Box<dyn ConstraintState>;
}

/// The tokens a mask (as [`ConstraintState::fill_mask`] writes it) allows, in
/// increasing order.
pub fn allowed_tokens(mask: &[u32]) -> impl Iterator<Item = u32> + '_ {
    mask.iter().enumerate().flat_map(|(w, &word)| {
        let mut bits = word;
        std::iter::from_fn(move || {
            (bits != 0).then(|| {
                let t = w as u32 * 32 + bits.trailing_zeros();
                bits &= bits - 1;
                t
            })
        })
    })
}

/// Where one sequence is in its grammar.
pub trait ConstraintState: Send + fmt::Debug {
    /// Set bit `t` (`mask[t / 32] >> (t % 32) & 1`) for every token `t` that may come
    /// next, clearing all others. EOS is allowed only where the grammar accepts; once
    /// the grammar is finished only EOS is. `mask` holds at least `vocab / 32` words.
    /// An error (the grammar's limits exceeded) ends the sequence.
    fn fill_mask(&mut self, mask: &mut [u32]) -> Result<(), String>;
    /// Advance past `token`, which the last mask allowed.
    fn commit(&mut self, token: TokenId) -> Result<(), String>;
    /// Tokens the grammar now forces, in order (safe to append without sampling);
    /// they are committed by this call.
    fn take_forced(&mut self) -> Result<Vec<TokenId>, String>;
}
