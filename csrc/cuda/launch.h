// The one way the CUDA kernels are launched. Under nvcc: a <<<>>> launch on
// the given stream and its launch check. Compiled as C++ by the CPU execution
// layer (tests/cuda_on_cpu, its README), the layer's launch, which validates
// the configuration against nvcc's resource report and runs the grid on the host.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

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

}  // namespace syncfree
