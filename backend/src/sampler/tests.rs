//! The sampler against hand-computed distributions, and statistically.

use super::*;
use rill_proto::{ForwardBatch, SeqStep};

fn params() -> SamplingParams {
    SamplingParams::default()
}

fn step(id: u64, tokens: &[u32], start_pos: usize, p: Option<SamplingParams>) -> SeqStep {
    let tokens = tokens.iter().copied().map(TokenId).collect();
    SeqStep { sampling: p.map(Box::new), ..SeqStep::new(SeqId(id), tokens, start_pos, Vec::new()) }
}

/// Run one sampling step for a single sequence.
fn run(s: &mut Sampler, st: &SeqStep, row: &[f32]) -> Result<Choice, String> {
    let batch = ForwardBatch { seqs: vec![st.clone()], ..Default::default() };
    s.prepare(&batch);
    let mut jobs = s.take_mask_jobs(&batch);
    compute_masks(&mut jobs);
    let mut row = row.to_vec();
    s.sample(vec![(st, &mut row[..])], jobs).pop().unwrap().1
}

/// One choice with `p` for a fresh sequence whose tokens so far are `history`.
fn choose_once(p: SamplingParams, history: &[u32], row: &[f32]) -> Choice {
    let mut s = Sampler::new(row.len());
    run(&mut s, &step(0, history, 0, Some(p)), row).unwrap()
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().copied().filter(|v| !v.is_nan()).fold(f32::MIN, f32::max) as f64;
    let z: f64 = row.iter().filter(|v| !v.is_nan()).map(|&l| (l as f64 - m).exp()).sum();
    row.iter().map(|&l| l as f64 - m - z.ln()).collect()
}

fn close(a: f32, b: f64) -> bool {
    (a as f64 - b).abs() < 1e-5
}

#[test]
fn greedy_takes_the_first_maximum_with_its_logprob() {
    let row = [1.0, 3.0, 3.0, -2.0, f32::NEG_INFINITY];
    let c = choose_once(params(), &[0], &row);
    assert_eq!(c.token, TokenId(1));
    assert!(close(c.logprob, log_softmax(&row)[1]));
    // A sequence the sampler has no parameters for is greedy too.
    let mut s = Sampler::new(5);
    let c2 = run(&mut s, &step(9, &[0], 0, None), &row).unwrap();
    assert_eq!((c2.token, c2.logprob), (c.token, c.logprob));
    assert_eq!(s.num_sequences(), 0, "greedy sequences need no state");
}

#[test]
fn top_n_alternatives_come_from_the_processed_distribution() {
    let row = [0.0, 2.0, 1.0, 3.0];
    let mut s = Sampler::new(4);
    let mut st = step(0, &[0], 0, Some(SamplingParams { top_k: 2, ..params() }));
    st.top_n = 3;
    let c = run(&mut s, &st, &row).unwrap();
    // Only tokens 3 and 1 survive top_k = 2, renormalised between them.
    let lp = log_softmax(&[3.0, 2.0]);
    assert_eq!(c.top.iter().map(|t| t.0.0).collect::<Vec<_>>(), vec![3, 1]);
    assert!(close(c.top[0].1, lp[0]) && close(c.top[1].1, lp[1]));
    let chosen = c.top.iter().find(|t| t.0 == c.token).unwrap();
    assert_eq!(chosen.1, c.logprob);
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
    let row = [2.0, -1.0, 1.5, 0.5];
    let p = SamplingParams { repetition_penalty: 2.0, ..params() };
    // Tokens 0 and 1 were seen: [1.0, -2.0, 1.5, 0.5] → token 2 wins.
    let c = choose_once(p.clone(), &[0, 1, 1], &row);
    assert_eq!(c.token, TokenId(2));
    assert!(close(c.logprob, log_softmax(&[1.0, -2.0, 1.5, 0.5])[2]));
    // Nothing seen twice counts twice.
    let c = choose_once(p, &[3], &row);
    assert!(close(c.logprob, log_softmax(&[2.0, -1.0, 1.5, 0.25])[0]));
}

#[test]
fn frequency_penalties_follow_tgi_and_openai() {
    let row = [2.0, 1.9, 0.0, 0.0];
    // TGI: count / length × penalty over prompt and output: token 0 seen 2 of 4.
    let p = SamplingParams { frequency_penalty: 1.0, ..params() };
    let c = choose_once(p, &[0, 0, 1, 3], &row);
    let want = log_softmax(&[2.0 - 0.5, 1.9 - 0.25, 0.0, -0.25]);
    assert_eq!(c.token, TokenId(1));
    assert!(close(c.logprob, want[1]));

    // OpenAI: only generated tokens count; presence once, count per occurrence.
    let p = SamplingParams { presence_penalty: 0.5, count_penalty: 0.25, ..params() };
    let mut s = Sampler::new(4);
    let first = run(&mut s, &step(0, &[0, 0, 1], 0, Some(p)), &row).unwrap();
    assert_eq!(first.token, TokenId(0), "the prompt's tokens are not penalised");
    let second = run(&mut s, &step(0, &[0], 3, None), &row).unwrap();
    // Token 0 generated once: 2.0 - 0.5 - 0.25 = 1.25 < 1.9.
    assert_eq!(second.token, TokenId(1));
    assert!(close(second.logprob, log_softmax(&[1.25, 1.9, 0.0, 0.0])[1]));
}

#[test]
fn logit_bias_is_added_before_the_distribution_and_needs_the_host() {
    let row = [1.0, 3.0, 0.5, -2.0];
    let p = SamplingParams { logit_bias: vec![(2, 10.0), (1, -100.0)], ..params() };
    assert!(!p.is_greedy());
    let c = choose_once(p.clone(), &[0], &row);
    let biased = [1.0, -97.0, 10.5, -2.0];
    assert_eq!(c.token, TokenId(2));
    assert!(close(c.logprob, log_softmax(&biased)[2]));
    // A device sampler lacks the bias: that row samples on the host.
    let mut s = Sampler::new(4);
    let batch = ForwardBatch { seqs: vec![step(3, &[0], 0, Some(p))], ..Default::default() };
    s.prepare(&batch);
    assert!(s.needs_host(&batch.seqs[0]));
    let plain = ForwardBatch { seqs: vec![step(4, &[0], 0, Some(params()))], ..Default::default() };
    s.prepare(&plain);
    assert!(!s.needs_host(&plain.seqs[0]));
}

#[test]
fn recompute_after_preemption_does_not_count_tokens_twice() {
    let row = [1.0, 0.9, 0.0];
    let p = SamplingParams { frequency_penalty: 2.0, ..params() };
    let mut a = Sampler::new(3);
    let first = run(&mut a, &step(0, &[2, 2], 0, Some(p.clone())), &row).unwrap();
    // The whole sequence again from position 0, as after a preemption.
    let again = run(&mut a, &step(0, &[2, 2, first.token.0], 0, None), &row).unwrap();
    let mut b = Sampler::new(3);
    let _ = run(&mut b, &step(0, &[2, 2], 0, Some(p)), &row).unwrap();
    let straight = run(&mut b, &step(0, &[first.token.0], 2, None), &row).unwrap();
    assert_eq!(again, straight);
}

#[test]
fn released_sequences_drop_their_state() {
    let mut s = Sampler::new(3);
    let p = SamplingParams { do_sample: true, seed: 1, ..params() };
    run(&mut s, &step(0, &[1], 0, Some(p)), &[0.0; 3]).unwrap();
    assert_eq!(s.num_sequences(), 1);
    s.prepare(&ForwardBatch { released: vec![SeqId(0)], ..Default::default() });
    assert_eq!(s.num_sequences(), 0);
}

#[test]
fn temperature_scales_the_reported_distribution_and_near_zero_is_argmax() {
    let row = [1.0, 2.0, 0.5];
    let p = SamplingParams { temperature: 0.5, seed: 3, ..params() };
    let c = choose_once(p, &[0], &row);
    assert!(close(c.logprob, log_softmax(&[2.0, 4.0, 1.0])[c.token.index()]));
    for seed in 0..50 {
        let p = SamplingParams { temperature: 1e-4, seed, ..params() };
        let c = choose_once(p, &[0], &row);
        assert_eq!(c.token, TokenId(1));
        assert!(c.logprob.abs() < 1e-6);
    }
}

#[test]
fn nan_and_infinities_are_guarded() {
    // NaN is never chosen; the rest is normal.
    let row = [f32::NAN, 1.0, 0.0];
    for p in [params(), SamplingParams { do_sample: true, top_p: 0.9, ..params() }] {
        for seed in 0..20 {
            let c = choose_once(SamplingParams { seed, ..p.clone() }, &[0], &row);
            assert_ne!(c.token, TokenId(0));
            assert!(c.logprob.is_finite());
        }
    }
    // +inf takes all the probability.
    let c =
        choose_once(SamplingParams { do_sample: true, ..params() }, &[0], &[0.0, f32::INFINITY]);
    assert_eq!((c.token, c.logprob), (TokenId(1), 0.0));
    // Nothing left to choose from is an error for this sequence, not a panic.
    let p = SamplingParams { do_sample: true, ..params() };
    let mut s = Sampler::new(3);
    let err = run(&mut s, &step(0, &[0], 0, Some(p)), &[f32::NAN, f32::NEG_INFINITY, f32::NAN]);
    assert!(err.unwrap_err().contains("no token is allowed"));
}

#[test]
fn greedy_equals_top_k_one_and_a_seed_fixes_the_draw() {
    let row: Vec<f32> = (0..1000).map(|i| ((i * 7919 % 997) as f32) / 100.0).collect();
    let greedy = choose_once(params(), &[0], &row);
    for seed in 0..20 {
        let p = SamplingParams { do_sample: true, top_k: 1, seed, ..params() };
        let c = choose_once(p, &[0], &row);
        assert_eq!(c.token, greedy.token);
        assert_eq!(c.logprob, 0.0);
    }
    let draw = |seed| {
        let p = SamplingParams { do_sample: true, seed, ..params() };
        choose_once(p, &[0], &row).token
    };
    assert_eq!(draw(7), draw(7));
    assert!((0..20).map(draw).collect::<std::collections::HashSet<_>>().len() > 5);
}

/// Draw `n` tokens (positions 0..n of one seed) and count them.
fn histogram(p: &SamplingParams, row: &[f32], n: usize) -> Vec<u64> {
    let mut counts = vec![0u64; row.len()];
    let mut s = Sampler::new(row.len());
    run(&mut s, &step(0, &[0], 0, Some(p.clone())), row).unwrap();
    for pos in 1..n {
        let c = run(&mut s, &step(0, &[0], pos, None), row).unwrap();
        counts[c.token.index()] += 1;
    }
    counts
}

/// Pearson's χ² of `observed` against `probs`, and the 99.9th percentile of its
/// distribution (Wilson–Hilferty) for the cells with probability.
fn chi_square(observed: &[u64], probs: &[f64]) -> (f64, f64) {
    let n: u64 = observed.iter().sum();
    let mut chi = 0.0;
    let mut cells = 0;
    for (&o, &p) in observed.iter().zip(probs) {
        if p == 0.0 {
            assert_eq!(o, 0, "a token of probability 0 was drawn");
            continue;
        }
        let e = p * n as f64;
        chi += (o as f64 - e).powi(2) / e;
        cells += 1;
    }
    let df = (cells - 1) as f64;
    let z = 3.09;
    let crit = df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
    (chi, crit)
}

#[test]
fn draws_follow_the_computed_distribution() {
    let row: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
    let n = 30_000;
    // Temperature 0.7 then top_p 0.8: the expected distribution by hand.
    let p = SamplingParams { temperature: 0.7, top_p: 0.8, seed: 11, ..params() };
    let scaled: Vec<f64> = row.iter().map(|&l| (l / 0.7) as f64).collect();
    let z: f64 = scaled.iter().map(|l| l.exp()).sum();
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]));
    let mut probs = vec![0.0; row.len()];
    let mut cum = 0.0;
    for &i in &order {
        if cum >= 0.8 {
            break;
        }
        probs[i] = scaled[i].exp() / z;
        cum += probs[i];
    }
    let kept: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= kept);
    let (chi, crit) = chi_square(&histogram(&p, &row, n), &probs);
    assert!(chi < crit, "temperature + top_p: chi² {chi:.1} > {crit:.1}");

    // Plain sampling is the softmax.
    let p = SamplingParams { do_sample: true, seed: 5, ..params() };
    let probs: Vec<f64> = log_softmax(&row).iter().map(|l| l.exp()).collect();
    let (chi, crit) = chi_square(&histogram(&p, &row, n), &probs);
    assert!(chi < crit, "softmax: chi² {chi:.1} > {crit:.1}");

    // All logits equal: uniform.
    let flat = [0.25f32; 10];
    let (chi, crit) = chi_square(&histogram(&p, &flat, n), &[0.1; 10]);
    assert!(chi < crit, "uniform: chi² {chi:.1} > {crit:.1}");
}

#[test]
fn top_k_never_leaves_the_top_k() {
    let row: Vec<f32> = (0..5000).map(|i| ((i * 104_729 % 5003) as f32) / 700.0).collect();
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    let top: std::collections::HashSet<usize> = order[..7].iter().copied().collect();
    let p = SamplingParams { top_k: 7, temperature: 3.0, seed: 2, ..params() };
    let counts = histogram(&p, &row, 5000);
    for (t, &c) in counts.iter().enumerate() {
        assert!(c == 0 || top.contains(&t), "token {t} drawn {c} times outside the top 7");
    }
    assert!(counts.iter().filter(|&&c| c > 0).count() == 7, "all seven drawn at temperature 3");
}

#[test]
fn typical_p_samples_only_the_typical_set() {
    // Probabilities 0.4, 0.3, 0.2, 0.1: typical_p 0.4 keeps tokens 1 and 2.
    let row = [0.4f64, 0.3, 0.2, 0.1].map(|p| p.ln() as f32);
    let p = SamplingParams { typical_p: 0.4, seed: 9, ..params() };
    let counts = histogram(&p, &row, 4000);
    let (chi, crit) = chi_square(&counts, &[0.0, 0.6, 0.4, 0.0]);
    assert!(chi < crit, "{counts:?}");
}

#[test]
fn watermarked_output_is_detected_and_plain_output_is_not() {
    let vocab = 2000;
    let generate = |watermark: bool| {
        let p = SamplingParams { do_sample: true, watermark, seed: 42, ..params() };
        let mut s = Sampler::new(vocab);
        let mut tokens = vec![TokenId(1)];
        for pos in 0..200 {
            // A fresh, fairly flat row every step, as a model's might be.
            let row: Vec<f32> =
                (0..vocab).map(|t| (uniform(pos as u64 + 1000, t) * 3.0) as f32).collect();
            let st = step(0, &[tokens[pos].0], pos, (pos == 0).then(|| p.clone()));
            tokens.push(run(&mut s, &st, &row).unwrap().token);
        }
        tokens
    };
    let marked = watermark::z_score(&generate(true)).unwrap();
    let plain = watermark::z_score(&generate(false)).unwrap();
    assert!(marked > 6.0, "watermarked z = {marked}");
    assert!(plain.abs() < 3.0, "plain z = {plain}");
}

#[test]
fn the_mask_excludes_tokens_and_the_grammar_sees_the_choice() {
    #[derive(Debug)]
    struct Only(Vec<u32>, Vec<u32>);
    impl rill_proto::Constraint for Only {
        fn start(&self) -> Box<dyn ConstraintState> {
            Box::new(OnlyState(self.0.clone(), self.1.clone(), Vec::new()))
        }
    }
    /// Allows the tokens of .0; forces .1 after the first commit.
    #[derive(Debug)]
    struct OnlyState(Vec<u32>, Vec<u32>, Vec<u32>);
    impl ConstraintState for OnlyState {
        fn fill_mask(&mut self, mask: &mut [u32]) -> Result<(), String> {
            mask.fill(0);
            for &t in &self.0 {
                mask[t as usize / 32] |= 1 << (t % 32);
            }
            Ok(())
        }
        fn commit(&mut self, token: TokenId) -> Result<(), String> {
            self.2.push(token.0);
            if !self.0.contains(&token.0) {
                return Err(format!("{token:?} is not allowed"));
            }
            Ok(())
        }
        fn take_forced(&mut self) -> Result<Vec<TokenId>, String> {
            Ok(std::mem::take(&mut self.1).into_iter().map(TokenId).collect())
        }
    }
    let row: Vec<f32> = (0..100).map(|i| i as f32 / 10.0).collect();
    let grammar = rill_proto::Grammar(std::sync::Arc::new(Only(vec![3, 40, 77], vec![5, 6])));
    let p = SamplingParams { do_sample: true, seed: 1, grammar: Some(grammar), ..params() };
    let mut s = Sampler::new(100);
    let c = run(&mut s, &step(0, &[0], 0, Some(p)), &row).unwrap();
    assert!([3, 40, 77].contains(&c.token.0));
    assert_eq!(c.forced, vec![TokenId(5), TokenId(6)]);
    let lp = log_softmax(&[0.3, 4.0, 7.7]);
    let i = [3, 40, 77].iter().position(|&t| t == c.token.0).unwrap();
    assert!(close(c.logprob, lp[i]));
    for pos in 1..30 {
        let c = run(&mut s, &step(0, &[0], pos, None), &row).unwrap();
        assert!([3, 40, 77].contains(&c.token.0));
        assert!(c.forced.is_empty());
    }
}

#[test]
fn a_sparse_mask_gives_the_distribution_of_the_masked_row() {
    // Few tokens allowed: the sampler works on candidates only. The same row with
    // the others at -inf and no mask goes through the whole-row path.
    #[derive(Debug)]
    struct Allow(Vec<u32>);
    impl rill_proto::Constraint for Allow {
        fn start(&self) -> Box<dyn ConstraintState> {
            Box::new(AllowState(self.0.clone()))
        }
    }
    #[derive(Debug)]
    struct AllowState(Vec<u32>);
    impl ConstraintState for AllowState {
        fn fill_mask(&mut self, mask: &mut [u32]) -> Result<(), String> {
            mask.fill(0);
            self.0.iter().for_each(|&t| mask[t as usize / 32] |= 1 << (t % 32));
            Ok(())
        }
        fn commit(&mut self, _: TokenId) -> Result<(), String> {
            Ok(())
        }
        fn take_forced(&mut self) -> Result<Vec<TokenId>, String> {
            Ok(Vec::new())
        }
    }
    let vocab = 4096;
    let allowed = vec![5, 77, 1000, 1001, 4095];
    let row: Vec<f32> = (0..vocab).map(|t| (uniform(99, t) * 6.0 - 3.0) as f32).collect();
    let mut masked = vec![f32::NEG_INFINITY; vocab];
    allowed.iter().for_each(|&t| masked[t as usize] = row[t as usize]);
    let base = SamplingParams {
        watermark: true,
        repetition_penalty: 1.3,
        frequency_penalty: 0.4,
        temperature: 0.8,
        ..params()
    };
    let history = [77, 77, 1000, 3];
    let top = |row: &[f32], grammar: Option<rill_proto::Grammar>| {
        let p = SamplingParams { grammar, ..base.clone() };
        let mut s = Sampler::new(vocab);
        let mut st = step(0, &history, 0, Some(p));
        st.top_n = 5;
        let c = run(&mut s, &st, row).unwrap();
        (c.token, c.logprob, c.top)
    };
    let grammar = rill_proto::Grammar(std::sync::Arc::new(Allow(allowed.clone())));
    let (t1, lp1, top1) = top(&row, Some(grammar));
    let (t2, lp2, top2) = top(&masked, None);
    assert_eq!(t1, t2);
    assert!((lp1 - lp2).abs() < 1e-5);
    assert_eq!(top1.len(), 5);
    for (a, b) in top1.iter().zip(&top2) {
        assert_eq!(a.0, b.0);
        assert!((a.1 - b.1).abs() < 1e-5, "{a:?} {b:?}");
    }
}

#[test]
fn a_mixed_batch_gives_each_row_what_it_gets_alone() {
    let vocab = 3000;
    let rows: Vec<Vec<f32>> =
        (0..4).map(|r| (0..vocab).map(|t| (uniform(r, t) * 8.0 - 4.0) as f32).collect()).collect();
    let params = [
        SamplingParams::default(),
        SamplingParams { do_sample: true, seed: 5, ..params() },
        SamplingParams { repetition_penalty: 1.5, frequency_penalty: 0.7, ..params() },
        SamplingParams {
            temperature: 0.6,
            top_k: 40,
            top_p: 0.8,
            typical_p: 0.9,
            seed: 8,
            ..params()
        },
    ];
    let steps: Vec<SeqStep> = params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut s = step(i as u64, &[1, 2, 3, i as u32], 0, Some(p.clone()));
            s.top_n = 3;
            s
        })
        .collect();
    let alone: Vec<Choice> = (0..4)
        .map(|i| {
            let mut s = Sampler::new(vocab);
            run(&mut s, &steps[i], &rows[i]).unwrap()
        })
        .collect();
    let mut s = Sampler::new(vocab);
    let batch = ForwardBatch { seqs: steps.clone(), ..Default::default() };
    s.prepare(&batch);
    let mut data = rows.clone();
    let together: Vec<_> =
        s.sample(steps.iter().zip(data.iter_mut().map(|r| &mut r[..])).collect(), Vec::new());
    for (i, (id, c)) in together.into_iter().enumerate() {
        assert_eq!(id, SeqId(i as u64));
        assert_eq!(c.unwrap(), alone[i], "row {i}");
    }
    // Only the rows that need state keep it.
    assert_eq!(s.num_sequences(), 3);
}

/// A sequence whose first step starts after a cached prefix (prefix caching) gets the
/// choice it gets when it runs the whole prompt: the penalties count the prefix's tokens
/// (and the frequency penalty its length), sent once as `prefix`.
#[test]
fn penalties_count_a_cached_prefix_as_if_it_had_run() {
    let vocab = 64;
    let row: Vec<f32> = (0..vocab).map(|t| (uniform(3, t) * 4.0 - 2.0) as f32).collect();
    // The prompt's tokens are among the likeliest, so penalising them changes the choice.
    let mut by_logit: Vec<u32> = (0..vocab as u32).collect();
    by_logit.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
    let prompt: Vec<u32> = [0, 1, 2, 0, 1, 2, 0, 1, 2, 4].iter().map(|&i| by_logit[i]).collect();
    for p in [
        SamplingParams { repetition_penalty: 3.0, ..params() },
        SamplingParams { frequency_penalty: 1.5, ..params() },
        SamplingParams { repetition_penalty: 1.4, do_sample: true, seed: 11, ..params() },
    ] {
        let whole = choose_once(p.clone(), &prompt, &row);
        let mut s = Sampler::new(vocab);
        let mut cached = step(0, &prompt[8..], 8, Some(p.clone()));
        cached.prefix = prompt[..8].iter().copied().map(TokenId).collect();
        assert_eq!(run(&mut s, &cached, &row).unwrap(), whole, "{p:?}");
        // Without the prefix the prompt's repeats go uncounted: another answer.
        let mut s = Sampler::new(vocab);
        let blind = run(&mut s, &step(0, &prompt[8..], 8, Some(p.clone())), &row).unwrap();
        assert_ne!((blind.token, blind.logprob), (whole.token, whole.logprob), "{p:?}");
    }
}
