// Stand-in (tests/cuda_on_cpu): the emulated device's current stream.
#pragma once
#include <c10/core/Device.h>

namespace c10::cuda {
class CUDAStream {
 public:
  explicit CUDAStream(cudaStream_t stream) : stream_(stream) {}
  cudaStream_t stream() const { return stream_; }
  operator cudaStream_t() const { return stream_; }

 private:
  cudaStream_t stream_;
};
CUDAStream getCurrentCUDAStream(c10::DeviceIndex device = -1);
}  // namespace c10::cuda
