// scheduler.cc — runs a grid: CTAs one after another (in a shuffled order) on the calling host
// thread, the threads of a CTA as fibers (fiber.h) that all exist at once.
//
// A fiber runs until it reaches __syncthreads or a warp collective (shuffle, ballot,
// __syncwarp, mma), records what it waits in, and switches to the next ready fiber; when none
// is ready, control returns to the CTA's run loop, which reports a deadlock if any thread has
// not finished. The barrier releases its threads when every thread of the block has arrived;
// a collective releases its lanes when every lane of its mask has arrived with the same
// operation and mask, and the last one to arrive computes every lane's result.
//
// The next fiber is a random ready lane of the warp that ran last, or, when that warp has none,
// of a random other warp (seeded per launch). So a warp runs as far ahead of the others as it
// can before a barrier, as warps may on a GPU, and lanes interleave in no fixed order: a
// kernel that relies on an order the GPU does not promise (a missing barrier) sees stale or
// poisoned data.
//
// Misuse fails the launch with a message naming the block, thread and source line: a mask
// that leaves out the caller or names lanes that exited or do not exist (a partial warp),
// threads at different __syncthreads, __syncthreads after some threads exited, a lane leaving
// while others wait for it, or a deadlock (no thread can run).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "fiber.h"
#include "runtime.h"
#include "watchdog.h"

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#endif

namespace rill_emu {
namespace {

constexpr size_t kStackBytes = 128 << 10;
constexpr unsigned kMaxThreads = 1024;
constexpr size_t kMaxDynamicSmem = 227 << 10;  // sm_90's opt-in maximum

struct Thread {
    void* sp;  // while switched out
    Stack stack;
    void* fake_stack;  // ASan's, while switched out
    uint3 idx;
    unsigned warp, lane;
    LaneIo io;
};

struct Pending {
    const WarpOp* op;
    unsigned mask, arrived;
    const char* file;
    int line;
};

struct Warp {
    unsigned present = 0, exited = 0;  // lane bitmasks
    Thread* lanes[32] = {};
    Pending pending[32];  // at most one per lane
    int npending = 0;
};

struct Cta {
    const LaunchSpec* spec;
    void (*body)(const void*);
    const void* ctx;
    Thread* threads;
    unsigned nthreads;
    std::vector<Warp> warps;
    std::vector<std::vector<Thread*>> ready;  // per warp
    unsigned last_warp = 0;  // of the thread that ran last
    unsigned at_barrier = 0, exited = 0;
    const char* bar_file = nullptr;
    int bar_line = 0;
    std::string error;
    void* host_sp = nullptr;  // the run loop's context
    void* host_fake = nullptr;
    const void* host_bottom = nullptr;  // the host stack, for ASan
    size_t host_size = 0;
    unsigned char* smem = nullptr;
    uint64_t rng;
    Watch* watch;
};

thread_local Cta* cta;
thread_local Thread* self;
// Threads, with their stacks, kept for the next CTA on this host thread.
struct ThreadPool {
    std::vector<Thread> threads;
    ~ThreadPool() {
        for (const Thread& t : threads) {
            stack_free(t.stack);
        }
    }
};
thread_local ThreadPool pool;

uint64_t next_random(uint64_t& state) {  // splitmix64
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// A random index below n (< 2^32), by multiply-shift rather than a division.
size_t below(uint64_t& state, size_t n) {
    return (size_t)(((next_random(state) >> 32) * (uint64_t)n) >> 32);
}

// Fisher-Yates over [first, first + n) of any random-access container.
template <typename It> void shuffle(It first, size_t n, uint64_t& rng) {
    for (size_t i = n; i > 1; --i) {
        std::swap(first[i - 1], first[below(rng, i)]);
    }
}

const char* base_name(const char* path) {
    const char* slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

std::string hex(unsigned v) {
    char buf[16];
    snprintf(buf, sizeof buf, "0x%08x", v);
    return buf;
}

std::string at(const char* file, int line) {
    return std::string(base_name(file)) + ":" + std::to_string(line);
}

// "3", "0-15", "0-3,8-11": the set bits of a lane mask.
std::string lanes_of(unsigned mask) {
    std::string out;
    for (int i = 0; i < 32; ++i) {
        if (!(mask >> i & 1) || (i > 0 && (mask >> (i - 1) & 1))) {
            continue;
        }
        int j = i;
        while (j < 31 && (mask >> (j + 1) & 1)) {
            ++j;
        }
        out += (out.empty() ? "" : ",") + std::to_string(i);
        out += j > i ? "-" + std::to_string(j) : "";
    }
    return out.empty() ? "none" : out;
}

std::string thread_name(const Thread& t) {
    return "thread (" + std::to_string(t.idx.x) + "," + std::to_string(t.idx.y) + "," +
           std::to_string(t.idx.z) + ")";
}

// Take a random ready lane of the last warp that ran, else of a random other warp; null when
// no thread is ready.
Thread* pick_next() {
    const unsigned warps = (unsigned)cta->ready.size();
    unsigned w = cta->last_warp;
    for (unsigned k = 0; cta->ready[w].empty(); ++k) {
        if (k == warps) {
            return nullptr;
        }
        w = k == 0 ? (unsigned)below(cta->rng, warps) : (w + 1) % warps;
    }
    std::vector<Thread*>& lanes = cta->ready[w];
    std::swap(lanes[below(cta->rng, lanes.size())], lanes.back());
    Thread* t = lanes.back();
    lanes.pop_back();
    cta->last_warp = w;
    return t;
}

// Switch to another context: save this one's stack pointer in *save_sp (and, under ASan, its
// fake stack in *save_fake; null when this context never runs again) and continue the one at
// to_sp, whose stack is [to_bottom, to_bottom + to_size).
void transfer(void** save_sp, void** save_fake, void* to_sp, const void* to_bottom,
              size_t to_size) {
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_start_switch_fiber(save_fake, to_bottom, to_size);
#endif
    rill_emu_switch(save_sp, to_sp);
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_finish_switch_fiber(save_fake ? *save_fake : nullptr, nullptr, nullptr);
#else
    (void)save_fake, (void)to_bottom, (void)to_size;
#endif
}

// Run the next ready thread; with none ready (the CTA is done or deadlocked) or a failure,
// return to the run loop. `for_good`: the calling thread has exited or failed and never runs
// again.
void yield(bool for_good) {
    Thread* t = self;
    Thread* next = cta->error.empty() ? pick_next() : nullptr;
    if (next == t) {
        return;  // released and first in line: go on
    }
#ifdef __SANITIZE_ADDRESS__
    if (for_good) {
        // The frames still on this stack never return to clear their redzones' shadow; the
        // next fiber on the stack must not inherit it. (They all lie above this frame.)
        char* low = static_cast<char*>(__builtin_frame_address(0)) - 4096;
        low = low < t->stack.base ? t->stack.base : low;
        ASAN_UNPOISON_MEMORY_REGION(low, (size_t)(t->stack.base + t->stack.size - low));
    }
#endif
    void** save_fake = for_good ? nullptr : &t->fake_stack;
    cta->watch->tick();
    if (next) {
        self = next;
        thread_idx = next->idx;
        transfer(&t->sp, save_fake, next->sp, next->stack.base, next->stack.size);
    } else {
        transfer(&t->sp, save_fake, cta->host_sp, cta->host_bottom, cta->host_size);
    }
    if (for_good) {
        abort();  // nothing resumes a thread that left for good
    }
}

// Make the waiting threads of `mask` in warp `w` (every thread when w is null) ready.
void release(const Warp* w, unsigned mask) {
    for (unsigned i = 0; i < (w ? 32 : cta->nthreads); ++i) {
        if (!w || (mask >> i & 1)) {
            Thread* t = w ? w->lanes[i] : &cta->threads[i];
            cta->ready[t->warp].push_back(t);
        }
    }
}

void thread_exit() {
    Thread& t = *self;
    Warp& w = cta->warps[t.warp];
    w.exited |= 1u << t.lane;
    ++cta->exited;
    for (int i = 0; i < w.npending; ++i) {
        const Pending& p = w.pending[i];
        if (p.mask >> t.lane & 1) {
            fail("exited while lanes " + lanes_of(p.arrived) + " of its warp wait for it in " +
                     p.op->name + " (mask " + hex(p.mask) + ") at " + at(p.file, p.line),
                 "", 0);
        }
    }
    if (cta->at_barrier > 0) {
        fail("exited while " + std::to_string(cta->at_barrier) + " threads wait at " +
                 "__syncthreads at " + at(cta->bar_file, cta->bar_line),
             "", 0);
    }
    yield(true);
}

void fiber_main(void*) {
#ifdef __SANITIZE_ADDRESS__
    // The first fiber is entered from the run loop: learn the host stack's bounds.
    const void* from_bottom = nullptr;
    size_t from_size = 0;
    __sanitizer_finish_switch_fiber(nullptr, &from_bottom, &from_size);
    if (cta->host_size == 0) {
        cta->host_bottom = from_bottom;
        cta->host_size = from_size;
    }
#endif
    cta->body(cta->ctx);
    thread_exit();
}

std::string deadlock_report() {
    std::string out = "deadlock: no thread can run";
    if (cta->at_barrier > 0) {
        out += "; " + std::to_string(cta->at_barrier) + " threads wait at __syncthreads at " +
               at(cta->bar_file, cta->bar_line);
    }
    for (size_t i = 0; i < cta->warps.size(); ++i) {
        const Warp& w = cta->warps[i];
        for (const Pending* p = w.pending; p < w.pending + w.npending; ++p) {
            out += "; warp " + std::to_string(i) + " lanes " + lanes_of(p->arrived) +
                   " wait in " + p->op->name + " (mask " + hex(p->mask) + ") at " +
                   at(p->file, p->line) + " for lanes " + lanes_of(p->mask & ~p->arrived);
        }
    }
    return out;
}

// Run one CTA with `c`, set up for the launch; its per-CTA state is reset here.
std::string run_cta(Cta& c, uint3 block) {
    cta = &c;
    block_idx = block;
    c.watch->at_block(block.x, block.y, block.z);
    const LaunchSpec& spec = *c.spec;
    const unsigned n = c.nthreads;
    c.warps.assign((n + 31) / 32, Warp{});
    c.ready.resize(c.warps.size());
    for (std::vector<Thread*>& lanes : c.ready) {
        lanes.clear();
    }
    c.at_barrier = c.exited = 0;
    for (unsigned i = 0; i < n; ++i) {
        Thread& t = c.threads[i];
        const unsigned bx = spec.block.x, by = spec.block.y;
        t.idx = {i % bx, i / bx % by, i / (bx * by)};
        t.warp = i / 32;
        t.lane = i % 32;
        t.fake_stack = nullptr;
        t.sp = fiber_prepare(t.stack, fiber_main, nullptr);
        c.warps[t.warp].present |= 1u << t.lane;
        c.warps[t.warp].lanes[t.lane] = &t;
    }
    release(nullptr, 0);
    // Dynamic shared memory: exactly the launch's bytes (ASan bounds it), filled with 0xff
    // bytes (NaN as f32 and bf16) where a GPU would leave whatever was there.
    void* smem = nullptr;
    if (posix_memalign(&smem, 128, spec.smem > 0 ? spec.smem : 1) != 0) {
        abort();
    }
    memset(smem, 0xff, spec.smem);
    c.smem = static_cast<unsigned char*>(smem);
    c.last_warp = (unsigned)below(c.rng, c.warps.size());
    Thread* first = pick_next();
    self = first;
    thread_idx = first->idx;
    transfer(&c.host_sp, &c.host_fake, first->sp, first->stack.base, first->stack.size);
    self = nullptr;
    free(smem);
    if (c.error.empty() && c.exited < n) {
        c.error = deadlock_report();
    }
    cta = nullptr;
    return c.error;
}

// Why the calling thread cannot join `op` with `mask` (`other`: a collective with the same
// mask that the warp waits in), as a failure. Out of line and cold, so that the hot path's
// frame stays small.
[[noreturn]] __attribute__((noinline, cold)) void collective_misuse(const WarpOp& op,
                                                                      unsigned mask,
                                                                      const Pending* other,
                                                                      const char* file,
                                                                      int line) {
    const Thread& t = *self;
    const Warp& w = cta->warps[t.warp];
    const std::string what = std::string(op.name) + " with mask " + hex(mask);
    if (!(mask >> t.lane & 1)) {
        fail(what + " leaves out the calling lane " + std::to_string(t.lane), file, line);
    }
    if (mask & ~w.present) {
        fail(what + " names lanes " + lanes_of(mask & ~w.present) +
                 ", which are not in the block (its last warp is partial)",
             file, line);
    }
    if (mask & w.exited) {
        fail(what + " names lanes " + lanes_of(mask & w.exited) + ", which exited", file, line);
    }
    fail(what + " while lanes " + lanes_of(other->arrived) + " wait for it in " +
             other->op->name + " with the same mask at " + at(other->file, other->line),
         file, line);
}

// Why the calling thread cannot wait at this __syncthreads, as a failure (see above).
[[noreturn]] __attribute__((noinline, cold)) void barrier_misuse(const char* file, int line) {
    const Thread& t = *self;
    if (cta->exited > 0) {
        fail("__syncthreads after " + std::to_string(cta->exited) +
                 " threads of the block exited",
             file, line);
    }
    const Warp& w = cta->warps[t.warp];
    for (const Pending* p = w.pending; p < w.pending + w.npending; ++p) {
        if (p->mask >> t.lane & 1) {
            fail("__syncthreads while lanes " + lanes_of(p->arrived) +
                     " of its warp wait for it in " + p->op->name + " (mask " + hex(p->mask) +
                     ") at " + at(p->file, p->line),
                 file, line);
        }
    }
    fail("__syncthreads while " + std::to_string(cta->at_barrier) +
             " threads wait at the one at " + at(cta->bar_file, cta->bar_line),
         file, line);
}

// The last lane of `p` has arrived: compute every lane's result, release them.
__attribute__((noinline)) void complete(Warp& w, Pending* p) {
    const unsigned mask = p->mask;
    LaneIo* io[32] = {};
    for (int i = 0; i < 32; ++i) {
        if (mask >> i & 1) {
            io[i] = &w.lanes[i]->io;
        }
    }
    p->op->complete(io, mask);
    *p = w.pending[--w.npending];
    release(&w, mask);
}

}  // namespace

LaneIo& lane_io() { return self->io; }

[[noreturn]] void fail(const std::string& what, const char* file, int line) {
    Thread& t = *self;
    cta->error = thread_name(t) + ": " + what + (line > 0 ? " (at " + at(file, line) + ")" : "");
    yield(true);
    abort();
}

void trap(const char* file, int line) { fail("__trap()", file, line); }

void collective(const WarpOp& op, unsigned mask, const char* file, int line) {
    Thread& t = *self;
    Warp& w = cta->warps[t.warp];
    if (!(mask >> t.lane & 1) || (mask & (~w.present | w.exited)) != 0) {
        collective_misuse(op, mask, nullptr, file, line);
    }
    Pending* p = w.pending;
    while (p < w.pending + w.npending && p->mask != mask) {
        ++p;
    }
    if (p == w.pending + w.npending) {
        *p = {&op, mask, 0, file, line};
        ++w.npending;
    } else if (p->op != &op) {
        collective_misuse(op, mask, p, file, line);
    }
    p->arrived |= 1u << t.lane;
    if (p->arrived == mask) {
        complete(w, p);
    }
    yield(false);
}

void sync_threads(const char* file, int line) {
    Thread& t = *self;
    const Warp& w = cta->warps[t.warp];
    bool awaited = false;  // by lanes of its warp in a collective
    for (const Pending* p = w.pending; p < w.pending + w.npending; ++p) {
        awaited |= (p->mask >> t.lane & 1) != 0;
    }
    const bool elsewhere =
        cta->at_barrier > 0 &&
        (line != cta->bar_line || (file != cta->bar_file && strcmp(file, cta->bar_file) != 0));
    if (cta->exited > 0 || awaited || elsewhere) {
        barrier_misuse(file, line);
    }
    if (cta->at_barrier == 0) {
        cta->bar_file = file;
        cta->bar_line = line;
    }
    if (++cta->at_barrier == cta->nthreads) {
        cta->at_barrier = 0;
        release(nullptr, 0);
    }
    yield(false);
}

unsigned char* dynamic_smem() { return cta->smem; }
unsigned dynamic_smem_bytes() { return (unsigned)cta->spec->smem; }

std::string run_grid(const LaunchSpec& spec, void (*body)(const void*), const void* ctx) {
    const Dim3 g = spec.grid, b = spec.block;
    const unsigned long long n = (unsigned long long)b.x * b.y * b.z;
    const std::string name = spec.kernel;
    if (g.x == 0 || g.y == 0 || g.z == 0 || b.x == 0 || b.y == 0 || b.z == 0) {
        return name + ": a grid or block dimension is 0";
    }
    if (g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535 || b.z > 64) {
        return name + ": grid or block dimensions past the device limits";
    }
    if (n > kMaxThreads || n > spec.max_threads) {
        return name + ": " + std::to_string(n) + " threads per block, the kernel allows " +
               std::to_string(spec.max_threads < kMaxThreads ? spec.max_threads : kMaxThreads) +
               " (__launch_bounds__)";
    }
    if (spec.smem > kMaxDynamicSmem) {
        return name + ": " + std::to_string(spec.smem) + " bytes of dynamic shared memory";
    }
    while (pool.threads.size() < n) {
        pool.threads.emplace_back();
        pool.threads.back().stack = stack_new(kStackBytes);
    }

    Watch watch(spec.kernel);
    uint64_t rng = spec.seed;
    std::vector<uint3> blocks;
    for (unsigned z = 0; z < g.z; ++z) {
        for (unsigned y = 0; y < g.y; ++y) {
            for (unsigned x = 0; x < g.x; ++x) {
                blocks.push_back({x, y, z});
            }
        }
    }
    shuffle(blocks.begin(), blocks.size(), rng);
    block_dim = {b.x, b.y, b.z};
    grid_dim = {g.x, g.y, g.z};
    Cta c;
    c.spec = &spec;
    c.body = body;
    c.ctx = ctx;
    c.threads = pool.threads.data();
    c.nthreads = (unsigned)n;
    c.rng = next_random(rng);
    c.watch = &watch;
    for (const uint3& block : blocks) {
        const std::string error = run_cta(c, block);
        if (!error.empty()) {
            return name + " block (" + std::to_string(block.x) + "," + std::to_string(block.y) +
                   "," + std::to_string(block.z) + ") " + error;
        }
    }
    return "";
}

}  // namespace rill_emu
