// selftest.cu — kernels for the emulator's own tests (tests/emulator.rs), compiled only
// there: correct uses of the warp primitives whose results the tests know, and deliberately
// broken kernels that must fail the way a GPU (or compute-sanitizer) would make them fail.
#include "../../cuda/common.cuh"

// out[i] = the sum of threadIdx.x over thread i's warp (common.cuh's warp_sum). Launched
// with a partial last warp, the full-mask shuffle names lanes that do not exist.
extern "C" __global__ void emu_warp_sum(float* out) {
    out[threadIdx.x] = warp_sum((float)threadIdx.x);
}

// Every shuffle mode and a ballot, on lane numbers, for the test to compare with CUDA's
// documented results: out[5 * lane + k].
extern "C" __global__ void emu_shuffles(int* out) {
    const int lane = threadIdx.x;
    out[5 * lane] = __shfl_sync(0xffffffffu, lane, 7, 16);
    out[5 * lane + 1] = __shfl_up_sync(0xffffffffu, lane, 3, 16);
    out[5 * lane + 2] = __shfl_down_sync(0xffffffffu, lane, 5, 8);
    out[5 * lane + 3] = __shfl_xor_sync(0xffffffffu, lane, 9);
    out[5 * lane + 4] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
}

// Half of each warp returns, the rest shuffle with a full mask.
extern "C" __global__ void emu_shuffle_after_exit(float* out) {
    if (threadIdx.x % 32 >= 16) {
        return;
    }
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// The first warp and the others wait at different barriers.
extern "C" __global__ void emu_divergent_barrier() {
    if (threadIdx.x < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
}

// Lanes 0, 1 and 2 each wait for a pair that waits for another: nobody can go on.
extern "C" __global__ void emu_cyclic_syncwarp() {
    const unsigned masks[3] = {0x3u, 0x6u, 0x5u};
    if (threadIdx.x < 3) {
        __syncwarp(masks[threadIdx.x]);
    }
}

extern "C" __global__ void emu_trap(int thread) {
    if ((int)threadIdx.x == thread) {
        __trap();
    }
}

// Thread i writes slot i of shared memory and, with no barrier, reads slot i + 1.
extern "C" __global__ void emu_missing_barrier(float* out) {
    float* slots = reinterpret_cast<float*>(dynamic_smem());
    slots[threadIdx.x] = 1.0f;
    out[threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

// Reads one element past `in` (n elements).
extern "C" __global__ void emu_read_past(const float* in, float* out, int n) {
    out[threadIdx.x] = in[n - 1 + threadIdx.x];
}

// Spins until *flag changes, which nothing does.
extern "C" __global__ void emu_spin(const int* flag) {
    while (*(const volatile int*)flag == 0) {
    }
}
