// attention_decode.cu — paged attention for decode steps: one query row per sequence.
//
// Semantics (the CPU device's cpu/attention.rs): sequence s's query row r =
// seq_row[s] + seq_len[s] - 1 sits at position p = seq_start_pos[s] + seq_len[s] - 1; query
// head h attends to the cached keys at positions lo..=p (lo = p + 1 - window with a sliding
// window, else 0) of kv head h / (heads / kv_heads), softmax(q·k * scale) · V. Position t lives
// in block block_tables[seq_block_off[s] + t / 16] at offset t % 16 of the f32 NHD cache
// [num_blocks, 16, kv_heads, head_dim]. The step's own K/V are already in the cache.
//
// Design (flash-decoding, vLLM's paged_attention_v2): grid = (num_seqs, kv_heads *
// head_chunks, partitions). A CTA owns one sequence, one kv head and one partition of the
// sequence's keys, and serves up to GMAX query heads of that kv head, so each K/V row is read
// from memory once for all its query heads (GQA); G = heads / kv_heads above GMAX takes
// head_chunks CTAs. A sequence with n keys is cut into partitions of
// max(256, ceil(n / 16)) keys, at most 16: a function of n alone, so a sequence's result
// (its rounding included) never depends on what else is in the batch, and the workspace is
// bounded by 16 partitions per (sequence, query head). gridDim.z = min(16, ceil(max keys /
// 256)) from the host's bound on the context; CTAs past a sequence's partitions exit.
//
// Inside a CTA (128 threads) the threads form lane groups of L = min(32, HD / 4) lanes; a
// group takes KPS keys at a time (keys KPS * group, KPS * group + 1, ... of each step) and each
// lane holds V = HD / L of the head dims (float4 loads: a group reads a K or V row as one
// coalesced run). Each group keeps, per query head, an online softmax (running max m, running
// sum l, unnormalised accumulator acc) in f32 registers; KPS = 2 keys per step (1 at HD 256)
// keeps several row loads in flight. Every lane runs the same number of steps (keys past the
// partition are masked), so the group shuffles run with the warp converged. The groups then
// merge through shared memory (groups x GMAX x (HD + 2) floats: 8-18 KB, static). A
// one-partition sequence writes its normalised output; otherwise each partition writes
// (m, l, acc) to the workspace and attention_decode_reduce rescales and sums them.
//
// Two widths of query-head group per bucket: g4 (G <= 4, e.g. Llama-3-8B: about 86
// registers, five CTAs per SM) and g8 (about 120 registers, four CTAs per SM); HD 256 has
// g4 only (about 114 registers).
//
// HD is a template bucket (16, 32, 64, 128, 256) holding any runtime head_dim <= HD with
// head_dim % 4 == 0 (the unused lanes hold zeros). All math is f32 (expf), so the decode path
// agrees with the f32 CPU reference to rounding.
//
// Metadata is untrusted as far as memory goes: rows, block-table indices and block ids are
// checked against the buffer lengths the host passes; a key in an out-of-range block is
// skipped, a sequence whose rows are out of range or whose seq_len is 0 (graph padding)
// writes nothing, and partitions never exceed the grid's (see partitioning()).
#include "common.cuh"

#define RILL_DECODE_THREADS 128
// A partition covers at least RILL_DECODE_PARTITION keys and a sequence has at most
// RILL_DECODE_MAX_PARTITIONS of them (longer contexts get longer partitions).
#define RILL_DECODE_PARTITION 256
#define RILL_DECODE_MAX_PARTITIONS 16

namespace decode {

using Meta = AttnMeta;

// The query row and key range [lo, p] of sequence s; false when it has nothing to compute.
__device__ __forceinline__ bool seq_range(const Meta& m, int s, int& row, int& lo, int& p) {
    if (s >= m.num_seqs) {
        return false;
    }
    const unsigned len = m.seq_len[s];
    const unsigned first = m.seq_row[s];
    if (len == 0 || len > (unsigned)m.rows || first > (unsigned)m.rows - len) {
        return false;
    }
    row = (int)(first + len - 1);
    const unsigned last = m.seq_start_pos[s] + len - 1;
    if (last > 0x3fffffffu) {  // positions stay far from int overflow
        return false;
    }
    p = (int)last;
    lo = m.window > 0 ? max(0, p + 1 - m.window) : 0;
    return true;
}

// Keys per partition and partitions of a sequence with n keys. Keys per partition are
// max(256, ceil(n / 16)): a function of n alone, so a sequence's partitioning (and rounding)
// never depends on the rest of the batch. Only if the host's max_context was not an upper
// bound (more partitions than the grid has) are they stretched to fit the grid, which keeps
// every workspace slot inside the buffer.
__device__ __forceinline__ void partitioning(int n, int grid_parts, int& psize, int& parts) {
    psize = max(RILL_DECODE_PARTITION,
                (n + RILL_DECODE_MAX_PARTITIONS - 1) / RILL_DECODE_MAX_PARTITIONS);
    parts = (n - 1) / psize + 1;
    if (parts > grid_parts) {
        psize = (n + grid_parts - 1) / grid_parts;
        parts = (n - 1) / psize + 1;
    }
}

__device__ __forceinline__ float4 load4(const float* p) {
    return *reinterpret_cast<const float4*>(p);
}

// Lanes per key, floats per lane, and lane groups for a head-dim bucket and GMAX query heads
// per CTA.
template <int HD, int GMAX_> struct Shape {
    static constexpr int L = HD / 4 < 32 ? HD / 4 : 32;
    static constexpr int V = HD / L;
    static constexpr int CHUNKS = V / 4;  // float4 chunks per lane
    static constexpr int GMAX = GMAX_;
    // Keys in flight per group: two, except where their rows would push HD 256 past the
    // 128-register budget.
    static constexpr int KPS = HD > 128 ? 1 : 2;
    static constexpr int GROUPS = RILL_DECODE_THREADS / L;
};

// Sum over the L lanes of a lane group (xor butterflies stay inside aligned groups).
template <int L> __device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int offset = L / 2; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

template <int HD, int GMAX>
__device__ __forceinline__ void decode_impl(const Meta& m, const float* __restrict__ q,
                                            const float* __restrict__ k_cache,
                                            const float* __restrict__ v_cache,
                                            float scale, int head_chunks,
                                            float* __restrict__ out,
                                            float* __restrict__ ws_acc,
                                            float* __restrict__ ws_ml) {
    using S = Shape<HD, GMAX>;
    __shared__ float sh_acc[S::GROUPS][S::GMAX][HD];
    __shared__ float sh_ml[S::GROUPS][S::GMAX][2];

    const int s = blockIdx.x;
    const int part = blockIdx.z;
    const int partitions = gridDim.z;
    int row, lo, p;
    if (!seq_range(m, s, row, lo, p)) {
        return;
    }
    int psize, parts;  // parts <= gridDim.z
    partitioning(p - lo + 1, partitions, psize, parts);
    if (part >= parts) {
        return;  // the reduce reads only the first `parts` partitions
    }
    const int k_begin = lo + part * psize;
    const int k_end = min(p + 1, k_begin + psize);

    const int group = m.heads / m.kv_heads;
    const int kvh = blockIdx.y / head_chunks;
    const int h0 = kvh * group + (blockIdx.y % head_chunks) * S::GMAX;
    const int ng = min(S::GMAX, kvh * group + group - h0);
    const int d = m.head_dim;
    const int lane = threadIdx.x % S::L;
    const int grp = threadIdx.x / S::L;

    // This lane's dims: chunk c covers [c * 4L + 4 lane, +4); dims >= head_dim stay zero.
    float qr[S::GMAX][S::V];
    const float* qrow = q + (size_t)row * m.heads * d;
#pragma unroll
    for (int g = 0; g < S::GMAX; ++g) {
#pragma unroll
        for (int c = 0; c < S::CHUNKS; ++c) {
            const int dim = c * 4 * S::L + 4 * lane;
            float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
            if (g < ng && dim < d) {
                x = load4(qrow + (size_t)(h0 + g) * d + dim);
            }
            qr[g][4 * c] = x.x;
            qr[g][4 * c + 1] = x.y;
            qr[g][4 * c + 2] = x.z;
            qr[g][4 * c + 3] = x.w;
        }
    }

    float mx[S::GMAX], sum[S::GMAX], acc[S::GMAX][S::V];
#pragma unroll
    for (int g = 0; g < S::GMAX; ++g) {
        mx[g] = RILL_NEG_INF;
        sum[g] = 0.f;
#pragma unroll
        for (int j = 0; j < S::V; ++j) {
            acc[g][j] = 0.f;
        }
    }

    const size_t kv_width = (size_t)m.kv_heads * d;
    const unsigned table = m.seq_block_off[s];
    // Offset of position t's row for this kv head, or -1 when its block is out of range.
    auto row_of = [&](int t) -> long long {
        const unsigned idx = table + (unsigned)t / RILL_BLOCK_SIZE;
        if (idx >= m.block_tables_len) {
            return -1;
        }
        const unsigned block = m.block_tables[idx];
        if (block >= m.num_blocks) {
            return -1;
        }
        const size_t slot = (size_t)block * RILL_BLOCK_SIZE + t % RILL_BLOCK_SIZE;
        return (long long)(slot * kv_width + (size_t)kvh * d);
    };

    // The trip count is the same for every lane (keys past k_end are masked), so the group
    // shuffles below always run with the whole warp converged.
    for (int step = k_begin; step < k_end; step += S::KPS * S::GROUPS) {
        const int t0 = step + S::KPS * grp;
        long long at[S::KPS];
        float kr[S::KPS][S::V], vr[S::KPS][S::V];
#pragma unroll
        for (int u = 0; u < S::KPS; ++u) {
            at[u] = t0 + u < k_end ? row_of(t0 + u) : -1;
#pragma unroll
            for (int c = 0; c < S::CHUNKS; ++c) {
                const int dim = c * 4 * S::L + 4 * lane;
                float4 a = make_float4(0.f, 0.f, 0.f, 0.f), b = a;
                if (dim < d && at[u] >= 0) {
                    a = load4(k_cache + at[u] + dim);
                    b = load4(v_cache + at[u] + dim);
                }
                kr[u][4 * c] = a.x, kr[u][4 * c + 1] = a.y, kr[u][4 * c + 2] = a.z;
                kr[u][4 * c + 3] = a.w;
                vr[u][4 * c] = b.x, vr[u][4 * c + 1] = b.y, vr[u][4 * c + 2] = b.z;
                vr[u][4 * c + 3] = b.w;
            }
        }
#pragma unroll
        for (int g = 0; g < S::GMAX; ++g) {
            if (g < ng) {  // uniform across the CTA, so the shuffles below are safe
                float sc[S::KPS];
                float m_new = mx[g];
#pragma unroll
                for (int u = 0; u < S::KPS; ++u) {
                    float dot = 0.f;
#pragma unroll
                    for (int j = 0; j < S::V; ++j) {
                        dot = fmaf(qr[g][j], kr[u][j], dot);
                    }
                    dot = group_sum<S::L>(dot) * scale;
                    sc[u] = at[u] >= 0 ? dot : RILL_NEG_INF;
                    m_new = fmaxf(m_new, sc[u]);
                }
                if (m_new != RILL_NEG_INF) {
                    const float corr = expf(mx[g] - m_new);
                    sum[g] *= corr;
#pragma unroll
                    for (int j = 0; j < S::V; ++j) {
                        acc[g][j] *= corr;
                    }
#pragma unroll
                    for (int u = 0; u < S::KPS; ++u) {
                        const float pu = expf(sc[u] - m_new);
                        sum[g] += pu;
#pragma unroll
                        for (int j = 0; j < S::V; ++j) {
                            acc[g][j] = fmaf(pu, vr[u][j], acc[g][j]);
                        }
                    }
                    mx[g] = m_new;
                }
            }
        }
    }

    // Merge the lane groups: every group publishes its state, then each thread combines one
    // (head, dim) across groups.
#pragma unroll
    for (int g = 0; g < S::GMAX; ++g) {
#pragma unroll
        for (int c = 0; c < S::CHUNKS; ++c) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                sh_acc[grp][g][c * 4 * S::L + 4 * lane + j] = acc[g][4 * c + j];
            }
        }
        if (lane == 0) {
            sh_ml[grp][g][0] = mx[g];
            sh_ml[grp][g][1] = sum[g];
        }
    }
    __syncthreads();

    for (int i = threadIdx.x; i < ng * d; i += RILL_DECODE_THREADS) {
        const int g = i / d;
        const int dim = i % d;
        float big = RILL_NEG_INF;
#pragma unroll 4
        for (int r = 0; r < S::GROUPS; ++r) {
            big = fmaxf(big, sh_ml[r][g][0]);
        }
        float total = 0.f, value = 0.f;
#pragma unroll 4
        for (int r = 0; r < S::GROUPS; ++r) {
            const float mr = sh_ml[r][g][0];
            if (mr != RILL_NEG_INF) {  // a group that saw no key holds nothing
                const float w = expf(mr - big);
                total = fmaf(sh_ml[r][g][1], w, total);
                value = fmaf(sh_acc[r][g][dim], w, value);
            }
        }
        const int h = h0 + g;
        if (parts == 1) {  // no reduce for this sequence
            out[(size_t)row * m.heads * d + (size_t)h * d + dim] = value / total;
        } else {
            const size_t slot = ((size_t)s * m.heads + h) * partitions + part;
            ws_acc[slot * d + dim] = value;
            if (dim == 0) {
                ws_ml[2 * slot] = big;
                ws_ml[2 * slot + 1] = total;
            }
        }
    }
}

}  // namespace decode

// Arguments: q, k_cache, v_cache, the metadata, scale, head_chunks, out, ws_acc, ws_ml.
// The register budget is explicit (CTAs per SM in __launch_bounds__): left to itself ptxas
// picks 80 for g4 and spills. 5 CTAs allow 102 registers (g4 uses ~86), 4 allow 128 (g8 and
// d256 use ~120).
#define RILL_DECODE_MIN_CTAS(HD, GMAX) ((HD) > 128 || (GMAX) > 4 ? 4 : 5)
#define RILL_DECODE_ENTRY(HD, GMAX)                                                           \
    extern "C" __global__ void __launch_bounds__(RILL_DECODE_THREADS, RILL_DECODE_MIN_CTAS(HD, GMAX)) \
        attention_decode_d##HD##_g##GMAX(                                                     \
            const float* __restrict__ q, const float* __restrict__ k_cache,                   \
            const float* __restrict__ v_cache, RILL_ATTN_META_PARAMS, float scale,            \
            int head_chunks, float* __restrict__ out, float* __restrict__ ws_acc,             \
            float* __restrict__ ws_ml) {                                                      \
        decode::decode_impl<HD, GMAX>(RILL_ATTN_META, q, k_cache, v_cache, scale,             \
                                      head_chunks, out, ws_acc, ws_ml);                       \
    }
RILL_DECODE_ENTRY(16, 4)
RILL_DECODE_ENTRY(16, 8)
RILL_DECODE_ENTRY(32, 4)
RILL_DECODE_ENTRY(32, 8)
RILL_DECODE_ENTRY(64, 4)
RILL_DECODE_ENTRY(64, 8)
RILL_DECODE_ENTRY(128, 4)
RILL_DECODE_ENTRY(128, 8)
RILL_DECODE_ENTRY(256, 4)

// Combine the partitions of one (sequence, query head): grid = (num_seqs, heads), one thread
// per head dim (strided). The sequence's partition count comes from the same arithmetic as
// above (a one-partition sequence already wrote its output); the partials are rescaled to the
// global max in a fixed order. Arguments: the metadata, partitions (gridDim.z of the decode
// launch: the workspace stride), ws_acc, ws_ml, out.
extern "C" __global__ void __launch_bounds__(RILL_DECODE_THREADS)
    attention_decode_reduce(RILL_ATTN_META_PARAMS, int partitions,
                            const float* __restrict__ ws_acc, const float* __restrict__ ws_ml,
                            float* __restrict__ out) {
    const AttnMeta meta = RILL_ATTN_META;
    const int s = blockIdx.x;
    const int h = blockIdx.y;
    int row, lo, p;
    if (!decode::seq_range(meta, s, row, lo, p)) {
        return;
    }
    int psize, used;
    decode::partitioning(p - lo + 1, partitions, psize, used);
    if (used == 1) {
        return;
    }
    const int d = meta.head_dim;
    const size_t base = ((size_t)s * meta.heads + h) * partitions;
    float big = RILL_NEG_INF;
    for (int i = 0; i < used; ++i) {
        big = fmaxf(big, ws_ml[2 * (base + i)]);
    }
    for (int dim = threadIdx.x; dim < d; dim += blockDim.x) {
        float total = 0.f, value = 0.f;
        for (int i = 0; i < used; ++i) {
            const float w = expf(ws_ml[2 * (base + i)] - big);
            total = fmaf(ws_ml[2 * (base + i) + 1], w, total);
            value = fmaf(ws_acc[(base + i) * d + dim], w, value);
        }
        out[(size_t)row * meta.heads * d + (size_t)h * d + dim] = value / total;
    }
}
