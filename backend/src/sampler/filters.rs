//! The warpers that shrink the distribution — top-k, top-p, typical — with TGI's
//! (Hugging Face's) semantics, selecting before sorting.
//!
//! A distribution is either the whole row or a short list of candidates. A filter
//! over the whole row never sorts it: top-k is one selection pass; top-p gathers
//! the tokens within τ of the maximum, doubling τ until they hold enough mass,
//! and sorts only those; typical does the same on an interval around the row's
//! mean surprisal. Each filter renormalises over what the previous one kept, as
//! TGI's chain of `-inf` masks does.

use super::row::{self, BlockSums};

/// Tokens still in play, each with its (processed) logit.
#[derive(Clone, Debug, PartialEq)]
pub enum Dist {
    /// Every token of the row (masked ones at -∞).
    Full,
    /// These tokens only, sorted by logit, largest first (ties: lower id first).
    Cands(Vec<(u32, f32)>),
}

fn sort_desc(c: &mut [(u32, f32)]) {
    c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
}

/// Candidates in [`Dist::Cands`] order.
pub fn sorted(mut c: Vec<(u32, f32)>) -> Vec<(u32, f32)> {
    sort_desc(&mut c);
    c
}

/// Make candidates usable: NaN and -∞ leave; if any is +∞, those share all the
/// probability (logit 0) and the rest leave.
pub fn sanitize(c: &mut Vec<(u32, f32)>) {
    c.retain(|&(_, l)| l > f32::NEG_INFINITY);
    if c.first().is_some_and(|&(_, l)| l == f32::INFINITY) {
        c.retain(|&(_, l)| l == f32::INFINITY);
        c.iter_mut().for_each(|x| x.1 = 0.0);
    }
}

/// Hugging Face's `TopKLogitsWarper`: keep every token scoring at least the k-th
/// largest (so ties at the boundary stay). `k ≥ vocab` keeps everything.
pub fn top_k(dist: Dist, row: &[f32], k: usize) -> Dist {
    match dist {
        Dist::Cands(mut c) => {
            if k < c.len() {
                let kth = c[k - 1].1;
                let keep = c.partition_point(|&(_, l)| l >= kth);
                c.truncate(keep);
            }
            Dist::Cands(c)
        }
        Dist::Full if k >= row.len() => Dist::Full,
        Dist::Full => {
            let mut c = row::top_entries(row, k, true);
            c.retain(|&(_, l)| l > f32::NEG_INFINITY);
            Dist::Cands(c)
        }
    }
}

/// `e^(l - max)` for every candidate.
fn weights(c: &[(u32, f32)], max: f32) -> Vec<f64> {
    let mut w = Vec::with_capacity(c.len());
    row::weights(c, max, &mut w);
    w
}

/// The shortest prefix of `sorted` (ordered by `key`, ascending) whose probability,
/// each token's weight `e^(l - max)` over `total`, reaches `mass`: token i stays while
/// the tokens before it hold less than `mass` (HF's `cumulative <= 1 - p` removal seen
/// from the other end), and so does every token whose key equals the last kept one's
/// (ties at the cut stay, as the GPU's threshold keeps them: `crate::sampling`). Keeps at
/// least one token.
fn prefix_with_mass(
    sorted: &mut Vec<(u32, f32)>,
    max: f32,
    total: f64,
    mass: f64,
    key: impl Fn(f32) -> f32,
) {
    let mut before = 0.0;
    let mut keep = 0;
    for w in weights(sorted, max) {
        if keep > 0 && before >= mass * total {
            break;
        }
        before += w;
        keep += 1;
    }
    let keep = keep.max(1);
    let last = key(sorted[keep - 1].1);
    let ties = sorted[keep..].iter().take_while(|&&(_, l)| key(l) == last).count();
    sorted.truncate(keep + ties);
}

/// Hugging Face's `TopPLogitsWarper` (nucleus sampling).
pub fn top_p(dist: Dist, row: &[f32], sums: Option<&BlockSums>, p: f32) -> Dist {
    let p = p as f64;
    match dist {
        Dist::Cands(mut c) => {
            let m = c[0].1;
            let total: f64 = weights(&c, m).iter().sum();
            prefix_with_mass(&mut c, m, total, p, |l| -l);
            Dist::Cands(c)
        }
        Dist::Full => {
            let sums = sums.expect("a whole-row distribution comes with its sums");
            let m = sums.max;
            let mut tau = 8.0f32;
            let mut c = Vec::new();
            loop {
                row::collect_between(row, m - tau, f32::INFINITY, &mut c);
                let held: f64 = weights(&c, m).iter().sum();
                if held >= p * sums.total || tau > 1e4 {
                    break;
                }
                tau *= 2.0;
            }
            sort_desc(&mut c);
            prefix_with_mass(&mut c, m, sums.total, p, |l| -l);
            Dist::Cands(c)
        }
    }
}

/// Hugging Face's `TypicalLogitsWarper` (Meister et al.): keep the tokens whose
/// surprisal is closest to the distribution's entropy until they hold `mass`.
/// Surprisal minus entropy is `mean(x) - x` for `x = logit - max`, so the kept set
/// is an interval of logits around the mean.
pub fn typical(dist: Dist, row: &[f32], mass: f32) -> Dist {
    let mass = mass as f64;
    let (m, cands) = match &dist {
        Dist::Cands(c) => (c[0].1, Some(c.as_slice())),
        Dist::Full => (row::max(row), None),
    };
    let (z, zx) = match cands {
        Some(c) => weights(c, m)
            .iter()
            .zip(c)
            .fold((0.0, 0.0), |(z, zx), (&e, &(_, l))| (z + e, zx + e * (l - m) as f64)),
        None => row::entropy_terms(row, m),
    };
    let centre = (zx / z) as f32;
    let key = |l: f32| ((l - m) - centre).abs();
    let mut c = match cands {
        Some(c) => c.to_vec(),
        None => {
            let mut r = 0.5f32;
            let mut c = Vec::new();
            loop {
                row::collect_between(row, m + centre - r, m + centre + r, &mut c);
                let held: f64 = weights(&c, m).iter().sum();
                if held >= mass * z || r > 1e4 {
                    break c;
                }
                r *= 2.0;
            }
        }
    };
    c.sort_unstable_by(|a, b| key(a.1).total_cmp(&key(b.1)).then(a.0.cmp(&b.0)));
    prefix_with_mass(&mut c, m, z, mass, key);
    sort_desc(&mut c);
    Dist::Cands(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(d: &Dist) -> Vec<u32> {
        match d {
            Dist::Full => panic!("expected candidates"),
            Dist::Cands(c) => c.iter().map(|t| t.0).collect(),
        }
    }

    fn softmax(row: &[f32]) -> Vec<f64> {
        let m = row.iter().copied().fold(f32::MIN, f32::max) as f64;
        let e: Vec<f64> = row.iter().map(|&l| (l as f64 - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|v| v / z).collect()
    }

    #[test]
    fn top_k_keeps_ties_and_tolerates_k_beyond_the_vocabulary() {
        let row = [1.0, 4.0, 3.0, 3.0, -2.0, f32::NEG_INFINITY];
        assert_eq!(ids(&top_k(Dist::Full, &row, 1)), vec![1]);
        assert_eq!(ids(&top_k(Dist::Full, &row, 2)), vec![1, 2, 3]);
        assert_eq!(ids(&top_k(Dist::Full, &row, 5)), vec![1, 2, 3, 0, 4]);
        assert_eq!(top_k(Dist::Full, &row, 6), Dist::Full);
        assert_eq!(top_k(Dist::Full, &row, 1000), Dist::Full);
        // All equal: every token ties with the k-th.
        assert_eq!(ids(&top_k(Dist::Full, &[0.5; 4], 2)), vec![0, 1, 2, 3]);
    }

    #[test]
    fn top_p_matches_hugging_face_on_a_hand_computed_row() {
        // Probabilities 0.5, 0.25, 0.125, 0.125 (in token order 2, 0, 1, 3).
        let ln = |p: f64| p.ln() as f32;
        let row = [ln(0.25), ln(0.125), ln(0.5), ln(0.125)];
        let sums = BlockSums::of(&row);
        let cases = [(0.3, vec![2]), (0.45, vec![2]), (0.6, vec![2, 0]), (0.7, vec![2, 0])];
        for (p, want) in cases {
            assert_eq!(ids(&top_p(Dist::Full, &row, Some(&sums), p)), want, "p = {p}");
        }
        // 0.8 needs a third token; the two at 0.125 tie and both stay (the GPU's rule).
        assert_eq!(ids(&top_p(Dist::Full, &row, Some(&sums), 0.8)), vec![2, 0, 1, 3]);
        // A top_p so small it keeps one token.
        assert_eq!(ids(&top_p(Dist::Full, &row, Some(&sums), 1e-6)), vec![2]);
        // On candidates (after top-k) it renormalises over them: of {2, 0}, token 2
        // holds 2/3 ≥ 0.6.
        let after_k = top_k(Dist::Full, &row, 2);
        assert_eq!(ids(&top_p(after_k, &row, Some(&sums), 0.6)), vec![2]);
    }

    #[test]
    fn top_p_on_a_wide_row_agrees_with_a_full_sort() {
        let row: Vec<f32> = (0..50_000).map(|i| ((i * 7919 % 10007) as f32) / 600.0).collect();
        let sums = BlockSums::of(&row);
        let probs = softmax(&row);
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for p in [0.1f32, 0.5, 0.9, 0.99] {
            let mut cum = 0.0;
            let mut want: Vec<u32> = order
                .iter()
                .take_while(|&&i| {
                    let keep = cum < p as f64;
                    cum += probs[i];
                    keep
                })
                .map(|&i| i as u32)
                .collect();
            // Every logit occurs about five times: the ties at the cut stay.
            let last = row[*want.last().unwrap() as usize];
            let ties = order[want.len()..].iter().take_while(|&&i| row[i] == last);
            want.extend(ties.map(|&i| i as u32).collect::<Vec<_>>());
            let got = ids(&top_p(Dist::Full, &row, Some(&sums), p));
            assert_eq!(got.len(), want.len(), "p = {p}");
            assert_eq!(got, want, "p = {p}");
        }
    }

    #[test]
    fn typical_keeps_the_tokens_nearest_the_entropy() {
        // Probabilities 0.4, 0.3, 0.2, 0.1: entropy 1.2799 nats; surprisals 0.916,
        // 1.204, 1.609, 2.303 → distances 0.364, 0.076, 0.330, 1.023. Order by
        // distance: token 1 (0.3), 2 (0.2), 0 (0.4), 3.
        let row = [0.4f64, 0.3, 0.2, 0.1].map(|p| p.ln() as f32);
        assert_eq!(ids(&typical(Dist::Full, &row, 0.2)), vec![1]);
        assert_eq!(ids(&typical(Dist::Full, &row, 0.4)), vec![1, 2]);
        assert_eq!(ids(&typical(Dist::Full, &row, 0.6)), vec![0, 1, 2]);
        assert_eq!(ids(&typical(Dist::Full, &row, 0.95)), vec![0, 1, 2, 3]);
        // The same on candidates.
        let c = Dist::Cands(vec![(0, row[0]), (1, row[1]), (2, row[2]), (3, row[3])]);
        assert_eq!(ids(&typical(c, &row, 0.4)), vec![1, 2]);
    }

    #[test]
    fn ties_at_the_cut_stay() {
        let row = [2.0f32; 8];
        let sums = BlockSums::of(&row);
        let all: Vec<u32> = (0..8).collect();
        assert_eq!(ids(&top_p(Dist::Full, &row, Some(&sums), 0.3)), all);
        assert_eq!(ids(&typical(Dist::Full, &row, 0.3)), all);
        // Two tied below a clear maximum: both or neither.
        let row = [0.0f32, 3.0, 1.0, 1.0, -2.0];
        let sums = BlockSums::of(&row);
        assert_eq!(ids(&top_p(Dist::Full, &row, Some(&sums), 0.9)), vec![1, 2, 3]);
        assert_eq!(ids(&top_p(Dist::Full, &row, Some(&sums), 0.5)), vec![1]);
    }
}
