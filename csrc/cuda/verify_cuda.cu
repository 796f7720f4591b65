// syncfree.verify_draft and verify_tree on CUDA (Note [Verifying a draft],
// Note [Verifying a tree] in core/verify.h): the warpers' selection over all
// B N nodes (warpers_cuda.cu), then
//   positions: one block per node: its law (first +inf, max, fixed-point
//              total), or for a greedy row its argmax; every node at once;
//   finish:    one block per row: the walk from the root (each child's value
//              and q read in one parallel pass, the acceptances in order,
//              a pass for each multi-round residual total), the accepted
//              tokens, and the stop token's race over the node it stops at.
// So a call is the selection's launches (with warpers) and two more, no sync.
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../device_api.h"
#include "block_race.cuh"
#include "block_select.cuh"
#include "launch.h"
#include "plans.h"

namespace syncfree {
namespace {

constexpr int kThreads = kSelectThreads;

// What the positions kernel finds for one node.
struct PositionLaw {
  TargetMass law;
  int32_t point;      // a point mass (first +inf, overflow argmax, greedy argmax), or kNoIndex
  bool degenerate;    // no unmasked logit
  float logprob;      // a greedy node's: log p of its argmax
};

struct VerifyArgs {
  VerifyParams v;
  RngArgs rng;
  PositionLaw* laws;   // [B (n + 1)]
  bool aligned;        // 16-byte aligned rows: full groups through vector loads
  int64_t kept_groups; // the positions kernel's groups on chip (Note [A node's row on chip])
};

// The race value of token i of a position (processed, scaled, warped).
template <typename T>
__device__ __forceinline__ float position_value(const T* x, int64_t i, const RowRace& r) {
  return load_value(x, i, false, r);
}

// Group g of a position's race values (-inf past the row's end), 16-byte loads where aligned.
template <typename T>
__device__ __forceinline__ void position_group(const T* x, int64_t vocab, int64_t g, bool aligned, const RowRace& r,
                                               float (&v)[kGroup]) {
  if (aligned && g < vocab / kGroup) {
    load_group_vec(x, g, false, r, v);
  } else {
    load_group_scalar(x, vocab, g, false, r, v);
  }
}

// Note [A node's row on chip]
// ---------------------------
// A node's law (Note [Verifying a draft]) is an integer mass against the
// row's max, which is known only after a read of the row: exact integers
// cannot be rescaled afterwards, so the kernel passes over the row twice. The
// first pass keeps the raw input of the row's first a.kept_groups full groups
// in dynamic shared memory (plan_positions in plans.h), as 16-byte words laid
// out word-major (group g's word j at [j * kept + g]: a warp's stores and
// loads are consecutive 16-byte words, no bank conflicts), and the second
// reads them there; only the groups past them (and the tail group) are read
// from memory again. Group g is thread g % kThreads's in both passes, so a
// thread reads back only the words it wrote: no barrier is needed for them.
// With the opt-in maximum of an H100 (227 KiB) a bf16 row of up to ~115k
// tokens and a float row of ~57k is read once; at V = 128,256 a bf16 row
// re-reads ~10%, a float row 55% (an A100's 163 KiB: ~83k and ~41k tokens).
// The cost: a block keeping ~220 KB runs alone on its SM, where the plain
// variants (56-58 registers) ran two; the processing variants ran one anyway.
// A call whose rows are all greedy makes one pass and keeps nothing.
template <typename T>
struct KeptRow {
  uint4* words;  // [kGroupWords<T>][kept]
  int64_t kept;
  bool aligned;

  // Group g's race values; a kept group's words are stored on the way.
  __device__ __forceinline__ void first(const T* x, int64_t vocab, int64_t g, const RowRace& r,
                                        float (&v)[kGroup]) const {
    if (g >= kept) return position_group(x, vocab, g, aligned, r, v);
    uint4 w[kGroupWords<T>];
    if (aligned) {
      load_group_words(x, g, w);
    } else {
      load_group_words_scalar(x, g, w);
    }
#pragma unroll
    for (int j = 0; j < kGroupWords<T>; ++j) words[j * kept + g] = w[j];
    group_from_words<T>(w, g, false, r, v);
  }

  // Group g's race values again: a kept group's from shared memory.
  __device__ __forceinline__ void again(const T* x, int64_t vocab, int64_t g, const RowRace& r,
                                        float (&v)[kGroup]) const {
    if (g >= kept) return position_group(x, vocab, g, aligned, r, v);
    uint4 w[kGroupWords<T>];
#pragma unroll
    for (int j = 0; j < kGroupWords<T>; ++j) w[j] = words[j * kept + g];
    group_from_words<T>(w, g, false, r, v);
  }
};

struct PositionsShared {
  unsigned long long warp_sums[kThreads / 32];
  unsigned max_key;
  int first_inf, inf_count;
};

// kProcess: the call has processing (each node its own history: Processing::per_position);
// without it the processing code folds away, as in the sampling kernels.
template <typename T, bool kProcess>
__global__ void __launch_bounds__(kThreads) syncfree_verify_positions_kernel(VerifyArgs a) {
  __shared__ PositionsShared sh;
  SYNCFREE_DYNAMIC_SHARED(uint4, kept_words);
  const int64_t row = blockIdx.x;
  SampleParams p = a.v.target;
  take_rng(p, a.rng);
  const RowRace r = kProcess ? row_race(p, row) : without_processing(row_race(p, row));
  const T* x = static_cast<const T*>(p.input) + row * p.row_stride;
  const int64_t vocab = p.vocab;
  PositionLaw out{{-kInf, 0u, mass_shift(vocab), kNoIndex, 0}, kNoIndex, false, 0.0f};

  if (r.greedy) {  // the argmax of the raw logits and its logprob, as syncfree.sample's greedy rows
    RowRace greedy = r;
    greedy.want_mass = true;
    RacePartial acc = empty_partial();
    float g[kGroup];
    for (int64_t q = threadIdx.x; q < ceil_div(vocab, kGroup); q += kThreads) {
      // 16-byte loads where aligned, but in the processing variants: there they would take the
      // kernel to 128 registers (ptxas's cap at 512 threads), from ~110.
      position_group(x, vocab, q, !kProcess && a.aligned, greedy, g);
      visit_group<false>(acc, g, int32_t(q * kGroup), greedy);
    }
    acc = block_merge<kThreads>(acc);
    if (threadIdx.x == 0) {
      const RowResult res = finish_row(acc, greedy, false);
      out.degenerate = !res.valid;
      out.point = int32_t(res.token);
      out.logprob = res.logprob;
      a.laws[row] = out;
    }
    return;
  }

  const KeptRow<T> kept{kept_words, a.kept_groups, a.aligned};  // Note [A node's row on chip]
  float top = -kInf;
  int infs = 0;
  if (threadIdx.x == 0) {
    sh.first_inf = kNoIndex;
    sh.inf_count = 0;
  }
  __syncthreads();
  const int64_t groups = ceil_div(vocab, kGroup);
  float vals[kGroup];
  for (int64_t g = threadIdx.x; g < groups; g += kThreads) {
    kept.first(x, vocab, g, r, vals);
#pragma unroll
    for (int k = 0; k < kGroup; ++k) {
      top = vals[k] > top ? vals[k] : top;
      if (vals[k] == kInf) {
        if (infs == 0) atomicMin(&sh.first_inf, int(g * kGroup + k));  // a thread's first is its lowest
        ++infs;
      }
    }
  }
  if (infs > 0) atomicAdd(&sh.inf_count, infs);
  out.law.m = block_max(top, sh.max_key);  // an order-key max: +0 for -0, as the CPU's (its barriers order the atomics)
  out.law.first_inf = sh.first_inf;
  out.law.infs = sh.inf_count;
  if (out.law.first_inf == kNoIndex && out.law.m != -kInf) {
    uint64_t local = 0u;
    for (int64_t g = threadIdx.x; g < groups; g += kThreads) {
      kept.again(x, vocab, g, r, vals);
#pragma unroll
      for (int k = 0; k < kGroup; ++k) local += fixed_mass(token_exp(vals[k], out.law.m), out.law.shift);
    }
    out.law.total = block_sum(local, sh.warp_sums);
  }
  out.point = out.law.first_inf;
  if (out.point == kNoIndex && out.law.total == 0u && may_overflow(r) && threadIdx.x < 32)
    out.point = raw_argmax_warp(x, vocab, r.proc).index;  // Note [Logits past the temperature's range]
  if (threadIdx.x != 0) return;
  out.degenerate = out.point == kNoIndex && out.law.total == 0u;
  a.laws[row] = out;
}

// The stop token's race over one node: value(i) is a race value, or (kProbs) a
// weight; the same groups, noise and resolve as syncfree.sample's. Every
// thread calls; the result is in warp 0 (other threads get an invalid one).
template <bool kProbs, typename Value>
__device__ __forceinline__ RowResult race_node(int64_t vocab, const RowRace& r, Value value) {
  RowRace plain = r;
  plain.want_mass = false;
  RacePartial acc = empty_partial();
  float g[kGroup];
  for (int64_t q = threadIdx.x; q < ceil_div(vocab, kGroup); q += kThreads) {
    const int n = group_size(vocab, q);
#pragma unroll  // a rolled loop would index g at run time: a stack array in local memory
    for (int k = 0; k < kGroup; ++k) g[k] = k < n ? value(q * kGroup + k) : masked_value(kProbs);
    visit_group<kProbs>(acc, g, int32_t(q * kGroup), plain);
  }
  acc = block_merge<kThreads>(acc);
  if (threadIdx.x >= 32) return RowResult{0, 0.0f, false, false};
  acc = broadcast_lane0(acc);
  RowResult res = finish_row(acc, plain, kProbs);
  if (res.needs_resolve) {  // the winning group's tokens, one per lane
    float y;
    res = resolved(res, race_group_values_warp<kProbs>(vocab, plain, res.token, value, &y).index);
  }
  return res;
}

enum WalkAction : int { kTry, kTotal, kStop, kDone };

// The finish kernel's walk (Note [Verifying a tree]), in shared memory: the
// tree read once, and the current node's state.
struct TreeWalk {
  int32_t parent[kMaxTreeNodes];          // node_parent
  int64_t token[kMaxTreeNodes];           // node_token
  float value[kMaxTreeNodes];             // the token's race value at its parent (-inf outside [0, V))
  float q[kMaxTreeNodes];                 // its draft probability; 1 without draft_probs
  double u[kMaxTreeNodes];                // its acceptance uniform: its parent's word for its sibling rank
  int32_t rejected[kMaxTreeNodes];        // the current node's rejected children, in order
  unsigned long long totals[kMaxTreeNodes];  // T_k of its residual (draft_probs); totals[0] = W
  unsigned long long warp_sums[kThreads / 32];
  unsigned long long rejected_mass;       // one-hot: the rejected tokens' mass
  int64_t node, accepted, child;          // the current node, the accepted count, the last child tried
  int tried, known;                       // children tried at the node (k), totals known
  int action;
  bool from_p;
};

__device__ __forceinline__ int64_t walk_next_child(const TreeWalk& w, int64_t nodes, int64_t after) {
  for (int64_t c = after + 1; c < nodes; ++c) {
    if (w.parent[c] == w.node) return c;
  }
  return -1;
}

// R_k(x) of the current node (draft_probs): R_0 = w_x, then one residual_mass per rejected child.
__device__ __forceinline__ uint64_t residual_at(const VerifyParams& v, int64_t b, const TreeWalk& w,
                                                const TargetMass& law, float y, int64_t x, int k) {
  uint64_t mass = target_fixed_mass(law, y);
  for (int j = 0; j < k; ++j) mass = residual_mass(mass, node_draft_law(v, b, w.rejected[j])[x], w.totals[j]);
  return mass;
}

// One token of the current node's stop, written by thread 0; ends the walk.
__device__ __forceinline__ void write_stop(const VerifyParams& v, int64_t b, TreeWalk& w, int64_t token, float logprob, bool valid) {
  const int64_t nodes = v.nodes, j = w.accepted;
  v.tokens[b * nodes + j] = token;
  if (v.logprobs != nullptr) v.logprobs[b * nodes + j] = logprob;
  for (int64_t k = j + 1; k < nodes; ++k) {
    v.tokens[b * nodes + k] = -1;
    if (v.path != nullptr) v.path[b * nodes + k] = -1;
    if (v.logprobs != nullptr) v.logprobs[b * nodes + k] = -kInf;
  }
  v.num_accepted[b] = j;
  if (v.valid != nullptr) v.valid[b] = valid;
  w.action = kDone;
}

// Thread 0's part of the walk: tries the current node's children in order until one is accepted
// (the walk moves to it: kTry), a residual total is missing (kTotal), or none is left (kStop, or
// the stop written when it needs no race). Its only global load is the node's law: the tree,
// the values and the uniforms are in shared memory, and a row's nodes share its temperature.
__device__ __forceinline__ void walk_step(const VerifyArgs& a, int64_t b, bool greedy, TreeWalk& w) {
  const VerifyParams& v = a.v;
  const int64_t nodes = v.nodes, row = b * nodes + w.node;
  const PositionLaw law = a.laws[row];
  if (law.degenerate) return write_stop(v, b, w, 0, -kInf, false);
  const bool point = law.point != kNoIndex;
  for (int64_t c = walk_next_child(w, nodes, w.child); c >= 0; c = walk_next_child(w, nodes, c)) {
    const int k = w.tried;
    const int64_t draft = w.token[c];
    // A token outside [0, V) has the value -inf (the parallel pass read nothing for it): p = 0,
    // as for a masked token, and no q row is read for it.
    const bool live = w.value[c] != -kInf;
    bool accepted = greedy && draft == law.point;
    if (!greedy) {
      const bool probs = v.draft_probs != nullptr;
      if (!point && probs && w.known <= k) {
        w.action = kTotal;  // T_k first
        return;
      }
      bool repeat = false;
      for (int j = 0; j < k; ++j) repeat = repeat || w.token[w.rejected[j]] == draft;
      double pd = 0.0;
      if (point) {
        pd = draft == law.point ? 1.0 : 0.0;
      } else if (live && probs) {
        const TargetMass residual{law.law.m, w.totals[k], law.law.shift, kNoIndex, 0};
        pd = mass_probability(residual, residual_at(v, b, w, law.law, w.value[c], draft, k));
      } else if (live && !repeat) {
        const TargetMass residual{law.law.m, law.law.total - w.rejected_mass, law.law.shift, kNoIndex, 0};
        pd = mass_probability(residual, target_fixed_mass(law.law, w.value[c]));
      }
      accepted = accepts(w.u[c], double(w.q[c]), pd);
      if (!accepted && !point && !probs && !repeat)
        w.rejected_mass += target_fixed_mass(law.law, w.value[c]);
    }
    if (accepted) {
      const int64_t j = w.accepted;
      v.tokens[b * nodes + j] = draft;
      if (v.logprobs != nullptr)
        v.logprobs[b * nodes + j] = greedy ? law.logprob : point ? point_logprob(law.law)
                                                                : target_logprob(law.law, w.value[c]);
      if (v.path != nullptr) v.path[b * nodes + j + 1] = c;
      w.accepted = j + 1;
      w.node = c;
      w.child = c;  // children come after their parent
      w.tried = 0;
      w.known = 1;
      w.rejected_mass = 0u;
      w.totals[0] = a.laws[b * nodes + c].law.total;
      w.action = kTry;
      return;
    }
    w.rejected[k] = int32_t(c);
    w.tried = k + 1;
    w.child = c;
  }
  if (greedy) return write_stop(v, b, w, law.point, law.logprob, true);
  if (point) return write_stop(v, b, w, law.point, point_logprob(law.law), true);
  w.action = kStop;
}

template <typename T, bool kProcess>
__global__ void __launch_bounds__(kThreads) syncfree_verify_finish_kernel(VerifyArgs a) {
  __shared__ TreeWalk w;
  const int64_t b = blockIdx.x;
  const VerifyParams& v = a.v;
  SampleParams p = v.target;
  take_rng(p, a.rng);
  const int64_t nodes = v.nodes, vocab = p.vocab;
  const auto input = [&](int64_t node) { return static_cast<const T*>(p.input) + (b * nodes + node) * p.row_stride; };
  const auto race_of = [&](int64_t node) {
    const RowRace r = row_race(p, b * nodes + node);
    return kProcess ? r : without_processing(r);
  };
  const bool greedy = race_of(0).greedy;  // one temperature per row
  // The tree, each token's value at its parent and its q: one parallel read.
  for (int64_t c = threadIdx.x; c < nodes; c += kThreads) {
    const int64_t parent = c == 0 ? -1 : node_parent(v, b, c);
    const int64_t draft = c == 0 ? -1 : node_token(v, b, c);
    const bool in_vocab = draft >= 0 && draft < vocab;
    const float* q_row = c == 0 ? nullptr : node_draft_law(v, b, c);
    w.parent[c] = int32_t(parent);
    w.token[c] = draft;
    w.value[c] = parent >= 0 && in_vocab ? position_value(input(parent), draft, race_of(parent)) : -kInf;
    w.q[c] = q_row == nullptr ? 1.0f : in_vocab ? clean_weight(q_row[draft]) : 0.0f;
  }
  __syncthreads();
  // Each node's acceptance uniform: the k-th child tried at a node is its k-th child in node order.
  for (int64_t c = 1 + threadIdx.x; c < nodes; c += kThreads) {
    const int32_t parent = w.parent[c];
    if (parent < 0) continue;
    uint64_t k = 0;
    for (int64_t s = parent + 1; s < c; ++s) k += w.parent[s] == parent ? 1u : 0u;
    w.u[c] = accept_uniform(row_race(p, b * nodes + parent).stream, k);
  }
  if (threadIdx.x == 0) {
    w.node = 0;
    w.accepted = 0;
    w.child = 0;
    w.tried = 0;
    w.known = 1;
    w.rejected_mass = 0u;
    w.totals[0] = a.laws[b * nodes].law.total;
    if (v.path != nullptr) v.path[b * nodes] = 0;
  }
  __syncthreads();
  for (;;) {
    if (threadIdx.x == 0) walk_step(a, b, greedy, w);
    __syncthreads();
    const int action = w.action;
    if (action == kDone || action == kStop) break;
    if (action == kTotal) {  // T_k = sum R_k over the node's tokens (Note [Verifying a tree])
      const int k = w.known;
      const TargetMass law = a.laws[b * nodes + w.node].law;
      const T* x = input(w.node);
      const RowRace r = race_of(w.node);
      uint64_t local = 0u;
      for (int64_t i = threadIdx.x; i < vocab; i += kThreads) local += residual_at(v, b, w, law, position_value(x, i, r), i, k);
      const uint64_t total = block_sum(local, w.warp_sums);
      if (threadIdx.x == 0) {
        w.totals[k] = total;
        w.known = k + 1;
      }
    }
    __syncthreads();
  }
  if (w.action == kDone) return;
  // The stop token: the bonus (p), or the residual (Note [Verifying a tree]).
  const int64_t node = w.node;
  const int k = w.tried;
  const TargetMass law = a.laws[b * nodes + node].law;
  const T* x = input(node);
  const RowRace r = race_of(node);
  const auto y = [&](int64_t i) { return position_value(x, i, r); };
  RowResult res{0, 0.0f, false, false};
  if (k > 0 && v.draft_probs != nullptr) {  // the probability race over max(0, r_{k-1} - q_k)
    const TargetMass residual{law.m, w.totals[k - 1], law.shift, kNoIndex, 0};
    const float* last_q = node_draft_law(v, b, w.rejected[k - 1]);
    res = race_node<true>(vocab, r, [&](int64_t i) {
      return residual_weight(mass_probability(residual, residual_at(v, b, w, law, y(i), i, k - 1)), last_q[i]);
    });
  } else if (k > 0) {  // p without the rejected tokens
    res = race_node<false>(vocab, r, [&](int64_t i) {
      bool rejected = false;
      for (int j = 0; j < k; ++j) rejected = rejected || w.token[w.rejected[j]] == i;
      return rejected ? -kInf : y(i);
    });
  }
  if (threadIdx.x == 0) w.from_p = !res.valid;  // the bonus, or a residual with no mass
  __syncthreads();
  if (w.from_p) res = race_node<false>(vocab, r, y);
  if (threadIdx.x == 0) write_stop(v, b, w, res.token, target_logprob(law, y(res.token)), true);
}

}  // namespace

void verify_cuda(const VerifyParams& v, c10::ScalarType dtype, c10::DeviceIndex device,
                 const std::optional<at::Generator>& generator, bool from_generator) {
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  VerifyArgs a{};
  a.v = v;
  a.rng.from_generator = from_generator;
  if (from_generator) a.rng.philox = draw_generator_cuda(generator, device, v.target.vocab);  // for all B (n + 1) rows
  const int64_t rows = v.target.rows, batch = rows / v.nodes;
  const c10::DataPtr tables = build_exceptions_cuda(a.v.target, device);  // Note [Processing in the pass]
  auto* allocator = c10::cuda::CUDACachingAllocator::get();
  c10::DataPtr keeps;
  if (v.target.warped) {
    keeps = allocator->allocate(size_t(rows) * sizeof(RowKeep));
    select_and_sample_cuda(a.v.target, dtype, device, static_cast<RowKeep*>(keeps.get()), false);
    a.v.target.keeps = static_cast<const RowKeep*>(keeps.get());
  }
  c10::DataPtr laws = allocator->allocate(size_t(rows) * sizeof(PositionLaw));
  a.laws = static_cast<PositionLaw*>(laws.get());
  const size_t elem = dtype == at::kFloat ? 4 : 2;
  // One greedy temperature for every row: the positions kernel makes one pass (Note [A node's row on chip]).
  const bool all_greedy = v.target.temperatures == nullptr && v.target.shard.temperatures == nullptr &&
                          is_greedy_temperature(v.target.temperature);
  a.aligned = reinterpret_cast<uintptr_t>(v.target.input) % 16 == 0 && (v.target.row_stride * elem) % 16 == 0;
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    const auto launch = [&](auto process) {
      constexpr bool kProcess = decltype(process)::value;
      constexpr auto positions = syncfree_verify_positions_kernel<T, kProcess>;
      const PositionsPlan plan = plan_positions(v.target.vocab, int64_t(sizeof(T)),
                                                all_greedy ? 0 : dynamic_shared_limit<positions>(device));
      a.kept_groups = plan.kept_groups;
      launch_kernel<positions>(dim3(unsigned(rows)), dim3(kThreads), size_t(plan.shared_bytes), stream, a);
      launch_kernel<syncfree_verify_finish_kernel<T, kProcess>>(dim3(unsigned(batch)), dim3(kThreads), 0, stream, a);
    };
    if (has_processing(a.v.target)) {
      launch(std::true_type{});
    } else {
      launch(std::false_type{});
    }
  };
  dispatch_dtype(dtype, run);
}

}  // namespace syncfree
