// emu.h — the CUDA language for the host: everything the kernel sources in kernels/cuda use
// from CUDA (qualifiers, built-in variables, vector types, math and bit intrinsics, barriers,
// warp collectives), so that g++ compiles those sources unchanged. build.rs force-includes
// this file (-include) into every kernel translation unit and defines RILL_EMULATE, which
// swaps common.cuh's inline-PTX helpers for the versions at the end of this file.
//
// How the code runs (scheduler.cc): every CUDA thread of a CTA is a fiber on one host thread;
// a fiber runs until it reaches a barrier or a warp collective, where it waits until every
// thread the operation names has arrived. The model and its limits are described in
// kernels/emu/src/lib.rs.
//
// Only what the sources use is here; a source using more fails to compile, and the missing
// piece belongs in this file (or in cuda_bf16.h / cuda_fp16.h).
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

// Qualifiers. A block-scope thread_local is static: one instance per host thread, and a host
// thread runs one CTA at a time, so `__shared__` arrays are per CTA. Like an SM's shared
// memory, they keep what the previous CTA on that thread left (zeros at first).
#ifdef RILL_EMU_SCAN  // build.rs's preprocessor pass, which finds the entry points by these
#define __global__ rill_emu_kernel
#define __launch_bounds__(...) rill_emu_bounds(__VA_ARGS__)
#else
#define __global__
#define __launch_bounds__(...)
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ thread_local

namespace rill_emu {

struct uint3 {
    unsigned x, y, z;
};

// The running CUDA thread's indices and its launch's shape; the scheduler sets them on
// every switch.
inline thread_local uint3 thread_idx, block_idx, block_dim, grid_dim;

// shfl.sync's modes (PTX ISA): which lane each lane reads.
enum class ShflMode { Idx, Up, Down, Bfly };

// Warp collectives and the CTA barrier (scheduler.cc). `file` and `line` are the call site,
// for error messages; every one of them fails the launch (and never returns) on misuse.
uint64_t shfl(ShflMode mode, unsigned mask, uint64_t value, int b, int width, const char* file,
              int line);
unsigned ballot(unsigned mask, bool pred, const char* file, int line);
void sync_warp(unsigned mask, const char* file, int line);
void sync_threads(const char* file, int line);
[[noreturn]] void trap(const char* file, int line);
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 over the warp's fragments (mma.cc).
void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1,
                       const char* file, int line);
// This CTA's dynamic shared memory and its size in bytes.
unsigned char* dynamic_smem();
unsigned dynamic_smem_bytes();

template <typename To, typename From> inline To bits_as(From from) {
    static_assert(sizeof(To) == sizeof(From) && std::is_trivially_copyable_v<From>);
    To to;
    memcpy(&to, &from, sizeof to);
    return to;
}

// f32 to bf16 bits, rounding to nearest even; NaN becomes the canonical 0x7fff (cvt.rn.bf16).
inline unsigned short f32_to_bf16_bits(float f) {
    const uint32_t u = bits_as<uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return 0x7fff;
    }
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

template <typename T> inline T shfl_as(ShflMode mode, unsigned mask, T v, int b, int width,
                                       const char* file, int line) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = shfl(mode, mask, bits, b, width, file, line);
    memcpy(&v, &bits, sizeof v);
    return v;
}

}  // namespace rill_emu

// Built-in variables: read-only views of the running thread's values.
#define threadIdx (static_cast<const ::rill_emu::uint3&>(::rill_emu::thread_idx))
#define blockIdx (static_cast<const ::rill_emu::uint3&>(::rill_emu::block_idx))
#define blockDim (static_cast<const ::rill_emu::uint3&>(::rill_emu::block_dim))
#define gridDim (static_cast<const ::rill_emu::uint3&>(::rill_emu::grid_dim))

// Default arguments evaluated at each call site: where a collective was called from.
#define RILL_EMU_SITE const char *file = __builtin_FILE(), int line = __builtin_LINE()

inline void __syncthreads(RILL_EMU_SITE) { rill_emu::sync_threads(file, line); }
inline void __syncwarp(unsigned mask = 0xffffffffu, RILL_EMU_SITE) {
    rill_emu::sync_warp(mask, file, line);
}
template <typename T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32,
                                           RILL_EMU_SITE) {
    return rill_emu::shfl_as(rill_emu::ShflMode::Idx, mask, v, src, width, file, line);
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                                              RILL_EMU_SITE) {
    return rill_emu::shfl_as(rill_emu::ShflMode::Up, mask, v, (int)delta, width, file, line);
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta,
                                                int width = 32, RILL_EMU_SITE) {
    return rill_emu::shfl_as(rill_emu::ShflMode::Down, mask, v, (int)delta, width, file, line);
}
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                                               RILL_EMU_SITE) {
    return rill_emu::shfl_as(rill_emu::ShflMode::Bfly, mask, v, lane_mask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, RILL_EMU_SITE) {
    return rill_emu::ballot(mask, pred != 0, file, line);
}
[[noreturn]] inline void __trap(RILL_EMU_SITE) { rill_emu::trap(file, line); }

// Vector types.
struct __align__(16) float4 {
    float x, y, z, w;
};
struct __align__(8) float2 {
    float x, y;
};
struct __align__(8) uint2 {
    unsigned x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

// Integer min/max, as CUDA overloads them (mixed signedness compares as unsigned).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

// Bit reinterpretation and integer intrinsics.
inline float __int_as_float(int x) { return rill_emu::bits_as<float>(x); }
inline float __uint_as_float(unsigned x) { return rill_emu::bits_as<float>(x); }
inline unsigned __float_as_uint(float x) { return rill_emu::bits_as<unsigned>(x); }
inline int __float_as_int(float x) { return rill_emu::bits_as<int>(x); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
inline int __ffs(int x) { return __builtin_ffs(x); }

// Rounded f32 arithmetic: the build disables FMA contraction (-ffp-contract=off), so each is
// one IEEE operation, as on the GPU. The fast-math intrinsics are computed accurately (the
// GPU's approximations differ in the last bits).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }

// common.cuh's inline-PTX helpers (compiled only without RILL_EMULATE), emulated.
inline unsigned pack_bf16(float lo, float hi) {
    return rill_emu::f32_to_bf16_bits(lo) | (unsigned)rill_emu::f32_to_bf16_bits(hi) << 16;
}
inline unsigned dynamic_smem_bytes() { return rill_emu::dynamic_smem_bytes(); }
inline unsigned char* dynamic_smem() { return rill_emu::dynamic_smem(); }
inline void mma_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1,
                     RILL_EMU_SITE) {
    rill_emu::mma_m16n8k16_bf16(d, a, b0, b1, file, line);
}
