// Stand-in (tests/cuda_on_cpu): one emulated device, nothing to switch.
#pragma once
#include <c10/core/Device.h>

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::DeviceIndex) {}
};
}  // namespace c10::cuda
