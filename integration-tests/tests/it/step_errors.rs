//! Bad batches are refused whole with a typed error, and leave the runner (and its
//! KV cache) exactly as it was: the next good batch gives the same result as if the
//! bad one had never been sent.

use rill_backend::StepError;
use rill_integration_tests::fixture_model;
use rill_proto::{BlockId, ForwardBatch, SeqId, SeqStep, TokenId};

use crate::harness;
use crate::wrapped::Wrapped;

/// A sampling step of sequence `id` (no parameters: greedy), for the tests of this binary.
pub(crate) fn seq(id: u64, tokens: &[u32], start_pos: usize, blocks: &[u32]) -> SeqStep {
    SeqStep::new(
        SeqId(id),
        tokens.iter().copied().map(TokenId).collect(),
        start_pos,
        blocks.iter().copied().map(BlockId).collect(),
    )
}

/// `s` as the first step after a cached prefix, with penalties that count it.
fn with_prefix(s: SeqStep, prefix: &[u32]) -> SeqStep {
    let sampling = rill_proto::SamplingParams { repetition_penalty: 1.2, ..Default::default() };
    SeqStep {
        sampling: Some(Box::new(sampling)),
        prefix: prefix.iter().copied().map(TokenId).collect(),
        ..s
    }
}

/// Whether an error is the one a case expects.
type IsExpected = fn(&StepError) -> bool;

#[test]
fn each_bad_batch_is_refused_with_its_reason() {
    let (_, mut runner) = harness::load(&fixture_model("llama"));
    let num_blocks = runner.num_blocks() as u32;
    let good = seq(1, &[1, 2, 3], 0, &[0]);
    let cases: Vec<(SeqStep, IsExpected)> = vec![
        (seq(2, &[], 0, &[1]), |e| matches!(e, StepError::EmptySequence { .. })),
        (seq(2, &[1, 400], 0, &[1]), |e| {
            matches!(e, StepError::TokenOutOfRange { token: 400, vocab: 400, .. })
        }),
        (seq(2, &[1; 17], 0, &[1]), |e| {
            matches!(e, StepError::BlockTableTooShort { needed: 2, have: 1, .. })
        }),
        (seq(2, &[1], 0, &[num_blocks]), |e| matches!(e, StepError::BlockOutOfRange { .. })),
        (seq(2, &[1], 256, &[1; 17]), |e| {
            matches!(e, StepError::TooLong { end: 257, max: 256, .. })
        }),
        (seq(1, &[1], 0, &[1]), |e| matches!(e, StepError::DuplicateSequence { .. })),
        // A cached prefix's tokens are sent with the sampling parameters, all of them.
        (with_prefix(seq(2, &[1], 3, &[1]), &[5, 6]), |e| {
            matches!(e, StepError::PrefixLength { len: 2, start_pos: 3, .. })
        }),
        (SeqStep { sampling: None, ..with_prefix(seq(2, &[1], 2, &[1]), &[5, 6]) }, |e| {
            matches!(e, StepError::PrefixLength { .. })
        }),
        (with_prefix(seq(2, &[1], 2, &[1]), &[5, 400]), |e| {
            matches!(e, StepError::TokenOutOfRange { token: 400, .. })
        }),
    ];
    for (bad, expected) in cases {
        let batch = ForwardBatch { seqs: vec![good.clone(), bad.clone()], ..Default::default() };
        let err = runner.step(&batch).expect_err(&format!("{bad:?} accepted"));
        assert!(expected(&err), "{bad:?}: unexpected error {err}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn a_refused_batch_changes_nothing() {
    let (_, mut runner) = harness::load(&fixture_model("llama"));
    let prompt = [1, 50, 60, 70, 80, 90];
    let with_logits =
        |s: SeqStep| ForwardBatch { seqs: vec![s], return_logits: true, ..Default::default() };
    // Prefill, then decode one token: once undisturbed, once with a refused batch
    // in between that would have overwritten the sequence's cached keys.
    let mut decode_logits = Vec::new();
    for disturb in [false, true] {
        let first = runner.step(&with_logits(seq(0, &prompt, 0, &[0]))).unwrap().sampled[0].token;
        if disturb {
            let batch = ForwardBatch {
                seqs: vec![seq(5, &[7; 16], 0, &[0]), seq(9, &[1], 0, &[u32::MAX])],
                ..Default::default()
            };
            runner.step(&batch).expect_err("out-of-range block accepted");
        }
        let out = runner.step(&with_logits(seq(0, &[first.0], prompt.len(), &[0]))).unwrap();
        decode_logits.push(out.sampled[0].logits.clone().unwrap());
    }
    assert_eq!(decode_logits[0], decode_logits[1]);
}

#[test]
fn empty_batch_is_a_no_op() {
    let (_, mut runner) = harness::load(&fixture_model("llama"));
    let out = runner.step(&ForwardBatch::default()).unwrap();
    assert!(out.sampled.is_empty());
}

#[test]
fn sampling_state_lives_until_release_even_through_a_refused_batch() {
    let (_, mut runner) = harness::load(&fixture_model("llama"));
    let sampled = rill_proto::SamplingParams { do_sample: true, seed: 1, ..Default::default() };
    let mut first = seq(1, &[1, 2, 3], 0, &[0]);
    first.sampling = Some(Box::new(sampled));
    runner.step(&ForwardBatch { seqs: vec![first], ..Default::default() }).unwrap();
    assert_eq!(runner.num_sampling_states(), 1);
    // The release rides on a batch the runner refuses: the state goes anyway.
    let bad = seq(2, &[], 0, &[1]);
    let batch = ForwardBatch { seqs: vec![bad], released: vec![SeqId(1)], ..Default::default() };
    assert!(runner.step(&batch).is_err());
    assert_eq!(runner.num_sampling_states(), 0);
}

#[test]
fn a_device_failure_is_a_step_error_and_the_runner_goes_on() {
    use std::sync::atomic::Ordering;
    let dir = fixture_model("llama");
    let model = rill_backend::ModelDir::open(&dir).unwrap();
    let device = Wrapped::new(false);
    let opts = rill_backend::RunnerOptions {
        kv_cache: rill_backend::KvCacheSize::Bytes(16 << 20),
        ..Default::default()
    };
    let mut runner = rill_backend::Runner::load(&dir, &model.config, device, &opts).unwrap();
    let good = seq(1, &[1, 2, 3], 0, &[0]);
    let want = runner.step(&ForwardBatch { seqs: vec![good.clone()], ..Default::default() });
    let want = want.unwrap().sampled[0].token;

    runner.device().fail.store(true, Ordering::Relaxed);
    let other = seq(2, &[1, 2, 3], 0, &[1]);
    let err = runner.step(&ForwardBatch { seqs: vec![other], ..Default::default() }).unwrap_err();
    assert!(matches!(err, StepError::Device(_)), "{err}");
    assert!(err.to_string().contains("injected fault"), "{err}");

    // The router fails and releases the step's sequences; the runner serves the next.
    runner.device().fail.store(false, Ordering::Relaxed);
    let again = seq(3, &[1, 2, 3], 0, &[2]);
    let batch = ForwardBatch { seqs: vec![again], released: vec![SeqId(2)], ..Default::default() };
    assert_eq!(runner.step(&batch).unwrap().sampled[0].token, want);

    // An op that fails stops the step where it failed and says so: layer 0's attention,
    // after only its QKV projection (no later op runs), and the runner goes on.
    runner.device().fail_attention.store(true, Ordering::Relaxed);
    let before = runner.device().linears.load(Ordering::Relaxed);
    let failing = seq(4, &[1, 2, 3], 0, &[3]);
    let err = runner.step(&ForwardBatch { seqs: vec![failing], ..Default::default() }).unwrap_err();
    assert!(matches!(err, StepError::Device(_)), "{err}");
    assert!(err.to_string().contains("attention of layer 0: injected launch failure"), "{err}");
    assert_eq!(
        runner.device().linears.load(Ordering::Relaxed) - before,
        1,
        "only the QKV projection ran"
    );
    runner.device().fail_attention.store(false, Ordering::Relaxed);
    let last = seq(5, &[1, 2, 3], 0, &[4]);
    let batch = ForwardBatch { seqs: vec![last], released: vec![SeqId(4)], ..Default::default() };
    assert_eq!(runner.step(&batch).unwrap().sampled[0].token, want);
}
