// rope.cu — rotary position embedding, in place, Hugging Face's half-rotation layout.
//
// rope: for every row r, head h and i < d/2 (d = head_dim), with c = cos[r][i], s = sin[r][i]:
//   x[h][i]       = x[h][i] * c - x[h][i + d/2] * s
//   x[h][i + d/2] = x[h][i + d/2] * c + x[h][i] * s
// cos/sin are per row, [rows, d/2], computed on the host from each row's position (so the
// default and llama3 frequency schemes are the host's business, not the kernel's).
//
// Design: one block per row (grid = rows), threads striding over the row's heads * d/2
// rotation pairs (blockDim = that count rounded up to 32, at most 256), so the pair loads
// (i and i + d/2) are each coalesced across a warp. Products and the sum are rounded
// separately (__fmul_rn/__fadd_rn forbid FMA contraction): the result is then bit-identical
// to the CPU device's, which keeps cached keys identical across devices.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    rope(float* __restrict__ x, const float* __restrict__ cos_table,
         const float* __restrict__ sin_table, int heads, int head_dim) {
    const int half = head_dim / 2;
    const int pairs = heads * half;
    float* xr = x + (size_t)blockIdx.x * heads * head_dim;
    const float* cr = cos_table + (size_t)blockIdx.x * half;
    const float* sr = sin_table + (size_t)blockIdx.x * half;
    for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
        const int h = p / half;
        const int i = p - h * half;
        float* head = xr + h * head_dim;
        const float x0 = head[i];
        const float x1 = head[i + half];
        const float c = cr[i];
        const float s = sr[i];
        head[i] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        head[i + half] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
    }
}
