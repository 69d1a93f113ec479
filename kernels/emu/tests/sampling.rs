//! `sample_rows` (`sampling.cu`), emulated, against the host references the GPU test uses:
//! greedy choice with its logprob and top-n, the processors' effect on the reported
//! distribution, draws that depend only on (seed, position) and follow the distribution
//! (χ², with fewer draws than on a GPU: each row is a 512-thread CTA), and the bounds that
//! top-k, top-p, typical-p and grammar masks put on the draws.

#[path = "../../tests/common/reference.rs"]
mod reference;

use std::collections::HashSet;

use reference::{log_softmax, random};
use rill_kernels::sampling::{SampleParams, sample_config};
use rill_kernels_emu::{DevBuf, launch};

/// What one launch returned, per row.
struct Out {
    token: Vec<u32>,
    logprob: Vec<f32>,
    top: Vec<u32>,
    top_logprob: Vec<f32>,
}

/// Sample with `params[r]` from row r of `logits` (or its only row), reporting up to
/// `max_top_n` alternatives (each costs the kernel two block reductions, even for rows asking for none);
/// penalty lists are `(token, count all, count output)` triples, masks the mask words.
fn sample(
    logits: &[f32],
    vocab: usize,
    params: &[SampleParams],
    lists: &[(u32, u32, u32)],
    masks: &[u32],
    max_top_n: usize,
) -> Out {
    let rows = params.len();
    let shared = logits.len() == vocab;
    let params: Vec<SampleParams> = (0..rows)
        .map(|r| SampleParams { row: if shared { 0 } else { r as u32 }, ..params[r] })
        .collect();
    let list = |f: fn(&(u32, u32, u32)) -> u32| {
        DevBuf::from_slice(&lists.iter().map(f).chain([0]).collect::<Vec<_>>())
    };
    let (tokens, all, output) = (list(|l| l.0), list(|l| l.1), list(|l| l.2));
    let d_masks = DevBuf::from_slice(&masks.iter().copied().chain([0]).collect::<Vec<_>>());
    let (d_logits, work) = (DevBuf::from_slice(logits), DevBuf::<f32>::zeros(rows * vocab));
    let d_params = DevBuf::from_slice(&params);
    let (token, logprob) = (DevBuf::<u32>::zeros(rows), DevBuf::<f32>::zeros(rows));
    let top = DevBuf::<u32>::zeros((rows * max_top_n).max(1));
    let top_logprob = DevBuf::<f32>::zeros((rows * max_top_n).max(1));
    let args = [
        (&d_logits).into(),
        (&work).into(),
        (vocab as i32).into(),
        (&d_params).into(),
        (&tokens).into(),
        (&all).into(),
        (&output).into(),
        (&d_masks).into(),
        (&token).into(),
        (&logprob).into(),
        (&top).into(),
        (&top_logprob).into(),
        (max_top_n as i32).into(),
    ];
    // SAFETY: the arguments follow `sample_rows`; as `Kernels::sample_rows` checks, every
    // row reads a logits row that exists, penalty entries and mask words inside the lists
    // (each test's offsets and lengths are within them), and writes rows x vocab of work,
    // rows of token/logprob and rows x max_top_n of the top-n outputs.
    unsafe { launch("sample_rows", sample_config(rows).unwrap(), &args) }
        .unwrap_or_else(|e| panic!("{e}"));
    Out {
        token: token.to_vec(),
        logprob: logprob.to_vec(),
        top: top.to_vec(),
        top_logprob: top_logprob.to_vec(),
    }
}

#[test]
fn greedy_rows_take_the_first_maximum_with_its_logprob_and_top_n() {
    let vocab = 5000;
    let mut logits = random(3 * vocab, 1);
    logits[vocab + 17] = 9.0;
    logits[vocab + 400] = 9.0; // a tie: the lower id wins
    const TOP: usize = 4;
    let params = [SampleParams { top_n: 3, ..Default::default() }; 3];
    let out = sample(&logits, vocab, &params, &[], &[], TOP);
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
fn penalties_and_temperature_shape_the_reported_distribution() {
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
    let out = sample(&row, 6, &[p], &lists, &[], 0);
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
    let vocab = 12;
    let row: Vec<f32> = (0..vocab).map(|i| (i as f32 * 0.37).sin()).collect();
    let n = 600;
    let params: Vec<SampleParams> = (0..n)
        .map(|i| SampleParams {
            flags: SampleParams::DO_SAMPLE,
            temperature: 0.7,
            seed: 11,
            position: i as u64,
            ..Default::default()
        })
        .collect();
    let out = sample(&row, vocab, &params, &[], &[], 0);
    let scaled: Vec<f32> = row.iter().map(|x| x / 0.7).collect();
    let probs: Vec<f64> = log_softmax(&scaled).iter().map(|l| l.exp()).collect();
    assert!(probs.iter().all(|p| p * n as f64 >= 5.0), "χ² needs 5 expected draws each");
    let mut counts = vec![0u64; vocab];
    out.token.iter().for_each(|&t| counts[t as usize] += 1);
    let chi: f64 = counts
        .iter()
        .zip(&probs)
        .map(|(&o, &p)| (o as f64 - p * n as f64).powi(2) / (p * n as f64))
        .sum();
    assert!(chi < 31.3, "chi² {chi:.1} over 11 degrees of freedom (p = 0.001)");
    // The same (seed, position) alone gives the same token as in the crowd.
    let alone = sample(&row, vocab, &params[123..124], &[], &[], 0);
    assert_eq!(alone.token[0], out.token[123]);
}

#[test]
fn top_k_top_p_typical_and_masks_bound_the_draws() {
    let vocab = 3000;
    let row = random(vocab, 7);
    let mut order: Vec<usize> = (0..vocab).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    let n = 40;
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
    let params = with(&|p| {
        p.top_k = 5;
        p.temperature = 5.0;
    });
    let out = sample(&row, vocab, &params, &[], &[], 0);
    let top5: HashSet<u32> = order[..5].iter().map(|&i| i as u32).collect();
    assert_eq!(out.token.iter().copied().collect::<HashSet<_>>(), top5);
    // A top_p so small it keeps one token: always the argmax, logprob 0.
    let out = sample(&row, vocab, &with(&|p| p.top_p = 1e-6), &[], &[], 0);
    assert!(out.token.iter().all(|&t| t == order[0] as u32));
    assert!(out.logprob.iter().all(|l| l.abs() < 1e-6));
    // A mask allowing three tokens: only those.
    let mut mask = vec![0u32; vocab.div_ceil(32)];
    for t in [5usize, 700, 2999] {
        mask[t / 32] |= 1 << (t % 32);
    }
    let out = sample(&row, vocab, &with(&|p| p.mask_off = 0), &[], &mask, 0);
    assert!(out.token.iter().all(|t| [5, 700, 2999].contains(t)));
    // Nothing allowed: reported, not a crash.
    let none = vec![0u32; vocab.div_ceil(32)];
    let out = sample(&row, vocab, &with(&|p| p.mask_off = 0)[..1], &[], &none, 0);
    assert_eq!(out.token[0], u32::MAX);
    // typical_p keeps the tokens nearest the entropy: probabilities 0.4, 0.3, 0.2, 0.1
    // with mass 0.4 keep tokens 1 and 2 only.
    let small = [0.4f64, 0.3, 0.2, 0.1].map(|p| p.ln() as f32);
    let out = sample(&small, 4, &with(&|p| p.typical_p = 0.4), &[], &[], 0);
    assert!(out.token.iter().all(|&t| t == 1 || t == 2));
}
