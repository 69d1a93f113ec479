//! The sampling contract: one semantics for choosing a token, whether the host's sampler
//! (`crate::sampler`) or a device (`kernels/cuda/sampling.cu`, through
//! [`crate::device::Device::sample`]) chooses it, and the flattened state a device
//! consumes. Both sides depend on this module; neither on the other.
//!
//! For one logits row, in this order: `logit_bias` (host only: a row with one is
//! sampled on the host) → watermark (+δ on the previous token's green list) →
//! repetition penalty (÷ or × on every token seen in prompt and output) → TGI's
//! frequency penalty (count ÷ tokens so far) → OpenAI's presence and count penalties
//! (output tokens) → grammar mask (−∞) → NaN is −∞, and +∞ tokens share all the mass →
//! temperature (the logit divided by it) → top-k (every token at least the k-th
//! largest: ties at the cut stay) → top-p (the smallest set of largest logits holding
//! the mass, ties at the cut stay) → typical-p (the smallest interval of surprisal
//! around the entropy holding the mass, ties at the cut stay) → the choice: greedy is
//! the lowest-id maximum; a draw takes [`uniform`]`(seed, position)` — splitmix64, a
//! counter-based stream keyed by the seed and counted by the position of the token
//! being chosen — and walks the kept tokens' probabilities in token-id order (the
//! inverse CDF) to the first whose running sum exceeds `u × total`. Weights are
//! `e^(x − max)` by one polynomial ([`exp_neg`]), the same on both sides.
//!
//! So the same logits give the same token wherever they are sampled, and a seeded
//! request's text does not depend on its neighbours or on which side sampled it. The
//! two sides sum in different orders (64 host lanes, a GPU block's reduction), so a
//! cut-off or a draw that falls within rounding of a boundary (a relative 1e-6 of the
//! mass) may go the other way; `kernels/emu/tests/sampling.rs` checks the GPU kernel
//! against [`crate::sampler::sample_flat`], the host's implementation of this contract.
//!
//! The flattened state ([`DeviceSampling`]): one [`DeviceRow`] of parameters per row,
//! each row's seen tokens with their counts (instead of a vocabulary-sized array), the
//! grammar masks computed during the forward pass; the answer is one [`RowChoice`] per
//! row.

use rill_proto::{SamplingParams, TokenId};

/// One sampling row: its sequence's parameters (the grammar is already a mask here)
/// and its state flattened.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceRow {
    /// The row of the step's logits to choose from.
    pub logits_row: u32,
    pub params: SamplingParams,
    /// The watermark key of the previous token, when the watermark is on.
    pub watermark_key: Option<u32>,
    /// Position of the token being chosen (the random stream's counter).
    pub position: u64,
    /// Tokens so far (TGI's frequency penalty divides by it).
    pub seq_len: u32,
    /// This row's entries in [`DeviceSampling::seen`].
    pub seen: std::ops::Range<u32>,
    /// First word of this row's grammar mask in [`DeviceSampling::masks`].
    pub mask: Option<u32>,
    pub top_n: u32,
}

/// Everything a device needs to choose the step's tokens itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceSampling {
    pub rows: Vec<DeviceRow>,
    /// `(token, count in prompt and output, count in output)` for each row's seen
    /// tokens, rows one after the other (only rows whose penalties need them).
    pub seen: Vec<(u32, u32, u32)>,
    /// Grammar masks, `vocab.div_ceil(32)` words each.
    pub masks: Vec<u32>,
    pub vocab: usize,
    pub max_top_n: usize,
}

/// What was chosen for one row.
#[derive(Clone, Debug, PartialEq)]
pub struct RowChoice {
    /// `None` when no token was allowed (every logit -∞ or NaN after the mask).
    pub token: Option<TokenId>,
    pub logprob: f32,
    pub top: Vec<(TokenId, f32)>,
}

/// The random number in [0, 1) for the token at `pos` of the stream `seed`: the top 53
/// bits of splitmix64 of both (counter-based, so it depends on nothing else).
/// `sampling.cu`'s `draw_uniform` computes the same double.
pub fn uniform(seed: u64, pos: usize) -> f64 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (mix(seed ^ mix(pos as u64)) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// `e^x` for `x ≤ 0` (a logit minus the row's maximum), the weight of a token in every
/// sum of the contract; 0 below -87 and for -∞; NaN stays NaN. `2^(x·log₂e)`: the
/// integer part goes into the exponent field, the fraction through a degree-6
/// polynomial; every step is a plain add, multiply or fused multiply-add (exact in
/// every build, and in `sampling.cu`'s `exp_neg`, which mirrors it with `__fmul_rn`,
/// `__fadd_rn` and `fmaf`), and the rounding to an integer is the 1.5·2²³ trick.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let y = x * std::f32::consts::LOG2_E;
    let yc = if y < -126.0 { -126.0 } else { y };
    let t = yc + MAGIC;
    let n = t - MAGIC;
    let f = yc - n; // in [-0.5, 0.5]
    // 2^f by its Taylor series to f⁶ (relative error < 2e-7 on [-0.5, 0.5]).
    let mut p = 1.540_353e-4_f32;
    p = p.mul_add(f, 1.333_355_8e-3);
    p = p.mul_add(f, 9.618_129e-3);
    p = p.mul_add(f, 5.550_411e-2);
    p = p.mul_add(f, 2.402_265e-1);
    p = p.mul_add(f, 6.931_472e-1);
    p = p.mul_add(f, 1.0);
    let scale = f32::from_bits(((t.to_bits() as i32 - MAGIC.to_bits() as i32 + 127) << 23) as u32);
    if y < -126.0 { 0.0 } else { p * scale }
}
