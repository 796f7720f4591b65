// Warpers (top-k, top-p, min-p, typical-p) as thresholds found by exact
// selection: no sort, a bounded number of passes, the same result on CPU and GPU.
//
// Note [Exact warper thresholds]
// ------------------------------
// Every warper keeps a set of tokens described by one or two numbers per row
// (RowKeep): top-k, top-p and min-p keep an upper set of scaled logits
// (y >= min_y), typical-p keeps the tokens whose deviation |y - center| is at
// most max_dev. Each number is an exact order statistic found by radix
// selection over 32-bit keys that order the floats: a fixed number of
// histogram passes (digits of kDigitBits), each a read of the row.
// Probability masses enter as 64-bit fixed-point integers, w = floor(e^(y - m)
// 2^S) with m the row max and S chosen so the row's sum cannot overflow; their
// sums are exact in any order, so CPU and GPU (whatever their reduction order)
// find the same thresholds. Up to rounding of e^(y - m) to 2^-S, the kept
// sets are those of a float64 sort-based reference; at a boundary where the
// cumulative mass is within ~1e-6 of top_p, either side may win.
//
// Chain (HF, LoRAX, TGI): temperature -> top-k -> top-p -> min-p -> typical-p,
// each on the distribution renormalised over the survivors of the earlier ones.
//   top-k:     keep y >= the k-th largest y (ties at the boundary kept).
//   top-p:     keep t iff the mass of tokens strictly more likely than t is
//              < top_p: y >= u, u the first value from the top where the
//              inclusive cumulative mass reaches top_p.
//   min-p:     keep p >= min_p * max p, i.e. y >= m + log(min_p).
//   typical-p: deviation |-log p - H| = |y - E_p[y]|; keep t iff the mass of
//              tokens with strictly smaller deviation is < typical_p.
// +inf logits win before any warper; greedy rows ignore the warpers.
#pragma once

#include "race.h"

#include <initializer_list>
#include <vector>

namespace syncfree {

// One row's warper values after the clamps of README "Warpers" (values inside
// per-row tensors cannot be checked without a sync).
struct Warpers {
  int64_t top_k;    // 0: off
  float top_p;      // 1: off; 0 keeps only the most likely value
  float min_p;      // 0: off
  float typical_p;  // 1: off; 0 keeps only the least deviating value
};

SF_HD float clamp_mass_fraction(float p) {
  return !(p < 1.0f) ? 1.0f : (p > 0.0f ? p : 0.0f);  // NaN and >= 1: off; <= 0: 0
}

SF_HD Warpers clamp_warpers(int64_t top_k, float top_p, float min_p, float typical_p, int64_t vocab) {
  Warpers w;
  w.top_k = top_k <= 0 || top_k >= vocab ? 0 : top_k;
  w.top_p = clamp_mass_fraction(top_p);
  w.min_p = min_p > 0.0f ? (min_p < 1.0f ? min_p : 1.0f) : 0.0f;  // NaN: off
  w.typical_p = clamp_mass_fraction(typical_p);
  return w;
}

SF_HD bool any_warper(const Warpers& w) {
  return w.top_k != 0 || w.top_p < 1.0f || w.min_p > 0.0f || w.typical_p < 1.0f;
}

// The chain's upper-set warpers (top-k, top-p, min-p) only ever raise the floor.
SF_HD void raise_floor(RowKeep& keep, float v) { keep.min_y = v > keep.min_y ? v : keep.min_y; }

// min-p keeps p >= min_p * max p, i.e. y >= m + log(min_p).
SF_HD float min_p_floor(float m, float min_p) { return m + log_positive(min_p); }

// A uint32 that orders floats like the floats (-0 and +0 equal).
SF_HD uint32_t order_key(float y) {
  const uint32_t b = float_bits(y + 0.0f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

SF_HD float key_value(uint32_t key) {
  return bits_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

// typical-p's key: |y - center| reversed, so the smallest deviation ranks first.
SF_HD uint32_t deviation_key(float y, float center) {
  const float d = y - center;
  return ~order_key(d < 0.0f ? -d : d);
}

constexpr int kDigitBits = 11;  // 3 passes: 11 + 11 + 10 bits
constexpr int kBins = 1 << kDigitBits;

// Fixed-point scale: vocab * 2^S < 2^63 with weights <= 1.
SF_HD int mass_shift(int64_t vocab) {
  int bits = 0;
  while ((int64_t(1) << bits) < vocab) ++bits;
  return 62 - bits;
}

SF_HD uint64_t fixed_mass(float w, int shift) {
  // w in [0, 1]: scaling by a power of two is exact, the conversion truncates.
  // The product is at most 2^62, so the signed conversion (one instruction
  // on x86, unlike the unsigned one) gives the same value.
  return uint64_t(int64_t(w * bits_float(uint32_t(127 + shift) << 23)));
}

// typical-p's center E_p[y] = m - s sum(w (m - y) / s) / sum(w): the gap
// terms are taken relative to the spread s of the tokens that can carry mass,
// so that a row whose logits differ by less than the fixed-point resolution (a
// huge temperature) keeps its center (it once fell on the max). s = m - the
// lowest of min_y and the finite logits, at most 87 (a token further below m
// has no mass: exp_nonpositive); (m - y) / s is then in [0, 1] for every token
// with mass.
SF_HD float typical_spread(float m, float min_y, float lowest) {
  const float s = m - (min_y > lowest ? min_y : lowest);
  return s < 87.0f ? s : 87.0f;
}

SF_HD float typical_center(float m, float spread, uint64_t gap, uint64_t total) {
  return m - spread * (float(gap) / float(total));
}

// A token's terms in the sums row_keep takes (syncfree.distributed sums them
// over shards): fixed_mass(e^(y - m)) and, for typical-p, fixed_mass(e^(y - m)
// (m - y) / spread); both 0 for a masked token.
struct TokenMass {
  uint64_t mass, gap;
};

// Their float parts, e = e^(y - m) and e (m - y) / spread, as selects rather
// than branches so that loops over them vectorise.
SF_HD float token_exp(float y, float m) { return y == -kInf ? 0.0f : exp_nonpositive(y - m); }
// e = 0 covers y = -inf and tokens so far below m that m - y overflows (0 * inf is NaN).
SF_HD float token_gap(float y, float m, float e, float spread) {
  return e > 0.0f && spread > 0.0f ? e * ((m - y) / spread) : 0.0f;
}

SF_HD TokenMass token_mass(float y, float m, float spread, int shift) {
  const float e = token_exp(y, m);
  return {fixed_mass(e, shift), fixed_mass(token_gap(y, m, e, spread), shift)};
}

// syncfree.distributed's radix passes over a shard of scaled logits y: the
// key and weight of token i as row_keep gives them. weights null: top-k
// (weight 1 for an unmasked token); centers null: order keys (top-k, top-p),
// else deviation keys around the row's center (typical-p).
struct ShardEntry {
  uint32_t key;
  uint64_t weight;
};

SF_HD ShardEntry shard_entry(const float* y, const int64_t* weights, const float* centers, int64_t row, int64_t i) {
  const float v = y[i];
  const uint64_t weight = weights != nullptr ? uint64_t(weights[i]) : (v != -kInf ? 1u : 0u);
  return {centers != nullptr ? deviation_key(v, centers[row]) : order_key(v), weight};
}

// The target weight for a mass fraction p of a total: ceil(p * total).
SF_HD uint64_t mass_target(float p, uint64_t total) {
  const double t = double(p) * double(total);
  const uint64_t floor_t = uint64_t(t);
  return double(floor_t) < t ? floor_t + 1 : floor_t;
}

// One pass of a radix selection from the top: keys matching `prefix` in
// their top `done` bits were binned by their next digit into hist (bins
// ascending). Walks the bins from the highest, adding to `above` (the weight
// of all keys greater than the prefix range), and picks the first non-empty
// bin where above + hist reaches target. Returns false if none does.
struct SelectState {
  uint32_t prefix;
  int done;        // bits fixed so far
  uint64_t above;  // weight of keys above the current range
};

SF_HD int digit_bits(int done) { return 32 - done < kDigitBits ? 32 - done : kDigitBits; }

SF_HD int key_digit(uint32_t key, const SelectState& s) {
  const int bits = digit_bits(s.done);
  return int((key >> (32 - s.done - bits)) & ((1u << bits) - 1u));
}

SF_HD bool in_range(uint32_t key, const SelectState& s) {
  return s.done == 0 || (key >> (32 - s.done)) == (s.prefix >> (32 - s.done));
}

SF_HD bool pick_bin(const uint64_t* hist, uint64_t target, SelectState& s) {
  const int bits = digit_bits(s.done);
  for (int bin = (1 << bits) - 1; bin >= 0; --bin) {
    if (hist[bin] > 0 && s.above + hist[bin] >= target) {
      s.prefix |= uint32_t(bin) << (32 - s.done - bits);
      s.done += bits;
      return true;
    }
    s.above += hist[bin];
  }
  return false;
}

}  // namespace syncfree

namespace syncfree {

// Host scratch for row_keep, reused across the rows a CPU thread handles.
struct SelectScratch {
  std::vector<float> values;     // the values above top-k's floor
  std::vector<float> exps;       // e^(y - m), 0 for masked
  std::vector<uint32_t> keys;    // order keys of the current selection
  std::vector<uint64_t> weights; // weights of the current selection
  std::vector<int32_t> candidates, next, above;
};

// Radix selection from the top over arrays (the CPU path): finds the largest
// key u whose inclusive cumulative weight from the top reaches target (weight
// 0: not a candidate); false if the total weight is below target. Each pass
// after the first reads only the candidates left in the chosen bin. On
// success the weighted elements with key >= u are scratch.above (key > u)
// and scratch.candidates (key == u).
SF_HOST_INLINE bool select_top(const uint32_t* keys, const uint64_t* weights, int64_t n, uint64_t target,
                               SelectScratch& scratch, uint32_t* result) {
  SelectState s{0u, 0, 0u};
  uint64_t hist[kBins];
  auto& candidates = scratch.candidates;
  auto& next = scratch.next;
  auto& above = scratch.above;
  above.clear();
  // After a pass: the candidates left in the chosen bin, and those above it (kept whatever follows).
  const auto split = [&](int32_t i) {
    if (in_range(keys[i], s)) {
      next.push_back(i);
    } else if ((keys[i] >> (32 - s.done)) > (s.prefix >> (32 - s.done))) {
      above.push_back(i);
    }
  };
  // First pass over the whole row, without an index list.
  for (int b = 0; b < kBins; ++b) hist[b] = 0;
  for (int64_t i = 0; i < n; ++i) hist[key_digit(keys[i], s)] += weights[i];
  if (!pick_bin(hist, target, s)) return false;
  next.clear();
  for (int64_t i = 0; i < n; ++i)
    if (weights[i] > 0) split(int32_t(i));
  candidates.swap(next);
  while (s.done < 32) {
    for (int b = 0; b < kBins; ++b) hist[b] = 0;
    for (const int32_t i : candidates) hist[key_digit(keys[i], s)] += weights[i];
    if (!pick_bin(hist, target, s)) return false;
    next.clear();
    for (const int32_t i : candidates) split(i);
    candidates.swap(next);
  }
  *result = s.prefix;
  return true;
}

// The kept set of one row of scaled logits y (masked at -inf) under the
// warper chain (See Note [Exact warper thresholds]). Once top-k has set its
// floor, only the values above it can carry weight: they are compacted, and
// the later warpers (their exps included) read those, not the row. The
// thresholds depend only on the values and on integer sums, whose order does
// not matter, so they are those of the whole row.
SF_HOST_INLINE RowKeep row_keep(const float* y, int64_t vocab, const Warpers& w, SelectScratch& scratch) {
  RowKeep keep = keep_all();
  float m = -kInf, lowest = kInf;  // the largest and the smallest finite y
  for (int64_t i = 0; i < vocab; ++i) {
    if (y[i] == kInf) return keep;  // +inf wins: nothing to warp
    m = y[i] > m ? y[i] : m;
    lowest = y[i] != -kInf && y[i] < lowest ? y[i] : lowest;
  }
  if (m == -kInf) return keep;  // degenerate row
  m = m + 0.0f;                 // +0 for a -0 max, as the CUDA kernel's order-key max gives
  const int shift = mass_shift(vocab);
  const float* v = y;  // the values that can still be kept
  int64_t n = vocab;
  uint32_t* keys = nullptr;
  uint64_t* weights = nullptr;
  const auto arrays = [&] {
    scratch.keys.resize(size_t(n));
    scratch.weights.resize(size_t(n));
    keys = scratch.keys.data();
    weights = scratch.weights.data();
  };
  uint32_t u;
  if (w.top_k > 0) {
    arrays();
    for (int64_t i = 0; i < n; ++i) {
      keys[i] = order_key(v[i]);
      weights[i] = v[i] != -kInf ? 1u : 0u;
    }
    if (select_top(keys, weights, n, uint64_t(w.top_k), scratch, &u)) {
      keep.min_y = key_value(u);
      // The values the later warpers read: top-k's kept set, as select_top leaves it.
      scratch.values.clear();
      for (const auto* list : {&scratch.above, &scratch.candidates})
        for (const int32_t i : *list) scratch.values.push_back(v[i]);
      v = scratch.values.data();
      n = int64_t(scratch.values.size());
    }
  }
  if (w.top_p >= 1.0f && w.typical_p >= 1.0f) {  // no mass-based warper
    if (w.min_p > 0.0f) raise_floor(keep, min_p_floor(m, w.min_p));
    return keep;
  }
  scratch.exps.resize(size_t(n));
  float* e = scratch.exps.data();
  for (int64_t i = 0; i < n; ++i) e[i] = token_exp(v[i], m);
  arrays();
  // Fixed-point masses of the values kept so far (v >= min_y).
  const auto masses = [&] {
    uint64_t total = 0;
    for (int64_t i = 0; i < n; ++i) {
      weights[i] = v[i] >= keep.min_y ? fixed_mass(e[i], shift) : 0u;
      total += weights[i];
    }
    return total;
  };
  if (w.top_p < 1.0f) {
    for (int64_t i = 0; i < n; ++i) keys[i] = order_key(v[i]);
    const uint64_t total = masses();
    if (select_top(keys, weights, n, mass_target(w.top_p, total), scratch, &u)) raise_floor(keep, key_value(u));
  }
  if (w.min_p > 0.0f) raise_floor(keep, min_p_floor(m, w.min_p));
  if (w.typical_p < 1.0f) {
    // E_p[y] (typical_center); each gap term is at most 1, so the same scale fits.
    const uint64_t total = masses();
    const float spread = typical_spread(m, keep.min_y, lowest);
    uint64_t gap = 0;
    for (int64_t i = 0; i < n; ++i)
      if (weights[i] > 0) gap += fixed_mass(token_gap(v[i], m, e[i], spread), shift);
    const float center = typical_center(m, spread, gap, total);
    for (int64_t i = 0; i < n; ++i) keys[i] = deviation_key(v[i], center);
    if (select_top(keys, weights, n, mass_target(w.typical_p, total), scratch, &u)) {
      keep.center = center;
      keep.max_dev = key_value(~u);
    }
  }
  return keep;
}

}  // namespace syncfree
