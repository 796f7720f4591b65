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

// One verify_draft call (raw pointers, no torch types).
struct VerifyParams {
  // The target positions as sampling rows: rows = B (n + 1), positions = n + 1,
  // the temperature, warpers and noise of row b for each of its positions.
  SampleParams target;
  int64_t n;                  // drafted tokens per row
  const int64_t* draft_ids;   // [B, n], row stride draft_ids_stride
  int64_t draft_ids_stride;
  const float* draft_probs;   // [B, n, V] rows of stride draft_probs_stride, or null (one-hot)
  int64_t draft_probs_stride;
  int64_t* tokens;            // [B, n + 1] contiguous: accepted, the stop token, then -1
  int64_t* num_accepted;      // [B]
  float* logprobs;            // [B, n + 1] or null: -inf past the stop token
  bool* valid;                // [B] or null
};

// The acceptance words: lane 0 of block kAcceptDomain + pos0 / 4 of a
// position's stream, above the token and group words (Note [syncfree RNG
// counter layout]).
constexpr uint64_t kAcceptDomain = uint64_t(3) << 61;

SF_HD double accept_uniform(const RowStream& s) {
  const uint32_t word = stream_block(s, kAcceptDomain + (s.pos0 >> 2)).w0;
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

// The residual weight max(0, p_i - q_i) of a kept token, in float.
SF_HD float residual_weight(double p, float q) {
  const float d = float(p) - clean_weight(q);
  return d > 0.0f ? d : 0.0f;
}

}  // namespace syncfree
