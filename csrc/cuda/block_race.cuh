// The race's block and warp pieces, shared by the sampling kernel
// (sample_cuda.cu) and the selection kernel that races the rows whose kept set
// it has compacted (warpers_cuda.cu). Device code only; include after the
// ATen/c10 CUDA headers.
#pragma once

#include <ATen/cuda/PhiloxUtils.cuh>

#include "../device_api.h"

namespace syncfree {

// ---------------------------------------------------------------------------
// Loads

// A full group's raw input as 16-byte words, and the race values they hold.
template <typename T>
constexpr int kGroupWords = int(kGroup * sizeof(T) / sizeof(uint4));

// Group g's words through 16-byte loads; the caller guarantees a full group
// and a 16-byte aligned row.
template <typename T>
__device__ __forceinline__ void load_group_words(const T* row, int64_t g, uint4 (&w)[kGroupWords<T>]) {
  const uint4* src = reinterpret_cast<const uint4*>(row + g * kGroup);
#pragma unroll
  for (int j = 0; j < kGroupWords<T>; ++j) w[j] = __ldg(src + j);
}

// An element's bits, as they lie in memory (the low half of a word first).
__device__ __forceinline__ unsigned element_bits(float v) { return __float_as_uint(v); }
__device__ __forceinline__ unsigned element_bits(c10::Half v) { return v.x; }
__device__ __forceinline__ unsigned element_bits(c10::BFloat16 v) { return v.x; }

// Group g's words through element loads (any alignment); a full group.
template <typename T>
__device__ __forceinline__ void load_group_words_scalar(const T* row, int64_t g, uint4 (&w)[kGroupWords<T>]) {
  const T* src = row + g * kGroup;
  constexpr int kPerWord = sizeof(unsigned) / sizeof(T);
  unsigned u[kGroup / kPerWord];
#pragma unroll
  for (int i = 0; i < kGroup / kPerWord; ++i) {
    u[i] = element_bits(src[i * kPerWord]);
    if constexpr (kPerWord == 2) u[i] |= element_bits(src[i * kPerWord + 1]) << 16;
  }
#pragma unroll
  for (int j = 0; j < kGroupWords<T>; ++j) w[j] = uint4{u[4 * j], u[4 * j + 1], u[4 * j + 2], u[4 * j + 3]};
}

// Group g's race values from its words (raw values, then finish_group).
template <typename T>
__device__ __forceinline__ void group_from_words(const uint4 (&w)[kGroupWords<T>], int64_t g, bool probs,
                                                 const RowRace& r, float (&v)[kGroup]) {
  constexpr int kPerWord = int(sizeof(uint4) / sizeof(T));
#pragma unroll
  for (int j = 0; j < kGroupWords<T>; ++j) {
    const T* e = reinterpret_cast<const T*>(&w[j]);
#pragma unroll
    for (int k = 0; k < kPerWord; ++k) v[j * kPerWord + k] = float(e[k]);
  }
  finish_group(v, g, probs, r);
}

// Group g of a row through 16-byte loads; the caller guarantees a full group
// and a 16-byte aligned row.
template <typename T>
__device__ __forceinline__ void load_group_vec(const T* row, int64_t g, bool probs, const RowRace& r,
                                               float (&v)[kGroup]) {
  uint4 w[kGroupWords<T>];
  load_group_words(row, g, w);
  group_from_words<T>(w, g, probs, r, v);
}

// The index a padding lane hands f: past every row (callers test i < vocab),
// so that it can alias no real token (the next chunk's, say).
constexpr int64_t kPaddingToken = INT64_MAX - kGroup;

// Calls f(y, index) for every token of chunk `split` of a row (race values as
// r gives them, -inf past the row's end), in whole-block rounds of
// kBlockThreads groups so that every thread of a warp calls f equally often
// (f may use warp intrinsics); lanes past the chunk call it with -inf at
// kPaddingToken + k.
template <typename T, int kBlockThreads, typename F>
__device__ void for_each_chunk_value(const SampleParams& p, const RowSplit& plan, bool aligned, int64_t row,
                                     int32_t split, const RowRace& r, F f) {
  const T* x = static_cast<const T*>(p.input) + row * p.row_stride;
  const ChunkGroups cg = chunk_groups(plan, split);
  const int64_t full_groups = p.vocab / kGroup;
  float v[kGroup];
  for (int64_t base = 0; base < cg.groups; base += kBlockThreads) {
    const int64_t q = base + threadIdx.x;
    const int64_t g = cg.first_group + q;
    const bool padding = q >= cg.groups;
    if (padding) {
#pragma unroll
      for (int k = 0; k < kGroup; ++k) v[k] = -kInf;
    } else if (aligned && g < full_groups) {
      load_group_vec(x, g, false, r, v);
    } else {
      load_group_scalar(x, p.vocab, g, false, r, v);
    }
    const int64_t first = padding ? kPaddingToken : g * kGroup;
#pragma unroll
    for (int k = 0; k < kGroup; ++k) f(v[k], first + k);
  }
}

// ---------------------------------------------------------------------------
// Reductions. Assumptions: blockDim.x == kBlockThreads; every thread calls.

__device__ __forceinline__ RacePartial shfl_down(const RacePartial& a, int delta) {
  RacePartial b;
  b.best.key = __shfl_down_sync(0xffffffffu, a.best.key, delta);
  b.best.index = __shfl_down_sync(0xffffffffu, a.best.index, delta);
  b.mass.max = __shfl_down_sync(0xffffffffu, a.mass.max, delta);
  b.mass.sum = __shfl_down_sync(0xffffffffu, a.mass.sum, delta);
  b.infs.first = __shfl_down_sync(0xffffffffu, a.infs.first, delta);
  b.infs.count = __shfl_down_sync(0xffffffffu, a.infs.count, delta);
  return b;
}

__device__ __forceinline__ RacePartial warp_merge(RacePartial a) {
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) a = merge_partials(a, shfl_down(a, delta));
  return a;  // complete in lane 0
}

// The block's merged partial, complete in thread 0.
template <int kBlockThreads>
__device__ RacePartial block_merge(RacePartial a) {
  constexpr int kWarps = kBlockThreads / 32;
  __shared__ RacePartial per_warp[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  a = warp_merge(a);
  if (lane == 0) per_warp[warp] = a;
  __syncthreads();
  if (warp == 0) a = warp_merge(lane < kWarps ? per_warp[lane] : empty_partial());
  __syncthreads();  // per_warp may be reused by the next call
  return a;
}

__device__ __forceinline__ RacePartial broadcast_lane0(const RacePartial& a) {
  RacePartial b;
  b.best.key = __shfl_sync(0xffffffffu, a.best.key, 0);
  b.best.index = __shfl_sync(0xffffffffu, a.best.index, 0);
  b.mass.max = __shfl_sync(0xffffffffu, a.mass.max, 0);
  b.mass.sum = __shfl_sync(0xffffffffu, a.mass.sum, 0);
  b.infs.first = __shfl_sync(0xffffffffu, a.infs.first, 0);
  b.infs.count = __shfl_sync(0xffffffffu, a.infs.count, 0);
  return b;
}

// The best of the warp's candidates, in every lane.
__device__ __forceinline__ Best warp_best(Best b) {
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) {
    const Best other{__shfl_xor_sync(0xffffffffu, b.key, delta), __shfl_xor_sync(0xffffffffu, b.index, delta)};
    b = better_of(b, other);
  }
  return b;
}

// The argmax of a row's processed, unscaled logits by one warp (Note [Logits
// past the temperature's range]); every lane returns it.
template <typename T>
__device__ Best raw_argmax_warp(const T* x, int64_t vocab, const RowProcess& q) {
  Best best = no_best();
  for (int64_t i = threadIdx.x % 32; i < vocab; i += 32)
    best = better_of(best, raw_entry(process_logit(float(x[i]), i, q), int32_t(i)));
  return warp_best(best);
}

// The race inside group `group` of a row of `vocab` tokens whose race
// values are value(i), one token per lane of a warp; every lane returns the
// winner, and *y its value.
template <bool kProbs, typename Value>
__device__ Best race_group_values_warp(int64_t vocab, const RowRace& r, int64_t group, Value value, float* y) {
  const int lane = threadIdx.x % 32;
  const int64_t first = group * kGroup;
  const bool mine = lane < group_size(vocab, group);
  const float v = mine ? value(first + lane) : masked_value(kProbs);
  const Best winner = warp_best(mine ? token_entry<kProbs>(v, int32_t(first + lane), r) : no_best());
  *y = __shfl_sync(0xffffffffu, v, int(winner.index - first) & 31);
  return winner;
}

// The same over a row of the input.
template <typename T, bool kProbs>
__device__ Best race_group_warp(const SampleParams& p, const RowRace& r, const T* x, int64_t group, float* y) {
  return race_group_values_warp<kProbs>(p.vocab, r, group, [&](int64_t i) { return load_value(x, i, kProbs, r); },
                                        y);
}

// Warp 0 turns the row's merged partial (in lane 0) into the token: when
// sampling, lanes race the winning group's tokens one each.
template <typename T, bool kProbs>
__device__ void finish_row_warp(const SampleParams& p, int64_t row, const RowRace& r, const T* x,
                                RacePartial acc) {
  acc = broadcast_lane0(acc);
  RowResult res = finish_row(acc, r, kProbs);
  RowNorm norm = norm_of(acc);
  if (!kProbs && degenerate(acc) && may_overflow(r)) {
    res = overflow_result(raw_argmax_warp(x, p.vocab, r.proc));
    norm.point = res.valid ? int32_t(res.token) : -1;
  }
  if (res.needs_resolve) {
    float y;
    res = resolved(res, race_group_warp<T, kProbs>(p, r, x, res.token, &y).index);
    if (r.want_mass && res.valid) res.logprob = chosen_logprob(y, acc.mass);
  }
  if (threadIdx.x == 0) {
    store_result(p, row, res.token, res.logprob, res.valid);
    if (p.norms != nullptr) p.norms[row] = norm;
  }
}

// The call's seed and position: the generator's (graph-safe: read from device
// memory when captured), a draw handed over in memory, or the params' own.
struct RngArgs {
  at::PhiloxCudaState philox;
  bool from_generator;
};

__device__ __forceinline__ void take_rng(SampleParams& p, const RngArgs& a) {
  if (a.from_generator) {
    const auto seed_offset = at::cuda::philox::unpack(a.philox);
    p.seed = std::get<0>(seed_offset);
    p.pos0 = std::get<1>(seed_offset);
  }
}

}  // namespace syncfree
