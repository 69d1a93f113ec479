//! A device that chooses tokens itself gets the sampler's state flattened
//! (`Sampler::device_sampling`) and its answers go through the same bookkeeping as the
//! host's (`Sampler::apply_device`). On the CPU device wrapped to "sample on device" with
//! the host's implementation of the sampling contract: greedy and seeded rows through every
//! processor (penalties, watermark, grammar, temperature, top-k, top-p, typical-p) give
//! exactly what the host sampler gives, step after step; a row only the host can sample
//! (`logit_bias`) and a neighbour asking for prompt logprobs move nothing else to the host;
//! and each seeded sequence's tokens are those it gets alone.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rill_backend::grammar::{GrammarCompiler, GrammarSpec};
use rill_backend::{KvCacheSize, ModelDir, Runner, RunnerOptions};
use rill_integration_tests::fixture_model;
use rill_proto::{BlockId, ForwardBatch, SamplingParams, SeqId, SeqStep, TokenId};

use crate::wrapped::Wrapped;

/// One step's answer for one sequence: token, logprob, top-n.
type Answer = (u32, f32, Vec<(TokenId, f32)>);

/// Every sequence's parameters: greedy; penalties with top-n; a regex grammar; seeded
/// draws at a temperature, with top-k, top-p and typical-p, with every penalty, and with
/// the watermark and a grammar; a logit bias (host only).
fn params(compiler: &GrammarCompiler) -> Vec<SamplingParams> {
    let grammar =
        || Some(compiler.compile(&GrammarSpec::Regex("[a-z]{3,8}( [a-z]{2,5})*".into())).unwrap());
    let seeded = |seed| SamplingParams { do_sample: true, seed, ..SamplingParams::default() };
    vec![
        SamplingParams::default(),
        SamplingParams {
            repetition_penalty: 1.5,
            frequency_penalty: 0.5,
            presence_penalty: 0.2,
            count_penalty: 0.1,
            ..SamplingParams::default()
        },
        SamplingParams { repetition_penalty: 1.2, grammar: grammar(), ..SamplingParams::default() },
        SamplingParams { temperature: 0.7, ..seeded(1) },
        SamplingParams { top_k: 5, temperature: 1.5, ..seeded(2) },
        SamplingParams { top_p: 0.7, ..seeded(3) },
        SamplingParams { typical_p: 0.8, ..seeded(4) },
        SamplingParams {
            repetition_penalty: 1.3,
            frequency_penalty: 0.4,
            presence_penalty: 0.3,
            count_penalty: 0.2,
            top_k: 40,
            top_p: 0.9,
            ..seeded(5)
        },
        SamplingParams { watermark: true, grammar: grammar(), temperature: 1.3, ..seeded(6) },
        SamplingParams { logit_bias: vec![(40, 3.0), (50, -5.0)], ..seeded(7) },
    ]
}

/// Decode `steps` tokens for the sequences `which` (indices into [`params`]) in one
/// batch, the first of them asking for its prompt's logprobs on its first step; returns
/// each sequence's answers and how many rows the device sampled.
fn run(on_device: bool, which: &[usize], steps: usize) -> (Vec<Vec<Answer>>, usize) {
    let dir = fixture_model("llama");
    let model = ModelDir::open(&dir).unwrap();
    let opts = RunnerOptions { kv_cache: KvCacheSize::Bytes(16 << 20), ..Default::default() };
    let mut runner = Runner::load(&dir, &model.config, Wrapped::new(on_device), &opts).unwrap();
    let compiler = GrammarCompiler::new(
        &model.tokenizer_json,
        Arc::new(model.tokenizer.clone()),
        &model.eos_token_ids,
        model.config.vocab_size,
    )
    .unwrap();
    let params = params(&compiler);
    let prompt = [1u32, 40, 50, 60, 70, 40, 50];
    let n = which.len();
    let mut next: Vec<Vec<u32>> = vec![prompt.to_vec(); n];
    let mut pos = vec![0usize; n];
    let mut out = vec![Vec::new(); n];
    for step in 0..steps {
        let seqs = (0..n)
            .map(|i| SeqStep {
                id: SeqId(which[i] as u64),
                tokens: next[i].iter().copied().map(TokenId).collect(),
                start_pos: pos[i],
                block_table: (i as u32 * 8..(i as u32 + 1) * 8).map(BlockId).collect(),
                sample: true,
                top_n: if which[i] % 3 == 1 { 3 } else { 0 },
                logprob_targets: if (i, step) == (0, 0) {
                    prompt[1..].iter().copied().map(TokenId).collect()
                } else {
                    Vec::new()
                },
                sampling: (step == 0).then(|| Box::new(params[which[i]].clone())),
                prefix: Vec::new(),
                hidden: false,
            })
            .collect::<Vec<_>>();
        let result = runner.step(&ForwardBatch { seqs: seqs.clone(), ..Default::default() });
        let result = result.unwrap();
        assert!(result.failed.is_empty(), "{:?}", result.failed);
        assert_eq!(result.prompt_logprobs.len(), usize::from(step == 0));
        for (i, s) in seqs.iter().enumerate() {
            pos[i] = s.end_pos();
            let t = result.sampled.iter().find(|x| x.id == s.id).unwrap();
            out[i].push((t.token.0, t.logprob, t.top.clone()));
            next[i] = std::iter::once(t.token.0).chain(t.forced.iter().map(|f| f.0)).collect();
        }
    }
    (out, runner.device().sampled_rows.load(Ordering::Relaxed))
}

#[test]
fn device_sampling_matches_the_host_sampler_step_after_step() {
    let all: Vec<usize> = (0..10).collect();
    let steps = 10;
    let (host, none) = run(false, &all, steps);
    let (device, sampled) = run(true, &all, steps);
    assert_eq!(none, 0);
    // Every row but the logit-bias one's, every step, although a neighbour needed the
    // host's logits on the first.
    assert_eq!(sampled, 9 * steps);
    for (seq, (h, d)) in host.iter().zip(&device).enumerate() {
        for (step, (a, b)) in h.iter().zip(d).enumerate() {
            assert_eq!(a.0, b.0, "sequence {seq} step {step}: token");
            assert!((a.1 - b.1).abs() < 1e-4, "sequence {seq} step {step}: {} vs {}", a.1, b.1);
            assert_eq!(a.2.len(), b.2.len(), "sequence {seq} step {step}: top-n");
            for (x, y) in a.2.iter().zip(&b.2) {
                assert_eq!(x.0, y.0);
                assert!((x.1 - y.1).abs() < 1e-4);
            }
        }
    }
    // The penalties changed the choice somewhere (so the flattened counts mattered), and
    // the seeded rows drew more than their argmax.
    assert_ne!(host[0], host[1]);
    let tokens = |s: &[Answer]| s.iter().map(|a| a.0).collect::<Vec<_>>();
    assert_ne!(tokens(&host[3]), tokens(&host[0]));
    // A seeded sequence alone gives what it gave in the crowd, on the "device" and off it.
    for i in [3, 5, 7, 8] {
        for on_device in [false, true] {
            let (alone, _) = run(on_device, &[i], steps);
            assert_eq!(tokens(&alone[0]), tokens(&host[i]), "sequence {i} alone");
        }
    }
}
