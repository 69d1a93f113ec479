//! The AVX2 kernels (with FMA and F16C), for x86 CPUs without AVX-512 (most desktop
//! Intel parts since Alder Lake, AMD before Zen 4, older cloud instances): each 16-lane
//! accumulator of the module's fixed arithmetic is two `__m256` (lanes 0–7, 8–15), one
//! fused multiply-add each per chunk of 16, and the lanes are summed by
//! [`super::reduce16`]'s tree, so every result is bit-identical to the AVX-512 and scalar
//! paths. A row's last partial chunk is copied into a zero-padded block (AVX2 has no
//! masked 16-bit loads).

use std::arch::x86_64::*;

use super::{Elem, Kind, LANES, PREFETCH_BYTES, TileKernels};

/// The AVX2 tile kernels.
#[derive(Debug)]
pub struct Avx2;

/// One 16-lane accumulator: lanes 0–7 and 8–15.
pub type Acc = (__m256, __m256);

impl TileKernels for Avx2 {
    type Acc = Acc;
    #[inline(always)]
    unsafe fn zero() -> Acc {
        // SAFETY: the caller vouches for AVX2.
        unsafe { (_mm256_setzero_ps(), _mm256_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn accumulate<E: Elem, const MR: usize, const NR: usize>(
        x: *const f32,
        ldx: usize,
        w: *const E,
        ldw: usize,
        k: usize,
        acc: &mut [[Acc; NR]; MR],
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { accumulate::<E, MR, NR>(x, ldx, w, ldw, k, acc) }
    }
    #[inline(always)]
    unsafe fn reduce<const MR: usize, const NR: usize>(
        acc: &[[Acc; NR]; MR],
        out: &mut [[f32; NR]; MR],
    ) {
        for i in 0..MR {
            for j in 0..NR {
                // SAFETY: the caller vouches for AVX2.
                out[i][j] = unsafe { reduce16(acc[i][j]) };
            }
        }
    }
}

/// Eight elements at `p`, widened exactly.
///
/// # Safety
/// AVX2 and F16C must be present; 8 elements readable at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8<E: Elem>(p: *const E) -> __m256 {
    // SAFETY: (all arms) the caller guarantees 8 readable elements at `p`.
    unsafe {
        match E::KIND {
            Kind::F32 => _mm256_loadu_ps(p.cast()),
            Kind::Bf16 => {
                let h = _mm_loadu_si128(p.cast());
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            }
            Kind::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
        }
    }
}

/// Sixteen elements at `p` as lanes 0–7 and 8–15.
///
/// # Safety
/// As [`load8`], for 16 elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load16<E: Elem>(p: *const E) -> Acc {
    // SAFETY: forwarded from the caller.
    unsafe { (load8(p), load8(p.add(8))) }
}

/// The first `n < 16` elements at `p`, zero-padded to 16.
///
/// # Safety
/// As [`load8`], for `n` elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load16_partial<E: Elem>(p: *const E, n: usize) -> Acc {
    let mut block = [E::zeroed(); LANES];
    // SAFETY: `n` elements are readable at `p` (the caller), and `n < LANES`.
    unsafe {
        std::ptr::copy_nonoverlapping(p, block.as_mut_ptr(), n);
        load16(block.as_ptr())
    }
}

/// `acc += x · w`, lane by lane, with one fused multiply-add per half.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fmadd16(x: Acc, w: Acc, acc: Acc) -> Acc {
    (_mm256_fmadd_ps(x.0, w.0, acc.0), _mm256_fmadd_ps(x.1, w.1, acc.1))
}

/// `out[i][j] = dot(x row i, w row j)` for an `MR × NR` tile (see `avx512::tile`).
///
/// # Safety
/// AVX2, FMA and F16C must be available; `x` must hold `MR` rows and `w` `NR` rows of
/// `k` readable elements at the given strides.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile<E: Elem, const MR: usize, const NR: usize>(
    x: *const f32,
    ldx: usize,
    w: *const E,
    ldw: usize,
    k: usize,
    out: &mut [[f32; NR]; MR],
) {
    // SAFETY: AVX2 is present (this function's contract) and the rest is forwarded.
    unsafe {
        let mut acc = [[<Avx2 as TileKernels>::zero(); NR]; MR];
        accumulate::<E, MR, NR>(x, ldx, w, ldw, k, &mut acc);
        <Avx2 as TileKernels>::reduce(&acc, out);
    }
}

/// Add the next `k` elements of each dot product of an `MR × NR` tile into `acc`;
/// splitting `k` into blocks that are multiples of 16 (all but the last) gives exactly
/// the arithmetic of one call over the whole length.
///
/// # Safety
/// As [`tile`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn accumulate<E: Elem, const MR: usize, const NR: usize>(
    x: *const f32,
    ldx: usize,
    w: *const E,
    ldw: usize,
    k: usize,
    acc: &mut [[Acc; NR]; MR],
) {
    let chunks = k / LANES;
    // SAFETY: every pointer below stays inside the rows the caller vouched for
    // (prefetches may point past them: they never fault).
    unsafe {
        for c in 0..chunks {
            let off = c * LANES;
            if MR == 1 && (c * LANES * size_of::<E>()).is_multiple_of(64) {
                // As on AVX-512: near a row's end, warm the next tile's rows.
                let ahead = off + PREFETCH_BYTES / size_of::<E>();
                let (row, at) = if ahead < k { (0, ahead) } else { (NR, ahead - k) };
                for j in 0..NR {
                    let target = w.wrapping_add((j + row) * ldw + at);
                    _mm_prefetch::<_MM_HINT_T0>(target.cast());
                }
            }
            // One weight row widened at a time, against every x row: the accumulators
            // (up to 12 registers) leave room for it and an x chunk.
            for j in 0..NR {
                let wv = load16(w.add(j * ldw + off));
                for (i, acc_row) in acc.iter_mut().enumerate() {
                    acc_row[j] = fmadd16(load16(x.add(i * ldx + off)), wv, acc_row[j]);
                }
            }
        }
        let rem = k % LANES;
        if rem != 0 {
            let off = chunks * LANES;
            let mut wv = [<Avx2 as TileKernels>::zero(); NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = load16_partial(w.add(j * ldw + off), rem);
            }
            for (i, acc_row) in acc.iter_mut().enumerate() {
                let xv = load16_partial(x.add(i * ldx + off), rem);
                for j in 0..NR {
                    acc_row[j] = fmadd16(xv, wv[j], acc_row[j]);
                }
            }
        }
    }
}

/// [`super::weighted_rows`]: eight elements of `o` at a time held in a register while
/// every row is added in turn (`_mm256_mul_ps` then `_mm256_add_ps`, the scalar loop's
/// two roundings); the last `o.len() % 8` elements as the scalar loop.
///
/// # Safety
/// AVX2 must be present; `v` holds `weights.len()` rows of `o.len()` elements `ldv` apart.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn weighted_rows(weights: &[f32], v: *const f32, ldv: usize, o: &mut [f32]) {
    let d = o.len();
    let op = o.as_mut_ptr();
    // SAFETY: every access is inside `o` or the rows of `v` (the caller).
    unsafe {
        let mut c = 0;
        while c + 8 <= d {
            let mut acc = _mm256_loadu_ps(op.add(c));
            for (j, &wt) in weights.iter().enumerate() {
                let prod = _mm256_mul_ps(_mm256_set1_ps(wt), _mm256_loadu_ps(v.add(j * ldv + c)));
                acc = _mm256_add_ps(acc, prod);
            }
            _mm256_storeu_ps(op.add(c), acc);
            c += 8;
        }
        for c in c..d {
            for (j, &wt) in weights.iter().enumerate() {
                *op.add(c) += wt * *v.add(j * ldv + c);
            }
        }
    }
}

/// [`super::reduce16`] in registers: the same additions in the same order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce16(a: Acc) -> f32 {
    let s8 = _mm256_add_ps(a.0, a.1);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
    _mm_cvtss_f32(s1)
}

/// Widen `src` into `dst` exactly.
///
/// # Safety
/// AVX2 and F16C must be present; `src` and `dst` have equal lengths.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn widen<E: Elem>(src: &[E], dst: &mut [f32]) {
    let n = src.len();
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: every access is below `n`.
    unsafe {
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(d.add(i), load8(s.add(i)));
            i += 8;
        }
        for j in i..n {
            *d.add(j) = (*s.add(j)).widen();
        }
    }
}

/// One row of a weight panel (`super::super::panels`): 16 weights for 16 output columns,
/// widened exactly into columns 0–7 and 8–15. A bf16 panel row interleaves the halves
/// (slot `2c` holds column `c`, slot `2c + 1` column `c + 8`): columns 8–15 are the high
/// halves of the row's 32-bit words, and columns 0–7 those of the same 32 bytes read one
/// element earlier, so each widens with one mask (no shift or shuffle, which would take
/// an FMA port).
///
/// # Safety
/// AVX2 and F16C must be present; 16 elements readable at `p`, and a bf16 row's one
/// before it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panel_row<E: Elem>(p: *const E) -> Acc {
    // SAFETY: (all arms) the caller guarantees 16 readable elements at `p`.
    unsafe {
        match E::KIND {
            Kind::F32 => (_mm256_loadu_ps(p.cast()), _mm256_loadu_ps(p.add(8).cast())),
            Kind::Bf16 => {
                let mask = _mm256_set1_epi32(0xffff_0000_u32 as i32);
                let even = _mm256_and_si256(_mm256_loadu_si256(p.sub(1).cast()), mask);
                let odd = _mm256_and_si256(_mm256_loadu_si256(p.cast()), mask);
                (_mm256_castsi256_ps(even), _mm256_castsi256_ps(odd))
            }
            Kind::F16 => (
                _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(8).cast())),
            ),
        }
    }
}

/// Where a panel tile's results go: row `i` of the tile at `out + i * ldo`, its panels'
/// columns in order, `cols` of them valid (the rest are a last panel's padding), each
/// plus `bias[c]` if given.
#[derive(Clone, Copy, Debug)]
pub struct PanelOut {
    pub out: *mut f32,
    pub ldo: usize,
    pub cols: usize,
    pub bias: Option<*const f32>,
}

/// The fast precision's `MR × 16·NP` tile (`super::super::panels`): for each `kk < k` in
/// order, the panels' row `kk` against `x[i][kk]` broadcast, one fused multiply-add per
/// output, so each output is the one FMA chain over `k` whatever the tile shape.
///
/// # Safety
/// AVX2, FMA and F16C must be present; `x` holds `MR` rows of `k` f32 `ldx` apart, `w`
/// `NP` panels of `k × 16` elements `ldp` apart, and `out` `MR` rows of `o.cols`
/// writable f32 `o.ldo` apart (and `o.bias` that many f32).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn panel_tile<E: Elem, const MR: usize, const NP: usize>(
    x: *const f32,
    ldx: usize,
    w: *const E,
    ldp: usize,
    k: usize,
    o: PanelOut,
) {
    let zero = _mm256_setzero_ps();
    let mut acc = [[(zero, zero); NP]; MR];
    // SAFETY: every access is inside the rows and panels the caller vouched for.
    unsafe {
        for kk in 0..k {
            for p in 0..NP {
                let (lo, hi) = panel_row(w.add(p * ldp + kk * 16));
                for (i, row) in acc.iter_mut().enumerate() {
                    let xv = _mm256_broadcast_ss(&*x.add(i * ldx + kk));
                    row[p] = (_mm256_fmadd_ps(xv, lo, row[p].0), _mm256_fmadd_ps(xv, hi, row[p].1));
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (p, &(lo, hi)) in row.iter().enumerate() {
                let at = p * 16;
                if at >= o.cols {
                    break;
                }
                let dst = o.out.add(i * o.ldo + at);
                if at + 16 <= o.cols {
                    let (mut lo, mut hi) = (lo, hi);
                    if let Some(b) = o.bias {
                        lo = _mm256_add_ps(lo, _mm256_loadu_ps(b.add(at)));
                        hi = _mm256_add_ps(hi, _mm256_loadu_ps(b.add(at + 8)));
                    }
                    _mm256_storeu_ps(dst, lo);
                    _mm256_storeu_ps(dst.add(8), hi);
                } else {
                    let mut lanes = [0.0f32; 16];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
                    _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
                    for (c, &v) in lanes.iter().enumerate().take(o.cols - at) {
                        *dst.add(c) = o.bias.map_or(v, |b| v + *b.add(at + c));
                    }
                }
            }
        }
    }
}
