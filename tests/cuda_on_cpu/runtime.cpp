// The CUDA execution layer's runtime around the blocks (blocks.cpp): launch
// validation against nvcc's resource report, a garbage-filling allocator,
// stream capture into replayable graphs, the generator stand-in and the
// runtime API the launchers call. See README.md beside this file.
#include "runtime.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/core/CPUAllocator.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cxxabi.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>

namespace cuda_on_cpu {

Settings settings;
std::vector<LaunchRecord> launch_log;
std::map<std::string, KernelResources> kernel_resources;

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
  TORCH_CHECK(uint64_t(r.static_shared) + dynamic_shared <= std::min<uint64_t>(limit, uint64_t(settings.shared_opt_in)),
              "cuda_on_cpu: launch of ", name, ": ", r.static_shared, " bytes of static and ", dynamic_shared,
              " bytes of dynamic shared memory exceed the ", limit, " bytes a block may use");
}


}  // namespace

// Runs a grid with `dynamic_shared` bytes of dynamic shared memory (below).
void run_with_shared(const char* name, dim3 grid, dim3 block, size_t dynamic_shared,
                     const std::function<void()>& body);

void launch(const char* name, dim3 grid, dim3 block, size_t dynamic_shared, cudaStream_t stream,
            size_t param_bytes, std::function<void()> thread_body) {
  TORCH_CHECK(!in_kernel(), "cuda_on_cpu: launch of ", name, " from device code");
  validate(name, grid, block, dynamic_shared, param_bytes);
  launch_log.push_back({name, grid.x, grid.y, grid.z, block.x * block.y * block.z, dynamic_shared,
                        is_capturing(stream)});
  if (is_capturing(stream)) {
    capturing->ops.push_back([name, grid, block, dynamic_shared, body = std::move(thread_body)] {
      run_with_shared(name, grid, block, dynamic_shared, body);
    });
    return;
  }
  run_with_shared(name, grid, block, dynamic_shared, thread_body);
}


// ---------------------------------------------------------------------------
// Memory

// Note [Guard bytes]
// ------------------
// A kernel that reads or writes past its workspace touches the next block on a
// GPU, and may go unnoticed; here it would corrupt the heap and crash later,
// far from the cause. So every caching-allocator block and every tensor
// allocated while emulating (the ops' outputs: device memory in this model)
// has a mapping of its own: its size rounded up to 256 bytes (the caching
// allocator's alignment) ends on a page boundary, with kFenceBefore and
// kFenceAfter bytes of PROT_NONE around the pages. An access that reaches a
// fence faults (Note [Illegal addresses] in faults.cpp), a read as well as a
// write; a write into the slack between the block and a fence (the rest of its
// first page, the rounding at its end) overwrites guard bytes, checked after
// every block of every launch and after every memset, and is reported with the
// kernel and block that made it. Under AddressSanitizer the blocks are
// exact-size heap blocks instead, and ASan sees the first byte past the end.
namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kFenced = false;
#else
constexpr bool kFenced = true;
#endif
constexpr size_t kAlign = 256;
constexpr size_t kFenceBefore = size_t(64) << 10;
constexpr size_t kFenceAfter = size_t(1) << 20;  // a missing row guard writes rows × row bytes past the end
constexpr unsigned char kGuardByte = 0xA7;

struct Allocation {
  size_t bytes;
  bool in_graph = false;  // allocated or freed while a capture was recorded (device blocks)
  bool host = false;      // a tensor allocated while emulating
};
std::map<void*, Allocation>& allocations() {
  static std::map<void*, Allocation> live;
  return live;
}
std::mutex& allocations_mutex() {  // torch may free host tensors on its worker threads
  static std::mutex m;
  return m;
}

size_t round_up(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }
size_t page_bytes(size_t bytes) {  // the readable, writable pages of a block of `bytes`
  static const size_t page = size_t(sysconf(_SC_PAGESIZE));
  return round_up(round_up(bytes, kAlign), page);
}
// The first byte of a block's pages; the block ends kAlign-rounded at their end.
unsigned char* first_page(void* p, size_t bytes) {
  return static_cast<unsigned char*>(p) + round_up(bytes, kAlign) - page_bytes(bytes);
}

void* guarded_alloc(size_t bytes, bool host) {
  void* p = nullptr;
  if (kFenced) {
    const size_t pages = page_bytes(bytes);
    void* base = mmap(nullptr, kFenceBefore + pages + kFenceAfter, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TORCH_CHECK(base != MAP_FAILED, "cuda_on_cpu: out of memory (mmap of ", bytes, " bytes)");
    auto* first = static_cast<unsigned char*>(base) + kFenceBefore;
    TORCH_CHECK(mprotect(first, pages, PROT_READ | PROT_WRITE) == 0, "cuda_on_cpu: mprotect failed");
    auto* block = first + pages - round_up(bytes, kAlign);
    std::memset(first, kGuardByte, size_t(block - first));
    std::memset(block + bytes, kGuardByte, round_up(bytes, kAlign) - bytes);
    p = block;
  } else {
    TORCH_CHECK(posix_memalign(&p, kAlign, bytes) == 0, "cuda_on_cpu: out of memory");
  }
  garbage_fill(p, bytes);
  const std::lock_guard<std::mutex> lock(allocations_mutex());
  allocations()[p] = {bytes, !host && capturing != nullptr, host};
  return p;
}

void guarded_free(void* p, size_t bytes) {
  if (!kFenced) return std::free(p);
  munmap(first_page(p, bytes) - kFenceBefore, kFenceBefore + page_bytes(bytes) + kFenceAfter);
}

void release(void* p) {
  if (p == nullptr) return;
  const std::lock_guard<std::mutex> lock(allocations_mutex());
  auto& live = allocations();
  const auto it = live.find(p);
  TORCH_CHECK(it != live.end(), "cuda_on_cpu: free of memory the allocator did not hand out");
  if (capturing != nullptr && !it->second.host) {  // the graph's pool keeps it until the graph goes
    it->second.in_graph = true;
    capturing->deferred_frees.push_back(p);
    return;
  }
  const size_t bytes = it->second.bytes;
  live.erase(it);
  guarded_free(p, bytes);
}

struct Allocator final : c10::Allocator {
  c10::DataPtr allocate(size_t bytes) override {
    void* p = bytes > 0 ? guarded_alloc(bytes, false) : nullptr;
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

// torch's CPU allocator while emulating: fresh CPU tensors (the ops' outputs
// and converted parameters, device memory in this model) hold garbage, as a
// GPU's fresh allocations do.
struct HostGarbageAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t bytes) override {
    void* p = bytes > 0 ? guarded_alloc(bytes, true) : nullptr;
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

// The first byte of [p, p + n) that is not a guard byte, or -1.
int64_t first_overwritten(const unsigned char* p, size_t n) {
  static const std::vector<unsigned char> guard(size_t(64) << 10, kGuardByte);
  if (n <= guard.size() && std::memcmp(p, guard.data(), n) == 0) return -1;  // the common case, quickly
  for (size_t i = 0; i < n; ++i)
    if (p[i] != kGuardByte) return int64_t(i);
  return -1;
}

}  // namespace

// Runs a grid with its dynamic shared memory: a guarded block of its own (Note
// [Guard bytes]), so that a kernel indexing past the launch's bytes is caught.
void run_with_shared(const char* name, dim3 grid, dim3 block, size_t dynamic_shared,
                     const std::function<void()>& body) {
  void* shared = dynamic_shared > 0 ? guarded_alloc(dynamic_shared, false) : nullptr;
  struct Release {
    void* p;
    ~Release() { release(p); }
  } release_shared{shared};
  run_grid(name, grid, block, shared, dynamic_shared, body);
}

void check_guards(const std::function<std::string()>& writer) {
  if (!kFenced) return;
  const std::lock_guard<std::mutex> lock(allocations_mutex());
  for (auto& [ptr, a] : allocations()) {
    auto* p = static_cast<unsigned char*>(ptr);
    unsigned char* first = first_page(ptr, a.bytes);
    const size_t head = size_t(p - first), tail = round_up(a.bytes, kAlign) - a.bytes;
    const int64_t after = first_overwritten(p + a.bytes, tail);
    int64_t before = first_overwritten(first, head);
    if (after < 0 && before < 0) continue;
    if (before >= 0) before = int64_t(head) - before;  // bytes before the start
    std::memset(first, kGuardByte, head);  // one report a write
    std::memset(p + a.bytes, kGuardByte, tail);
    TORCH_CHECK(false, "cuda_on_cpu: ", writer(), " wrote out of bounds of a ", a.bytes, "-byte ",
                a.host ? "tensor allocated while emulating" : "caching-allocator block", " (", ptr, "): ",
                after >= 0 ? "byte " + std::to_string(after) + " past its end"
                           : "byte " + std::to_string(before) + " before its start");
  }
}

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
  const std::lock_guard<std::mutex> lock(allocations_mutex());
  for (const auto& [p, a] : allocations())
    if (!a.in_graph && !a.host) out.push_back({p, a.bytes});
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
  {
    const std::lock_guard<std::mutex> lock(allocations_mutex());
    for (void* p : graph->deferred_frees) {
      const auto it = allocations().find(p);
      const size_t bytes = it->second.bytes;
      allocations().erase(it);
      guarded_free(p, bytes);
    }
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
  const auto run = [=] {
    std::memset(ptr, value, bytes);
    cuda_on_cpu::check_guards([] { return std::string("cudaMemsetAsync"); });
  };
  if (cuda_on_cpu::is_capturing(stream)) {
    capturing->ops.push_back(run);
  } else {
    run();
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
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = cuda_on_cpu::settings.shared_opt_in; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

cudaError_t cuda_on_cpu_func_get_attributes(cudaFuncAttributes* attributes, const char* kernel) {
  using cuda_on_cpu::kernel_resources;
  const auto it = kernel_resources.find(kernel);
  if (it == kernel_resources.end()) {
    if (cuda_on_cpu::settings.require_resources || !kernel_resources.empty()) return cudaErrorInvalidValue;
    *attributes = {0u};  // no report loaded: nothing static
    return cudaSuccess;
  }
  *attributes = {size_t(it->second.static_shared)};
  return cudaSuccess;
}

// As CUDA: the opt-in covers dynamic shared memory, within the block's maximum less the static.
cudaError_t cuda_on_cpu_func_set_attribute(const char* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0) return cudaErrorInvalidValue;
  const auto it = cuda_on_cpu::kernel_resources.find(kernel);
  const int static_shared = it != cuda_on_cpu::kernel_resources.end() ? it->second.static_shared : 0;
  if (value > cuda_on_cpu::settings.shared_opt_in - static_shared) return cudaErrorInvalidValue;
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
