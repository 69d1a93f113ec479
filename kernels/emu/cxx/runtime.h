// runtime.h — the emulator's internal interfaces: kernel entries and their argument binding
// (used by the per-source tables build.rs generates), the grid runner, and warp collectives
// (scheduler.cc, used by mma.cc).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <string>
#include <tuple>
#include <utility>

#include "emu.h"

namespace rill_emu {

struct Dim3 {
    unsigned x, y, z;
};

// One kernel argument as the host passes it (cuLaunchKernel style: a pointer to its bytes),
// with its size and kind ('p' pointer, 'i' signed or 'u' unsigned integer, 'f' float) so
// that the binding can check it against the kernel's parameter.
struct Arg {
    const void* data;
    size_t size;
    char kind;
};

struct LaunchSpec {
    const char* kernel;
    Dim3 grid, block;
    size_t smem;          // dynamic shared memory, bytes
    unsigned max_threads;  // __launch_bounds__' first argument (1024 without one)
    uint64_t seed;        // of the scheduling order
};

// Runs every CTA of the launch; each CUDA thread calls body(ctx). "" or the first error.
std::string run_grid(const LaunchSpec& spec, void (*body)(const void*), const void* ctx);

// A kernel entry point: name, launch bound, and `launch`, which binds the arguments to the
// kernel's parameters (checking count, sizes and kinds) and runs the grid.
struct Entry {
    const char* name;
    unsigned max_threads;
    std::string (*launch)(const LaunchSpec& spec, const Arg* args, size_t n);
};

// __launch_bounds__(max_threads[, min_blocks[, max_cluster]]) as a value.
constexpr unsigned launch_bound(unsigned max_threads, unsigned = 0, unsigned = 0) {
    return max_threads;
}

template <typename T> constexpr char kind_of() {
    if constexpr (std::is_pointer_v<T>) {
        return 'p';
    } else if constexpr (std::is_floating_point_v<T>) {
        return 'f';
    } else if constexpr (std::is_integral_v<T>) {
        return std::is_signed_v<T> ? 'i' : 'u';
    } else {
        return 's';
    }
}

template <typename Tuple, size_t... I>
void copy_args(Tuple& values, const Arg* args, std::index_sequence<I...>) {
    (memcpy(&std::get<I>(values), args[I].data, args[I].size), ...);
}

// Entry::launch for the kernel F: binds args to F's parameters, runs F in every thread.
template <auto F, typename... P>
std::string bind_and_run(void (*)(P...), const LaunchSpec& spec, const Arg* args, size_t n) {
    constexpr size_t count = sizeof...(P);
    if (n != count) {
        return std::string(spec.kernel) + " takes " + std::to_string(count) +
               " arguments, the launch passed " + std::to_string(n);
    }
    constexpr size_t sizes[] = {sizeof(P)..., 0};
    constexpr char kinds[] = {kind_of<P>()..., 0};
    for (size_t i = 0; i < count; ++i) {
        if (args[i].size != sizes[i] || args[i].kind != kinds[i]) {
            return std::string(spec.kernel) + " argument " + std::to_string(i) + " is " +
                   kinds[i] + std::to_string(8 * sizes[i]) + ", the launch passed " +
                   args[i].kind + std::to_string(8 * args[i].size);
        }
    }
    std::tuple<P...> values;
    copy_args(values, args, std::index_sequence_for<P...>{});
    return run_grid(
        spec, [](const void* ctx) { std::apply(F, *static_cast<const std::tuple<P...>*>(ctx)); },
        &values);
}
template <auto F> std::string launch_entry(const LaunchSpec& spec, const Arg* args, size_t n) {
    return bind_and_run<F>(F, spec, args, n);
}

// A lane's operands and results in a warp collective.
struct LaneIo {
    uint32_t in[10];
    uint32_t out[4];
    int b, width;  // shuffles: source lane / delta / lane mask, and segment width
};

// A warp collective: `complete` runs once, on the last arrival, over the 32 lanes' LaneIo
// (those outside `mask` are not to be touched).
struct WarpOp {
    const char* name;
    void (*complete)(LaneIo* const lanes[32], unsigned mask);
};

// The running thread's LaneIo: fill `in`, call collective(), read `out`.
LaneIo& lane_io();
// Wait until every lane of `mask` has arrived at `op` with the same mask; fails the launch on
// a lane that is outside the mask or the block, has exited, or waits in another operation.
void collective(const WarpOp& op, unsigned mask, const char* file, int line);
// Fail the launch from inside a CUDA thread (never returns).
[[noreturn]] void fail(const std::string& what, const char* file, int line);

}  // namespace rill_emu
