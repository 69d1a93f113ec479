// watchdog.h — ends the process when a launch stops making progress. The scheduler detects
// deadlocks at barriers and warp collectives by itself (no thread left to run), but a thread
// that loops forever without reaching one never gives control back, and would hang the test.
#pragma once

#include <atomic>

namespace rill_emu {

// While alive, watches the launch running on this host thread: when `tick` (every switch
// between CUDA threads) has not been called for 5 seconds, a watchdog thread prints the
// kernel and block and aborts the process (RILL_EMU_WATCHDOG_SECONDS changes the 5).
class Watch {
  public:
    explicit Watch(const char* kernel);
    ~Watch();
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;

    // Only the watched thread writes progress_: no read-modify-write needed.
    void tick() {
        progress_.store(progress_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    void at_block(unsigned x, unsigned y, unsigned z) {
        block_[0].store(x, std::memory_order_relaxed);
        block_[1].store(y, std::memory_order_relaxed);
        block_[2].store(z, std::memory_order_relaxed);
    }

  private:
    friend void watchdog_loop();
    const char* kernel_;
    std::atomic<unsigned long long> progress_{0};
    std::atomic<unsigned> block_[3] = {};
};

}  // namespace rill_emu
