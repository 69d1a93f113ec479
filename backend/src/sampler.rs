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

/// `log Σ exp(l)`, given the row's maximum.
fn log_sum_exp(logits: &[f32], max: f32) -> f32 {
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_maximum_and_its_logprob() {
        let (t, lp) = greedy(&[1.0, 3.0, 3.0, -2.0]);
        assert_eq!(t, TokenId(1));
        let z = 1f32.exp() + 2.0 * 3f32.exp() + (-2f32).exp();
        assert!((lp - (3f32.exp() / z).ln()).abs() < 1e-6);
    }
}
