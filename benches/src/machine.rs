//! What this machine can do at best, measured now: memory read bandwidth (the best of
//! several ways of reading) and peak f32 FMA throughput, both on every core of rayon's
//! pool.

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

/// One way of reading memory and the bytes/s it reached.
#[derive(Clone, Debug)]
pub struct ReadProbe {
    pub name: String,
    pub bytes_per_s: f64,
}

/// The machine's read bandwidth: the best of several ways of streaming a
/// `bytes`-sized buffer on every thread of rayon's pool (best of `reps` each), so that
/// a roofline built on it is one the engine's kernels cannot beat by reading
/// differently.
#[derive(Clone, Debug)]
pub struct Bandwidth {
    pub best: f64,
    pub probes: Vec<ReadProbe>,
}

/// How a probe splits the buffer between threads. Each probe reads with the widest
/// loads the CPU has, as one forward stream per thread or eight interleaved ones (the
/// decode GEMV's 1×8 tiles read eight weight rows at once).
#[derive(Clone, Copy, PartialEq)]
enum Split {
    /// One contiguous share per thread.
    PerThread,
    /// Four chunks per thread, taken by whichever thread is free.
    Stealing,
}

pub fn read_bandwidth(bytes: usize, reps: usize) -> Bandwidth {
    let words = bytes / 8;
    // Filled with non-zero data so no page is the shared zero page.
    let buf: Vec<u64> = (0..words as u64).into_par_iter().map(|i| i | 1).collect();
    let threads = rayon::current_num_threads();
    let mut probes = Vec::new();
    for streams in [1, 8] {
        for split in [Split::PerThread, Split::Stealing] {
            let chunk = match split {
                Split::PerThread => words.div_ceil(threads),
                Split::Stealing => words.div_ceil(threads * 4),
            };
            let mut best = f64::MAX;
            let mut sink = 0u64;
            for _ in 0..reps {
                let t = Instant::now();
                sink ^= buf
                    .par_chunks(chunk)
                    .with_min_len(1)
                    .map(|c| sum_words(c, streams))
                    .reduce(|| 0, |a, b| a ^ b);
                best = best.min(t.elapsed().as_secs_f64());
            }
            std::hint::black_box(sink);
            let name = format!(
                "{streams} stream{} per thread, {}, {}-bit loads",
                if streams > 1 { "s" } else { "" },
                if split == Split::PerThread { "one share per thread" } else { "stolen chunks" },
                load_bits()
            );
            probes.push(ReadProbe { name, bytes_per_s: (words * 8) as f64 / best });
        }
    }
    let best = probes.iter().map(|p| p.bytes_per_s).fold(0.0, f64::max);
    Bandwidth { best, probes }
}

fn load_bits() -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return 512;
        }
        if is_x86_feature_detected!("avx2") {
            return 256;
        }
    }
    64
}

/// Sum of `words` in `streams` interleaved regions with the widest loads available
/// (the bandwidth probes' kernel).
fn sum_words(words: &[u64], streams: usize) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected.
            return unsafe { sum_words_avx512(words, streams) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected.
            return unsafe { sum_words_avx2(words, streams) };
        }
    }
    let len = words.len() / streams;
    let mut acc = 0u64;
    for off in 0..len {
        for s in 0..streams {
            acc = acc.wrapping_add(words[s * len + off]);
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_words_avx512(words: &[u64], streams: usize) -> u64 {
    use std::arch::x86_64::*;
    let len = words.len() / streams / 32 * 32;
    let mut acc = [_mm512_setzero_si512(); 4];
    let p = words.as_ptr();
    for off in (0..len).step_by(32) {
        for s in 0..streams {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: `s * len + off + 8k + 8 <= streams * len <= words.len()`.
                let v = unsafe { _mm512_loadu_si512(p.add(s * len + off + 8 * k).cast()) };
                *a = _mm512_add_epi64(*a, v);
            }
        }
    }
    let total = acc.iter().fold(_mm512_setzero_si512(), |s, v| _mm512_add_epi64(s, *v));
    _mm512_reduce_add_epi64(total) as u64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_words_avx2(words: &[u64], streams: usize) -> u64 {
    use std::arch::x86_64::*;
    let len = words.len() / streams / 16 * 16;
    let mut acc = [_mm256_setzero_si256(); 4];
    let p = words.as_ptr();
    for off in (0..len).step_by(16) {
        for s in 0..streams {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: `s * len + off + 4k + 4 <= streams * len <= words.len()`.
                let v = unsafe { _mm256_loadu_si256(p.add(s * len + off + 4 * k).cast()) };
                *a = _mm256_add_epi64(*a, v);
            }
        }
    }
    let total = acc.iter().fold(_mm256_setzero_si256(), |s, v| _mm256_add_epi64(s, *v));
    let mut out = [0u64; 4];
    // SAFETY: `out` holds 4 u64s.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), total) };
    out.iter().fold(0, |a, b| a.wrapping_add(*b))
}

/// Peak f32 FLOP/s (2 per FMA) with independent FMA chains of the widest vectors the CPU
/// has (AVX-512, else AVX2) on every thread (best of three runs), or `None` without
/// either.
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
        // Best of nine, ~40 ms each, spread out: a shared VM's neighbours can steal a core
        // for longer than one run (three back to back were not enough: a 2-core EPYC VM once reported half its
        // peak, and a prefill at 133% of it).
        let mut best = f64::MAX;
        for _ in 0..9 {
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
            best = best.min(t.elapsed().as_secs_f64());
            std::hint::black_box(sink);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // 12 chains × lanes × 2 flops per iteration.
        Some((threads as u64 * iters * 12 * lanes * 2) as f64 / best)
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
