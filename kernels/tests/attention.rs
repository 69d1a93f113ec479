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

use common::reference::{Batch, Seq, check};
use common::{Gpu, gpu};
use rill_kernels::AttentionMeta;
use rill_kernels::cudarc::driver::CudaSlice;

/// A test batch: (heads, kv_heads, head_dim), window, sequences.
type Case = ((usize, usize, usize), Option<usize>, &'static [Seq]);

/// Run the launcher on the GPU; `slack` inflates the row and context bounds (as a CUDA graph
/// bucket would).
fn run(batch: &Batch, gpu: &Gpu, all_decode: bool, exact: bool, slack: usize) -> Vec<f32> {
    let s = &gpu.stream;
    let up = |v: &[u32]| s.clone_htod(v).unwrap();
    let m = batch.meta();
    let (seq_row, seq_len) = (up(&m.seq_row), up(&m.seq_len));
    let (seq_start, seq_off, tables) =
        (up(&m.seq_start_pos), up(&m.seq_block_off), up(&m.block_tables));
    let (q, k, v) = (
        s.clone_htod(&batch.q).unwrap(),
        s.clone_htod(&batch.k).unwrap(),
        s.clone_htod(&batch.v).unwrap(),
    );
    let (max_rows, max_context) = batch.bounds(all_decode, slack);
    let ws_len =
        AttentionMeta::workspace_len(batch.seqs.len(), batch.heads, batch.head_dim, max_context);
    let mut workspace: CudaSlice<f32> = s.alloc_zeros(ws_len.max(1)).unwrap();
    let mut out: CudaSlice<f32> = s.alloc_zeros(batch.q.len()).unwrap();
    let mut meta = AttentionMeta {
        num_seqs: batch.seqs.len(),
        rows: m.rows,
        heads: batch.heads,
        kv_heads: batch.kv_heads,
        head_dim: batch.head_dim,
        window: batch.window,
        scale: batch.scale(),
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
        check(&format!("exact {name}"), &run(&batch, gpu, false, true, 1), &want, 1e-4);
        check(&format!("bf16 {name}"), &run(&batch, gpu, false, false, 1), &want, 2.5e-2);
        if seqs.iter().all(|s| s.1 == 1) {
            check(&format!("decode {name}"), &run(&batch, gpu, true, false, 1), &want, 1e-4);
            // A graph bucket's looser bounds give the same numbers.
            let loose = run(&batch, gpu, true, false, 8);
            assert_eq!(loose, run(&batch, gpu, true, false, 1), "decode bounds {name}");
        } else {
            let loose = run(&batch, gpu, false, true, 3);
            assert_eq!(loose, run(&batch, gpu, false, true, 1), "prefill bounds {name}");
        }
    }
}
