// activation.cu — SiLU-and-mul, the gated MLP's activation over the fused gate/up projection.
//
// silu_mul: gate_up is [rows, 2 * cols] = [gate | up] column halves; out is [rows, cols]:
//   out[r][c] = g / (1 + exp(-g)) * u   with g = gate_up[r][c], u = gate_up[r][cols + c]
//
// Design: a flat grid-stride loop over the rows * cols outputs (256 threads per block, the
// host caps the grid), so consecutive threads read consecutive gate and up elements and
// write consecutive outputs: three coalesced streams, no shared memory. The formula is the
// CPU device's, with an IEEE divide and the accurate expf (no fast math).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    silu_mul(const float* __restrict__ gate_up, float* __restrict__ out, int cols, size_t n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        const size_t r = i / cols;
        const size_t c = i - r * cols;
        const float* row = gate_up + r * 2 * cols;
        const float g = row[c];
        const float u = row[cols + c];
        out[i] = g / (1.0f + expf(-g)) * u;
    }
}
