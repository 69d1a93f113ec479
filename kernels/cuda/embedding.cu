// embedding.cu — token embedding gather: out[r] = table[tokens[r]], widened to f32.
//
// embed_T: table is [vocab, hidden] in the checkpoint dtype T, tokens is [rows] u32, out is
// [rows, hidden] f32. A token id >= vocab (which validation upstream should make impossible)
// gives a zero row instead of reading out of bounds.
//
// Design: one block per row (grid = rows; blockDim = hidden rounded up to 32, at most 256,
// threads striding over hidden), so each row's copy is one coalesced read of the table row
// and one coalesced write; the token id is read once per block. Widening bf16/f16 to f32 is
// exact, so this matches the CPU bit for bit.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void embed_impl(const T* __restrict__ table,
                                           const unsigned* __restrict__ tokens,
                                           float* __restrict__ out, int hidden, unsigned vocab) {
    const unsigned token = tokens[blockIdx.x];
    float* outr = out + (size_t)blockIdx.x * hidden;
    if (token >= vocab) {
        for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
            outr[c] = 0.0f;
        }
        return;
    }
    const T* row = table + (size_t)token * hidden;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        outr[c] = to_f32(row[c]);
    }
}

#define EMBED(SUFFIX, T)                                                                       \
    extern "C" __global__ void __launch_bounds__(256) embed_##SUFFIX(                          \
        const T* table, const unsigned* tokens, float* out, int hidden, unsigned vocab) {      \
        embed_impl<T>(table, tokens, out, hidden, vocab);                                      \
    }
RILL_FOR_EACH_DTYPE(EMBED)
