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

// Note [64-bit sums in shared memory]
// -----------------------------------
// sm_90 has no 64-bit shared-memory atomic add or max: atomicAdd on an
// unsigned long long in shared memory compiles to a compare-and-swap retry
// loop (ATOMS.CAST.SPIN.64), which serialises the lanes that hit one word, and
// a row's logits land in a few dozen bins of the first digit. So a 64-bit
// shared counter is two 32-bit words: an add is a native atomicAdd on the low
// word, whose returned old value says whether it carried, then one on the
// high word of the high part plus the carry (skipped when 0, as it is for
// every count). The result is the exact sum mod 2^64 in any order, read after
// a barrier. Block-wide sums of one value a thread reduce through shuffles
// and one slot per warp instead (block_sum). benchmarks/sass_report.py and
// tests/test_compiled_code.py check that no kernel has a CAS loop.
template <int kSize>
struct SharedCounts {
  unsigned lo[kSize];
  unsigned hi[kSize];
};

template <int kSize>
__device__ __forceinline__ void shared_add(SharedCounts<kSize>& c, int i, uint64_t w) {
  const unsigned low = unsigned(w), high = unsigned(w >> 32);
  unsigned carry = 0u;
  if (low != 0u) {
    const unsigned old = atomicAdd(&c.lo[i], low);
    carry = old + low < old ? 1u : 0u;
  }
  if (high + carry != 0u) atomicAdd(&c.hi[i], high + carry);
}

template <int kSize>
__device__ __forceinline__ uint64_t shared_get(const SharedCounts<kSize>& c, int i) {
  return (uint64_t(c.hi[i]) << 32) | c.lo[i];
}

template <int kSize>
__device__ __forceinline__ void shared_set(SharedCounts<kSize>& c, int i, uint64_t w) {
  c.lo[i] = unsigned(w);
  c.hi[i] = unsigned(w >> 32);
}

struct SelectShared {
  SharedCounts<kBins> hist;
  unsigned long long suffix[kSelectThreads];  // per-thread bin sums, then their suffix sums
  unsigned long long warp_sums[kSelectThreads / 32];
  unsigned long long new_above;
  unsigned max_key;
  int chosen;
};

// Max of v over the block, through its order key (an unsigned atomicMax).
__device__ __forceinline__ float block_max(float v, unsigned& max_key) {
  if (threadIdx.x == 0) max_key = 0u;
  __syncthreads();
  atomicMax(&max_key, order_key(v));
  __syncthreads();
  const float m = key_value(max_key);
  __syncthreads();
  return m;
}
__device__ __forceinline__ float block_max(float v, SelectShared& sh) { return block_max(v, sh.max_key); }

// Sum of v over the block; integer, so exact in any order: a shuffle tree
// per warp, one slot per warp, and every thread adds the slots (no atomics;
// Note [64-bit sums in shared memory]).
__device__ __forceinline__ uint64_t block_sum(uint64_t v, unsigned long long (&warp_sums)[kSelectThreads / 32]) {
  constexpr int kWarps = kSelectThreads / 32;
  unsigned long long x = v;
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) x += __shfl_down_sync(0xffffffffu, x, delta);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = x;
  __syncthreads();
  uint64_t total = 0u;
#pragma unroll 4
  for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
  __syncthreads();
  return total;
}
__device__ __forceinline__ uint64_t block_sum(uint64_t v, SelectShared& sh) { return block_sum(v, sh.warp_sums); }

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
  for (int j = 0; j < kBinsPerThread; ++j) own += shared_get(sh.hist, t * kBinsPerThread + j);
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
    const uint64_t h = shared_get(sh.hist, bin);
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
  for (int b = threadIdx.x; b < kBins; b += kSelectThreads) shared_set(sh.hist, b, 0u);
}

// A split row's histogram: the block's bins added into the row's global one
// (native 64-bit global atomics), and back after the row's last block arrives.
__device__ __forceinline__ void add_hist_to(const SelectShared& sh, unsigned long long* hist) {
  for (int b = threadIdx.x; b < kBins; b += kSelectThreads) {
    const uint64_t h = shared_get(sh.hist, b);
    if (h != 0u) atomicAdd(hist + b, static_cast<unsigned long long>(h));
  }
}

__device__ __forceinline__ void load_hist_from(SelectShared& sh, const unsigned long long* hist) {
  for (int b = threadIdx.x; b < kBins; b += kSelectThreads) shared_set(sh.hist, b, __ldcg(hist + b));
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
      if (weight > 0u && in_range(key, s)) shared_add(sh.hist, key_digit(key, s), weight);
    }
    __syncthreads();
    if (!block_pick(target, sh, s)) return false;
  }
  *result = s.prefix;
  return true;
}

}  // namespace syncfree
