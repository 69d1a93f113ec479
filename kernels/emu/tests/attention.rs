//! Paged attention, emulated: the real `attention_decode.cu` and `attention_prefill.cu`,
//! launched exactly as `Kernels::attention` launches them (entry point, grid, block, shared
//! memory and workspace from `rill_kernels::attention::plan`), against the f64 reference the
//! GPU test uses (`kernels/tests/common/reference.rs`), with its tolerances: 1e-4 for decode
//! and the exact f32 prefill path, 2.5e-2 (relative to max(1, |x|)) for the bf16 tensor-core
//! path. Looser bounds, as a CUDA graph bucket passes them, must give bit-identical results.

#[path = "../../tests/common/reference.rs"]
mod reference;

use reference::{Batch, Seq, check};
use rill_kernels::AttentionMeta;
use rill_kernels::attention::{BLOCK_SIZE, Dims, Plan, decode_ml_offset, plan};
use rill_kernels_emu::{Arg, DevBuf, LaunchConfig, launch};

/// A test batch: (heads, kv_heads, head_dim), window, sequences (start, rows).
type Case = ((usize, usize, usize), Option<usize>, &'static [Seq]);

/// The batch's attention as the launcher computes it, with its bounds inflated by `slack` as
/// a CUDA graph bucket's would be.
fn run(batch: &Batch, all_decode: bool, exact: bool, slack: usize) -> Vec<f32> {
    run_with_bounds(batch, all_decode, exact, batch.bounds(all_decode, slack))
}

/// The same with explicit (max_rows_per_seq, max_context) bounds.
fn run_with_bounds(
    batch: &Batch,
    all_decode: bool,
    exact: bool,
    (max_rows_per_seq, max_context): (usize, usize),
) -> Vec<f32> {
    let m = batch.meta();
    let (num_seqs, heads, head_dim) = (batch.seqs.len(), batch.heads, batch.head_dim);
    let dims = Dims {
        num_seqs,
        rows: m.rows,
        heads,
        kv_heads: batch.kv_heads,
        head_dim,
        window: batch.window,
        scale: batch.scale(),
        max_rows_per_seq,
        max_context,
        all_decode,
        exact,
    };
    let plan = plan(&dims).unwrap();
    let (q, k, v) =
        (DevBuf::from_slice(&batch.q), DevBuf::from_slice(&batch.k), DevBuf::from_slice(&batch.v));
    let (seq_row, seq_len) = (DevBuf::from_slice(&m.seq_row), DevBuf::from_slice(&m.seq_len));
    let seq_start = DevBuf::from_slice(&m.seq_start_pos);
    let seq_off = DevBuf::from_slice(&m.seq_block_off);
    let tables = DevBuf::from_slice(&m.block_tables);
    let out = DevBuf::<f32>::zeros(batch.q.len());
    let num_blocks = batch.k.len() / (BLOCK_SIZE * batch.kv_heads * head_dim);
    // RILL_ATTN_META_PARAMS, as the launcher's MetaArgs pushes them.
    let meta: [Arg; 13] = [
        (&seq_row).into(),
        (&seq_len).into(),
        (&seq_start).into(),
        (&seq_off).into(),
        (&tables).into(),
        (tables.len() as u32).into(),
        (num_blocks as u32).into(),
        (num_seqs as i32).into(),
        (m.rows as i32).into(),
        (heads as i32).into(),
        (batch.kv_heads as i32).into(),
        (head_dim as i32).into(),
        (batch.window.unwrap_or(0) as i32).into(),
    ];
    let inputs = [(&q).into(), (&k).into(), (&v).into()];
    let scale = Arg::F32(batch.scale());
    match &plan {
        Plan::Decode { function, head_chunks, partitions, .. } => {
            let ws = DevBuf::<f32>::zeros(
                AttentionMeta::workspace_len(num_seqs, heads, head_dim, max_context).max(1),
            );
            let ws_ml = ws.at(decode_ml_offset(num_seqs, heads, *partitions, head_dim));
            let tail = [scale, (*head_chunks).into(), (&out).into(), (&ws).into(), ws_ml];
            attention(function, plan.config(), &[&inputs[..], &meta, &tail].concat());
            if let Some(cfg) = plan.reduce_config(heads) {
                let tail = [(*partitions as i32).into(), (&ws).into(), ws_ml, (&out).into()];
                attention("attention_decode_reduce", cfg, &[&meta[..], &tail].concat());
            }
        }
        Plan::Prefill { function, .. } => {
            let tail = [scale, (&out).into()];
            attention(function, plan.config(), &[&inputs[..], &meta, &tail].concat());
        }
    }
    out.to_vec()
}

fn attention(name: &str, cfg: LaunchConfig, args: &[Arg]) {
    // SAFETY: as in `Kernels::attention`: the arguments follow the kernels' signatures, the
    // metadata arrays hold num_seqs entries and the tables tables_len, the caches num_blocks
    // blocks, q and out rows * heads * head_dim values, and the workspace the length
    // AttentionMeta::workspace_len gives for these bounds, with ws_ml inside it.
    unsafe { launch(name, cfg, args) }.unwrap_or_else(|e| panic!("{e}"));
}

/// Every path a batch can take, as the GPU test runs them.
fn check_case((shape, window, seqs): &Case) {
    check_batch(*shape, *window, seqs);
}

fn check_batch(shape: (usize, usize, usize), window: Option<usize>, seqs: &[Seq]) {
    let batch = Batch::new(shape, window, seqs);
    let want = batch.reference();
    let name = format!("{shape:?} window {window:?} seqs {seqs:?}");
    check(&format!("exact {name}"), &run(&batch, false, true, 1), &want, 1e-4);
    check(&format!("bf16 {name}"), &run(&batch, false, false, 1), &want, 2.5e-2);
    if seqs.iter().all(|s| s.1 <= 1) {
        let tight = run(&batch, true, false, 1);
        check(&format!("decode {name}"), &tight, &want, 1e-4);
        assert_eq!(run(&batch, true, false, 8), tight, "decode bounds {name}");
    } else {
        let loose = run(&batch, false, true, 3);
        assert_eq!(loose, run(&batch, false, true, 1), "prefill bounds {name}");
    }
}

#[test]
fn decode_splits_long_contexts_and_serves_query_head_groups() {
    let cases: &[Case] = &[
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
    ];
    cases.iter().for_each(check_case);
}

#[test]
fn prefill_handles_ragged_batches_windows_and_head_dims() {
    let cases: &[Case] = &[
        // Prompts, chunks and decode rows in one batch.
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
    ];
    cases.iter().for_each(check_case);
}

#[test]
fn prefill_maps_tiles_over_more_than_32_sequences() {
    // The tile scan takes 32 sequences per warp-wide prefix sum; 45 take two rounds.
    let seqs: Vec<Seq> = (0..45).map(|i| (3 * i, 1 + i % 4)).collect();
    check_batch((4, 2, 16), None, &seqs);
}

#[test]
fn decode_stays_in_its_workspace_when_max_context_is_not_a_bound() {
    // A 4101-key context with max_context 300: the grid has 2 partitions, not 16, so the
    // kernel stretches them to fit, and the workspace (sized for 300) must still hold them.
    let batch = Batch::new((4, 1, 16), None, &[(4100, 1), (600, 1)]);
    let got = run_with_bounds(&batch, true, false, (1, 300));
    check("stretched decode", &got, &batch.reference(), 1e-4);
}
