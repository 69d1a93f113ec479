//! Kirchenbauer et al.'s green-list watermark ("A Watermark for Large Language
//! Models", 2023) with TGI's constants, and its detector.
//!
//! Before each token, the vocabulary is split by a key derived from the previous
//! token (TGI's hash key 15485863 times its id): a fraction γ = 0.5 of the tokens
//! are "green" and get δ = 2.0 added to their logits. Text written that way has
//! far more green tokens than chance; [`z_score`] counts them. Where TGI takes the
//! first γ·V entries of a `torch.randperm` seeded by the key, the green test here
//! is a keyed hash of the token id — the same expected split, computed for the
//! whole row in one vectorised pass instead of a vocabulary-sized shuffle per token
//! (so Rill's watermark is detected by this detector, not by TGI's).

use rill_proto::TokenId;

/// Fraction of the vocabulary that is green.
pub const GAMMA: f64 = 0.5;
/// Added to green logits.
pub const DELTA: f32 = 2.0;
const HASH_KEY: u64 = 15_485_863;
/// `is_green` compares a 32-bit hash against γ·2³².
const THRESHOLD: u32 = (GAMMA * 4_294_967_296.0) as u32;

/// The key for the token after `prev`.
pub fn key(prev: TokenId) -> u32 {
    let k = HASH_KEY.wrapping_mul(prev.0 as u64);
    let k = (k ^ (k >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    (k ^ (k >> 33)) as u32
}

/// Whether `token` is green under `key` (a "lowbias32" integer hash: cheap, and
/// vectorises with 32-bit multiplies).
#[inline(always)]
pub fn is_green(key: u32, token: u32) -> bool {
    let mut x = token.wrapping_mul(0x9e37_79b9) ^ key;
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x < THRESHOLD
}

/// How many standard deviations more green tokens `tokens` holds than unmarked
/// text would (each token scored under the key of the one before it); `None` for
/// fewer than two tokens. Watermarked text of a few dozen tokens scores far above
/// 4; plain text stays near 0.
pub fn z_score(tokens: &[TokenId]) -> Option<f64> {
    if tokens.len() < 2 {
        return None;
    }
    let scored = (tokens.len() - 1) as f64;
    let green = tokens.windows(2).filter(|w| is_green(key(w[0]), w[1].0)).count() as f64;
    Some((green - GAMMA * scored) / (scored * GAMMA * (1.0 - GAMMA)).sqrt())
}

/// The usual decision rule: watermarked when `z > 4`.
pub fn is_watermarked(tokens: &[TokenId]) -> bool {
    z_score(tokens).is_some_and(|z| z > 4.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_gamma_of_the_vocabulary_is_green_and_keys_differ() {
        for prev in [0, 1, 7, 31_999, 128_000] {
            let k = key(TokenId(prev));
            let green = (0..128_000).filter(|&t| is_green(k, t)).count();
            let frac = green as f64 / 128_000.0;
            assert!((frac - GAMMA).abs() < 0.01, "prev {prev}: {frac}");
        }
        let (a, b) = (key(TokenId(1)), key(TokenId(2)));
        let same = (0..10_000).filter(|&t| is_green(a, t) == is_green(b, t)).count();
        assert!((4_500..5_500).contains(&same), "green lists of different keys overlap by {same}");
    }

    #[test]
    fn unmarked_sequences_score_near_zero() {
        let mut x = 12345u64;
        let tokens: Vec<TokenId> = (0..2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                TokenId((x % 32_000) as u32)
            })
            .collect();
        let z = z_score(&tokens).unwrap();
        assert!(z.abs() < 4.0, "{z}");
        assert!(!is_watermarked(&tokens));
        assert_eq!(z_score(&tokens[..1]), None);
    }
}
