//! Dot-product kernels with one fixed summation order.
//!
//! Every dot product of length `k` Rill computes on the CPU — whether alone, inside a
//! 1×8 decode tile or a 4×4 prefill tile — uses the same arithmetic: 16 lanes, lane
//! `l` accumulating `x[c*16 + l] * w[c*16 + l]` with one fused multiply-add per chunk
//! `c` in order (the last chunk zero-padded), then the lanes summed by the tree in
//! [`reduce16`]. So a sequence's logits do not depend on what else is in its batch
//! (the tile shape), how many threads ran, or how its prompt was chunked.
//!
//! 16-bit weights are widened exactly to f32 inside the loop (bf16: shift left 16;
//! f16: `vcvtph2ps`), never converted as a whole matrix. The scalar fallback does the
//! same arithmetic lane by lane with `mul_add` for machines without AVX-512.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::sync::OnceLock;

use half::{bf16, f16};

pub const LANES: usize = 16;
const PREFETCH_BYTES: usize = 2048;

/// The element types a weight matrix may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    F32,
    Bf16,
    F16,
}

/// A weight element, widened to f32 exactly.
pub trait Elem: bytemuck::Pod + Send + Sync {
    const KIND: Kind;
    fn widen(self) -> f32;
}

impl Elem for f32 {
    const KIND: Kind = Kind::F32;
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Elem for bf16 {
    const KIND: Kind = Kind::Bf16;
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Elem for f16 {
    const KIND: Kind = Kind::F16;
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// Whether the AVX-512 kernels can run here (checked once).
pub fn has_avx512() -> bool {
    static AVX512: OnceLock<bool> = OnceLock::new();
    *AVX512.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::env::var_os("RILL_NO_AVX512").is_none()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("f16c")
                && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// The one lane-reduction order (see module doc).
#[inline(always)]
pub fn reduce16(a: &[f32; LANES]) -> f32 {
    let mut s8 = [0.0f32; 8];
    for i in 0..8 {
        s8[i] = a[i] + a[i + 8];
    }
    let s4 = [s8[0] + s8[4], s8[1] + s8[5], s8[2] + s8[6], s8[3] + s8[7]];
    let s2 = [s4[0] + s4[2], s4[1] + s4[3]];
    s2[0] + s2[1]
}

/// The reference dot product: the arithmetic every kernel here reproduces.
pub fn dot_scalar<E: Elem>(x: &[f32], w: &[E]) -> f32 {
    debug_assert_eq!(x.len(), w.len());
    let mut acc = [0.0f32; LANES];
    let mut xs = x.chunks_exact(LANES);
    let mut ws = w.chunks_exact(LANES);
    for (xc, wc) in (&mut xs).zip(&mut ws) {
        for l in 0..LANES {
            acc[l] = xc[l].mul_add(wc[l].widen(), acc[l]);
        }
    }
    let (xr, wr) = (xs.remainder(), ws.remainder());
    if !xr.is_empty() {
        for l in 0..LANES {
            let (a, b) = if l < xr.len() { (xr[l], wr[l].widen()) } else { (0.0, 0.0) };
            acc[l] = a.mul_add(b, acc[l]);
        }
    }
    reduce16(&acc)
}

/// `x · w` with the fixed order, on the fastest path available.
pub fn dot<E: Elem>(x: &[f32], w: &[E]) -> f32 {
    assert_eq!(x.len(), w.len(), "dot of unequal lengths");
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        let mut out = [[0.0f32; 1]; 1];
        // SAFETY: AVX-512 is present; both rows hold `x.len()` elements.
        unsafe { tile_avx512::<E, 1, 1>(x.as_ptr(), 0, w.as_ptr(), 0, x.len(), &mut out) };
        return out[0][0];
    }
    dot_scalar(x, w)
}

#[cfg(target_arch = "x86_64")]
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

#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
pub unsafe fn tile_avx512<E: Elem, const MR: usize, const NR: usize>(
    x: *const f32,
    ldx: usize,
    w: *const E,
    ldw: usize,
    k: usize,
    out: &mut [[f32; NR]; MR],
) {
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    // SAFETY: forwarded from the caller.
    unsafe { accumulate_avx512::<E, MR, NR>(x, ldx, w, ldw, k, &mut acc) };
    reduce_tile_avx512(&acc, out);
}

/// Add the next `k` elements of each dot product of an `MR × NR` tile into `acc`.
/// Splitting `k` into blocks that are multiples of 16 (all but the last) gives
/// exactly the arithmetic of one call over the whole length.
///
/// # Safety
/// As [`tile_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
pub unsafe fn accumulate_avx512<E: Elem, const MR: usize, const NR: usize>(
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
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
pub fn reduce_tile_avx512<const MR: usize, const NR: usize>(
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
#[cfg(target_arch = "x86_64")]
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

/// Widen `src` into `dst` exactly (embedding rows).
pub fn widen_into<E: Elem>(src: &[E], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen_into of unequal lengths");
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512 is present and the lengths match.
        unsafe { widen_avx512(src, dst) };
        return;
    }
    match E::KIND {
        Kind::F32 => dst.copy_from_slice(bytemuck::cast_slice(src)),
        Kind::Bf16 => {
            let src: &[u16] = bytemuck::cast_slice(src);
            for (d, s) in dst.iter_mut().zip(src) {
                *d = f32::from_bits((*s as u32) << 16);
            }
        }
        Kind::F16 => {
            let src: &[f16] = bytemuck::cast_slice(src);
            half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
        }
    }
}

/// # Safety
/// AVX-512 must be present; `src` and `dst` have equal lengths.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
unsafe fn widen_avx512<E: Elem>(src: &[E], dst: &mut [f32]) {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) for kernel tests.
    pub(crate) fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) % 997)
            .map(|v| v as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn simd_dot_matches_scalar_reference_bit_for_bit() {
        for k in [1, 15, 16, 17, 64, 100, 2048] {
            let x = data(k, 1);
            let w = data(k, 2);
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            assert_eq!(dot(&x, &w).to_bits(), dot_scalar(&x, &w).to_bits(), "f32 k={k}");
            assert_eq!(dot(&x, &wb).to_bits(), dot_scalar(&x, &wb).to_bits(), "bf16 k={k}");
            assert_eq!(dot(&x, &wh).to_bits(), dot_scalar(&x, &wh).to_bits(), "f16 k={k}");
            let exact: f64 = x.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!((dot(&x, &w) as f64 - exact).abs() < 1e-4 * k as f64);
        }
    }

    #[test]
    fn widening_is_exact() {
        let w = data(100, 3);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let mut out = vec![0.0; 100];
        widen_into(&wb, &mut out);
        assert!(out.iter().zip(&wb).all(|(a, b)| *a == b.to_f32()));
    }
}
