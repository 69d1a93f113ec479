//! Paged attention, emulated: the real `attention_decode.cu` and `attention_prefill.cu`,
//! launched exactly as `Kernels::attention` launches them (entry point, grid, block, shared
//! memory and workspace from `rill_kernels::attention::plan`), running the tests of
//! `kernels/tests/common/attention.rs`, which the GPU tests run too: the f64 reference and
//! its tolerances, 1e-4 for decode and the exact f32 prefill path, 2.5e-2 (relative to
//! max(1, |x|)) for the bf16 tensor-core path, and bit-identical results under looser
//! bounds, as a CUDA graph bucket passes them.

#[path = "../../tests/common/attention.rs"]
mod attention;
#[path = "../../tests/common/reference.rs"]
mod reference;

use attention::{self as cases, Attention, Path};
use reference::Batch;
use rill_kernels::AttentionMeta;
use rill_kernels::attention::{BLOCK_SIZE, Dims, Plan, decode_ml_offset, plan};
use rill_kernels_emu::{Arg, DevBuf, LaunchConfig, launch};

/// The emulator as an [`Attention`] runner.
struct Emu;

impl Attention for Emu {
    fn attention(&self, batch: &Batch, path: Path, bounds: (usize, usize)) -> Vec<f32> {
        let ((all_decode, exact), (max_rows_per_seq, max_context)) = (path.flags(), bounds);
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
        let (q, k, v) = (
            DevBuf::from_slice(&batch.q),
            DevBuf::from_slice(&batch.k),
            DevBuf::from_slice(&batch.v),
        );
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
}

fn attention(name: &str, cfg: LaunchConfig, args: &[Arg]) {
    // SAFETY: as in `Kernels::attention`: the arguments follow the kernels' signatures, the
    // metadata arrays hold num_seqs entries and the tables tables_len, the caches num_blocks
    // blocks, q and out rows * heads * head_dim values, and the workspace the length
    // AttentionMeta::workspace_len gives for these bounds, with ws_ml inside it.
    unsafe { launch(name, cfg, args) }.unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn decode_splits_long_contexts_and_serves_query_head_groups() {
    cases::decode_splits_long_contexts_and_serves_query_head_groups(&Emu);
}

#[test]
fn prefill_handles_ragged_batches_windows_and_head_dims() {
    cases::prefill_handles_ragged_batches_windows_and_head_dims(&Emu);
}

#[test]
#[ignore = "about 20 s on the emulator; the GPU runs it every time"]
fn model_sized_batches_match_the_reference() {
    cases::model_sized_batches_match_the_reference(&Emu);
}

#[test]
fn prefill_maps_tiles_over_more_than_32_sequences() {
    cases::prefill_maps_tiles_over_more_than_32_sequences(&Emu);
}

#[test]
fn decode_stays_in_its_workspace_when_max_context_is_not_a_bound() {
    cases::decode_stays_in_its_workspace_when_max_context_is_not_a_bound(&Emu);
}
