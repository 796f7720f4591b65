// The op layer: the input checks (checks.h) before any kernel runs, device
// routing, and the torch.library schemas. Device code lives in cpu/ and cuda/.
#include <ATen/core/Tensor.h>
#include <ATen/core/enum_tag.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include <cmath>
#include <mutex>

#include "checks.h"
#include "sample.h"

namespace syncfree {
namespace {

using at::Tensor;

struct Outputs {
  Tensor tokens, logprobs, valid;
};

#ifndef SYNCFREE_WITH_CUDA
// The CUDA kernels are registered in every build: a CPU-only build says what is missing.
[[noreturn]] void fail_without_cuda(const c10::Device& device) {
  TORCH_CHECK(false, "syncfree was built without CUDA; rebuild with a CUDA toolkit to run on ", device);
}
#endif

// Note [CUDA kernels on the CPU]
// ------------------------------
// The CPU execution layer (tests/cuda_on_cpu) compiles this file with
// SYNCFREE_CUDA_ON_CPU: the ops are then registered as torch.ops.syncfree_emulated
// and send CPU tensors down the CUDA path, whose kernels that build runs on the
// host (device 0). Every routing decision below goes through these two.
#ifdef SYNCFREE_CUDA_ON_CPU
[[maybe_unused]] bool on_cuda(const Tensor& t) { return t.device().is_cpu(); }
[[maybe_unused]] c10::DeviceIndex cuda_index(const Tensor&) { return 0; }
#else
[[maybe_unused]] bool on_cuda(const Tensor& t) { return t.device().is_cuda(); }
[[maybe_unused]] c10::DeviceIndex cuda_index(const Tensor& t) { return t.device().index(); }
#endif

// A per-row parameter tensor in the layout the kernels read ([rows],
// contiguous, of `dtype`); conversions are device-side copies, never syncs.
Tensor row_values(const std::optional<Tensor>& t, int64_t rows, at::ScalarType dtype) {
  return t.has_value() ? t->to(dtype).contiguous().view({rows}) : Tensor();
}

template <typename T>
const T* pointer_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Tensors that must outlive the kernels' launch (the params point into them).
struct RowTensors {
  Tensor temperatures, top_ks, top_ps, min_ps, typical_ps;
};

void set_warpers(SampleParams& p, RowTensors& keep_alive, const WarperArgs& w, int64_t rows) {
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
  p.warped = w.any(p.vocab);
}

// A call on a shard of a wider row (syncfree.distributed): where its token 0
// sits in the row, and what it writes instead of tokens.
struct Shard {
  int64_t index_base = 0;
  ShardPartial* partials_out = nullptr;
  const int64_t* resolve_groups = nullptr;
  const RowKeep* keeps = nullptr;  // the warpers' kept sets, found across the shards
  const int64_t* rng_state = nullptr;  // one generator draw shared by the shards
};

Outputs run_sample(const std::optional<Tensor>& out, const Tensor& input, bool probs, const WarperArgs& w,
                   const std::optional<Tensor>& seed, const std::optional<Tensor>& offset,
                   std::optional<int64_t> seed_value, int64_t offset_value,
                   const std::optional<at::Generator>& generator, bool return_logprobs, bool return_valid,
                   const Shard& shard = Shard()) {
  const char* name = probs ? "probs" : "logits";
  check_input(input, name);
  const int64_t rows = row_count(input);
  const std::vector<int64_t> batch_shape =
      input.dim() == 2 ? std::vector<int64_t>{rows} : std::vector<int64_t>{};

  check_warpers(w, input);
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
  if (out.has_value()) {
    TORCH_CHECK_TYPE(out->scalar_type() == at::kLong, "out: expected an int64 tensor, got ", out->scalar_type());
    TORCH_CHECK_VALUE(out->device() == input.device(), "out: expected a tensor on ", input.device(), ", got ",
                      out->device());
    TORCH_CHECK_VALUE(out->sizes() == at::IntArrayRef(batch_shape), "out: expected shape ",
                      at::IntArrayRef(batch_shape), ", got ", out->sizes());
    // As torch's own out= ops: an out that overlaps itself or an input would
    // change the input while the kernels read it (Note [A winning group with no winner]).
    if (!input.device().is_meta()) {
      TORCH_CHECK_VALUE(at::has_internal_overlap(*out) != at::MemOverlap::Yes,
                        "out: overlaps itself (e.g. an expanded tensor); pass a tensor with distinct elements");
      const std::optional<Tensor> inputs[] = {input, seed, offset, w.temperature, w.top_k, w.top_p, w.min_p,
                                              w.typical_p};
      for (const auto& in : inputs) {
        TORCH_CHECK_VALUE(!in.has_value() || !may_overlap(*out, *in),
                          "out: overlaps an input (logits, probs or a per-row tensor); pass a separate tensor");
      }
    }
  }

  const auto options = input.options();
  Outputs o;
  o.tokens = out.has_value() ? *out : at::empty(batch_shape, options.dtype(at::kLong));
  o.logprobs = at::empty(return_logprobs ? batch_shape : std::vector<int64_t>{0}, options.dtype(at::kFloat));
  o.valid = at::empty(return_valid ? batch_shape : std::vector<int64_t>{0}, options.dtype(at::kBool));
  if (rows == 0 || input.device().is_meta()) return o;

  const Tensor seeds = seed.has_value() ? seed->contiguous().view({rows}) : Tensor();
  const Tensor offsets = offset.has_value() ? offset->contiguous().view({rows}) : Tensor();
  SampleParams p{};
  p.input = input.data_ptr();
  p.row_stride = input.dim() == 2 ? input.stride(0) : 0;
  p.rows = rows;
  p.vocab = input.size(-1);
  p.probs = probs;
  RowTensors row_tensors;
  set_warpers(p, row_tensors, w, rows);
  p.seeds = pointer_or_null<int64_t>(seeds);
  p.offsets = pointer_or_null<int64_t>(offsets);
  p.seed = uint64_t(seed_value.value_or(0));
  p.pos0 = uint64_t(offset_value);
  p.index_base = shard.index_base;
  p.partials_out = shard.partials_out;
  p.resolve_groups = shard.resolve_groups;
  p.keeps = shard.keeps;
  p.rng_state = shard.rng_state;
  p.tokens = o.tokens.data_ptr<int64_t>();
  p.tokens_stride = o.tokens.dim() == 1 ? o.tokens.stride(0) : 1;
  p.logprobs = return_logprobs ? o.logprobs.data_ptr<float>() : nullptr;
  p.valid = return_valid ? o.valid.data_ptr<bool>() : nullptr;

  // Greedy calls with a scalar temperature draw no noise and leave the generator alone.
  const bool all_greedy = !probs && !w.temperature.has_value() && is_greedy_temperature(float(w.temperature_value));
  const bool from_generator = !seed.has_value() && !seed_value.has_value() && !all_greedy && !shard.rng_state;
  if (!on_cuda(input)) {
    sample_cpu(p, input.scalar_type(), generator, from_generator);
  } else {
#ifdef SYNCFREE_WITH_CUDA
    sample_cuda(p, input.scalar_type(), cuda_index(input), generator, from_generator);
#else
    fail_without_cuda(input.device());
#endif
  }
  return o;
}

#define SYNCFREE_WARPER_PARAMS                                                                             \
  const std::optional<Tensor>&temperature, double temperature_value, const std::optional<Tensor>&top_k,  \
      int64_t top_k_value, const std::optional<Tensor>&top_p, double top_p_value,                       \
      const std::optional<Tensor>&min_p, double min_p_value, const std::optional<Tensor>&typical_p,       \
      double typical_p_value
#define SYNCFREE_WARPER_STRUCT                                                                       \
  WarperArgs {                                                                                       \
    temperature, temperature_value, top_k, top_k_value, top_p, top_p_value, min_p, min_p_value,      \
        typical_p, typical_p_value                                                                   \
  }

std::tuple<Tensor, Tensor, Tensor> sample_op(const Tensor& input, bool probs, SYNCFREE_WARPER_PARAMS,
                                             const std::optional<Tensor>& seed,
                                             const std::optional<Tensor>& offset,
                                             std::optional<int64_t> seed_value, int64_t offset_value,
                                             const std::optional<at::Generator>& generator,
                                             bool return_logprobs, bool return_valid) {
  Outputs o = run_sample(std::nullopt, input, probs, SYNCFREE_WARPER_STRUCT, seed, offset, seed_value,
                         offset_value, generator, return_logprobs, return_valid);
  return {o.tokens, o.logprobs, o.valid};
}

std::tuple<Tensor, Tensor> sample_into_op(Tensor& out, const Tensor& input, bool probs, SYNCFREE_WARPER_PARAMS,
                                          const std::optional<Tensor>& seed, const std::optional<Tensor>& offset,
                                          std::optional<int64_t> seed_value, int64_t offset_value,
                                          const std::optional<at::Generator>& generator, bool return_logprobs,
                                          bool return_valid) {
  Outputs o = run_sample(out, input, probs, SYNCFREE_WARPER_STRUCT, seed, offset, seed_value, offset_value,
                         generator, return_logprobs, return_valid);
  return {o.logprobs, o.valid};
}

// syncfree.distributed's local step on a shard x ([B, L], token 0 at global
// index index_base, a multiple of 16): with resolve_groups None, each row's
// merged partial as [B, 8] int32 (the ShardPartial fields: RacePartial, then
// the overflow argmax; floats by their bits) with tokens empty; with resolve_groups [B] (local group or -1),
// the local token of each row's in-group race (-1 where the group is not here).
// rng_state: an int64 [2] (seed, position) from generator_state, instead of
// seeds or a generator.
std::tuple<Tensor, Tensor> race_shard_op(const Tensor& input, int64_t index_base,
                                         const std::optional<Tensor>& resolve_groups,
                                         const std::optional<Tensor>& keeps,
                                         const std::optional<Tensor>& temperature, double temperature_value,
                                         const std::optional<Tensor>& seed, const std::optional<Tensor>& offset,
                                         std::optional<int64_t> seed_value, int64_t offset_value,
                                         const std::optional<at::Generator>& generator,
                                         const std::optional<Tensor>& rng_state) {
  TORCH_CHECK_VALUE(input.dim() == 2, "local_logits: expected shape [B, L], got ", input.sizes());
  TORCH_CHECK_VALUE(index_base >= 0 && index_base % kGroup == 0, "index_base: expected a multiple of ", kGroup,
                    ", got ", index_base);
  const int64_t rows = input.size(0);
  Tensor partials = at::empty({resolve_groups.has_value() ? 0 : rows, 8}, input.options().dtype(at::kInt));
  Tensor groups;
  Shard shard;
  shard.index_base = index_base;
  if (resolve_groups.has_value()) {
    check_row_tensor(*resolve_groups, "resolve_groups", input, true);
    groups = resolve_groups->contiguous();
    if (!input.device().is_meta()) shard.resolve_groups = groups.data_ptr<int64_t>();
  } else if (!input.device().is_meta()) {
    static_assert(sizeof(ShardPartial) == 8 * sizeof(int32_t), "ShardPartial layout");
    shard.partials_out = reinterpret_cast<ShardPartial*>(partials.data_ptr<int32_t>());
  }
  Tensor keep_rows;
  if (keeps.has_value()) {
    TORCH_CHECK_VALUE(keeps->dim() == 2 && keeps->size(0) == rows && keeps->size(1) == 3 &&
                          keeps->scalar_type() == at::kFloat && keeps->device() == input.device(),
                      "keeps: expected a float32 [B, 3] tensor (min_y, center, max_dev) on ", input.device());
    static_assert(sizeof(RowKeep) == 3 * sizeof(float), "RowKeep layout");
    keep_rows = keeps->contiguous();
    if (!input.device().is_meta()) shard.keeps = reinterpret_cast<const RowKeep*>(keep_rows.data_ptr<float>());
  }
  Tensor rng;
  if (rng_state.has_value()) {
    TORCH_CHECK_VALUE(rng_state->scalar_type() == at::kLong && rng_state->numel() == 2 &&
                          rng_state->device() == input.device(),
                      "rng_state: expected an int64 tensor of 2 values (seed, position) on ", input.device());
    TORCH_CHECK_VALUE(!seed.has_value() && !seed_value.has_value() && !generator.has_value(),
                      "rng_state: pass either rng_state or a seed/generator, not both");
    rng = rng_state->contiguous();
    if (!input.device().is_meta()) shard.rng_state = rng.data_ptr<int64_t>();
  }
  const WarperArgs w{temperature, temperature_value, std::nullopt, 0, std::nullopt, 1.0, std::nullopt, 0.0,
                     std::nullopt, 1.0};
  Outputs o = run_sample(std::nullopt, input, false, w, seed, offset, seed_value, offset_value, generator,
                         /*return_logprobs=*/!resolve_groups.has_value(), false, shard);
  if (!resolve_groups.has_value()) o.tokens = at::empty({0}, input.options().dtype(at::kLong));
  return {partials, o.tokens};
}

// The distributed warpers' integer masses, with the exact functions the
// single-device selection uses (Note [Exact warper thresholds]): for scaled
// logits y [B, L], row maxima m [B] and typical-p spreads s [B]
// (typical_spread), token_mass: fixed_mass(e^(y - m)) and
// fixed_mass(e^(y - m) (m - y) / s) (0 where y is -inf), both int64.
std::tuple<Tensor, Tensor> shard_masses_op(const Tensor& y, const Tensor& row_max, const Tensor& row_spread,
                                           int64_t shift) {
  TORCH_CHECK_VALUE(y.dim() == 2 && y.scalar_type() == at::kFloat, "y: expected a float32 [B, L] tensor");
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{row_max, "row_max"}, {row_spread, "row_spread"}})
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == y.size(0) && t.scalar_type() == at::kFloat &&
                          t.device() == y.device(),
                      name, ": expected a float32 [B] tensor on the device of y");
  TORCH_CHECK_VALUE(shift >= 0 && shift <= 62, "shift: expected 0..62, got ", shift);
  const Tensor yc = y.contiguous(), mc = row_max.contiguous(), sc = row_spread.contiguous();
  Tensor mass = at::empty(y.sizes(), y.options().dtype(at::kLong));
  Tensor gap = at::empty(y.sizes(), y.options().dtype(at::kLong));
  if (y.device().is_meta() || y.numel() == 0) return {mass, gap};
  const float* yp = yc.data_ptr<float>();
  const float* mp = mc.data_ptr<float>();
  auto* massp = reinterpret_cast<uint64_t*>(mass.data_ptr<int64_t>());
  auto* gapp = reinterpret_cast<uint64_t*>(gap.data_ptr<int64_t>());
  if (on_cuda(y)) {
#ifdef SYNCFREE_WITH_CUDA
    shard_masses_cuda(yp, mp, sc.data_ptr<float>(), y.size(0), y.size(1), int(shift), massp, gapp, cuda_index(y));
#else
    fail_without_cuda(y.device());
#endif
  } else {
    shard_masses_cpu(yp, mp, sc.data_ptr<float>(), y.size(0), y.size(1), int(shift), massp, gapp);
  }
  return {mass, gap};
}

// One radix pass of the distributed selection (the histogram part of
// select_top, select.h) over a shard's scaled logits y: hist[b, d] sums the
// weights of row b's entries (shard_entry: weights None for top-k, centers
// for typical-p's deviation keys) whose key has digit d and matches prefix[b]
// in its top `done` bits; int64 [B, 2^digit_bits(done)] (2048 bins, 1024 in
// the last pass), exact in any order. The bin is picked in Python from the
// histograms summed over the ranks.
Tensor radix_histogram_op(const Tensor& y, const std::optional<Tensor>& weights,
                          const std::optional<Tensor>& centers, const Tensor& prefix, int64_t done) {
  TORCH_CHECK_VALUE(y.dim() == 2 && y.scalar_type() == at::kFloat, "y: expected a float32 [B, L] tensor");
  if (weights.has_value())
    TORCH_CHECK_VALUE(weights->sizes() == y.sizes() && weights->scalar_type() == at::kLong &&
                          weights->device() == y.device(),
                      "weights: expected an int64 tensor shaped and placed like y");
  const auto check_row = [&](const Tensor& t, at::ScalarType dtype, const char* name) {
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == y.size(0) && t.scalar_type() == dtype && t.device() == y.device(),
                      name, ": expected a [B] tensor of ", dtype, " on the device of y");
  };
  check_row(prefix, at::kLong, "prefix");
  if (centers.has_value()) check_row(*centers, at::kFloat, "centers");
  TORCH_CHECK_VALUE(done == 0 || done == kDigitBits || done == 2 * kDigitBits, "done: expected 0, ", kDigitBits,
                    " or ", 2 * kDigitBits, ", got ", done);
  Tensor hist = at::zeros({y.size(0), int64_t(1) << digit_bits(int(done))}, y.options().dtype(at::kLong));
  if (y.device().is_meta() || y.numel() == 0) return hist;
  const Tensor yc = y.contiguous(), pc = prefix.contiguous();
  const Tensor wc = weights.has_value() ? weights->contiguous() : Tensor();
  const Tensor cc = centers.has_value() ? centers->contiguous() : Tensor();
  const float* yp = yc.data_ptr<float>();
  const int64_t* wp = pointer_or_null<int64_t>(wc);
  const float* cp = pointer_or_null<float>(cc);
  const int64_t* pp = pc.data_ptr<int64_t>();
  auto* hp = reinterpret_cast<uint64_t*>(hist.data_ptr<int64_t>());
  if (on_cuda(y)) {
#ifdef SYNCFREE_WITH_CUDA
    radix_histogram_cuda(yp, wp, cp, pp, y.size(0), y.size(1), int(done), hp, cuda_index(y));
#else
    fail_without_cuda(y.device());
#endif
  } else {
    radix_histogram_cpu(yp, wp, cp, pp, y.size(0), y.size(1), int(done), hp);
  }
  return hist;
}

// The generator draw of one sampling call over `vocab` tokens as an int64 [2]
// (seed, position) on like's device, advancing the generator as that call
// would: syncfree.distributed draws once and hands it to every shard call
// (See Note [syncfree RNG counter layout]).
Tensor generator_state_op(const Tensor& like, const std::optional<at::Generator>& generator, int64_t vocab) {
  TORCH_CHECK_VALUE(vocab >= 1, "vocab_size: expected >= 1, got ", vocab);
  if (generator.has_value()) check_generator_device(*generator, like, "local_logits");
  Tensor out = at::empty({2}, like.options().dtype(at::kLong));
  if (like.device().is_meta()) return out;
  if (on_cuda(like)) {
#ifdef SYNCFREE_WITH_CUDA
    generator_state_cuda(generator, cuda_index(like), vocab, out.data_ptr<int64_t>());
#else
    fail_without_cuda(like.device());
#endif
    return out;
  }
  // The CPU generator is an mt19937: one 64-bit seed per call, position 0 (as sample_cpu draws).
  auto* gen =
      at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  out.data_ptr<int64_t>()[0] = int64_t(gen->random64());
  out.data_ptr<int64_t>()[1] = 0;
  return out;
}

// min-p's floor m + log(min_p) with the single-device log (float32 [B] each).
Tensor min_p_floor_op(const Tensor& row_max, const Tensor& min_p) {
  TORCH_CHECK_VALUE(row_max.scalar_type() == at::kFloat && min_p.scalar_type() == at::kFloat &&
                        row_max.sizes() == min_p.sizes() && row_max.device() == min_p.device(),
                    "row_max, min_p: expected float32 tensors of one shape on one device");
  const Tensor mc = row_max.contiguous(), pc = min_p.contiguous();
  Tensor out = at::empty_like(mc);
  if (mc.device().is_meta() || mc.numel() == 0) return out;
  if (on_cuda(mc)) {
#ifdef SYNCFREE_WITH_CUDA
    min_p_floor_cuda(mc.data_ptr<float>(), pc.data_ptr<float>(), mc.numel(), out.data_ptr<float>(),
                     cuda_index(mc));
#else
    fail_without_cuda(mc.device());
#endif
    return out;
  }
  min_p_floor_cpu(mc.data_ptr<float>(), pc.data_ptr<float>(), mc.numel(), out.data_ptr<float>());
  return out;
}

// The warped, temperature-scaled logits of every row in float32 (removed
// tokens at -inf; temperature 0 scales nothing): race_value of each element.
Tensor warped_logits(const Tensor& logits, const WarperArgs& w) {
  check_input(logits, "logits");
  check_warpers(w, logits);
  Tensor warped = at::empty_like(logits, logits.options().dtype(at::kFloat), at::MemoryFormat::Contiguous);
  if (logits.device().is_meta() || logits.numel() == 0) return warped;
  SampleParams p{};
  p.input = logits.data_ptr();
  p.row_stride = logits.dim() == 2 ? logits.stride(0) : 0;
  p.rows = row_count(logits);
  p.vocab = logits.size(-1);
  RowTensors row_tensors;
  set_warpers(p, row_tensors, w, p.rows);
  if (!on_cuda(logits)) {
    warp_cpu(p, logits.scalar_type(), warped.data_ptr<float>());
  } else {
#ifdef SYNCFREE_WITH_CUDA
    Tensor keeps;
    RowKeep* keep_ptr = nullptr;  // no warper: every token kept, no selection kernel
    if (p.warped) {
      keeps = at::empty({p.rows * int64_t(sizeof(RowKeep))}, logits.options().dtype(at::kByte));
      keep_ptr = reinterpret_cast<RowKeep*>(keeps.data_ptr());
      warp_select_cuda(p, logits.scalar_type(), cuda_index(logits), keep_ptr, true);
    }
    warp_apply_cuda(p, logits.scalar_type(), cuda_index(logits), keep_ptr, warped.data_ptr<float>());
#else
    fail_without_cuda(logits.device());
#endif
  }
  return warped;
}

// syncfree.warp: the warped logits and their log_softmax.
std::tuple<Tensor, Tensor> warp_op(const Tensor& logits, SYNCFREE_WARPER_PARAMS) {
  const Tensor warped = warped_logits(logits, SYNCFREE_WARPER_STRUCT);
  if (warped.device().is_meta() || warped.numel() == 0) return {warped, at::empty_like(warped)};
  return {warped, at::log_softmax(warped, -1)};
}

// syncfree.distributed: which rows the kernels race greedily, as bool [B]:
// is_greedy_temperature of each row's float32 temperature, !(t > 0).
Tensor greedy_rows_op(const Tensor& like, const std::optional<Tensor>& temperature, double temperature_value) {
  if (temperature.has_value()) return temperature->to(at::kFloat).gt(0).logical_not();
  return at::full({row_count(like)}, is_greedy_temperature(float(temperature_value)),
                  like.options().dtype(at::kBool));
}

// syncfree.distributed: a shard's scaled logits exactly as the race sees
// them (set_temperature and scaled_logit), before any warper.
Tensor scaled_logits_op(const Tensor& logits, const std::optional<Tensor>& temperature, double temperature_value) {
  return warped_logits(logits, WarperArgs{temperature, temperature_value, std::nullopt, 0, std::nullopt, 1.0,
                                          std::nullopt, 0.0, std::nullopt, 1.0});
}

}  // namespace

#define SYNCFREE_WARPER_ARGS                                                                               \
  "Tensor? temperature, float temperature_value, Tensor? top_k, int top_k_value, Tensor? top_p, "         \
  "float top_p_value, Tensor? min_p, float min_p_value, Tensor? typical_p, float typical_p_value"
#define SYNCFREE_SAMPLE_ARGS                                                                              \
  "Tensor input, bool probs, " SYNCFREE_WARPER_ARGS ", Tensor? seed, Tensor? offset, int? seed_value, "  \
  "int offset_value, Generator? generator, bool return_logprobs, bool return_valid"

// The namespace is a macro for the CPU execution layer (Note [CUDA kernels on
// the CPU]); the indirection lets TORCH_LIBRARY see it expanded.
#ifdef SYNCFREE_CUDA_ON_CPU
#define SYNCFREE_OPS syncfree_emulated
#else
#define SYNCFREE_OPS syncfree
#endif
#define SYNCFREE_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define SYNCFREE_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

SYNCFREE_LIBRARY(SYNCFREE_OPS, m) {
  const std::vector<at::Tag> seeded = {at::Tag::nondeterministic_seeded};
  m.def("sample(" SYNCFREE_SAMPLE_ARGS ") -> (Tensor tokens, Tensor logprobs, Tensor valid)", seeded);
  m.def("sample_into(Tensor(a!) out, " SYNCFREE_SAMPLE_ARGS ") -> (Tensor logprobs, Tensor valid)", seeded);
  m.def("warp(Tensor logits, " SYNCFREE_WARPER_ARGS ") -> (Tensor warped, Tensor logprobs)");
  m.def("shard_masses(Tensor y, Tensor row_max, Tensor row_spread, int shift) -> (Tensor mass, Tensor gap)");
  m.def("min_p_floor(Tensor row_max, Tensor min_p) -> Tensor");
  m.def("scaled_logits(Tensor logits, Tensor? temperature, float temperature_value) -> Tensor");
  m.def("greedy_rows(Tensor like, Tensor? temperature, float temperature_value) -> Tensor");
  m.def("radix_histogram(Tensor y, Tensor? weights, Tensor? centers, Tensor prefix, int done) -> Tensor");
  m.def("generator_state(Tensor like, Generator? generator, int vocab) -> Tensor", seeded);
  m.def("race_shard(Tensor input, int index_base, Tensor? resolve_groups, Tensor? keeps, Tensor? temperature, "
        "float temperature_value, Tensor? seed, Tensor? offset, int? seed_value, int offset_value, "
        "Generator? generator, Tensor? rng_state) -> (Tensor partials, Tensor tokens)",
        seeded);
}

// One implementation serves every device: it routes on the input's device
// itself, and on Meta it only checks and allocates.
SYNCFREE_LIBRARY_IMPL(SYNCFREE_OPS, CPU, m) {
  m.impl("scaled_logits", &scaled_logits_op);
  m.impl("greedy_rows", &greedy_rows_op);
  m.impl("radix_histogram", &radix_histogram_op);
  m.impl("shard_masses", &shard_masses_op);
  m.impl("min_p_floor", &min_p_floor_op);
  m.impl("generator_state", &generator_state_op);
  m.impl("sample", &sample_op);
  m.impl("sample_into", &sample_into_op);
  m.impl("warp", &warp_op);
  m.impl("race_shard", &race_shard_op);
}
SYNCFREE_LIBRARY_IMPL(SYNCFREE_OPS, CUDA, m) {
  m.impl("scaled_logits", &scaled_logits_op);
  m.impl("greedy_rows", &greedy_rows_op);
  m.impl("radix_histogram", &radix_histogram_op);
  m.impl("shard_masses", &shard_masses_op);
  m.impl("min_p_floor", &min_p_floor_op);
  m.impl("generator_state", &generator_state_op);
  m.impl("sample", &sample_op);
  m.impl("sample_into", &sample_into_op);
  m.impl("warp", &warp_op);
  m.impl("race_shard", &race_shard_op);
}
SYNCFREE_LIBRARY_IMPL(SYNCFREE_OPS, Meta, m) {
  m.impl("scaled_logits", &scaled_logits_op);
  m.impl("greedy_rows", &greedy_rows_op);
  m.impl("radix_histogram", &radix_histogram_op);
  m.impl("shard_masses", &shard_masses_op);
  m.impl("min_p_floor", &min_p_floor_op);
  m.impl("generator_state", &generator_state_op);
  m.impl("sample", &sample_op);
  m.impl("sample_into", &sample_into_op);
  m.impl("warp", &warp_op);
  m.impl("race_shard", &race_shard_op);
}

}  // namespace syncfree
