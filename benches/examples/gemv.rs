//! Micro-benchmark of the CPU linear kernel on Llama-1B-sized matrices.
//!
//! `cargo run --release -p rill-benches --example gemv -- [m] [k] [n]` streams sixteen
//! n×k bf16 and eight f32 weight matrices (default 8192×2048: 512 MiB each way, far
//! beyond cache) through `gemm::linear` with `m` activation rows, and prints the weight
//! bytes/s (the figure that matters at m = 1) and GFLOP/s (at larger m): for bf16 in
//! both precisions (exact: `gemm::linear`; fast: `panels::linear` on the same matrices
//! laid out in panels), and for f32.

use std::time::Instant;

use half::bf16;
use rill_backend::device::cpu::{gemm, panels};

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args().nth(i).and_then(|s| s.parse().ok()).unwrap_or(default)
    };
    let (m, k, n) = (arg(1, 1), arg(2, 2048), arg(3, 8192));
    let value = |i: usize, l: usize| ((i * 7 + l) % 13) as f32 * 0.01;
    let bf: Vec<Vec<bf16>> =
        (0..16).map(|l| (0..n * k).map(|i| bf16::from_f32(value(i, l))).collect()).collect();
    let f: Vec<Vec<f32>> = (0..8).map(|l| (0..n * k).map(|i| value(i, l)).collect()).collect();
    let t = Instant::now();
    let packed: Vec<panels::Panels<bf16>> =
        bf.iter().map(|w| panels::Panels::pack(w, n, k)).collect();
    let pack_s = t.elapsed().as_secs_f64();
    println!("laid out in panels at {:.1} GB/s", (16 * n * k * 2) as f64 / pack_s / 1e9);
    let x: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32).collect();
    let mut out = vec![0.0; m * n];
    for _ in 0..5 {
        let t = Instant::now();
        for w in &bf {
            gemm::linear(&x, m, k, w, n, None, &mut out);
        }
        let bf_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for w in &packed {
            panels::linear(&x, m, w, None, &mut out);
        }
        let fast_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for w in &f {
            gemm::linear(&x, m, k, w, n, None, &mut out);
        }
        let f_s = t.elapsed().as_secs_f64();
        let flops = |mats: usize, s: f64| (mats * 2 * m * n * k) as f64 / s / 1e9;
        println!(
            "m={m} bf16 {:.1} GB/s {:.0} GFLOP/s | bf16 fast {:.1} GB/s {:.0} GFLOP/s | f32 {:.1} GB/s {:.0} GFLOP/s",
            (16 * n * k * 2) as f64 / bf_s / 1e9,
            flops(16, bf_s),
            (16 * n * k * 2) as f64 / fast_s / 1e9,
            flops(16, fast_s),
            (8 * n * k * 4) as f64 / f_s / 1e9,
            flops(8, f_s)
        );
    }
}
