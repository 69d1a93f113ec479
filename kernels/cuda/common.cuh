// common.cuh — shared helpers for every Rill kernel source (compiled by NVRTC, embedded in
// the rill-kernels crate and handed to NVRTC as an in-memory header named "common.cuh").
//
// Conventions every kernel follows:
// - Activations are row-major f32; weights keep their checkpoint dtype (f32, bf16, f16) and
//   are widened to f32 on load with `to_f32`; all arithmetic and accumulation is f32.
// - Kernels templated over the weight dtype are instantiated as `extern "C"` entry points
//   with a `_f32` / `_bf16` / `_f16` suffix (RILL_FOR_EACH_DTYPE below), so the host looks them
//   up by a plain, unmangled name.
// - Sizes that fit in 32 bits (rows, cols, heads) are `int`; element offsets into whole
//   buffers are `size_t`, since rows * cols can pass 2^31 for a large prefill.
// - Element-count kernels use grid-stride loops, so the host may cap the grid.
// - Block reductions are warp shuffles plus one shared-memory slot per warp (block_sum):
//   two shuffle rounds instead of log2(blockDim) shared-memory rounds with barriers.
// No host headers: NVRTC has none, and everything needed is a CUDA built-in.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

// A KV-cache slot meaning "no cache write for this row" (padding rows in a CUDA graph).
#define RILL_NO_SLOT 0xffffffffu

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

// Sum over the 32 lanes of a warp; every lane gets the total.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Sum over the whole block; every thread gets the total. blockDim.x must be a multiple of
// 32 (at most 1024). Contains barriers: call it from every thread of the block.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = warp_sum(v);
    // The barrier first: a previous call's readers must be done with `partial`.
    __syncthreads();
    if (lane == 0) {
        partial[warp] = v;
    }
    __syncthreads();
    v = lane < warps ? partial[lane] : 0.0f;
    return warp_sum(v);
}

// Index of this thread in a 1-D grid, and the grid's stride, as size_t for grid-stride loops.
__device__ __forceinline__ size_t global_index() {
    return (size_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ size_t grid_stride() { return (size_t)gridDim.x * blockDim.x; }

// Inline PTX and dynamic shared memory --------------------------------------------------------
// Kernels reach both only through these helpers. The host emulator (kernels/emu) compiles the
// sources as C++ with RILL_EMULATE defined and supplies its own versions of exactly these.
#ifndef RILL_EMULATE
// Two f32 to a bf16x2 word, lo in the low half (cvt packs its first operand high).
// Before sm_80 (no bf16 cvt or mma) the bf16 path traps; the launcher never picks it there.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    unsigned r = 0;
#if __CUDA_ARCH__ >= 800
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#else
    __trap();
#endif
    return r;
}

// D += A·B for one m16n8k16 tile, bf16 inputs, f32 accumulate.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1) {
#if __CUDA_ARCH__ < 800
    __trap();
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// The launch's dynamic shared memory (16-byte aligned), and its size in bytes.
__device__ __forceinline__ unsigned char* dynamic_smem() {
    extern __shared__ __align__(16) unsigned char rill_dynamic_smem[];
    return rill_dynamic_smem;
}
__device__ __forceinline__ unsigned dynamic_smem_bytes() {
    unsigned r;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
    return r;
}
#endif

// Calls X(suffix, type) once per weight dtype; a source defines X to declare one
// `extern "C"` entry point forwarding to its template, then writes RILL_FOR_EACH_DTYPE(X).
#define RILL_FOR_EACH_DTYPE(X) X(f32, float) X(bf16, __nv_bfloat16) X(f16, __half)

// Paged attention (attention_decode.cu, attention_prefill.cu) --------------------------------

// Positions per KV-cache block: given by the compiler options (rill_proto::BLOCK_SIZE,
// through kernels/src/compile.rs for NVRTC and kernels/emu/build.rs for the emulator).
#ifndef RILL_BLOCK_SIZE
#error "RILL_BLOCK_SIZE must be defined by the compiler options"
#endif
// NVRTC has no <math.h>, so no INFINITY.
#define RILL_NEG_INF __int_as_float(0xff800000)

// The sequence metadata every attention kernel takes, gathered from the kernel arguments
// (passed one by one so the host's launch builder tracks each buffer).
struct AttnMeta {
    const unsigned* seq_row;
    const unsigned* seq_len;
    const unsigned* seq_start_pos;
    const unsigned* seq_block_off;
    const unsigned* block_tables;
    unsigned block_tables_len;
    unsigned num_blocks;
    int num_seqs;
    int rows;
    int heads;
    int kv_heads;
    int head_dim;
    int window;  // 0: no sliding window
};

// The metadata parameters, in the order the host pushes them, and the AttnMeta built from them.
#define RILL_ATTN_META_PARAMS                                                                 \
    const unsigned *__restrict__ seq_row, const unsigned *__restrict__ seq_len,              \
        const unsigned *__restrict__ seq_start_pos, const unsigned *__restrict__ seq_block_off, \
        const unsigned *__restrict__ block_tables, unsigned block_tables_len,                 \
        unsigned num_blocks, int num_seqs, int rows, int heads, int kv_heads, int head_dim,   \
        int window
#define RILL_ATTN_META                                                                        \
    AttnMeta {                                                                                \
        seq_row, seq_len, seq_start_pos, seq_block_off, block_tables, block_tables_len,       \
            num_blocks, num_seqs, rows, heads, kv_heads, head_dim, window                     \
    }
