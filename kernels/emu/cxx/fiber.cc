// fiber.cc — fiber stacks and the x86-64 context switch (see fiber.h).
#include "fiber.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#endif

#ifndef __x86_64__
#error "the emulator's fiber switch is written for x86-64 (build.rs should have said so)"
#endif

// rill_emu_switch(save_sp, load_sp): push the callee-saved registers, swap stacks, pop the
// other context's. A new fiber's stack is prepared (fiber_prepare) so that the pops load its
// entry point into r13 and argument into r12 and `ret` lands in rill_emu_fiber_start, which
// aligns the stack and calls entry(arg). MXCSR and the x87 control word are not switched:
// every fiber runs with the host thread's floating-point environment, which nothing changes.
asm(R"(
    .text
    .globl rill_emu_switch
    .type rill_emu_switch, @function
rill_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size rill_emu_switch, .-rill_emu_switch

    .type rill_emu_fiber_start, @function
rill_emu_fiber_start:
    xorl %ebp, %ebp
    movq %r12, %rdi
    andq $-16, %rsp
    callq *%r13
    ud2
    .size rill_emu_fiber_start, .-rill_emu_fiber_start
)");

extern "C" void rill_emu_fiber_start();

namespace rill_emu {

Stack stack_new(size_t size) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void* map = mmap(nullptr, size + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED || mprotect(map, page, PROT_NONE) != 0) {
        perror("rill-emu: fiber stack");
        abort();
    }
    char* base = static_cast<char*>(map) + page;
#ifdef __SANITIZE_ADDRESS__
    // The shadow of these addresses may still describe a mapping freed earlier.
    ASAN_UNPOISON_MEMORY_REGION(base, size);
#endif
    return Stack{base, size};
}

void stack_free(const Stack& stack) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    munmap(stack.base - page, stack.size + page);
}

void* fiber_prepare(const Stack& stack, void (*entry)(void*), void* arg) {
    void** sp = reinterpret_cast<void**>((uintptr_t)(stack.base + stack.size) & ~(uintptr_t)15);
    *--sp = nullptr;  // end of the call chain
    *--sp = reinterpret_cast<void*>(&rill_emu_fiber_start);
    *--sp = nullptr;  // rbp
    *--sp = nullptr;  // rbx
    *--sp = arg;      // r12
    *--sp = reinterpret_cast<void*>(entry);  // r13
    *--sp = nullptr;                         // r14
    *--sp = nullptr;                         // r15
    return sp;
}

}  // namespace rill_emu
