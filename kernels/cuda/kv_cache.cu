// kv_cache.cu — write each row's K and V into the paged cache at its slot.
//
// write_kv: k and v are [rows, width] f32 with width = kv_heads * head_dim; the caches are
// [num_blocks, 16, kv_heads, head_dim] f32 (NHD), i.e. [num_slots, width] with
// slot = block * 16 + offset. Row r goes to slot slots[r]; RILL_NO_SLOT (u32::MAX, padding
// rows of a CUDA graph bucket) and any slot >= num_slots are skipped, never written.
//
// Design (vLLM's reshape_and_cache): one block per row (grid = rows), threads striding over
// the row's width (blockDim = width rounded up to 32, at most 256), copying K and V in the
// same loop; the slot is read once per block. A pure copy, so the cache holds exactly the
// keys the CPU device would.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    write_kv(float* __restrict__ k_cache, float* __restrict__ v_cache,
             const float* __restrict__ k, const float* __restrict__ v,
             const unsigned* __restrict__ slots, int width, unsigned num_slots) {
    const unsigned slot = slots[blockIdx.x];
    if (slot == RILL_NO_SLOT || slot >= num_slots) {
        return;
    }
    const size_t src = (size_t)blockIdx.x * width;
    const size_t dst = (size_t)slot * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        k_cache[dst + c] = k[src + c];
        v_cache[dst + c] = v[src + c];
    }
}
