//! Scheduler tests against a fake runner that checks every cache slot it reads.

use super::*;
use crate::sequence::StopCriteria;
use rill_proto::{SampledToken, SamplingParams};
use std::collections::HashMap;

/// A stand-in for the runner that checks the scheduler's bookkeeping: it keeps
/// what each cache slot holds and verifies that every sequence finds, at every position
/// its block table maps, exactly its own token there (the truth is the scheduler's own
/// record of the sequence), whoever wrote it — another sequence's shared prefix block
/// included. Like a model, a step writes every sequence's slots before any sequence reads
/// (so a sequence may read what another of the same step writes). It samples a token that
/// is a hash of the whole sequence read from the cache (so recompute and cache hits must
/// reproduce it); a row whose hidden state is asked for gets the hash of the sequence up to
/// it, read the same way.
#[derive(Default)]
struct FakeRunner {
    slots: HashMap<usize, (usize, TokenId)>,
    steps: usize,
    /// Tokens to report as forced after a sequence's next sampled token.
    forced: HashMap<SeqId, Vec<TokenId>>,
    /// Sequences to report as failed in the next step.
    fail: std::collections::HashSet<SeqId>,
    /// Per sequence, the `prefix` its first step carried (penalty counts).
    prefixes: HashMap<SeqId, Vec<TokenId>>,
}

/// The token (or hidden "state") a hash of `tokens` gives.
fn hash(tokens: impl IntoIterator<Item = TokenId>) -> u32 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for t in tokens {
        h = (h ^ t.0 as u64).wrapping_mul(0x100_0000_01b3);
    }
    (h % 1000) as u32 + 10
}

fn slot(s: &rill_proto::SeqStep, pos: usize) -> usize {
    s.block_table[pos / BLOCK_SIZE].index() * BLOCK_SIZE + pos % BLOCK_SIZE
}

impl FakeRunner {
    /// The tokens at positions `0..end` of `s`, read from the cache, checking each slot
    /// holds the sequence's own token at that position.
    fn cached(&self, s: &rill_proto::SeqStep, end: usize, truth: &[TokenId]) -> Vec<TokenId> {
        (0..end)
            .map(|pos| {
                let (p, t) = self.slots[&slot(s, pos)];
                assert_eq!((p, t), (pos, truth[pos]), "{}: slot {} is wrong", s.id, slot(s, pos));
                t
            })
            .collect()
    }

    /// Run `batch`; `truth` is the scheduler that built it (each sequence's tokens).
    fn step(&mut self, batch: &ForwardBatch, truth: &Scheduler) -> StepOutput {
        self.steps += 1;
        for s in &batch.seqs {
            for (j, t) in s.tokens.iter().enumerate() {
                self.slots.insert(slot(s, s.start_pos + j), (s.start_pos + j, *t));
            }
        }
        let mut sampled = Vec::new();
        let mut hidden = Vec::new();
        for s in &batch.seqs {
            let tokens = truth.get(s.id).expect("a batch runs known sequences").tokens();
            assert_eq!(s.tokens, tokens[s.start_pos..s.end_pos()], "{} runs other tokens", s.id);
            if s.sampling.is_some() {
                if !s.prefix.is_empty() {
                    assert_eq!(s.prefix, tokens[..s.start_pos], "{}: prefix", s.id);
                }
                self.prefixes.insert(s.id, s.prefix.clone());
            }
            if s.hidden {
                assert!(!s.sample && s.sampling.is_none() && s.logprob_targets.is_empty());
                let rows =
                    (s.start_pos..s.end_pos()).map(|p| hash(self.cached(s, p + 1, tokens)) as f32);
                hidden.push((s.id, rows.collect()));
            }
            if s.sample {
                sampled.push(SampledToken {
                    id: s.id,
                    token: TokenId(hash(self.cached(s, s.end_pos(), tokens))),
                    logprob: -1.0,
                    top: Vec::new(),
                    forced: self.forced.remove(&s.id).unwrap_or_default(),
                    logits: None,
                });
            }
        }
        // A prompt token's "logprob" here is minus its id, so tests can check targets.
        let prompt_logprobs = batch
            .seqs
            .iter()
            .filter(|s| !s.logprob_targets.is_empty())
            .map(|s| (s.id, s.logprob_targets.iter().map(|t| -(t.0 as f32)).collect()))
            .collect();
        let failed = self.fail.drain().map(|id| (id, "grammar failed".to_string())).collect();
        StepOutput { sampled, prompt_logprobs, failed, hidden }
    }
}

fn seq(id: u64, prompt_len: usize, max_new_tokens: usize) -> Sequence {
    let prompt = (0..prompt_len as u32).map(|t| TokenId(t * 7 + id as u32)).collect();
    Sequence::new(
        SeqId(id),
        prompt,
        StopCriteria { max_new_tokens, eos_token_ids: vec![3], ignore_eos: false },
    )
}

fn config(max_batch_tokens: usize) -> SchedulerConfig {
    SchedulerConfig { max_batch_tokens, max_batch_size: 64, prefix_caching: false }
}

/// An embedding request for a prompt like `seq`'s.
fn embedding(id: u64, prompt_len: usize) -> Sequence {
    let prompt = (0..prompt_len as u32).map(|t| TokenId(t * 7 + id as u32)).collect();
    Sequence::embedding(SeqId(id), prompt)
}

/// What the fake runner's hidden rows for `seq`'s whole prompt are.
fn expected_hidden(seq: &Sequence) -> Vec<u32> {
    (1..=seq.prompt_len()).map(|n| hash(seq.tokens()[..n].iter().copied())).collect()
}

/// Run until idle; every sequence's generated tokens (an embedding's hidden rows), by id.
fn run(s: &mut Scheduler, runner: &mut FakeRunner) -> HashMap<SeqId, Vec<u32>> {
    let mut out: HashMap<SeqId, Vec<u32>> = HashMap::new();
    for _ in 0..10_000 {
        if s.is_idle() {
            assert_eq!(s.blocks().num_used(), 0, "idle but holding blocks");
            return out;
        }
        let batch = s.schedule();
        assert!(!batch.seqs.is_empty(), "no progress");
        assert!(batch.num_tokens() <= s.config.max_batch_tokens);
        for u in s.update(&runner.step(&batch, s)) {
            out.entry(u.id).or_default().push(u.token.0);
        }
        for (id, rows) in s.take_embedded() {
            assert!(out.insert(id, rows.iter().map(|&r| r as u32).collect()).is_none());
        }
        s.check_invariants().unwrap();
    }
    panic!("did not finish");
}

#[test]
fn long_prompt_is_prefilled_in_chunks_then_decoded() {
    let mut s = Scheduler::new(config(8), 64);
    let mut r = FakeRunner::default();
    s.add(seq(1, 20, 4)).unwrap();
    let mut shapes = Vec::new();
    while !s.is_idle() {
        let b = s.schedule();
        shapes.push((b.seqs[0].start_pos, b.seqs[0].tokens.len(), b.seqs[0].sample));
        s.update(&r.step(&b, &s));
    }
    let decodes = [(20, 1, true), (21, 1, true), (22, 1, true)];
    assert_eq!(shapes, [&[(0, 8, false), (8, 8, false), (16, 4, true)][..], &decodes].concat());
}

#[test]
fn decodes_go_first_and_prefill_takes_the_rest_of_the_budget() {
    let mut s = Scheduler::new(config(8), 64);
    let mut r = FakeRunner::default();
    s.add(seq(1, 4, 10)).unwrap();
    let b = s.schedule();
    s.update(&r.step(&b, &s));
    s.add(seq(2, 30, 10)).unwrap();
    let b = s.schedule();
    let shape: Vec<(u64, usize)> = b.seqs.iter().map(|x| (x.id.0, x.tokens.len())).collect();
    assert_eq!(shape, vec![(1, 1), (2, 7)]);
    assert!(b.seqs[0].sample && !b.seqs[1].sample);
}

#[test]
fn finished_sequences_free_blocks_and_are_released() {
    let mut s = Scheduler::new(config(64), 8);
    let mut r = FakeRunner::default();
    s.add(seq(1, 5, 3)).unwrap();
    let mut finish = None;
    while finish.is_none() {
        let b = s.schedule();
        finish = s.update(&r.step(&b, &s)).last().and_then(|u| u.finish);
    }
    assert_eq!(finish, Some(FinishReason::Length));
    assert_eq!(s.blocks().num_used(), 0);
    assert_eq!(s.schedule().released, vec![SeqId(1)]);
}

#[test]
fn eos_ends_a_sequence() {
    let mut s = Scheduler::new(config(64), 8);
    let mut r = FakeRunner::default();
    let mut q = seq(1, 5, 50);
    q.stop.eos_token_ids = (0..2000).collect();
    s.add(q).unwrap();
    let b = s.schedule();
    let u = s.update(&r.step(&b, &s));
    assert_eq!(u[0].finish, Some(FinishReason::EosToken));
    assert!(s.is_idle());
}

#[test]
fn preemption_recomputes_and_changes_nothing() {
    // Alone, with plenty of memory.
    let alone: HashMap<SeqId, Vec<u32>> = (1..=4)
        .flat_map(|i| {
            let mut s = Scheduler::new(config(32), 64);
            s.add(seq(i, 10 + i as usize, 40)).unwrap();
            run(&mut s, &mut FakeRunner::default())
        })
        .collect();
    // Together in a cache too small for all of them (4 × ~52 tokens in 8 blocks).
    let mut s = Scheduler::new(config(32), 8);
    for i in 1..=4 {
        s.add(seq(i, 10 + i as usize, 40)).unwrap();
    }
    let together = run(&mut s, &mut FakeRunner::default());
    assert!(s.preemptions() > 0, "the cache was meant to run out");
    assert_eq!(together, alone);
}

#[test]
fn removal_frees_blocks_whether_running_or_waiting() {
    let mut s = Scheduler::new(config(16), 4);
    let mut r = FakeRunner::default();
    s.add(seq(1, 40, 5)).unwrap();
    s.add(seq(2, 10, 5)).unwrap();
    let b = s.schedule();
    s.update(&r.step(&b, &s));
    assert!(s.blocks().num_used() > 0);
    assert!(s.remove(SeqId(1)).is_some());
    assert!(s.remove(SeqId(2)).is_some());
    assert!(s.remove(SeqId(2)).is_none());
    assert_eq!(s.blocks().num_used(), 0);
    assert!(s.is_idle());
    let b = s.schedule();
    assert_eq!(b.released, vec![SeqId(1), SeqId(2)]);
    assert!(b.seqs.is_empty());
}

#[test]
fn a_failed_step_drops_its_sequences() {
    let mut s = Scheduler::new(config(16), 8);
    s.add(seq(1, 5, 5)).unwrap();
    s.add(seq(2, 5, 5)).unwrap();
    s.schedule();
    let mut failed = s.fail_step();
    failed.sort();
    assert_eq!(failed, vec![SeqId(1), SeqId(2)]);
    assert!(s.is_idle());
    assert_eq!(s.blocks().num_used(), 0);
}

#[test]
fn sequences_that_can_never_fit_are_refused() {
    let mut s = Scheduler::new(config(16), 2);
    assert_eq!(s.add(seq(1, 30, 3)), Err(AddError::TooLong { tokens: 33, capacity: 32 }));
    s.add(seq(1, 10, 3)).unwrap();
    assert_eq!(s.add(seq(1, 10, 3)), Err(AddError::Duplicate(SeqId(1))));
}

#[test]
fn batch_size_limit_holds() {
    let mut s = Scheduler::new(
        SchedulerConfig { max_batch_tokens: 1000, max_batch_size: 3, prefix_caching: false },
        64,
    );
    for i in 0..5 {
        s.add(seq(i, 4, 2)).unwrap();
    }
    let b = s.schedule();
    assert_eq!(b.seqs.len(), 3);
    assert_eq!(s.num_waiting(), 2);
}

/// Random arrivals, lengths and removals against a small cache: invariants hold
/// after every step and nothing leaks.
#[test]
fn random_workload_keeps_invariants_and_leaks_nothing() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut s = Scheduler::new(
        SchedulerConfig { max_batch_tokens: 24, max_batch_size: 6, prefix_caching: false },
        12,
    );
    let mut r = FakeRunner::default();
    let mut id = 0;
    for step in 0..3000 {
        if step < 2500 && next(3) == 0 {
            id += 1;
            let _ = s.add(seq(id, 1 + next(60) as usize, 1 + next(40) as usize));
        }
        if next(20) == 0 && id > 0 {
            s.remove(SeqId(1 + next(id)));
        }
        let b = s.schedule();
        if !b.seqs.is_empty() {
            s.update(&r.step(&b, &s));
        }
        s.check_invariants().unwrap();
    }
    run(&mut s, &mut r);
    assert!(s.is_idle());
    assert_eq!(s.blocks().num_used(), 0);
    assert!(s.preemptions() > 0);
}

#[test]
fn prompt_logprobs_cover_the_prompt_once_across_chunks() {
    let mut s = Scheduler::new(config(8), 64);
    let mut r = FakeRunner::default();
    let q = seq(1, 21, 3).with_prompt_logprobs();
    let prompt: Vec<u32> = q.tokens().iter().map(|t| t.0).collect();
    s.add(q).unwrap();
    let mut first = None;
    while !s.is_idle() {
        let b = s.schedule();
        for u in s.update(&r.step(&b, &s)) {
            if let Some(lps) = u.prompt_logprobs {
                assert!(first.is_none(), "sent twice");
                first = Some(lps);
            }
        }
    }
    let want: Vec<f32> = prompt[1..].iter().map(|&t| -(t as f32)).collect();
    assert_eq!(first, Some(want));
}

#[test]
fn sampling_parameters_reach_the_runner_once_even_across_preemption() {
    let mut s = Scheduler::new(config(64), 3);
    let mut r = FakeRunner::default();
    let p = rill_proto::SamplingParams { do_sample: true, seed: 7, ..Default::default() };
    s.add(seq(1, 20, 20).with_sampling(p.clone())).unwrap();
    s.add(seq(2, 10, 20)).unwrap();
    let mut sent = 0;
    while !s.is_idle() {
        let b = s.schedule();
        for x in &b.seqs {
            if let Some(q) = &x.sampling {
                assert_eq!((x.id, x.start_pos, &**q), (SeqId(1), 0, &p));
                sent += 1;
            }
        }
        s.update(&r.step(&b, &s));
    }
    assert!(s.preemptions() > 0, "the test needs a preemption");
    assert_eq!(sent, 1);
}

#[test]
fn forced_tokens_are_appended_run_as_one_chunk_and_stop_at_the_length_limit() {
    let mut s = Scheduler::new(config(64), 64);
    let mut r = FakeRunner::default();
    s.add(seq(1, 4, 6)).unwrap();
    let b = s.schedule();
    r.forced.insert(SeqId(1), vec![TokenId(100), TokenId(101), TokenId(102)]);
    let u = s.update(&r.step(&b, &s));
    assert_eq!(u[0].forced, vec![TokenId(100), TokenId(101), TokenId(102)]);
    assert_eq!(u[0].finish, None);
    // The sampled token and the forced ones run together, then one token samples.
    let b = s.schedule();
    assert_eq!((b.seqs[0].start_pos, b.seqs[0].tokens.len(), b.seqs[0].sample), (4, 4, true));
    r.forced.insert(SeqId(1), vec![TokenId(200), TokenId(201), TokenId(202)]);
    let u = s.update(&r.step(&b, &s));
    // 4 generated + 1 sampled + 1 forced = max_new_tokens 6: the rest is cut.
    assert_eq!(u[0].forced, vec![TokenId(200)]);
    assert_eq!(u[0].finish, Some(FinishReason::Length));
    assert_eq!(s.blocks().num_used(), 0);
}

#[test]
fn sequences_the_runner_could_not_sample_are_removed_alone() {
    let mut s = Scheduler::new(config(64), 64);
    let mut r = FakeRunner::default();
    s.add(seq(1, 4, 10)).unwrap();
    s.add(seq(2, 4, 10)).unwrap();
    let b = s.schedule();
    r.fail.insert(SeqId(1));
    let mut out = r.step(&b, &s);
    out.sampled.retain(|x| x.id != SeqId(1));
    let u = s.update(&out);
    assert_eq!(u.iter().map(|x| x.id).collect::<Vec<_>>(), vec![SeqId(2)]);
    assert!(s.get(SeqId(1)).is_none());
    assert_eq!(s.schedule().released, vec![SeqId(1)]);
    s.check_invariants().unwrap();
}

#[test]
fn an_embedding_prefills_in_chunks_returns_every_row_and_frees_its_blocks() {
    let mut s = Scheduler::new(config(8), 64);
    let mut r = FakeRunner::default();
    let e = embedding(1, 20);
    let want = expected_hidden(&e);
    s.add(e).unwrap();
    let mut shapes = Vec::new();
    let mut done = Vec::new();
    while !s.is_idle() {
        let b = s.schedule();
        let x = &b.seqs[0];
        assert!(x.hidden && !x.sample && x.sampling.is_none() && x.logprob_targets.is_empty());
        shapes.push((x.start_pos, x.tokens.len()));
        assert!(s.update(&r.step(&b, &s)).is_empty(), "an embedding samples nothing");
        done.extend(s.take_embedded());
    }
    assert_eq!(shapes, [(0, 8), (8, 8), (16, 4)]);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0, SeqId(1));
    assert_eq!(done[0].1.iter().map(|&v| v as u32).collect::<Vec<_>>(), want);
    assert_eq!(s.blocks().num_used(), 0);
    assert_eq!(s.schedule().released, vec![SeqId(1)]);
}

#[test]
fn embeddings_beside_generations_and_through_preemption_equal_their_solo_rows() {
    let solo = |q: Sequence| {
        let mut s = Scheduler::new(config(32), 64);
        s.add(q).unwrap();
        run(&mut s, &mut FakeRunner::default())
    };
    // Generations first: as they decode and grow, the embeddings admitted after them are
    // the youngest, preempted mid-prompt.
    let jobs =
        || [seq(1, 10, 40), seq(2, 12, 40), embedding(3, 40), embedding(4, 21), seq(5, 3, 5)];
    let alone: HashMap<SeqId, Vec<u32>> = jobs().into_iter().flat_map(solo).collect();
    for q in jobs().into_iter().filter(Sequence::is_embedding) {
        assert_eq!(alone[&q.id], expected_hidden(&q));
    }
    // Together in a cache too small for all of them (6 blocks for 4 + 4 + 3 + 2 + 1), with
    // a small budget: the embeddings prefill slowly while the generations grow.
    let mut s = Scheduler::new(config(4), 6);
    for q in jobs() {
        s.add(q).unwrap();
    }
    let (mut r, mut together) = (FakeRunner::default(), HashMap::new());
    let mut restarts = 0;
    let mut started = std::collections::HashSet::new();
    while !s.is_idle() {
        let b = s.schedule();
        for x in b.seqs.iter().filter(|x| x.hidden && x.start_pos == 0) {
            restarts += usize::from(!started.insert(x.id));
        }
        for u in s.update(&r.step(&b, &s)) {
            together.entry(u.id).or_insert_with(Vec::new).push(u.token.0);
        }
        for (id, rows) in s.take_embedded() {
            together.insert(id, rows.iter().map(|&v| v as u32).collect());
        }
        s.check_invariants().unwrap();
    }
    assert!(restarts > 0, "an embedding was meant to be preempted mid-prompt");
    assert_eq!(s.blocks().num_used(), 0);
    assert_eq!(together, alone);
}

#[test]
fn a_removed_embedding_frees_its_blocks() {
    let mut s = Scheduler::new(config(8), 64);
    let mut r = FakeRunner::default();
    s.add(embedding(1, 30)).unwrap();
    s.add(seq(2, 4, 3)).unwrap();
    let b = s.schedule();
    s.update(&r.step(&b, &s));
    assert!(s.get(SeqId(1)).unwrap().num_computed() > 0);
    assert!(s.remove(SeqId(1)).is_some());
    s.check_invariants().unwrap();
    run(&mut s, &mut r);
    assert!(s.take_embedded().is_empty());
    assert_eq!(s.blocks().num_used(), 0);
}

// Prefix caching.

fn caching(max_batch_tokens: usize, max_batch_size: usize) -> SchedulerConfig {
    SchedulerConfig { max_batch_tokens, max_batch_size, prefix_caching: true }
}

/// A sequence with this prompt.
fn with_prompt(id: u64, prompt: &[u32], max_new_tokens: usize) -> Sequence {
    Sequence::new(
        SeqId(id),
        prompt.iter().copied().map(TokenId).collect(),
        StopCriteria { max_new_tokens, eos_token_ids: vec![3], ignore_eos: false },
    )
}

/// `n` tokens every prompt built on it starts with, then `tail` tokens of its own.
fn prompt(n: usize, tail: usize, own: u32) -> Vec<u32> {
    (0..n as u32).map(|t| 2000 + t).chain((0..tail as u32).map(|t| 5000 + 100 * own + t)).collect()
}

/// What `seq` generates alone, without a prefix cache.
fn solo(seq: Sequence) -> Vec<u32> {
    let id = seq.id;
    let mut s = Scheduler::new(config(32), 64);
    s.add(seq).unwrap();
    run(&mut s, &mut FakeRunner::default()).remove(&id).unwrap_or_default()
}

/// Run until idle like [`run`], and return the first batch too.
fn run_from(s: &mut Scheduler, r: &mut FakeRunner) -> (ForwardBatch, HashMap<SeqId, Vec<u32>>) {
    let b = s.schedule();
    let mut out: HashMap<SeqId, Vec<u32>> = HashMap::new();
    for u in s.update(&r.step(&b, s)) {
        out.entry(u.id).or_default().push(u.token.0);
    }
    for (id, rows) in s.take_embedded() {
        out.insert(id, rows.iter().map(|&r| r as u32).collect());
    }
    s.check_invariants().unwrap();
    for (id, tokens) in run(s, r) {
        out.entry(id).or_default().extend(tokens);
    }
    (b, out)
}

#[test]
fn a_later_prompt_takes_the_cached_full_blocks_and_computes_the_rest() {
    let mut s = Scheduler::new(caching(256, 8), 64);
    let mut r = FakeRunner::default();
    let (a, b) = (prompt(40, 3, 1), prompt(40, 9, 2));
    s.add(with_prompt(1, &a, 5)).unwrap();
    let first = run(&mut s, &mut r);
    assert_eq!(first[&SeqId(1)], solo(with_prompt(1, &a, 5)));
    // Finished, its blocks stay cached: none in use, none lost.
    assert_eq!(s.blocks().num_used(), 0);
    assert_eq!(s.blocks().num_cached(), 2, "its two full blocks (its last is partial)");

    s.add(with_prompt(2, &b, 5)).unwrap();
    let (batch, second) = run_from(&mut s, &mut r);
    // Blocks 0 and 1 (tokens 0..32) are the shared prefix's; block 2 differs.
    assert_eq!((batch.seqs[0].start_pos, batch.seqs[0].tokens.len()), (32, 17));
    assert_eq!(s.blocks().stats().hit_tokens, 32);
    assert_eq!(second[&SeqId(2)], solo(with_prompt(2, &b, 5)));
}

#[test]
fn a_wholly_cached_prompt_still_computes_its_last_block() {
    let mut s = Scheduler::new(caching(256, 8), 64);
    let mut r = FakeRunner::default();
    let p = prompt(32, 0, 0);
    s.add(with_prompt(1, &p, 4)).unwrap();
    run(&mut s, &mut r);
    s.add(with_prompt(2, &p, 4)).unwrap();
    let (batch, out) = run_from(&mut s, &mut r);
    // 32 tokens = 2 full blocks, but logits need the last token run: block 1 is computed.
    assert_eq!((batch.seqs[0].start_pos, batch.seqs[0].tokens.len()), (16, 16));
    assert_eq!(out[&SeqId(2)], solo(with_prompt(2, &p, 4)));
}

#[test]
fn generated_blocks_are_cached_too_so_the_next_turn_hits_them() {
    let mut s = Scheduler::new(caching(256, 8), 64);
    let mut r = FakeRunner::default();
    let turn1 = prompt(20, 0, 0);
    s.add(with_prompt(1, &turn1, 30)).unwrap();
    let answer = run(&mut s, &mut r).remove(&SeqId(1)).unwrap();
    // The next turn resends the conversation and adds to it.
    let mut turn2 = turn1.clone();
    turn2.extend(&answer);
    turn2.extend([7, 8, 9]);
    s.add(with_prompt(2, &turn2, 4)).unwrap();
    let (batch, out) = run_from(&mut s, &mut r);
    // 20 + 30 tokens ran (the last generated token never did): 49 positions hold K/V,
    // 3 full blocks.
    assert_eq!(batch.seqs[0].start_pos, 48);
    assert_eq!(out[&SeqId(2)], solo(with_prompt(2, &turn2, 4)));
}

#[test]
fn sequences_of_one_step_share_the_prefix_the_first_of_them_computes() {
    // n = 3 answers to one prompt, admitted together: one prefill of the shared blocks.
    let mut s = Scheduler::new(caching(256, 8), 64);
    let mut r = FakeRunner::default();
    let p = prompt(50, 0, 0);
    for id in 1..=3 {
        s.add(with_prompt(id, &p, 6)).unwrap();
    }
    let (batch, out) = run_from(&mut s, &mut r);
    let starts: Vec<_> = batch.seqs.iter().map(|q| (q.start_pos, q.tokens.len())).collect();
    assert_eq!(starts, [(0, 50), (48, 2), (48, 2)]);
    assert_eq!(batch.seqs[1].block_table[..3], batch.seqs[0].block_table[..3]);
    for id in 1..=3 {
        assert_eq!(out[&SeqId(id)], solo(with_prompt(id, &p, 6)));
    }
}

#[test]
fn salted_requests_share_only_with_the_same_salt() {
    let mut s = Scheduler::new(caching(256, 8), 64);
    let mut r = FakeRunner::default();
    let p = prompt(40, 0, 0);
    let salted = |id, salt: &str| with_prompt(id, &p, 2).with_cache_salt(Some(salt.into()));
    s.add(salted(1, "tenant-a")).unwrap();
    run(&mut s, &mut r);
    s.add(salted(2, "tenant-b")).unwrap();
    assert_eq!(run_from(&mut s, &mut r).0.seqs[0].start_pos, 0, "another tenant's blocks");
    s.add(with_prompt(3, &p, 2)).unwrap();
    assert_eq!(run_from(&mut s, &mut r).0.seqs[0].start_pos, 0, "no salt is a salt of its own");
    s.add(salted(4, "tenant-a")).unwrap();
    assert_eq!(run_from(&mut s, &mut r).0.seqs[0].start_pos, 32);
}

#[test]
fn prompt_logprobs_and_embeddings_compute_every_row_but_fill_the_cache() {
    let mut s = Scheduler::new(caching(256, 8), 64);
    let mut r = FakeRunner::default();
    let p = prompt(40, 0, 0);
    s.add(with_prompt(1, &p, 2)).unwrap();
    run(&mut s, &mut r);
    s.add(with_prompt(2, &p, 2).with_prompt_logprobs()).unwrap();
    let (batch, _) = run_from(&mut s, &mut r);
    assert_eq!((batch.seqs[0].start_pos, batch.seqs[0].logprob_targets.len()), (0, 39));
    let e = Sequence::embedding(SeqId(3), p.iter().copied().map(TokenId).collect());
    let want = expected_hidden(&e);
    s.add(e).unwrap();
    let (batch, out) = run_from(&mut s, &mut r);
    assert_eq!(batch.seqs[0].start_pos, 0);
    assert_eq!(out[&SeqId(3)], want);
    // An embedding of a new prompt leaves its blocks for a generation that follows.
    let q = prompt(0, 40, 9);
    s.add(Sequence::embedding(SeqId(4), q.iter().copied().map(TokenId).collect())).unwrap();
    run(&mut s, &mut r);
    s.add(with_prompt(5, &q, 2)).unwrap();
    assert_eq!(run_from(&mut s, &mut r).0.seqs[0].start_pos, 32);
}

#[test]
fn penalties_see_the_cached_prefix() {
    let mut s = Scheduler::new(caching(256, 8), 64);
    let mut r = FakeRunner::default();
    let p = prompt(40, 0, 0);
    s.add(with_prompt(1, &p, 2)).unwrap();
    run(&mut s, &mut r);
    let penalised = SamplingParams { repetition_penalty: 1.3, ..Default::default() };
    s.add(with_prompt(2, &p, 2).with_sampling(penalised)).unwrap();
    // Plain sampling needs no prefix: OpenAI's penalties count only the output.
    let plain = SamplingParams { presence_penalty: 0.5, ..Default::default() };
    s.add(with_prompt(3, &p, 2).with_sampling(plain)).unwrap();
    run(&mut s, &mut r);
    assert_eq!(r.prefixes[&SeqId(2)], p[..32].iter().copied().map(TokenId).collect::<Vec<_>>());
    assert!(r.prefixes[&SeqId(3)].is_empty());
}

#[test]
fn preempted_sequences_find_their_blocks_cached_and_change_nothing() {
    let alone: HashMap<SeqId, Vec<u32>> = (1..=4)
        .map(|i| (SeqId(i), solo(with_prompt(i, &prompt(20, 5 * i as usize, i as u32), 40))))
        .collect();
    // Together, sharing a 20-token prefix, in a cache too small for all of them.
    let mut s = Scheduler::new(caching(32, 8), 8);
    for i in 1..=4 {
        s.add(with_prompt(i, &prompt(20, 5 * i as usize, i as u32), 40)).unwrap();
    }
    let together = run(&mut s, &mut FakeRunner::default());
    assert!(s.preemptions() > 0, "the cache was meant to run out");
    assert!(s.blocks().stats().hit_tokens > 0);
    assert!(s.blocks().stats().evictions > 0);
    assert_eq!(together, alone);
}

#[test]
fn a_failed_step_unregisters_the_blocks_it_was_to_fill() {
    let mut s = Scheduler::new(caching(256, 8), 64);
    let mut r = FakeRunner::default();
    let p = prompt(40, 0, 0);
    s.add(with_prompt(1, &p, 2)).unwrap();
    s.schedule();
    assert_eq!(s.fail_step(), vec![SeqId(1)]);
    assert_eq!(s.blocks().num_cached(), 0, "nothing computed, nothing cached");
    s.add(with_prompt(2, &p, 2)).unwrap();
    let (batch, out) = run_from(&mut s, &mut r);
    assert_eq!(batch.seqs[0].start_pos, 0);
    assert_eq!(out[&SeqId(2)], solo(with_prompt(2, &p, 2)));
}

#[test]
fn without_prefix_caching_nothing_is_kept() {
    let mut s = Scheduler::new(config(256), 64);
    let mut r = FakeRunner::default();
    let p = prompt(40, 0, 0);
    s.add(with_prompt(1, &p, 2)).unwrap();
    run(&mut s, &mut r);
    assert_eq!((s.blocks().num_cached(), s.blocks().num_free()), (0, 64));
    s.add(with_prompt(2, &p, 2)).unwrap();
    assert_eq!(run_from(&mut s, &mut r).0.seqs[0].start_pos, 0);
    assert_eq!(s.blocks().stats(), Default::default());
}

/// Random arrivals sharing a few prefixes, removals (disconnects) and a tiny cache:
/// invariants hold after every step, nothing leaks, and every sequence that ran to its
/// end generated what it generates alone.
#[test]
fn random_workload_with_shared_prefixes_keeps_invariants_and_outputs() {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut s = Scheduler::new(caching(24, 6), 14);
    let mut r = FakeRunner::default();
    let mut added: HashMap<SeqId, Sequence> = HashMap::new();
    let mut removed = std::collections::HashSet::new();
    let mut out: HashMap<SeqId, Vec<u32>> = HashMap::new();
    let mut id = 0;
    for step in 0..3000 {
        if step < 2500 && next(3) == 0 {
            id += 1;
            let shared = [0, 16, 20, 40][next(4) as usize];
            let p = prompt(shared, 1 + next(30) as usize, id as u32);
            let q = with_prompt(id, &p, 1 + next(30) as usize);
            if s.add(q.clone()).is_ok() {
                added.insert(SeqId(id), q);
            }
        }
        if next(25) == 0 && id > 0 {
            let victim = SeqId(1 + next(id));
            if s.remove(victim).is_some() {
                removed.insert(victim);
            }
        }
        let b = s.schedule();
        if !b.seqs.is_empty() {
            for u in s.update(&r.step(&b, &s)) {
                out.entry(u.id).or_default().push(u.token.0);
            }
        }
        s.check_invariants().unwrap();
    }
    for (id, tokens) in run(&mut s, &mut r) {
        out.entry(id).or_default().extend(tokens);
    }
    assert_eq!(s.blocks().num_used(), 0);
    assert!(s.preemptions() > 0 && s.blocks().stats().hit_tokens > 0);
    assert!(s.blocks().stats().evictions > 0);
    let mut checked = 0;
    for (id, q) in added {
        if !removed.contains(&id) {
            assert_eq!(out.get(&id).cloned().unwrap_or_default(), solo(q), "{id}");
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked}");
}
