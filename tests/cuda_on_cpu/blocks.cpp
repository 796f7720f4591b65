// The CUDA execution layer's blocks: a block's threads as fibers on the
// calling thread, a seeded scheduler, barriers and warp intrinsics that check
// how they are reached, and garbage in shared memory. See README.md beside this file.
#include "runtime.h"

#include "fibers.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <random>
#include <sstream>

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
namespace {

struct Thread;
struct Block;
void fiber_main(Thread* t);

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
  void* tsan_fiber = nullptr;  // used under ThreadSanitizer
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
  // The scheduler's stack (told to AddressSanitizer) and fiber (to ThreadSanitizer).
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_size = 0;
  void* scheduler_fiber = nullptr;
#if defined(CUDA_ON_CPU_TSAN)
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

// One fiber switch, told to the sanitizers: save the current stack pointer in
// *save and resume `to`, whose stack is [stack, stack + size) and whose TSan
// fiber is `fiber`. A fiber leaving for good tells ASan it keeps no fake stack.
void switch_fiber(void** save, void* to, [[maybe_unused]] const void* stack, [[maybe_unused]] size_t size,
                  [[maybe_unused]] void* fiber, [[maybe_unused]] bool for_good) {
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(for_good ? nullptr : &fake, stack, size);
#endif
#if defined(CUDA_ON_CPU_TSAN)
  __tsan_switch_to_fiber(fiber, __tsan_switch_to_fiber_no_sync);
#endif
  cuda_on_cpu_switch(save, to);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

void switch_into(Block& b, Thread& t) {
  switch_fiber(&b.scheduler_sp, t.sp, t.stack.base, t.stack.size, t.tsan_fiber, false);
}

// Back to the scheduler; returns when the scheduler picks this thread again.
void switch_out(Block& b, Thread& t, bool for_good) {
  switch_fiber(&t.sp, b.scheduler_sp, b.scheduler_stack, b.scheduler_stack_size, b.scheduler_fiber, for_good);
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
  t.sp = first_frame(stack, reinterpret_cast<void (*)(void*)>(&fiber_main), &t);
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

// Note [Dynamic shared memory]
// -----------------------------
// A launch's dynamic shared memory (extern __shared__) is a guarded block of
// exactly the launch's bytes (runtime.cpp, Note [Guard bytes]), filled with
// garbage before each block like the static variables; dynamic_shared()
// hands it to the kernel (SYNCFREE_DYNAMIC_SHARED in csrc/cuda/launch.h).
// A write past its end is reported with the kernel and block; under ASan so
// is a read.
void* running_dynamic_shared = nullptr;

void run_block(const char* kernel, uint3 block_idx, dim3 grid, dim3 block_dim, void* dynamic_shared,
               size_t dynamic_bytes, const std::function<void()>& body) {
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
  if (dynamic_bytes > 0) {
    fill_garbage(dynamic_shared, dynamic_bytes);
#if defined(CUDA_ON_CPU_TSAN)
    AnnotateNewMemory(__FILE__, __LINE__, dynamic_shared, dynamic_bytes);
#endif
  }
  running_dynamic_shared = dynamic_shared;
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

void* dynamic_shared() { return running_dynamic_shared; }

[[noreturn]] void fail_in_thread(const std::string& what) {
  if (current_thread == nullptr) fail_outside_kernel(what.c_str());
  fail_in_kernel(where(*current_block, *current_thread) + " " + what);
}

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

void run_grid(const char* name, dim3 grid, dim3 block, void* dynamic_shared, size_t dynamic_bytes,
              const std::function<void()>& body) {
  const FaultHandlers faults;
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order(blocks);
  for (uint64_t i = 0; i < blocks; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng());
#if defined(CUDA_ON_CPU_TSAN)
  __tsan_release(&launch_token);
#endif
  for (const uint64_t i : order) {
    const uint3 idx{unsigned(i % grid.x), unsigned(i / grid.x % grid.y), unsigned(i / (uint64_t(grid.x) * grid.y))};
    run_block(name, idx, grid, block, dynamic_shared, dynamic_bytes, body);
    check_guards([&] {
      return std::string(name) + " block (" + std::to_string(idx.x) + "," + std::to_string(idx.y) + "," +
             std::to_string(idx.z) + ")";
    });
  }
#if defined(CUDA_ON_CPU_TSAN)
  __tsan_acquire(&grid_token);
#endif
}

void begin_schedule(uint64_t seed) { rng().seed(seed); }

void garbage_fill(void* p, size_t bytes) { fill_garbage(p, bytes); }

bool in_kernel() { return current_thread != nullptr; }

}  // namespace cuda_on_cpu
