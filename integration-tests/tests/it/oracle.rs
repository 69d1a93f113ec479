//! The CPU engine against Hugging Face transformers.
//!
//! For each fixture model, transformers recorded (see `scripts/make_fixtures.py`) the
//! float32 logits at every prompt position and a 16-token greedy continuation. Rill
//! must reproduce the logits within 1e-4 and the continuation exactly, and a
//! sequence's logits must be bit-identical however its prompt is chunked and whatever
//! else shares its batch.

use std::collections::HashMap;
use std::path::Path;

use rill_backend::Precision;
use rill_integration_tests::{demo_model, demo_reference, fixture_model};
use safetensors::SafeTensors;
use serde_json::Value;

use crate::harness::{self, Job};

const TOLERANCE: f32 = 1e-4;

/// What transformers said about one prompt.
struct RefPrompt {
    text: String,
    ids: Vec<u32>,
    greedy: Vec<u32>,
    /// Logits at every prompt position.
    logits: Vec<Vec<f32>>,
}

/// A recorded reference: the prompts of `{stem}.json`, and the matrices of
/// `{stem}.safetensors` by name, as rows.
fn recorded(dir: &Path, stem: &str) -> (Vec<Value>, HashMap<String, Vec<Vec<f32>>>) {
    let json = std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap();
    let meta: Value = serde_json::from_str(&json).unwrap();
    let bytes = std::fs::read(dir.join(format!("{stem}.safetensors"))).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let matrices = st.tensors().into_iter().map(|(name, t)| {
        let flat: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
        (name, flat.chunks(t.shape()[1]).map(<[f32]>::to_vec).collect())
    });
    (meta["prompts"].as_array().unwrap().clone(), matrices.collect())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn reference(dir: &Path) -> Vec<RefPrompt> {
    let (prompts, mut matrices) = recorded(dir, "reference");
    let mut take = |name: String| matrices.remove(&name).unwrap();
    (prompts.iter().enumerate())
        .map(|(i, p)| RefPrompt {
            text: p["text"].as_str().unwrap().to_string(),
            ids: ids(&p["ids"]),
            greedy: ids(&p["greedy"]),
            logits: take(format!("prompt{i}.logits")),
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Prompt logits at every position, and the greedy continuation, match transformers.
fn matches_transformers(name: &str) {
    let dir = fixture_model(name);
    matches_transformers_in(name, &dir, &dir);
}

/// The model in `dir` against the reference in `reference_dir`.
fn matches_transformers_in(name: &str, dir: &Path, reference_dir: &Path) {
    let reference = reference(reference_dir);
    let (model, mut runner) = harness::load(dir);
    for (i, RefPrompt { text, ids: prompt, greedy, logits }) in reference.iter().enumerate() {
        // The server's own tokenization gives the ids transformers was fed.
        let encoded = model.tokenizer.encode(text.as_str(), true).unwrap();
        assert_eq!(encoded.get_ids(), prompt.as_slice(), "{name} prompt {i} tokenization");

        // One chunk per token, logits after each: every prompt position.
        let job = Job {
            chunks: vec![1; prompt.len()],
            logits_every_chunk: true,
            ..Job::new(prompt, greedy.len())
        };
        let out = &harness::run(&mut runner, &[job])[0];
        for (pos, want) in logits.iter().enumerate() {
            let diff = max_abs_diff(&out.logits[pos], want);
            assert!(diff < TOLERANCE, "{name} prompt {i} position {pos}: logits differ by {diff}");
        }
        assert_eq!(&out.tokens, greedy, "{name} prompt {i}: greedy continuation");

        // Whole-prompt prefill: the same last-position logits, to the bit.
        let whole = &harness::run(&mut runner, &[Job::new(prompt, greedy.len())])[0];
        assert_eq!(
            whole.logits[0],
            out.logits[prompt.len() - 1],
            "{name} prompt {i}: prefill vs token-by-token"
        );
        assert_eq!(&whole.tokens, greedy);
    }
}

#[test]
fn llama_matches_transformers() {
    matches_transformers("llama");
}

#[test]
fn llama3_rope_scaling_tied_embeddings_sharded_matches_transformers() {
    matches_transformers("llama3");
}

#[test]
fn mistral_sliding_window_matches_transformers() {
    matches_transformers("mistral");
}

#[test]
fn qwen2_biases_and_per_layer_windows_match_transformers() {
    matches_transformers("qwen2");
}

#[test]
fn bf16_weights_match_transformers_on_upcast_weights() {
    matches_transformers("llama-bfloat16");
}

#[test]
fn f16_weights_match_transformers_on_upcast_weights() {
    matches_transformers("llama-float16");
}

/// The bundled demo model (trained, bf16, tied embeddings, its own tokenizer).
#[test]
fn demo_model_matches_transformers() {
    matches_transformers_in("demo", &demo_model(), &demo_reference());
}

/// What transformers said running a 16-bit checkpoint in its own dtype (`native.*`, from
/// `scripts/make_native_fixtures.py`): per prompt, its greedy continuation in that dtype
/// and, over prompt and continuation, the logits at every position in that dtype and in
/// f32 on the same weights.
struct NativePrompt {
    ids: Vec<u32>,
    greedy: Vec<u32>,
    native: Vec<Vec<f32>>,
    f32: Vec<Vec<f32>>,
}

fn native_reference(dir: &Path) -> Vec<NativePrompt> {
    let (prompts, mut matrices) = recorded(dir, "native");
    let mut take = |name: String| matrices.remove(&name).unwrap();
    (prompts.iter().enumerate())
        .map(|(i, p)| NativePrompt {
            ids: ids(&p["ids"]),
            greedy: ids(&p["greedy"]),
            native: take(format!("prompt{i}.native")),
            f32: take(format!("prompt{i}.f32")),
        })
        .collect()
}

/// `log_softmax(row)[t]`, in f64.
fn logprob(row: &[f32], t: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + row.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    row[t] as f64 - lse
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, v| if row[v] > row[best] { v } else { best })
}

/// The fast precision against transformers running the checkpoint in its own dtype, fed
/// the same tokens (the prompt, then transformers' greedy continuation in that dtype).
///
/// The yardstick is the dtype's own noise on the sequence: the largest logit difference
/// between transformers in the dtype and transformers in f32 on the same weights, over
/// every position and token. Rill's
/// fast precision rounds only the linear layers' inputs (attention, norms and the residual
/// stream stay f32), so it must be no further than that from f32, and so (by the triangle
/// inequality) within twice that of the dtype's logits. Its greedy choice must be the
/// dtype's wherever the dtype's top two logits are more than twice the noise apart, and
/// the log-probability of each next token must agree with the dtype's to within twice
/// the noise.
fn fast_precision_matches_transformers_in(name: &str, dir: &Path, reference_dir: &Path) {
    let (_, mut runner) = harness::load_with(dir, Precision::Fast);
    let (mut decided, mut worst) = (0, 0.0f32);
    for (i, p) in native_reference(reference_dir).iter().enumerate() {
        let seq: Vec<u32> = p.ids.iter().chain(&p.greedy).copied().collect();
        assert_eq!(p.native.len(), seq.len(), "{name} prompt {i}: one row per position");
        let job = Job { chunks: vec![1; seq.len()], logits_every_chunk: true, ..Job::new(&seq, 1) };
        let out = &harness::run(&mut runner, &[job])[0];
        let noise = (0..seq.len()).map(|pos| max_abs_diff(&p.native[pos], &p.f32[pos]));
        let noise = noise.fold(0.0, f32::max);
        for pos in 0..seq.len() {
            let at = format!("{name} prompt {i} position {pos}");
            let (ours, native) = (&out.logits[pos], &p.native[pos]);
            let (to_f32, to_native) = (max_abs_diff(ours, &p.f32[pos]), max_abs_diff(ours, native));
            worst = worst.max(to_native / noise);
            assert!(to_f32 <= noise, "{at}: {to_f32} from f32, the dtype's noise is {noise}");
            assert!(to_native <= 2.0 * noise, "{at}: {to_native} from the dtype (noise {noise})");
            let best = argmax(native);
            let second = (0..native.len()).filter(|&v| v != best).map(|v| native[v]);
            if native[best] - second.fold(f32::NEG_INFINITY, f32::max) > 2.0 * noise {
                decided += 1;
                assert_eq!(argmax(ours), best, "{at}: greedy choice");
            }
            if let Some(&next) = seq.get(pos + 1) {
                let (a, b) = (logprob(ours, next as usize), logprob(native, next as usize));
                assert!((a - b).abs() <= 2.0 * noise as f64, "{at}: logprob {a} vs {b} ({noise})");
            }
        }
    }
    eprintln!("{name}: {decided} greedy choices decided and held; worst {worst:.2}× the noise");
    assert!(decided > 0, "{name}: no position was decided");
}

#[test]
fn fast_precision_matches_transformers_in_bf16() {
    let dir = fixture_model("llama-bfloat16");
    fast_precision_matches_transformers_in("llama-bfloat16", &dir, &dir);
}

#[test]
fn fast_precision_matches_transformers_in_f16() {
    let dir = fixture_model("llama-float16");
    fast_precision_matches_transformers_in("llama-float16", &dir, &dir);
}

#[test]
fn fast_precision_matches_transformers_in_bf16_on_the_demo_model() {
    fast_precision_matches_transformers_in("demo", &demo_model(), &demo_reference());
}

/// Chunked prefill and batching change nothing, to the bit, at `precision`.
fn invariant_under_chunking_and_batching(name: &str, precision: Precision) {
    let dir = fixture_model(name);
    let reference = reference(&dir);
    let (_, mut runner) = harness::load_with(&dir, precision);
    let (p0, g0) = (&reference[0].ids, &reference[0].greedy);
    let (p1, g1) = (&reference[1].ids, &reference[1].greedy);
    let alone: Vec<_> =
        [p0, p1].iter().map(|p| harness::run(&mut runner, &[Job::new(p, 12)]).remove(0)).collect();

    // Several chunkings of the same prompt, each alone.
    for chunks in [vec![5, 7], vec![3; 9], vec![16], vec![1, 2, 3, 4, 5]] {
        let job = Job { chunks: chunks.clone(), ..Job::new(p0, 12) };
        let out = harness::run(&mut runner, &[job]).remove(0);
        assert_eq!(out.tokens, alone[0].tokens, "{name} chunks {chunks:?}");
        assert_eq!(
            out.logits, alone[0].logits,
            "{name} chunks {chunks:?}: logits not bit-identical"
        );
    }

    // In a batch: other sequences in prefill and decode around it, in another chunking.
    let jobs = vec![
        Job { chunks: vec![4, 4], ..Job::new(p1, 12) },
        Job::new(&p0[..7], 20),
        Job { chunks: vec![6], delay: 3, ..Job::new(p0, 12) },
        Job { delay: 1, ..Job::new(&[1, 5, 9, 200, 37], 15) },
        Job { chunks: vec![2], delay: 5, ..Job::new(p1, 12) },
    ];
    let outs = harness::run(&mut runner, &jobs);
    assert_eq!(outs[0], alone[1], "{name}: prompt 1 chunked in a batch");
    assert_eq!(outs[2], alone[0], "{name}: prompt 0 joining a running batch");
    assert_eq!(outs[4], alone[1], "{name}: prompt 1 late in a batch");
    // The exact precision is transformers in f32 (the fast one is held to transformers in
    // the checkpoint's dtype by `fast_precision_matches_transformers_in`).
    if precision == Precision::Exact {
        assert_eq!(&alone[0].tokens[..], &g0[..12]);
        assert_eq!(&alone[1].tokens[..], &g1[..12]);
    }
}

#[test]
fn llama_is_invariant_under_chunking_and_batching() {
    invariant_under_chunking_and_batching("llama", Precision::Exact);
}

#[test]
fn bf16_is_invariant_under_chunking_and_batching() {
    invariant_under_chunking_and_batching("llama-bfloat16", Precision::Exact);
}

#[test]
fn bf16_is_invariant_under_chunking_and_batching_in_the_fast_precision() {
    invariant_under_chunking_and_batching("llama-bfloat16", Precision::Fast);
}

#[test]
fn f16_is_invariant_under_chunking_and_batching_in_the_fast_precision() {
    invariant_under_chunking_and_batching("llama-float16", Precision::Fast);
}

#[test]
fn sliding_window_is_invariant_under_chunking_and_batching() {
    invariant_under_chunking_and_batching("mistral", Precision::Exact);
}

/// Prompt logprobs (`decoder_input_details`) are transformers' log-softmax of the
/// previous position's logits, and do not depend on how the prompt is chunked.
#[test]
fn prompt_logprobs_match_transformers_and_chunking() {
    use rill_proto::{BLOCK_SIZE, BlockId, ForwardBatch, SeqId, SeqStep, TokenId};
    let dir = fixture_model("llama");
    let reference = reference(&dir);
    let (_, mut runner) = harness::load(&dir);
    let prompt = &reference[0].ids;
    let step = |start: usize, end: usize| SeqStep {
        id: SeqId(7),
        tokens: prompt[start..end].iter().copied().map(TokenId).collect(),
        start_pos: start,
        block_table: (0..end.div_ceil(BLOCK_SIZE) as u32).map(BlockId).collect(),
        sample: end == prompt.len(),
        top_n: 0,
        logprob_targets: prompt[start + 1..(end + 1).min(prompt.len())]
            .iter()
            .copied()
            .map(TokenId)
            .collect(),
        sampling: None,
        prefix: Vec::new(),
        hidden: false,
    };
    let run = |runner: &mut rill_backend::Runner<rill_backend::Cpu>, chunks: &[usize]| {
        let mut lps = Vec::new();
        let mut start = 0;
        for &end in chunks {
            let out = runner
                .step(&ForwardBatch { seqs: vec![step(start, end)], ..Default::default() })
                .unwrap();
            lps.extend(out.prompt_logprobs.into_iter().flat_map(|(_, v)| v));
            start = end;
        }
        lps
    };
    let whole = run(&mut runner, &[prompt.len()]);
    assert_eq!(whole.len(), prompt.len() - 1);
    for (i, lp) in whole.iter().enumerate() {
        let row = &reference[0].logits[i];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + row.iter().map(|l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32;
        let want = row[prompt[i + 1] as usize] - lse;
        assert!((lp - want).abs() < TOLERANCE, "position {}: {lp} vs {want}", i + 1);
    }
    let chunked = run(&mut runner, &[5, 6, 13, prompt.len()]);
    assert_eq!(chunked, whole);
}

/// `--dtype bfloat16` on the f32 checkpoint rounds like torch's `.to(bfloat16)`: the
/// same logits, to the bit, as the bf16 checkpoint transformers saved.
#[test]
fn casting_f32_weights_to_bf16_equals_the_bf16_checkpoint() {
    use rill_backend::{Cpu, DType, KvCacheSize, LoadFormat, ModelDir, Runner, RunnerOptions};
    let f32_dir = fixture_model("llama");
    let model = ModelDir::open(&f32_dir).unwrap();
    for precision in [Precision::Exact, Precision::Fast] {
        let opts = RunnerOptions {
            kv_cache: KvCacheSize::Bytes(64 << 20),
            load_format: LoadFormat::Safetensors(Some(DType::Bf16)),
            precision,
            ..RunnerOptions::default()
        };
        let mut cast = Runner::load(&f32_dir, &model.config, Cpu::new(), &opts).unwrap();
        let (_, mut saved) = harness::load_with(&fixture_model("llama-bfloat16"), precision);
        let prompt = &reference(&f32_dir)[0].ids;
        let a = harness::run(&mut cast, &[Job::new(prompt, 8)]).remove(0);
        let b = harness::run(&mut saved, &[Job::new(prompt, 8)]).remove(0);
        assert_eq!(a, b, "{precision:?}");
    }
}
