//! Causal attention over a ragged batch, reading keys and values from the paged cache.
//!
//! One task per (row, query head): the query at position `p` of sequence `s` attends
//! to `s`'s cached positions `lo..=p` (`lo = p + 1 - window` for sliding-window
//! layers), found through `s`'s block table. K/V were written to the cache before this
//! runs, so prefill chunks, whole prompts and decode tokens all take the same path.
//! Scores, the softmax and the weighted sum run in a fixed order per task, which keeps
//! the result independent of batch composition and chunking. Keys are taken a cache
//! block at a time (a block's rows are `kv_width` apart): the scores as strided dot-
//! product tiles and the weighted sum as rows added in order, with the arithmetic of
//! one position at a time (the test below holds every path to it). GQA maps query head `h`
//! to KV head `h / (heads / kv_heads)`.

use rayon::prelude::*;
use rill_proto::BLOCK_SIZE;

use super::Mat;
use super::simd::{self, Isa};
use crate::device::{AttentionShape, StepPlan};

pub(super) fn paged(
    q: &Mat,
    k_cache: &[f32],
    v_cache: &[f32],
    shape: AttentionShape,
    plan: &StepPlan,
    out: &mut Mat,
) {
    paged_with(simd::isa(), q, k_cache, v_cache, shape, plan, out)
}

/// [`paged`] on `isa`'s kernels (at most the CPU's): the same bits on every one.
fn paged_with(
    isa: Isa,
    q: &Mat,
    k_cache: &[f32],
    v_cache: &[f32],
    shape: AttentionShape,
    plan: &StepPlan,
    out: &mut Mat,
) {
    // Exact f32 in either precision (the CPU has no faster attention yet).
    let AttentionShape { heads, kv_heads, head_dim, window, precision: _ } = shape;
    let group = heads / kv_heads;
    let kv_width = kv_heads * head_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();

    out.data.par_chunks_mut(head_dim).enumerate().for_each_init(Vec::new, |scores, (task, o)| {
        let (row, head) = (task / heads, task % heads);
        let seq = plan.row_seq[row] as usize;
        let table = plan.block_table(seq);
        let pos = plan.positions[row] as usize;
        let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let qh = &q.row(row)[head * head_dim..(head + 1) * head_dim];
        let kv_off = (head / group) * head_dim;
        // Positions `lo..=pos` by cache block: within a block a position's K and V rows
        // lie `kv_width` apart, so each block's scores and weighted sum are strided
        // passes (the same per-element arithmetic as one position at a time).
        let blocks = || {
            (lo / BLOCK_SIZE..=pos / BLOCK_SIZE).map(move |b| {
                let (from, to) = (lo.max(b * BLOCK_SIZE), (pos + 1).min((b + 1) * BLOCK_SIZE));
                let at = (table[b] as usize * BLOCK_SIZE + from % BLOCK_SIZE) * kv_width + kv_off;
                (from - lo..to - lo, at)
            })
        };
        let span = |at: usize, n: usize| at..at + (n - 1) * kv_width + head_dim;

        scores.clear();
        scores.resize(pos + 1 - lo, 0.0);
        for (range, at) in blocks() {
            let n = range.len();
            simd::dots_strided(isa, qh, &k_cache[span(at, n)], kv_width, &mut scores[range]);
        }
        let mut max = f32::NEG_INFINITY;
        for s in scores.iter_mut() {
            *s *= scale;
            max = max.max(*s);
        }
        let mut sum = 0.0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        for s in scores.iter_mut() {
            *s *= inv;
        }
        o.fill(0.0);
        for (range, at) in blocks() {
            let n = range.len();
            simd::weighted_rows(isa, &scores[range], &v_cache[span(at, n)], kv_width, o);
        }
    });
}

#[cfg(test)]
mod tests {
    use rill_proto::{BlockId, ForwardBatch, SeqId, SeqStep, TokenId};

    use super::*;
    use crate::device::Precision;
    use crate::device::cpu::simd::tests::{data, every_isa};

    /// One position at a time, as the module doc says: the arithmetic the strided
    /// passes must reproduce bit for bit.
    fn reference(
        q: &Mat,
        k_cache: &[f32],
        v_cache: &[f32],
        shape: AttentionShape,
        plan: &StepPlan,
    ) -> Vec<f32> {
        let AttentionShape { heads, kv_heads, head_dim, window, .. } = shape;
        let kv_width = kv_heads * head_dim;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut out = vec![0.0; q.rows * heads * head_dim];
        for (task, o) in out.chunks_mut(head_dim).enumerate() {
            let (row, head) = (task / heads, task % heads);
            let table = plan.block_table(plan.row_seq[row] as usize);
            let pos = plan.positions[row] as usize;
            let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let qh = &q.row(row)[head * head_dim..(head + 1) * head_dim];
            let slot = |p: usize| {
                (table[p / BLOCK_SIZE] as usize * BLOCK_SIZE + p % BLOCK_SIZE) * kv_width
                    + (head / (heads / kv_heads)) * head_dim
            };
            let scores: Vec<f32> = (lo..=pos)
                .map(|p| simd::dot_scalar(qh, &k_cache[slot(p)..slot(p) + head_dim]) * scale)
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let inv = 1.0 / exps.iter().sum::<f32>();
            for (p, e) in (lo..=pos).zip(&exps) {
                let weight = e * inv;
                for (o, v) in o.iter_mut().zip(&v_cache[slot(p)..slot(p) + head_dim]) {
                    *o += weight * v;
                }
            }
        }
        out
    }

    fn seq(id: u64, start: usize, len: usize, blocks: &[u32]) -> SeqStep {
        SeqStep::new(
            SeqId(id),
            vec![TokenId(0); len],
            start,
            blocks.iter().copied().map(BlockId).collect(),
        )
    }

    #[test]
    fn strided_blocks_give_the_bits_of_one_position_at_a_time_on_every_path() {
        // A prefill chunk over scattered blocks, ending inside a block, beside a decode
        // row at a block's first slot; head sizes with and without vector tails.
        let batch = ForwardBatch {
            seqs: vec![seq(1, 5, 40, &[3, 0, 5]), seq(2, 32, 1, &[1, 4, 2])],
            ..Default::default()
        };
        for (heads, kv_heads, head_dim) in [(4, 2, 20), (8, 2, 64), (3, 3, 7)] {
            let plan = StepPlan::new(&batch, &vec![1.0; head_dim / 2]);
            let rows = plan.tokens.len();
            let kv_len = 6 * BLOCK_SIZE * kv_heads * head_dim;
            let (k_cache, v_cache) = (data(kv_len, 7), data(kv_len, 8));
            let q = Mat { data: data(rows * heads * head_dim, 9), rows, cols: heads * head_dim };
            for window in [None, Some(5), Some(BLOCK_SIZE + 3)] {
                let shape = AttentionShape {
                    heads,
                    kv_heads,
                    head_dim,
                    window,
                    precision: Precision::Exact,
                };
                let want = reference(&q, &k_cache, &v_cache, shape, &plan);
                for isa in every_isa() {
                    let mut out = Mat::zeros(rows, heads * head_dim);
                    paged_with(isa, &q, &k_cache, &v_cache, shape, &plan, &mut out);
                    let what = format!("{isa:?} {heads}/{kv_heads}x{head_dim} window {window:?}");
                    assert!(out.data == want, "{what}: a bit differs");
                }
            }
        }
    }
}
