//! `sample_rows` on a real GPU against host references of the CPU sampler's semantics:
//! greedy choice and logprob, the processors' effect on the reported distribution,
//! χ² of many draws against the computed distribution, top-k bounds, grammar masks,
//! and draws that depend only on (seed, position). Without a CUDA device every test
//! prints `SKIP` and passes.

mod common;

use common::reference::{log_softmax, random};
use common::{Gpu, down, gpu, up, zeros};
use rill_kernels::sampling::{PenaltyLists, SampleOut, SampleParams};

/// What one launch returned, per row.
struct Out {
    token: Vec<u32>,
    logprob: Vec<f32>,
    top: Vec<u32>,
    top_logprob: Vec<f32>,
}

const TOP: usize = 4;

/// Sample every row of `logits` (`rows × vocab`) with `params`; penalty lists are
/// `(token, count all, count output)` triples, masks the mask words.
fn sample(
    gpu: &Gpu,
    logits: &[f32],
    vocab: usize,
    params: &[SampleParams],
    lists: &[(u32, u32, u32)],
    masks: &[u32],
) -> Out {
    let rows = params.len();
    // Row r reads logits row r (or the only row when one is shared by every entry).
    let logits_rows = logits.len() / vocab;
    let params: Vec<SampleParams> = params
        .iter()
        .enumerate()
        .map(|(r, p)| SampleParams { row: if logits_rows == 1 { 0 } else { r as u32 }, ..*p })
        .collect();
    let params = &params[..];
    let d_logits = up(gpu, logits);
    let mut work = zeros(gpu, rows * vocab);
    let tokens = up(gpu, &lists.iter().map(|l| l.0).chain([0]).collect::<Vec<_>>());
    let all = up(gpu, &lists.iter().map(|l| l.1).chain([0]).collect::<Vec<_>>());
    let output = up(gpu, &lists.iter().map(|l| l.2).chain([0]).collect::<Vec<_>>());
    let d_masks = up(gpu, &masks.iter().copied().chain([0]).collect::<Vec<_>>());
    let mut token = gpu.stream.alloc_zeros::<u32>(rows).unwrap();
    let mut logprob = zeros(gpu, rows);
    let mut top = gpu.stream.alloc_zeros::<u32>(rows * TOP).unwrap();
    let mut top_logprob = zeros(gpu, rows * TOP);
    let penalties = PenaltyLists { tokens: &tokens, all: &all, output: &output };
    let out = SampleOut {
        token: &mut token,
        logprob: &mut logprob,
        top: &mut top,
        top_logprob: &mut top_logprob,
    };
    gpu.kernels
        .sample_rows(
            &gpu.stream,
            &d_logits,
            &mut work,
            vocab,
            params,
            &penalties,
            &d_masks,
            TOP,
            out,
        )
        .expect("launch");
    Out {
        token: down(gpu, &token),
        logprob: down(gpu, &logprob),
        top: down(gpu, &top),
        top_logprob: down(gpu, &top_logprob),
    }
}

#[test]
fn greedy_rows_take_the_first_maximum_with_its_logprob_and_top_n() {
    let Some(gpu) = gpu() else { return };
    let vocab = 5000;
    let mut logits = random(3 * vocab, 1);
    logits[vocab + 17] = 9.0;
    logits[vocab + 400] = 9.0; // a tie: the lower id wins
    let params = [SampleParams { top_n: 3, ..Default::default() }; 3];
    let out = sample(gpu, &logits, vocab, &params, &[], &[]);
    for r in 0..3 {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let lp = log_softmax(row);
        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        assert_eq!(out.token[r], order[0] as u32, "row {r}");
        assert!((out.logprob[r] as f64 - lp[order[0]]).abs() < 1e-4);
        for i in 0..3 {
            assert_eq!(out.top[r * TOP + i], order[i] as u32, "row {r} top {i}");
            assert!((out.top_logprob[r * TOP + i] as f64 - lp[order[i]]).abs() < 1e-4);
        }
        assert_eq!(out.top[r * TOP + 3], u32::MAX, "only 3 asked for");
    }
}

#[test]
fn penalties_watermark_and_temperature_shape_the_reported_distribution() {
    let Some(gpu) = gpu() else { return };
    let row = vec![2.0f32, -1.0, 1.5, 0.5, 1.9, 0.0];
    // Token 0 seen twice in the prompt, token 4 once in the output, of 5 tokens so far.
    let lists = [(0, 2, 0), (4, 1, 1)];
    let p = SampleParams {
        rep_penalty: 2.0,
        freq_penalty: 0.5,
        presence: 0.25,
        count_penalty: 0.25,
        temperature: 0.5,
        counts_len: 2,
        seq_len: 5,
        ..Default::default()
    };
    let out = sample(gpu, &row, 6, &[p], &lists, &[]);
    let mut want = row.clone();
    want[0] = 2.0 / 2.0 - 2.0 * 0.5 / 5.0;
    want[4] = 1.9 / 2.0 - 1.0 * 0.5 / 5.0 - 0.25 - 0.25;
    let scaled: Vec<f32> = want.iter().map(|x| x / 0.5).collect();
    let lp = log_softmax(&scaled);
    assert_eq!(out.token[0], 2);
    assert!((out.logprob[0] as f64 - lp[2]).abs() < 1e-4, "{} vs {}", out.logprob[0], lp[2]);
}

#[test]
fn draws_follow_the_distribution_and_depend_only_on_seed_and_position() {
    let Some(gpu) = gpu() else { return };
    let vocab = 12;
    let row: Vec<f32> = (0..vocab).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
    let n = 20_000;
    let logits: Vec<f32> = row.iter().copied().cycle().take(n * vocab).collect();
    let params: Vec<SampleParams> = (0..n)
        .map(|i| SampleParams {
            flags: SampleParams::DO_SAMPLE,
            temperature: 0.7,
            seed: 11,
            position: i as u64,
            ..Default::default()
        })
        .collect();
    let out = sample(gpu, &logits, vocab, &params, &[], &[]);
    let scaled: Vec<f32> = row.iter().map(|x| x / 0.7).collect();
    let probs: Vec<f64> = log_softmax(&scaled).iter().map(|l| l.exp()).collect();
    let mut counts = vec![0u64; vocab];
    out.token.iter().for_each(|&t| counts[t as usize] += 1);
    let chi: f64 = counts
        .iter()
        .zip(&probs)
        .map(|(&o, &p)| (o as f64 - p * n as f64).powi(2) / (p * n as f64))
        .sum();
    assert!(chi < 31.3, "chi² {chi:.1} over 11 degrees of freedom (p = 0.001)");
    // The same (seed, position) alone gives the same token as in the crowd.
    let alone = sample(gpu, &row, vocab, &params[1234..1235], &[], &[]);
    assert_eq!(alone.token[0], out.token[1234]);
}

#[test]
fn top_k_top_p_typical_and_masks_bound_the_draws() {
    let Some(gpu) = gpu() else { return };
    let vocab = 3000;
    let row = random(vocab, 7);
    let mut order: Vec<usize> = (0..vocab).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    let n = 2000;
    let logits: Vec<f32> = row.iter().copied().cycle().take(n * vocab).collect();
    let base = SampleParams { flags: SampleParams::DO_SAMPLE, seed: 3, ..Default::default() };
    let with = |f: &dyn Fn(&mut SampleParams)| -> Vec<SampleParams> {
        (0..n)
            .map(|i| {
                let mut p = SampleParams { position: i as u64, ..base };
                f(&mut p);
                p
            })
            .collect()
    };
    // top_k 5 at a high temperature: all five drawn, nothing else.
    let out = sample(
        gpu,
        &logits,
        vocab,
        &with(&|p| {
            p.top_k = 5;
            p.temperature = 5.0;
        }),
        &[],
        &[],
    );
    let top5: std::collections::HashSet<u32> = order[..5].iter().map(|&i| i as u32).collect();
    assert!(out.token.iter().all(|t| top5.contains(t)));
    assert_eq!(out.token.iter().collect::<std::collections::HashSet<_>>().len(), 5);
    // A top_p so small it keeps one token: always the argmax, logprob 0.
    let out = sample(gpu, &logits, vocab, &with(&|p| p.top_p = 1e-6), &[], &[]);
    assert!(out.token.iter().all(|&t| t == order[0] as u32));
    assert!(out.logprob.iter().all(|l| l.abs() < 1e-6));
    // A mask allowing three tokens: only those.
    let mut mask = vec![0u32; vocab.div_ceil(32)];
    for t in [5usize, 700, 2999] {
        mask[t / 32] |= 1 << (t % 32);
    }
    let out = sample(gpu, &logits, vocab, &with(&|p| p.mask_off = 0), &[], &mask);
    assert!(out.token.iter().all(|t| [5, 700, 2999].contains(t)));
    // Nothing allowed: reported, not a crash.
    let none = vec![0u32; vocab.div_ceil(32)];
    let out = sample(gpu, &row, vocab, &with(&|p| p.mask_off = 0)[..1], &[], &none);
    assert_eq!(out.token[0], u32::MAX);
    // typical_p keeps the tokens nearest the entropy: probabilities 0.4, 0.3, 0.2, 0.1
    // with mass 0.4 keep tokens 1 and 2 only.
    let small = [0.4f64, 0.3, 0.2, 0.1].map(|p| p.ln() as f32);
    let logits: Vec<f32> = small.iter().copied().cycle().take(n * 4).collect();
    let out = sample(gpu, &logits, 4, &with(&|p| p.typical_p = 0.4), &[], &[]);
    assert!(out.token.iter().all(|&t| t == 1 || t == 2));
}
