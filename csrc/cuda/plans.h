// Launch plans of the CUDA kernels: pure functions of a call's shape and the
// device's SM count, shared by the launchers and the tests (tests/cpp checks
// them; tests/cuda_on_cpu runs the kernels with them on the host), so the
// configuration under test is the one the GPU runs. No CUDA types here.
#pragma once

#include "../core/tiling.h"

namespace syncfree {

// The sampling kernel (sample_cuda.cu): one block of kSampleThreads per
// (row, chunk). A row is cut into chunks when the batch is too small to fill
// the device, so that many SMs share it; the merging block reads one partial
// per thread, hence at most kSampleThreads chunks.
constexpr int kSampleThreads = 512;
// Blocks wanted per SM when splitting rows (~60 registers a thread: two
// 512-thread blocks fit an SM).
constexpr int kSampleBlocksPerSm = 2;
// Rows are split only into chunks of at least one group per thread.
constexpr int64_t kSampleMinChunk = int64_t(kSampleThreads) * kGroup;

struct SamplePlan {
  RowSplit split;
  int64_t blocks;        // rows * split.splits, on the grid's x
  int64_t partial_rows;  // workspace: one RacePartial per block of a split row (0 unsplit)
};

inline SamplePlan plan_sample(int64_t rows, int64_t vocab, int sm_count) {
  const int64_t fill = ceil_div(int64_t(sm_count) * kSampleBlocksPerSm, rows < 1 ? 1 : rows);
  SamplePlan plan;
  plan.split = split_row(vocab, fill < kSampleThreads ? fill : kSampleThreads, kSampleMinChunk);
  plan.blocks = rows * plan.split.splits;
  plan.partial_rows = plan.split.splits > 1 ? plan.blocks : 0;
  return plan;
}

}  // namespace syncfree
