// syncfree.verify_draft and verify_tree on the CPU (Note [Verifying a draft],
// Note [Verifying a tree] in core/verify.h): rows in parallel, each row's
// walk from its root node to the node where it stops.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

#include "../device_api.h"

namespace syncfree {
namespace {

struct Scratch {
  std::vector<float> y, weights;
  std::vector<uint64_t> masses;  // the node's fixed-point masses (R_0), then its residual's
  std::vector<int64_t> rejected;  // the node's rejected tokens (one-hot drafts)
  std::vector<float> saved;
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

// Where a node's walk goes: an accepted child, or the token the row stops with.
struct Step {
  int64_t child;  // -1: stop
  int64_t token;
  float logprob;
  bool valid;
};

// One node of the walk (Note [Verifying a tree]): its law over y (processed,
// scaled, warped, left in s.y), its children tried in order, and the stop
// token when all are rejected.
template <typename T>
SF_HOST_INLINE Step visit_node(const VerifyParams& v, int64_t b, int64_t node, Scratch& s) {
  const SampleParams& p = v.target;
  const int64_t vocab = p.vocab, row = b * v.nodes + node;
  const T* x = static_cast<const T*>(p.input) + row * p.row_stride;
  const RowRace with_processing = row_race(p, row);
  const RowProcess& proc = with_processing.proc;
  const RowRace r = without_processing(with_processing);  // the races below read y, processed already
  float* y = s.y.data();
  if (processes(proc)) {  // Note [Processing in the pass]: this node's history, bias and mask
    for (int64_t i = 0; i < vocab; ++i) y[i] = scaled_logit(process_logit(float(x[i]), i, proc), r.inv_temperature);
  } else {
    for (int64_t i = 0; i < vocab; ++i) y[i] = scaled_logit(float(x[i]), r.inv_temperature);
  }
  if (r.greedy) {  // the first child whose token is the argmax
    RowRace greedy = r;
    greedy.want_mass = v.logprobs != nullptr;
    const RowResult res = race_values_cpu(y, vocab, false, greedy);
    if (!res.valid) return {-1, 0, -kInf, false};
    for (int64_t c = next_child(v, b, node, node); c >= 0; c = next_child(v, b, node, c)) {
      if (node_token(v, b, c) == res.token) return {c, res.token, res.logprob, true};
    }
    return {-1, res.token, res.logprob, true};
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
    if (point == kNoIndex) return {-1, 0, -kInf, false};  // degenerate: stop with token 0
  }
  // The children in turn; `residual` is r_{k-1} over the rejected ones (R_{k-1}, T_{k-1} in
  // s.masses with draft_probs; the rejected tokens' total mass without).
  s.rejected.clear();
  uint64_t total = t.total, rejected_mass = 0u;
  const float* last_q = nullptr;  // the last rejected child's q row
  uint64_t k = 0;
  for (int64_t c = next_child(v, b, node, node); c >= 0; c = next_child(v, b, node, c), ++k) {
    const int64_t draft = node_token(v, b, c);
    const bool in_vocab = draft >= 0 && draft < vocab;
    const float* q_row = node_draft_law(v, b, c);
    if (point == kNoIndex && q_row != nullptr && last_q != nullptr) {  // R_{k-1} from R_{k-2}
      uint64_t* masses = s.masses.data();
      uint64_t next = 0u;
      for (int64_t i = 0; i < vocab; ++i) {
        masses[i] = residual_mass(masses[i], last_q[i], total);
        next += masses[i];
      }
      total = next;
    }
    const double q = q_row == nullptr ? 1.0 : in_vocab ? double(clean_weight(q_row[draft])) : 0.0;
    double pd = 0.0;
    if (in_vocab && point != kNoIndex) {
      pd = draft == point ? 1.0 : 0.0;
    } else if (in_vocab && q_row != nullptr) {
      pd = mass_probability({t.m, total, t.shift, kNoIndex, 0}, s.masses[size_t(draft)]);
    } else if (in_vocab && std::find(s.rejected.begin(), s.rejected.end(), draft) == s.rejected.end()) {
      pd = mass_probability({t.m, t.total - rejected_mass, t.shift, kNoIndex, 0}, s.masses[size_t(draft)]);
    }
    if (accepts(accept_uniform(r.stream, k), q, pd)) {
      return {c, draft, point != kNoIndex ? point_logprob(t) : target_logprob(t, y[draft]), true};
    }
    if (in_vocab && point == kNoIndex && q_row == nullptr &&
        std::find(s.rejected.begin(), s.rejected.end(), draft) == s.rejected.end()) {
      s.rejected.push_back(draft);
      rejected_mass += s.masses[size_t(draft)];
    }
    last_q = q_row;
  }
  if (point != kNoIndex) return {-1, point, point_logprob(t), true};
  // The stop token: the bonus (p), or the residual.
  RowResult res{0, 0.0f, false, false};
  if (last_q != nullptr) {  // the probability race over max(0, r_{k-1} - q_k)
    s.weights.resize(size_t(vocab));
    const TargetMass residual{t.m, total, t.shift, kNoIndex, 0};
    const uint64_t* masses = s.masses.data();
    for (int64_t i = 0; i < vocab; ++i)
      s.weights[size_t(i)] = residual_weight(mass_probability(residual, masses[i]), last_q[i]);
    res = race_values_cpu(s.weights.data(), vocab, true, r);
  } else if (!s.rejected.empty()) {  // p without the rejected tokens
    s.saved.clear();
    for (const int64_t token : s.rejected) {
      s.saved.push_back(y[token]);
      y[token] = -kInf;
    }
    res = race_values_cpu(y, vocab, false, r);
    for (size_t j = 0; j < s.rejected.size(); ++j) y[s.rejected[j]] = s.saved[j];
  }
  if (!res.valid) res = race_values_cpu(y, vocab, false, r);  // the bonus, or a residual with no mass
  return {-1, res.token, target_logprob(t, y[res.token]), true};
}

// (Inlined into a portable and an AVX2+FMA variant, as the sampling path's
// race: fma is then one instruction, not a libm call; the results are the same.)
template <typename T>
SF_HOST_INLINE void verify_row_body(const VerifyParams& v, int64_t b, Scratch& s) {
  const int64_t nodes = v.nodes;
  int64_t* tokens = v.tokens + b * nodes;
  int64_t* path = v.path != nullptr ? v.path + b * nodes : nullptr;
  float* logprobs = v.logprobs != nullptr ? v.logprobs + b * nodes : nullptr;
  s.y.resize(size_t(v.target.vocab));
  int64_t node = 0, accepted = 0;
  Step step{};
  for (;;) {
    if (path != nullptr) path[accepted] = node;
    step = visit_node<T>(v, b, node, s);
    tokens[accepted] = step.token;
    if (logprobs != nullptr) logprobs[accepted] = step.logprob;
    if (step.child < 0) break;
    node = step.child;
    ++accepted;
  }
  for (int64_t j = accepted + 1; j < nodes; ++j) {
    tokens[j] = -1;
    if (path != nullptr) path[j] = -1;
    if (logprobs != nullptr) logprobs[j] = -kInf;
  }
  v.num_accepted[b] = accepted;
  if (v.valid != nullptr) v.valid[b] = step.valid;
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
  const int64_t rows = v.target.rows / v.nodes;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "syncfree_verify_cpu", [&] {
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      thread_local Scratch scratch;
      for (int64_t b = begin; b < end; ++b) verify_row<scalar_t>(call, b, scratch);
    });
  });
}

}  // namespace syncfree
