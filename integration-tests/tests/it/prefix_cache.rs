//! Prefix caching on the real engine: on every fixture model, a request whose prefix
//! blocks came from the cache gets bit-identical logits and tokens to the same request
//! on a fresh engine without a cache — whether the blocks were left by a sequence that
//! finished, one that disconnected, one that was preempted, one running beside it in the
//! same step, or were evicted and recomputed; with chunked prefill; and with seeded
//! sampling under penalties that count the prompt.

use std::collections::HashMap;

use rill_backend::device::KvLayout;
use rill_backend::{Cpu, KvCacheSize, ModelDir, Runner, RunnerOptions};
use rill_integration_tests::fixture_model;
use rill_proto::{SamplingParams, SeqId, TokenId};
use rill_router::scheduler::{Scheduler, SchedulerConfig};
use rill_router::sequence::{Sequence, StopCriteria};

const MODELS: [&str; 6] =
    ["llama", "llama-bfloat16", "llama-float16", "llama3", "mistral", "qwen2"];

/// Each sampled step of a sequence: its token and the full logits row it came from.
type Trace = Vec<(u32, Vec<f32>)>;

struct Engine {
    runner: Runner<Cpu>,
    scheduler: Scheduler,
}

impl Engine {
    fn new(model: &ModelDir, blocks: usize, max_batch_tokens: usize, caching: bool) -> Self {
        let c = &model.config;
        let kv_cache_bytes = blocks * KvLayout::block_bytes(c);
        let opts =
            RunnerOptions { kv_cache: KvCacheSize::Bytes(kv_cache_bytes), ..Default::default() };
        let runner = Runner::load(&model.path, c, Cpu::new(), &opts).unwrap();
        let config =
            SchedulerConfig { max_batch_tokens, max_batch_size: 8, prefix_caching: caching };
        let scheduler = Scheduler::for_model(config, runner.num_blocks(), "test");
        Engine { runner, scheduler }
    }

    fn add(&mut self, id: u64, request: &Request) {
        let stop =
            StopCriteria { max_new_tokens: request.new, eos_token_ids: vec![], ignore_eos: true };
        let prompt = request.prompt.iter().copied().map(TokenId).collect();
        let seq = Sequence::new(SeqId(id), prompt, stop).with_sampling(request.sampling.clone());
        self.scheduler.add(seq).unwrap();
    }

    /// Step until idle (or `steps` steps), recording every sampled step.
    fn run(&mut self, out: &mut HashMap<SeqId, Trace>, steps: usize) {
        for _ in 0..steps {
            if self.scheduler.is_idle() {
                break;
            }
            let mut batch = self.scheduler.schedule();
            batch.return_logits = true;
            let step = self.runner.step(&batch).unwrap_or_else(|e| panic!("{e}"));
            for s in &step.sampled {
                out.entry(s.id).or_default().push((s.token.0, s.logits.clone().unwrap()));
            }
            self.scheduler.update(&step);
            self.scheduler.check_invariants().unwrap();
        }
    }

    fn finish(&mut self) -> HashMap<SeqId, Trace> {
        let mut out = HashMap::new();
        self.run(&mut out, usize::MAX);
        assert_eq!(self.scheduler.blocks().num_used(), 0, "blocks leaked");
        out
    }

    fn hit_tokens(&self) -> u64 {
        self.scheduler.blocks().stats().hit_tokens
    }
}

#[derive(Clone)]
struct Request {
    prompt: Vec<u32>,
    new: usize,
    sampling: SamplingParams,
}

/// A prompt of `shared` tokens every such prompt starts with, then `tail` of its own.
fn request(shared: usize, tail: usize, own: u32, new: usize) -> Request {
    let prompt = (0..shared as u32)
        .map(|t| (t * 31 + 7) % 390 + 4)
        .chain((0..tail as u32).map(|t| (t * 13 + own * 101) % 390 + 4))
        .collect();
    Request { prompt, new, sampling: SamplingParams::default() }
}

/// What `r` gives alone on a fresh engine with no cache.
fn fresh(model: &ModelDir, r: &Request) -> Trace {
    let mut e = Engine::new(model, 64, 256, false);
    e.add(0, r);
    e.finish().remove(&SeqId(0)).unwrap()
}

fn assert_same(model: &str, case: &str, got: &Trace, want: &Trace) {
    assert_eq!(got.len(), want.len(), "{model}, {case}: lengths");
    for (i, ((gt, gl), (wt, wl))) in got.iter().zip(want).enumerate() {
        assert_eq!(gt, wt, "{model}, {case}: token {i}");
        // Bit-identical rows (NaN-free logits: compare the bits).
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(gl) == bits(wl), "{model}, {case}: logits of token {i} differ");
    }
}

#[test]
fn a_cached_prefix_changes_nothing_on_every_fixture() {
    for name in MODELS {
        let model = ModelDir::open(&fixture_model(name)).unwrap();
        let target = request(45, 7, 2, 8);
        let want = fresh(&model, &target);

        // Left by a sequence that finished.
        let mut e = Engine::new(&model, 64, 256, true);
        e.add(1, &request(45, 3, 1, 4));
        e.finish();
        e.add(2, &target);
        let got = e.finish();
        assert_eq!(e.hit_tokens(), 32, "{name}: two full shared blocks");
        assert_same(name, "after a finished one", &got[&SeqId(2)], &want);

        // Left by one that disconnected mid-decode; then, with chunked prefill, the same
        // again from blocks that were already shared.
        let mut e = Engine::new(&model, 64, 256, true);
        e.add(1, &request(45, 3, 1, 50));
        e.run(&mut HashMap::new(), 5);
        assert!(e.scheduler.remove(SeqId(1)).is_some());
        e.add(2, &target);
        assert_same(name, "after a disconnect", &e.finish()[&SeqId(2)], &want);
        let mut chunked = Engine::new(&model, 64, 8, true);
        chunked.add(1, &request(45, 3, 1, 2));
        chunked.finish();
        chunked.add(2, &target);
        assert_same(name, "chunked", &chunked.finish()[&SeqId(2)], &want);
        assert!(chunked.hit_tokens() > 0);

        // Beside others of the same step that share it.
        let mut e = Engine::new(&model, 64, 256, true);
        let others = [request(45, 2, 5, 8), target.clone(), request(45, 9, 6, 8)];
        for (i, r) in others.iter().enumerate() {
            e.add(i as u64, r);
        }
        let got = e.finish();
        assert!(e.hit_tokens() >= 64, "{name}: the second and third share the first's blocks");
        for (i, r) in others.iter().enumerate() {
            assert_same(name, "same step", &got[&SeqId(i as u64)], &fresh(&model, r));
        }
    }
}

#[test]
fn preempted_and_evicted_prefixes_are_recomputed_exactly() {
    for name in ["llama", "qwen2"] {
        let model = ModelDir::open(&fixture_model(name)).unwrap();
        // Six sequences sharing a 40-token prefix, 10 blocks for ~6 × 70 tokens: they
        // preempt each other, find their own and each other's blocks, and evict.
        let requests: Vec<Request> =
            (0..6).map(|i| request(40, 3 + 4 * i as usize, i, 24)).collect();
        let mut e = Engine::new(&model, 10, 16, true);
        for (i, r) in requests.iter().enumerate() {
            e.add(i as u64, r);
        }
        let got = e.finish();
        let stats = e.scheduler.blocks().stats();
        assert!(e.scheduler.preemptions() > 0, "{name}: the cache was meant to run out");
        assert!(stats.hit_tokens > 0 && stats.evictions > 0, "{name}: {stats:?}");
        for (i, r) in requests.iter().enumerate() {
            assert_same(name, "under pressure", &got[&SeqId(i as u64)], &fresh(&model, r));
        }

        // A prefix evicted by other prompts, then asked for again.
        let target = request(40, 5, 9, 6);
        let mut e = Engine::new(&model, 10, 64, true);
        e.add(1, &target);
        e.finish();
        for i in 0..4 {
            e.add(10 + i, &request(0, 60, 20 + i as u32, 2));
            e.finish();
        }
        assert!(e.scheduler.blocks().stats().evictions >= 2);
        let hits = e.hit_tokens();
        e.add(2, &target);
        let got = e.finish();
        assert_eq!(e.hit_tokens(), hits, "{name}: its blocks were evicted");
        assert_same(name, "after eviction", &got[&SeqId(2)], &fresh(&model, &target));
    }
}

#[test]
fn seeded_sampling_with_penalties_is_the_same_cached_or_not() {
    let model = ModelDir::open(&fixture_model("llama")).unwrap();
    let sampling = SamplingParams {
        do_sample: true,
        seed: 42,
        temperature: 0.9,
        repetition_penalty: 1.5,
        frequency_penalty: 0.8,
        ..Default::default()
    };
    let target = Request { sampling, ..request(45, 6, 3, 12) };
    let want = fresh(&model, &target);
    let mut e = Engine::new(&model, 64, 256, true);
    e.add(1, &request(45, 2, 1, 2));
    e.finish();
    e.add(2, &target);
    let got = e.finish();
    assert_eq!(e.hit_tokens(), 32);
    assert_same("llama", "seeded with penalties", &got[&SeqId(2)], &want);
}
