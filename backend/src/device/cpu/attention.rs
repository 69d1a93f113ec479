//! Causal attention over a ragged batch, reading keys and values from the paged cache.
//!
//! One task per (row, query head): the query at position `p` of sequence `s` attends
//! to `s`'s cached positions `lo..=p` (`lo = p + 1 - window` for sliding-window
//! layers), found through `s`'s block table. K/V were written to the cache before this
//! runs, so prefill chunks, whole prompts and decode tokens all take the same path.
//! Scores, the softmax and the weighted sum run in a fixed order per task, which keeps
//! the result independent of batch composition and chunking. GQA maps query head `h`
//! to KV head `h / (heads / kv_heads)`.

use rayon::prelude::*;
use rill_proto::BLOCK_SIZE;

use super::Mat;
use super::simd;
use crate::device::{AttentionShape, StepPlan};

pub(super) fn paged(
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
        let slot = |p: usize| {
            (table[p / BLOCK_SIZE] as usize * BLOCK_SIZE + p % BLOCK_SIZE) * kv_width + kv_off
        };

        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for p in lo..=pos {
            let at = slot(p);
            let s = simd::dot(qh, &k_cache[at..at + head_dim]) * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut sum = 0.0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        o.fill(0.0);
        for (p, s) in (lo..=pos).zip(scores.iter()) {
            let at = slot(p);
            let weight = s * inv;
            for (o, v) in o.iter_mut().zip(&v_cache[at..at + head_dim]) {
                *o += weight * v;
            }
        }
    });
}
