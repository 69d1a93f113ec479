//! Continuous batching on the real engine: the scheduler drives `Runner::step` on a
//! fixture model with a KV cache too small for everyone, so sequences are chunked,
//! batched with others, preempted and recomputed — and each one still generates
//! exactly the greedy tokens it generates alone.

use std::collections::HashMap;

use rill_backend::device::KvLayout;
use rill_backend::{Cpu, KvCacheSize, ModelDir, Runner, RunnerOptions};
use rill_integration_tests::fixture_model;
use rill_proto::{BLOCK_SIZE, SeqId, TokenId};
use rill_router::scheduler::{Scheduler, SchedulerConfig};
use rill_router::sequence::{Sequence, StopCriteria};

/// A runner whose cache holds `blocks` blocks.
fn runner(model: &ModelDir, blocks: usize) -> Runner<Cpu> {
    let c = &model.config;
    let kv_cache_bytes = blocks * KvLayout::block_bytes(c);
    let opts = RunnerOptions { kv_cache: KvCacheSize::Bytes(kv_cache_bytes), ..Default::default() };
    Runner::load(&model.path, c, Cpu::new(), &opts).unwrap()
}

fn generate(
    runner: &mut Runner<Cpu>,
    config: SchedulerConfig,
    prompts: &[Vec<u32>],
    new: usize,
) -> (HashMap<SeqId, Vec<u32>>, u64) {
    let mut s = Scheduler::new(config, runner.num_blocks());
    for (i, p) in prompts.iter().enumerate() {
        let stop = StopCriteria { max_new_tokens: new, eos_token_ids: vec![], ignore_eos: true };
        s.add(Sequence::new(SeqId(i as u64), p.iter().copied().map(TokenId).collect(), stop))
            .unwrap();
    }
    let mut out: HashMap<SeqId, Vec<u32>> = HashMap::new();
    while !s.is_idle() {
        let batch = s.schedule();
        let step = runner.step(&batch).unwrap_or_else(|e| panic!("{e}"));
        for u in s.update(&step) {
            out.entry(u.id).or_default().push(u.token.0);
        }
        s.check_invariants().unwrap();
    }
    assert_eq!(s.blocks().num_used(), 0);
    (out, s.preemptions())
}

#[test]
fn preempted_and_chunked_sequences_generate_what_they_generate_alone() {
    let model = ModelDir::open(&fixture_model("llama")).unwrap();
    let prompts: Vec<Vec<u32>> = (0..6u32)
        .map(|i| (0..(9 + 7 * i)).map(|t| (t * 31 + i * 17) % 390 + 4).collect())
        .collect();
    let new = 30;

    let mut roomy = runner(&model, 64);
    let alone: HashMap<SeqId, Vec<u32>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let config =
                SchedulerConfig { max_batch_tokens: 256, max_batch_size: 1, prefix_caching: false };
            let (mut out, _) = generate(&mut roomy, config, std::slice::from_ref(p), new);
            (SeqId(i as u64), out.remove(&SeqId(0)).unwrap())
        })
        .collect();

    // 6 sequences of up to 74 tokens in 10 blocks (160 tokens), 16-token steps.
    let mut tight = runner(&model, 10);
    assert_eq!(tight.num_blocks() * BLOCK_SIZE, 160);
    let config = SchedulerConfig { max_batch_tokens: 16, max_batch_size: 8, prefix_caching: true };
    let (together, preemptions) = generate(&mut tight, config, &prompts, new);
    assert!(preemptions > 0, "the cache was meant to run out");
    assert_eq!(together, alone);
}
