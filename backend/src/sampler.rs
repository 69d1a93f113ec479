//! Choosing the next token from a logits row.
//!
//! Greedy only for now (the first maximum, as `torch.argmax` picks); seeded sampling
//! and the logits processors are their own issue and will extend this file.

use rill_proto::TokenId;

/// The most likely token and its natural-log probability.
pub fn greedy(logits: &[f32]) -> (TokenId, f32) {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    (TokenId(best as u32), logits[best] - log_sum_exp(logits, logits[best]))
}

/// The `n` most likely tokens with their logprobs, most likely first (ties: lower
/// id first). One pass over the row keeping a sorted list of `n`: selection, not a
/// sort of the whole vocabulary.
pub fn top_n(logits: &[f32], n: usize) -> Vec<(TokenId, f32)> {
    if n == 0 || logits.is_empty() {
        return Vec::new();
    }
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(n + 1);
    for (i, &v) in logits.iter().enumerate() {
        if best.len() == n && v <= best[n - 1].1 {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= v);
        best.insert(at, (i, v));
        best.truncate(n);
    }
    let max = best[0].1;
    let lse = log_sum_exp(logits, max);
    best.into_iter().map(|(i, v)| (TokenId(i as u32), v - lse)).collect()
}

/// The logprob of `token` under a logits row.
pub fn logprob(logits: &[f32], token: TokenId) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    logits[token.index()] - log_sum_exp(logits, max)
}

/// `log Σ exp(l)`, given the row's maximum.
fn log_sum_exp(logits: &[f32], max: f32) -> f32 {
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_n_is_sorted_and_agrees_with_greedy() {
        let row = [0.5, 3.0, -1.0, 2.0, 3.0, 0.0];
        let top = top_n(&row, 3);
        assert_eq!(top.iter().map(|t| t.0.0).collect::<Vec<_>>(), vec![1, 4, 3]);
        let (g, lp) = greedy(&row);
        assert_eq!((top[0].0, top[0].1), (g, lp));
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
        assert_eq!(top_n(&row, 10).len(), 6);
        assert!(top_n(&row, 0).is_empty());
    }

    #[test]
    fn first_maximum_and_its_logprob() {
        let (t, lp) = greedy(&[1.0, 3.0, 3.0, -2.0]);
        assert_eq!(t, TokenId(1));
        let z = 1f32.exp() + 2.0 * 3f32.exp() + (-2f32).exp();
        assert!((lp - (3f32.exp() / z).ln()).abs() < 1e-6);
    }
}
