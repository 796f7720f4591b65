// Input checks of the ops (ops.cpp, shard_ops.cpp), the one copy of each: each raises a ValueError/TypeError that
// names the argument and says what was expected, before any kernel runs.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <optional>
#include <vector>

namespace syncfree {

using at::Tensor;

// Rows of a [V] or [B, V] input: 1 or B.
int64_t row_count(const Tensor& input);

// logits or probs: dtype, device, dims, V, last-dim stride. A shard
// (syncfree.distributed) may hold no column: the layout check says so on
// every rank.
void check_input(const Tensor& input, const char* name, bool shard = false);

// Whether two tensors may share memory (for out=).
bool may_overlap(const Tensor& a, const Tensor& b);

// A per-row parameter tensor: one value per row, on the input's device;
// int64 when integral, floating-point otherwise, any dtype with any_dtype.
void check_row_tensor(const Tensor& t, const char* name, const Tensor& input, bool integral,
                      bool any_dtype = false);

void check_generator_device(const at::Generator& generator, const Tensor& input, const char* name);

// The temperature and warper arguments as the ops receive them: for each,
// a per-row tensor or a scalar.
struct WarperArgs {
  std::optional<Tensor> temperature;
  double temperature_value;
  std::optional<Tensor> top_k;
  int64_t top_k_value;
  std::optional<Tensor> top_p;
  double top_p_value;
  std::optional<Tensor> min_p;
  double min_p_value;
  std::optional<Tensor> typical_p;
  double typical_p_value;

  // Some row may have an active top-k/top-p/min-p/typical-p.
  bool any(int64_t vocab) const {
    return top_k.has_value() || top_p.has_value() || min_p.has_value() || typical_p.has_value() ||
           (top_k_value > 0 && top_k_value < vocab) || top_p_value < 1.0 || min_p_value > 0.0 ||
           typical_p_value < 1.0;
  }
};

// Scalar ranges and per-row tensors of the temperature and the warpers.
void check_warpers(const WarperArgs& w, const Tensor& input);

// The processing arguments of syncfree.sample and syncfree.warp (README
// "Processing"): penalties as per-row tensors or scalars, the sparse history
// and bias, the allowed mask, and the logprob stage's options.
struct ProcessArgs {
  std::optional<Tensor> repetition_penalty;
  double repetition_penalty_value = 1.0;
  std::optional<Tensor> frequency_penalty;
  double frequency_penalty_value = 0.0;
  std::optional<Tensor> presence_penalty;
  double presence_penalty_value = 0.0;
  std::optional<Tensor> output_tokens, prompt_tokens, bias_tokens, bias_values, allowed_mask;
  int64_t top_logprobs = 0;
  bool raw_logprobs = false;

  // Some argument may change a logit.
  bool any() const {
    return output_tokens.has_value() || prompt_tokens.has_value() || bias_tokens.has_value() ||
           allowed_mask.has_value();
  }
};

// Every processing argument (probs: sample_probs, which takes none). On the
// CPU also the ids' values: in [-1, V) (-1 pads); CUDA ignores ids outside
// [0, V), which it cannot check without a sync.
void check_processing(const ProcessArgs& a, const Tensor& input, bool probs);

// seed / offset / generator as the sampling ops take them (name: the input's).
void check_rng(const std::optional<Tensor>& seed, const std::optional<Tensor>& offset,
               std::optional<int64_t> seed_value, int64_t offset_value, const std::optional<at::Generator>& generator,
               const Tensor& input, const char* name);

// out= of a sampling op: int64, shaped like the batch, overlapping nothing it reads.
void check_out(const Tensor& out, const Tensor& input, const std::vector<int64_t>& batch_shape,
               const std::initializer_list<std::optional<Tensor>>& inputs);

// syncfree.verify_draft's tensors: target_logits [B, n + 1, V] (n >= 1; each
// position as check_input checks a sampling input), draft_ids [B, n] int64,
// draft_probs [B, n, V] float32 or None; on the CPU also the draft ids' values
// (in [0, V); on CUDA that would need a sync: README "Speculative decoding").
void check_verify(const Tensor& target_logits, const Tensor& draft_ids, const std::optional<Tensor>& draft_probs);

}  // namespace syncfree
