//! The tests of the per-row and grid-stride kernels (`norm.cu`, `rope.cu`, `activation.cu`,
//! `embedding.cu`, `elementwise.cu`, `kv_cache.cu`), written once against an
//! [`Elementwise`] runner: the GPU tests run them with the launchers, the emulated tests of
//! `kernels/emu` (which include this file by path) with the launchers' configurations on
//! the emulator.
//!
//! Each test runs one kernel on random inputs and compares with the CPU device's formula
//! computed on the host: exactly where the kernel does the same rounded operations (copies,
//! widening, single adds, the rope products, casts), within 1e-5 relative where the order of
//! a reduction or `expf` may differ (RMSNorm, SiLU). Weights of every dtype are compared
//! against their exactly widened values, so the tolerance does not depend on the dtype.
#![allow(dead_code)] // each test binary uses its own subset

use half::{bf16, f16};

use super::reference::{
    HostWeights, Weight, assert_close, random, rms_norm_ref, rope_ref, silu_mul_ref,
};

/// A 16-bit float type the casts produce.
#[derive(Clone, Copy, Debug)]
pub enum Half {
    Bf16,
    F16,
}

impl Half {
    /// The suffix of the cast's entry point (`cast_f32_bf16`).
    pub fn suffix(self) -> &'static str {
        match self {
            Half::Bf16 => "bf16",
            Half::F16 => "f16",
        }
    }

    /// `v` rounded to nearest even, as bits.
    fn round(self, v: f32) -> u16 {
        match self {
            Half::Bf16 => bf16::from_f32(v).to_bits(),
            Half::F16 => f16::from_f32(v).to_bits(),
        }
    }
}

/// Runs the kernels on one side (a GPU, the emulator): each method launches one kernel on
/// inputs uploaded from the host and returns what it wrote.
pub trait Elementwise {
    /// `rms_norm_*` over `rows` rows of `cols`.
    fn rms_norm(&self, x: &[f32], w: Weight, rows: usize, cols: usize, eps: f32) -> Vec<f32>;
    /// `add_rms_norm_*`: `x` after `x += y`, and the normalised sum.
    fn add_rms_norm(
        &self,
        x: &[f32],
        y: &[f32],
        w: Weight,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> (Vec<f32>, Vec<f32>);
    /// `rope` in place on `[rows, heads * head_dim]`, with `[rows, head_dim / 2]` cos/sin.
    fn rope(
        &self,
        x: &[f32],
        rows: usize,
        heads: usize,
        head_dim: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> Vec<f32>;
    fn silu_mul(&self, gate_up: &[f32], rows: usize, cols: usize) -> Vec<f32>;
    /// `embed_*` of `tokens` from `table` (`[vocab, hidden]`).
    fn embed(&self, table: Weight, hidden: usize, tokens: &[u32]) -> Vec<f32>;
    /// `add_bias_*` in place on `rows` rows of `cols`.
    fn add_bias(&self, x: &[f32], rows: usize, cols: usize, bias: Weight) -> Vec<f32>;
    /// `add_assign`: `x + y`.
    fn add_assign(&self, x: &[f32], y: &[f32]) -> Vec<f32>;
    /// `split_cols`: columns `col0..col0 + width` of `x` (`[rows, total]`).
    fn split_cols(
        &self,
        x: &[f32],
        rows: usize,
        total: usize,
        col0: usize,
        width: usize,
    ) -> Vec<f32>;
    /// `gather_rows`: rows `idx` of `x` (`[_, cols]`).
    fn gather_rows(&self, x: &[f32], cols: usize, idx: &[u32]) -> Vec<f32>;
    /// `cast_f32_bf16` or `cast_f32_f16`: the bits of each value cast `to`.
    fn cast(&self, x: &[f32], to: Half) -> Vec<u16>;
    /// `write_kv` of rows `kv` = (k, v), `kv_heads * head_dim` wide, at `slots` into
    /// zeroed caches of `num_slots`: the caches after.
    fn write_kv(
        &self,
        num_slots: usize,
        kv: (&[f32], &[f32]),
        slots: &[u32],
        kv_heads: usize,
        head_dim: usize,
    ) -> (Vec<f32>, Vec<f32>);
}

/// Rows `idx` of `src` (`[_, cols]`), a zero row for an index past its end.
fn rows_or_zero(src: &[f32], cols: usize, idx: &[u32]) -> Vec<f32> {
    let rows = src.len() / cols;
    idx.iter()
        .flat_map(|&r| match (r as usize) < rows {
            true => src[r as usize * cols..][..cols].to_vec(),
            false => vec![0.0; cols],
        })
        .collect()
}

pub fn rms_norm_matches_the_host_for_every_weight_dtype(e: &impl Elementwise) {
    // 1000 columns: one element per thread; 5000: several per thread of a 1024 block.
    for (rows, cols) in [(3, 1000), (2, 5000), (1, 7)] {
        let x = random(rows * cols, 1);
        let weights = HostWeights::new(&random(cols, 2));
        for (w, widened) in weights.each() {
            let what = format!("rms_norm_{} {rows}x{cols}", w.suffix());
            let got = e.rms_norm(&x, w, rows, cols, 1e-5);
            assert_close(&what, &got, &rms_norm_ref(&x, widened, cols, 1e-5));
        }
    }
}

pub fn add_rms_norm_updates_the_residual_and_normalises_it(e: &impl Elementwise) {
    let (rows, cols) = (4, 2048);
    let (x, y) = (random(rows * cols, 3), random(rows * cols, 4));
    let sum: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    let weights = HostWeights::new(&random(cols, 5));
    for (w, widened) in weights.each() {
        let (new_x, out) = e.add_rms_norm(&x, &y, w, rows, cols, 1e-6);
        assert_eq!(new_x, sum, "x += y, exactly");
        assert_close("add_rms_norm", &out, &rms_norm_ref(&sum, widened, cols, 1e-6));
    }
}

pub fn rope_rotates_half_pairs_exactly_like_the_cpu(e: &impl Elementwise) {
    let (rows, heads, head_dim) = (5, 3, 64);
    let x = random(rows * heads * head_dim, 6);
    let angles = random(rows * head_dim / 2, 7);
    let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
    let got = e.rope(&x, rows, heads, head_dim, &cos, &sin);
    assert_eq!(got, rope_ref(&x, heads, head_dim, &cos, &sin));
}

pub fn silu_mul_gates_the_up_half(e: &impl Elementwise) {
    let (rows, cols) = (3, 1111);
    let gate_up = random(rows * 2 * cols, 8);
    assert_close("silu_mul", &e.silu_mul(&gate_up, rows, cols), &silu_mul_ref(&gate_up, cols));
}

pub fn embed_gathers_and_widens_rows_and_zeroes_bad_ids(e: &impl Elementwise) {
    let (vocab, hidden) = (50, 300);
    let table = HostWeights::new(&random(vocab * hidden, 9));
    let tokens = [7u32, 0, 49, 7, 50, u32::MAX];
    for (w, widened) in table.each() {
        let want = rows_or_zero(widened, hidden, &tokens);
        assert_eq!(e.embed(w, hidden, &tokens), want, "embed_{}", w.suffix());
    }
}

pub fn add_bias_adds_the_widened_bias_to_every_row(e: &impl Elementwise) {
    let (rows, cols) = (6, 517);
    let x = random(rows * cols, 10);
    let bias = HostWeights::new(&random(cols, 11));
    for (b, widened) in bias.each() {
        let want: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + widened[i % cols]).collect();
        assert_eq!(e.add_bias(&x, rows, cols, b), want, "add_bias_{}", b.suffix());
    }
}

pub fn add_assign_covers_more_than_one_grid_wave(e: &impl Elementwise) {
    // Far more elements than one wave of threads, so the grid-stride loop is exercised.
    let n = 3_000_017;
    let (x, y) = (random(n, 12), random(n, 13));
    let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    assert_eq!(e.add_assign(&x, &y), want);
}

pub fn split_cols_takes_each_output_of_a_fused_projection(e: &impl Elementwise) {
    let (rows, widths) = (7, [256, 64, 64]);
    let total: usize = widths.iter().sum();
    let x = random(rows * total, 14);
    let mut col0 = 0;
    for width in widths {
        let want: Vec<f32> =
            x.chunks(total).flat_map(|row| row[col0..col0 + width].to_vec()).collect();
        let got = e.split_cols(&x, rows, total, col0, width);
        assert_eq!(got, want, "columns {col0}..+{width}");
        col0 += width;
    }
}

pub fn gather_rows_picks_rows_and_zeroes_bad_indices(e: &impl Elementwise) {
    let (rows, cols) = (9, 300);
    let x = random(rows * cols, 15);
    let idx = [8u32, 0, 3, 3, 9];
    assert_eq!(e.gather_rows(&x, cols, &idx), rows_or_zero(&x, cols, &idx));
}

pub fn casts_round_to_nearest_even_like_half(e: &impl Elementwise) {
    let mut x = random(10_000, 16);
    // Ties, overflow, subnormals and signed zero, beside the random values.
    x.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 1e30, -1e30, 65520.0, 1e-40, 3e-8, -0.0]);
    x.extend([f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE, 65519.0, 2.98e-8]);
    for to in [Half::Bf16, Half::F16] {
        let want: Vec<u16> = x.iter().map(|&v| to.round(v)).collect();
        assert_eq!(e.cast(&x, to), want, "cast_f32_{}", to.suffix());
    }
}

pub fn write_kv_stores_rows_at_slots_and_skips_padding(e: &impl Elementwise) {
    let (num_blocks, kv_heads, head_dim) = (3, 2, 64);
    let width = kv_heads * head_dim;
    let num_slots = num_blocks * 16;
    // Slot 48 is past the cache: skipped like the padding slot.
    let slots = [17u32, 0, rill_kernels::kv::NO_SLOT, 47, 48, 5];
    let rows = slots.len();
    let (k, v) = (random(rows * width, 17), random(rows * width, 18));
    let (k_cache, v_cache) = e.write_kv(num_slots, (&k, &v), &slots, kv_heads, head_dim);
    let want = |rows: &[f32]| {
        let mut cache = vec![0.0; num_slots * width];
        for (r, &slot) in slots.iter().enumerate() {
            if (slot as usize) < num_slots {
                cache[slot as usize * width..][..width]
                    .copy_from_slice(&rows[r * width..][..width]);
            }
        }
        cache
    };
    assert_eq!(k_cache, want(&k), "k");
    assert_eq!(v_cache, want(&v), "v");
}
