// The CUDA side of logit processing: the rows' exception tables (Note
// [Processing in the pass] in core/adjust.h), built before the passes, and
// the logprob stage after the race (Note [Top-n logprobs] in core/logprobs.h).
//
// Note [Logprob stage on CUDA]
// ----------------------------
// After the sampling kernel has written each row's token and RowNorm (the
// log-normaliser of the distribution it sampled from), a state memset and
// up to four launches, the same for every row:
//   1. raw mass (rows x chunks, raw logprobs only): each block's log-sum-exp
//      of the unprocessed logits; the row's last block (a ticket) merges the
//      chunks in chunk order into the raw RowNorm.
//   2. scan (rows x chunks, top-n or ranks): every token's logprob as an
//      order key, counted into the first digit's histogram (the row's is the
//      sum of its blocks'); the last block picks the digit of the n-th key.
//      With ranks, each block also counts the keys at least the chosen
//      token's and adds its count to the row's (one atomic a block).
//   3. compact (rows x chunks, top-n only): the tokens from that bin up, as
//      in Note [Selection passes on CUDA], into the row's candidate buffer.
//   4. finish (one block per row): the n-th key by radix selection over the
//      candidates (over the row when they overflow the buffer), the keys above
//      it, and the lowest ids among those equal to it; sorted, written; the
//      chosen token's raw logprob, and its rank.
// Every decision is a function of (logprob key, id), so the ids are those of
// the CPU's insertion list.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../device_api.h"
#include "block_race.cuh"
#include "block_select.cuh"
#include "launch.h"
#include "plans.h"

namespace syncfree {
namespace {

// ---------------------------------------------------------------------------
// Exception tables

constexpr int kTableThreads = 256;

struct AtomicOps {
  __device__ void add(uint32_t* w, uint32_t v) const { atomicAdd(reinterpret_cast<unsigned*>(w), unsigned(v)); }
  __device__ void max(uint32_t* w, uint32_t v) const { atomicMax(reinterpret_cast<unsigned*>(w), unsigned(v)); }
};

// One block per parameter row; the memset has zeroed the tables and bitmaps.
__global__ void __launch_bounds__(kTableThreads) syncfree_build_exceptions_kernel(Processing q, int64_t vocab) {
  const int64_t pr = blockIdx.x;
  ExceptionSlot* table = q.tables + (pr << q.table_bits);
  const int64_t entries = exception_entries(q);
  for (int64_t j = threadIdx.x; j < entries; j += kTableThreads) {
    const ExceptionEntry e = exception_entry(q, pr, j);
    if (e.id < 0 || e.id >= vocab) continue;  // padding, and ids a sync would be needed to refuse
    ExceptionSlot* s = claim_exception(table, q.table_bits, uint32_t(e.id) + 1u, [](uint32_t* w, uint32_t key) {
      return uint32_t(atomicCAS(reinterpret_cast<unsigned*>(w), 0u, unsigned(key)));
    });
    record_exception(s, e, AtomicOps{});
    atomicOr(reinterpret_cast<unsigned*>(q.group_bits + pr * q.group_words + exception_word(e.id)),
             unsigned(exception_bit(e.id)));
  }
}

// ---------------------------------------------------------------------------
// Logprob stage

struct TopRow {
  unsigned tickets[2];  // raw mass and scan: blocks done
  unsigned candidates;  // tokens compacted (may exceed the buffer)
  unsigned rank;        // tokens whose key is at least the chosen token's
  SelectState first;    // after the first digit's pick
};

struct TopCandidate {
  uint32_t key;
  int32_t index;
};

enum TopPhase : int { kTopRawMass, kTopScan, kTopCompact };

struct TopArgs {
  SampleParams p;  // keeps set: the warped values the race saw
  SelectPlan plan;
  bool aligned;
  const RowNorm* norms;       // [rows] from the sampling kernels
  RowNorm* raw_norms;         // [rows] (raw logprobs)
  RacePartial* raw_partials;  // [rows, splits] (raw logprobs)
  TopRow* rows;               // [rows]
  unsigned long long* hists;  // [rows, kBins]
  TopCandidate* candidates;   // [rows, plan.candidates]
};

// How the stage reads row `row`: the race's values, or the raw logits.
__device__ RowRace stage_race(const SampleParams& p, int64_t row) { return logprob_race(p, row_race(p, row)); }

// What the stage measures row `row`'s logprobs against (its log taken once).
__device__ RowLogprobs stage_logprobs(const TopArgs& a, int64_t row) {
  return row_logprobs(a.p.raw_logprobs ? a.raw_norms[row] : a.norms[row]);
}

template <typename T>
__device__ uint32_t stage_key(const T* x, int64_t i, const RowRace& r, const RowLogprobs& l) {
  return top_entry(load_value(x, i, false, r), i, l).key;
}

// The logprob stage reads the processed values: planned and bounded as a processing kernel.
template <typename T>
__global__ void __launch_bounds__(kSelectThreads, blocks_per_sm(true)) syncfree_top_pass_kernel(TopArgs a, int phase) {
  __shared__ SelectShared sh;
  __shared__ bool last;
  const int32_t splits = a.plan.split.splits;
  const int64_t row = blockIdx.x / splits;
  const int32_t split = blockIdx.x % splits;
  const int t = threadIdx.x;
  const RowRace r = stage_race(a.p, row);
  TopRow& state = a.rows[row];

  if (phase == kTopRawMass) {
    const T* x = static_cast<const T*>(a.p.input) + row * a.p.row_stride;
    const ChunkGroups cg = chunk_groups(a.plan.split, split);
    RacePartial acc = empty_partial();
    float v[kGroup];
    for (int64_t q = t; q < cg.groups; q += kSelectThreads) {
      load_group_scalar(x, a.p.vocab, cg.first_group + q, false, r, v);  // raw: r scales and processes nothing
      raw_group_mass(acc, v, int32_t((cg.first_group + q) * kGroup));
    }
    acc = block_merge<kSelectThreads>(acc);
    if (splits == 1) {  // the row in one block: no partials, no ticket
      if (t == 0) a.raw_norms[row] = has_distribution(a.norms[row]) ? norm_of(acc) : empty_norm();
      return;
    }
    if (t == 0) {
      a.raw_partials[row * splits + split] = acc;
      __threadfence();
      last = atomicAdd(&state.tickets[0], 1u) == unsigned(splits - 1);
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    // Chunk j's partial in thread j: the same merge tree on every call.
    static_assert(kSelectMaxSplits <= kSelectThreads, "one partial a thread");
    acc = empty_partial();
    if (t < splits) {
      const RacePartial* src = a.raw_partials + row * splits + t;
      acc.best = no_best();
      acc.mass = {__ldcg(&src->mass.max), __ldcg(&src->mass.sum)};
      acc.infs = {__ldcg(&src->infs.first), __ldcg(&src->infs.count)};
    }
    acc = block_merge<kSelectThreads>(acc);
    // A degenerate row has no logprobs in raw mode either (Note [Top-n logprobs]).
    if (t == 0) a.raw_norms[row] = has_distribution(a.norms[row]) ? norm_of(acc) : empty_norm();
    return;
  }

  const RowLogprobs lp = stage_logprobs(a, row);
  if (phase == kTopCompact) {
    const uint32_t floor = state.first.prefix;
    const int64_t cap = a.plan.candidates;
    TopCandidate* out = a.candidates + row * cap;
    for_each_chunk_value<T, kSelectThreads>(a.p, a.plan.split, a.aligned, row, split, r, [&](float y, int64_t i) {
      const uint32_t key = top_entry(y, i, lp).key;
      warp_append(i < a.p.vocab && key >= floor, TopCandidate{key, int32_t(i)}, &state.candidates, out, cap);
    });
    return;
  }

  // kTopScan: every token counts, masked ones at a logprob of -inf.
  const bool top = a.p.top_n > 0, ranks = a.p.ranks != nullptr;
  uint32_t chosen = 0u;
  if (ranks) {
    const T* x = static_cast<const T*>(a.p.input) + row * a.p.row_stride;
    chosen = stage_key(x, a.p.tokens[row * a.p.tokens_stride], r, lp);
  }
  if (top) clear_hist(sh);
  __syncthreads();
  unsigned at_least = 0u;  // this thread's keys >= chosen
  for_each_chunk_value<T, kSelectThreads>(a.p, a.plan.split, a.aligned, row, split, r, [&](float y, int64_t i) {
    if (i >= a.p.vocab) return;
    const uint32_t key = top_entry(y, i, lp).key;
    if (top) atomicAdd(&sh.hist.lo[key_digit(key, SelectState{0u, 0, 0u})], 1u);
    at_least += key >= chosen ? 1u : 0u;
  });
  if (ranks) {
    const uint64_t count = block_sum(at_least, sh);  // its barriers also end the histogram's adds
    if (t == 0 && count > 0u) atomicAdd(&state.rank, unsigned(count));
  }
  __syncthreads();
  if (!top) return;
  if (splits > 1) {  // a row over several blocks: its histogram is the sum of theirs
    unsigned long long* hist = a.hists + row * kBins;
    add_hist_to(sh, hist);
    __threadfence();
    __syncthreads();
    if (t == 0) last = atomicAdd(&state.tickets[1], 1u) == unsigned(splits - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    load_hist_from(sh, hist);
    __syncthreads();
  }
  SelectState s{0u, 0, 0u};
  block_pick(uint64_t(a.p.top_n), sh, s);  // n <= V tokens: always picks
  if (t == 0) state.first = s;
}

// The finishing block's list: the n best entries, unsorted until the end.
struct TopShared {
  TopEntry e[kMaxTopLogprobs];
  int size;
  int warp_ties[kSelectThreads / 32];
  int taken;
  int min_index;
};

// Appends the lowest-id entries whose key equals u, in index order, until the
// list holds n: entry(i) for i in [0, count) gives key and index, and
// `ordered` says whether i follows the index (a row) or not (candidates).
template <typename Entry>
__device__ void take_ties(int64_t count, bool ordered, uint32_t u, int n, Entry entry, TopShared& ts) {
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  if (ordered) {
    // Tiles of the row in index order; ranks within a tile from warp ballots.
    for (int64_t base = 0; base < count; base += kSelectThreads) {
      if (ts.size >= n) return;  // uniform: read after a barrier
      const int64_t i = base + t;
      const TopEntry e = i < count ? entry(i) : TopEntry{0u, kNoIndex};
      const bool tie = i < count && e.key == u;
      const unsigned ballot = __ballot_sync(0xffffffffu, tie);
      if (lane == 0) ts.warp_ties[warp] = __popc(ballot);
      __syncthreads();
      int before = 0;
      for (int w = 0; w < warp; ++w) before += ts.warp_ties[w];
      const int rank = ts.size + before + __popc(ballot & ((1u << lane) - 1u));
      if (tie && rank < n) ts.e[rank] = e;
      __syncthreads();
      if (t == 0) {
        int total = 0;
        for (int w = 0; w < kSelectThreads / 32; ++w) total += ts.warp_ties[w];
        ts.size = ts.size + total < n ? ts.size + total : n;
      }
      __syncthreads();
    }
    return;
  }
  // Candidates in no order: the next lowest id, one block minimum at a time.
  int32_t after = -1;
  while (true) {
    __syncthreads();
    if (ts.size >= n) return;
    if (t == 0) ts.min_index = kNoIndex;
    __syncthreads();
    TopEntry best{0u, kNoIndex};
    for (int64_t i = t; i < count; i += kSelectThreads) {
      const TopEntry e = entry(i);
      if (e.key == u && e.index > after && e.index < best.index) best = e;
    }
    if (best.index != kNoIndex) atomicMin(&ts.min_index, best.index);
    __syncthreads();
    after = ts.min_index;
    if (after == kNoIndex) return;  // uniform
    __syncthreads();
    if (t == 0) ts.e[ts.size++] = {u, after};
  }
}

template <typename T>
__global__ void __launch_bounds__(kSelectThreads, blocks_per_sm(true)) syncfree_top_finish_kernel(TopArgs a) {
  __shared__ SelectShared sh;
  __shared__ TopShared ts;
  const int64_t row = blockIdx.x;
  const int t = threadIdx.x;
  const SampleParams& p = a.p;
  const RowRace r = stage_race(p, row);
  const RowLogprobs lp = stage_logprobs(a, row);
  const T* x = static_cast<const T*>(p.input) + row * p.row_stride;
  if (p.raw_logprobs && p.logprobs != nullptr && t == 0) {
    // The chosen token's raw logprob; a degenerate row keeps -inf.
    const RowNorm& processed = a.norms[row];
    const bool valid = processed.infs.count > 0 || processed.point >= 0 || processed.mass.max != -kInf;
    const int64_t token = p.tokens[row * p.tokens_stride];
    p.logprobs[row] = valid ? token_logprob(raw_value(float(x[token])), token, lp) : -kInf;
  }
  if (p.ranks != nullptr && t == 0) p.ranks[row] = int64_t(a.rows[row].rank);
  const int n = p.top_n;
  if (n == 0) return;
  const TopRow& state = a.rows[row];
  const int64_t cap = a.plan.candidates;
  const bool fits = int64_t(state.candidates) <= cap;
  const TopCandidate* c = a.candidates + row * cap;
  const auto candidate = [&](int64_t j) { return TopEntry{c[j].key, c[j].index}; };
  const auto token = [&](int64_t i) { return TopEntry{stage_key(x, i, r, lp), int32_t(i)}; };
  const int64_t count = fits ? int64_t(state.candidates) : p.vocab;
  // The n-th key u, resuming after the scan's first digit.
  uint32_t u = 0u;
  const auto select_entry = [&](int64_t i, uint32_t* key, uint64_t* weight) {
    *key = fits ? c[i].key : token(i).key;
    *weight = 1u;
  };
  block_select(count, uint64_t(n), select_entry, sh, &u, state.first);
  if (t == 0) ts.size = 0;
  __syncthreads();
  // The keys above u: fewer than n.
  for (int64_t i = t; i < count; i += kSelectThreads) {
    const TopEntry e = fits ? candidate(i) : token(i);
    if (e.key > u) {
      const int slot = atomicAdd(&ts.size, 1);
      if (slot < n) ts.e[slot] = e;  // fewer than n unless the input changed under the call
    }
  }
  __syncthreads();
  if (t == 0 && ts.size > n) ts.size = n;
  __syncthreads();
  if (fits) {
    take_ties(count, false, u, n, candidate, ts);
  } else {
    take_ties(count, true, u, n, token, ts);
  }
  __syncthreads();
  if (t == 0) {
    for (int i = 1; i < n; ++i) {  // insertion sort: n <= 20
      const TopEntry e = ts.e[i];
      int j = i;
      for (; j > 0 && ranks_before(e, ts.e[j - 1]); --j) ts.e[j] = ts.e[j - 1];
      ts.e[j] = e;
    }
  }
  __syncthreads();
  if (t < n) {
    p.top_ids[row * n + t] = ts.e[t].index;
    p.top_logprobs[row * n + t] = key_value(ts.e[t].key);
  }
}

}  // namespace

c10::DataPtr build_exceptions_cuda(SampleParams& p, c10::DeviceIndex device) {
  Processing& q = p.proc;
  if (!has_exceptions(q)) return c10::DataPtr();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  const int64_t param_rows = process_rows(p);
  q.table_bits = exception_table_bits(exception_entries(q));
  q.group_words = ceil_div(ceil_div(p.vocab, kExceptionSpan), 32);
  const size_t table_bytes = (size_t(param_rows) << q.table_bits) * sizeof(ExceptionSlot);
  const size_t bits_bytes = size_t(param_rows * q.group_words) * sizeof(uint32_t);
  c10::DataPtr workspace = c10::cuda::CUDACachingAllocator::get()->allocate(table_bytes + bits_bytes);
  q.tables = static_cast<ExceptionSlot*>(workspace.get());
  q.group_bits = reinterpret_cast<uint32_t*>(static_cast<char*>(workspace.get()) + table_bytes);
  C10_CUDA_CHECK(cudaMemsetAsync(workspace.get(), 0, table_bytes + bits_bytes, stream));
  launch_kernel<syncfree_build_exceptions_kernel>(dim3(unsigned(param_rows)), dim3(kTableThreads), 0, stream, q,
                                                  p.vocab);
  return workspace;
}

void logprob_stage_cuda(const SampleParams& p, c10::ScalarType dtype, c10::DeviceIndex device) {
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  TopArgs a{};
  a.p = p;
  a.plan = plan_select(p.rows, p.vocab, sm_count(device), /*process=*/true);
  const size_t elem = dtype == at::kFloat ? 4 : 2;
  a.aligned = reinterpret_cast<uintptr_t>(p.input) % 16 == 0 && (p.row_stride * elem) % 16 == 0;
  a.norms = p.norms;
  // Zeroed: the row states and (rows over several blocks) histograms. Then the raw norms and
  // partials (split rows), the candidates.
  const bool split = a.plan.split.splits > 1;
  const size_t state_bytes = size_t(p.rows) * sizeof(TopRow);
  const size_t hist_bytes = p.top_n > 0 && split ? size_t(p.rows) * kBins * sizeof(unsigned long long) : 0;
  const size_t raw_bytes = p.raw_logprobs ? size_t(p.rows) * sizeof(RowNorm) : 0;
  const size_t partial_bytes = p.raw_logprobs && split ? size_t(a.plan.blocks) * sizeof(RacePartial) : 0;
  const size_t candidate_bytes = p.top_n > 0 ? size_t(p.rows) * size_t(a.plan.candidates) * sizeof(TopCandidate) : 0;
  c10::DataPtr workspace = c10::cuda::CUDACachingAllocator::get()->allocate(
      state_bytes + hist_bytes + raw_bytes + partial_bytes + candidate_bytes);
  char* base = static_cast<char*>(workspace.get());
  a.rows = reinterpret_cast<TopRow*>(base);
  a.hists = reinterpret_cast<unsigned long long*>(base + state_bytes);
  a.raw_norms = reinterpret_cast<RowNorm*>(base + state_bytes + hist_bytes);
  a.raw_partials = reinterpret_cast<RacePartial*>(base + state_bytes + hist_bytes + raw_bytes);
  a.candidates = reinterpret_cast<TopCandidate*>(base + state_bytes + hist_bytes + raw_bytes + partial_bytes);
  C10_CUDA_CHECK(cudaMemsetAsync(base, 0, state_bytes + hist_bytes, stream));
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(unsigned(a.plan.blocks)), block(kSelectThreads);
    if (p.raw_logprobs) launch_kernel<syncfree_top_pass_kernel<T>>(grid, block, 0, stream, a, int(kTopRawMass));
    if (p.top_n > 0 || p.ranks != nullptr)
      launch_kernel<syncfree_top_pass_kernel<T>>(grid, block, 0, stream, a, int(kTopScan));
    if (p.top_n > 0) launch_kernel<syncfree_top_pass_kernel<T>>(grid, block, 0, stream, a, int(kTopCompact));
    launch_kernel<syncfree_top_finish_kernel<T>>(dim3(unsigned(p.rows)), block, 0, stream, a);
  });
}

}  // namespace syncfree
