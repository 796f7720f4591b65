// The CUDA warpers: one block per row finds the row's kept set (RowKeep) by
// the radix selections of Note [Exact warper thresholds]; the sampling kernel
// (sample_cuda.cu) then races over the kept tokens. Histograms live in shared
// memory with 64-bit integer atomics, so the thresholds are exactly those the
// CPU path finds, whatever order the atomics land in.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

#include "../device_api.h"
#include "launch.h"

namespace syncfree {
namespace {

constexpr int kSelectThreads = 512;
constexpr int kBinsPerThread = kBins / kSelectThreads;
static_assert(kBins % kSelectThreads == 0, "bins split evenly over threads");

struct SelectShared {
  unsigned long long hist[kBins];
  unsigned long long suffix[kSelectThreads];  // per-thread bin sums, then their suffix sums
  unsigned long long sum;
  unsigned long long new_above;
  unsigned max_key;
  int chosen;
};

// ---------------------------------------------------------------------------
// Block primitives. Assumptions: blockDim.x == kSelectThreads; every thread calls.

// Max of v over the block, through its order key (an unsigned atomicMax).
__device__ float block_max(float v, SelectShared& sh) {
  if (threadIdx.x == 0) sh.max_key = 0u;
  __syncthreads();
  atomicMax(&sh.max_key, order_key(v));
  __syncthreads();
  const float m = key_value(sh.max_key);
  __syncthreads();
  return m;
}

// Sum of v over the block; integer, so exact in any order.
__device__ uint64_t block_sum(uint64_t v, SelectShared& sh) {
  if (threadIdx.x == 0) sh.sum = 0u;
  __syncthreads();
  if (v != 0u) atomicAdd(&sh.sum, static_cast<unsigned long long>(v));
  __syncthreads();
  const uint64_t total = sh.sum;
  __syncthreads();
  return total;
}

// Radix selection from the top over the row, the block-parallel twin of
// select_top (select.h): entry(i, &key, &weight) for i in [0, vocab).
// Each pass: a shared histogram of the next digit, then the bin that
// pick_bin would choose (the highest non-empty bin whose cumulative weight
// from the top reaches target), found by a suffix scan over the threads.
template <typename Entry>
__device__ bool block_select(int64_t vocab, uint64_t target, Entry entry, SelectShared& sh, uint32_t* result) {
  SelectState s{0u, 0, 0u};
  const int t = threadIdx.x;
  while (s.done < 32) {
    for (int b = t; b < kBins; b += kSelectThreads) sh.hist[b] = 0u;
    if (t == 0) sh.chosen = -1;
    __syncthreads();
    for (int64_t i = t; i < vocab; i += kSelectThreads) {
      uint32_t key;
      uint64_t weight;
      entry(i, &key, &weight);
      if (weight > 0u && in_range(key, s)) atomicAdd(&sh.hist[key_digit(key, s)], weight);
    }
    __syncthreads();
    // Thread t owns bins [t * kBinsPerThread, (t + 1) * kBinsPerThread);
    // suffix[t] becomes the weight of all bins above them.
    uint64_t own = 0u;
#pragma unroll
    for (int j = 0; j < kBinsPerThread; ++j) own += sh.hist[t * kBinsPerThread + j];
    sh.suffix[t] = own;
    __syncthreads();
    for (int offset = 1; offset < kSelectThreads; offset *= 2) {
      const uint64_t add = t + offset < kSelectThreads ? sh.suffix[t + offset] : 0u;
      __syncthreads();
      sh.suffix[t] += add;
      __syncthreads();
    }
    // This thread's candidate: its highest bin that pick_bin's walk would stop at.
    uint64_t above = s.above + (sh.suffix[t] - own);
    int my_bin = -1;
    uint64_t my_above = 0u;
    for (int j = kBinsPerThread - 1; j >= 0; --j) {
      const int bin = t * kBinsPerThread + j;
      const uint64_t h = sh.hist[bin];
      if (h > 0u && above + h >= target) {
        my_bin = bin;
        my_above = above;
        break;
      }
      above += h;
    }
    // The walk stops at the highest candidate over all threads.
    if (my_bin >= 0) atomicMax(&sh.chosen, my_bin);
    __syncthreads();
    const int chosen = sh.chosen;
    if (chosen >= 0 && my_bin == chosen) sh.new_above = my_above;  // one owner per bin
    __syncthreads();
    if (chosen < 0) return false;  // uniform: every thread read the same value
    const int bits = digit_bits(s.done);
    s.prefix |= uint32_t(chosen) << (32 - s.done - bits);
    s.done += bits;
    s.above = sh.new_above;
    __syncthreads();  // everyone has read chosen/new_above before the next pass resets them
  }
  *result = s.prefix;
  return true;
}

// ---------------------------------------------------------------------------
// Kernel: the kept set of one row, the twin of row_keep (select.h).

template <typename T>
__global__ void __launch_bounds__(kSelectThreads)
    syncfree_find_thresholds_kernel(SampleParams p, RowKeep* keeps, bool greedy_rows_too) {
  __shared__ SelectShared sh;
  const int64_t row = blockIdx.x;
  const int t = threadIdx.x;
  const RowRace r = row_race(p, row);
  const Warpers w = row_warpers(p, row);
  RowKeep keep = keep_all();
  if ((r.greedy && !greedy_rows_too) || !any_warper(w)) {
    if (t == 0) keeps[row] = keep;
    return;
  }
  const T* x = static_cast<const T*>(p.input) + row * p.row_stride;
  const int64_t vocab = p.vocab;
  const auto y_of = [&](int64_t i) { return scaled_logit(float(x[i]), r.inv_temperature); };

  float local_max = -kInf, local_lowest = kInf;  // the largest and the smallest finite y
  for (int64_t i = t; i < vocab; i += kSelectThreads) {
    const float y = y_of(i);
    local_max = y > local_max ? y : local_max;
    local_lowest = y != -kInf && y < local_lowest ? y : local_lowest;
  }
  const float m = block_max(local_max, sh);
  if (m == kInf || m == -kInf) {  // +inf wins, or a degenerate row: nothing to warp
    if (t == 0) keeps[row] = keep;
    return;
  }
  const int shift = mass_shift(vocab);
  const auto mass_of = [&](float y) {
    return y >= keep.min_y ? fixed_mass(token_exp(y, m), shift) : uint64_t(0);
  };
  uint32_t u;
  if (w.top_k > 0) {
    const auto entry = [&](int64_t i, uint32_t* key, uint64_t* weight) {
      const float y = y_of(i);
      *key = order_key(y);
      *weight = y != -kInf ? 1u : 0u;
    };
    if (block_select(vocab, uint64_t(w.top_k), entry, sh, &u)) keep.min_y = key_value(u);
  }
  if (w.top_p < 1.0f) {
    uint64_t local = 0u;
    for (int64_t i = t; i < vocab; i += kSelectThreads) local += mass_of(y_of(i));
    const uint64_t total = block_sum(local, sh);
    const auto entry = [&](int64_t i, uint32_t* key, uint64_t* weight) {
      const float y = y_of(i);
      *key = order_key(y);
      *weight = mass_of(y);
    };
    if (block_select(vocab, mass_target(w.top_p, total), entry, sh, &u)) raise_floor(keep, key_value(u));
  }
  if (w.min_p > 0.0f) raise_floor(keep, min_p_floor(m, w.min_p));
  if (w.typical_p < 1.0f) {
    const float spread = typical_spread(m, keep.min_y, -block_max(-local_lowest, sh));
    uint64_t local_total = 0u, local_gap = 0u;
    for (int64_t i = t; i < vocab; i += kSelectThreads) {
      const float y = y_of(i);
      const float e = token_exp(y, m);  // one exp for both sums
      const uint64_t mass = y >= keep.min_y ? fixed_mass(e, shift) : 0u;  // = mass_of(y)
      local_total += mass;
      if (mass > 0u) local_gap += fixed_mass(token_gap(y, m, e, spread), shift);
    }
    const uint64_t total = block_sum(local_total, sh);
    const uint64_t gap = block_sum(local_gap, sh);
    const float center = typical_center(m, spread, gap, total);
    const auto entry = [&](int64_t i, uint32_t* key, uint64_t* weight) {
      const float y = y_of(i);
      *key = deviation_key(y, center);
      *weight = mass_of(y);
    };
    if (block_select(vocab, mass_target(w.typical_p, total), entry, sh, &u)) {
      keep.center = center;
      keep.max_dev = key_value(~u);
    }
  }
  if (t == 0) keeps[row] = keep;
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
    out[row * p.vocab + i] = race_value(float(x[i]), false, r);
}

template <typename F>
void dispatch(c10::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat:
      f(float{});
      break;
    case at::kHalf:
      f(c10::Half{});
      break;
    case at::kBFloat16:
      f(c10::BFloat16{});
      break;
    default:
      TORCH_CHECK(false, "syncfree: unsupported dtype ", dtype, " on CUDA");
  }
}

}  // namespace

void find_thresholds_cuda(const SampleParams& p, c10::ScalarType dtype, c10::DeviceIndex device, RowKeep* keeps,
                      bool greedy_rows_too) {
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_kernel<syncfree_find_thresholds_kernel<T>>(dim3(unsigned(p.rows)), dim3(kSelectThreads), 0, stream, p, keeps,
                                                  greedy_rows_too);
  });
}

void apply_thresholds_cuda(const SampleParams& p, c10::ScalarType dtype, c10::DeviceIndex device, const RowKeep* keeps,
                     float* out) {
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  const dim3 grid(unsigned(p.rows), unsigned(std::min<int64_t>(ceil_div(p.vocab, 256), 1024)));
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_kernel<syncfree_apply_thresholds_kernel<T>>(grid, dim3(256), 0, stream, p, keeps, out);
  });
}

}  // namespace syncfree
