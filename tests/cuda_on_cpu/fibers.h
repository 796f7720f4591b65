// Fibers for the CUDA execution layer: a minimal x86-64 context switch
// (callee-saved registers, the SSE and x87 control words, the stack pointer;
// no signal mask, no syscalls) and the stacks it runs on.
#pragma once

#include <cstddef>

namespace cuda_on_cpu {

// A fiber stack: mmap'ed (committed as touched), a guard page below.
struct Stack {
  char* base = nullptr;  // lowest usable address
  size_t size = 0;
};

// The i-th stack of a pool kept for the process (size: settings.stack_bytes).
Stack stack_for(size_t i);

// The stack pointer of a fiber that, switched to, calls entry(arg) on `stack`
// (entry must never return).
void* first_frame(Stack stack, void (*entry)(void*), void* arg);

}  // namespace cuda_on_cpu

// Saves the running context's stack pointer to *save_sp and resumes the one at new_sp.
extern "C" void cuda_on_cpu_switch(void** save_sp, void* new_sp);
