//! Passes over one logits row, written so the compiler vectorises them and so
//! their result never depends on the machine's vector width.
//!
//! Every reduction runs [`LANES`] = 64 lanes in a fixed order (lane `l` takes
//! elements `l, l + 64, …`: four independent 16-wide accumulators, so a pass is not
//! one long chain of dependent adds) and sums lanes by one tree; `exp` is a
//! polynomial of plain adds, multiplies and fused multiply-adds (exact in every
//! build), so the AVX-512, AVX2 and baseline builds of these loops give the same
//! bits. A row costs two passes: its maximum (and first argmax) as it streams from
//! memory, then its exponentials from cache, summed per block of [`BLOCK`] elements;
//! the block sums are kept, so sampling walks them, then one block, instead of
//! exponentiating the row again.

/// Elements per block of [`BlockSums`].
pub const BLOCK: usize = 1024;
const LANES: usize = 64;

pub use crate::sampling::exp_neg;

#[inline(always)]
fn reduce_sum(a: &[f32; LANES]) -> f32 {
    let mut w = *a;
    let mut n = LANES / 2;
    while n > 0 {
        for i in 0..n {
            w[i] += w[i + n];
        }
        n /= 2;
    }
    w[0]
}

/// Runs `$body` (a generic-free function body over slices) compiled for the best
/// instruction set present; every version computes the same bits.
macro_rules! dispatch {
    ($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn imp($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
                fn avx512($($arg: $ty),*) -> $ret { imp($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret { imp($($arg),*) }
                match level() {
                    // SAFETY: `level` checked that the CPU has these features.
                    Level::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    Level::Avx2 => return unsafe { avx2($($arg),*) },
                    Level::Base => {}
                }
            }
            imp($($arg),*)
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Avx512,
    Avx2,
    Base,
}

#[cfg(target_arch = "x86_64")]
fn level() -> Level {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<Level> = OnceLock::new();
    // The CPU kernels' choice (`RILL_CPU_ISA` caps both).
    use crate::device::cpu::simd::{Isa, isa};
    *LEVEL.get_or_init(|| match isa() {
        Isa::Avx512 => Level::Avx512,
        Isa::Avx2 => Level::Avx2,
        Isa::Scalar => Level::Base,
    })
}

dispatch!(max(row: &[f32]) -> f32 {
    max_argmax_imp(row).0
});

dispatch!(max_argmax(row: &[f32]) -> (f32, u32) {
    max_argmax_imp(row)
});

/// The maximum of `row` (NaN ignored; -∞ if empty) and the index of its first
/// occurrence: per lane the largest value and where it first appeared, then the
/// lanes compared (lowest index wins a tie).
#[inline(always)]
fn max_argmax_imp(row: &[f32]) -> (f32, u32) {
    let mut best = [f32::NEG_INFINITY; LANES];
    let mut at = [0u32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    let mut base = 0u32;
    for c in &mut chunks {
        for l in 0..LANES {
            let better = c[l] > best[l];
            best[l] = if better { c[l] } else { best[l] };
            at[l] = if better { base + l as u32 } else { at[l] };
        }
        base += LANES as u32;
    }
    let max = best.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let first = (0..LANES).filter(|&l| best[l] == max).map(|l| at[l]).min().unwrap_or(0);
    let mut m = (max, first);
    for (i, &v) in chunks.remainder().iter().enumerate() {
        if v > m.0 {
            m = (v, base + i as u32);
        }
    }
    m
}

dispatch!(fill_block_sums(row: &[f32], max: f32, out: &mut Vec<f32>) -> () {
    out.clear();
    for block in row.chunks(BLOCK) {
        let mut acc = [0.0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                acc[l] += exp_neg(c[l] - max);
            }
        }
        for (l, &v) in chunks.remainder().iter().enumerate() {
            acc[l] += exp_neg(v - max);
        }
        out.push(reduce_sum(&acc));
    }
});

dispatch!(entropy_terms(row: &[f32], max: f32) -> (f64, f64) {
    // Σ e^(l-m) and Σ e^(l-m)·(l-m), skipping -∞ (whose product would be NaN).
    let mut z = [0.0f32; LANES];
    let mut zx = [0.0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let x = c[l] - max;
            let e = exp_neg(x);
            z[l] += e;
            zx[l] += if e > 0.0 { e * x } else { 0.0 };
        }
    }
    let (mut zr, mut zxr) = (0.0f64, 0.0f64);
    for &v in chunks.remainder() {
        let e = exp_neg(v - max);
        zr += e as f64;
        if e > 0.0 {
            zxr += (e * (v - max)) as f64;
        }
    }
    (reduce_sum(&z) as f64 + zr, reduce_sum(&zx) as f64 + zxr)
});

dispatch!(scale(row: &mut [f32], by: f32) -> () {
    for v in row.iter_mut() {
        *v /= by;
    }
});

dispatch!(add_green(row: &mut [f32], key: u32, delta: f32) -> () {
    for (t, v) in row.iter_mut().enumerate() {
        *v += if super::watermark::is_green(key, t as u32) { delta } else { 0.0 };
    }
});

dispatch!(weights(c: &[(u32, f32)], max: f32, out: &mut Vec<f64>) -> () {
    out.clear();
    out.extend(c.iter().map(|&(_, l)| exp_neg(l - max) as f64));
});

dispatch!(exps(values: &[f32], max: f32, out: &mut Vec<f32>) -> () {
    out.clear();
    out.extend(values.iter().map(|&l| exp_neg(l - max)));
});

dispatch!(collect_between(row: &[f32], lo: f32, hi: f32, out: &mut Vec<(u32, f32)>) -> () {
    // The entries in [lo, hi], in token order; a chunk with none costs one compare.
    out.clear();
    for (c, chunk) in row.chunks(LANES).enumerate() {
        let any = chunk.iter().fold(false, |a, &v| a | ((v >= lo) & (v <= hi)));
        if any {
            for (i, &v) in chunk.iter().enumerate() {
                if v >= lo && v <= hi {
                    out.push(((c * LANES + i) as u32, v));
                }
            }
        }
    }
});

/// A row's maximum, its first argmax and the sums of `e^(l - max)` over its
/// blocks: enough to normalise it, and to find where a cumulative sum crosses a
/// value without exponentiating the row again.
#[derive(Clone, Debug, Default)]
pub struct BlockSums {
    pub max: f32,
    argmax: u32,
    pub blocks: Vec<f32>,
    /// `Σ blocks`, in f64.
    pub total: f64,
}

impl BlockSums {
    pub fn of(row: &[f32]) -> Self {
        let mut s = BlockSums::default();
        s.compute(row);
        s
    }

    pub fn compute(&mut self, row: &[f32]) {
        (self.max, self.argmax) = max_argmax(row);
        fill_block_sums(row, self.max, &mut self.blocks);
        self.total = self.blocks.iter().map(|&b| b as f64).sum();
    }

    /// `log Σ e^l`.
    pub fn log_z(&self) -> f32 {
        self.max + self.total.ln() as f32
    }

    /// The first token holding the row's maximum (as `torch.argmax` picks).
    pub fn argmax(&self) -> u32 {
        self.argmax
    }
    /// The first token whose cumulative weight (in token order) exceeds
    /// `u · total`, for `u` in [0, 1): inverse-CDF sampling.
    pub fn draw(&self, row: &[f32], u: f64) -> u32 {
        let target = u * self.total;
        let mut cum = 0.0f64;
        let mut last_nonzero = None;
        for (b, &s) in self.blocks.iter().enumerate() {
            if s > 0.0 {
                last_nonzero = Some(b);
            }
            if cum + s as f64 > target {
                let start = b * BLOCK;
                let end = (start + BLOCK).min(row.len());
                let mut last = start;
                let mut e = Vec::with_capacity(end - start);
                exps(&row[start..end], self.max, &mut e);
                for (i, &e) in e.iter().enumerate() {
                    let e = e as f64;
                    if e > 0.0 {
                        last = start + i;
                        cum += e;
                        if cum > target {
                            return (start + i) as u32;
                        }
                    }
                }
                return last as u32; // rounding: the block sum was a little larger
            }
            cum += s as f64;
        }
        // Rounding at the very end: the last token with weight.
        let b = last_nonzero.unwrap_or(0);
        let start = b * BLOCK;
        let end = (start + BLOCK).min(row.len());
        (start..end).rev().find(|&i| row[i] - self.max > -87.0).unwrap_or(start) as u32
    }
}

/// The `n` largest entries with their indices, largest first (ties: lower index
/// first; NaN never). Selection, not a sort: a chunk of [`LANES`] entries none of
/// which can enter the current list costs one vector compare, so a row costs
/// little more than reading it. With `keep_ties`, entries equal to the n-th stay
/// too (Hugging Face's top-k keeps every token scoring at least the k-th).
pub fn top_entries(row: &[f32], n: usize, keep_ties: bool) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n > 0 {
        select_top(row, n, keep_ties, &mut best);
    }
    best
}

dispatch!(select_top(row: &[f32], n: usize, keep_ties: bool, best: &mut Vec<(u32, f32)>) -> () {
    let enters = |v: f32, best: &[(u32, f32)]| {
        best.len() < n || v > best[n - 1].1 || (keep_ties && v == best[n - 1].1)
    };
    for (c, chunk) in row.chunks(LANES).enumerate() {
        let threshold = if best.len() < n { f32::NEG_INFINITY } else { best[n - 1].1 };
        // Vectorised: does anything in this chunk reach the list at all?
        let any = chunk.iter().fold(false, |a, &v| a | (v >= threshold));
        if !any {
            continue;
        }
        for (i, &v) in chunk.iter().enumerate() {
            if v.is_nan() || !enters(v, best) {
                continue;
            }
            let at = best.partition_point(|&(_, x)| x >= v);
            best.insert(at, ((c * LANES + i) as u32, v));
            if keep_ties {
                while best.len() > n && best[best.len() - 1].1 < best[n - 1].1 {
                    best.pop();
                }
            } else {
                best.truncate(n);
            }
        }
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_and_exact_at_the_ends() {
        // Relative error: tiny where a token has real probability, and still small
        // near the bottom of the range (where x·log₂e itself is rounded).
        let (mut near, mut far) = (0.0f64, 0.0f64);
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let err = ((exp_neg(x) as f64 - want) / want).abs();
            if x > -20.0 {
                near = near.max(err)
            } else {
                far = far.max(err)
            }
            x += 0.001;
        }
        assert!(near < 2e-6 && far < 1e-5, "relative error {near} / {far}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_neg(-1000.0), 0.0);
        assert!(exp_neg(f32::NAN).is_nan());
    }

    #[test]
    fn block_sums_normalise_and_draw_inverts_the_cdf() {
        let row: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32) / 10.0 - 5.0).collect();
        let s = BlockSums::of(&row);
        assert_eq!(s.blocks.len(), 1);
        let lse = {
            let m = row.iter().copied().fold(f32::MIN, f32::max) as f64;
            m + row.iter().map(|&l| (l as f64 - m).exp()).sum::<f64>().ln()
        };
        assert!((s.log_z() as f64 - lse).abs() < 1e-5);
        // Draws land where the exact CDF says.
        let probs: Vec<f64> = row.iter().map(|&l| (l as f64 - lse).exp()).collect();
        for u in [0.0, 0.1, 0.25, 0.5, 0.77, 0.999_999] {
            let t = s.draw(&row, u) as usize;
            let below: f64 = probs[..t].iter().sum();
            assert!(below <= u + 1e-5 && below + probs[t] >= u - 1e-5, "u={u} t={t}");
        }
    }

    #[test]
    fn draw_never_lands_on_a_masked_token() {
        let mut row = vec![f32::NEG_INFINITY; 600];
        row[3] = 0.0;
        row[300] = 1.0;
        let s = BlockSums::of(&row);
        for i in 0..100 {
            let t = s.draw(&row, i as f64 / 100.0);
            assert!(t == 3 || t == 300, "{t}");
        }
        assert_eq!(s.draw(&row, 0.999_999_999), 300);
    }

    #[test]
    fn top_entries_selects_in_order() {
        let row = [0.5, 3.0, -1.0, 2.0, 3.0, f32::NAN, 0.0];
        let top = top_entries(&row, 3, false);
        assert_eq!(top, vec![(1, 3.0), (4, 3.0), (3, 2.0)]);
        assert_eq!(top_entries(&row, 10, false).len(), 6);
        assert_eq!(top_entries(&row, 1, true), vec![(1, 3.0), (4, 3.0)]);
        assert_eq!(BlockSums::of(&row[..5]).argmax(), 1);
        // Across blocks: the first maximum wins, later blocks are skipped.
        let mut wide = vec![0.0f32; 3 * BLOCK];
        wide[BLOCK + 5] = 2.0;
        wide[2 * BLOCK + 1] = 2.0;
        wide[7] = 1.0;
        assert_eq!(BlockSums::of(&wide).argmax(), (BLOCK + 5) as u32);
        let top = top_entries(&wide, 3, false);
        assert_eq!(top, vec![((BLOCK + 5) as u32, 2.0), ((2 * BLOCK + 1) as u32, 2.0), (7, 1.0)]);
    }
}
