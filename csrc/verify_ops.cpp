// syncfree.verify_draft (verify_draft, verify_draft_into) and verify_tree:
// speculative decoding's verification of a draft chain or tree against the
// target's logits (Note [Verifying a draft], Note [Verifying a tree] in
// core/verify.h). Every check (checks.h) runs first.
#include <ATen/core/enum_tag.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/logical_and.h>
#include <ATen/ops/logical_or.h>
#include <ATen/ops/lt.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/where.h>
#include <torch/library.h>

#include <vector>

#include "ops.h"

namespace syncfree {
namespace {

struct VerifyOutputs {
  Tensor tokens, path, num_accepted, logprobs, valid;
};

// What a sequential decode would have emitted before each position of a chain: drafts [B, n + 1,
// n] with draft_ids[b, :j] then -1 at position j.
Tensor chain_prefixes(const Tensor& draft_ids, int64_t positions) {
  const int64_t n = positions - 1;
  const auto options = draft_ids.options();
  const Tensor before = at::lt(at::arange(n, options).unsqueeze(0), at::arange(positions, options).unsqueeze(1));
  return at::where(before, draft_ids.unsqueeze(1), at::scalar_tensor(-1, options));
}

// The same for a tree (Note [Verifying a tree]): [B, N, N], the tokens of node i's path after
// the root (at their node's column), -1 elsewhere. The path's nodes are the closure of the
// parent relation, by doubling: ceil(log2 N) products of [N, N] 0/1 matrices, on the device.
Tensor tree_prefixes(const Tensor& draft_ids, const Tensor& parents) {
  const int64_t nodes = parents.size(1);
  const auto options = parents.options();
  const Tensor index = at::arange(nodes, options);
  const Tensor reached = at::logical_and(parents.ge(0), parents.lt(index.unsqueeze(0)));  // a node's own parent
  const Tensor step = at::logical_and(parents.unsqueeze(2).eq(index), reached.unsqueeze(2));
  Tensor on_path = at::logical_or(step, at::eye(nodes, options.dtype(at::kBool))).to(at::kFloat);
  for (int64_t span = 1; span < nodes; span *= 2) on_path = at::bmm(on_path, on_path).gt(0).to(at::kFloat);
  const Tensor listed = at::logical_and(on_path.gt(0), index.gt(0));  // the root's token is in the history already
  return at::where(listed, draft_ids.unsqueeze(1), at::scalar_tensor(-1, options));
}

// The processing of each position (Note [Verifying a draft]): position j of row b takes row b's
// penalties, prompt, bias and mask (or its own mask, from a [B, n + 1, W] one) and, with a
// penalty, row b's output history followed by prefixes[b, j], what a sequential decode would
// have emitted. Device-side copies of the small lists, no sync; the logits are never copied.
SamplingArgs per_position(const SamplingArgs& a, const Tensor& prefixes, int64_t positions) {
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
    Tensor history = prefixes.reshape({prefixes.size(0) * positions, prefixes.size(2)});
    if (a.output_tokens.has_value()) history = at::cat({*each(a.output_tokens), history}, 1);
    pos.output_tokens = history;
  }
  return pos;
}

// parents: a tree (verify_tree), else a chain (verify_draft).
template <Backend B>
VerifyOutputs run_verify(const std::optional<Tensor>& out, const Tensor& target, const Tensor& draft_ids,
                         const std::optional<Tensor>& parents, const std::optional<Tensor>& draft_probs,
                         const SamplingArgs& w, const RngArgs& rng, bool return_logprobs, bool return_valid) {
  const bool tree = parents.has_value();
  if (tree) {
    check_verify_tree(target, draft_ids, *parents, draft_probs);
  } else {
    check_verify(target, draft_ids, draft_probs);
  }
  const int64_t rows = target.size(0), nodes = target.size(1), vocab = target.size(2);
  const Tensor first = target.select(1, 0);  // [B, V]: the per-row arguments' shape
  check_warpers(w, first);
  check_verify_processing(w, target);
  check_rng(rng, first, "target_logits");
  if (out.has_value()) {
    check_out(*out, first, {rows, nodes}, read_by(w, rng, {target, draft_ids, parents, draft_probs}));
  }

  const auto options = target.options();
  VerifyOutputs o;
  // Written in place only when contiguous; else through a fresh tensor, copied on the device.
  const bool direct = out.has_value() && out->is_contiguous();
  o.tokens = direct ? *out : at::empty({rows, nodes}, options.dtype(at::kLong));
  o.path = at::empty({tree ? rows : 0, nodes}, options.dtype(at::kLong));
  o.num_accepted = at::empty({rows}, options.dtype(at::kLong));
  o.logprobs = at::empty(return_logprobs ? std::vector<int64_t>{rows, nodes} : std::vector<int64_t>{0},
                         options.dtype(at::kFloat));
  o.valid = at::empty({return_valid ? rows : 0}, options.dtype(at::kBool));
  if (B == Backend::kMeta || rows == 0) return o;

  const Tensor flat = target.reshape({rows * nodes, vocab});  // a view unless the strides forbid it
  const Tensor ids = draft_ids.contiguous();
  const Tensor links = tree ? parents->contiguous() : Tensor();
  const Tensor q = draft_probs.has_value() ? draft_probs->reshape({-1, vocab}) : Tensor();
  SampleParams p{};
  p.input = flat.data_ptr();
  p.row_stride = flat.stride(0);
  p.rows = rows * nodes;
  p.vocab = vocab;
  p.positions = nodes;
  RowTensors row_tensors;
  set_warpers(p, row_tensors, w, rows);
  set_rng(p, row_tensors, rng, rows);
  const Tensor prefixes = w.first_penalty() == nullptr ? Tensor()
                          : tree ? tree_prefixes(ids, links) : chain_prefixes(ids, nodes);
  set_processing(p, row_tensors, per_position(w, prefixes, nodes), rows * nodes);
  p.proc.per_position = true;
  VerifyParams v{};
  v.target = p;
  v.nodes = nodes;
  v.parents = tree ? links.data_ptr<int64_t>() : nullptr;
  v.parents_stride = tree ? links.stride(0) : 0;
  v.draft_ids = ids.data_ptr<int64_t>();
  v.draft_ids_stride = ids.stride(0);
  v.draft_probs = q.defined() ? q.data_ptr<float>() : nullptr;
  v.draft_probs_stride = q.defined() ? q.stride(0) : 0;
  v.tokens = o.tokens.data_ptr<int64_t>();
  v.path = tree ? o.path.data_ptr<int64_t>() : nullptr;
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
  VerifyOutputs o = run_verify<B>(std::nullopt, target, draft_ids, std::nullopt, draft_probs,
                                  SamplingArgs::from_lists(params, param_values, "verify_draft"), SYNCFREE_RNG_STRUCT,
                                  return_logprobs, return_valid);
  return {o.tokens, o.num_accepted, o.logprobs, o.valid};
}

template <Backend B>
std::tuple<Tensor, Tensor, Tensor> verify_into_op(Tensor& out, const Tensor& target, const Tensor& draft_ids,
                                                  const std::optional<Tensor>& draft_probs, SYNCFREE_PARAMS_ARGS,
                                                  SYNCFREE_RNG_ARGS, bool return_logprobs, bool return_valid) {
  VerifyOutputs o = run_verify<B>(out, target, draft_ids, std::nullopt, draft_probs,
                                  SamplingArgs::from_lists(params, param_values, "verify_draft"), SYNCFREE_RNG_STRUCT,
                                  return_logprobs, return_valid);
  return {o.num_accepted, o.logprobs, o.valid};
}

template <Backend B>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> verify_tree_op(
    const Tensor& target, const Tensor& draft_ids, const Tensor& parents, const std::optional<Tensor>& draft_probs,
    SYNCFREE_PARAMS_ARGS, SYNCFREE_RNG_ARGS, bool return_logprobs, bool return_valid) {
  VerifyOutputs o = run_verify<B>(std::nullopt, target, draft_ids, parents, draft_probs,
                                  SamplingArgs::from_lists(params, param_values, "verify_tree"), SYNCFREE_RNG_STRUCT,
                                  return_logprobs, return_valid);
  return {o.tokens, o.path, o.num_accepted, o.logprobs, o.valid};
}

template <Backend B>
std::tuple<Tensor, Tensor, Tensor, Tensor> verify_tree_into_op(
    Tensor& out, const Tensor& target, const Tensor& draft_ids, const Tensor& parents,
    const std::optional<Tensor>& draft_probs, SYNCFREE_PARAMS_ARGS, SYNCFREE_RNG_ARGS, bool return_logprobs,
    bool return_valid) {
  VerifyOutputs o = run_verify<B>(out, target, draft_ids, parents, draft_probs,
                                  SamplingArgs::from_lists(params, param_values, "verify_tree"), SYNCFREE_RNG_STRUCT,
                                  return_logprobs, return_valid);
  return {o.path, o.num_accepted, o.logprobs, o.valid};
}

#define SYNCFREE_VERIFY_SCHEMA                                                                              \
  "Tensor target_logits, Tensor draft_ids, Tensor? draft_probs, " SYNCFREE_PARAMS_SCHEMA ", " SYNCFREE_RNG_SCHEMA \
  ", bool return_logprobs, bool return_valid"

#define SYNCFREE_TREE_SCHEMA                                                                                   \
  "Tensor target_logits, Tensor draft_ids, Tensor parents, Tensor? draft_probs, " SYNCFREE_PARAMS_SCHEMA ", "    \
  SYNCFREE_RNG_SCHEMA ", bool return_logprobs, bool return_valid"

SYNCFREE_LIBRARY_FRAGMENT(SYNCFREE_OPS, m) {
  const std::vector<at::Tag> seeded = {at::Tag::nondeterministic_seeded};
  m.def("verify_draft(" SYNCFREE_VERIFY_SCHEMA
        ") -> (Tensor tokens, Tensor num_accepted, Tensor logprobs, Tensor valid)",
        seeded);
  // As sample_into: `out` is written, not returned (torch.compile and aliasing outputs).
  m.def("verify_draft_into(Tensor(a!) out, " SYNCFREE_VERIFY_SCHEMA
        ") -> (Tensor num_accepted, Tensor logprobs, Tensor valid)",
        seeded);
  m.def("verify_tree(" SYNCFREE_TREE_SCHEMA
        ") -> (Tensor tokens, Tensor path, Tensor num_accepted, Tensor logprobs, Tensor valid)",
        seeded);
  m.def("verify_tree_into(Tensor(a!) out, " SYNCFREE_TREE_SCHEMA
        ") -> (Tensor path, Tensor num_accepted, Tensor logprobs, Tensor valid)",
        seeded);
}

template <Backend B>
void register_verify_ops(torch::Library& m) {
  m.impl("verify_draft", &verify_op<B>);
  m.impl("verify_draft_into", &verify_into_op<B>);
  m.impl("verify_tree", &verify_tree_op<B>);
  m.impl("verify_tree_into", &verify_tree_into_op<B>);
}

}  // namespace

SYNCFREE_REGISTER_KERNELS(register_verify_ops)

}  // namespace syncfree
