// sampling.cu — token choice on the GPU: the CPU sampler's semantics (backend/src/sampler) for a
// batch of logits rows that never leave the device.
//
// One CTA per row, SAMPLE_THREADS threads striding over the vocabulary. The row is
// copied into a scratch row and processed there in TGI's order: watermark →
// repetition penalty → frequency penalty (TGI's count/len) → OpenAI presence/count
// penalties → grammar mask → temperature → top-k → top-p → typical-p → choice.
// Penalties read a per-row list of (token, count in prompt+output, count in output)
// instead of a vocabulary-sized count array.
//
// The semantics are the host sampler's, one contract (backend/src/sampling.rs) on both
// sides: ties at every cut-off stay, the draw walks the kept tokens in token-id order to
// the first whose running mass exceeds u × total, with u = `draw_uniform(seed, position)`
// (splitmix64, the host's `uniform`, bit for bit), and every weight e^(x - max) is
// `exp_neg`, the host's polynomial with the same roundings. Only the order of the sums
// differs, so a cut or a draw within rounding of a boundary may go the other way.
//
// Nothing is sorted. Each filter finds its cut-off by bisection on a threshold,
// counting or summing over the row once per step (32 steps over the bits of an
// order-preserving integer image of the float): top-k keeps every token scoring at
// least the k-th; top-p keeps the tokens whose logit is at least the largest threshold
// that still leaves mass ≥ p; typical keeps the tokens whose surprisal is within the
// smallest radius of the entropy that holds the mass. The chosen token's logprob and
// the top-n alternatives are those of the processed distribution (what TGI reports).

#include "common.cuh"

#define SAMPLE_THREADS 512
#define S_INF __int_as_float(0x7f800000)
#define S_NAN __int_as_float(0x7fffffff)

__device__ __forceinline__ float s_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

struct SampleParams {
    float temperature;    // 1 = off
    float top_p;          // 1 = off
    float typical_p;      // 1 = off
    float rep_penalty;    // 1 = off
    float freq_penalty;   // TGI: count / len * penalty over prompt + output; 0 = off
    float presence;       // OpenAI, output tokens; 0 = off
    float count_penalty;  // OpenAI, output tokens; 0 = off
    unsigned top_k;       // 0 = off
    unsigned long long seed;
    unsigned long long position;  // of the token being chosen (the RNG counter)
    unsigned flags;       // SAMPLE_DO_SAMPLE | SAMPLE_WATERMARK
    unsigned watermark_key;
    unsigned counts_off;  // this row's entries in the penalty lists
    unsigned counts_len;
    unsigned seq_len;     // tokens so far (TGI's frequency penalty divides by it)
    unsigned mask_off;    // first word of this row's grammar mask; NO_MASK = none
    unsigned top_n;       // alternatives to report (≤ max_top_n)
    unsigned row;         // the logits row this CTA reads
};

#define SAMPLE_DO_SAMPLE 1u
#define SAMPLE_WATERMARK 2u
#define NO_MASK 0xffffffffu

// Kirchenbauer's watermark as backend/src/sampler/watermark.rs computes it.
__device__ __forceinline__ bool is_green(unsigned key, unsigned token) {
    unsigned x = token * 0x9e3779b9u ^ key;
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x < 0x80000000u;  // γ = 0.5
}

// splitmix64's finaliser.
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// The host's `sampling::uniform`: the top 53 bits of splitmix64(seed ^ splitmix64(pos)).
__device__ __forceinline__ double draw_uniform(unsigned long long seed, unsigned long long pos) {
    return (double)(mix64(seed ^ mix64(pos)) >> 11) * (1.0 / 9007199254740992.0);
}

// The host's `sampling::exp_neg`, operation for operation: e^x for x ≤ 0 as 2^(x log₂e),
// the integer part into the exponent, the fraction by a degree-6 polynomial (fmaf), the
// rounding by the 1.5·2²³ trick. `__f*_rn` are never contracted into FMAs.
__device__ __forceinline__ float exp_neg(float x) {
    const float MAGIC = 12582912.0f;
    const float y = __fmul_rn(x, 1.44269504088896341f);
    const float yc = y < -126.0f ? -126.0f : y;
    const float t = __fadd_rn(yc, MAGIC);
    const float n = __fsub_rn(t, MAGIC);
    const float f = __fsub_rn(yc, n);
    float p = 1.540353e-4f;
    p = fmaf(p, f, 1.3333558e-3f);
    p = fmaf(p, f, 9.618129e-3f);
    p = fmaf(p, f, 5.550411e-2f);
    p = fmaf(p, f, 2.402265e-1f);
    p = fmaf(p, f, 6.931472e-1f);
    p = fmaf(p, f, 1.0f);
    const float scale = __int_as_float((__float_as_int(t) - __float_as_int(MAGIC) + 127) << 23);
    return y < -126.0f ? 0.0f : __fmul_rn(p, scale);
}

// An integer whose order is the float's (NaN excluded by the callers).
__device__ __forceinline__ unsigned ordered(float f) {
    unsigned b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float unordered(unsigned u) {
    return __uint_as_float((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u);
}

// Block-wide reductions over SAMPLE_THREADS threads (the result in every thread);
// sums use common.cuh's block_sum.
__device__ float block_max(float v, float* scratch) {
    v = s_warp_max(v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < SAMPLE_THREADS / 32 ? scratch[lane] : -S_INF;
    return s_warp_max(v);
}

// The first index holding `m` (argmax), or the smallest index of a kept token.
__device__ unsigned block_min_index(unsigned v, unsigned* scratch) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < SAMPLE_THREADS / 32 ? scratch[lane] : 0xffffffffu;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Largest threshold t (as an ordered integer) whose upper set {x ≥ t} still measures
// at least `target`: its token count (`count`: top-k) or its mass Σ e^(x - m) (top-p).
// Counts are summed as floats: exact, since a block sums fewer than 2^24 tokens.
__device__ unsigned largest_threshold(const float* row, int vocab, float m, float target,
                                      bool count) {
    unsigned prefix = 0;
    for (int bit = 31; bit >= 0; --bit) {
        const unsigned cand = prefix | (1u << bit);
        float s = 0.0f;
        for (int t = threadIdx.x; t < vocab; t += SAMPLE_THREADS) {
            const float x = row[t];
            if (x > -S_INF && ordered(x) >= cand) s += count ? 1.0f : exp_neg(x - m);
        }
        if (block_sum(s) >= target) prefix = cand;
    }
    return prefix;
}

// Smallest radius r (non-negative float as an ordered integer) with the mass of
// |(x - m) - centre| ≤ r at least `mass`.
__device__ float radius_for_mass(const float* row, int vocab, float m, float centre, float mass) {
    unsigned lo = ordered(0.0f), hi = ordered(S_INF);
    while (lo < hi) {
        const unsigned mid = lo + (hi - lo) / 2;
        const float r = unordered(mid);
        float s = 0.0f;
        for (int t = threadIdx.x; t < vocab; t += SAMPLE_THREADS) {
            const float x = row[t];
            if (x > -S_INF && fabsf((x - m) - centre) <= r) s += exp_neg(x - m);
        }
        if (block_sum(s) >= mass) hi = mid; else lo = mid + 1;
    }
    return unordered(lo);
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_rows(
    const float* __restrict__ logits,   // [logits_rows, vocab]; row r reads params[r].row
    float* __restrict__ work,           // [rows, vocab] scratch
    int vocab,
    const SampleParams* __restrict__ params,
    const unsigned* __restrict__ count_tokens,  // penalty lists: token,
    const unsigned* __restrict__ count_all,     //   its count in prompt + output,
    const unsigned* __restrict__ count_out,     //   its count in the output
    const unsigned* __restrict__ masks,         // grammar masks, one bit per token
    unsigned* __restrict__ out_token,           // [rows]
    float* __restrict__ out_logprob,            // [rows]
    unsigned* __restrict__ out_top,             // [rows, max_top_n] (0xffffffff = none)
    float* __restrict__ out_top_logprob,        // [rows, max_top_n]
    int max_top_n) {
    __shared__ float scratch[SAMPLE_THREADS / 32];
    __shared__ unsigned iscratch[SAMPLE_THREADS / 32];
    const int r = blockIdx.x;
    const SampleParams p = params[r];
    const float* in = logits + (size_t)p.row * vocab;
    float* row = work + (size_t)r * vocab;

    // Watermark, grammar mask and NaN guard in the copy.
    const bool wm = p.flags & SAMPLE_WATERMARK;
    for (int t = threadIdx.x; t < vocab; t += SAMPLE_THREADS) {
        float x = in[t];
        if (x != x) x = -S_INF;  // NaN
        if (wm && is_green(p.watermark_key, t)) x += 2.0f;  // δ
        row[t] = x;
    }
    __syncthreads();
    // Penalties over the row's seen tokens (each listed once).
    for (unsigned i = threadIdx.x; i < p.counts_len; i += SAMPLE_THREADS) {
        const unsigned j = p.counts_off + i;
        const unsigned t = count_tokens[j];
        if (t >= (unsigned)vocab) continue;  // not a token of this row: ignore, never write
        float x = row[t];
        if (p.rep_penalty != 1.0f && count_all[j] > 0)
            x = x < 0.0f ? x * p.rep_penalty : x / p.rep_penalty;
        if (p.freq_penalty != 0.0f)
            x -= (float)count_all[j] * (p.freq_penalty / (float)max(p.seq_len, 1u));
        if (count_out[j] > 0) x -= p.presence + (float)count_out[j] * p.count_penalty;
        row[t] = x;
    }
    __syncthreads();
    for (int t = threadIdx.x; t < vocab; t += SAMPLE_THREADS) {
        float x = row[t];
        if (p.mask_off != NO_MASK && !((masks[p.mask_off + t / 32] >> (t % 32)) & 1u)) x = -S_INF;
        if (p.temperature != 1.0f) x = __fdiv_rn(x, p.temperature);
        // +inf takes all the probability, but stays finite so that x - max is defined.
        row[t] = fminf(x, 3.0e38f);
    }
    __syncthreads();

    float m = -S_INF;
    for (int t = threadIdx.x; t < vocab; t += SAMPLE_THREADS) m = fmaxf(m, row[t]);
    m = block_max(m, scratch);
    if (m == -S_INF) {  // nothing allowed: report it, the host fails the sequence
        if (threadIdx.x == 0) { out_token[r] = 0xffffffffu; out_logprob[r] = S_NAN; }
        return;
    }

    // top-k: keep x ≥ the k-th largest.
    unsigned lo = 0;
    if (p.top_k > 0 && p.top_k < (unsigned)vocab) lo = largest_threshold(row, vocab, m, (float)p.top_k, true);
    // top-p over what top-k kept.
    if (p.top_p < 1.0f) {
        float z = 0.0f;
        for (int t = threadIdx.x; t < vocab; t += SAMPLE_THREADS)
            if (row[t] > -S_INF && ordered(row[t]) >= lo) z += exp_neg(row[t] - m);
        z = block_sum(z);
        const unsigned cut = largest_threshold(row, vocab, m, p.top_p * z, false);
        lo = max(lo, cut);
    }
    // Drop what the thresholds removed, then typical over the rest.
    for (int t = threadIdx.x; t < vocab; t += SAMPLE_THREADS)
        if (row[t] > -S_INF && ordered(row[t]) < lo) row[t] = -S_INF;
    __syncthreads();
    if (p.typical_p < 1.0f) {
        float z = 0.0f, zx = 0.0f;
        for (int t = threadIdx.x; t < vocab; t += SAMPLE_THREADS) {
            const float x = row[t];
            if (x > -S_INF) { const float e = exp_neg(x - m); z += e; zx += e * (x - m); }
        }
        z = block_sum(z);
        zx = block_sum(zx);
        // Tokens whose surprisal equals the entropy sit at x - m = centre.
        const float centre = zx / z;
        const float rad = radius_for_mass(row, vocab, m, centre, p.typical_p * z);
        for (int t = threadIdx.x; t < vocab; t += SAMPLE_THREADS)
            if (row[t] > -S_INF && fabsf((row[t] - m) - centre) > rad) row[t] = -S_INF;
        __syncthreads();
    }

    // The final distribution: its normaliser, argmax, and the draw.
    float z = 0.0f;
    for (int t = threadIdx.x; t < vocab; t += SAMPLE_THREADS)
        if (row[t] > -S_INF) z += exp_neg(row[t] - m);
    z = block_sum(z);
    const float log_z = m + logf(z);
    unsigned choice;
    if (p.flags & SAMPLE_DO_SAMPLE) {
        // Inverse CDF in token order, one SAMPLE_THREADS-wide chunk at a time.
        // u × total in double, as the host, then rounded once: the running sums are floats.
        const float target = (float)(draw_uniform(p.seed, p.position) * (double)z);
        float carried = 0.0f;
        choice = 0xffffffffu;
        unsigned last_kept = 0;
        for (int base = 0; base < vocab && choice == 0xffffffffu; base += SAMPLE_THREADS) {
            const int t = base + threadIdx.x;
            const float e = (t < vocab && row[t] > -S_INF) ? exp_neg(row[t] - m) : 0.0f;
            // Inclusive scan of the chunk: warp scans, then the warps' totals.
            float v = e;
            const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const float n = __shfl_up_sync(0xffffffffu, v, o);
                if (lane >= o) v += n;
            }
            __syncthreads();
            if (lane == 31) scratch[warp] = v;
            __syncthreads();
            float before = 0.0f;
            for (int w = 0; w < warp; ++w) before += scratch[w];
            float chunk = 0.0f;
            for (int w = 0; w < SAMPLE_THREADS / 32; ++w) chunk += scratch[w];
            const float cum = carried + before + v;
            const unsigned hit = (e > 0.0f && cum > target) ? (unsigned)t : 0xffffffffu;
            choice = block_min_index(hit, iscratch);
            const unsigned kept = e > 0.0f ? (unsigned)t : 0u;
            unsigned k = kept;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) k = max(k, __shfl_xor_sync(0xffffffffu, k, o));
            last_kept = max(last_kept, (unsigned)block_max((float)k, scratch));
            carried += chunk;
        }
        if (choice == 0xffffffffu) choice = last_kept;  // rounding at the very end
    } else {
        unsigned first = 0xffffffffu;
        for (int t = threadIdx.x; t < vocab; t += SAMPLE_THREADS)
            if (row[t] == m) { first = (unsigned)t; break; }
        choice = block_min_index(first, iscratch);
    }
    if (threadIdx.x == 0) {
        out_token[r] = choice;
        out_logprob[r] = row[choice] - log_z;
    }

    // Top-n: n rounds of "largest not yet taken" (n is small).
    float taken_bound = S_INF;
    unsigned taken_index = 0;
    for (int i = 0; i < max_top_n; ++i) {
        float best = -S_INF;
        unsigned best_t = 0xffffffffu;
        if (i < (int)p.top_n) {
            for (int t = threadIdx.x; t < vocab; t += SAMPLE_THREADS) {
                const float x = row[t];
                // Strictly after the last taken in (value desc, index asc) order.
                const bool after = x < taken_bound || (x == taken_bound && (unsigned)t > taken_index);
                if (x > -S_INF && after && (x > best || (x == best && (unsigned)t < best_t))) {
                    best = x;
                    best_t = t;
                }
            }
        }
        const float bm = block_max(best, scratch);
        const unsigned bt = block_min_index(best == bm ? best_t : 0xffffffffu, iscratch);
        if (threadIdx.x == 0) {
            const bool ok = i < (int)p.top_n && bm > -S_INF;
            out_top[(size_t)r * max_top_n + i] = ok ? bt : 0xffffffffu;
            out_top_logprob[(size_t)r * max_top_n + i] = ok ? bm - log_z : -S_INF;
        }
        taken_bound = bm;
        taken_index = bt;
    }
}
