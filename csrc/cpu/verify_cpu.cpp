// syncfree.verify_draft on the CPU (Note [Verifying a draft] in core/verify.h):
// rows in parallel, each row's positions in order up to its first rejection.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <vector>

#include "../device_api.h"

namespace syncfree {
namespace {

struct Scratch {
  std::vector<float> y, weights;
  std::vector<uint64_t> masses;  // the position's fixed-point masses, for its residual
  SelectScratch select;
};

// The law of one position over its race values y (scaled, warped); its
// masses stay in s.masses.
SF_HOST_INLINE TargetMass target_mass(const float* y, int64_t vocab, Scratch& s) {
  TargetMass t{-kInf, 0u, mass_shift(vocab), kNoIndex, 0};
  float m = -kInf;  // y is never NaN: the max vectorises exactly
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < vocab; ++i) m = y[i] > m ? y[i] : m;
  if (m == kInf) {
    for (int64_t i = vocab - 1; i >= 0; --i) {
      if (y[i] == kInf) {
        t.first_inf = int32_t(i);
        t.infs += 1;
      }
    }
  }
  t.m = m + 0.0f;
  if (t.first_inf != kNoIndex || m == -kInf) return t;
  s.masses.resize(size_t(vocab));
  uint64_t* w = s.masses.data();
  for (int64_t i = 0; i < vocab; ++i) {
    w[i] = target_fixed_mass(t, y[i]);
    t.total += w[i];
  }
  return t;
}

// The token a stop at this position emits (Note [Verifying a draft]), and its logprob.
struct Emitted {
  int64_t token;
  float logprob;
  bool valid;
};

// (Inlined into a portable and an AVX2+FMA variant, as the sampling path's
// race: fma is then one instruction, not a libm call; the results are the same.)
template <typename T>
SF_HOST_INLINE void verify_row_body(const VerifyParams& v, int64_t b, Scratch& s) {
  const SampleParams& p = v.target;
  const int64_t positions = v.n + 1, vocab = p.vocab;
  int64_t* tokens = v.tokens + b * positions;
  float* logprobs = v.logprobs != nullptr ? v.logprobs + b * positions : nullptr;
  s.y.resize(size_t(vocab));
  float* y = s.y.data();
  int64_t accepted = 0;
  Emitted stop{0, -kInf, false};
  for (int64_t j = 0; j < positions; ++j) {
    const int64_t row = b * positions + j;
    const T* x = static_cast<const T*>(p.input) + row * p.row_stride;
    const RowRace with_processing = row_race(p, row);
    const RowProcess& proc = with_processing.proc;
    const RowRace r = without_processing(with_processing);  // the races below read y, processed already
    const bool drafted = j < v.n;
    const int64_t draft = drafted ? v.draft_ids[b * v.draft_ids_stride + j] : -1;
    const bool in_vocab = draft >= 0 && draft < vocab;
    if (processes(proc)) {  // Note [Processing in the pass]: this position's history, bias and mask
      for (int64_t i = 0; i < vocab; ++i) y[i] = scaled_logit(process_logit(float(x[i]), i, proc), r.inv_temperature);
    } else {
      for (int64_t i = 0; i < vocab; ++i) y[i] = scaled_logit(float(x[i]), r.inv_temperature);
    }
    if (r.greedy) {
      RowRace greedy = r;
      greedy.want_mass = logprobs != nullptr;
      const RowResult res = race_values_cpu(y, vocab, false, greedy);
      if (res.valid && drafted && draft == res.token) {
        tokens[j] = draft;
        if (logprobs != nullptr) logprobs[j] = res.logprob;
        ++accepted;
        continue;
      }
      stop = {res.token, res.valid ? res.logprob : -kInf, res.valid};
      break;
    }
    const Warpers w = row_warpers(p, row);
    if (any_warper(w)) {
      const RowKeep keep = row_keep_cpu(y, vocab, w, s.select);
      for (int64_t i = 0; i < vocab; ++i) y[i] = apply_keep(y[i], keep);
    }
    const TargetMass t = target_mass(y, vocab, s);
    int32_t point = t.first_inf;  // a point mass: the first +inf, or the overflow argmax
    if (point == kNoIndex && t.total == 0u) {
      if (may_overflow(r)) {  // Note [Logits past the temperature's range]
        Best raw = no_best();
        for (int64_t i = 0; i < vocab; ++i) raw = better_of(raw, raw_entry(process_logit(float(x[i]), i, proc), int32_t(i)));
        point = raw.index;
      }
      if (point == kNoIndex) {  // degenerate: stop with token 0
        stop = {0, -kInf, false};
        break;
      }
    }
    const double q = !drafted ? 0.0 : v.draft_probs == nullptr ? 1.0
                   : in_vocab ? double(clean_weight(v.draft_probs[(b * v.n + j) * v.draft_probs_stride + draft])) : 0.0;
    const double pd = !in_vocab ? 0.0 : point != kNoIndex ? (draft == point ? 1.0 : 0.0)
                                                          : target_probability(t, y[draft]);
    if (drafted && accepts(accept_uniform(r.stream), q, pd)) {
      tokens[j] = draft;
      if (logprobs != nullptr) logprobs[j] = point != kNoIndex ? point_logprob(t) : target_logprob(t, y[draft]);
      ++accepted;
      continue;
    }
    if (point != kNoIndex) {
      stop = {point, point_logprob(t), true};
      break;
    }
    // The stop token: the bonus (p), or the residual max(0, p - q).
    RowResult res{0, 0.0f, false, false};
    if (drafted && v.draft_probs != nullptr) {
      s.weights.resize(size_t(vocab));
      const float* q_row = v.draft_probs + (b * v.n + j) * v.draft_probs_stride;
      const uint64_t* masses = s.masses.data();
      for (int64_t i = 0; i < vocab; ++i) s.weights[size_t(i)] = residual_weight(mass_probability(t, masses[i]), q_row[i]);
      res = race_values_cpu(s.weights.data(), vocab, true, r);
    } else if (drafted && in_vocab) {
      const float saved = y[draft];
      y[draft] = -kInf;  // q one-hot at the draft: p without it
      res = race_values_cpu(y, vocab, false, r);
      y[draft] = saved;
    }
    if (!res.valid) res = race_values_cpu(y, vocab, false, r);  // the bonus, or a residual with no mass
    stop = {res.token, target_logprob(t, y[res.token]), true};
    break;
  }
  tokens[accepted] = stop.token;
  if (logprobs != nullptr) logprobs[accepted] = stop.logprob;
  for (int64_t j = accepted + 1; j < positions; ++j) {
    tokens[j] = -1;
    if (logprobs != nullptr) logprobs[j] = -kInf;
  }
  v.num_accepted[b] = accepted;
  if (v.valid != nullptr) v.valid[b] = stop.valid;
}

template <typename T>
void verify_row_portable(const VerifyParams& v, int64_t b, Scratch& s) {
  verify_row_body<T>(v, b, s);
}

#if defined(__x86_64__)
template <typename T>
__attribute__((target("avx2,fma"))) void verify_row_avx2(const VerifyParams& v, int64_t b, Scratch& s) {
  verify_row_body<T>(v, b, s);
}
#endif

template <typename T>
void verify_row(const VerifyParams& v, int64_t b, Scratch& s) {
#if defined(__x86_64__)
  if (cpu_has_avx2_fma()) return verify_row_avx2<T>(v, b, s);
#endif
  verify_row_portable<T>(v, b, s);
}

}  // namespace

void verify_cpu(const VerifyParams& v, c10::ScalarType dtype, const std::optional<at::Generator>& generator,
                bool from_generator) {
  VerifyParams call = v;
  if (from_generator) {
    const GeneratorDraw draw = draw_generator_cpu(generator);
    call.target.seed = draw.seed;
    call.target.pos0 = draw.pos0;
  }
  ExceptionTables tables;  // one per position (Processing::per_position)
  build_exceptions_cpu(call.target, tables);
  const int64_t rows = v.target.rows / (v.n + 1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "syncfree_verify_cpu", [&] {
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      thread_local Scratch scratch;
      for (int64_t b = begin; b < end; ++b) verify_row<scalar_t>(call, b, scratch);
    });
  });
}

}  // namespace syncfree
