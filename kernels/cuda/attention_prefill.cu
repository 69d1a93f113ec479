// attention_prefill.cu — paged attention for steps with many query rows per sequence
// (prompts, prefill chunks, and mixed batches where some sequences decode one row).
//
// Semantics (the CPU device's cpu/attention.rs): row r of sequence s (r in 0..seq_len[s],
// query row seq_row[s] + r) sits at position p = seq_start_pos[s] + r; query head h attends
// to the cached keys at positions lo..=p (lo = p + 1 - window with a sliding window, else 0)
// of kv head h / G (G = heads / kv_heads), softmax(q·k * scale) · V. Position t lives in block
// block_tables[seq_block_off[s] + t / 16] at offset t % 16 of the f32 NHD cache
// [num_blocks, 16, kv_heads, head_dim]. The step's own K/V are already in the cache.
//
// Design (FlashAttention-2 over a paged cache): a CTA owns one kv head and a tile of BM
// "items" of one sequence, where the sequence's items are its (row, query head of this kv
// head) pairs, heads innermost: item i is row i / G, head i % G. Packing the G query heads of
// a kv head into the tile reads each K/V tile once for all of them (GQA) and keeps tiles full
// for sequences with few rows (a decode row in a mixed batch fills G items). The CTA walks
// the key positions its rows can see, [lo of its first row, p of its last row], in tiles of
// BN keys gathered through the block table into shared memory, with an online softmax
// (running max m, running sum l, unnormalised output O) per item. A warp skips a key tile
// that lies wholly outside the causal/window range of its rows.
//
// Grid: x = an upper bound on the tiles of all sequences, min(ceil(rows * G / BM) +
// num_seqs, num_seqs * ceil(max_rows_per_seq * G / BM)), y = kv_heads. Every warp of a CTA maps blockIdx.x to (sequence, tile) with the same warp
// prefix-scan over seq_len, so a long prompt next to many decode rows costs no idle CTAs
// beyond num_seqs.
//
// Two paths:
// - attention_prefill_bf16_d{HD}: tensor cores (mma.sync m16n8k16, bf16 inputs, f32
//   accumulate; sm_80+, trapping before). Q (pre-scaled by scale * log2 e), K and V are rounded to bf16 when
//   staged in shared memory; P is rounded to bf16 for P·V while l sums the f32 P (as FA2).
//   With bf16's 8-bit mantissa the output differs from the f32 reference by ~1e-2 relative:
//   right for bf16 models, whose activations carry that error anyway, not for f32 parity.
//   Warp w owns items 16w..16w+15; its S = Q·Kᵀ fragments are turned in registers into the
//   A operand of P·V (FA2's register reuse). Shared memory, bf16, rows padded by 8 elements
//   so the 32-bit fragment loads hit 32 distinct banks: Q [BM][HD+8], K [BN][HD+8], and V
//   transposed to [HD][BN+8] so a B fragment (two consecutive keys of one dim) is one word.
//   BN = 32 keys. HD <= 128: 8 warps, BM = 128 items, two CTAs per SM (52.5 KB of shared
//   memory at HD 128); HD = 256: 4 warps, BM = 64 (69.5 KB), whose f32 O fragments (HD / 2
//   registers per lane) need the 255-register budget of one CTA per SM.
// - attention_prefill_f32_d{HD}: exact f32 on CUDA cores for parity with the f32 CPU
//   reference (and f32 models): 4 warps, BM = 32 (8 items per warp), BN = 32. Lane j scores
//   key j for the warp's 8 items (Q broadcast from shared memory, K rows padded by 4 floats
//   so 8 lanes' float4 loads cover 32 banks), the softmax runs per item with warp shuffles,
//   P goes through a per-warp shared tile, and lane j accumulates dims j, j + 32, ... of O.
//   expf, not exp2f, and the scale applied after the dot, as the CPU does. Shared memory
//   52.5 KB at HD 128, 100.5 KB at HD 256; three CTAs per SM below HD 256.
//
// HD is a template bucket (16, 32, 64, 128, 256) holding any runtime head_dim <= HD with
// head_dim % 4 == 0; the padding dims are zero in shared memory. Shared memory is dynamic
// (the launcher raises the 48 KB limit where needed). Memory safety does not trust the
// metadata: rows, block-table indices and block ids are checked against the buffer lengths
// the host passes; a key in an out-of-range block reads as zeros, a sequence whose rows fall
// outside q is skipped, and seq_len 0 (graph padding) writes nothing.
#include "common.cuh"

#define RILL_LOG2E 1.4426950408889634f

namespace prefill {

using Meta = AttnMeta;

// What a CTA works on: a tile of one sequence's items for one kv head.
struct Tile {
    int row0;     // the sequence's first query row
    int start;    // its first position
    int items;    // its item count, len * G
    int item0;    // first item of this tile
    int group;    // G
    int kvh;
    unsigned table;  // offset of its block table
};

// Map blockIdx.x to (sequence, tile). Every warp runs the same scan, so no barrier is needed;
// false (for the whole CTA) when blockIdx.x is past the last tile or the sequence's rows fall
// outside q.
__device__ __forceinline__ bool find_tile(const Meta& m, int bm, Tile& t) {
    const int lane = threadIdx.x & 31;
    const int group = m.heads / m.kv_heads;
    const int b = blockIdx.x;
    int base = 0;
    for (int c = 0; c < m.num_seqs; c += 32) {
        const int i = c + lane;
        // A sequence claiming more rows than q has gets no tile.
        const unsigned len = i < m.num_seqs ? m.seq_len[i] : 0u;
        const int tiles = len <= (unsigned)m.rows ? ((int)len * group + bm - 1) / bm : 0;
        int incl = tiles;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int n = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += n;
        }
        const int total = __shfl_sync(0xffffffffu, incl, 31);
        if (b < base + total) {
            const int hit = __ffs(__ballot_sync(0xffffffffu, b < base + incl)) - 1;
            const int s = c + hit;
            const int before = __shfl_sync(0xffffffffu, incl - tiles, hit);
            const unsigned len = m.seq_len[s];  // <= rows, or it would have no tile
            const unsigned first = m.seq_row[s];
            const unsigned start = m.seq_start_pos[s];
            if (first > (unsigned)m.rows - len || start > 0x3fffffffu - len) {  // far from int overflow
                return false;
            }
            t.row0 = (int)first;
            t.start = (int)start;
            t.items = len * group;
            t.item0 = (b - base - before) * bm;
            t.group = group;
            t.kvh = blockIdx.y;
            t.table = m.seq_block_off[s];
            return true;
        }
        base += total;
    }
    return false;
}

// First visible key position for a query at position p.
__device__ __forceinline__ int lo_of(const Meta& m, int p) {
    return m.window > 0 ? max(0, p + 1 - m.window) : 0;
}

// Element offset of position t's row for kv head kvh, or -1 when its block is out of range.
__device__ __forceinline__ long long kv_row(const Meta& m, const Tile& t, int pos) {
    const unsigned idx = t.table + (unsigned)pos / RILL_BLOCK_SIZE;
    if (idx >= m.block_tables_len) {
        return -1;
    }
    const unsigned block = m.block_tables[idx];
    if (block >= m.num_blocks) {
        return -1;
    }
    const size_t slot = (size_t)block * RILL_BLOCK_SIZE + pos % RILL_BLOCK_SIZE;
    return (long long)((slot * m.kv_heads + t.kvh) * m.head_dim);
}

// Element offset of item i's query (and output) head vector.
__device__ __forceinline__ size_t q_offset(const Meta& m, const Tile& t, int item) {
    const int r = item / t.group;
    const int h = t.kvh * t.group + item % t.group;
    return ((size_t)(t.row0 + r) * m.heads + h) * m.head_dim;
}

__device__ __forceinline__ float4 load4(const float* p) {
    return *reinterpret_cast<const float4*>(p);
}

template <int HD> struct Bf16Shape {
    static constexpr int WARPS = HD > 128 ? 4 : 8;
    static constexpr int THREADS = WARPS * 32;
    // CTAs per SM the register budget must allow (__launch_bounds__): two 8-warp CTAs cap
    // registers at 128, which the O and S fragments (HD / 2 + BN / 2) fit without spilling
    // with BN = 32 (BN = 64 spills at HD 64 and 128).
    static constexpr int MIN_CTAS = HD > 128 ? 1 : 2;
    static constexpr int BM = 16 * WARPS;
    static constexpr int BN = 32;
    static constexpr int QS = HD + 8;  // Q and K row stride, bf16 elements
    static constexpr int VS = BN + 8;  // transposed V row stride
    static constexpr int SMEM = 2 * (BM * QS + BN * QS + HD * VS);
};

template <int HD>
__device__ __forceinline__ void bf16_impl(const Meta& m, const float* __restrict__ q,
                                          const float* __restrict__ k_cache,
                                          const float* __restrict__ v_cache, float scale,
                                          float* __restrict__ out) {
    using S = Bf16Shape<HD>;
    if (dynamic_smem_bytes() < S::SMEM) {
        __trap();  // the launcher's size formula disagrees with this one: fail loudly
    }
    unsigned char* smem = dynamic_smem();
    __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem);
    __nv_bfloat16* ks = qs + S::BM * S::QS;
    __nv_bfloat16* vt = ks + S::BN * S::QS;

    Tile t;
    if (!find_tile(m, S::BM, t)) {
        return;
    }
    const int d = m.head_dim;
    const int n_items = min(S::BM, t.items - t.item0);
    const float qscale = scale * RILL_LOG2E;  // softmax in base 2: exp2f(s - m)

    for (int idx = threadIdx.x; idx < S::BM * (HD / 4); idx += S::THREADS) {
        const int i = idx / (HD / 4);
        const int dim = 4 * (idx % (HD / 4));
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i < n_items && dim < d) {
            x = load4(q + q_offset(m, t, t.item0 + i) + dim);
        }
        uint2 w;
        w.x = pack_bf16(x.x * qscale, x.y * qscale);
        w.y = pack_bf16(x.z * qscale, x.w * qscale);
        *reinterpret_cast<uint2*>(qs + i * S::QS + dim) = w;
    }

    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int gid = lane >> 2;  // fragment row (and B column) of this lane
    const int tig = lane & 3;   // its column pair
    // The two items this lane's fragments hold, and their visible key ranges.
    bool valid[2];
    int pos[2], lo[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = 16 * warp + gid + 8 * r;
        valid[r] = i < n_items;
        pos[r] = t.start + (t.item0 + min(i, n_items - 1)) / t.group;
        lo[r] = lo_of(m, pos[r]);
    }
    // The warp's (and CTA's) key ranges, from their first and last items.
    const int warp_first = min(16 * warp, n_items - 1);
    const int warp_last = min(16 * warp + 15, n_items - 1);
    const bool warp_live = 16 * warp < n_items;
    const int warp_lo = lo_of(m, t.start + (t.item0 + warp_first) / t.group);
    const int warp_hi = t.start + (t.item0 + warp_last) / t.group;
    const int cta_lo = lo_of(m, t.start + t.item0 / t.group);
    const int cta_hi = t.start + (t.item0 + n_items - 1) / t.group;

    float o[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    }
    float mrun[2] = {RILL_NEG_INF, RILL_NEG_INF};
    float lrun[2] = {0.f, 0.f};

    for (int kt = cta_lo; kt <= cta_hi; kt += S::BN) {
        __syncthreads();  // the previous tile's readers are done (and Q is staged)
        for (int idx = threadIdx.x; idx < S::BN * (HD / 4); idx += S::THREADS) {
            const int j = idx / (HD / 4);
            const int dim = 4 * (idx % (HD / 4));
            float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
            if (kt + j <= cta_hi && dim < d) {
                const long long at = kv_row(m, t, kt + j);
                if (at >= 0) x = load4(k_cache + at + dim);
            }
            uint2 w;
            w.x = pack_bf16(x.x, x.y);
            w.y = pack_bf16(x.z, x.w);
            *reinterpret_cast<uint2*>(ks + j * S::QS + dim) = w;
        }
        // V transposed: a thread takes two consecutive keys and four dims, so its four words
        // land in four rows of vt; consecutive lanes take consecutive key pairs.
        for (int idx = threadIdx.x; idx < (S::BN / 2) * (HD / 4); idx += S::THREADS) {
            const int kp = idx % (S::BN / 2);
            const int dim = 4 * (idx / (S::BN / 2));
            float4 a = make_float4(0.f, 0.f, 0.f, 0.f), b = a;
            if (dim < d) {
                if (kt + 2 * kp <= cta_hi) {
                    const long long at = kv_row(m, t, kt + 2 * kp);
                    if (at >= 0) a = load4(v_cache + at + dim);
                }
                if (kt + 2 * kp + 1 <= cta_hi) {
                    const long long at = kv_row(m, t, kt + 2 * kp + 1);
                    if (at >= 0) b = load4(v_cache + at + dim);
                }
            }
            unsigned* col = reinterpret_cast<unsigned*>(vt + dim * S::VS + 2 * kp);
            col[0] = pack_bf16(a.x, b.x);
            col[S::VS / 2] = pack_bf16(a.y, b.y);
            col[S::VS] = pack_bf16(a.z, b.z);
            col[3 * S::VS / 2] = pack_bf16(a.w, b.w);
        }
        __syncthreads();
        if (!warp_live || kt > warp_hi || kt + S::BN - 1 < warp_lo) {
            continue;  // no key of this tile is visible to the warp's items
        }

        // S = Q·Kᵀ (already in log2 units).
        float sc[S::BN / 8][4];
#pragma unroll
        for (int n = 0; n < S::BN / 8; ++n) {
            sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
        }
        const __nv_bfloat16* qw = qs + (16 * warp + gid) * S::QS + 2 * tig;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            unsigned a[4];
            a[0] = *reinterpret_cast<const unsigned*>(qw + 16 * kk);
            a[1] = *reinterpret_cast<const unsigned*>(qw + 8 * S::QS + 16 * kk);
            a[2] = *reinterpret_cast<const unsigned*>(qw + 16 * kk + 8);
            a[3] = *reinterpret_cast<const unsigned*>(qw + 8 * S::QS + 16 * kk + 8);
#pragma unroll
            for (int n = 0; n < S::BN / 8; ++n) {
                const __nv_bfloat16* kr = ks + (8 * n + gid) * S::QS + 16 * kk + 2 * tig;
                mma_bf16(sc[n], a, *reinterpret_cast<const unsigned*>(kr),
                         *reinterpret_cast<const unsigned*>(kr + 8));
            }
        }

        // Mask and the online softmax; a row's four lanes (same gid) share its max and sum.
        float mtile[2] = {RILL_NEG_INF, RILL_NEG_INF};
#pragma unroll
        for (int n = 0; n < S::BN / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1;
                const int key = kt + 8 * n + 2 * tig + (e & 1);
                if (!valid[r] || key < lo[r] || key > pos[r]) sc[n][e] = RILL_NEG_INF;
                mtile[r] = fmaxf(mtile[r], sc[n][e]);
            }
        }
        float base[2], corr[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mtile[r] = fmaxf(mtile[r], __shfl_xor_sync(0xffffffffu, mtile[r], 1));
            mtile[r] = fmaxf(mtile[r], __shfl_xor_sync(0xffffffffu, mtile[r], 2));
            const float mnew = fmaxf(mrun[r], mtile[r]);
            base[r] = mnew == RILL_NEG_INF ? 0.f : mnew;  // a row that has seen nothing yet
            corr[r] = exp2f(mrun[r] - base[r]);
            mrun[r] = mnew;
            lrun[r] *= corr[r];
        }
#pragma unroll
        for (int n = 0; n < S::BN / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                sc[n][e] = exp2f(sc[n][e] - base[e >> 1]);
                lrun[e >> 1] += sc[n][e];
            }
        }
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            o[n][0] *= corr[0];
            o[n][1] *= corr[0];
            o[n][2] *= corr[1];
            o[n][3] *= corr[1];
        }

        // O += P·V: the S fragments of key columns 16kk..16kk+15 are P's A fragment.
#pragma unroll
        for (int kk = 0; kk < S::BN / 16; ++kk) {
            unsigned a[4];
            a[0] = pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
            a[1] = pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
            a[2] = pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
            a[3] = pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
            for (int n = 0; n < HD / 8; ++n) {
                const __nv_bfloat16* vr = vt + (8 * n + gid) * S::VS + 16 * kk + 2 * tig;
                mma_bf16(o[n], a, *reinterpret_cast<const unsigned*>(vr),
                         *reinterpret_cast<const unsigned*>(vr + 8));
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        lrun[r] += __shfl_xor_sync(0xffffffffu, lrun[r], 1);
        lrun[r] += __shfl_xor_sync(0xffffffffu, lrun[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (!valid[r]) continue;
        const float inv = 1.f / lrun[r];
        float* dst = out + q_offset(m, t, t.item0 + 16 * warp + gid + 8 * r);
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            const int dim = 8 * n + 2 * tig;
            if (dim < d) {
                *reinterpret_cast<float2*>(dst + dim) =
                    make_float2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
            }
        }
    }
}

template <int HD> struct F32Shape {
    static constexpr int WARPS = 4;
    static constexpr int THREADS = WARPS * 32;
    // Three CTAs per SM below HD 256 (at most 170 registers: 128 spills), two at 256.
    static constexpr int MIN_CTAS = HD > 128 ? 2 : 3;
    static constexpr int IPW = 8;  // items per warp
    static constexpr int BM = WARPS * IPW;
    static constexpr int BN = 32;
    static constexpr int KS = HD + 4;  // K row stride, floats
    static constexpr int DPL = (HD + 31) / 32;  // output dims per lane
    static constexpr int SMEM = 4 * (BM * HD + BN * KS + BN * HD + WARPS * IPW * BN);
};

template <int HD>
__device__ __forceinline__ void f32_impl(const Meta& m, const float* __restrict__ q,
                                         const float* __restrict__ k_cache,
                                         const float* __restrict__ v_cache, float scale,
                                         float* __restrict__ out) {
    using S = F32Shape<HD>;
    if (dynamic_smem_bytes() < S::SMEM) {
        __trap();  // the launcher's size formula disagrees with this one: fail loudly
    }
    unsigned char* smem = dynamic_smem();
    float* qs = reinterpret_cast<float*>(smem);
    float* ks = qs + S::BM * HD;
    float* vs = ks + S::BN * S::KS;
    float* ps = vs + S::BN * HD;

    Tile t;
    if (!find_tile(m, S::BM, t)) {
        return;
    }
    const int d = m.head_dim;
    const int n_items = min(S::BM, t.items - t.item0);

    for (int idx = threadIdx.x; idx < S::BM * (HD / 4); idx += S::THREADS) {
        const int i = idx / (HD / 4);
        const int dim = 4 * (idx % (HD / 4));
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i < n_items && dim < d) {
            x = load4(q + q_offset(m, t, t.item0 + i) + dim);
        }
        *reinterpret_cast<float4*>(qs + i * HD + dim) = x;
    }

    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    float* pw = ps + warp * S::IPW * S::BN;
    int pos[S::IPW], lo[S::IPW];
#pragma unroll
    for (int i = 0; i < S::IPW; ++i) {
        const int item = min(S::IPW * warp + i, n_items - 1);
        pos[i] = t.start + (t.item0 + item) / t.group;
        lo[i] = lo_of(m, pos[i]);
        if (S::IPW * warp + i >= n_items) pos[i] = -1;  // sees no key
    }
    const bool warp_live = S::IPW * warp < n_items;
    const int warp_lo = lo[0];
    int warp_hi = pos[0];
#pragma unroll
    for (int i = 1; i < S::IPW; ++i) warp_hi = max(warp_hi, pos[i]);
    const int cta_lo = lo_of(m, t.start + t.item0 / t.group);
    const int cta_hi = t.start + (t.item0 + n_items - 1) / t.group;

    float o[S::IPW][S::DPL];
    float mrun[S::IPW], lrun[S::IPW];
#pragma unroll
    for (int i = 0; i < S::IPW; ++i) {
        mrun[i] = RILL_NEG_INF;
        lrun[i] = 0.f;
#pragma unroll
        for (int k = 0; k < S::DPL; ++k) o[i][k] = 0.f;
    }

    for (int kt = cta_lo; kt <= cta_hi; kt += S::BN) {
        __syncthreads();  // the previous tile's readers are done (and Q is staged)
        for (int idx = threadIdx.x; idx < S::BN * (HD / 4); idx += S::THREADS) {
            const int j = idx / (HD / 4);
            const int dim = 4 * (idx % (HD / 4));
            float4 a = make_float4(0.f, 0.f, 0.f, 0.f), b = a;
            if (kt + j <= cta_hi && dim < d) {
                const long long at = kv_row(m, t, kt + j);
                if (at >= 0) {
                    a = load4(k_cache + at + dim);
                    b = load4(v_cache + at + dim);
                }
            }
            *reinterpret_cast<float4*>(ks + j * S::KS + dim) = a;
            *reinterpret_cast<float4*>(vs + j * HD + dim) = b;
        }
        __syncthreads();
        if (!warp_live || kt > warp_hi || kt + S::BN - 1 < warp_lo) {
            continue;  // no key of this tile is visible to the warp's items
        }

        // Lane j scores key kt + j against the warp's items.
        float sc[S::IPW];
#pragma unroll
        for (int i = 0; i < S::IPW; ++i) sc[i] = 0.f;
        const float* kr = ks + lane * S::KS;
        const float* qw = qs + S::IPW * warp * HD;
#pragma unroll 4
        for (int dim = 0; dim < HD; dim += 4) {
            const float4 k4 = *reinterpret_cast<const float4*>(kr + dim);
#pragma unroll
            for (int i = 0; i < S::IPW; ++i) {
                const float4 q4 = *reinterpret_cast<const float4*>(qw + i * HD + dim);
                sc[i] = fmaf(q4.x, k4.x, sc[i]);
                sc[i] = fmaf(q4.y, k4.y, sc[i]);
                sc[i] = fmaf(q4.z, k4.z, sc[i]);
                sc[i] = fmaf(q4.w, k4.w, sc[i]);
            }
        }
        const int key = kt + lane;
#pragma unroll
        for (int i = 0; i < S::IPW; ++i) {
            const float s = key >= lo[i] && key <= pos[i] ? sc[i] * scale : RILL_NEG_INF;
            float mtile = s;
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) {
                mtile = fmaxf(mtile, __shfl_xor_sync(0xffffffffu, mtile, off));
            }
            const float mnew = fmaxf(mrun[i], mtile);
            const float base = mnew == RILL_NEG_INF ? 0.f : mnew;
            const float corr = expf(mrun[i] - base);
            const float p = expf(s - base);
            mrun[i] = mnew;
            lrun[i] = fmaf(lrun[i], corr, p);  // per lane; summed over the warp at the end
#pragma unroll
            for (int k = 0; k < S::DPL; ++k) o[i][k] *= corr;
            pw[i * S::BN + lane] = p;
        }
        __syncwarp();

        // O += P·V: lane owns dims lane, lane + 32, ...
#pragma unroll 2
        for (int j = 0; j < S::BN; j += 4) {
            float4 p4[S::IPW];
#pragma unroll
            for (int i = 0; i < S::IPW; ++i) {
                p4[i] = *reinterpret_cast<const float4*>(pw + i * S::BN + j);
            }
#pragma unroll
            for (int k = 0; k < S::DPL; ++k) {
                const int dim = lane + 32 * k;
                if (HD >= 32 || dim < HD) {
                    const float v0 = vs[j * HD + dim], v1 = vs[(j + 1) * HD + dim];
                    const float v2 = vs[(j + 2) * HD + dim], v3 = vs[(j + 3) * HD + dim];
#pragma unroll
                    for (int i = 0; i < S::IPW; ++i) {
                        o[i][k] = fmaf(p4[i].x, v0, o[i][k]);
                        o[i][k] = fmaf(p4[i].y, v1, o[i][k]);
                        o[i][k] = fmaf(p4[i].z, v2, o[i][k]);
                        o[i][k] = fmaf(p4[i].w, v3, o[i][k]);
                    }
                }
            }
        }
        __syncwarp();  // P is read before the next tile overwrites it
    }

#pragma unroll
    for (int i = 0; i < S::IPW; ++i) {
        float l = lrun[i];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            l += __shfl_xor_sync(0xffffffffu, l, off);
        }
        if (S::IPW * warp + i >= n_items) continue;
        float* dst = out + q_offset(m, t, t.item0 + S::IPW * warp + i);
#pragma unroll
        for (int k = 0; k < S::DPL; ++k) {
            const int dim = lane + 32 * k;
            if (dim < d) dst[dim] = o[i][k] / l;
        }
    }
}

}  // namespace prefill

// Arguments: q, k_cache, v_cache, the metadata, scale, out. Dynamic shared memory:
// Bf16Shape<HD>::SMEM / F32Shape<HD>::SMEM bytes (the launcher mirrors the formulas).
#define RILL_PREFILL_ENTRY(PATH, HD, SHAPE, IMPL)                                            \
    extern "C" __global__ void __launch_bounds__(prefill::SHAPE<HD>::THREADS, prefill::SHAPE<HD>::MIN_CTAS)              \
        attention_prefill_##PATH##_d##HD(                                                     \
            const float* __restrict__ q, const float* __restrict__ k_cache,                   \
            const float* __restrict__ v_cache, RILL_ATTN_META_PARAMS, float scale,            \
            float* __restrict__ out) {                                                        \
        prefill::IMPL<HD>(RILL_ATTN_META, q, k_cache, v_cache, scale, out);                   \
    }
RILL_PREFILL_ENTRY(bf16, 16, Bf16Shape, bf16_impl)
RILL_PREFILL_ENTRY(bf16, 32, Bf16Shape, bf16_impl)
RILL_PREFILL_ENTRY(bf16, 64, Bf16Shape, bf16_impl)
RILL_PREFILL_ENTRY(bf16, 128, Bf16Shape, bf16_impl)
RILL_PREFILL_ENTRY(bf16, 256, Bf16Shape, bf16_impl)
RILL_PREFILL_ENTRY(f32, 16, F32Shape, f32_impl)
RILL_PREFILL_ENTRY(f32, 32, F32Shape, f32_impl)
RILL_PREFILL_ENTRY(f32, 64, F32Shape, f32_impl)
RILL_PREFILL_ENTRY(f32, 128, F32Shape, f32_impl)
RILL_PREFILL_ENTRY(f32, 256, F32Shape, f32_impl)
