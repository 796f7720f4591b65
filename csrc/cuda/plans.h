// Launch plans of the CUDA kernels: pure functions of a call's shape and the
// device's SM count, shared by the launchers and the tests (tests/cpp checks
// them; tests/cuda_on_cpu runs the kernels with them on the host), so the
// configuration under test is the one the GPU runs. No CUDA types here.
#pragma once

#include "../core/select.h"
#include "../core/tiling.h"

namespace syncfree {

// The sampling kernel (sample_cuda.cu): one block of kSampleThreads per
// (row, chunk). A row is cut into chunks when the batch is too small to fill
// the device, so that many SMs share it; the merging block reads one partial
// per thread, hence at most kSampleThreads chunks.
constexpr int kSampleThreads = 512;
// Blocks wanted per SM when splitting rows: two 512-thread blocks fit an SM
// at 64 registers a thread.
constexpr int kSampleBlocksPerSm = 2;
// Kernels compiled with processing (mask, bias, penalties: the exception
// lookups) need more than 64 registers; held to 64 they spill to local
// memory in the hot loop, which costs more than the occupancy. They are
// planned and launch-bounded for one block per SM.
constexpr int kProcessBlocksPerSm = 1;

// The resident blocks per SM a kernel's grid is sized for, and the minimum
// its __launch_bounds__ asks of ptxas: the two agree by construction, and
// tests/test_compiled_code.py checks the compiled code keeps them.
constexpr int blocks_per_sm(bool process) { return process ? kProcessBlocksPerSm : kSampleBlocksPerSm; }
// Rows are split only into chunks of at least one group per thread.
constexpr int64_t kSampleMinChunk = int64_t(kSampleThreads) * kGroup;

struct SamplePlan {
  RowSplit split;
  int64_t blocks;        // rows * split.splits, on the grid's x
  int64_t partial_rows;  // workspace: one RacePartial per block of a split row (0 unsplit)
};

inline SamplePlan plan_sample(int64_t rows, int64_t vocab, int sm_count, bool process = false) {
  const int64_t fill = ceil_div(int64_t(sm_count) * blocks_per_sm(process), rows < 1 ? 1 : rows);
  SamplePlan plan;
  plan.split = split_row(vocab, fill < kSampleThreads ? fill : kSampleThreads, kSampleMinChunk);
  plan.blocks = rows * plan.split.splits;
  plan.partial_rows = plan.split.splits > 1 ? plan.blocks : 0;
  return plan;
}

// The warpers' selection (warpers_cuda.cu, Note [Selection passes on CUDA]):
// the scan, mass and compaction kernels cut a row into chunks like the
// sampling kernel (one block of kSelectThreads per chunk; each block's
// histogram is added into the row's global one, so any number of chunks);
// the finishing kernel takes one block per row.
constexpr int kSelectThreads = 512;
constexpr int64_t kSelectMinChunk = int64_t(kSelectThreads) * kGroup;
// A merging block reads one partial per thread (the logprob stage's raw mass).
constexpr int kSelectMaxSplits = kSelectThreads;
// The candidate buffer of a row: kCandidateCap entries, fewer at large
// batches so that the buffers of a call stay within kCandidateBudget entries
// (8 bytes each), never fewer than kCandidateFloor nor more than the vocabulary.
constexpr int64_t kCandidateCap = 4096;
constexpr int64_t kCandidateFloor = 256;
constexpr int64_t kCandidateBudget = int64_t(1) << 22;

struct SelectPlan {
  RowSplit split;
  int64_t blocks;      // rows * split.splits, on the grid's x
  int64_t candidates;  // buffer entries per row
};

inline SelectPlan plan_select(int64_t rows, int64_t vocab, int sm_count, bool process = false) {
  const int64_t r = rows < 1 ? 1 : rows;
  const int64_t fill = ceil_div(int64_t(sm_count) * blocks_per_sm(process), r);
  SelectPlan plan;
  plan.split = split_row(vocab, fill < kSelectMaxSplits ? fill : kSelectMaxSplits, kSelectMinChunk);
  plan.blocks = rows * plan.split.splits;
  const int64_t share = kCandidateBudget / r;
  plan.candidates = share > kCandidateCap ? kCandidateCap : (share < kCandidateFloor ? kCandidateFloor : share);
  if (plan.candidates > vocab) plan.candidates = vocab < 1 ? 1 : vocab;  // a row never has more
  return plan;
}

// What the scan, mass and compaction kernels decide for one row of scaled
// logits y, on the host (for the napkin model and its tests): the mode after
// them and the number of candidates (0 unless kSelectCompact).
struct SelectCandidates {
  SelectMode mode;
  int64_t count;
};

inline SelectCandidates select_candidates(const float* y, int64_t vocab, const Warpers& w) {
  SelectScratch scratch;
  const FirstSelection f = first_selection(y, vocab, w, scratch);
  int64_t count = 0;
  if (f.mode == kSelectCompact)
    for (int64_t i = 0; i < vocab; ++i) count += is_candidate(y[i], key_floor(f.first.prefix)) ? 1 : 0;
  return {f.mode, count};
}

// The napkin model of a warped row (bench_warpers.py prints it): full reads
// of the row and kernel launches, for a row whose candidates fit the buffer
// or not. The launches are the same for every row of a call: the state
// memset, scan, mass, compaction, finishing and sampling kernels.
struct SelectNapkin {
  int full_reads;
  int launches;
};

inline SelectNapkin napkin_select(const Warpers& w, bool fits) {
  constexpr int kLaunches = 6;
  if (!any_warper(w)) return {1, 1};  // the sampling kernel alone
  const SelectMode mode = mode_after_scan(w, true);
  int reads = 1;                                        // scan
  if (mode == kSelectTopPHist) reads += 1;              // mass
  if (mode != kSelectFullRow) reads += 1;               // compaction
  if (mode != kSelectFullRow && fits) return {reads, kLaunches};  // the rest reads the candidates
  // The finishing kernel over the row: 3 radix passes per selection, one sum
  // pass before top-p (unless the mass kernel took it) and before
  // typical-p; then the sampling kernel's read.
  if (w.top_k > 0) reads += 3;
  if (w.top_p < 1.0f) reads += (mode == kSelectTopPHist ? 0 : 1) + 3;
  if (w.typical_p < 1.0f) reads += 1 + 3;
  return {reads + 1, kLaunches};
}

// The verify positions kernel (verify_cuda.cu, Note [A node's row on chip]):
// one block of kSelectThreads per node, which keeps the raw input of the
// row's first `kept_groups` full groups in dynamic shared memory between its
// two passes. `shared_limit`: the dynamic shared memory a block may use (the
// device's opt-in maximum less the kernel's static shared memory).
struct PositionsPlan {
  int64_t kept_groups;
  int64_t shared_bytes;  // the launch's dynamic shared memory
};

inline PositionsPlan plan_positions(int64_t vocab, int64_t element_bytes, int64_t shared_limit) {
  const int64_t group_bytes = kGroup * element_bytes;
  const int64_t fit = shared_limit > 0 ? shared_limit / group_bytes : 0;
  const int64_t full = vocab / kGroup;  // the tail group is read twice (scalar loads)
  const int64_t kept = fit < full ? fit : full;
  return {kept, kept * group_bytes};
}

// Full reads of a node's row by the positions kernel: once, plus the groups
// past the kept ones a second time (the napkin model, bench_verify.py).
inline double napkin_positions_reads(int64_t vocab, const PositionsPlan& plan) {
  const int64_t groups = ceil_div(vocab, kGroup);
  return groups > 0 ? 2.0 - double(plan.kept_groups) / double(groups) : 0.0;
}

}  // namespace syncfree
