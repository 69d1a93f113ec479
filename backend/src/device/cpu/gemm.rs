//! `out = x · wᵀ (+ bias)` for row-major `x [m, k]` and `w [n, k]` (the Hugging Face
//! `Linear` layout), f32 activations and f32/bf16/f16 weights.
//!
//! Threads split the output columns, so each output element is computed by one
//! thread with the fixed-order dot product of [`super::simd`]; the result is
//! bit-identical whatever `m`, the tile shapes or the thread count.
//!
//! Each instruction set ([`Isa`]) has its tile shapes (AVX-512: 1×8 and 4×6; AVX2, with
//! half the registers' width and count: 1×4, 2×3 and, for prefill chunks, 3×2 over
//! smaller m-blocks); the arithmetic is the same.
//!
//! - `m == 1` (batch-1 decode) is memory-bound: 1×8 tiles stream eight weight rows
//!   at once, widening 16-bit weights in registers and prefetching 2 KiB ahead (into
//!   the next tile's rows near a row's end), so the weights are read exactly once at
//!   close to memory bandwidth.
//! - `m > 1` is compute-bound: 4×6 tiles over an `m`-block of `x` sized to stay in
//!   L2, walked in k-blocks of 256 so the block's x rows and the weight slice stay in
//!   L1; accumulators are kept across k-blocks, which leaves the per-element
//!   arithmetic unchanged. 16-bit weights are widened in registers on every pass
//!   (measured faster than widening a panel into scratch once).

use std::ops::Range;

use rayon::prelude::*;

use super::simd::{self, Elem, Isa, TileKernels};
#[cfg(target_arch = "x86_64")]
use super::simd::{avx2::Avx2, avx512::Avx512};

const DECODE_NR: usize = 8;
const MR: usize = 4;
const NR: usize = 6;
/// Elements of k per block (a multiple of 16): x rows and the panel slice stay in L1.
const KC: usize = 256;
/// Bytes of `x` one m-block may occupy (about half a 2 MiB L2).
const X_BLOCK_BYTES: usize = 1 << 20;
/// AVX2 from this many rows (prefill chunks): 3×2 tiles over m-blocks of at most 64 KiB of
/// `x`, so a block stays in L1 and L2 while the weight slice streams past it (from L3
/// after the first block). Measured on a 2-core Zen 3 EPYC (512 KiB of L2 per core),
/// interleaved with the previous build: the gemv example at 128 rows × 2048 × 8192 bf16,
/// 94–103 GFLOP/s against 71–78 for 2×3 tiles over a 1 MiB block (which came from L3 on
/// every tile); a 256-token prefill, 38–40 tok/s against 32–33. Below 48 rows the
/// weights' DRAM traffic dominates and the one-block 2×3 shape was as fast or faster.
const AVX2_TALL_FROM: usize = 48;
const AVX2_X_BLOCK_BYTES: usize = 64 << 10;

/// A raw output pointer shared by threads that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: threads write disjoint elements (disjoint column ranges); see `split_columns`.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Check the shapes of `out [m, n] = x [m, k] · wᵀ + bias [n]` on `isa` (the weights are
/// the caller's to check); whether there is anything to compute.
pub(super) fn check_shapes(
    isa: Isa,
    (x, m, k): (&[f32], usize, usize),
    n: usize,
    bias: Option<&[f32]>,
    out: &[f32],
) -> bool {
    assert_eq!(x.len(), m * k, "x is not [m, k]");
    assert_eq!(out.len(), m * n, "out is not [m, n]");
    assert!(isa <= Isa::detected(), "{isa:?} is not available here");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias is not [n]");
    }
    m > 0 && n > 0
}

/// Run `columns(out, units)` on the pool over `0..units` column units, in chunks of a
/// multiple of `multiple` units, enough of them to balance the threads. `columns` gets
/// `out`'s pointer and must write only its own units' columns (chunks are disjoint).
pub(super) fn split_columns(
    out: &mut [f32],
    units: usize,
    multiple: usize,
    columns: impl Fn(*mut f32, Range<usize>) + Sync,
) {
    let threads = rayon::current_num_threads().max(1);
    let per = units.div_ceil(threads * 4).next_multiple_of(multiple).max(multiple);
    let optr = OutPtr(out.as_mut_ptr());
    (0..units.div_ceil(per)).into_par_iter().for_each(|c| {
        let out = optr;
        columns(out.0, c * per..((c + 1) * per).min(units));
    });
}

/// `out[i * n + j] = Σ_k x[i * k + kk] * w[j * k + kk] + bias[j]`.
pub fn linear<E: Elem>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[E],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    linear_with(simd::isa(), x, m, k, w, n, bias, out)
}

/// [`linear`] on `isa`'s kernels (at most the CPU's): the same bits on every one.
#[allow(clippy::too_many_arguments)] // `linear`'s arguments and the path
pub fn linear_with<E: Elem>(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[E],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    assert_eq!(w.len(), n * k, "w is not [n, k]");
    if !check_shapes(isa, (x, m, k), n, bias, out) {
        return;
    }
    let product = Product { x, m, k, w, n, bias };
    // Chunks of a multiple of the widest tile.
    split_columns(out, n, DECODE_NR, |out, cols| {
        // SAFETY: this chunk writes only columns `cols` of every row of `out`, disjoint
        // from every other chunk's; `out` outlives the call; `isa` is present (checked).
        unsafe { product.columns(isa, out, cols) };
    });
}

/// One `x · wᵀ + bias` problem (shapes checked by [`linear`]).
struct Product<'a, E> {
    x: &'a [f32],
    m: usize,
    k: usize,
    w: &'a [E],
    n: usize,
    bias: Option<&'a [f32]>,
}

impl<E: Elem> Product<'_, E> {
    /// Columns `cols` of the product, written to `out` (`[m, n]`), on `isa`'s kernels.
    ///
    /// # Safety
    /// `out` must point to `m * n` writable f32s not otherwise accessed in `cols`; `isa`
    /// must be present.
    unsafe fn columns(&self, isa: Isa, out: *mut f32, cols: Range<usize>) {
        let Product { x, m, k, w, n, bias } = *self;
        let store = |i: usize, j: usize, v: f32| {
            let v = v + bias.map_or(0.0, |b| b[j]);
            // SAFETY: `i < m`, `j` in `cols`: inside `out` and owned by this call.
            unsafe { *out.add(i * n + j) = v };
        };
        // Tile shapes fit each set's registers: AVX-512 has 32 of 16 lanes, AVX2 16 of 8
        // (an accumulator takes two).
        match isa {
            // SAFETY: (all four) the instruction set is present (the caller); the tiles
            // read rows inside `x` and `w`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if m == 1 => unsafe { self.decode::<Avx512, DECODE_NR>(cols, &store) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.blocked::<Avx512, MR, NR>(cols, X_BLOCK_BYTES, &store) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if m == 1 => unsafe { self.decode::<Avx2, 4>(cols, &store) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if m < AVX2_TALL_FROM => unsafe {
                self.blocked::<Avx2, 2, 3>(cols, X_BLOCK_BYTES, &store)
            },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.blocked::<Avx2, 3, 2>(cols, AVX2_X_BLOCK_BYTES, &store) },
            _ => {
                for i in 0..m {
                    for j in cols.clone() {
                        let (xr, wr) = (&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
                        store(i, j, simd::dot_scalar(xr, wr));
                    }
                }
            }
        }
    }

    /// One tile of `R × C` dot products over the whole of `k`.
    ///
    /// # Safety
    /// `K`'s instruction set must be present; rows `i..i + R` of x and `j..j + C` of w exist.
    unsafe fn tile<K: TileKernels, const R: usize, const C: usize>(
        &self,
        i: usize,
        j: usize,
    ) -> [[f32; C]; R] {
        let k = self.k;
        let mut o = [[0.0; C]; R];
        // SAFETY: forwarded from the caller.
        unsafe {
            let mut acc = [[K::zero(); C]; R];
            K::accumulate::<E, R, C>(
                self.x[i * k..].as_ptr(),
                k,
                self.w[j * k..].as_ptr(),
                k,
                k,
                &mut acc,
            );
            K::reduce(&acc, &mut o);
        }
        o
    }

    /// `m == 1`: 1×`D` tiles, each weight row streamed once.
    ///
    /// # Safety
    /// `K`'s instruction set must be present; `cols ⊆ 0..n`.
    unsafe fn decode<K: TileKernels, const D: usize>(
        &self,
        cols: Range<usize>,
        store: &impl Fn(usize, usize, f32),
    ) {
        let mut j = cols.start;
        while j + D <= cols.end {
            // SAFETY: rows `j..j + D` of w exist (loop bound); x is one row.
            let o = unsafe { self.tile::<K, 1, D>(0, j) };
            for (jj, v) in o[0].iter().enumerate() {
                store(0, j + jj, *v);
            }
            j += D;
        }
        for j in j..cols.end {
            // SAFETY: row `j` of w exists.
            store(0, j, unsafe { self.tile::<K, 1, 1>(0, j) }[0][0]);
        }
    }

    /// `m > 1`: m-blocks × `R`×`C` tiles × k-blocks (see the module doc).
    ///
    /// # Safety
    /// `K`'s instruction set must be present; `cols ⊆ 0..n`.
    unsafe fn blocked<K: TileKernels, const R: usize, const C: usize>(
        &self,
        cols: Range<usize>,
        x_block_bytes: usize,
        store: &impl Fn(usize, usize, f32),
    ) {
        let (m, k) = (self.m, self.k);
        let xp = self.x.as_ptr();
        let wrow = |j: usize| self.w[j * k..].as_ptr();
        // Rows per m-block: as many as fit the budget, but no more than there are.
        let mb = (x_block_bytes / (k * 4)).max(R).min(m.next_multiple_of(R)) / R * R;
        // SAFETY: the instruction set is present (this function's contract).
        let zero = unsafe { [[K::zero(); C]; R] };
        let mut acc_full = vec![zero; mb / R];
        let mut acc_one = vec![[zero[0]]; R];
        for m0 in (0..m).step_by(mb) {
            let m1 = (m0 + mb).min(m);
            let full = (m1 - m0) / R;
            let rest = m0 + full * R..m1;
            let mut j = cols.start;
            while j + C <= cols.end {
                let pw = wrow(j);
                acc_full[..full].fill(zero);
                acc_one[..rest.len()].fill([zero[0]]);
                // k-blocks keep this block's x rows and the weight slice in L1.
                for k0 in (0..k).step_by(KC) {
                    let kl = KC.min(k - k0);
                    for (t, acc) in acc_full[..full].iter_mut().enumerate() {
                        let i = m0 + t * R;
                        // SAFETY: rows `i..i + R` of x and `j..j + C` of w exist,
                        // and `k0 + kl <= k`.
                        unsafe {
                            K::accumulate::<E, R, C>(xp.add(i * k + k0), k, pw.add(k0), k, kl, acc)
                        };
                    }
                    for (acc, i) in acc_one.iter_mut().zip(rest.clone()) {
                        // SAFETY: as above, for the single row `i`.
                        unsafe {
                            K::accumulate::<E, 1, C>(xp.add(i * k + k0), k, pw.add(k0), k, kl, acc)
                        };
                    }
                }
                let mut o = [[0.0; C]; R];
                for (t, acc) in acc_full[..full].iter().enumerate() {
                    // SAFETY: the instruction set is present.
                    unsafe { K::reduce(acc, &mut o) };
                    for (ii, row) in o.iter().enumerate() {
                        for (jj, v) in row.iter().enumerate() {
                            store(m0 + t * R + ii, j + jj, *v);
                        }
                    }
                }
                for (acc, i) in acc_one.iter().zip(rest.clone()) {
                    let mut o = [[0.0; C]; 1];
                    // SAFETY: the instruction set is present.
                    unsafe { K::reduce(acc, &mut o) };
                    for (jj, v) in o[0].iter().enumerate() {
                        store(i, j + jj, *v);
                    }
                }
                j += C;
            }
            for j in j..cols.end {
                for i in m0..m1 {
                    // SAFETY: row `i` of x and row `j` of w exist.
                    store(i, j, unsafe { self.tile::<K, 1, 1>(i, j) }[0][0]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::simd::tests::{data, every_isa};
    use half::{bf16, f16};

    fn reference<E: Elem>(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[E],
        n: usize,
        bias: &[f32],
    ) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] =
                    simd::dot_scalar(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]) + bias[j];
            }
        }
        out
    }

    #[test]
    fn every_shape_on_every_path_matches_the_scalar_reference_bit_for_bit() {
        for isa in every_isa() {
            for (m, k, n) in
                [(1, 64, 40), (1, 33, 9), (2, 64, 13), (5, 100, 17), (9, 48, 64), (37, 2048, 11)]
                    .into_iter()
                    // Tall enough for AVX2's prefill tiles, with rows left over.
                    .chain([(50, 2048, 13), (53, 8192, 7)])
            {
                let x = data(m * k, 1);
                let w = data(n * k, 2);
                let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
                let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
                let bias = data(n, 3);
                let mut out = vec![0.0; m * n];
                let what = format!("{isa:?} {m}x{k}x{n}");
                linear_with(isa, &x, m, k, &w, n, Some(&bias), &mut out);
                assert_eq!(out, reference(&x, m, k, &w, n, &bias), "f32 {what}");
                linear_with(isa, &x, m, k, &wb, n, Some(&bias), &mut out);
                assert_eq!(out, reference(&x, m, k, &wb, n, &bias), "bf16 {what}");
                linear_with(isa, &x, m, k, &wh, n, Some(&bias), &mut out);
                assert_eq!(out, reference(&x, m, k, &wh, n, &bias), "f16 {what}");
            }
        }
    }

    #[test]
    fn a_row_is_the_same_alone_and_in_a_batch() {
        let (k, n) = (96, 24);
        let x = data(7 * k, 5);
        let w: Vec<bf16> = data(n * k, 6).iter().map(|&v| bf16::from_f32(v)).collect();
        let mut all = vec![0.0; 7 * n];
        linear(&x, 7, k, &w, n, None, &mut all);
        for i in 0..7 {
            let mut one = vec![0.0; n];
            linear(&x[i * k..(i + 1) * k], 1, k, &w, n, None, &mut one);
            assert_eq!(one, all[i * n..(i + 1) * n]);
        }
    }
}
