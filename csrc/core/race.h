// The exponential race over one row, shared by the CPU path and the CUDA kernel.
//
// Note [Two-level exponential race]
// ---------------------------------
// The row's token is argmax_i y_i + G_i with y_i = logit_i / T and G_i Gumbel
// noise (equivalently argmin E_i / p_i with E_i ~ Exp(1)). Drawing one G_i per
// token costs a Philox word and two logs per element, which makes a GPU kernel
// compute-bound far below memory bandwidth. The race decomposes exactly over
// groups of tokens: the maximum of y_i + G_i over a group is distributed as
// log(sum_group e^y_i) + G_group, and the winner inside the group is
// independent of it with law e^y_i / sum_group e^y_i. So each group of
// kGroup = 16 consecutive tokens runs in the race with key
// m + log(sum e^(y_i - m)) + G_group (m the group max, one group word), and
// only the winning group is raced token by token with the token words
// (See Note [syncfree RNG counter layout]). The law is exactly the categorical
// softmax(y); per element the hot loop does one exp.
//
// Rules shared by every path:
//   - NaN and -inf logits are masked; masked tokens never win.
//   - +inf logits (or logit/T overflowing to +inf) win over finite ones; among
//     several, the lowest index wins.
//   - A row with no unmasked token is degenerate: token 0, valid = false.
//   - A temperature below 2^-126 (0, subnormal, negative or NaN) is greedy
//     (Note [Greedy temperatures]): argmax of the logits, lowest index on
//     ties, logprob from softmax(logits).
//   - Ties between keys go to the lower index.
#pragma once

#include "adjust.h"
#include "fmath.h"
#include "philox.h"

namespace syncfree {

constexpr int kGroup = 16;
static_assert(kGroup == kExceptionSpan, "one exception bit per race group");
constexpr int32_t kNoIndex = 0x7FFFFFFF;
// The largest vocabulary: token and group indices stay int32, with room for kNoIndex.
constexpr int64_t kMaxVocab = int64_t(kNoIndex) - 2 * kGroup;

// argmax with the lower-index tie rule: associative and commutative, so any
// reduction order (threads, warps, blocks, CPU chunks) finds the same winner.
struct Best {
  float key;
  int32_t index;
};

SF_HD Best no_best() { return {-kInf, kNoIndex}; }

SF_HD Best better_of(Best a, Best b) {
  const bool b_wins = b.key > a.key || (b.key == a.key && b.index < a.index);
  return b_wins ? b : a;
}

// Online log-sum-exp of the finite scaled logits (for logprobs only).
struct LogSumExp {
  float max;
  float sum;  // sum of exp(y - max)
};

SF_HD LogSumExp no_mass() { return {-kInf, 0.0f}; }

SF_HD LogSumExp merge_mass(LogSumExp a, LogSumExp b) {
  const float m = a.max > b.max ? a.max : b.max;
  if (m == -kInf) return no_mass();
  const float sa = a.max == m ? a.sum : a.sum * exp_nonpositive(a.max - m);
  const float sb = b.max == m ? b.sum : b.sum * exp_nonpositive(b.max - m);
  return {m, sa + sb};
}

// +inf logits: how many, and the first.
struct Infinities {
  int32_t first;
  int32_t count;
};

SF_HD Infinities no_infinities() { return {kNoIndex, 0}; }

SF_HD Infinities merge_infinities(Infinities a, Infinities b) {
  return {a.first < b.first ? a.first : b.first, a.count + b.count};
}

// What a thread, a block or a CPU chunk knows about its part of a row.
// best.index is a group index when sampling and a token index when greedy.
struct RacePartial {
  Best best;
  LogSumExp mass;
  Infinities infs;
};

SF_HD RacePartial empty_partial() { return {no_best(), no_mass(), no_infinities()}; }

SF_HD RacePartial merge_partials(const RacePartial& a, const RacePartial& b) {
  return {better_of(a.best, b.best), merge_mass(a.mass, b.mass), merge_infinities(a.infs, b.infs)};
}

// The tokens the warpers keep in a row: y >= min_y and |y - center| <= max_dev
// (See Note [Exact warper thresholds] in select.h).
struct RowKeep {
  float min_y;
  float center;
  float max_dev;
};

SF_HD RowKeep keep_all() { return {-kInf, 0.0f, kInf}; }

// y if the warpers keep it, -inf otherwise (+inf always stays).
SF_HD float apply_keep(float y, const RowKeep& k) {
  const float d = y - k.center;
  const float dev = d < 0.0f ? -d : d;
  const bool kept = y == kInf || (y >= k.min_y && dev <= k.max_dev);
  return kept ? y : -kInf;
}

// How one row is raced (See Note [syncfree RNG counter layout] for `stream`).
struct RowRace {
  float inv_temperature;  // 1 for greedy rows and for probabilities
  bool greedy;
  bool want_mass;  // logprobs requested
  bool warped;     // keep is not keep_all()
  RowKeep keep;
  RowStream stream;
  RowProcess proc = no_process();  // mask, bias and penalties (Note [Processing in the pass])
};

// Note [Greedy temperatures]
// --------------------------
// A row is greedy when its temperature, as the kernels see it (float32), is
// below FLT_MIN = 2^-126, the smallest normal float: 0, a subnormal, a
// negative value or NaN (a float64 value that rounds to one of these
// included). Every temperature from 2^-126 up samples softmax(logits / T)
// with y = logit * (1 / T): 1 / T is then at most 2^126, finite, so no row
// ever scales by anything but its own reciprocal (below 1 / FLT_MAX ~ 2.9e-39
// the reciprocal would overflow, and a GPU flushing subnormals reads them as
// 0 anyway). The one definition: the op files, the shards and verify_draft
// ask it too.
constexpr float kMinTemperature = 0x1p-126f;

SF_HD bool is_greedy_temperature(float t) { return !(t >= kMinTemperature); }

// Temperature for per-row values (README "Bad input"): greedy as above, +inf
// samples uniformly among the unmasked tokens.
SF_HD void set_temperature(RowRace& r, float t) {
  r.greedy = is_greedy_temperature(t);
  r.inv_temperature = r.greedy ? 1.0f : t == kInf ? 0.0f : 1.0f / t;
}

// y = logit / T, with masked tokens (NaN, -inf) at -inf and +inf kept +inf.
SF_HD float scaled_logit(float x, float inv_t) {
  const float y = x == kInf ? kInf : x * inv_t;
  return y == y ? y : -kInf;
}

// A probability weight: NaN, negative and zero weights are masked (0).
SF_HD float clean_weight(float w) { return w > 0.0f ? w : 0.0f; }

// Sums and maxima over a group in a fixed pairwise-tree order (i with
// i + 8, then i + 4, ...): the same bits on CPU and GPU, and each level is
// one vector operation on the CPU and independent instructions on the GPU.
// Each level is its own instantiation with a constant trip count: a loop
// over the widths (width /= 2) is one nvcc leaves rolled, and a rolled loop
// indexes the array at run time, which puts it in local memory (a stack
// frame) although ptxas reports no spill.
template <int kWidth>
SF_HD void tree_sum_level(float (&a)[kGroup]) {
  SF_SIMD
  for (int i = 0; i < kWidth; ++i) a[i] = a[i] + a[i + kWidth];
}

template <int kWidth, int kSize>
SF_HD void tree_max_level(float (&a)[kSize]) {
  SF_SIMD
  for (int i = 0; i < kWidth; ++i) a[i] = a[i + kWidth] > a[i] ? a[i + kWidth] : a[i];
}

static_assert(kGroup == 16, "the trees below have four levels");

SF_HD float tree_sum(float (&a)[kGroup]) {
  tree_sum_level<8>(a);
  tree_sum_level<4>(a);
  tree_sum_level<2>(a);
  tree_sum_level<1>(a);
  return a[0];
}

SF_HD float tree_max(float (&a)[kGroup]) {
  tree_max_level<8>(a);
  tree_max_level<4>(a);
  tree_max_level<2>(a);
  tree_max_level<1>(a);
  return a[0];
}

// tree_max of v without touching it (the same tree, so the same bits): the
// first level reads v, so the CPU copies no array through the stack.
SF_HD float group_max(const float (&v)[kGroup]) {
  float a[kGroup / 2];
  SF_SIMD
  for (int i = 0; i < kGroup / 2; ++i) a[i] = v[i + kGroup / 2] > v[i] ? v[i + kGroup / 2] : v[i];
  tree_max_level<4>(a);
  tree_max_level<2>(a);
  tree_max_level<1>(a);
  return a[0];
}

SF_HD float masked_value(bool probs) { return probs ? 0.0f : -kInf; }

// A value with +inf masked (a group's finite values, which its weight sums).
SF_HD float finite_value(float x, bool probs) { return x == kInf ? masked_value(probs) : x; }

// Visits one group: the kGroup tokens starting at token `first` (a multiple
// of kGroup). For logits v holds scaled logits (scaled_logit), for
// probabilities clean weights (clean_weight); a short last group is padded
// with masked values (masked_value), so every loop has a fixed length.
//
// Split in two so the CPU can draw the noise of several groups together:
// group_weight folds the group into acc (infinities, greedy best, mass) and
// returns the log weight it races with (-inf: it does not race);
// race_group draws its noise and enters it in the race. word() gives the
// group's word (group_word) when the group may race: drawn on the spot, or
// (the CPU) drawn for a batch of groups together.
struct DrawGroupWord {
  const RowStream& stream;
  int64_t group;
  SF_HD_METHOD uint32_t operator()() const { return group_word(stream, group); }
};

template <bool kProbs, typename Word>
SF_HD float group_weight(RacePartial& acc, const float (&v)[kGroup], int32_t first, const RowRace& r, Word word) {
  // +inf tokens are rare: found by the group max, counted only when present. Without
  // one, the finite values are v themselves and their max is the one just taken. (The
  // finite values are selected element by element below, not held in a second array:
  // choosing between two arrays at run time would put them in local memory on the GPU.)
  float m = group_max(v);
  if (m == kInf) {
    Infinities infs = no_infinities();
    for (int i = 0; i < kGroup; ++i) {
      if (v[i] == kInf) {
        infs.first = infs.count == 0 ? first + i : infs.first;
        infs.count += 1;
      }
    }
    acc.infs = merge_infinities(acc.infs, infs);
    float finite[kGroup];
    SF_SIMD
    for (int i = 0; i < kGroup; ++i) finite[i] = finite_value(v[i], kProbs);
    m = group_max(finite);
  }
  if (!kProbs && r.greedy) {
    // The group's candidate is its max at its lowest index; only a group
    // that can win or tie needs that index.
    if (m != -kInf && !(m < acc.best.key)) {
      int at = 0;
      SF_UNROLL
      for (int i = kGroup - 1; i >= 0; --i) at = finite_value(v[i], kProbs) == m ? i : at;
      acc.best = better_of(acc.best, {m, first + at});
    }
    if (!r.want_mass) return -kInf;
  }
  if (kProbs ? !(m > 0.0f) : m == -kInf) return -kInf;  // nothing unmasked and finite

  // Note [Groups that cannot win]
  // A group whose best possible key, m + log(16) + its noise, is below the
  // current best cannot win: skip its noise, and its exps unless logprobs need
  // them. First with the largest noise there is (kGumbelMax, no word drawn),
  // then with the bound its own group word gives (gumbel_bound: one Philox
  // block and a count of leading zeros, no log). Most groups of a row fail
  // the second test once a good key is found, so the race pays its exps and
  // logs only for the few that may win. The |m| term covers the rounding of
  // the key's two additions, so both bounds are rigorous: skipping never
  // changes a token, and never depends on the visiting order.
  const float abs_m = m < 0.0f ? -m : m;
  const float slack = 2.7726f + abs_m * 0x1p-20f;
  bool hopeless = !kProbs && m + (slack + kGumbelMax) < acc.best.key;
  if (!kProbs && !hopeless && !r.greedy && acc.best.key != -kInf)
    hopeless = m + (slack + gumbel_bound(word())) < acc.best.key;
  if (hopeless && !r.want_mass) return -kInf;
  // Group weight: sum e^(y - m) for logits, sum w for probabilities.
  float scratch[kGroup];
  SF_SIMD
  for (int i = 0; i < kGroup; ++i) {
    const float x = finite_value(v[i], kProbs);
    scratch[i] = kProbs ? x : exp_nonpositive(x - m);
  }
  const float sum = tree_sum(scratch);
  if (!kProbs && r.want_mass) acc.mass = merge_mass(acc.mass, {m, sum});
  if (r.greedy || hopeless || !(sum > 0.0f)) return -kInf;
  return kProbs ? log_positive(sum) : m + log_positive(sum);
}

template <bool kProbs>
SF_HD float group_weight(RacePartial& acc, const float (&v)[kGroup], int32_t first, const RowRace& r) {
  return group_weight<kProbs>(acc, v, first, r, DrawGroupWord{r.stream, first / kGroup});
}

// Group `group` with log weight log_weight enters the race (See Note
// [syncfree RNG counter layout] for its word).
SF_HD float group_key(float log_weight, int64_t group, const RowRace& r) {
  return log_weight + gumbel_from_bits(group_word(r.stream, group));
}

template <bool kProbs>
SF_HD void visit_group(RacePartial& acc, const float (&v)[kGroup], int32_t first, const RowRace& r) {
  const float log_weight = group_weight<kProbs>(acc, v, first, r);
  if (log_weight != -kInf) acc.best = better_of(acc.best, {group_key(log_weight, first / kGroup, r), first / kGroup});
}


// The race inside the winning group, one token at a time: token i's key is
// y_i + G_i with its own token word. Returns the winner (index and key).
template <bool kProbs>
SF_HD Best token_entry(float v, int32_t token, const RowRace& r) {
  const bool masked = kProbs ? !(v > 0.0f) || v == kInf : v == -kInf || v == kInf;
  if (masked) return no_best();
  const float y = kProbs ? log_positive(v) : v;
  return {y + gumbel_from_bits(token_word(r.stream, token)), token};
}

// Final answer for a row once all partials are merged.
struct RowResult {
  int64_t token;
  float logprob;
  bool valid;
  bool needs_resolve;  // sampling: token holds the winning group, to be raced token by token
};

SF_HD RowResult finish_row(const RacePartial& p, const RowRace& r, bool probs) {
  if (p.infs.count > 0)
    return {p.infs.first, -log_positive(float(p.infs.count)), true, false};
  if (p.best.index == kNoIndex) return {0, -kInf, false, false};
  if (r.greedy && !probs) {
    const float logprob = r.want_mass ? p.best.key - p.mass.max - log_positive(p.mass.sum) : 0.0f;
    return {p.best.index, logprob, true, false};
  }
  return {p.best.index, 0.0f, true, true};
}

// logprob of the chosen token with scaled logit y.
SF_HD float chosen_logprob(float y, const LogSumExp& mass) {
  return y - mass.max - log_positive(mass.sum);
}

// Note [Logits past the temperature's range]
// -------------------------------------------
// A tiny temperature can scale every unmasked logit of a row to -inf (logit / T
// overflows float32, e.g. logit -5 at T = 1e-38). softmax(logits / T) tends to the argmax
// as T -> 0, so such a row, degenerate after scaling but with unmasked logits,
// answers the argmax of its raw logits (the lowest index among ties), valid,
// with logprob 0 (the limit's whole mass). Only rows with inv_temperature > 1
// can overflow so; their finishing step (the CPU finish, the CUDA finishing
// warp, a shard's merge) then reads the row once more, so a degenerate row with
// T < 1 costs one extra read. (A logit / T overflowing to +inf follows the
// +inf rule above.)
SF_HD bool may_overflow(const RowRace& r) { return !r.greedy && r.inv_temperature > 1.0f; }

// A raw logit as a candidate of that argmax: finite ones only.
SF_HD Best raw_entry(float x, int32_t index) {
  const bool finite = x == x && x != kInf && x != -kInf;
  return finite ? Best{x, index} : no_best();
}

SF_HD RowResult overflow_result(const Best& raw) {
  if (raw.index == kNoIndex) return {0, -kInf, false, false};
  return {raw.index, 0.0f, true, false};
}

SF_HD bool degenerate(const RacePartial& p) { return p.best.index == kNoIndex && p.infs.count == 0; }

// Note [A winning group with no winner]
// -------------------------------------
// The race picks a group on one read of the input and the token inside it on
// a second read of that group. The two agree unless the input changes in
// between: an output aliasing it (the ops refuse overlap, but a shard's
// resolve call or another stream may still write the logits meanwhile). Then
// the token race can find no unmasked token. No id outside [0, V) may leave a
// kernel, so such a row ends as a degenerate one: token 0, valid false.
SF_HD RowResult resolved(RowResult res, int32_t token) {
  if (token == kNoIndex) return {0, -kInf, false, false};
  res.token = token;
  res.needs_resolve = false;
  return res;
}

// A shard's resolve (ShardCall::resolve_groups): its group's winner, or -1
// when the group has none; the merge then makes the row degenerate (token 0,
// valid false), as resolved() does on one device.
SF_HD int64_t shard_resolve_token(int32_t index) { return index == kNoIndex ? int64_t(-1) : int64_t(index); }

}  // namespace syncfree
