//! The tests of paged attention, written once against an [`Attention`] runner: the GPU tests
//! run them with `Kernels::attention`, the emulated tests of `kernels/emu` (which include
//! this file by path) with the real kernels on the emulator, launched as that launcher
//! launches them.
//!
//! Random q and a random paged cache with shuffled block tables ([`Batch`]); mixed batches of
//! prompts, prefill chunks and decode rows; windows; GQA groups from 1 to 32; head_dim 16 to
//! 256 (48 and 80 exercise padded buckets). Every batch runs the exact f32 prefill path
//! (within 1e-4 of the f64 reference), the bf16 tensor-core path (within 2.5e-2, relative
//! to max(1, |x|): bf16 has an 8-bit mantissa), and, for decode-only batches, the decode
//! kernel (1e-4), including 16-way split contexts. Looser bounds (a CUDA graph bucket's
//! `max_context`, `max_rows_per_seq`) must give bit-identical results.
#![allow(dead_code)] // each test binary uses its own subset

use super::reference::{Batch, Seq, check};

/// The kernel a launch takes, as `AttentionMeta`'s `all_decode` and `exact` choose it.
#[derive(Clone, Copy, Debug)]
pub enum Path {
    /// The exact f32 prefill kernel.
    Exact,
    /// The bf16 tensor-core prefill kernel.
    Bf16,
    /// The decode kernel (at most one row per sequence).
    Decode,
}

impl Path {
    /// `(all_decode, exact)`.
    pub fn flags(self) -> (bool, bool) {
        match self {
            Path::Exact => (false, true),
            Path::Bf16 => (false, false),
            Path::Decode => (true, false),
        }
    }
}

/// Runs the attention launcher on one side (a GPU, the emulator).
pub trait Attention {
    /// The batch's attention by `path`, with `(max_rows_per_seq, max_context)` bounds.
    fn attention(&self, batch: &Batch, path: Path, bounds: (usize, usize)) -> Vec<f32>;
}

/// (heads, kv_heads, head_dim).
pub type Shape = (usize, usize, usize);

/// A test batch: its shape, window, and sequences (start, rows).
pub type Case = (Shape, Option<usize>, &'static [Seq]);

/// The batch's attention with its bounds inflated by `slack`, as a CUDA graph bucket's
/// would be.
fn run(a: &impl Attention, batch: &Batch, path: Path, slack: usize) -> Vec<f32> {
    a.attention(batch, path, batch.bounds(path.flags().0, slack))
}

/// Every path a batch can take.
fn check_batch(a: &impl Attention, shape: Shape, window: Option<usize>, seqs: &[Seq]) {
    let batch = Batch::new(shape, window, seqs);
    let want = batch.reference();
    let name = format!("{shape:?} window {window:?} seqs {seqs:?}");
    let exact = run(a, &batch, Path::Exact, 1);
    check(&format!("exact {name}"), &exact, &want, 1e-4);
    check(&format!("bf16 {name}"), &run(a, &batch, Path::Bf16, 1), &want, 2.5e-2);
    if seqs.iter().all(|s| s.1 <= 1) {
        let decode = run(a, &batch, Path::Decode, 1);
        check(&format!("decode {name}"), &decode, &want, 1e-4);
        assert_eq!(run(a, &batch, Path::Decode, 8), decode, "decode bounds {name}");
    } else {
        assert_eq!(run(a, &batch, Path::Exact, 3), exact, "prefill bounds {name}");
    }
}

fn check_cases(a: &impl Attention, cases: &[Case]) {
    for &(shape, window, seqs) in cases {
        check_batch(a, shape, window, seqs);
    }
}

pub fn decode_splits_long_contexts_and_serves_query_head_groups(a: &impl Attention) {
    check_cases(
        a,
        &[
            // Three sequences, one split in three partitions; a padding sequence (no rows).
            ((4, 2, 16), None, &[(0, 1), (40, 1), (600, 1), (5, 0)]),
            // G = 12: two chunks of the g8 kernel; a window bounds the partitions.
            ((12, 1, 64), Some(300), &[(520, 1), (5, 1)]),
            // Llama-like G = 4 at head_dim 128, contexts of 1 to 701 keys.
            ((8, 2, 128), None, &[(700, 1), (17, 1), (300, 1), (0, 1)]),
            ((4, 1, 32), Some(6), &[(9, 1), (300, 1)]),
            // head_dim 256 (g4 only, so G = 6 takes two chunks).
            ((6, 1, 256), None, &[(260, 1)]),
            // The longest split: 16 partitions.
            ((4, 1, 16), None, &[(4100, 1), (3, 1)]),
            // G = 32: four chunks of g8; head_dim 48 leaves lanes of the 64 bucket idle.
            ((32, 1, 32), None, &[(40, 1), (300, 1)]),
            ((4, 1, 48), None, &[(300, 1), (10, 1)]),
        ],
    );
}

pub fn prefill_handles_ragged_batches_windows_and_head_dims(a: &impl Attention) {
    check_cases(
        a,
        &[
            // Prompts, chunks and decode rows in one batch (the fixtures' shapes: llama,
            // mistral/qwen2 windows, llama3's G = 4 at head_dim 32).
            ((4, 2, 16), None, &[(0, 7), (12, 1), (30, 20), (5, 1)]),
            ((4, 2, 16), Some(7), &[(0, 40), (33, 1), (17, 9)]),
            ((4, 2, 16), Some(6), &[(0, 25), (9, 1)]),
            ((32, 1, 32), None, &[(0, 9), (4, 1)]),
            ((4, 1, 32), None, &[(3, 37), (100, 1), (0, 1)]),
            ((8, 2, 64), None, &[(0, 70), (150, 1), (20, 30)]),
            ((8, 2, 128), Some(50), &[(40, 60), (200, 1)]),
            // head_dim 80 pads to the 128 bucket; 256 is the largest.
            ((4, 2, 80), None, &[(0, 20), (3, 1)]),
            ((2, 1, 256), None, &[(1, 20), (7, 1)]),
        ],
    );
}

/// Batches of real models' sizes (Llama-3-8B's heads, contexts of thousands of keys): what
/// the GPU runs beside the cases above, too slow for the emulator to run every time.
pub fn model_sized_batches_match_the_reference(a: &impl Attention) {
    check_cases(
        a,
        &[
            ((16, 2, 64), None, &[(0, 300), (700, 1), (20, 50)]),
            ((32, 8, 128), None, &[(5, 130), (0, 1), (64, 33), (1000, 1)]),
            ((8, 2, 128), Some(100), &[(50, 170), (400, 1)]),
            ((4, 2, 256), None, &[(1, 40), (7, 1)]),
            ((32, 8, 128), None, &[(5000, 1), (17, 1), (300, 1), (0, 1)]),
            ((4, 2, 64), Some(4500), &[(6000, 1), (257, 1)]),
        ],
    );
}

pub fn prefill_maps_tiles_over_more_than_32_sequences(a: &impl Attention) {
    // The tile scan takes 32 sequences per warp-wide prefix sum; 45 take two rounds.
    let seqs: Vec<Seq> = (0..45).map(|i| (3 * i, 1 + i % 4)).collect();
    check_batch(a, (4, 2, 16), None, &seqs);
}

pub fn decode_stays_in_its_workspace_when_max_context_is_not_a_bound(a: &impl Attention) {
    // A 4101-key context with max_context 300: the grid has 2 partitions, not 16, so the
    // kernel stretches them to fit, and the workspace (sized for 300) must still hold them.
    let batch = Batch::new((4, 1, 16), None, &[(4100, 1), (600, 1)]);
    let got = a.attention(&batch, Path::Decode, (1, 300));
    check("stretched decode", &got, &batch.reference(), 1e-4);
}
