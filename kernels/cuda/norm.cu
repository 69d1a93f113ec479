// norm.cu — RMSNorm, and the fused residual add + RMSNorm of a pre-norm transformer layer.
//
// rms_norm_T:      out[r] = x[r] * (1 / sqrt(mean(x[r]^2) + eps)) * w
// add_rms_norm_T:  x[r] += y[r]; out[r] = rms_norm(x[r]) * w   (x is the residual stream)
//
// Design: one block per row (grid = rows), blockDim a multiple of 32 chosen by the host
// (about cols / 4 threads, 32..1024), each thread striding over the row's columns so loads
// are coalesced. The sum of squares is a block_sum (warp shuffles); the second pass re-reads
// the row (from L1/L2) instead of holding it in registers, so any `cols` works with no
// shared-memory sizing. The fused variant writes x + y back in the first pass and every
// thread re-reads only the elements it wrote itself, so no barrier is needed between them.
// Numerics follow Hugging Face (and the CPU device): normalise in f32 with an IEEE divide and
// square root (no fast math), then multiply by the weight widened to f32.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void normalize_row(const float* __restrict__ xr, float sum_sq,
                                             const T* __restrict__ w, float* __restrict__ outr,
                                             int cols, float eps) {
    const float inv = 1.0f / sqrtf(block_sum(sum_sq) / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        outr[c] = to_f32(w[c]) * (xr[c] * inv);
    }
}

template <typename T>
__device__ __forceinline__ void rms_norm_impl(const float* __restrict__ x, const T* __restrict__ w,
                                              float* __restrict__ out, int cols, float eps) {
    const size_t base = (size_t)blockIdx.x * cols;
    const float* xr = x + base;
    float sum_sq = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = xr[c];
        sum_sq += v * v;
    }
    normalize_row(xr, sum_sq, w, out + base, cols, eps);
}

template <typename T>
__device__ __forceinline__ void add_rms_norm_impl(float* __restrict__ x,
                                                  const float* __restrict__ y,
                                                  const T* __restrict__ w,
                                                  float* __restrict__ out, int cols, float eps) {
    const size_t base = (size_t)blockIdx.x * cols;
    float* xr = x + base;
    const float* yr = y + base;
    float sum_sq = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = xr[c] + yr[c];
        xr[c] = v;
        sum_sq += v * v;
    }
    normalize_row(xr, sum_sq, w, out + base, cols, eps);
}

#define RMS_NORM(SUFFIX, T)                                                                    \
    extern "C" __global__ void __launch_bounds__(1024)                                         \
        rms_norm_##SUFFIX(const float* x, const T* w, float* out, int cols, float eps) {       \
        rms_norm_impl<T>(x, w, out, cols, eps);                                                \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(1024) add_rms_norm_##SUFFIX(                  \
        float* x, const float* y, const T* w, float* out, int cols, float eps) {               \
        add_rms_norm_impl<T>(x, y, w, out, cols, eps);                                         \
    }
RILL_FOR_EACH_DTYPE(RMS_NORM)
