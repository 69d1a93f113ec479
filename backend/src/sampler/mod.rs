//! [`Sampler`]: from a step's logits rows to each sequence's next token, with
//! TGI's logits processors and a seeded RNG per sequence.
//!
//! Per row: OpenAI's `logit_bias`, then in TGI's order: watermark → repetition penalty → frequency penalty
//! (TGI's, then OpenAI's presence and count penalties) → grammar mask →
//! temperature → top-k → top-p → typical-p → choice (argmax, or a draw). A
//! processor whose value is neutral is skipped, and a row nobody asked anything of
//! takes the greedy path: one max pass and one exponential pass, nothing else.
//! Rows are independent and run in parallel.
//!
//! What a sequence's parameters imply lives here, keyed by [`SeqId`], from its first
//! step until the batch releases it: the parameters, the token counts the penalties
//! need (counted by position, so a sequence recomputed after preemption is not
//! counted twice), the previous token (watermark) and the grammar matcher. The
//! random number for the token at position `p` is a hash of (seed, p) — a
//! counter-based stream, so a sequence draws the same numbers whatever else is in
//! its batch and however often it was preempted.
//!
//! The chosen token's logprob and the `top_n` alternatives are those of the
//! distribution it was drawn from (after every processor), as TGI reports them.
//! Grammar masks are computed by [`compute_masks`] while the forward pass runs
//! (see `Runner::step`); tokens a grammar forces afterwards are returned as
//! `forced` and cost no sampling.

mod device;
mod filters;
mod row;
pub mod watermark;

pub use device::{DeviceStep, sample_flat};

use std::collections::HashMap;

use rayon::prelude::*;
use rill_proto::{ConstraintState, SamplingParams, SeqId, SeqStep, TokenId};

use crate::sampling::uniform;
use filters::Dist;
use row::BlockSums;

/// What one sampling sequence got.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub token: TokenId,
    pub logprob: f32,
    pub top: Vec<(TokenId, f32)>,
    pub forced: Vec<TokenId>,
}

/// One sequence's sampling state.
#[derive(Debug)]
struct SeqState {
    params: SamplingParams,
    /// Tokens at positions below this have been counted.
    seen: usize,
    /// Occurrences in prompt and output (TGI's penalties), when a penalty needs them.
    counts: Option<HashMap<u32, u32>>,
    /// Occurrences in the output (OpenAI's penalties), when a penalty needs them.
    generated: Option<HashMap<u32, u32>>,
    /// The watermark key of the token before the one to choose (with the watermark on).
    last_key: Option<u32>,
    grammar: Option<Box<dyn ConstraintState>>,
}

impl SeqState {
    fn new(params: SamplingParams) -> Self {
        let tgi = params.repetition_penalty != 1.0 || params.frequency_penalty != 0.0;
        let openai = params.presence_penalty != 0.0 || params.count_penalty != 0.0;
        let grammar = params.grammar.as_ref().map(|g| g.0.start());
        SeqState {
            counts: tgi.then(HashMap::new),
            generated: openai.then(HashMap::new),
            seen: 0,
            last_key: None,
            grammar,
            params,
        }
    }

    /// Count the step's new tokens (positions not seen before).
    fn observe(&mut self, step: &SeqStep) {
        let end = step.end_pos();
        if let Some(counts) = &mut self.counts {
            let from = self.seen.max(step.start_pos) - step.start_pos;
            for t in step.tokens.iter().skip(from) {
                *counts.entry(t.0).or_default() += 1;
            }
        }
        self.seen = self.seen.max(end);
        if self.params.watermark {
            self.last_key = step.tokens.last().copied().map(watermark::key);
        }
    }

    /// Count the tokens before a first step's `start_pos` that the step does not run
    /// (a cached prefix: [`SeqStep::prefix`]).
    fn observe_prefix(&mut self, prefix: &[TokenId]) {
        if let Some(counts) = &mut self.counts {
            for t in prefix {
                *counts.entry(t.0).or_default() += 1;
            }
        }
        self.seen = self.seen.max(prefix.len());
    }

    fn record_output(&mut self, tokens: impl IntoIterator<Item = TokenId>) {
        if let Some(g) = &mut self.generated {
            for t in tokens {
                *g.entry(t.0).or_default() += 1;
            }
        }
    }
}

/// A grammar mask being computed for one sequence, away from the sampler.
#[derive(Debug)]
pub struct MaskJob {
    id: SeqId,
    state: Box<dyn ConstraintState>,
    mask: Vec<u32>,
    result: Result<(), String>,
}

impl MaskJob {
    /// The sequence whose mask this is.
    pub fn id(&self) -> SeqId {
        self.id
    }
}

/// Fill every job's mask (on whatever thread calls it).
pub fn compute_masks(jobs: &mut [MaskJob]) {
    for job in jobs {
        job.result = job.state.fill_mask(&mut job.mask);
    }
}

/// Per-sequence sampling state and the step's choice of tokens.
#[derive(Debug)]
pub struct Sampler {
    vocab: usize,
    states: HashMap<SeqId, SeqState>,
}

/// A sampling row's inputs, gathered so rows can run in parallel.
struct Work<'a> {
    id: SeqId,
    row: &'a mut [f32],
    state: Option<SeqState>,
    mask: Option<MaskJob>,
    pos: usize,
    top_n: usize,
    out: Result<Choice, String>,
}

impl Sampler {
    pub fn new(vocab: usize) -> Self {
        Sampler { vocab, states: HashMap::new() }
    }

    /// Sequences with state (tests, invariants).
    pub fn num_sequences(&self) -> usize {
        self.states.len()
    }

    /// Forget sequences that ended.
    pub fn release(&mut self, ids: &[SeqId]) {
        for id in ids {
            self.states.remove(id);
        }
    }

    /// Before the forward pass: drop released sequences, take new sequences'
    /// parameters, count the step's tokens.
    pub fn prepare(&mut self, batch: &rill_proto::ForwardBatch) {
        self.release(&batch.released);
        for step in &batch.seqs {
            if let Some(params) = &step.sampling
                && !self.states.contains_key(&step.id)
                && !params.is_greedy()
            {
                let mut state = SeqState::new((**params).clone());
                state.observe_prefix(&step.prefix);
                self.states.insert(step.id, state);
            }
            if let Some(state) = self.states.get_mut(&step.id) {
                state.observe(step);
            }
        }
    }

    /// Whether this sequence's row needs the host's processors (one a device sampler
    /// lacks: `logit_bias`). It depends on the sequence alone, so where a row is sampled
    /// never depends on its neighbours (and the contract makes it the same token anyway).
    pub fn needs_host(&self, seq: &SeqStep) -> bool {
        let params = self.states.get(&seq.id).map(|st| &st.params);
        params.is_some_and(|p| !p.logit_bias.is_empty())
    }

    /// Take the grammar matchers of the sequences that sample this step, to
    /// compute their masks while the forward pass runs; hand them back to
    /// [`Sampler::sample`].
    pub fn take_mask_jobs(&mut self, batch: &rill_proto::ForwardBatch) -> Vec<MaskJob> {
        let words = self.vocab.div_ceil(32);
        batch
            .seqs
            .iter()
            .filter(|s| s.sample)
            .filter_map(|s| {
                let state = self.states.get_mut(&s.id)?.grammar.take()?;
                Some(MaskJob { id: s.id, state, mask: vec![0; words], result: Ok(()) })
            })
            .collect()
    }

    /// Choose the next token of every sequence in `rows` (`(step, logits row)` for
    /// each sampling sequence, in batch order). Rows are processed in place.
    pub fn sample(
        &mut self,
        rows: Vec<(&SeqStep, &mut [f32])>,
        masks: Vec<MaskJob>,
    ) -> Vec<(SeqId, Result<Choice, String>)> {
        let mut masks: HashMap<SeqId, MaskJob> = masks.into_iter().map(|m| (m.id, m)).collect();
        let mut work: Vec<Work<'_>> = rows
            .into_iter()
            .map(|(step, row)| Work {
                id: step.id,
                row,
                state: self.states.remove(&step.id),
                mask: masks.remove(&step.id),
                pos: step.end_pos(),
                top_n: step.top_n as usize,
                out: Err(String::new()),
            })
            .collect();
        work.par_iter_mut().for_each(|w| {
            w.out = match &mut w.state {
                None => Ok(greedy(w.row, w.top_n)),
                Some(state) => {
                    let mask = w.mask.as_mut().map(|m| std::mem::replace(&mut m.result, Ok(())));
                    match mask {
                        Some(Err(e)) => Err(format!("grammar: {e}")),
                        _ => choose(
                            state,
                            w.row,
                            w.mask.as_ref().map(|m| &m.mask[..]),
                            w.pos,
                            w.top_n,
                        ),
                    }
                }
            };
            if let Some(job) = w.mask.as_mut() {
                commit_grammar(job, &mut w.out);
            }
        });
        let mut out = Vec::with_capacity(work.len());
        for mut w in work {
            self.put_back(w.id, w.state.take(), w.mask.take(), Some(&w.out));
            out.push((w.id, w.out));
        }
        self.restore(masks.into_values());
        out
    }

    /// Put a row's state back after its step: its matcher (already past the choice),
    /// its output counts grown by the choice. `None`: the step failed before choosing,
    /// and the state goes back as it was.
    fn put_back(
        &mut self,
        id: SeqId,
        state: Option<SeqState>,
        job: Option<MaskJob>,
        choice: Option<&Result<Choice, String>>,
    ) {
        if let Some(mut state) = state {
            if let Some(job) = job {
                state.grammar = Some(job.state);
            }
            if let Some(Ok(c)) = choice {
                state.record_output(std::iter::once(c.token).chain(c.forced.iter().copied()));
            }
            self.states.insert(id, state);
        }
    }

    /// Matchers of sequences that did not reach sampling go back as they were.
    fn restore(&mut self, masks: impl IntoIterator<Item = MaskJob>) {
        for job in masks {
            if let Some(s) = self.states.get_mut(&job.id) {
                s.grammar = Some(job.state);
            }
        }
    }
}

/// The grammar advances past what was chosen, then offers what it forces.
fn commit_grammar(job: &mut MaskJob, choice: &mut Result<Choice, String>) {
    if let Ok(c) = choice {
        let forced = job
            .state
            .commit(c.token)
            .and_then(|()| job.state.take_forced())
            .map_err(|e| format!("grammar: {e}"));
        match forced {
            Ok(f) => c.forced = f,
            Err(e) => *choice = Err(e),
        }
    }
}

/// The most likely token of an untouched row.
fn greedy(row: &mut [f32], top_n: usize) -> Choice {
    let sums = full_sums(row).unwrap_or_else(|_| BlockSums::of(row));
    finish(row, Some(&sums), Dist::Full, None, top_n)
}

/// The sums of a whole row, made usable if it holds NaN or +∞; an error if no
/// token has any probability left.
fn full_sums(row: &mut [f32]) -> Result<BlockSums, String> {
    let mut sums = BlockSums::of(row);
    let sane = |s: &BlockSums| s.max.is_finite() && s.total.is_finite() && s.total > 0.0;
    if !sane(&sums) {
        sanitize(row);
        sums.compute(row);
        if !sane(&sums) {
            return Err("no token is allowed here (every logit is -inf or NaN)".into());
        }
    }
    Ok(sums)
}

/// Make a broken row usable: NaN becomes -∞; if any logit is +∞, those tokens
/// share all the probability.
fn sanitize(row: &mut [f32]) {
    let any_inf = row.contains(&f32::INFINITY);
    for v in row.iter_mut() {
        *v = match *v {
            f32::INFINITY => 0.0,
            x if x.is_nan() || any_inf => f32::NEG_INFINITY,
            x => x,
        };
    }
}

/// Every processor the sequence asked for, then the choice.
///
/// The row is touched in place only where the processors need it. A grammar mask
/// that allows few tokens (the usual case inside JSON structure) turns the row
/// into a short candidate list at once, and nothing after it reads the whole row;
/// top-k selects on the unscaled row (temperature keeps the order) and scales only
/// what it kept.
fn choose(
    st: &mut SeqState,
    row: &mut [f32],
    mask: Option<&[u32]>,
    pos: usize,
    top_n: usize,
) -> Result<Choice, String> {
    let p = &st.params;
    let vocab = row.len();
    let sparse = mask.filter(|m| {
        let allowed: u32 = m.iter().map(|w| w.count_ones()).sum();
        (allowed as usize) <= vocab / 16
    });
    for &(t, bias) in &p.logit_bias {
        if let Some(v) = row.get_mut(t as usize) {
            *v += bias;
        }
    }
    if p.watermark
        && let Some(key) = st.last_key
    {
        match sparse {
            Some(m) => for_each_allowed(m, vocab, |t| {
                if watermark::is_green(key, t as u32) {
                    row[t] += watermark::DELTA;
                }
            }),
            None => row::add_green(row, key, watermark::DELTA),
        }
    }
    if let Some(counts) = &st.counts {
        if p.repetition_penalty != 1.0 {
            let rp = p.repetition_penalty;
            for &t in counts.keys() {
                let v = &mut row[t as usize];
                *v = if *v < 0.0 { *v * rp } else { *v / rp };
            }
        }
        if p.frequency_penalty != 0.0 {
            let per = p.frequency_penalty / st.seen.max(1) as f32;
            for (&t, &c) in counts {
                row[t as usize] -= c as f32 * per;
            }
        }
    }
    if let Some(generated) = &st.generated {
        for (&t, &c) in generated {
            row[t as usize] -= p.presence_penalty + c as f32 * p.count_penalty;
        }
    }
    let mut dist = match (sparse, mask) {
        (Some(m), _) => {
            let mut c = Vec::new();
            for_each_allowed(m, vocab, |t| c.push((t as u32, row[t])));
            Dist::Cands(filters::sorted(c))
        }
        (None, Some(m)) => {
            apply_mask(row, m);
            Dist::Full
        }
        (None, None) => Dist::Full,
    };
    if p.top_k > 0 {
        dist = filters::top_k(dist, row, p.top_k as usize);
    }
    if p.temperature != 1.0 {
        match &mut dist {
            Dist::Cands(c) => c.iter_mut().for_each(|x| x.1 /= p.temperature),
            Dist::Full => row::scale(row, p.temperature),
        }
    }
    let sums = match &mut dist {
        Dist::Full => Some(full_sums(row)?),
        Dist::Cands(c) => {
            filters::sanitize(c);
            if c.is_empty() {
                return Err("no token is allowed here (every logit is -inf or NaN)".into());
            }
            None
        }
    };
    if p.top_p < 1.0 {
        dist = filters::top_p(dist, row, sums.as_ref(), p.top_p);
    }
    if p.typical_p < 1.0 {
        dist = filters::typical(dist, row, p.typical_p);
    }
    let u = p.samples().then(|| uniform(p.seed, pos));
    Ok(finish(row, sums.as_ref(), dist, u, top_n))
}

/// Pick from the final distribution (argmax, or the draw `u`) and report.
/// `sums` are the row's when the distribution is the whole row.
fn finish(
    row: &[f32],
    sums: Option<&BlockSums>,
    dist: Dist,
    u: Option<f64>,
    top_n: usize,
) -> Choice {
    let (token, logit, log_z, top) = match dist {
        Dist::Full => {
            let sums = sums.expect("a whole-row distribution comes with its sums");
            let token = match u {
                Some(u) => sums.draw(row, u),
                None => sums.argmax(),
            };
            let top = row::top_entries(row, top_n, false);
            (token, row[token as usize], sums.log_z(), top)
        }
        Dist::Cands(c) => {
            let m = c[0].1;
            let mut weights = Vec::with_capacity(c.len());
            row::weights(&c, m, &mut weights);
            let total: f64 = weights.iter().sum();
            let i = match u {
                None => 0,
                // The inverse CDF in token-id order, as over a whole row.
                Some(u) => {
                    let target = u * total;
                    let mut by_id: Vec<usize> = (0..c.len()).collect();
                    by_id.sort_unstable_by_key(|&i| c[i].0);
                    let mut cum = 0.0;
                    let last = by_id[by_id.len() - 1];
                    by_id
                        .into_iter()
                        .find(|&i| {
                            cum += weights[i];
                            cum > target
                        })
                        .unwrap_or(last)
                }
            };
            let log_z = m + total.ln() as f32;
            (c[i].0, c[i].1, log_z, c.into_iter().take(top_n).collect())
        }
    };
    Choice {
        token: TokenId(token),
        logprob: logit - log_z,
        top: top
            .into_iter()
            .filter(|&(_, l)| l > f32::NEG_INFINITY)
            .map(|(t, l)| (TokenId(t), l - log_z))
            .collect(),
        forced: Vec::new(),
    }
}

/// Call `f` with every token a mask allows, below `vocab`.
fn for_each_allowed(mask: &[u32], vocab: usize, f: impl FnMut(usize)) {
    rill_proto::allowed_tokens(mask).map(|t| t as usize).take_while(|&t| t < vocab).for_each(f);
}

/// -∞ for every token the grammar forbids (and for padding past the mask).
fn apply_mask(row: &mut [f32], mask: &[u32]) {
    for (w, chunk) in row.chunks_mut(32).enumerate() {
        let bits = mask.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            continue;
        }
        for (b, v) in chunk.iter_mut().enumerate() {
            if bits >> b & 1 == 0 {
                *v = f32::NEG_INFINITY;
            }
        }
    }
}

/// The logprob of `token` under a raw logits row (prompt logprobs).
pub fn logprob(row: &[f32], token: TokenId) -> f32 {
    row[token.index()] - BlockSums::of(row).log_z()
}

#[cfg(test)]
mod tests;
