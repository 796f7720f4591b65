// Fibers for the CUDA execution layer (fibers.h).
#include "fibers.h"

#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <cstdint>
#include <vector>

#include "runtime.h"

extern "C" void cuda_on_cpu_trampoline();
asm(R"(
    .text
    .p2align 4
    .globl cuda_on_cpu_switch
    .hidden cuda_on_cpu_switch
    .type cuda_on_cpu_switch, @function
cuda_on_cpu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $16, %rsp
    stmxcsr 8(%rsp)
    fnstcw 12(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr 8(%rsp)
    fldcw 12(%rsp)
    addq $16, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuda_on_cpu_switch, .-cuda_on_cpu_switch

    .p2align 4
    .type cuda_on_cpu_trampoline, @function
cuda_on_cpu_trampoline:
    movq %r12, %rdi
    andq $-16, %rsp
    callq *%r13
    ud2
    .size cuda_on_cpu_trampoline, .-cuda_on_cpu_trampoline
)");

namespace cuda_on_cpu {
namespace {

std::vector<Stack>& stack_pool() {
  static std::vector<Stack> pool;
  return pool;
}

}  // namespace

Stack stack_for(size_t i) {
  auto& pool = stack_pool();
  const size_t page = 4096, size = settings.stack_bytes;
  while (pool.size() <= i) {
    void* p = mmap(nullptr, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "cuda_on_cpu: cannot map a fiber stack");
    mprotect(p, page, PROT_NONE);
    pool.push_back({static_cast<char*>(p) + page, size});
  }
  return pool[i];
}

void* first_frame(Stack stack, void (*entry)(void*), void* arg) {
  auto* top = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(stack.base + stack.size) - 64) & ~uintptr_t(15));
  // The frame cuda_on_cpu_switch pops: control words, r15, r14, r13, r12, rbx,
  // rbp, then the return address: the trampoline, which calls r13(r12).
  uint64_t* sp = top - 10;
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  sp[0] = 0;
  sp[1] = uint64_t(mxcsr) | (uint64_t(fpucw) << 32);
  sp[2] = 0;                                    // r15
  sp[3] = 0;                                    // r14
  sp[4] = reinterpret_cast<uint64_t>(entry);    // r13
  sp[5] = reinterpret_cast<uint64_t>(arg);      // r12
  sp[6] = 0;                                    // rbx
  sp[7] = 0;                                    // rbp
  sp[8] = reinterpret_cast<uint64_t>(&cuda_on_cpu_trampoline);
  return sp;
}

}  // namespace cuda_on_cpu
