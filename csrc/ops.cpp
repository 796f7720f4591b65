// The public ops: syncfree.sample / sample_probs (sample, sample_into) and
// syncfree.warp; every check (checks.h) runs before any kernel. Device code
// lives in cpu/ and cuda/; the shard ops of syncfree.distributed in shard_ops.cpp.
#include "ops.h"

#include <ATen/core/enum_tag.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/eq.h>
#include <ATen/ops/full.h>
#include <ATen/ops/gt.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/log.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/neg.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/where.h>
#include <torch/library.h>

namespace syncfree {

void set_warpers(SampleParams& p, RowTensors& keep_alive, const SamplingArgs& w, int64_t rows) {
  keep_alive.temperatures = row_values(w.temperature, rows, at::kFloat);
  keep_alive.top_ks = row_values(w.top_k, rows, at::kLong);
  keep_alive.top_ps = row_values(w.top_p, rows, at::kFloat);
  keep_alive.min_ps = row_values(w.min_p, rows, at::kFloat);
  keep_alive.typical_ps = row_values(w.typical_p, rows, at::kFloat);
  p.temperatures = pointer_or_null<float>(keep_alive.temperatures);
  p.temperature = float(w.temperature_value);
  p.top_ks = pointer_or_null<int64_t>(keep_alive.top_ks);
  p.top_k = w.top_k_value;
  p.top_ps = pointer_or_null<float>(keep_alive.top_ps);
  p.top_p = float(w.top_p_value);
  p.min_ps = pointer_or_null<float>(keep_alive.min_ps);
  p.min_p = float(w.min_p_value);
  p.typical_ps = pointer_or_null<float>(keep_alive.typical_ps);
  p.typical_p = float(w.typical_p_value);
  p.warped = w.any_warper(p.vocab);
}

void set_rng(SampleParams& p, RowTensors& keep_alive, const RngArgs& rng, int64_t rows) {
  keep_alive.seeds = rng.seed.has_value() ? rng.seed->contiguous().view({rows}) : Tensor();
  keep_alive.offsets = rng.offset.has_value() ? rng.offset->contiguous().view({rows}) : Tensor();
  p.seeds = pointer_or_null<int64_t>(keep_alive.seeds);
  p.offsets = pointer_or_null<int64_t>(keep_alive.offsets);
  p.seed = uint64_t(rng.seed_value.value_or(0));
  p.pos0 = uint64_t(rng.offset_value);
}

void set_processing(SampleParams& p, RowTensors& keep_alive, const SamplingArgs& a, int64_t rows) {
  keep_alive.repetitions = row_values(a.repetition_penalty, rows, at::kFloat);
  keep_alive.frequencies = row_values(a.frequency_penalty, rows, at::kFloat);
  keep_alive.presences = row_values(a.presence_penalty, rows, at::kFloat);
  const auto list = [](const std::optional<Tensor>& t, at::ScalarType dtype) {
    return t.has_value() ? t->to(dtype).contiguous() : Tensor();
  };
  keep_alive.output_tokens = list(a.output_tokens, at::kLong);
  keep_alive.prompt_tokens = list(a.prompt_tokens, at::kLong);
  keep_alive.bias_tokens = list(a.bias_tokens, at::kLong);
  keep_alive.bias_values = list(a.bias_values, at::kFloat);
  keep_alive.allowed = list(a.allowed_mask, at::kInt);
  Processing& q = p.proc;
  q = Processing{};
  q.allowed = pointer_or_null<int32_t>(keep_alive.allowed);
  q.mask_words = (p.vocab + 31) / 32;
  q.repetitions = pointer_or_null<float>(keep_alive.repetitions);
  q.repetition = float(a.repetition_penalty_value);
  q.frequencies = pointer_or_null<float>(keep_alive.frequencies);
  q.frequency = float(a.frequency_penalty_value);
  q.presences = pointer_or_null<float>(keep_alive.presences);
  q.presence = float(a.presence_penalty_value);
  // An empty list ([B, 0]) holds no entry: left out like a missing one.
  const auto ids = [](const Tensor& t, int64_t* len) -> const int64_t* {
    *len = t.defined() ? t.size(-1) : 0;
    return *len > 0 ? t.data_ptr<int64_t>() : nullptr;
  };
  q.output_tokens = ids(keep_alive.output_tokens, &q.output_len);
  q.prompt_tokens = ids(keep_alive.prompt_tokens, &q.prompt_len);
  q.bias_tokens = ids(keep_alive.bias_tokens, &q.bias_len);
  q.bias_values = q.bias_tokens != nullptr ? keep_alive.bias_values.data_ptr<float>() : nullptr;
}

template <Backend B>
Outputs run_sample(const std::optional<Tensor>& out, const Tensor& input, bool probs, const SamplingArgs& a,
                   const RngArgs& rng, const Wanted& wanted, const ShardCall& shard, const RowKeep* keeps) {
  const char* name = probs ? "probs" : "logits";
  check_input(input, name);
  const int64_t rows = row_count(input);
  const std::vector<int64_t> batch_shape =
      input.dim() == 2 ? std::vector<int64_t>{rows} : std::vector<int64_t>{};
  check_warpers(a, input);
  check_processing(a, input, probs);
  check_wanted(wanted, input, probs);
  check_rng(rng, input, name);
  if (out.has_value()) check_out(*out, input, batch_shape, read_by(a, rng, {input}));
  const bool return_logprobs = wanted.logprobs, return_valid = wanted.valid;

  const auto options = input.options();
  Outputs o;
  o.tokens = out.has_value() ? *out : at::empty(batch_shape, options.dtype(at::kLong));
  o.logprobs = at::empty(return_logprobs ? batch_shape : std::vector<int64_t>{0}, options.dtype(at::kFloat));
  o.valid = at::empty(return_valid ? batch_shape : std::vector<int64_t>{0}, options.dtype(at::kBool));
  std::vector<int64_t> top_shape = batch_shape;
  top_shape.push_back(wanted.top_logprobs);
  o.top_ids = at::empty(top_shape, options.dtype(at::kLong));
  o.top_logprobs = at::empty(top_shape, options.dtype(at::kFloat));
  o.rank = at::empty(wanted.rank ? batch_shape : std::vector<int64_t>{0}, options.dtype(at::kLong));
  if (B == Backend::kMeta || rows == 0) return o;

  SampleParams p{};
  p.input = input.data_ptr();
  p.row_stride = input.dim() == 2 ? input.stride(0) : 0;
  p.rows = rows;
  p.vocab = input.size(-1);
  p.probs = probs;
  RowTensors row_tensors;
  set_warpers(p, row_tensors, a, rows);
  set_rng(p, row_tensors, rng, rows);
  set_processing(p, row_tensors, a, rows);
  p.top_n = int(wanted.top_logprobs);
  p.raw_logprobs = wanted.raw_logprobs;
  p.top_ids = p.top_n > 0 ? o.top_ids.data_ptr<int64_t>() : nullptr;
  p.top_logprobs = p.top_n > 0 ? o.top_logprobs.data_ptr<float>() : nullptr;
  p.ranks = wanted.rank ? o.rank.data_ptr<int64_t>() : nullptr;
  p.shard = shard;
  p.keeps = keeps;
  p.tokens = o.tokens.data_ptr<int64_t>();
  p.tokens_stride = o.tokens.dim() == 1 ? o.tokens.stride(0) : 1;
  p.logprobs = return_logprobs ? o.logprobs.data_ptr<float>() : nullptr;
  p.valid = return_valid ? o.valid.data_ptr<bool>() : nullptr;

  const bool drawn = from_generator(a, rng, probs) && shard.streams == nullptr;
  if constexpr (B == Backend::kCpu) {
    sample_cpu(p, input.scalar_type(), rng.generator, drawn);
  } else {
    SYNCFREE_ON_CUDA(input, sample_cuda(p, input.scalar_type(), cuda_index(input), rng.generator, drawn));
  }
  return o;
}

#define SYNCFREE_INSTANTIATE(backend)                                                                              \
  template Outputs run_sample<backend>(const std::optional<Tensor>&, const Tensor&, bool, const SamplingArgs&, \
                                       const RngArgs&, const Wanted&, const ShardCall&, const RowKeep*);
SYNCFREE_INSTANTIATE(Backend::kCpu)
SYNCFREE_INSTANTIATE(Backend::kCuda)
SYNCFREE_INSTANTIATE(Backend::kMeta)
#undef SYNCFREE_INSTANTIATE

namespace {

template <Backend B>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sample_op(const Tensor& input, bool probs,
                                                                     SYNCFREE_PARAMS_ARGS, SYNCFREE_RNG_ARGS,
                                                                     bool return_logprobs, bool return_valid,
                                                                     int64_t top_logprobs, bool raw_logprobs,
                                                                     bool return_rank) {
  Outputs o = run_sample<B>(std::nullopt, input, probs, SamplingArgs::from_lists(params, param_values, "sample"),
                            SYNCFREE_RNG_STRUCT,
                            Wanted{return_logprobs, return_valid, top_logprobs, raw_logprobs, return_rank});
  return {o.tokens, o.logprobs, o.valid, o.top_ids, o.top_logprobs, o.rank};
}

template <Backend B>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sample_into_op(Tensor& out, const Tensor& input, bool probs,
                                                                  SYNCFREE_PARAMS_ARGS, SYNCFREE_RNG_ARGS,
                                                                  bool return_logprobs, bool return_valid,
                                                                  int64_t top_logprobs, bool raw_logprobs,
                                                                  bool return_rank) {
  Outputs o = run_sample<B>(out, input, probs, SamplingArgs::from_lists(params, param_values, "sample"),
                            SYNCFREE_RNG_STRUCT,
                            Wanted{return_logprobs, return_valid, top_logprobs, raw_logprobs, return_rank});
  return {o.logprobs, o.valid, o.top_ids, o.top_logprobs, o.rank};
}

// The warped, temperature-scaled logits of every row in float32 (removed
// tokens at -inf; temperature 0 scales nothing): race_value of each element.
template <Backend B>
Tensor warped_logits(const Tensor& logits, const SamplingArgs& a) {
  check_input(logits, "logits");
  check_warpers(a, logits);
  check_processing(a, logits, false);
  Tensor warped = at::empty_like(logits, logits.options().dtype(at::kFloat), at::MemoryFormat::Contiguous);
  if (B == Backend::kMeta || logits.numel() == 0) return warped;
  SampleParams p{};
  p.input = logits.data_ptr();
  p.row_stride = logits.dim() == 2 ? logits.stride(0) : 0;
  p.rows = row_count(logits);
  p.vocab = logits.size(-1);
  RowTensors row_tensors;
  set_warpers(p, row_tensors, a, p.rows);
  set_processing(p, row_tensors, a, p.rows);
  if constexpr (B == Backend::kCpu) {
    warped_logits_cpu(p, logits.scalar_type(), warped.data_ptr<float>());
  } else {
    SYNCFREE_ON_CUDA(logits, warped_logits_cuda(p, logits.scalar_type(), cuda_index(logits), warped.data_ptr<float>()));
  }
  return warped;
}

// syncfree.warp: the warped logits and their log_softmax.
template <Backend B>
std::tuple<Tensor, Tensor> warp_op(const Tensor& logits, SYNCFREE_PARAMS_ARGS) {
  const Tensor warped = warped_logits<B>(logits, SamplingArgs::from_lists(params, param_values, "warp"));
  if (warped.numel() == 0) return {warped, at::empty_like(warped)};
  // syncfree.sample's rules where log_softmax has none (README "Semantics"): a row with +inf
  // values gives each of them -log(count) and the rest -inf; a row with nothing left
  // (log_softmax's NaN) is -inf throughout.
  const Tensor infs = at::eq(warped, INFINITY);
  const Tensor count = infs.sum(-1, /*keepdim=*/true);
  const Tensor minus_inf = at::full({}, -INFINITY, warped.options());
  Tensor logprobs = at::log_softmax(warped, -1);
  logprobs = at::where(at::gt(count, 0), at::where(infs, at::neg(at::log(count.to(at::kFloat))), minus_inf), logprobs);
  return {warped, at::where(at::isnan(logprobs), minus_inf, logprobs)};
}

#define SYNCFREE_SAMPLE_SCHEMA                                                                   \
  "Tensor input, bool probs, " SYNCFREE_PARAMS_SCHEMA ", " SYNCFREE_RNG_SCHEMA                  \
  ", bool return_logprobs, bool return_valid, int top_logprobs, bool raw_logprobs, bool return_rank"

SYNCFREE_LIBRARY_FRAGMENT(SYNCFREE_OPS, m) {
  const std::vector<at::Tag> seeded = {at::Tag::nondeterministic_seeded};
  m.def("sample(" SYNCFREE_SAMPLE_SCHEMA
        ") -> (Tensor tokens, Tensor logprobs, Tensor valid, Tensor top_ids, Tensor top_logprobs, Tensor rank)",
        seeded);
  // Not a sample.out overload: that would return `out` (Tensor(a!)), and torch.compile cannot
  // functionalize a custom op whose output aliases an input.
  m.def("sample_into(Tensor(a!) out, " SYNCFREE_SAMPLE_SCHEMA
        ") -> (Tensor logprobs, Tensor valid, Tensor top_ids, Tensor top_logprobs, Tensor rank)", seeded);
  m.def("warp(Tensor logits, " SYNCFREE_PARAMS_SCHEMA ") -> (Tensor warped, Tensor logprobs)");
}

template <Backend B>
void register_public_ops(torch::Library& m) {
  m.impl("sample", &sample_op<B>);
  m.impl("sample_into", &sample_into_op<B>);
  m.impl("warp", &warp_op<B>);
}

}  // namespace

SYNCFREE_REGISTER_KERNELS(register_public_ops)

}  // namespace syncfree
