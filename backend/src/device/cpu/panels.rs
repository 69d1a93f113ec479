//! The fast precision's linear layers ([`crate::Precision::Fast`] on a 16-bit model):
//! `out = x̃ · wᵀ (+ bias)`, where `x̃` is `x` rounded to the weights' dtype (what a bf16
//! or f16 `Linear` in PyTorch is fed) and each output element is one fused multiply-add
//! chain, `acc = fma(x̃[kk], w[j][kk], acc)` for `kk = 0, 1, …, k - 1` from `acc = 0`,
//! then the bias added.
//!
//! That arithmetic is chosen for the tiles it allows. Weights are laid out at load in
//! panels of 16 output columns ([`Panels`]): panel `p` holds, for each `kk` in order, the
//! 16 weights `w[16p + c][kk]`, 32 contiguous bytes (zero past `n`). The kernel is an
//! outer product: for each `kk`, one panel row is widened into two registers and
//! multiplied into every row of the tile with `x̃[i][kk]` broadcast. A 6-row tile does 12
//! FMAs per panel row for two 256-bit loads, two masks and six broadcasts, where
//! the exact precision's dot-product tiles (lanes along `k`, a lane-sum tree) need a load
//! of `x` and a widened load of `w` for every few FMAs. Each output is still the same
//! chain whatever the tile shape, the batch, the thread count or the prompt's chunking,
//! so the fast precision is exactly as batch-invariant as the exact one.
//!
//! The scalar path computes the chain with `mul_add`; the AVX2 kernels
//! (`simd::avx2::panel_tile`) give its bits. AVX-512 machines run the AVX2 kernels for
//! now (a 512-bit panel kernel, and `vdpbf16ps` where AVX512-BF16 exists, are not written
//! yet: they could not be run here).

use std::ops::Range;

use rayon::prelude::*;

use super::gemm::{check_shapes, split_columns};
#[cfg(target_arch = "x86_64")]
use super::simd::avx2::{self, PanelOut};
use super::simd::{self, Elem, Isa, Kind};

/// Output columns per panel.
pub const WIDTH: usize = 16;
/// Elements before the first panel: a kernel may read one element before a panel row.
const LEAD: usize = WIDTH;
/// Batch-1 decode: panels per tile (four 32-byte weight streams, eight accumulators).
const DECODE_PANELS: usize = 4;
/// Rows per tile from six rows (prefill chunks, large batches): 12 accumulators.
const MR: usize = 6;
/// Bytes of `x̃` one m-block may take: with a panel (`k × 32` bytes) it stays in L2 while
/// every tile of the block passes over the panel.
const X_BLOCK_BYTES: usize = 192 << 10;

/// A `[n, k]` weight matrix laid out as panels of [`WIDTH`] columns (see the module doc).
pub struct Panels<E> {
    data: Vec<E>,
    n: usize,
    k: usize,
}

impl<E> std::fmt::Debug for Panels<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Panels").field("n", &self.n).field("k", &self.k).finish()
    }
}

/// Where column `c` of a panel sits in each of its 16-element rows: in order, except that
/// bf16 interleaves columns `c` and `c + 8` (what the AVX2 kernel's masked widening
/// reads: `simd::avx2::panel_row`).
fn slot<E: Elem>(c: usize) -> usize {
    match E::KIND {
        Kind::Bf16 if c < 8 => 2 * c,
        Kind::Bf16 => 2 * (c - 8) + 1,
        _ => c,
    }
}

impl<E: Elem> Panels<E> {
    /// Lay out the row-major `[n, k]` matrix `w` (in parallel, on the current rayon pool).
    pub fn pack(w: &[E], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "w is not [n, k]");
        // Zeroed pages come from the OS as they are first written.
        let mut data: Vec<E> = bytemuck::zeroed_vec(LEAD + n.div_ceil(WIDTH) * k * WIDTH);
        if k > 0 {
            data[LEAD..].par_chunks_mut(k * WIDTH).enumerate().for_each(|(p, panel)| {
                let cols = WIDTH.min(n - p * WIDTH);
                let rows: Vec<&[E]> = (0..cols).map(|c| &w[(p * WIDTH + c) * k..][..k]).collect();
                // Eight k at a time: a short read of each row, one 256-byte block written.
                for (kb, block) in panel.chunks_mut(8 * WIDTH).enumerate() {
                    let k0 = kb * 8;
                    for (c, row) in rows.iter().enumerate() {
                        let s = slot::<E>(c);
                        for (t, &v) in row[k0..(k0 + 8).min(k)].iter().enumerate() {
                            block[t * WIDTH + s] = v;
                        }
                    }
                }
            });
        }
        Panels { data, n, k }
    }

    /// Output columns (the matrix's rows).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features (the matrix's columns).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Weight `w[j][kk]`.
    fn at(&self, j: usize, kk: usize) -> E {
        self.data[LEAD + (j / WIDTH * self.k + kk) * WIDTH + slot::<E>(j % WIDTH)]
    }

    /// Row `j` of the matrix, widened (an embedding lookup in a tied LM head's table).
    pub fn row_into(&self, j: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.k, "out is not one row");
        for (kk, o) in out.iter_mut().enumerate() {
            *o = self.at(j, kk).widen();
        }
    }
}

/// `x` rounded to `E` (ties to even) and widened back: the fast precision's GEMM input.
pub fn round_into<E: Elem>(x: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.resize(x.len(), 0.0);
    out.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &v)| *o = E::narrow(v).widen()));
}

/// The reference: the fast precision's chain for one output, `x̃ · w[j]`.
pub fn chain<E: Elem>(x: &[f32], w: &Panels<E>, j: usize) -> f32 {
    x.iter().enumerate().fold(0.0, |acc, (kk, &a)| a.mul_add(w.at(j, kk).widen(), acc))
}

/// `out[i * n + j] = chain(x[i], w, j) + bias[j]`; `x` is `[m, k]`, already rounded
/// ([`round_into`]).
pub fn linear<E: Elem>(x: &[f32], m: usize, w: &Panels<E>, bias: Option<&[f32]>, out: &mut [f32]) {
    linear_with(simd::isa(), x, m, w, bias, out)
}

/// [`linear`] on `isa`'s kernels (at most the CPU's): the same bits on every one.
pub fn linear_with<E: Elem>(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: &Panels<E>,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    if !check_shapes(isa, (x, m, w.k), w.n, bias, out) {
        return;
    }
    let product = Product { x, m, w, bias };
    // Chunks of a multiple of the decode tile's panels.
    split_columns(out, w.n.div_ceil(WIDTH), DECODE_PANELS, |out, ps| {
        // SAFETY: this chunk writes only the columns of panels `ps`, disjoint from every
        // other chunk's; `out` outlives the call; `isa` is present (checked).
        unsafe { product.panels(isa, out, ps) };
    });
}

/// One `x̃ · wᵀ + bias` problem (shapes checked by [`linear_with`]).
struct Product<'a, E> {
    x: &'a [f32],
    m: usize,
    w: &'a Panels<E>,
    bias: Option<&'a [f32]>,
}

impl<E: Elem> Product<'_, E> {
    /// The columns of panels `ps`, written to `out` (`[m, n]`).
    ///
    /// # Safety
    /// `out` must point to `m * n` writable f32s not otherwise accessed in those columns;
    /// `isa` must be present.
    unsafe fn panels(&self, isa: Isa, out: *mut f32, ps: Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx2 {
            // SAFETY: AVX2 is present (the caller; AVX-512 implies it) and the tiles stay
            // inside `x`, the panels and `out`'s columns `ps`.
            unsafe {
                match self.m {
                    1 => self.tiles::<1, DECODE_PANELS>(out, 0, ps),
                    2 => self.tiles::<2, 3>(out, 0, ps),
                    3 => self.tiles::<3, 2>(out, 0, ps),
                    4 => self.tiles::<4, 1>(out, 0, ps),
                    5 => self.tiles::<5, 1>(out, 0, ps),
                    _ => self.blocked(out, ps),
                }
            }
            return;
        }
        let _ = isa;
        let (n, k) = (self.w.n, self.w.k);
        for i in 0..self.m {
            let x = &self.x[i * k..(i + 1) * k];
            for j in ps.start * WIDTH..(ps.end * WIDTH).min(n) {
                let v = chain(x, self.w, j);
                // SAFETY: `i < m`, `j < n` in the columns of `ps`, owned by this call.
                unsafe { *out.add(i * n + j) = self.bias.map_or(v, |b| v + b[j]) };
            }
        }
    }

    /// Rows `i..i + R`, panels `ps` in tiles of `NP` panels, then the rest one at a time.
    ///
    /// # Safety
    /// AVX2 must be present; rows `i..i + R` exist; as [`Self::panels`].
    #[cfg(target_arch = "x86_64")]
    unsafe fn tiles<const R: usize, const NP: usize>(
        &self,
        out: *mut f32,
        i: usize,
        ps: Range<usize>,
    ) {
        let mut p = ps.start;
        while p + NP <= ps.end {
            // SAFETY: panels `p..p + NP` exist (the loop bound); forwarded otherwise.
            unsafe { self.tile::<R, NP>(out, i, p) };
            p += NP;
        }
        for p in p..ps.end {
            // SAFETY: as above, for panel `p`.
            unsafe { self.tile::<R, 1>(out, i, p) };
        }
    }

    /// From six rows: m-blocks of `x̃` that stay in L2, each panel passed over by every
    /// 6-row tile of the block, and the block's last rows by one shorter tile.
    ///
    /// # Safety
    /// As [`Self::tiles`].
    #[cfg(target_arch = "x86_64")]
    unsafe fn blocked(&self, out: *mut f32, ps: Range<usize>) {
        let m = self.m;
        let mb = (X_BLOCK_BYTES / (self.w.k * 4).max(1)).max(MR) / MR * MR;
        for m0 in (0..m).step_by(mb) {
            let m1 = (m0 + mb).min(m);
            for p in ps.clone() {
                let mut i = m0;
                // SAFETY: (all) rows `i..i + R` are below `m1 <= m`; panel `p` is in `ps`.
                unsafe {
                    while i + MR <= m1 {
                        self.tile::<MR, 1>(out, i, p);
                        i += MR;
                    }
                    match m1 - i {
                        1 => self.tile::<1, 1>(out, i, p),
                        2 => self.tile::<2, 1>(out, i, p),
                        3 => self.tile::<3, 1>(out, i, p),
                        4 => self.tile::<4, 1>(out, i, p),
                        5 => self.tile::<5, 1>(out, i, p),
                        _ => {}
                    }
                }
            }
        }
    }

    /// Rows `i..i + R` × panels `p..p + NP`.
    ///
    /// # Safety
    /// AVX2 must be present; those rows and panels exist; as [`Self::panels`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn tile<const R: usize, const NP: usize>(&self, out: *mut f32, i: usize, p: usize) {
        let (n, k) = (self.w.n, self.w.k);
        let at = p * WIDTH;
        // SAFETY: forwarded from the caller; the offsets are those rows' and panels'.
        unsafe {
            let o = PanelOut {
                out: out.add(i * n + at),
                ldo: n,
                cols: (n - at).min(NP * WIDTH),
                bias: self.bias.map(|b| b.as_ptr().add(at)),
            };
            let w = self.w.data.as_ptr().add(LEAD + p * k * WIDTH);
            avx2::panel_tile::<E, R, NP>(self.x.as_ptr().add(i * k), k, w, k * WIDTH, k, o);
        }
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;
    use crate::device::cpu::simd::tests::{data, every_isa};

    fn reference<E: Elem>(x: &[f32], m: usize, w: &Panels<E>, bias: &[f32]) -> Vec<f32> {
        let (n, k) = (w.n(), w.k());
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = chain(&x[i * k..(i + 1) * k], w, j) + bias[j];
            }
        }
        out
    }

    fn check<E: Elem>(isa: Isa, m: usize, k: usize, n: usize) {
        let x: Vec<f32> = data(m * k, 1);
        let mut xr = Vec::new();
        round_into::<E>(&x, &mut xr);
        let w: Vec<E> = data(n * k, 2).into_iter().map(E::narrow).collect();
        let panels = Panels::pack(&w, n, k);
        let bias = data(n, 3);
        let mut out = vec![f32::NAN; m * n];
        linear_with(isa, &xr, m, &panels, Some(&bias), &mut out);
        let what = format!("{isa:?} {:?} {m}x{k}x{n}", E::KIND);
        let want = reference(&xr, m, &panels, &bias);
        assert_eq!(
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{what}"
        );
        // And without a bias: the chain itself.
        linear_with(isa, &xr, m, &panels, None, &mut out);
        for (idx, v) in out.iter().enumerate() {
            let (i, j) = (idx / n, idx % n);
            assert_eq!(v.to_bits(), chain(&xr[i * k..(i + 1) * k], &panels, j).to_bits(), "{what}");
        }
        // The chain is x̃ · w: close to the f64 product.
        for i in 0..m {
            for j in 0..n {
                let exact: f64 =
                    (0..k).map(|kk| xr[i * k + kk] as f64 * w[j * k + kk].widen() as f64).sum();
                let v = out[i * n + j] as f64;
                assert!((v - exact).abs() < 1e-4 * k as f64, "{what} [{i}][{j}]: {v} vs {exact}");
            }
        }
    }

    #[test]
    fn every_shape_on_every_path_gives_the_chains_bits() {
        for isa in every_isa() {
            for (m, k, n) in [
                (1, 64, 40),
                (1, 33, 9),
                (1, 1, 100),
                (2, 64, 13),
                (3, 48, 70),
                (4, 17, 16),
                (5, 100, 17),
                (6, 32, 48),
                (7, 48, 64),
                (13, 300, 33),
                (50, 257, 31),
            ] {
                check::<bf16>(isa, m, k, n);
                check::<f16>(isa, m, k, n);
            }
        }
    }

    #[test]
    fn a_row_is_the_same_alone_and_in_a_batch() {
        let (k, n) = (96, 72);
        let x = data(19 * k, 5);
        let w: Vec<bf16> = data(n * k, 6).iter().map(|&v| bf16::from_f32(v)).collect();
        let panels = Panels::pack(&w, n, k);
        let mut all = vec![0.0; 19 * n];
        linear(&x, 19, &panels, None, &mut all);
        for rows in [1, 2, 3, 4, 5, 6, 7, 12] {
            for i0 in (0..19 - rows).step_by(5) {
                let mut some = vec![0.0; rows * n];
                linear(&x[i0 * k..(i0 + rows) * k], rows, &panels, None, &mut some);
                assert_eq!(some, all[i0 * n..(i0 + rows) * n], "{rows} rows from {i0}");
            }
        }
    }

    #[test]
    fn packing_keeps_every_row() {
        let (n, k) = (37, 21);
        let w: Vec<bf16> = data(n * k, 7).iter().map(|&v| bf16::from_f32(v)).collect();
        let wh: Vec<f16> = data(n * k, 7).iter().map(|&v| f16::from_f32(v)).collect();
        let (pb, ph) = (Panels::pack(&w, n, k), Panels::pack(&wh, n, k));
        let mut row = vec![0.0; k];
        for j in 0..n {
            pb.row_into(j, &mut row);
            assert!(row.iter().zip(&w[j * k..]).all(|(a, b)| *a == b.to_f32()), "bf16 {j}");
            ph.row_into(j, &mut row);
            assert!(row.iter().zip(&wh[j * k..]).all(|(a, b)| *a == b.to_f32()), "f16 {j}");
        }
    }

    #[test]
    fn activations_round_to_the_nearest_weight_value() {
        let x = [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -0.0, f32::INFINITY, 1e-40];
        let mut out = Vec::new();
        round_into::<bf16>(&x, &mut out);
        // Ties go to even: 1 + 2⁻⁸ to 1, 1 + 3·2⁻⁸ to 1 + 2⁻⁶.
        assert_eq!(out[..2], [1.0, 1.0 + 4.0 / 256.0]);
        assert_eq!(out[2].to_bits(), (-0.0f32).to_bits());
        assert_eq!(out[3], f32::INFINITY);
        round_into::<bf16>(&[f32::NAN], &mut out);
        assert!(out[0].is_nan());
    }
}
