// The CUDA surface that syncfree's kernels use, for g++: force-included
// (-include) before csrc/cuda/*.cu when they are compiled as C++ to run on the
// host. See README.md beside this file for what is modelled and what is not.
//
// Every CUDA thread of a block is a fiber on the calling OS thread. Fibers
// switch only at barriers, warp intrinsics and (sometimes) atomics; which one
// resumes is chosen by a seeded random number generator (blocks.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>

// ---------------------------------------------------------------------------
// Qualifiers

#define __host__
#define __device__
#define __global__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
// The bound is read from nvcc's PTX (.maxntid) and checked at each launch.
#define __launch_bounds__(...)
// One instance per process, shared by the fibers of the running block, in a
// section the runtime fills with garbage before each block (See Note [Shared
// memory] in blocks.cpp). g++ ignores a section attribute on a static in a
// function template, so the variables are marked by an alignment nothing else
// uses instead, and build.py moves their sections (-fdata-sections gives each
// its own) into that one.
#define CUDA_ON_CPU_SHARED_ALIGN 8192
#define __shared__ static __attribute__((aligned(CUDA_ON_CPU_SHARED_ALIGN)))
#define __constant__ static

// ---------------------------------------------------------------------------
// Types of the runtime API

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(8) float2 {
  float x, y;
};

using cudaStream_t = struct CUstream_st*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 719 };
enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2
};
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
// The field of cudaFuncAttributes the launchers read (from nvcc's resource report).
struct cudaFuncAttributes {
  size_t sharedSizeBytes;
};

constexpr int warpSize = 32;

namespace cuda_on_cpu {

// What a running thread sees of itself (threadIdx, blockIdx, ...).
struct ThreadView {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
// Null outside a kernel.
extern thread_local const ThreadView* current_view;

[[noreturn]] void fail_outside_kernel(const char* what);
inline const ThreadView& view(const char* what) {
  if (current_view == nullptr) fail_outside_kernel(what);
  return *current_view;
}

// Synchronisation points, in blocks.cpp.
void syncthreads(const char* file, int line);
enum class WarpOpKind : int { kSyncwarp, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll };
uint64_t warp_op(WarpOpKind kind, unsigned mask, uint64_t value, int param, int width, const char* file, int line);
void maybe_yield();  // at atomics: sometimes let another thread run first
// The running block's dynamic shared memory (extern __shared__; See Note
// [Dynamic shared memory] in blocks.cpp); null where the launch asked for none.
void* dynamic_shared();
void threadfence();

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp intrinsics move at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof v);
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// Launches (runtime.cpp): the configuration is validated against the kernel's
// nvcc resource report, then the grid runs now, or is recorded when the
// stream is being captured.
void launch(const char* name, dim3 grid, dim3 block, size_t dynamic_shared, cudaStream_t stream,
            size_t param_bytes, std::function<void()> thread_body);

template <auto K>
struct KernelTag {};
// "ns::kernel<T, ...>" from the demangled name of KernelTag<&kernel>.
std::string kernel_name_from_tag(const char* mangled_tag);

template <auto K>
const char* kernel_name() {
  static const std::string name = kernel_name_from_tag(typeid(KernelTag<K>).name());
  return name.c_str();
}

}  // namespace cuda_on_cpu

#define threadIdx (::cuda_on_cpu::view("threadIdx").thread_idx)
#define blockIdx (::cuda_on_cpu::view("blockIdx").block_idx)
#define blockDim (::cuda_on_cpu::view("blockDim").block_dim)
#define gridDim (::cuda_on_cpu::view("gridDim").grid_dim)

// The layer's half of syncfree::launch_kernel (csrc/cuda/launch.h).
template <auto K, typename... Args>
void cuda_on_cpu_launch(dim3 grid, dim3 block, size_t dynamic_shared, cudaStream_t stream, const Args&... args) {
  static_assert((std::is_trivially_copyable_v<Args> && ...), "kernel arguments must be trivially copyable");
  // Each thread gets its own copy of the parameters, as from constant memory.
  ::cuda_on_cpu::launch(::cuda_on_cpu::kernel_name<K>(), grid, block, dynamic_shared, stream,
                        (sizeof(Args) + ... + 0),
                        [params = std::make_tuple(args...)]() { std::apply(K, params); });
}

// ---------------------------------------------------------------------------
// Intrinsics

#define __syncthreads() ::cuda_on_cpu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) \
  ((void)::cuda_on_cpu::warp_op(::cuda_on_cpu::WarpOpKind::kSyncwarp, ::cuda_on_cpu::syncwarp_mask(__VA_ARGS__), 0, 0, 32, __FILE__, __LINE__))
#define __shfl_sync(mask, v, src, ...) \
  ::cuda_on_cpu::shfl(::cuda_on_cpu::WarpOpKind::kShflIdx, mask, v, src, __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) \
  ::cuda_on_cpu::shfl(::cuda_on_cpu::WarpOpKind::kShflUp, mask, v, d, __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) \
  ::cuda_on_cpu::shfl(::cuda_on_cpu::WarpOpKind::kShflDown, mask, v, d, __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_xor_sync(mask, v, m, ...) \
  ::cuda_on_cpu::shfl(::cuda_on_cpu::WarpOpKind::kShflXor, mask, v, m, __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __ballot_sync(mask, pred) \
  unsigned(::cuda_on_cpu::warp_op(::cuda_on_cpu::WarpOpKind::kBallot, mask, (pred) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, pred) \
  int(::cuda_on_cpu::warp_op(::cuda_on_cpu::WarpOpKind::kAny, mask, (pred) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __all_sync(mask, pred) \
  int(::cuda_on_cpu::warp_op(::cuda_on_cpu::WarpOpKind::kAll, mask, (pred) ? 1 : 0, 0, 32, __FILE__, __LINE__))

namespace cuda_on_cpu {

inline unsigned syncwarp_mask() { return 0xffffffffu; }
inline unsigned syncwarp_mask(unsigned mask) { return mask; }

template <typename T>
T shfl(WarpOpKind kind, unsigned mask, T v, int param, const char* file, int line, int width = 32) {
  return from_bits<T>(warp_op(kind, mask, to_bits(v), param, width, file, line));
}

// Atomics act at once (one OS thread runs every fiber); the __atomic
// builtins make them visible as atomics to ThreadSanitizer.
template <typename T>
T atomic_add(T* p, T v) {
  maybe_yield();
  if constexpr (std::is_floating_point_v<T>) {
    T old;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    for (;;) {
      T desired = old + v;
      if (__atomic_compare_exchange(p, &old, &desired, false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) return old;
    }
  } else {
    return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
  }
}

// atomicMax (kMax) or atomicMin: stores v where it beats the old value.
template <bool kMax, typename T>
T atomic_extreme(T* p, T v) {
  maybe_yield();
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while ((kMax ? old < v : v < old) &&
         !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
  }
  return old;
}

}  // namespace cuda_on_cpu

inline int atomicAdd(int* p, int v) { return cuda_on_cpu::atomic_add(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return cuda_on_cpu::atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return cuda_on_cpu::atomic_add(p, v);
}
inline float atomicAdd(float* p, float v) { return cuda_on_cpu::atomic_add(p, v); }
inline double atomicAdd(double* p, double v) { return cuda_on_cpu::atomic_add(p, v); }
inline int atomicMax(int* p, int v) { return cuda_on_cpu::atomic_extreme<true>(p, v); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return cuda_on_cpu::atomic_extreme<true>(p, v); }
inline long long atomicMax(long long* p, long long v) { return cuda_on_cpu::atomic_extreme<true>(p, v); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  return cuda_on_cpu::atomic_extreme<true>(p, v);
}
inline int atomicMin(int* p, int v) { return cuda_on_cpu::atomic_extreme<false>(p, v); }
inline unsigned atomicMin(unsigned* p, unsigned v) { return cuda_on_cpu::atomic_extreme<false>(p, v); }
inline long long atomicMin(long long* p, long long v) { return cuda_on_cpu::atomic_extreme<false>(p, v); }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  return cuda_on_cpu::atomic_extreme<false>(p, v);
}
template <typename T>
T atomicExch(T* p, T v) {
  cuda_on_cpu::maybe_yield();
  return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);
}
template <typename T>
T atomicCAS(T* p, T expected, T desired) {
  cuda_on_cpu::maybe_yield();
  __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
  return expected;
}
template <typename T>
T atomicOr(T* p, T v) {
  cuda_on_cpu::maybe_yield();
  return __atomic_fetch_or(p, v, __ATOMIC_ACQ_REL);
}
template <typename T>
T atomicAnd(T* p, T v) {
  cuda_on_cpu::maybe_yield();
  return __atomic_fetch_and(p, v, __ATOMIC_ACQ_REL);
}

inline void __threadfence() { cuda_on_cpu::threadfence(); }
inline void __threadfence_block() { cuda_on_cpu::threadfence(); }

// Cache-hinted loads are plain loads here, whose alignment is checked at the
// caller's line (Note [Alignment] in faults.cpp).
namespace cuda_on_cpu {
[[noreturn]] void misaligned(const void* p, size_t alignment, const char* type, const char* file, int line);
template <typename T>
inline T hinted_load(const T* p, const std::source_location& at) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0)
    misaligned(p, alignof(T), typeid(T).name(), at.file_name(), int(at.line()));
  return *p;
}
}  // namespace cuda_on_cpu
template <typename T>
inline T __ldg(const T* p, const std::source_location& at = std::source_location::current()) {
  return cuda_on_cpu::hinted_load(p, at);
}
template <typename T>
inline T __ldcg(const T* p, const std::source_location& at = std::source_location::current()) {
  return cuda_on_cpu::hinted_load(p, at);
}
template <typename T>
inline T __ldca(const T* p, const std::source_location& at = std::source_location::current()) {
  return cuda_on_cpu::hinted_load(p, at);
}
template <typename T>
inline T __ldcs(const T* p, const std::source_location& at = std::source_location::current()) {
  return cuda_on_cpu::hinted_load(p, at);
}

inline unsigned __float_as_uint(float x) { return cuda_on_cpu::from_bits<unsigned>(cuda_on_cpu::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return cuda_on_cpu::from_bits<float>(cuda_on_cpu::to_bits(x)); }
inline int __float_as_int(float x) { return cuda_on_cpu::from_bits<int>(cuda_on_cpu::to_bits(x)); }
inline float __int_as_float(int x) { return cuda_on_cpu::from_bits<float>(cuda_on_cpu::to_bits(x)); }
inline float __fmaf_rn(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }

// ---------------------------------------------------------------------------
// Runtime API calls the launchers make (runtime.cpp)

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream);
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cuda_on_cpu_func_set_attribute(const char* kernel, cudaFuncAttribute attr, int value);
#define cudaFuncSetAttribute(kernel, attr, value) \
  cuda_on_cpu_func_set_attribute(::cuda_on_cpu::kernel_name<kernel>(), attr, value)
cudaError_t cuda_on_cpu_func_get_attributes(cudaFuncAttributes* attributes, const char* kernel);
#define cudaFuncGetAttributes(attributes, kernel) \
  cuda_on_cpu_func_get_attributes(attributes, ::cuda_on_cpu::kernel_name<kernel>())
