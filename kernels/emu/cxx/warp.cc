// warp.cc — the warp collectives other than mma: shuffles, ballot and __syncwarp, with the
// lane arithmetic of the PTX ISA's shfl.sync.
#include <stdio.h>

#include <string>

#include "runtime.h"

namespace rill_emu {
namespace {

// Out of line and cold, so that complete_shfl's frame stays small.
[[noreturn]] __attribute__((noinline, cold)) void read_outside(int lane, int source,
                                                                 unsigned mask) {
    char text[96];
    snprintf(text, sizeof text, "shuffle: lane %d reads lane %d, which mask 0x%08x leaves out",
             lane, source, mask);
    fail(text, "", 0);
}

// shfl.sync: lane i reads lane j, computed from its own b and segment width; a j outside
// its segment (or past the warp) reads its own value. Reading a lane the mask leaves out is
// undefined on the GPU, so an error here.
template <ShflMode M> void complete_shfl(LaneIo* const lanes[32], unsigned mask) {
    for (int i = 0; i < 32; ++i) {
        if (!(mask >> i & 1)) {
            continue;
        }
        const LaneIo& me = *lanes[i];
        const long long b = (unsigned)me.b;  // a .b32 operand
        const int seg = 32 - me.width;        // c[12:8], the segment mask
        const int clamp = M == ShflMode::Up ? 0 : 31;
        const long long min_lane = i & seg, max_lane = min_lane | (clamp & ~seg);
        long long j = i;
        switch (M) {
            case ShflMode::Idx:
                j = min_lane | (b & 31 & ~seg);
                break;
            case ShflMode::Up:
                j = i - b;
                break;
            case ShflMode::Down:
                j = i + b;
                break;
            case ShflMode::Bfly:
                j = i ^ b;
                break;
        }
        if (M == ShflMode::Up ? j < max_lane : j > max_lane) {
            j = i;  // outside the segment: the lane's own value
        }
        if (!(mask >> j & 1)) {
            read_outside(i, (int)j, mask);
        }
        lanes[i]->out[0] = lanes[j]->in[0];  // `in` is never written here
        lanes[i]->out[1] = lanes[j]->in[1];
    }
}

void complete_ballot(LaneIo* const lanes[32], unsigned mask) {
    unsigned bits = 0;
    for (int i = 0; i < 32; ++i) {
        if (mask >> i & 1 && lanes[i]->in[0]) {
            bits |= 1u << i;
        }
    }
    for (int i = 0; i < 32; ++i) {
        if (mask >> i & 1) {
            lanes[i]->out[0] = bits;
        }
    }
}

void complete_nothing(LaneIo* const[32], unsigned) {}

const WarpOp kShfl[] = {
    {"__shfl_sync", complete_shfl<ShflMode::Idx>},
    {"__shfl_up_sync", complete_shfl<ShflMode::Up>},
    {"__shfl_down_sync", complete_shfl<ShflMode::Down>},
    {"__shfl_xor_sync", complete_shfl<ShflMode::Bfly>},
};
const WarpOp kBallot = {"__ballot_sync", complete_ballot};
const WarpOp kSyncWarp = {"__syncwarp", complete_nothing};

}  // namespace

uint64_t shfl(ShflMode mode, unsigned mask, uint64_t value, int b, int width, const char* file,
              int line) {
    const WarpOp& op = kShfl[(int)mode];
    if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
        fail(std::string(op.name) + " with width " + std::to_string(width) +
                 ", not a power of two in 1..32",
             file, line);
    }
    LaneIo& io = lane_io();
    io.in[0] = (uint32_t)value;
    io.in[1] = (uint32_t)(value >> 32);
    io.b = b;
    io.width = width;
    collective(op, mask, file, line);
    return io.out[0] | (uint64_t)io.out[1] << 32;
}

unsigned ballot(unsigned mask, bool pred, const char* file, int line) {
    LaneIo& io = lane_io();
    io.in[0] = pred;
    collective(kBallot, mask, file, line);
    return io.out[0];
}

void sync_warp(unsigned mask, const char* file, int line) {
    collective(kSyncWarp, mask, file, line);
}

}  // namespace rill_emu
