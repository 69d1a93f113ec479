//! The tests of `sample_rows` (`sampling.cu`), written once against a [`Sampler`]: the GPU
//! tests run them with the real launcher, the emulated tests of `kernels/emu` (which include
//! this file by path) with the kernel emulator. Greedy choice with its logprob and top-n, the
//! processors' effect on the reported distribution, draws that depend only on (seed,
//! position) and follow the distribution (χ²), and the bounds that top-k, top-p, typical-p
//! and grammar masks put on the draws.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashSet;

use rill_kernels::sampling::SampleParams;

use super::reference::{log_softmax, random};

/// What one launch returned, per row.
pub struct Out {
    pub token: Vec<u32>,
    pub logprob: Vec<f32>,
    /// `rows × max_top_n` alternatives, most likely first.
    pub top: Vec<u32>,
    pub top_logprob: Vec<f32>,
}

/// One launch of `sample_rows`, as a test asks for it.
pub struct Launch<'a> {
    /// `[_, vocab]`.
    pub logits: &'a [f32],
    pub vocab: usize,
    /// Row r's parameters, reading row r of `logits` (or its only row).
    pub params: Vec<SampleParams>,
    /// The penalty lists, as (token, count all, count output) triples.
    pub lists: &'a [(u32, u32, u32)],
    /// The grammar mask words.
    pub masks: &'a [u32],
    /// Alternatives a row may report: each costs the kernel two block reductions, even for
    /// rows asking for none, so only the top-n test asks for any.
    pub max_top_n: usize,
}

impl<'a> Launch<'a> {
    /// Sample with `params[r]` from row r of `logits` (or its only row, shared by every
    /// entry), with no penalty lists, masks or alternatives.
    fn new(logits: &'a [f32], vocab: usize, params: &[SampleParams]) -> Launch<'a> {
        let shared = logits.len() == vocab;
        let params = (0..params.len())
            .map(|r| SampleParams { row: if shared { 0 } else { r as u32 }, ..params[r] })
            .collect();
        Launch { logits, vocab, params, lists: &[], masks: &[], max_top_n: 0 }
    }

    /// The penalty lists' three columns and the mask words, as the kernel reads them, each
    /// with a 0 after it (so that no buffer is empty).
    pub fn u32_buffers(&self) -> [Vec<u32>; 4] {
        let column = |f: fn(&(u32, u32, u32)) -> u32| self.lists.iter().map(f).chain([0]);
        let masks = self.masks.iter().copied().chain([0]).collect();
        [column(|l| l.0).collect(), column(|l| l.1).collect(), column(|l| l.2).collect(), masks]
    }
}

/// Runs `sample_rows` on one side (a GPU, the emulator).
pub trait Sampler {
    /// Draws of the χ² test, and the spread of its logits (`spread × sin(0.37 i)`): a wider
    /// spread has rarer tokens, which need more draws (the test needs five expected each).
    const CHI_DRAWS: (usize, f32);
    /// Draws of each bound that `top_k_top_p_typical_and_masks_bound_the_draws` checks.
    const BOUND_DRAWS: usize;

    /// Upload the launch's inputs, run it, and download what it wrote.
    fn sample(&self, launch: &Launch) -> Out;
}

/// `row` repeated `n` times: one logits row per sequence, as the engine launches.
fn rows(row: &[f32], n: usize) -> Vec<f32> {
    row.iter().copied().cycle().take(n * row.len()).collect()
}

pub fn greedy_rows_take_the_first_maximum_with_its_logprob_and_top_n(s: &impl Sampler) {
    const TOP: usize = 4;
    let vocab = 5000;
    let mut logits = random(3 * vocab, 1);
    logits[vocab + 17] = 9.0;
    logits[vocab + 400] = 9.0; // a tie: the lower id wins
    let params = [SampleParams { top_n: 3, ..Default::default() }; 3];
    let out = s.sample(&Launch { max_top_n: TOP, ..Launch::new(&logits, vocab, &params) });
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

pub fn penalties_and_temperature_shape_the_reported_distribution(s: &impl Sampler) {
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
    let out = s.sample(&Launch { lists: &lists, ..Launch::new(&row, 6, &[p]) });
    let mut want = row.clone();
    want[0] = row[0] / 2.0 - 2.0 * 0.5 / 5.0;
    want[4] = row[4] / 2.0 - 1.0 * 0.5 / 5.0 - 0.25 - 0.25;
    let scaled: Vec<f32> = want.iter().map(|x| x / 0.5).collect();
    let lp = log_softmax(&scaled);
    assert_eq!(out.token[0], 2);
    assert!((out.logprob[0] as f64 - lp[2]).abs() < 1e-4, "{} vs {}", out.logprob[0], lp[2]);
}

pub fn draws_follow_the_distribution_and_depend_only_on_seed_and_position<S: Sampler>(s: &S) {
    let (n, spread) = S::CHI_DRAWS;
    let vocab = 12;
    let row: Vec<f32> = (0..vocab).map(|i| (i as f32 * 0.37).sin() * spread).collect();
    let params: Vec<SampleParams> = (0..n)
        .map(|i| SampleParams {
            flags: SampleParams::DO_SAMPLE,
            temperature: 0.7,
            seed: 11,
            position: i as u64,
            ..Default::default()
        })
        .collect();
    let out = s.sample(&Launch::new(&rows(&row, n), vocab, &params));
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
    let alone = s.sample(&Launch::new(&row, vocab, &params[123..124]));
    assert_eq!(alone.token[0], out.token[123]);
}

pub fn top_k_top_p_typical_and_masks_bound_the_draws<S: Sampler>(s: &S) {
    let n = S::BOUND_DRAWS;
    let vocab = 3000;
    let row = random(vocab, 7);
    let mut order: Vec<usize> = (0..vocab).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    let logits = rows(&row, n);
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
    let out = s.sample(&Launch::new(&logits, vocab, &params));
    let top5: HashSet<u32> = order[..5].iter().map(|&i| i as u32).collect();
    assert_eq!(out.token.iter().copied().collect::<HashSet<_>>(), top5);
    // A top_p so small it keeps one token: always the argmax, logprob 0.
    let out = s.sample(&Launch::new(&logits, vocab, &with(&|p| p.top_p = 1e-6)));
    assert!(out.token.iter().all(|&t| t == order[0] as u32));
    assert!(out.logprob.iter().all(|l| l.abs() < 1e-6));
    // A mask allowing three tokens: only those.
    let mut mask = vec![0u32; vocab.div_ceil(32)];
    for t in [5usize, 700, 2999] {
        mask[t / 32] |= 1 << (t % 32);
    }
    let masked = with(&|p| p.mask_off = 0);
    let out = s.sample(&Launch { masks: &mask, ..Launch::new(&logits, vocab, &masked) });
    assert!(out.token.iter().all(|t| [5, 700, 2999].contains(t)));
    // Nothing allowed: reported, not a crash.
    let none = vec![0u32; vocab.div_ceil(32)];
    let out = s.sample(&Launch { masks: &none, ..Launch::new(&row, vocab, &masked[..1]) });
    assert_eq!(out.token[0], u32::MAX);
    // typical_p keeps the tokens nearest the entropy: probabilities 0.4, 0.3, 0.2, 0.1
    // with mass 0.4 keep tokens 1 and 2 only.
    let small = [0.4f64, 0.3, 0.2, 0.1].map(|p| p.ln() as f32);
    let typical = with(&|p| p.typical_p = 0.4);
    let out = s.sample(&Launch::new(&rows(&small, n), 4, &typical));
    assert!(out.token.iter().all(|&t| t == 1 || t == 2));
}
