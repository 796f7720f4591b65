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

// A fixed-point sum back in float: mass / 2^shift.
SF_HD float fixed_sum(uint64_t mass, int shift) { return float(mass) * bits_float(uint32_t(127 - shift) << 23); }

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

// Note [Selection passes]
// -----------------------
// Both paths find a row's thresholds in the same steps (the CUDA kernels of
// warpers_cuda.cu, Note [Selection passes on CUDA]; the CPU's row_keep below):
//   1. a pass for the row max and lowest finite value and, with top-k, the
//      histogram of the first key digit (counts), and top-k's pick of it;
//   2. top-p without top-k (or with a top-k that keeps everything): a pass
//      for the exact masses against the max, their total and top-p's first
//      digit (the masses need the max, hence a pass of its own);
//   3. the candidates: every unmasked token whose key is in the chosen bin or
//      above, copied out (is_candidate);
//   4. the whole chain over the candidates, as over the row.
// The candidates are an upper set of the key order that holds every token
// the first selection can keep, and every later warper only counts tokens at
// or above the floor, so the thresholds are those of the chain over the row
// (top-p takes the row total of step 2 when it made the first pick). A lower
// first bin only adds candidates. Without top-k and top-p (min-p, typical-p
// alone) step 4 reads the row.
enum SelectMode : int {
  kSelectSkip = 0,  // no warper (or a greedy row): every token kept, nothing read
  kSelectKeepAll,   // +inf or no unmasked token: nothing to warp
  kSelectTopPHist,  // step 2 bins the row for top-p's first digit
  kSelectCompact,   // a first digit is fixed: the tokens from its bin up are the candidates
  kSelectFullRow,   // step 4 runs the warpers over the row itself
};

// The mode after step 1 for a row with warpers w and a finite maximum: a
// top-k pick that finds fewer unmasked tokens than k keeps them all (as
// select_top does) and the row goes on as if top-k were off.
SF_HD SelectMode mode_after_scan(const Warpers& w, bool top_k_picked) {
  if (w.top_k > 0 && top_k_picked) return kSelectCompact;
  return w.top_p < 1.0f ? kSelectTopPHist : kSelectFullRow;
}

// The least float whose order key is >= k: -inf when every key from -inf's
// up is, a NaN (which no y reaches) when none up to +inf's is. A float compare
// against it replaces a key compare over a whole row.
SF_HD float key_floor(uint32_t k) {
  if (k >= 0x80000000u) return bits_float(k & 0x7FFFFFFFu);  // non-negative floats (-0 >= +0 too)
  const uint32_t b = ~k;  // negative floats: key ~bits >= k iff bits <= ~k
  return b >= 0xFF800000u ? -kInf : bits_float(b);
}

// Step 3's test: an unmasked token whose key is in the first selection's
// chosen bin or above, floor = key_floor(the prefix after its first digit).
SF_HD bool is_candidate(float y, float floor) { return y != -kInf && y >= floor; }

}  // namespace syncfree

namespace syncfree {

// Host scratch for row_keep, reused across the rows a CPU thread handles.
struct SelectScratch {
  std::vector<float> candidates_y;  // the candidates (Note [Selection passes])
  std::vector<float> values;     // the values above top-k's floor
  std::vector<float> exps;       // e^(y - m), 0 for masked
  std::vector<uint32_t> keys;    // order keys of the current selection
  std::vector<uint64_t> weights; // weights of the current selection
  std::vector<int32_t> candidates, next, above;
  std::vector<uint64_t> lanes;  // first_digit_histogram's interleaved copies
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

// Steps 1 and 2 on the host, over a row of scaled logits y.
struct FirstSelection {
  SelectMode mode;
  float m, lowest;     // the row max (+0 for -0) and lowest finite value
  SelectState first;   // after the first digit's pick (kSelectCompact)
  uint64_t top_p_total;  // step 2's row total when top-p made the pick, else 0
};

// The first digit's histogram over y[0, n) into hist: weights 1 per unmasked
// token, or (masses) fixed_mass(e^(y - m)); returns their total. Logits crowd
// into few bins, so one counter per bin would chain every increment on the
// one before; kHistLanes interleaved copies keep that many independent.
// (No lambda here: a lambda's body would miss the AVX2+FMA target of the
// function it is inlined into, and with it the fused exp.)
constexpr int kHistLanes = 4;
constexpr int kHistBlock = 64;

SF_HOST_INLINE uint64_t first_digit_histogram(const float* y, int64_t n, bool masses, float m, int shift,
                                              std::vector<uint64_t>& lanes, uint64_t* hist) {
  lanes.assign(size_t(kHistLanes) * kBins, 0u);
  const SelectState start{0u, 0, 0u};
  uint64_t total = 0;
  int32_t digits[kHistBlock];
  float e[kHistBlock];
  for (int64_t first = 0; first < n; first += kHistBlock) {
    const int count = n - first < kHistBlock ? int(n - first) : kHistBlock;
    const float* v = y + first;
    for (int j = 0; j < count; ++j) digits[j] = key_digit(order_key(v[j]), start);
    if (masses) {
      SF_SIMD
      for (int j = 0; j < count; ++j) e[j] = token_exp(v[j], m);
    }
    for (int j = 0; j < count; ++j) {
      const uint64_t w = masses ? fixed_mass(e[j], shift) : (v[j] != -kInf ? 1u : 0u);
      lanes[size_t(j % kHistLanes) * kBins + size_t(digits[j])] += w;
      total += w;
    }
  }
  for (int b = 0; b < kBins; ++b) {
    uint64_t sum = 0;
    for (int l = 0; l < kHistLanes; ++l) sum += lanes[size_t(l) * kBins + size_t(b)];
    hist[b] = sum;
  }
  return total;
}

SF_HOST_INLINE FirstSelection first_selection(const float* y, int64_t vocab, const Warpers& w,
                                              SelectScratch& scratch) {
  const SelectState start{0u, 0, 0u};
  FirstSelection f{kSelectSkip, -kInf, kInf, start, 0u};
  if (!any_warper(w)) return f;
  f.mode = kSelectKeepAll;
  float m = -kInf, lowest = kInf;  // y is never NaN: the reductions vectorise exactly
#pragma omp simd reduction(max : m) reduction(min : lowest)
  for (int64_t i = 0; i < vocab; ++i) {
    m = y[i] > m ? y[i] : m;
    lowest = y[i] != -kInf && y[i] < lowest ? y[i] : lowest;
  }
  if (m == kInf || m == -kInf) return f;  // +inf wins (nothing to warp), or a degenerate row
  f.m = m + 0.0f;            // +0 for a -0 max, as the CUDA kernels' order-key max gives
  f.lowest = lowest;
  uint64_t hist[kBins];
  bool picked = false;
  if (w.top_k > 0) {
    first_digit_histogram(y, vocab, false, 0.0f, 0, scratch.lanes, hist);
    SelectState s = start;  // pick_bin moves s.above even when it fails
    picked = pick_bin(hist, uint64_t(w.top_k), s);
    if (picked) f.first = s;
  }
  f.mode = mode_after_scan(w, picked);
  if (f.mode == kSelectTopPHist) {
    const uint64_t total = first_digit_histogram(y, vocab, true, f.m, mass_shift(vocab), scratch.lanes, hist);
    SelectState s = start;
    const bool top_p_picked = pick_bin(hist, mass_target(w.top_p, total), s);
    f.mode = top_p_picked ? kSelectCompact : kSelectFullRow;
    if (top_p_picked) {
      f.first = s;
      f.top_p_total = total;
    }
  }
  return f;
}

// The kept set of one row of scaled logits y (masked at -inf) under the
// warper chain (See Note [Exact warper thresholds]), in the steps of Note
// [Selection passes]. Once top-k has set its floor, only the values above it
// can carry weight: they are compacted again for the later warpers.
SF_HOST_INLINE RowKeep row_keep(const float* y, int64_t vocab, Warpers w, SelectScratch& scratch) {
  RowKeep keep = keep_all();
  const FirstSelection f = first_selection(y, vocab, w, scratch);
  if (f.mode == kSelectSkip || f.mode == kSelectKeepAll) return keep;
  const float m = f.m;
  const int shift = mass_shift(vocab);
  const float* v = y;  // the values that can still be kept
  int64_t n = vocab;
  if (f.mode == kSelectCompact) {
    scratch.candidates_y.clear();
    const float floor = key_floor(f.first.prefix);
    for (int64_t first = 0; first < vocab; first += kHistBlock) {
      // Candidates are few: a vector test skips the blocks without one.
      const int64_t count = vocab - first < kHistBlock ? vocab - first : kHistBlock;
      const float* b = y + first;
      int any = 0;
#pragma omp simd reduction(| : any)
      for (int64_t j = 0; j < count; ++j) any |= is_candidate(b[j], floor) ? 1 : 0;
      if (any == 0) continue;
      for (int64_t j = 0; j < count; ++j)
        if (is_candidate(b[j], floor)) scratch.candidates_y.push_back(b[j]);
    }
    v = scratch.candidates_y.data();
    n = int64_t(scratch.candidates_y.size());
  }
  if (f.top_p_total != 0) w.top_k = 0;  // top-k keeps everything (first_selection)
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
    uint64_t total = masses();
    if (f.top_p_total != 0) total = f.top_p_total;  // the row's, not the candidates'
    if (select_top(keys, weights, n, mass_target(w.top_p, total), scratch, &u)) raise_floor(keep, key_value(u));
  }
  if (w.min_p > 0.0f) raise_floor(keep, min_p_floor(m, w.min_p));
  if (w.typical_p < 1.0f) {
    // E_p[y] (typical_center); each gap term is at most 1, so the same scale fits.
    const uint64_t total = masses();
    const float spread = typical_spread(m, keep.min_y, f.lowest);
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
