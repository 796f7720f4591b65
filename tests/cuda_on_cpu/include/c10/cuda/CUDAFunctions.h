// Stand-in (tests/cuda_on_cpu): one emulated device.
#pragma once
#include <c10/core/Device.h>

namespace c10::cuda {
c10::DeviceIndex device_count() noexcept;
}  // namespace c10::cuda
