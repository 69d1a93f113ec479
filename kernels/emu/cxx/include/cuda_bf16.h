// cuda_bf16.h for the host emulator (kernels/emu): the bf16 type and the conversions the
// kernel sources use, bit-exact with the GPU's (round to nearest even, canonical NaN).
#pragma once

#include "../emu.h"

struct __nv_bfloat16 {
    unsigned short bits;
};

inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {rill_emu::f32_to_bf16_bits(f)}; }
inline float __bfloat162float(__nv_bfloat16 h) {
    return rill_emu::bits_as<float>((uint32_t)h.bits << 16);
}
