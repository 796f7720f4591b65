// Block-wide pieces of the warpers' radix selection (Note [Exact warper
// thresholds] in core/select.h), shared by the selection kernels of
// warpers_cuda.cu. Assumptions: blockDim.x == kSelectThreads; every thread of
// the block calls. Device code only.
#pragma once

#include "../core/select.h"
#include "plans.h"

namespace syncfree {

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

// Max of v over the block, through its order key (an unsigned atomicMax).
__device__ __forceinline__ float block_max(float v, SelectShared& sh) {
  if (threadIdx.x == 0) sh.max_key = 0u;
  __syncthreads();
  atomicMax(&sh.max_key, order_key(v));
  __syncthreads();
  const float m = key_value(sh.max_key);
  __syncthreads();
  return m;
}

// Sum of v over the block; integer, so exact in any order.
__device__ __forceinline__ uint64_t block_sum(uint64_t v, SelectShared& sh) {
  if (threadIdx.x == 0) sh.sum = 0u;
  __syncthreads();
  if (v != 0u) atomicAdd(&sh.sum, static_cast<unsigned long long>(v));
  __syncthreads();
  const uint64_t total = sh.sum;
  __syncthreads();
  return total;
}

// pick_bin (select.h) over the histogram sh.hist of the digit after s.done,
// block-parallel: the highest non-empty bin whose cumulative weight from the
// top reaches target, found by a suffix scan over the threads. Advances s as
// pick_bin does; false (s unchanged) if no bin does. The same answer for
// every thread.
__device__ __forceinline__ bool block_pick(uint64_t target, SelectShared& sh, SelectState& s) {
  const int t = threadIdx.x;
  if (t == 0) sh.chosen = -1;
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
  __syncthreads();  // everyone has read chosen/new_above before they are reused
  return true;
}

// Compaction: appends entry to out[0, cap) where `mine`, in a slot taken from
// *count with one atomicAdd per warp (the slots' order is irrelevant to every
// caller); *count keeps counting past cap, so the caller sees an overflow.
// Every lane of the warp calls.
template <typename Entry>
__device__ __forceinline__ void warp_append(bool mine, const Entry& entry, unsigned* count, Entry* out, int64_t cap) {
  const unsigned lane = threadIdx.x % 32;
  const unsigned ballot = __ballot_sync(0xffffffffu, mine);
  if (ballot == 0u) return;
  unsigned base = 0u;
  if (lane == 0) base = atomicAdd(count, unsigned(__popc(ballot)));
  base = __shfl_sync(0xffffffffu, base, 0);
  const int64_t slot = int64_t(base) + __popc(ballot & ((1u << lane) - 1u));
  if (mine && slot < cap) out[slot] = entry;
}

__device__ __forceinline__ void clear_hist(SelectShared& sh) {
  for (int b = threadIdx.x; b < kBins; b += kSelectThreads) sh.hist[b] = 0u;
}

// Radix selection from the top over n entries, the block-parallel twin of
// select_top (select.h): entry(i, &key, &weight) for i in [0, n). One
// histogram pass per digit after those `s` has fixed already.
template <typename Entry>
__device__ bool block_select(int64_t n, uint64_t target, Entry entry, SelectShared& sh, uint32_t* result,
                             SelectState s = SelectState{0u, 0, 0u}) {
  while (s.done < 32) {
    clear_hist(sh);
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += kSelectThreads) {
      uint32_t key;
      uint64_t weight;
      entry(i, &key, &weight);
      if (weight > 0u && in_range(key, s)) atomicAdd(&sh.hist[key_digit(key, s)], weight);
    }
    __syncthreads();
    if (!block_pick(target, sh, s)) return false;
  }
  *result = s.prefix;
  return true;
}

}  // namespace syncfree
