// cuda_fp16.h for the host emulator (kernels/emu): the f16 type and the conversions the
// kernel sources use, bit-exact with the GPU's (round to nearest even through the subnormal
// range, overflow to infinity, canonical NaN 0x7fff as cvt.rn.f16.f32 gives).
#pragma once

#include "../emu.h"

struct __half {
    unsigned short bits;
};

inline __half __float2half_rn(float f) {
    const uint32_t u = rill_emu::bits_as<uint32_t>(f);
    const unsigned short sign = (unsigned short)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return {0x7fff};
    }
    if (a >= 0x477ff000u) {  // 65520 and above round to infinity
        return {(unsigned short)(sign | 0x7c00u)};
    }
    const int e = (int)(a >> 23) - 127;
    // Normal halves keep 10 of the 23 mantissa bits; subnormals (e < -14) fewer, down to
    // none below 2^-25. Shift the significand (with its implicit bit) to 10 + e + 14 bits.
    const uint32_t sig = e >= -14 ? (a & 0x7fffffu) : ((a & 0x7fffffu) | 0x800000u);
    const int shift = e >= -14 ? 13 : (e < -25 ? 25 : -e - 1);
    uint32_t h = e >= -14 ? ((uint32_t)(e + 15) << 10) | (sig >> 13) : sig >> shift;
    const uint32_t rest = sig & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1u))) {
        ++h;  // a carry into the exponent is the right result
    }
    return {(unsigned short)(sign | h)};
}
inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16;
    const uint32_t e = (h.bits >> 10) & 0x1fu, m = h.bits & 0x3ffu;
    if (e == 0x1f) {
        return rill_emu::bits_as<float>(sign | 0x7f800000u | (m << 13));
    }
    if (e == 0) {  // zero or subnormal: m * 2^-24, exact in f32
        const float v = (float)m * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return rill_emu::bits_as<float>(sign | ((e + 112) << 23) | (m << 13));
}
