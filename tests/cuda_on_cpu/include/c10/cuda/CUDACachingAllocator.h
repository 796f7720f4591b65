// Stand-in (tests/cuda_on_cpu): exact-size host allocations filled with
// garbage; frees during a capture wait until the graph is destroyed, as the
// graph's private pool keeps them.
#pragma once
#include <c10/core/Allocator.h>

namespace c10::cuda::CUDACachingAllocator {
c10::Allocator* get();
}  // namespace c10::cuda::CUDACachingAllocator
