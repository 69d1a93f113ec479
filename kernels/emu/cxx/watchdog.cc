// watchdog.cc — the watchdog thread behind Watch (watchdog.h).
#include "watchdog.h"

#include <stdio.h>
#include <stdlib.h>

#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

namespace rill_emu {
namespace {

constexpr auto kPeriod = std::chrono::milliseconds(250);

struct Watched {
    Watch* watch;
    unsigned long long seen;
    int still;  // periods without progress
};

std::mutex mutex;
std::vector<Watched> watched;

// Seconds without progress before the process is stopped: 5, or RILL_EMU_WATCHDOG_SECONDS.
int limit_seconds() {
    const char* text = getenv("RILL_EMU_WATCHDOG_SECONDS");
    const int seconds = text ? atoi(text) : 0;
    return seconds > 0 ? seconds : 5;
}

}  // namespace

void watchdog_loop() {
    const int limit = limit_seconds();
    for (;;) {
        std::this_thread::sleep_for(kPeriod);
        std::lock_guard<std::mutex> lock(mutex);
        for (Watched& w : watched) {
            const unsigned long long now = w.watch->progress_.load(std::memory_order_relaxed);
            w.still = now == w.seen ? w.still + 1 : 0;
            w.seen = now;
            if (w.still * kPeriod >= std::chrono::seconds(limit)) {
                fprintf(stderr,
                        "rill-emu watchdog: %s block (%u,%u,%u) made no progress for %d s: a "
                        "CUDA thread loops without reaching a barrier or warp collective\n",
                        w.watch->kernel_, w.watch->block_[0].load(), w.watch->block_[1].load(),
                        w.watch->block_[2].load(), limit);
                abort();
            }
        }
    }
}

Watch::Watch(const char* kernel) : kernel_(kernel) {
    static std::once_flag started;
    std::call_once(started, [] { std::thread(watchdog_loop).detach(); });
    std::lock_guard<std::mutex> lock(mutex);
    watched.push_back({this, 0, 0});
}

Watch::~Watch() {
    std::lock_guard<std::mutex> lock(mutex);
    for (size_t i = 0; i < watched.size(); ++i) {
        if (watched[i].watch == this) {
            watched.erase(watched.begin() + (long)i);
            break;
        }
    }
}

}  // namespace rill_emu
