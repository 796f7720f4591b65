// The runtime's interface to the test driver (module.cpp): settings, the
// nvcc resource report, the launch log, graphs, memory and generators.
#pragma once

#include "cuda_on_cpu.h"

#include <ATen/core/Generator.h>

#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace at {
struct CUDAGeneratorImpl;
}

namespace cuda_on_cpu {

struct Settings {
  int sm_count = 132;                // an H100 SXM
  int yield_one_in = 4;              // at an atomic, let another thread run first one time in N (0: never)
  size_t stack_bytes = 128 << 10;    // a fiber's stack
  bool require_resources = false;    // refuse launches without an nvcc resource report
  std::map<std::string, int> max_dynamic_shared;  // cudaFuncSetAttribute opt-ins
  int shared_opt_in = 227 << 10;     // a block's most shared memory, opted in (an H100)
};
extern Settings settings;

// One kernel's figures from nvcc: ptxas registers and static shared memory,
// and __launch_bounds__ (.maxntid; 0 if none).
struct KernelResources {
  int registers = 0;
  int static_shared = 0;
  int max_threads = 0;
};
extern std::map<std::string, KernelResources> kernel_resources;

struct LaunchRecord {
  std::string kernel;
  unsigned grid_x, grid_y, grid_z, threads;
  size_t dynamic_shared;
  bool captured;
};
extern std::vector<LaunchRecord> launch_log;

// Seeds the scheduler: block order, which thread resumes, garbage patterns.
void begin_schedule(uint64_t seed);

// Between blocks.cpp and runtime.cpp: runs every block of a grid now; fills
// memory with the garbage patterns; whether a kernel is running.
// `dynamic_shared`: the launch's dynamic shared memory, `dynamic_bytes` of it.
void run_grid(const char* name, dim3 grid, dim3 block, void* dynamic_shared, size_t dynamic_bytes,
              const std::function<void()>& body);
void garbage_fill(void* p, size_t bytes);
bool in_kernel();
std::string normalize_kernel_name(std::string name);

// Fails the running CUDA thread with "<kernel> block (x,y,z) thread t (warp, lane) <what>" (blocks.cpp).
[[noreturn]] void fail_in_thread(const std::string& what);

// While alive (a grid runs), SIGSEGV and SIGBUS in a kernel are reported as
// illegal memory accesses (Note [Illegal addresses] in faults.cpp).
struct FaultHandlers {
  FaultHandlers();
  ~FaultHandlers();
  FaultHandlers(const FaultHandlers&) = delete;
  FaultHandlers& operator=(const FaultHandlers&) = delete;
  bool installed = false;
};

// Checks the guard bytes around every caching-allocator block and every tensor
// allocated while emulating (Note [Guard bytes] in runtime.cpp); `writer` names
// who wrote since the last check.
void check_guards(const std::function<std::string()>& writer);

// While on, torch's CPU allocator fills every fresh tensor with garbage.
void garbage_host_tensors(bool on);

// Live allocations of the caching-allocator stand-in, outside graphs.
std::vector<std::pair<const void*, size_t>> live_allocations();

// Stream capture: launches and memsets between begin and end are recorded,
// and run by each replay.
using GraphHandle = void*;
GraphHandle capture_begin();
void capture_end(GraphHandle graph);
void replay(GraphHandle graph);
void destroy_graph(GraphHandle graph);

// The CUDA generator a torch.Generator stands for (seed, offset).
at::CUDAGeneratorImpl* emulated_generator(const at::Generator& gen);
void forget_generators();

}  // namespace cuda_on_cpu
