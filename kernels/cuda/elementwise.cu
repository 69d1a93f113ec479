// elementwise.cu — the small data-movement ops between GEMMs.
//
// add_bias_T:    x[r][c] += bias[c]                  (bias in its checkpoint dtype)
// add_assign:    x[i] += y[i]                         (residual add)
// split_cols:    out[r][c] = x[r][col0 + c]           (one output of a fused q/k/v split)
// gather_rows:   out[i][c] = x[idx[i]][c]             (the LM head's sampled rows; an index
//                                                       >= src_rows gives a zero row)
// cast_f32_bf16 / cast_f32_f16: out[i] = round_to_nearest_even(x[i])  (GEMM inputs)
//
// Design: every op is a flat grid-stride loop over its output elements with 256 threads per
// block and a grid the host caps (a few waves), so consecutive threads touch consecutive
// addresses of every stream; row/column indices come from one division per element, which
// is far cheaper than the memory traffic these ops are bound by. All f32 arithmetic is a
// single rounded add, the CPU device's exact result; casts use the _rn conversions.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void add_bias_impl(float* __restrict__ x, const T* __restrict__ bias,
                                              int cols, size_t n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        x[i] += to_f32(bias[i % cols]);
    }
}

#define ADD_BIAS(SUFFIX, T)                                                                    \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        add_bias_##SUFFIX(float* x, const T* bias, int cols, size_t n) {                       \
        add_bias_impl<T>(x, bias, cols, n);                                                    \
    }
RILL_FOR_EACH_DTYPE(ADD_BIAS)

extern "C" __global__ void __launch_bounds__(256)
    add_assign(float* __restrict__ x, const float* __restrict__ y, size_t n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        x[i] += y[i];
    }
}

extern "C" __global__ void __launch_bounds__(256)
    split_cols(const float* __restrict__ x, float* __restrict__ out, int total_cols, int col0,
               int width, size_t n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        const size_t r = i / width;
        const size_t c = i - r * width;
        out[i] = x[r * total_cols + col0 + c];
    }
}

extern "C" __global__ void __launch_bounds__(256)
    gather_rows(const float* __restrict__ x, const unsigned* __restrict__ idx,
                float* __restrict__ out, int cols, unsigned src_rows, size_t n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        const size_t r = i / cols;
        const size_t c = i - r * cols;
        const unsigned src = idx[r];
        out[i] = src < src_rows ? x[(size_t)src * cols + c] : 0.0f;
    }
}

extern "C" __global__ void __launch_bounds__(256)
    cast_f32_bf16(const float* __restrict__ x, __nv_bfloat16* __restrict__ out, size_t n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        out[i] = __float2bfloat16_rn(x[i]);
    }
}

extern "C" __global__ void __launch_bounds__(256)
    cast_f32_f16(const float* __restrict__ x, __half* __restrict__ out, size_t n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        out[i] = __float2half_rn(x[i]);
    }
}
