// The one way the CUDA kernels are launched. Under nvcc: a <<<>>> launch on
// the given stream and its launch check. Compiled as C++ by the CPU execution
// layer (tests/cuda_on_cpu, its README), the layer's launch, which validates
// the configuration against nvcc's resource report and runs the grid on the host.
#pragma once

#include <c10/cuda/CUDAException.h>

namespace syncfree {

// The device's SM count, cached (sample_cuda.cu); the launch plans take it.
int sm_count(c10::DeviceIndex device);

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
