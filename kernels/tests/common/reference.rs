//! Host references and inputs for the kernel tests, with no CUDA in them: shared by the GPU
//! tests here (through `common`) and by the emulated tests of `kernels/emu` (which include
//! this file by path), so that both check the kernels against the same semantics.
#![allow(dead_code)] // each test binary uses its own subset

use half::{bf16, f16};
use rill_kernels::attention::BLOCK_SIZE;

/// Deterministic values in [-2, 2) (an LCG: tests need no `rand`).
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    random_from(n, &mut state)
}

/// Like [`random`], continuing the generator `state`.
pub fn random_from(n: usize, state: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// `got` equals `want` within 1e-5 relative to max(1, |want|).
pub fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{what}[{i}]: got {g}, want {w}");
    }
}

/// A weight vector in bf16 and f16, and the f32 values a kernel must see for each of f32,
/// bf16 and f16 (the exactly widened roundings).
pub struct HostWeights {
    pub bf16: Vec<bf16>,
    pub f16: Vec<f16>,
    pub widened: [Vec<f32>; 3],
}

impl HostWeights {
    pub fn new(values: &[f32]) -> HostWeights {
        let b: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
        let h: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
        let widened = [
            values.to_vec(),
            b.iter().map(|v| v.to_f32()).collect(),
            h.iter().map(|v| v.to_f32()).collect(),
        ];
        HostWeights { bf16: b, f16: h, widened }
    }

    /// The weight in each dtype, with the f32 values a kernel must see for it.
    pub fn each(&self) -> [(Weight<'_>, &[f32]); 3] {
        [
            (Weight::F32(&self.widened[0]), &self.widened[0]),
            (Weight::Bf16(&self.bf16), &self.widened[1]),
            (Weight::F16(&self.f16), &self.widened[2]),
        ]
    }
}

/// A weight's values in one dtype, as a test passes it to a launch.
#[derive(Clone, Copy, Debug)]
pub enum Weight<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

impl Weight<'_> {
    /// The entry-point suffix of the kernels instantiated for this dtype.
    pub fn suffix(&self) -> &'static str {
        match self {
            Weight::F32(_) => "f32",
            Weight::Bf16(_) => "bf16",
            Weight::F16(_) => "f16",
        }
    }

    /// How many values it holds.
    pub fn len(&self) -> usize {
        match self {
            Weight::F32(w) => w.len(),
            Weight::Bf16(w) => w.len(),
            Weight::F16(w) => w.len(),
        }
    }
}

pub fn rms_norm_ref(x: &[f32], w: &[f32], cols: usize, eps: f32) -> Vec<f32> {
    x.chunks(cols)
        .flat_map(|row| {
            let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / cols as f32;
            let inv = 1.0 / (mean_sq + eps).sqrt();
            row.iter().zip(w).map(move |(v, w)| w * (v * inv)).collect::<Vec<_>>()
        })
        .collect()
}

/// Rotary embedding of `x` (`[rows, heads * head_dim]`), HF half rotation, with per-row
/// `cos`/`sin` of `head_dim / 2`: the CPU device's separately rounded products.
pub fn rope_ref(x: &[f32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = x.to_vec();
    for (r, row) in out.chunks_mut(heads * head_dim).enumerate() {
        for head in row.chunks_mut(head_dim) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (c, s) = (cos[r * half + i], sin[r * half + i]);
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * c - x1 * s;
                b[i] = x1 * c + x0 * s;
            }
        }
    }
    out
}

/// `silu(gate) * up` for `gate_up = [gate | up]` rows of `2 * cols`.
pub fn silu_mul_ref(gate_up: &[f32], cols: usize) -> Vec<f32> {
    gate_up
        .chunks(2 * cols)
        .flat_map(|row| {
            let (g, u) = row.split_at(cols);
            g.iter().zip(u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect::<Vec<_>>()
        })
        .collect()
}

pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = row.iter().map(|&l| (l as f64 - m).exp()).sum();
    row.iter().map(|&l| l as f64 - m - z.ln()).collect()
}

/// One sequence of an attention batch: (start position, query rows).
pub type Seq = (usize, usize);

/// A random attention step: q, a paged cache with shuffled block tables, and its shape.
pub struct Batch {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub window: Option<usize>,
    pub seqs: Vec<Seq>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub tables: Vec<Vec<u32>>,
}

/// The per-sequence metadata arrays of a [`Batch`], as `AttentionMeta` takes them.
pub struct BatchMeta {
    pub rows: usize,
    pub seq_row: Vec<u32>,
    pub seq_len: Vec<u32>,
    pub seq_start_pos: Vec<u32>,
    pub seq_block_off: Vec<u32>,
    pub block_tables: Vec<u32>,
}

impl Batch {
    pub fn new(shape: (usize, usize, usize), window: Option<usize>, seqs: &[Seq]) -> Batch {
        let (heads, kv_heads, head_dim) = shape;
        let mut state = (heads * 31 + head_dim * 7 + seqs.len()) as u64;
        let blocks: usize = seqs.iter().map(|(s, n)| (s + n).div_ceil(BLOCK_SIZE)).sum();
        let num_blocks = blocks + 5;
        // A shuffled pool, so block tables are neither contiguous nor ordered.
        let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
        for i in (1..pool.len()).rev() {
            let r = random_from(1, &mut state)[0];
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
            q: random_from(rows * heads * head_dim, &mut state),
            k: random_from(cache, &mut state),
            v: random_from(cache, &mut state),
            tables,
        }
    }

    pub fn meta(&self) -> BatchMeta {
        let (mut seq_row, mut seq_block_off) = (Vec::new(), Vec::new());
        let (mut rows, mut off) = (0, 0);
        for ((_, len), table) in self.seqs.iter().zip(&self.tables) {
            seq_row.push(rows as u32);
            seq_block_off.push(off as u32);
            rows += len;
            off += table.len();
        }
        BatchMeta {
            rows,
            seq_row,
            seq_len: self.seqs.iter().map(|s| s.1 as u32).collect(),
            seq_start_pos: self.seqs.iter().map(|s| s.0 as u32).collect(),
            seq_block_off,
            block_tables: self.tables.concat(),
        }
    }

    /// `(max_rows_per_seq, max_context)` for a launch, inflated by `slack` as a CUDA graph
    /// bucket's bounds would be (the row bound only for prefill).
    pub fn bounds(&self, all_decode: bool, slack: usize) -> (usize, usize) {
        let max_context = self.seqs.iter().map(|(s, n)| s + n).max().unwrap() * slack;
        let longest = self.seqs.iter().map(|s| s.1).max().unwrap();
        (if all_decode { longest } else { longest * slack }, max_context)
    }

    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// The CPU device's attention, in f64.
    pub fn reference(&self) -> Vec<f32> {
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
}

/// Largest error relative to max(1, |want|), failing above `tol`.
pub fn check(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(1.0);
        assert!(err <= tol, "{what}[{i}]: got {g}, want {w}");
        worst = worst.max(err);
    }
    println!("{what}: worst error {worst:.2e}");
}
