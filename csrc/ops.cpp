// The op layer: every input check (before any kernel runs), device routing,
// and the torch.library schemas. Device code lives in cpu/ and cuda/.
#include <ATen/core/Tensor.h>
#include <ATen/core/enum_tag.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

#include "sample.h"

namespace syncfree {
namespace {

using at::Tensor;

struct Outputs {
  Tensor tokens, logprobs, valid;
};

int64_t row_count(const Tensor& input) { return input.dim() == 2 ? input.size(0) : 1; }

void check_input(const Tensor& input, const char* name) {
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
  TORCH_CHECK_VALUE(vocab >= 1, name, ": expected at least one token in the last dim (V >= 1), got V = 0");
  TORCH_CHECK_VALUE(vocab <= int64_t(INT32_MAX) - 2 * kGroup, name, ": V = ", vocab, " is too large (max ",
                    int64_t(INT32_MAX) - 2 * kGroup, ")");
  TORCH_CHECK_VALUE(input.stride(-1) == 1 || vocab == 1, name,
                    ": the last dim must be contiguous (stride 1), got stride ", input.stride(-1),
                    "; call .contiguous() first");
}

// A per-row parameter tensor: one value per row, on the input's device.
void check_row_tensor(const Tensor& t, const char* name, const Tensor& input, bool integral) {
  TORCH_CHECK_VALUE(t.device() == input.device(), name, ": expected a tensor on ", input.device(),
                    " (the device of the input), got ", t.device());
  if (integral) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, ": expected an int64 tensor, got ", t.scalar_type());
  } else {
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, ": expected a floating-point tensor, got ",
                     t.scalar_type());
  }
  const int64_t rows = row_count(input);
  const bool ok = input.dim() == 2 ? (t.dim() == 1 && t.size(0) == rows) : (t.dim() <= 1 && t.numel() == 1);
  TORCH_CHECK_VALUE(ok, name, ": expected one value per row, shape [", rows, "], got shape ", t.sizes());
}

Outputs run_sample(const std::optional<Tensor>& out, const Tensor& input, bool probs,
                   const std::optional<Tensor>& temperature, double temperature_value,
                   const std::optional<Tensor>& seed, const std::optional<Tensor>& offset,
                   std::optional<int64_t> seed_value, int64_t offset_value,
                   const std::optional<at::Generator>& generator, bool return_logprobs, bool return_valid) {
  const char* name = probs ? "probs" : "logits";
  check_input(input, name);
  const int64_t rows = row_count(input);
  const std::vector<int64_t> batch_shape =
      input.dim() == 2 ? std::vector<int64_t>{rows} : std::vector<int64_t>{};

  TORCH_CHECK_VALUE(temperature_value >= 0.0, "temperature: expected a number >= 0 (0 means greedy), got ",
                    temperature_value);
  if (temperature.has_value()) check_row_tensor(*temperature, "temperature", input, false);
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
    const auto gen_device = generator->device();
    const bool same = gen_device.type() == input.device().type() &&
                      (!gen_device.has_index() || !input.device().has_index() ||
                       gen_device.index() == input.device().index());
    TORCH_CHECK_VALUE(same || input.device().is_meta(), "generator: expected a generator on ", input.device(),
                      " (the device of ", name, "), got one on ", gen_device);
  }
  if (out.has_value()) {
    TORCH_CHECK_TYPE(out->scalar_type() == at::kLong, "out: expected an int64 tensor, got ", out->scalar_type());
    TORCH_CHECK_VALUE(out->device() == input.device(), "out: expected a tensor on ", input.device(), ", got ",
                      out->device());
    TORCH_CHECK_VALUE(out->sizes() == at::IntArrayRef(batch_shape), "out: expected shape ",
                      at::IntArrayRef(batch_shape), ", got ", out->sizes());
  }

  const auto options = input.options();
  Outputs o;
  o.tokens = out.has_value() ? *out : at::empty(batch_shape, options.dtype(at::kLong));
  o.logprobs = at::empty(return_logprobs ? batch_shape : std::vector<int64_t>{0}, options.dtype(at::kFloat));
  o.valid = at::empty(return_valid ? batch_shape : std::vector<int64_t>{0}, options.dtype(at::kBool));
  if (rows == 0 || input.device().is_meta()) return o;

  // Parameter tensors in the layout the kernels read; conversions are
  // device-side copies, never syncs.
  const Tensor temperatures =
      temperature.has_value() ? temperature->to(at::kFloat).contiguous().view({rows}) : Tensor();
  const Tensor seeds = seed.has_value() ? seed->contiguous().view({rows}) : Tensor();
  const Tensor offsets = offset.has_value() ? offset->contiguous().view({rows}) : Tensor();

  SampleParams p{};
  p.input = input.data_ptr();
  p.row_stride = input.dim() == 2 ? input.stride(0) : 0;
  p.rows = rows;
  p.vocab = input.size(-1);
  p.probs = probs;
  p.temperatures = temperatures.defined() ? temperatures.data_ptr<float>() : nullptr;
  p.temperature = float(temperature_value);
  p.seeds = seeds.defined() ? seeds.data_ptr<int64_t>() : nullptr;
  p.offsets = offsets.defined() ? offsets.data_ptr<int64_t>() : nullptr;
  p.seed = uint64_t(seed_value.value_or(0));
  p.pos0 = uint64_t(offset_value);
  p.tokens = o.tokens.data_ptr<int64_t>();
  p.tokens_stride = o.tokens.dim() == 1 ? o.tokens.stride(0) : 1;
  p.logprobs = return_logprobs ? o.logprobs.data_ptr<float>() : nullptr;
  p.valid = return_valid ? o.valid.data_ptr<bool>() : nullptr;

  // Greedy calls with a scalar temperature draw no noise and leave the generator alone.
  const bool all_greedy = !probs && !temperature.has_value() && temperature_value == 0.0;
  const bool from_generator = !seed.has_value() && !seed_value.has_value() && !all_greedy;
  if (input.device().is_cpu()) {
    sample_cpu(p, input.scalar_type(), generator, from_generator);
  } else {
#ifdef SYNCFREE_WITH_CUDA
    sample_cuda(p, input.scalar_type(), input.device().index(), generator, from_generator);
#else
    TORCH_CHECK(false, "syncfree was built without CUDA; rebuild with a CUDA toolkit to sample on ",
                input.device());
#endif
  }
  return o;
}

std::tuple<Tensor, Tensor, Tensor> sample_op(const Tensor& input, bool probs,
                                             const std::optional<Tensor>& temperature, double temperature_value,
                                             const std::optional<Tensor>& seed,
                                             const std::optional<Tensor>& offset,
                                             std::optional<int64_t> seed_value, int64_t offset_value,
                                             const std::optional<at::Generator>& generator,
                                             bool return_logprobs, bool return_valid) {
  Outputs o = run_sample(std::nullopt, input, probs, temperature, temperature_value, seed, offset, seed_value,
                         offset_value, generator, return_logprobs, return_valid);
  return {o.tokens, o.logprobs, o.valid};
}

std::tuple<Tensor, Tensor> sample_into_op(Tensor& out, const Tensor& input, bool probs,
                                          const std::optional<Tensor>& temperature, double temperature_value,
                                          const std::optional<Tensor>& seed, const std::optional<Tensor>& offset,
                                          std::optional<int64_t> seed_value, int64_t offset_value,
                                          const std::optional<at::Generator>& generator, bool return_logprobs,
                                          bool return_valid) {
  Outputs o = run_sample(out, input, probs, temperature, temperature_value, seed, offset, seed_value,
                         offset_value, generator, return_logprobs, return_valid);
  return {o.logprobs, o.valid};
}

}  // namespace

#define SYNCFREE_SAMPLE_ARGS                                                                         \
  "Tensor input, bool probs, Tensor? temperature, float temperature_value, Tensor? seed, "          \
  "Tensor? offset, int? seed_value, int offset_value, Generator? generator, bool return_logprobs, " \
  "bool return_valid"

TORCH_LIBRARY(syncfree, m) {
  const std::vector<at::Tag> seeded = {at::Tag::nondeterministic_seeded};
  m.def("sample(" SYNCFREE_SAMPLE_ARGS ") -> (Tensor tokens, Tensor logprobs, Tensor valid)", seeded);
  m.def("sample_into(Tensor(a!) out, " SYNCFREE_SAMPLE_ARGS ") -> (Tensor logprobs, Tensor valid)", seeded);
}

// One implementation serves every device: it routes on the input's device
// itself, and on Meta it only checks and allocates.
TORCH_LIBRARY_IMPL(syncfree, CPU, m) {
  m.impl("sample", &sample_op);
  m.impl("sample_into", &sample_into_op);
}
TORCH_LIBRARY_IMPL(syncfree, CUDA, m) {
  m.impl("sample", &sample_op);
  m.impl("sample_into", &sample_into_op);
}
TORCH_LIBRARY_IMPL(syncfree, Meta, m) {
  m.impl("sample", &sample_op);
  m.impl("sample_into", &sample_into_op);
}

}  // namespace syncfree
