// Host tests of the header-only core (csrc/core): the Philox stream and its
// layout, the noise and float math, the tie rule, the tiling of a row into
// chunks and groups, and that every grid-shaped reduction of a row equals the
// sequential one. Plain C++, no torch, no CUDA. Build and run (CMakeLists.txt):
//   cmake -S . -B build/cmake && cmake --build build/cmake -j2 && ctest --test-dir build/cmake --output-on-failure
#include "core/select.h"
#include "core/params.h"
#include "core/shard.h"
#include "cuda/plans.h"

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

using namespace syncfree;

namespace {

int g_passed = 0, g_failed = 0;

// CHECK_MSG(cond, printf-format, args...): counts; prints the first failures.
#define CHECK_MSG(cond, ...)                                                              \
  do {                                                                                    \
    if (cond) {                                                                           \
      ++g_passed;                                                                         \
    } else if (++g_failed <= 40) {                                                        \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);       \
      std::fprintf(stderr, __VA_ARGS__);                                                  \
      std::fputc('\n', stderr);                                                           \
    }                                                                                     \
  } while (0)
#define CHECK(cond) CHECK_MSG(cond, "%s", "")

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

bool same_bits(float a, float b) { return float_bits(a) == float_bits(b); }
bool same_best(Best a, Best b) { return same_bits(a.key, b.key) && a.index == b.index; }

// ulp of the float nearest to `ref` (2^-149 for 0 and subnormals).
double ulp_of(double ref) {
  int e = 0;
  std::frexp(std::fabs(double(float(ref))), &e);  // |f| in [2^(e-1), 2^e)
  return std::ldexp(1.0, std::max(e - 24, -149));
}

// ---------------------------------------------------------------------------
// Philox and the stream layout

void test_philox_kat() {
  // Random123 kat_vectors, philox4x32_10.
  struct Kat {
    uint32_t ctr[4], key[2], out[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) {
    const Words4 w = philox4x32_10(k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3], k.key[0], k.key[1]);
    CHECK_MSG(w.w0 == k.out[0] && w.w1 == k.out[1] && w.w2 == k.out[2] && w.w3 == k.out[3],
              "ctr %08x.. key %08x %08x: got %08x %08x %08x %08x, want %08x %08x %08x %08x", k.ctr[0],
              k.key[0], k.key[1], w.w0, w.w1, w.w2, w.w3, k.out[0], k.out[1], k.out[2], k.out[3]);
  }
}

// The block at stream position `block`, built from the note's layout directly.
Words4 layout_block(const RowStream& s, uint64_t block) {
  return philox4x32_10(uint32_t(block), uint32_t(block >> 32), uint32_t(s.subsequence),
                       uint32_t(s.subsequence >> 32), uint32_t(s.seed), uint32_t(s.seed >> 32));
}

void test_stream_layout() {
  std::mt19937_64 rng(12345);
  const uint64_t pos0s[] = {0, 1, 2, 3, 4, 5, 6, 7, 1001, 0xFFFFFFFDull, 0xFFFFFFFFull, (uint64_t(1) << 33) + 3,
                            (uint64_t(1) << 40) + 2};
  int bad_token = 0, bad_block = 0, bad_shift = 0, bad_group = 0, bad_lane = 0;
  for (int trial = 0; trial < 4; ++trial) {
    const uint64_t seed = trial == 0 ? 0 : rng();
    const uint64_t subsequence = trial < 2 ? uint64_t(trial) : rng();
    for (uint64_t pos0 : pos0s) {
      const RowStream s{seed, subsequence, pos0};
      const RowStream at0{seed, subsequence, 0};
      for (int64_t i = 0; i < 41; ++i) {
        const uint64_t p = pos0 + uint64_t(i);
        const Words4 b = layout_block(s, p / 4);
        const uint32_t lanes[4] = {b.w0, b.w1, b.w2, b.w3};
        const Words4 sb = stream_block(s, p / 4);
        bad_block += !(sb.w0 == b.w0 && sb.w1 == b.w1 && sb.w2 == b.w2 && sb.w3 == b.w3);
        bad_token += token_word(s, i) != lanes[p % 4];
        // The word depends on pos0 + i only.
        bad_shift += token_word(s, i) != token_word(at0, int64_t(p));
        for (uint32_t lane = 0; lane < 4; ++lane) bad_lane += select_lane(b, lane) != lanes[lane];
      }
      for (int64_t g = 0; g < 21; ++g) {
        const uint64_t block = kGroupDomain + pos0 / 4 + uint64_t(g);
        bad_group += group_word(s, g) != layout_block(s, block).w0;
        bad_group += group_word(s, g) != stream_block(s, block).w0;
      }
    }
  }
  CHECK_MSG(bad_block == 0, "%d stream_block mismatches", bad_block);
  CHECK_MSG(bad_token == 0, "%d token_word mismatches (lane (pos0+i)%%4 of block (pos0+i)/4)", bad_token);
  CHECK_MSG(bad_shift == 0, "%d token_word(s, i) != token_word(s at pos0 0, pos0 + i)", bad_shift);
  CHECK_MSG(bad_lane == 0, "%d select_lane mismatches", bad_lane);
  CHECK_MSG(bad_group == 0, "%d group_word mismatches (lane 0 of block kGroupDomain + pos0/4 + g)", bad_group);
  // The group domain is far above every token block.
  CHECK(kGroupDomain == (uint64_t(1) << 62));
}

// ---------------------------------------------------------------------------
// Noise

double exp1_reference(uint32_t k) { return -std::log1p(-(double(k) + 0.5) * 0x1p-32); }

void test_noise() {
  int bad_value = 0, bad_gumbel = 0, bad_order = 0, bad_bound = 0;
  double worst_rel = 0.0;
  uint32_t worst_k = 0, first_bad = 0, first_disorder = 0;
  auto check_one = [&](uint32_t k) {
    const float e = exp1_from_bits(k);
    if (!(std::isfinite(e) && e > 0.0f)) {
      if (bad_value++ == 0) first_bad = k;
      return;
    }
    const double ref = exp1_reference(k);
    const double rel = std::fabs(double(e) - ref) / ref;
    if (rel > worst_rel) worst_rel = rel, worst_k = k;
    const float g = gumbel_from_bits(k);
    bad_gumbel += !(g >= -3.2f && g < kGumbelMax);
    bad_bound += !(g <= gumbel_bound(k) && gumbel_bound(k) <= kGumbelMax);
  };
  // Non-decreasing along a run of increasing k.
  auto check_run = [&](uint64_t begin, uint64_t end, uint64_t step) {
    float prev = -1.0f;
    for (uint64_t k = begin; k < end; k += step) {
      check_one(uint32_t(k));
      const float e = exp1_from_bits(uint32_t(k));
      if (e < prev && bad_order++ == 0) first_disorder = uint32_t(k);
      prev = e;
    }
  };
  const uint32_t special[] = {0u, 1u, 2u, 3u, (1u << 24) - 1, 1u << 24, (1u << 30) - 1, 1u << 30, (1u << 30) + 1,
                              0x7FFFFFFFu, 0x80000000u, 0xC0000000u, 0xFEFFFFFFu, 0xFFFFFFFEu, 0xFFFFFFFFu};
  for (uint32_t k : special) check_one(k);
  for (int j = 0; j < 32; ++j)  // gumbel_bound steps at every power of two
    for (uint32_t k : {(1u << j) - 1u, 1u << j, (1u << j) + 1u}) check_one(k);
  const uint64_t kAll = uint64_t(1) << 32;
  check_run(0, kAll, 997);  // the whole range, coarsely
  // Every k around the edges, the branch point 2^30, and where 1 - v crosses
  // 1/2 (binade), sqrt(2)/2 and sqrt(2)/4 (log_positive's switch) or ~k
  // crosses 2^24 (float(~k) starts rounding).
  const uint64_t centers[] = {0,          uint64_t(1) << 30, uint64_t(1) << 31, 1257966795u, 2776467045u,
                              kAll - (uint64_t(1) << 24), kAll};
  for (uint64_t c : centers) {
    const uint64_t w = uint64_t(1) << 16;
    check_run(c < w ? 0 : c - w, std::min(kAll, c + w), 1);
  }
  CHECK_MSG(bad_value == 0, "%d exp1_from_bits values not finite and > 0 (first k = %u)", bad_value, first_bad);
  CHECK_MSG(bad_gumbel == 0, "%d gumbel_from_bits values outside [-3.2, kGumbelMax)", bad_gumbel);
  CHECK_MSG(bad_bound == 0, "%d gumbel_from_bits values above gumbel_bound", bad_bound);
  CHECK_MSG(bad_order == 0, "exp1_from_bits decreases %d times (first at k = %u)", bad_order, first_disorder);
  CHECK_MSG(worst_rel < 4e-7, "exp1_from_bits vs -log1p(-(k + 1/2) 2^-32): rel error %.3g at k = %u", worst_rel,
            worst_k);
  const double e0 = exp1_from_bits(0);
  CHECK_MSG(std::fabs(e0 - 0x1p-33) < 1e-6 * 0x1p-33, "exp1_from_bits(0) = %.9g, want 2^-33", e0);
  const double e_max = exp1_from_bits(0xFFFFFFFFu);
  CHECK_MSG(std::fabs(e_max - 33.0 * std::log(2.0)) < 1e-6 * e_max, "exp1_from_bits(2^32-1) = %.9g", e_max);
  // Gumbel noise is -log E at the extremes.
  CHECK(gumbel_from_bits(0) > 22.8f && gumbel_from_bits(0) < kGumbelMax);
  CHECK(gumbel_from_bits(0xFFFFFFFFu) > -3.2f && gumbel_from_bits(0xFFFFFFFFu) < -3.1f);
  std::printf("  exp1_from_bits: worst rel error %.3g (k = %u)\n", worst_rel, worst_k);
}

// ---------------------------------------------------------------------------
// log and exp

void test_log_positive() {
  double worst = 0.0;
  float worst_x = 0.0f;
  int bad = 0;
  auto check_one = [&](uint32_t bits) {
    const float x = bits_float(bits);
    const float got = log_positive(x);
    const double ref = std::log(double(x));
    if (ref == 0.0) {
      bad += got != 0.0f;
      return;
    }
    const double err = std::fabs(double(got) - ref) / ulp_of(ref);
    if (!(err <= worst)) worst = err, worst_x = x;
  };
  for (uint64_t b = 1; b <= 0x7F7FFFFFu; b += 7919) check_one(uint32_t(b));
  const float centers[] = {FLT_MIN, 0.5f, kSqrt2 * 0.5f, 1.0f, kSqrt2, 2.0f, 3.0f, 1e-30f, 1e30f};
  for (float c : centers)
    for (int64_t d = -4096; d <= 4096; ++d) check_one(uint32_t(int64_t(float_bits(c)) + d));
  for (uint32_t b = 1; b <= 4096; ++b) check_one(b);                        // smallest subnormals
  for (uint32_t b = 0x7F7FFFFFu - 4096; b <= 0x7F7FFFFFu; ++b) check_one(b);  // up to FLT_MAX
  CHECK_MSG(bad == 0, "log_positive(1) != 0");
  CHECK_MSG(worst <= 2.0, "log_positive: %.3f ulp at x = %.9g (bits %08x)", worst, worst_x, float_bits(worst_x));
  CHECK(log_positive(1.0f) == 0.0f);
  CHECK(std::fabs(log_positive(FLT_MAX) - 88.7228394f) < 1e-5f);
  CHECK(std::fabs(log_positive(bits_float(1)) - (-103.278931f)) < 1e-4f);  // 2^-149
  std::printf("  log_positive: worst %.3f ulp (x = %.9g)\n", worst, worst_x);
}

void test_exp_nonpositive() {
  double worst = 0.0;
  float worst_a = 0.0f;
  auto check_one = [&](float a) {
    const double ref = std::exp(double(a));
    const double rel = std::fabs(double(exp_nonpositive(a)) - ref) / ref;
    if (!(rel <= worst)) worst = rel, worst_a = a;
  };
  constexpr int kSteps = 2000000;
  for (int i = 0; i <= kSteps; ++i) check_one(-87.0f + float(87.0 * i / kSteps));
  // Bit patterns of negative floats from -0 down to -87 (0xC2AE0000).
  for (uint64_t b = 0x80000000u; b <= 0xC2AE0000u; b += 1021) check_one(bits_float(uint32_t(b)));
  for (int d = 0; d < 4096; ++d) check_one(bits_float(0xC2AE0000u - uint32_t(d)));
  CHECK_MSG(worst < 3e-7, "exp_nonpositive: rel error %.3g at a = %.9g", worst, worst_a);
  CHECK(exp_nonpositive(0.0f) == 1.0f);
  CHECK(exp_nonpositive(-0.0f) == 1.0f);
  CHECK(exp_nonpositive(-87.0f) > 0.0f);
  const float below[] = {std::nextafter(-87.0f, -kInf), -87.5f, -88.0f, -88.7f, -89.0f, -100.0f, -1e10f,
                         -FLT_MAX, -kInf};
  int nonzero = 0;
  for (float a : below) nonzero += !(exp_nonpositive(a) == 0.0f && !std::signbit(exp_nonpositive(a)));
  CHECK_MSG(nonzero == 0, "exp_nonpositive below -87 is not exactly +0 for %d inputs", nonzero);
  std::printf("  exp_nonpositive: worst rel error %.3g (a = %.9g)\n", worst, worst_a);
}

// ---------------------------------------------------------------------------
// The tie rule

void test_tie_rule() {
  const Best lo{1.0f, 5}, hi{2.0f, 9};
  CHECK(same_best(better_of(lo, hi), hi) && same_best(better_of(hi, lo), hi));
  const Best a{1.0f, 5}, b{1.0f, 3};
  CHECK(same_best(better_of(a, b), b) && same_best(better_of(b, a), b));
  const Best inf7{kInf, 7}, inf2{kInf, 2};
  CHECK(same_best(better_of(inf7, inf2), inf2) && same_best(better_of(inf2, inf7), inf2));
  const Best minus_inf{-kInf, 4};
  CHECK(same_best(better_of(no_best(), minus_inf), minus_inf) && same_best(better_of(minus_inf, no_best()), minus_inf));
  CHECK(same_best(better_of(no_best(), no_best()), no_best()));

  std::mt19937 rng(7);
  const float keys[] = {-kInf, -3.5f, -1.0f, 0.0f, 0.25f, 1.0f, 1.0f, 3.4e38f, kInf};
  const int32_t indices[] = {0, 1, 2, 3, 17, 1 << 20, kNoIndex};
  auto random_best = [&]() -> Best {
    if (rng() % 8 == 0) return no_best();
    return {keys[rng() % std::size(keys)], indices[rng() % std::size(indices)]};
  };
  int not_comm = 0, not_assoc = 0, not_input = 0, not_max = 0, not_identity = 0;
  for (int i = 0; i < 100000; ++i) {
    const Best x = random_best(), y = random_best(), z = random_best();
    const Best xy = better_of(x, y);
    not_comm += !same_best(xy, better_of(y, x));
    not_assoc += !same_best(better_of(xy, z), better_of(x, better_of(y, z)));
    not_input += !(same_best(xy, x) || same_best(xy, y));
    not_max += !(xy.key >= x.key && xy.key >= y.key);
    not_identity += !same_best(better_of(no_best(), x), x) || !same_best(better_of(x, no_best()), x);
  }
  CHECK_MSG(not_comm == 0, "better_of not commutative in %d cases", not_comm);
  CHECK_MSG(not_assoc == 0, "better_of not associative in %d cases", not_assoc);
  CHECK_MSG(not_input == 0, "better_of returned neither input in %d cases", not_input);
  CHECK_MSG(not_max == 0, "better_of lost the higher key in %d cases", not_max);
  CHECK_MSG(not_identity == 0, "no_best() is not an identity of better_of in %d cases", not_identity);

  // Infinities merge: order-free too.
  int inf_bad = 0;
  for (int i = 0; i < 10000; ++i) {
    const Infinities x{int32_t(rng() % 50), int32_t(rng() % 4)}, y{int32_t(rng() % 50), int32_t(rng() % 4)};
    const Infinities xy = merge_infinities(x, y), yx = merge_infinities(y, x);
    inf_bad += !(xy.first == yx.first && xy.count == yx.count && xy.first == std::min(x.first, y.first) &&
                 xy.count == x.count + y.count);
    const Infinities e = merge_infinities(no_infinities(), x);
    inf_bad += !(e.first == x.first && e.count == x.count);
  }
  CHECK_MSG(inf_bad == 0, "merge_infinities wrong in %d cases", inf_bad);
}

// ---------------------------------------------------------------------------
// Tiling walked over a simulated grid

void test_tiling() {
  std::vector<int64_t> vocabs;
  for (int64_t v = 1; v <= 70; ++v) vocabs.push_back(v);
  for (int64_t base : {128, 1000, 4096, 8192, 16384, 32000, 65536, 131072, 262144})
    for (int64_t d : {-17, -16, -15, -1, 0, 1, 15, 16, 17}) vocabs.push_back(base / 16 * 16 + d);
  for (int64_t v : {50257, 128256, 151936, 152064, 256000, 299999, 300000}) vocabs.push_back(v);
  std::mt19937_64 rng(99);
  for (int i = 0; i < 20; ++i) vocabs.push_back(1 + int64_t(rng() % 300000));

  const int64_t wanteds[] = {0, 1, 2, 3, 7, 64, 528, 1000};
  const int64_t min_chunks[] = {1, 16, 17, 100, 1024, 8192, 16384};
  const int threads_list[] = {1, 7, 32, 64, 512};
  std::vector<uint8_t> seen;
  int combos = 0, bad_split = 0, bad_chunk = 0, bad_cover = 0, bad_group_size = 0;
  for (int64_t vocab : vocabs) {
    for (int64_t wanted : wanteds) {
      for (int64_t min_chunk : min_chunks) {
        const int threads = threads_list[rng() % std::size(threads_list)];
        const RowSplit s = split_row(vocab, wanted, min_chunk);
        ++combos;
        const bool split_ok = s.vocab == vocab && s.splits >= 1 && s.splits <= std::max<int64_t>(1, wanted) &&
                              s.splits <= ceil_div(vocab, min_chunk) && s.chunk > 0 && s.chunk % kGroup == 0;
        if (!split_ok) {
          if (bad_split++ == 0)
            std::fprintf(stderr, "split_row(%lld, %lld, %lld) = {chunk %lld, splits %d}\n", (long long)vocab,
                         (long long)wanted, (long long)min_chunk, (long long)s.chunk, s.splits);
          continue;
        }
        seen.assign(size_t(vocab), 0);
        int64_t next_first_group = 0;
        for (int32_t split = 0; split < s.splits; ++split) {
          const ChunkGroups cg = chunk_groups(s, split);
          // Chunks are non-empty, contiguous, and whole chunks except the last.
          bad_chunk += !(cg.groups >= 1 && cg.first_group == next_first_group &&
                         (split == s.splits - 1 || cg.groups * kGroup == s.chunk));
          next_first_group = cg.first_group + cg.groups;
          for (int t = 0; t < threads; ++t) {
            for (int64_t q = t; q < cg.groups; q += threads) {  // the kernel's block-stride loop
              const int64_t g = cg.first_group + q;
              const int n = group_size(vocab, g);
              bad_group_size += !(n >= 1 && n <= kGroup && (n == kGroup || (g + 1) * kGroup >= vocab));
              for (int i = 0; i < n; ++i) {
                const int64_t token = g * kGroup + i;
                if (token >= vocab) {
                  ++bad_cover;
                  break;
                }
                ++seen[size_t(token)];
              }
            }
          }
        }
        bad_chunk += next_first_group != ceil_div(vocab, kGroup);
        for (uint8_t c : seen) bad_cover += c != 1;
      }
    }
  }
  CHECK_MSG(bad_split == 0, "%d bad splits", bad_split);
  CHECK_MSG(bad_chunk == 0, "%d bad chunks (empty, overlapping or not whole groups)", bad_chunk);
  CHECK_MSG(bad_group_size == 0, "%d bad group sizes", bad_group_size);
  CHECK_MSG(bad_cover == 0, "%d tokens not visited exactly once", bad_cover);
  std::printf("  tiling: %d (vocab, wanted, min_chunk, threads) grids walked\n", combos);
}

// ---------------------------------------------------------------------------
// Merge equals sequential

struct TestRow {
  std::vector<float> x;  // logits or weights
  bool probs;
  RowRace race;
  int64_t vocab() const { return int64_t(x.size()); }
};

void visit(const TestRow& row, RacePartial& acc, int64_t g) {
  float v[kGroup];
  load_group_scalar(row.x.data(), row.vocab(), g, row.probs, row.race, v);
  if (row.probs) {
    visit_group<true>(acc, v, int32_t(g * kGroup), row.race);
  } else {
    visit_group<false>(acc, v, int32_t(g * kGroup), row.race);
  }
}

RacePartial race_sequential(const TestRow& row) {
  RacePartial acc = empty_partial();
  for (int64_t g = 0; g < ceil_div(row.vocab(), kGroup); ++g) visit(row, acc, g);
  return acc;
}

// A warp's shuffle-down tree: lanes past the end read their own value
// (__shfl_down_sync); the result is complete in lane 0.
RacePartial warp_merge(std::array<RacePartial, 32> lanes) {
  for (int delta = 16; delta > 0; delta >>= 1) {
    std::array<RacePartial, 32> next;
    for (int l = 0; l < 32; ++l) next[l] = merge_partials(lanes[l], lanes[l + delta < 32 ? l + delta : l]);
    lanes = next;
  }
  return lanes[0];
}

// block_merge of the CUDA kernel: per warp, then warp 0 over the warps' results.
RacePartial block_merge(const std::vector<RacePartial>& threads) {
  const size_t warps = threads.size() / 32;  // threads.size() is a multiple of 32, at most 1024
  std::array<RacePartial, 32> per_warp, lanes;
  for (size_t w = 0; w < warps; ++w) {
    std::copy(threads.begin() + std::ptrdiff_t(32 * w), threads.begin() + std::ptrdiff_t(32 * w + 32), lanes.begin());
    per_warp[w] = warp_merge(lanes);
  }
  for (size_t l = 0; l < 32; ++l) lanes[l] = l < warps ? per_warp[l] : empty_partial();
  return warp_merge(lanes);
}

struct GridResults {
  RacePartial kernel;      // chunks merged by one block_merge, chunk j in thread j
  RacePartial in_order;    // chunks merged in order (the CPU path)
  RacePartial in_tickets;  // chunks merged in a random arrival order
};

GridResults race_grid(const TestRow& row, const RowSplit& s, int threads, std::mt19937_64& rng) {
  std::vector<RacePartial> chunks(size_t(s.splits));
  std::vector<RacePartial> per_thread(static_cast<size_t>(threads));
  for (int32_t split = 0; split < s.splits; ++split) {
    const ChunkGroups cg = chunk_groups(s, split);
    std::fill(per_thread.begin(), per_thread.end(), empty_partial());
    for (int t = 0; t < threads; ++t)
      for (int64_t q = t; q < cg.groups; q += threads) visit(row, per_thread[size_t(t)], cg.first_group + q);
    chunks[size_t(split)] = block_merge(per_thread);
  }
  GridResults r;
  std::vector<RacePartial> slots(size_t(ceil_div(s.splits, 32) * 32), empty_partial());
  std::copy(chunks.begin(), chunks.end(), slots.begin());
  r.kernel = block_merge(slots);
  r.in_order = empty_partial();
  for (const RacePartial& c : chunks) r.in_order = merge_partials(r.in_order, c);
  std::shuffle(chunks.begin(), chunks.end(), rng);
  r.in_tickets = empty_partial();
  for (const RacePartial& c : chunks) r.in_tickets = merge_partials(r.in_tickets, c);
  return r;
}

// The row's token and logprob from its merged partial, as the CPU path finishes a row.
RowResult finish(const TestRow& row, const RacePartial& acc) {
  RowResult res = finish_row(acc, row.race, row.probs);
  if (res.needs_resolve) {
    const int64_t first = res.token * kGroup;
    Best winner = no_best();
    for (int i = 0; i < group_size(row.vocab(), res.token); ++i) {
      const float v = load_value(row.x.data(), first + i, row.probs, row.race);
      winner = row.probs ? better_of(winner, token_entry<true>(v, int32_t(first + i), row.race))
                         : better_of(winner, token_entry<false>(v, int32_t(first + i), row.race));
    }
    res.token = winner.index;
    if (row.race.want_mass)
      res.logprob = chosen_logprob(load_value(row.x.data(), winner.index, false, row.race), acc.mass);
  }
  return res;
}

TestRow random_row(std::mt19937_64& rng, int64_t vocab, bool probs, int kind) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::exponential_distribution<float> expo(1.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  TestRow row;
  row.probs = probs;
  row.x.resize(size_t(vocab));
  for (float& x : row.x) {
    const float u = unit(rng);
    if (probs) {
      switch (kind) {
        case 0: x = expo(rng); break;
        case 1: x = u < 0.3f ? 0.0f : u < 0.4f ? -expo(rng) : u < 0.5f ? kNaN : expo(rng); break;
        case 2: x = u < 0.002f ? kInf : expo(rng); break;
        case 3: x = u < 0.5f ? 0.0f : -1.0f; break;                    // nothing positive
        case 4: x = u < 0.01f ? expo(rng) * 1e-40f : 0.0f; break;      // subnormal weights
        case 5: x = float(int(u * 3.0f)); break;                       // ties: 0, 1, 2
        default: x = u < 0.001f ? expo(rng) * 1e37f : expo(rng); break;  // huge weights
      }
    } else {
      switch (kind) {
        case 0: x = normal(rng); break;
        case 1: x = u < 0.2f ? -kInf : u < 0.3f ? kNaN : normal(rng); break;
        case 2: x = u < 0.003f ? kInf : normal(rng); break;
        case 3: x = u < 0.5f ? -kInf : kNaN; break;  // all masked
        case 4: x = float(int(u * 3.0f)); break;      // many ties
        case 5: x = normal(rng) * 1e36f; break;       // overflows when scaled
        default: x = normal(rng) * 1e4f + 1e8f; break;  // large, coarse floats
      }
    }
  }
  if (!probs && kind == 3 && vocab > 2 && unit(rng) < 0.5f) row.x[size_t(vocab / 2)] = 1.0f;  // one survivor
  row.race.stream = {rng(), rng() % 1000, rng() % 4 == 0 ? rng() : rng() % 1000};
  row.race.warped = false;
  row.race.keep = keep_all();
  if (probs) {
    row.race.greedy = false;
    row.race.inv_temperature = 1.0f;
    row.race.want_mass = false;
  } else {
    const float temperatures[] = {1.0f, 0.7f, 2.0f, 0.0f, kNaN, -1.0f, kInf, 1e-30f, 1e-3f};
    set_temperature(row.race, temperatures[rng() % std::size(temperatures)]);
    row.race.want_mass = rng() % 2 == 0;
  }
  return row;
}

// What the rules (race.h) say about a row's token, independently of the race.
void check_rules(const TestRow& row, const RowResult& res, int& bad_rule, int& bad_logprob) {
  int64_t first_inf = -1, count_inf = 0, argmax = -1;
  float max = -kInf;
  double lse_max = -INFINITY;
  for (int64_t i = 0; i < row.vocab(); ++i) {
    const float v = load_value(row.x.data(), i, row.probs, row.race);
    if (v == kInf) {
      if (first_inf < 0) first_inf = i;
      ++count_inf;
    } else if (row.probs ? v > 0.0f : v != -kInf) {
      if (argmax < 0 || v > max) max = v, argmax = i;
      lse_max = std::max(lse_max, double(v));
    }
  }
  if (first_inf >= 0) {
    bad_rule += !(res.valid && res.token == first_inf && !res.needs_resolve);
    bad_logprob += std::fabs(res.logprob + std::log(double(count_inf))) > 1e-6;
    return;
  }
  if (argmax < 0) {
    bad_rule += !(!res.valid && res.token == 0);
    return;
  }
  bad_rule += !(res.valid && res.token >= 0 && res.token < row.vocab());
  if (!res.valid || res.token < 0 || res.token >= row.vocab()) return;
  const float chosen = load_value(row.x.data(), res.token, row.probs, row.race);
  bad_rule += !(row.probs ? chosen > 0.0f && chosen != kInf : chosen != -kInf && chosen != kInf);
  if (!row.probs && row.race.greedy) bad_rule += res.token != argmax;
  if (!row.probs && row.race.want_mass) {
    double sum = 0.0;
    for (int64_t i = 0; i < row.vocab(); ++i) {
      const float v = load_value(row.x.data(), i, false, row.race);
      if (v != -kInf) sum += std::exp(double(v) - lse_max);
    }
    const double ref = double(chosen) - lse_max - std::log(sum);
    bad_logprob += !(std::fabs(double(res.logprob) - ref) <= 1e-5 + 1e-6 * std::fabs(ref));
  }
}

void test_merge_equals_sequential() {
  std::mt19937_64 rng(2024);
  const int64_t vocabs[] = {1, 2, 15, 16, 17, 31, 33, 100, 255, 256, 257, 1000, 4097, 8191, 32000, 50257};
  const int64_t wanteds[] = {1, 2, 3, 5, 8, 64, 528};
  const int64_t min_chunks[] = {16, 32, 48, 256, 8192};
  const int threads_list[] = {32, 64, 96, 512};
  int rows = 0, bad_best = 0, bad_infs = 0, bad_mass = 0, bad_result = 0, bad_rule = 0, bad_logprob = 0;
  for (int trial = 0; trial < 700; ++trial) {
    const bool probs = trial % 3 == 2;
    int64_t vocab = vocabs[rng() % std::size(vocabs)];
    if (trial % 100 == 0) vocab = 151936;  // a few full-size rows
    const TestRow row = random_row(rng, vocab, probs, int(rng() % 7));
    const RacePartial seq = race_sequential(row);
    const RowResult seq_res = finish(row, seq);
    check_rules(row, seq_res, bad_rule, bad_logprob);
    ++rows;
    for (int grid = 0; grid < 2; ++grid) {
      const RowSplit s = split_row(vocab, wanteds[rng() % std::size(wanteds)], min_chunks[rng() % std::size(min_chunks)]);
      const GridResults r = race_grid(row, s, threads_list[rng() % std::size(threads_list)], rng);
      for (const RacePartial& p : {r.kernel, r.in_order, r.in_tickets}) {
        const bool best_ok = same_best(p.best, seq.best);
        if (!best_ok && bad_best++ == 0)
          std::fprintf(stderr, "V=%lld probs=%d: grid best {%a, %d}, sequential {%a, %d}\n", (long long)vocab,
                       int(probs), p.best.key, p.best.index, seq.best.key, seq.best.index);
        bad_infs += !(p.infs.first == seq.infs.first && p.infs.count == seq.infs.count);
        // mass.max by value: with T = inf every scaled logit is +0 or -0, and
        // which zero a max keeps depends on the order (harmless: y - max is the same).
        const bool mass_ok = p.mass.max == seq.mass.max &&
                             std::fabs(double(p.mass.sum) - double(seq.mass.sum)) <= 1e-5 * double(seq.mass.sum);
        bad_mass += !mass_ok;
        const RowResult res = finish(row, p);
        const bool logprob_ok = res.logprob == seq_res.logprob ||
                                std::fabs(double(res.logprob) - double(seq_res.logprob)) <=
                                    1e-5 * (1.0 + std::fabs(double(seq_res.logprob)));
        bad_result += !(res.token == seq_res.token && res.valid == seq_res.valid && logprob_ok);
      }
    }
  }
  CHECK_MSG(bad_best == 0, "%d grid results whose best differs from the sequential one", bad_best);
  CHECK_MSG(bad_infs == 0, "%d grid results whose infinities differ", bad_infs);
  CHECK_MSG(bad_mass == 0, "%d grid results whose mass differs", bad_mass);
  CHECK_MSG(bad_result == 0, "%d grid results whose token differs", bad_result);
  CHECK_MSG(bad_rule == 0, "%d rows whose token breaks the rules", bad_rule);
  CHECK_MSG(bad_logprob == 0, "%d rows whose logprob is off", bad_logprob);
  std::printf("  merge: %d rows, each against 2 grids x 3 merge orders\n", rows);
}

}  // namespace


// ---------------------------------------------------------------------------
// Warper selection (select.h): order keys and radix selection against sorting.

// key_floor: a float compare against it is the key compare, for every float
// but NaN (which scaled logits never are) and every key, bin floors included.
void test_key_floor() {
  std::mt19937 rng(7);
  std::vector<uint32_t> keys = {0u, 1u, 0x007FFFFFu, 0x00800000u, 0x7FFFFFFFu, 0x80000000u, 0x80000001u,
                                0xFF800000u, 0xFF800001u, 0xFFE00000u, 0xFFFFFFFFu};
  for (uint32_t bin = 0; bin < uint32_t(kBins); ++bin) keys.push_back(bin << 21);
  for (int i = 0; i < 2000; ++i) keys.push_back(uint32_t(rng()));
  std::vector<float> ys = {-kInf, kInf, -0.0f, 0.0f, 1e-45f, -1e-45f, 3.4e38f, -3.4e38f};
  for (int i = 0; i < 2000; ++i) {
    const float y = bits_float(uint32_t(rng()));
    if (y == y) ys.push_back(y);
  }
  for (const uint32_t k : keys) {
    for (const float y : ys) {
      // order_key sees -0 as +0; key_floor compares with float semantics, where they are equal.
      CHECK((order_key(y) >= k) == (y >= key_floor(k)));
    }
  }
}

void test_selection() {
  std::mt19937 rng(99);
  // order_key orders floats as floats; -0 and +0 are one key; key_value inverts it.
  std::vector<float> values = {-kInf, -3.5f, -1e-30f, -0.0f, 0.0f, 1e-38f, 2.0f, 7.25f, kInf};
  for (size_t i = 0; i + 1 < values.size(); ++i) {
    const bool less = values[i] < values[i + 1];
    CHECK_MSG(less ? order_key(values[i]) < order_key(values[i + 1]) : order_key(values[i]) == order_key(values[i + 1]),
              "order_key(%g) vs order_key(%g)", values[i], values[i + 1]);
    CHECK(key_value(order_key(values[i])) == values[i]);
  }
  std::uniform_real_distribution<float> uni(-50.0f, 50.0f);
  for (int trial = 0; trial < 200; ++trial) {
    // Random weights, many ties: the selected key is the first value from the
    // top whose inclusive cumulative weight reaches the target.
    const int n = 1 + int(rng() % 3000);
    std::vector<float> y(static_cast<size_t>(n));
    std::vector<uint64_t> w(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      y[size_t(i)] = trial % 2 ? std::round(uni(rng)) : uni(rng);
      w[size_t(i)] = rng() % 5 == 0 ? 0 : 1 + rng() % 1000;
    }
    uint64_t total = 0;
    for (uint64_t x : w) total += x;
    const uint64_t target = total == 0 ? 1 : 1 + rng() % total;
    std::vector<int> order(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) order[size_t(i)] = i;
    std::sort(order.begin(), order.end(), [&](int a, int b) { return y[size_t(a)] > y[size_t(b)]; });
    float expected = kInf;
    bool found = false;
    uint64_t cumulative = 0;
    for (size_t j = 0; j < order.size() && !found; ++j) {
      const float v = y[size_t(order[j])];
      for (size_t k = j; k < order.size() && y[size_t(order[k])] == v; ++k) cumulative += w[size_t(order[k])];
      while (j + 1 < order.size() && y[size_t(order[j + 1])] == v) ++j;
      if (cumulative >= target && cumulative > 0) {
        expected = v;
        found = true;
      }
    }
    uint32_t key = 0;
    std::vector<uint32_t> keys(y.size());
    for (size_t i = 0; i < y.size(); ++i) keys[i] = order_key(y[i]);
    SelectScratch scratch;
    const bool got = select_top(keys.data(), w.data(), n, target, scratch, &key);
    CHECK_MSG(got == found, "trial %d: found %d, expected %d", trial, int(got), int(found));
    if (got && found) CHECK_MSG(key_value(key) == expected, "trial %d: %g vs %g", trial, key_value(key), expected);
    if (got) {  // the kept set it leaves: every weighted element with key >= u, once
      std::vector<int32_t> kept(scratch.above);
      kept.insert(kept.end(), scratch.candidates.begin(), scratch.candidates.end());
      std::sort(kept.begin(), kept.end());
      std::vector<int32_t> want;
      for (int i = 0; i < n; ++i)
        if (w[size_t(i)] > 0 && keys[size_t(i)] >= key) want.push_back(i);
      CHECK_MSG(kept == want, "trial %d: %zu kept, expected %zu", trial, kept.size(), want.size());
    }
  }
  // mass_target is ceil(p * total); fixed_mass truncates w * 2^S.
  CHECK(mass_target(0.5f, 10) == 5 && mass_target(0.25f, 10) == 3 && mass_target(0.0f, 10) == 0);
  CHECK(fixed_mass(1.0f, 40) == (uint64_t(1) << 40) && fixed_mass(0.0f, 40) == 0);
  CHECK(mass_shift(262144) == 62 - 18 && mass_shift(1) == 62);
}

// The sampling kernel's launch plan (csrc/cuda/plans.h): every token in exactly
// one chunk, at most one chunk per merging thread, a row split only when the
// batch cannot fill the device, and the grid and workspace that follow.
void test_sample_plan() {
  const int64_t vocabs[] = {1, 15, 16, 17, 8191, 8192, 8193, 16400, 32000, 128256, 151936, 262144, 1 << 24};
  const int64_t batches[] = {1, 2, 3, 8, 64, 256, 70000};
  const int sms[] = {1, 7, 78, 132, 264};
  for (const int64_t vocab : vocabs) {
    for (const int64_t rows : batches) {
      for (const int sm : sms) {
        const SamplePlan plan = plan_sample(rows, vocab, sm);
        const RowSplit& s = plan.split;
        CHECK(s.splits >= 1 && s.splits <= kSampleThreads && s.chunk % kGroup == 0);
        CHECK(int64_t(s.splits) * s.chunk >= vocab && int64_t(s.splits - 1) * s.chunk < vocab);
        CHECK(s.splits <= ceil_div(vocab, kSampleMinChunk));  // no chunk below half the minimum
        CHECK(s.splits <= std::max<int64_t>(1, ceil_div(int64_t(sm) * kSampleBlocksPerSm, rows)));
        CHECK(plan.blocks == rows * s.splits);
        CHECK(plan.partial_rows == (s.splits > 1 ? plan.blocks : 0));
      }
    }
  }
  CHECK(plan_sample(1, 262144, 132).split.splits == 32);   // B = 1 uses many SMs
  CHECK(plan_sample(1, 1 << 24, 132).split.splits == 264);
  CHECK(plan_sample(256, 128256, 132).split.splits == 2);
  CHECK(plan_sample(300, 128256, 132).split.splits == 1);
}

// The warpers' selection plan (csrc/cuda/plans.h): chunks cover the row, the
// candidate buffers stay within their budget, and the napkin model meets the
// bar: top-k + top-p + min-p read the row at most twice when the candidates fit.
void test_select_plan() {
  const int64_t vocabs[] = {1, 17, 8192, 32000, 128256, 262144, 1 << 24};
  const int64_t batches[] = {1, 3, 64, 256, 4096, 70000};
  for (const int64_t vocab : vocabs) {
    for (const int64_t rows : batches) {
      const SelectPlan plan = plan_select(rows, vocab, 132);
      const RowSplit& s = plan.split;
      CHECK(s.splits >= 1 && s.splits <= kSelectMaxSplits && s.chunk % kGroup == 0);
      CHECK(int64_t(s.splits) * s.chunk >= vocab && int64_t(s.splits - 1) * s.chunk < vocab);
      CHECK(plan.blocks == rows * s.splits);
      CHECK(plan.candidates >= 1 && plan.candidates <= std::max<int64_t>(vocab, 1));
      CHECK(plan.candidates <= kCandidateCap);
      CHECK(plan.candidates == std::min<int64_t>(vocab, kCandidateFloor) ||
            rows * plan.candidates <= kCandidateBudget);
    }
  }
  CHECK(plan_select(1, 128256, 132).split.splits == 16);  // B = 1: a block per 8192 tokens
  CHECK(plan_select(1, 128256, 132).candidates == kCandidateCap);
  const Warpers all = clamp_warpers(50, 0.9f, 0.05f, 1.0f, 128256);
  CHECK(napkin_select(all, true).full_reads == 2);
  CHECK(napkin_select(all, false).full_reads > 2);
  CHECK(napkin_select(clamp_warpers(0, 0.9f, 0.0f, 1.0f, 128256), true).full_reads == 3);  // top-p needs the max first
  CHECK(napkin_select(clamp_warpers(0, 1.0f, 0.0f, 1.0f, 128256), true).full_reads == 1);  // no warper
  CHECK(mode_after_scan(all, false) == kSelectTopPHist);
  CHECK(mode_after_scan(clamp_warpers(0, 1.0f, 0.0f, 0.9f, 100), false) == kSelectFullRow);
}

// verify's positions plan (Note [A node's row on chip]): whole full groups,
// within the limit; a row that fits is read once, the tail group aside.
void test_positions_plan() {
  const int64_t limits[] = {0, 100, 48 << 10, (227 << 10) - 528};
  const int64_t vocabs[] = {1, 15, 16, 20000, 26001, 128256, 262144};
  for (const int64_t limit : limits) {
    for (const int64_t vocab : vocabs) {
      for (const int64_t elem : {2, 4}) {
        const PositionsPlan plan = plan_positions(vocab, elem, limit);
        CHECK(plan.kept_groups >= 0 && plan.kept_groups <= vocab / kGroup);
        CHECK(plan.shared_bytes == plan.kept_groups * kGroup * elem && plan.shared_bytes <= limit);
        CHECK(plan.kept_groups == vocab / kGroup || plan.shared_bytes + kGroup * elem > limit);  // all that fits
        const double reads = napkin_positions_reads(vocab, plan);
        CHECK(reads >= 1.0 && reads <= 2.0);
      }
    }
  }
  const int64_t h100 = (227 << 10) - 528;
  CHECK(napkin_positions_reads(32768, plan_positions(32768, 4, h100)) == 1.0);
  CHECK(napkin_positions_reads(100000, plan_positions(100000, 2, h100)) == 1.0);
  CHECK(plan_positions(128256, 2, h100).kept_groups == h100 / 32);  // 90% of the row
}

// syncfree.distributed's packed candidates: a max over ranks finds the best
// key and, among equal keys, the lowest index; the step list follows the flags.
void test_shard_protocol() {
  const float keys[] = {-kInf, -2.5f, 0.0f, 1.0f, 1.0f, kInf};
  const int64_t indices[] = {0, 7, 3, 9, 4, 12};
  int64_t best = 0;
  for (int i = 0; i < 6; ++i) {
    const int64_t packed = pack_candidate(keys[i], indices[i]);
    CHECK(packed > 0 && packed_index(packed) == indices[i] && packed_key(packed) == keys[i]);
    best = packed > best ? packed : best;
  }
  CHECK(packed_key(best) == kInf && packed_index(best) == 12);
  CHECK(pack_candidate(1.0f, 4) > pack_candidate(1.0f, 9) && pack_candidate(1.0f, 9) > pack_candidate(0.5f, 0));
  CHECK(packed_index(pack_candidate(-kInf, kNoIndex)) == kNoIndex);
  // No warper: the race, the resolve and, with logprobs, two more steps.
  CHECK(shard_steps(0).size() == 2 && shard_steps(kCallLogprobs).size() == 4);
  // Each selection takes kSelectPasses summed histograms; min-p none; typical-p its sums first.
  const auto all = shard_steps(kCallWarpers);
  CHECK(int(all.size()) == 1 + 3 * kSelectPasses + 1 + 1 + 2);
  int bins = 0;
  for (int pass = 0; pass < kSelectPasses; ++pass) bins += shard_step_columns(kStepTopK * kStepStride + pass);
  CHECK(bins == (1 << kDigitBits) * (kSelectPasses - 1) + (1 << (32 - (kSelectPasses - 1) * kDigitBits)));
  CHECK(shard_steps(kCallWarpers | kCallAllGreedy).size() == 2);  // greedy rows ignore the warpers
}

int main() {
  struct {
    const char* name;
    void (*run)();
  } const tests[] = {
      {"philox known answers", test_philox_kat},
      {"stream layout", test_stream_layout},
      {"noise", test_noise},
      {"log_positive", test_log_positive},
      {"exp_nonpositive", test_exp_nonpositive},
      {"tie rule", test_tie_rule},
      {"tiling", test_tiling},
      {"merge equals sequential", test_merge_equals_sequential},
      {"key_floor", test_key_floor},
      {"selection", test_selection},
      {"sample launch plan", test_sample_plan},
      {"select launch plan and napkin model", test_select_plan},
      {"positions launch plan and napkin model", test_positions_plan},
      {"shard protocol", test_shard_protocol},
  };
  for (const auto& t : tests) {
    const int failed_before = g_failed;
    std::printf("[ RUN  ] %s\n", t.name);
    t.run();
    std::printf("[ %s ] %s\n", g_failed == failed_before ? " OK " : "FAIL", t.name);
  }
  std::printf("core tests: %d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
