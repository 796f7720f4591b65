// syncfree.verify_draft on CUDA (Note [Verifying a draft] in core/verify.h):
// the warpers' selection over all B (n + 1) positions (warpers_cuda.cu), then
//   positions: one block per position: its law (first +inf, max, fixed-point
//              total), or for a greedy row its argmax, and the draft's
//              acceptance; every position of every row at once;
//   finish:    one block per row: the first rejection, the accepted tokens,
//              and the stop token's race over that one position.
// So a call is the selection's launches (with warpers) and two more, no sync.
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

constexpr int kThreads = kSelectThreads;

// What the positions kernel finds for one position.
struct PositionLaw {
  TargetMass law;
  int32_t point;      // a point mass (first +inf, overflow argmax, greedy argmax), or kNoIndex
  bool degenerate;    // no unmasked logit
  bool accepted;      // the draft at this position (none at the last)
  float logprob;      // log p of the accepted draft, or of the point
};

struct VerifyArgs {
  VerifyParams v;
  RngArgs rng;
  PositionLaw* laws;  // [B (n + 1)]
  bool aligned;       // 16-byte aligned rows: full groups through vector loads
};

// The race value of token i of a position (processed, scaled, warped).
template <typename T>
__device__ __forceinline__ float position_value(const T* x, int64_t i, const RowRace& r) {
  return load_value(x, i, false, r);
}

// Group g of a position's race values (-inf past the row's end), 16-byte loads where aligned.
template <typename T>
__device__ __forceinline__ void position_group(const T* x, int64_t vocab, int64_t g, bool aligned, const RowRace& r,
                                               float (&v)[kGroup]) {
  if (aligned && g < vocab / kGroup) {
    load_group_vec(x, g, false, r, v);
  } else {
    load_group_scalar(x, vocab, g, false, r, v);
  }
}

// kProcess: the call has processing (each position its own history: Processing::per_position);
// without it the processing code folds away, as in the sampling kernels.
template <typename T, bool kProcess>
__global__ void __launch_bounds__(kThreads) syncfree_verify_positions_kernel(VerifyArgs a) {
  __shared__ SelectShared sh;
  __shared__ int first_inf, inf_count;
  const int64_t row = blockIdx.x;
  const VerifyParams& v = a.v;
  SampleParams p = v.target;
  take_rng(p, a.rng);
  const int64_t positions = v.n + 1, b = row / positions, j = row % positions;
  const RowRace r = kProcess ? row_race(p, row) : without_processing(row_race(p, row));
  const T* x = static_cast<const T*>(p.input) + row * p.row_stride;
  const int64_t vocab = p.vocab;
  const bool drafted = j < v.n;
  const int64_t draft = drafted ? v.draft_ids[b * v.draft_ids_stride + j] : -1;
  const bool in_vocab = draft >= 0 && draft < vocab;
  PositionLaw out{{-kInf, 0u, mass_shift(vocab), kNoIndex, 0}, kNoIndex, false, false, 0.0f};

  if (r.greedy) {  // the argmax of the raw logits and its logprob, as syncfree.sample's greedy rows
    RowRace greedy = r;
    greedy.want_mass = true;
    RacePartial acc = empty_partial();
    float g[kGroup];
    for (int64_t q = threadIdx.x; q < ceil_div(vocab, kGroup); q += kThreads) {
      load_group_scalar(x, vocab, q, false, greedy, g);
      visit_group<false>(acc, g, int32_t(q * kGroup), greedy);
    }
    acc = block_merge<kThreads>(acc);
    if (threadIdx.x == 0) {
      const RowResult res = finish_row(acc, greedy, false);
      out.degenerate = !res.valid;
      out.point = int32_t(res.token);
      out.logprob = res.logprob;
      out.accepted = res.valid && drafted && draft == res.token;
      a.laws[row] = out;
    }
    return;
  }

  float top = -kInf;
  int infs = 0;
  if (threadIdx.x == 0) {
    first_inf = kNoIndex;
    inf_count = 0;
  }
  __syncthreads();
  const int64_t groups = ceil_div(vocab, kGroup);
  float vals[kGroup];
  for (int64_t g = threadIdx.x; g < groups; g += kThreads) {
    position_group(x, vocab, g, a.aligned, r, vals);
#pragma unroll
    for (int k = 0; k < kGroup; ++k) {
      top = vals[k] > top ? vals[k] : top;
      if (vals[k] == kInf) {
        if (infs == 0) atomicMin(&first_inf, int(g * kGroup + k));  // a thread's first is its lowest
        ++infs;
      }
    }
  }
  if (infs > 0) atomicAdd(&inf_count, infs);
  out.law.m = block_max(top, sh);  // an order-key max: +0 for -0, as the CPU's (its barriers order the atomics)
  out.law.first_inf = first_inf;
  out.law.infs = inf_count;
  if (out.law.first_inf == kNoIndex && out.law.m != -kInf) {
    uint64_t local = 0u;  // the second read: from L2 for rows that fit it
    for (int64_t g = threadIdx.x; g < groups; g += kThreads) {
      position_group(x, vocab, g, a.aligned, r, vals);
#pragma unroll
      for (int k = 0; k < kGroup; ++k) local += fixed_mass(token_exp(vals[k], out.law.m), out.law.shift);
    }
    out.law.total = block_sum(local, sh);
  }
  out.point = out.law.first_inf;
  if (out.point == kNoIndex && out.law.total == 0u && may_overflow(r) && threadIdx.x < 32)
    out.point = raw_argmax_warp(x, vocab, r.proc).index;  // Note [Logits past the temperature's range]
  if (threadIdx.x != 0) return;
  out.degenerate = out.point == kNoIndex && out.law.total == 0u;
  if (out.degenerate || !drafted) {
    a.laws[row] = out;
    return;
  }
  const double q = v.draft_probs == nullptr ? 1.0
                   : in_vocab ? double(clean_weight(v.draft_probs[(b * v.n + j) * v.draft_probs_stride + draft]))
                              : 0.0;
  const float y = in_vocab ? position_value(x, draft, r) : -kInf;
  const double pd = !in_vocab ? 0.0 : out.point != kNoIndex ? (draft == out.point ? 1.0 : 0.0)
                                                            : target_probability(out.law, y);
  out.accepted = accepts(accept_uniform(r.stream), q, pd);
  out.logprob = out.point != kNoIndex ? point_logprob(out.law) : out.accepted ? target_logprob(out.law, y) : 0.0f;
  a.laws[row] = out;
}

// The stop token's race over one position: the logits race over the race
// values with `masked` removed, or (q_row set) the probability race over the
// residual weights; the same groups, noise and resolve as syncfree.sample's.
// Every thread calls; the result is in warp 0 (other threads get an invalid one).
template <typename T>
__device__ RowResult race_position(const T* x, int64_t vocab, const RowRace& r, const TargetMass& law,
                                   const float* q_row, int64_t masked) {
  const bool probs = q_row != nullptr;
  const auto value = [&](int64_t i) {
    const float y = position_value(x, i, r);
    if (probs) return residual_weight(target_probability(law, y), q_row[i]);
    return i == masked ? -kInf : y;
  };
  RowRace plain = r;
  plain.want_mass = false;
  RacePartial acc = empty_partial();
  float g[kGroup];
  for (int64_t q = threadIdx.x; q < ceil_div(vocab, kGroup); q += kThreads) {
    const int n = group_size(vocab, q);
    for (int k = 0; k < kGroup; ++k) g[k] = k < n ? value(q * kGroup + k) : masked_value(probs);
    if (probs) {
      visit_group<true>(acc, g, int32_t(q * kGroup), plain);
    } else {
      visit_group<false>(acc, g, int32_t(q * kGroup), plain);
    }
  }
  acc = block_merge<kThreads>(acc);
  if (threadIdx.x >= 32) return RowResult{0, 0.0f, false, false};
  acc = broadcast_lane0(acc);
  RowResult res = finish_row(acc, plain, probs);
  if (res.needs_resolve) {  // the winning group's tokens, one per lane
    float y;
    const Best winner = probs ? race_group_values_warp<true>(vocab, plain, res.token, value, &y)
                              : race_group_values_warp<false>(vocab, plain, res.token, value, &y);
    res = resolved(res, winner.index);
  }
  return res;
}

template <typename T, bool kProcess>
__global__ void __launch_bounds__(kThreads) syncfree_verify_finish_kernel(VerifyArgs a) {
  __shared__ int64_t stop_at;
  __shared__ bool from_p;
  const int64_t b = blockIdx.x;
  const VerifyParams& v = a.v;
  SampleParams p = v.target;
  take_rng(p, a.rng);
  const int64_t positions = v.n + 1;
  const PositionLaw* laws = a.laws + b * positions;
  if (threadIdx.x == 0) {
    int64_t j = 0;
    while (j < v.n && laws[j].accepted) ++j;
    stop_at = j;
  }
  __syncthreads();
  const int64_t j = stop_at, row = b * positions + j;
  const PositionLaw law = laws[j];
  const bool drafted = j < v.n;
  const int64_t draft = drafted ? v.draft_ids[b * v.draft_ids_stride + j] : -1;
  const RowRace r = kProcess ? row_race(p, row) : without_processing(row_race(p, row));
  int64_t token;
  float logprob;
  bool valid = true;
  if (law.degenerate) {
    token = 0;
    logprob = -kInf;
    valid = false;
  } else if (law.point != kNoIndex) {
    token = law.point;
    logprob = r.greedy ? law.logprob : point_logprob(law.law);
  } else {
    const T* x = static_cast<const T*>(p.input) + row * p.row_stride;
    const bool in_vocab = draft >= 0 && draft < p.vocab;
    RowResult res{0, 0.0f, false, false};
    if (drafted && v.draft_probs != nullptr) {
      res = race_position(x, p.vocab, r, law.law, v.draft_probs + (b * v.n + j) * v.draft_probs_stride, -1);
    } else if (drafted && in_vocab) {
      res = race_position(x, p.vocab, r, law.law, static_cast<const float*>(nullptr), draft);
    }
    if (threadIdx.x == 0) from_p = !res.valid;  // the bonus, or a residual with no mass
    __syncthreads();
    if (from_p) res = race_position(x, p.vocab, r, law.law, static_cast<const float*>(nullptr), -1);
    if (threadIdx.x >= 32) return;
    token = res.token;
    logprob = target_logprob(law.law, position_value(x, token, r));
  }
  if (threadIdx.x != 0) return;
  int64_t* tokens = v.tokens + b * positions;
  float* logprobs = v.logprobs != nullptr ? v.logprobs + b * positions : nullptr;
  for (int64_t k = 0; k < j; ++k) {
    tokens[k] = v.draft_ids[b * v.draft_ids_stride + k];
    if (logprobs != nullptr) logprobs[k] = laws[k].logprob;
  }
  tokens[j] = token;
  if (logprobs != nullptr) logprobs[j] = logprob;
  for (int64_t k = j + 1; k < positions; ++k) {
    tokens[k] = -1;
    if (logprobs != nullptr) logprobs[k] = -kInf;
  }
  v.num_accepted[b] = j;
  if (v.valid != nullptr) v.valid[b] = valid;
}

}  // namespace

void verify_cuda(const VerifyParams& v, c10::ScalarType dtype, c10::DeviceIndex device,
                 const std::optional<at::Generator>& generator, bool from_generator) {
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  VerifyArgs a{};
  a.v = v;
  a.rng.from_generator = from_generator;
  if (from_generator) a.rng.philox = draw_generator_cuda(generator, device, v.target.vocab);  // for all B (n + 1) rows
  const int64_t rows = v.target.rows, batch = rows / (v.n + 1);
  const c10::DataPtr tables = build_exceptions_cuda(a.v.target, device);  // Note [Processing in the pass]
  auto* allocator = c10::cuda::CUDACachingAllocator::get();
  c10::DataPtr keeps;
  if (v.target.warped) {
    keeps = allocator->allocate(size_t(rows) * sizeof(RowKeep));
    select_and_sample_cuda(a.v.target, dtype, device, static_cast<RowKeep*>(keeps.get()), false);
    a.v.target.keeps = static_cast<const RowKeep*>(keeps.get());
  }
  c10::DataPtr laws = allocator->allocate(size_t(rows) * sizeof(PositionLaw));
  a.laws = static_cast<PositionLaw*>(laws.get());
  const size_t elem = dtype == at::kFloat ? 4 : 2;
  a.aligned = reinterpret_cast<uintptr_t>(v.target.input) % 16 == 0 && (v.target.row_stride * elem) % 16 == 0;
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    const auto launch = [&](auto process) {
      constexpr bool kProcess = decltype(process)::value;
      launch_kernel<syncfree_verify_positions_kernel<T, kProcess>>(dim3(unsigned(rows)), dim3(kThreads), 0, stream, a);
      launch_kernel<syncfree_verify_finish_kernel<T, kProcess>>(dim3(unsigned(batch)), dim3(kThreads), 0, stream, a);
    };
    if (has_processing(a.v.target)) {
      launch(std::true_type{});
    } else {
      launch(std::false_type{});
    }
  };
  dispatch_dtype(dtype, run);
}

}  // namespace syncfree
