// The logprobs of any token of a row, and a row's top n. Shared by the CPU
// path and the CUDA kernels.
//
// Note [Top-n logprobs]
// ---------------------
// A row's top-n logprobs rank every token by its logprob under the row's
// distribution (token_logprob: "processed", the one the token was sampled
// from, or "raw", log_softmax of the unprocessed logits), highest first, ties
// to the lower id. Every token ranks, masked ones at -inf, so the n ids are
// always in [0, V) even where fewer than n tokens have mass. A degenerate
// row (nothing left after processing, valid False) has no distribution in
// either mode: its chosen and top-n logprobs are all -inf, ids 0..n-1, the
// raw mode's normaliser replaced by empty_norm(). The rank is a
// pure function of (logprob, id), so any selection order (the CPU's insertion
// list, the CUDA radix passes) finds the same ids; the logprobs themselves
// carry the row normaliser's float rounding. The chosen token's rank is the
// count of tokens whose logprob key is at least its own (itself and every
// tie included: vLLM's definition), in [1, V]; a degenerate row's is V.
#pragma once

#include "select.h"

namespace syncfree {

constexpr int kMaxTopLogprobs = 20;

// What a row's logprobs are measured against: the log-sum-exp of its values,
// their +inf count, and a point mass (Note [Logits past the temperature's
// range]; -1 for none).
struct RowNorm {
  LogSumExp mass;
  Infinities infs;
  int32_t point;
};

SF_HD RowNorm empty_norm() { return {no_mass(), no_infinities(), -1}; }

// A row's norm with the log of its sum taken once, for the passes that measure
// every token: token_logprob over it is token_logprob over the norm bit for bit
// (chosen_logprob's operations in its order), without a log a token.
struct RowLogprobs {
  RowNorm norm;
  float log_sum;  // log_positive(norm.mass.sum) where the row has mass
};

SF_HD RowLogprobs row_logprobs(const RowNorm& n) {
  return {n, n.mass.max != -kInf ? log_positive(n.mass.sum) : 0.0f};
}

// Token i's logprob, its value y under the row's values (scaled, warped, or raw).
SF_HD float token_logprob(float y, int64_t i, const RowLogprobs& l) {
  const RowNorm& n = l.norm;
  if (n.infs.count > 0) return y == kInf ? -log_positive(float(n.infs.count)) : -kInf;
  if (n.point >= 0) return i == n.point ? 0.0f : -kInf;
  if (y == -kInf || n.mass.max == -kInf) return -kInf;
  return y - n.mass.max - l.log_sum;  // chosen_logprob(y, n.mass)
}

SF_HD float token_logprob(float y, int64_t i, const RowNorm& n) { return token_logprob(y, i, row_logprobs(n)); }

// An entry of a top-n list: ordered by logprob (as an order key), then by the lower id.
struct TopEntry {
  uint32_t key;  // order_key of the logprob
  int32_t index;
};

SF_HD TopEntry top_entry(float y, int64_t i, const RowLogprobs& l) {
  return {order_key(token_logprob(y, i, l)), int32_t(i)};
}

// How many of group values v[0, n) (tokens first, first + 1, ...) have a key at least `chosen`
// (a rank's count, Note [Top-n logprobs]). In a row with mass and neither +inf nor a point mass
// every token's logprob is y - max - log_sum (-inf for y = -inf): a loop without branches.
SF_HD int count_at_least(const float (&v)[kGroup], int n, int64_t first, const RowLogprobs& l, uint32_t chosen) {
  const RowNorm& m = l.norm;
  int count = 0;
  if (m.infs.count == 0 && m.point < 0 && m.mass.max != -kInf) {
    SF_SIMD
    for (int k = 0; k < kGroup; ++k) count += (k < n) & (order_key(v[k] - m.mass.max - l.log_sum) >= chosen);
    return count;
  }
  for (int k = 0; k < n; ++k) count += top_entry(v[k], first + k, l).key >= chosen;
  return count;
}

SF_HD bool ranks_before(const TopEntry& a, const TopEntry& b) {
  return a.key > b.key || (a.key == b.key && a.index < b.index);
}

// The raw value of a logit for "raw" logprobs: NaN and -inf masked, +inf kept.
SF_HD float raw_value(float x) { return scaled_logit(x, 1.0f); }

// The raw logits' group mass, for the raw log-normalizer.
SF_HD void raw_group_mass(RacePartial& acc, float (&v)[kGroup], int32_t first) {
  RowRace r{};
  r.inv_temperature = 1.0f;
  r.greedy = false;
  r.want_mass = true;
  r.keep = keep_all();
  acc.best = Best{kInf, kNoIndex};  // no race: every group is hopeless
  (void)group_weight<false>(acc, v, first, r);
}

SF_HD RowNorm norm_of(const RacePartial& acc) { return {acc.mass, acc.infs, -1}; }

// Whether a row's processed norm leaves it any token (else it is degenerate).
SF_HD bool has_distribution(const RowNorm& n) { return n.infs.count > 0 || n.point >= 0 || n.mass.max != -kInf; }

// How many candidates past the top n the CPU's raw pass keeps (Note [Raw top-n
// in the mass's pass], sample_cpu.cpp).
constexpr int kTopSlack = 4;

// The best n entries seen so far, best first (the CPU's selection).
struct TopList {
  TopEntry e[kMaxTopLogprobs + kTopSlack];
  int n, size;
};

SF_HD TopList empty_top(int n) {
  TopList t;
  t.n = n;
  t.size = 0;
  return t;
}

SF_HD void top_insert(TopList& t, const TopEntry& x) {
  if (t.size == t.n && !ranks_before(x, t.e[t.size - 1])) return;
  int j = t.size < t.n ? t.size++ : t.size - 1;
  for (; j > 0 && ranks_before(x, t.e[j - 1]); --j) t.e[j] = t.e[j - 1];
  t.e[j] = x;
}

}  // namespace syncfree
