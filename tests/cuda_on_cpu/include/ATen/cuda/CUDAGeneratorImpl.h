// Stand-in for ATen's CUDA generator (tests/cuda_on_cpu). It hands out
// PhiloxCudaState as the real one does (See Note [CUDA Graph-safe RNG states]
// in ATen): by value when eager; under capture, pointers to a seed and an
// offset in device memory plus the offset within the graph, which a replay
// fills and then advances past the whole graph's increment.
//
// A torch.Generator (a CPU one, here) stands for a CUDA generator: its seed
// is the Philox seed, and the offset lives in this stand-in; manual_seed
// resets it (runtime.cpp, emulated_generator). The default CUDA generator is
// torch's default generator.
#pragma once
#include <ATen/core/Generator.h>
#include <ATen/cuda/PhiloxCudaState.h>

#include <mutex>

namespace at {

struct CUDAGeneratorImpl {
  std::mutex mutex_;
  PhiloxCudaState philox_cuda_state(uint64_t increment);

  uint64_t seed = 0;
  uint64_t offset = 0;
  int64_t seed_cell = 0;  // device memory that captured kernels read
  int64_t offset_cell = 0;
};

template <>
CUDAGeneratorImpl* get_generator_or_default<CUDAGeneratorImpl>(const std::optional<Generator>& gen,
                                                               const Generator& default_gen);

namespace cuda::detail {
const Generator& getDefaultCUDAGenerator(DeviceIndex device_index = -1);
}  // namespace cuda::detail

}  // namespace at
