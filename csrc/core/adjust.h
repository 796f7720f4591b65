// Logit processing inside the sampling passes: the allowed mask, the logit
// bias and the repetition/frequency/presence penalties. Shared by the CPU path
// and the CUDA kernels.
//
// Note [Processing in the pass]
// -----------------------------
// Order (README "Processing"): allowed mask -> logit bias -> repetition
// penalty -> frequency/presence penalties -> temperature -> warpers -> race.
// Every path reads a logit through process_group / process_logit before
// race_value, so the race keys, the selection keys (histograms, candidates,
// the warper chain) and the logprobs all see the one processed value, and CPU
// and CUDA stay bit-identical: the adjustment is a fixed sequence of IEEE
// operations (no contraction, fma_f where fused) on per-token facts that do
// not depend on any reduction order.
//   - The mask is read alongside the logits, one 32-bit word per 32 tokens: a
//     cleared bit makes the token -inf before anything else.
//   - History and bias tokens are few (T + P + K << V): they are sparse
//     exceptions. Before the passes, each row's exceptions go into a small
//     open-addressing table (token -> output count, in-prompt flag, last
//     bias slot) and a bitmap with one bit per group of kExceptionSpan tokens
//     (V / 512 words a row). The hot loop tests one bit per group; only a
//     flagged group looks its tokens up in the table and adjusts them in
//     registers. Counts are integers and "last bias slot" is a max, so the
//     table's content does not depend on the insertion order (the CUDA
//     kernel inserts with atomics, the CPU in order).
//   - Per token t with raw logit x: bias: x + bias[t] (a duplicate bias id:
//     its last slot wins); repetition r: if t occurs in the prompt or the
//     output, x > 0 ? x / r : x * r; then x - fma(frequency, count, presence)
//     if count > 0 (count over the output only). Ids outside [0, V) and -1
//     padding enter no table.
// (Top-n logprobs: Note [Top-n logprobs] in logprobs.h.)
#pragma once

#include "fmath.h"

namespace syncfree {

// Tokens per bit of the exception-group bitmap (the race's kGroup: one bit per group).
constexpr int kExceptionSpan = 16;

// One token of a row's exception table; all zero when the slot is empty.
struct ExceptionSlot {
  uint32_t key;      // token id + 1
  uint32_t count;    // occurrences in the output tokens
  uint32_t bias;     // last bias slot + 1 holding the token, 0: none
  uint32_t prompt;   // 1 if the token occurs in the prompt
};

// Table capacity for n history and bias entries: a power of two >= 2n, so
// probes stay short and the table never fills.
SF_HD int exception_table_bits(int64_t entries) {
  int bits = 1;
  while ((int64_t(1) << bits) < 2 * entries) ++bits;
  return bits;
}

SF_HD uint32_t exception_home(uint32_t key, int bits) { return (key * 0x9E3779B1u) >> (32 - bits); }

// The per-call processing arguments (raw pointers, contiguous, one row per
// parameter row); null pointers and identity scalars cost nothing.
struct Processing {
  const int32_t* allowed;  // [rows, mask_words] or null
  int64_t mask_words;      // ceil(V / 32)
  const float* repetitions;  // [rows] or null: then `repetition`
  float repetition;
  const float* frequencies;
  float frequency;
  const float* presences;
  float presence;
  const int64_t* output_tokens;  // [rows, output_len], -1 padded
  int64_t output_len;
  const int64_t* prompt_tokens;  // [rows, prompt_len]
  int64_t prompt_len;
  const int64_t* bias_tokens;    // [rows, bias_len]
  const float* bias_values;      // [rows, bias_len]
  int64_t bias_len;
  // One processing row per row (verify_draft: each position sees its own history) instead of
  // one per parameter row (SampleParams::positions; process_row in params.h).
  bool per_position;
  // Built before the passes when there are exceptions (tables non-null).
  ExceptionSlot* tables;  // [rows, 1 << table_bits]
  int table_bits;
  uint32_t* group_bits;  // [rows, group_words]: groups holding an exception
  int64_t group_words;   // ceil(ceil(V / kExceptionSpan) / 32)
};

SF_HD bool has_exceptions(const Processing& q) {
  return q.output_tokens != nullptr || q.prompt_tokens != nullptr || q.bias_tokens != nullptr;
}

// The processing of one row as the loaders apply it.
struct RowProcess {
  const int32_t* allowed;      // the row's mask words or null
  const uint32_t* groups;      // the row's exception-group bits or null
  const ExceptionSlot* table;
  const float* bias_values;    // the row's
  int table_bits;
  float repetition, frequency, presence;
};

SF_HD RowProcess no_process() { return {nullptr, nullptr, nullptr, nullptr, 0, 1.0f, 0.0f, 0.0f}; }

// Per-row values clamped as README "Processing" says: a repetition penalty
// that is NaN or <= 0 is off (1); a NaN frequency or presence penalty is off (0).
SF_HD RowProcess row_process(const Processing& q, int64_t pr) {
  RowProcess r = no_process();
  if (q.allowed != nullptr) r.allowed = q.allowed + pr * q.mask_words;
  if (q.tables == nullptr) return r;
  r.groups = q.group_bits + pr * q.group_words;
  r.table = q.tables + (pr << q.table_bits);
  r.table_bits = q.table_bits;
  r.bias_values = q.bias_values != nullptr ? q.bias_values + pr * q.bias_len : nullptr;
  const float rep = q.repetitions != nullptr ? q.repetitions[pr] : q.repetition;
  const float freq = q.frequencies != nullptr ? q.frequencies[pr] : q.frequency;
  const float pres = q.presences != nullptr ? q.presences[pr] : q.presence;
  r.repetition = rep > 0.0f ? rep : 1.0f;
  r.frequency = freq == freq ? freq : 0.0f;
  r.presence = pres == pres ? pres : 0.0f;
  return r;
}

// The slot of token i, or null.
SF_HD const ExceptionSlot* find_exception(const RowProcess& r, int64_t i) {
  const uint32_t key = uint32_t(i) + 1u;
  const uint32_t mask = (1u << r.table_bits) - 1u;
  for (uint32_t s = exception_home(key, r.table_bits);; s = (s + 1u) & mask) {
    const ExceptionSlot* slot = r.table + s;
    if (slot->key == key) return slot;
    if (slot->key == 0u) return nullptr;
  }
}

// Bias, repetition, frequency and presence for an exception token (Note
// [Processing in the pass]).
SF_HD float adjust_exception(float x, const ExceptionSlot& e, const RowProcess& r) {
  if (e.bias != 0u) x = x + r.bias_values[e.bias - 1u];
  if (e.count != 0u || e.prompt != 0u) x = x > 0.0f ? x / r.repetition : x * r.repetition;
  if (e.count != 0u) x = x - fma_f(r.frequency, float(e.count), r.presence);
  return x;
}

SF_HD bool group_has_exception(const RowProcess& r, int64_t g) {
  return r.groups != nullptr && ((r.groups[g >> 5] >> (g & 31)) & 1u) != 0u;
}

SF_HD bool allowed_token(const RowProcess& r, int64_t i) {
  return r.allowed == nullptr || ((uint32_t(r.allowed[i >> 5]) >> (i & 31)) & 1u) != 0u;
}

// Raw logit x of token i, processed.
SF_HD float process_logit(float x, int64_t i, const RowProcess& r) {
  if (!allowed_token(r, i)) return -kInf;
  if (group_has_exception(r, i / kExceptionSpan)) {
    const ExceptionSlot* e = find_exception(r, i);
    if (e != nullptr) x = adjust_exception(x, *e, r);
  }
  return x;
}

// The kExceptionSpan raw logits of span g, processed in place (one mask word, one bit).
SF_HD void process_group(float (&v)[kExceptionSpan], int64_t g, const RowProcess& r) {
  if (r.allowed != nullptr) {
    const uint32_t bits = uint32_t(r.allowed[g >> 1]) >> ((g & 1) * kExceptionSpan);
    SF_SIMD
    for (int k = 0; k < kExceptionSpan; ++k) v[k] = (bits & (1u << k)) != 0u ? v[k] : -kInf;  // constant masks: one compare a lane
  }
  if (group_has_exception(r, g)) {
    for (int k = 0; k < kExceptionSpan; ++k) {
      if (v[k] == -kInf) continue;  // masked: nothing brings it back
      const ExceptionSlot* e = find_exception(r, g * kExceptionSpan + k);
      if (e != nullptr) v[k] = adjust_exception(v[k], *e, r);
    }
  }
}

SF_HD bool processes(const RowProcess& r) { return r.allowed != nullptr || r.groups != nullptr; }

// The slot of key (token id + 1) in a table, claimed if absent: cas(&word,
// key) stores key into an empty (0) word and returns the word's old value
// (the CPU's plain store, the CUDA kernel's atomicCAS).
template <typename Cas>
SF_HD ExceptionSlot* claim_exception(ExceptionSlot* table, int bits, uint32_t key, Cas cas) {
  const uint32_t mask = (1u << bits) - 1u;
  for (uint32_t s = exception_home(key, bits);; s = (s + 1u) & mask) {
    const uint32_t old = cas(&table[s].key, key);
    if (old == 0u || old == key) return table + s;
  }
}

// Entry j of a row's history and bias lists, in one numbering: the output
// tokens, then the prompt tokens, then the bias tokens.
enum ExceptionKind : int { kOutputToken, kPromptToken, kBiasToken };

struct ExceptionEntry {
  int64_t id;
  ExceptionKind kind;
  uint32_t slot;  // the bias slot (kBiasToken)
};

SF_HD int64_t exception_entries(const Processing& q) { return q.output_len + q.prompt_len + q.bias_len; }

SF_HD ExceptionEntry exception_entry(const Processing& q, int64_t pr, int64_t j) {
  if (j < q.output_len) return {q.output_tokens[pr * q.output_len + j], kOutputToken, 0u};
  j -= q.output_len;
  if (j < q.prompt_len) return {q.prompt_tokens[pr * q.prompt_len + j], kPromptToken, 0u};
  j -= q.prompt_len;
  return {q.bias_tokens[pr * q.bias_len + j], kBiasToken, uint32_t(j)};
}

// Enters entry e into its claimed slot: ops.add(&word, v) and ops.max(&word,
// v) are plain on the CPU and atomic on CUDA; counts add and the last bias
// slot is a max, so the result is the same in any order.
template <typename Ops>
SF_HD void record_exception(ExceptionSlot* s, const ExceptionEntry& e, Ops ops) {
  if (e.kind == kOutputToken) {
    ops.add(&s->count, 1u);
  } else if (e.kind == kPromptToken) {
    ops.max(&s->prompt, 1u);
  } else {
    ops.max(&s->bias, e.slot + 1u);
  }
}

// The word and bit of token id's group in a row's exception-group bitmap.
SF_HD int64_t exception_word(int64_t id) { return (id / kExceptionSpan) >> 5; }
SF_HD uint32_t exception_bit(int64_t id) { return 1u << ((id / kExceptionSpan) & 31); }

}  // namespace syncfree
