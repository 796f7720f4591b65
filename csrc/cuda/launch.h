// The one way the CUDA kernels are launched. Under nvcc: a <<<>>> launch on
// the given stream and its launch check. Compiled as C++ by the CPU execution
// layer (tests/cuda_on_cpu, its README), the layer's launch, which validates
// the configuration against nvcc's resource report and runs the grid on the host.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <mutex>
#include <utility>
#include <vector>

namespace syncfree {

// The device's SM count, cached (sample_cuda.cu); the launch plans take it.
int sm_count(c10::DeviceIndex device);

// f(T{}) for the element type T of a CUDA input (float, half, bfloat16).
template <typename F>
void dispatch_dtype(c10::ScalarType dtype, F&& f) {
  switch (dtype) {
    case c10::ScalarType::Float:
      return f(float{});
    case c10::ScalarType::Half:
      return f(c10::Half{});
    case c10::ScalarType::BFloat16:
      return f(c10::BFloat16{});
    default:
      TORCH_CHECK(false, "syncfree: unsupported dtype ", dtype, " on CUDA");
  }
}

template <auto kKernel, typename... Args>
void launch_kernel(dim3 grid, dim3 block, size_t dynamic_shared, cudaStream_t stream, const Args&... args) {
#if defined(__CUDACC__)
  kKernel<<<grid, block, dynamic_shared, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#else
  cuda_on_cpu_launch<kKernel>(grid, block, dynamic_shared, stream, args...);
#endif
}

// The dynamic shared memory kKernel may use on `device` (the device's opt-in
// maximum less the kernel's static shared memory), opted into once per device
// (and opt-in maximum: the CPU layer's tests change it) so that launches may
// ask for more than the default 48 KiB.
template <auto kKernel>
int64_t dynamic_shared_limit(c10::DeviceIndex device) {
  int opt_in = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&opt_in, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  static std::mutex mutex;
  static std::vector<std::pair<int, int64_t>> limits;  // per device: the opt-in maximum, the limit
  std::lock_guard<std::mutex> lock(mutex);
  if (limits.size() <= size_t(device)) limits.resize(size_t(device) + 1, {-1, 0});
  auto& [seen, limit] = limits[size_t(device)];
  if (seen != opt_in) {
    cudaFuncAttributes attributes{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kKernel));
    const int64_t bytes = int64_t(opt_in) - int64_t(attributes.sharedSizeBytes);
    if (bytes > 0)
      C10_CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    seen = opt_in;
    limit = bytes > 0 ? bytes : 0;
  }
  return limit;
}

}  // namespace syncfree

// A kernel's dynamic shared memory (the launch's third argument) as an array
// of `type`, 16-byte aligned.
#if defined(__CUDACC__)
#define SYNCFREE_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#else
#define SYNCFREE_DYNAMIC_SHARED(type, name) type* const name = static_cast<type*>(::cuda_on_cpu::dynamic_shared())
#endif
