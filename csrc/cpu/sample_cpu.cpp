// The CPU path: the same groups, noise and merge rule as the CUDA kernel
// (csrc/core), with chunks of a row as parallel tasks.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "../core/logprobs.h"
#include "../device_api.h"

namespace syncfree {
namespace {

// A task reads at least this many tokens, so thread start-up stays small.
constexpr int64_t kCpuMinChunk = 16384;

// Groups go in batches: the group statistics first, then the noise of the
// batch's racing groups in one loop of independent Philox/log chains (the
// CPU overlaps them; one group at a time they run back to back). The
// skip test sees the best from before the batch: weaker, never wrong.
constexpr int kBatch = 8;

template <typename T, bool kProbs>
SF_HD RacePartial race_chunk_body(const SampleParams& p, const RowRace& r, const T* row, const RowSplit& s,
                                  int32_t split) {
  const ChunkGroups cg = chunk_groups(s, split);
  RacePartial acc = empty_partial();
  float v[kGroup];
  for (int64_t q0 = 0; q0 < cg.groups; q0 += kBatch) {
    const int n = int(std::min<int64_t>(kBatch, cg.groups - q0));
    float log_weight[kBatch], key[kBatch];
    int64_t group[kBatch];
    // The batch's group words in one loop of independent Philox chains (vectorised), for the
    // test of Note [Groups that cannot win].
    uint32_t words[kBatch];
    if (!kProbs && !r.greedy) {
      SF_SIMD
      for (int j = 0; j < kBatch; ++j) words[j] = group_word(r.stream, cg.first_group + q0 + j);
    }
    int racing = 0;
    for (int j = 0; j < n; ++j) {
      const int64_t g = cg.first_group + q0 + j;
      load_group_scalar(row, p.vocab, g, kProbs, r, v);
      const float w = group_weight<kProbs>(acc, v, int32_t(g * kGroup), r, [&] { return words[j]; });
      log_weight[racing] = w;
      group[racing] = g;
      racing += w != -kInf ? 1 : 0;
    }
    for (int j = 0; j < racing; ++j) key[j] = group_key(log_weight[j], group[j], r);
    for (int j = 0; j < racing; ++j) acc.best = better_of(acc.best, {key[j], int32_t(group[j])});
  }
  return acc;
}

#if defined(__x86_64__)
// The same code with FMA and AVX2: fma_f becomes one instruction instead of
// a libm call, and the 16-wide group loops vectorise. Results are identical
// (fma is fma); only speed differs.
template <typename T, bool kProbs>
__attribute__((target("avx2,fma"))) RacePartial race_chunk_avx2(const SampleParams& p, const RowRace& r,
                                                                 const T* row, const RowSplit& s,
                                                                 int32_t split) {
  return race_chunk_body<T, kProbs>(p, r, row, s, split);
}

#endif
}  // namespace

#if defined(__x86_64__)
// SYNCFREE_CPU_BASELINE=1 forces the portable path (tests compare the two).
bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          std::getenv("SYNCFREE_CPU_BASELINE") == nullptr;
  return has;
}
#endif

namespace {

// row_keep likewise, with fma in one instruction.
#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) RowKeep row_keep_avx2(const float* y, int64_t vocab, const Warpers& w,
                                                          SelectScratch& scratch) {
  return row_keep(y, vocab, w, scratch);
}
#endif

}  // namespace

RowKeep row_keep_cpu(const float* y, int64_t vocab, const Warpers& w, SelectScratch& scratch) {
#if defined(__x86_64__)
  if (cpu_has_avx2_fma()) return row_keep_avx2(y, vocab, w, scratch);
#endif
  return row_keep(y, vocab, w, scratch);
}

namespace {

template <typename T, bool kProbs>
RacePartial race_chunk(const SampleParams& p, const RowRace& r, const T* row, const RowSplit& s,
                       int32_t split) {
#if defined(__x86_64__)
  if (cpu_has_avx2_fma()) return race_chunk_avx2<T, kProbs>(p, r, row, s, split);
#endif
  return race_chunk_body<T, kProbs>(p, r, row, s, split);
}

// The argmax of a row's processed, unscaled logits [begin, end) (Note [Logits
// past the temperature's range]).
template <typename T>
Best raw_argmax(const T* row, int64_t begin, int64_t end, const RowProcess& q) {
  Best best = no_best();
  for (int64_t i = begin; i < end; ++i) best = better_of(best, raw_entry(process_logit(float(row[i]), i, q), int32_t(i)));
  return best;
}

// The race inside group `group` of a row, token by token.
template <typename T, bool kProbs>
Best race_in_group(const SampleParams& p, const RowRace& r, const T* row, int64_t group) {
  const int64_t first = group * kGroup;
  const int n = group_size(p.vocab, group);
  Best winner = no_best();
  for (int i = 0; i < n; ++i) {
    const float v = load_value(row, first + i, kProbs, r);
    winner = better_of(winner, token_entry<kProbs>(v, int32_t(first + i), r));
  }
  return winner;
}

// Note [Raw top-n in the mass's pass]
// -----------------------------------
// Raw logprobs are measured against a normaliser that only a pass over the row
// finds, and the top n and the rank against those logprobs. A token's logprob,
// fl(fl(y - max) - log_sum), never decreases as its raw value y grows, so the
// pass that sums the raw mass also keeps candidates by raw value: the
// n + kTopSlack best by (y, then the lower id), and for the rank the count of
// tokens with y at least the chosen token's plus the kTopSlack largest values
// below it. Then, with the normaliser known: a token outside the candidates has
// a y, so a logprob, no greater than the last candidate's; where that logprob
// is below the n-th best candidate's (the chosen token's, for the rank) no such
// token can enter, and the answer is the exact one. Where it is not (rounding
// has merged more than kTopSlack values into one logprob; +inf rows, which rank
// by id; rows with no distribution), a second pass measures every token, as
// processed mode's one pass does.

// The raw pass's candidates (Note [Raw top-n in the mass's pass]).
struct RawCandidates {
  TopList top;  // by raw value: entries {order_key(y), id}
  float below[kTopSlack];  // the largest values below the chosen one's, highest first
  int below_size = 0;
  int64_t at_least = 0;  // tokens with y >= the chosen one's y
};

SF_HOST_INLINE void keep_below(RawCandidates& c, float y) {
  if (c.below_size == kTopSlack && !(y > c.below[kTopSlack - 1])) return;
  int j = c.below_size < kTopSlack ? c.below_size++ : kTopSlack - 1;
  for (; j > 0 && y > c.below[j - 1]; --j) c.below[j] = c.below[j - 1];
  c.below[j] = y;
}

// The top n and the rank from a pass over every token (the row's logprobs known).
template <typename T>
SF_HOST_INLINE void measure_every_token(const SampleParams& p, const T* row, const RowRace& r, const RowLogprobs& lp,
                                        uint32_t chosen, TopList& top, int64_t& rank) {
  // A group whose best logprob cannot enter the full list is skipped whole: the logprob
  // grows with the value except in +inf and point-mass rows, which rank every token.
  const bool monotone = lp.norm.infs.count == 0 && lp.norm.point < 0;
  float v[kGroup];
  rank = 0;
  for (int64_t g = 0; g < ceil_div(p.vocab, kGroup); ++g) {
    load_group_scalar(row, p.vocab, g, false, r, v);
    const int n = group_size(p.vocab, g);
    if (p.ranks != nullptr) rank += count_at_least(v, n, g * kGroup, lp, chosen);
    if (p.top_n == 0) continue;
    if (monotone && top.size == top.n) {
      float scratch[kGroup];
      for (int k = 0; k < kGroup; ++k) scratch[k] = v[k];
      const TopEntry best = top_entry(tree_max(scratch), g * kGroup, lp);
      if (!ranks_before(best, top.e[top.n - 1])) continue;  // no token of the group ranks before the last
    }
    for (int k = 0; k < n; ++k) top_insert(top, top_entry(v[k], g * kGroup + k, lp));
  }
}

// The raw pass reads kRawGroups groups at a time: their max, then one sum of
// exps and one merge (a scalar exp) a block, where a group at a time pays the
// merge every 16 tokens. (The sum's order is fixed: the same bits on any
// machine, README "Random numbers".)
constexpr int kRawGroups = 8;
using RawBlock = float[kRawGroups][kGroup];

// A block's raw mass (its +inf tokens counted apart) into acc; returns the
// block's max, +inf included.
SF_HOST_INLINE float raw_block_mass(RacePartial& acc, const RawBlock& v, int32_t first) {
  float lanes[kGroup];
  for (int k = 0; k < kGroup; ++k) lanes[k] = v[0][k];
  for (int j = 1; j < kRawGroups; ++j) {
    SF_SIMD
    for (int k = 0; k < kGroup; ++k) lanes[k] = v[j][k] > lanes[k] ? v[j][k] : lanes[k];
  }
  const float block_max = tree_max(lanes);
  float m = block_max;
  if (m == kInf) {  // +inf tokens are rare: counted, and left out of the finite max
    Infinities infs = no_infinities();
    m = -kInf;
    for (int j = 0; j < kRawGroups; ++j)
      for (int k = 0; k < kGroup; ++k) {
        if (v[j][k] == kInf) {
          infs.first = infs.count == 0 ? first + j * kGroup + k : infs.first;
          infs.count += 1;
        } else {
          m = v[j][k] > m ? v[j][k] : m;
        }
      }
    acc.infs = merge_infinities(acc.infs, infs);
  }
  if (m == -kInf) return block_max;
  float sums[kGroup] = {};
  for (int j = 0; j < kRawGroups; ++j) {
    SF_SIMD
    for (int k = 0; k < kGroup; ++k) sums[k] += exp_nonpositive(finite_value(v[j][k], false) - m);
  }
  acc.mass = merge_mass(acc.mass, {m, tree_sum(sums)});
  return block_max;
}

// The raw pass: the raw mass, and the candidates of the top n and the rank.
template <typename T>
SF_HOST_INLINE RacePartial raw_pass(const SampleParams& p, const T* row, const RowRace& r, float chosen_y,
                                    RawCandidates& c) {
  RacePartial raw = empty_partial();
  const int64_t groups = ceil_div(p.vocab, kGroup);
  RawBlock v;
  for (int64_t g0 = 0; g0 < groups; g0 += kRawGroups) {
    const int32_t first = int32_t(g0 * kGroup);
    const int n = int(std::min<int64_t>(kRawGroups * kGroup, p.vocab - first));  // tokens in the block
    for (int j = 0; j < kRawGroups; ++j) {
      if (g0 + j < groups) {
        load_group_scalar(row, p.vocab, g0 + j, false, r, v[j]);
      } else {
        for (int k = 0; k < kGroup; ++k) v[j][k] = -kInf;
      }
    }
    const float block_max = raw_block_mass(raw, v, first);
    if (p.ranks != nullptr) {
      int at_least = 0;
      float under[kGroup];  // per lane, the largest value below the chosen one's
      for (int k = 0; k < kGroup; ++k) under[k] = -kInf;
      for (int j = 0; j < kRawGroups; ++j) {
        SF_SIMD
        for (int k = 0; k < kGroup; ++k) {
          const bool in = j * kGroup + k < n;
          at_least += in & (v[j][k] >= chosen_y);
          under[k] = in && v[j][k] < chosen_y && v[j][k] > under[k] ? v[j][k] : under[k];
        }
      }
      c.at_least += at_least;
      const float below = tree_max(under);
      if (below != -kInf && (c.below_size < kTopSlack || below > c.below[kTopSlack - 1]))
        for (int i = 0; i < n; ++i)
          if (v[i / kGroup][i % kGroup] < chosen_y) keep_below(c, v[i / kGroup][i % kGroup]);
    }
    if (p.top_n == 0) continue;
    if (c.top.size == c.top.n && !ranks_before({order_key(block_max), first}, c.top.e[c.top.n - 1])) continue;
    for (int j = 0; j < kRawGroups && j * kGroup < n; ++j) {  // the block's groups that can enter, token by token
      const int32_t group_first = first + j * kGroup;
      if (c.top.size == c.top.n && !ranks_before({order_key(group_max(v[j])), group_first}, c.top.e[c.top.n - 1]))
        continue;
      for (int k = 0; k < kGroup && j * kGroup + k < n; ++k) top_insert(c.top, {order_key(v[j][k]), group_first + k});
    }
  }
  return raw;
}

// The top n and the rank from the raw pass's candidates; false where they may
// not hold the answer (Note [Raw top-n in the mass's pass]).
SF_HOST_INLINE bool measure_candidates(const SampleParams& p, const RawCandidates& c, const RowLogprobs& lp,
                                       uint32_t chosen, TopList& top, int64_t& rank) {
  if (lp.norm.infs.count > 0 || lp.norm.mass.max == -kInf) return false;
  const auto key = [&](uint32_t raw_key, int32_t id) { return top_entry(key_value(raw_key), id, lp).key; };
  if (p.top_n > 0) {
    for (int j = 0; j < c.top.size; ++j) top_insert(top, {key(c.top.e[j].key, c.top.e[j].index), c.top.e[j].index});
    const TopEntry& last = c.top.e[c.top.size - 1];
    if (c.top.size == c.top.n && !(key(last.key, last.index) < top.e[p.top_n - 1].key)) return false;
  }
  if (p.ranks != nullptr) {
    rank = c.at_least;
    for (int j = 0; j < c.below_size; ++j) rank += key(order_key(c.below[j]), 0) >= chosen;
    if (c.below_size == kTopSlack && key(order_key(c.below[kTopSlack - 1]), 0) >= chosen) return false;
  }
  return true;
}

// The logprob stage of a row (Note [Top-n logprobs]): its top n and, for raw
// logprobs, the chosen token's; returns the chosen token's logprob.
template <typename T>
SF_HOST_INLINE float logprob_stage_body(const SampleParams& p, int64_t row_index, const RowRace& race, const T* row,
                                        RowNorm norm, const RowResult& res) {
  const RowRace r = logprob_race(p, race);
  float logprob = res.logprob;
  const float chosen_y = load_value(row, res.token, false, r);
  TopList top = empty_top(p.top_n);
  int64_t rank = 0;
  RawCandidates c;
  if (p.raw_logprobs) {
    c.top = empty_top(p.top_n + kTopSlack);
    const RacePartial raw = raw_pass(p, row, r, chosen_y, c);
    norm = res.valid ? norm_of(raw) : empty_norm();  // a degenerate row has no logprobs (Note [Top-n logprobs])
    logprob = token_logprob(chosen_y, res.token, norm);
  }
  if (p.top_n == 0 && p.ranks == nullptr) return logprob;
  const RowLogprobs lp = row_logprobs(norm);
  // The rank counts every token whose key is at least the chosen one's (ties included).
  const uint32_t chosen = top_entry(chosen_y, res.token, lp).key;
  if (!(p.raw_logprobs && measure_candidates(p, c, lp, chosen, top, rank))) {
    top = empty_top(p.top_n);  // the candidates may have filled part of it
    measure_every_token(p, row, r, lp, chosen, top, rank);
  }
  for (int j = 0; j < p.top_n; ++j) {
    p.top_ids[row_index * p.top_n + j] = top.e[j].index;
    p.top_logprobs[row_index * p.top_n + j] = key_value(top.e[j].key);
  }
  if (p.ranks != nullptr) p.ranks[row_index] = rank;
  return logprob;
}

#if defined(__x86_64__)
template <typename T>
__attribute__((target("avx2,fma"))) float logprob_stage_avx2(const SampleParams& p, int64_t row_index,
                                                              const RowRace& race, const T* row, RowNorm norm,
                                                              const RowResult& res) {
  return logprob_stage_body(p, row_index, race, row, norm, res);
}
#endif

// The logprob stage of a row (its exps want fma in one instruction: the AVX2+FMA variant).
template <typename T>
float logprob_stage_row(const SampleParams& p, int64_t row_index, const RowRace& race, const T* row, RowNorm norm,
                        const RowResult& res) {
#if defined(__x86_64__)
  if (cpu_has_avx2_fma()) return logprob_stage_avx2(p, row_index, race, row, norm, res);
#endif
  return logprob_stage_body(p, row_index, race, row, norm, res);
}

template <typename T, bool kProbs>
void finish(const SampleParams& p, int64_t row_index, const RowRace& r, const T* row,
            const RacePartial& acc) {
  RowResult res = finish_row(acc, r, kProbs);
  RowNorm norm = norm_of(acc);
  if (!kProbs && degenerate(acc) && may_overflow(r)) {
    res = overflow_result(raw_argmax(row, 0, p.vocab, r.proc));
    norm.point = res.valid ? int32_t(res.token) : -1;
  }
  if (res.needs_resolve) {
    res = resolved(res, race_in_group<T, kProbs>(p, r, row, res.token).index);
    if (r.want_mass && res.valid) res.logprob = chosen_logprob(load_value(row, res.token, kProbs, r), acc.mass);
  }
  if (!kProbs && logprob_stage(p)) res.logprob = logprob_stage_row(p, row_index, r, row, norm, res);
  store_result(p, row_index, res.token, res.logprob, res.valid);
}

// A row's race values into y[0, vocab): whole groups in place (processing vectorises by
// group), the tail token by token. (No staging copy: a memcpy from the pool's threads into a
// torch tensor is a false race to ThreadSanitizer, which cannot see libgomp's barriers.)
template <typename T>
SF_HOST_INLINE void load_row_body(const T* row, int64_t vocab, const RowRace& r, float* y) {
  const int64_t full = vocab / kGroup;
  for (int64_t g = 0; g < full; ++g)
    load_group_scalar(row, vocab, g, false, r, *reinterpret_cast<float(*)[kGroup]>(y + g * kGroup));
  for (int64_t i = full * kGroup; i < vocab; ++i) y[i] = load_value(row, i, false, r);
}

#if defined(__x86_64__)
// The mask's per-lane selects become blends (the portable build branches on each bit).
template <typename T>
__attribute__((target("avx2,fma"))) void load_row_avx2(const T* row, int64_t vocab, const RowRace& r, float* y) {
  load_row_body(row, vocab, r, y);
}
#endif

template <typename T>
void load_row(const T* row, int64_t vocab, const RowRace& r, float* y) {
#if defined(__x86_64__)
  if (cpu_has_avx2_fma()) return load_row_avx2(row, vocab, r, y);
#endif
  load_row_body(row, vocab, r, y);
}

// The warpers' kept set of every row (keep_all for greedy and unwarped rows).
template <typename T>
std::vector<RowKeep> row_thresholds(const SampleParams& p) {
  std::vector<RowKeep> keeps(size_t(p.rows), keep_all());
  const T* input = static_cast<const T*>(p.input);
  at::parallel_for(0, p.rows, 1, [&](int64_t begin, int64_t end) {
    // Per-thread buffers kept across calls: no fresh pages on every step.
    thread_local std::vector<float> y;
    thread_local SelectScratch scratch;
    y.resize(size_t(p.vocab));
    for (int64_t row = begin; row < end; ++row) {
      const RowRace r = row_race(p, row);
      const Warpers w = row_warpers(p, row);
      if (r.greedy || !any_warper(w)) continue;
      load_row(input + row * p.row_stride, p.vocab, r, y.data());
      keeps[size_t(row)] = row_keep_cpu(y.data(), p.vocab, w, scratch);
    }
  });
  return keeps;
}

// Shard calls (syncfree.distributed): each row's winning group, raced token
// by token; -1 for rows whose group lies elsewhere (shard_resolve_token).
template <typename T, bool kProbs>
void resolve_rows(const SampleParams& p) {
  const T* input = static_cast<const T*>(p.input);
  at::parallel_for(0, p.rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t group = p.shard.resolve_groups[row];
      const int64_t token =
          group < 0 ? -1
                    : shard_resolve_token(
                          race_in_group<T, kProbs>(p, row_race(p, row), input + row * p.row_stride, group).index);
      p.tokens[row * p.tokens_stride] = token;
    }
  });
}

template <typename T, bool kProbs>
void sample_rows(const SampleParams& p) {
  if (p.shard.resolve_groups != nullptr) return resolve_rows<T, kProbs>(p);
  // Chunks of a fixed size, whatever the thread count and the batch: the row's masses merge in
  // one order, so its logprobs are the same bits on any machine (README "Random numbers").
  const RowSplit split = split_row(p.vocab, ceil_div(p.vocab, kCpuMinChunk), kCpuMinChunk);
  const int64_t tasks = p.rows * split.splits;
  std::vector<RacePartial> partials(size_t(tasks), empty_partial());
  const T* input = static_cast<const T*>(p.input);
  const int64_t tasks_per_grain = std::max<int64_t>(1, kCpuMinChunk / (split.chunk + 1));
  const std::vector<RowKeep> keeps = !kProbs && p.warped ? row_thresholds<T>(p) : std::vector<RowKeep>();
  SampleParams warped = p;
  warped.keeps = keeps.empty() ? p.keeps : keeps.data();  // p.keeps: kept sets given by the caller
  // Raw logprobs take the mass of the logprob stage's own pass: the race skips its exps where
  // a group cannot win (Note [Groups that cannot win]), as it does without logprobs.
  const bool race_mass = !p.raw_logprobs || p.shard.partials_out != nullptr;
  const auto race_of = [&](int64_t row) {
    RowRace r = row_race(warped, row);
    r.want_mass = r.want_mass && race_mass;
    return r;
  };

  at::parallel_for(0, tasks, tasks_per_grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / split.splits;
      const RowRace r = race_of(row);
      partials[size_t(task)] = race_chunk<T, kProbs>(p, r, input + row * p.row_stride, split,
                                                     int32_t(task % split.splits));
    }
  });
  const int64_t rows_per_grain = std::max<int64_t>(1, tasks_per_grain / split.splits);
  at::parallel_for(0, p.rows, rows_per_grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      RacePartial acc = empty_partial();
      for (int32_t j = 0; j < split.splits; ++j)
        acc = merge_partials(acc, partials[size_t(row * split.splits + j)]);
      if (p.shard.partials_out != nullptr) {
        const RowRace r = race_of(row);
        const bool overflow = !kProbs && degenerate(acc) && may_overflow(r);
        p.shard.partials_out[row] = {acc, overflow ? raw_argmax(input + row * p.row_stride, 0, p.vocab, r.proc) : no_best()};
      } else {
        finish<T, kProbs>(p, row, race_of(row), input + row * p.row_stride, acc);
      }
    }
  });
}

template <typename T>
void warped_rows_into(const SampleParams& p, float* out) {
  const T* input = static_cast<const T*>(p.input);
  at::parallel_for(0, p.rows, 1, [&](int64_t begin, int64_t end) {
    thread_local SelectScratch scratch;
    for (int64_t row = begin; row < end; ++row) {
      const RowRace r = row_race(p, row);  // temperature 0: inv_temperature 1, nothing scaled
      float* y = out + row * p.vocab;
      load_row(input + row * p.row_stride, p.vocab, r, y);
      const Warpers w = row_warpers(p, row);
      if (!any_warper(w)) continue;
      const RowKeep keep = row_keep_cpu(y, p.vocab, w, scratch);
      for (int64_t i = 0; i < p.vocab; ++i) y[i] = apply_keep(y[i], keep);
    }
  });
}

}  // namespace

void build_exceptions_cpu(SampleParams& p, ExceptionTables& tables) {
  Processing& q = p.proc;
  if (!has_exceptions(q)) return;
  const int64_t param_rows = process_rows(p);
  q.table_bits = exception_table_bits(exception_entries(q));
  q.group_words = ceil_div(ceil_div(p.vocab, kExceptionSpan), 32);
  tables.slots.assign(size_t(param_rows) << q.table_bits, ExceptionSlot{0u, 0u, 0u, 0u});
  tables.groups.assign(size_t(param_rows * q.group_words), 0u);
  q.tables = tables.slots.data();
  q.group_bits = tables.groups.data();
  struct PlainOps {
    void add(uint32_t* w, uint32_t v) const { *w += v; }
    void max(uint32_t* w, uint32_t v) const { *w = *w > v ? *w : v; }
  };
  const auto store_if_empty = [](uint32_t* w, uint32_t key) {
    const uint32_t old = *w;
    if (old == 0u) *w = key;
    return old;
  };
  at::parallel_for(0, param_rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t pr = begin; pr < end; ++pr) {
      for (int64_t j = 0; j < exception_entries(q); ++j) {
        const ExceptionEntry e = exception_entry(q, pr, j);
        if (e.id < 0 || e.id >= p.vocab) continue;  // padding; CUDA ignores ids past V too
        ExceptionSlot* s = claim_exception(q.tables + (pr << q.table_bits), q.table_bits, uint32_t(e.id) + 1u,
                                           store_if_empty);
        record_exception(s, e, PlainOps{});
        q.group_bits[pr * q.group_words + exception_word(e.id)] |= exception_bit(e.id);
      }
    }
  });
}

RowResult race_values_cpu(const float* v, int64_t vocab, bool probs, RowRace r) {
  SampleParams p{};
  p.vocab = vocab;
  p.probs = probs;
  r.inv_temperature = 1.0f;  // v is already scaled (and warped)
  r.warped = false;
  const RowSplit whole = split_row(vocab, 1, vocab);
  const RacePartial acc = probs ? race_chunk<float, true>(p, r, v, whole, 0) : race_chunk<float, false>(p, r, v, whole, 0);
  RowResult res = finish_row(acc, r, probs);
  if (res.needs_resolve) {
    const Best winner = probs ? race_in_group<float, true>(p, r, v, res.token) : race_in_group<float, false>(p, r, v, res.token);
    res = resolved(res, winner.index);
  }
  return res;
}

void warped_logits_cpu(SampleParams p, c10::ScalarType dtype, float* out) {
  ExceptionTables tables;
  build_exceptions_cpu(p, tables);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "syncfree_warped_logits_cpu",
                                  [&] { warped_rows_into<scalar_t>(p, out); });
}

GeneratorDraw draw_generator_cpu(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return {gen->random64(), 0};  // Note [Drawing from the generator]
}

void sample_cpu(SampleParams p, c10::ScalarType dtype, const std::optional<at::Generator>& generator,
                bool from_generator) {
  if (from_generator) {
    const GeneratorDraw draw = draw_generator_cpu(generator);
    p.seed = draw.seed;
    p.pos0 = draw.pos0;
  }
  ExceptionTables tables;
  build_exceptions_cpu(p, tables);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "syncfree_sample_cpu", [&] {
    if (p.probs) {
      sample_rows<scalar_t, true>(p);
    } else {
      sample_rows<scalar_t, false>(p);
    }
  });
}

}  // namespace syncfree
