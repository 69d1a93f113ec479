// fiber.h — the stacks and the context switch CUDA threads run on (x86-64 System V only:
// build.rs refuses other targets). A switch saves the callee-saved registers on the current
// stack, stores the stack pointer, and loads another: about 20 ns, where ucontext's
// swapcontext costs a system call (and AddressSanitizer intercepts it, clearing the shadow of
// the target stack on every switch). The scheduler tells ASan about each switch itself.
#pragma once

#include <stddef.h>

namespace rill_emu {

// A fiber stack: [base, base + size), mapped with a guard page below it, so that an overflow
// faults instead of silently corrupting a neighbour.
struct Stack {
    char* base;
    size_t size;
};

Stack stack_new(size_t size);
void stack_free(const Stack& stack);

// The saved stack pointer of a fiber that, when first switched to, calls entry(arg) (which
// must never return: a fiber ends by switching away for good).
void* fiber_prepare(const Stack& stack, void (*entry)(void*), void* arg);

}  // namespace rill_emu

// Save the current context's stack pointer in *save_sp and continue the one at load_sp.
extern "C" void rill_emu_switch(void** save_sp, void* load_sp);
