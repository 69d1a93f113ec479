//! A device that chooses tokens itself gets the sampler's state flattened
//! (`Sampler::device_sampling`) and its answers go through the same bookkeeping as the
//! host's (`Sampler::apply_device`): on the CPU device wrapped to "sample on device"
//! with a host reference, greedy rows with penalties, top-n and a grammar give exactly
//! what the host sampler gives, step after step.

use std::sync::Arc;

use rill_backend::grammar::{GrammarCompiler, GrammarSpec};
use rill_backend::{KvCacheSize, ModelDir, Runner, RunnerOptions};
use rill_integration_tests::fixture_model;
use rill_proto::{BlockId, ForwardBatch, SamplingParams, SeqId, SeqStep, TokenId};

use crate::wrapped::Wrapped;

/// One step's answer for one sequence: token, logprob, top-n.
type Answer = (u32, f32, Vec<(TokenId, f32)>);

/// Decode `steps` tokens for three sequences (plain greedy; penalties + top-n; a
/// regex grammar) and return every sequence's answers.
fn run(on_device: bool, steps: usize) -> Vec<Vec<Answer>> {
    let dir = fixture_model("llama");
    let model = ModelDir::open(&dir).unwrap();
    let opts = RunnerOptions { kv_cache: KvCacheSize::Bytes(16 << 20), ..Default::default() };
    let mut runner = Runner::load(&dir, &model.config, Wrapped::new(on_device), &opts).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let compiler = GrammarCompiler::new(
        &json,
        Arc::new(model.tokenizer.clone()),
        &model.eos_token_ids,
        model.config.vocab_size,
    )
    .unwrap();
    let grammar = compiler.compile(&GrammarSpec::Regex("[a-z]{3,8}( [a-z]{2,5})*".into())).unwrap();
    let params = [
        SamplingParams::default(),
        SamplingParams {
            repetition_penalty: 1.5,
            frequency_penalty: 0.5,
            presence_penalty: 0.2,
            count_penalty: 0.1,
            temperature: 1.0,
            ..Default::default()
        },
        SamplingParams { repetition_penalty: 1.2, grammar: Some(grammar), ..Default::default() },
    ];
    let prompt = [1u32, 40, 50, 60, 70, 40, 50];
    let mut next: Vec<Vec<u32>> = vec![prompt.to_vec(); 3];
    let mut pos = [0usize; 3];
    let mut out = vec![Vec::new(); 3];
    for step in 0..steps {
        let seqs = (0..3)
            .map(|i| SeqStep {
                id: SeqId(i as u64),
                tokens: next[i].iter().copied().map(TokenId).collect(),
                start_pos: pos[i],
                block_table: (i as u32 * 8..(i as u32 + 1) * 8).map(BlockId).collect(),
                sample: true,
                top_n: if i == 1 { 3 } else { 0 },
                logprob_targets: Vec::new(),
                sampling: (step == 0).then(|| Box::new(params[i].clone())),
                prefix: Vec::new(),
                hidden: false,
            })
            .collect::<Vec<_>>();
        let result = runner.step(&ForwardBatch { seqs: seqs.clone(), ..Default::default() });
        let result = result.unwrap();
        assert!(result.failed.is_empty(), "{:?}", result.failed);
        for (i, s) in seqs.iter().enumerate() {
            pos[i] = s.end_pos();
            let t = result.sampled.iter().find(|x| x.id == s.id).unwrap();
            out[i].push((t.token.0, t.logprob, t.top.clone()));
            next[i] = std::iter::once(t.token.0).chain(t.forced.iter().map(|f| f.0)).collect();
        }
    }
    out
}

#[test]
fn device_sampling_matches_the_host_sampler_step_after_step() {
    let host = run(false, 12);
    let device = run(true, 12);
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
    // The penalties changed the choice somewhere (so the flattened counts mattered).
    assert_ne!(host[0], host[1]);
}
