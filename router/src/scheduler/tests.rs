//! Scheduler tests against a fake runner that checks every cache slot it reads.

use super::*;
use crate::sequence::StopCriteria;
use rill_proto::SampledToken;
use std::collections::HashMap;

/// A stand-in for the runner that checks the scheduler's bookkeeping: it keeps
/// what each cache slot holds, verifies that a sampling sequence finds exactly its
/// own tokens at every position of its block table, and samples a token that is
/// a hash of the whole sequence (so recompute must reproduce it). A row whose hidden
/// state is asked for gets the hash of the sequence up to it, read from the cache the
/// same way (one value per row).
#[derive(Default)]
struct FakeRunner {
    slots: HashMap<usize, (SeqId, usize, TokenId)>,
    steps: usize,
    /// Tokens to report as forced after a sequence's next sampled token.
    forced: HashMap<SeqId, Vec<TokenId>>,
    /// Sequences to report as failed in the next step.
    fail: std::collections::HashSet<SeqId>,
}

/// The token (or hidden "state") a hash of `tokens` gives.
fn hash(tokens: impl IntoIterator<Item = TokenId>) -> u32 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for t in tokens {
        h = (h ^ t.0 as u64).wrapping_mul(0x100_0000_01b3);
    }
    (h % 1000) as u32 + 10
}

impl FakeRunner {
    /// The tokens at positions `0..end` of `s`, read from the cache, checking each slot
    /// holds `s`'s own token.
    fn cached(&self, s: &rill_proto::SeqStep, end: usize) -> Vec<TokenId> {
        (0..end)
            .map(|pos| {
                let slot = s.block_table[pos / BLOCK_SIZE].index() * BLOCK_SIZE + pos % BLOCK_SIZE;
                let (id, p, t) = self.slots[&slot];
                assert_eq!((id, p), (s.id, pos), "slot {slot} was overwritten");
                t
            })
            .collect()
    }

    fn step(&mut self, batch: &ForwardBatch) -> StepOutput {
        self.steps += 1;
        let mut sampled = Vec::new();
        let mut hidden = Vec::new();
        for s in &batch.seqs {
            for (j, t) in s.tokens.iter().enumerate() {
                let pos = s.start_pos + j;
                let slot = s.block_table[pos / BLOCK_SIZE].index() * BLOCK_SIZE + pos % BLOCK_SIZE;
                self.slots.insert(slot, (s.id, pos, *t));
            }
            if s.hidden {
                assert!(!s.sample && s.sampling.is_none() && s.logprob_targets.is_empty());
                let rows = (s.start_pos..s.end_pos()).map(|p| hash(self.cached(s, p + 1)) as f32);
                hidden.push((s.id, rows.collect()));
            }
            if s.sample {
                sampled.push(SampledToken {
                    id: s.id,
                    token: TokenId(hash(self.cached(s, s.end_pos()))),
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
    SchedulerConfig { max_batch_tokens, max_batch_size: 64 }
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
        for u in s.update(&runner.step(&batch)) {
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
        s.update(&r.step(&b));
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
    s.update(&r.step(&b));
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
        finish = s.update(&r.step(&b)).last().and_then(|u| u.finish);
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
    let u = s.update(&r.step(&b));
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
    s.update(&r.step(&b));
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
    let mut s = Scheduler::new(SchedulerConfig { max_batch_tokens: 1000, max_batch_size: 3 }, 64);
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
    let mut s = Scheduler::new(SchedulerConfig { max_batch_tokens: 24, max_batch_size: 6 }, 12);
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
            s.update(&r.step(&b));
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
        for u in s.update(&r.step(&b)) {
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
        s.update(&r.step(&b));
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
    let u = s.update(&r.step(&b));
    assert_eq!(u[0].forced, vec![TokenId(100), TokenId(101), TokenId(102)]);
    assert_eq!(u[0].finish, None);
    // The sampled token and the forced ones run together, then one token samples.
    let b = s.schedule();
    assert_eq!((b.seqs[0].start_pos, b.seqs[0].tokens.len(), b.seqs[0].sample), (4, 4, true));
    r.forced.insert(SeqId(1), vec![TokenId(200), TokenId(201), TokenId(202)]);
    let u = s.update(&r.step(&b));
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
    let mut out = r.step(&b);
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
        assert!(s.update(&r.step(&b)).is_empty(), "an embedding samples nothing");
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
        for u in s.update(&r.step(&b)) {
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
    s.update(&r.step(&b));
    assert!(s.get(SeqId(1)).unwrap().num_computed() > 0);
    assert!(s.remove(SeqId(1)).is_some());
    s.check_invariants().unwrap();
    run(&mut s, &mut r);
    assert!(s.take_embedded().is_empty());
    assert_eq!(s.blocks().num_used(), 0);
}
