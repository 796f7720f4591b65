// The CUDA warpers: each row's kept set (RowKeep) by the radix selections of
// Note [Exact warper thresholds], spread over many blocks per row, reading the
// row as few times as the warpers allow.
//
// Note [Selection passes on CUDA]
// -------------------------------
// The steps of Note [Selection passes] (core/select.h), as a state memset and
// four launches, the same for every row; what a row does in each is its mode
// (SelectMode), kept in its SelectRow.
//   1. scan    (rows x chunks): row max, lowest finite value, and with top-k
//              the first digit's histogram, each block's added into the row's;
//              the row's last block (a ticket) picks top-k's first digit.
//   2. mass    (rows x chunks), kSelectTopPHist rows: fixed-point masses,
//              their total and histogram; the last block picks top-p's digit.
//   3. compact (rows x chunks), kSelectCompact rows: the candidates go to the
//              row's buffer (warp-aggregated atomics; their order is irrelevant).
//   4. finish  (one block per row): the chain over the candidates when they
//              fit the buffer (else over the row, a bounded number of passes),
//              resuming the first selection after its first digit; then, for
//              a sampling call, the race over the kept tokens.
// The race in step 4 visits each group holding a kept token once (its lowest
// kept token finds it) with the sampling kernel's group code and noise, so
// the token is that of a race over the whole row; the sampling kernel then
// skips the row. Its logprob comes from a fixed-point sum over the kept
// tokens, exact in any order, so it does not depend on the candidates' order.
// Rows whose candidates overflow the buffer are raced by the sampling kernel.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>

#include "../device_api.h"
#include "block_race.cuh"
#include "block_select.cuh"
#include "launch.h"
#include "plans.h"

namespace syncfree {

// A compacted token: its scaled logit and index.
struct Candidate {
  float y;
  int32_t index;
};

// What the kernels of one call know about a row; zero at the call's start.
struct SelectRow {
  unsigned max_key;     // order key of the row max (atomicMax)
  unsigned low_key;     // ~order key of the lowest finite value (atomicMax); 0: none
  unsigned tickets[2];  // scan and mass: blocks done
  int mode;             // SelectMode
  unsigned candidates;  // tokens compacted (may exceed the buffer)
  SelectState first;    // after the first digit's pick
  unsigned long long total;  // the mass kernel's row total (top-p without top-k)
};

namespace {

enum SelectPhase : int { kPhaseScan, kPhaseMass, kPhaseCompact };

struct SelectArgs {
  SampleParams p;
  SelectPlan plan;
  bool aligned;               // 16-byte loads for full groups
  bool greedy_rows_too;       // syncfree.warp warps greedy rows too
  SelectRow* rows;            // [rows]
  unsigned long long* hists;  // [rows, kBins] when rows are split, else null
  Candidate* candidates;      // [rows, plan.candidates]
  RowKeep* keeps;             // [rows], written by the finishing kernel
  RngArgs rng;
  unsigned char* raced;       // [rows] or null (keeps only): 1 where step 4 sampled the row
};

// Whether row `row` has a selection to make, and how it is raced.
template <bool kProcess>
__device__ bool row_selects(const SampleParams& p, int64_t row, bool greedy_rows_too, RowRace* r, Warpers* w) {
  *r = kProcess ? row_race(p, row) : without_processing(row_race(p, row));
  *w = row_warpers(p, row);
  return (greedy_rows_too || !r->greedy) && any_warper(*w);
}

// The first digit of a key (a selection's first pass).
__device__ __forceinline__ int first_digit(uint32_t key) { return key_digit(key, SelectState{0u, 0, 0u}); }

// Steps 1-3 of Note [Selection passes on CUDA], by phase.
template <typename T, bool kProcess>
__global__ void __launch_bounds__(kSelectThreads, blocks_per_sm(kProcess)) syncfree_select_pass_kernel(SelectArgs a,
                                                                                                      int phase) {
  __shared__ SelectShared sh;
  __shared__ bool last;
  const int32_t splits = a.plan.split.splits;
  const int64_t row = blockIdx.x / splits;
  const int32_t split = blockIdx.x % splits;
  const int t = threadIdx.x;
  RowRace r;
  Warpers w;
  if (!row_selects<kProcess>(a.p, row, a.greedy_rows_too, &r, &w)) return;
  SelectRow& state = a.rows[row];
  unsigned long long* hist = a.hists != nullptr ? a.hists + row * kBins : nullptr;

  if (phase == kPhaseCompact) {
    if (state.mode != kSelectCompact) return;
    const float floor = key_floor(state.first.prefix);
    const int64_t cap = a.plan.candidates;
    Candidate* out = a.candidates + row * cap;
    for_each_chunk_value<T, kSelectThreads>(a.p, a.plan.split, a.aligned, row, split, r, [&](float y, int64_t i) {
      warp_append(is_candidate(y, floor), Candidate{y, int32_t(i)}, &state.candidates, out, cap);
    });
    return;
  }

  clear_hist(sh);
  __syncthreads();
  uint64_t local_total = 0u;
  float m = 0.0f;
  int shift = 0;
  if (phase == kPhaseScan) {
    float hi = -kInf, lo = kInf;
    const bool count = w.top_k > 0;
    for_each_chunk_value<T, kSelectThreads>(a.p, a.plan.split, a.aligned, row, split, r, [&](float y, int64_t) {
      hi = y > hi ? y : hi;
      lo = y != -kInf && y < lo ? y : lo;
      if (count && y != -kInf) atomicAdd(&sh.hist.lo[first_digit(order_key(y))], 1u);  // a block counts < 2^32
    });
    hi = block_max(hi, sh);
    lo = -block_max(-lo, sh);
    if (t == 0) {
      atomicMax(&state.max_key, order_key(hi));
      if (lo != kInf) atomicMax(&state.low_key, ~order_key(lo));
    }
  } else {  // kPhaseMass
    if (state.mode != kSelectTopPHist) return;
    m = key_value(state.max_key);
    shift = mass_shift(a.p.vocab);
    for_each_chunk_value<T, kSelectThreads>(a.p, a.plan.split, a.aligned, row, split, r, [&](float y, int64_t) {
      const uint64_t mass = fixed_mass(token_exp(y, m), shift);
      if (mass > 0u) shared_add(sh.hist, first_digit(order_key(y)), mass);
      local_total += mass;
    });
    const uint64_t total = block_sum(local_total, sh);
    if (t == 0 && total > 0u) atomicAdd(&state.total, static_cast<unsigned long long>(total));
  }

  // The row's last block to finish holds the whole histogram and picks the first digit.
  __syncthreads();
  if (splits > 1) {
    add_hist_to(sh, hist);
    __threadfence();
    __syncthreads();
    if (t == 0) last = atomicAdd(&state.tickets[phase], 1u) == unsigned(splits - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    load_hist_from(sh, hist);
  } else {
    __threadfence();
  }
  __syncthreads();
  m = key_value(__ldcg(&state.max_key));
  SelectState s{0u, 0, 0u};
  int mode;
  if (phase == kPhaseScan) {
    if (m == kInf || m == -kInf) {
      mode = kSelectKeepAll;  // +inf wins, or a degenerate row: nothing to warp
    } else {
      mode = mode_after_scan(w, w.top_k > 0 && block_pick(uint64_t(w.top_k), sh, s));
      if (mode == kSelectTopPHist && hist != nullptr && w.top_k > 0)  // the mass kernel's histogram starts at 0
        for (int b = t; b < kBins; b += kSelectThreads) hist[b] = 0u;
    }
  } else {
    const uint64_t total = __ldcg(&state.total);
    mode = block_pick(mass_target(w.top_p, total), sh, s) ? kSelectCompact : kSelectFullRow;
  }
  if (t == 0) {
    state.mode = mode;
    state.first = s;
  }
}

// Step 4's warper chain over n values, value(j) the j-th; the block-parallel
// twin of row_keep (select.h). The first selection (top-k, or top-p after the
// mass kernel) resumes after the first digit the row state holds; top-p takes
// the mass kernel's row total, and top-k is then known to keep everything.
template <typename Value>
__device__ RowKeep warper_chain(int64_t n, Value value, Warpers w, const SelectRow& state, float m, int shift,
                                SelectShared& sh) {
  const SelectState fresh{0u, 0, 0u};
  const bool top_p_first = state.total != 0u;  // the mass kernel ran
  if (top_p_first) w.top_k = 0;
  RowKeep keep = keep_all();
  const int t = threadIdx.x;
  const auto mass_of = [&](float y) {
    return y >= keep.min_y ? fixed_mass(token_exp(y, m), shift) : uint64_t(0);
  };
  uint32_t u;
  if (w.top_k > 0) {
    const auto entry = [&](int64_t i, uint32_t* key, uint64_t* weight) {
      const float y = value(i);
      *key = order_key(y);
      *weight = y != -kInf ? 1u : 0u;
    };
    if (block_select(n, uint64_t(w.top_k), entry, sh, &u, state.first)) keep.min_y = key_value(u);
  }
  if (w.top_p < 1.0f) {
    uint64_t total = state.total;
    if (!top_p_first) {
      uint64_t local = 0u;
      for (int64_t i = t; i < n; i += kSelectThreads) local += mass_of(value(i));
      total = block_sum(local, sh);
    }
    const auto entry = [&](int64_t i, uint32_t* key, uint64_t* weight) {
      const float y = value(i);
      *key = order_key(y);
      *weight = mass_of(y);
    };
    if (block_select(n, mass_target(w.top_p, total), entry, sh, &u, top_p_first ? state.first : fresh))
      raise_floor(keep, key_value(u));
  }
  if (w.min_p > 0.0f) raise_floor(keep, min_p_floor(m, w.min_p));
  if (w.typical_p < 1.0f) {
    const float spread = typical_spread(m, keep.min_y, key_value(~state.low_key));
    uint64_t local_total = 0u, local_gap = 0u;
    for (int64_t i = t; i < n; i += kSelectThreads) {
      const float y = value(i);
      const float e = token_exp(y, m);  // one exp for both sums
      const uint64_t mass = y >= keep.min_y ? fixed_mass(e, shift) : 0u;  // = mass_of(y)
      local_total += mass;
      if (mass > 0u) local_gap += fixed_mass(token_gap(y, m, e, spread), shift);
    }
    const uint64_t total = block_sum(local_total, sh);
    const uint64_t gap = block_sum(local_gap, sh);
    const float center = typical_center(m, spread, gap, total);
    const auto entry = [&](int64_t i, uint32_t* key, uint64_t* weight) {
      const float y = value(i);
      *key = deviation_key(y, center);
      *weight = mass_of(y);
    };
    if (block_select(n, mass_target(w.typical_p, total), entry, sh, &u)) {
      keep.center = center;
      keep.max_dev = key_value(~u);
    }
  }
  return keep;
}

// Step 4's race over the kept candidates (Note [Selection passes on CUDA]):
// writes the row's token, logprob and valid flag.
template <typename T>
__device__ void race_candidates(const SampleParams& p, int64_t row, RowRace r, const RowKeep& keep,
                                const Candidate* c, int64_t n, int shift, SelectShared& sh) {
  const T* x = static_cast<const T*>(p.input) + row * p.row_stride;
  const bool want_mass = r.want_mass;
  r.warped = true;
  r.keep = keep;
  r.want_mass = false;  // the logprob comes from the fixed-point sum below
  RacePartial acc = empty_partial();
  float top = -kInf;  // the largest kept value
  float v[kGroup];
  for (int64_t j = threadIdx.x; j < n; j += kSelectThreads) {
    const Candidate cand = c[j];
    if (apply_keep(cand.y, keep) == -kInf) continue;
    top = cand.y > top ? cand.y : top;
    const int64_t first = cand.index / kGroup * kGroup;
    bool lowest_kept = true;  // this group's lowest kept token visits it
    for (int64_t i = first; i < cand.index && lowest_kept; ++i)
      lowest_kept = load_value(x, i, false, r) == -kInf;
    if (!lowest_kept) continue;
    load_group_scalar(x, p.vocab, first / kGroup, false, r, v);
    visit_group<false>(acc, v, int32_t(first), r);
  }
  acc = block_merge<kSelectThreads>(acc);
  const float m = block_max(top, sh);
  uint64_t local = 0u;
  if (want_mass)
    for (int64_t j = threadIdx.x; j < n; j += kSelectThreads)
      if (apply_keep(c[j].y, keep) != -kInf) local += fixed_mass(token_exp(c[j].y, m), shift);
  const uint64_t mass = want_mass ? block_sum(local, sh) : 0u;
  if (threadIdx.x >= 32) return;
  acc = broadcast_lane0(acc);
  RowResult res = finish_row(acc, r, false);
  if (res.needs_resolve) {
    float y;
    res = resolved(res, race_group_warp<T, false>(p, r, x, res.token, &y).index);
    if (want_mass && res.valid) res.logprob = chosen_logprob(y, {m, fixed_sum(mass, shift)});
  }
  if (threadIdx.x == 0) {
    store_result(p, row, res.token, res.logprob, res.valid);
    if (p.norms != nullptr) p.norms[row] = {{m, fixed_sum(mass, shift)}, no_infinities(), -1};
  }
}

// Step 4, finish: one block per row; the kept set, then for a sampling call
// the race when the candidates fit.
template <typename T, bool kProcess>
__global__ void __launch_bounds__(kSelectThreads, blocks_per_sm(kProcess))
    syncfree_select_and_sample_kernel(SelectArgs a) {
  __shared__ SelectShared sh;
  const int64_t row = blockIdx.x;
  const int t = threadIdx.x;
  SampleParams p = a.p;
  take_rng(p, a.rng);
  RowRace r;
  Warpers w;
  const bool selects = row_selects<kProcess>(p, row, a.greedy_rows_too, &r, &w);
  const SelectRow& state = a.rows[row];
  const int mode = selects ? state.mode : kSelectSkip;
  if (mode == kSelectSkip || mode == kSelectKeepAll) {
    if (t == 0) {
      a.keeps[row] = keep_all();
      if (a.raced != nullptr) a.raced[row] = 0;
    }
    return;
  }
  const float m = key_value(state.max_key);
  const int shift = mass_shift(p.vocab);
  const int64_t cap = a.plan.candidates;
  const bool fits = mode == kSelectCompact && int64_t(state.candidates) <= cap;
  const Candidate* c = a.candidates + row * cap;
  RowKeep keep;
  if (fits) {
    keep = warper_chain(int64_t(state.candidates), [&](int64_t j) { return c[j].y; }, w, state, m, shift, sh);
  } else {
    const T* x = static_cast<const T*>(p.input) + row * p.row_stride;
    keep = warper_chain(p.vocab, [&](int64_t i) { return load_value(x, i, false, r); }, w, state, m, shift, sh);
  }
  if (t == 0) a.keeps[row] = keep;
  if (a.raced == nullptr) return;
  const bool race = fits && !r.greedy;
  if (race) race_candidates<T>(p, row, r, keep, c, int64_t(state.candidates), shift, sh);
  if (t == 0) a.raced[row] = race ? 1 : 0;
}

// The warped logits of syncfree.warp: scaled, removed tokens at -inf.
template <typename T>
__global__ void syncfree_apply_thresholds_kernel(SampleParams p, const RowKeep* keeps, float* out) {
  const int64_t row = blockIdx.x;  // rows on x: up to 2^31 - 1
  SampleParams with_keeps = p;
  with_keeps.keeps = keeps;
  const RowRace r = row_race(with_keeps, row);
  const T* x = static_cast<const T*>(p.input) + row * p.row_stride;
  for (int64_t i = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; i < p.vocab; i += int64_t(gridDim.y) * blockDim.x)
    out[row * p.vocab + i] = load_value(x, i, false, r);
}

}  // namespace

void select_and_sample_cuda(const SampleParams& p, c10::ScalarType dtype, c10::DeviceIndex device, RowKeep* keeps,
                            bool greedy_rows_too, const RngArgs* rng, unsigned char* raced) {
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  SelectArgs a{};
  a.p = p;
  a.plan = plan_select(p.rows, p.vocab, sm_count(device), has_processing(p));
  TORCH_CHECK(a.plan.blocks <= int64_t(INT32_MAX), "syncfree: batch of ", p.rows, " rows is too large for one launch");
  const size_t elem = dtype == at::kFloat ? 4 : 2;
  a.aligned = reinterpret_cast<uintptr_t>(p.input) % 16 == 0 && (p.row_stride * elem) % 16 == 0;
  a.greedy_rows_too = greedy_rows_too;
  a.keeps = keeps;
  if (rng != nullptr) a.rng = *rng;
  a.raced = raced;
  // One block of workspace: the row states and (split rows) histograms, zeroed
  // by one memset (a graph node when captured), then the candidate buffers.
  const size_t state_bytes = size_t(p.rows) * sizeof(SelectRow);
  const size_t hist_bytes = a.plan.split.splits > 1 ? size_t(p.rows) * kBins * sizeof(unsigned long long) : 0;
  const size_t candidate_bytes = size_t(p.rows) * size_t(a.plan.candidates) * sizeof(Candidate);
  c10::DataPtr workspace =
      c10::cuda::CUDACachingAllocator::get()->allocate(hist_bytes + state_bytes + candidate_bytes);
  char* base = static_cast<char*>(workspace.get());
  a.hists = hist_bytes > 0 ? reinterpret_cast<unsigned long long*>(base) : nullptr;
  a.rows = reinterpret_cast<SelectRow*>(base + hist_bytes);
  a.candidates = reinterpret_cast<Candidate*>(base + hist_bytes + state_bytes);
  C10_CUDA_CHECK(cudaMemsetAsync(base, 0, hist_bytes + state_bytes, stream));
  const auto launch = [&](auto tag, auto process) {
    using T = decltype(tag);
    constexpr bool kProcess = decltype(process)::value;
    const dim3 grid(unsigned(a.plan.blocks)), block(kSelectThreads);
    for (const int phase : {kPhaseScan, kPhaseMass, kPhaseCompact})
      launch_kernel<syncfree_select_pass_kernel<T, kProcess>>(grid, block, 0, stream, a, phase);
    launch_kernel<syncfree_select_and_sample_kernel<T, kProcess>>(dim3(unsigned(p.rows)), block, 0, stream, a);
  };
  dispatch_dtype(dtype, [&](auto tag) {
    if (has_processing(p)) {
      launch(tag, std::true_type{});
    } else {
      launch(tag, std::false_type{});
    }
  });
}

void warped_logits_cuda(SampleParams p, c10::ScalarType dtype, c10::DeviceIndex device, float* out) {
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  const c10::DataPtr tables = build_exceptions_cuda(p, device);  // Note [Processing in the pass]
  c10::DataPtr keeps;  // none without a warper: every token kept, no selection kernel
  if (p.warped) {
    keeps = c10::cuda::CUDACachingAllocator::get()->allocate(size_t(p.rows) * sizeof(RowKeep));
    select_and_sample_cuda(p, dtype, device, static_cast<RowKeep*>(keeps.get()), true);
  }
  const dim3 grid(unsigned(p.rows), unsigned(std::min<int64_t>(ceil_div(p.vocab, 256), 1024)));
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_kernel<syncfree_apply_thresholds_kernel<T>>(grid, dim3(256), 0, stream, p,
                                                       static_cast<const RowKeep*>(keeps.get()), out);
  });
}

}  // namespace syncfree
