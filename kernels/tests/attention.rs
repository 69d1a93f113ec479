//! Paged attention on a real GPU against the CPU device's semantics, computed in f64 here.
//!
//! Random q and a random paged cache with shuffled block tables; mixed batches of prompts,
//! prefill chunks and decode rows; windows; GQA groups from 1 to 32; head_dim 16 to 256
//! (80 exercises a padded bucket). Every batch runs the exact f32 prefill path (within 1e-4
//! of the reference), the bf16 tensor-core path (within 2.5e-2, relative to max(1, |x|):
//! bf16 has an 8-bit mantissa), and, for decode-only batches, the decode kernel (1e-4),
//! including 16-way split contexts. Loose bounds (a CUDA graph bucket's `max_context`,
//! `max_rows_per_seq`) must give bit-identical results. Without a CUDA device the test
//! prints `SKIP: ...` and passes.

mod common;

use common::{Gpu, gpu};
use rill_kernels::AttentionMeta;
use rill_kernels::attention::BLOCK_SIZE;
use rill_kernels::cudarc::driver::CudaSlice;

/// One sequence of a test batch: (start position, query rows).
type Seq = (usize, usize);

/// A test batch: (heads, kv_heads, head_dim), window, sequences.
type Case = ((usize, usize, usize), Option<usize>, &'static [Seq]);

/// A random step: q, a paged cache with shuffled block tables, and its metadata.
struct Batch {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    seqs: Vec<Seq>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    tables: Vec<Vec<u32>>,
}

/// Deterministic values in [-2, 2).
fn random(n: usize, state: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

impl Batch {
    fn new(shape: (usize, usize, usize), window: Option<usize>, seqs: &[Seq]) -> Batch {
        let (heads, kv_heads, head_dim) = shape;
        let mut state = (heads * 31 + head_dim * 7 + seqs.len()) as u64;
        let blocks: usize = seqs.iter().map(|(s, n)| (s + n).div_ceil(BLOCK_SIZE)).sum();
        let num_blocks = blocks + 5;
        // A shuffled pool, so block tables are neither contiguous nor ordered.
        let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
        for i in (1..pool.len()).rev() {
            let r = random(1, &mut state)[0];
            pool.swap(i, ((r + 2.0) / 4.0 * (i + 1) as f32) as usize % (i + 1));
        }
        let mut next = pool.into_iter();
        let tables = seqs
            .iter()
            .map(|(s, n)| next.by_ref().take((s + n).div_ceil(BLOCK_SIZE)).collect())
            .collect();
        let rows: usize = seqs.iter().map(|s| s.1).sum();
        let cache = num_blocks * BLOCK_SIZE * kv_heads * head_dim;
        Batch {
            heads,
            kv_heads,
            head_dim,
            window,
            seqs: seqs.to_vec(),
            q: random(rows * heads * head_dim, &mut state),
            k: random(cache, &mut state),
            v: random(cache, &mut state),
            tables,
        }
    }

    /// The CPU device's attention, in f64.
    fn reference(&self) -> Vec<f32> {
        let (d, kv_width) = (self.head_dim, self.kv_heads * self.head_dim);
        let group = self.heads / self.kv_heads;
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = Vec::with_capacity(self.q.len());
        for ((start, len), table) in self.seqs.iter().zip(&self.tables) {
            for pos in *start..start + len {
                let lo = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                for h in 0..self.heads {
                    let row = out.len() / (self.heads * d);
                    let q = &self.q[(row * self.heads + h) * d..][..d];
                    let at = |t: usize| {
                        let slot = table[t / BLOCK_SIZE] as usize * BLOCK_SIZE + t % BLOCK_SIZE;
                        slot * kv_width + (h / group) * d
                    };
                    let scores: Vec<f64> = (lo..=pos)
                        .map(|t| {
                            let k = &self.k[at(t)..][..d];
                            q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = w.iter().sum();
                    for i in 0..d {
                        let o: f64 =
                            (lo..=pos).zip(&w).map(|(t, w)| w * self.v[at(t) + i] as f64).sum();
                        out.push((o / sum) as f32);
                    }
                }
            }
        }
        out
    }

    /// Run the launcher on the GPU; `slack` inflates the row and context bounds (as a
    /// CUDA graph bucket would).
    fn run(&self, gpu: &Gpu, all_decode: bool, exact: bool, slack: usize) -> Vec<f32> {
        let s = &gpu.stream;
        let up = |v: &[u32]| s.clone_htod(v).unwrap();
        let mut seq_row = Vec::new();
        let mut offsets = Vec::new();
        let (mut rows, mut off) = (0, 0);
        for ((_, len), table) in self.seqs.iter().zip(&self.tables) {
            seq_row.push(rows as u32);
            offsets.push(off as u32);
            rows += len;
            off += table.len();
        }
        let u32s = |f: fn(&Seq) -> usize| self.seqs.iter().map(|s| f(s) as u32).collect::<Vec<_>>();
        let (seq_row, seq_off) = (up(&seq_row), up(&offsets));
        let (seq_len, seq_start) = (up(&u32s(|s| s.1)), up(&u32s(|s| s.0)));
        let tables = up(&self.tables.concat());
        let (q, k, v) = (
            s.clone_htod(&self.q).unwrap(),
            s.clone_htod(&self.k).unwrap(),
            s.clone_htod(&self.v).unwrap(),
        );
        let max_context = self.seqs.iter().map(|(s, n)| s + n).max().unwrap() * slack;
        let longest = self.seqs.iter().map(|s| s.1).max().unwrap();
        let max_rows = if all_decode { longest } else { longest * slack };
        let ws_len =
            AttentionMeta::workspace_len(self.seqs.len(), self.heads, self.head_dim, max_context);
        let mut workspace: CudaSlice<f32> = s.alloc_zeros(ws_len.max(1)).unwrap();
        let mut out: CudaSlice<f32> = s.alloc_zeros(self.q.len()).unwrap();
        let mut meta = AttentionMeta {
            num_seqs: self.seqs.len(),
            rows,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            window: self.window,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            seq_row: &seq_row,
            seq_len: &seq_len,
            seq_start_pos: &seq_start,
            seq_block_off: &seq_off,
            block_tables: &tables,
            max_rows_per_seq: max_rows,
            max_context,
            all_decode,
            exact,
            workspace: &mut workspace,
        };
        gpu.kernels.attention(s, &q, &k, &v, &mut meta, &mut out).unwrap();
        s.clone_dtoh(&out).unwrap()
    }
}

/// Largest error relative to max(1, |want|), failing above `tol`.
fn check(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(1.0);
        assert!(err <= tol, "{what}[{i}]: got {g}, want {w}");
        worst = worst.max(err);
    }
    println!("{what}: worst error {worst:.2e}");
}

#[test]
fn attention_matches_the_f32_reference_on_the_gpu() {
    let Some(gpu) = gpu() else { return };
    // (heads, kv_heads, head_dim), window, sequences (start, rows): the fixtures'
    // shapes (llama, mistral/qwen2 windows, llama3 G4 d32), Llama-3-8B's, padded and
    // large head dims, and mixed batches of prompts, chunks and decode rows.
    let cases: &[Case] = &[
        ((4, 2, 16), None, &[(0, 7), (12, 1), (30, 20), (5, 1)]),
        ((4, 2, 16), Some(7), &[(0, 40), (33, 1), (17, 9)]),
        ((4, 2, 16), Some(6), &[(0, 25), (9, 1)]),
        ((4, 1, 32), None, &[(3, 37), (100, 1), (0, 1)]),
        ((16, 2, 64), None, &[(0, 300), (700, 1), (20, 50)]),
        ((32, 8, 128), None, &[(5, 130), (0, 1), (64, 33), (1000, 1)]),
        ((8, 2, 128), Some(100), &[(50, 170), (400, 1)]),
        ((4, 2, 80), None, &[(0, 20), (3, 1)]),
        ((4, 2, 256), None, &[(1, 40), (7, 1)]),
        ((32, 1, 32), None, &[(0, 9), (4, 1)]),
        // Decode steps: long contexts split into partitions, G above 8, windows.
        ((32, 8, 128), None, &[(5000, 1), (17, 1), (300, 1), (0, 1)]),
        ((12, 1, 64), Some(300), &[(520, 1), (5, 1)]),
        ((4, 2, 16), None, &[(0, 1), (40, 1), (600, 1)]),
        ((4, 1, 32), Some(6), &[(9, 1), (300, 1)]),
        ((6, 1, 256), None, &[(260, 1)]),
        ((4, 2, 64), Some(4500), &[(6000, 1), (257, 1)]),
    ];
    for (shape, window, seqs) in cases {
        let batch = Batch::new(*shape, *window, seqs);
        let want = batch.reference();
        let name = format!("{shape:?} window {window:?} seqs {seqs:?}");
        check(&format!("exact {name}"), &batch.run(gpu, false, true, 1), &want, 1e-4);
        check(&format!("bf16 {name}"), &batch.run(gpu, false, false, 1), &want, 2.5e-2);
        if seqs.iter().all(|s| s.1 == 1) {
            check(&format!("decode {name}"), &batch.run(gpu, true, false, 1), &want, 1e-4);
            // A graph bucket's looser bounds give the same numbers.
            let loose = batch.run(gpu, true, false, 8);
            assert_eq!(loose, batch.run(gpu, true, false, 1), "decode bounds {name}");
        } else {
            let loose = batch.run(gpu, false, true, 3);
            assert_eq!(loose, batch.run(gpu, false, true, 1), "prefill bounds {name}");
        }
    }
}
