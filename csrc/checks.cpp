// Input checks of the ops (checks.h).
#include "checks.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/ops/arange.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <string>
#include <utility>

#include "core/race.h"
#include "core/verify.h"

namespace syncfree {

int64_t row_count(const Tensor& input) { return input.dim() == 2 ? input.size(0) : 1; }

void check_input(const Tensor& input, const char* name, bool shard) {
  TORCH_CHECK_VALUE(input.dim() != 2 || input.size(0) <= int64_t(INT32_MAX), name, ": at most ", INT32_MAX,
                    " rows, got ", input.dim() == 2 ? input.size(0) : 1);
  const auto dtype = input.scalar_type();
  const bool cpu_or_meta = input.device().is_cpu() || input.device().is_meta();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 ||
                       (dtype == at::kDouble && cpu_or_meta),
                   name, ": expected float32, float16 or bfloat16", cpu_or_meta ? " or float64" : "",
                   ", got ", dtype);
  TORCH_CHECK_VALUE(input.device().is_cpu() || input.device().is_cuda() || input.device().is_meta(), name,
                    ": expected a CPU or CUDA tensor, got device ", input.device());
  TORCH_CHECK_VALUE(input.dim() == 1 || input.dim() == 2, name, ": expected shape [V] or [B, V], got ",
                    input.dim(), " dims ", input.sizes());
  const int64_t vocab = input.size(-1);
  TORCH_CHECK_VALUE(vocab >= 1 || shard, name, ": expected at least one token in the last dim (V >= 1), got V = 0");
  TORCH_CHECK_VALUE(vocab <= kMaxVocab, name, ": V = ", vocab, " is too large (max ", kMaxVocab, ")");
  TORCH_CHECK_VALUE(input.stride(-1) == 1 || vocab <= 1, name,
                    ": the last dim must be contiguous (stride 1), got stride ", input.stride(-1),
                    "; call .contiguous() first");
}

// Whether two tensors may share memory: ATen's test, and where that is too
// hard for it (a strided view), whether their byte spans in one storage meet.
bool may_overlap(const Tensor& a, const Tensor& b) {
  const at::MemOverlapStatus status = at::get_overlap_status(a, b);
  if (status != at::MemOverlapStatus::TooHard) return status != at::MemOverlapStatus::No;
  if (!a.storage().is_alias_of(b.storage())) return false;
  const auto span = [](const Tensor& t) {
    int64_t last = 0;  // offset of the last element, in elements (torch strides are >= 0)
    for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
    const auto begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
    return std::pair<uintptr_t, uintptr_t>{begin, begin + uintptr_t((last + 1) * int64_t(t.element_size()))};
  };
  const auto [a0, a1] = span(a);
  const auto [b0, b1] = span(b);
  return a0 < b1 && b0 < a1;
}

// A per-row parameter tensor: one value per row, on the input's device.
void check_row_tensor(const Tensor& t, const char* name, const Tensor& input, bool integral, bool any_dtype) {
  TORCH_CHECK_VALUE(t.device() == input.device(), name, ": expected a tensor on ", input.device(),
                    " (the device of the input), got ", t.device());
  if (integral && !any_dtype) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, ": expected an int64 tensor, got ", t.scalar_type());
  } else if (!any_dtype) {
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, ": expected a floating-point tensor, got ",
                     t.scalar_type());
  }
  const int64_t rows = row_count(input);
  const bool ok = input.dim() == 2 ? (t.dim() == 1 && t.size(0) == rows) : (t.dim() <= 1 && t.numel() == 1);
  TORCH_CHECK_VALUE(ok, name, ": expected one value per row, shape [", rows, "], got shape ", t.sizes());
}

void check_generator_device(const at::Generator& generator, const Tensor& input, const char* name) {
  const auto gen_device = generator.device();
  const bool same = gen_device.type() == input.device().type() &&
                    (!gen_device.has_index() || !input.device().has_index() ||
                     gen_device.index() == input.device().index());
  TORCH_CHECK_VALUE(same || input.device().is_meta(), "generator: expected a generator on ", input.device(),
                    " (the device of ", name, "), got one on ", gen_device);
}

void check_warpers(const SamplingArgs& w, const Tensor& input) {
  TORCH_CHECK_VALUE(w.temperature_value >= 0.0, "temperature: expected a number >= 0 (0 means greedy), got ",
                    w.temperature_value);
  TORCH_CHECK_VALUE(w.top_k_value >= 0, "top_k: expected an int >= 0 (0 keeps all tokens), got ", w.top_k_value);
  TORCH_CHECK_VALUE(w.top_p_value > 0.0 && w.top_p_value <= 1.0, "top_p: expected a number in (0, 1], got ",
                    w.top_p_value);
  TORCH_CHECK_VALUE(w.min_p_value >= 0.0 && w.min_p_value <= 1.0, "min_p: expected a number in [0, 1], got ",
                    w.min_p_value);
  TORCH_CHECK_VALUE(w.typical_p_value > 0.0 && w.typical_p_value <= 1.0,
                    "typical_p: expected a number in (0, 1], got ", w.typical_p_value);
  if (w.temperature.has_value()) check_row_tensor(*w.temperature, "temperature", input, false);
  if (w.top_k.has_value()) {
    TORCH_CHECK_TYPE(!at::isFloatingType(w.top_k->scalar_type()) && !at::isComplexType(w.top_k->scalar_type()) &&
                         w.top_k->scalar_type() != at::kBool,
                     "top_k: expected an integer tensor, got ", w.top_k->scalar_type());
    check_row_tensor(*w.top_k, "top_k", input, false, /*any_dtype=*/true);
  }
  if (w.top_p.has_value()) check_row_tensor(*w.top_p, "top_p", input, false);
  if (w.min_p.has_value()) check_row_tensor(*w.min_p, "min_p", input, false);
  if (w.typical_p.has_value()) check_row_tensor(*w.typical_p, "typical_p", input, false);
}

namespace {

// Whether ids inside a tensor are checked: on the CPU path only (CUDA would need a sync; the
// emulated CUDA path, on CPU tensors, keeps CUDA's contract so that tests see it).
bool checks_values(const Tensor& t) {
#ifdef SYNCFREE_CUDA_ON_CPU
  (void)t;
  return false;
#else
  return t.device().is_cpu();
#endif
}

// A [B, n] (or [n] for a [V] input) tensor of a row's ids or values.
void check_row_list(const Tensor& t, const char* name, const Tensor& input, bool ids) {
  TORCH_CHECK_VALUE(t.device() == input.device(), name, ": expected a tensor on ", input.device(),
                    " (the device of the input), got ", t.device());
  if (ids) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, ": expected an int64 tensor, got ", t.scalar_type());
  } else {
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, ": expected a floating-point tensor, got ",
                     t.scalar_type());
  }
  const bool ok = input.dim() == 2 ? t.dim() == 2 && t.size(0) == input.size(0) : t.dim() == 1;
  TORCH_CHECK_VALUE(ok, name, ": expected shape ", input.dim() == 2 ? "[B, n] with B = " : "[n]",
                    input.dim() == 2 ? std::to_string(input.size(0)) : std::string(), ", got ", t.sizes());
  if (ids && checks_values(t) && t.numel() > 0) {
    const int64_t low = t.min().item<int64_t>(), high = t.max().item<int64_t>();
    TORCH_CHECK_VALUE(low >= -1 && high < input.size(-1), name, ": expected ids in [0, V) = [0, ", input.size(-1),
                      ") or -1 (padding), got ", low < -1 ? low : high);
  }
}

}  // namespace

void check_processing(const SamplingArgs& a, const Tensor& input, bool probs) {
  TORCH_CHECK_VALUE(!probs || a.first_processing_field() == nullptr, "probs: ", a.first_processing_field(),
                    ": penalties, bias and allowed_mask apply to logits only");
  TORCH_CHECK_VALUE(a.repetition_penalty_value > 0.0 && a.repetition_penalty_value < INFINITY,
                    "repetition_penalty: expected a finite number > 0 (1 is off), got ", a.repetition_penalty_value);
  TORCH_CHECK_VALUE(std::isfinite(a.frequency_penalty_value),
                    "frequency_penalty: expected a finite number (0 is off), got ", a.frequency_penalty_value);
  TORCH_CHECK_VALUE(std::isfinite(a.presence_penalty_value),
                    "presence_penalty: expected a finite number (0 is off), got ", a.presence_penalty_value);
  if (a.repetition_penalty.has_value()) check_row_tensor(*a.repetition_penalty, "repetition_penalty", input, false);
  if (a.frequency_penalty.has_value()) check_row_tensor(*a.frequency_penalty, "frequency_penalty", input, false);
  if (a.presence_penalty.has_value()) check_row_tensor(*a.presence_penalty, "presence_penalty", input, false);
  if (a.output_tokens.has_value()) check_row_list(*a.output_tokens, "output_tokens", input, true);
  if (a.prompt_tokens.has_value()) check_row_list(*a.prompt_tokens, "prompt_tokens", input, true);
  TORCH_CHECK_VALUE(a.bias_tokens.has_value() == a.bias_values.has_value(),
                    a.bias_tokens.has_value() ? "bias_values" : "bias_tokens",
                    ": logit_bias needs both bias_tokens and bias_values");
  if (a.bias_tokens.has_value()) {
    check_row_list(*a.bias_tokens, "bias_tokens", input, true);
    check_row_list(*a.bias_values, "bias_values", input, false);
    TORCH_CHECK_VALUE(a.bias_values->sizes() == a.bias_tokens->sizes(), "bias_values: expected the shape of "
                      "bias_tokens ", a.bias_tokens->sizes(), ", got ", a.bias_values->sizes());
  }
  // The table holds every history and bias id of a row (Note [Processing in the pass]): the cap is on
  // their sum, so the message names each part that adds to it.
  const int64_t outputs = a.output_tokens.has_value() ? a.output_tokens->size(-1) : 0;
  const int64_t prompts = a.prompt_tokens.has_value() ? a.prompt_tokens->size(-1) : 0;
  const int64_t biases = a.bias_tokens.has_value() ? a.bias_tokens->size(-1) : 0;
  if (outputs + prompts + biases > (int64_t(1) << 24)) {
    std::string parts;
    for (const auto& [name, n] : {std::pair<const char*, int64_t>{"output_tokens", outputs},
                                  {"prompt_tokens", prompts}, {"bias_tokens", biases}}) {
      if (n > 0) parts += (parts.empty() ? "" : " + ") + std::string(name) + " " + std::to_string(n);
    }
    TORCH_CHECK_VALUE(false, parts, ": at most 2^24 = 16777216 history and bias ids a row in all, got ",
                      outputs + prompts + biases);
  }
  if (a.allowed_mask.has_value()) {
    const Tensor& m = *a.allowed_mask;
    const int64_t words = (input.size(-1) + 31) / 32;
    TORCH_CHECK_VALUE(m.device() == input.device(), "allowed_mask: expected a tensor on ", input.device(),
                      " (the device of the input), got ", m.device());
    TORCH_CHECK_TYPE(m.scalar_type() == at::kInt, "allowed_mask: expected an int32 bitmask (xgrammar's layout), got ",
                     m.scalar_type());
    const bool ok = input.dim() == 2 ? m.dim() == 2 && m.size(0) == input.size(0) && m.size(1) == words
                                     : m.dim() == 1 && m.size(0) == words;
    TORCH_CHECK_VALUE(ok, "allowed_mask: expected shape ", input.dim() == 2 ? "[B, ceil(V / 32)] = [" : "[ceil(V / 32)] = [",
                      input.dim() == 2 ? std::to_string(input.size(0)) + ", " : std::string(), words, "], got ",
                      m.sizes());
  }
}

void check_wanted(const Wanted& wanted, const Tensor& input, bool probs) {
  TORCH_CHECK_VALUE(!probs || (wanted.top_logprobs == 0 && !wanted.raw_logprobs),
                    "probs: top-n logprobs and logprobs_mode apply to logits only");
  TORCH_CHECK_VALUE(!probs || !wanted.rank, "return_rank: ranks apply to logits only");
  TORCH_CHECK_VALUE(wanted.top_logprobs >= 0 && wanted.top_logprobs <= 20 && wanted.top_logprobs <= input.size(-1),
                    "return_top_logprobs: expected an int in [0, min(20, V)], got ", wanted.top_logprobs);
}

SamplingArgs SamplingArgs::from_lists(const c10::List<std::optional<Tensor>>& params,
                                      c10::ArrayRef<double> values, const char* op) {
  constexpr size_t kFields = 0
#define SYNCFREE_COUNT_ROW(name, type, identity, group) +1
#define SYNCFREE_COUNT_LIST(name) +1
      SYNCFREE_SAMPLING_FIELDS(SYNCFREE_COUNT_ROW, SYNCFREE_COUNT_LIST);
#undef SYNCFREE_COUNT_ROW
#undef SYNCFREE_COUNT_LIST
  TORCH_CHECK_VALUE(params.size() == kFields && values.size() == kFields, op, ": expected ", kFields,
                    " params and param_values (syncfree._C.sampling_fields()), got ", params.size(), " and ",
                    values.size());
  SamplingArgs a;
  size_t i = 0;
  // A per-row int arrives as a double: past 2^62 only its sign matters (any top_k >= V keeps all).
  const auto as = [](double v, auto type) -> decltype(type) {
    if constexpr (std::is_integral_v<decltype(type)>) return decltype(type)(std::clamp(v, -0x1p62, 0x1p62));
    return decltype(type)(v);
  };
#define SYNCFREE_FILL_ROW(name, type, identity, group) \
  a.name = params.get(i);                              \
  a.name##_value = as(values[i++], type{});
#define SYNCFREE_FILL_LIST(name) a.name = params.get(i++);
  SYNCFREE_SAMPLING_FIELDS(SYNCFREE_FILL_ROW, SYNCFREE_FILL_LIST)
#undef SYNCFREE_FILL_ROW
#undef SYNCFREE_FILL_LIST
  return a;
}

c10::List<std::optional<Tensor>> SamplingArgs::tensors() const {
  c10::List<std::optional<Tensor>> list;
#define SYNCFREE_PUSH_ROW(name, type, identity, group) list.push_back(name);
#define SYNCFREE_PUSH_LIST(name) list.push_back(name);
  SYNCFREE_SAMPLING_FIELDS(SYNCFREE_PUSH_ROW, SYNCFREE_PUSH_LIST)
#undef SYNCFREE_PUSH_ROW
#undef SYNCFREE_PUSH_LIST
  return list;
}

const char* SamplingArgs::first_penalty() const {
#define SYNCFREE_FIRST_ROW(name, type, identity, group) \
  if (kField##group && (name.has_value() || name##_value != type(identity))) return #name;
#define SYNCFREE_NO_LIST(name)
  constexpr bool kFieldwarper = false, kFieldprocessing = true;  // the processing rows are the penalties
  SYNCFREE_SAMPLING_FIELDS(SYNCFREE_FIRST_ROW, SYNCFREE_NO_LIST)
#undef SYNCFREE_FIRST_ROW
#undef SYNCFREE_NO_LIST
  return nullptr;
}

const char* SamplingArgs::first_processing_field() const {
  if (const char* penalty = first_penalty()) return penalty;
#define SYNCFREE_NO_ROW(name, type, identity, group)
#define SYNCFREE_FIRST_LIST(name) \
  if (name.has_value()) return #name;
  SYNCFREE_SAMPLING_FIELDS(SYNCFREE_NO_ROW, SYNCFREE_FIRST_LIST)
#undef SYNCFREE_NO_ROW
#undef SYNCFREE_FIRST_LIST
  return nullptr;
}

void check_rng(const RngArgs& rng, const Tensor& input, const char* name) {
  const auto& [seed, offset, seed_value, offset_value, generator] = rng;
  if (seed.has_value()) check_row_tensor(*seed, "seed", input, true);
  if (offset.has_value()) {
    check_row_tensor(*offset, "offset", input, true);
    TORCH_CHECK_VALUE(seed.has_value(), "offset: a per-row offset tensor needs a per-row seed tensor");
  }
  TORCH_CHECK_VALUE(!(seed_value.has_value() && offset.has_value()),
                    "offset: an int seed takes an int offset, not a tensor");
  TORCH_CHECK_VALUE(!(seed.has_value() && offset_value != 0),
                    "offset: a per-row seed tensor takes a per-row offset tensor, not an int");
  TORCH_CHECK_VALUE(offset_value >= 0, "offset: expected an int >= 0, got ", offset_value);
  TORCH_CHECK_VALUE(offset_value == 0 || seed_value.has_value() || seed.has_value(),
                    "offset: an offset needs a seed");
  if (generator.has_value()) {
    TORCH_CHECK_VALUE(!seed.has_value() && !seed_value.has_value(),
                      "generator: pass either a generator or a seed, not both");
    check_generator_device(*generator, input, name);
  }
}

std::vector<std::optional<Tensor>> read_by(const SamplingArgs& a, const RngArgs& rng,
                                           std::vector<std::optional<Tensor>> inputs) {
#define SYNCFREE_READ_ROW(name, type, identity, group) inputs.push_back(a.name);
#define SYNCFREE_READ_LIST(name) inputs.push_back(a.name);
  SYNCFREE_SAMPLING_FIELDS(SYNCFREE_READ_ROW, SYNCFREE_READ_LIST)
#undef SYNCFREE_READ_ROW
#undef SYNCFREE_READ_LIST
  inputs.push_back(rng.seed);
  inputs.push_back(rng.offset);
  return inputs;
}

void check_out(const Tensor& out, const Tensor& input, const std::vector<int64_t>& batch_shape,
               const std::vector<std::optional<Tensor>>& inputs) {
  TORCH_CHECK_TYPE(out.scalar_type() == at::kLong, "out: expected an int64 tensor, got ", out.scalar_type());
  TORCH_CHECK_VALUE(out.device() == input.device(), "out: expected a tensor on ", input.device(), ", got ",
                    out.device());
  TORCH_CHECK_VALUE(out.sizes() == at::IntArrayRef(batch_shape), "out: expected shape ",
                    at::IntArrayRef(batch_shape), ", got ", out.sizes());
  // As torch's own out= ops: an out that overlaps itself or an input would
  // change the input while the kernels read it (Note [A winning group with no winner]).
  if (input.device().is_meta()) return;
  TORCH_CHECK_VALUE(at::has_internal_overlap(out) != at::MemOverlap::Yes,
                    "out: overlaps itself (e.g. an expanded tensor); pass a tensor with distinct elements");
  for (const auto& in : inputs) {
    TORCH_CHECK_VALUE(!in.has_value() || !may_overlap(out, *in),
                      "out: overlaps an input (logits, probs or a per-row tensor); pass a separate tensor");
  }
}

namespace {

// draft_ids (and a tree's parents): int64 [B, columns] on the target's device.
void check_node_ids(const Tensor& t, const char* name, const Tensor& target, int64_t columns, const char* shape) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, ": expected an int64 tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == target.device(), name, ": expected a tensor on ", target.device(),
                    " (the device of target_logits), got ", t.device());
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == target.size(0) && t.size(1) == columns, name, ": expected shape ",
                    shape, " = [", target.size(0), ", ", columns, "] (target_logits is ", target.sizes(), "), got ",
                    t.sizes());
}

void check_draft_probs(const std::optional<Tensor>& draft_probs, const Tensor& target, int64_t laws,
                       const char* shape) {
  if (!draft_probs.has_value()) return;
  const Tensor& q = *draft_probs;
  const int64_t rows = target.size(0), vocab = target.size(2);
  TORCH_CHECK_TYPE(q.scalar_type() == at::kFloat, "draft_probs: expected a float32 tensor, got ", q.scalar_type());
  TORCH_CHECK_VALUE(q.device() == target.device(), "draft_probs: expected a tensor on ", target.device(),
                    " (the device of target_logits), got ", q.device());
  TORCH_CHECK_VALUE(q.dim() == 3 && q.size(0) == rows && q.size(1) == laws && q.size(2) == vocab,
                    "draft_probs: expected shape ", shape, " = [", rows, ", ", laws, ", ", vocab, "], got ", q.sizes());
  TORCH_CHECK_VALUE(q.stride(2) == 1 || vocab <= 1, "draft_probs: the last dim must be contiguous (stride 1), got "
                    "stride ", q.stride(2), "; call .contiguous() first");
}

void check_ids_in_vocab(const Tensor& ids, int64_t vocab) {
  if (ids.numel() == 0) return;
  const int64_t low = ids.min().item<int64_t>(), high = ids.max().item<int64_t>();
  TORCH_CHECK_VALUE(low >= 0 && high < vocab, "draft_ids: expected ids in [0, V) = [0, ", vocab, "), got ",
                    low < 0 ? low : high);
}

}  // namespace

void check_verify(const Tensor& target, const Tensor& draft_ids, const std::optional<Tensor>& draft_probs) {
  TORCH_CHECK_VALUE(target.dim() == 3, "target_logits: expected shape [B, n + 1, V], got ", target.dim(), " dims ",
                    target.sizes());
  const int64_t rows = target.size(0), n = target.size(1) - 1;
  TORCH_CHECK_VALUE(n >= 1 && n + 1 <= kMaxTreeNodes, "target_logits: expected 2 <= n + 1 <= ", kMaxTreeNodes,
                    " positions (at least one drafted token), got n + 1 = ", n + 1);
  TORCH_CHECK_VALUE(rows * (n + 1) <= int64_t(INT32_MAX), "target_logits: at most ", INT32_MAX,
                    " positions in all, got ", rows * (n + 1));
  check_input(target.select(1, 0), "target_logits");
  check_node_ids(draft_ids, "draft_ids", target, n, "[B, n]");
  check_draft_probs(draft_probs, target, n, "[B, n, V]");
  if (checks_values(draft_ids)) check_ids_in_vocab(draft_ids, target.size(2));  // CUDA rejects them instead
}

void check_verify_tree(const Tensor& target, const Tensor& draft_ids, const Tensor& parents,
                       const std::optional<Tensor>& draft_probs) {
  TORCH_CHECK_VALUE(target.dim() == 3, "target_logits: expected shape [B, N, V] (N tree nodes), got ", target.dim(),
                    " dims ", target.sizes());
  const int64_t rows = target.size(0), nodes = target.size(1);
  TORCH_CHECK_VALUE(nodes >= 1 && nodes <= kMaxTreeNodes, "target_logits: expected 1 <= N <= ", kMaxTreeNodes,
                    " tree nodes, got N = ", nodes);
  TORCH_CHECK_VALUE(rows * nodes <= int64_t(INT32_MAX), "target_logits: at most ", INT32_MAX, " nodes in all, got ",
                    rows * nodes);
  check_input(target.select(1, 0), "target_logits");
  check_node_ids(draft_ids, "draft_ids", target, nodes, "[B, N]");
  check_node_ids(parents, "parents", target, nodes, "[B, N]");
  check_draft_probs(draft_probs, target, nodes, "[B, N, V]");
  if (!checks_values(parents) || rows == 0) return;  // CUDA leaves such nodes unreached instead
  const Tensor root = parents.select(1, 0);
  TORCH_CHECK_VALUE(root.eq(-1).all().item<bool>(), "parents: node 0 is the root, expected parents[:, 0] = -1, got ",
                    root.ne(-1).nonzero().numel() > 0 ? root.masked_select(root.ne(-1))[0].item<int64_t>() : -1);
  const Tensor index = at::arange(nodes, parents.options()).unsqueeze(0);
  const Tensor bad = parents.lt(-1).logical_or(parents.ge(index)).logical_and(index.gt(0));
  if (bad.any().item<bool>()) {
    const Tensor at_node = bad.nonzero()[0];
    const int64_t b = at_node[0].item<int64_t>(), i = at_node[1].item<int64_t>();
    TORCH_CHECK_VALUE(false, "parents: expected parents[b, i] in [-1, i) (an earlier node, or -1 for padding), got "
                      "parents[", b, ", ", i, "] = ", parents[b][i].item<int64_t>(),
                      " (a forward or self parent would make a cycle)");
  }
  check_ids_in_vocab(draft_ids.masked_select(parents.ge(0)), target.size(2));  // the nodes that can be reached
}

void check_verify_processing(const SamplingArgs& a, const Tensor& target) {
  SamplingArgs per_row = a;
  if (a.allowed_mask.has_value() && a.allowed_mask->dim() == 3) {  // one mask per position
    const Tensor& m = *a.allowed_mask;
    const int64_t words = (target.size(2) + 31) / 32;
    TORCH_CHECK_VALUE(m.size(0) == target.size(0) && m.size(1) == target.size(1) && m.size(2) == words,
                      "allowed_mask: expected shape [B, ceil(V / 32)] = [", target.size(0), ", ", words,
                      "] or, one per position, [B, n + 1, ceil(V / 32)] = [", target.size(0), ", ", target.size(1),
                      ", ", words, "], got ", m.sizes());
    per_row.allowed_mask = m.select(1, 0);  // the dtype and device checks below
  }
  check_processing(per_row, target.select(1, 0), false);
}

}  // namespace syncfree
