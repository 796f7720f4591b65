// syncfree.verify_draft (verify_draft, verify_draft_into): speculative
// decoding's verification of a draft against the target's logits (Note
// [Verifying a draft] in core/verify.h). Every check (checks.h) runs first.
#include <ATen/core/enum_tag.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/lt.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/where.h>
#include <torch/library.h>

#include <vector>

#include "ops.h"

namespace syncfree {
namespace {

struct VerifyOutputs {
  Tensor tokens, num_accepted, logprobs, valid;
};

// The processing of each position (Note [Verifying a draft]): position j of row b takes row b's
// penalties, prompt, bias and mask (or its own mask, from a [B, n + 1, W] one) and, with a
// penalty, row b's output history followed by draft_ids[b, :j], what a sequential decode would
// have emitted. Device-side copies of the small lists, no sync; the logits are never copied.
SamplingArgs per_position(const SamplingArgs& a, const Tensor& draft_ids, int64_t positions) {
  const auto each = [&](const std::optional<Tensor>& t) -> std::optional<Tensor> {
    if (!t.has_value()) return t;
    std::vector<int64_t> sizes = t->sizes().vec();  // [B, ...] -> [B (n + 1), ...], an expand and one copy
    sizes.insert(sizes.begin() + 1, positions);
    const Tensor each_position = t->unsqueeze(1).expand(sizes);
    sizes[0] *= positions;
    sizes.erase(sizes.begin() + 1);
    return each_position.reshape(sizes);
  };
  SamplingArgs pos = a;
  pos.repetition_penalty = each(a.repetition_penalty);
  pos.frequency_penalty = each(a.frequency_penalty);
  pos.presence_penalty = each(a.presence_penalty);
  pos.prompt_tokens = each(a.prompt_tokens);
  pos.bias_tokens = each(a.bias_tokens);
  pos.bias_values = each(a.bias_values);
  if (a.allowed_mask.has_value())
    pos.allowed_mask = a.allowed_mask->dim() == 3 ? a.allowed_mask->reshape({-1, a.allowed_mask->size(2)})
                                                  : *each(a.allowed_mask);
  pos.output_tokens = std::nullopt;  // only the penalties read the history
  if (a.first_penalty() != nullptr) {
    const int64_t rows = draft_ids.size(0), n = positions - 1;
    const auto options = draft_ids.options();
    const Tensor before = at::lt(at::arange(n, options).unsqueeze(0), at::arange(positions, options).unsqueeze(1));
    const Tensor drafts = at::where(before, draft_ids.unsqueeze(1), at::scalar_tensor(-1, options));  // [B, n + 1, n]
    Tensor history = drafts.reshape({rows * positions, n});
    if (a.output_tokens.has_value()) history = at::cat({*each(a.output_tokens), history}, 1);
    pos.output_tokens = history;
  }
  return pos;
}

template <Backend B>
VerifyOutputs run_verify(const std::optional<Tensor>& out, const Tensor& target, const Tensor& draft_ids,
                         const std::optional<Tensor>& draft_probs, const SamplingArgs& w, const RngArgs& rng,
                         bool return_logprobs, bool return_valid) {
  check_verify(target, draft_ids, draft_probs);
  const int64_t rows = target.size(0), positions = target.size(1), vocab = target.size(2);
  const Tensor first = target.select(1, 0);  // [B, V]: the per-row arguments' shape
  check_warpers(w, first);
  check_verify_processing(w, target);
  check_rng(rng, first, "target_logits");
  if (out.has_value()) check_out(*out, first, {rows, positions}, read_by(w, rng, {target, draft_ids, draft_probs}));

  const auto options = target.options();
  VerifyOutputs o;
  // Written in place only when contiguous; else through a fresh tensor, copied on the device.
  const bool direct = out.has_value() && out->is_contiguous();
  o.tokens = direct ? *out : at::empty({rows, positions}, options.dtype(at::kLong));
  o.num_accepted = at::empty({rows}, options.dtype(at::kLong));
  o.logprobs = at::empty(return_logprobs ? std::vector<int64_t>{rows, positions} : std::vector<int64_t>{0},
                         options.dtype(at::kFloat));
  o.valid = at::empty({return_valid ? rows : 0}, options.dtype(at::kBool));
  if (B == Backend::kMeta || rows == 0) return o;

  const Tensor flat = target.reshape({rows * positions, vocab});  // a view unless the strides forbid it
  const Tensor ids = draft_ids.contiguous();
  const Tensor q = draft_probs.has_value() ? draft_probs->reshape({rows * (positions - 1), vocab}) : Tensor();
  SampleParams p{};
  p.input = flat.data_ptr();
  p.row_stride = flat.stride(0);
  p.rows = rows * positions;
  p.vocab = vocab;
  p.positions = positions;
  RowTensors row_tensors;
  set_warpers(p, row_tensors, w, rows);
  set_rng(p, row_tensors, rng, rows);
  set_processing(p, row_tensors, per_position(w, ids, positions), rows * positions);
  p.proc.per_position = true;
  VerifyParams v{};
  v.target = p;
  v.n = positions - 1;
  v.draft_ids = ids.data_ptr<int64_t>();
  v.draft_ids_stride = ids.stride(0);
  v.draft_probs = q.defined() ? q.data_ptr<float>() : nullptr;
  v.draft_probs_stride = q.defined() ? q.stride(0) : 0;
  v.tokens = o.tokens.data_ptr<int64_t>();
  v.num_accepted = o.num_accepted.data_ptr<int64_t>();
  v.logprobs = return_logprobs ? o.logprobs.data_ptr<float>() : nullptr;
  v.valid = return_valid ? o.valid.data_ptr<bool>() : nullptr;

  const bool drawn = from_generator(w, rng);
  if constexpr (B == Backend::kCpu) {
    verify_cpu(v, target.scalar_type(), rng.generator, drawn);
  } else {
    SYNCFREE_ON_CUDA(target, verify_cuda(v, target.scalar_type(), cuda_index(target), rng.generator, drawn));
  }
  if (out.has_value() && !direct) out->copy_(o.tokens);
  return o;
}

template <Backend B>
std::tuple<Tensor, Tensor, Tensor, Tensor> verify_op(const Tensor& target, const Tensor& draft_ids,
                                                     const std::optional<Tensor>& draft_probs, SYNCFREE_PARAMS_ARGS,
                                                     SYNCFREE_RNG_ARGS, bool return_logprobs, bool return_valid) {
  VerifyOutputs o = run_verify<B>(std::nullopt, target, draft_ids, draft_probs,
                                  SamplingArgs::from_lists(params, param_values, "verify_draft"), SYNCFREE_RNG_STRUCT,
                                  return_logprobs, return_valid);
  return {o.tokens, o.num_accepted, o.logprobs, o.valid};
}

template <Backend B>
std::tuple<Tensor, Tensor, Tensor> verify_into_op(Tensor& out, const Tensor& target, const Tensor& draft_ids,
                                                  const std::optional<Tensor>& draft_probs, SYNCFREE_PARAMS_ARGS,
                                                  SYNCFREE_RNG_ARGS, bool return_logprobs, bool return_valid) {
  VerifyOutputs o = run_verify<B>(out, target, draft_ids, draft_probs,
                                  SamplingArgs::from_lists(params, param_values, "verify_draft"), SYNCFREE_RNG_STRUCT,
                                  return_logprobs, return_valid);
  return {o.num_accepted, o.logprobs, o.valid};
}

#define SYNCFREE_VERIFY_SCHEMA                                                                              \
  "Tensor target_logits, Tensor draft_ids, Tensor? draft_probs, " SYNCFREE_PARAMS_SCHEMA ", " SYNCFREE_RNG_SCHEMA \
  ", bool return_logprobs, bool return_valid"

SYNCFREE_LIBRARY_FRAGMENT(SYNCFREE_OPS, m) {
  const std::vector<at::Tag> seeded = {at::Tag::nondeterministic_seeded};
  m.def("verify_draft(" SYNCFREE_VERIFY_SCHEMA
        ") -> (Tensor tokens, Tensor num_accepted, Tensor logprobs, Tensor valid)",
        seeded);
  // As sample_into: `out` is written, not returned (torch.compile and aliasing outputs).
  m.def("verify_draft_into(Tensor(a!) out, " SYNCFREE_VERIFY_SCHEMA
        ") -> (Tensor num_accepted, Tensor logprobs, Tensor valid)",
        seeded);
}

template <Backend B>
void register_verify_ops(torch::Library& m) {
  m.impl("verify_draft", &verify_op<B>);
  m.impl("verify_draft_into", &verify_into_op<B>);
}

}  // namespace

SYNCFREE_REGISTER_KERNELS(register_verify_ops)

}  // namespace syncfree
