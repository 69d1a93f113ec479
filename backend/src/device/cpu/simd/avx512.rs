//! The AVX-512 kernels (with F16C and FMA): one 16-lane `__m512` per dot product, the
//! module's fixed arithmetic (`super`'s doc) in registers.

use std::arch::x86_64::*;

use super::{Elem, Kind, LANES, PREFETCH_BYTES, TileKernels};

/// The AVX-512 tile kernels.
#[derive(Debug)]
pub struct Avx512;

impl TileKernels for Avx512 {
    type Acc = __m512;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: the caller vouches for AVX-512.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn accumulate<E: Elem, const MR: usize, const NR: usize>(
        x: *const f32,
        ldx: usize,
        w: *const E,
        ldw: usize,
        k: usize,
        acc: &mut [[__m512; NR]; MR],
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { accumulate::<E, MR, NR>(x, ldx, w, ldw, k, acc) }
    }
    #[inline(always)]
    unsafe fn reduce<const MR: usize, const NR: usize>(
        acc: &[[__m512; NR]; MR],
        out: &mut [[f32; NR]; MR],
    ) {
        // SAFETY: the caller vouches for AVX-512.
        unsafe { reduce_tile(acc, out) }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
unsafe fn load16<E: Elem>(p: *const E) -> __m512 {
    // SAFETY: (all arms) the caller guarantees 16 readable elements at `p`.
    unsafe {
        match E::KIND {
            Kind::F32 => _mm512_loadu_ps(p.cast()),
            Kind::Bf16 => {
                let h = _mm256_loadu_si256(p.cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
            Kind::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
unsafe fn load16_masked<E: Elem>(p: *const E, mask: __mmask16) -> __m512 {
    // SAFETY: (all arms) masked-off lanes are not read; the caller guarantees the rest.
    unsafe {
        match E::KIND {
            Kind::F32 => _mm512_maskz_loadu_ps(mask, p.cast()),
            Kind::Bf16 => {
                let h = _mm256_maskz_loadu_epi16(mask, p.cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
            Kind::F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p.cast())),
        }
    }
}

/// `out[i][j] = dot(x row i, w row j)` for an `MR × NR` tile, rows `k` long,
/// `ldx`/`ldw` elements apart.
///
/// # Safety
/// AVX-512F/BW/VL, F16C and FMA must be available; `x` must hold `MR` rows and `w`
/// `NR` rows of `k` readable elements at the given strides.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
pub unsafe fn tile<E: Elem, const MR: usize, const NR: usize>(
    x: *const f32,
    ldx: usize,
    w: *const E,
    ldw: usize,
    k: usize,
    out: &mut [[f32; NR]; MR],
) {
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    // SAFETY: forwarded from the caller.
    unsafe { accumulate::<E, MR, NR>(x, ldx, w, ldw, k, &mut acc) };
    reduce_tile(&acc, out);
}

/// Add the next `k` elements of each dot product of an `MR × NR` tile into `acc`.
/// Splitting `k` into blocks that are multiples of 16 (all but the last) gives
/// exactly the arithmetic of one call over the whole length.
///
/// # Safety
/// As [`tile`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
pub unsafe fn accumulate<E: Elem, const MR: usize, const NR: usize>(
    x: *const f32,
    ldx: usize,
    w: *const E,
    ldw: usize,
    k: usize,
    acc: &mut [[__m512; NR]; MR],
) {
    let chunks = k / LANES;
    // SAFETY: every pointer below stays inside the rows the caller vouched for
    // (prefetches may point past them: they never fault).
    unsafe {
        for c in 0..chunks {
            let off = c * LANES;
            if MR == 1 && (c * LANES * size_of::<E>()).is_multiple_of(64) {
                // Near a row's end, prefetch the start of the row NR further on
                // (the next tile's), so its streams are warm when that tile begins.
                let ahead = off + PREFETCH_BYTES / size_of::<E>();
                let (row, at) = if ahead < k { (0, ahead) } else { (NR, ahead - k) };
                for j in 0..NR {
                    let target = w.wrapping_add((j + row) * ldw + at);
                    _mm_prefetch::<_MM_HINT_T0>(target.cast());
                }
            }
            let mut wv = [_mm512_setzero_ps(); NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = load16(w.add(j * ldw + off));
            }
            for (i, acc_row) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(x.add(i * ldx + off));
                for j in 0..NR {
                    acc_row[j] = _mm512_fmadd_ps(xv, wv[j], acc_row[j]);
                }
            }
        }
        let rem = k % LANES;
        if rem != 0 {
            let off = chunks * LANES;
            let mask: __mmask16 = (1u16 << rem) - 1;
            let mut wv = [_mm512_setzero_ps(); NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = load16_masked(w.add(j * ldw + off), mask);
            }
            for (i, acc_row) in acc.iter_mut().enumerate() {
                let xv = _mm512_maskz_loadu_ps(mask, x.add(i * ldx + off));
                for j in 0..NR {
                    acc_row[j] = _mm512_fmadd_ps(xv, wv[j], acc_row[j]);
                }
            }
        }
    }
}

/// Reduce every accumulator of a tile with [`reduce16`]'s order.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
pub fn reduce_tile<const MR: usize, const NR: usize>(
    acc: &[[__m512; NR]; MR],
    out: &mut [[f32; NR]; MR],
) {
    for i in 0..MR {
        for j in 0..NR {
            out[i][j] = reduce16_avx512(acc[i][j]);
        }
    }
}

/// [`reduce16`] in registers: the same additions in the same order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
fn reduce16_avx512(a: __m512) -> f32 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
    let s8 = _mm256_add_ps(_mm512_castps512_ps256(a), hi);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
    _mm_cvtss_f32(s1)
}

/// # Safety
/// AVX-512 must be present; `src` and `dst` have equal lengths.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
pub unsafe fn widen<E: Elem>(src: &[E], dst: &mut [f32]) {
    let n = src.len();
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: every access is below `n` (the tail is masked).
    unsafe {
        let mut i = 0;
        while i + LANES <= n {
            _mm512_storeu_ps(d.add(i), load16(s.add(i)));
            i += LANES;
        }
        if i < n {
            let mask: __mmask16 = (1u16 << (n - i)) - 1;
            _mm512_mask_storeu_ps(d.add(i), mask, load16_masked(s.add(i), mask));
        }
    }
}
