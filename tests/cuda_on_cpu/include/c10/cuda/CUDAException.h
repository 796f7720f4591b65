// Stand-in (tests/cuda_on_cpu): the runtime calls return codes as CUDA's do.
#pragma once
#include <c10/util/Exception.h>

#define C10_CUDA_CHECK(EXPR)                                                                 \
  do {                                                                                       \
    const cudaError_t cuda_on_cpu_error = (EXPR);                                            \
    TORCH_CHECK(cuda_on_cpu_error == cudaSuccess, "CUDA error: ", cudaGetErrorString(cuda_on_cpu_error)); \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
