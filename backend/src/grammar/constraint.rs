//! [`LlgConstraint`] (a compiled grammar, shared) and [`LlgState`] (one sequence's
//! place in it): llguidance's `Matcher` behind Rill's [`Constraint`] /
//! [`ConstraintState`] contract.
//!
//! Every sequence's matcher is a shallow clone of the compiled one, so all sequences of
//! a grammar share its lazily built lexer (DFA states computed once, behind
//! llguidance's own lock) while each keeps its own Earley parser state.

use std::fmt;

use llguidance::Matcher;
use rill_proto::{Constraint, ConstraintState, TokenId};

/// A compiled grammar: the matcher at the start of the output, already past its first
/// mask (so every sequence starts with that mask cached).
pub(super) struct LlgConstraint {
    pub(super) matcher: Matcher,
    pub(super) masks: MaskShape,
    /// Every EOS id (raw, as llguidance numbers tokens).
    pub(super) eos: Vec<u32>,
    /// What was compiled, for `Debug` ("json schema", "regex").
    pub(super) kind: &'static str,
}

impl fmt::Debug for LlgConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlgConstraint")
            .field("kind", &self.kind)
            .field("vocab_size", &self.masks.vocab_size)
            .finish_non_exhaustive()
    }
}

impl Constraint for LlgConstraint {
    fn start(&self) -> Box<dyn ConstraintState> {
        Box::new(LlgState {
            matcher: self.matcher.clone(),
            masks: self.masks,
            eos: self.eos.clone(),
            committed: 0,
        })
    }
}

/// Where one sequence is in its grammar.
pub(super) struct LlgState {
    matcher: Matcher,
    masks: MaskShape,
    eos: Vec<u32>,
    committed: usize,
}

impl fmt::Debug for LlgState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlgState")
            .field("committed", &self.committed)
            .field("stopped", &self.matcher.is_stopped())
            .field("error", &self.matcher.get_error())
            .finish()
    }
}

impl LlgState {
    /// The matcher's error, if it has one (limits exceeded, a token it refused).
    fn check(&self) -> Result<(), String> {
        match self.matcher.get_error() {
            Some(e) => Err(message(e)),
            None => Ok(()),
        }
    }
}

/// llguidance's message without the marker it appends where it leaves out its state
/// dump (`verbose_errors` is off).
pub(super) fn message(e: impl fmt::Display) -> String {
    let e = e.to_string();
    e.trim_end().trim_end_matches("<non-verbose/>").trim_end().to_string()
}

impl ConstraintState for LlgState {
    fn fill_mask(&mut self, mask: &mut [u32]) -> Result<(), String> {
        // Once stopped (grammar complete or EOS taken) llguidance answers the EOS set.
        let allowed = self.matcher.compute_mask_or_eos().map_err(message)?;
        self.masks.copy(allowed.as_slice(), mask)
    }

    fn commit(&mut self, token: TokenId) -> Result<(), String> {
        let token = token.0;
        self.check()?;
        if self.matcher.is_stopped() {
            // A finished grammar allows only EOS, and a stopped llguidance parser refuses
            // every token, EOS included: accept it here.
            return if self.eos.contains(&token) {
                Ok(())
            } else {
                Err(format!("token {token} after the grammar finished; only EOS is allowed"))
            };
        }
        self.matcher.consume_token(token).map_err(message)?;
        self.committed += 1;
        Ok(())
    }

    fn take_forced(&mut self) -> Result<Vec<TokenId>, String> {
        self.check()?;
        if self.matcher.is_stopped() {
            return Ok(Vec::new());
        }
        // `compute_ff_tokens` hides failures behind an empty list: ask for the error.
        let mut forced = self.matcher.compute_ff_tokens();
        self.check()?;
        // Never EOS (the sampler decides to stop) nor a token the model cannot embed.
        if let Some(end) =
            forced.iter().position(|t| self.eos.contains(t) || *t >= self.masks.vocab_size)
        {
            forced.truncate(end);
        }
        if !forced.is_empty() {
            self.matcher.consume_tokens(&forced).map_err(message)?;
            self.committed += forced.len();
        }
        Ok(forced.into_iter().map(TokenId).collect())
    }
}

/// How llguidance's token set (one bit per token of the tokenizer's trie) maps onto
/// Rill's mask (one bit per row of the model's embedding). The two vocabularies differ
/// in either direction: models pad their embedding past the tokenizer (padding rows
/// are never allowed), and a few tokenizers list tokens past the embedding.
#[derive(Clone, Copy, Debug)]
pub(super) struct MaskShape {
    /// The model's vocabulary: the mask needs `vocab_size.div_ceil(32)` words.
    pub(super) vocab_size: u32,
    /// Tokens that may be allowed: `min(model vocab, trie vocab)`.
    pub(super) limit: usize,
}

impl MaskShape {
    pub(super) fn new(model_vocab: usize, trie_vocab: usize) -> Self {
        MaskShape {
            vocab_size: u32::try_from(model_vocab).unwrap_or(u32::MAX),
            limit: model_vocab.min(trie_vocab),
        }
    }

    /// Word copy of the allowed set, then zeros: no per-token loop on the hot path.
    fn copy(&self, allowed: &[u32], mask: &mut [u32]) -> Result<(), String> {
        let need = (self.vocab_size as usize).div_ceil(32);
        if mask.len() < need {
            return Err(format!(
                "token mask has {} words; a vocabulary of {} needs {need}",
                mask.len(),
                self.vocab_size
            ));
        }
        let words = self.limit.div_ceil(32).min(allowed.len());
        mask[..words].copy_from_slice(&allowed[..words]);
        mask[words..].fill(0);
        let tail = self.limit % 32;
        if tail != 0 && words == self.limit.div_ceil(32) {
            mask[words - 1] &= (1u32 << tail) - 1;
        }
        Ok(())
    }
}
