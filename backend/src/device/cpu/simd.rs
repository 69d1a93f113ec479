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
//! f16: `vcvtph2ps`), never converted as a whole matrix.
//!
//! The instruction set is chosen once at run time ([`isa`]): AVX-512 ([`avx512`], one
//! `__m512` per accumulator), AVX2 with FMA and F16C ([`avx2`], two `__m256`), or the
//! scalar reference ([`dot_scalar`], lane by lane with `mul_add`); `RILL_CPU_ISA=avx2`
//! or `=scalar` caps it (tests run every path on any machine that has it). All three
//! give the same bits.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;

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
    /// The nearest element to `v` (ties to even; NaN stays NaN).
    fn narrow(v: f32) -> Self;
}

impl Elem for f32 {
    const KIND: Kind = Kind::F32;
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[inline(always)]
    fn narrow(v: f32) -> f32 {
        v
    }
}

impl Elem for bf16 {
    const KIND: Kind = Kind::Bf16;
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn narrow(v: f32) -> bf16 {
        bf16::from_f32(v)
    }
}

impl Elem for f16 {
    const KIND: Kind = Kind::F16;
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn narrow(v: f32) -> f16 {
        f16::from_f32(v)
    }
}

/// The instruction sets the CPU kernels have a path for, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// AVX-512 F/BW/VL with AVX2, FMA and F16C.
    Avx512,
}

impl Isa {
    /// The best this CPU has (probed once: the kernels' entry points check it per call).
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(Isa::probe)
    }

    fn probe() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let has = |f: &[bool]| f.iter().all(|&b| b);
            let (fma, f16c) = (is_x86_feature_detected!("fma"), is_x86_feature_detected!("f16c"));
            if has(&[
                is_x86_feature_detected!("avx2"),
                is_x86_feature_detected!("avx512f"),
                is_x86_feature_detected!("avx512bw"),
                is_x86_feature_detected!("avx512vl"),
                fma,
                f16c,
            ]) {
                return Isa::Avx512;
            }
            if has(&[is_x86_feature_detected!("avx2"), fma, f16c]) {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// `RILL_CPU_ISA`'s names (`avx512`, `avx2`, `scalar`).
    pub fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "avx512" => Some(Isa::Avx512),
            "avx2" => Some(Isa::Avx2),
            "scalar" => Some(Isa::Scalar),
            _ => None,
        }
    }
}

/// The kernels' instruction set: the best the CPU has, capped by `RILL_CPU_ISA`
/// (never above what the CPU has; an unknown name is ignored with a warning). Chosen
/// once per process.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let detected = Isa::detected();
        let Ok(cap) = std::env::var("RILL_CPU_ISA") else { return detected };
        match Isa::parse(&cap) {
            Some(cap) => cap.min(detected),
            None => {
                tracing::warn!("RILL_CPU_ISA={cap} is not avx512, avx2 or scalar: ignored");
                detected
            }
        }
    })
}

/// Whether the AVX-512 kernels run here.
pub fn has_avx512() -> bool {
    isa() == Isa::Avx512
}

/// One instruction set's tile kernels, each dot product with the module's arithmetic.
///
/// # Safety
/// Every method requires the implementor's instruction set to be present.
pub trait TileKernels {
    /// One dot product's 16 lanes.
    type Acc: Copy;
    /// # Safety
    /// The instruction set must be present.
    unsafe fn zero() -> Self::Acc;
    /// Add the next `k` elements of each dot product of an `MR × NR` tile into `acc`
    /// (see `avx512::accumulate`).
    ///
    /// # Safety
    /// The instruction set must be present; `x` holds `MR` rows and `w` `NR` rows of `k`
    /// readable elements at strides `ldx` and `ldw`.
    unsafe fn accumulate<E: Elem, const MR: usize, const NR: usize>(
        x: *const f32,
        ldx: usize,
        w: *const E,
        ldw: usize,
        k: usize,
        acc: &mut [[Self::Acc; NR]; MR],
    );
    /// Sum each accumulator's lanes with [`reduce16`]'s order.
    ///
    /// # Safety
    /// The instruction set must be present.
    unsafe fn reduce<const MR: usize, const NR: usize>(
        acc: &[[Self::Acc; NR]; MR],
        out: &mut [[f32; NR]; MR],
    );
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
    dot_with(isa(), x, w)
}

/// `x · w` on `isa`'s path (at most the CPU's).
pub fn dot_with<E: Elem>(isa: Isa, x: &[f32], w: &[E]) -> f32 {
    assert_eq!(x.len(), w.len(), "dot of unequal lengths");
    assert!(isa <= Isa::detected(), "{isa:?} is not available here");
    let mut out = [[0.0f32; 1]; 1];
    let (xp, wp, k) = (x.as_ptr(), w.as_ptr(), x.len());
    match isa {
        // SAFETY: the instruction set is present; both rows hold `k` elements.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::tile::<E, 1, 1>(xp, 0, wp, 0, k, &mut out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::tile::<E, 1, 1>(xp, 0, wp, 0, k, &mut out) },
        _ => return dot_scalar(x, w),
    }
    out[0][0]
}

/// `out[j] = x · w[j * ldw..][..x.len()]` for every `j < out.len()`: the dot products of
/// `x` with rows of `w` that lie `ldw` apart (attention's keys within a cache block),
/// each with the fixed order, in tiles of several rows on the vector paths.
pub fn dots_strided(isa: Isa, x: &[f32], w: &[f32], ldw: usize, out: &mut [f32]) {
    let (k, n) = (x.len(), out.len());
    if n == 0 {
        return;
    }
    assert!(ldw >= k && w.len() >= (n - 1) * ldw + k, "w does not hold {n} rows {ldw} apart");
    assert!(isa <= Isa::detected(), "{isa:?} is not available here");
    match isa {
        // SAFETY: (both arms) the instruction set is present (checked above) and `w` holds
        // the rows (checked above).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { strided_tiles::<avx512::Avx512, 8>(x, w, ldw, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { strided_tiles::<avx2::Avx2, 4>(x, w, ldw, out) },
        _ => {
            for (j, o) in out.iter_mut().enumerate() {
                *o = dot_scalar(x, &w[j * ldw..j * ldw + k]);
            }
        }
    }
}

/// [`dots_strided`] on `K`'s kernels: `N` rows per tile, then the rest one at a time.
///
/// # Safety
/// `K`'s instruction set must be present; `w` holds `out.len()` rows of `x.len()`
/// elements `ldw` apart.
unsafe fn strided_tiles<K: TileKernels, const N: usize>(
    x: &[f32],
    w: &[f32],
    ldw: usize,
    out: &mut [f32],
) {
    let mut j = 0;
    while j + N <= out.len() {
        // SAFETY: the set is present; rows `j..j + N` of `w` exist (the loop bound).
        let o = unsafe { strided_tile::<K, N>(x, w, j, ldw) };
        out[j..j + N].copy_from_slice(&o);
        j += N;
    }
    for (j, o) in out.iter_mut().enumerate().skip(j) {
        // SAFETY: as above, for row `j`.
        [*o] = unsafe { strided_tile::<K, 1>(x, w, j, ldw) };
    }
}

/// The dot products of `x` with rows `j..j + N` of `w` (`ldw` apart).
///
/// # Safety
/// `K`'s instruction set must be present; those rows of `x.len()` elements exist.
#[inline(always)]
unsafe fn strided_tile<K: TileKernels, const N: usize>(
    x: &[f32],
    w: &[f32],
    j: usize,
    ldw: usize,
) -> [f32; N] {
    let mut o = [[0.0; N]];
    // SAFETY: forwarded from the caller.
    unsafe {
        let mut acc = [[K::zero(); N]];
        K::accumulate::<f32, 1, N>(x.as_ptr(), 0, w.as_ptr().add(j * ldw), ldw, x.len(), &mut acc);
        K::reduce(&acc, &mut o);
    }
    o[0]
}

/// `o[d] += weights[j] * v[j * ldv + d]` for each `j` in turn: attention's weighted sum of
/// value rows `ldv` apart, a rounded product then a rounded sum per element (no fused
/// multiply-add), so every path gives the bits of the scalar loop.
pub fn weighted_rows(isa: Isa, weights: &[f32], v: &[f32], ldv: usize, o: &mut [f32]) {
    let (d, n) = (o.len(), weights.len());
    if n == 0 {
        return;
    }
    assert!(ldv >= d && v.len() >= (n - 1) * ldv + d, "v does not hold {n} rows {ldv} apart");
    assert!(isa <= Isa::detected(), "{isa:?} is not available here");
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: AVX2 is present (AVX-512 implies it: see `Isa::detected`); the rows
        // are inside `v` (checked above).
        return unsafe { avx2::weighted_rows(weights, v.as_ptr(), ldv, o) };
    }
    for (j, &wt) in weights.iter().enumerate() {
        for (o, v) in o.iter_mut().zip(&v[j * ldv..j * ldv + d]) {
            *o += wt * v;
        }
    }
}

/// Widen `src` into `dst` exactly (embedding rows).
pub fn widen_into<E: Elem>(src: &[E], dst: &mut [f32]) {
    widen_with(isa(), src, dst)
}

/// [`widen_into`] on `isa`'s path (at most the CPU's).
pub fn widen_with<E: Elem>(isa: Isa, src: &[E], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen_into of unequal lengths");
    assert!(isa <= Isa::detected(), "{isa:?} is not available here");
    match isa {
        // SAFETY: the instruction set is present and the lengths match.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => return unsafe { avx512::widen(src, dst) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => return unsafe { avx2::widen(src, dst) },
        _ => {}
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

    /// Every instruction set this CPU has (the tests of each path run where it exists;
    /// the others say SKIP).
    pub(crate) fn every_isa() -> Vec<Isa> {
        let all = [Isa::Scalar, Isa::Avx2, Isa::Avx512];
        let here: Vec<Isa> = all.into_iter().filter(|&i| i <= Isa::detected()).collect();
        for missing in all.iter().filter(|i| !here.contains(i)) {
            eprintln!("SKIP: {missing:?} kernels: this CPU lacks the instructions");
        }
        here
    }

    #[test]
    fn every_path_matches_the_scalar_reference_bit_for_bit() {
        for isa in every_isa() {
            for k in [1, 15, 16, 17, 64, 100, 2048] {
                let x = data(k, 1);
                let w = data(k, 2);
                let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
                let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
                let bits = |v: f32| v.to_bits();
                assert_eq!(
                    bits(dot_with(isa, &x, &w)),
                    bits(dot_scalar(&x, &w)),
                    "{isa:?} f32 {k}"
                );
                assert_eq!(
                    bits(dot_with(isa, &x, &wb)),
                    bits(dot_scalar(&x, &wb)),
                    "{isa:?} bf16 {k}"
                );
                assert_eq!(
                    bits(dot_with(isa, &x, &wh)),
                    bits(dot_scalar(&x, &wh)),
                    "{isa:?} f16 {k}"
                );
                let exact: f64 = x.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum();
                assert!((dot_with(isa, &x, &w) as f64 - exact).abs() < 1e-4 * k as f64);
            }
        }
    }

    #[test]
    fn widening_is_exact_on_every_path() {
        for isa in every_isa() {
            for n in [1, 7, 8, 100] {
                let w = data(n, 3);
                let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
                let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
                let mut out = vec![0.0; n];
                widen_with(isa, &wb, &mut out);
                assert!(out.iter().zip(&wb).all(|(a, b)| *a == b.to_f32()), "{isa:?} bf16");
                widen_with(isa, &wh, &mut out);
                assert!(out.iter().zip(&wh).all(|(a, b)| *a == b.to_f32()), "{isa:?} f16");
            }
        }
    }

    #[test]
    fn the_isa_names_parse() {
        assert_eq!(Isa::parse("AVX2"), Some(Isa::Avx2));
        assert_eq!(Isa::parse("avx512"), Some(Isa::Avx512));
        assert_eq!(Isa::parse("scalar"), Some(Isa::Scalar));
        assert_eq!(Isa::parse("sse"), None);
        assert!(isa() <= Isa::detected());
    }
}
