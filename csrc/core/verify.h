// Speculative decoding's verification (syncfree.verify_draft): the per-position
// rules shared by the CPU path and the CUDA kernels.
//
// Note [Verifying a draft]
// ------------------------
// Row b holds n drafted tokens x_0..x_{n-1} and n + 1 target positions.
// Position j is a sampling row of its own: row b (n + 1) + j of the target
// logits seen as [B (n + 1), V], with row b's temperature and warpers, and the
// noise syncfree.sample gives that row (SampleParams::positions: per-row
// tensors draw as seed[b], offset[b] + j; an int seed or the generator as
// row b (n + 1) + j of one call).
//   Processing: position j has a processing row of its own
//        (Processing::per_position): row b's penalties, prompt, bias and mask
//        (or its own mask), and row b's history followed by x_0..x_{j-1}, what
//        a sequential decode would have emitted; the passes read the processed
//        values as syncfree.sample's do (Note [Processing in the pass]).
//   p_j: the warped target law. Over the kept tokens, w_i = fixed_mass(e^(y_i
//        - m)) with m the largest kept y, and p_j(i) = w_i / W, W = sum w_i:
//        exact integers, so the CPU and the CUDA kernels take the same
//        decisions. A +inf logit makes p_j a point mass on the first +inf
//        token (the token syncfree.sample picks).
//   Accept x_j iff u_j q_j(x_j) < p_j(x_j), in double, with u_j uniform in
//        [0, 1) from the position's acceptance word (accept_uniform): with
//        probability min(1, p / q). q = 0 accepts any token the target
//        keeps; p = 0 never accepts. draft_probs None: q_j is one-hot at x_j.
//   At the first rejection the row emits a token from normalize(max(0, p_j -
//        q_j)) and stops: the probability race of syncfree.sample_probs over
//        those weights (residual_weight); with q one-hot that law is p_j
//        without x_j, and the token is syncfree.sample's race over the row
//        with x_j masked. If the residual has no mass (p_j = q_j up to
//        rounding) the token comes from p_j.
//   All n accepted: a bonus token from p_n, syncfree.sample's race.
//   Greedy rows (temperature 0): accept iff x_j is the argmax of the (processed) raw
//        logits (lowest index on ties); the stop token is that argmax.
//   A position with no unmasked logit: the row stops there with token 0,
//        logprob -inf, valid false.
// Logprobs are log p_j of the emitted tokens, from the same integers (greedy
// rows: log_softmax of the raw logits, as syncfree.sample gives them). A point
// mass reports what syncfree.sample reports for the same row: -log(count) for
// a row of count +inf logits (the softmax limit, where they share the mass
// evenly, although the first one is always the token), 0 for the overflow
// argmax (Note [Logits past the temperature's range]).
#pragma once

#include "params.h"

namespace syncfree {

// Note [Verifying a tree]
// -----------------------
// syncfree.verify_tree: row b holds N nodes; node 0 is the root (the last
// accepted token), node i > 0 has parent parents[b, i] in [0, i) and token
// draft_ids[b, i]; a node whose parent is outside [0, i) (-1: padding) is
// never reached. Node i is a sampling row of its own, as a chain's position
// (row b N + i, noise as offset[b] + i), and p_i, its warped law, is the law
// of the token after the path root..i (its processing sees the row's history
// followed by the tokens of the path's nodes after the root). The walk starts
// at the root; at node i the children c_1 < c_2 < ... (node order: the
// drafter's ranking) are tried in turn with the k-th one's acceptance word
// (k = 0, 1, ...: lane 0 of block kAcceptDomain + pos0 / 4 + k of node i's
// stream, k = 0 being the chain's word):
//   draft_probs None (the children are proposals, q one-hot): accept c_k with
//        probability r_{k-1}(x) where r_0 = p_i and r_k is r_{k-1} without
//        x_k, renormalised: u (W - sum of the rejected tokens' w) < w_x, in
//        integers up to the last product (a token already rejected has
//        r(x) = 0).
//   draft_probs (c_k's token drawn from q_k = draft_probs[b, c_k], the
//        children independent given the node): SpecInfer's multi-round rule,
//        accept iff u q_k(x) < r_{k-1}(x), r_k = normalize(max(0, r_{k-1} -
//        q_k)); as integers: R_0 = w, R_k(x) = R_{k-1}(x) - min(R_{k-1}(x),
//        trunc(q_k(x) T_{k-1})), T_k = sum R_k (residual_mass).
//   An accepted child becomes the node; when every child is rejected the row
//        stops with a token from the residual: syncfree.sample's race over p_i
//        with the rejected tokens masked (one-hot), or the probability race
//        over residual_weight(R_{k-1} / T_{k-1}, q_k); a residual with no mass
//        falls back to p_i. A leaf (no child) emits the bonus token from p_i.
//   Greedy nodes accept the first child whose token is the argmax; point
//        masses the first child whose token is the point; degenerate nodes
//        stop as a chain's positions do.
// Why the law is the target's: at node i the token emitted next is x with
// probability p_i(x). One-hot: child k is reached with probability
// prod_{j<k} (1 - r_{j-1}(x_j)) = 1 - sum_{j<k} p_i(x_j) over distinct
// tokens (induction: r_{k-1} = p_i / (1 - sum_{j<k} p_i(x_j)) off the rejected
// tokens), so c_k's token is emitted with probability p_i(x_k) (0 for a
// repeat), and the residual gives every other x probability p_i(x). With
// draft_probs this is SpecInfer's theorem (Miao et al. 2024, Thm. 4.2): each
// round leaves the emitted token's law at r_{k-1} whatever q_k is, so by
// induction at p_i. After an accepted child the walk repeats at the child,
// whose law is the target's given the emitted prefix: the emitted sequence
// follows the target's sequential law, the bonus token included. A chain
// (parents[b, i] = i - 1) is verify_draft: one child per node, k = 0, so
// verify_draft runs this walk with node i + 1 holding draft x_i.

// At most this many nodes per tree (the CUDA walk keeps a node's children in
// shared memory).
constexpr int64_t kMaxTreeNodes = 512;

// One verify_draft or verify_tree call (raw pointers, no torch types).
struct VerifyParams {
  // The nodes as sampling rows: rows = B N, positions = N, the temperature,
  // warpers and noise of row b for each of its nodes.
  SampleParams target;
  int64_t nodes;              // N (a chain: n + 1)
  const int64_t* parents;     // [B, N], row stride parents_stride; null: a chain
  int64_t parents_stride;
  const int64_t* draft_ids;   // tree: [B, N] (node i's token); chain: [B, n] (node i's at i - 1)
  int64_t draft_ids_stride;
  const float* draft_probs;   // rows of stride draft_probs_stride (node i's law, indexed as draft_ids), or null
  int64_t draft_probs_stride;
  int64_t* tokens;            // [B, N] contiguous: the accepted tokens, the stop token, then -1
  int64_t* path;              // [B, N] or null: the root, the accepted nodes, then -1
  int64_t* num_accepted;      // [B]
  float* logprobs;            // [B, N] or null: -inf past the stop token
  bool* valid;                // [B] or null
};

// Node i's parent (Note [Verifying a tree]); -1 when it cannot be reached.
SF_HD int64_t node_parent(const VerifyParams& v, int64_t b, int64_t i) {
  if (v.parents == nullptr) return i - 1;
  const int64_t parent = v.parents[b * v.parents_stride + i];
  return parent >= 0 && parent < i ? parent : -1;
}

// Node i's token and the row of its draft law (i >= 1).
SF_HD int64_t node_token(const VerifyParams& v, int64_t b, int64_t i) {
  return v.draft_ids[b * v.draft_ids_stride + (v.parents != nullptr ? i : i - 1)];
}
SF_HD const float* node_draft_law(const VerifyParams& v, int64_t b, int64_t i) {
  if (v.draft_probs == nullptr) return nullptr;
  const int64_t law_row = v.parents != nullptr ? b * v.nodes + i : b * (v.nodes - 1) + i - 1;
  return v.draft_probs + law_row * v.draft_probs_stride;
}

// The first child of `node` after node `after` (node order), or -1.
SF_HD int64_t next_child(const VerifyParams& v, int64_t b, int64_t node, int64_t after) {
  if (v.parents == nullptr) return after < node + 1 && node + 1 < v.nodes ? node + 1 : -1;
  for (int64_t c = after + 1; c < v.nodes; ++c) {
    if (node_parent(v, b, c) == node) return c;
  }
  return -1;
}

// The acceptance words: lane 0 of block kAcceptDomain + pos0 / 4 of a
// position's stream, above the token and group words (Note [syncfree RNG
// counter layout]).
constexpr uint64_t kAcceptDomain = uint64_t(3) << 61;

SF_HD double accept_uniform(const RowStream& s, uint64_t k) {  // the k-th child tried
  const uint32_t word = stream_block(s, kAcceptDomain + (s.pos0 >> 2) + k).w0;
  return double(word) * 0x1p-32;  // exact: [0, 1) in steps of 2^-32
}

// The warped target law at one position, as integers (See the note).
struct TargetMass {
  float m;         // the largest kept scaled logit (+inf: a point mass)
  uint64_t total;  // W; 0: no kept token (degenerate)
  int shift;       // fixed_mass's scale
  int32_t first_inf;  // the first +inf token, or kNoIndex
  int32_t infs;       // how many +inf tokens
};

// log p_j reported for a point mass's token (See the note).
SF_HD float point_logprob(const TargetMass& t) { return t.infs > 0 ? -log_positive(float(t.infs)) : 0.0f; }

// p_j(i) from token i's fixed-point mass: w_i * (1 / W), one rounding of
// the reciprocal and one of the product, the same on both paths.
SF_HD double mass_probability(const TargetMass& t, uint64_t mass) {
  return t.total == 0u ? 0.0 : double(mass) * (1.0 / double(t.total));
}

SF_HD uint64_t target_fixed_mass(const TargetMass& t, float y) { return fixed_mass(token_exp(y, t.m), t.shift); }

SF_HD double target_probability(const TargetMass& t, float y) {
  if (t.first_inf != kNoIndex) return 0.0;  // the caller compares indices
  return mass_probability(t, target_fixed_mass(t, y));
}

// log p_j(i) of a kept token with scaled logit y.
SF_HD float target_logprob(const TargetMass& t, float y) {
  if (t.first_inf != kNoIndex) return point_logprob(t);
  const float sum = float(t.total) * bits_float(uint32_t(127 - t.shift) << 23);  // W / 2^shift
  return chosen_logprob(y, {t.m, sum});
}

// Whether x is accepted: u q < p, with q the draft's probability of x.
SF_HD bool accepts(double u, double q, double p) { return u * q < p; }

// R_k(x) from R_{k-1}(x), the rejected child's q_k(x) and T_{k-1} (Note
// [Verifying a tree]): one product and one truncation, the same on both paths.
SF_HD uint64_t residual_mass(uint64_t r, float q, uint64_t total) {
  const double taken = double(clean_weight(q)) * double(total);
  return taken >= double(r) ? 0u : r - uint64_t(int64_t(taken));  // taken < r <= 2^62
}

// The residual weight max(0, p_i - q_i) of a kept token, in float.
SF_HD float residual_weight(double p, float q) {
  const float d = float(p) - clean_weight(q);
  return d > 0.0f ? d : 0.0f;
}

}  // namespace syncfree
