// mma.cc — mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: D = A·B + C for one warp,
// A 16x16 bf16 (row-major fragments), B 16x8 bf16 (column-major), C and D 16x8 f32, with the
// fragment layouts of the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point
// type"). Lane l holds, with g = l / 4 and t = l % 4 (two bf16 per 32-bit register, the lower
// column or row in the low half):
//   A: a0 = A[g][2t..2t+1],  a1 = A[g+8][2t..2t+1],  a2 = A[g][2t+8..2t+9],  a3 = A[g+8][2t+8..]
//   B: b0 = B[2t..2t+1][g],  b1 = B[2t+8..2t+9][g]
//   C, D: c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1]
// The products of bf16 values are exact in f32; they are accumulated onto C in f32 in k order
// (the tensor cores' internal order and rounding are not modelled bit for bit).
#include "runtime.h"

namespace rill_emu {
namespace {

float bf16_lo(uint32_t word) { return bits_as<float>(word << 16); }
float bf16_hi(uint32_t word) { return bits_as<float>(word & 0xffff0000u); }

void complete_mma(LaneIo* const lanes[32], unsigned) {
    float a[16][16], b[16][8], c[16][8];
    for (int l = 0; l < 32; ++l) {
        const uint32_t* in = lanes[l]->in;
        const int g = l / 4, t = l % 4;
        for (int r = 0; r < 4; ++r) {  // a_r: rows g or g + 8, columns 2t (+ 8)
            const int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
            a[row][col] = bf16_lo(in[r]);
            a[row][col + 1] = bf16_hi(in[r]);
        }
        for (int r = 0; r < 2; ++r) {  // b_r: rows 2t (+ 8), column g
            b[2 * t + 8 * r][g] = bf16_lo(in[4 + r]);
            b[2 * t + 8 * r + 1][g] = bf16_hi(in[4 + r]);
        }
        for (int r = 0; r < 4; ++r) {  // c_r: row g (+ 8), column 2t (+ 1)
            c[g + 8 * (r >> 1)][2 * t + (r & 1)] = bits_as<float>(in[6 + r]);
        }
    }
    for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        for (int r = 0; r < 4; ++r) {
            const int row = g + 8 * (r >> 1), col = 2 * t + (r & 1);
            float acc = c[row][col];
            for (int k = 0; k < 16; ++k) {
                acc = fmaf(a[row][k], b[k][col], acc);
            }
            lanes[l]->out[r] = bits_as<uint32_t>(acc);
        }
    }
}

const WarpOp kMma = {"mma.sync.m16n8k16", complete_mma};

}  // namespace

void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1,
                       const char* file, int line) {
    LaneIo& io = lane_io();
    for (int r = 0; r < 4; ++r) {
        io.in[r] = a[r];
        io.in[6 + r] = bits_as<uint32_t>(d[r]);
    }
    io.in[4] = b0;
    io.in[5] = b1;
    collective(kMma, 0xffffffffu, file, line);
    for (int r = 0; r < 4; ++r) {
        d[r] = bits_as<float>(io.out[r]);
    }
}

}  // namespace rill_emu
