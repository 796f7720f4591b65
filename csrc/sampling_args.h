// The sampling parameters as the ops receive them, from one field list.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace syncfree {

using at::Tensor;

// Note [One field list]
// ---------------------
// SYNCFREE_SAMPLING_FIELDS is the one list of the sampling parameters (README
// "Parameters"), in the order the ops take them. ROW(name, type, identity,
// group) is a per-row parameter: a [B] tensor or a number (`type`: double or
// int64_t; `identity`: the value that changes nothing; `group`: warper or
// processing); LIST(name) a processing tensor or None. Every op takes them as two lists,
// `Tensor?[] params, float[] param_values`, one entry per field in this order
// (a LIST field's value is unused); SamplingArgs::from_lists fills the struct,
// and syncfree._C.sampling_fields() hands the list to Python, where
// syncfree.SamplingParams checks its own fields against it at import. Adding a
// parameter is one line here, its check in checks.cpp and its rule in csrc/core.
#define SYNCFREE_SAMPLING_FIELDS(ROW, LIST)          \
  ROW(temperature, double, 1.0, warper)              \
  ROW(top_k, int64_t, 0, warper)                     \
  ROW(top_p, double, 1.0, warper)                    \
  ROW(min_p, double, 0.0, warper)                    \
  ROW(typical_p, double, 1.0, warper)                \
  ROW(repetition_penalty, double, 1.0, processing)   \
  ROW(frequency_penalty, double, 0.0, processing)    \
  ROW(presence_penalty, double, 0.0, processing)     \
  LIST(output_tokens)                        \
  LIST(prompt_tokens)                        \
  LIST(bias_tokens)                          \
  LIST(bias_values)                          \
  LIST(allowed_mask)

// The schema of the two lists, and of the noise arguments.
#define SYNCFREE_PARAMS_SCHEMA "Tensor?[] params, float[] param_values"
#define SYNCFREE_RNG_SCHEMA "Tensor? seed, Tensor? offset, int? seed_value, int offset_value, Generator? generator"

struct SamplingArgs {
#define SYNCFREE_ROW_MEMBER(name, type, identity, group) \
  std::optional<Tensor> name;                            \
  type name##_value = identity;
#define SYNCFREE_LIST_MEMBER(name) std::optional<Tensor> name;
  SYNCFREE_SAMPLING_FIELDS(SYNCFREE_ROW_MEMBER, SYNCFREE_LIST_MEMBER)
#undef SYNCFREE_ROW_MEMBER
#undef SYNCFREE_LIST_MEMBER

  // The struct from an op's two lists; `op` names the op in the error for lists of the wrong length.
  static SamplingArgs from_lists(const c10::List<std::optional<Tensor>>& params, c10::ArrayRef<double> values,
                                 const char* op);

  // The tensors as an op's `params` list (the values stay the caller's param_values).
  c10::List<std::optional<Tensor>> tensors() const;
  // Some row may have an active top-k/top-p/min-p/typical-p.
  bool any_warper(int64_t vocab) const {
    return top_k.has_value() || top_p.has_value() || min_p.has_value() || typical_p.has_value() ||
           (top_k_value > 0 && top_k_value < vocab) || top_p_value < 1.0 || min_p_value > 0.0 ||
           typical_p_value < 1.0;
  }
  // Some argument may change a logit.
  bool any_processing() const {
    return output_tokens.has_value() || prompt_tokens.has_value() || bias_tokens.has_value() ||
           allowed_mask.has_value();
  }
  // The first penalty given (a tensor, or a value other than its identity), or nullptr.
  const char* first_penalty() const;
  // The first processing field given (a penalty, or a list), or nullptr.
  const char* first_processing_field() const;
};

// What a sampling call returns besides the tokens.
struct Wanted {
  bool logprobs = false, valid = false;
  int64_t top_logprobs = 0;
  bool raw_logprobs = false;
  bool rank = false;  // the chosen token's rank (Note [Top-n logprobs])
};

// The noise arguments: per-row seed/offset tensors, scalars, or a generator.
struct RngArgs {
  std::optional<Tensor> seed, offset;
  std::optional<int64_t> seed_value;
  int64_t offset_value = 0;
  std::optional<at::Generator> generator;

  bool seeded() const { return seed.has_value() || seed_value.has_value(); }
};

}  // namespace syncfree
