// The CUDA execution layer's runtime: blocks of fibers, barriers and warp
// intrinsics that check how they are reached, launch validation against
// nvcc's resource report, a garbage-filling allocator, stream capture into
// replayable graphs, and the generator stand-in. See README.md beside this file.
#include "runtime.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <cxxabi.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <unordered_map>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(CUDA_ON_CPU_TSAN)
#include <sanitizer/tsan_interface.h>
// libtsan's dynamic annotation: forget the accesses to a range (fresh memory).
extern "C" void AnnotateNewMemory(const char* file, int line, const volatile void* mem, size_t size);
#endif

// Every __shared__ variable lives in this section (cuda_on_cpu.h).
extern "C" char __start_cuda_on_cpu_shared[] __attribute__((weak));
extern "C" char __stop_cuda_on_cpu_shared[] __attribute__((weak));

namespace cuda_on_cpu {

thread_local const ThreadView* current_view = nullptr;
Settings settings;
std::vector<LaunchRecord> launch_log;
std::map<std::string, KernelResources> kernel_resources;

namespace {

// ---------------------------------------------------------------------------
// Fibers: a minimal x86-64 context switch (callee-saved registers, the SSE
// and x87 control words, the stack pointer). No signal mask, no syscalls.

extern "C" void cuda_on_cpu_switch(void** save_sp, void* new_sp);
extern "C" void cuda_on_cpu_trampoline();
asm(R"(
    .text
    .p2align 4
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

struct Thread;
struct Block;
void fiber_main(Thread* t);

// A fiber stack: mmap'ed (committed as touched), a guard page below.
struct Stack {
  char* base = nullptr;  // lowest usable address
  size_t size = 0;
};

std::vector<Stack>& stack_pool() {
  static std::vector<Stack> pool;
  return pool;
}

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

// ---------------------------------------------------------------------------
// Blocks

enum class State { kRunnable, kBarrier, kWarp, kExited };

struct Thread {
  ThreadView view;
  int id = 0, lane = 0, warp = 0;
  State state = State::kRunnable;
  const char* file = nullptr;  // where it waits
  int line = 0;
  WarpOpKind kind = WarpOpKind::kSyncwarp;
  uint64_t result = 0;
  void* sp = nullptr;
  Stack stack;
#if defined(CUDA_ON_CPU_TSAN)
  void* tsan_fiber = nullptr;
#endif
};

// A warp intrinsic some lanes have reached.
struct WarpOp {
  WarpOpKind kind;
  const char* file;
  int line;
  unsigned mask, arrived;
  int width;
  uint64_t value[32];
  int param[32];
};

// The ops a warp's lanes wait at (disjoint masks). Fixed storage: fibers
// never allocate, so ThreadSanitizer sees no heap traffic between them.
struct WarpOps {
  static constexpr int kMax = 4;
  WarpOp op[kMax];
  int count = 0;
  WarpOp* begin() { return op; }
  WarpOp* end() { return op + count; }
};

struct Block {
  const char* kernel = nullptr;
  uint3 idx{};
  std::vector<Thread> threads;
  std::vector<int> runnable;
  int live = 0;
  int barrier_waiting = 0;
  const char* barrier_file = nullptr;
  int barrier_line = 0;
  std::vector<WarpOps> warp_ops;  // pending, per warp
  std::string error;
  const std::function<void()>* body = nullptr;
  void* scheduler_sp = nullptr;
#if defined(__SANITIZE_ADDRESS__)
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_size = 0;
#endif
#if defined(CUDA_ON_CPU_TSAN)
  void* scheduler_fiber = nullptr;
  int sync_token = 0;  // barrier happens-before
#endif
};

thread_local Block* current_block = nullptr;
thread_local Thread* current_thread = nullptr;

// Note [ThreadSanitizer and fibers]
// ---------------------------------
// Under ThreadSanitizer each CUDA thread is a TSan fiber, and switches between
// fibers do not synchronise, so TSan checks the kernels' own ordering: a
// launch happens before its threads start (launch_token), their ends before
// the launch returns (grid_token), __syncthreads orders a block, __syncwarp
// its lanes, atomics (acq_rel here) order what they order. Blocks of a grid
// are not ordered with each other, as on a GPU. Shared memory and reused fiber
// stacks are declared fresh for each block. The runtime itself is not
// instrumented and never allocates inside a fiber.
[[maybe_unused]] int launch_token, grid_token;

std::mt19937_64& rng() {
  static std::mt19937_64 engine(1);
  return engine;
}

const char* kind_name(WarpOpKind k) {
  switch (k) {
    case WarpOpKind::kSyncwarp: return "__syncwarp";
    case WarpOpKind::kShflIdx: return "__shfl_sync";
    case WarpOpKind::kShflUp: return "__shfl_up_sync";
    case WarpOpKind::kShflDown: return "__shfl_down_sync";
    case WarpOpKind::kShflXor: return "__shfl_xor_sync";
    case WarpOpKind::kBallot: return "__ballot_sync";
    case WarpOpKind::kAny: return "__any_sync";
    case WarpOpKind::kAll: return "__all_sync";
  }
  return "?";
}

std::string site(const char* file, int line) {
  std::string f = file != nullptr ? file : "?";
  const size_t slash = f.rfind('/');
  if (slash != std::string::npos) f = f.substr(slash + 1);
  return f + ":" + std::to_string(line);
}

std::string where(const Block& b, const Thread& t) {
  std::ostringstream s;
  s << b.kernel << " block (" << b.idx.x << "," << b.idx.y << "," << b.idx.z << ") thread " << t.id << " (warp "
    << t.warp << ", lane " << t.lane << ")";
  return s.str();
}

void switch_into(Block& b, Thread& t) {
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, t.stack.base, t.stack.size);
#endif
#if defined(CUDA_ON_CPU_TSAN)
  __tsan_switch_to_fiber(t.tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
  cuda_on_cpu_switch(&b.scheduler_sp, t.sp);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

// Back to the scheduler; returns when the scheduler picks this thread again.
void switch_out(Block& b, Thread& t, bool for_good) {
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(for_good ? nullptr : &fake, b.scheduler_stack, b.scheduler_stack_size);
#endif
#if defined(CUDA_ON_CPU_TSAN)
  __tsan_switch_to_fiber(b.scheduler_fiber, __tsan_switch_to_fiber_no_sync);
#endif
  cuda_on_cpu_switch(&t.sp, b.scheduler_sp);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

[[noreturn]] void fail_in_kernel(const std::string& message) {
  Block& b = *current_block;
  Thread& t = *current_thread;
  if (b.error.empty()) b.error = message;
  t.state = State::kExited;
  switch_out(b, t, true);
  __builtin_unreachable();
}

void make_runnable(Block& b, Thread& t) {
  t.state = State::kRunnable;
  b.runnable.push_back(t.id);
}

void release_barrier(Block& b) {
  for (Thread& t : b.threads)
    if (t.state == State::kBarrier) make_runnable(b, t);
  b.barrier_waiting = 0;
}

// The pending op of t's warp whose mask holds t's lane, or null.
WarpOp* op_of(Block& b, const Thread& t) {
  for (WarpOp& op : b.warp_ops[size_t(t.warp)])
    if (op.mask >> t.lane & 1u) return &op;
  return nullptr;
}

std::string lanes(unsigned bits) {
  std::ostringstream s;
  s << "{";
  bool first = true;
  for (int l = 0; l < 32; ++l) {
    if (!(bits >> l & 1u)) continue;
    int end = l;
    while (end + 1 < 32 && (bits >> (end + 1) & 1u)) ++end;
    s << (first ? "" : ",") << l;
    if (end > l) s << "-" << end;
    first = false;
    l = end;
  }
  s << "}";
  return s.str();
}

void thread_exit(Block& b, Thread& t) {
  t.state = State::kExited;
  --b.live;
  if (const WarpOp* op = op_of(b, t)) {
    fail_in_kernel(where(b, t) + " exits while lanes " + lanes(op->arrived) + " of its warp wait for it at " +
                   kind_name(op->kind) + " (" + site(op->file, op->line) + ", mask " + lanes(op->mask) + ")");
  }
  if (b.barrier_waiting > 0 && b.barrier_waiting == b.live) release_barrier(b);
#if defined(CUDA_ON_CPU_TSAN)
  __tsan_release(&grid_token);
#endif
  switch_out(b, t, true);
  __builtin_unreachable();
}

void fiber_main(Thread* t) {
  Block& b = *current_block;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &b.scheduler_stack, &b.scheduler_stack_size);
#endif
#if defined(CUDA_ON_CPU_TSAN)
  __tsan_acquire(&launch_token);
#endif
  std::string failure;
  try {
    (*b.body)();
  } catch (const std::exception& e) {
    failure = e.what();
  }
  if (!failure.empty()) fail_in_kernel(where(b, *t) + " threw: " + failure);
  thread_exit(b, *t);
}

void start_fiber(Thread& t, Stack stack) {
  t.stack = stack;
#if defined(__SANITIZE_ADDRESS__)
  // Frames of a fiber abandoned at an error may have left poisoned bytes.
  __asan_unpoison_memory_region(stack.base, stack.size);
#endif
  auto* top = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(stack.base + stack.size) - 64) & ~uintptr_t(15));
  // The frame cuda_on_cpu_switch pops: control words, r15, r14, r13, r12, rbx, rbp, return address.
  uint64_t* sp = top - 10;
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  sp[0] = 0;
  sp[1] = uint64_t(mxcsr) | (uint64_t(fpucw) << 32);
  sp[2] = 0;                                              // r15
  sp[3] = 0;                                              // r14
  sp[4] = reinterpret_cast<uint64_t>(&fiber_main);        // r13: entry
  sp[5] = reinterpret_cast<uint64_t>(&t);                 // r12: argument
  sp[6] = 0;                                              // rbx
  sp[7] = 0;                                              // rbp
  sp[8] = reinterpret_cast<uint64_t>(&cuda_on_cpu_trampoline);
  t.sp = sp;
#if defined(CUDA_ON_CPU_TSAN)
  t.tsan_fiber = __tsan_create_fiber(0);
  AnnotateNewMemory(__FILE__, __LINE__, stack.base, stack.size);
#endif
}

// Fills [p, p + bytes) with one of the garbage patterns: NaNs, huge
// integers, the largest float, invalid bools.
void fill_garbage(void* p, size_t bytes) {
  static const uint32_t patterns[][2] = {{0x7FC00001u, 0x7FC00001u}, {0xFFFFFFFFu, 0xFFFFFFFFu},
                                         {0x7F7FFFFFu, 0xFFFFFFFFu}, {0x7FFFFFFFu, 0x7FC0DEADu},
                                         {0xDEADBEEFu, 0x7FBFFFFFu}};
  const auto& pattern = patterns[rng()() % (sizeof patterns / sizeof patterns[0])];
  auto* bytes_out = static_cast<unsigned char*>(p);
  for (size_t i = 0; i < bytes; ++i) {
    const uint32_t word = pattern[(i / 4) % 2];
    bytes_out[i] = static_cast<unsigned char>(word >> (8 * (i % 4)));
  }
}

// Note [Shared memory]
// --------------------
// A __shared__ variable is a function-local static in the section
// cuda_on_cpu_shared: one instance, which the fibers of the running block
// share. Blocks run one at a time, so one instance serves every block; the
// whole section is filled with garbage before each block, so a block that
// reads shared memory before writing it reads NaNs and huge integers, as a
// block on a GPU may read a previous kernel's leftovers.
void fill_shared() {
  if (__start_cuda_on_cpu_shared == nullptr || __stop_cuda_on_cpu_shared <= __start_cuda_on_cpu_shared) return;
  const size_t bytes = size_t(__stop_cuda_on_cpu_shared - __start_cuda_on_cpu_shared);
  fill_garbage(__start_cuda_on_cpu_shared, bytes);
#if defined(CUDA_ON_CPU_TSAN)
  AnnotateNewMemory(__FILE__, __LINE__, __start_cuda_on_cpu_shared, bytes);
#endif
}

void run_block(const char* kernel, uint3 block_idx, dim3 grid, dim3 block_dim,
               const std::function<void()>& body) {
  Block b;
  b.kernel = kernel;
  b.idx = block_idx;
  b.body = &body;
  const int n = int(block_dim.x * block_dim.y * block_dim.z);
  b.threads.resize(size_t(n));
  b.warp_ops.resize(size_t((n + 31) / 32));
  b.runnable.reserve(size_t(n));  // fibers push without allocating
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[size_t(i)];
    t.id = i;
    t.lane = i % 32;
    t.warp = i / 32;
    t.view.thread_idx = {unsigned(i) % block_dim.x, unsigned(i) / block_dim.x % block_dim.y,
                         unsigned(i) / (block_dim.x * block_dim.y)};
    t.view.block_idx = block_idx;
    t.view.block_dim = block_dim;
    t.view.grid_dim = grid;
    start_fiber(t, stack_for(size_t(i)));
    b.runnable.push_back(i);
  }
  b.live = n;
  fill_shared();
#if defined(CUDA_ON_CPU_TSAN)
  b.scheduler_fiber = __tsan_get_current_fiber();
#endif
  Block* const outer_block = current_block;
  current_block = &b;
  struct Restore {
    Block* outer;
    Block& b;
    ~Restore() {
#if defined(CUDA_ON_CPU_TSAN)
      __tsan_acquire(&grid_token);  // the threads' reads of their Thread records end before they are freed
#endif
      current_block = outer;
      current_thread = nullptr;
      current_view = nullptr;
#if defined(CUDA_ON_CPU_TSAN)
      for (Thread& t : b.threads)
        if (t.tsan_fiber != nullptr) __tsan_destroy_fiber(t.tsan_fiber);
#endif
    }
  } restore{outer_block, b};
  while (!b.runnable.empty()) {
    const size_t pick = size_t(rng()() % b.runnable.size());
    Thread& t = b.threads[size_t(b.runnable[pick])];
    b.runnable[pick] = b.runnable.back();
    b.runnable.pop_back();
    current_thread = &t;
    current_view = &t.view;
    switch_into(b, t);
    current_thread = nullptr;
    current_view = nullptr;
    TORCH_CHECK(b.error.empty(), "cuda_on_cpu: ", b.error);
  }
  if (b.live > 0) {
    std::ostringstream s;
    s << "cuda_on_cpu: deadlock in " << kernel << " block (" << block_idx.x << "," << block_idx.y << ","
      << block_idx.z << "): " << b.live << " threads wait forever:";
    for (const Thread& t : b.threads) {
      if (t.state == State::kBarrier) s << "\n  thread " << t.id << " at __syncthreads (" << site(t.file, t.line) << ")";
      if (t.state == State::kWarp)
        s << "\n  thread " << t.id << " at " << kind_name(t.kind) << " (" << site(t.file, t.line) << ")";
    }
    TORCH_CHECK(false, s.str());
  }
}

Thread& self(const char* what) {
  if (current_thread == nullptr) fail_outside_kernel(what);
  return *current_thread;
}

}  // namespace

[[noreturn]] void fail_outside_kernel(const char* what) {
  TORCH_CHECK(false, "cuda_on_cpu: ", what, " used outside a kernel");
  __builtin_unreachable();
}

void syncthreads(const char* file, int line) {
  Thread& t = self("__syncthreads");
  Block& b = *current_block;
  if (const WarpOp* op = op_of(b, t)) {
    fail_in_kernel(where(b, t) + " reaches __syncthreads (" + site(file, line) + ") while lanes " +
                   lanes(op->arrived) + " of its warp wait for it at " + kind_name(op->kind) + " (" +
                   site(op->file, op->line) + ")");
  }
  if (b.barrier_waiting > 0 && (b.barrier_line != line || std::strcmp(b.barrier_file, file) != 0)) {
    fail_in_kernel(where(b, t) + " waits at __syncthreads (" + site(file, line) + ") while " +
                   std::to_string(b.barrier_waiting) + " threads wait at another __syncthreads (" +
                   site(b.barrier_file, b.barrier_line) + ")");
  }
  b.barrier_file = file;
  b.barrier_line = line;
  ++b.barrier_waiting;
  t.state = State::kBarrier;
  t.file = file;
  t.line = line;
#if defined(CUDA_ON_CPU_TSAN)
  __tsan_release(&b.sync_token);
#endif
  if (b.barrier_waiting == b.live) release_barrier(b);
  switch_out(b, t, false);
#if defined(CUDA_ON_CPU_TSAN)
  __tsan_acquire(&b.sync_token);
#endif
}

uint64_t warp_op(WarpOpKind kind, unsigned mask, uint64_t value, int param, int width, const char* file,
                 int line) {
  Thread& t = self(kind_name(kind));
  Block& b = *current_block;
  const auto at = [&] { return std::string(kind_name(kind)) + " (" + site(file, line) + ", mask " + lanes(mask) + ")"; };
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    fail_in_kernel(where(b, t) + " calls " + at() + " with width " + std::to_string(width) + ", not a power of 2 <= 32");
  if (!(mask >> t.lane & 1u)) fail_in_kernel(where(b, t) + " calls " + at() + " with a mask that leaves it out");
  const int first = t.warp * 32;
  const int present = std::min(32, int(b.threads.size()) - first);
  const unsigned existing = present == 32 ? 0xffffffffu : ((1u << present) - 1u);
  if (mask & ~existing)
    fail_in_kernel(where(b, t) + " calls " + at() + " naming lanes " + lanes(mask & ~existing) +
                   " past the end of the block");
  for (int l = 0; l < present; ++l) {
    if (!(mask >> l & 1u) || l == t.lane) continue;
    const Thread& other = b.threads[size_t(first + l)];
    if (other.state == State::kExited)
      fail_in_kernel(where(b, t) + " calls " + at() + " but lane " + std::to_string(l) + " of the mask has exited");
    if (other.state == State::kBarrier)
      fail_in_kernel(where(b, t) + " calls " + at() + " but lane " + std::to_string(l) +
                     " of the mask waits at __syncthreads (" + site(other.file, other.line) + ")");
  }
  WarpOps& ops = b.warp_ops[size_t(t.warp)];
  WarpOp* op = op_of(b, t);
  if (op != nullptr) {
    if (op->kind != kind || op->mask != mask || op->width != width || op->line != line ||
        std::strcmp(op->file, file) != 0) {
      fail_in_kernel(where(b, t) + " calls " + at() + " while lanes " + lanes(op->arrived) + " wait for it at " +
                     kind_name(op->kind) + " (" + site(op->file, op->line) + ", mask " + lanes(op->mask) + ")");
    }
  } else {
    for (const WarpOp& other : ops) {
      if (other.mask & mask)
        fail_in_kernel(where(b, t) + " calls " + at() + " while lanes " + lanes(other.arrived) + " wait at " +
                       kind_name(other.kind) + " (" + site(other.file, other.line) + ", mask " +
                       lanes(other.mask) + ")");
    }
    if (ops.count == WarpOps::kMax)
      fail_in_kernel(where(b, t) + " calls " + at() + " while its warp waits at " + std::to_string(ops.count) +
                     " other intrinsics (the layer tracks at most " + std::to_string(WarpOps::kMax) + ")");
    op = &ops.op[ops.count++];
    op->kind = kind;
    op->file = file;
    op->line = line;
    op->mask = mask;
    op->arrived = 0u;
    op->width = width;
  }
  op->value[t.lane] = value;
  op->param[t.lane] = param;
  op->arrived |= 1u << t.lane;
  t.state = State::kWarp;
  t.kind = kind;
  t.file = file;
  t.line = line;
  if (op->arrived == mask) {
    // Everyone is here: every lane gets its result and becomes runnable.
    uint64_t votes = 0;
    int any = 0, all = 1;
    for (int l = 0; l < 32; ++l) {
      if (!(mask >> l & 1u)) continue;
      const bool yes = op->value[l] != 0;
      votes |= uint64_t(yes) << l;
      any |= int(yes);
      all &= int(yes);
    }
    for (int l = 0; l < 32; ++l) {
      if (!(mask >> l & 1u)) continue;
      const int segment = l & ~(width - 1);
      int src = l;
      switch (kind) {
        case WarpOpKind::kShflIdx: src = segment + (op->param[l] & (width - 1)); break;
        case WarpOpKind::kShflUp: src = l - op->param[l] >= segment ? l - op->param[l] : l; break;
        case WarpOpKind::kShflDown: src = l + op->param[l] < segment + width ? l + op->param[l] : l; break;
        case WarpOpKind::kShflXor: {
          const int x = l ^ op->param[l];
          src = x >= segment && x < segment + width ? x : l;
          break;
        }
        default: break;
      }
      uint64_t result = 0;
      switch (kind) {
        case WarpOpKind::kBallot: result = votes; break;
        case WarpOpKind::kAny: result = uint64_t(any); break;
        case WarpOpKind::kAll: result = uint64_t(all); break;
        case WarpOpKind::kSyncwarp: break;
        default:
          // Reading a lane outside the mask is undefined: garbage.
          result = (mask >> src & 1u) ? op->value[src] : 0x7FC00001FFFFFFFFull;
      }
      Thread& lane_thread = b.threads[size_t(first + l)];
      lane_thread.result = result;
      make_runnable(b, lane_thread);
    }
    *op = ops.op[--ops.count];  // drop it, keeping the rest together
  }
#if defined(CUDA_ON_CPU_TSAN)
  // __syncwarp orders memory among its lanes; shuffles and votes do not.
  if (kind == WarpOpKind::kSyncwarp) __tsan_release(&b.warp_ops[size_t(t.warp)]);
#endif
  switch_out(b, t, false);
#if defined(CUDA_ON_CPU_TSAN)
  if (kind == WarpOpKind::kSyncwarp) __tsan_acquire(&b.warp_ops[size_t(t.warp)]);
#endif
  return t.result;
}

void maybe_yield() {
  if (current_thread == nullptr || settings.yield_one_in <= 0) return;
  if (rng()() % uint64_t(settings.yield_one_in) != 0) return;
  Block& b = *current_block;
  Thread& t = *current_thread;
  make_runnable(b, t);
  switch_out(b, t, false);
}

void threadfence() { maybe_yield(); }

std::string kernel_name_from_tag(const char* mangled_tag) {
  int status = 0;
  char* demangled = abi::__cxa_demangle(mangled_tag, nullptr, nullptr, &status);
  TORCH_CHECK(status == 0 && demangled != nullptr, "cuda_on_cpu: cannot demangle ", mangled_tag);
  std::string s = demangled;
  std::free(demangled);
  // "cuda_on_cpu::KernelTag<(void ns::kernel<...>(args))>" -> "ns::kernel<...>",
  // as nvcc's names demangle once their parameters and return type are dropped.
  const std::string open = "KernelTag<";
  size_t begin = s.find(open);
  TORCH_CHECK(begin != std::string::npos, "cuda_on_cpu: unexpected kernel tag ", s);
  begin += open.size();
  std::string name = s.substr(begin, s.rfind('>') - begin);
  while (!name.empty() && name.back() == ' ') name.pop_back();
  if (!name.empty() && name.front() == '&') name.erase(0, 1);
  if (name.size() > 2 && name.front() == '(' && name.back() == ')') name = name.substr(1, name.size() - 2);
  if (!name.empty() && name.back() == ')') {  // drop the parameter list
    int depth = 0;
    for (size_t i = name.size(); i-- > 0;) {
      depth += name[i] == ')' ? 1 : name[i] == '(' ? -1 : 0;
      if (depth == 0) {
        name.resize(i);
        break;
      }
    }
  }
  if (name.rfind("void ", 0) == 0) name.erase(0, 5);
  return normalize_kernel_name(name);
}

std::string normalize_kernel_name(std::string name) {
  // Spellings that differ between g++ and nvcc's demangled names.
  const std::pair<std::string, std::string> spellings[] = {{"{anonymous}", "(anonymous namespace)"}, {" >", ">"}};
  for (const auto& [from, to] : spellings) {
    for (size_t at = name.find(from); at != std::string::npos; at = name.find(from, at)) {
      name.replace(at, from.size(), to);
      at += to.size();
    }
  }
  return name;
}

// ---------------------------------------------------------------------------
// Launches

namespace {

// One recorded operation of a graph, or the stream capture being recorded.
struct Graph {
  std::vector<std::function<void()>> ops;
  std::vector<std::pair<at::CUDAGeneratorImpl*, uint64_t>> generators;  // and the graph's increment
  std::vector<void*> deferred_frees;
};
Graph* capturing = nullptr;

bool is_capturing(cudaStream_t) { return capturing != nullptr; }

// Note [Launch validation]
// ------------------------
// What a GPU refuses at launch ("invalid configuration argument", "too many
// resources requested for launch") is refused here with the figures: block
// and grid limits, the kernel's __launch_bounds__ (.maxntid in nvcc's PTX),
// its registers (32 threads x registers a thread, rounded to 256 per warp,
// within the 64K register file a block may use) and its shared memory
// (static from ptxas plus dynamic, within 48 KiB or the opted-in maximum).
void validate(const char* name, dim3 grid, dim3 block, size_t dynamic_shared, size_t param_bytes) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  TORCH_CHECK(block.x >= 1 && block.y >= 1 && block.z >= 1 && block.x <= 1024 && block.y <= 1024 && block.z <= 64 &&
                  threads <= 1024,
              "cuda_on_cpu: launch of ", name, ": invalid block (", block.x, ", ", block.y, ", ", block.z,
              "): at most 1024 threads (x, y <= 1024, z <= 64)");
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 2147483647u && grid.y <= 65535 &&
                  grid.z <= 65535,
              "cuda_on_cpu: launch of ", name, ": invalid grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
  TORCH_CHECK(param_bytes <= 32764, "cuda_on_cpu: launch of ", name, ": ", param_bytes,
              " bytes of kernel parameters (at most 32764)");
  if (kernel_resources.empty()) {
    TORCH_CHECK(!settings.require_resources, "cuda_on_cpu: launch of ", name,
                ": no nvcc resource report was loaded");
    return;
  }
  const auto it = kernel_resources.find(name);
  TORCH_CHECK(it != kernel_resources.end(), "cuda_on_cpu: launch of ", name,
              ": the nvcc resource report has no such kernel");
  const KernelResources& r = it->second;
  TORCH_CHECK(r.max_threads == 0 || threads <= uint64_t(r.max_threads), "cuda_on_cpu: launch of ", name, ": ",
              threads, " threads a block exceed its __launch_bounds__ of ", r.max_threads);
  const uint64_t per_warp = (uint64_t(r.registers) * 32 + 255) / 256 * 256;
  const uint64_t registers = per_warp * ((threads + 31) / 32);
  TORCH_CHECK(registers <= 65536, "cuda_on_cpu: launch of ", name, ": too many resources requested: ",
              r.registers, " registers a thread x ", threads, " threads need ", registers,
              " registers, a block may use 65536");
  const auto opt_in = settings.max_dynamic_shared.find(name);
  const uint64_t limit = opt_in != settings.max_dynamic_shared.end() ? uint64_t(opt_in->second) + r.static_shared
                                                                    : 48u * 1024u;
  TORCH_CHECK(uint64_t(r.static_shared) + dynamic_shared <= std::min<uint64_t>(limit, 227u * 1024u),
              "cuda_on_cpu: launch of ", name, ": ", r.static_shared, " bytes of static and ", dynamic_shared,
              " bytes of dynamic shared memory exceed the ", limit, " bytes a block may use");
}

void run_grid(const char* name, dim3 grid, dim3 block, const std::function<void()>& body) {
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order(blocks);
  for (uint64_t i = 0; i < blocks; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng());
#if defined(CUDA_ON_CPU_TSAN)
  __tsan_release(&launch_token);
#endif
  for (const uint64_t i : order) {
    const uint3 idx{unsigned(i % grid.x), unsigned(i / grid.x % grid.y), unsigned(i / (uint64_t(grid.x) * grid.y))};
    run_block(name, idx, grid, block, body);
  }
#if defined(CUDA_ON_CPU_TSAN)
  __tsan_acquire(&grid_token);
#endif
}

}  // namespace

void launch(const char* name, dim3 grid, dim3 block, size_t dynamic_shared, cudaStream_t stream,
            size_t param_bytes, std::function<void()> thread_body) {
  TORCH_CHECK(current_thread == nullptr, "cuda_on_cpu: launch of ", name, " from device code");
  validate(name, grid, block, dynamic_shared, param_bytes);
  launch_log.push_back({name, grid.x, grid.y, grid.z, block.x * block.y * block.z, dynamic_shared,
                        is_capturing(stream)});
  if (is_capturing(stream)) {
    capturing->ops.push_back([name, grid, block, body = std::move(thread_body)] { run_grid(name, grid, block, body); });
    return;
  }
  run_grid(name, grid, block, thread_body);
}

void begin_schedule(uint64_t seed) { rng().seed(seed); }

// ---------------------------------------------------------------------------
// Memory

namespace {

struct Allocation {
  size_t bytes;
  bool in_graph;  // allocated or freed while a capture was recorded
};
std::map<void*, Allocation>& allocations() {
  static std::map<void*, Allocation> live;
  return live;
}

void release(void* p) {
  if (p == nullptr) return;
  auto& live = allocations();
  const auto it = live.find(p);
  TORCH_CHECK(it != live.end(), "cuda_on_cpu: free of memory the allocator did not hand out");
  if (capturing != nullptr) {  // the graph's pool keeps it until the graph goes
    it->second.in_graph = true;
    capturing->deferred_frees.push_back(p);
    return;
  }
  live.erase(it);
  std::free(p);
}

struct Allocator final : c10::Allocator {
  c10::DataPtr allocate(size_t bytes) override {
    void* p = nullptr;
    if (bytes > 0) {
      // Exact size, so that AddressSanitizer sees the first byte past the end.
      TORCH_CHECK(posix_memalign(&p, 256, bytes) == 0, "cuda_on_cpu: out of memory");
      fill_garbage(p, bytes);
      allocations()[p] = {bytes, capturing != nullptr};
    }
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

// torch's CPU allocator while emulating: fresh CPU tensors (the ops' outputs
// and converted parameters, device memory in this model) hold garbage, as a
// GPU's fresh allocations do.
struct HostGarbageAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t bytes) override {
    void* p = nullptr;
    if (bytes > 0) {
      TORCH_CHECK(posix_memalign(&p, 64, bytes) == 0, "cuda_on_cpu: out of memory");
      fill_garbage(p, bytes);
    }
    return {p, p, &std::free, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

}  // namespace

void garbage_host_tensors(bool on) {
  static HostGarbageAllocator garbage;
  static c10::Allocator* previous = nullptr;
  constexpr uint8_t kPriority = 200;  // above any allocator torch registers
  if (on && previous == nullptr) {
    previous = c10::GetCPUAllocator();
    c10::SetCPUAllocator(&garbage, kPriority);
  } else if (!on && previous != nullptr) {
    c10::SetCPUAllocator(previous, kPriority);
    previous = nullptr;
  }
}

std::vector<std::pair<const void*, size_t>> live_allocations() {
  std::vector<std::pair<const void*, size_t>> out;
  for (const auto& [p, a] : allocations())
    if (!a.in_graph) out.push_back({p, a.bytes});
  return out;
}

// ---------------------------------------------------------------------------
// Graphs

GraphHandle capture_begin() {
  TORCH_CHECK(capturing == nullptr, "cuda_on_cpu: a capture is already being recorded");
  capturing = new Graph();
  return capturing;
}

void capture_end(GraphHandle graph) {
  TORCH_CHECK(capturing != nullptr && capturing == graph, "cuda_on_cpu: no such capture being recorded");
  capturing = nullptr;
}

void replay(GraphHandle handle) {
  TORCH_CHECK(capturing == nullptr, "cuda_on_cpu: replay during a capture");
  auto* graph = static_cast<Graph*>(handle);
  // As CUDAGraph::replay: each generator's seed and offset go to the memory
  // the captured kernels read, then the generator moves past the graph.
  for (const auto& [gen, increment] : graph->generators) {
    gen->seed_cell = int64_t(gen->seed);
    gen->offset_cell = int64_t(gen->offset);
  }
  for (const auto& op : graph->ops) op();
  for (const auto& [gen, increment] : graph->generators) gen->offset += increment;
}

void destroy_graph(GraphHandle handle) {
  auto* graph = static_cast<Graph*>(handle);
  TORCH_CHECK(capturing != graph, "cuda_on_cpu: destroying a capture being recorded");
  for (void* p : graph->deferred_frees) {
    allocations().erase(p);
    std::free(p);
  }
  delete graph;
}

// ---------------------------------------------------------------------------
// Generators

namespace {

struct GeneratorEntry {
  c10::intrusive_ptr<c10::GeneratorImpl> keep;  // the address cannot be reused while here
  std::unique_ptr<at::CUDAGeneratorImpl> state;
  uint64_t seen;  // hash of the torch.Generator's state when last used
};

uint64_t state_hash(const at::Generator& gen) {
  const at::Tensor state = gen.get_state();
  const auto* bytes = static_cast<const unsigned char*>(state.const_data_ptr());
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (int64_t i = 0; i < state.numel(); ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  return h;
}
std::unordered_map<const c10::GeneratorImpl*, GeneratorEntry>& generators() {
  static std::unordered_map<const c10::GeneratorImpl*, GeneratorEntry> table;
  return table;
}

}  // namespace

at::CUDAGeneratorImpl* emulated_generator(const at::Generator& gen) {
  TORCH_CHECK(gen.defined(), "cuda_on_cpu: undefined generator");
  // The stream restarts at (seed, 0) when the torch.Generator's state has
  // changed since its last use here: manual_seed (or a draw by a CPU op). Each
  // use advances that state by one draw, so that a manual_seed with the same
  // seed is seen as a change too.
  auto& table = generators();
  auto [it, fresh] = table.try_emplace(gen.unsafeGetGeneratorImpl());
  GeneratorEntry& e = it->second;
  if (fresh) {
    e.keep = gen.getIntrusivePtr();
    e.state = std::make_unique<at::CUDAGeneratorImpl>();
  }
  if (fresh || e.seen != state_hash(gen)) {
    e.state->seed = gen.current_seed();
    e.state->offset = 0;
  }
  at::check_generator<at::CPUGeneratorImpl>(gen)->random();
  e.seen = state_hash(gen);
  return e.state.get();
}

void forget_generators() { generators().clear(); }

// ---------------------------------------------------------------------------
// Device properties

int sm_count() { return settings.sm_count; }

}  // namespace cuda_on_cpu

// ---------------------------------------------------------------------------
// The runtime API and the c10/ATen stand-ins

using cuda_on_cpu::capturing;

cudaError_t cudaGetLastError() { return cudaSuccess; }
cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t error) { return error == cudaSuccess ? "no error" : "error"; }

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  if (cuda_on_cpu::is_capturing(stream)) {
    capturing->ops.push_back([=] { std::memset(ptr, value, bytes); });
  } else {
    std::memset(ptr, value, bytes);
  }
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  *status = cuda_on_cpu::is_capturing(stream) ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = cuda_on_cpu::sm_count(); return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

cudaError_t cuda_on_cpu_func_set_attribute(const char* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0) return cudaErrorInvalidValue;
  cuda_on_cpu::settings.max_dynamic_shared[kernel] = value;
  return cudaSuccess;
}

namespace c10::cuda {

c10::DeviceIndex device_count() noexcept { return 1; }

CUDAStream getCurrentCUDAStream(c10::DeviceIndex) {
  static CUstream_st* const default_stream = nullptr;
  return CUDAStream(default_stream);
}

namespace CUDACachingAllocator {
c10::Allocator* get() {
  static cuda_on_cpu::Allocator allocator;
  return &allocator;
}
}  // namespace CUDACachingAllocator

}  // namespace c10::cuda

namespace at {

PhiloxCudaState CUDAGeneratorImpl::philox_cuda_state(uint64_t increment) {
  increment = (increment + 3) / 4 * 4;
  if (capturing != nullptr) {
    auto& used = capturing->generators;
    auto it = std::find_if(used.begin(), used.end(), [&](const auto& g) { return g.first == this; });
    if (it == used.end()) it = used.insert(used.end(), {this, 0});
    const uint64_t within_graph = it->second;
    it->second += increment;
    return PhiloxCudaState(&seed_cell, &offset_cell, within_graph);
  }
  const uint64_t at_offset = offset;
  offset += increment;
  return PhiloxCudaState(seed, at_offset);
}

template <>
CUDAGeneratorImpl* get_generator_or_default<CUDAGeneratorImpl>(const std::optional<Generator>& gen,
                                                               const Generator& default_gen) {
  return cuda_on_cpu::emulated_generator(gen.has_value() && gen->defined() ? *gen : default_gen);
}

namespace cuda::detail {
const Generator& getDefaultCUDAGenerator(DeviceIndex) { return at::detail::getDefaultCPUGenerator(); }
}  // namespace cuda::detail

}  // namespace at
