//! What this machine can do at best, measured now: memory read bandwidth and peak
//! f32 FMA throughput, both on every core of rayon's pool.

use std::time::Instant;

use rayon::prelude::*;

/// The CPU's model name, hardware threads, OS and architecture (for reports).
pub fn describe() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{cpu}, {threads} hardware threads, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// Best-of-`reps` read bandwidth over a `bytes`-sized buffer, in bytes/s.
///
/// Every thread sums its share of the buffer (integer adds, which the compiler
/// vectorizes), so the figure is what a streaming kernel can expect.
pub fn read_bandwidth(bytes: usize, reps: usize) -> f64 {
    let words = bytes / 8;
    // Filled with non-zero data so no page is the shared zero page.
    let buf: Vec<u64> = (0..words as u64).into_par_iter().map(|i| i | 1).collect();
    let chunk = words.div_ceil(rayon::current_num_threads() * 4);
    let mut best = f64::MAX;
    let mut sink = 0u64;
    for _ in 0..reps {
        let t = Instant::now();
        sink ^= buf.par_chunks(chunk).map(sum_words).reduce(|| 0, |a, b| a ^ b);
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    (words * 8) as f64 / best
}

/// Sum of `words` with the widest loads available (the bandwidth probe's kernel).
fn sum_words(words: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected.
        return unsafe { sum_words_avx512(words) };
    }
    let mut acc = [0u64; 8];
    for w in words.chunks_exact(8) {
        for l in 0..8 {
            acc[l] = acc[l].wrapping_add(w[l]);
        }
    }
    acc.iter().fold(0, |a, b| a ^ b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_words_avx512(words: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    // Eight interleaved streams, like the 1×8 decode GEMV tiles: a single stream
    // leaves bandwidth unused on this kind of machine.
    const STREAMS: usize = 8;
    let len = words.len() / STREAMS / 8 * 8;
    let mut acc = [_mm512_setzero_si512(); STREAMS];
    let p = words.as_ptr();
    for off in (0..len).step_by(8) {
        for (s, a) in acc.iter_mut().enumerate() {
            // SAFETY: `s * len + off + 8 <= STREAMS * len <= words.len()`.
            let v = unsafe { _mm512_loadu_si512(p.add(s * len + off).cast()) };
            *a = _mm512_add_epi64(*a, v);
        }
    }
    let total = acc.iter().fold(_mm512_setzero_si512(), |s, v| _mm512_add_epi64(s, *v));
    _mm512_reduce_add_epi64(total) as u64
}

/// Peak f32 FLOP/s (2 per FMA) with independent FMA chains of the widest vectors the CPU
/// has (AVX-512, else AVX2) on every thread, or `None` without either.
pub fn peak_fma_flops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        // The widest FMA this CPU has: 16 lanes with AVX-512, 8 with AVX2.
        let lanes: u64 = if is_x86_feature_detected!("avx512f") {
            16
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            8
        } else {
            return None;
        };
        let iters = 20_000_000u64;
        let threads = rayon::current_num_threads();
        let t = Instant::now();
        let sink: f32 = (0..threads)
            .into_par_iter()
            // SAFETY: (both) the instruction set was detected above.
            .map(|i| unsafe {
                if lanes == 16 {
                    fma_chains(iters, i as f32)
                } else {
                    fma_chains_avx2(iters, i as f32)
                }
            })
            .sum();
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        // 12 chains × lanes × 2 flops per iteration.
        Some((threads as u64 * iters * 12 * lanes * 2) as f64 / secs)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(iters: u64, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(seed); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut out = [0.0f32; 8];
    let total = acc.iter().fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v));
    // SAFETY: `out` holds 8 f32s.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), total) };
    out.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains(iters: u64, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(seed); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let mut out = [0.0f32; 16];
    let total = acc.iter().fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v));
    // SAFETY: `out` holds 16 f32s.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), total) };
    out.iter().sum()
}
