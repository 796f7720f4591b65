// The op layer's shared pieces: device routing, per-row argument marshalling,
// and the one sampling driver (run_sample) behind the public ops and the
// shard ops (shard_ops.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/Generator.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "checks.h"
#include "device_api.h"

namespace syncfree {

using at::Tensor;

// Every op has one kernel per dispatch key, a template over the implementation
// it runs: the CPU path, the CUDA kernels, or (Meta) only the checks and the
// outputs' allocation.
enum class Backend { kCpu, kCuda, kMeta };

// Note [CUDA kernels on the CPU]
// ------------------------------
// The CPU execution layer (tests/cuda_on_cpu) compiles the op files with
// SYNCFREE_CUDA_ON_CPU: the ops are then registered as torch.ops.syncfree_emulated,
// with the CUDA implementation under the CPU key, and the kernels run on the
// host (device 0).
#ifdef SYNCFREE_CUDA_ON_CPU
constexpr Backend kCpuKeyBackend = Backend::kCuda;
inline c10::DeviceIndex cuda_index(const Tensor&) { return 0; }
#define SYNCFREE_OPS syncfree_emulated
#else
constexpr Backend kCpuKeyBackend = Backend::kCpu;
inline c10::DeviceIndex cuda_index(const Tensor& t) { return t.device().index(); }
#define SYNCFREE_OPS syncfree
#endif
// The indirection lets TORCH_LIBRARY see the namespace macro expanded.
#define SYNCFREE_LIBRARY_FRAGMENT(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
#define SYNCFREE_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)
// Registers register_fn<backend>(m) under the CPU, CUDA and Meta keys.
#define SYNCFREE_REGISTER_KERNELS(register_fn)                                                   \
  SYNCFREE_LIBRARY_IMPL(SYNCFREE_OPS, CPU, m) { register_fn<::syncfree::kCpuKeyBackend>(m); }   \
  SYNCFREE_LIBRARY_IMPL(SYNCFREE_OPS, CUDA, m) { register_fn<::syncfree::Backend::kCuda>(m); }  \
  SYNCFREE_LIBRARY_IMPL(SYNCFREE_OPS, Meta, m) { register_fn<::syncfree::Backend::kMeta>(m); }

// The CUDA kernels are registered in every build: a CPU-only build says what is missing.
[[noreturn]] inline void fail_without_cuda(const c10::Device& device) {
  TORCH_CHECK(false, "syncfree was built without CUDA; rebuild with a CUDA toolkit to run on ", device);
}

// Runs a call into the CUDA implementation (device_api.h), or fails in a build without CUDA.
#ifdef SYNCFREE_WITH_CUDA
#define SYNCFREE_ON_CUDA(tensor, call) call
#else
#define SYNCFREE_ON_CUDA(tensor, call) fail_without_cuda((tensor).device())
#endif

// A per-row parameter tensor in the layout the kernels read ([rows],
// contiguous, of `dtype`); conversions are device-side copies, never syncs.
inline Tensor row_values(const std::optional<Tensor>& t, int64_t rows, at::ScalarType dtype) {
  return t.has_value() ? t->to(dtype).contiguous().view({rows}) : Tensor();
}

template <typename T>
const T* pointer_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Tensors that must outlive the kernels' launch (the params point into them).
struct RowTensors {
  Tensor temperatures, top_ks, top_ps, min_ps, typical_ps, seeds, offsets;
  Tensor repetitions, frequencies, presences, output_tokens, prompt_tokens, bias_tokens, bias_values, allowed;
};

// p.proc's argument fields from a (checked by check_processing); the tables
// are built by the implementation.
void set_processing(SampleParams& p, RowTensors& keep_alive, const SamplingArgs& a, int64_t rows);

// p's temperature and warper fields from a (p.vocab set first).
void set_warpers(SampleParams& p, RowTensors& keep_alive, const SamplingArgs& a, int64_t rows);

// p's noise fields from the rng arguments (checked by check_rng).
void set_rng(SampleParams& p, RowTensors& keep_alive, const RngArgs& rng, int64_t rows);

// Whether a call draws its noise from the torch generator: no seed, and some row not greedy
// (calls with a scalar greedy temperature draw no noise and leave the generator alone).
inline bool from_generator(const SamplingArgs& a, const RngArgs& rng, bool probs = false) {
  const bool all_greedy = !probs && !a.temperature.has_value() && is_greedy_temperature(float(a.temperature_value));
  return !rng.seeded() && !all_greedy;
}

struct Outputs {
  Tensor tokens, logprobs, valid, top_ids, top_logprobs, rank;
};

// One sampling call: every check, then backend B's implementation. `shard`
// and `keeps` are set by the shard ops only.
template <Backend B>
Outputs run_sample(const std::optional<Tensor>& out, const Tensor& input, bool probs, const SamplingArgs& a,
                   const RngArgs& rng, const Wanted& wanted, const ShardCall& shard = ShardCall{},
                   const RowKeep* keeps = nullptr);

// An op's C++ arguments for SYNCFREE_PARAMS_SCHEMA and SYNCFREE_RNG_SCHEMA (sampling_args.h).
#define SYNCFREE_PARAMS_ARGS const c10::List<std::optional<Tensor>>&params, c10::ArrayRef<double> param_values
#define SYNCFREE_RNG_ARGS                                                                                      \
  const std::optional<Tensor>&seed, const std::optional<Tensor>&offset, std::optional<int64_t> seed_value, \
      int64_t offset_value, const std::optional<at::Generator>&generator
#define SYNCFREE_RNG_STRUCT \
  RngArgs { seed, offset, seed_value, offset_value, generator }

}  // namespace syncfree
