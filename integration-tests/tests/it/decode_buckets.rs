//! Decode steps padded to a batch-size bucket — what the CUDA device does to replay a
//! recorded graph — give exactly what the same steps give unpadded: padding sequences
//! store no K/V, and the real rows' logits do not depend on them. Checked bit for bit on
//! the CPU device wrapped to pad (`wrapped`) against the plain CPU device, over steps that
//! mix prefill (never padded), decodes of 2 and 3 sequences (padded to 4) and a release.

use rill_backend::device::Device;
use rill_backend::device::cuda::DEFAULT_BUCKETS;
use rill_backend::{Cpu, Cuda, KvCacheSize, ModelDir, Runner, RunnerOptions};
use rill_integration_tests::fixture_model;
use rill_proto::{BlockId, ForwardBatch, SeqId, SeqStep, StepOutput, TokenId};
use std::sync::atomic::Ordering;

use crate::wrapped::Wrapped;

/// Prompts of 9, 5 and 20 tokens (the last crosses a block); the third joins at step 3 and
/// the second leaves at step 8. Returns every step's output, and the runner, loaded to
/// record decode steps of `replay` batch sizes where the device does.
fn run<D: Device>(device: D, replay: &[usize]) -> (Vec<StepOutput>, Runner<D>) {
    let dir = fixture_model("llama");
    let model = ModelDir::open(&dir).unwrap();
    let opts = RunnerOptions {
        kv_cache: KvCacheSize::Bytes(16 << 20),
        replay_batch_sizes: replay.to_vec(),
        ..Default::default()
    };
    let mut runner = Runner::load(&dir, &model.config, device, &opts).unwrap();
    let prompts: Vec<Vec<u32>> =
        [9u32, 5, 20].iter().map(|&n| (0..n).map(|i| 3 + (i * 7 + n) % 200).collect()).collect();
    let mut next = prompts.clone();
    let mut pos = [0usize; 3];
    let mut outputs = Vec::new();
    for step in 0..12 {
        let mut batch = ForwardBatch { return_logits: true, ..Default::default() };
        for i in 0..3 {
            let active = match i {
                1 => step < 8,
                2 => step >= 3,
                _ => true,
            };
            if !active {
                continue;
            }
            batch.seqs.push(SeqStep {
                top_n: 2,
                ..SeqStep::new(
                    SeqId(i as u64),
                    next[i].iter().copied().map(TokenId).collect(),
                    pos[i],
                    (i as u32 * 4..(i as u32 + 1) * 4).map(BlockId).collect(),
                )
            });
        }
        if step == 8 {
            batch.released.push(SeqId(1));
        }
        let out = runner.step(&batch).unwrap();
        for s in &batch.seqs {
            let i = s.id.0 as usize;
            pos[i] = s.end_pos();
            next[i] = vec![out.sampled.iter().find(|t| t.id == s.id).unwrap().token.0];
        }
        outputs.push(out);
    }
    (outputs, runner)
}

#[test]
fn padded_decode_steps_match_unpadded_ones_exactly() {
    let (want, _) = run(Cpu::new(), &[]);
    let (got, padded) = run(Wrapped::padding(&[4, 8]), &[]);
    for (step, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w, g, "step {step}");
    }
    // Steps 0 and 3 prefill; the other ten are plain decodes of two or three sequences.
    assert_eq!(padded.device().padded_steps.load(Ordering::Relaxed), 10);
}

/// On a GPU: the same steps with the decode graphs recorded (every default bucket) and
/// without; replayed steps must give the eager steps' tokens, and logits within f32
/// rounding (cuBLAS may pick another algorithm for the padded batch's row count).
#[test]
fn cuda_decode_graphs_match_eager_steps() {
    let Some(eager) = crate::cuda_parity::cuda() else { return };
    let (want, eager) = run(eager, &[]);
    let (got, graphs) = run(Cuda::new(0).unwrap_or_else(|e| panic!("{e}")), &DEFAULT_BUCKETS);
    assert!(eager.device().recorded_graphs().is_empty());
    assert_eq!(graphs.device().recorded_graphs(), DEFAULT_BUCKETS);
    for (step, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w.sampled.len(), g.sampled.len(), "step {step}");
        for (w, g) in w.sampled.iter().zip(&g.sampled) {
            let what = format!("step {step} sequence {}", w.id.0);
            assert_eq!((w.id, w.token), (g.id, g.token), "{what}");
            let (wl, gl) = (w.logits.as_ref().unwrap(), g.logits.as_ref().unwrap());
            crate::cuda_parity::check(&what, gl, wl, 1e-4);
        }
    }
}
