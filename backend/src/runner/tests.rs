//! Hidden states (embedding steps) on the fixture models: transformers' final-norm
//! states, bit-identical however the prompt is chunked and whatever shares its batch,
//! and steps that ask for them inconsistently are refused.

use std::path::{Path, PathBuf};

use rill_proto::{BLOCK_SIZE, BlockId, ForwardBatch, SeqId, SeqStep, StepOutput, TokenId};

use super::*;
use crate::Cpu;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../integration-tests/fixtures/models").join(name)
}

fn load(name: &str) -> Runner<Cpu> {
    let dir = fixture(name);
    let model = crate::ModelDir::open(&dir).unwrap_or_else(|e| panic!("{e}"));
    let opts = RunnerOptions { kv_cache: KvCacheSize::Bytes(16 << 20), ..Default::default() };
    Runner::load(&dir, &model.config, Cpu::with_threads(2), &opts).unwrap_or_else(|e| panic!("{e}"))
}

/// The reference prompts' ids (`reference.json`).
fn prompts(name: &str) -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |p: &serde_json::Value| {
        p["ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
    };
    meta["prompts"].as_array().unwrap().iter().map(ids).collect()
}

/// `name` in the fixture's `embeddings.safetensors` (made by
/// `scripts/make_embedding_fixtures.py`).
fn oracle(model: &str, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture(model).join("embeddings.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    bytemuck::pod_collect_to_vec(st.tensor(name).unwrap().data())
}

/// A step of sequence `id` over `prompt[start..end]` with blocks `id * 16..`.
fn step(id: u64, prompt: &[u32], start: usize, end: usize, hidden: bool) -> SeqStep {
    let blocks = (0..end.div_ceil(BLOCK_SIZE) as u32).map(|b| BlockId(id as u32 * 16 + b));
    SeqStep {
        sample: !hidden && end == prompt.len(),
        hidden,
        ..SeqStep::new(
            SeqId(id),
            prompt[start..end].iter().copied().map(TokenId).collect(),
            start,
            blocks.collect(),
        )
    }
}

fn one(seq: SeqStep) -> ForwardBatch {
    ForwardBatch { seqs: vec![seq], ..Default::default() }
}

/// The hidden states of `prompt` run as sequence `id` in chunks ending at `ends`.
fn embed(runner: &mut Runner<Cpu>, id: u64, prompt: &[u32], ends: &[usize]) -> Vec<f32> {
    let mut states = Vec::new();
    let mut start = 0;
    for &end in ends {
        let out = runner.step(&one(step(id, prompt, start, end, true))).unwrap();
        assert!(out.sampled.is_empty());
        let [(got, rows)] = &out.hidden[..] else { panic!("{:?}", out.hidden) };
        assert_eq!(*got, SeqId(id));
        assert_eq!(rows.len(), (end - start) * runner.config().hidden_size);
        states.extend_from_slice(rows);
        start = end;
    }
    runner.step(&ForwardBatch { released: vec![SeqId(id)], ..Default::default() }).unwrap();
    states
}

#[test]
fn hidden_states_are_transformers_last_hidden_state() {
    for name in ["llama", "llama3", "mistral", "qwen2"] {
        let mut runner = load(name);
        let mut worst = 0f32;
        for (i, prompt) in prompts(name).iter().enumerate() {
            let got = embed(&mut runner, 1, prompt, &[prompt.len()]);
            let want = oracle(name, &format!("prompt{i}.hidden"));
            assert_eq!(got.len(), want.len(), "{name} prompt {i}");
            let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff < 1e-4, "{name} prompt {i}: hidden states differ by {diff}");
            worst = worst.max(diff);
        }
        eprintln!("{name}: hidden states within {worst:e} of transformers");
        assert_eq!(runner.num_sampling_states(), 0);
    }
}

#[test]
fn hidden_states_do_not_depend_on_chunking_or_batching() {
    for name in ["llama", "mistral", "llama-bfloat16"] {
        let mut runner = load(name);
        let ps = prompts(name);
        let (p0, p1) = (&ps[0], &ps[1]);
        let whole = embed(&mut runner, 1, p0, &[p0.len()]);
        for ends in [vec![5, 12, p0.len()], vec![1, 2, 3, 16, p0.len()], (1..=p0.len()).collect()] {
            let chunked = embed(&mut runner, 2, p0, &ends);
            assert!(chunked == whole, "{name}: chunks ending at {ends:?} changed a bit");
        }

        // Batched: beside a generation (prefill, then decodes) and another embedding.
        let mut got = Vec::new();
        let mut gen_tokens = p1[..9].to_vec();
        let mut cached = 0;
        let chunks = [(0, 7), (7, 8), (8, 20), (20, p0.len())];
        for (k, &(start, end)) in chunks.iter().enumerate() {
            let mut batch = ForwardBatch::default();
            batch.seqs.push(step(3, &gen_tokens, cached, gen_tokens.len(), false));
            batch.seqs.push(step(4, p0, start, end, true));
            if k == 1 {
                batch.seqs.push(step(5, p1, 0, p1.len(), true));
            }
            let out: StepOutput = runner.step(&batch).unwrap();
            assert_eq!(out.sampled.len(), 1);
            assert_eq!(out.hidden.len(), if k == 1 { 2 } else { 1 });
            let (id, rows) = &out.hidden[0];
            assert_eq!(*id, SeqId(4));
            got.extend_from_slice(rows);
            cached = gen_tokens.len();
            gen_tokens.push(out.sampled[0].token.0);
        }
        assert!(got == whole, "{name}: batching changed a bit");
    }
}

#[test]
fn hidden_steps_compute_no_sampling_state() {
    let mut runner = load("qwen2");
    let prompt = &prompts("qwen2")[0];
    let mut params = rill_proto::SamplingParams { do_sample: true, seed: 3, ..Default::default() };
    params.temperature = 0.7;
    // A sampling sequence has state; an embedding beside it has none.
    let mut generation = step(1, prompt, 0, prompt.len(), false);
    generation.sampling = Some(Box::new(params));
    let embedding = step(2, prompt, 0, prompt.len(), true);
    let out =
        runner.step(&ForwardBatch { seqs: vec![generation, embedding], ..Default::default() });
    let out = out.unwrap();
    assert_eq!((out.sampled.len(), out.hidden.len()), (1, 1));
    assert_eq!(runner.num_sampling_states(), 1);
}

#[test]
fn inconsistent_hidden_steps_are_refused_whole() {
    let mut runner = load("llama");
    let prompt = &prompts("llama")[0];
    let ok = step(1, prompt, 0, 4, false);
    let mut sampling = step(2, prompt, 0, 4, true);
    sampling.sample = true;
    let mut targets = step(2, prompt, 0, 4, true);
    targets.logprob_targets = vec![TokenId(prompt[1])];
    let mut params = step(2, prompt, 0, 4, true);
    params.sampling = Some(Box::default());
    for bad in [sampling, targets, params] {
        let batch = ForwardBatch { seqs: vec![ok.clone(), bad], ..Default::default() };
        let err = runner.step(&batch).unwrap_err();
        assert_eq!(err, StepError::HiddenWithSampling { seq: SeqId(2) });
        assert!(err.to_string().contains("hidden states"), "{err}");
    }
    assert_eq!(runner.num_sampling_states(), 0);
}
