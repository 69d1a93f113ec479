//! Paged attention on a real GPU against the CPU device's semantics, computed in f64 on the
//! host: the tests of `common/attention.rs` (shapes, paths and tolerances, shared with the
//! emulated tests of `kernels/emu`), run with `Kernels::attention` on a CUDA stream, batches
//! of real models' sizes among them. Without a CUDA device every test prints `SKIP: ...` and
//! passes.

mod common;

use common::attention::{self as cases, Attention, Path};
use common::reference::Batch;
use common::{Gpu, on_gpu};
use rill_kernels::AttentionMeta;
use rill_kernels::cudarc::driver::CudaSlice;

impl Attention for Gpu {
    fn attention(&self, batch: &Batch, path: Path, bounds: (usize, usize)) -> Vec<f32> {
        let ((all_decode, exact), (max_rows_per_seq, max_context)) = (path.flags(), bounds);
        let s = &self.stream;
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
        let ws_len = AttentionMeta::workspace_len(
            batch.seqs.len(),
            batch.heads,
            batch.head_dim,
            max_context,
        );
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
            max_rows_per_seq,
            max_context,
            all_decode,
            exact,
            workspace: &mut workspace,
        };
        self.kernels.attention(s, &q, &k, &v, &mut meta, &mut out).unwrap();
        s.clone_dtoh(&out).unwrap()
    }
}

#[test]
fn decode_splits_long_contexts_and_serves_query_head_groups() {
    on_gpu(cases::decode_splits_long_contexts_and_serves_query_head_groups);
}

#[test]
fn prefill_handles_ragged_batches_windows_and_head_dims() {
    on_gpu(cases::prefill_handles_ragged_batches_windows_and_head_dims);
}

#[test]
fn model_sized_batches_match_the_reference() {
    on_gpu(cases::model_sized_batches_match_the_reference);
}

#[test]
fn prefill_maps_tiles_over_more_than_32_sequences() {
    on_gpu(cases::prefill_maps_tiles_over_more_than_32_sequences);
}

#[test]
fn decode_stays_in_its_workspace_when_max_context_is_not_a_bound() {
    on_gpu(cases::decode_stays_in_its_workspace_when_max_context_is_not_a_bound);
}
